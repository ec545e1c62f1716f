//! Converting the previous release's hive-Parquet lake in place: a table
//! is refused over its folders until it is converted; conversion commits
//! every live object, leaves out the members of a finished merge, keeps
//! those of an unfinished one, refuses a lake with flush intents unless
//! its processors were drained, and is harmless to run again.

use std::sync::Arc;

use arrow::array::{Int64Array, RecordBatch, StringArray, TimestampMillisecondArray};
use candor_lake::jobs::convert::convert;
use candor_lake::{DatasetTable, Lake, LakeError, PartitionKey};
use candor_schemas::TenantId;
use candor_schemas::datasets::Dataset;
use object_store::path::Path as ObjectPath;

fn activity_rows(rows: usize, tracked_s: i64) -> RecordBatch {
    RecordBatch::try_new(
        Dataset::Activity.lake_schema(),
        vec![
            Arc::new(StringArray::from(vec!["s1"; rows])),
            Arc::new(StringArray::from(vec![Some("sales"); rows])),
            Arc::new(
                TimestampMillisecondArray::from(
                    (0..rows as i64)
                        .map(|i| 1_772_323_200_000 + i * 900_000)
                        .collect::<Vec<_>>(),
                )
                .with_timezone("UTC"),
            ),
            Arc::new(Int64Array::from(vec![tracked_s; rows])),
            Arc::new(Int64Array::from(vec![0; rows])),
            Arc::new(Int64Array::from(vec![0; rows])),
            Arc::new(Int64Array::from(vec![1; rows])),
        ],
    )
    .unwrap()
}

async fn put(lake: &Lake, date: &str, name: &str, rows: usize, tracked_s: i64) {
    let key = PartitionKey {
        dataset: Dataset::Activity,
        tenant: TenantId::new("acme").unwrap(),
        date: date.into(),
    };
    lake.write_parquet(&key.object_path(name), &activity_rows(rows, tracked_s))
        .await
        .unwrap();
}

async fn put_text(lake: &Lake, path: &str, text: &str) {
    lake.put_durable(&ObjectPath::from(path), text.as_bytes().to_vec().into())
        .await
        .unwrap();
}

/// Tracked seconds of acme's rows, as the table names them.
async fn tracked(lake: &Lake) -> i64 {
    let table = DatasetTable::load(lake, Dataset::Activity)
        .await
        .unwrap()
        .unwrap();
    let ctx = datafusion::prelude::SessionContext::new();
    ctx.register_table(
        "activity",
        table
            .tenant_provider(&TenantId::new("acme").unwrap())
            .await
            .unwrap(),
    )
    .unwrap();
    let batches = ctx
        .sql("SELECT CAST(SUM(tracked_s) AS BIGINT) FROM activity")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    arrow::compute::sum(
        batches[0]
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap(),
    )
    .unwrap_or(0)
}

#[tokio::test]
async fn the_previous_releases_lake_is_converted_in_place_and_counted_once() {
    let dir = tempfile::tempdir().unwrap();
    let lake = Lake::local(dir.path()).unwrap();
    let day = "2026-03-01";
    let folder = format!("activity/tenant=acme/date={day}");
    // Two flushes, merged by a finished compaction whose members were not
    // yet deleted: the merged object stands for them.
    let flush = |n: u64| format!("part-00000-{:020}-{:020}.parquet", n * 10, n * 10 + 9);
    put(&lake, day, &flush(0), 2, 100).await;
    put(&lake, day, &flush(1), 3, 100).await;
    put(
        &lake,
        day,
        "compact-00000000001772323200000-000001.parquet",
        5,
        100,
    )
    .await;
    put_text(
        &lake,
        &format!("{folder}/compact-00000000001772323200000-000001.members.json"),
        &format!(r#"{{"objects":["{}","{}"]}}"#, flush(0), flush(1)),
    )
    .await;
    // A merge that never wrote its object: its members are the data.
    put(&lake, day, &flush(2), 1, 7).await;
    put_text(
        &lake,
        &format!("{folder}/compact-00000000001772323300000-000001.members.json"),
        &format!(r#"{{"objects":["{}"]}}"#, flush(2)),
    )
    .await;
    put(&lake, "2026-03-02", &flush(3), 4, 10).await;

    // This release will not start a table over those folders.
    let refused = DatasetTable::open(&lake, Dataset::Activity).await;
    assert!(
        matches!(&refused, Err(LakeError::Refused(e)) if e.contains("candor lake convert")),
        "{:?}",
        refused.err()
    );
    assert!(!dir.path().join("activity/_delta_log").exists());

    let done = convert(&lake).await.unwrap();
    assert_eq!((done.tables, done.already), (4, 0), "{done:?}");
    assert_eq!(
        done.objects, 3,
        "the merged object, the unmerged flush, the other day"
    );
    assert_eq!(done.replaced, 2);
    assert_eq!(done.rows, 5 + 1 + 4);
    assert_eq!(tracked(&lake).await, 5 * 100 + 7 + 4 * 10);

    // Converted, the table opens; a second conversion changes nothing.
    let table = DatasetTable::open(&lake, Dataset::Activity).await.unwrap();
    let again = convert(&lake).await.unwrap();
    assert_eq!((again.tables, again.already), (0, 4));
    let reloaded = DatasetTable::open(&lake, Dataset::Activity).await.unwrap();
    assert_eq!(reloaded.version(), table.version());
    assert_eq!(tracked(&lake).await, 5 * 100 + 7 + 4 * 10);
}

#[tokio::test]
async fn a_lake_with_flush_intents_is_converted_only_once_its_processors_drained() {
    let dir = tempfile::tempdir().unwrap();
    let lake = Lake::local(dir.path()).unwrap();
    put(
        &lake,
        "2026-03-01",
        "part-00000-00000000000000000000-00000000000000000009.parquet",
        2,
        1,
    )
    .await;
    put_text(
        &lake,
        "_processor/g/partition-00000.json",
        r#"{"partition":0}"#,
    )
    .await;
    let control = tempfile::tempdir().unwrap();
    let docs = candor_control::DocumentStore::new(
        Arc::new(object_store::local::LocalFileSystem::new_with_prefix(control.path()).unwrap()),
        &ObjectPath::from("deployment"),
    );
    let lakes = candor_lake::Lakes::from(lake.clone());
    let refused = candor_lake::jobs::convert::convert_all(&lakes, &docs, false).await;
    assert!(
        matches!(&refused, Err(LakeError::Refused(e)) if e.contains("--drain")),
        "{refused:?}"
    );
    assert!(
        DatasetTable::load(&lake, Dataset::Activity)
            .await
            .unwrap()
            .is_none()
    );
    let done = candor_lake::jobs::convert::convert_all(&lakes, &docs, true)
        .await
        .unwrap();
    assert_eq!(done.objects, 1);
    assert_eq!(tracked(&lake).await, 2);
}
