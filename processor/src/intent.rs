//! Exactly once into the lake, across crashes and rebalances.
//!
//! Objects are named after the log positions they cover, so replaying the
//! same chunk of records rewrites the same objects. But a replay need not
//! cut the same chunks: after a crash the next poll may return more or fewer
//! records than the flush that was cut short, and its objects get other
//! names. So before a flush writes anything, it records its intent durably
//! in the lake: the partition, the first and last offset, and every object
//! it will write.
//!
//! A processor commits each flush before it starts the next (a failed
//! commit is retried, never skipped), and after a crash or rebalance a
//! partition resumes from its last commit. So when a flush of partition `p`
//! starts at offset `F`, everything before `F` is committed, and an intent of
//! `p` that starts at `F` or later is the leftover of a flush that never
//! committed: its objects are deleted before the new flush writes, and the
//! new flush (or a later one) holds its records.
//!
//! Objects of a tenant with a lake of its own are written there, and the
//! intent (which always lives in the deployment's lake) names them under
//! that lake's location, so a cleanup deletes them where they are.
//!
//! Known limit: a processor that lost its partition but is still writing (it
//! stalled for longer than the group's session timeout) can write after its
//! successor cleaned up. Its commit then fails and it stops, but what it
//! wrote stays. Keep flushes well under the session timeout.

use std::collections::{BTreeMap, HashSet};

use object_store::path::Path as ObjectPath;
use serde::{Deserialize, Serialize};

use candor_lake::{Lake, LakeError, Lakes};

/// Where the processors' own state lives in the lake, apart from datasets.
const INTENTS_ROOT: &str = "_processor";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlushIntent {
    pub partition: i32,
    pub first: i64,
    pub last: i64,
    /// Paths of every object the flush writes to the deployment's lake.
    pub objects: Vec<String>,
    /// Paths of the objects it writes to tenants' own lakes, by the lake's
    /// location ([`Lakes::key`]).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub elsewhere: BTreeMap<String, Vec<String>>,
}

impl FlushIntent {
    /// The objects in the lake `key` names (`None`: the deployment's).
    pub fn objects_in(&self, key: Option<&str>) -> &[String] {
        match key {
            None => &self.objects,
            Some(key) => self.elsewhere.get(key).map_or(&[], Vec::as_slice),
        }
    }

    /// Every lake the flush writes to, by key.
    fn lakes(&self) -> impl Iterator<Item = Option<&str>> {
        std::iter::once(None).chain(self.elsewhere.keys().map(|k| Some(k.as_str())))
    }
}

/// The intents of one consumer group, kept in the deployment's lake under
/// `_processor/<group>/`, where no dataset's listing looks.
pub struct Intents {
    lakes: Lakes,
    group: String,
}

impl Intents {
    pub fn new(lakes: Lakes, group: &str) -> Self {
        Self {
            lakes,
            group: group.to_string(),
        }
    }

    fn path(&self, partition: i32) -> ObjectPath {
        ObjectPath::from(format!(
            "{INTENTS_ROOT}/{}/partition-{partition:05}.json",
            self.group
        ))
    }

    /// Records `intent` before its flush writes anything, first deleting
    /// the objects of an uncommitted earlier flush of the same partition
    /// that the new one does not rewrite. Returns how many were deleted.
    pub async fn begin(&self, intent: &FlushIntent) -> Result<usize, LakeError> {
        let path = self.path(intent.partition);
        let home = self.lakes.home();
        let mut deleted = 0;
        if let Some(bytes) = home.get_optional(&path).await? {
            let earlier: FlushIntent = serde_json::from_slice(&bytes).map_err(|e| {
                // Objects are written whole (a rename or an S3 PUT), so this
                // is not a torn write; guessing could lose or double rows.
                LakeError::Corrupt(format!("{path}: {e}"))
            })?;
            if earlier.first >= intent.first {
                for key in earlier.lakes() {
                    let rewritten = intent.objects_in(key);
                    let lake = self.lakes.at(key)?;
                    for object in earlier.objects_in(key) {
                        if !rewritten.contains(object) {
                            lake.delete_durable(&ObjectPath::from(object.as_str()))
                                .await?;
                            deleted += 1;
                        }
                    }
                }
                if deleted > 0 {
                    tracing::warn!(
                        partition = intent.partition,
                        first = earlier.first,
                        last = earlier.last,
                        deleted,
                        "deleted the objects of a flush that was never committed"
                    );
                }
            }
        }
        let body = serde_json::to_vec(intent).expect("an intent serializes");
        home.put_durable(&path, body.into()).await?;
        Ok(deleted)
    }
}

/// Every object in the lake `key` names (`None`: the deployment's) that an
/// intent of any consumer group names: the objects a replay may still
/// replace, which compaction must leave alone. The intents are read from
/// `home`, the deployment's lake.
pub async fn pending_objects(home: &Lake, key: Option<&str>) -> Result<HashSet<String>, LakeError> {
    let listed = home.list(&ObjectPath::from(INTENTS_ROOT)).await?;
    let mut pending = HashSet::new();
    for meta in listed {
        let is_intent = meta
            .location
            .filename()
            .is_some_and(|name| name.starts_with("partition-") && name.ends_with(".json"));
        if !is_intent {
            continue;
        }
        let Some(bytes) = home.get_optional(&meta.location).await? else {
            continue; // replaced meanwhile; its successor was listed or is newer
        };
        let intent: FlushIntent = serde_json::from_slice(&bytes)
            .map_err(|e| LakeError::Corrupt(format!("{}: {e}", meta.location)))?;
        pending.extend(intent.objects_in(key).iter().cloned());
    }
    Ok(pending)
}
