//! Compaction: each partition's small files bin-packed into larger ones
//! (Delta's OPTIMIZE), without changing any answer.
//!
//! Every flush adds one object per dataset, tenant and date it touched, so
//! a partition gathers hundreds of small objects over a day, and a query
//! pays per object. OPTIMIZE rewrites a partition's small files as files of
//! about [`CompactionConfig::target_bytes`] and commits the swap as one
//! version that changes no row (`dataChange: false`): every reader sees the
//! files before or the files after, never both, and the processors' appends
//! committed meanwhile do not conflict with it. The replaced files stay for
//! [`super::REPLACED_RETENTION`] (queries planned before, and owners'
//! questions as of an earlier moment, may still read them), then VACUUM
//! deletes them, with the objects no version names once as old.
//!
//! A tenant with a lake of its own (data residency) is compacted there.

use std::num::NonZeroU64;

use serde::Serialize;

use super::{REPLACED_RETENTION, tables_of};
use crate::{Lake, LakeError, Lakes};

#[derive(Debug, Clone)]
pub struct CompactionConfig {
    /// The size compacted files aim at (compressed). It bounds the memory a
    /// rewrite takes, a few times this.
    pub target_bytes: NonZeroU64,
}

impl Default for CompactionConfig {
    fn default() -> Self {
        Self {
            target_bytes: NonZeroU64::new(64 << 20).expect("non-zero"),
        }
    }
}

/// What a compaction run did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Compacted {
    /// Partitions whose small files were rewritten.
    pub partitions: u64,
    /// Files replaced.
    pub objects_merged: u64,
    /// Files written in their place.
    pub objects_written: u64,
    /// Objects VACUUM deleted: files replaced long enough ago, and objects
    /// of flushes that never committed.
    pub objects_vacuumed: usize,
    /// Lakes or tables that could not be compacted (unreachable, say, or a
    /// conflict with another job); logged, and tried again at the next run.
    pub lakes_failed: usize,
}

impl Compacted {
    fn add(&mut self, other: &Compacted) {
        self.partitions += other.partitions;
        self.objects_merged += other.objects_merged;
        self.objects_written += other.objects_written;
        self.objects_vacuumed += other.objects_vacuumed;
        self.lakes_failed += other.lakes_failed;
    }
}

/// Compacts every lake in use: the deployment's and each tenant's own
/// (see [`Lakes::in_use`]). A lake that fails does not stop the others.
pub async fn compact_all(
    lakes: &Lakes,
    docs: &candor_control::DocumentStore,
    config: &CompactionConfig,
) -> Result<Compacted, LakeError> {
    let mut done = Compacted::default();
    let tenants = super::tenants(docs).await?;
    for (key, lake) in lakes.in_use(&tenants)? {
        match compact(&lake, config).await {
            Ok(one) => done.add(&one),
            Err(e) => {
                let lake = key.as_deref().unwrap_or("deployment");
                tracing::error!(lake, error = %e, "compaction of a lake failed");
                done.lakes_failed += 1;
            }
        }
    }
    Ok(done)
}

/// Compacts, then vacuums, every dataset table of one lake.
pub async fn compact(lake: &Lake, config: &CompactionConfig) -> Result<Compacted, LakeError> {
    let mut done = Compacted::default();
    for mut table in tables_of(lake).await? {
        let compacted = table.compact(config.target_bytes).await?;
        done.partitions += compacted.partitions;
        done.objects_merged += compacted.files_removed;
        done.objects_written += compacted.files_added;
        done.objects_vacuumed += table.vacuum(REPLACED_RETENTION, REPLACED_RETENTION).await?;
    }
    Ok(done)
}
