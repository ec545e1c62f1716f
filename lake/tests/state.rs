//! The processors' state table: one partition's committed rows, oldest
//! first and apart from other partitions'; a replacement that leaves the
//! table in one version; a stalled writer refused, on a local directory
//! and on a real S3-compatible server.

use bytes::Bytes;
use candor_lake::{Lake, LakeError, StateEntry, StateTable, StateWrite};

fn entry(kind: &str, first: i64, last: i64, payload: &[u8]) -> StateEntry {
    StateEntry {
        kind: kind.to_string(),
        first_offset: first,
        last_offset: last,
        payload: Bytes::copy_from_slice(payload),
    }
}

fn write(
    partition: i32,
    entries: &[StateEntry],
    replace: bool,
    last_offset: i64,
    after: Option<i64>,
) -> StateWrite {
    StateWrite {
        partition,
        entries: entries.to_vec(),
        replace,
        last_offset,
        after,
    }
}

async fn state_per_partition_and_replacement(lake: Lake) {
    let mut table = StateTable::open(&lake).await.unwrap();
    let mut other = StateTable::open(&lake).await.unwrap();
    let flush_1 = [
        entry("batch_ids", 0, 9, b"ids 0-9"),
        entry("routes", 0, 9, b"routes 0-9"),
    ];
    table
        .record("g", &[write(0, &flush_1, false, 9, None)])
        .await
        .unwrap();
    let flush_2 = [entry("batch_ids", 10, 19, b"ids 10-19")];
    table
        .record("g", &[write(0, &flush_2, false, 19, Some(9))])
        .await
        .unwrap();
    // Another partition's owner, from an older version: no conflict.
    other
        .record(
            "g",
            &[write(1, &[entry("batch_ids", 0, 4, b"p1")], false, 4, None)],
        )
        .await
        .unwrap();
    // So does another group reading the same partition number.
    other
        .record(
            "h",
            &[write(0, &[entry("batch_ids", 0, 2, b"h")], false, 2, None)],
        )
        .await
        .unwrap();

    let reader = StateTable::open(&lake).await.unwrap();
    let expected: Vec<StateEntry> = flush_1.iter().chain(&flush_2).cloned().collect();
    assert_eq!(reader.entries("g", 0).await.unwrap(), expected);
    assert_eq!(
        reader.entries("g", 1).await.unwrap(),
        vec![entry("batch_ids", 0, 4, b"p1")]
    );
    assert_eq!(
        reader.entries("h", 0).await.unwrap(),
        vec![entry("batch_ids", 0, 2, b"h")]
    );
    assert_eq!(reader.progress("g/0").await.unwrap(), Some(19));

    // The owner replaces partition 0's rows with its whole state, in the
    // same version as its next flush, from a view that has not seen the
    // other partitions' commits: they do not conflict with it.
    let merged = [
        entry("batch_ids", 0, 29, b"all ids"),
        entry("routes", 0, 29, b"all routes"),
    ];
    let before = reader.version();
    let version = table
        .record("g", &[write(0, &merged, true, 29, Some(19))])
        .await
        .unwrap();
    assert_eq!(version, before + 1, "one version");
    let reader = StateTable::open(&lake).await.unwrap();
    assert_eq!(reader.entries("g", 0).await.unwrap(), merged.to_vec());
    assert_eq!(
        reader.entries("g", 1).await.unwrap().len(),
        1,
        "other partitions keep theirs"
    );
}

#[tokio::test]
async fn local_state_is_kept_per_partition_and_replaced_in_one_version() {
    let dir = tempfile::tempdir().unwrap();
    state_per_partition_and_replacement(Lake::local(dir.path()).unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_state_is_kept_per_partition_and_replaced_in_one_version() {
    let (bucket, store) = candor_control::testkit::fresh_named_bucket("state");
    let lake = Lake::on_store(store, &format!("s3://{bucket}/lake")).unwrap();
    state_per_partition_and_replacement(lake).await;
}

#[tokio::test]
async fn a_stalled_writer_records_no_state() {
    let dir = tempfile::tempdir().unwrap();
    let lake = Lake::local(dir.path()).unwrap();
    // Two stale views (one per try below), both from before the
    // successor's commit, so both tries meet Delta's conflict check.
    let mut stalled = [
        StateTable::open(&lake).await.unwrap(),
        StateTable::open(&lake).await.unwrap(),
    ];
    let mut successor = StateTable::open(&lake).await.unwrap();
    successor
        .record(
            "g",
            &[write(
                0,
                &[entry("batch_ids", 0, 19, b"successor")],
                false,
                19,
                None,
            )],
        )
        .await
        .unwrap();
    // A plain append and a replacement from the stale view: both refused.
    for (stalled, replace) in stalled.iter_mut().zip([false, true]) {
        let refused = stalled
            .record(
                "g",
                &[write(
                    0,
                    &[entry("batch_ids", 0, 9, b"stalled")],
                    replace,
                    9,
                    None,
                )],
            )
            .await;
        assert!(
            matches!(
                refused,
                Err(LakeError::Superseded {
                    found: Some(19),
                    ..
                })
            ),
            "{refused:?}"
        );
    }
    let reader = StateTable::open(&lake).await.unwrap();
    assert_eq!(
        reader.entries("g", 0).await.unwrap(),
        vec![entry("batch_ids", 0, 19, b"successor")]
    );
    assert_eq!(reader.version(), 1);
}
