//! The processors' own state as a Delta table: what a consumer group must
//! remember per log partition across restarts and rebalances, beside the
//! datasets (the batch ids it took in, the devices' last GPS points).
//!
//! It lives in the deployment's lake at `_candor/processor_state/`,
//! partitioned by `group` and `log_partition`, one row per flush and kind
//! of state (`payload` in the kind's own encoding), and is committed like a
//! dataset's table: with the flush's log progress as an application
//! transaction, refused to a writer whose partition moved on. So a flush
//! that never committed leaves no state, and a partition's state is
//! exactly its committed rows, whoever wrote them. When a partition's rows
//! pile up, its owner replaces them with one row per kind in one commit
//! (the files it replaces leave the table in the same version).

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{Array, BinaryArray, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType as ArrowType, Field, Schema, SchemaRef};
use bytes::Bytes;
use deltalake::kernel::{Action, Add, DataType, Remove, StructField};
use deltalake::protocol::{DeltaOperation, SaveMode};
use object_store::path::Path as ObjectPath;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use super::{Prior, Progress, Table, TableSpec, now_ms};
use crate::{Lake, LakeError};

/// Where the table lives in the deployment's lake, apart from datasets.
pub const STATE_FOLDER: &str = "_candor/processor_state";
const PARTITION_COLUMNS: [&str; 2] = ["group", "log_partition"];

/// One flush's state of one kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateEntry {
    /// What the payload is (`batch_ids`, `routes`): its owner's name.
    pub kind: String,
    /// The log offsets of the flush it came from.
    pub first_offset: i64,
    pub last_offset: i64,
    pub payload: Bytes,
}

/// One log partition's share of a state commit: a flush's entries (its
/// progress is `last_offset`), or with `replace` the partition's whole
/// state, whose rows committed so far then leave the table in the same
/// version.
#[derive(Debug, Clone)]
pub struct StateWrite {
    pub partition: i32,
    pub entries: Vec<StateEntry>,
    pub replace: bool,
    /// The flush's last offset: the partition's progress once committed.
    pub last_offset: i64,
    /// The partition's progress the writer knows, which must still hold.
    pub after: Option<i64>,
}

/// The processors' state table of one lake, at the version last loaded.
pub struct StateTable {
    lake: Lake,
    table: Table,
}

impl StateTable {
    pub async fn open(lake: &Lake) -> Result<Self, LakeError> {
        let spec = TableSpec {
            name: "processor_state",
            folder: STATE_FOLDER.to_string(),
            fields: vec![
                StructField::new("kind", DataType::STRING, false),
                StructField::new("first_offset", DataType::LONG, false),
                StructField::new("last_offset", DataType::LONG, false),
                StructField::new("payload", DataType::BINARY, false),
                StructField::new("group", DataType::STRING, false),
                StructField::new("log_partition", DataType::INTEGER, false),
            ],
            partition_columns: &PARTITION_COLUMNS,
        };
        Ok(Self {
            lake: lake.clone(),
            table: Table::open(lake, spec).await?,
        })
    }

    pub fn version(&self) -> u64 {
        self.table.version()
    }

    pub async fn refresh(&mut self) -> Result<(), LakeError> {
        self.table.refresh().await
    }

    /// The last version committed for `app_id` in the loaded version.
    pub async fn progress(&self, app_id: &str) -> Result<Option<i64>, LakeError> {
        self.table.progress(app_id).await
    }

    /// The committed state of `group`'s log partition, oldest first (by
    /// the flush's last offset, then its first).
    pub async fn entries(&self, group: &str, partition: i32) -> Result<Vec<StateEntry>, LakeError> {
        let mut entries = Vec::new();
        for path in self.files_of(group, partition)? {
            let Some(bytes) = self.lake.get_optional(&self.object_path(&path)).await? else {
                return Err(LakeError::Corrupt(format!(
                    "{STATE_FOLDER}/{path}: in the table, not in the lake"
                )));
            };
            entries.extend(read_entries(bytes, &path)?);
        }
        entries.sort_by_key(|e| (e.last_offset, e.first_offset));
        Ok(entries)
    }

    /// Records one flush's state of each of `group`'s log partitions in
    /// `writes`, as one version, each with its flush's progress and
    /// provided the partition's last progress is still the one the writer
    /// knows (see [`LakeError::Superseded`]).
    pub async fn record(&mut self, group: &str, writes: &[StateWrite]) -> Result<u64, LakeError> {
        let now_ms = now_ms();
        let mut actions = Vec::new();
        let mut replaced = Vec::new();
        for write in writes {
            let partition = write.partition;
            if write.replace {
                replaced.push(partition.to_string());
                for path in self.files_of(group, partition)? {
                    actions.push(Action::Remove(Remove {
                        path,
                        deletion_timestamp: Some(now_ms),
                        data_change: true,
                        extended_file_metadata: None,
                        partition_values: Some(partition_values(group, partition)),
                        size: None,
                        tags: None,
                        deletion_vector: None,
                        base_row_id: None,
                        default_row_commit_version: None,
                    }));
                }
            }
            if write.entries.is_empty() {
                continue;
            }
            let batch = entries_batch(&write.entries)?;
            let first = write.entries.iter().map(|e| e.first_offset).min();
            let last = write.entries.iter().map(|e| e.last_offset).max();
            // A fresh name per try: a try that never committed, or a
            // stalled writer's, cannot overwrite a committed file.
            let path = format!(
                "group={group}/log_partition={partition}/{:020}-{:020}-{}.parquet",
                first.unwrap_or(0),
                last.unwrap_or(0),
                uuid::Uuid::new_v4()
            );
            let size = self
                .lake
                .write_parquet(&self.object_path(&path), &batch)
                .await?;
            actions.push(Action::Add(Add {
                path,
                partition_values: partition_values(group, partition),
                size: i64::try_from(size).unwrap_or(i64::MAX),
                modification_time: now_ms,
                data_change: true,
                stats: Some(serde_json::json!({ "numRecords": write.entries.len() }).to_string()),
                tags: None,
                deletion_vector: None,
                base_row_id: None,
                default_row_commit_version: None,
                clustering_provider: None,
            }));
        }
        let operation = DeltaOperation::Write {
            mode: if replaced.is_empty() {
                SaveMode::Append
            } else {
                SaveMode::Overwrite
            },
            partition_by: None,
            predicate: (!replaced.is_empty()).then(|| {
                format!(
                    "group = '{}' AND log_partition IN ({})",
                    group.replace('\'', "''"),
                    replaced.join(", ")
                )
            }),
        };
        let progress: Vec<(Progress, Prior)> = writes
            .iter()
            .map(|w| {
                (
                    Progress::of_partition(group, w.partition, w.last_offset),
                    Prior::Exactly(w.after),
                )
            })
            .collect();
        self.table.commit(actions, operation, &progress).await
    }

    /// How many files hold `group`'s log partition's state: what a writer
    /// watches to know when to replace them with one.
    pub fn file_count(&self, group: &str, partition: i32) -> Result<usize, LakeError> {
        Ok(self.files_of(group, partition)?.len())
    }

    /// Paths (relative to the table) of the files of one log partition.
    fn files_of(&self, group: &str, partition: i32) -> Result<Vec<String>, LakeError> {
        let partition = partition.to_string();
        Ok(self
            .table
            .snapshot()?
            .log_data()
            .iter()
            .filter(|file| {
                let values = file.partition_values_map();
                values.get("group").and_then(Option::as_deref) == Some(group)
                    && values.get("log_partition").and_then(Option::as_deref)
                        == Some(partition.as_str())
            })
            .map(|file| file.path().into_owned())
            .collect())
    }

    fn object_path(&self, path_in_table: &str) -> ObjectPath {
        ObjectPath::from(format!("{STATE_FOLDER}/{path_in_table}"))
    }
}

fn partition_values(group: &str, partition: i32) -> HashMap<String, Option<String>> {
    HashMap::from([
        ("group".to_string(), Some(group.to_string())),
        ("log_partition".to_string(), Some(partition.to_string())),
    ])
}

/// The columns a state file holds (the partition columns are in its path).
fn file_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("kind", ArrowType::Utf8, false),
        Field::new("first_offset", ArrowType::Int64, false),
        Field::new("last_offset", ArrowType::Int64, false),
        Field::new("payload", ArrowType::Binary, false),
    ]))
}

fn entries_batch(entries: &[StateEntry]) -> Result<RecordBatch, LakeError> {
    let column = |values: Vec<i64>| Arc::new(Int64Array::from(values));
    RecordBatch::try_new(
        file_schema(),
        vec![
            Arc::new(StringArray::from_iter_values(
                entries.iter().map(|e| e.kind.as_str()),
            )),
            column(entries.iter().map(|e| e.first_offset).collect()),
            column(entries.iter().map(|e| e.last_offset).collect()),
            Arc::new(BinaryArray::from_iter_values(
                entries.iter().map(|e| e.payload.as_ref()),
            )),
        ],
    )
    .map_err(|e| LakeError::Refused(format!("state rows: {e}")))
}

fn read_entries(bytes: Bytes, path: &str) -> Result<Vec<StateEntry>, LakeError> {
    let corrupt = |what: &str| LakeError::Corrupt(format!("{STATE_FOLDER}/{path}: {what}"));
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)?.build()?;
    let mut entries = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|e| corrupt(&e.to_string()))?;
        let column = |name: &str| {
            batch
                .column_by_name(name)
                .ok_or_else(|| corrupt(&format!("no column {name}")))
        };
        let kinds = column("kind")?
            .as_any()
            .downcast_ref::<StringArray>()
            .ok_or_else(|| corrupt("kind is not a string"))?;
        let offsets = |name: &str| -> Result<Int64Array, LakeError> {
            column(name)?
                .as_any()
                .downcast_ref::<Int64Array>()
                .cloned()
                .ok_or_else(|| corrupt(&format!("{name} is not a long")))
        };
        let (firsts, lasts) = (offsets("first_offset")?, offsets("last_offset")?);
        let payloads = column("payload")?
            .as_any()
            .downcast_ref::<BinaryArray>()
            .ok_or_else(|| corrupt("payload is not binary"))?;
        if kinds.null_count() + firsts.null_count() + lasts.null_count() + payloads.null_count() > 0
        {
            return Err(corrupt("a null in a state row"));
        }
        for i in 0..batch.num_rows() {
            entries.push(StateEntry {
                kind: kinds.value(i).to_string(),
                first_offset: firsts.value(i),
                last_offset: lasts.value(i),
                payload: Bytes::copy_from_slice(payloads.value(i)),
            });
        }
    }
    Ok(entries)
}
