//! `candor-bench-query`: the query service's activity KPIs over real HTTP,
//! side by side with DuckDB answering the same statement on the same
//! Parquet files (`benchmarks/duckdb_kpi.py`).
//!
//! 1. A lake like a compacted production lake: one tenant, `--employees`
//!    employees in `--departments` departments, `--days` days ending at
//!    `--end`, workdays only, one Parquet file per date partition written by
//!    the processor's own writer (`candor_lake::Lake::write_parquet`, then one
//!    commit to the activity table),
//!    rows in the processor's order (subject, slot). Values come from a
//!    seeded generator; subjects are the tenant's pseudonyms. With `--lake`,
//!    the lake (and the control plane kept beside it) is generated once and
//!    reused by later runs with the same flags.
//! 2. The product's query service in this process on a loopback port: a
//!    control plane in a local directory (tenant, directory, an owner
//!    token, the audit chain), the refresher running, `QueryState` and
//!    `serve` as `candor query` builds them.
//! 3. Each KPI shape over HTTP/1.1 keep-alive, one request at a time:
//!    `--warmup` requests, then `--requests` timed ones, from sending the
//!    request to the last byte of the answer. Every request is audited, as
//!    shipped.
//! 4. The pieces of a request, timed in process on the same state: the
//!    audit append alone, authentication, opening the scoped session, a
//!    session plus `kpi::activity` (no HTTP, no audit).
//! 5. DuckDB on the same files, hot, one connection; then the answers
//!    (Candor's, DuckDB's) are compared row by row.

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};
use arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray, TimestampMillisecondArray};
use candor::config::{Config, Role as NodeRole};
use candor_control::{
    Actor, AuditEvent, Directory, Member, Plan, Role, Tenant, TokenRequest, authenticate,
};
use candor_processor::Lake;
use candor_query::api::QueryState;
use candor_query::kpi::{self, GroupBy, KpiRequest};
use candor_query::lake::QueryLake;
use candor_query::scope::{Identities, Rows, Scope};
use candor_query::session::{Limits, ScopedSession};
use candor_schemas::datasets::Dataset;
use candor_schemas::keys::MasterSecret;
use candor_schemas::{EmployeeId, TenantId};
use chrono::{Datelike, Days, NaiveDate, Weekday};
use clap::Parser;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Parser)]
#[command(about = "Activity KPIs over HTTP against DuckDB on the same Parquet files")]
struct Args {
    /// Keep the lake here: generated if the folder holds none, reused if it
    /// holds one made with the same flags. Default: a temporary folder.
    #[arg(long)]
    lake: Option<PathBuf>,
    /// Days of data, ending at `--end` (weekends hold no data).
    #[arg(long, default_value_t = 90)]
    days: u32,
    #[arg(long, default_value_t = 1000)]
    employees: usize,
    #[arg(long, default_value_t = 10)]
    departments: usize,
    /// The last day of data (UTC), also the end of every KPI range.
    #[arg(long, default_value = "2026-11-27")]
    end: NaiveDate,
    /// The tenant's time zone.
    #[arg(long, default_value = "Europe/Berlin")]
    time_zone: String,
    /// Timed requests per shape.
    #[arg(long, default_value_t = 50)]
    requests: usize,
    /// Untimed requests per shape before them.
    #[arg(long, default_value_t = 3)]
    warmup: usize,
    /// The Python that runs the DuckDB side.
    #[arg(long, default_value = "python3")]
    python: String,
    /// Skip the DuckDB side (and the comparison of answers).
    #[arg(long)]
    no_duckdb: bool,
}

const TENANT: &str = "bench";
const SEED: u64 = 0xC4_4D0B;
/// For the benchmark's control plane only, so that a kept lake's
/// keyring (and so its subjects) opens again in the next run.
const MASTER: [u8; 32] = *b"candor-bench-query-master-secret";
const MANIFEST: &str = "bench-lake.json";
const SLOT_MS: i64 = 15 * 60 * 1000;
const DEPARTMENTS: [&str; 10] = [
    "Sales",
    "Support",
    "Engineering",
    "Finance",
    "People",
    "Marketing",
    "Operations",
    "Legal",
    "Logistics",
    "Procurement",
];

/// What a generated lake was made from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Spec {
    employees: usize,
    departments: usize,
    days: u32,
    end: NaiveDate,
    time_zone: String,
    seed: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct Manifest {
    #[serde(flatten)]
    spec: Spec,
    files: usize,
    rows: usize,
    bytes: usize,
}

/// One KPI request, as both engines are asked it.
struct Shape {
    name: &'static str,
    group_by: &'static str,
    from: NaiveDate,
    to: NaiveDate,
    limit: usize,
}

impl Shape {
    fn describe(&self) -> String {
        format!(
            "{}: group_by={} from={} to={} limit={}",
            self.name, self.group_by, self.from, self.to, self.limit
        )
    }

    fn keys(&self) -> Vec<&'static str> {
        self.group_by.split(',').collect()
    }

    fn request(&self, time_zone: &str) -> Result<KpiRequest> {
        Ok(KpiRequest {
            time_zone: time_zone.to_string(),
            from: self.from,
            to: self.to,
            group_by: self
                .keys()
                .iter()
                .map(|g| g.parse())
                .collect::<Result<Vec<GroupBy>, _>>()?,
            limit: self.limit,
            offset: 0,
        })
    }
}

fn shapes(spec: &Spec) -> Vec<Shape> {
    let end = spec.end;
    let first = end - Days::new(u64::from(spec.days.max(1)) - 1);
    let back = |days: u64| (end - Days::new(days - 1)).max(first);
    let mut last_workday = end;
    while is_weekend(last_workday) && last_workday > first {
        last_workday = last_workday.pred_opt().expect("a day before");
    }
    vec![
        Shape {
            name: "a",
            group_by: "department,day",
            from: back(30),
            to: end,
            limit: 1000,
        },
        Shape {
            name: "b",
            group_by: "employee",
            from: back(7),
            to: end,
            limit: 1000,
        },
        Shape {
            name: "c",
            group_by: "department,week",
            from: first,
            to: end,
            limit: 1000,
        },
        Shape {
            name: "d",
            group_by: "employee,day",
            from: last_workday,
            to: last_workday,
            limit: 1000,
        },
    ]
}

fn is_weekend(day: NaiveDate) -> bool {
    matches!(day.weekday(), Weekday::Sat | Weekday::Sun)
}

fn main() -> Result<()> {
    let args = Args::parse();
    tokio::runtime::Runtime::new()?.block_on(run(args))
}

async fn run(args: Args) -> Result<()> {
    let spec = Spec {
        employees: args.employees,
        departments: args.departments,
        days: args.days,
        end: args.end,
        time_zone: args.time_zone.clone(),
        seed: SEED,
    };
    ensure!(args.employees > 0 && args.departments > 0 && args.days > 0);
    ensure!(args.requests > 0, "--requests must be at least 1");
    let temporary = match &args.lake {
        Some(_) => None,
        None => Some(tempfile::tempdir()?),
    };
    let root = match (&args.lake, &temporary) {
        (Some(dir), _) => dir.clone(),
        (None, Some(t)) => t.path().to_path_buf(),
        (None, None) => unreachable!(),
    };
    std::fs::create_dir_all(&root)?;
    let root = root.canonicalize()?;
    let existing = read_manifest(&root)?;
    if let Some(m) = &existing
        && m.spec != spec
    {
        bail!(
            "{} holds a lake made with {:?}; use the same flags or another folder",
            root.display(),
            m.spec
        );
    }
    if existing.is_none() && std::fs::read_dir(&root)?.next().is_some() {
        bail!(
            "{} is not empty and holds no {MANIFEST}: give an empty or new folder",
            root.display()
        );
    }

    // The control plane, kept beside the lake (as `candor query
    // --control <dir>` would have it), its audit chain included.
    let master = MasterSecret::from_bytes(&MASTER)?;
    let registry = prometheus::Registry::new();
    let control_dir = root.join("control");
    // The service, as `candor query` builds it (candor::node): the
    // control plane in `control/`, the lake at the root.
    let mut config = Config::defaults(NodeRole::Query);
    config.control.url = Some(control_dir.to_str().context("UTF-8 path")?.into());
    config.lake.url = Some(root.to_str().context("UTF-8 path")?.into());
    let admin = Arc::new(candor::node::admin(&config, &master)?);
    let cache = candor::node::control_cache(&config, NodeRole::Query, &master, &registry)?;
    let tenant = TenantId::new(TENANT)?;
    let employees: Vec<(EmployeeId, String)> = (0..spec.employees)
        .map(|i| {
            let department = match DEPARTMENTS.get(i % spec.departments) {
                Some(d) if spec.departments <= DEPARTMENTS.len() => d.to_string(),
                _ => format!("Department {:02}", i % spec.departments),
            };
            Ok((EmployeeId::new(format!("e{i:05}"))?, department))
        })
        .collect::<Result<_>>()?;
    if existing.is_none() {
        admin
            .create_tenant(
                &Actor::operator(),
                &Tenant::new(tenant.clone(), Plan::Starter, &spec.time_zone),
            )
            .await?;
        let directory = Directory {
            employees: employees
                .iter()
                .map(|(e, d)| {
                    (
                        e.clone(),
                        Member {
                            department: d.clone(),
                            manages: Default::default(),
                        },
                    )
                })
                .collect(),
        };
        admin
            .load_directory(&Actor::operator(), &tenant, &directory, None)
            .await?;
    }
    let token = admin
        .create_token(
            &Actor::operator(),
            &tenant,
            &TokenRequest {
                name: format!("bench-{}", chrono::Utc::now().timestamp_millis()),
                role: Role::Owner,
                employee: None,
                expires_at_ms: None,
                tenant: None,
            },
        )
        .await?
        .token;
    let view = cache
        .reload(&tenant)
        .await?
        .context("the tenant is in the control plane")?;
    let pseudonym = view.keys.as_ref().context("tenant keys")?.pseudonym();
    let subjects: Vec<String> = employees
        .iter()
        .map(|(e, _)| pseudonym.subject(e))
        .collect();
    let subject_of: HashMap<String, String> = employees
        .iter()
        .zip(&subjects)
        .map(|((e, _), s)| (e.to_string(), s.clone()))
        .collect();
    tokio::spawn({
        let cache = cache.clone();
        async move { cache.run_refresher(std::future::pending()).await }
    });

    let manifest = match existing {
        Some(m) => {
            eprintln!("reusing the lake in {}", root.display());
            m
        }
        None => {
            let started = Instant::now();
            let departments: Vec<&str> = employees.iter().map(|(_, d)| d.as_str()).collect();
            let m = generate(&root, &spec, &subjects, &departments).await?;
            eprintln!(
                "generated {} rows in {} files ({:.1} MiB) in {:.1} s",
                m.rows,
                m.files,
                m.bytes as f64 / 1048576.0,
                started.elapsed().as_secs_f64()
            );
            std::fs::write(root.join(MANIFEST), serde_json::to_vec_pretty(&m)?)?;
            m
        }
    };

    let state = candor::node::query_state(&config, cache.clone(), &master, &registry)?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    tokio::spawn(candor_query::api::serve(
        listener,
        state.clone(),
        Default::default(),
        std::future::pending(),
    ));
    let http = reqwest::Client::new();

    let shapes = shapes(&spec);
    let mut candor = Vec::new();
    for shape in &shapes {
        let (latencies, last) = timed(args.warmup, args.requests, || async {
            let response = http
                .get(format!("{url}/v1/kpi/activity"))
                .bearer_auth(&token)
                .query(&[
                    ("from", shape.from.to_string()),
                    ("to", shape.to.to_string()),
                    ("group_by", shape.group_by.to_string()),
                    ("limit", shape.limit.to_string()),
                ])
                .send()
                .await?;
            let status = response.status();
            let body = response.bytes().await?;
            ensure!(
                status.is_success(),
                "{}: {status} {}",
                shape.describe(),
                String::from_utf8_lossy(&body)
            );
            Ok(body)
        })
        .await?;
        let answer: Value = serde_json::from_slice(&last)?;
        ensure!(
            answer["next_offset"].is_null(),
            "{}: the answer has more than one page",
            shape.describe()
        );
        let rows = candor_rows(shape, &answer, &subject_of)?;
        eprintln!(
            "candor {}: p50 {:.2} ms, p95 {:.2} ms, {} rows",
            shape.describe(),
            percentile(&latencies, 0.5),
            percentile(&latencies, 0.95),
            rows.len()
        );
        candor.push((latencies, rows));
    }

    let pieces = pieces(&args, &state, &view, &token, &url, &shapes, &spec).await?;

    let duckdb = if args.no_duckdb {
        None
    } else {
        Some(run_duckdb(&args, &root, &shapes)?)
    };

    println!();
    println!(
        "{} employees in {} departments, {} days to {} ({} workdays: {} rows in {} files, {:.1} MiB), time zone {}",
        spec.employees,
        spec.departments,
        spec.days,
        spec.end,
        manifest.files,
        manifest.rows,
        manifest.files,
        manifest.bytes as f64 / 1048576.0,
        spec.time_zone
    );
    println!(
        "{} timed requests per shape after {} warm-ups, one at a time",
        args.requests, args.warmup
    );
    if let Some(d) = &duckdb {
        println!(
            "DuckDB {} ({} threads), one connection",
            d["duckdb"].as_str().unwrap_or("?"),
            d["threads"]
        );
    }
    println!();
    println!(
        "| shape | rows | Candor p50 ms | Candor p95 ms | DuckDB p50 ms | DuckDB p95 ms | Candor p50 / DuckDB p50 |"
    );
    println!("|---|---|---|---|---|---|---|");
    let mut disagreements = Vec::new();
    for (i, shape) in shapes.iter().enumerate() {
        let (latencies, rows) = &candor[i];
        let (c50, c95) = (percentile(latencies, 0.5), percentile(latencies, 0.95));
        let (d50, d95, ratio) = match &duckdb {
            Some(d) => {
                let s = &d["shapes"][i];
                ensure!(
                    s["name"] == shape.name,
                    "DuckDB answered shapes out of order"
                );
                let (d50, d95) = (
                    s["p50_ms"].as_f64().unwrap_or(f64::NAN),
                    s["p95_ms"].as_f64().unwrap_or(f64::NAN),
                );
                let theirs = duckdb_rows(shape, &s["rows"])?;
                if let Some(problem) = compare(rows, &theirs) {
                    disagreements.push(format!("{}: {problem}", shape.describe()));
                }
                (
                    format!("{d50:.2}"),
                    format!("{d95:.2}"),
                    format!("{:.2}", c50 / d50),
                )
            }
            None => ("-".into(), "-".into(), "-".into()),
        };
        println!(
            "| {} | {} | {c50:.2} | {c95:.2} | {d50} | {d95} | {ratio} |",
            shape.describe(),
            rows.len()
        );
    }
    println!();
    println!(
        "Pieces of a request, in process, p50 / p95 ms over {} runs each:",
        args.requests
    );
    println!();
    println!("| piece | p50 ms | p95 ms |");
    println!("|---|---|---|");
    for (name, latencies) in &pieces {
        println!(
            "| {name} | {:.3} | {:.3} |",
            percentile(latencies, 0.5),
            percentile(latencies, 0.95)
        );
    }
    println!();
    if duckdb.is_some() {
        if disagreements.is_empty() {
            let summary: Vec<String> = shapes
                .iter()
                .zip(&candor)
                .map(|(s, (_, rows))| {
                    format!(
                        "{} {} rows, active_s {}",
                        s.name,
                        rows.len(),
                        rows.iter().map(|r| r.active_s).sum::<i64>()
                    )
                })
                .collect();
            println!(
                "Answers agree row by row (keys, tracked, active, idle), Candor's and DuckDB's: {}",
                summary.join("; ")
            );
        } else {
            for d in &disagreements {
                println!("ANSWERS DIFFER: {d}");
            }
            bail!("Candor and DuckDB gave different answers");
        }
    }
    Ok(())
}

/// `warmup` untimed runs of `f`, then `n` timed ones; the latencies in
/// microseconds and the last run's output.
async fn timed<T, F, Fut>(warmup: usize, n: usize, mut f: F) -> Result<(Vec<u64>, T)>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    for _ in 0..warmup {
        f().await?;
    }
    let mut latencies = Vec::with_capacity(n);
    let mut last = None;
    for _ in 0..n {
        let started = Instant::now();
        let out = f().await?;
        latencies.push(started.elapsed().as_micros() as u64);
        last = Some(out);
    }
    Ok((latencies, last.expect("n > 0")))
}

/// In milliseconds, nearest rank.
fn percentile(latencies_us: &[u64], p: f64) -> f64 {
    let mut l = latencies_us.to_vec();
    l.sort_unstable();
    if l.is_empty() {
        return f64::NAN;
    }
    let i = ((l.len() as f64 - 1.0) * p).round() as usize;
    l[i] as f64 / 1000.0
}

/// The parts of a KPI request, each timed alone on the service's state.
async fn pieces(
    args: &Args,
    state: &Arc<QueryState>,
    view: &candor_control::TenantView,
    token: &str,
    url: &str,
    shapes: &[Shape],
    spec: &Spec,
) -> Result<Vec<(String, Vec<u64>)>> {
    let (warmup, n) = (args.warmup, args.requests);
    let lake: &QueryLake = &state.lake;
    let mut out = Vec::new();
    let tenant = TenantId::new(TENANT)?;
    let log = state.admin.audit_log();
    let (audit, _) = timed(warmup, n, || async {
        let event = AuditEvent {
            actor: "bench".into(),
            role: "owner".into(),
            action: "query.kpi.activity".into(),
            target: "activity".into(),
            source: "127.0.0.1".into(),
            detail: serde_json::json!({"request": {"query": "from=2026-10-29&to=2026-11-27&group_by=department,day&limit=1000"}, "result": {"rows": 220}}),
        };
        log.append(&tenant, event, chrono::Utc::now().timestamp_millis())
            .await?;
        Ok(())
    })
    .await?;
    out.push((
        "audit append (control-plane store, local dir)".to_string(),
        audit,
    ));
    let cache = state.control.clone();
    let (auth, _) = timed(warmup, n, || async {
        authenticate(&cache, token, chrono::Utc::now().timestamp_millis()).await?;
        Ok(())
    })
    .await?;
    out.push(("authenticate (cached tokens)".to_string(), auth));
    let scope = Scope {
        role: Role::Owner,
        rows: Rows::Tenant,
        identities: true,
        groups_only: None,
    };
    let (open, _) = timed(warmup, n, || async {
        let tables = lake.tables(&view.tenant.doc).await?;
        ScopedSession::new(lake, &tables, &scope, Limits::default())?;
        Ok(())
    })
    .await?;
    out.push((
        "open the scoped session (tables + session)".to_string(),
        open,
    ));
    let identities = Identities::of(view)?;
    let session = || async {
        let tables = lake.tables(&view.tenant.doc).await?;
        Ok::<_, anyhow::Error>(ScopedSession::new(
            lake,
            &tables,
            &scope,
            Limits::default(),
        )?)
    };
    for shape in shapes {
        let request = shape.request(&spec.time_zone)?;
        eprintln!("timing {}: session + kpi::activity", shape.name);
        let (latencies, _) = timed(warmup, n, || async {
            kpi::activity(&session().await?, &request, Some(&identities)).await?;
            Ok(())
        })
        .await?;
        out.push((
            format!(
                "{}: session + kpi::activity (plan, run, rows; no HTTP, no audit)",
                shape.name
            ),
            latencies,
        ));
    }
    let http = reqwest::Client::new();
    let (healthz, _) = timed(warmup, n, || async {
        let response = http.get(format!("{url}/healthz")).send().await?;
        ensure!(
            response.status().is_success(),
            "healthz: {}",
            response.status()
        );
        response.bytes().await?;
        Ok(())
    })
    .await?;
    out.push(("HTTP round trip (GET /healthz)".to_string(), healthz));
    Ok(out)
}

/// One answer row: the keys in `group_by` order (employees as subjects),
/// then the sums.
#[derive(Debug, Clone, PartialEq)]
struct Row {
    keys: Vec<String>,
    tracked_s: i64,
    active_s: i64,
    idle_s: i64,
}

fn candor_rows(
    shape: &Shape,
    answer: &Value,
    subject_of: &HashMap<String, String>,
) -> Result<Vec<Row>> {
    let rows = answer["rows"].as_array().context("an answer has rows")?;
    rows.iter()
        .map(|r| {
            let keys = shape
                .keys()
                .iter()
                .map(|&k| {
                    let text = |field: &str| r[field].as_str().map(str::to_string);
                    match k {
                        // Owners see employee ids; DuckDB has subjects.
                        "employee" => text("employee")
                            .and_then(|e| subject_of.get(&e).cloned())
                            .or_else(|| text("subject")),
                        other => text(other),
                    }
                    .with_context(|| format!("row without {k}: {r}"))
                })
                .collect::<Result<_>>()?;
            let int = |f: &str| r[f].as_i64().with_context(|| format!("row without {f}"));
            Ok(Row {
                keys,
                tracked_s: int("tracked_s")?,
                active_s: int("active_s")?,
                idle_s: int("idle_s")?,
            })
        })
        .collect()
}

fn duckdb_rows(shape: &Shape, rows: &Value) -> Result<Vec<Row>> {
    let n = shape.keys().len();
    rows.as_array()
        .context("DuckDB rows")?
        .iter()
        .map(|r| {
            let r = r.as_array().context("a DuckDB row")?;
            ensure!(r.len() == n + 3, "DuckDB row of {} columns", r.len());
            let int = |i: usize| r[i].as_i64().context("an integer sum");
            Ok(Row {
                keys: r[..n]
                    .iter()
                    .map(|k| k.as_str().unwrap_or("<null>").to_string())
                    .collect(),
                tracked_s: int(n)?,
                active_s: int(n + 1)?,
                idle_s: int(n + 2)?,
            })
        })
        .collect()
}

/// Why two answers differ, if they do.
fn compare(ours: &[Row], theirs: &[Row]) -> Option<String> {
    let sum = |rows: &[Row]| rows.iter().map(|r| r.active_s).sum::<i64>();
    if ours.len() != theirs.len() || sum(ours) != sum(theirs) {
        return Some(format!(
            "Candor {} rows, active_s {}; DuckDB {} rows, active_s {}",
            ours.len(),
            sum(ours),
            theirs.len(),
            sum(theirs)
        ));
    }
    // Compared by keys: an owner's rows by employee come ordered by the
    // employee ids they are shown with, DuckDB's by subject.
    let by_keys = |rows: &[Row]| {
        let mut rows = rows.to_vec();
        rows.sort_by(|a, b| a.keys.cmp(&b.keys));
        rows
    };
    let (ours, theirs) = (by_keys(ours), by_keys(theirs));
    ours.iter()
        .zip(&theirs)
        .position(|(a, b)| a != b)
        .map(|i| format!("row {i}: Candor {:?}, DuckDB {:?}", ours[i], theirs[i]))
}

fn run_duckdb(args: &Args, root: &Path, shapes: &[Shape]) -> Result<Value> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("duckdb_kpi.py");
    let mut command = std::process::Command::new(&args.python);
    command
        .arg(&script)
        .arg("--root")
        .arg(root)
        .args(["--tenant", TENANT, "--time-zone", &args.time_zone])
        .args(["--requests", &args.requests.to_string()])
        .args(["--warmup", &args.warmup.to_string()]);
    for s in shapes {
        command.arg("--shape").arg(format!(
            "{}:{}:{}:{}:{}",
            s.name, s.group_by, s.from, s.to, s.limit
        ));
    }
    let output = command
        .output()
        .with_context(|| format!("running {} {}", args.python, script.display()))?;
    ensure!(
        output.status.success(),
        "{} failed: {}",
        script.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(serde_json::from_slice(&output.stdout)?)
}

fn read_manifest(root: &Path) -> Result<Option<Manifest>> {
    match std::fs::read(root.join(MANIFEST)) {
        Ok(bytes) => Ok(Some(serde_json::from_slice(&bytes)?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// How one employee works, drawn once.
struct Habit {
    /// First slot of the day (slots of 15 minutes from 00:00 UTC).
    start_slot: i64,
    /// Share of tracked time that is active.
    activity: f64,
}

/// One row of a day's file: (employee index, slot of the day, tracked
/// seconds, active seconds).
type Slot = (usize, i64, i64, i64);

/// Writes the lake: per workday, one file of every present employee's
/// slots, sorted by (subject, slot) as the processor writes them.
async fn generate(
    root: &Path,
    spec: &Spec,
    subjects: &[String],
    departments: &[&str],
) -> Result<Manifest> {
    let lake = Lake::local(root)?;
    let mut rng = StdRng::seed_from_u64(spec.seed);
    let habits: Vec<Habit> = (0..spec.employees)
        .map(|_| Habit {
            // 07:30 to 08:30 UTC.
            start_slot: 30 + rng.random_range(0..=4),
            activity: rng.random_range(0.55..0.92),
        })
        .collect();
    let first = spec.end - Days::new(u64::from(spec.days) - 1);
    let (mut files, mut rows, mut bytes) = (0, 0, 0);
    let mut objects = Vec::new();
    for day in first.iter_days().take_while(|d| *d <= spec.end) {
        if is_weekend(day) {
            continue;
        }
        let midnight = day
            .and_hms_opt(0, 0, 0)
            .expect("midnight")
            .and_utc()
            .timestamp_millis();
        let mut slots: Vec<Slot> = Vec::new();
        for (e, habit) in habits.iter().enumerate() {
            // Leave, sickness, a day off.
            if rng.random_bool(0.04) {
                continue;
            }
            let start = habit.start_slot + rng.random_range(-1..=1);
            // About 9.5 hours at work: 36 to 40 slots, minus lunch and a
            // few slots with nothing tracked, about 32 slots with activity.
            let length = rng.random_range(36..=40);
            let lunch = start + 16 + rng.random_range(-2..=2);
            let lunch_slots = rng.random_range(2..=4);
            let today = (habit.activity + rng.random_range(-0.08..0.08)).clamp(0.05, 0.98);
            for slot in start..start + length {
                if (lunch..lunch + lunch_slots).contains(&slot) || rng.random_bool(0.03) {
                    continue;
                }
                let tracked: i64 = if slot == start || slot == start + length - 1 {
                    rng.random_range(60..=900)
                } else if rng.random_bool(0.12) {
                    rng.random_range(300..=900)
                } else {
                    900
                };
                let share = (today + rng.random_range(-0.25..0.25)).clamp(0.0, 1.0);
                let active = ((tracked as f64) * share).round() as i64;
                slots.push((e, slot, tracked, active));
            }
        }
        slots.sort_by(|a, b| subjects[a.0].cmp(&subjects[b.0]).then(a.1.cmp(&b.1)));
        let column = |f: &dyn Fn(&Slot) -> i64| -> ArrayRef {
            Arc::new(Int64Array::from_iter_values(slots.iter().map(f)))
        };
        let batch = RecordBatch::try_new(
            Dataset::Activity.lake_schema(),
            vec![
                Arc::new(StringArray::from_iter_values(
                    slots.iter().map(|s| subjects[s.0].as_str()),
                )),
                Arc::new(StringArray::from_iter(
                    slots.iter().map(|s| Some(departments[s.0])),
                )),
                Arc::new(
                    TimestampMillisecondArray::from_iter_values(
                        slots.iter().map(|s| midnight + s.1 * SLOT_MS),
                    )
                    .with_timezone("UTC"),
                ),
                column(&|s| s.2),
                column(&|s| s.3),
                column(&|s| s.2 - s.3),
                // One sample a minute.
                column(&|s| (s.2 + 59) / 60),
            ],
        )?;
        let key = candor_lake::PartitionKey {
            dataset: Dataset::Activity,
            tenant: candor_schemas::TenantId::new(TENANT)?,
            date: day.to_string(),
        };
        let file_name = "part-00000-compacted.parquet".to_string();
        let size = lake
            .write_parquet(&key.object_path(&file_name), &batch)
            .await?;
        objects.push(candor_lake::NewObject {
            key,
            file_name,
            size: size as u64,
            rows: batch.num_rows() as u64,
        });
        bytes += size;
        rows += batch.num_rows();
        files += 1;
    }
    // Committed as one version of the activity table, as a compacted lake
    // holds it (no log progress: no processor wrote it).
    candor_lake::DatasetTable::open(&lake, Dataset::Activity)
        .await?
        .append(&objects, &[])
        .await?;
    Ok(Manifest {
        spec: spec.clone(),
        files,
        rows,
        bytes,
    })
}
