//! The lake's upkeep on a dataset's table: compaction (Delta's OPTIMIZE),
//! deleting rows (retention, purge, erasure) and VACUUM, which removes the
//! bytes of files no version within the retention needs, and the objects
//! of writes that never committed.

use std::num::NonZeroU64;
use std::time::Duration;

use deltalake::operations::vacuum::VacuumMode;

use super::dataset::DatasetTable;
use super::table_error;
use crate::LakeError;
use crate::store::writer_properties;

/// What a compaction did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Compacted {
    pub files_removed: u64,
    pub files_added: u64,
    pub partitions: u64,
}

/// What a delete did, with the table versions before and after it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Deleted {
    pub version_before: u64,
    pub version_after: u64,
    pub files_removed: usize,
    pub files_added: usize,
    /// Rows deleted, when Delta could count them (a whole partition's
    /// files are removed without being read).
    pub rows: Option<usize>,
}

impl DatasetTable {
    /// Bin-packs each partition's small files into files of about
    /// `target_bytes`, as one new version that changes no row. Appends
    /// committed meanwhile do not conflict with it; they are compacted at
    /// the next run.
    pub async fn compact(&mut self, target_bytes: NonZeroU64) -> Result<Compacted, LakeError> {
        let name = self.dataset().name();
        let (table, metrics) = self
            .delta()
            .clone()
            .optimize()
            .with_target_size(target_bytes)
            .with_writer_properties(writer_properties())
            .await
            .map_err(|e| table_error(name, e))?;
        self.replace_delta(table);
        Ok(Compacted {
            files_removed: metrics.num_files_removed,
            files_added: metrics.num_files_added,
            partitions: metrics.partitions_optimized,
        })
    }

    /// Deletes the rows `predicate` (SQL over the table's columns) matches,
    /// as one new version; files of which only some rows go are rewritten
    /// without them. The bytes stay until [`Self::vacuum`] removes them.
    pub async fn delete_rows(&mut self, predicate: &str) -> Result<Deleted, LakeError> {
        let name = self.dataset().name();
        self.refresh().await?;
        let version_before = self.version();
        let (table, metrics) = self
            .delta()
            .clone()
            .delete()
            .with_predicate(predicate)
            .with_writer_properties(writer_properties())
            .await
            .map_err(|e| table_error(name, e))?;
        self.replace_delta(table);
        Ok(Deleted {
            version_before,
            version_after: self.version(),
            files_removed: metrics.num_removed_files,
            files_added: metrics.num_added_files,
            rows: metrics.num_deleted_rows,
        })
    }

    /// Deletes the table's files that a delete or a compaction replaced
    /// more than `replaced` ago, and every other object under the table
    /// that no version names once it is `untracked` old (a write that never
    /// committed). Returns how many objects it deleted.
    ///
    /// `untracked` must be longer than any writer takes from writing an
    /// object to committing it; `replaced`, than any query planned on an
    /// older version may still read. Delta's full VACUUM deletes replaced
    /// files by its one retention too, so a replaced file is kept the
    /// shorter of the two.
    pub async fn vacuum(
        &mut self,
        replaced: Duration,
        untracked: Duration,
    ) -> Result<usize, LakeError> {
        let name = self.dataset().name();
        self.refresh().await?;
        let mut deleted = 0;
        // Lite: the files the log says were removed (only needed when it
        // keeps them for less than the full pass does). Full: whatever the
        // folder holds and no version names.
        let lite = (replaced < untracked).then_some((VacuumMode::Lite, replaced));
        for (mode, retention) in lite.into_iter().chain([(VacuumMode::Full, untracked)]) {
            let retention = chrono::Duration::from_std(retention)
                .map_err(|e| LakeError::Refused(format!("vacuum retention: {e}")))?;
            let (table, metrics) = self
                .delta()
                .clone()
                .vacuum()
                .with_retention_period(retention)
                // Delta's default floor is a week; a privacy product keeps
                // deleted rows' bytes for far less (see the jobs' docs).
                .with_enforce_retention_duration(false)
                .with_mode(mode)
                .await
                .map_err(|e| table_error(name, e))?;
            self.replace_delta(table);
            deleted += metrics.files_deleted.len();
        }
        Ok(deleted)
    }
}
