//! `candor standalone`, the real binary: sealed batches over HTTP into the
//! embedded log, through the processor into the lake, out as the KPI; and a
//! clean stop on SIGTERM.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use candor_query::{ActivityDay, TenantLake};
use candor_schemas::TenantId;
use candor_schemas::keys::MasterSecret;
use chrono::{Days, Utc};
use common::{activity_batch, header, ms, post, samples, seal_batch};

/// Hang guard: a stuck process fails the test instead of stalling CI.
const GUARD: Duration = Duration::from_secs(120);

/// The value of an unlabelled metric in Prometheus text.
fn metric(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_turns_sealed_batches_into_a_kpi_and_stops_cleanly() {
    let data = tempfile::tempdir().unwrap();
    let secret: [u8; 32] = rand::random();
    let secret_file = data.path().join("secret.hex");
    std::fs::write(&secret_file, hex::encode(secret)).unwrap();
    let master = MasterSecret::from_bytes(&secret).unwrap();

    let mut child = Command::new(env!("CARGO_BIN_EXE_candor"))
        .arg("standalone")
        .arg("--data-dir")
        .arg(data.path())
        .args(["--listen", "127.0.0.1:0"])
        .env("CANDOR_MASTER_SECRET_FILE", &secret_file)
        .env_remove("CANDOR_MASTER_SECRET")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let url = loop {
        let line = lines
            .next()
            .expect("standalone printed its addresses")
            .unwrap();
        if let Some(rest) = line.trim().strip_prefix("ingest") {
            break rest.trim().trim_end_matches("/v1/batches").to_string();
        }
    };

    let day = Utc::now().date_naive() - Days::new(2);
    let alice = header("acme", "employee-alice-0001", "laptop-alice-01");
    let bob = header("acme", "employee-bob-0002", "phone-bob-02");
    for (h, b) in [
        (&alice, activity_batch(samples(ms(day, 9, 0), 10, 45, 15))),
        (&bob, activity_batch(samples(ms(day, 10, 0), 5, 60, 0))),
    ] {
        let (status, answer) = post(
            &url,
            "application/vnd.candor.batch",
            seal_batch(&master, h, &b),
        )
        .await;
        assert_eq!(status, 202, "{answer}");
    }

    tokio::time::timeout(GUARD, async {
        loop {
            let text = reqwest::get(format!("{url}/metrics"))
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            if metric(&text, "candor_processor_events_total") == Some(15) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the processor took in all 15 events");

    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let status = tokio::time::timeout(GUARD, tokio::task::spawn_blocking(move || child.wait()))
        .await
        .expect("standalone stopped after SIGTERM")
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status}");
    drop(lines);

    let acme = TenantId::new("acme").unwrap();
    let subject =
        |h: &candor_schemas::EnvelopeHeader| master.pseudonym_key(&acme, 1).subject(&h.employee);
    let mut expected = vec![
        ActivityDay {
            subject: subject(&alice),
            day: day.to_string(),
            tracked_s: 600,
            active_s: 450,
            idle_s: 150,
            activity_pct: 75.0,
        },
        ActivityDay {
            subject: subject(&bob),
            day: day.to_string(),
            tracked_s: 300,
            active_s: 300,
            idle_s: 0,
            activity_pct: 100.0,
        },
    ];
    expected.sort_by(|a, b| a.subject.cmp(&b.subject));
    let lake = TenantLake::open_local(&data.path().join("lake"), &acme)
        .await
        .unwrap();
    assert_eq!(
        lake.activity_by_subject_day("UTC", day, day).await.unwrap(),
        expected
    );
}
