//! Shared helpers for end-to-end tests: the real Kafka-API broker, fresh
//! topics, an in-process ingest node on a loopback port.

#![allow(dead_code)]

pub mod hosts;
pub mod lake;
pub mod process;

use std::sync::Arc;

use candor::config::{Config, Role};
use candor_control::testkit::TestStore;
use candor_control::{Actor, Admin, AuditLog, CacheConfig, ControlCache, Plan, Tenant};
use candor_log::LogProducer;
use candor_log::kafka::{KafkaConfig, KafkaProducer};
use candor_schemas::batch::{ActivitySample, Batch};
use candor_schemas::envelope::{self, EnvelopeHeader};
use candor_schemas::keys::MasterSecret;
use candor_schemas::{DeviceId, EmployeeId, Limits, TenantId};
use chrono::NaiveDate;

/// A new topic with a unique name, so tests never see each other's records.
pub async fn fresh_topic(prefix: &str, partitions: i32) -> KafkaConfig {
    candor_log::testkit::fresh_topic(prefix, partitions)
        .await
        .expect("topic created on the test broker")
}

pub fn random_master() -> MasterSecret {
    use rand::Rng;
    MasterSecret::from_bytes(&rand::rng().random::<[u8; 32]>()).unwrap()
}

/// A control plane on a test store, with its admin operations and a node
/// cache that refreshes quickly.
pub struct Control {
    pub store: TestStore,
    master: MasterSecret,
    pub admin: Arc<Admin>,
    pub cache: Arc<ControlCache>,
}

impl Control {
    pub fn new(store: TestStore, master: &MasterSecret) -> Self {
        let audit = AuditLog::new(store.raw(), &TestStore::prefix(), master.clone());
        let admin = Arc::new(Admin::new(
            store.documents(),
            Arc::new(audit),
            master.clone(),
        ));
        let config = CacheConfig {
            refresh_every: std::time::Duration::from_millis(100),
            tokens: true,
            directory: true,
            ..CacheConfig::default()
        };
        let cache = Arc::new(ControlCache::new(
            store.documents(),
            master.clone(),
            config,
            &prometheus::Registry::new(),
        ));
        tokio::spawn({
            let cache = cache.clone();
            async move { cache.run_refresher(std::future::pending()).await }
        });
        Self {
            store,
            master: master.clone(),
            admin,
            cache,
        }
    }

    /// A node cache of this control plane as a node of `role` keeps it
    /// (`candor::node::cache_config`: the processor without tokens, ingest
    /// without the directory), refreshing quickly.
    pub fn cache_for(&self, role: candor::config::Role) -> Arc<ControlCache> {
        let config = CacheConfig {
            refresh_every: std::time::Duration::from_millis(100),
            ..candor::node::cache_config(&candor::config::Config::defaults(role), role)
        };
        let cache = Arc::new(ControlCache::new(
            self.store.documents(),
            self.master.clone(),
            config,
            &prometheus::Registry::new(),
        ));
        tokio::spawn({
            let cache = cache.clone();
            async move { cache.run_refresher(std::future::pending()).await }
        });
        cache
    }

    /// `role`'s defaults on this control plane, for in-process nodes built
    /// by `candor::node` (a local control plane only: an S3 one is reached
    /// through the environment, which tests share).
    pub fn config(&self, role: Role) -> Config {
        let TestStore::Local(dir, _) = &self.store else {
            panic!("in-process nodes are configured on a local control plane");
        };
        let mut config = config(role);
        config.control.url = Some(
            dir.path()
                .join(TestStore::prefix().as_ref())
                .display()
                .to_string(),
        );
        config
    }

    /// A local-directory control plane with these tenants (UTC, starter
    /// plan, tracking around the clock).
    pub async fn local_with(master: &MasterSecret, tenants: &[&str]) -> Self {
        let control = Self::new(TestStore::local(), master);
        for t in tenants {
            control.create_tenant(t).await;
        }
        control
    }

    /// A tenant that tracks around the clock, so that tests of the pipeline
    /// keep every event whatever hour they run at.
    pub async fn create_tenant(&self, id: &str) {
        let mut tenant = Tenant::new(TenantId::new(id).unwrap(), Plan::Starter, "UTC");
        tenant.track_outside_work_hours = true;
        self.create(tenant).await;
    }

    pub async fn create(&self, tenant: Tenant) {
        self.admin
            .create_tenant(&Actor::operator(), &tenant)
            .await
            .expect("tenant created");
    }

    /// Gives a tenant a lake of its own (data residency), as the operator
    /// does, and makes the node cache see it at once.
    pub async fn set_lake_url(&self, id: &str, location: &str) {
        let id = TenantId::new(id).unwrap();
        let mut doc = self
            .admin
            .get_tenant(&Actor::operator(), &id)
            .await
            .unwrap()
            .doc;
        doc.lake_url = Some(location.to_string());
        self.admin
            .update_tenant(&Actor::operator(), &doc, None)
            .await
            .unwrap();
        self.cache.reload(&id).await.unwrap();
    }

    /// The lake subject of an employee of a tenant.
    pub async fn subject(&self, tenant: &TenantId, employee: &EmployeeId) -> String {
        let view = self
            .cache
            .get(tenant)
            .await
            .unwrap()
            .expect("tenant exists");
        view.keys.as_ref().unwrap().pseudonym().subject(employee)
    }
}

/// A node configuration for in-process nodes: `role`'s defaults, as
/// `candor config print --role <role>` shows them.
///
/// `CANDOR_INGEST__LOG_RECORD_FORMAT` applies here as it does to the nodes
/// the tests start as processes, so `scripts/test` can run the processing
/// tests once more on version 1 log records (what a log holds across an
/// upgrade).
pub fn config(role: Role) -> Config {
    let mut config = Config::defaults(role);
    if let Ok(format) = std::env::var("CANDOR_INGEST__LOG_RECORD_FORMAT") {
        config.ingest.log_record_format = format
            .parse()
            .expect("CANDOR_INGEST__LOG_RECORD_FORMAT is 1 or 2");
    }
    config
}

/// The layout of the log records the tests' ingest nodes write.
pub fn record_format() -> candor_schemas::record::RecordFormat {
    let version = config(Role::Ingest).ingest.log_record_format;
    candor_schemas::record::RecordFormat::from_version(version).expect("a known layout")
}

/// The ingest role's defaults.
pub fn ingest_defaults() -> Config {
    config(Role::Ingest)
}

/// The ingest role's defaults with `limits`' sizes.
pub fn ingest_config(limits: &Limits) -> Config {
    let mut config = ingest_defaults();
    config.ingest.max_body_bytes = limits.max_body_bytes;
    config.ingest.max_decompressed_bytes = limits.max_decompressed_bytes;
    config.ingest.max_events = limits.max_events;
    config
}

/// Starts an ingest node on 127.0.0.1:<free port> appending to `kafka`;
/// returns its base URL.
pub async fn start_ingest(
    master: MasterSecret,
    control: Arc<ControlCache>,
    kafka: &KafkaConfig,
    config: &Config,
) -> String {
    let log = Arc::new(KafkaProducer::new(kafka).expect("producer"));
    start_ingest_on(master, control, log, config).await
}

/// Starts an ingest node appending to `log`; returns its base URL.
pub async fn start_ingest_on(
    master: MasterSecret,
    control: Arc<ControlCache>,
    log: Arc<dyn LogProducer>,
    config: &Config,
) -> String {
    start_ingest_with(master, control, log, config, std::future::pending()).await
}

/// Starts an ingest node built by `candor::node` from `config`, serving on
/// 127.0.0.1:<free port> until `shutdown` resolves; returns its base URL
/// (`https` when TLS is set).
pub async fn start_ingest_with(
    master: MasterSecret,
    control: Arc<ControlCache>,
    log: Arc<dyn LogProducer>,
    config: &Config,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> String {
    config
        .validate(Role::Ingest)
        .expect("a valid ingest configuration");
    let registry = prometheus::Registry::new();
    let state = candor::node::ingest_state(config, control, log, &master, &registry)
        .expect("a usable ingest configuration");
    let scheme = state.config().serve.scheme();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(candor_ingest::serve(listener, state, shutdown));
    format!("{scheme}://{addr}")
}

pub fn header(tenant: &str, employee: &str, device: &str) -> EnvelopeHeader {
    EnvelopeHeader {
        key_version: 1,
        batch_id: rand::random(),
        tenant: TenantId::new(tenant).unwrap(),
        employee: EmployeeId::new(employee).unwrap(),
        device: DeviceId::new(device).unwrap(),
    }
}

pub fn seal(master: &MasterSecret, h: &EnvelopeHeader, json: &[u8]) -> Vec<u8> {
    let key = master.device_key(&h.tenant, &h.employee, &h.device, h.key_version);
    envelope::seal_json(h, &key, &rand::random(), json)
}

pub fn seal_batch(master: &MasterSecret, h: &EnvelopeHeader, batch: &Batch) -> Vec<u8> {
    seal(master, h, &serde_json::to_vec(batch).unwrap())
}

pub async fn post(url: &str, content_type: &str, body: Vec<u8>) -> (u16, serde_json::Value) {
    let response = reqwest::Client::new()
        .post(format!("{url}/v1/batches"))
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .expect("ingest answers");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or_default())
}

pub fn ms(day: NaiveDate, h: u32, m: u32) -> i64 {
    day.and_hms_opt(h, m, 0)
        .unwrap()
        .and_utc()
        .timestamp_millis()
}

pub fn samples(start_ms: i64, count: i64, active_s: u32, idle_s: u32) -> Vec<ActivitySample> {
    (0..count)
        .map(|i| ActivitySample {
            start_ms: start_ms + i * 60_000,
            active_s,
            idle_s,
        })
        .collect()
}

pub fn activity_batch(activity: Vec<ActivitySample>) -> Batch {
    Batch {
        v: 1,
        sent_at_ms: 0,
        activity,
        app_usage: vec![],
        gps: vec![],
        attendance: vec![],
    }
}
