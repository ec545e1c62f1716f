//! Batches seen before, across the ingest window's edge.
//!
//! Ingest answers a repeated batch id from its replay window (10 minutes by
//! default), but a batch can still reach the log twice: the agent retries
//! after the window, or ingest answered 503 for an append that in fact
//! landed. Both copies carry the same key (`tenant/device`), so they land in
//! the same log partition, and the processor drops the second one here.
//!
//! Each partition's memory holds (batch id, dataset) with the batch's
//! receive time, for `window` back from the newest batch seen. It survives
//! restarts and rebalances in the lake: every flush writes the ids it took
//! in as one more object of that flush
//! (`_processor/<group>/batches/partition-P/<first>-<last>.bin`, listed in
//! its intent, so a flush that never committed loses its ids file too).
//! When a processor starts a chunk at offset F that it did not itself reach
//! by committing, it reloads the partition's ids from the files that end
//! before F, which are exactly the committed ones.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use futures::TryStreamExt;
use object_store::path::Path as ObjectPath;

use crate::lake::{Lake, LakeError};

/// A batch's records, one per dataset: the batch id and the dataset tag.
pub type BatchKey = ([u8; 16], u8);

const ENTRY_LEN: usize = 16 + 1 + 8;

/// The ids one chunk takes in, added to memory once the chunk is committed.
#[derive(Debug, Default)]
pub struct ChunkIds {
    entries: Vec<(BatchKey, i64)>,
    keys: HashSet<BatchKey>,
}

impl ChunkIds {
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The ids file: 25 bytes per entry (id, dataset tag, receive time).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.entries.len() * ENTRY_LEN);
        for ((id, dataset), received_at_ms) in &self.entries {
            out.extend_from_slice(id);
            out.push(*dataset);
            out.extend_from_slice(&received_at_ms.to_be_bytes());
        }
        out
    }
}

#[derive(Default)]
struct PartitionSeen {
    /// The offset this processor's next chunk starts at if nobody else
    /// worked on the partition in between.
    next_offset: i64,
    ids: HashMap<BatchKey, i64>,
    newest_ms: i64,
    /// Size after the last pruning.
    pruned_len: usize,
}

impl PartitionSeen {
    fn add(&mut self, key: BatchKey, received_at_ms: i64) {
        self.ids.insert(key, received_at_ms);
        self.newest_ms = self.newest_ms.max(received_at_ms);
    }

    fn forget_before(&mut self, oldest_ms: i64) {
        self.ids.retain(|_, at| *at >= oldest_ms);
        self.pruned_len = self.ids.len();
    }
}

pub struct SeenBatches {
    lake: Lake,
    group: String,
    window_ms: i64,
    partitions: HashMap<i32, PartitionSeen>,
}

impl SeenBatches {
    pub fn new(lake: Lake, group: &str, window: Duration) -> Self {
        Self {
            lake,
            group: group.to_string(),
            window_ms: window.as_millis() as i64,
            partitions: HashMap::new(),
        }
    }

    fn folder(&self, partition: i32) -> ObjectPath {
        ObjectPath::from(format!(
            "_processor/{}/batches/partition-{partition:05}",
            self.group
        ))
    }

    /// Where a chunk's ids file goes.
    pub fn ids_path(&self, partition: i32, first: i64, last: i64) -> ObjectPath {
        self.folder(partition)
            .join(format!("{first:020}-{last:020}.bin"))
    }

    /// Makes the partition's memory current for a chunk starting at
    /// `first`: kept if this processor committed up to `first` itself,
    /// reloaded from the lake otherwise.
    pub async fn prepare(&mut self, partition: i32, first: i64) -> Result<(), LakeError> {
        if self
            .partitions
            .get(&partition)
            .is_some_and(|p| p.next_offset == first)
        {
            return Ok(());
        }
        let store = self.lake.store();
        let files: Vec<_> = store
            .list(Some(&self.folder(partition)))
            .try_collect()
            .await?;
        let mut seen = PartitionSeen {
            next_offset: first,
            ..PartitionSeen::default()
        };
        let mut newest_of_file = Vec::new();
        for file in files {
            let Some(last) = file
                .location
                .filename()
                .and_then(|n| n.strip_suffix(".bin"))
                .and_then(|n| n.split_once('-'))
                .and_then(|(_, last)| last.parse::<i64>().ok())
            else {
                continue;
            };
            if last >= first {
                // A flush that never committed; its intent's cleanup deletes it.
                continue;
            }
            let bytes = self
                .lake
                .get_optional(&file.location)
                .await?
                .unwrap_or_default();
            let mut newest = i64::MIN;
            for entry in bytes.chunks_exact(ENTRY_LEN) {
                let id: [u8; 16] = entry[..16].try_into().expect("16 bytes");
                let at = i64::from_be_bytes(entry[17..].try_into().expect("8 bytes"));
                seen.add((id, entry[16]), at);
                newest = newest.max(at);
            }
            newest_of_file.push((file.location, newest));
        }
        let oldest = seen.newest_ms.saturating_sub(self.window_ms);
        seen.forget_before(oldest);
        // Files wholly outside the window are no longer needed.
        for (path, newest) in newest_of_file {
            if newest < oldest {
                self.lake.delete_durable(&path).await?;
            }
        }
        self.partitions.insert(partition, seen);
        Ok(())
    }

    /// Whether `key` was taken in before (in the window) or earlier in this
    /// chunk; if not, the chunk takes it in.
    pub fn is_duplicate(
        &self,
        partition: i32,
        key: BatchKey,
        received_at_ms: i64,
        chunk: &mut ChunkIds,
    ) -> bool {
        let known = self
            .partitions
            .get(&partition)
            .is_some_and(|p| p.ids.contains_key(&key));
        if known || !chunk.keys.insert(key) {
            return true;
        }
        chunk.entries.push((key, received_at_ms));
        false
    }

    /// After the chunk's commit: its ids join the partition's memory.
    pub fn committed(&mut self, partition: i32, next_offset: i64, chunk: ChunkIds) {
        let window_ms = self.window_ms;
        let seen = self.partitions.entry(partition).or_default();
        seen.next_offset = next_offset;
        for (key, at) in chunk.entries {
            seen.add(key, at);
        }
        // Pruning is linear; doing it when the map has doubled since the
        // last time keeps it amortized constant per id.
        if seen.ids.len() > 1024.max(2 * seen.pruned_len) {
            seen.forget_before(seen.newest_ms.saturating_sub(window_ms));
        }
    }
}
