//! The many-machine deployment as a whole, as separate processes of the real
//! binary configured from a `candor.toml` plus environment, the way an
//! operator runs it: two ingest nodes, two processors in one consumer group
//! and a query node, on the Kafka-API broker and the S3 server (control
//! plane and lake both on S3, behind a proxy the test can cut).
//!
//! One seeded staff (departments, field staff with GPS, late uploads) is
//! sent through both ingest nodes while the test SIGKILLs a processor (the
//! other takes over its partitions), SIGKILLs an ingest node (agents fail
//! over to the other) and cuts S3 for a few seconds. At the end every KPI,
//! by department and by employee, must equal what `candor standalone`
//! answers for the same seeded input, GPS distance and moving time
//! included (a device's route continues across uploads, restarts and
//! rebalances alike); departments are filled; nothing went to the
//! dead-letter topic.
//!
//! Where root may make network namespaces, each node runs in its own, with
//! its own address on a private bridge, as on its own machine; otherwise
//! the nodes share loopback, each on its own port (`common::hosts`).

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use candor_control::testkit::{TcpProxy, fresh_named_bucket, s3_endpoint};
use chrono::{Datelike, Days, NaiveDate, Utc, Weekday};
use common::hosts::Hosts;
use common::process::{NodeProcess, Standalone, candor, secret_in};
use serde_json::Value;

/// Bound of the whole test: a stuck deployment fails instead of stalling CI.
const GUARD: Duration = Duration::from_secs(600);
const TENANT: &str = "acme";
const EMPLOYEES: &str = "24";
const DAYS: &str = "5";
const SEED: &str = "11";
const GROUPINGS: [&str; 2] = ["department", "employee"];

/// The last Friday before yesterday: five workdays that every clock and
/// time zone of the run agrees are in the past.
fn last_day() -> NaiveDate {
    let mut day = Utc::now().date_naive() - Days::new(2);
    while day.weekday() != Weekday::Fri {
        day = day - Days::new(1);
    }
    day
}

/// `candor <args>` as an operator with the deployment's configuration.
fn operator(config: &Path, env: &[(String, String)], args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_candor"))
        .arg("--config")
        .arg(config)
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "candor {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The simulation both deployments get, posting to `ingest` (comma-separated).
fn simulate(ingest: &str, last: NaiveDate) -> Vec<String> {
    [
        "simulate",
        "--tenant",
        TENANT,
        "--employees",
        EMPLOYEES,
        "--days",
        DAYS,
        "--seed",
        SEED,
        "--concurrency",
        "8",
        "--ingest",
        ingest,
        "--last-day",
        &last.to_string(),
    ]
    .map(String::from)
    .to_vec()
}

/// The events a finished `candor simulate` reports as accepted.
fn accepted_events(stdout: &str) -> u64 {
    stdout
        .lines()
        .find_map(|l| {
            l.strip_prefix("simulate: ")?
                .split_once(" events accepted")?
                .0
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no event count in {stdout}"))
}

/// Every page of one KPI grouping, as the query API answers it.
async fn kpi(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    name: &str,
    group_by: &str,
) -> Vec<Value> {
    let last = last_day();
    let first = last - Days::new(6);
    let mut rows = Vec::new();
    let mut offset = 0u64;
    loop {
        let response = http
            .get(format!("{base}/v1/kpi/{name}"))
            .bearer_auth(token)
            .query(&[
                ("from", first.to_string()),
                ("to", last.to_string()),
                ("group_by", group_by.to_string()),
                ("limit", "1000".into()),
                ("offset", offset.to_string()),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{name} by {group_by}");
        let page: Value = response.json().await.unwrap();
        rows.extend(page["rows"].as_array().unwrap().iter().cloned());
        match page["next_offset"].as_u64() {
            Some(next) => offset = next,
            None => return rows,
        }
    }
}

/// Every KPI in every grouping, keyed by `name by grouping`.
async fn all_kpis(base: &str, token: &str) -> Vec<(String, Vec<Value>)> {
    let http = reqwest::Client::new();
    let mut out = Vec::new();
    for name in candor_query::api::KPI_NAMES {
        for group_by in GROUPINGS {
            out.push((
                format!("{name} by {group_by}"),
                kpi(&http, base, token, name, group_by).await,
            ));
        }
    }
    out
}

/// Equal as answers: integers exactly, floats to 1e-9 relative (a sum of
/// GPS distances may add in another order when the log is partitioned
/// differently).
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_i64(), y.as_i64()) {
            (Some(x), Some(y)) => x == y,
            _ => {
                let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
                (x - y).abs() <= 1e-9 * x.abs().max(y.abs()).max(1.0)
            }
        },
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        _ => a == b,
    }
}

/// The first KPI on which the two deployments differ, if any.
fn first_difference(got: &[(String, Vec<Value>)], want: &[(String, Vec<Value>)]) -> Option<String> {
    got.iter().zip(want).find_map(|((name, g), (_, w))| {
        if g.len() != w.len() {
            let rows = |rows: &[Value]| {
                rows.iter()
                    .map(Value::to_string)
                    .collect::<Vec<_>>()
                    .join("\n    ")
            };
            return Some(format!(
                "{name}: {} rows, standalone has {}\n  deployment:\n    {}\n  standalone:\n    {}",
                g.len(),
                w.len(),
                rows(g),
                rows(w)
            ));
        }
        g.iter()
            .zip(w)
            .find(|(g, w)| !same(g, w))
            .map(|(g, w)| format!("{name}: {g} where standalone has {w}"))
    })
}

/// What a processor says of its partitions (lag, records dropped and why,
/// flushes completed for others), printed while the deployment has not caught up, so a
/// failure tells a stuck partition from records lost.
async fn processor_state(metrics: &str) -> String {
    let text = reqwest::get(format!("{metrics}/metrics"))
        .await
        .and_then(|r| r.error_for_status());
    let text = match text {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(e) => return format!("processor metrics unavailable: {e}"),
    };
    text.lines()
        .filter(|l| {
            [
                "candor_processor_partition_lag_records",
                "candor_processor_events_dropped_total",
                "candor_processor_records_undecodable_total",
                "candor_processor_flushes_completed_total",
                "candor_processor_events_committed_total",
                "candor_processor_lake_retries_total",
                "candor_processor_group_rejoins_total",
            ]
            .iter()
            .any(|name| l.starts_with(name))
        })
        .map(|l| format!("  {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// What `candor standalone` answers for the seeded input.
async fn standalone_answers(
    secret_file: &Path,
    directory: &Path,
    last: NaiveDate,
) -> Vec<(String, Vec<Value>)> {
    let data = tempfile::tempdir().unwrap();
    let d = data.path();
    let token = candor(
        d,
        secret_file,
        &[
            "tenant",
            "create",
            "--tenant",
            TENANT,
            "--track-outside-work-hours",
            "--bootstrap-token",
        ],
    );
    candor(
        d,
        secret_file,
        &[
            "directory",
            "load",
            "--tenant",
            TENANT,
            "--file",
            directory.to_str().unwrap(),
        ],
    );
    let node = Standalone::start(
        d,
        secret_file,
        &[
            "--set",
            "maintenance.compact_every_minutes=0",
            "--set",
            "maintenance.extracts_every_hours=0",
        ],
    );
    let args = simulate(&node.url, last);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let sent = candor(d, secret_file, &args);
    node.wait_for_events(accepted_events(&sent)).await;
    all_kpis(&node.query_url, token.trim()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deployment_as_processes_answers_what_standalone_answers_through_kills_and_an_s3_cut() {
    tokio::time::timeout(GUARD, run())
        .await
        .expect("the deployment test finished within its guard");
}

async fn run() {
    let dir = tempfile::tempdir().unwrap();
    let (_, secret_file) = secret_in(dir.path());
    let last = last_day();
    let kafka = common::fresh_topic("deployment", 4).await;
    let dead_letters = format!("{}-dead", kafka.topic);
    let (bucket, _) = fresh_named_bucket("deployment");
    let s3 = TcpProxy::start(&s3_endpoint()).await;
    let services = [&kafka.brokers, &s3.endpoint()].map(|a| {
        a.trim_start_matches("http://")
            .parse()
            .expect("the broker and the S3 proxy listen on loopback")
    });
    let hosts = Hosts::new(5, &services);

    // The deployment's configuration: a file, plus what the environment of
    // each machine says (the S3 client's settings).
    let config = dir.path().join("candor.toml");
    std::fs::write(
        &config,
        format!(
            r#"master_secret_file = "{secret}"
data_dir = "{data}"

[control]
url = "s3://{bucket}/control"
refresh_secs = 1

[lake]
url = "s3://{bucket}/lake"

[kafka]
brokers = "{brokers}"
topic = "{topic}"
dead_letter_topic = "{dead_letters}"
partitions = 4
# A killed member holds its partitions until its session times out; the
# broker's minimum keeps the takeover quick.
session_timeout_ms = 6000

[processor]
group = "{topic}-processors"
max_records_per_flush = 2000
"#,
            secret = secret_file.display(),
            data = dir.path().join("data").display(),
            brokers = kafka.brokers,
            topic = kafka.topic,
        ),
    )
    .unwrap();
    let env: Vec<(String, String)> = [
        ("AWS_ENDPOINT_URL", s3.endpoint()),
        ("AWS_ACCESS_KEY_ID", "candor-test".into()),
        ("AWS_SECRET_ACCESS_KEY", "candor-test".into()),
        ("AWS_REGION", "us-east-1".into()),
        ("AWS_ALLOW_HTTP", "true".into()),
        ("CANDOR_LOG", "warn".into()),
        ("CANDOR_CONFIG", config.display().to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();

    // The operator's first steps: a tenant, its directory.
    let token = operator(
        &config,
        &env,
        &[
            "tenant",
            "create",
            "--tenant",
            TENANT,
            "--track-outside-work-hours",
            "--bootstrap-token",
        ],
    );
    let token = token.trim();
    let directory = dir.path().join("directory.json");
    operator(
        &config,
        &env,
        &[
            "simulate",
            "--tenant",
            TENANT,
            "--employees",
            EMPLOYEES,
            "--seed",
            SEED,
            "--directory-only",
            "--directory-out",
            directory.to_str().unwrap(),
        ],
    );
    operator(
        &config,
        &env,
        &[
            "directory",
            "load",
            "--tenant",
            TENANT,
            "--file",
            directory.to_str().unwrap(),
        ],
    );

    // Each node on a host of its own where the machine allows it.
    let node_env = if hosts.separate() {
        // Listeners on the private test network, not loopback.
        let mut env = env.clone();
        env.push(("CANDOR_TLS__PLAIN_HTTP".into(), "true".into()));
        env
    } else {
        env.clone()
    };
    let node = |host: usize, role: &str, name: &str| {
        let host = hosts.host(host);
        NodeProcess::start_on(
            host,
            &[role, "--listen", &host.listen()],
            &node_env,
            &[name],
        )
    };
    let mut ingest_1 = node(0, "ingest", "ingest");
    let ingest_2 = node(1, "ingest", "ingest");
    let mut processor_1 = node(2, "processor", "metrics");
    let processor_2 = node(3, "processor", "metrics");
    let query = node(4, "query", "query");

    let ingest_urls = format!("{},{}", ingest_1.url("ingest"), ingest_2.url("ingest"));
    let mut agents = Command::new(env!("CARGO_BIN_EXE_candor"))
        .args(simulate(&ingest_urls, last))
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();

    // Faults while the agents send: a processor dies once both have
    // committed, so the group has formed with partitions on each (the
    // other must take its partitions over), then an ingest node (its
    // agents fail over), then S3 is cut for a few seconds.
    let committed = "candor_processor_events_committed_total";
    for processor in [&processor_1, &processor_2] {
        while processor.metric(committed).await.is_none_or(|n| n == 0) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    processor_1.kill();
    assert!(
        agents.try_wait().unwrap().is_none(),
        "the agents finished before the faults: send more (EMPLOYEES, DAYS)"
    );
    ingest_1.kill();
    s3.cut();
    tokio::time::sleep(Duration::from_secs(3)).await;
    s3.restore();

    let out = tokio::task::spawn_blocking(move || agents.wait_with_output().unwrap())
        .await
        .unwrap();
    let sent = String::from_utf8(out.stdout).unwrap();
    assert!(
        out.status.success(),
        "every batch accepted through the faults: {sent}"
    );
    accepted_events(&sent);

    let want = standalone_answers(&secret_file, &directory, last).await;
    for (name, rows) in &want {
        assert!(!rows.is_empty(), "standalone answers {name}");
    }
    for (name, rows) in want.iter().filter(|(n, _)| n.contains("by department")) {
        for row in rows {
            assert!(
                row["department"].as_str().is_some_and(|d| !d.is_empty()),
                "{name}: a row without department: {row}"
            );
        }
    }

    // The surviving processor catches up on every partition; until then the
    // answers differ, and the guard ends a deployment that never catches up
    // (the last difference is printed every 20 rounds).
    let query_url = query.url("query").to_string();
    for round in 0.. {
        let got = all_kpis(&query_url, token).await;
        let Some(difference) = first_difference(&got, &want) else {
            eprintln!("deployment: every KPI as standalone");
            break;
        };
        if round % 20 == 0 {
            eprintln!("deployment: not yet as standalone: {difference}");
            eprintln!("{}", processor_state(processor_2.url("metrics")).await);
        }
        if processor_2.metric(committed).await.is_none() {
            panic!("the surviving processor stopped; last difference: {difference}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    let dead = candor_log::kafka::end_offsets(&candor_log::kafka::KafkaConfig {
        topic: dead_letters,
        ..kafka.clone()
    })
    .await
    .unwrap();
    assert!(
        dead.iter().all(|(_, end)| *end == 0),
        "records went to the dead-letter topic: {dead:?}"
    );
}
