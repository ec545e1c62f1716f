//! Each dataset's Delta table: created once, appended to with the log
//! progress that makes a flush exactly-once, refused to a writer whose
//! source moved on, and read back by delta-rs's own DataFusion reader (an
//! engine other than the query node's), on a local directory and on a real
//! S3-compatible server.

use std::sync::Arc;

use arrow::array::{Array, Int64Array, RecordBatch, StringArray, TimestampMillisecondArray};
use candor_lake::{DatasetTable, Lake, LakeError, NewObject, PartitionKey, Prior, Progress};
use candor_schemas::TenantId;
use candor_schemas::datasets::Dataset;
use datafusion::prelude::SessionContext;

/// `rows` activity rows of `subject`, each of 60 tracked seconds.
fn activity_rows(subject: &str, rows: usize) -> RecordBatch {
    let schema = Dataset::Activity.lake_schema();
    let n = rows;
    RecordBatch::try_new(
        schema,
        vec![
            Arc::new(StringArray::from(vec![subject; n])),
            Arc::new(StringArray::from(vec![Some("sales"); n])),
            Arc::new(
                TimestampMillisecondArray::from(
                    (0..n as i64)
                        .map(|i| 1_772_323_200_000 + i * 900_000)
                        .collect::<Vec<_>>(),
                )
                .with_timezone("UTC"),
            ),
            Arc::new(Int64Array::from(vec![60; n])),
            Arc::new(Int64Array::from(vec![45; n])),
            Arc::new(Int64Array::from(vec![15; n])),
            Arc::new(Int64Array::from(vec![4; n])),
        ],
    )
    .unwrap()
}

/// Writes `rows` rows of `tenant` as one durable object and describes it
/// for a commit.
async fn write_object(lake: &Lake, tenant: &str, name: &str, rows: usize) -> NewObject {
    write_object_on(lake, tenant, "2026-03-01", name, rows).await
}

/// [`write_object`] into the partition of `date`.
async fn write_object_on(
    lake: &Lake,
    tenant: &str,
    date: &str,
    name: &str,
    rows: usize,
) -> NewObject {
    let key = PartitionKey {
        dataset: Dataset::Activity,
        tenant: TenantId::new(tenant).unwrap(),
        date: date.into(),
    };
    let batch = activity_rows(&format!("{tenant}-subject"), rows);
    let size = lake
        .write_parquet(&key.object_path(name), &batch)
        .await
        .unwrap();
    NewObject {
        key,
        file_name: name.to_string(),
        size: size as u64,
        rows: rows as u64,
    }
}

/// The progress of `app_id` through `version`, committed provided the
/// table's last progress of it is exactly `after`.
fn exactly(app_id: &str, version: i64, after: Option<i64>) -> [(Progress, Prior); 1] {
    let progress = Progress {
        app_id: app_id.to_string(),
        version,
    };
    [(progress, Prior::Exactly(after))]
}

/// The sum of `tracked_s` per tenant at the table's latest version, read
/// by delta-rs's DataFusion table provider through the lake's store.
async fn tracked_by_tenant(lake: &Lake) -> Vec<(String, i64)> {
    let table = DatasetTable::open(lake, Dataset::Activity).await.unwrap();
    sum_by_tenant(table.delta()).await
}

async fn sum_by_tenant(table: &deltalake::DeltaTable) -> Vec<(String, i64)> {
    let ctx = SessionContext::new();
    table.update_datafusion_session(&ctx.state()).unwrap();
    ctx.register_table("activity", table.table_provider().await.unwrap())
        .unwrap();
    let batches = ctx
        .sql("SELECT tenant, SUM(tracked_s) FROM activity GROUP BY tenant ORDER BY tenant")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let mut out = Vec::new();
    for batch in batches {
        let tenants =
            arrow::compute::cast(batch.column(0), &arrow::datatypes::DataType::Utf8).unwrap();
        let tenants = tenants.as_any().downcast_ref::<StringArray>().unwrap();
        let sums = batch
            .column(1)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap();
        for i in 0..batch.num_rows() {
            out.push((tenants.value(i).to_string(), sums.value(i)));
        }
    }
    out
}

/// `(rows, sum of tracked_s)` of `tenant`'s provider, with `predicate`
/// (a query's own filter, here one that asks for every tenant).
async fn tenant_totals(table: &DatasetTable, tenant: &str, predicate: &str) -> (i64, Option<i64>) {
    let ctx = SessionContext::new();
    table
        .delta()
        .update_datafusion_session(&ctx.state())
        .unwrap();
    let provider = table
        .tenant_provider(&TenantId::new(tenant).unwrap())
        .await
        .unwrap();
    ctx.register_table("activity", provider).unwrap();
    let batches = ctx
        .sql(&format!(
            "SELECT COUNT(*), SUM(tracked_s) FROM activity WHERE {predicate}"
        ))
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let count = batches[0]
        .column(0)
        .as_any()
        .downcast_ref::<Int64Array>()
        .unwrap();
    let sum = batches[0]
        .column(1)
        .as_any()
        .downcast_ref::<Int64Array>()
        .unwrap();
    (count.value(0), (!sum.is_null(0)).then(|| sum.value(0)))
}

/// Asserts that both external engines read `expected` for `dataset`.
fn assert_external(
    dir: &std::path::Path,
    dataset: &str,
    measure: &str,
    expected: serde_json::Value,
) {
    let read = candor_lake::testkit::external_sums(dir, &[(dataset, measure)]);
    for engine in ["deltalake", "duckdb"] {
        assert_eq!(
            read[engine][dataset], expected,
            "{engine} reading {dataset}"
        );
    }
}

/// Appends, progress, tenant scoping and a second reader, on `lake`.
async fn appends_commit_progress_and_scope(lake: Lake) {
    let mut table = DatasetTable::open(&lake, Dataset::Activity).await.unwrap();
    assert_eq!(table.version(), 0, "a new table is created empty");
    assert_eq!(table.progress("g/0").await.unwrap(), None);

    let first = vec![
        write_object(&lake, "acme", "0-9.parquet", 3).await,
        write_object(&lake, "globex", "0-9.parquet", 2).await,
    ];
    assert_eq!(
        table
            .append(&first, &exactly("g/0", 9, None))
            .await
            .unwrap(),
        1
    );
    // An object written but never committed (a flush cut short) is in no
    // version: no reader sees it.
    write_object(&lake, "acme", "10-19.parquet", 50).await;

    let reopened = DatasetTable::open(&lake, Dataset::Activity).await.unwrap();
    assert_eq!(reopened.version(), 1);
    assert_eq!(reopened.progress("g/0").await.unwrap(), Some(9));
    assert_eq!(reopened.progress("g/1").await.unwrap(), None);
    let acme = reopened
        .tenant_objects(&TenantId::new("acme").unwrap())
        .unwrap();
    assert_eq!(acme.len(), 1, "{acme:?}");
    assert_eq!(
        acme[0].path,
        "activity/tenant=acme/date=2026-03-01/0-9.parquet"
    );
    assert_eq!(acme[0].date, "2026-03-01");
    assert_eq!(
        reopened
            .tenant_objects(&TenantId::new("initech").unwrap())
            .unwrap(),
        vec![]
    );

    assert_eq!(
        tracked_by_tenant(&lake).await,
        vec![("acme".to_string(), 180), ("globex".to_string(), 120)]
    );

    // A tenant's provider holds its files only: a query asking for every
    // tenant, or for another one, still reads that tenant's rows alone.
    for predicate in [
        "true",
        "tenant = 'globex' OR true",
        "tenant <> 'acme' OR 1 = 1",
    ] {
        assert_eq!(
            tenant_totals(&reopened, "acme", predicate).await,
            (3, Some(180)),
            "{predicate}"
        );
    }
    assert_eq!(
        tenant_totals(&reopened, "globex", "true").await,
        (2, Some(120))
    );
    assert_eq!(
        tenant_totals(&reopened, "initech", "true").await,
        (0, None),
        "a tenant with no files reads nothing, not everything"
    );
}

#[tokio::test]
async fn a_local_table_commits_progress_and_keeps_uncommitted_objects_out() {
    let dir = tempfile::tempdir().unwrap();
    appends_commit_progress_and_scope(Lake::local(dir.path()).unwrap()).await;
    // The log is where any Delta reader looks for it: delta-rs opening
    // the folder on its own, with no store of Candor's, reads the same.
    assert!(
        dir.path()
            .join("activity/_delta_log/00000000000000000001.json")
            .is_file()
    );
    let url = url::Url::from_directory_path(dir.path().join("activity")).unwrap();
    let independent = deltalake::open_table(url).await.unwrap();
    assert_eq!(
        sum_by_tenant(&independent).await,
        vec![("acme".to_string(), 180), ("globex".to_string(), 120)]
    );
    // So do engines other than delta-rs: neither counts the uncommitted
    // object's 50 rows.
    assert_external(
        dir.path(),
        "activity",
        "tracked_s",
        serde_json::json!([["acme", 3, 180], ["globex", 2, 120]]),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_s3_table_commits_progress_and_keeps_uncommitted_objects_out() {
    let (bucket, store) = candor_control::testkit::fresh_named_bucket("table");
    let lake = Lake::on_store(store, &format!("s3://{bucket}/lake")).unwrap();
    appends_commit_progress_and_scope(lake).await;
}

#[tokio::test]
async fn a_writer_whose_partition_moved_on_commits_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let lake = Lake::local(dir.path()).unwrap();
    // Two processors that both believe they own log partition 0, from the
    // same table version (the first stalled past its session timeout).
    let mut stalled = DatasetTable::open(&lake, Dataset::Activity).await.unwrap();
    let mut successor = DatasetTable::open(&lake, Dataset::Activity).await.unwrap();
    let mut other_partition = DatasetTable::open(&lake, Dataset::Activity).await.unwrap();

    let theirs = vec![write_object(&lake, "acme", "0-19.parquet", 4).await];
    successor
        .append(&theirs, &exactly("g/0", 19, None))
        .await
        .unwrap();

    // The stalled one's view is older than the successor's commit: Delta's
    // check for a concurrent transaction of the same app id refuses it.
    let mine = vec![write_object(&lake, "acme", "0-9.parquet", 2).await];
    let refused = stalled.append(&mine, &exactly("g/0", 9, None)).await;
    assert!(
        matches!(
            &refused,
            Err(LakeError::Superseded {
                found: Some(19),
                expected: None,
                ..
            })
        ),
        "{refused:?}"
    );
    // Seen up to date, it is refused before it tries.
    stalled.refresh().await.unwrap();
    let refused = stalled.append(&mine, &exactly("g/0", 9, None)).await;
    assert!(
        matches!(refused, Err(LakeError::Superseded { .. })),
        "{refused:?}"
    );

    // A writer of another log partition, from the same old version and
    // into the same table partition (one tenant's devices spread over the
    // log's partitions), commits: only the same app id conflicts.
    let other = vec![write_object(&lake, "acme", "0-4.parquet", 1).await];
    assert_eq!(
        other_partition
            .append(&other, &exactly("g/1", 4, None))
            .await
            .unwrap(),
        2
    );

    let table = DatasetTable::open(&lake, Dataset::Activity).await.unwrap();
    assert_eq!(table.version(), 2, "the refused commits left no version");
    assert_eq!(table.progress("g/0").await.unwrap(), Some(19));
    assert_eq!(table.progress("g/1").await.unwrap(), Some(4));
    assert_eq!(
        tracked_by_tenant(&lake).await,
        vec![("acme".to_string(), 300)],
        "the successor's rows of partition 0 and partition 1's, not the stalled writer's"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_creating_a_table_at_once_share_one() {
    let dir = tempfile::tempdir().unwrap();
    let lake = Lake::local(dir.path()).unwrap();
    let opens = (0..4).map(|_| {
        let lake = lake.clone();
        tokio::spawn(async move { DatasetTable::open(&lake, Dataset::Gps).await })
    });
    for open in opens {
        assert_eq!(open.await.unwrap().unwrap().version(), 0);
    }
    let log = std::fs::read_dir(dir.path().join("gps/_delta_log"))
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
        .count();
    assert_eq!(log, 1, "one version 0");
}

/// `rows` GPS rows of 100 m each in `schema` (the dataset's, or an older
/// one without the route columns), with 30 s moving where it has them.
fn gps_rows(schema: arrow::datatypes::SchemaRef, rows: usize) -> RecordBatch {
    let columns = schema
        .fields()
        .iter()
        .map(|field| -> arrow::array::ArrayRef {
            match field.name().as_str() {
                "subject" => Arc::new(StringArray::from(vec!["s-1"; rows])),
                "department" => Arc::new(StringArray::from(vec![Some("field"); rows])),
                "slot_start" => Arc::new(
                    TimestampMillisecondArray::from(vec![1_772_323_200_000; rows])
                        .with_timezone("UTC"),
                ),
                "points" => Arc::new(Int64Array::from(vec![3; rows])),
                "distance_m" => Arc::new(arrow::array::Float64Array::from(vec![100.0; rows])),
                "cell" => Arc::new(StringArray::from(vec!["52.52,13.40"; rows])),
                "site" => Arc::new(StringArray::from(vec![None::<&str>; rows])),
                "moving_s" => Arc::new(Int64Array::from(vec![30; rows])),
                "stopped_s" | "stops" => Arc::new(Int64Array::from(vec![0; rows])),
                other => panic!("no test values for {other}"),
            }
        })
        .collect();
    RecordBatch::try_new(schema, columns).unwrap()
}

/// Creates `folder`'s table in the lake at `dir` the way another writer
/// (an earlier release, a person by hand) would: with `schema`'s columns,
/// each passed through `column`, then the partition columns. Returns the
/// table's URL.
async fn create_table_by_hand(
    dir: &std::path::Path,
    folder: &str,
    schema: &arrow::datatypes::Schema,
    column: impl Fn(&deltalake::kernel::StructField) -> deltalake::kernel::StructField,
) -> url::Url {
    use deltalake::kernel::engine::arrow_conversion::TryFromArrow;
    use deltalake::kernel::{DataType, StructField, StructType};
    let mut fields: Vec<StructField> = StructType::try_from_arrow(schema)
        .unwrap()
        .fields()
        .map(column)
        .collect();
    for name in candor_lake::table::PARTITION_COLUMNS {
        fields.push(StructField::new(name, DataType::STRING, false));
    }
    std::fs::create_dir_all(dir.join(folder)).unwrap();
    let url = url::Url::from_directory_path(dir.join(folder)).unwrap();
    deltalake::operations::create::CreateBuilder::new()
        .with_location(url.as_str())
        .with_columns(fields)
        .with_partition_columns(candor_lake::table::PARTITION_COLUMNS)
        .await
        .unwrap();
    url
}

#[tokio::test]
async fn a_column_added_to_a_dataset_is_an_ordinary_delta_schema_change() {
    let dir = tempfile::tempdir().unwrap();
    let lake = Lake::local(dir.path()).unwrap();
    // A gps table as an earlier release wrote it: before the route columns.
    let current = Dataset::Gps.lake_schema();
    let route_columns = ["moving_s", "stopped_s", "stops"];
    let older = Arc::new(arrow::datatypes::Schema::new(
        current
            .fields()
            .iter()
            .filter(|f| !route_columns.contains(&f.name().as_str()))
            .cloned()
            .collect::<Vec<_>>(),
    ));
    let url = create_table_by_hand(dir.path(), "gps", &older, Clone::clone).await;
    let key = PartitionKey {
        dataset: Dataset::Gps,
        tenant: TenantId::new("acme").unwrap(),
        date: "2026-03-01".into(),
    };
    let object = |name: &str, rows: usize, size: usize| NewObject {
        key: key.clone(),
        file_name: name.to_string(),
        size: size as u64,
        rows: rows as u64,
    };
    let old_size = lake
        .write_parquet(&key.object_path("old.parquet"), &gps_rows(older.clone(), 2))
        .await
        .unwrap();
    {
        // The earlier release's commit, through delta-rs as it was.
        let mut table = deltalake::open_table(url.clone()).await.unwrap();
        let add = deltalake::kernel::Action::Add(deltalake::kernel::Add {
            path: key.path_in_table("old.parquet"),
            partition_values: [
                ("tenant".to_string(), Some("acme".to_string())),
                ("date".to_string(), Some("2026-03-01".to_string())),
            ]
            .into(),
            size: old_size as i64,
            modification_time: 0,
            data_change: true,
            stats: None,
            tags: None,
            deletion_vector: None,
            base_row_id: None,
            default_row_commit_version: None,
            clustering_provider: None,
        });
        deltalake::kernel::transaction::CommitBuilder::default()
            .with_actions(vec![add])
            .build(
                Some(table.snapshot().unwrap()),
                table.log_store(),
                deltalake::protocol::DeltaOperation::Write {
                    mode: deltalake::protocol::SaveMode::Append,
                    partition_by: None,
                    predicate: None,
                },
            )
            .await
            .unwrap();
        table.update_incremental(None).await.unwrap();
        assert!(
            table
                .snapshot()
                .unwrap()
                .schema()
                .field("moving_s")
                .is_none()
        );
    }

    // This release opens it: the route columns are added, as one version.
    let mut table = DatasetTable::open(&lake, Dataset::Gps).await.unwrap();
    assert_eq!(table.version(), 2, "version 2 adds the columns");
    let schema = table.delta().snapshot().unwrap().schema();
    for name in route_columns {
        assert!(
            schema.field(name).is_some_and(|f| f.is_nullable()),
            "{name}"
        );
    }
    let new_size = lake
        .write_parquet(&key.object_path("new.parquet"), &gps_rows(current, 3))
        .await
        .unwrap();
    table
        .append(
            &[object("new.parquet", 3, new_size)],
            &exactly("g/0", 3, None),
        )
        .await
        .unwrap();
    // A second open finds nothing to add.
    assert_eq!(
        DatasetTable::open(&lake, Dataset::Gps)
            .await
            .unwrap()
            .version(),
        3
    );

    // Old rows read the added columns as null, new rows as written.
    let ctx = SessionContext::new();
    let table = DatasetTable::open(&lake, Dataset::Gps).await.unwrap();
    table
        .delta()
        .update_datafusion_session(&ctx.state())
        .unwrap();
    ctx.register_table("gps", table.delta().table_provider().await.unwrap())
        .unwrap();
    let batches = ctx
        .sql("SELECT SUM(distance_m), SUM(moving_s), COUNT(moving_s), COUNT(*) FROM gps")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let row = &batches[0];
    let f64_at = |i: usize| {
        row.column(i)
            .as_any()
            .downcast_ref::<arrow::array::Float64Array>()
            .unwrap()
            .value(0)
    };
    let i64_at = |i: usize| {
        row.column(i)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap()
            .value(0)
    };
    assert_eq!(f64_at(0), 500.0);
    assert_eq!((i64_at(1), i64_at(2), i64_at(3)), (90, 3, 5));
    // Other engines read the evolved table alike: the old object's rows
    // lack moving_s, and count in the rows.
    assert_external(
        dir.path(),
        "gps",
        "moving_s",
        serde_json::json!([["acme", 5, 90]]),
    );
}

#[tokio::test]
async fn a_column_of_another_type_is_refused_not_rewritten() {
    let dir = tempfile::tempdir().unwrap();
    let lake = Lake::local(dir.path()).unwrap();
    // An activity table whose tracked_s is a string (hand-made, or from a
    // release that never existed).
    let url = create_table_by_hand(
        dir.path(),
        "activity",
        &Dataset::Activity.lake_schema(),
        |f| match f.name().as_str() {
            "tracked_s" => deltalake::kernel::StructField::new(
                "tracked_s",
                deltalake::kernel::DataType::STRING,
                false,
            ),
            _ => f.clone(),
        },
    )
    .await;
    let refused = DatasetTable::open(&lake, Dataset::Activity).await;
    let message = refused.err().expect("refused").to_string();
    assert!(message.contains("tracked_s"), "{message}");
    // Nothing was committed on top of the table.
    let table = deltalake::open_table(url).await.unwrap();
    assert_eq!(table.version(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_while_s3_is_cut_fails_as_transient_and_lands_once_after() {
    use candor_control::testkit::{TcpProxy, named_s3_client, s3_endpoint};
    let proxy = TcpProxy::start(&s3_endpoint()).await;
    let (bucket, store) = named_s3_client(&proxy.endpoint(), "table-cut");
    let lake = Lake::on_store(store, &format!("s3://{bucket}/lake")).unwrap();
    let mut table = DatasetTable::open(&lake, Dataset::Activity).await.unwrap();
    let objects = vec![write_object(&lake, "acme", "0-9.parquet", 3).await];
    proxy.cut();
    let failed = table
        .append(&objects, &exactly("g/0", 9, None))
        .await
        .expect_err("no store, no commit");
    assert!(failed.is_transient(), "{failed}");
    proxy.restore();
    // Tried again, as a processor does after a transient error: one version.
    assert_eq!(
        table
            .append(&objects, &exactly("g/0", 9, None))
            .await
            .unwrap(),
        1
    );
    let reader = DatasetTable::open(&lake, Dataset::Activity).await.unwrap();
    assert_eq!(reader.version(), 1);
    assert_eq!(
        tracked_by_tenant(&lake).await,
        vec![("acme".to_string(), 180)]
    );
}

#[tokio::test]
async fn a_commit_tried_again_after_it_landed_unseen_adds_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let lake = Lake::local(dir.path()).unwrap();
    // The same writer's view before its commit, and the commit itself,
    // whose answer (say) was lost on the way back.
    let mut before = DatasetTable::open(&lake, Dataset::Activity).await.unwrap();
    let mut writer = DatasetTable::open(&lake, Dataset::Activity).await.unwrap();
    let objects = vec![write_object(&lake, "acme", "0-9.parquet", 3).await];
    writer
        .append(&objects, &exactly("g/0", 9, None))
        .await
        .unwrap();
    // The retry, from the view that has not seen it: the progress is there,
    // so it commits nothing, from a stale view and from a fresh one.
    assert_eq!(
        before
            .append(&objects, &exactly("g/0", 9, None))
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        writer
            .append(&objects, &exactly("g/0", 9, None))
            .await
            .unwrap(),
        1
    );
    let reader = DatasetTable::open(&lake, Dataset::Activity).await.unwrap();
    assert_eq!(reader.version(), 1, "no second version");
    assert_eq!(
        tracked_by_tenant(&lake).await,
        vec![("acme".to_string(), 180)]
    );
}

/// A writer's commit of two partitions' flushes, one of which another
/// writer completed meanwhile (it took that partition over): refused as
/// partly committed, committing nothing, so the writer commits the other
/// partition's alone.
#[tokio::test]
async fn a_commit_of_partitions_another_writer_completed_in_part_commits_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let lake = Lake::local(dir.path()).unwrap();
    let mut writer = DatasetTable::open(&lake, Dataset::Activity).await.unwrap();
    let mut successor = DatasetTable::open(&lake, Dataset::Activity).await.unwrap();
    let p0 = write_object(&lake, "acme", "p0-9.parquet", 2).await;
    let p1 = write_object(&lake, "acme", "p1-4.parquet", 1).await;
    let older = |app: &str, last| {
        (
            Progress {
                app_id: app.into(),
                version: last,
            },
            Prior::Older,
        )
    };
    successor
        .append(std::slice::from_ref(&p0), &[older("g/0", 9)])
        .await
        .unwrap();
    let both = writer
        .append(
            &[p0.clone(), p1.clone()],
            &[older("g/0", 9), older("g/1", 4)],
        )
        .await;
    assert!(
        matches!(both, Err(LakeError::PartlyCommitted { table: "activity" })),
        "{both:?}"
    );
    writer.append(&[p1], &[older("g/1", 4)]).await.unwrap();
    assert_eq!(
        tracked_by_tenant(&lake).await,
        vec![("acme".to_string(), 180)],
        "each object once"
    );
}

#[tokio::test]
async fn a_hand_edited_log_stops_that_table_with_a_clear_error_and_not_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let lake = Lake::local(dir.path()).unwrap();
    let mut activity = DatasetTable::open(&lake, Dataset::Activity).await.unwrap();
    let objects = vec![write_object(&lake, "acme", "0-9.parquet", 3).await];
    activity
        .append(&objects, &exactly("g/0", 9, None))
        .await
        .unwrap();
    DatasetTable::open(&lake, Dataset::Gps).await.unwrap();
    // Someone edits the activity table's last commit by hand.
    let commit = dir
        .path()
        .join("activity/_delta_log/00000000000000000001.json");
    let text = std::fs::read_to_string(&commit).unwrap();
    std::fs::write(&commit, text.replacen("{\"add\"", "{\"add\" oops", 1)).unwrap();
    let refused = DatasetTable::open(&lake, Dataset::Activity).await;
    let message = refused
        .err()
        .expect("an unreadable log is refused")
        .to_string();
    assert!(message.starts_with("the activity table: "), "{message}");
    assert!(!LakeError::is_transient(
        &DatasetTable::open(&lake, Dataset::Activity)
            .await
            .err()
            .unwrap()
    ));
    // The other tables keep serving.
    let gps = DatasetTable::open(&lake, Dataset::Gps).await.unwrap();
    assert_eq!(gps.version(), 0);
}

/// A tenant's scan opens only the days its filters on `date` keep, and
/// settles those filters itself: each answer must be the rows of exactly
/// those days, whatever form the filter takes. Filters that read other
/// columns, or are not the same every time, are left to the rows.
#[tokio::test]
async fn a_tenants_scan_reads_the_days_its_date_filters_keep() {
    let dir = tempfile::tempdir().unwrap();
    let lake = Lake::local(dir.path()).unwrap();
    let mut table = DatasetTable::open(&lake, Dataset::Activity).await.unwrap();
    let mut objects = Vec::new();
    // 1, 2 and 3 rows on three days.
    for (i, date) in ["2026-03-01", "2026-03-02", "2026-03-03"]
        .iter()
        .enumerate()
    {
        objects.push(write_object_on(&lake, "acme", date, &format!("{i}.parquet"), i + 1).await);
    }
    objects.push(write_object_on(&lake, "initech", "2026-03-02", "other.parquet", 7).await);
    table
        .append(&objects, &exactly("g/0", 0, None))
        .await
        .unwrap();
    for (predicate, rows) in [
        ("date >= '2026-03-02'", 5),
        ("date = '2026-03-01'", 1),
        ("date IN ('2026-03-01', '2026-03-03')", 4),
        ("date > '2026-03-03'", 0),
        ("CAST(date AS DATE) < DATE '2026-03-03'", 3),
        ("date >= '2026-03-02' AND tracked_s = 60", 5),
        ("date = '2026-03-01' OR tracked_s > 0", 6),
        ("date >= '2026-03-02' OR random() < 0", 5),
        ("date <> '2026-03-02'", 4),
    ] {
        assert_eq!(
            tenant_totals(&table, "acme", predicate).await.0,
            rows,
            "{predicate}"
        );
    }
}

/// A writer remembers the progress it read or committed at its version,
/// and forgets what another writer's commit in between may have moved:
/// after committing over someone else's version it reads that writer's
/// progress as committed, not as it was before.
#[tokio::test]
async fn a_writer_reads_progress_another_committed_in_between() {
    let dir = tempfile::tempdir().unwrap();
    let lake = Lake::local(dir.path()).unwrap();
    let mut mine = DatasetTable::open(&lake, Dataset::Activity).await.unwrap();
    let mut theirs = DatasetTable::open(&lake, Dataset::Activity).await.unwrap();
    // Both asked before anyone committed.
    assert_eq!(mine.progress("g/1").await.unwrap(), None);
    let first = vec![write_object(&lake, "acme", "a-0.parquet", 1).await];
    mine.append(&first, &exactly("g/0", 4, None)).await.unwrap();
    // Nobody came in between: still known, and mine is what I committed.
    assert_eq!(mine.progress("g/1").await.unwrap(), None);
    assert_eq!(mine.progress("g/0").await.unwrap(), Some(4));
    // The other writer commits its partition; then mine again, over it.
    let other = vec![write_object(&lake, "acme", "b-0.parquet", 1).await];
    theirs
        .append(&other, &[(Progress::of_partition("g", 1, 7), Prior::Older)])
        .await
        .unwrap();
    let second = vec![write_object(&lake, "acme", "a-1.parquet", 1).await];
    mine.append(&second, &exactly("g/0", 9, Some(4)))
        .await
        .unwrap();
    assert_eq!(mine.progress("g/0").await.unwrap(), Some(9));
    assert_eq!(
        mine.progress("g/1").await.unwrap(),
        Some(7),
        "the other writer's commit in between is read, not remembered from before"
    );
}
