//! `candor-bench-ingest`: an ingest node under simulated agents, side by
//! side with a bare rdkafka producer sending the same record bytes to the
//! same broker (the ceiling ingest can reach).
//!
//! The node runs as a child process of this benchmark, so its CPU time and
//! resident memory are its own: events per ingest core are events divided
//! by the node's CPU seconds. Batches are sealed before the clock starts, so
//! the generator only sends bytes.
//!
//! Phases, each `--seconds` long:
//! 1. peak: `--connections` agents in a closed loop (send, wait for 202, send);
//! 2. half load: an open loop at half the peak batch rate, for latency;
//! 3. bare producer: the records ingest would append for the same batches,
//!    `--connections` at a time, each waiting for its acknowledgements.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use candor::config::{Config, Role};
use candor_control::{
    Actor, Admin, AuditLog, ControlCache, DocumentStore, Plan, Tenant, open_store,
};
use candor_log::Record;
use candor_log::kafka::{KafkaConfig, ensure_topic};
use candor_schemas::batch::Batch;
use candor_schemas::keys::MasterSecret;
use candor_schemas::record::{self, RecordFormat, RecordMeta};
use candor_schemas::{Limits, TenantId, authenticate, decode};
use candor_simulate::{Outcome, SimulatedAgent, post_batch};

/// Sends of one batch before a benchmark gives up on it (429 and 503
/// answers waited out included).
const MAX_ATTEMPTS: u32 = 50;
use chrono::{Datelike, Days, Utc, Weekday};
use clap::{Parser, Subcommand};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};

/// The allocator under comparison (feature `mimalloc`); the system's without it.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(about = "Ingest throughput and latency against a bare Kafka producer on the same broker")]
struct Args {
    #[command(subcommand)]
    node: Option<NodeCommand>,
    /// Kafka bootstrap servers.
    #[arg(long, env = "TEST_KAFKA_BROKERS", default_value = "127.0.0.1:19092")]
    brokers: String,
    /// Length of each phase.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Simulated devices (spread over 4 tenants).
    #[arg(long, default_value_t = 400)]
    devices: usize,
    /// Minutes of activity per batch: agents upload every 5 minutes
    /// (about 11 events); an agent that uploads hourly sends about 120.
    #[arg(long, default_value_t = 60)]
    batch_minutes: i64,
    /// Agents sending at once (HTTP/1.1 keep-alive connections).
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// The log record layout the node writes and the bare producer sends
    /// (`ingest.log_record_format`; 1 compares with the previous layout).
    #[arg(long, default_value_t = RecordFormat::CURRENT as u8)]
    log_record_format: u8,
}

#[derive(Subcommand)]
enum NodeCommand {
    /// (internal) Run the ingest node under test and print its address.
    Node {
        #[arg(long)]
        control: String,
        #[arg(long)]
        topic: String,
        #[arg(long)]
        log_record_format: u8,
    },
}

const TENANTS: usize = 4;

fn main() -> Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Runtime::new()?;
    match &args.node {
        Some(NodeCommand::Node {
            control,
            topic,
            log_record_format,
        }) => runtime.block_on(run_node(&args.brokers, control, topic, *log_record_format)),
        None => runtime.block_on(run_benchmark(&args)),
    }
}

/// The control cache an ingest node keeps, as `candor::node` builds it.
fn control_cache(url: &str, master: &MasterSecret) -> Result<Arc<ControlCache>> {
    let mut config = Config::defaults(Role::Ingest);
    config.control.url = Some(url.into());
    candor::node::control_cache(&config, Role::Ingest, master, &prometheus::Registry::new())
}

/// The node under test: `candor ingest` as `candor::node` starts it, with
/// quotas off (the benchmark's devices send far faster than agents may) and
/// a replay window that remembers nothing (batches are reused in a cycle;
/// the claim's hash and lock still run for every request).
async fn run_node(brokers: &str, control: &str, topic: &str, log_record_format: u8) -> Result<()> {
    let mut config = Config::defaults(Role::Ingest);
    config.kafka.brokers = brokers.into();
    config.kafka.topic = topic.into();
    config.kafka.dead_letter_topic = format!("{topic}-dead");
    config.control.url = Some(control.into());
    config.ingest.listen = "127.0.0.1:0".parse()?;
    config.ingest.device_batches_per_s = 0;
    config.ingest.tenant_events_per_s = 0;
    config.ingest.replay_window_secs = 0;
    config.ingest.log_record_format = log_record_format;
    let node = candor::node::start(config, Role::Ingest).await?;
    println!("listening {}", node.ingest.context("an ingest address")?);
    node.wait().await?;
    Ok(())
}

/// The last weekday before today, so every agent has a workday.
fn a_workday() -> chrono::NaiveDate {
    let mut day = Utc::now().date_naive() - Days::new(1);
    while matches!(day.weekday(), Weekday::Sat | Weekday::Sun) {
        day = day - Days::new(1);
    }
    day
}

/// Consecutive 5-minute batches of one workday merged into `minutes`-long ones.
fn merged(batches: Vec<Batch>, minutes: i64) -> Vec<Batch> {
    let per = (minutes / candor_simulate::BATCH_MINUTES).max(1) as usize;
    batches
        .chunks(per)
        .map(|chunk| {
            let mut b = chunk[0].clone();
            for next in &chunk[1..] {
                b.sent_at_ms = next.sent_at_ms;
                b.activity.extend(next.activity.iter().cloned());
                b.app_usage.extend(next.app_usage.iter().cloned());
                b.gps.extend(next.gps.iter().cloned());
                b.attendance.extend(next.attendance.iter().cloned());
            }
            b
        })
        .collect()
}

struct Prepared {
    body: Vec<u8>,
    events: usize,
    /// What ingest appends for this batch: the bare producer sends these.
    records: Vec<Record>,
}

struct Phase {
    name: &'static str,
    seconds: f64,
    batches: usize,
    events: usize,
    bytes: usize,
    latencies_us: Vec<u64>,
    /// Answers 429 or 503 the agents waited out.
    waited: usize,
    cpu_seconds: Option<f64>,
}

impl Phase {
    fn percentile(&self, p: f64) -> f64 {
        let mut l = self.latencies_us.clone();
        l.sort_unstable();
        if l.is_empty() {
            return f64::NAN;
        }
        let i = ((l.len() as f64 - 1.0) * p).round() as usize;
        l[i] as f64 / 1000.0
    }

    fn events_per_s(&self) -> f64 {
        self.events as f64 / self.seconds
    }

    fn row(&self) -> String {
        let per_core = self.cpu_seconds.map_or("n/a".to_string(), |cpu| {
            format!("{:.0}", self.events as f64 / cpu)
        });
        format!(
            "| {} | {:.0} | {:.0} | {:.1} | {} | {:.2} | {:.2} | {} |",
            self.name,
            self.batches as f64 / self.seconds,
            self.events_per_s(),
            self.bytes as f64 / self.seconds / 1e6,
            per_core,
            self.percentile(0.5),
            self.percentile(0.99),
            self.waited,
        )
    }
}

/// CPU seconds (user + system) a process has used so far.
fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which is in parentheses.
    let fields: Vec<&str> = stat[stat.rfind(')').context("stat")? + 2..]
        .split(' ')
        .collect();
    let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
    Ok(ticks / 100.0)
}

/// Peak resident memory of a process, in MiB.
fn peak_rss_mib(pid: u32) -> Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .context("VmHWM")?;
    let kib: f64 = line
        .split_whitespace()
        .nth(1)
        .context("VmHWM value")?
        .parse()?;
    Ok(kib / 1024.0)
}

struct NodeProcess(Child);

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn run_benchmark(args: &Args) -> Result<()> {
    let secret: [u8; 32] = rand::random();
    let master = MasterSecret::from_bytes(&secret)?;
    let dir = tempfile::tempdir()?;
    let control_url = dir.path().join("control").display().to_string();
    let (store, prefix) = open_store(&control_url)?;
    let admin = Admin::new(
        DocumentStore::new(store.clone(), &prefix),
        Arc::new(AuditLog::new(store, &prefix, master.clone())),
        master.clone(),
    );
    let tenants: Vec<TenantId> = (0..TENANTS)
        .map(|i| TenantId::new(format!("bench-{i}")).expect("valid id"))
        .collect();
    for t in &tenants {
        admin
            .create_tenant(
                &Actor::operator(),
                &Tenant::new(t.clone(), Plan::Enterprise, "UTC"),
            )
            .await?;
    }
    let stamp = Utc::now().timestamp_millis();
    let ingest_topic = format!("bench-ingest-{stamp}");
    let bare_topic = format!("bench-bare-{stamp}");
    for topic in [&ingest_topic, &bare_topic] {
        ensure_topic(&KafkaConfig::new(&args.brokers, topic), 6).await?;
    }

    // Seal every batch before the clock starts, and build the records
    // ingest will append for it, for the bare producer.
    let cache = control_cache(&control_url, &master)?;
    let day = a_workday();
    let mut rng = StdRng::seed_from_u64(7);
    let mut prepared = Vec::new();
    let received_at_ms = Utc::now().timestamp_millis();
    let format = RecordFormat::from_version(args.log_record_format)
        .context("--log-record-format must be 1 or 2")?;
    for d in 0..args.devices {
        let tenant = &tenants[d % TENANTS];
        let agent = SimulatedAgent::new(tenant, d);
        let keys = cache.get(tenant).await?.context("tenant")?;
        let (version, key) = keys.keys.as_ref().context("keys")?.current_at_rest();
        for batch in merged(agent.workday(day, d as u64), args.batch_minutes) {
            let body = agent.seal(&master, &batch, &mut rng);
            let authentic = authenticate(&body, &master, &Limits::default())?;
            let decoded = decode(&authentic.frame, &Limits::default(), received_at_ms)?;
            let h = &authentic.header;
            let meta = RecordMeta {
                employee: h.employee.clone(),
                device: h.device.clone(),
                batch_id: h.batch_id,
                received_at_ms,
            };
            // Sealed as ingest seals them, in the layout it writes.
            let records = record::seal_batch(
                format,
                &h.tenant,
                key,
                version,
                &meta,
                &decoded.datasets,
                rand::random,
            )
            .into_iter()
            .map(|value| Record {
                key: record::log_key(&h.tenant, &h.device),
                value,
            })
            .collect();
            prepared.push(Prepared {
                body,
                events: batch.event_count(),
                records,
            });
        }
    }
    let prepared = Arc::new(prepared);
    let avg_events =
        prepared.iter().map(|p| p.events).sum::<usize>() as f64 / prepared.len() as f64;
    let avg_body =
        prepared.iter().map(|p| p.body.len()).sum::<usize>() as f64 / prepared.len() as f64;
    eprintln!(
        "prepared {} batches from {} devices: {avg_events:.0} events and {avg_body:.0} bytes per batch on average",
        prepared.len(),
        args.devices
    );

    let mut child = Command::new(std::env::current_exe()?)
        .args([
            "--brokers",
            &args.brokers,
            "node",
            "--control",
            &control_url,
        ])
        .args(["--topic", &ingest_topic])
        .args(["--log-record-format", &args.log_record_format.to_string()])
        .env("CANDOR_MASTER_SECRET", hex::encode(secret))
        .stdout(Stdio::piped())
        .spawn()?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().context("stdout")?).read_line(&mut line)?;
    let node = NodeProcess(child);
    let addr = line
        .strip_prefix("listening ")
        .context("the node printed no address")?
        .trim()
        .to_string();
    let url = format!("http://{addr}/v1/batches");
    let pid = node.0.id();

    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.connections)
        .build()?;
    // Warm up: connections, the tenant cache, the producer's metadata.
    closed_loop(
        "warm-up",
        &client,
        &url,
        &prepared,
        args.connections,
        Duration::from_secs(2),
        None,
    )
    .await?;
    let window = Duration::from_secs(args.seconds);
    let peak = closed_loop(
        "ingest, peak",
        &client,
        &url,
        &prepared,
        args.connections,
        window,
        Some(pid),
    )
    .await?;
    let rate = peak.batches as f64 / peak.seconds / 2.0;
    let half = open_loop(&client, &url, &prepared, rate, window, pid).await?;
    let rss = peak_rss_mib(pid)?;
    drop(node);
    let bare = bare_producer(
        &args.brokers,
        &bare_topic,
        &prepared,
        args.connections,
        window,
    )
    .await?;

    println!();
    println!(
        "{} devices in {TENANTS} tenants, {avg_events:.0} events ({avg_body:.0} bytes sealed) per batch, {} connections, {} s per phase",
        args.devices, args.connections, args.seconds
    );
    println!();
    println!(
        "| phase | batches/s | events/s | MB/s in | events/s per ingest core | p50 ms | p99 ms | 429/503 waited out |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for phase in [&peak, &half, &bare] {
        println!("{}", phase.row());
    }
    println!();
    println!(
        "ingest / bare producer throughput: {:.2}; ingest peak resident memory: {rss:.0} MiB",
        peak.events_per_s() / bare.events_per_s()
    );
    Ok(())
}

/// `connections` agents, each sending its next batch as soon as the last
/// was answered.
async fn closed_loop(
    name: &'static str,
    client: &reqwest::Client,
    url: &str,
    prepared: &Arc<Vec<Prepared>>,
    connections: usize,
    window: Duration,
    pid: Option<u32>,
) -> Result<Phase> {
    let next = Arc::new(AtomicUsize::new(0));
    let cpu_before = pid.map(cpu_seconds).transpose()?;
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..connections {
        let (client, url, prepared, next) = (
            client.clone(),
            url.to_string(),
            prepared.clone(),
            next.clone(),
        );
        tasks.spawn(async move {
            let mut sent = Sent::default();
            while started.elapsed() < window {
                let p = &prepared[next.fetch_add(1, Ordering::Relaxed) % prepared.len()];
                let at = Instant::now();
                let waited = post(&client, &url, &p.body).await?;
                sent.add(p, at, waited);
            }
            anyhow::Ok(sent)
        });
    }
    let mut phase = gather(name, tasks, started).await?;
    if let (Some(pid), Some(before)) = (pid, cpu_before) {
        phase.cpu_seconds = Some(cpu_seconds(pid)? - before);
    }
    Ok(phase)
}

/// What one sending task reports.
#[derive(Default)]
struct Sent {
    batches: usize,
    events: usize,
    bytes: usize,
    /// From the first send to the 202, waits for `Retry-After` included.
    latencies_us: Vec<u64>,
    /// Answers 429 or 503 waited out before a 202.
    waited: usize,
}

impl Sent {
    fn add(&mut self, p: &Prepared, sent_at: Instant, waited: usize) {
        self.latencies_us.push(sent_at.elapsed().as_micros() as u64);
        self.batches += 1;
        self.events += p.events;
        self.bytes += p.body.len();
        self.waited += waited;
    }
}

/// Sums the tasks of a phase once they are all done.
async fn gather(
    name: &'static str,
    mut tasks: tokio::task::JoinSet<Result<Sent>>,
    started: Instant,
) -> Result<Phase> {
    let mut phase = Phase {
        name,
        seconds: 0.0,
        batches: 0,
        events: 0,
        bytes: 0,
        latencies_us: Vec::new(),
        waited: 0,
        cpu_seconds: None,
    };
    while let Some(done) = tasks.join_next().await {
        let sent = done??;
        phase.batches += sent.batches;
        phase.events += sent.events;
        phase.bytes += sent.bytes;
        phase.latencies_us.extend(sent.latencies_us);
        phase.waited += sent.waited;
    }
    phase.seconds = started.elapsed().as_secs_f64();
    Ok(phase)
}

/// Posts one batch as an agent does (`candor_simulate::post_batch`): a
/// 429 or 503 is waited out for its `Retry-After` and the batch sent again.
/// Returns how many such answers came before the 202.
async fn post(client: &reqwest::Client, url: &str, body: &[u8]) -> Result<usize> {
    let urls = [url.to_string()];
    match post_batch(client, &urls, body.to_vec(), MAX_ATTEMPTS).await? {
        Outcome::Accepted { waited } => Ok(waited as usize),
        Outcome::Rejected { status, reason } => bail!("ingest answered {status}: {reason}"),
    }
}

/// Batches sent at a fixed rate whatever the answers, so latency is
/// measured as agents see it rather than as a closed loop hides it.
async fn open_loop(
    client: &reqwest::Client,
    url: &str,
    prepared: &Arc<Vec<Prepared>>,
    batches_per_s: f64,
    window: Duration,
    pid: u32,
) -> Result<Phase> {
    let cpu_before = cpu_seconds(pid)?;
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / batches_per_s));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut tasks = tokio::task::JoinSet::new();
    let mut i = 0;
    while started.elapsed() < window {
        tick.tick().await;
        let (client, url, prepared) = (client.clone(), url.to_string(), prepared.clone());
        let n = i;
        i += 1;
        tasks.spawn(async move {
            let p = &prepared[n % prepared.len()];
            let at = Instant::now();
            let waited = post(&client, &url, &p.body).await?;
            let mut sent = Sent::default();
            sent.add(p, at, waited);
            anyhow::Ok(sent)
        });
    }
    let mut phase = gather("ingest, half of peak", tasks, started).await?;
    phase.cpu_seconds = Some(cpu_seconds(pid)? - cpu_before);
    Ok(phase)
}

/// The ceiling: the same records straight to the broker with the same
/// producer settings ingest ships, `connections` batches in flight.
async fn bare_producer(
    brokers: &str,
    topic: &str,
    prepared: &Arc<Vec<Prepared>>,
    connections: usize,
    window: Duration,
) -> Result<Phase> {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .set("compression.type", "none")
        .create()?;
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..connections {
        let (producer, prepared, next, topic) = (
            producer.clone(),
            prepared.clone(),
            next.clone(),
            topic.to_string(),
        );
        tasks.spawn(async move {
            let mut sent = Sent::default();
            while started.elapsed() < window {
                let p = &prepared[next.fetch_add(1, Ordering::Relaxed) % prepared.len()];
                let at = Instant::now();
                // All of a batch's records are queued before any is awaited,
                // as ingest does.
                let mut deliveries = Vec::with_capacity(p.records.len());
                for r in &p.records {
                    let record = FutureRecord::to(&topic).key(&r.key).payload(&r.value);
                    deliveries.push(producer.send_result(record).map_err(|(e, _)| e)?);
                }
                for d in deliveries {
                    d.await?.map_err(|(e, _)| e)?;
                }
                sent.add(p, at, 0);
            }
            anyhow::Ok(sent)
        });
    }
    let phase = gather("bare rdkafka producer", tasks, started).await?;
    Ok(phase)
}
