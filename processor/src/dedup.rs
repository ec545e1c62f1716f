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
//! restarts and rebalances in the lake as the flushes' state files of kind
//! `batches` (see `flush_state`): every flush writes the ids it took in,
//! and a processor taking a partition over reloads them.

// Looked up per batch: foldhash's randomly seeded hash, not SipHash (see
// `aggregate`).
use foldhash::{HashMap, HashMapExt};
use std::time::Duration;

use object_store::path::Path as ObjectPath;

use crate::flush_state::{FlushFiles, MAX_FILES};
use candor_lake::{Lake, LakeError};

/// A batch's records, one per dataset: the batch id and the dataset tag.
pub type BatchKey = ([u8; 16], u8);

const ENTRY_LEN: usize = 16 + 1 + 8;

/// The ids one chunk takes in, added to memory once the chunk is committed.
#[derive(Debug, Default)]
pub struct ChunkIds {
    /// Each key with its batch's receive time.
    entries: HashMap<BatchKey, i64>,
}

impl ChunkIds {
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The ids file: 25 bytes per entry (id, dataset tag, receive time).
    pub fn to_bytes(&self) -> Vec<u8> {
        ids_file_bytes(&self.entries)
    }
}

fn ids_file_bytes(ids: &HashMap<BatchKey, i64>) -> Vec<u8> {
    let mut out = Vec::with_capacity(ids.len() * ENTRY_LEN);
    for ((id, dataset), received_at_ms) in ids {
        out.extend_from_slice(id);
        out.push(*dataset);
        out.extend_from_slice(&received_at_ms.to_be_bytes());
    }
    out
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
    /// The committed ids files this memory was built from.
    files: Vec<ObjectPath>,
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

    fn to_bytes(&self) -> Vec<u8> {
        ids_file_bytes(&self.ids)
    }
}

pub struct SeenBatches {
    files: FlushFiles,
    window_ms: i64,
    partitions: HashMap<i32, PartitionSeen>,
}

impl SeenBatches {
    pub fn new(lake: Lake, group: &str, window: Duration) -> Self {
        Self {
            files: FlushFiles::new(lake, group, "batches"),
            window_ms: window.as_millis() as i64,
            partitions: HashMap::new(),
        }
    }

    /// Where a chunk's ids file goes.
    pub fn ids_path(&self, partition: i32, first: i64, last: i64) -> ObjectPath {
        self.files.path(partition, first, last)
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
        let mut seen = PartitionSeen {
            next_offset: first,
            ..PartitionSeen::default()
        };
        let mut newest_of_file = Vec::new();
        for file in self.files.committed_before(partition, first).await? {
            let mut newest = i64::MIN;
            for entry in file.bytes.chunks_exact(ENTRY_LEN) {
                let id: [u8; 16] = entry[..16].try_into().expect("16 bytes");
                let at = i64::from_be_bytes(entry[17..].try_into().expect("8 bytes"));
                seen.add((id, entry[16]), at);
                newest = newest.max(at);
            }
            newest_of_file.push((file.path, newest));
        }
        let oldest = seen.newest_ms.saturating_sub(self.window_ms);
        seen.forget_before(oldest);
        // Files wholly outside the window are no longer needed.
        for (path, newest) in newest_of_file {
            if newest < oldest {
                self.files.lake().delete_durable(&path).await?;
            } else {
                seen.files.push(path);
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
        if known || chunk.entries.contains_key(&key) {
            return true;
        }
        chunk.entries.insert(key, received_at_ms);
        false
    }

    /// After the chunk's commit: its ids (written to `file`, when it had
    /// any) join the partition's memory.
    pub async fn committed(
        &mut self,
        partition: i32,
        next_offset: i64,
        chunk: ChunkIds,
        file: Option<ObjectPath>,
    ) {
        let window_ms = self.window_ms;
        let seen = self.partitions.entry(partition).or_default();
        seen.next_offset = next_offset;
        for (key, at) in chunk.entries {
            seen.add(key, at);
        }
        seen.files.extend(file);
        // Pruning is linear; doing it when the map has doubled since the
        // last time keeps it amortized constant per id.
        if seen.ids.len() > 1024.max(2 * seen.pruned_len) {
            seen.forget_before(seen.newest_ms.saturating_sub(window_ms));
        }
        if seen.files.len() > MAX_FILES {
            seen.forget_before(seen.newest_ms.saturating_sub(window_ms));
            let merged = self.files.merged_path(partition, next_offset);
            let seen = self.partitions.get_mut(&partition).expect("inserted above");
            let replaced = std::mem::take(&mut seen.files);
            match self
                .files
                .replace(&merged, seen.to_bytes(), replaced.iter().cloned())
                .await
            {
                Ok(()) => seen.files.push(merged),
                Err(e) => {
                    // The files stay as they are; the next merge tries again.
                    seen.files = replaced;
                    tracing::warn!(partition, error = %e, "could not merge batch-id files");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: u64) -> BatchKey {
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&i.to_be_bytes());
        (id, 1)
    }

    #[tokio::test]
    async fn files_are_merged_and_a_reload_still_knows_every_id() {
        let dir = tempfile::tempdir().unwrap();
        let lake = Lake::local(dir.path()).unwrap();
        let window = Duration::from_secs(3600);
        let mut seen = SeenBatches::new(lake.clone(), "g", window);
        let chunks = 2 * MAX_FILES as i64 + 10;
        for offset in 0..chunks {
            seen.prepare(0, offset).await.unwrap();
            let mut chunk = ChunkIds::default();
            assert!(!seen.is_duplicate(0, key(offset as u64), 1_000 + offset, &mut chunk));
            assert!(seen.is_duplicate(0, key(offset as u64), 1_000 + offset, &mut chunk));
            let path = seen.ids_path(0, offset, offset);
            lake.put_durable(&path, chunk.to_bytes().into())
                .await
                .unwrap();
            seen.committed(0, offset + 1, chunk, Some(path)).await;
        }
        let files = lake.list(&seen.files.folder(0)).await.unwrap();
        assert!(files.len() <= MAX_FILES + 1, "{} files", files.len());

        // A processor that takes the partition over knows every id.
        let mut successor = SeenBatches::new(lake, "g", window);
        successor.prepare(0, chunks).await.unwrap();
        let mut chunk = ChunkIds::default();
        for offset in 0..chunks {
            assert!(successor.is_duplicate(0, key(offset as u64), 0, &mut chunk));
        }
        assert!(chunk.is_empty());
    }

    #[tokio::test]
    async fn ids_older_than_the_window_are_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let lake = Lake::local(dir.path()).unwrap();
        let mut seen = SeenBatches::new(lake.clone(), "g", Duration::from_secs(60));
        for (offset, at) in [(0, 0), (1, 61_000), (2, 62_000)] {
            seen.prepare(0, offset).await.unwrap();
            let mut chunk = ChunkIds::default();
            assert!(!seen.is_duplicate(0, key(offset as u64), at, &mut chunk));
            let path = seen.ids_path(0, offset, offset);
            lake.put_durable(&path, chunk.to_bytes().into())
                .await
                .unwrap();
            seen.committed(0, offset + 1, chunk, Some(path)).await;
        }
        // Reloaded: the first id is more than a minute older than the newest.
        let mut reloaded = SeenBatches::new(lake, "g", Duration::from_secs(60));
        reloaded.prepare(0, 3).await.unwrap();
        let mut chunk = ChunkIds::default();
        assert!(!reloaded.is_duplicate(0, key(0), 63_000, &mut chunk));
        assert!(reloaded.is_duplicate(0, key(1), 63_000, &mut chunk));
    }
}
