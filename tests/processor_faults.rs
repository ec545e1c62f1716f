//! The processor's faults: every accepted row lands in the lake's tables
//! exactly once, whether a processor dies before its state commit, between
//! its state commit and its tables' commits, or before its log commit, and
//! whatever chunks its successor cuts; a stalled processor whose successor
//! committed commits nothing; a record that cannot be opened goes to the
//! dead-letter log and never stops its partition.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::Duration;

use arrow::array::AsArray;
use arrow::datatypes::{Float64Type, Int64Type};
use async_trait::async_trait;
use candor_control::testkit::TestStore;
use candor_control::testkit::{TcpProxy, named_s3_client};
use candor_log::Record;
use candor_log::spool::{Spool, SpoolConfig};
use candor_log::{Delivered, LogConsumer, LogError, LogProducer, Resume};
use candor_processor::{
    DeadLetter, Lake, Lakes, Processor, ProcessorConfig, ProcessorError, ProcessorMetrics,
};
use candor_schemas::TenantId;
use candor_schemas::batch::{AppUsage, Batch, GpsPoint, haversine_m};
use candor_schemas::datasets::Dataset;
use candor_schemas::keys::MasterSecret;
use candor_schemas::record::RecordFormat;
use chrono::{Days, Utc};
use common::lake::{DeleteGate, FaultyStore, committed_objects};
use common::{Control, activity_batch, header, ms, post, random_master, samples, seal_batch};
use futures::StreamExt;
use object_store::ObjectStoreExt;
use object_store::path::Path as ObjectPath;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

/// Hang guard: a stuck processor fails the test instead of stalling CI.
const GUARD: Duration = Duration::from_secs(180);
const BATCH: &str = "application/vnd.candor.batch";

/// Posts `batches` one-record batches for three employees of acme; returns
/// the active seconds each employee's subject must end with.
async fn post_batches(
    url: &str,
    master: &MasterSecret,
    control: &Control,
    batches: usize,
) -> BTreeMap<String, i64> {
    let day = Utc::now().date_naive() - Days::new(1);
    let acme = TenantId::new("acme").unwrap();
    let mut expected = BTreeMap::new();
    for i in 0..batches {
        let employee = format!("employee-{:04}", i % 3);
        let h = header("acme", &employee, &format!("laptop-{:04}", i % 3));
        // Each batch its own minutes, and a distinct activity level, so a
        // lost or doubled batch changes the sums.
        let active = 1 + (i % 50) as u32;
        let batch = activity_batch(samples(ms(day, 8, 0) + i as i64 * 120_000, 2, active, 0));
        let (status, answer) = post(url, BATCH, seal_batch(master, &h, &batch)).await;
        assert_eq!(status, 202, "{answer}");
        *expected
            .entry(control.subject(&acme, &h.employee).await)
            .or_insert(0) += 2 * i64::from(active);
    }
    expected
}

/// The record batches of acme's objects that `dataset`'s table names,
/// read object by object through the lake's store (a local directory or S3
/// alike).
async fn batches(lake: &Lake, dataset: Dataset) -> Vec<arrow::array::RecordBatch> {
    let store = lake.store();
    let mut out = Vec::new();
    for path in committed_objects(lake, dataset, "acme").await {
        let bytes = store.get(&path).await.unwrap().bytes().await.unwrap();
        let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
            .unwrap()
            .build()
            .unwrap();
        out.extend(reader.map(Result::unwrap));
    }
    out
}

/// Active seconds per subject over acme's whole lake.
async fn active_by_subject(lake: &Lake) -> BTreeMap<String, i64> {
    let mut out = BTreeMap::new();
    for b in batches(lake, Dataset::Activity).await {
        // Files Delta rewrote (compaction) hold strings as views.
        let subject = arrow::compute::cast(b.column(0), &arrow::datatypes::DataType::Utf8).unwrap();
        let (subject, active) = (
            subject.as_string::<i32>(),
            b.column(4).as_primitive::<Int64Type>(),
        );
        for i in 0..b.num_rows() {
            *out.entry(subject.value(i).to_string()).or_insert(0) += active.value(i);
        }
    }
    out
}

/// Every object under `prefix` of the lake.
async fn objects(lake: &Lake, prefix: &str) -> Vec<ObjectPath> {
    lake.store()
        .list(Some(&ObjectPath::from(prefix)))
        .map(|meta| meta.unwrap().location)
        .collect()
        .await
}

fn parquet_files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(parquet_files(&path));
        } else if path.extension().is_some_and(|e| e == "parquet") {
            out.push(path);
        }
    }
    out
}

fn one_partition_spool(dir: &Path) -> Spool {
    Spool::open(SpoolConfig {
        partitions: 1,
        ..SpoolConfig::new(dir)
    })
    .unwrap()
}

/// Tenant acme on a local control plane, an embedded log of one partition
/// and an ingest node appending to it.
struct OneMachine {
    dir: tempfile::TempDir,
    master: MasterSecret,
    control: Control,
    spool: Spool,
    url: String,
}

impl OneMachine {
    async fn start() -> Self {
        Self::start_with(random_master()).await
    }

    async fn start_with(master: MasterSecret) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let control = Control::local_with(&master, &["acme"]).await;
        let spool = one_partition_spool(&dir.path().join("spool"));
        let producer: Arc<dyn LogProducer> = Arc::new(spool.producer());
        let url = common::start_ingest_on(
            master.clone(),
            control.cache.clone(),
            producer,
            &common::ingest_defaults(),
        )
        .await;
        Self {
            dir,
            master,
            control,
            spool,
            url,
        }
    }
}

/// A consumer whose first commit fails for good: the processor stops after
/// its lake commits and before the log hears of it, as if it died.
struct DiesBeforeCommit<C>(C);

#[async_trait]
impl<C: LogConsumer + Sync> LogConsumer for DiesBeforeCommit<C> {
    async fn poll(&mut self, max: usize, wait: Duration) -> Result<Vec<Delivered>, LogError> {
        self.0.poll(max, wait).await
    }
    async fn commit(&mut self, _: &[Resume]) -> Result<(), LogError> {
        Err(LogError::Fatal("the process died here".into()))
    }
    async fn end_offsets(&self) -> Result<Vec<Resume>, LogError> {
        self.0.end_offsets().await
    }
    async fn committed(&self) -> Result<Vec<Resume>, LogError> {
        self.0.committed().await
    }
}

fn config(max_records_per_flush: usize) -> ProcessorConfig {
    ProcessorConfig {
        group: "g".into(),
        max_records_per_flush,
        poll_wait: Duration::from_millis(100),
        ..ProcessorConfig::default()
    }
}

/// A processor dies after its chunk of 5 records is in the lake and
/// before the log's commit; its successor, reading from the log's commit,
/// cuts chunks of 7 and takes none of the 5 in again: the state table's
/// progress says they are in.
///
/// With `acme_lake`, acme's document names that location as its own lake
/// (registered in `lakes`): its rows must land there, and none in the
/// deployment's lake, which keeps the processors' state.
async fn replay_with_other_chunks(lakes: impl Fn() -> Lakes, acme_lake: Option<&str>) {
    tokio::time::timeout(GUARD, async {
        let OneMachine {
            // Bound, not ignored: the spool's folder lives as long as it.
            dir: _dir,
            master,
            control,
            spool,
            url,
        } = OneMachine::start().await;
        if let Some(location) = acme_lake {
            control.set_lake_url("acme", location).await;
        }
        let lake = || lakes().at(acme_lake).unwrap();
        let expected = post_batches(&url, &master, &control, 12).await;

        let mut doomed = Processor::new(
            DiesBeforeCommit(spool.consumer("g").unwrap()),
            control.cache.clone(),
            lakes(),
            config(5),
        );
        assert!(matches!(doomed.step().await, Err(ProcessorError::Log(_))));
        assert_eq!(doomed.stats().files_written, 1);
        drop(doomed);
        assert_eq!(
            committed_objects(&lake(), Dataset::Activity, "acme")
                .await
                .len(),
            1
        );

        let mut successor = Processor::new(
            spool.consumer("g").unwrap(),
            control.cache.clone(),
            lakes(),
            config(7),
        );
        successor.drain().await.unwrap();
        assert_eq!(
            successor.stats().records,
            7,
            "the first 5 are not read again"
        );
        assert_eq!(successor.stats().flushes_completed, 0);
        let committed = committed_objects(&lake(), Dataset::Activity, "acme").await;
        // Its first poll of 7 held the 5 already in: chunks 0-4, 5-6, 7-11.
        assert_eq!(committed.len(), 3, "{committed:?}");
        assert_eq!(
            objects(&lake(), "activity/tenant=acme").await.len(),
            3,
            "no object left over"
        );
        assert_eq!(active_by_subject(&lake()).await, expected);
        if acme_lake.is_some() {
            let home = lakes().home().clone();
            assert_eq!(
                committed_objects(&home, Dataset::Activity, "acme").await,
                vec![],
                "nothing of acme at home"
            );
            // The processors' own state stays in the deployment's lake.
            assert!(!objects(&home, "_candor/processor_state").await.is_empty());
            assert_eq!(objects(&lake(), "_candor").await, vec![]);
        }
    })
    .await
    .expect("test finished within its hang guard");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_successor_takes_in_nothing_the_lake_holds_already() {
    let dir = tempfile::tempdir().unwrap();
    replay_with_other_chunks(|| Lake::local(dir.path()).unwrap().into(), None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_an_s3_lake_a_successor_takes_in_nothing_the_lake_holds_already() {
    // A real S3-compatible server (moto, started by scripts/test or here).
    let (name, bucket) = candor_control::testkit::fresh_named_bucket("lake");
    let location = format!("s3://{name}/lake/eu");
    replay_with_other_chunks(
        || Lake::on_store(bucket.clone(), &location).unwrap().into(),
        None,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_tenants_own_s3_lake_a_successor_takes_in_nothing_it_holds_already() {
    // The deployment's lake in a local folder; acme's on a real
    // S3-compatible server (data residency).
    let dir = tempfile::tempdir().unwrap();
    let (name, bucket) = candor_control::testkit::fresh_named_bucket("residency");
    let location = format!("s3://{name}/eu");
    let lakes = || {
        Lakes::from(Lake::local(dir.path()).unwrap())
            .with_lake(
                &location,
                Lake::on_store(bucket.clone(), &location).unwrap(),
            )
            .unwrap()
    };
    replay_with_other_chunks(lakes, Some(&location)).await;
}

/// Runs `processor`'s first round until `store` has refused a commit of
/// its table at least once (the processor retries it), then stops it
/// there, as a SIGKILL would.
async fn stopped_at_a_refused_commit<C: LogConsumer + Sync>(
    mut processor: Processor<C>,
    store: &FaultyStore,
) {
    let round = tokio::spawn(async move { processor.step().await.map(|_| ()) });
    while store.refused() == 0 {
        assert!(!round.is_finished(), "the round ended: {:?}", round.await);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    round.abort();
    let _ = round.await;
}

/// A processor stopped at its state commit (its objects written) leaves
/// rows no reader sees; one stopped between its state commit and its
/// activity table's commit leaves a flush its successor completes. Either
/// way every row is in once, on a real S3-compatible server.
async fn stopped_at_a_commit(table: &str) {
    tokio::time::timeout(GUARD, async {
        let OneMachine {
            dir: _dir,
            master,
            control,
            spool,
            url,
        } = OneMachine::start().await;
        let expected = post_batches(&url, &master, &control, 12).await;
        let (name, bucket) = candor_control::testkit::fresh_named_bucket("stopped");
        let location = format!("s3://{name}/lake");
        let failing = FaultyStore::refusing_commits(bucket.clone(), "lake", table);
        let doomed = Processor::new(
            spool.consumer("g").unwrap(),
            control.cache.clone(),
            Lake::on_store(failing.clone(), &location).unwrap(),
            config(5),
        );
        stopped_at_a_refused_commit(doomed, &failing).await;
        let lake = Lake::on_store(bucket.clone(), &location).unwrap();
        let written = objects(&lake, "activity/tenant=acme").await;
        assert_eq!(written.len(), 1, "the doomed flush's object: {written:?}");
        assert_eq!(
            committed_objects(&lake, Dataset::Activity, "acme").await,
            vec![],
            "and no reader sees it"
        );

        let mut successor = Processor::new(
            spool.consumer("g").unwrap(),
            control.cache.clone(),
            lake.clone(),
            config(7),
        );
        successor.drain().await.unwrap();
        assert_eq!(active_by_subject(&lake).await, expected);
        let committed = committed_objects(&lake, Dataset::Activity, "acme").await;
        if table == "activity" {
            // The state was in: the successor committed the doomed flush's
            // very object, and did not take its records in again.
            assert_eq!(successor.stats().flushes_completed, 1);
            assert_eq!(successor.stats().records, 7);
            assert!(committed.contains(&written[0]), "{committed:?}");
            assert_eq!(committed.len(), 3, "chunks 0-4, 5-6 and 7-11");
        } else {
            assert_eq!(successor.stats().flushes_completed, 0);
            assert_eq!(successor.stats().records, 12);
            assert!(!committed.contains(&written[0]), "{committed:?}");
            // VACUUM deletes the object nobody committed, once old enough.
            let mut table = candor_lake::DatasetTable::open(&lake, Dataset::Activity)
                .await
                .unwrap();
            let vacuumed = table.vacuum(Duration::ZERO, Duration::ZERO).await.unwrap();
            assert_eq!(vacuumed, 1);
            let mut left = objects(&lake, "activity/tenant=acme").await;
            left.sort();
            assert_eq!(left, committed);
        }
    })
    .await
    .expect("test finished within its hang guard");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flush_stopped_before_its_state_commit_is_never_seen_and_vacuumed() {
    stopped_at_a_commit("_candor/processor_state").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flush_stopped_between_its_state_and_table_commits_is_completed_by_the_successor() {
    stopped_at_a_commit("activity").await;
}

/// Two processors that both claim partition 0: the first stalled (past its
/// session timeout, say) with its chunk worked on; its successor takes the
/// partition over and commits. The stalled one's state commit is refused,
/// and it adds no row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_processor_whose_successor_committed_commits_nothing() {
    tokio::time::timeout(GUARD, async {
        let OneMachine {
            dir,
            master,
            control,
            spool,
            url,
        } = OneMachine::start().await;
        let expected = post_batches(&url, &master, &control, 12).await;
        let _ = dir;
        let (name, bucket) = candor_control::testkit::fresh_named_bucket("stalled");
        let location = format!("s3://{name}/lake");
        let lake = || Lake::on_store(bucket.clone(), &location).unwrap();
        // The stalled one: held at its state commit, which it retries.
        let failing =
            FaultyStore::refusing_commits(bucket.clone(), "lake", "_candor/processor_state");
        let mut stalled = Processor::new(
            DiesBeforeCommit(spool.consumer("stalled").unwrap()),
            control.cache.clone(),
            Lake::on_store(failing.clone(), &location).unwrap(),
            ProcessorConfig {
                group: "g".into(),
                ..config(5)
            },
        );
        let held = tokio::spawn(async move {
            let outcome = stalled.step().await;
            (outcome, stalled.stats())
        });
        while failing.refused() == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // The successor reads the same partition and commits everything.
        let mut successor = Processor::new(
            spool.consumer("g").unwrap(),
            control.cache.clone(),
            lake(),
            config(7),
        );
        successor.drain().await.unwrap();
        assert_eq!(active_by_subject(&lake()).await, expected);
        let committed = committed_objects(&lake(), Dataset::Activity, "acme").await;

        // The stalled one wakes up: its commit is refused, nothing added.
        failing.disarm();
        let (outcome, _) = held.await.unwrap();
        assert!(
            matches!(
                &outcome,
                Err(ProcessorError::Lake(
                    candor_lake::LakeError::Superseded { .. }
                ))
            ),
            "{outcome:?}"
        );
        assert_eq!(
            committed_objects(&lake(), Dataset::Activity, "acme").await,
            committed
        );
        assert_eq!(active_by_subject(&lake()).await, expected);
    })
    .await
    .expect("test finished within its hang guard");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unopenable_record_is_dead_lettered_and_the_partition_moves_on() {
    tokio::time::timeout(GUARD, async {
        let OneMachine {
            dir,
            master,
            control,
            spool,
            url,
        } = OneMachine::start().await;
        let dead = one_partition_spool(&dir.path().join("dead-letters"));
        // A record no key opens, first in the partition, then real batches.
        spool
            .producer()
            .append(vec![Record {
                key: "acme/laptop-0000".into(),
                value: b"CNDL not a sealed record".to_vec(),
            }])
            .await
            .unwrap();
        let expected = post_batches(&url, &master, &control, 4).await;

        let lake_dir = dir.path().join("lake");
        let mut processor = Processor::new(
            spool.consumer("g").unwrap(),
            control.cache.clone(),
            Lake::local(&lake_dir).unwrap(),
            ProcessorConfig::default(),
        )
        .with_dead_letters(Arc::new(dead.producer()));
        processor.drain().await.unwrap();
        assert_eq!(processor.stats().records, 5);
        assert_eq!(processor.stats().records_undecodable, 1);
        assert_eq!(
            active_by_subject(&Lake::local(&lake_dir).unwrap()).await,
            expected
        );

        let mut letters = dead.consumer("operator").unwrap();
        let got = letters.poll(10, Duration::from_secs(5)).await.unwrap();
        assert_eq!(got.len(), 1);
        let letter: DeadLetter = serde_json::from_slice(&got[0].value).unwrap();
        assert_eq!((letter.partition, letter.offset), (0, 0));
        assert_eq!(letter.key, "acme/laptop-0000");
        assert_eq!(letter.value_hex, hex::encode(b"CNDL not a sealed record"));
        assert!(letter.reason.contains("malformed"), "{}", letter.reason);
    })
    .await
    .expect("test finished within its hang guard");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_in_the_log_twice_is_counted_once_even_across_a_restart() {
    tokio::time::timeout(GUARD, async {
        let OneMachine {
            dir,
            master,
            control,
            spool,
            url,
        } = OneMachine::start().await;
        let expected = post_batches(&url, &master, &control, 6).await;
        // Every record appended a second time, as when ingest answered 503
        // for an append that in fact landed and the agent sent it again.
        let copy_all = || async {
            let mut reader = spool
                .consumer(&format!("copy-{}", rand::random::<u32>()))
                .unwrap();
            let mut records = Vec::new();
            loop {
                let got = reader.poll(100, Duration::from_millis(100)).await.unwrap();
                if got.is_empty() {
                    break;
                }
                records.extend(got.into_iter().map(|d| Record {
                    key: String::from_utf8(d.key).unwrap(),
                    value: d.value,
                }));
            }
            spool.producer().append(records).await.unwrap();
        };
        let lake_dir = dir.path().join("lake");
        let processor = || {
            Processor::new(
                spool.consumer("g").unwrap(),
                control.cache.clone(),
                Lake::local(&lake_dir).unwrap(),
                ProcessorConfig {
                    max_records_per_flush: 4,
                    ..ProcessorConfig::default()
                },
            )
        };
        let sums = || async { active_by_subject(&Lake::local(&lake_dir).unwrap()).await };

        // Copies within one processor's run: caught from memory.
        copy_all().await;
        let mut first = processor();
        first.drain().await.unwrap();
        assert_eq!(first.stats().records, 12);
        assert_eq!(first.stats().events_duplicate, 12, "6 batches of 2 events");
        assert_eq!(sums().await, expected);
        drop(first);

        // Copies after a restart: the new processor reloads the ids from the lake.
        copy_all().await;
        let mut second = processor();
        second.drain().await.unwrap();
        assert_eq!(second.stats().records, 12);
        assert_eq!(second.stats().events_duplicate, 24);
        assert_eq!(sums().await, expected);
    })
    .await
    .expect("test finished within its hang guard");
}

/// Across an upgrade the log holds both record layouts, and an agent's
/// retry may be appended by an ingest node of each: the batch counts once,
/// its version 2 record and its version 1 records alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_in_both_record_layouts_counts_once() {
    tokio::time::timeout(GUARD, async {
        let OneMachine {
            dir,
            master,
            control,
            spool,
            url,
        } = OneMachine::start().await;
        let mut older = common::ingest_defaults();
        older.ingest.log_record_format = match common::record_format() {
            RecordFormat::V1 => 2,
            RecordFormat::V2 => 1,
        };
        let older_url = common::start_ingest_on(
            master.clone(),
            control.cache.clone(),
            Arc::new(spool.producer()),
            &older,
        )
        .await;
        let day = Utc::now().date_naive() - Days::new(1);
        let acme = TenantId::new("acme").unwrap();
        let mut expected = BTreeMap::new();
        for i in 0..4u32 {
            let h = header("acme", &format!("employee-{i}"), &format!("laptop-{i}"));
            let start = ms(day, 9, 0) + i64::from(i) * 120_000;
            let mut batch = activity_batch(samples(start, 2, 10 + i, 0));
            batch.app_usage.push(AppUsage {
                start_ms: start,
                duration_s: 60,
                app: "Editor".into(),
                host: None,
            });
            let body = seal_batch(&master, &h, &batch);
            // Each node has its own replay memory: both append the batch.
            for url in [&url, &older_url] {
                let (status, answer) = post(url, BATCH, body.clone()).await;
                assert_eq!(status, 202, "{answer}");
                assert_eq!(answer["events"], 3, "not a replay: {answer}");
            }
            expected.insert(
                control.subject(&acme, &h.employee).await,
                2 * i64::from(10 + i),
            );
        }
        let lake_dir = dir.path().join("lake");
        let mut processor = Processor::new(
            spool.consumer("g").unwrap(),
            control.cache.clone(),
            Lake::local(&lake_dir).unwrap(),
            ProcessorConfig {
                max_records_per_flush: 3,
                ..ProcessorConfig::default()
            },
        );
        processor.drain().await.unwrap();
        // 4 batches: one version 2 record and two version 1 records each.
        assert_eq!(processor.stats().records, 12);
        assert_eq!(processor.stats().events, 2 * 4 * 3);
        assert_eq!(processor.stats().events_duplicate, 4 * 3);
        let lake = Lake::local(&lake_dir).unwrap();
        assert_eq!(active_by_subject(&lake).await, expected);
        let app_seconds: i64 = batches(&lake, Dataset::AppUsage)
            .await
            .iter()
            .map(|b| {
                let seconds = b.column_by_name("seconds").unwrap();
                arrow::compute::sum(seconds.as_primitive::<Int64Type>()).unwrap_or(0)
            })
            .sum();
        assert_eq!(app_seconds, 4 * 60);
    })
    .await
    .expect("test finished within its hang guard");
}

/// GPS metres and moving seconds of acme's whole lake.
async fn gps_totals(lake: &Lake) -> (f64, i64) {
    let (mut metres, mut moving_s) = (0.0, 0);
    for b in batches(lake, Dataset::Gps).await {
        let column = |name: &str| b.column(b.schema().index_of(name).unwrap()).clone();
        let (distance, moving) = (column("distance_m"), column("moving_s"));
        for i in 0..b.num_rows() {
            metres += distance.as_primitive::<Float64Type>().value(i);
            moving_s += moving.as_primitive::<Int64Type>().value(i);
        }
    }
    (metres, moving_s)
}

/// One phone drives north 111 m a minute and uploads every 5 minutes. One
/// processor that reads everything at once counts all 29 one-minute
/// segments, the 5 between uploads included; so does a run where every
/// record is a chunk of its own, handled by a processor that never saw the
/// partition before (as after a crash or a rebalance), the first of which
/// dies before its commit: the carried points come from the lake.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_across_uploads_is_the_same_whoever_processes_each_chunk() {
    tokio::time::timeout(GUARD, async {
        let OneMachine {
            dir,
            master,
            control,
            spool,
            url,
        } = OneMachine::start().await;
        let day = Utc::now().date_naive() - Days::new(1);
        for upload in 0..6 {
            let h = header("acme", "employee-0001", "phone-0001");
            let gps = (0..5)
                .map(|k| {
                    let minute = upload * 5 + k;
                    GpsPoint {
                        at_ms: ms(day, 9, 0) + minute * 60_000,
                        lat: 48.0 + 0.001 * minute as f64,
                        lon: 11.0,
                        accuracy_m: 5.0,
                    }
                })
                .collect();
            let batch = Batch {
                gps,
                ..activity_batch(vec![])
            };
            let (status, answer) = post(&url, BATCH, seal_batch(&master, &h, &batch)).await;
            assert_eq!(status, 202, "{answer}");
        }
        let processor = |group: &str, max_records_per_flush| {
            Processor::new(
                spool.consumer(group).unwrap(),
                control.cache.clone(),
                Lake::local(dir.path().join(group)).unwrap(),
                ProcessorConfig {
                    group: group.into(),
                    max_records_per_flush,
                    poll_wait: Duration::from_millis(100),
                    ..ProcessorConfig::default()
                },
            )
        };
        processor("whole", 100).drain().await.unwrap();
        let whole = gps_totals(&Lake::local(dir.path().join("whole")).unwrap()).await;
        let step = haversine_m((48.0, 11.0), (48.001, 11.0));
        assert!((whole.0 - 29.0 * step).abs() < 1e-6, "{whole:?}");
        assert_eq!(whole.1, 29 * 60);

        let mut doomed = Processor::new(
            DiesBeforeCommit(spool.consumer("pieces").unwrap()),
            control.cache.clone(),
            Lake::local(dir.path().join("pieces")).unwrap(),
            ProcessorConfig {
                group: "pieces".into(),
                max_records_per_flush: 2,
                poll_wait: Duration::from_millis(100),
                ..ProcessorConfig::default()
            },
        );
        assert!(matches!(doomed.step().await, Err(ProcessorError::Log(_))));
        drop(doomed);
        let mut chunks = 0;
        while processor("pieces", 1).step().await.unwrap() > 0 {
            chunks += 1;
        }
        assert_eq!(chunks, 6);
        let pieces = gps_totals(&Lake::local(dir.path().join("pieces")).unwrap()).await;
        assert!((pieces.0 - whole.0).abs() < 1e-6, "{pieces:?} vs {whole:?}");
        assert_eq!(pieces.1, whole.1);
    })
    .await
    .expect("test finished within its hang guard");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_s3_outage_stops_commits_and_the_processor_catches_up_when_it_returns() {
    tokio::time::timeout(GUARD, async {
        let OneMachine {
            dir: _dir,
            master,
            control,
            spool,
            url,
        } = OneMachine::start().await;
        // The lake's S3 server behind a proxy the test can cut.
        let proxy = TcpProxy::start(&candor_control::testkit::s3_endpoint()).await;
        let (bucket, store) = named_s3_client(&proxy.endpoint(), "lake-outage");
        let lake = Lake::on_store(store, &format!("s3://{bucket}/lake")).unwrap();
        proxy.cut();
        let expected = post_batches(&url, &master, &control, 6).await;

        let metrics = ProcessorMetrics::default();
        let mut processor = Processor::new(
            spool.consumer("g").unwrap(),
            control.cache.clone(),
            lake.clone(),
            ProcessorConfig::default(),
        )
        .with_metrics(metrics.clone());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let running = tokio::spawn(async move {
            processor
                .run(async {
                    let _ = stopped.await;
                })
                .await
        });

        // While S3 is unreachable: retries, and not one commit.
        while metrics.lake_retries.get() < 2 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(metrics.commits.get(), 0);
        assert!(
            !running.is_finished(),
            "the processor waits; it does not stop"
        );

        // S3 is back: the processor catches up by itself, losing nothing.
        proxy.restore();
        while metrics.commits.get() == 0 || active_by_subject(&lake).await != expected {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(metrics.records.get(), 6, "each record read once");
        stop.send(()).unwrap();
        running.await.unwrap().unwrap();
    })
    .await
    .expect("test finished within its hang guard");
}

/// A child process killed when dropped, so a failed assertion leaves no
/// processor running.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A `candor processor` child on the test broker.
fn processor_child(
    kafka: &candor_log::kafka::KafkaConfig,
    control: &Path,
    lake: &Path,
    master_hex: &str,
    extra: &[&str],
) -> KillOnDrop {
    let child = Command::new(env!("CARGO_BIN_EXE_candor"))
        .arg("processor")
        .args(["--lake", lake.to_str().unwrap()])
        .env("CANDOR_KAFKA__BROKERS", &kafka.brokers)
        .env("CANDOR_KAFKA__TOPIC", &kafka.topic)
        .env(
            "CANDOR_KAFKA__DEAD_LETTER_TOPIC",
            format!("{}-dead", kafka.topic),
        )
        .env(
            "CANDOR_PROCESSOR__GROUP",
            format!("{}-processor", kafka.topic),
        )
        .env("CANDOR_CONTROL__URL", control)
        .args(["--set", "processor.max_records_per_flush=3"])
        // A killed member holds its partitions until its session times out;
        // the broker's minimum keeps the test's restarts quick.
        .args(["--set", "kafka.session_timeout_ms=6000"])
        .args(extra)
        .env("CANDOR_MASTER_SECRET", master_hex)
        .env_remove("CANDOR_MASTER_SECRET_FILE")
        .env("CANDOR_LOG", "warn")
        .spawn()
        .expect("candor processor starts");
    KillOnDrop(child)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_flush_then_restart_keeps_every_row_exactly_once() {
    tokio::time::timeout(GUARD, async {
        let kafka = common::fresh_topic("kill-processor", 2).await;
        let master_hex = hex::encode(rand::random::<[u8; 32]>());
        let master = MasterSecret::from_hex(&master_hex).unwrap();
        let store = TestStore::local();
        let TestStore::Local(control_dir, _) = &store else {
            unreachable!("a local store")
        };
        // The documents live under the test deployment's prefix.
        let control_dir = control_dir.path().join(TestStore::prefix().as_ref());
        let control = Control::new(store, &master);
        control.create_tenant("acme").await;
        let url = common::start_ingest(
            master.clone(),
            control.cache.clone(),
            &kafka,
            &common::ingest_defaults(),
        )
        .await;
        let expected = post_batches(&url, &master, &control, 90).await;
        let lake = tempfile::tempdir().unwrap();

        // Kill the processor three times while it works, each time once it
        // has written more objects than before, so it dies in the middle of
        // its stream of flushes: between its objects, between the objects
        // and the state commit, between that and the tables' commits, or
        // before the log's commit.
        let mut seen = 0;
        // The first child also serves its metrics.
        let metrics_addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .to_string();
        for round in 0..3 {
            let extra: &[&str] = if round == 0 {
                &["--listen", &metrics_addr]
            } else {
                &[]
            };
            let mut child = processor_child(&kafka, &control_dir, lake.path(), &master_hex, extra);
            loop {
                let now = parquet_files(lake.path()).len();
                if now > seen {
                    seen = now;
                    break;
                }
                assert!(
                    child.0.try_wait().unwrap().is_none(),
                    "the processor died by itself"
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            if round == 0 {
                let text = reqwest::get(format!("http://{metrics_addr}/metrics"))
                    .await
                    .unwrap()
                    .text()
                    .await
                    .unwrap();
                assert!(
                    text.contains("candor_processor_files_written_total")
                        && text.contains("candor_processor_flush_seconds_bucket"),
                    "{text}"
                );
            }
            // SIGKILL: no shutdown path runs.
            drop(child);
        }
        let mut last =
            processor_child(&kafka, &control_dir, lake.path(), &master_hex, &["--drain"]);
        let status = tokio::task::spawn_blocking(move || {
            let status = last.0.wait();
            (status, last)
        })
        .await
        .unwrap()
        .0
        .unwrap();
        assert!(status.success(), "{status}");
        let local = Lake::local(lake.path()).unwrap();
        assert_eq!(active_by_subject(&local).await, expected);
        // Engines that are not Candor's read the same sums, before and
        // after a compaction, whatever the killed flushes left in the
        // folders.
        let total: i64 = expected.values().sum();
        let rows = |read: &serde_json::Value, engine: &str| {
            let acme = &read[engine]["activity"][0];
            assert_eq!(acme[0], "acme", "{engine}: {read}");
            assert_eq!(acme[2], total, "{engine}: {read}");
            acme[1].as_i64().unwrap()
        };
        let before = candor_lake::testkit::external_sums(lake.path(), &[("activity", "active_s")]);
        let rows_before = rows(&before, "deltalake");
        assert_eq!(rows(&before, "duckdb"), rows_before);
        let compacted = candor_lake::jobs::compaction::compact(&local, &Default::default())
            .await
            .unwrap();
        assert!(compacted.objects_merged > 0, "{compacted:?}");
        let after = candor_lake::testkit::external_sums(lake.path(), &[("activity", "active_s")]);
        for engine in ["deltalake", "duckdb"] {
            assert_eq!(
                rows(&after, engine),
                rows_before,
                "{engine}: compaction changed no row"
            );
        }
        assert_eq!(active_by_subject(&local).await, expected);
    })
    .await
    .expect("test finished within its hang guard");
}

/// A lake of many small flushes (30 batches of acme's three employees,
/// two records per flush) on one machine, for the operator's jobs, run as
/// `candor` processes.
struct JobsLake {
    machine: OneMachine,
    master_hex: String,
    lake_dir: PathBuf,
    lake: Lake,
    control_url: String,
    /// Active seconds per subject.
    expected: BTreeMap<String, i64>,
}

impl JobsLake {
    async fn start() -> Self {
        let master_hex = hex::encode(rand::random::<[u8; 32]>());
        let machine = OneMachine::start_with(MasterSecret::from_hex(&master_hex).unwrap()).await;
        let expected = post_batches(&machine.url, &machine.master, &machine.control, 30).await;
        let lake_dir = machine.dir.path().join("lake");
        let lake = Lake::local(&lake_dir).unwrap();
        // Small flushes: many objects for compaction to merge.
        let mut processor = Processor::new(
            machine.spool.consumer("g").unwrap(),
            machine.control.cache.clone(),
            lake.clone(),
            config(2),
        );
        processor.drain().await.unwrap();
        assert_eq!(active_by_subject(&lake).await, expected);
        let control_url = machine
            .control
            .config(candor::config::Role::Processor)
            .control
            .url
            .unwrap();
        Self {
            machine,
            master_hex,
            lake_dir,
            lake,
            control_url,
            expected,
        }
    }

    /// `candor <args>` on this lake and control plane.
    fn candor(&self, args: &[&str]) -> KillOnDrop {
        KillOnDrop(
            Command::new(env!("CARGO_BIN_EXE_candor"))
                .args(args)
                .args([
                    "--lake",
                    self.lake_dir.to_str().unwrap(),
                    "--control",
                    &self.control_url,
                ])
                .env("CANDOR_MASTER_SECRET", &self.master_hex)
                .env_remove("CANDOR_MASTER_SECRET_FILE")
                .env("CANDOR_LOG", "warn")
                .spawn()
                .expect("candor starts"),
        )
    }

    /// `candor <args>` run to its end; whether it succeeded.
    async fn candor_to_the_end(&self, args: &[&str]) -> bool {
        let mut child = self.candor(args);
        let status = tokio::task::spawn_blocking(move || {
            let status = child.0.wait().unwrap();
            (status, child)
        });
        status.await.unwrap().0.success()
    }

    /// Acme's active seconds as the `deltalake` package and DuckDB read them.
    fn external_total(&self) -> [i64; 2] {
        let read = candor_lake::testkit::external_sums(&self.lake_dir, &[("activity", "active_s")]);
        ["deltalake", "duckdb"].map(|engine| read[engine]["activity"][0][2].as_i64().unwrap())
    }

    /// employee-0000's subject, and the sums without it.
    async fn erased(&self) -> (String, BTreeMap<String, i64>) {
        let acme = TenantId::new("acme").unwrap();
        let erased = self
            .machine
            .control
            .subject(
                &acme,
                &candor_schemas::EmployeeId::new("employee-0000").unwrap(),
            )
            .await;
        let without = self
            .expected
            .iter()
            .filter(|(subject, _)| **subject != erased)
            .map(|(s, n)| (s.clone(), *n))
            .collect();
        (erased, without)
    }

    /// How many of acme's audit entries have `action`.
    async fn audited(&self, action: &str) -> usize {
        let acme = TenantId::new("acme").unwrap();
        let entries = self.machine.control.admin.audit_log().entries(&acme).await;
        entries
            .unwrap()
            .iter()
            .filter(|e| e.event.action == action)
            .count()
    }
}

const ERASE: [&str; 6] = [
    "retention",
    "erase",
    "--tenant",
    "acme",
    "--employee",
    "employee-0000",
];

/// The operator's compaction and erasure, as `candor` processes SIGKILLed
/// in the middle of their work: every table still reads exact sums (each
/// Delta operation commits whole or not at all), through Candor and
/// through the external readers, and the same command run again finishes
/// the work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_and_erasure_killed_midway_leave_exact_sums_and_finish_when_run_again() {
    tokio::time::timeout(GUARD, async {
        let jobs = JobsLake::start().await;
        let (lake, lake_dir, expected) = (&jobs.lake, &jobs.lake_dir, &jobs.expected);
        let total: i64 = expected.values().sum();
        let acme_files = || parquet_files(&lake_dir.join("activity/tenant=acme")).len();

        // Compaction, killed once it has written a file no version names.
        let files_before = acme_files();
        let mut compacting = jobs.candor(&["compact"]);
        let killed = loop {
            if let Some(status) = compacting.0.try_wait().unwrap() {
                break !status.success();
            }
            if acme_files() > files_before {
                drop(compacting);
                break true;
            }
            tokio::task::yield_now().await;
        };
        assert!(killed, "compaction ended before it could be killed");
        assert_eq!(active_by_subject(lake).await, *expected);
        assert_eq!(jobs.external_total(), [total, total]);
        assert!(jobs.candor_to_the_end(&["compact"]).await);
        assert!(
            committed_objects(lake, Dataset::Activity, "acme")
                .await
                .len()
                < files_before,
            "compacted"
        );
        assert_eq!(active_by_subject(lake).await, *expected);
        assert_eq!(jobs.external_total(), [total, total]);

        // Erasure, killed once it has put its start on record: each table
        // holds the employee's rows or none, never half.
        let (_, without) = jobs.erased().await;
        let mut erasing = jobs.candor(&ERASE);
        loop {
            if erasing.0.try_wait().unwrap().is_some()
                || jobs.audited("lake.erasure.start").await > 0
            {
                break;
            }
            tokio::task::yield_now().await;
        }
        drop(erasing);
        let now = active_by_subject(lake).await;
        assert!(
            now == *expected || now == without,
            "half an erasure: {now:?}"
        );
        assert!(jobs.candor_to_the_end(&ERASE).await);
        assert_eq!(active_by_subject(lake).await, without);
        let total_without: i64 = without.values().sum();
        assert_eq!(jobs.external_total(), [total_without, total_without]);
        assert_eq!(jobs.audited("lake.erasure").await, 1);
    })
    .await
    .expect("test finished within its hang guard");
}

/// An erasure stopped in the middle of its VACUUM, as a SIGKILL there
/// leaves it: its DELETE committed, one old file deleted and the others
/// not. Every reader reads the lake without the employee already; the old
/// files still holding the employee's rows are the only trace, and the
/// same erasure run again (`candor retention erase`) deletes them, though
/// it finds no row left to delete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_erasure_stopped_midway_through_its_vacuum_is_finished_when_run_again() {
    use candor_lake::jobs::erasure::{ErasureRequest, erase_subject};
    tokio::time::timeout(GUARD, async {
        let jobs = JobsLake::start().await;
        let (erased, without) = jobs.erased().await;
        let (_, holding_before, _) = common::lake::rows_of_subject(&jobs.lake_dir, &erased);
        assert!(holding_before.len() >= 2, "{holding_before:?}");

        // The erasure, through stores that let one deletion through.
        let gate = DeleteGate::after(1);
        let held = Lake::local(&jobs.lake_dir).unwrap().layered(|inner| {
            FaultyStore::holding_deletes(inner, gate.clone()) as Arc<dyn object_store::ObjectStore>
        });
        let control = &jobs.machine.control;
        let (docs, audit) = (control.store.documents(), control.admin.audit_log().clone());
        let request = ErasureRequest {
            tenant: TenantId::new("acme").unwrap(),
            subject: erased.clone(),
            actor: "operator".into(),
            source: "test".into(),
        };
        let erasing = tokio::spawn(async move {
            let now = Utc::now().timestamp_millis();
            erase_subject(&held.into(), &docs, &audit, &request, now).await
        });
        while !gate.holding() {
            assert!(!erasing.is_finished(), "{:?}", erasing.await);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        erasing.abort();
        let _ = erasing.await;

        // The delete is in: every reader reads the lake without the employee.
        assert_eq!(active_by_subject(&jobs.lake).await, without);
        let total_without: i64 = without.values().sum();
        assert_eq!(jobs.external_total(), [total_without, total_without]);
        // The old files are not all gone (the one deletion let through
        // ends on its own), and the outcome is not on record.
        let left_behind = loop {
            let (_, holding, _) = common::lake::rows_of_subject(&jobs.lake_dir, &erased);
            if holding.len() < holding_before.len() {
                break holding;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        assert_eq!(left_behind.len(), holding_before.len() - 1);
        assert_eq!(jobs.audited("lake.erasure.start").await, 1);
        assert_eq!(jobs.audited("lake.erasure").await, 0);

        assert!(jobs.candor_to_the_end(&ERASE).await);
        let (rows, holding, read) = common::lake::rows_of_subject(&jobs.lake_dir, &erased);
        assert_eq!(
            (rows, holding),
            (0, Vec::<String>::new()),
            "{read} objects read"
        );
        assert!(read > 0);
        assert_eq!(active_by_subject(&jobs.lake).await, without);
        assert_eq!(jobs.external_total(), [total_without, total_without]);
        assert_eq!(jobs.audited("lake.erasure").await, 1);
    })
    .await
    .expect("test finished within its hang guard");
}
