//! One suite, two logs: every case runs against the embedded spool and
//! against Kafka through the real broker, and both must keep the contract
//! in the crate docs.

use std::collections::BTreeMap;
use std::time::Duration;

use candor_log::kafka::{KafkaConfig, KafkaConsumer, KafkaProducer};
use candor_log::spool::{Spool, SpoolConfig};
use candor_log::testkit::{fresh_topic, unique_name};
use candor_log::{Delivered, LogConsumer, LogProducer, Record, Resume};

/// Hang guard for reads: a broken log fails the test instead of stalling it.
const GUARD: Duration = Duration::from_secs(90);

enum Backend {
    /// The directory lives as long as the spool in it.
    Spool(#[allow(dead_code)] tempfile::TempDir, Spool),
    Kafka(KafkaConfig),
}

impl Backend {
    async fn spool() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(SpoolConfig::new(dir.path())).unwrap();
        Backend::Spool(dir, spool)
    }

    async fn kafka() -> Self {
        Backend::Kafka(fresh_topic("conformance", 4).await.unwrap())
    }

    fn producer(&self) -> Box<dyn LogProducer> {
        match self {
            Backend::Spool(_, s) => Box::new(s.producer()),
            Backend::Kafka(c) => Box::new(KafkaProducer::new(c).unwrap()),
        }
    }

    fn consumer(&self, group: &str) -> Box<dyn LogConsumer> {
        match self {
            Backend::Spool(_, s) => Box::new(s.consumer(group).unwrap()),
            Backend::Kafka(c) => Box::new(KafkaConsumer::new(c, group).unwrap()),
        }
    }
}

fn record(key: &str, n: usize) -> Record {
    Record {
        key: key.to_string(),
        value: format!("{key}#{n:05}").into_bytes(),
    }
}

/// Appends records numbered `numbers` for every key, `batch` per append.
async fn append_all(
    producer: &dyn LogProducer,
    keys: &[&str],
    numbers: std::ops::Range<usize>,
    batch: usize,
) {
    let mut all: Vec<Record> = numbers
        .flat_map(|n| keys.iter().map(move |k| record(k, n)))
        .collect();
    while !all.is_empty() {
        let rest = all.split_off(batch.min(all.len()));
        producer
            .append(std::mem::replace(&mut all, rest))
            .await
            .unwrap();
    }
}

/// Polls until `n` records arrived; panics past the guard.
async fn read_n(consumer: &mut dyn LogConsumer, n: usize) -> Vec<Delivered> {
    let mut out = Vec::new();
    tokio::time::timeout(GUARD, async {
        while out.len() < n {
            out.extend(
                consumer
                    .poll(n - out.len(), Duration::from_millis(500))
                    .await
                    .unwrap(),
            );
        }
    })
    .await
    .unwrap_or_else(|_| panic!("read {} of {n} records before the guard", out.len()));
    out
}

/// Positions after every record read.
fn positions_after(records: &[Delivered]) -> Vec<Resume> {
    let mut next: BTreeMap<i32, i64> = BTreeMap::new();
    for r in records {
        let e = next.entry(r.partition).or_default();
        *e = (*e).max(r.offset + 1);
    }
    next.into_iter()
        .map(|(partition, next_offset)| Resume {
            partition,
            next_offset,
        })
        .collect()
}

fn by_key(records: &[Delivered]) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for r in records {
        out.entry(String::from_utf8(r.key.clone()).unwrap())
            .or_default()
            .push(String::from_utf8(r.value.clone()).unwrap());
    }
    out
}

async fn appends_come_back_once_in_key_order(log: Backend) {
    let keys = ["acme/dev-1", "acme/dev-2", "globex/dev-1"];
    append_all(log.producer().as_ref(), &keys, 0..40, 7).await;
    let mut consumer = log.consumer(&unique_name("g"));
    let got = read_n(consumer.as_mut(), 120).await;
    let grouped = by_key(&got);
    for key in keys {
        let want: Vec<String> = (0..40).map(|n| format!("{key}#{n:05}")).collect();
        assert_eq!(grouped[key], want, "{key}: every record once, in order");
    }
    let ends: i64 = consumer
        .end_offsets()
        .await
        .unwrap()
        .iter()
        .map(|r| r.next_offset)
        .sum();
    assert_eq!(ends, 120);
    let more = consumer.poll(10, Duration::from_millis(300)).await.unwrap();
    assert!(more.is_empty(), "nothing beyond what was appended");
}

async fn a_new_consumer_resumes_after_the_commit(log: Backend) {
    let group = unique_name("g");
    let producer = log.producer();
    append_all(producer.as_ref(), &["k1", "k2"], 0..30, 10).await;
    let committed = {
        let mut first = log.consumer(&group);
        let got = read_n(first.as_mut(), 60).await;
        let positions = positions_after(&got);
        first.commit(&positions).await.unwrap();
        let mut seen = first.committed().await.unwrap();
        seen.retain(|r| r.next_offset > 0);
        assert_eq!(seen, positions, "committed() reports the commit");
        positions
    };
    append_all(producer.as_ref(), &["k1", "k2"], 30..35, 10).await;
    let mut second = log.consumer(&group);
    let got = read_n(second.as_mut(), 10).await;
    let floor: BTreeMap<i32, i64> = committed
        .iter()
        .map(|r| (r.partition, r.next_offset))
        .collect();
    for r in &got {
        assert!(
            r.offset >= floor.get(&r.partition).copied().unwrap_or(0),
            "re-read {r:?}"
        );
    }
    let grouped = by_key(&got);
    assert_eq!(
        grouped["k1"],
        (30..35).map(|n| format!("k1#{n:05}")).collect::<Vec<_>>()
    );
    assert_eq!(
        grouped["k2"],
        (30..35).map(|n| format!("k2#{n:05}")).collect::<Vec<_>>()
    );
}

async fn groups_are_independent(log: Backend) {
    append_all(log.producer().as_ref(), &["k"], 0..25, 25).await;
    let mut a = log.consumer(&unique_name("a"));
    let got = read_n(a.as_mut(), 25).await;
    a.commit(&positions_after(&got)).await.unwrap();
    let mut b = log.consumer(&unique_name("b"));
    assert_eq!(
        read_n(b.as_mut(), 25).await.len(),
        25,
        "another group starts from the beginning"
    );
}

async fn an_empty_log_polls_empty(log: Backend) {
    let mut c = log.consumer(&unique_name("g"));
    assert!(
        c.poll(10, Duration::from_millis(300))
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        c.end_offsets()
            .await
            .unwrap()
            .iter()
            .all(|r| r.next_offset == 0)
    );
}

macro_rules! conformance {
    ($($case:ident),* $(,)?) => {
        mod spool {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(super::Backend::spool().await).await;
                }
            )*
        }
        mod kafka {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(super::Backend::kafka().await).await;
                }
            )*
        }
    };
}

conformance!(
    appends_come_back_once_in_key_order,
    a_new_consumer_resumes_after_the_commit,
    groups_are_independent,
    an_empty_log_polls_empty,
);
