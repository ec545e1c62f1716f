//! What only the embedded spool has to prove: it survives restarts and
//! SIGKILL with every acknowledged record and no torn one, it bounds its
//! disk, and it deletes what every group has consumed.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use candor_log::spool::{Spool, SpoolConfig};
use candor_log::{LogConsumer, LogError, LogProducer, Record, Resume};

const CHILD_ENV: &str = "CANDOR_SPOOL_CRASH_CHILD";

fn config(dir: &std::path::Path) -> SpoolConfig {
    SpoolConfig {
        segment_bytes: 4096,
        ..SpoolConfig::new(dir)
    }
}

async fn drain_all(consumer: &mut dyn LogConsumer) -> Vec<candor_log::Delivered> {
    let mut out = Vec::new();
    loop {
        let got = consumer
            .poll(1000, Duration::from_millis(50))
            .await
            .unwrap();
        if got.is_empty() {
            return out;
        }
        out.extend(got);
    }
}

#[tokio::test]
async fn records_and_positions_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (committed_partition, committed) = {
        let spool = Spool::open(config(dir.path())).unwrap();
        let records = (0..100)
            .map(|i| Record {
                key: format!("k{}", i % 3),
                value: vec![i as u8; 100],
            })
            .collect();
        spool.producer().append(records).await.unwrap();
        let mut c = spool.consumer("g").unwrap();
        let got = drain_all(&mut c).await;
        assert_eq!(got.len(), 100);
        // Commit one partition's records only.
        let p = got[0].partition;
        let next = got.iter().filter(|r| r.partition == p).count() as i64;
        c.commit(&[Resume {
            partition: p,
            next_offset: next,
        }])
        .await
        .unwrap();
        (p, next)
    };
    let spool = Spool::open(config(dir.path())).unwrap();
    let mut c = spool.consumer("g").unwrap();
    let got = drain_all(&mut c).await;
    assert!(
        got.iter().all(|r| r.partition != committed_partition),
        "that partition was committed"
    );
    assert_eq!(
        got.len() as i64,
        100 - committed,
        "the rest comes back, once"
    );
    let total: i64 = c
        .end_offsets()
        .await
        .unwrap()
        .iter()
        .map(|r| r.next_offset)
        .sum();
    assert_eq!(total, 100);
    assert!(spool.consumer("g").is_err(), "one consumer per group");
}

#[tokio::test]
async fn a_full_disk_budget_refuses_appends_until_consumed() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(SpoolConfig {
        max_disk_bytes: 20_000,
        partitions: 1,
        segment_bytes: 4_000,
        ..SpoolConfig::new(dir.path())
    })
    .unwrap();
    let producer = spool.producer();
    let mut accepted = 0;
    let refusal = loop {
        match producer
            .append(vec![Record {
                key: "k".into(),
                value: vec![1; 1000],
            }])
            .await
        {
            Ok(()) => accepted += 1,
            Err(e) => break e,
        }
        assert!(accepted < 100, "the budget never bit");
    };
    assert!(matches!(refusal, LogError::Full(_)), "{refusal:?}");
    assert!(producer.check().await.is_err() || spool.disk_bytes() > 18_000);
    let mut c = spool.consumer("g").unwrap();
    let got = drain_all(&mut c).await;
    assert_eq!(got.len(), accepted);
    let before = spool.disk_bytes();
    c.commit(&[Resume {
        partition: 0,
        next_offset: got.len() as i64,
    }])
    .await
    .unwrap();
    assert!(spool.disk_bytes() < before, "consumed segments are deleted");
    producer
        .append(vec![Record {
            key: "k".into(),
            value: vec![1; 1000],
        }])
        .await
        .unwrap();
    // The deleted records are gone; a new group starts at the oldest kept one.
    let mut fresh = spool.consumer("late").unwrap();
    let rest = drain_all(&mut fresh).await;
    assert!(!rest.is_empty() && rest.len() < accepted + 1);
    assert_eq!(rest.last().unwrap().offset, accepted as i64);
}

/// The child: appends from 8 tasks forever (bounded), printing each
/// acknowledged record; the parent kills it with SIGKILL mid-flight.
fn crash_child(dir: &str) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let spool = Spool::open(config(std::path::Path::new(dir))).unwrap();
        let producer = Arc::new(spool.producer());
        let mut tasks = Vec::new();
        for t in 0..8u64 {
            let producer = producer.clone();
            tasks.push(tokio::spawn(async move {
                for n in 0..200_000u64 {
                    let id = t * 1_000_000 + n;
                    let mut value = format!("record-{id}-").into_bytes();
                    value.resize(700, b'x');
                    producer
                        .append(vec![Record {
                            key: format!("k{t}"),
                            value,
                        }])
                        .await
                        .unwrap();
                    println!("acked {id}");
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    });
}

#[test]
fn acknowledged_appends_survive_sigkill() {
    if let Ok(dir) = std::env::var(CHILD_ENV) {
        crash_child(&dir);
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "acknowledged_appends_survive_sigkill",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, dir.path())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut acked = BTreeSet::new();
    // Kept open until the kill, so the child never sees a closed pipe.
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    for line in lines.by_ref() {
        if let Some(id) = line.unwrap().strip_prefix("acked ") {
            acked.insert(id.parse::<u64>().unwrap());
        }
        if acked.len() >= 3000 {
            break;
        }
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    drop(lines);
    assert!(acked.len() >= 3000, "the child stopped early");

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let spool = Spool::open(config(dir.path())).unwrap();
        let mut c = spool.consumer("check").unwrap();
        let mut found = BTreeSet::new();
        for r in drain_all(&mut c).await {
            let text = String::from_utf8(r.value).unwrap();
            let id = text
                .strip_prefix("record-")
                .and_then(|t| t.split('-').next())
                .unwrap();
            assert!(
                found.insert(id.parse::<u64>().unwrap()),
                "record {id} stored twice"
            );
        }
        let missing: Vec<_> = acked.difference(&found).take(5).collect();
        assert!(missing.is_empty(), "acknowledged but lost: {missing:?}");
    });
}
