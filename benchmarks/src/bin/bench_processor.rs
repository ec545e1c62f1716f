//! `candor-bench-processor`: the processor's throughput from sealed log
//! records to committed Parquet, side by side with DuckDB computing the same
//! aggregates from the same events into hive-partitioned Parquet.
//!
//! Preparation, before any clock starts:
//! 1. a control plane in a local directory with `--tenants` tenants that
//!    track around the clock (every event is kept) and rate apps;
//! 2. a real ingest node (the product's `IngestState` and `serve`, quotas
//!    off) in this process, appending to the embedded spool log;
//! 3. `--employees` simulated agents' workdays (`--days` weekdays before
//!    today; one in `--gps-every` employees also reports a GPS point a
//!    minute) sealed and posted to it in time order, as agents would;
//! 4. the same events, as they were before sealing, written to Parquet for
//!    DuckDB (`input/<dataset>.parquet`), with the tenants' pseudonym keys.
//!
//! Each run then copies the spool, waits until no other benchmark runs, and:
//! - drains it with the product's `Processor` in a child process (spool
//!   consumer, local lake with its fsyncs, default `ProcessorConfig`); the
//!   child times only `drain()` (wall, and its process CPU from `/proc`);
//! - runs `duckdb_processor.py`, which times DuckDB computing the same
//!   aggregates and writing them as zstd Parquet, then fsyncing them;
//! - checks, untimed, that both lakes hold the same sums per key.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use arrow::array::{
    ArrayRef, Float64Builder, Int64Builder, RecordBatch, StringBuilder, UInt32Builder,
};
use candor::config::{Config, Role};
use candor_control::tenant::AppCategories;
use candor_control::{
    Actor, Admin, AuditLog, ControlCache, DocumentStore, Plan, Tenant, open_store,
};
use candor_log::spool::{Spool, SpoolConfig};
use candor_processor::Lake;
use candor_schemas::batch::{Batch, GpsPoint};
use candor_schemas::keys::MasterSecret;
use candor_schemas::{Dataset, TenantId};
use candor_simulate::{BATCH_MINUTES, Outcome, SimulatedAgent, post_batch};
use chrono::{Datelike, Days, NaiveDate, Utc, Weekday};
use clap::{Parser, Subcommand};
use parquet::arrow::ArrowWriter;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

/// The allocator under comparison (feature `mimalloc`); the system's without it.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(about = "Processor throughput (sealed log records to committed Parquet) against DuckDB")]
struct Args {
    #[command(subcommand)]
    command: Option<Internal>,
    /// Simulated employees (one device each), spread over the tenants.
    #[arg(long, default_value_t = 1000)]
    employees: usize,
    /// Workdays of data: the weekdays before today.
    #[arg(long, default_value_t = 5)]
    days: usize,
    #[arg(long, default_value_t = 4)]
    tenants: usize,
    /// One employee in this many works in the field and reports a GPS
    /// point every minute (0: nobody).
    #[arg(long, default_value_t = 5)]
    gps_every: usize,
    /// Minutes of events per batch: agents upload every 5 minutes (one
    /// record of about 5 events per dataset); more merges batches.
    #[arg(long, default_value_t = 5)]
    batch_minutes: i64,
    /// Measured runs over the same prepared input.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// The processor's records per flush (the product's default).
    #[arg(long, default_value_t = 10_000)]
    max_records_per_flush: usize,
    /// Batches posted at once while preparing.
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// DuckDB threads (0: DuckDB's default, one per core).
    #[arg(long, default_value_t = 0)]
    duckdb_threads: usize,
    #[arg(long, default_value = "python3")]
    python: String,
    /// The DuckDB side (default: duckdb_processor.py beside this crate).
    #[arg(long)]
    script: Option<PathBuf>,
    /// Where to work (default: a temporary directory, removed at the end).
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Keep the work directory (the prepared spool and input, the last lakes).
    #[arg(long)]
    keep: bool,
    /// Longest wait for other benchmarks to finish before a run, in seconds.
    #[arg(long, default_value_t = 3600)]
    max_idle_wait: u64,
}

#[derive(Subcommand)]
enum Internal {
    /// (internal) Drain a spool into a lake with the product's processor
    /// and print what it took as JSON.
    Drain {
        #[arg(long)]
        control: String,
        #[arg(long)]
        spool: PathBuf,
        #[arg(long)]
        lake: PathBuf,
        #[arg(long)]
        max_records_per_flush: usize,
    },
    /// Times the pieces of the processor's work one after another over the
    /// records of a spool (read, decrypt, decode, pseudonym, aggregate,
    /// Parquet encode, write, fsync), with the processor's own public parts,
    /// and prints them. Reads without committing.
    Pieces {
        #[arg(long)]
        control: String,
        #[arg(long)]
        spool: PathBuf,
        /// A scratch lake to write to.
        #[arg(long)]
        lake: PathBuf,
        #[arg(long, default_value_t = 10_000)]
        max_records_per_flush: usize,
    },
}

const GROUP: &str = "candor-processor";

fn main() -> Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Runtime::new()?;
    match &args.command {
        Some(Internal::Drain {
            control,
            spool,
            lake,
            max_records_per_flush,
        }) => runtime.block_on(drain(control, spool, lake, *max_records_per_flush)),
        Some(Internal::Pieces {
            control,
            spool,
            lake,
            max_records_per_flush,
        }) => runtime.block_on(pieces(control, spool, lake, *max_records_per_flush)),
        None => runtime.block_on(run_benchmark(&args)),
    }
}

fn master_from_env() -> Result<MasterSecret> {
    Ok(MasterSecret::from_hex(
        &std::env::var("CANDOR_MASTER_SECRET").context("CANDOR_MASTER_SECRET")?,
    )?)
}

/// The configuration of the measured nodes: the control plane at `url`.
fn config(role: Role, url: &str) -> Config {
    let mut config = Config::defaults(role);
    config.control.url = Some(url.into());
    config
}

/// The control cache a processor keeps (directory included), as
/// `candor::node` builds it.
fn control_cache(url: &str, master: &MasterSecret) -> Result<Arc<ControlCache>> {
    candor::node::control_cache(
        &config(Role::Processor, url),
        Role::Processor,
        master,
        &prometheus::Registry::new(),
    )
}

// ---------------------------------------------------------------------------
// CPU accounting

/// CPU seconds (user + system) this process has used so far.
fn own_cpu_seconds() -> Result<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    let fields: Vec<&str> = stat[stat.rfind(')').context("stat")? + 2..]
        .split(' ')
        .collect();
    let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
    Ok(ticks / 100.0)
}

/// CPU seconds the whole machine has spent busy (all cores, not idle or
/// waiting for I/O).
fn machine_busy_seconds() -> Result<f64> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let line = stat.lines().next().context("/proc/stat")?;
    let v: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().unwrap_or(0.0))
        .collect();
    // user nice system idle iowait irq softirq steal
    Ok((v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / 100.0)
}

/// Peak resident memory of this process, in MiB.
fn own_peak_rss_mib() -> Result<f64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
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

// ---------------------------------------------------------------------------
// The measured processor (child process)

async fn drain(
    control: &str,
    spool: &Path,
    lake: &Path,
    max_records_per_flush: usize,
) -> Result<()> {
    let master = master_from_env()?;
    let cache = control_cache(control, &master)?;
    // As `candor processor` runs it: a refresher keeps the cache current.
    tokio::spawn({
        let cache = cache.clone();
        async move { cache.run_refresher(std::future::pending()).await }
    });
    let spool = Spool::open(SpoolConfig::new(spool))?;
    let mut config = config(Role::Processor, control);
    config.lake.url = Some(lake.display().to_string());
    config.processor.group = GROUP.into();
    config.processor.max_records_per_flush = u32::try_from(max_records_per_flush)?;
    let mut processor = candor::node::processor(
        &config,
        spool.consumer(GROUP)?,
        cache,
        None,
        &prometheus::Registry::new(),
    )?;
    let (cpu, busy, started) = (own_cpu_seconds()?, machine_busy_seconds()?, Instant::now());
    processor.drain().await?;
    let wall_s = started.elapsed().as_secs_f64();
    let cpu_s = own_cpu_seconds()? - cpu;
    let machine_busy_s = machine_busy_seconds()? - busy;
    let stats = processor.stats();
    println!(
        "{}",
        json!({
            "wall_s": wall_s,
            "cpu_s": cpu_s,
            "machine_busy_s": machine_busy_s,
            "records": stats.records,
            "events": stats.events,
            "events_dropped": stats.events_outside_work_hours + stats.events_duplicate,
            "undecodable": stats.records_undecodable,
            "files": stats.files_written,
            "rows": stats.rows_written,
            "table_commit_s": stats.table_commit_time.as_secs_f64(),
            "peak_rss_mib": own_peak_rss_mib()?,
        })
    );
    Ok(())
}

/// Seconds spent per piece, summed over all records.
#[derive(Default)]
struct Pieces {
    read: f64,
    header_and_keys: f64,
    decrypt: f64,
    open_record: f64,
    subject: f64,
    dedup: f64,
    aggregate_add: f64,
    aggregate_finish: f64,
    parquet_encode: f64,
    write: f64,
    fsync: f64,
    intent_and_ids: f64,
}

fn timed<T>(total: &mut f64, f: impl FnOnce() -> T) -> T {
    let started = Instant::now();
    let out = f();
    *total += started.elapsed().as_secs_f64();
    out
}

/// fsyncs a file and its folders up to `root`, as the lake does.
fn fsync_up(root: &Path, file: &Path) -> Result<()> {
    std::fs::File::open(file)?.sync_all()?;
    let mut dir = file.parent();
    while let Some(d) = dir {
        std::fs::File::open(d)?.sync_all()?;
        if d == root {
            break;
        }
        dir = d.parent();
    }
    Ok(())
}

async fn pieces(
    control: &str,
    spool: &Path,
    lake_dir: &Path,
    max_records_per_flush: usize,
) -> Result<()> {
    use candor_log::LogConsumer;
    use candor_processor::{Aggregator, Subject, TenantPolicy};
    use candor_schemas::record::{RecordError, SealedRecord, open_record, read_header};
    use object_store::ObjectStoreExt;
    use object_store::path::Path as ObjectPath;
    use parquet::basic::{Compression, ZstdLevel};
    use parquet::file::properties::{EnabledStatistics, WriterProperties};
    use std::collections::{HashMap, HashSet};

    let master = master_from_env()?;
    let cache = control_cache(control, &master)?;
    let spool = Spool::open(SpoolConfig::new(spool))?;
    let mut consumer = spool.consumer("candor-bench-pieces")?;
    std::fs::create_dir_all(lake_dir)?;
    let lake_dir = lake_dir.canonicalize()?;
    let lake = Lake::local(&lake_dir)?;
    let mut t = Pieces::default();
    let (mut records, mut events, mut files) = (0usize, 0usize, 0usize);
    let mut views = HashMap::new();
    let mut seen = HashSet::new();
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(3)?))
        .set_statistics_enabled(EnabledStatistics::Page)
        .build();
    let cpu = own_cpu_seconds()?;
    let started = Instant::now();
    let mut flush = 0usize;
    loop {
        let t0 = Instant::now();
        let polled = consumer
            .poll(max_records_per_flush, Duration::from_millis(10))
            .await?;
        t.read += t0.elapsed().as_secs_f64();
        if polled.is_empty() {
            break;
        }
        let mut by_partition: BTreeMap<i32, Vec<_>> = BTreeMap::new();
        for d in polled {
            by_partition.entry(d.partition).or_default().push(d);
        }
        for chunk in by_partition.into_values() {
            flush += 1;
            let mut agg = Aggregator::default();
            for d in &chunk {
                records += 1;
                let header = timed(&mut t.header_and_keys, || read_header(&d.value))?;
                if !views.contains_key(&header.tenant) {
                    let view = cache.get(&header.tenant).await?.context("tenant")?;
                    let policy = TenantPolicy::of(&view.tenant.doc);
                    views.insert(header.tenant.clone(), (view, policy));
                }
                let (view, policy) = &views[&header.tenant];
                let keys = view.keys.as_ref().context("keys")?;
                // Decryption alone, as `open_record` does it first.
                timed(&mut t.decrypt, || {
                    let sealed = SealedRecord::parse(&d.value)?;
                    let key = keys.at_rest(sealed.header.key_version).cloned();
                    sealed.decrypt(&key.ok_or(RecordError::Authentication)?)
                })?;
                let record = timed(&mut t.open_record, || {
                    open_record(&d.value, |_, v| keys.at_rest(v).cloned())
                })?;
                events += record.event_count();
                timed(&mut t.dedup, || {
                    for (dataset, _) in &record.datasets {
                        seen.insert((record.meta.batch_id, *dataset as u8));
                    }
                });
                let subject = timed(&mut t.subject, || {
                    Arc::new(Subject {
                        pseudonym: keys.pseudonym().subject(&record.meta.employee),
                        department: None,
                    })
                });
                timed(&mut t.aggregate_add, || agg.add(&record, &subject, policy));
            }
            let out = timed(&mut t.aggregate_finish, || agg.finish());
            // The flush's intent and batch-ids objects: two small durable puts.
            let t0 = Instant::now();
            for name in ["intent.json", "ids.bin"] {
                let path = ObjectPath::from(format!("_pieces/{flush}/{name}"));
                lake.put_durable(&path, vec![0u8; 512].into()).await?;
            }
            t.intent_and_ids += t0.elapsed().as_secs_f64();
            for (key, batch) in out {
                let bytes = timed(&mut t.parquet_encode, || -> Result<Vec<u8>> {
                    let mut buf = Vec::new();
                    let mut w =
                        ArrowWriter::try_new(&mut buf, batch.schema(), Some(props.clone()))?;
                    w.write(&batch)?;
                    w.close()?;
                    Ok(buf)
                })?;
                let path = key.object_path(&format!("part-{flush:08}.parquet"));
                let t0 = Instant::now();
                lake.store().put(&path, bytes.into()).await?;
                t.write += t0.elapsed().as_secs_f64();
                let t0 = Instant::now();
                fsync_up(&lake_dir, &lake_dir.join(path.as_ref()))?;
                t.fsync += t0.elapsed().as_secs_f64();
                files += 1;
            }
        }
    }
    let wall = started.elapsed().as_secs_f64();
    let cpu = own_cpu_seconds()? - cpu;
    let decode = t.open_record - t.decrypt;
    let rows = [
        ("log read (spool poll, crc)", t.read),
        ("header, tenant view", t.header_and_keys),
        ("decrypt (XChaCha20-Poly1305)", t.decrypt),
        (
            "Arrow IPC decode, who and when (open_record - decrypt)",
            decode,
        ),
        ("pseudonym (HMAC-SHA256 + hex)", t.subject),
        ("dedup set", t.dedup),
        ("Aggregator::add", t.aggregate_add),
        ("Aggregator::finish (columns)", t.aggregate_finish),
        ("Parquet encode (zstd 3, page stats)", t.parquet_encode),
        ("object write (temp file + rename)", t.write),
        ("fsync of file and folders", t.fsync),
        ("intent + ids objects (durable)", t.intent_and_ids),
    ];
    // open_record decrypts again: the sum counts decryption once.
    let sum: f64 = rows.iter().map(|r| r.1).sum();
    println!(
        "{records} records, {events} events, {flush} chunks, {files} files; \
         {wall:.2} s wall ({:.2} s of it measured below, decryption counted once), {cpu:.2} s CPU",
        sum
    );
    println!();
    println!("| piece | seconds | share | µs per record | ns per event |");
    println!("|---|---|---|---|---|");
    for (name, secs) in rows {
        println!(
            "| {name} | {secs:.2} | {:.0}% | {:.2} | {:.0} |",
            100.0 * secs / sum,
            secs * 1e6 / records as f64,
            secs * 1e9 / events as f64
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Preparation

/// The `n` weekdays before today, oldest first.
fn workdays(n: usize) -> Vec<NaiveDate> {
    let mut days = Vec::new();
    let mut day = Utc::now().date_naive();
    while days.len() < n {
        day = day - Days::new(1);
        if !matches!(day.weekday(), Weekday::Sat | Weekday::Sun) {
            days.push(day);
        }
    }
    days.reverse();
    days
}

/// The tenants' app ratings: the same for all, so DuckDB applies one rule.
fn categories() -> AppCategories {
    AppCategories {
        productive: vec![
            "Excel".into(),
            "Visual Studio Code".into(),
            "example.com".into(),
        ],
        unproductive: vec!["news.example.org".into(), "Solitaire".into()],
    }
}

/// A field worker's route: one point a minute, a random walk from a
/// point of their own.
fn add_gps(batches: &mut [Batch], employee: usize, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x6770_7300);
    let mut lat = 47.0 + (employee % 40) as f64 * 0.1;
    let mut lon = 7.0 + (employee / 40 % 40) as f64 * 0.15;
    for b in batches {
        for a in &b.activity {
            lat += rng.random_range(-0.004..0.004);
            lon += rng.random_range(-0.006..0.006);
            b.gps.push(GpsPoint {
                at_ms: a.start_ms + 30_000,
                lat,
                lon,
                accuracy_m: rng.random_range(3.0..30.0),
            });
        }
    }
}

/// Consecutive 5-minute batches merged into `minutes`-long ones.
fn merged(batches: Vec<Batch>, minutes: i64) -> Vec<Batch> {
    let per = (minutes / BATCH_MINUTES).max(1) as usize;
    if per == 1 {
        return batches;
    }
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

/// Who sent a batch: the columns every input table starts with.
#[derive(Default)]
struct Who {
    tenant: StringBuilder,
    employee: StringBuilder,
    device: StringBuilder,
    batch: Int64Builder,
}

impl Who {
    fn push(&mut self, agent: &SimulatedAgent, batch: i64) {
        self.tenant.append_value(agent.tenant.as_str());
        self.employee.append_value(agent.employee.as_str());
        self.device.append_value(agent.device.as_str());
        self.batch.append_value(batch);
    }

    fn finish(&mut self) -> Vec<(&'static str, ArrayRef)> {
        vec![
            ("tenant", Arc::new(self.tenant.finish()) as ArrayRef),
            ("employee", Arc::new(self.employee.finish())),
            ("device", Arc::new(self.device.finish())),
            ("batch", Arc::new(self.batch.finish())),
        ]
    }
}

/// The events as agents sent them (before sealing), one table per dataset,
/// with who sent them and a batch number: DuckDB's input.
#[derive(Default)]
struct Dump {
    activity: (Who, Int64Builder, UInt32Builder, UInt32Builder),
    app: (
        Who,
        Int64Builder,
        UInt32Builder,
        StringBuilder,
        StringBuilder,
    ),
    gps: (
        Who,
        Int64Builder,
        Float64Builder,
        Float64Builder,
        Float64Builder,
    ),
    attendance: (Who, Int64Builder, StringBuilder),
}

impl Dump {
    fn add(&mut self, agent: &SimulatedAgent, seq: i64, b: &Batch) {
        for e in &b.activity {
            let t = &mut self.activity;
            t.0.push(agent, seq);
            t.1.append_value(e.start_ms);
            t.2.append_value(e.active_s);
            t.3.append_value(e.idle_s);
        }
        for e in &b.app_usage {
            let t = &mut self.app;
            t.0.push(agent, seq);
            t.1.append_value(e.start_ms);
            t.2.append_value(e.duration_s);
            t.3.append_value(&e.app);
            t.4.append_option(e.host.as_deref());
        }
        for e in &b.gps {
            let t = &mut self.gps;
            t.0.push(agent, seq);
            t.1.append_value(e.at_ms);
            t.2.append_value(e.lat);
            t.3.append_value(e.lon);
            t.4.append_value(e.accuracy_m);
        }
        for e in &b.attendance {
            let t = &mut self.attendance;
            t.0.push(agent, seq);
            t.1.append_value(e.at_ms);
            t.2.append_value(e.kind.as_str());
        }
    }

    /// Writes `<dir>/<dataset>.parquet`, one per dataset.
    fn write(mut self, dir: &Path) -> Result<()> {
        let tables: Vec<(Dataset, Vec<(&str, ArrayRef)>)> = vec![
            (Dataset::Activity, {
                let t = &mut self.activity;
                let mut c = t.0.finish();
                c.push(("start_ms", Arc::new(t.1.finish())));
                c.push(("active_s", Arc::new(t.2.finish())));
                c.push(("idle_s", Arc::new(t.3.finish())));
                c
            }),
            (Dataset::AppUsage, {
                let t = &mut self.app;
                let mut c = t.0.finish();
                c.push(("start_ms", Arc::new(t.1.finish())));
                c.push(("duration_s", Arc::new(t.2.finish())));
                c.push(("app", Arc::new(t.3.finish())));
                c.push(("host", Arc::new(t.4.finish())));
                c
            }),
            (Dataset::Gps, {
                let t = &mut self.gps;
                let mut c = t.0.finish();
                c.push(("at_ms", Arc::new(t.1.finish())));
                c.push(("lat", Arc::new(t.2.finish())));
                c.push(("lon", Arc::new(t.3.finish())));
                c.push(("accuracy_m", Arc::new(t.4.finish())));
                c
            }),
            (Dataset::Attendance, {
                let t = &mut self.attendance;
                let mut c = t.0.finish();
                c.push(("at_ms", Arc::new(t.1.finish())));
                c.push(("kind", Arc::new(t.2.finish())));
                c
            }),
        ];
        for (dataset, columns) in tables {
            let batch = RecordBatch::try_from_iter(columns)?;
            let file = std::fs::File::create(dir.join(format!("{}.parquet", dataset.name())))?;
            let mut writer = ArrowWriter::try_new(file, batch.schema(), None)?;
            writer.write(&batch)?;
            writer.close()?;
        }
        Ok(())
    }
}

/// What preparation produced.
struct Prepared {
    batches: usize,
    records: u64,
    events: u64,
    per_dataset: BTreeMap<&'static str, u64>,
    seconds: f64,
}

/// Creates the tenants, generates and posts every batch through a real
/// ingest node into the spool at `spool_dir`, and writes DuckDB's input to
/// `input_dir`.
async fn prepare(
    args: &Args,
    master: &MasterSecret,
    control_url: &str,
    spool_dir: &Path,
    input_dir: &Path,
) -> Result<Prepared> {
    let started = Instant::now();
    let (store, prefix) = open_store(control_url)?;
    let admin = Admin::new(
        DocumentStore::new(store.clone(), &prefix),
        Arc::new(AuditLog::new(store, &prefix, master.clone())),
        master.clone(),
    );
    let tenants: Vec<TenantId> = (0..args.tenants)
        .map(|i| TenantId::new(format!("bench-{i}")).expect("valid id"))
        .collect();
    for t in &tenants {
        let mut tenant = Tenant::new(t.clone(), Plan::Enterprise, "UTC");
        tenant.track_outside_work_hours = true;
        tenant.app_categories = categories();
        admin.create_tenant(&Actor::operator(), &tenant).await?;
    }
    let cache = control_cache(control_url, master)?;

    // The tenants' pseudonym keys, so DuckDB computes the same subjects.
    let mut keys = Vec::new();
    for t in &tenants {
        let view = cache.get(t).await?.context("tenant")?;
        let k = view.keys.as_ref().context("keys")?;
        keys.push(json!({
            "tenant": t.as_str(),
            "pseudonym_key": hex::encode(k.pseudonym().as_bytes()),
        }));
    }
    let c = categories();
    std::fs::write(
        input_dir.join("tenants.json"),
        serde_json::to_vec_pretty(&json!({
            "tenants": keys,
            "productive": c.productive,
            "unproductive": c.unproductive,
        }))?,
    )?;

    // The ingest node, appending to the spool.
    let spool = Spool::open(SpoolConfig::new(spool_dir))?;
    let mut config = config(Role::Ingest, control_url);
    config.ingest.device_batches_per_s = 0;
    config.ingest.tenant_events_per_s = 0;
    let state = candor::node::ingest_state(
        &config,
        cache.clone(),
        Arc::new(spool.producer()),
        master,
        &prometheus::Registry::new(),
    )?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/v1/batches", listener.local_addr()?);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let node = tokio::spawn(candor_ingest::serve(listener, state, async {
        let _ = stopped.await;
    }));

    // Every batch, sealed, in the order agents would send them: day by
    // day, each round of uploads from every agent in turn.
    let agents: Vec<SimulatedAgent> = (0..args.employees)
        .map(|i| SimulatedAgent::new(&tenants[i % tenants.len()], i))
        .collect();
    let mut rng = StdRng::seed_from_u64(11);
    let mut dump = Dump::default();
    let mut bodies = Vec::new();
    let (mut events, mut datasets) = (0u64, BTreeMap::<&'static str, u64>::new());
    let mut records = 0u64;
    for (d, day) in workdays(args.days).into_iter().enumerate() {
        let days: Vec<Vec<Batch>> = agents
            .iter()
            .enumerate()
            .map(|(i, agent)| {
                let seed = (i * 1000 + d) as u64;
                let mut batches = agent.workday(day, seed);
                if args.gps_every > 0 && i % args.gps_every == 0 {
                    add_gps(&mut batches, i, seed);
                }
                merged(batches, args.batch_minutes)
            })
            .collect();
        let rounds = days.iter().map(Vec::len).max().unwrap_or(0);
        for round in 0..rounds {
            for (i, batches) in days.iter().enumerate() {
                let Some(b) = batches.get(round) else {
                    continue;
                };
                let seq = bodies.len() as i64;
                dump.add(&agents[i], seq, b);
                events += b.event_count() as u64;
                for (name, n) in [
                    ("activity", b.activity.len()),
                    ("app_usage", b.app_usage.len()),
                    ("gps", b.gps.len()),
                    ("attendance", b.attendance.len()),
                ] {
                    *datasets.entry(name).or_default() += n as u64;
                    records += u64::from(n > 0);
                }
                bodies.push((i, agents[i].seal(master, b, &mut rng)));
            }
        }
    }
    dump.write(input_dir)?;
    eprintln!(
        "prepared {} batches, {events} events in {:.1} s; posting them to ingest",
        bodies.len(),
        started.elapsed().as_secs_f64()
    );

    // Each connection posts the batches of its own agents, one at a time
    // and in order, as an agent does: a device's next batch never overtakes
    // one that is being retried, so its GPS route reaches the log in time
    // order (what the DuckDB side assumes).
    let bodies = Arc::new(bodies);
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.connections)
        .build()?;
    let mut tasks = tokio::task::JoinSet::new();
    for connection in 0..args.connections {
        let (client, url, bodies) = (client.clone(), url.clone(), bodies.clone());
        let connections = args.connections;
        tasks.spawn(async move {
            let own = bodies
                .iter()
                .enumerate()
                .filter(|(_, (agent, _))| agent % connections == connection);
            for (i, (_, body)) in own {
                match post_batch(&client, std::slice::from_ref(&url), body.clone(), 20).await? {
                    Outcome::Accepted { .. } => {}
                    Outcome::Rejected { status, reason } => {
                        bail!("ingest rejected batch {i}: {status} {reason}")
                    }
                }
            }
            anyhow::Ok(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    let _ = stop.send(());
    node.await??;
    Ok(Prepared {
        batches: bodies.len(),
        records,
        events,
        per_dataset: datasets,
        seconds: started.elapsed().as_secs_f64(),
    })
}

// ---------------------------------------------------------------------------
// Quiet machine

/// This process and its ancestors (the shell that started it).
fn own_lineage() -> Vec<u32> {
    let mut pids = vec![std::process::id()];
    while let Some(parent) = parent_of(*pids.last().expect("non-empty")) {
        if parent <= 1 {
            break;
        }
        pids.push(parent);
    }
    pids
}

fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 2..].split(' ').nth(1)?.parse().ok()
}

fn cmdline(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}

/// Other benchmarks and compilers running now: `pgrep -f
/// 'candor-bench-|duckdb_kpi'`, and `rustc` or `clippy-driver`, less
/// this process, its ancestors and descendants, and processes that only wait
/// for benchmarks to end (their command line holds `pgrep`).
fn others_running() -> Vec<String> {
    let lineage = own_lineage();
    let me = std::process::id();
    let mut found = Vec::new();
    // (`pgrep -x` matches names of at most 15 characters, one name each.)
    for pattern in [
        ["-f", "candor-bench-|duckdb_kpi"],
        ["-x", "rustc"],
        ["-x", "clippy-driver"],
    ] {
        let Ok(out) = Command::new("pgrep").args(pattern).output() else {
            continue;
        };
        for pid in String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .filter_map(|p| p.parse::<u32>().ok())
        {
            if lineage.contains(&pid) {
                continue;
            }
            // A descendant of this process?
            let mut p = pid;
            let mut mine = false;
            while let Some(parent) = parent_of(p) {
                if parent == me {
                    mine = true;
                    break;
                }
                if parent <= 1 {
                    break;
                }
                p = parent;
            }
            let line = cmdline(pid);
            if mine || line.is_empty() || line.contains("pgrep") {
                continue;
            }
            found.push(format!(
                "{pid} {}",
                line.chars().take(100).collect::<String>()
            ));
        }
    }
    found
}

/// Waits until no other benchmark runs; returns the seconds waited.
fn wait_until_quiet(max_wait: Duration) -> f64 {
    let started = Instant::now();
    let mut told = false;
    loop {
        let others = others_running();
        if others.is_empty() {
            return started.elapsed().as_secs_f64();
        }
        if started.elapsed() > max_wait {
            eprintln!("WARNING: still running after {max_wait:?}, measuring anyway: {others:?}");
            return started.elapsed().as_secs_f64();
        }
        if !told {
            eprintln!("waiting for other benchmarks to finish: {others:?}");
            told = true;
        }
        std::thread::sleep(Duration::from_secs(5));
    }
}

// ---------------------------------------------------------------------------
// Runs

fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

/// Runs a command and parses the last line of its stdout as JSON.
fn json_of(command: &mut Command, what: &str) -> Result<Value> {
    let mut child = command.stdout(Stdio::piped()).spawn()?;
    let mut out = String::new();
    child
        .stdout
        .take()
        .context("stdout")?
        .read_to_string(&mut out)?;
    let status = child.wait()?;
    if !status.success() {
        bail!("{what} failed ({status}): {out}");
    }
    let line = out.lines().last().context("no output")?;
    serde_json::from_str(line).with_context(|| format!("{what} printed {line}"))
}

struct Run {
    processor: Value,
    duckdb: Value,
    verify: Value,
    waited_s: f64,
    /// Other processes took CPU during a measurement on every attempt.
    disturbed: bool,
}

/// CPU seconds the rest of the machine used during a measurement (the
/// machine's busy time less the measured process's own).
fn others_cpu(v: &Value) -> f64 {
    f(v, "machine_busy_s") - f(v, "cpu_s")
}

/// Waits for a quiet machine, then measures; repeats a measurement during
/// which other processes used more than 5% of the measured CPU time (plus
/// 0.3 s of background noise), up to three attempts.
fn measured(
    what: &str,
    quiet: Duration,
    waited_s: &mut f64,
    mut measure: impl FnMut() -> Result<Value>,
) -> Result<(Value, bool)> {
    for attempt in 1..=3 {
        *waited_s += wait_until_quiet(quiet);
        eprintln!("{what} (attempt {attempt})");
        let v = measure()?;
        let others = others_cpu(&v);
        if others <= 0.05 * f(&v, "cpu_s") + 0.3 {
            return Ok((v, false));
        }
        eprintln!("{what}: other processes used {others:.1} CPU s meanwhile; measuring again");
        if attempt == 3 {
            return Ok((v, true));
        }
    }
    unreachable!("the last attempt returns")
}

fn f(v: &Value, key: &str) -> f64 {
    v[key].as_f64().unwrap_or(f64::NAN)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn thousands(x: f64) -> String {
    if !x.is_finite() {
        return "n/a".into();
    }
    let s = format!("{:.0}", x);
    let (sign, digits) = s.strip_prefix('-').map_or(("", s.as_str()), |d| ("-", d));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    format!("{sign}{out}")
}

async fn run_benchmark(args: &Args) -> Result<()> {
    let secret: [u8; 32] = rand::random();
    let master = MasterSecret::from_bytes(&secret)?;
    let temp = tempfile::Builder::new()
        .prefix("candor-bench-processor-")
        .tempdir_in(args.work_dir.clone().unwrap_or_else(std::env::temp_dir))?;
    let work = temp.path().to_path_buf();
    let control_url = work.join("control").display().to_string();
    let (spool_dir, input_dir) = (work.join("spool"), work.join("input"));
    std::fs::create_dir_all(&input_dir)?;
    let script = args
        .script
        .clone()
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("duckdb_processor.py"));

    let prepared = prepare(args, &master, &control_url, &spool_dir, &input_dir).await?;
    eprintln!(
        "prepared and posted {} batches ({} dataset sections, {} events: {:?}) in {:.1} s",
        prepared.batches, prepared.records, prepared.events, prepared.per_dataset, prepared.seconds
    );

    let exe = std::env::current_exe()?;
    if args.keep {
        // The benchmark's own random secret, so a kept spool can be drained
        // again by hand (`drain`, e.g. under perf).
        std::fs::write(work.join("master-secret.hex"), hex::encode(secret))?;
    }
    let quiet = Duration::from_secs(args.max_idle_wait);
    let mut runs = Vec::new();
    for r in 1..=args.runs {
        let run_dir = work.join(format!("run-{r}"));
        let (spool, lake, duck) = (
            run_dir.join("spool"),
            run_dir.join("lake"),
            run_dir.join("duckdb"),
        );
        let mut waited_s = 0.0;
        let mut disturbed = false;
        let processor = measured(&format!("run {r}: processor"), quiet, &mut waited_s, || {
            for dir in [&spool, &lake] {
                if dir.exists() {
                    std::fs::remove_dir_all(dir)?;
                }
            }
            copy_dir(&spool_dir, &spool)?;
            json_of(
                Command::new(&exe)
                    .args(["drain", "--control", &control_url])
                    .arg("--spool")
                    .arg(&spool)
                    .arg("--lake")
                    .arg(&lake)
                    .args([
                        "--max-records-per-flush",
                        &args.max_records_per_flush.to_string(),
                    ])
                    .env("CANDOR_MASTER_SECRET", hex::encode(secret)),
                "the processor",
            )
        })?;
        disturbed |= processor.1;
        let duckdb = measured(&format!("run {r}: duckdb"), quiet, &mut waited_s, || {
            if duck.exists() {
                std::fs::remove_dir_all(&duck)?;
            }
            json_of(
                Command::new(&args.python)
                    .arg(&script)
                    .arg("run")
                    .arg("--input")
                    .arg(&input_dir)
                    .arg("--output")
                    .arg(&duck)
                    .args(["--threads", &args.duckdb_threads.to_string()]),
                "duckdb",
            )
        })?;
        disturbed |= duckdb.1;
        let (processor, duckdb) = (processor.0, duckdb.0);

        eprintln!("run {r}: comparing the lakes (untimed)");
        let verify = json_of(
            Command::new(&args.python)
                .arg(&script)
                .arg("verify")
                .arg("--lake")
                .arg(&lake)
                .arg("--duckdb")
                .arg(&duck),
            "the comparison",
        )?;
        eprintln!(
            "run {r}: processor {processor}\nrun {r}: duckdb {duckdb}\nrun {r}: verify {verify}"
        );
        if verify["mismatched"].as_u64() != Some(0) {
            eprintln!("WARNING: the two lakes differ: {verify}");
        }
        if processor["events"].as_u64() != Some(prepared.events) {
            eprintln!(
                "WARNING: the processor counted {} events, {} were posted",
                processor["events"], prepared.events
            );
        }
        if !args.keep || r < args.runs {
            std::fs::remove_dir_all(&run_dir)?;
        }
        runs.push(Run {
            processor,
            duckdb,
            verify,
            waited_s,
            disturbed,
        });
    }

    report(args, &prepared, &runs);
    if args.keep {
        let kept = temp.keep();
        eprintln!("kept {}", kept.display());
    }
    Ok(())
}

fn report(args: &Args, prepared: &Prepared, runs: &[Run]) {
    let events = prepared.events as f64;
    println!();
    println!(
        "{} employees in {} tenants, {} workdays, {}-minute batches, GPS for 1 in {}: \
         {} batches, each one log record ({} dataset sections in all), {} events {:?}",
        args.employees,
        args.tenants,
        args.days,
        args.batch_minutes,
        args.gps_every,
        prepared.batches,
        prepared.records,
        thousands(events),
        prepared.per_dataset,
    );
    println!();
    println!(
        "| run | processor wall s | processor CPU s | processor events/s | processor events/s per core \
         | DuckDB wall s | DuckDB CPU s | DuckDB events/s | DuckDB events/s per core \
         | processor ÷ DuckDB, events/s | processor ÷ DuckDB, per core | other processes' CPU s (processor / DuckDB phase) | lakes equal |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    let mut cols: Vec<Vec<f64>> = vec![Vec::new(); 10];
    for (i, r) in runs.iter().enumerate() {
        let (pw, pc) = (f(&r.processor, "wall_s"), f(&r.processor, "cpu_s"));
        let (dw, dc) = (f(&r.duckdb, "wall_s"), f(&r.duckdb, "cpu_s"));
        let (other_p, other_d) = (others_cpu(&r.processor), others_cpu(&r.duckdb));
        let row = [
            pw,
            pc,
            events / pw,
            events / pc,
            dw,
            dc,
            events / dw,
            events / dc,
            dw / pw,
            dc / pc,
        ];
        for (c, v) in cols.iter_mut().zip(row) {
            c.push(v);
        }
        let equal = r.verify["mismatched"].as_u64() == Some(0);
        println!(
            "| {} | {:.2} | {:.2} | {} | {} | {:.2} | {:.2} | {} | {} | {:.2} | {:.2} | {:.1} / {:.1} | {} |",
            i + 1,
            row[0],
            row[1],
            thousands(row[2]),
            thousands(row[3]),
            row[4],
            row[5],
            thousands(row[6]),
            thousands(row[7]),
            row[8],
            row[9],
            other_p,
            other_d,
            if equal { "yes" } else { "NO" },
        );
        if r.disturbed {
            println!(
                "(run {}: other processes kept using CPU; see the column)",
                i + 1
            );
        }
    }
    let m: Vec<f64> = cols.into_iter().map(median).collect();
    println!(
        "| **median** | **{:.2}** | **{:.2}** | **{}** | **{}** | **{:.2}** | **{:.2}** | **{}** | **{}** | **{:.2}** | **{:.2}** | | |",
        m[0],
        m[1],
        thousands(m[2]),
        thousands(m[3]),
        m[4],
        m[5],
        thousands(m[6]),
        thousands(m[7]),
        m[8],
        m[9],
    );
    println!();
    // What the table format costs: the flushes' Delta commits (state table,
    // then each dataset table), which the processor waits for in turn.
    let shares: Vec<f64> = runs
        .iter()
        .map(|r| f(&r.processor, "table_commit_s") / f(&r.processor, "wall_s"))
        .collect();
    let median_share = median(shares.clone());
    println!(
        "Delta commits, share of the processor's wall time: {} (median {:.1}%; goal at most 10%)",
        runs.iter()
            .zip(&shares)
            .map(|(r, s)| format!(
                "{:.2} s ({:.1}%)",
                f(&r.processor, "table_commit_s"),
                s * 100.0
            ))
            .collect::<Vec<_>>()
            .join(" / "),
        median_share * 100.0,
    );
    println!();
    let last = runs.last();
    if let Some(r) = last {
        println!(
            "processor: {} records, {} files, {} rows, peak RSS {:.0} MiB; DuckDB: {} files, {} rows, of which fsync {:.2} s; waited {:.0} s for other benchmarks",
            r.processor["records"],
            r.processor["files"],
            r.processor["rows"],
            f(&r.processor, "peak_rss_mib"),
            r.duckdb["files"],
            r.duckdb["rows"],
            f(&r.duckdb, "fsync_s"),
            r.waited_s,
        );
        println!("lakes compared: {}", r.verify);
    }
    println!(
        "goal: 1,000,000 events/s per core (Flink Nexmark file sink: ~58,000): {}; faster than DuckDB: {}",
        if m[3] >= 1e6 { "met" } else { "NOT met" },
        if m[8] >= 1.0 && m[9] >= 1.0 {
            "yes (wall and per core)"
        } else if m[9] >= 1.0 {
            "per core only"
        } else if m[8] >= 1.0 {
            "wall only"
        } else {
            "no"
        },
    );
}
