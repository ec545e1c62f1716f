//! Exactly once into the lake, across crashes and rebalances, by the
//! lake's Delta tables.
//!
//! A flush first makes its Parquet objects durable (each named afresh, so
//! no try overwrites another's), then commits, in this order:
//!
//! 1. **The state table** ([`StateTable`], in the deployment's lake): one
//!    version holding, per log partition of the flush, the batch ids it took
//!    in (`dedup`), the routes it changed (`routes`) and its manifest, the
//!    objects it adds to each dataset table ([`FlushManifest`]), with the
//!    partition's progress `txn(<group>/<partition>, <last offset>)`. The
//!    commit is refused unless the partition's progress is still the one
//!    this processor last saw ([`Prior::Exactly`]): of two processors that
//!    both believe they own a partition (one stalled past its session
//!    timeout), the one whose successor has committed fails here, having
//!    committed nothing, and stops. This commit orders a partition's
//!    flushes; the state table is the source of truth.
//! 2. **Each dataset table the flush wrote** (per lake: a residency
//!    tenant's rows go to its own), adding the objects with the same
//!    progress, required only to move forward ([`Prior::Older`]).
//! 3. **The log**, as before: its committed offsets only save a successor
//!    from reading records again.
//!
//! A processor that takes a partition over (at start, after a rebalance,
//! after another member's work) reads the partition's committed state:
//! its batch ids, routes and last manifest. A crash between 1 and 2 leaves
//! that manifest's objects missing from some tables; the successor commits
//! them there (a table that has them already holds the progress, and the
//! commit adds nothing). Records at or before the state's progress are in
//! the lake already and are skipped, whatever the log's committed offset.
//! Objects of a flush that never committed its state are in no table, so
//! no reader sees them, and VACUUM deletes them.

use std::collections::HashMap;

use candor_lake::{
    DatasetTable, FlushManifest, LakeError, Lakes, NewObject, Prior, Progress, StateEntry,
    StateTable, StateWrite,
};
use candor_schemas::datasets::Dataset;

use crate::dedup::SeenBatches;
use crate::routes::RouteMemory;

/// The state entry kinds a flush records.
pub const BATCH_IDS: &str = "batch_ids";
pub const ROUTES: &str = "routes";
pub const FLUSH: &str = "flush";

/// Files holding one partition's state before a flush replaces them with
/// one (the partition's whole state, in the same version).
pub const MAX_STATE_FILES: usize = 256;

/// A table the processor commits to: a dataset's, in a lake by key
/// ([`Lakes::key`]; `None`: the deployment's).
pub type TableKey = (Option<String>, Dataset);

/// What this processor knows of one log partition it reads.
#[derive(Debug, Clone, Copy)]
struct PartitionLedger {
    /// Where its next chunk starts if nobody else worked on the partition.
    next_offset: i64,
    /// The partition's progress in the state table as of this processor's
    /// last commit or takeover.
    progress: Option<i64>,
    /// Files holding the partition's state.
    state_files: usize,
}

/// The tables one processor commits to, loaded once and kept current by
/// its own commits, and what it knows of each partition it reads.
pub struct Ledger {
    group: String,
    lakes: Lakes,
    state: Option<StateTable>,
    tables: HashMap<TableKey, DatasetTable>,
    partitions: HashMap<i32, PartitionLedger>,
    /// Flushes of others this one completed on taking a partition over.
    flushes_completed: u64,
}

/// What a chunk of a partition commits: its state entries and, by table,
/// its objects.
pub struct ChunkCommit {
    pub partition: i32,
    pub first: i64,
    pub last: i64,
    /// With `replace`, the partition's whole state; else the chunk's own.
    pub replace: bool,
    /// Batch ids taken in (empty: none), or all of the window's.
    pub batch_ids: Vec<u8>,
    /// Route changes, if any, or all routes.
    pub routes: Option<Vec<u8>>,
    pub objects: HashMap<TableKey, Vec<NewObject>>,
}

impl Ledger {
    pub fn new(lakes: Lakes, group: &str) -> Self {
        Self {
            group: group.to_string(),
            lakes,
            state: None,
            tables: HashMap::new(),
            partitions: HashMap::new(),
            flushes_completed: 0,
        }
    }

    /// Flushes whose state another processor committed and whose rows
    /// this one committed to the tables that lacked them.
    pub fn flushes_completed(&self) -> u64 {
        self.flushes_completed
    }

    async fn state(&mut self) -> Result<&mut StateTable, LakeError> {
        if self.state.is_none() {
            self.state = Some(StateTable::open(self.lakes.home()).await?);
        }
        Ok(self.state.as_mut().expect("opened above"))
    }

    async fn table(&mut self, key: &TableKey) -> Result<&mut DatasetTable, LakeError> {
        if !self.tables.contains_key(key) {
            let lake = self.lakes.at(key.0.as_deref())?;
            let table = DatasetTable::open(&lake, key.1).await?;
            self.tables.insert(key.clone(), table);
        }
        Ok(self.tables.get_mut(key).expect("opened above"))
    }

    /// Makes the partition's memory current for a chunk whose records
    /// start at `first`: kept if this processor committed up to `first`
    /// itself, else read from the state table (and the partition's last
    /// flush completed in the tables that lack it). Returns the
    /// partition's progress: records up to it are in the lake already.
    pub async fn resume(
        &mut self,
        partition: i32,
        first: i64,
        seen: &mut SeenBatches,
        routes: &mut RouteMemory,
    ) -> Result<Option<i64>, LakeError> {
        if let Some(known) = self.partitions.get(&partition)
            && known.next_offset == first
        {
            return Ok(known.progress);
        }
        let group = self.group.clone();
        let app_id = Progress::of_partition(&group, partition, 0).app_id;
        let state = self.state().await?;
        state.refresh().await?;
        let progress = state.progress(&app_id).await?;
        let entries = state.entries(&group, partition).await?;
        let state_files = state.file_count(&group, partition)?;
        let payloads = |kind: &'static str| {
            entries
                .iter()
                .filter(move |e| e.kind == kind)
                .map(|e| e.payload.as_ref())
        };
        let corrupt = |kind: &str, e: String| {
            LakeError::Corrupt(format!(
                "the {kind} state of {group} partition {partition}: {e}"
            ))
        };
        seen.load(partition, payloads(BATCH_IDS))
            .map_err(|e| corrupt(BATCH_IDS, e))?;
        routes
            .load(partition, payloads(ROUTES))
            .map_err(|e| corrupt(ROUTES, e))?;
        if let Some(last) = progress {
            let manifest = entries
                .iter()
                .rev()
                .find(|e| e.kind == FLUSH && e.last_offset == last);
            if let Some(manifest) = manifest {
                let manifest = FlushManifest::from_bytes(&manifest.payload)?;
                self.complete(partition, last, &manifest).await?;
            }
        }
        tracing::info!(
            group,
            partition,
            progress,
            first,
            "took the partition over from its committed state"
        );
        self.partitions.insert(
            partition,
            PartitionLedger {
                next_offset: progress.map_or(first, |last| first.max(last + 1)),
                progress,
                state_files,
            },
        );
        Ok(progress)
    }

    /// Commits the objects of the partition's flush through `last` to every
    /// table of its manifest that does not hold them yet.
    async fn complete(
        &mut self,
        partition: i32,
        last: i64,
        manifest: &FlushManifest,
    ) -> Result<(), LakeError> {
        let progress = [(
            Progress::of_partition(&self.group, partition, last),
            Prior::Older,
        )];
        let mut completed = false;
        for table in &manifest.tables {
            let key = (table.lake.clone(), table.dataset()?);
            let objects = table.objects()?;
            let lake = self.lakes.at(key.0.as_deref())?;
            let dataset = self.table(&key).await?;
            if dataset.progress(&progress[0].0.app_id).await? == Some(last) {
                continue;
            }
            // A flush's objects outlive a crash, but not a VACUUM run long
            // after it: committing a missing object would break the table.
            for object in &objects {
                let path = object.key.object_path(&object.file_name);
                if !lake.exists(&path).await? {
                    return Err(LakeError::Corrupt(format!(
                        "{path}: named by the committed flush of partition {partition} through \
                         offset {last}, and gone (deleted by VACUUM while no processor read the \
                         partition): the {} table lacks that flush's rows",
                        key.1.name()
                    )));
                }
            }
            dataset.append(&objects, &progress).await?;
            completed = true;
            tracing::warn!(
                partition,
                last,
                table = key.1.name(),
                lake = key.0.as_deref().unwrap_or("the deployment's"),
                "completed a flush whose processor stopped after committing its state"
            );
        }
        self.flushes_completed += u64::from(completed);
        Ok(())
    }

    /// Whether a partition's next flush replaces its state files with its
    /// whole state (every so many flushes, in the same version; see
    /// [`StateTable`]).
    pub fn replaces(&self, partition: i32) -> bool {
        self.partitions
            .get(&partition)
            .is_some_and(|known| known.state_files + 1 > MAX_STATE_FILES)
    }

    /// Commits the chunks' state as one version of the state table, each
    /// chunk's provided its partition's progress is still what this
    /// processor knows ([`LakeError::Superseded`] otherwise).
    pub async fn commit_state(&mut self, chunks: &[ChunkCommit]) -> Result<(), LakeError> {
        let mut writes = Vec::with_capacity(chunks.len());
        for chunk in chunks {
            let known = self
                .partitions
                .get(&chunk.partition)
                .copied()
                .ok_or_else(|| {
                    LakeError::Refused(format!(
                        "partition {} committed before it was resumed",
                        chunk.partition
                    ))
                })?;
            let mut manifest = FlushManifest::default();
            let mut tables: Vec<_> = chunk.objects.iter().collect();
            tables.sort_by(|a, b| a.0.cmp(b.0));
            for ((lake, dataset), objects) in tables {
                manifest.add(lake.as_deref(), *dataset, objects);
            }
            let entry = |kind: &str, payload: Vec<u8>| StateEntry {
                kind: kind.to_string(),
                first_offset: chunk.first,
                last_offset: chunk.last,
                payload: payload.into(),
            };
            let mut entries = Vec::with_capacity(3);
            if !chunk.batch_ids.is_empty() {
                entries.push(entry(BATCH_IDS, chunk.batch_ids.clone()));
            }
            entries.extend(chunk.routes.clone().map(|r| entry(ROUTES, r)));
            entries.push(entry(FLUSH, manifest.to_bytes()));
            writes.push(StateWrite {
                partition: chunk.partition,
                entries,
                replace: chunk.replace,
                last_offset: chunk.last,
                after: known.progress,
            });
        }
        let group = self.group.clone();
        self.state().await?.record(&group, &writes).await?;
        for write in &writes {
            let known = self
                .partitions
                .get_mut(&write.partition)
                .expect("checked above");
            known.progress = Some(write.last_offset);
            known.next_offset = write.last_offset + 1;
            known.state_files = if write.replace {
                1
            } else {
                known.state_files + 1
            };
        }
        Ok(())
    }

    /// Commits the chunks' objects (state committed) to each dataset table
    /// they wrote, one commit per table for all of them. A retry commits
    /// what is left: a table whose progress is in already adds nothing.
    /// Chunks another processor completed meanwhile (it took one of the
    /// partitions over between this one's state and table commits) are
    /// left out of the table's commit.
    ///
    /// The tables are independent (the state commit before orders the
    /// flush), so their commits go out together: a Delta commit is a
    /// dozen small round trips to the store, and a flush waits for one
    /// table's, not one after another's.
    pub async fn commit_tables(&mut self, chunks: &[ChunkCommit]) -> Result<(), LakeError> {
        let mut by_table: HashMap<TableKey, Vec<(&ChunkCommit, &[NewObject])>> = HashMap::new();
        for chunk in chunks {
            for (key, objects) in &chunk.objects {
                by_table
                    .entry(key.clone())
                    .or_default()
                    .push((chunk, objects));
            }
        }
        let mut tables = Vec::with_capacity(by_table.len());
        for (key, chunks) in by_table {
            self.table(&key).await?;
            let table = self.tables.remove(&key).expect("opened above");
            tables.push((key, table, chunks));
        }
        let group = self.group.as_str();
        let committed = futures::future::join_all(
            tables
                .iter_mut()
                .map(|(key, table, chunks)| commit_table(table, key.1, chunks, group)),
        )
        .await;
        for (key, table, _) in tables {
            self.tables.insert(key, table);
        }
        committed.into_iter().collect()
    }

    /// A partition whose polled records were all in the lake already: its
    /// next chunk starts after them.
    pub fn skipped(&mut self, partition: i32, next_offset: i64) {
        if let Some(known) = self.partitions.get_mut(&partition) {
            known.next_offset = known.next_offset.max(next_offset);
        }
    }
}

/// Commits `chunks`' objects to one dataset table (see
/// [`Ledger::commit_tables`]).
async fn commit_table(
    table: &mut DatasetTable,
    dataset: Dataset,
    chunks: &[(&ChunkCommit, &[NewObject])],
    group: &str,
) -> Result<(), LakeError> {
    // The first try commits every chunk: the table itself tells a
    // progress it holds already (`PartlyCommitted`), and only then are
    // the chunks another processor completed left out.
    let mut leave_out_completed = false;
    for _ in 0..3 {
        let mut objects = Vec::new();
        let mut progress = Vec::new();
        for (chunk, chunk_objects) in chunks {
            let mine = Progress::of_partition(group, chunk.partition, chunk.last);
            if leave_out_completed && table.progress(&mine.app_id).await? == Some(chunk.last) {
                continue;
            }
            objects.extend(chunk_objects.iter().cloned());
            progress.push((mine, Prior::Older));
        }
        if progress.is_empty() {
            return Ok(());
        }
        match table.append(&objects, &progress).await {
            Ok(_) => return Ok(()),
            Err(LakeError::PartlyCommitted { .. }) => {
                table.refresh().await?;
                leave_out_completed = true;
            }
            Err(e) => return Err(e),
        }
    }
    Err(LakeError::Refused(format!(
        "the {} table kept taking partitions of this flush from another writer",
        dataset.name()
    )))
}
