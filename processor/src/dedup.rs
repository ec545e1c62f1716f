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
//!
//! One file per flush would pile up, so once a partition has more than
//! `MAX_FILES` of them, its whole memory (already cut to the window) is
//! written as one file covering everything committed, and the files it
//! replaces are deleted. A crash between the two leaves copies of ids,
//! which are harmless.

use std::collections::HashMap;
use std::time::Duration;

use futures::TryStreamExt;
use object_store::path::Path as ObjectPath;

use crate::lake::{Lake, LakeError};

/// A batch's records, one per dataset: the batch id and the dataset tag.
pub type BatchKey = ([u8; 16], u8);

const ENTRY_LEN: usize = 16 + 1 + 8;

/// Files per partition before they are merged into one.
pub const MAX_FILES: usize = 256;

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
            let merged =
                self.folder(partition)
                    .join(format!("{:020}-{:020}.bin", 0, next_offset - 1));
            let seen = self.partitions.get_mut(&partition).expect("inserted above");
            if let Err(e) = merge_files(&self.lake, seen, merged).await {
                // The files stay as they are; the next merge tries again.
                tracing::warn!(partition, error = %e, "could not merge batch-id files");
            }
        }
    }
}

/// Writes the partition's memory as one file, then deletes the files it
/// replaces.
async fn merge_files(
    lake: &Lake,
    seen: &mut PartitionSeen,
    merged: ObjectPath,
) -> Result<(), LakeError> {
    lake.put_durable(&merged, seen.to_bytes().into()).await?;
    for file in std::mem::take(&mut seen.files) {
        if file != merged {
            lake.delete_durable(&file).await?;
        }
    }
    seen.files.push(merged);
    Ok(())
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
        let files: Vec<_> = lake
            .store()
            .list(Some(&seen.folder(0)))
            .try_collect()
            .await
            .unwrap();
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
