//! One wiring path: every node is built here from a [`Config`], whether the
//! binary, a test or a benchmark starts it.
//!
//! A node gets one metrics registry, served on its own `/metrics`; the
//! control cache configured for its role ([`cache_config`]); its log, lake
//! and listeners; and one stop signal that ends all of its tasks.
//! [`start`] binds the node's ports and returns once it serves; [`Node::wait`]
//! waits for it to stop.

pub mod maintenance;
mod secret;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use candor_control::{Admin, AuditLog, CacheConfig, ControlCache, DocumentStore};
use candor_ingest::{IngestMetrics, IngestState};
use candor_log::kafka::{KafkaConfig, KafkaConsumer, KafkaProducer, ProducerStats, ensure_topic};
use candor_log::spool::{Spool, SpoolConfig};
use candor_log::{LogConsumer, LogProducer};
use candor_processor::{Lakes, Processor, ProcessorConfig, ProcessorMetrics, ProcessorStats};
use candor_query::api::QueryState;
use candor_query::lake::{LakeConfig, QueryLake};
use candor_schemas::keys::MasterSecret;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::{Config, Role};
use maintenance::Maintenance;
pub use secret::{master_secret, master_secret_or_create};

/// The control plane's documents, and the store and prefix they live in
/// (the audit trail is kept beside them).
pub struct ControlStore {
    pub documents: DocumentStore,
    pub store: Arc<dyn object_store::ObjectStore>,
    pub prefix: object_store::path::Path,
}

/// Opens the control plane the configuration names.
pub fn control_store(config: &Config) -> Result<ControlStore> {
    let url = config.control_url();
    let (store, prefix) =
        candor_control::open_store(&url).with_context(|| format!("opening control plane {url}"))?;
    Ok(ControlStore {
        documents: DocumentStore::new(store.clone(), &prefix),
        store,
        prefix,
    })
}

/// The audit trail of the configured control plane.
pub fn audit_log(config: &Config, master: &MasterSecret) -> Result<AuditLog> {
    let c = control_store(config)?;
    Ok(AuditLog::new(c.store, &c.prefix, master.clone()))
}

/// The operator's admin operations on the configured control plane.
pub fn admin(config: &Config, master: &MasterSecret) -> Result<Admin> {
    let c = control_store(config)?;
    let audit = AuditLog::new(c.store, &c.prefix, master.clone());
    Ok(Admin::new(c.documents, Arc::new(audit), master.clone()))
}

/// What each role keeps of the control plane: ingest needs tenants,
/// devices and revocations; the processor also the directory (departments
/// in the lake); the query node also tokens.
pub fn cache_config(config: &Config, role: Role) -> CacheConfig {
    let (tokens, directory) = match role {
        Role::Standalone | Role::Query => (true, true),
        Role::Processor => (false, true),
        Role::Ingest | Role::Operator => (false, false),
    };
    CacheConfig {
        refresh_every: std::time::Duration::from_secs(config.control.refresh_secs.max(1)),
        stale_after: std::time::Duration::from_secs(config.control.stale_secs),
        tokens,
        directory,
        ..CacheConfig::default()
    }
}

/// The node's copy of the control plane, its metrics in `registry`.
pub fn control_cache(
    config: &Config,
    role: Role,
    master: &MasterSecret,
    registry: &prometheus::Registry,
) -> Result<Arc<ControlCache>> {
    Ok(Arc::new(ControlCache::new(
        control_store(config)?.documents,
        master.clone(),
        cache_config(config, role),
        registry,
    )))
}

/// The processor's settings.
pub fn processor_config(config: &Config) -> ProcessorConfig {
    ProcessorConfig {
        group: config.processor.group.clone(),
        max_records_per_flush: config.processor.max_records_per_flush as usize,
        dedup_window: std::time::Duration::from_secs(config.processor.dedup_window_hours * 3600),
        rejoin_stalled_after: (config.processor.rejoin_stalled_after_secs > 0)
            .then(|| std::time::Duration::from_secs(config.processor.rejoin_stalled_after_secs)),
        ..ProcessorConfig::default()
    }
}

/// A processor on `log`, writing the configured lake, with its metrics,
/// sending what it cannot open to `dead_letters` (counted and skipped
/// without one).
pub fn processor<C: LogConsumer>(
    config: &Config,
    log: C,
    control: Arc<ControlCache>,
    dead_letters: Option<Arc<dyn LogProducer>>,
    registry: &prometheus::Registry,
) -> Result<Processor<C>> {
    let processor = Processor::new(
        log,
        control,
        Lakes::open(&config.lake_url())?,
        processor_config(config),
    )
    .with_metrics(ProcessorMetrics::register(registry));
    Ok(match dead_letters {
        Some(dead) => processor.with_dead_letters(dead),
        None => processor,
    })
}

/// The query node's state: its lake, control cache, admin and delivery policy.
pub fn query_state(
    config: &Config,
    control: Arc<ControlCache>,
    master: &MasterSecret,
    registry: &prometheus::Registry,
) -> Result<Arc<QueryState>> {
    let lake = QueryLake::new(LakeConfig::new(config.lake_url()))?;
    let mut state = QueryState::new(
        control,
        Arc::new(admin(config, master)?),
        Arc::new(lake),
        master.clone(),
        registry.clone(),
    );
    state.delivery.allowed_internal_hosts = config.query.extract_receiver_allow_hosts.clone();
    state.limits = config.sql_limits();
    Ok(Arc::new(state))
}

/// The ingest node's state on `log`.
pub fn ingest_state(
    config: &Config,
    control: Arc<ControlCache>,
    log: Arc<dyn LogProducer>,
    master: &MasterSecret,
    registry: &prometheus::Registry,
) -> Result<Arc<IngestState>> {
    Ok(Arc::new(
        IngestState::new(
            master.clone(),
            config.ingest()?,
            control,
            log,
            IngestMetrics::new(registry.clone()),
        )
        .map_err(anyhow::Error::msg)?,
    ))
}

/// The Kafka topics a deployment uses, created if missing: the records'
/// with `kafka.partitions`, the dead letters' with one.
pub async fn ensure_topics(config: &Config) -> Result<KafkaConfig> {
    let kafka = config.kafka();
    ensure_topic(&kafka, config.kafka.partitions)
        .await
        .with_context(|| format!("creating topic {} on {}", kafka.topic, kafka.brokers))?;
    let dead = dead_letter_kafka(config);
    ensure_topic(&dead, 1)
        .await
        .with_context(|| format!("creating dead-letter topic {}", dead.topic))?;
    Ok(kafka)
}

fn dead_letter_kafka(config: &Config) -> KafkaConfig {
    KafkaConfig {
        topic: config.kafka.dead_letter_topic.clone(),
        ..config.kafka()
    }
}

/// One stop signal for every task of a node.
#[derive(Clone)]
pub struct Stop(watch::Sender<bool>);

impl Stop {
    fn new() -> Self {
        Self(watch::channel(false).0)
    }

    /// Asks the node to stop: listeners drain, the processor finishes its round.
    pub fn stop(&self) {
        self.0.send_replace(true);
    }

    /// Resolves once the node is asked to stop.
    pub fn stopped(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.0.subscribe();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    }
}

/// A running node.
pub struct Node {
    pub role: Role,
    /// Where agents post (standalone, ingest).
    pub ingest: Option<SocketAddr>,
    /// The query API (standalone, query).
    pub query: Option<SocketAddr>,
    /// `/metrics` and `/healthz` of a processor (`processor.listen`).
    pub metrics: Option<SocketAddr>,
    /// `http` or `https`, as the node's listeners serve.
    pub scheme: &'static str,
    stop: Stop,
    task: JoinHandle<Result<Option<ProcessorStats>>>,
}

impl Node {
    /// A handle that stops the node.
    pub fn stopper(&self) -> Stop {
        self.stop.clone()
    }

    /// Waits until the node has stopped (asked to, or failed), with the
    /// processor's totals where it runs one.
    pub async fn wait(self) -> Result<Option<ProcessorStats>> {
        self.task.await.context("node task")?
    }
}

/// Keeps `control` fresh until the node stops.
fn refresh(control: Arc<ControlCache>, stop: &Stop) -> impl Future<Output = ()> + Send + 'static {
    let stopped = stop.stopped();
    async move { control.run_refresher(stopped).await }
}

async fn bind(addr: SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))
}

/// Starts a node of `role` from `config`: validates it, then binds its
/// ports, and returns once it serves.
pub async fn start(config: Config, role: Role) -> Result<Node> {
    config.validate(role)?;
    match role {
        Role::Standalone => standalone(config).await,
        Role::Ingest => ingest(config).await,
        Role::Processor => processor_node(config).await,
        Role::Query => query(config).await,
        Role::Operator => bail!("operator commands run once; they are not nodes"),
    }
}

/// Everything on one machine: the embedded log, ingest, the processor, the
/// query API and the lake's maintenance in one process. A processor that
/// fails stops ingest too: accepting data nothing processes would only fill
/// the log; a restart resumes from the last commit.
async fn standalone(config: Config) -> Result<Node> {
    let data = &config.data_dir;
    std::fs::create_dir_all(data)
        .with_context(|| format!("creating data directory {}", data.display()))?;
    let master = master_secret_or_create(&config)?;
    let spool = Spool::open(SpoolConfig {
        partitions: config.spool.partitions,
        max_disk_bytes: config.spool.max_disk_mb * 1024 * 1024,
        ..SpoolConfig::new(data.join("spool"))
    })?;
    let dead_letters = Spool::open(SpoolConfig {
        partitions: 1,
        ..SpoolConfig::new(data.join("dead-letters"))
    })?;
    let registry = prometheus::Registry::new();
    // One copy of the control plane serves all three parts.
    let control = control_cache(&config, Role::Standalone, &master, &registry)?;
    let mut processor = processor(
        &config,
        spool.consumer(&config.processor.group)?,
        control.clone(),
        Some(Arc::new(dead_letters.producer())),
        &registry,
    )?;
    let query_state = query_state(&config, control.clone(), &master, &registry)?;
    let query_serve = config.query_serve()?;
    let ingest = ingest_state(
        &config,
        control.clone(),
        Arc::new(spool.producer()),
        &master,
        &registry,
    )?;
    let scheme = config.scheme();
    let ingest_listener = bind(config.ingest.listen).await?;
    let query_listener = bind(config.query.listen).await?;
    let (ingest_addr, query_addr) = (ingest_listener.local_addr()?, query_listener.local_addr()?);

    let stop = Stop::new();
    Maintenance::new(&config, master.clone(), &registry)?.schedule(&config, &stop);
    tokio::spawn(refresh(control.clone(), &stop));
    if config.maintenance.extracts_every_hours > 0 {
        tokio::spawn(candor_query::api::run_extract_schedule(
            query_state.clone(),
            std::time::Duration::from_secs(config.maintenance.extracts_every_hours * 3600),
            stop.stopped(),
        ));
    }
    let processing = tokio::spawn({
        let stop = stop.clone();
        async move {
            let outcome = processor.run(stop.stopped()).await;
            if let Err(e) = &outcome {
                tracing::error!(error = %e, "processor failed; stopping standalone");
                stop.stop();
            }
            outcome.map(|()| processor.stats())
        }
    });
    let querying = tokio::spawn(candor_query::api::serve(
        query_listener,
        query_state,
        query_serve,
        stop.stopped(),
    ));
    let task = tokio::spawn({
        let stopped = stop.stopped();
        async move {
            candor_ingest::serve(ingest_listener, ingest, stopped).await?;
            querying.await.context("query task")??;
            let stats = processing.await.context("processor task")??;
            Ok(Some(stats))
        }
    });
    Ok(Node {
        role: Role::Standalone,
        ingest: Some(ingest_addr),
        query: Some(query_addr),
        metrics: None,
        scheme,
        stop,
        task,
    })
}

/// An ingest node: sealed batches over HTTP(S), appended to Kafka.
async fn ingest(config: Config) -> Result<Node> {
    let master = master_secret(&config)?;
    let kafka = ensure_topics(&config).await?;
    let registry = prometheus::Registry::new();
    let control = control_cache(&config, Role::Ingest, &master, &registry)?;
    let log = KafkaProducer::with_stats(&kafka, ProducerStats::register(&registry))?;
    let state = ingest_state(&config, control.clone(), Arc::new(log), &master, &registry)?;
    let scheme = config.scheme();
    let listener = bind(config.ingest.listen).await?;
    let addr = listener.local_addr()?;
    let stop = Stop::new();
    tokio::spawn(refresh(control.clone(), &stop));
    tracing::info!(
        listen = %format!("{scheme}://{addr}"),
        brokers = %kafka.brokers,
        topic = %kafka.topic,
        "ingest listening: POST {}", candor_ingest::BATCH_ROUTE
    );
    let task = tokio::spawn({
        let stopped = stop.stopped();
        async move {
            candor_ingest::serve(listener, state, stopped).await?;
            Ok(None)
        }
    });
    Ok(Node {
        role: Role::Ingest,
        ingest: Some(addr),
        query: None,
        metrics: None,
        scheme,
        stop,
        task,
    })
}

/// A processor: one member of the consumer group, writing the lake.
async fn processor_node(config: Config) -> Result<Node> {
    let parts = processor_parts(&config).await?;
    let (mut processor, stop, metrics) = (parts.processor, parts.stop, parts.metrics);
    Maintenance::new(&config, parts.master, &parts.registry)?.schedule(&config, &stop);
    tracing::info!(lake = %config.lake_url(), group = %config.processor.group, topic = %config.kafka.topic, "processor started");
    let task = tokio::spawn({
        let stopped = stop.stopped();
        async move {
            processor.run(stopped).await?;
            Ok(Some(processor.stats()))
        }
    });
    Ok(Node {
        role: Role::Processor,
        ingest: None,
        query: None,
        metrics,
        scheme: "http",
        stop,
        task,
    })
}

/// What a processor node is made of: the processor, its secret, registry
/// and stop signal, and its metrics address when `processor.listen` is set.
struct ProcessorParts {
    processor: Processor<KafkaConsumer>,
    master: MasterSecret,
    registry: prometheus::Registry,
    stop: Stop,
    metrics: Option<SocketAddr>,
}

async fn processor_parts(config: &Config) -> Result<ProcessorParts> {
    config.validate(Role::Processor)?;
    let master = master_secret(config)?;
    let kafka = ensure_topics(config).await?;
    let registry = prometheus::Registry::new();
    let control = control_cache(config, Role::Processor, &master, &registry)?;
    let consumer = KafkaConsumer::new(&kafka, &config.processor.group)?;
    let dead_letters = KafkaProducer::new(&dead_letter_kafka(config))?;
    let processor = processor(
        config,
        consumer,
        control.clone(),
        Some(Arc::new(dead_letters)),
        &registry,
    )?;
    let stop = Stop::new();
    tokio::spawn(refresh(control.clone(), &stop));
    let metrics = match config.processor.listen {
        Some(addr) => {
            let listener = bind(addr).await?;
            let addr = listener.local_addr()?;
            tracing::info!(%addr, "processor metrics on /metrics");
            tokio::spawn(candor_processor::serve_metrics(
                listener,
                registry.clone(),
                stop.stopped(),
            ));
            Some(addr)
        }
        None => None,
    };
    Ok(ProcessorParts {
        processor,
        master,
        registry,
        stop,
        metrics,
    })
}

/// Processes everything already in the log, then stops (`processor --drain`).
pub async fn drain_processor(config: &Config) -> Result<ProcessorStats> {
    let mut parts = processor_parts(config).await?;
    let outcome = parts.processor.drain().await;
    parts.stop.stop();
    outcome?;
    Ok(parts.processor.stats())
}

/// A query node: the KPI, SQL, extract and admin API behind bearer tokens.
async fn query(config: Config) -> Result<Node> {
    let serve = config.query_serve()?;
    let master = master_secret(&config)?;
    let registry = prometheus::Registry::new();
    let control = control_cache(&config, Role::Query, &master, &registry)?;
    let state = query_state(&config, control.clone(), &master, &registry)?;
    let scheme = serve.scheme();
    let listener = bind(config.query.listen).await?;
    let addr = listener.local_addr()?;
    let stop = Stop::new();
    tokio::spawn(refresh(control.clone(), &stop));
    Maintenance::new(&config, master, &registry)?.schedule(&config, &stop);
    if config.maintenance.extracts_every_hours > 0 {
        tokio::spawn(candor_query::api::run_extract_schedule(
            state.clone(),
            std::time::Duration::from_secs(config.maintenance.extracts_every_hours * 3600),
            stop.stopped(),
        ));
    }
    tracing::info!(listen = %addr, control = %config.control_url(), "query listening");
    let task = tokio::spawn({
        let stopped = stop.stopped();
        async move {
            candor_query::api::serve(listener, state, serve, stopped).await?;
            Ok(None)
        }
    });
    Ok(Node {
        role: Role::Query,
        ingest: None,
        query: Some(addr),
        metrics: None,
        scheme,
        stop,
        task,
    })
}
