//! `candor standalone`, the real binary: sealed batches over HTTP into the
//! embedded log, through the processor into the lake, out as the KPI; a
//! clean stop on SIGTERM; a failing lake that stops the process without
//! losing what was accepted; and `candor simulate`'s staff (field staff and
//! late uploads included) through to the KPIs.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use candor_query::{ActivityDay, TenantLake};
use candor_schemas::keys::MasterSecret;
use candor_schemas::{EnvelopeHeader, TenantId};
use chrono::{Datelike, Days, NaiveDate, Utc, Weekday};
use common::process::{
    Standalone, candor, count_before, load_simulated_directory, secret_in, simulate,
};
use common::{activity_batch, header, ms, post, samples, seal_batch};

/// Hang guard: a stuck process fails the test instead of stalling CI.
const GUARD: Duration = Duration::from_secs(120);
const BATCH: &str = "application/vnd.candor.batch";

/// The lake subject of an employee, from the tenant's keys in the control plane.
async fn subject_of(data: &Path, master: &MasterSecret, h: &EnvelopeHeader) -> String {
    let (store, prefix) =
        candor_control::open_store(data.join("control").to_str().unwrap()).unwrap();
    let docs = candor_control::DocumentStore::new(store, &prefix);
    let keys = candor_control::keyring::load(&docs, master, &h.tenant)
        .await
        .unwrap()
        .unwrap();
    keys.pseudonym().subject(&h.employee)
}

fn activity_day(subject: String, day: &str, tracked: i64, active: i64) -> ActivityDay {
    ActivityDay {
        subject,
        day: day.to_string(),
        tracked_s: tracked,
        active_s: active,
        idle_s: tracked - active,
        activity_pct: 100.0 * active as f64 / tracked as f64,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_turns_sealed_batches_into_a_kpi_and_stops_cleanly() {
    let data = tempfile::tempdir().unwrap();
    let (master, secret_file) = secret_in(data.path());
    // The README's tenant setup: create it with a bootstrap owner token...
    let token = candor(
        data.path(),
        &secret_file,
        &[
            "tenant",
            "create",
            "--tenant",
            "acme",
            "--time-zone",
            "UTC",
            // The test's hours fall on any weekday and hour.
            "--track-outside-work-hours",
            "--bootstrap-token",
        ],
    );
    let token = token.trim();
    let standalone = Standalone::start(data.path(), &secret_file, &[]);

    // ...and enroll a device over the admin API with it.
    let enrolled: serde_json::Value = reqwest::Client::new()
        .post(format!("{}/v1/admin/devices", standalone.query_url))
        .bearer_auth(token)
        .json(&serde_json::json!({"employee": "employee-bob-0002", "device": "phone-bob-02"}))
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap()
        .json()
        .await
        .unwrap();
    let bob = header("acme", "employee-bob-0002", "phone-bob-02");
    let bob_key = master.device_key(&bob.tenant, &bob.employee, &bob.device, 1);
    assert_eq!(enrolled["device_key_hex"], hex::encode(bob_key.as_bytes()));
    assert_eq!(enrolled["key_version"], 1);

    let day = Utc::now().date_naive() - Days::new(2);
    let alice = header("acme", "employee-alice-0001", "laptop-alice-01");
    for (h, b) in [
        (&alice, activity_batch(samples(ms(day, 9, 0), 10, 45, 15))),
        (&bob, activity_batch(samples(ms(day, 10, 0), 5, 60, 0))),
    ] {
        let (status, answer) = post(&standalone.url, BATCH, seal_batch(&master, h, &b)).await;
        assert_eq!(status, 202, "{answer}");
    }
    // A tenant that does not exist is refused, though its key is well formed.
    let stranger = header("globex", "e-1", "d-1");
    let b = activity_batch(samples(ms(day, 9, 0), 1, 60, 0));
    let (status, answer) = post(&standalone.url, BATCH, seal_batch(&master, &stranger, &b)).await;
    assert_eq!(
        (status, answer["reason"].as_str()),
        (403, Some("unknown_tenant"))
    );
    standalone.wait_for_events(15).await;
    standalone.terminate();
    let status = standalone.exit_status().await;
    assert!(status.success(), "{status}");

    let day = day.to_string();
    let mut expected = vec![
        activity_day(
            subject_of(data.path(), &master, &alice).await,
            &day,
            600,
            450,
        ),
        activity_day(subject_of(data.path(), &master, &bob).await, &day, 300, 300),
    ];
    expected.sort_by(|a, b| a.subject.cmp(&b.subject));
    let acme = TenantId::new("acme").unwrap();
    let lake = TenantLake::open_local(&data.path().join("lake"), &acme)
        .await
        .unwrap();
    let from = Utc::now().date_naive() - Days::new(2);
    assert_eq!(
        lake.activity_by_subject_day("UTC", from, from)
            .await
            .unwrap(),
        expected
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lake_that_fails_is_retried_and_caught_up_without_a_restart() {
    let data = tempfile::tempdir().unwrap();
    let (master, secret_file) = secret_in(data.path());
    // A file where the `activity` folder must go: every activity write fails.
    std::fs::create_dir_all(data.path().join("lake")).unwrap();
    let obstacle = data.path().join("lake/activity");
    std::fs::write(&obstacle, b"not a folder").unwrap();
    candor(
        data.path(),
        &secret_file,
        &[
            "tenant",
            "create",
            "--tenant",
            "acme",
            "--track-outside-work-hours",
        ],
    );

    let standalone = Standalone::start(data.path(), &secret_file, &[]);
    let day = Utc::now().date_naive() - Days::new(2);
    let alice = header("acme", "employee-alice-0001", "laptop-alice-01");
    let batch = activity_batch(samples(ms(day, 9, 0), 8, 30, 30));
    let (status, answer) = post(&standalone.url, BATCH, seal_batch(&master, &alice, &batch)).await;
    assert_eq!(status, 202, "{answer}");

    // While the lake refuses the write, the processor retries and commits
    // nothing; the process stays up.
    standalone
        .wait_for_metric("candor_processor_lake_retries_total", |n| n >= 2)
        .await;
    assert_eq!(
        standalone.metric("candor_processor_commits_total").await,
        Some(0)
    );

    // Once the lake is writable again, it catches up by itself.
    std::fs::remove_file(&obstacle).unwrap();
    standalone
        .wait_for_metric("candor_processor_commits_total", |n| n >= 1)
        .await;
    standalone.terminate();
    assert!(standalone.exit_status().await.success());

    let acme = TenantId::new("acme").unwrap();
    let lake = TenantLake::open_local(&data.path().join("lake"), &acme)
        .await
        .unwrap();
    let rows = lake.activity_by_subject_day("UTC", day, day).await.unwrap();
    assert_eq!(
        rows,
        vec![activity_day(
            subject_of(data.path(), &master, &alice).await,
            &day.to_string(),
            480,
            240
        )]
    );
}

#[test]
fn a_query_node_refuses_plain_http_on_a_public_address() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_candor"))
        .args(["query", "--listen", "0.0.0.0:0"])
        .env_remove("CANDOR_PLAIN_HTTP")
        .env_remove("CANDOR_TLS__PLAIN_HTTP")
        .output()
        .expect("candor runs");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("query.listen = 0.0.0.0:0 would serve plain HTTP"),
        "{stderr}"
    );
}

/// The most recent day before today (UTC) that is a workday and follows
/// one: two workdays to simulate, whatever day the test runs on.
fn two_workdays_ending() -> NaiveDate {
    let mut day = Utc::now().date_naive() - Days::new(1);
    while !matches!(
        day.weekday(),
        Weekday::Tue | Weekday::Wed | Weekday::Thu | Weekday::Fri
    ) {
        day = day - Days::new(1);
    }
    day
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulated_staff_with_field_workers_and_late_uploads_reach_the_kpis() {
    let data = tempfile::tempdir().unwrap();
    let (_, secret_file) = secret_in(data.path());
    // A tenant with the default work hours (Monday to Friday, 09-17 UTC).
    let token = candor(
        data.path(),
        &secret_file,
        &[
            "tenant",
            "create",
            "--tenant",
            "sim",
            "--time-zone",
            "UTC",
            "--bootstrap-token",
        ],
    );
    let token = token.trim().to_string();
    // Six employees, two of them in the field; every device-day has an
    // offline stretch; nobody is absent, so every employee-day is present.
    let last_day = two_workdays_ending().to_string();
    let staff = [
        "--tenant",
        "sim",
        "--employees",
        "6",
        "--departments",
        "4",
        "--field-share",
        "0.34",
        "--late-share",
        "1",
        "--absence-share",
        "0",
        "--seed",
        "3",
    ];
    // The matching directory first, so departments are attributed.
    load_simulated_directory(
        data.path(),
        &secret_file,
        "sim",
        &staff,
        &data.path().join("directory.json"),
    );
    let standalone = Standalone::start(data.path(), &secret_file, &[]);

    // The agents, as a process of their own.
    let summary = simulate(
        data.path(),
        &secret_file,
        &standalone.url,
        2,
        &last_day,
        &staff,
    )
    .await;
    let (batches, late, refused) = (
        count_before(&summary, "batches"),
        count_before(&summary, "uploaded"),
        count_before(&summary, "refused"),
    );
    let (events, gps) = (
        count_before(&summary, "events"),
        count_before(&summary, "GPS"),
    );
    assert_eq!(refused, 0, "{summary}");
    assert!(batches > 500 && late > 0 && gps > 300, "{summary}");
    assert_eq!(
        standalone
            .metric("candor_ingest_events_accepted_total")
            .await,
        Some(events)
    );
    // Late uploads included, every event is processed, and nothing is left.
    standalone.wait_for_events(events).await;
    standalone
        .wait_for_metric("candor_processor_lag_records", |lag| lag == 0)
        .await;

    // Attendance by department, as the demo prints it: two present days
    // for each of the six, in the directory's four departments.
    let client = reqwest::Client::new();
    let get_from = |url: String, path: String| {
        let client = client.clone();
        let token = token.clone();
        async move {
            client
                .get(format!("{url}{path}"))
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .error_for_status()
                .unwrap()
                .json::<serde_json::Value>()
                .await
                .unwrap()
        }
    };
    let get = |path: String| get_from(standalone.query_url.clone(), path);
    let (to, from) = (two_workdays_ending(), two_workdays_ending() - Days::new(1));
    let attendance_path = format!("/v1/kpi/attendance?from={from}&to={to}&group_by=department");
    let attendance = get(attendance_path.clone()).await;
    let rows = attendance["rows"].as_array().unwrap();
    let departments: Vec<&str> = rows
        .iter()
        .map(|r| {
            r["department"]
                .as_str()
                .expect("every employee has a department")
        })
        .collect();
    assert_eq!(departments, ["Engineering", "Field", "Sales", "Support"]);
    let days: u64 = rows
        .iter()
        .map(|r| r["present_days"].as_u64().unwrap())
        .sum();
    assert_eq!(days, 12, "{attendance}");
    assert!(rows.iter().all(|r| r["absent_days"] == 0), "{attendance}");
    // The two field workers drove.
    let gps_path = format!("/v1/kpi/gps?from={from}&to={to}&group_by=employee");
    let gps = get(gps_path.clone()).await;
    let rows = gps["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "{gps}");
    for r in rows {
        assert!(r["distance_km"].as_f64().unwrap() > 5.0, "{gps}");
        assert!(r["stops"].as_u64().unwrap() >= 2, "{gps}");
    }
    standalone.terminate();
    let status = standalone.exit_status().await;
    assert!(status.success(), "{status}");

    // `candor compact` merges the many small objects the uploads left, and
    // after a restart every answer is the same.
    let lake = data.path().join("lake");
    let out = candor(
        data.path(),
        &secret_file,
        &["compact", "--lake", lake.to_str().unwrap()],
    );
    assert!(count_before(&out, "objects") >= 4, "{out}");
    let restarted = Standalone::start(data.path(), &secret_file, &[]);
    let url = restarted.query_url.clone();
    let again = get_from(url.clone(), attendance_path).await;
    assert_eq!(again["rows"], attendance["rows"]);
    // Distances are float sums, whose last bits follow the order the rows
    // are added in; a merge changes that order.
    let rounded = |answer: &serde_json::Value| {
        let mut rows = answer["rows"].clone();
        for row in rows.as_array_mut().unwrap() {
            let km = row["distance_km"].as_f64().unwrap();
            row["distance_km"] = serde_json::json!(format!("{km:.9}"));
        }
        rows
    };
    let again = get_from(url, gps_path).await;
    assert_eq!(rounded(&again), rounded(&gps));
    restarted.terminate();
    let status = restarted.exit_status().await;
    assert!(status.success(), "{status}");
}

/// Runs `candor` in `cwd` with only `CANDOR_DATA_DIR` (and `extra`) set of
/// its configuration; returns whether it succeeded, stdout and stderr.
fn candor_in(
    cwd: &Path,
    data: &Path,
    extra: &[(&str, &Path)],
    args: &[&str],
) -> (bool, String, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_candor"));
    command
        .args(args)
        .current_dir(cwd)
        .env("CANDOR_DATA_DIR", data)
        .env_remove("CANDOR_CONTROL_URL")
        .env_remove("CANDOR_MASTER_SECRET")
        .env_remove("CANDOR_MASTER_SECRET_FILE");
    for (name, value) in extra {
        command.env(name, value);
    }
    let out = command.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn operator_commands_find_the_control_plane_in_the_data_dir_like_the_master_secret() {
    let data = tempfile::tempdir().unwrap();
    // Run from elsewhere, so `./.candor` cannot be what is found.
    let cwd = tempfile::tempdir().unwrap();
    let secret: [u8; 32] = rand::random();
    std::fs::write(data.path().join("master.key"), hex::encode(secret)).unwrap();
    let run =
        |extra: &[(&str, &Path)], args: &[&str]| candor_in(cwd.path(), data.path(), extra, args);

    let (ok, _, stderr) = run(&[], &["tenant", "create", "--tenant", "acme"]);
    assert!(ok, "tenant create: {stderr}");
    assert!(
        data.path().join("control").is_dir(),
        "the control plane is in the data dir"
    );
    assert!(!cwd.path().join(".candor").exists(), "nothing in ./.candor");
    let (ok, stdout, stderr) = run(&[], &["tenant", "show", "--tenant", "acme"]);
    assert!(ok, "tenant show: {stderr}");
    let doc: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        (doc["id"].as_str(), doc["plan"].as_str()),
        (Some("acme"), Some("starter"))
    );
    let (ok, stdout, stderr) = run(&[], &["audit", "verify", "--tenant", "acme"]);
    assert!(ok, "audit verify: {stdout}{stderr}");
    let (ok, _, stderr) = run(&[], &["token", "list", "--tenant", "acme"]);
    assert!(ok, "token list: {stderr}");

    // The explicit flag and CANDOR_CONTROL_URL still win over the data dir.
    let other = tempfile::tempdir().unwrap();
    let other_url = other.path().to_str().unwrap();
    let (ok, _, stderr) = run(
        &[],
        &[
            "tenant",
            "create",
            "--control",
            other_url,
            "--tenant",
            "globex",
        ],
    );
    assert!(ok, "tenant create --control: {stderr}");
    let (ok, _, _) = run(&[], &["tenant", "show", "--tenant", "globex"]);
    assert!(!ok, "globex is not in the data dir's control plane");
    let (ok, stdout, stderr) = run(
        &[("CANDOR_CONTROL_URL", other.path())],
        &["tenant", "show", "--tenant", "globex"],
    );
    assert!(
        ok && stdout.contains("globex"),
        "CANDOR_CONTROL_URL: {stderr}"
    );
    let (ok, _, _) = run(
        &[("CANDOR_CONTROL_URL", other.path())],
        &["tenant", "show", "--tenant", "acme"],
    );
    assert!(!ok, "CANDOR_CONTROL_URL outranks the data dir");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_routes_and_methods_answer_json_on_both_listeners() {
    let data = tempfile::tempdir().unwrap();
    let (_, secret_file) = secret_in(data.path());
    let node = Standalone::start(data.path(), &secret_file, &[]);
    let client = reqwest::Client::new();
    let cases = [
        // The ingest listener, in the shape of its refusals.
        (
            &node.url,
            reqwest::Method::GET,
            "/v1/batches",
            405,
            "rejected",
            "method_not_allowed",
        ),
        (
            &node.url,
            reqwest::Method::PUT,
            "/v1/batches",
            405,
            "rejected",
            "method_not_allowed",
        ),
        (
            &node.url,
            reqwest::Method::GET,
            "/v1/nothing",
            404,
            "rejected",
            "not_found",
        ),
        // The query listener, in the shape of its errors.
        (
            &node.query_url,
            reqwest::Method::GET,
            "/v1/nothing",
            404,
            "error",
            "not_found",
        ),
        (
            &node.query_url,
            reqwest::Method::GET,
            "/v1/sql",
            405,
            "error",
            "method_not_allowed",
        ),
        (
            &node.query_url,
            reqwest::Method::PUT,
            "/v1/extracts",
            405,
            "error",
            "method_not_allowed",
        ),
        (
            &node.query_url,
            reqwest::Method::POST,
            "/v1/admin/tenant",
            405,
            "error",
            "method_not_allowed",
        ),
        (
            &node.query_url,
            reqwest::Method::GET,
            "/v1/admin/nothing",
            404,
            "error",
            "not_found",
        ),
    ];
    for (base, method, path, status, word, reason) in cases {
        let what = format!("{method} {base}{path}");
        let answer = tokio::time::timeout(
            GUARD,
            client.request(method, format!("{base}{path}")).send(),
        )
        .await
        .expect("answered within the guard")
        .unwrap();
        assert_eq!(answer.status().as_u16(), status, "{what}");
        if status == 405 {
            assert!(answer.headers().contains_key("allow"), "{what}");
        }
        let body: serde_json::Value = answer
            .json()
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(body["status"], word, "{what}: {body}");
        assert_eq!(body["reason"], reason, "{what}: {body}");
        assert!(
            body["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{what}: {body}"
        );
    }
    node.terminate();
    assert!(node.exit_status().await.success());
}
