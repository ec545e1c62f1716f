//! What one flush of a log partition committed, kept with its state: the
//! objects it added to each table. A writer commits its state first (the
//! commit that orders a partition's flushes, see [`super::state`]) and its
//! dataset tables after, so a crash in between leaves a flush whose state
//! is in and whose rows are not, in some tables; whoever takes the
//! partition over next finds the last manifest and commits to each table
//! that lacks it (see [`super::Progress`]) the very objects it names.

use serde::{Deserialize, Serialize};

use candor_schemas::TenantId;
use candor_schemas::datasets::Dataset;

use crate::LakeError;
use crate::layout::PartitionKey;
use crate::table::dataset::NewObject;

/// The objects a flush added, by table.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlushManifest {
    pub tables: Vec<ManifestTable>,
}

/// A flush's objects in one table: a dataset's in one lake.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestTable {
    /// The lake, by its key ([`crate::Lakes::key`]; `None`: the
    /// deployment's).
    pub lake: Option<String>,
    pub dataset: String,
    pub objects: Vec<ManifestObject>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestObject {
    pub tenant: String,
    pub date: String,
    pub file_name: String,
    pub size: u64,
    pub rows: u64,
}

impl FlushManifest {
    /// The state entry's payload.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a manifest serializes")
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, LakeError> {
        serde_json::from_slice(bytes)
            .map_err(|e| LakeError::Corrupt(format!("a flush manifest: {e}")))
    }

    /// Adds `objects` of `dataset` in the lake `lake`.
    pub fn add(&mut self, lake: Option<&str>, dataset: Dataset, objects: &[NewObject]) {
        self.tables.push(ManifestTable {
            lake: lake.map(str::to_string),
            dataset: dataset.name().to_string(),
            objects: objects
                .iter()
                .map(|o| ManifestObject {
                    tenant: o.key.tenant.to_string(),
                    date: o.key.date.clone(),
                    file_name: o.file_name.clone(),
                    size: o.size,
                    rows: o.rows,
                })
                .collect(),
        });
    }
}

impl ManifestTable {
    pub fn dataset(&self) -> Result<Dataset, LakeError> {
        Dataset::ALL
            .into_iter()
            .find(|d| d.name() == self.dataset)
            .ok_or_else(|| {
                LakeError::Corrupt(format!("a flush manifest: dataset {}", self.dataset))
            })
    }

    /// The objects as a table commits them.
    pub fn objects(&self) -> Result<Vec<NewObject>, LakeError> {
        let dataset = self.dataset()?;
        self.objects
            .iter()
            .map(|o| {
                let tenant = TenantId::new(o.tenant.clone()).map_err(|e| {
                    LakeError::Corrupt(format!("a flush manifest: tenant {}: {e}", o.tenant))
                })?;
                Ok(NewObject {
                    key: PartitionKey {
                        dataset,
                        tenant,
                        date: o.date.clone(),
                    },
                    file_name: o.file_name.clone(),
                    size: o.size,
                    rows: o.rows,
                })
            })
            .collect()
    }
}
