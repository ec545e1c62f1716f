//! One typed configuration for every node and command.
//!
//! Layers, each overriding the one before (figment does the merging):
//! 1. the defaults of the role ([`Config::defaults`]): the only place where
//!    roles differ (standalone runs the lake's maintenance, a processor or
//!    query node leaves it off unless told);
//! 2. a TOML file, `--config FILE` or `CANDOR_CONFIG`;
//! 3. `CANDOR_*` environment variables, nested with `__`
//!    (`CANDOR_KAFKA__BROKERS`, `CANDOR_INGEST__LISTEN`), and the variable
//!    names of the previous release ([`LEGACY_VARIABLES`]), which still work
//!    with a warning;
//! 4. the few flags a person types (`--listen`, `--lake`, `--set KEY=VALUE`).
//!
//! Every key of a file or a `CANDOR_*__*` variable must be a setting: an
//! unknown key, a wrong type or two settings that contradict each other are
//! refused, naming the key, before any node binds a port ([`Config::validate`]).
//! `candor config print` shows the result and `candor config check` checks a
//! file.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use candor_http::{ServeConfig, load_tls};
use candor_ingest::{IngestConfig, QuotaConfig, ReplayConfig};
use candor_log::kafka::{Acks, Compression, KafkaConfig};
use candor_schemas::Limits;
use candor_schemas::record::RecordFormat;
use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

/// What a process is: one of the nodes, or an operator command that runs once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Ingest, processor and query in one process, on the embedded log.
    Standalone,
    Ingest,
    Processor,
    Query,
    /// The operator's commands: tenants, tokens, retention runs, KPIs.
    Operator,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Self::Standalone => "standalone",
            Self::Ingest => "ingest",
            Self::Processor => "processor",
            Self::Query => "query",
            Self::Operator => "operator",
        }
    }
}

/// Every setting of Candor. Field docs are the reference; `candor config
/// print` shows the effective values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Standalone's data directory: the master secret it creates
    /// (`master.key`), the embedded log (`spool/`), dead letters, and the
    /// default control plane (`control/`) and lake (`lake/`) of every role.
    pub data_dir: PathBuf,
    /// A file holding the master secret as hex. Without it,
    /// `CANDOR_MASTER_SECRET` (hex, environment only), else
    /// `<data_dir>/master.key`. Never a flag: it would leak into process
    /// listings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub master_secret_file: Option<PathBuf>,
    pub control: ControlSettings,
    pub lake: LakeSettings,
    pub kafka: KafkaSettings,
    pub spool: SpoolSettings,
    pub tls: TlsSettings,
    pub ingest: IngestSettings,
    pub processor: ProcessorSettings,
    pub query: QuerySettings,
    pub maintenance: MaintenanceSettings,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlSettings {
    /// The control plane's store: a directory, `file:///path` or
    /// `s3://bucket/prefix` (S3 settings from `AWS_*`). Default
    /// `<data_dir>/control`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(deserialize_with = "text::option")]
    pub url: Option<String>,
    /// Seconds between refreshes of a node's copy (how soon a revocation bites).
    pub refresh_secs: u64,
    /// Seconds a node may serve from its last good copy before it reports
    /// not ready.
    pub stale_secs: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LakeSettings {
    /// The deployment's Parquet lake: a directory, `file:///path` or
    /// `s3://bucket/prefix` (`AWS_ENDPOINT_URL` for MinIO and the like).
    /// A tenant whose document names a `lake_url` has its rows there
    /// instead. Default `<data_dir>/lake`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "text::option"
    )]
    pub url: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSettings {
    /// Bootstrap servers (`bootstrap.servers`).
    #[serde(deserialize_with = "text::deserialize")]
    pub brokers: String,
    /// Topic that carries log records.
    #[serde(deserialize_with = "text::deserialize")]
    pub topic: String,
    /// Topic that receives records the processor cannot open or decode.
    #[serde(deserialize_with = "text::deserialize")]
    pub dead_letter_topic: String,
    /// Partitions of the records topic when Candor creates it (the most
    /// processors that can share the work).
    pub partitions: i32,
    /// Replicas of each partition of the topics Candor creates.
    pub replication_factor: i32,
    /// Milliseconds a processor may go unheard before its partitions go
    /// to the others of its group (`session.timeout.ms`).
    pub session_timeout_ms: u32,
    /// `all` (every in-sync replica) or `leader`.
    pub acks: Acks,
    /// Idempotent producer: retries never duplicate or reorder. Needs `acks = "all"`.
    pub idempotence: bool,
    pub linger_ms: u32,
    pub batch_bytes: u32,
    /// `none` (records are ciphertext), `lz4` or `zstd`.
    pub compression: Compression,
    /// Milliseconds a record may wait for its acknowledgement before the
    /// agent gets 503.
    pub message_timeout_ms: u32,
    /// Records queued in the producer before ingest answers 503.
    pub queue_max_messages: u32,
    /// KiB queued in the producer before ingest answers 503.
    pub queue_max_kbytes: u32,
    /// How often librdkafka statistics become metrics, in ms (0 = off).
    pub statistics_interval_ms: u32,
    /// Any other librdkafka property (TLS, SASL, ...), applied last; a
    /// property Candor sets from the keys above is refused. A table, or
    /// `key=value,key=value` in a variable.
    #[serde(default, deserialize_with = "pairs::deserialize")]
    pub properties: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpoolSettings {
    /// Partitions of the embedded log (fixed once it exists).
    pub partitions: u32,
    /// Disk the embedded log may use before ingest answers 503, in MiB.
    pub max_disk_mb: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSettings {
    /// PEM certificate chain (leaf first); with `key`, ingest and query
    /// serve HTTPS with HTTP/2 and HTTP/1.1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    /// PEM private key of the certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
    /// Serve plain HTTP on a non-loopback address: only on a trusted
    /// network or behind a proxy that terminates TLS.
    pub plain_http: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestSettings {
    /// Address agents post to.
    pub listen: SocketAddr,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// Largest batch after decompression, in bytes (decompression-bomb cap).
    pub max_decompressed_bytes: usize,
    /// Most events in one batch.
    pub max_events: usize,
    /// Batches per second one device may send, sustained (0 = no limit).
    pub device_batches_per_s: u32,
    /// Batches a device may send at once (catching up after being offline).
    pub device_burst: u32,
    /// Events per second one tenant may send to this node (0 = no limit).
    pub tenant_events_per_s: u32,
    /// Events a tenant may send at once (at least `max_events`).
    pub tenant_burst: u32,
    /// Seconds an accepted batch id is remembered, so a retry is answered
    /// 202 without being appended again.
    pub replay_window_secs: u64,
    /// Most batch ids remembered (about 100 bytes each).
    pub replay_max_entries: usize,
    /// Batch requests handled at once; more get 503 with Retry-After.
    pub max_in_flight: usize,
    /// Connections served at once; more wait to be accepted.
    pub max_connections: usize,
    /// Seconds a connection may go without a request in flight.
    pub header_timeout_secs: u64,
    /// Seconds a client may take to send its request body (then 408).
    pub body_timeout_secs: u64,
    /// Layout of the log records this node writes: 2 (one record per
    /// batch), or 1 while processors of the release before 2 still read
    /// the log (rolling upgrade: processors first, then this back to 2).
    pub log_record_format: u8,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessorSettings {
    /// Consumer group shared by all processors of a deployment.
    #[serde(deserialize_with = "text::deserialize")]
    pub group: String,
    /// Most log records aggregated into one set of Parquet objects. Larger
    /// flushes cost less per event (fewer, larger files: 12% less CPU at
    /// 40,000 than at 10,000 with 5-minute uploads, benchmarks/RESULTS.md)
    /// and hold more records in memory at once.
    pub max_records_per_flush: u32,
    /// Hours a batch id is remembered to count a second copy once.
    pub dedup_window_hours: u64,
    /// Seconds a log partition with records waiting may go without a
    /// commit from anyone in the group, while this processor keeps up,
    /// before it leaves and rejoins the group so that the broker assigns
    /// every partition afresh (a broker that left a dead member's
    /// partitions unassigned); 0: never.
    pub rejoin_stalled_after_secs: u64,
    /// Address of a processor's `/metrics` and `/healthz` (plain HTTP;
    /// none when unset). Standalone serves them on the ingest address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuerySettings {
    /// Address of the query API.
    pub listen: SocketAddr,
    /// Connections served at once; more wait to be accepted.
    pub max_connections: usize,
    /// Seconds a connection may go without a request in flight.
    pub header_timeout_secs: u64,
    /// Seconds a client may take to send its request body (then 408).
    pub body_timeout_secs: u64,
    /// Hosts an AI extract receiver may be on although they resolve to a
    /// loopback, private or link-local address; every other such receiver
    /// is refused. A list, or names separated by commas in a variable.
    #[serde(default, deserialize_with = "list::deserialize")]
    pub extract_receiver_allow_hosts: Vec<String>,
    /// Bytes of SQL text a statement may have (`POST /v1/sql`).
    pub sql_max_bytes: usize,
    /// Rows a statement answers at most; the answer says it was cut.
    pub sql_max_rows: usize,
    /// Memory a statement may use (bytes) before it fails.
    pub sql_memory_bytes: usize,
    /// Seconds a statement may run before it is cancelled.
    pub sql_timeout_secs: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaintenanceSettings {
    /// Hours between retention runs (the first at start); 0 = off. On by
    /// default in standalone; give it to one node of a deployment (or run
    /// `candor retention run` from cron).
    pub retention_every_hours: u64,
    /// Minutes between compaction runs (the first at start); 0 = off. Safe
    /// on several nodes at once: Delta's conflict checks keep runs apart.
    pub compact_every_minutes: u64,
    /// Hours between runs that produce and deliver the previous day's AI
    /// extract of each tenant with a receiver; 0 = off. Runs on a query
    /// node (or standalone): give it to one.
    pub extracts_every_hours: u64,
    /// Days a cancelled tenant's data is kept before it is purged.
    pub purge_grace_days: u32,
}

impl Config {
    /// The defaults of `role`: what a node runs with when nothing is set.
    pub fn defaults(role: Role) -> Self {
        let kafka = KafkaConfig::new("127.0.0.1:19092", "candor.records");
        let ingest = IngestConfig::default();
        let serve = ServeConfig::default();
        let limits = Limits::default();
        let quotas = QuotaConfig::default();
        let replay = ReplayConfig::default();
        let sql = candor_query::session::Limits::default();
        let on_one_machine = role == Role::Standalone;
        Self {
            data_dir: PathBuf::from(".candor"),
            master_secret_file: None,
            control: ControlSettings {
                url: None,
                refresh_secs: 10,
                stale_secs: 120,
            },
            lake: LakeSettings { url: None },
            kafka: KafkaSettings {
                brokers: kafka.brokers,
                topic: kafka.topic,
                dead_letter_topic: "candor.dead-letters".into(),
                partitions: 6,
                replication_factor: kafka.replication_factor,
                session_timeout_ms: kafka.session_timeout_ms,
                acks: kafka.acks,
                idempotence: kafka.idempotence,
                linger_ms: kafka.linger_ms,
                batch_bytes: kafka.batch_bytes,
                compression: kafka.compression,
                message_timeout_ms: kafka.message_timeout_ms,
                queue_max_messages: kafka.queue_max_messages,
                queue_max_kbytes: kafka.queue_max_kbytes,
                statistics_interval_ms: kafka.statistics_interval_ms,
                properties: BTreeMap::new(),
            },
            spool: SpoolSettings {
                partitions: 4,
                max_disk_mb: 10 * 1024,
            },
            tls: TlsSettings {
                cert: None,
                key: None,
                plain_http: false,
            },
            ingest: IngestSettings {
                listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
                max_body_bytes: limits.max_body_bytes,
                max_decompressed_bytes: limits.max_decompressed_bytes,
                max_events: limits.max_events,
                device_batches_per_s: quotas.device_batches_per_s,
                device_burst: quotas.device_burst,
                tenant_events_per_s: quotas.tenant_events_per_s,
                tenant_burst: quotas.tenant_burst,
                replay_window_secs: replay.window.as_secs(),
                replay_max_entries: replay.max_entries,
                max_in_flight: ingest.max_in_flight,
                max_connections: serve.max_connections,
                header_timeout_secs: serve.header_read_timeout.as_secs(),
                body_timeout_secs: ingest.body_timeout.as_secs(),
                log_record_format: ingest.record_format as u8,
            },
            processor: ProcessorSettings {
                group: "candor-processor".into(),
                max_records_per_flush: 10_000,
                dedup_window_hours: 48,
                rejoin_stalled_after_secs: 60,
                listen: None,
            },
            query: QuerySettings {
                listen: SocketAddr::from(([127, 0, 0, 1], 8081)),
                max_connections: serve.max_connections,
                header_timeout_secs: serve.header_read_timeout.as_secs(),
                body_timeout_secs: serve.request_body_timeout.as_secs(),
                extract_receiver_allow_hosts: Vec::new(),
                sql_max_bytes: sql.max_sql_bytes,
                sql_max_rows: sql.max_rows,
                sql_memory_bytes: sql.memory_bytes,
                sql_timeout_secs: sql.timeout.as_secs(),
            },
            maintenance: MaintenanceSettings {
                retention_every_hours: if on_one_machine { 6 } else { 0 },
                compact_every_minutes: if on_one_machine { 10 } else { 0 },
                extracts_every_hours: if on_one_machine { 6 } else { 0 },
                purge_grace_days: 30,
            },
        }
    }

    /// The control plane's store.
    pub fn control_url(&self) -> String {
        self.control
            .url
            .clone()
            .unwrap_or_else(|| self.data_dir.join("control").display().to_string())
    }

    /// The deployment's lake.
    pub fn lake_url(&self) -> String {
        self.lake
            .url
            .clone()
            .unwrap_or_else(|| self.data_dir.join("lake").display().to_string())
    }

    /// This configuration with the defaults that derive from others filled
    /// in (the control plane's and the lake's place), as `config print`
    /// shows it.
    pub fn resolved(&self) -> Self {
        let mut out = self.clone();
        out.control.url = Some(self.control_url());
        out.lake.url = Some(self.lake_url());
        out
    }

    /// The Kafka client's settings.
    pub fn kafka(&self) -> KafkaConfig {
        let k = &self.kafka;
        KafkaConfig {
            acks: k.acks,
            idempotence: k.idempotence,
            linger_ms: k.linger_ms,
            batch_bytes: k.batch_bytes,
            compression: k.compression,
            message_timeout_ms: k.message_timeout_ms,
            queue_max_messages: k.queue_max_messages,
            queue_max_kbytes: k.queue_max_kbytes,
            statistics_interval_ms: k.statistics_interval_ms,
            replication_factor: k.replication_factor,
            session_timeout_ms: k.session_timeout_ms,
            extra: k.properties.clone(),
            ..KafkaConfig::new(&k.brokers, &k.topic)
        }
    }

    /// `https` with a certificate, else `http`: how ingest and query serve.
    pub fn scheme(&self) -> &'static str {
        if self.tls.cert.is_some() {
            "https"
        } else {
            "http"
        }
    }

    /// How a listener on `listen` serves: TLS from `[tls]`, refused as
    /// plain HTTP on a non-loopback address unless `tls.plain_http`.
    fn serve(
        &self,
        node: &str,
        listen: SocketAddr,
        max_connections: usize,
        header_timeout_secs: u64,
        body_timeout_secs: u64,
    ) -> Result<ServeConfig> {
        let tls = match (&self.tls.cert, &self.tls.key) {
            (Some(cert), Some(key)) => Some(load_tls(cert, key)?),
            _ => None,
        };
        if tls.is_none() && !listen.ip().is_loopback() && !self.tls.plain_http {
            bail!(
                "{node} would serve plain HTTP on {listen}: set tls.cert and tls.key, \
                 or tls.plain_http = true if a trusted network or a TLS proxy is in front"
            );
        }
        Ok(ServeConfig {
            tls,
            max_connections,
            header_read_timeout: Duration::from_secs(header_timeout_secs),
            request_body_timeout: Duration::from_secs(body_timeout_secs),
            ..ServeConfig::default()
        })
    }

    /// The ingest node's settings (loads the TLS certificate).
    pub fn ingest(&self) -> Result<IngestConfig> {
        let i = &self.ingest;
        Ok(IngestConfig {
            limits: Limits {
                max_body_bytes: i.max_body_bytes,
                max_decompressed_bytes: i.max_decompressed_bytes,
                max_events: i.max_events,
                ..Limits::default()
            },
            quotas: QuotaConfig {
                device_batches_per_s: i.device_batches_per_s,
                device_burst: i.device_burst,
                tenant_events_per_s: i.tenant_events_per_s,
                tenant_burst: i.tenant_burst,
            },
            replay: ReplayConfig {
                window: Duration::from_secs(i.replay_window_secs),
                max_entries: i.replay_max_entries,
            },
            max_in_flight: i.max_in_flight,
            body_timeout: Duration::from_secs(i.body_timeout_secs),
            record_format: RecordFormat::from_version(i.log_record_format)
                .context("ingest.log_record_format must be 1 or 2")?,
            serve: self.serve(
                "ingest",
                i.listen,
                i.max_connections,
                i.header_timeout_secs,
                i.body_timeout_secs,
            )?,
            ..IngestConfig::default()
        })
    }

    /// The limits of each SQL statement.
    pub fn sql_limits(&self) -> candor_query::session::Limits {
        let q = &self.query;
        candor_query::session::Limits {
            max_sql_bytes: q.sql_max_bytes,
            max_rows: q.sql_max_rows,
            memory_bytes: q.sql_memory_bytes,
            timeout: Duration::from_secs(q.sql_timeout_secs),
            ..candor_query::session::Limits::default()
        }
    }

    /// How the query API serves (loads the TLS certificate).
    pub fn query_serve(&self) -> Result<ServeConfig> {
        let q = &self.query;
        self.serve(
            "query",
            q.listen,
            q.max_connections,
            q.header_timeout_secs,
            q.body_timeout_secs,
        )
    }

    /// Refuses what would only fail later, or silently do something else
    /// than asked, before `role` binds a port or touches a store.
    pub fn validate(&self, role: Role) -> Result<()> {
        if self.tls.cert.is_some() != self.tls.key.is_some() {
            bail!("tls.cert and tls.key go together: set both, or neither");
        }
        let listens = |role: Role| match role {
            Role::Standalone => vec![
                ("ingest.listen", self.ingest.listen),
                ("query.listen", self.query.listen),
            ],
            Role::Ingest => vec![("ingest.listen", self.ingest.listen)],
            Role::Query => vec![("query.listen", self.query.listen)],
            Role::Processor | Role::Operator => vec![],
        };
        let bound = listens(role);
        if !self.tls.plain_http
            && self.tls.cert.is_none()
            && let Some((key, addr)) = bound.iter().find(|(_, a)| !a.ip().is_loopback())
        {
            bail!(
                "{key} = {addr} would serve plain HTTP on a non-loopback address: set \
                 tls.cert and tls.key, or tls.plain_http = true if a trusted network or a \
                 TLS proxy is in front"
            );
        }
        if let [(a, x), (b, y)] = bound.as_slice()
            && x == y
            && x.port() != 0
        {
            bail!("{a} and {b} are both {x}: give them different addresses");
        }
        if matches!(role, Role::Ingest | Role::Processor) {
            self.kafka().validate().map_err(anyhow::Error::msg)?;
            if self.kafka.partitions < 1 {
                bail!("kafka.partitions must be at least 1");
            }
            if self.kafka.topic == self.kafka.dead_letter_topic {
                bail!(
                    "kafka.topic and kafka.dead_letter_topic are both {:?}",
                    self.kafka.topic
                );
            }
        }
        if self.spool.partitions < 1 {
            bail!("spool.partitions must be at least 1");
        }
        if self.processor.max_records_per_flush < 1 {
            bail!("processor.max_records_per_flush must be at least 1");
        }
        if RecordFormat::from_version(self.ingest.log_record_format).is_none() {
            bail!(
                "ingest.log_record_format must be 1 or 2, not {}",
                self.ingest.log_record_format
            );
        }
        if self.processor.group.trim().is_empty() {
            bail!("processor.group must not be empty");
        }
        if (self.ingest.tenant_burst as usize) < self.ingest.max_events
            && self.ingest.tenant_events_per_s > 0
        {
            bail!(
                "ingest.tenant_burst ({}) must be at least ingest.max_events ({}): a full batch would never pass",
                self.ingest.tenant_burst,
                self.ingest.max_events
            );
        }
        if self.control.refresh_secs == 0 {
            bail!("control.refresh_secs must be at least 1");
        }
        let q = &self.query;
        for (key, value) in [
            ("query.sql_max_bytes", q.sql_max_bytes as u64),
            ("query.sql_max_rows", q.sql_max_rows as u64),
            ("query.sql_timeout_secs", q.sql_timeout_secs),
        ] {
            if value == 0 {
                bail!("{key} must be at least 1");
            }
        }
        if q.sql_memory_bytes < 1024 * 1024 {
            bail!(
                "query.sql_memory_bytes ({}) must be at least 1 MiB (1048576)",
                q.sql_memory_bytes
            );
        }
        Ok(())
    }

    /// The configuration as TOML, with the passthrough's secrets
    /// (passwords, keys, tokens) redacted.
    pub fn to_toml(&self) -> Result<String> {
        let mut shown = self.resolved();
        for (key, value) in &mut shown.kafka.properties {
            let k = key.to_ascii_lowercase();
            if ["password", "secret", "key", "token", "jaas"]
                .iter()
                .any(|s| k.contains(s))
            {
                *value = "<redacted>".into();
            }
        }
        Ok(toml::to_string(&shown)?)
    }
}

/// Where a configuration comes from, apart from the environment.
#[derive(Debug, Default, Clone)]
pub struct Sources {
    /// A TOML file (`--config`); a missing file is an error.
    pub file: Option<PathBuf>,
    /// Settings from flags, as dotted keys and their values, applied last.
    pub overrides: Vec<(String, String)>,
    /// Read `CANDOR_*` variables (off for `config check`, which checks a
    /// file alone).
    pub environment: bool,
}

/// A loaded configuration, and what the loading has to say (old variable
/// names, ignored variables), for the caller to log once logging is set up.
#[derive(Debug)]
pub struct Loaded {
    pub config: Config,
    pub warnings: Vec<String>,
}

/// The variables of the previous release and the keys they set. They keep
/// working for one release, each with a warning naming its new spelling.
pub const LEGACY_VARIABLES: &[(&str, &str)] = &[
    ("CANDOR_LISTEN", "ingest.listen"),
    ("CANDOR_INGEST_LISTEN", "ingest.listen"),
    ("CANDOR_QUERY_LISTEN", "query.listen"),
    ("CANDOR_PROCESSOR_LISTEN", "processor.listen"),
    ("CANDOR_CONTROL_URL", "control.url"),
    ("CANDOR_CONTROL_REFRESH_SECS", "control.refresh_secs"),
    ("CANDOR_CONTROL_STALE_SECS", "control.stale_secs"),
    ("CANDOR_LAKE_URL", "lake.url"),
    ("CANDOR_LAKE_DIR", "lake.url"),
    ("CANDOR_SPOOL_PARTITIONS", "spool.partitions"),
    ("CANDOR_SPOOL_MAX_DISK_MB", "spool.max_disk_mb"),
    ("CANDOR_KAFKA_BROKERS", "kafka.brokers"),
    ("CANDOR_KAFKA_TOPIC", "kafka.topic"),
    ("CANDOR_DEAD_LETTER_TOPIC", "kafka.dead_letter_topic"),
    ("CANDOR_KAFKA_PARTITIONS", "kafka.partitions"),
    ("CANDOR_KAFKA_ACKS", "kafka.acks"),
    ("CANDOR_KAFKA_LINGER_MS", "kafka.linger_ms"),
    ("CANDOR_KAFKA_COMPRESSION", "kafka.compression"),
    (
        "CANDOR_KAFKA_MESSAGE_TIMEOUT_MS",
        "kafka.message_timeout_ms",
    ),
    (
        "CANDOR_KAFKA_QUEUE_MAX_MESSAGES",
        "kafka.queue_max_messages",
    ),
    ("CANDOR_KAFKA_QUEUE_MAX_KBYTES", "kafka.queue_max_kbytes"),
    (
        "CANDOR_KAFKA_STATISTICS_INTERVAL_MS",
        "kafka.statistics_interval_ms",
    ),
    ("CANDOR_KAFKA_SET", "kafka.properties"),
    ("CANDOR_TLS_CERT", "tls.cert"),
    ("CANDOR_TLS_KEY", "tls.key"),
    ("CANDOR_PLAIN_HTTP", "tls.plain_http"),
    ("CANDOR_INGEST_MAX_BODY_BYTES", "ingest.max_body_bytes"),
    (
        "CANDOR_INGEST_MAX_DECOMPRESSED_BYTES",
        "ingest.max_decompressed_bytes",
    ),
    ("CANDOR_INGEST_MAX_EVENTS", "ingest.max_events"),
    (
        "CANDOR_INGEST_DEVICE_BATCHES_PER_S",
        "ingest.device_batches_per_s",
    ),
    ("CANDOR_INGEST_DEVICE_BURST", "ingest.device_burst"),
    (
        "CANDOR_INGEST_TENANT_EVENTS_PER_S",
        "ingest.tenant_events_per_s",
    ),
    ("CANDOR_INGEST_TENANT_BURST", "ingest.tenant_burst"),
    (
        "CANDOR_INGEST_REPLAY_WINDOW_SECS",
        "ingest.replay_window_secs",
    ),
    (
        "CANDOR_INGEST_REPLAY_MAX_ENTRIES",
        "ingest.replay_max_entries",
    ),
    ("CANDOR_INGEST_MAX_IN_FLIGHT", "ingest.max_in_flight"),
    ("CANDOR_INGEST_MAX_CONNECTIONS", "ingest.max_connections"),
    (
        "CANDOR_INGEST_HEADER_TIMEOUT_SECS",
        "ingest.header_timeout_secs",
    ),
    (
        "CANDOR_INGEST_BODY_TIMEOUT_SECS",
        "ingest.body_timeout_secs",
    ),
    ("CANDOR_QUERY_MAX_CONNECTIONS", "query.max_connections"),
    (
        "CANDOR_QUERY_HEADER_TIMEOUT_SECS",
        "query.header_timeout_secs",
    ),
    ("CANDOR_QUERY_BODY_TIMEOUT_SECS", "query.body_timeout_secs"),
    (
        "CANDOR_EXTRACT_RECEIVER_ALLOW_HOSTS",
        "query.extract_receiver_allow_hosts",
    ),
    ("CANDOR_PROCESSOR_GROUP", "processor.group"),
    (
        "CANDOR_PROCESSOR_MAX_RECORDS_PER_FLUSH",
        "processor.max_records_per_flush",
    ),
    (
        "CANDOR_RETENTION_EVERY_HOURS",
        "maintenance.retention_every_hours",
    ),
    (
        "CANDOR_COMPACT_EVERY_MINUTES",
        "maintenance.compact_every_minutes",
    ),
    (
        "CANDOR_EXTRACTS_EVERY_HOURS",
        "maintenance.extracts_every_hours",
    ),
    ("CANDOR_PURGE_GRACE_DAYS", "maintenance.purge_grace_days"),
];

/// `CANDOR_*` variables that are not settings: read where they are needed
/// (the log filter before anything else, the secret only by the code that
/// derives keys), or by tests and scripts, never by a node.
const NOT_SETTINGS: &[&str] = &["CANDOR_LOG", "CANDOR_CONFIG", "CANDOR_MASTER_SECRET"];

/// Top-level keys, which a variable names without `__`.
const TOP_LEVEL: &[&str] = &["data_dir", "master_secret_file"];

fn legacy_key(variable: &str) -> Option<&'static str> {
    LEGACY_VARIABLES
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(variable))
        .map(|(_, key)| *key)
}

/// Loads the configuration of `role` from `sources` and the environment.
pub fn load(role: Role, sources: &Sources) -> Result<Loaded> {
    let mut warnings = Vec::new();
    let mut figment = Figment::from(Serialized::defaults(Config::defaults(role)));
    if let Some(file) = &sources.file {
        if !file.is_file() {
            bail!("configuration file {} does not exist", file.display());
        }
        figment = figment.merge(Toml::file_exact(file));
    }
    if sources.environment {
        let mut legacy: Vec<(String, &str)> = Vec::new();
        for (name, _) in std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v)))
            .filter(|(k, _)| k.starts_with("CANDOR_"))
        {
            let rest = &name["CANDOR_".len()..];
            if let Some(key) = legacy_key(&name) {
                warnings.push(format!(
                    "{name} is the previous release's name of {key}; use CANDOR_{} (it will stop working in the next release)",
                    key.replace('.', "__").to_ascii_uppercase()
                ));
                legacy.push((name.clone(), key));
            } else if !rest.contains("__")
                && !TOP_LEVEL.contains(&rest.to_ascii_lowercase().as_str())
                && !NOT_SETTINGS.contains(&name.as_str())
            {
                warnings.push(format!(
                    "{name} is not a Candor setting and is ignored (settings are CANDOR_SECTION__KEY; see `candor config print`)"
                ));
            }
        }
        // Old names first, so the new spelling wins where both are set.
        figment = figment.merge(Env::raw().filter_map(|k| legacy_key(k.as_str()).map(Into::into)));
        figment = figment.merge(Env::prefixed("CANDOR_").filter_map(|k| {
            let k = k.as_str();
            if k.contains("__") {
                Some(k.replace("__", ".").into())
            } else if TOP_LEVEL.iter().any(|t| t.eq_ignore_ascii_case(k)) {
                Some(k.into())
            } else {
                None
            }
        }));
        // Two old names for one key (CANDOR_LISTEN, CANDOR_INGEST_LISTEN)
        // with different values would leave the winner to chance.
        for (i, (a, key)) in legacy.iter().enumerate() {
            if let Some((b, _)) = legacy[i + 1..]
                .iter()
                .find(|(b, k)| k == key && std::env::var_os(a) != std::env::var_os(b))
            {
                bail!("{a} and {b} both set {key}, differently: keep one");
            }
        }
    }
    for (key, value) in &sources.overrides {
        let value: figment::value::Value = value.parse().expect("infallible");
        figment = figment.merge(Serialized::default(key, value));
    }
    let config: Config = figment.extract().map_err(|e| {
        // figment names the key and where it came from; one line per error.
        let lines: Vec<String> = e.into_iter().map(|e| e.to_string()).collect();
        anyhow::anyhow!("invalid configuration: {}", lines.join("; "))
    })?;
    Ok(Loaded { config, warnings })
}

/// Checks a configuration file alone (no environment) for `role`: the
/// first problem, with its key, as the error.
pub fn check_file(path: &Path, role: Role) -> Result<Config> {
    let loaded = load(
        role,
        &Sources {
            file: Some(path.to_path_buf()),
            overrides: Vec::new(),
            environment: false,
        },
    )
    .with_context(|| format!("{} is not a valid configuration", path.display()))?;
    loaded
        .config
        .validate(role)
        .with_context(|| format!("{} is not a valid configuration", path.display()))?;
    Ok(loaded.config)
}

/// `KEY=VALUE`, as `--set` takes it.
pub fn parse_override(pair: &str) -> Result<(String, String), String> {
    pair.split_once('=')
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| format!("{pair:?} is not KEY=VALUE (e.g. ingest.max_in_flight=64)"))
}

/// A string, also when a variable's value looks like a number or a
/// boolean (`CANDOR_PROCESSOR__GROUP=2026`): figment types such values.
mod text {
    use serde::{Deserialize, Deserializer};

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Scalar {
        Text(String),
        Int(i64),
        UInt(u64),
        Float(f64),
        Bool(bool),
    }

    impl Scalar {
        fn text(self) -> String {
            match self {
                Self::Text(s) => s,
                Self::Int(n) => n.to_string(),
                Self::UInt(n) => n.to_string(),
                Self::Float(n) => n.to_string(),
                Self::Bool(b) => b.to_string(),
            }
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
        Ok(Scalar::deserialize(d)?.text())
    }

    pub fn option<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
        Ok(Option::<Scalar>::deserialize(d)?.map(Scalar::text))
    }
}

/// A list, or one string of names separated by commas (how a variable says it).
mod list {
    use serde::{Deserialize, Deserializer};

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        List(Vec<String>),
        Text(String),
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
        Ok(match Either::deserialize(d)? {
            Either::List(v) => v,
            Either::Text(s) => s
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect(),
        })
    }
}

/// A table of strings, or one string of `key=value` pairs separated by commas.
mod pairs {
    use std::collections::BTreeMap;

    use serde::de::Error;
    use serde::{Deserialize, Deserializer};

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        Table(BTreeMap<String, toml::Value>),
        Text(String),
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<BTreeMap<String, String>, D::Error> {
        match Either::deserialize(d)? {
            Either::Table(t) => Ok(t
                .into_iter()
                .map(|(k, v)| {
                    let v = match v {
                        toml::Value::String(s) => s,
                        other => other.to_string(),
                    };
                    (k, v)
                })
                .collect()),
            Either::Text(s) => s
                .split(',')
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(|p| {
                    super::parse_override(p)
                        .map_err(|_| D::Error::custom(format!("{p:?} is not key=value")))
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests;
