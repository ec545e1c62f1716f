//! Converting a lake written by the release before Delta tables: its
//! hive-partitioned Parquet objects are committed, in place, as version 0
//! and 1 of each dataset's table (`candor lake convert`).
//!
//! That release's objects are named `part-<partition>-<first>-<last>.parquet`
//! and `compact-<id>.parquet` (a compaction's merged object); this release
//! names every object with a unique suffix. An object a merged object
//! replaced (listed in the merge's `.members.json`, with the merged object
//! present) is left out, so no row is counted twice; VACUUM deletes it with
//! the members file.
//!
//! What that release could leave uncommitted are the objects its flush
//! intents (`_processor/<group>/partition-*.json`) name: whether each was
//! committed is known only to the log. So conversion asks that the old
//! processors were stopped after `candor processor --drain` (every flush
//! committed) and refuses a lake with intents unless told so. The batch
//! ids and GPS routes that release kept are not carried over: a copy of a
//! batch that arrives in the first two days after the upgrade may count
//! twice, and each moving device starts a new route once.
//!
//! Until a lake is converted, this release refuses to create a table over
//! a dataset folder that holds the previous release's objects.

use std::collections::{BTreeMap, HashSet};

use candor_schemas::TenantId;
use candor_schemas::datasets::{Dataset, MEMBERS_SUFFIX, MERGED_PREFIX, MergedMembers};
use object_store::path::Path as ObjectPath;
use parquet::file::metadata::ParquetMetaDataReader;
use serde::Serialize;

use crate::layout::{PartitionKey, parse_date_folder};
use crate::{DatasetTable, Lake, LakeError, Lakes, NewObject};

/// Where the previous release kept its flush intents, in the deployment's lake.
const INTENTS_FOLDER: &str = "_processor";

/// What a conversion did, per lake.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Converted {
    /// Tables created from existing objects.
    pub tables: usize,
    pub objects: usize,
    pub rows: u64,
    /// Objects a merged object replaced, left for VACUUM.
    pub replaced: usize,
    /// Tables that were Delta tables already.
    pub already: usize,
}

/// Whether an object's file name is the previous release's: a flush's
/// `part-<5 digits>-<20 digits>-<20 digits>.parquet` or a merged
/// `compact-….parquet` (this release adds a unique suffix to both).
fn written_by_previous_release(name: &str) -> bool {
    let Some(stem) = name.strip_suffix(".parquet") else {
        return false;
    };
    if stem.starts_with(MERGED_PREFIX) {
        return true;
    }
    let digits = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_digit());
    let parts: Vec<&str> = stem.split('-').collect();
    matches!(parts.as_slice(), ["part", p, f, l] if digits(p, 5) && digits(f, 20) && digits(l, 20))
}

/// Refuses to start a table for `dataset` over folders that hold the
/// previous release's objects.
pub(crate) async fn refuse_previous_release(
    lake: &Lake,
    dataset: Dataset,
) -> Result<(), LakeError> {
    let old = lake
        .list(&ObjectPath::from(dataset.name()))
        .await?
        .into_iter()
        .any(|meta| {
            meta.location
                .filename()
                .is_some_and(written_by_previous_release)
        });
    if old {
        return Err(LakeError::Refused(format!(
            "{}/ holds objects of the release before Delta tables; convert the lake first with \
             `candor lake convert` (see its --help)",
            dataset.name()
        )));
    }
    Ok(())
}

/// Converts every lake in use (the deployment's and each tenant's own).
/// `drained`: the previous release's processors were stopped after a
/// drain, so every object its flush intents name was committed.
pub async fn convert_all(
    lakes: &Lakes,
    docs: &candor_control::DocumentStore,
    drained: bool,
) -> Result<Converted, LakeError> {
    let intents = lakes
        .home()
        .list(&ObjectPath::from(INTENTS_FOLDER))
        .await?
        .into_iter()
        .filter(|m| m.location.extension() == Some("json"))
        .count();
    if intents > 0 && !drained {
        return Err(LakeError::Refused(format!(
            "the lake holds {intents} flush intents of the previous release, whose last flushes \
             only its log knows to be committed: stop its processors with `candor processor \
             --drain`, then convert with --drained"
        )));
    }
    let mut done = Converted::default();
    for (_, lake) in lakes.in_use(&super::tenants(docs).await?)? {
        let one = convert(&lake).await?;
        done.tables += one.tables;
        done.objects += one.objects;
        done.rows += one.rows;
        done.replaced += one.replaced;
        done.already += one.already;
    }
    Ok(done)
}

/// Converts one lake's dataset folders into tables; a dataset that has a
/// table already is left as it is, so running it again is harmless.
pub async fn convert(lake: &Lake) -> Result<Converted, LakeError> {
    let mut done = Converted::default();
    for dataset in Dataset::ALL {
        if DatasetTable::load(lake, dataset).await?.is_some() {
            done.already += 1;
            continue;
        }
        let listed = lake.list(&ObjectPath::from(dataset.name())).await?;
        // Per partition folder: its objects, and what merges replaced.
        let mut folders: BTreeMap<String, Vec<(String, u64)>> = BTreeMap::new();
        let mut replaced: HashSet<String> = HashSet::new();
        let mut merged_present: HashSet<String> = HashSet::new();
        let mut members_files = Vec::new();
        for meta in &listed {
            let path = meta.location.as_ref();
            let (folder, name) = path.rsplit_once('/').unwrap_or(("", path));
            if name.ends_with(MEMBERS_SUFFIX) {
                members_files.push(meta.location.clone());
            } else if name.ends_with(".parquet") {
                merged_present.insert(path.to_string());
                folders
                    .entry(folder.to_string())
                    .or_default()
                    .push((name.to_string(), meta.size));
            }
        }
        for members in members_files {
            let merged = members
                .as_ref()
                .strip_suffix(MEMBERS_SUFFIX)
                .expect("listed by its suffix");
            if !merged_present.contains(&format!("{merged}.parquet")) {
                continue; // the merge never wrote its object: members are the data
            }
            let Some(bytes) = lake.get_optional(&members).await? else {
                continue;
            };
            let list: MergedMembers = serde_json::from_slice(&bytes)
                .map_err(|e| LakeError::Corrupt(format!("{members}: {e}")))?;
            let folder = merged.rsplit_once('/').map_or("", |(f, _)| f);
            replaced.extend(list.objects.iter().map(|m| format!("{folder}/{m}")));
        }
        let mut objects = Vec::new();
        for (folder, files) in folders {
            let key = partition_of(dataset, &folder)?;
            for (name, size) in files {
                if replaced.contains(&format!("{folder}/{name}")) {
                    done.replaced += 1;
                    continue;
                }
                let rows = row_count(lake, &key.object_path(&name)).await?;
                done.rows += rows;
                objects.push(NewObject {
                    key: key.clone(),
                    file_name: name,
                    size,
                    rows,
                });
            }
        }
        let mut table = DatasetTable::create_for_conversion(lake, dataset).await?;
        if !objects.is_empty() {
            table.append(&objects, &[]).await?;
        }
        done.tables += 1;
        done.objects += objects.len();
        tracing::info!(
            dataset = dataset.name(),
            objects = objects.len(),
            "converted a dataset's folders into its table"
        );
    }
    Ok(done)
}

/// The partition a folder `<dataset>/tenant=<id>/date=<day>` stands for.
fn partition_of(dataset: Dataset, folder: &str) -> Result<PartitionKey, LakeError> {
    let bad = || {
        LakeError::Refused(format!(
            "{folder}: not a partition folder of {}",
            dataset.name()
        ))
    };
    let mut parts = folder.split('/');
    let (Some(name), Some(tenant), Some(date), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad());
    };
    if name != dataset.name() {
        return Err(bad());
    }
    let tenant = tenant
        .strip_prefix("tenant=")
        .and_then(|t| TenantId::new(t).ok())
        .ok_or_else(bad)?;
    let day = parse_date_folder(date).ok_or_else(bad)?;
    Ok(PartitionKey {
        dataset,
        tenant,
        date: day.to_string(),
    })
}

/// An object's row count, from its footer. The conversion runs once, so
/// the object is read whole.
async fn row_count(lake: &Lake, path: &ObjectPath) -> Result<u64, LakeError> {
    let bytes = lake
        .get_optional(path)
        .await?
        .ok_or_else(|| LakeError::Corrupt(format!("{path}: listed, then gone")))?;
    let metadata = ParquetMetaDataReader::new()
        .parse_and_finish(&bytes)
        .map_err(|e| LakeError::Corrupt(format!("{path}: {e}")))?;
    Ok(u64::try_from(metadata.file_metadata().num_rows()).unwrap_or(0))
}
