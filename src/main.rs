//! The `candor` binary: one subcommand per role, wiring the crates together.
//! Logic lives in the crates; this file only reads settings and starts things.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use candor_ingest::{IngestMetrics, IngestState};
use candor_log::kafka::{KafkaConfig, KafkaConsumer, KafkaProducer, ensure_topic};
use candor_log::spool::{Spool, SpoolConfig};
use candor_processor::{Lake, Processor, ProcessorConfig, ProcessorMetrics};
use candor_query::TenantLake;
use candor_schemas::keys::MasterSecret;
use candor_schemas::{DeviceId, EmployeeId, Limits, TenantId};
use chrono::NaiveDate;
use clap::{Args, Parser, Subcommand};

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
    /// Run all of Candor on one machine: ingest and processor in one process,
    /// the embedded durable log, a local-directory lake. No broker needed.
    Standalone(StandaloneArgs),
    /// Run an ingest node: accept sealed batches over HTTP and append them to Kafka.
    Ingest(IngestArgs),
    /// Run a processor: consume the log and write the Parquet lake.
    Processor(ProcessorArgs),
    /// Print KPIs computed over the lake.
    #[command(subcommand)]
    Kpi(KpiCommand),
    /// Print the hex key a device seals its batches with (see schemas/WIRE.md).
    DeviceKey(DeviceKeyArgs),
}

#[derive(Args)]
struct StandaloneArgs {
    /// Directory for the master secret (created on first start if none is
    /// configured), the embedded log (`spool/`) and the lake (`lake/`).
    #[arg(long, env = "CANDOR_DATA_DIR", default_value = ".candor")]
    data_dir: PathBuf,
    /// Address ingest listens on (plain HTTP; put it behind TLS termination).
    #[arg(long, env = "CANDOR_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Partitions of the embedded log (fixed once the spool exists).
    #[arg(long, env = "CANDOR_SPOOL_PARTITIONS", default_value_t = 4)]
    partitions: u32,
    /// Disk the embedded log may use before ingest answers 503, in MiB.
    #[arg(long, env = "CANDOR_SPOOL_MAX_DISK_MB", default_value_t = 10 * 1024)]
    spool_max_disk_mb: u64,
}

#[derive(Args)]
struct KafkaArgs {
    /// Kafka bootstrap servers.
    #[arg(long, env = "CANDOR_KAFKA_BROKERS", default_value = "127.0.0.1:19092")]
    brokers: String,
    /// Topic that carries log records.
    #[arg(long, env = "CANDOR_KAFKA_TOPIC", default_value = "candor.records")]
    topic: String,
}

impl KafkaArgs {
    fn config(&self) -> KafkaConfig {
        KafkaConfig::new(&self.brokers, &self.topic)
    }
}

#[derive(Args)]
struct IngestArgs {
    #[command(flatten)]
    kafka: KafkaArgs,
    /// Address to listen on (plain HTTP; put it behind TLS termination).
    #[arg(long, env = "CANDOR_INGEST_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Partitions of the topic when ingest has to create it.
    #[arg(long, env = "CANDOR_KAFKA_PARTITIONS", default_value_t = 6)]
    partitions: i32,
    /// Largest request body accepted, in bytes.
    #[arg(long, env = "CANDOR_INGEST_MAX_BODY_BYTES", default_value_t = Limits::default().max_body_bytes)]
    max_body_bytes: usize,
}

#[derive(Args)]
struct ProcessorArgs {
    #[command(flatten)]
    kafka: KafkaArgs,
    /// Consumer group shared by all processors of a deployment.
    #[arg(
        long,
        env = "CANDOR_PROCESSOR_GROUP",
        default_value = "candor-processor"
    )]
    group: String,
    /// Directory of the Parquet lake.
    #[arg(long, env = "CANDOR_LAKE_DIR", default_value = "lake")]
    lake: PathBuf,
    /// Process everything already in the log, then exit.
    #[arg(long)]
    drain: bool,
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
    match std::env::var("CANDOR_MASTER_SECRET") {
        Ok(hex) => Ok(MasterSecret::from_hex(&hex)?),
        Err(_) => bail!("no master secret: set CANDOR_MASTER_SECRET_FILE or CANDOR_MASTER_SECRET"),
    }
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
        Command::Kpi(KpiCommand::Activity(args)) => print_activity(args).await,
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
    let lake_dir = args.data_dir.join("lake");
    let spool = Spool::open(SpoolConfig {
        partitions: args.partitions,
        max_disk_bytes: args.spool_max_disk_mb * 1024 * 1024,
        ..SpoolConfig::new(&spool_dir)
    })?;
    let registry = prometheus::Registry::new();
    let mut processor = Processor::new(
        spool.consumer("candor-processor")?,
        master.clone(),
        Lake::local(&lake_dir)?,
        ProcessorConfig::default(),
    )
    .with_metrics(ProcessorMetrics::register(&registry));
    let state = Arc::new(IngestState {
        master,
        limits: Limits::default(),
        at_rest_key_version: 1,
        log: Arc::new(spool.producer()),
        metrics: IngestMetrics::new(registry),
    });
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let addr = listener.local_addr()?;

    // One signal stops both: ingest drains its requests, the processor
    // finishes its round (write, then commit). A processor that fails stops
    // ingest too: accepting data nothing processes would only fill the log;
    // a restart resumes from the last commit.
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let wait_for_stop = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
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
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = stop.send(true);
    });
    println!("candor standalone");
    println!("  ingest   http://{addr}{}", candor_ingest::BATCH_ROUTE);
    println!("  metrics  http://{addr}/metrics   health: /healthz /readyz");
    println!(
        "  log      {} (embedded, fsynced before 202)",
        spool_dir.display()
    );
    println!("  lake     {}", lake_dir.display());
    candor_ingest::serve(listener, state, wait_for_stop(stopped)).await?;
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
    let state = Arc::new(IngestState {
        master,
        limits: Limits {
            max_body_bytes: args.max_body_bytes,
            ..Limits::default()
        },
        at_rest_key_version: 1,
        log: Arc::new(KafkaProducer::new(&kafka)?),
        metrics: IngestMetrics::default(),
    });
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    tracing::info!(
        listen = %listener.local_addr()?,
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
    let lake = Lake::local(&args.lake)?;
    let mut processor = Processor::new(consumer, master, lake, ProcessorConfig::default());
    tracing::info!(lake = %args.lake.display(), group = %args.group, topic = %kafka.topic, "processor started");
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
