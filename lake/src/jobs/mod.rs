//! The lake's maintenance jobs, as a long-running node schedules them and
//! an operator's command runs them once: compaction ([`compaction`]),
//! retention and purge ([`retention`]) and erasure ([`erasure`]), each a
//! Delta operation on the dataset tables of every lake in use, followed by
//! VACUUM, which deletes the bytes the operation left behind.
//!
//! Delta's own conflict checks keep jobs apart from each other and from
//! the processors' appends: an append never conflicts with a compaction or
//! a delete, and two jobs that rewrite the same file cannot both commit
//! (the loser fails, and its next run does the work again). So jobs hold
//! no lease.

pub mod compaction;
pub mod convert;
pub mod erasure;
pub mod retention;

use std::time::Duration;

use candor_schemas::Dataset;

use crate::{DatasetTable, Lake, LakeError};

/// How long an erasure's VACUUM keeps objects that no table version names,
/// counted from when they were written: the objects of a flush that has not
/// committed yet are among them, so this is far longer than any flush takes
/// from writing to committing (a processor rewrites objects that waited 15
/// minutes, see `candor_processor`). Older ones (a flush that never
/// committed) may hold the erased employee's rows, so they go with them.
pub const UNCOMMITTED_RETENTION: Duration = Duration::from_secs(3600);

/// How long compaction's VACUUM leaves the files a compaction replaced,
/// and objects no version names: queries planned on the version before
/// read the replaced files, and so do an owner's questions `as_of` a moment
/// before the compaction and `candor extract verify`. They hold the same
/// rows as the files that replaced them; objects no version names hold
/// rows of flushes that never committed (written again by their successor)
/// or of a flush a stopped processor committed only to its state (whose
/// successor commits them to the tables). Retention deletes an expired
/// partition's files at once, whatever their kind, and an erasure every
/// file the employee's rows are in.
pub const REPLACED_RETENTION: Duration = Duration::from_secs(7 * 86_400);

/// The tables of `lake` that exist, one per dataset.
pub(crate) async fn tables_of(lake: &Lake) -> Result<Vec<DatasetTable>, LakeError> {
    let mut tables = Vec::new();
    for dataset in Dataset::ALL {
        tables.extend(DatasetTable::load(lake, dataset).await?);
    }
    Ok(tables)
}

/// Every tenant document of the control plane. One that cannot be read is
/// logged and left out, so it does not stop maintenance of the others.
pub async fn tenants(
    docs: &candor_control::DocumentStore,
) -> Result<Vec<candor_control::Tenant>, LakeError> {
    use candor_control::documents::Kind;
    let ids = docs
        .ids(Kind::Tenant)
        .await
        .map_err(|e| LakeError::Control(e.to_string()))?;
    let mut all = Vec::new();
    for id in ids {
        match docs.get::<candor_control::Tenant>(Kind::Tenant, &id).await {
            Ok(Some(tenant)) => all.push(tenant.doc),
            Ok(None) => {}
            Err(e) => {
                tracing::error!(tenant = %id, error = %e, "unreadable tenant document left out")
            }
        }
    }
    Ok(all)
}
