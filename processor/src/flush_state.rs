//! State a processor keeps per log partition that must survive restarts and
//! rebalances: the batch ids it took in (`dedup`) and the devices' GPS
//! routes (`routes`).
//!
//! Each flush that changes a kind of state writes what changed as one more
//! object of that flush, `_processor/<group>/<kind>/partition-P/<first>-<last>.bin`,
//! listed in its intent, so a flush that never committed loses its state
//! file with its other objects. A processor starts every chunk at the
//! partition's last commit (see `intent`), so when it starts a chunk at
//! offset F that it did not itself reach by committing, the files that end
//! before F are exactly the committed ones: it rebuilds the partition's
//! state from them, oldest first.
//!
//! One file per flush would pile up, so a kind merges a partition's files
//! into one (`0-<last committed>`, standing for everything committed) when
//! there are more than [`MAX_FILES`], then deletes the files it replaces.
//! A crash between the two leaves older files beside the merged one; they
//! sort before it (by last offset), so reading them again is harmless.

use object_store::path::Path as ObjectPath;

use candor_lake::{Lake, LakeError};

/// Files per partition before they are merged into one.
pub const MAX_FILES: usize = 256;

/// One kind of per-partition state files of one consumer group.
pub struct FlushFiles {
    lake: Lake,
    /// `_processor/<group>/<kind>`.
    root: String,
}

/// A committed state file and its bytes.
pub struct StateFile {
    pub path: ObjectPath,
    pub bytes: bytes::Bytes,
}

impl FlushFiles {
    pub fn new(lake: Lake, group: &str, kind: &str) -> Self {
        Self {
            lake,
            root: format!("_processor/{group}/{kind}"),
        }
    }

    pub fn lake(&self) -> &Lake {
        &self.lake
    }

    pub fn folder(&self, partition: i32) -> ObjectPath {
        ObjectPath::from(format!("{}/partition-{partition:05}", self.root))
    }

    /// Where the state file of a flush covering `first..=last` goes.
    pub fn path(&self, partition: i32, first: i64, last: i64) -> ObjectPath {
        self.folder(partition)
            .join(format!("{first:020}-{last:020}.bin"))
    }

    /// The one file that stands for every flush committed before `next_offset`.
    pub fn merged_path(&self, partition: i32, next_offset: i64) -> ObjectPath {
        self.path(partition, 0, next_offset - 1)
    }

    /// The files of the flushes that ended before `first` (the committed
    /// ones), oldest first, with their contents. Files of a flush that never
    /// committed end at `first` or later and are left to its intent's
    /// cleanup.
    pub async fn committed_before(
        &self,
        partition: i32,
        first: i64,
    ) -> Result<Vec<StateFile>, LakeError> {
        let mut covered: Vec<(i64, i64, ObjectPath)> = self
            .lake
            .list(&self.folder(partition))
            .await?
            .into_iter()
            .filter_map(|meta| {
                let (from, to) = meta
                    .location
                    .filename()?
                    .strip_suffix(".bin")?
                    .split_once('-')?;
                let (from, to) = (from.parse().ok()?, to.parse().ok()?);
                (to < first).then_some((to, from, meta.location))
            })
            .collect();
        covered.sort();
        let mut files = Vec::with_capacity(covered.len());
        for (_, _, path) in covered {
            // Deleted meanwhile by a merge whose file is listed too.
            if let Some(bytes) = self.lake.get_optional(&path).await? {
                files.push(StateFile { path, bytes });
            }
        }
        Ok(files)
    }

    /// Writes `merged` (a partition's whole state), then deletes the files
    /// it replaces, in the order given. Given oldest first, a crash midway
    /// leaves the newest of them, which agree with `merged`.
    pub async fn replace(
        &self,
        merged: &ObjectPath,
        bytes: Vec<u8>,
        replaced: impl IntoIterator<Item = ObjectPath>,
    ) -> Result<(), LakeError> {
        self.lake.put_durable(merged, bytes.into()).await?;
        for file in replaced {
            if &file != merged {
                self.lake.delete_durable(&file).await?;
            }
        }
        Ok(())
    }
}
