//! A dataset's Delta table in one lake.
//!
//! Each lake holds one Delta table per dataset, rooted at the dataset's
//! folder (`<lake>/activity/`, …) and partitioned by `tenant` and `date`,
//! so its Parquet objects sit where [`crate::layout`] puts them and the
//! table's log in `<dataset>/_delta_log/`. One table per dataset, not per
//! tenant: a flush that touches many tenants commits once per dataset it
//! wrote, whatever the number of tenants, and a tenant's rows are still
//! apart (their own partition folders, their own files).

use std::collections::HashMap;
use std::sync::Arc;

use candor_schemas::TenantId;
use candor_schemas::datasets::Dataset;
use datafusion::catalog::TableProvider;
use deltalake::DeltaTable;
use deltalake::kernel::engine::arrow_conversion::TryFromArrow;
use deltalake::kernel::{Action, Add, DataType, StructField, StructType};
use deltalake::protocol::{DeltaOperation, SaveMode};

use super::{Prior, Progress, Table, TableSpec, now_ms};
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

/// An object of a table version, as a reader opens it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableObject {
    /// Its path within the lake.
    pub path: String,
    pub date: String,
    pub size: u64,
}

/// One dataset's table in one lake, at the version last loaded.
pub struct DatasetTable {
    dataset: Dataset,
    table: Table,
}

impl DatasetTable {
    /// The table of `dataset` in `lake`, created (empty, with the
    /// dataset's schema and partitions) if the lake has none yet, and with
    /// the columns this release added to the dataset added to it. Two
    /// processes creating or evolving it at once end up with one table.
    pub async fn open(lake: &Lake, dataset: Dataset) -> Result<Self, LakeError> {
        if Table::load(lake, &spec(dataset)?).await?.is_none() {
            // A table over the previous release's folders would leave their
            // rows out, and VACUUM would delete them.
            crate::jobs::convert::refuse_previous_release(lake, dataset).await?;
        }
        Ok(Self {
            dataset,
            table: Table::open(lake, spec(dataset)?).await?,
        })
    }

    /// The table of `dataset` in `lake` as it was at `as_of` (for audits
    /// and disputes), if the lake has one.
    pub async fn load_as_of(
        lake: &Lake,
        dataset: Dataset,
        as_of: super::AsOf,
    ) -> Result<Option<Self>, LakeError> {
        let table = Table::load_as_of(lake, &spec(dataset)?, as_of).await?;
        Ok(table.map(|table| Self { dataset, table }))
    }

    /// Creates the table of `dataset` over folders the previous release
    /// wrote, which [`Self::open`] refuses to; see [`crate::jobs::convert`].
    pub(crate) async fn create_for_conversion(
        lake: &Lake,
        dataset: Dataset,
    ) -> Result<Self, LakeError> {
        Ok(Self {
            dataset,
            table: Table::open(lake, spec(dataset)?).await?,
        })
    }

    /// The table of `dataset` in `lake` as it is, if the lake has one: for
    /// readers, which neither create nor change tables.
    pub async fn load(lake: &Lake, dataset: Dataset) -> Result<Option<Self>, LakeError> {
        let table = Table::load(lake, &spec(dataset)?).await?;
        Ok(table.map(|table| Self { dataset, table }))
    }

    pub fn dataset(&self) -> Dataset {
        self.dataset
    }

    /// The table as delta-rs holds it, at the loaded version.
    pub fn delta(&self) -> &DeltaTable {
        self.table.delta()
    }

    pub(crate) fn replace_delta(&mut self, table: DeltaTable) {
        self.table.replace_delta(table);
    }

    /// The version this handle has loaded.
    pub fn version(&self) -> u64 {
        self.table.version()
    }

    /// Loads the commits made since, by anyone.
    pub async fn refresh(&mut self) -> Result<(), LakeError> {
        self.table.refresh().await
    }

    /// The last version committed for `app_id` in the loaded version.
    pub async fn progress(&self, app_id: &str) -> Result<Option<i64>, LakeError> {
        self.table.progress(app_id).await
    }

    /// Commits `objects` (already durable in the lake) as one new table
    /// version recording every progress in `progress`, each provided the
    /// table's last progress of its app id is what its [`Prior`] expects;
    /// see [`Table::commit`].
    pub async fn append(
        &mut self,
        objects: &[NewObject],
        progress: &[(Progress, Prior)],
    ) -> Result<u64, LakeError> {
        let now_ms = now_ms();
        let mut actions = Vec::with_capacity(objects.len());
        for object in objects {
            if object.key.dataset != self.dataset {
                return Err(LakeError::Refused(format!(
                    "an object of {} committed to the {} table",
                    object.key.dataset.name(),
                    self.dataset.name()
                )));
            }
            actions.push(Action::Add(add_action(object, now_ms)));
        }
        let operation = DeltaOperation::Write {
            mode: SaveMode::Append,
            partition_by: Some(PARTITION_COLUMNS.iter().map(|c| c.to_string()).collect()),
            predicate: None,
        };
        self.table.commit(actions, operation, progress).await
    }

    /// The objects of `tenant` in the loaded version, as paths within the
    /// lake, with their sizes: everything a reader of that tenant's rows
    /// may open, and nothing of another tenant.
    pub fn tenant_objects(&self, tenant: &TenantId) -> Result<Vec<TableObject>, LakeError> {
        let mut objects = Vec::new();
        for file in self.table.snapshot()?.log_data().iter() {
            let values = file.partition_values_map();
            if values.get("tenant").and_then(Option::as_deref) != Some(tenant.as_str()) {
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

    /// `tenant`'s rows in the loaded version as a DataFusion table. It is
    /// built over that tenant's files and no other, chosen here, so no
    /// filter of a query over it (nor the lack of one) can reach another
    /// tenant's rows.
    pub async fn tenant_provider(
        &self,
        tenant: &TenantId,
    ) -> Result<Arc<dyn TableProvider>, LakeError> {
        let prefix = format!("{}/", self.dataset.name());
        let files: Vec<(String, String)> = self
            .tenant_objects(tenant)?
            .into_iter()
            .map(|object| (object.path[prefix.len()..].to_string(), object.date))
            .collect();
        let scan_error = |e: datafusion::error::DataFusionError| LakeError::Table {
            table: self.dataset.name(),
            source: Box::new(e.into()),
        };
        // A selection of no files reads nothing (tested), not everything.
        let scan = super::tenant_scan::TenantScan::new(self.delta().clone(), files)
            .await
            .map_err(scan_error)?;
        Ok(Arc::new(scan))
    }
}

/// What the table of `dataset` is: where it lives and its columns.
fn spec(dataset: Dataset) -> Result<TableSpec, LakeError> {
    Ok(TableSpec {
        name: dataset.name(),
        folder: dataset.name().to_string(),
        fields: table_fields(dataset)?,
        partition_columns: &PARTITION_COLUMNS,
    })
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
        .map_err(|e| LakeError::Refused(format!("{} schema: {e}", dataset.name())))?
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
