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
//! restarts and rebalances in the processors' state table (see `state`):
//! every flush commits the ids it took in as an entry of kind `batch_ids`,
//! with the flush's log progress, and a processor taking a partition over
//! reloads the committed entries.

// Looked up per batch: foldhash's randomly seeded hash, not SipHash (see
// `aggregate`).
use foldhash::{HashMap, HashMapExt};
use std::time::Duration;

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

/// The batch ids of every partition this processor reads, as of each
/// partition's last commit.
pub struct SeenBatches {
    window_ms: i64,
    partitions: HashMap<i32, PartitionSeen>,
}

impl SeenBatches {
    pub fn new(window: Duration) -> Self {
        Self {
            window_ms: window.as_millis() as i64,
            partitions: HashMap::new(),
        }
    }

    /// Rebuilds a partition's memory from its committed ids entries (each
    /// flush's, or one standing for all before it), when this processor
    /// takes the partition over.
    pub fn load<'a>(
        &mut self,
        partition: i32,
        entries: impl IntoIterator<Item = &'a [u8]>,
    ) -> Result<(), String> {
        let mut seen = PartitionSeen::default();
        for entry in entries {
            if entry.len() % ENTRY_LEN != 0 {
                return Err(format!("a batch-id entry of {} bytes", entry.len()));
            }
            for id in entry.chunks_exact(ENTRY_LEN) {
                let key: [u8; 16] = id[..16].try_into().expect("16 bytes");
                let at = i64::from_be_bytes(id[17..].try_into().expect("8 bytes"));
                seen.add((key, id[16]), at);
            }
        }
        seen.forget_before(seen.newest_ms.saturating_sub(self.window_ms));
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

    /// Every id of the partition's window once `chunk` joins it, as one
    /// entry: what a flush records when it replaces the partition's state.
    pub fn whole_with(&self, partition: i32, chunk: &ChunkIds) -> Vec<u8> {
        let mut all = self
            .partitions
            .get(&partition)
            .map(|p| p.ids.clone())
            .unwrap_or_default();
        all.extend(chunk.entries.iter().map(|(k, at)| (*k, *at)));
        let newest = all.values().copied().max().unwrap_or(0);
        let oldest = newest.saturating_sub(self.window_ms);
        all.retain(|_, at| *at >= oldest);
        ids_file_bytes(&all)
    }

    /// After the chunk's commit: its ids join the partition's memory.
    pub fn committed(&mut self, partition: i32, chunk: ChunkIds) {
        let window_ms = self.window_ms;
        let seen = self.partitions.entry(partition).or_default();
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

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: u64) -> BatchKey {
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&i.to_be_bytes());
        (id, 1)
    }

    #[test]
    fn a_reload_from_entries_knows_every_id_in_the_window_and_forgets_older_ones() {
        let window = Duration::from_secs(60);
        let mut seen = SeenBatches::new(window);
        let mut entries = Vec::new();
        for (i, at) in [(0, 0), (1, 61_000), (2, 62_000)] {
            let mut chunk = ChunkIds::default();
            assert!(!seen.is_duplicate(0, key(i), at, &mut chunk));
            assert!(
                seen.is_duplicate(0, key(i), at, &mut chunk),
                "twice in a chunk"
            );
            entries.push(chunk.to_bytes());
            seen.committed(0, chunk);
        }
        let mut reloaded = SeenBatches::new(window);
        reloaded.load(0, entries.iter().map(Vec::as_slice)).unwrap();
        let mut chunk = ChunkIds::default();
        // The first id is more than a minute older than the newest.
        assert!(!reloaded.is_duplicate(0, key(0), 63_000, &mut chunk));
        assert!(reloaded.is_duplicate(0, key(1), 63_000, &mut chunk));
        assert!(reloaded.is_duplicate(0, key(2), 63_000, &mut chunk));
        // Other partitions know nothing of it.
        assert!(!reloaded.is_duplicate(1, key(1), 63_000, &mut chunk));

        // One entry standing for all of them says the same.
        let whole = seen.whole_with(0, &ChunkIds::default());
        let mut from_whole = SeenBatches::new(window);
        from_whole.load(0, [whole.as_slice()]).unwrap();
        let mut chunk = ChunkIds::default();
        assert!(from_whole.is_duplicate(0, key(1), 63_000, &mut chunk));
        assert!(!from_whole.is_duplicate(0, key(0), 63_000, &mut chunk));
        assert!(reloaded.load(0, [&[1u8; 7][..]]).is_err(), "a torn entry");
    }
}
