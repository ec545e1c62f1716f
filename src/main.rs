//! The `candor` binary: one subcommand per role, wiring the crates together.
//! Logic lives in the crates; this file only reads settings and starts things.

mod ingest_args;
mod simulate_args;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use candor_control::{
    Actor, Admin, AuditLog, CacheConfig, ControlCache, Directory, DocumentStore, Plan, Role,
    Tenant, TokenRequest,
};
use candor_ingest::{IngestMetrics, IngestState};
use candor_log::kafka::{
    Acks, Compression, KafkaConfig, KafkaConsumer, KafkaProducer, ProducerStats, ensure_topic,
};
use candor_log::spool::{Spool, SpoolConfig};
use candor_processor::compaction::{self, Compacted, CompactionConfig};
use candor_processor::retention::{self, RetentionConfig, RetentionRun};
use candor_processor::{Lakes, MaintenanceMetrics, Processor, ProcessorConfig, ProcessorMetrics};
use candor_query::TenantLake;
use candor_query::api::QueryState;
use candor_query::lake::{LakeConfig, QueryLake};
use candor_schemas::keys::MasterSecret;
use candor_schemas::{DeviceId, EmployeeId, TenantId};
use chrono::NaiveDate;
use clap::{Args, Parser, Subcommand};
use ingest_args::{IngestNodeArgs, QueryServeArgs, TlsArgs};

#[derive(Parser)]
#[command(
    name = "candor",
    version,
    about = "Candor: a privacy-first telemetry pipeline for workforce agents",
    long_about = "Candor takes sealed activity and GPS batches from workforce agents, keeps raw \
                  identities out of its data lake, and answers productivity KPIs.\n\n\
                  Secrets: the master secret is read from the file named by \
                  CANDOR_MASTER_SECRET_FILE, or as hex from CANDOR_MASTER_SECRET (64+ hex digits). \
                  It is never accepted as a command-line argument, so it cannot leak into \
                  process listings or shell history."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run all of Candor on one machine: ingest, processor and the query
    /// service's API in one process, the embedded durable log, a
    /// local-directory lake and control plane. No broker needed.
    Standalone(StandaloneArgs),
    /// Run an ingest node: accept sealed batches over HTTP and append them to Kafka.
    Ingest(IngestArgs),
    /// Run a processor: consume the log and write the Parquet lake.
    Processor(ProcessorArgs),
    /// Run a query node: the HTTP API (admin routes, behind owner/admin tokens).
    Query(QueryArgs),
    /// Create, show and change tenants (operator, with store access).
    #[command(subcommand)]
    Tenant(TenantCommand),
    /// Replace a tenant's directory (employee to department, managers).
    #[command(subcommand)]
    Directory(DirectoryCommand),
    /// Enroll and revoke devices.
    #[command(subcommand)]
    Device(DeviceCommand),
    /// Create, list and revoke API tokens, including a tenant's first owner token.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Rotate or destroy a tenant's keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Check a tenant's audit trail.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Print KPIs computed over the lake.
    #[command(subcommand)]
    Kpi(KpiCommand),
    /// Delete lake partitions older than each tenant's retention, and purge
    /// cancelled tenants after their grace period; every deletion is
    /// written to the tenant's audit trail first.
    #[command(subcommand)]
    Retention(RetentionCommand),
    /// Merge each lake partition's small objects into one, once, now
    /// (answers do not change; processors and standalone also do it on a
    /// schedule with --compact-every-minutes).
    Compact(CompactArgs),
    /// Print the hex key a device seals its batches with (see schemas/WIRE.md).
    DeviceKey(DeviceKeyArgs),
    /// Simulated agents: a tenant's employees post realistic, sealed
    /// workdays to an ingest node (demos, load tests).
    #[command(long_about = simulate_args::LONG_ABOUT)]
    Simulate(simulate_args::SimulateArgs),
}

#[derive(Args)]
struct StandaloneArgs {
    /// Directory for the master secret (created on first start if none is
    /// configured), the embedded log (`spool/`) and the lake (`lake/`).
    #[arg(long, env = "CANDOR_DATA_DIR", default_value = ".candor")]
    data_dir: PathBuf,
    /// Address ingest listens on (HTTPS with --tls-cert/--tls-key; plain
    /// HTTP only on loopback or with --plain-http).
    #[arg(long, env = "CANDOR_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Partitions of the embedded log (fixed once the spool exists).
    #[arg(long, env = "CANDOR_SPOOL_PARTITIONS", default_value_t = 4)]
    partitions: u32,
    /// Disk the embedded log may use before ingest answers 503, in MiB.
    #[arg(long, env = "CANDOR_SPOOL_MAX_DISK_MB", default_value_t = 10 * 1024)]
    spool_max_disk_mb: u64,
    /// Address the query service's API listens on.
    #[arg(long, env = "CANDOR_QUERY_LISTEN", default_value = "127.0.0.1:8081")]
    query_listen: SocketAddr,
    /// Seconds between control-plane refreshes (how soon a revocation bites).
    #[arg(long, env = "CANDOR_CONTROL_REFRESH_SECS", default_value_t = 10)]
    control_refresh_secs: u64,
    /// Hours between retention runs (the first at start); 0 turns them off.
    #[arg(long, env = "CANDOR_RETENTION_EVERY_HOURS", default_value_t = 6)]
    retention_every_hours: u64,
    /// Minutes between compaction runs (the first at start), which merge
    /// each lake partition's small objects into one; 0 turns them off.
    #[arg(long, env = "CANDOR_COMPACT_EVERY_MINUTES", default_value_t = 10)]
    compact_every_minutes: u64,
    /// Hours between runs that produce and deliver the previous day's AI
    /// extract of each tenant with a receiver (`ai_delivery_url`); 0 turns
    /// them off.
    #[arg(long, env = "CANDOR_EXTRACTS_EVERY_HOURS", default_value_t = 6)]
    extracts_every_hours: u64,
    /// Hosts an AI extract receiver may be on although they resolve to a
    /// loopback, private or link-local address (comma-separated names);
    /// every other such receiver is refused.
    #[arg(
        long,
        env = "CANDOR_EXTRACT_RECEIVER_ALLOW_HOSTS",
        value_delimiter = ','
    )]
    extract_receiver_allow_hosts: Vec<String>,
    #[command(flatten)]
    retention: RetentionArgs,
    #[command(flatten)]
    ingest: IngestNodeArgs,
}

/// Where the control plane lives, for every command that reads or changes it.
#[derive(Args, Clone)]
struct ControlArgs {
    /// Control-plane store: a directory, `file:///path` or `s3://bucket/prefix`
    /// (S3 settings from AWS_* variables). Without it, `<CANDOR_DATA_DIR>/control`
    /// (`.candor/control` if CANDOR_DATA_DIR is unset): where standalone
    /// keeps it, in the data directory the master secret is found in too.
    #[arg(
        long = "control",
        env = "CANDOR_CONTROL_URL",
        default_value_t = default_control_url()
    )]
    url: String,
    /// Seconds between refreshes of a node's copy (how soon a revocation bites).
    #[arg(long, env = "CANDOR_CONTROL_REFRESH_SECS", default_value_t = 10)]
    control_refresh_secs: u64,
    /// Seconds a node may serve from its last good copy before it reports not ready.
    #[arg(long, env = "CANDOR_CONTROL_STALE_SECS", default_value_t = 120)]
    control_stale_secs: u64,
}

impl ControlArgs {
    fn documents(
        &self,
    ) -> Result<(
        DocumentStore,
        Arc<dyn object_store::ObjectStore>,
        object_store::path::Path,
    )> {
        let (store, prefix) = candor_control::open_store(&self.url)
            .with_context(|| format!("opening control plane {}", self.url))?;
        Ok((DocumentStore::new(store.clone(), &prefix), store, prefix))
    }

    fn cache(
        &self,
        master: &MasterSecret,
        registry: &prometheus::Registry,
        query: bool,
    ) -> Result<Arc<ControlCache>> {
        let (docs, _, _) = self.documents()?;
        let config = CacheConfig {
            refresh_every: std::time::Duration::from_secs(self.control_refresh_secs.max(1)),
            stale_after: std::time::Duration::from_secs(self.control_stale_secs),
            tokens: query,
            directory: query,
            ..CacheConfig::default()
        };
        Ok(Arc::new(ControlCache::new(
            docs,
            master.clone(),
            config,
            registry,
        )))
    }

    /// The operator's admin operations: the master secret from the
    /// environment (or the standalone data directory).
    fn operator(&self) -> Result<Admin> {
        self.admin(&master_secret()?)
    }

    fn admin(&self, master: &MasterSecret) -> Result<Admin> {
        let (docs, store, prefix) = self.documents()?;
        let audit = AuditLog::new(store, &prefix, master.clone());
        Ok(Admin::new(docs, Arc::new(audit), master.clone()))
    }
}

#[derive(Args)]
struct KafkaArgs {
    /// Kafka bootstrap servers.
    #[arg(long, env = "CANDOR_KAFKA_BROKERS", default_value = "127.0.0.1:19092")]
    brokers: String,
    /// Topic that carries log records.
    #[arg(long, env = "CANDOR_KAFKA_TOPIC", default_value = "candor.records")]
    topic: String,
    /// Producer acknowledgement: `all` (every in-sync replica) or `leader`.
    #[arg(long = "kafka-acks", env = "CANDOR_KAFKA_ACKS", default_value = "all")]
    acks: Acks,
    /// Producer linger.ms: time spent filling a batch before sending it.
    #[arg(long = "kafka-linger-ms", env = "CANDOR_KAFKA_LINGER_MS", default_value_t = KafkaConfig::new("", "").linger_ms)]
    linger_ms: u32,
    /// Producer compression: none (records are ciphertext), lz4 or zstd.
    #[arg(
        long = "kafka-compression",
        env = "CANDOR_KAFKA_COMPRESSION",
        default_value = "none"
    )]
    compression: Compression,
    /// Milliseconds a record may wait for its acknowledgement before the
    /// agent gets 503.
    #[arg(long = "kafka-message-timeout-ms", env = "CANDOR_KAFKA_MESSAGE_TIMEOUT_MS", default_value_t = KafkaConfig::new("", "").message_timeout_ms)]
    message_timeout_ms: u32,
    /// Records queued in the producer before ingest answers 503.
    #[arg(long = "kafka-queue-max-messages", env = "CANDOR_KAFKA_QUEUE_MAX_MESSAGES", default_value_t = KafkaConfig::new("", "").queue_max_messages)]
    queue_max_messages: u32,
    /// KiB queued in the producer before ingest answers 503.
    #[arg(long = "kafka-queue-max-kbytes", env = "CANDOR_KAFKA_QUEUE_MAX_KBYTES", default_value_t = KafkaConfig::new("", "").queue_max_kbytes)]
    queue_max_kbytes: u32,
    /// How often librdkafka statistics become metrics, in ms (0 = off).
    #[arg(long = "kafka-statistics-interval-ms", env = "CANDOR_KAFKA_STATISTICS_INTERVAL_MS", default_value_t = KafkaConfig::new("", "").statistics_interval_ms)]
    statistics_interval_ms: u32,
    /// Any other librdkafka property as key=value, applied last; repeat the
    /// flag, or separate pairs with commas in the variable.
    #[arg(long = "kafka-set", env = "CANDOR_KAFKA_SET", value_delimiter = ',', value_parser = parse_property)]
    set: Vec<(String, String)>,
}

fn parse_property(pair: &str) -> Result<(String, String), String> {
    pair.split_once('=')
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| format!("{pair:?} is not key=value"))
}

impl KafkaArgs {
    fn config(&self) -> KafkaConfig {
        KafkaConfig {
            acks: self.acks,
            linger_ms: self.linger_ms,
            compression: self.compression,
            message_timeout_ms: self.message_timeout_ms,
            queue_max_messages: self.queue_max_messages,
            queue_max_kbytes: self.queue_max_kbytes,
            statistics_interval_ms: self.statistics_interval_ms,
            extra: self.set.iter().cloned().collect(),
            ..KafkaConfig::new(&self.brokers, &self.topic)
        }
    }
}

#[derive(Args)]
struct IngestArgs {
    #[command(flatten)]
    kafka: KafkaArgs,
    #[command(flatten)]
    control: ControlArgs,
    /// Address to listen on (HTTPS with --tls-cert/--tls-key; plain HTTP
    /// only on loopback or with --plain-http).
    #[arg(long, env = "CANDOR_INGEST_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Partitions of the topic when ingest has to create it.
    #[arg(long, env = "CANDOR_KAFKA_PARTITIONS", default_value_t = 6)]
    partitions: i32,
    #[command(flatten)]
    node: IngestNodeArgs,
}

#[derive(Args)]
struct ProcessorArgs {
    #[command(flatten)]
    kafka: KafkaArgs,
    #[command(flatten)]
    control: ControlArgs,
    /// Consumer group shared by all processors of a deployment.
    #[arg(
        long,
        env = "CANDOR_PROCESSOR_GROUP",
        default_value = "candor-processor"
    )]
    group: String,
    /// Where the deployment's Parquet lake lives: a directory (or
    /// `file:///path`), or `s3://bucket/prefix` with S3 settings from
    /// `AWS_*` variables (`AWS_ENDPOINT_URL` for an S3-compatible server
    /// such as MinIO). A tenant whose document names a `lake_url` has its
    /// rows written there instead; the processors' own state stays here.
    #[arg(long, env = "CANDOR_LAKE_URL", default_value = "lake")]
    lake: String,
    /// Most log records aggregated into one set of Parquet objects. Larger
    /// flushes write fewer, bigger files; smaller ones commit sooner.
    #[arg(
        long,
        env = "CANDOR_PROCESSOR_MAX_RECORDS_PER_FLUSH",
        default_value_t = 10_000,
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    max_records_per_flush: u32,
    /// Topic that receives records the processor cannot open or decode,
    /// each with its reason (created with one partition if missing).
    #[arg(
        long,
        env = "CANDOR_DEAD_LETTER_TOPIC",
        default_value = "candor.dead-letters"
    )]
    dead_letter_topic: String,
    /// Hours between retention runs of this processor (the first at start);
    /// 0, the default, leaves retention to `candor retention run` or to one
    /// processor of the group.
    #[arg(long, env = "CANDOR_RETENTION_EVERY_HOURS", default_value_t = 0)]
    retention_every_hours: u64,
    /// Minutes between compaction runs of this processor (the first at
    /// start), which merge each lake partition's small objects into one; 0,
    /// the default, leaves it to `candor compact`. Safe on several
    /// processors: a lease on the lake lets one run at a time.
    #[arg(long, env = "CANDOR_COMPACT_EVERY_MINUTES", default_value_t = 0)]
    compact_every_minutes: u64,
    #[command(flatten)]
    retention: RetentionArgs,
    /// Address for `/metrics` and `/healthz` (plain HTTP; none when unset).
    #[arg(long, env = "CANDOR_PROCESSOR_LISTEN")]
    listen: Option<SocketAddr>,
    /// Process everything already in the log, then exit.
    #[arg(long)]
    drain: bool,
}

#[derive(Args)]
struct QueryArgs {
    #[command(flatten)]
    control: ControlArgs,
    /// Address to listen on.
    #[arg(long, env = "CANDOR_QUERY_LISTEN", default_value = "127.0.0.1:8081")]
    listen: SocketAddr,
    #[command(flatten)]
    tls: TlsArgs,
    #[command(flatten)]
    serve: QueryServeArgs,
    /// The deployment's lake (the processors'): a directory or
    /// `s3://bucket/prefix`. A tenant whose document names a `lake_url` is
    /// read from there instead.
    #[arg(long, env = "CANDOR_LAKE_URL", default_value = "lake")]
    lake: String,
    /// Hours between runs that produce and deliver the previous day's AI
    /// extract of each tenant with a receiver; 0, the default, leaves that
    /// to one query node of the deployment.
    #[arg(long, env = "CANDOR_EXTRACTS_EVERY_HOURS", default_value_t = 0)]
    extracts_every_hours: u64,
    /// Hosts an AI extract receiver may be on although they resolve to a
    /// loopback, private or link-local address (comma-separated names);
    /// every other such receiver is refused.
    #[arg(
        long,
        env = "CANDOR_EXTRACT_RECEIVER_ALLOW_HOSTS",
        value_delimiter = ','
    )]
    extract_receiver_allow_hosts: Vec<String>,
}

#[derive(Subcommand)]
enum TenantCommand {
    /// Create a tenant and its keys; with --bootstrap-token, also print its
    /// first owner token (shown once).
    Create {
        #[command(flatten)]
        control: ControlArgs,
        #[arg(long)]
        tenant: TenantId,
        /// free (7 days), starter (30), professional (90) or enterprise (365).
        #[arg(long, default_value = "starter")]
        plan: String,
        /// IANA time zone; KPIs count days and work hours in it.
        #[arg(long, default_value = "UTC")]
        time_zone: String,
        /// Keep activity, app usage and GPS at any hour. Without it, the
        /// processor drops what falls outside work hours (Monday to Friday,
        /// 09:00-17:00 local, changeable with the tenant admin API).
        #[arg(long)]
        track_outside_work_hours: bool,
        #[arg(long)]
        bootstrap_token: bool,
    },
    /// Print a tenant's document as JSON.
    Show {
        #[command(flatten)]
        control: ControlArgs,
        #[arg(long)]
        tenant: TenantId,
    },
    /// Replace a tenant's document with a JSON file (see `tenant show`);
    /// `cancelled_at_ms` must stay as it is (see `tenant cancel`).
    Update {
        #[command(flatten)]
        control: ControlArgs,
        #[arg(long)]
        file: PathBuf,
    },
    /// Cancel a tenant now: its tokens and devices stop working, and its
    /// lake is purged once the grace period after this moment is over.
    Cancel {
        #[command(flatten)]
        control: ControlArgs,
        #[arg(long)]
        tenant: TenantId,
    },
    /// Undo a tenant's cancellation (nothing is purged within the grace period).
    Reinstate {
        #[command(flatten)]
        control: ControlArgs,
        #[arg(long)]
        tenant: TenantId,
    },
}

#[derive(Subcommand)]
enum DirectoryCommand {
    /// Replace the directory with a JSON file:
    /// {"employees": {"e-1": {"department": "Sales", "manages": ["Sales"]}}}
    Load {
        #[command(flatten)]
        control: ControlArgs,
        #[arg(long)]
        tenant: TenantId,
        #[arg(long)]
        file: PathBuf,
    },
}

#[derive(Subcommand)]
enum DeviceCommand {
    /// Enroll a device; prints its key and key version (shown once, never stored).
    Enroll {
        #[command(flatten)]
        control: ControlArgs,
        #[arg(long)]
        tenant: TenantId,
        #[arg(long)]
        employee: EmployeeId,
        #[arg(long)]
        device: DeviceId,
    },
    /// Revoke a device's key: ingest refuses it within one refresh interval.
    Revoke {
        #[command(flatten)]
        control: ControlArgs,
        #[arg(long)]
        tenant: TenantId,
        #[arg(long)]
        device: DeviceId,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Create a token; prints it once.
    Create {
        #[command(flatten)]
        control: ControlArgs,
        #[arg(long)]
        tenant: TenantId,
        /// owner, admin, hr, manager, employee, analyst or ai.
        #[arg(long)]
        role: Role,
        /// A name to recognise it by in listings.
        #[arg(long)]
        name: String,
        /// For manager and employee tokens: the employee it acts for.
        #[arg(long)]
        employee: Option<EmployeeId>,
        /// Days until it expires; never, if absent.
        #[arg(long)]
        expires_in_days: Option<u32>,
    },
    /// List a tenant's tokens (never their secrets).
    List {
        #[command(flatten)]
        control: ControlArgs,
        #[arg(long)]
        tenant: TenantId,
    },
    /// Revoke a token by its id (from `token list`).
    Revoke {
        #[command(flatten)]
        control: ControlArgs,
        #[arg(long)]
        tenant: TenantId,
        #[arg(long)]
        id: String,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Add a key version: new data is sealed with it; old data stays readable.
    Rotate {
        #[command(flatten)]
        control: ControlArgs,
        #[arg(long)]
        tenant: TenantId,
    },
    /// Destroy every key of a tenant (crypto-shredding): its sealed log
    /// records and the link from its pseudonyms to employees are gone for good.
    Destroy {
        #[command(flatten)]
        control: ControlArgs,
        #[arg(long)]
        tenant: TenantId,
        /// Required: this cannot be undone.
        #[arg(long)]
        yes_destroy_all_data: bool,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Walk a tenant's audit chain and report the first edited, reordered or
    /// missing entry, a cut end, or a head that is missing, older than the
    /// chain or forged (exit status 1 if there is one).
    Verify {
        #[command(flatten)]
        control: ControlArgs,
        #[arg(long)]
        tenant: TenantId,
        /// A file kept where the store's writers cannot reach it: the chain
        /// must reach the entry it names, unchanged (else a cut end with a
        /// rolled-back head is reported); an intact chain's last entry is
        /// written back to it.
        #[arg(long)]
        checkpoint: Option<PathBuf>,
    },
    /// Print a tenant's audit entries as JSON lines.
    Show {
        #[command(flatten)]
        control: ControlArgs,
        #[arg(long)]
        tenant: TenantId,
    },
}

#[derive(Subcommand)]
enum KpiCommand {
    /// Activity % (active over tracked time) per employee per day.
    Activity(ActivityArgs),
}

#[derive(Args)]
struct ActivityArgs {
    /// Directory of the Parquet lake.
    #[arg(long, env = "CANDOR_LAKE_DIR", default_value = "lake")]
    lake: PathBuf,
    #[arg(long)]
    tenant: TenantId,
    /// The tenant's IANA time zone; days are counted in it.
    #[arg(long, default_value = "UTC")]
    tz: String,
    /// First day, YYYY-MM-DD.
    #[arg(long)]
    from: NaiveDate,
    /// Last day, YYYY-MM-DD (inclusive).
    #[arg(long)]
    to: NaiveDate,
}

#[derive(Args)]
struct CompactArgs {
    /// Where tenants are defined; a tenant with a `lake_url` is compacted
    /// in its own lake.
    #[command(flatten)]
    control: ControlArgs,
    /// The deployment's lake: a directory or `s3://bucket/prefix` (as the
    /// processor's).
    #[arg(long, env = "CANDOR_LAKE_URL", default_value = "lake")]
    lake: String,
}

#[derive(Subcommand)]
enum RetentionCommand {
    /// Apply retention once, now, to every tenant.
    Run {
        #[command(flatten)]
        control: ControlArgs,
        #[command(flatten)]
        retention: RetentionArgs,
        /// The deployment's lake: a directory or `s3://bucket/prefix` (as
        /// the processor's). Tenants' own lakes are visited too.
        #[arg(long, env = "CANDOR_LAKE_URL", default_value = "lake")]
        lake: String,
    },
    /// Erase one employee from the lake: every row of their pseudonym is
    /// removed (objects are rewritten without them), with audit entries
    /// before and after. Revoke their devices and take them out of the
    /// directory first.
    Erase {
        #[command(flatten)]
        control: ControlArgs,
        #[arg(long)]
        tenant: TenantId,
        #[arg(long)]
        employee: EmployeeId,
        /// The deployment's lake: a directory or `s3://bucket/prefix` (as
        /// the processor's). Tenants' own lakes are visited too.
        #[arg(long, env = "CANDOR_LAKE_URL", default_value = "lake")]
        lake: String,
    },
}

#[derive(Args, Clone)]
struct RetentionArgs {
    /// Days a cancelled tenant's data is kept before it is purged.
    #[arg(long, env = "CANDOR_PURGE_GRACE_DAYS", default_value_t = 30)]
    purge_grace_days: u32,
}

impl RetentionArgs {
    fn config(&self) -> RetentionConfig {
        RetentionConfig {
            purge_grace: std::time::Duration::from_secs(u64::from(self.purge_grace_days) * 86_400),
        }
    }
}

/// Runs `job` now and then every `every` until `stop`. A job logs its own
/// failure and is tried again at its next run.
async fn run_every<F, Fut>(
    every: std::time::Duration,
    stop: impl std::future::Future<Output = ()>,
    mut job: F,
) where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut stop = std::pin::pin!(stop);
    loop {
        job().await;
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            () = &mut stop => return,
        }
    }
}

#[derive(Clone, Copy)]
enum Job {
    Retention,
    Compaction,
}

/// The lake's maintenance jobs, as a long-running process schedules them.
struct Maintenance {
    lakes: Lakes,
    control: ControlArgs,
    master: MasterSecret,
    retention: RetentionConfig,
    metrics: MaintenanceMetrics,
}

impl Maintenance {
    /// Runs retention every `retention_secs` and compaction every
    /// `compact_secs` (0 leaves a job out), each first at once, until a
    /// future made by `stop` resolves.
    fn schedule<S, F>(self: &Arc<Self>, retention_secs: u64, compact_secs: u64, stop: S)
    where
        S: Fn() -> F,
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        for (job, secs) in [
            (Job::Retention, retention_secs),
            (Job::Compaction, compact_secs),
        ] {
            if secs == 0 {
                continue;
            }
            let m = self.clone();
            tokio::spawn(run_every(
                std::time::Duration::from_secs(secs),
                stop(),
                move || {
                    let m = m.clone();
                    async move {
                        match job {
                            Job::Retention => m.retention().await,
                            Job::Compaction => m.compaction().await,
                        }
                    }
                },
            ));
        }
    }

    fn count(&self, job: &str, outcome: &str) {
        self.metrics.runs.with_label_values(&[job, outcome]).inc();
    }

    async fn retention(&self) {
        match retention_once(&self.lakes, &self.control, &self.master, &self.retention).await {
            Ok(done) => {
                self.count("retention", outcome(done.skipped, done.lakes_busy));
                let n = done.deleted.len();
                self.metrics.partitions_deleted.inc_by(n as u64);
                tracing::info!(
                    partitions_deleted = n,
                    lakes_busy = done.lakes_busy,
                    skipped = done.skipped,
                    "retention applied"
                );
            }
            Err(e) => {
                self.count("retention", "failed");
                tracing::error!(error = %e, "retention failed; retrying at the next run");
            }
        }
    }

    async fn compaction(&self) {
        match compact_once(&self.lakes, &self.control).await {
            Ok(done) => {
                self.count("compaction", outcome(done.lakes_failed, done.lakes_busy));
                self.metrics
                    .objects_compacted
                    .inc_by(done.objects_merged as u64);
                self.metrics
                    .merged_objects_written
                    .inc_by(done.objects_written as u64);
                if done.objects_written > 0 {
                    tracing::info!(
                        folders = done.folders,
                        objects_merged = done.objects_merged,
                        rows = done.rows,
                        "lake compacted"
                    );
                }
            }
            Err(e) => {
                self.count("compaction", "failed");
                tracing::error!(error = %e, "compaction failed; retrying at the next run");
            }
        }
    }
}

/// How a maintenance run over every lake in use ended, as its metric says:
/// `failed` when a lake or tenant failed (logged), `busy` when another job
/// held a lake's lease, else `ok`.
fn outcome(failed: usize, busy: usize) -> &'static str {
    match (failed, busy) {
        (0, 0) => "ok",
        (0, _) => "busy",
        _ => "failed",
    }
}

/// A maintenance command's exit: an error unless every lake was done.
fn command_outcome(failed: usize, busy: usize) -> Result<()> {
    if failed > 0 {
        bail!("{failed} lakes or tenants failed and were left for the next run (see the log)");
    }
    if busy > 0 {
        bail!(
            "another maintenance job (compaction, retention or erasure) is running on {busy} lakes; try again in a few minutes"
        );
    }
    Ok(())
}

/// Merges the small objects of every lake in use once, now.
async fn compact_once(lakes: &Lakes, control: &ControlArgs) -> Result<Compacted> {
    let (docs, _, _) = control.documents()?;
    let holder = format!("compaction, process {}", std::process::id());
    let now_ms = chrono::Utc::now().timestamp_millis();
    Ok(
        compaction::compact_all(lakes, &docs, &CompactionConfig::default(), &holder, now_ms)
            .await?,
    )
}

async fn retention_once(
    lakes: &Lakes,
    control: &ControlArgs,
    master: &MasterSecret,
    config: &RetentionConfig,
) -> Result<RetentionRun> {
    let (docs, store, prefix) = control.documents()?;
    let audit = AuditLog::new(store, &prefix, master.clone());
    let now_ms = chrono::Utc::now().timestamp_millis();
    let done = retention::run(lakes, &docs, &audit, config, now_ms).await?;
    for d in &done.deleted {
        tracing::info!(tenant = %d.tenant, dataset = d.dataset.name(), date = %d.date, objects = d.objects, bytes = d.bytes, "partition deleted");
    }
    Ok(done)
}

#[derive(Args)]
struct DeviceKeyArgs {
    #[arg(long)]
    tenant: TenantId,
    #[arg(long)]
    employee: EmployeeId,
    #[arg(long)]
    device: DeviceId,
    #[arg(long, default_value_t = 1)]
    key_version: u32,
}

/// The standalone data directory operator commands look in when nothing
/// else is configured: `CANDOR_DATA_DIR`, else `.candor`.
fn data_dir() -> PathBuf {
    std::env::var_os("CANDOR_DATA_DIR")
        .filter(|dir| !dir.is_empty())
        .map_or_else(|| PathBuf::from(".candor"), PathBuf::from)
}

/// The control plane of the data directory: `<data dir>/control`.
fn default_control_url() -> String {
    data_dir().join("control").display().to_string()
}

fn master_secret() -> Result<MasterSecret> {
    if let Some(path) = std::env::var_os("CANDOR_MASTER_SECRET_FILE") {
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "reading master secret file {}",
                PathBuf::from(&path).display()
            )
        })?;
        return Ok(MasterSecret::from_hex(&text)?);
    }
    if let Ok(hex) = std::env::var("CANDOR_MASTER_SECRET") {
        return Ok(MasterSecret::from_hex(&hex)?);
    }
    // On one machine: the secret standalone created in its data directory.
    let path = data_dir().join("master.key");
    if path.exists() {
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        return Ok(MasterSecret::from_hex(&text)?);
    }
    bail!(
        "no master secret: set CANDOR_MASTER_SECRET_FILE or CANDOR_MASTER_SECRET \
         (or run `candor standalone` once to create {})",
        path.display()
    )
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing a SIGTERM handler");
    tokio::select! {
        _ = ctrl_c => {},
        _ = term.recv() => {},
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CANDOR_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Standalone(args) => run_standalone(args).await,
        Command::Ingest(args) => run_ingest(args).await,
        Command::Processor(args) => run_processor(args).await,
        Command::Query(args) => run_query(args).await,
        Command::Tenant(cmd) => tenant_command(cmd).await,
        Command::Directory(cmd) => directory_command(cmd).await,
        Command::Device(cmd) => device_command(cmd).await,
        Command::Token(cmd) => token_command(cmd).await,
        Command::Keys(cmd) => keys_command(cmd).await,
        Command::Audit(cmd) => audit_command(cmd).await,
        Command::Kpi(KpiCommand::Activity(args)) => print_activity(args).await,
        Command::Compact(args) => {
            let done = compact_once(&Lakes::open(&args.lake)?, &args.control).await?;
            println!(
                "compaction: {} objects merged into {} in {} partitions ({} rows); {} left for uncommitted flushes; {} interrupted merges finished",
                done.objects_merged,
                done.objects_written,
                done.folders,
                done.rows,
                done.pending_skipped,
                done.resumed
            );
            command_outcome(done.lakes_failed, done.lakes_busy)
        }
        Command::Retention(RetentionCommand::Run {
            control,
            retention,
            lake,
        }) => {
            let done = retention_once(
                &Lakes::open(&lake)?,
                &control,
                &master_secret()?,
                &retention.config(),
            )
            .await?;
            println!("retention: {} partitions deleted", done.deleted.len());
            command_outcome(done.skipped, done.lakes_busy)
        }
        Command::Retention(RetentionCommand::Erase {
            control,
            tenant,
            employee,
            lake,
        }) => {
            let master = master_secret()?;
            let (docs, store, prefix) = control.documents()?;
            // Without keys (destroyed), the tenant's lake is already
            // unreadable and is purged whole; there is no subject to find.
            let keys = candor_control::keyring::load(&docs, &master, &tenant)
                .await?
                .with_context(|| format!("tenant {tenant} has no keys"))?;
            let request = candor_processor::erasure::ErasureRequest {
                subject: keys.pseudonym().subject(&employee),
                tenant,
                actor: "operator".into(),
                source: "cli".into(),
            };
            let audit = AuditLog::new(store, &prefix, master.clone());
            let now_ms = chrono::Utc::now().timestamp_millis();
            // Every lake in use: the tenant's own, and the deployment's.
            let erased = candor_processor::erasure::erase_subject(
                &Lakes::open(&lake)?,
                &docs,
                &audit,
                &request,
                now_ms,
            )
            .await?;
            print_json(&erased)
        }
        Command::Simulate(args) => simulate_args::run(args).await,
        Command::DeviceKey(args) => {
            let key = master_secret()?.device_key(
                &args.tenant,
                &args.employee,
                &args.device,
                args.key_version,
            );
            println!("{}", hex::encode(key.as_bytes()));
            Ok(())
        }
    }
}

/// The master secret for standalone mode: the configured one, else the one
/// in the data directory, created (mode 0600) on first start.
fn standalone_master_secret(data_dir: &std::path::Path) -> Result<MasterSecret> {
    if std::env::var_os("CANDOR_MASTER_SECRET_FILE").is_some()
        || std::env::var_os("CANDOR_MASTER_SECRET").is_some()
    {
        return master_secret();
    }
    let path = data_dir.join("master.key");
    if !path.exists() {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let secret: [u8; 32] = rand::random();
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .and_then(|mut f| {
                f.write_all(hex::encode(secret).as_bytes())
                    .and_then(|()| f.sync_all())
            })
            .with_context(|| format!("creating master secret {}", path.display()))?;
        eprintln!(
            "created a new master secret in {} (keep it: without it the data cannot be read)",
            path.display()
        );
    }
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    Ok(MasterSecret::from_hex(&text)?)
}

async fn run_standalone(args: StandaloneArgs) -> Result<()> {
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating data directory {}", args.data_dir.display()))?;
    let master = standalone_master_secret(&args.data_dir)?;
    let spool_dir = args.data_dir.join("spool");
    let dead_letter_dir = args.data_dir.join("dead-letters");
    let lake_dir = args.data_dir.join("lake");
    let control_args = ControlArgs {
        url: args.data_dir.join("control").display().to_string(),
        control_refresh_secs: args.control_refresh_secs,
        control_stale_secs: 120,
    };
    let spool = Spool::open(SpoolConfig {
        partitions: args.partitions,
        max_disk_bytes: args.spool_max_disk_mb * 1024 * 1024,
        ..SpoolConfig::new(&spool_dir)
    })?;
    let registry = prometheus::Registry::new();
    let maintenance_metrics = MaintenanceMetrics::register(&registry);
    // One copy of the control plane serves all three parts.
    let control = control_args.cache(&master, &registry, true)?;
    let lakes = Lakes::open(&lake_dir.to_string_lossy())?;
    let mut processor = Processor::new(
        spool.consumer("candor-processor")?,
        control.clone(),
        lakes.clone(),
        ProcessorConfig::default(),
    )
    .with_dead_letters(Arc::new(
        Spool::open(SpoolConfig {
            partitions: 1,
            ..SpoolConfig::new(&dead_letter_dir)
        })?
        .producer(),
    ))
    .with_metrics(ProcessorMetrics::register(&registry));
    let query_lake = QueryLake::new(LakeConfig::new(lake_dir.to_string_lossy()))?;
    let mut query_state = QueryState::new(
        control.clone(),
        Arc::new(control_args.admin(&master)?),
        Arc::new(query_lake),
        master.clone(),
        registry.clone(),
    );
    query_state.delivery.allowed_internal_hosts = args.extract_receiver_allow_hosts.clone();
    let query_state = Arc::new(query_state);
    let ingest_config = args.ingest.config(args.listen)?;
    let scheme = ingest_config.serve.scheme();
    // The query API is served with the same certificate, or plain HTTP on
    // loopback, and the same connection limits and timeouts.
    let query_serve = args.ingest.serve_config("query", args.query_listen)?;
    let query_scheme = query_serve.scheme();
    let state = Arc::new(
        IngestState::new(
            master.clone(),
            ingest_config,
            control.clone(),
            Arc::new(spool.producer()),
            IngestMetrics::new(registry),
        )
        .map_err(anyhow::Error::msg)?,
    );
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let addr = listener.local_addr()?;
    let query_listener = tokio::net::TcpListener::bind(args.query_listen)
        .await
        .with_context(|| format!("binding {}", args.query_listen))?;
    let query_addr = query_listener.local_addr()?;

    // One signal stops both: ingest drains its requests, the processor
    // finishes its round (write, then commit). A processor that fails stops
    // ingest too: accepting data nothing processes would only fill the log;
    // a restart resumes from the last commit.
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let wait_for_stop = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let maintenance = Arc::new(Maintenance {
        lakes,
        control: control_args.clone(),
        master: master.clone(),
        retention: args.retention.config(),
        metrics: maintenance_metrics,
    });
    maintenance.schedule(
        args.retention_every_hours * 3600,
        args.compact_every_minutes * 60,
        || wait_for_stop(stopped.clone()),
    );
    let processing = tokio::spawn({
        let (stopped, stop) = (wait_for_stop(stopped.clone()), stop.clone());
        async move {
            let outcome = processor.run(stopped).await;
            if let Err(e) = &outcome {
                tracing::error!(error = %e, "processor failed; stopping standalone");
                let _ = stop.send(true);
            }
            outcome.map(|()| processor.stats())
        }
    });
    tokio::spawn({
        let control = control.clone();
        let stopped = wait_for_stop(stopped.clone());
        async move { control.run_refresher(stopped).await }
    });
    if args.extracts_every_hours > 0 {
        tokio::spawn(candor_query::api::run_extract_schedule(
            query_state.clone(),
            std::time::Duration::from_secs(args.extracts_every_hours * 3600),
            wait_for_stop(stopped.clone()),
        ));
    }
    let querying = tokio::spawn(candor_query::api::serve(
        query_listener,
        query_state,
        query_serve,
        wait_for_stop(stopped.clone()),
    ));
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = stop.send(true);
    });
    println!("candor standalone");
    println!("  ingest   {scheme}://{addr}{}", candor_ingest::BATCH_ROUTE);
    println!("  metrics  {scheme}://{addr}/metrics   health: /healthz /readyz");
    println!(
        "  query    {query_scheme}://{query_addr}   /v1/kpi/... /v1/sql /v1/extracts /v1/admin/ (bearer tokens)"
    );
    println!(
        "  control  {} (tenants, devices, tokens, keys)",
        control_args.url
    );
    println!(
        "  log      {} (embedded, fsynced before 202)",
        spool_dir.display()
    );
    println!("  lake     {}", lake_dir.display());
    println!(
        "  dead     {} (records the processor could not open)",
        dead_letter_dir.display()
    );
    candor_ingest::serve(listener, state, wait_for_stop(stopped)).await?;
    querying.await.context("query task")??;
    let stats = processing.await.context("processor task")??;
    tracing::info!(
        records = stats.records,
        events = stats.events,
        files = stats.files_written,
        "standalone stopped"
    );
    Ok(())
}

async fn run_ingest(args: IngestArgs) -> Result<()> {
    let master = master_secret()?;
    let kafka = args.kafka.config();
    ensure_topic(&kafka, args.partitions)
        .await
        .with_context(|| format!("creating topic {} on {}", kafka.topic, kafka.brokers))?;
    let registry = prometheus::Registry::new();
    let control = args.control.cache(&master, &registry, false)?;
    tokio::spawn({
        let control = control.clone();
        async move { control.run_refresher(std::future::pending()).await }
    });
    let config = args.node.config(args.listen)?;
    let scheme = config.serve.scheme();
    let log = KafkaProducer::with_stats(&kafka, ProducerStats::register(&registry))?;
    let state = Arc::new(
        IngestState::new(
            master,
            config,
            control,
            Arc::new(log),
            IngestMetrics::new(registry),
        )
        .map_err(anyhow::Error::msg)?,
    );
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    tracing::info!(
        listen = %format!("{scheme}://{}", listener.local_addr()?),
        brokers = %kafka.brokers,
        topic = %kafka.topic,
        "ingest listening: POST {}", candor_ingest::BATCH_ROUTE
    );
    candor_ingest::serve(listener, state, shutdown_signal()).await?;
    tracing::info!("ingest stopped");
    Ok(())
}

async fn run_processor(args: ProcessorArgs) -> Result<()> {
    let master = master_secret()?;
    let kafka = args.kafka.config();
    let consumer = KafkaConsumer::new(&kafka, &args.group)?;
    let lakes = Lakes::open(&args.lake)?;
    let control = args
        .control
        .cache(&master, &prometheus::Registry::new(), false)?;
    tokio::spawn({
        let control = control.clone();
        async move { control.run_refresher(std::future::pending()).await }
    });
    let config = ProcessorConfig {
        group: args.group.clone(),
        max_records_per_flush: args.max_records_per_flush as usize,
        ..ProcessorConfig::default()
    };
    let dead_letters = KafkaConfig {
        topic: args.dead_letter_topic.clone(),
        ..kafka.clone()
    };
    ensure_topic(&dead_letters, 1)
        .await
        .with_context(|| format!("creating dead-letter topic {}", dead_letters.topic))?;
    let registry = prometheus::Registry::new();
    let maintenance = Arc::new(Maintenance {
        lakes: lakes.clone(),
        control: args.control.clone(),
        master: master.clone(),
        retention: args.retention.config(),
        metrics: MaintenanceMetrics::register(&registry),
    });
    if !args.drain {
        maintenance.schedule(
            args.retention_every_hours * 3600,
            args.compact_every_minutes * 60,
            std::future::pending,
        );
    }
    if let Some(addr) = args.listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("listening on {addr}"))?;
        tracing::info!(%addr, "processor metrics on /metrics");
        tokio::spawn(candor_processor::serve_metrics(
            listener,
            registry.clone(),
            std::future::pending(),
        ));
    }
    let mut processor = Processor::new(consumer, control, lakes, config)
        .with_dead_letters(Arc::new(KafkaProducer::new(&dead_letters)?))
        .with_metrics(ProcessorMetrics::register(&registry));
    tracing::info!(lake = %args.lake, group = %args.group, topic = %kafka.topic, "processor started");
    if args.drain {
        processor.drain().await?;
    } else {
        processor.run(shutdown_signal()).await?;
    }
    let s = processor.stats();
    tracing::info!(
        records = s.records,
        events = s.events,
        undecodable = s.records_undecodable,
        files = s.files_written,
        rows = s.rows_written,
        "processor stopped"
    );
    Ok(())
}

async fn print_activity(args: ActivityArgs) -> Result<()> {
    let lake = TenantLake::open_local(&args.lake, &args.tenant).await?;
    let rows = lake
        .activity_by_subject_day(&args.tz, args.from, args.to)
        .await?;
    println!(
        "{:<18} {:<10} {:>9} {:>9} {:>10}",
        "subject", "day", "tracked h", "active h", "activity %"
    );
    for r in &rows {
        println!(
            "{:<18} {:<10} {:>9.2} {:>9.2} {:>10.1}",
            format!("{}…", &r.subject[..16]),
            r.day,
            r.tracked_s as f64 / 3600.0,
            r.active_s as f64 / 3600.0,
            r.activity_pct
        );
    }
    if rows.is_empty() {
        println!(
            "(no activity in {}..={} for tenant {})",
            args.from, args.to, args.tenant
        );
    }
    Ok(())
}

async fn run_query(args: QueryArgs) -> Result<()> {
    let serve = args
        .serve
        .apply(args.tls.serve_config("query", args.listen)?);
    let master = master_secret()?;
    let registry = prometheus::Registry::new();
    let control = args.control.cache(&master, &registry, true)?;
    tokio::spawn({
        let control = control.clone();
        async move { control.run_refresher(std::future::pending()).await }
    });
    let lake = QueryLake::new(LakeConfig::new(&args.lake))?;
    let mut state = QueryState::new(
        control,
        Arc::new(args.control.admin(&master)?),
        Arc::new(lake),
        master,
        registry,
    );
    state.delivery.allowed_internal_hosts = args.extract_receiver_allow_hosts.clone();
    let state = Arc::new(state);
    if args.extracts_every_hours > 0 {
        tokio::spawn(candor_query::api::run_extract_schedule(
            state.clone(),
            std::time::Duration::from_secs(args.extracts_every_hours * 3600),
            std::future::pending(),
        ));
    }
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    tracing::info!(listen = %listener.local_addr()?, control = %args.control.url, "query listening");
    candor_query::api::serve(listener, state, serve, shutdown_signal()).await?;
    Ok(())
}

fn print_json(value: &impl serde::Serialize) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

fn read_json<T: serde::de::DeserializeOwned>(path: &std::path::Path) -> Result<T> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

async fn tenant_command(cmd: TenantCommand) -> Result<()> {
    let op = Actor::operator();
    match cmd {
        TenantCommand::Create {
            control,
            tenant,
            plan,
            time_zone,
            track_outside_work_hours,
            bootstrap_token,
        } => {
            let plan: Plan = serde_json::from_value(serde_json::Value::String(plan.clone()))
                .map_err(|_| {
                    anyhow::anyhow!(
                        "unknown plan {plan:?}; free, starter, professional or enterprise"
                    )
                })?;
            let admin = control.operator()?;
            let doc = Tenant {
                track_outside_work_hours,
                ..Tenant::new(tenant.clone(), plan, time_zone)
            };
            admin.create_tenant(&op, &doc).await?;
            eprintln!(
                "created tenant {tenant} ({} days of retention)",
                doc.retention_days()
            );
            if bootstrap_token {
                let request = TokenRequest {
                    name: "bootstrap owner".into(),
                    role: Role::Owner,
                    employee: None,
                    expires_at_ms: None,
                    tenant: None,
                };
                let created = admin.create_token(&op, &tenant, &request).await?;
                eprintln!("owner token (shown once; store it now):");
                println!("{}", created.token);
            }
        }
        TenantCommand::Show { control, tenant } => {
            let admin = control.operator()?;
            print_json(&admin.get_tenant(&op, &tenant).await?.doc)?;
        }
        TenantCommand::Update { control, file } => {
            let doc: Tenant = read_json(&file)?;
            let admin = control.operator()?;
            let version = admin.update_tenant(&op, &doc, None).await?;
            eprintln!("tenant {} is now at version {version}", doc.id);
        }
        TenantCommand::Cancel { control, tenant } => {
            let done = control.operator()?.cancel_tenant(&op, &tenant).await?;
            eprintln!("tenant {tenant} is cancelled; `candor tenant reinstate` undoes it");
            print_json(&done.doc)?;
        }
        TenantCommand::Reinstate { control, tenant } => {
            let done = control.operator()?.reinstate_tenant(&op, &tenant).await?;
            eprintln!("tenant {tenant} is active again");
            print_json(&done.doc)?;
        }
    }
    Ok(())
}

async fn directory_command(cmd: DirectoryCommand) -> Result<()> {
    let DirectoryCommand::Load {
        control,
        tenant,
        file,
    } = cmd;
    let directory: Directory = read_json(&file)?;
    let admin = control.operator()?;
    let version = admin
        .load_directory(&Actor::operator(), &tenant, &directory, None)
        .await?;
    eprintln!(
        "directory of {tenant}: {} employees, version {version}",
        directory.employees.len()
    );
    Ok(())
}

async fn device_command(cmd: DeviceCommand) -> Result<()> {
    let op = Actor::operator();
    match cmd {
        DeviceCommand::Enroll {
            control,
            tenant,
            employee,
            device,
        } => {
            let admin = control.operator()?;
            print_json(
                &admin
                    .enroll_device(&op, &tenant, &employee, &device)
                    .await?,
            )?;
        }
        DeviceCommand::Revoke {
            control,
            tenant,
            device,
        } => {
            let admin = control.operator()?;
            let doc = admin.revoke_device(&op, &tenant, &device).await?;
            eprintln!(
                "revoked {device} through key version {}; ingest nodes refuse it after their next refresh",
                doc.key_version
            );
        }
    }
    Ok(())
}

async fn token_command(cmd: TokenCommand) -> Result<()> {
    let op = Actor::operator();
    match cmd {
        TokenCommand::Create {
            control,
            tenant,
            role,
            name,
            employee,
            expires_in_days,
        } => {
            let admin = control.operator()?;
            let request = TokenRequest {
                name,
                role,
                employee,
                expires_at_ms: expires_in_days
                    .map(|d| chrono::Utc::now().timestamp_millis() + i64::from(d) * 86_400_000),
                tenant: None,
            };
            let created = admin.create_token(&op, &tenant, &request).await?;
            eprintln!("token {} ({role}; shown once):", created.record.id);
            println!("{}", created.token);
        }
        TokenCommand::List { control, tenant } => {
            let admin = control.operator()?;
            print_json(&admin.list_tokens(&op, &tenant).await?)?;
        }
        TokenCommand::Revoke {
            control,
            tenant,
            id,
        } => {
            let admin = control.operator()?;
            admin.revoke_token(&op, &tenant, &id).await?;
            eprintln!("revoked token {id}");
        }
    }
    Ok(())
}

async fn keys_command(cmd: KeysCommand) -> Result<()> {
    let op = Actor::operator();
    match cmd {
        KeysCommand::Rotate { control, tenant } => {
            let admin = control.operator()?;
            let version = admin.rotate_keys(&op, &tenant).await?;
            eprintln!("tenant {tenant}: new data is sealed with key version {version}");
        }
        KeysCommand::Destroy {
            control,
            tenant,
            yes_destroy_all_data,
        } => {
            if !yes_destroy_all_data {
                bail!(
                    "destroying keys makes {tenant}'s data unreadable for good; pass --yes-destroy-all-data"
                );
            }
            let admin = control.operator()?;
            let deleted = admin.destroy_keys(&op, &tenant).await?;
            eprintln!("tenant {tenant}: destroyed {deleted} keyring versions");
        }
    }
    Ok(())
}

async fn audit_command(cmd: AuditCommand) -> Result<()> {
    match cmd {
        AuditCommand::Verify {
            control,
            tenant,
            checkpoint,
        } => {
            let admin = control.operator()?;
            let seen: Option<candor_control::Checkpoint> = match &checkpoint {
                Some(path) if path.exists() => Some(read_json(path)?),
                _ => None,
            };
            if let Some(seen) = &seen
                && seen.tenant != tenant
            {
                bail!("the checkpoint is of tenant {}, not {tenant}", seen.tenant);
            }
            let report = admin
                .audit_log()
                .verify_against(&tenant, seen.as_ref())
                .await?;
            match &report.first_problem {
                None => {
                    println!(
                        "audit trail of {tenant}: {} entries, intact",
                        report.verified
                    );
                    if let (Some(path), Some(at)) = (&checkpoint, &report.checkpoint) {
                        let part = path.with_extension("partial");
                        std::fs::write(&part, serde_json::to_vec_pretty(at)?)?;
                        std::fs::rename(&part, path)
                            .with_context(|| format!("writing {}", path.display()))?;
                    }
                }
                Some(problem) => {
                    println!(
                        "audit trail of {tenant}: {} entries verify, then: {problem}",
                        report.verified
                    );
                    std::process::exit(1);
                }
            }
        }
        AuditCommand::Show { control, tenant } => {
            let admin = control.operator()?;
            for entry in admin.audit_log().entries(&tenant).await? {
                println!("{}", serde_json::to_string(&entry)?);
            }
        }
    }
    Ok(())
}
