//! A dataset's Delta table in one lake.
//!
//! Each lake holds one Delta table per dataset, rooted at the dataset's
//! folder (`<lake>/activity/`, …) and partitioned by `tenant` and `date`,
//! so its Parquet objects sit where [`crate::layout`] puts them and the
//! table's log in `<dataset>/_delta_log/`. One table per dataset, not per
//! tenant: a flush that touches many tenants commits once per dataset it
//! wrote, whatever the number of tenants, and a tenant's rows are still
//! apart (their own partition folders, their own files).
//!
//! A flush writes its Parquet objects first and then commits them in one
//! Delta transaction ([`DatasetTable::append`]) that also records how far
//! into the log it got: an application transaction (`txn`) whose app id
//! names the consumer group and log partition and whose version is the
//! last offset committed. Objects written by a flush that never committed
//! are in no table version, so no reader sees them. The commit is refused
//! if the table moved on for the same app id since the flush began (a
//! successor took the partition over): Delta's own check for concurrent
//! transactions of one app id, so a stalled processor cannot add rows
//! twice.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use candor_schemas::TenantId;
use candor_schemas::datasets::Dataset;
use deltalake::kernel::engine::arrow_conversion::TryFromArrow;
use deltalake::kernel::transaction::{CommitBuilder, CommitProperties, TransactionError};
use deltalake::kernel::{Action, Add, DataType, StructField, StructType, Transaction};
use deltalake::logstore::{LogStore, LogStoreFactory, StorageConfig, default_logstore};
use deltalake::operations::create::CreateBuilder;
use deltalake::protocol::{DeltaOperation, SaveMode};
use deltalake::{DeltaTable, DeltaTableBuilder, DeltaTableError, ObjectStore};
use object_store::path::Path as ObjectPath;
use url::Url;

use crate::layout::PartitionKey;
use crate::{Lake, LakeError};

/// The partition columns of every dataset's table, in order.
pub const PARTITION_COLUMNS: [&str; 2] = ["tenant", "date"];

/// A Parquet object written into a partition, to be committed.
#[derive(Debug, Clone)]
pub struct NewObject {
    pub key: PartitionKey,
    /// The object's name within its partition folder.
    pub file_name: String,
    pub size: u64,
    pub rows: u64,
}

/// How far a writer got in its source, recorded with its commit: the
/// consumer group and log partition (`app_id`) and the last offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    pub app_id: String,
    pub version: i64,
}

/// One dataset's table in one lake, at the version last loaded.
pub struct DatasetTable {
    dataset: Dataset,
    table: DeltaTable,
}

impl DatasetTable {
    /// The table of `dataset` in `lake`, created (empty, with the
    /// dataset's schema and partitions) if the lake has none yet, and with
    /// the columns this release added to the dataset added to it. Two
    /// processes creating or evolving it at once end up with one table.
    pub async fn open(lake: &Lake, dataset: Dataset) -> Result<Self, LakeError> {
        // delta-rs reads a local table only from an existing folder.
        lake.ensure_folder(&ObjectPath::from(dataset.name()))?;
        let url = table_url(lake, dataset)?;
        let log_store = log_store(lake, &url)?;
        let mut table = DeltaTable::new(log_store.clone());
        match table.load().await {
            Ok(()) => {}
            Err(DeltaTableError::NotATable(_)) => {
                table = create(log_store, dataset).await?;
            }
            Err(e) => return Err(table_error(dataset, e)),
        }
        let table = evolve(table, dataset).await?;
        Ok(Self { dataset, table })
    }

    pub fn dataset(&self) -> Dataset {
        self.dataset
    }

    /// The table as delta-rs holds it, at the loaded version.
    pub fn delta(&self) -> &DeltaTable {
        &self.table
    }

    /// The version this handle has loaded (a handle is always loaded:
    /// [`DatasetTable::open`] loads or creates version 0).
    pub fn version(&self) -> u64 {
        self.table.version().unwrap_or_default()
    }

    /// Loads the commits made since, by anyone.
    pub async fn refresh(&mut self) -> Result<(), LakeError> {
        self.table
            .update_incremental(None)
            .await
            .map_err(|e| table_error(self.dataset, e))
    }

    /// The last version committed for `app_id` in the loaded version.
    pub async fn progress(&self, app_id: &str) -> Result<Option<i64>, LakeError> {
        let snapshot = self
            .table
            .snapshot()
            .map_err(|e| table_error(self.dataset, e))?;
        snapshot
            .transaction_version(self.table.log_store().as_ref(), app_id)
            .await
            .map_err(|e| table_error(self.dataset, e))
    }

    /// Commits `objects` (already durable in the lake) as one new table
    /// version recording `progress`, provided the table's last progress of
    /// that app id is still `after` (`None`: none yet). Another writer's
    /// commit of a different app id in between is fine; one of the same app
    /// id, before or during this call, makes it fail with
    /// [`LakeError::Superseded`] and commit nothing.
    pub async fn append(
        &mut self,
        objects: &[NewObject],
        progress: Progress,
        after: Option<i64>,
    ) -> Result<u64, LakeError> {
        let found = self.progress(&progress.app_id).await?;
        if found != after {
            return Err(LakeError::Superseded {
                app_id: progress.app_id,
                expected: after,
                found,
            });
        }
        let now_ms = now_ms();
        let mut actions = Vec::with_capacity(objects.len());
        for object in objects {
            if object.key.dataset != self.dataset {
                return Err(LakeError::Corrupt(format!(
                    "an object of {} committed to the {} table",
                    object.key.dataset.name(),
                    self.dataset.name()
                )));
            }
            actions.push(Action::Add(add_action(object, now_ms)));
        }
        let txn =
            Transaction::new_with_last_update(&progress.app_id, progress.version, Some(now_ms));
        let operation = DeltaOperation::Write {
            mode: SaveMode::Append,
            partition_by: Some(PARTITION_COLUMNS.iter().map(|c| c.to_string()).collect()),
            predicate: None,
        };
        let snapshot = self
            .table
            .snapshot()
            .map_err(|e| table_error(self.dataset, e))?;
        let committed =
            CommitBuilder::from(CommitProperties::default().with_application_transaction(txn))
                .with_actions(actions)
                .build(Some(snapshot), self.table.log_store(), operation)
                .await;
        match committed {
            Ok(done) => {
                let version = done.version();
                self.table.state = Some(done.snapshot());
                Ok(version)
            }
            Err(DeltaTableError::Transaction {
                source: TransactionError::CommitConflict(_),
            }) => {
                // Only a commit of the same app id conflicts with an append.
                self.refresh().await?;
                Err(LakeError::Superseded {
                    found: self.progress(&progress.app_id).await?,
                    app_id: progress.app_id,
                    expected: after,
                })
            }
            Err(e) => Err(table_error(self.dataset, e)),
        }
    }

    /// The objects of `tenant` in the loaded version, as paths within the
    /// lake, with their sizes: everything a reader of that tenant's rows
    /// may open, and nothing of another tenant.
    pub fn tenant_objects(&self, tenant: &TenantId) -> Result<Vec<TableObject>, LakeError> {
        let snapshot = self
            .table
            .snapshot()
            .map_err(|e| table_error(self.dataset, e))?;
        let mut objects = Vec::new();
        for file in snapshot.log_data().iter() {
            let values = file.partition_values_map();
            let of_tenant =
                values.get("tenant").and_then(Option::as_deref) == Some(tenant.as_str());
            if !of_tenant {
                continue;
            }
            let date = values.get("date").cloned().flatten().ok_or_else(|| {
                LakeError::Corrupt(format!("{}: a file without a date", file.path()))
            })?;
            objects.push(TableObject {
                path: format!("{}/{}", self.dataset.name(), file.path()),
                date,
                size: u64::try_from(file.size()).unwrap_or(0),
            });
        }
        Ok(objects)
    }
}

/// An object of a table version, as a reader opens it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableObject {
    /// Its path within the lake.
    pub path: String,
    pub date: String,
    pub size: u64,
}

fn add_action(object: &NewObject, now_ms: i64) -> Add {
    let partition_values = HashMap::from([
        ("tenant".to_string(), Some(object.key.tenant.to_string())),
        ("date".to_string(), Some(object.key.date.clone())),
    ]);
    Add {
        path: object.key.path_in_table(&object.file_name),
        partition_values,
        size: i64::try_from(object.size).unwrap_or(i64::MAX),
        modification_time: now_ms,
        data_change: true,
        // The row count lets readers plan without opening the file.
        stats: Some(serde_json::json!({ "numRecords": object.rows }).to_string()),
        tags: None,
        deletion_vector: None,
        base_row_id: None,
        default_row_commit_version: None,
        clustering_provider: None,
    }
}

/// The table schema of `dataset`: its lake schema, then the partition
/// columns.
fn table_fields(dataset: Dataset) -> Result<Vec<StructField>, LakeError> {
    let mut fields: Vec<StructField> = StructType::try_from_arrow(dataset.lake_schema().as_ref())
        .map_err(|e| LakeError::Corrupt(format!("{} schema: {e}", dataset.name())))?
        .fields()
        .cloned()
        .collect();
    fields.extend(
        PARTITION_COLUMNS
            .iter()
            .map(|name| StructField::new(*name, DataType::STRING, false)),
    );
    Ok(fields)
}

/// Creates the empty table of `dataset`; if another process created it
/// first, loads that one.
async fn create(log_store: Arc<dyn LogStore>, dataset: Dataset) -> Result<DeltaTable, LakeError> {
    let created = CreateBuilder::new()
        .with_log_store(log_store.clone())
        .with_table_name(dataset.name())
        .with_columns(table_fields(dataset)?)
        .with_partition_columns(PARTITION_COLUMNS)
        .with_save_mode(SaveMode::Ignore)
        .await;
    match created {
        Ok(table) => Ok(table),
        // Another process committed version 0 first.
        Err(DeltaTableError::VersionAlreadyExists(_)) => {
            let mut table = DeltaTable::new(log_store);
            table.load().await.map_err(|e| table_error(dataset, e))?;
            Ok(table)
        }
        Err(e) => Err(table_error(dataset, e)),
    }
}

/// Brings the table's schema up to the dataset's: a column this release
/// added to the dataset is added to the table, an ordinary Delta schema
/// change (rows written before read it as null). Only nullable columns may
/// be added that way, and a column whose type differs from the dataset's
/// is refused, never rewritten. A column the table has and the dataset
/// lacks (written by a newer release) stays: rows written here leave it
/// null.
async fn evolve(mut table: DeltaTable, dataset: Dataset) -> Result<DeltaTable, LakeError> {
    // Two processes may add the same columns at once; the loser of the
    // commit race reloads and finds nothing left to add.
    for _ in 0..3 {
        let current = table
            .snapshot()
            .map_err(|e| table_error(dataset, e))?
            .schema();
        let mut missing = Vec::new();
        for wanted in table_fields(dataset)? {
            match current.field(wanted.name()) {
                Some(found) if found.data_type() == wanted.data_type() => {}
                Some(found) => {
                    return Err(LakeError::Corrupt(format!(
                        "the {} table's column {} is {:?}, not the {:?} this release writes",
                        dataset.name(),
                        wanted.name(),
                        found.data_type(),
                        wanted.data_type()
                    )));
                }
                None if wanted.is_nullable() => missing.push(wanted),
                None => {
                    return Err(LakeError::Corrupt(format!(
                        "the {} table lacks column {}, which cannot be added: it is not nullable",
                        dataset.name(),
                        wanted.name()
                    )));
                }
            }
        }
        if missing.is_empty() {
            return Ok(table);
        }
        let names: Vec<String> = missing.iter().map(|f| f.name().clone()).collect();
        let log_store = table.log_store();
        match table.add_columns().with_fields(missing).await {
            Ok(evolved) => {
                tracing::info!(table = dataset.name(), columns = ?names, "added columns to the table");
                return Ok(evolved);
            }
            Err(DeltaTableError::Transaction {
                source: TransactionError::CommitConflict(_),
            }) => {
                table = DeltaTable::new(log_store);
                table.load().await.map_err(|e| table_error(dataset, e))?;
            }
            Err(e) => return Err(table_error(dataset, e)),
        }
    }
    Err(LakeError::Corrupt(format!(
        "the {} table's schema kept changing while columns were added",
        dataset.name()
    )))
}

fn table_url(lake: &Lake, dataset: Dataset) -> Result<Url, LakeError> {
    lake.url()
        .join(&format!("{}/", dataset.name()))
        .map_err(|e| LakeError::Corrupt(format!("table location: {e}")))
}

/// The log store of the table at `url`, over the lake's own store, so the
/// log is written with the lake's durability and credentials.
fn log_store(lake: &Lake, url: &Url) -> Result<Arc<dyn LogStore>, LakeError> {
    register_s3_log_stores();
    DeltaTableBuilder::from_url(url.clone())
        .and_then(|builder| {
            builder
                .with_storage_backend(lake.root_store(), url.clone())
                .build_storage()
        })
        .map_err(|e| LakeError::Corrupt(format!("table at {url}: {e}")))
}

/// delta-rs knows `s3://` only through its AWS crate (DynamoDB locking,
/// the AWS SDK). The lake's S3 store commits with conditional puts
/// (`If-None-Match`), which is all Delta's log needs, so `s3://` tables
/// use delta-rs's default log store over it.
fn register_s3_log_stores() {
    static REGISTERED: OnceLock<()> = OnceLock::new();
    REGISTERED.get_or_init(|| {
        let scheme = Url::parse("s3://").expect("a valid URL");
        deltalake::logstore::logstore_factories().insert(scheme, Arc::new(ConditionalPutLogStores));
    });
}

struct ConditionalPutLogStores;

impl LogStoreFactory for ConditionalPutLogStores {
    fn with_options(
        &self,
        prefixed_store: Arc<dyn ObjectStore>,
        root_store: Arc<dyn ObjectStore>,
        location: &Url,
        options: &StorageConfig,
    ) -> deltalake::DeltaResult<Arc<dyn LogStore>> {
        Ok(default_logstore(
            prefixed_store,
            root_store,
            location,
            options,
        ))
    }
}

fn table_error(dataset: Dataset, error: DeltaTableError) -> LakeError {
    LakeError::Table {
        table: dataset.name(),
        source: Box::new(error),
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or_default()
}
