//! Compaction: the small objects of a partition folder
//! (`<dataset>/tenant=<id>/date=<day>/`) merged into one, without changing
//! any answer.
//!
//! Every flush writes one object per dataset, tenant and date it touched,
//! so a partition gathers hundreds of small objects over a day; a query
//! pays per object. Compaction reads a folder's small objects, writes their
//! rows as one object sorted by (subject, slot), and deletes them. Rows are
//! additive sums, so the merged object answers every query as its members
//! did.
//!
//! The order makes it safe at every step, for a crash and for readers:
//! 1. A members file, `compact-<id>.members.json` (not `.parquet`, so no
//!    table reads it), names the objects to be merged.
//! 2. The merged object `compact-<id>.parquet` is written whole.
//! 3. The members are deleted, then the members file.
//!
//! A reader that lists the folder between 2 and 3 sees the merged object
//! and its members: the query service (`candor_query::lake`) drops the
//! members of a merged object it can see, so no row is counted twice. A
//! crash before 2 leaves a members file without its merged object: the next
//! run deletes it and merges again. A crash after 2 leaves both: the next
//! run finishes 3.
//!
//! An object listed in a processor's flush intent may still be replaced by
//! a replay of its log records (see [`crate::intent`]), so it is never
//! merged; the folder is listed before the intents are read, so an object
//! of a flush that begins meanwhile is either unlisted or in an intent.
//!
//! Retention and erasure also rewrite or delete objects; compaction, the
//! retention run and erasure hold the lake's maintenance lease
//! ([`Lake::lease`]) so that they never run at once on one lake.
//!
//! A tenant with a lake of its own (data residency) is compacted there,
//! under that lake's lease; the intents that say which objects are pending
//! are always read from the deployment's lake.

use std::collections::{BTreeMap, HashSet};

use arrow::array::{Array, ArrayRef, RecordBatch, new_null_array};
use arrow::compute::{SortColumn, lexsort_to_indices, take_record_batch};
use candor_schemas::Dataset;
use candor_schemas::datasets::{MEMBERS_SUFFIX, MERGED_PREFIX, MergedMembers};
use object_store::ObjectMeta;
use object_store::path::Path as ObjectPath;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde::Serialize;

use crate::intent::pending_objects;
use candor_lake::{Lake, LakeError, Lakes};

#[derive(Debug, Clone)]
pub struct CompactionConfig {
    /// A folder is compacted once it holds at least this many small objects.
    pub min_objects: usize,
    /// Objects of at least this many bytes are left as they are.
    pub small_bytes: u64,
    /// At most this many bytes of objects (compressed) are merged into one,
    /// which bounds the memory a merge takes (a few times this).
    pub max_merge_bytes: u64,
}

impl Default for CompactionConfig {
    fn default() -> Self {
        Self {
            min_objects: 4,
            small_bytes: 32 << 20,
            max_merge_bytes: 64 << 20,
        }
    }
}

/// What a compaction run did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Compacted {
    /// Folders whose small objects were merged.
    pub folders: usize,
    /// Objects merged (and deleted).
    pub objects_merged: usize,
    /// Merged objects written.
    pub objects_written: usize,
    pub rows: usize,
    /// Merges an earlier, interrupted run left half done and this one
    /// finished or undid.
    pub resumed: usize,
    /// Objects left out because a flush that is not yet committed wrote them.
    pub pending_skipped: usize,
    /// Lakes left alone because another job holds their maintenance lease.
    pub lakes_busy: usize,
    /// Lakes that could not be compacted (unreachable, say); logged, and
    /// tried again at the next run.
    pub lakes_failed: usize,
}

impl Compacted {
    fn add(&mut self, other: &Compacted) {
        self.folders += other.folders;
        self.objects_merged += other.objects_merged;
        self.objects_written += other.objects_written;
        self.rows += other.rows;
        self.resumed += other.resumed;
        self.pending_skipped += other.pending_skipped;
        self.lakes_busy += other.lakes_busy;
        self.lakes_failed += other.lakes_failed;
    }
}

/// Compacts every lake in use: the deployment's and each tenant's own
/// (see [`Lakes::in_use`]). A lake that fails does not stop the others.
pub async fn compact_all(
    lakes: &Lakes,
    docs: &candor_control::DocumentStore,
    config: &CompactionConfig,
    holder: &str,
    now_ms: i64,
) -> Result<Compacted, LakeError> {
    let mut done = Compacted::default();
    let tenants = crate::tenants::all(docs).await?;
    for (key, _) in lakes.in_use(&tenants)? {
        match compact(lakes, key.as_deref(), config, holder, now_ms).await {
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

/// Compacts every partition folder with enough small objects in the lake
/// `key` names (`None`: the deployment's; see [`Lakes::key`]). `holder`
/// names this process in the maintenance lease.
pub async fn compact(
    lakes: &Lakes,
    key: Option<&str>,
    config: &CompactionConfig,
    holder: &str,
    now_ms: i64,
) -> Result<Compacted, LakeError> {
    let lake = lakes.at(key)?;
    let Some(lease) = lake.lease(holder, now_ms).await? else {
        return Ok(Compacted {
            lakes_busy: 1,
            ..Compacted::default()
        });
    };
    let outcome = compact_held(&lake, lakes.home(), key, config, now_ms).await;
    lease.release().await?;
    outcome
}

async fn compact_held(
    lake: &Lake,
    home: &Lake,
    key: Option<&str>,
    config: &CompactionConfig,
    now_ms: i64,
) -> Result<Compacted, LakeError> {
    let mut done = Compacted::default();
    let mut sequence = 0;
    for dataset in Dataset::ALL {
        // Listed before the intents are read: see the module's notes.
        let listed = lake.list(&ObjectPath::from(dataset.name())).await?;
        let pending = pending_objects(home, key).await?;
        let mut folders: BTreeMap<String, Vec<ObjectMeta>> = BTreeMap::new();
        for object in listed {
            let folder = folder_of(&object.location);
            folders.entry(folder).or_default().push(object);
        }
        for (folder, mut objects) in folders {
            objects.sort_by(|a, b| a.location.cmp(&b.location));
            done.resumed += resume(lake, &mut objects).await?;
            let mut members = Vec::new();
            let mut bytes = 0;
            for object in &objects {
                if object.location.extension() != Some("parquet")
                    || object.size >= config.small_bytes
                {
                    continue;
                }
                if pending.contains(object.location.as_ref()) {
                    done.pending_skipped += 1;
                    continue;
                }
                if bytes + object.size > config.max_merge_bytes && !members.is_empty() {
                    break;
                }
                bytes += object.size;
                members.push(object.location.clone());
            }
            if members.len() < config.min_objects {
                continue;
            }
            sequence += 1;
            let id = format!("{MERGED_PREFIX}{now_ms:020}-{sequence:06}");
            let rows = merge(lake, dataset, &folder, &id, &members).await?;
            done.folders += 1;
            done.objects_merged += members.len();
            done.objects_written += 1;
            done.rows += rows;
        }
    }
    Ok(done)
}

/// The folder of an object, with its trailing `/`.
fn folder_of(path: &ObjectPath) -> String {
    let path = path.as_ref();
    path.rfind('/')
        .map_or(String::new(), |i| path[..=i].to_string())
}

/// Finishes or undoes the merges an interrupted run left in a folder, and
/// drops what it deletes from `objects`. Returns how many it found.
async fn resume(lake: &Lake, objects: &mut Vec<ObjectMeta>) -> Result<usize, LakeError> {
    let names: HashSet<String> = objects.iter().map(|o| o.location.to_string()).collect();
    let mut found = 0;
    let mut gone: HashSet<String> = HashSet::new();
    for object in objects.iter() {
        let Some(merged) = object.location.as_ref().strip_suffix(MEMBERS_SUFFIX) else {
            continue;
        };
        found += 1;
        if names.contains(&format!("{merged}.parquet")) {
            let members = read_members(lake, &object.location).await?;
            let folder = folder_of(&object.location);
            for member in members.objects {
                let path = ObjectPath::from(format!("{folder}{member}"));
                lake.delete_durable(&path).await?;
                gone.insert(path.to_string());
            }
        }
        lake.delete_durable(&object.location).await?;
        gone.insert(object.location.to_string());
    }
    objects.retain(|o| !gone.contains(o.location.as_ref()));
    Ok(found)
}

async fn read_members(lake: &Lake, path: &ObjectPath) -> Result<MergedMembers, LakeError> {
    let bytes = lake
        .get_optional(path)
        .await?
        .ok_or_else(|| LakeError::Corrupt(format!("{path}: vanished while compacting")))?;
    serde_json::from_slice(&bytes).map_err(|e| LakeError::Corrupt(format!("{path}: {e}")))
}

/// Merges `members` of `folder` into `<folder><id>.parquet` and deletes
/// them. Returns the rows written.
async fn merge(
    lake: &Lake,
    dataset: Dataset,
    folder: &str,
    id: &str,
    members: &[ObjectPath],
) -> Result<usize, LakeError> {
    let schema = dataset.lake_schema();
    let mut batches = Vec::new();
    for path in members {
        let bytes = lake
            .get_optional(path)
            .await?
            .ok_or_else(|| LakeError::Corrupt(format!("{path}: vanished while compacting")))?;
        let corrupt = |e: &dyn std::fmt::Display| LakeError::Corrupt(format!("{path}: {e}"));
        let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
            .map_err(|e| corrupt(&e))?
            .build()
            .map_err(|e| corrupt(&e))?;
        for batch in reader {
            let batch = batch.map_err(|e| corrupt(&e))?;
            batches.push(to_lake_schema(&batch, &schema).map_err(|e| corrupt(&e))?);
        }
    }
    let all = arrow::compute::concat_batches(&schema, &batches)
        .map_err(|e| LakeError::Corrupt(format!("{folder}: {e}")))?;
    let sorted =
        sort_by_subject_and_slot(&all).map_err(|e| LakeError::Corrupt(format!("{folder}: {e}")))?;
    let names: Vec<String> = members
        .iter()
        .filter_map(|p| p.filename().map(str::to_string))
        .collect();
    let members_file = ObjectPath::from(format!("{folder}{id}{MEMBERS_SUFFIX}"));
    let body = serde_json::to_vec(&MergedMembers { objects: names }).expect("names serialize");
    lake.put_durable(&members_file, body.into()).await?;
    lake.write_parquet(&ObjectPath::from(format!("{folder}{id}.parquet")), &sorted)
        .await?;
    for path in members {
        lake.delete_durable(path).await?;
    }
    lake.delete_durable(&members_file).await?;
    Ok(sorted.num_rows())
}

/// `batch` with the columns of the dataset's current lake schema: objects
/// written before a nullable column was added get nulls for it.
fn to_lake_schema(
    batch: &RecordBatch,
    schema: &arrow::datatypes::SchemaRef,
) -> Result<RecordBatch, arrow::error::ArrowError> {
    let columns = schema
        .fields()
        .iter()
        .map(|field| match batch.column_by_name(field.name()) {
            Some(column) if column.data_type() == field.data_type() => Ok(column.clone()),
            Some(column) => arrow::compute::cast(column, field.data_type()),
            None if field.is_nullable() => Ok(new_null_array(field.data_type(), batch.num_rows())),
            None => Err(arrow::error::ArrowError::SchemaError(format!(
                "no column {}",
                field.name()
            ))),
        })
        .collect::<Result<Vec<ArrayRef>, _>>()?;
    RecordBatch::try_new(schema.clone(), columns)
}

/// Rows in (subject, slot) order, as the processor writes them, so the
/// merged object's statistics prune as well as its members' did.
fn sort_by_subject_and_slot(batch: &RecordBatch) -> Result<RecordBatch, arrow::error::ArrowError> {
    let key = |name: &str| SortColumn {
        values: batch.column_by_name(name).expect("lake schema").clone(),
        options: None,
    };
    let indices = lexsort_to_indices(&[key("subject"), key("slot_start")], None)?;
    take_record_batch(batch, &indices)
}
