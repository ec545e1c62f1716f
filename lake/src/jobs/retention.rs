//! Retention: date partitions older than a tenant's retention are deleted
//! from the lake, and a cancelled tenant's whole lake is purged once its
//! grace period is over. Every partition deleted is first written to the
//! tenant's audit trail with what it holds (objects and bytes), so a
//! deletion can be interrupted but never goes unrecorded; the next run
//! finishes it.
//!
//! A partition `date=D` is deleted once all of `D` is older than the
//! retention: `D < today (UTC) - retention_days`. Ingest accepts events back
//! to exactly `now - retention_days`, which falls on `today - retention_days`
//! or later, so nothing ingest accepts is deleted on arrival.
//!
//! A partition is deleted from its dataset's Delta table (a metadata-only
//! DELETE: its files leave the table in one version), then every object in
//! its folder is deleted and the folder removed: the files the DELETE
//! removed, the files a compaction of the partition replaced earlier, and
//! objects of flushes that never committed. This is VACUUM for exactly the
//! expired partition, with no retention: an expired partition's bytes are
//! gone when the run returns, while the rest of the table keeps what its
//! own VACUUM keeps (see [`super::REPLACED_RETENTION`]). A query planned on
//! the version before may fail to read them; it is planned again on the
//! next request.
//!
//! An expired partition folder the table no longer names is what an
//! interrupted run left (its DELETE committed, not all of its bytes
//! deleted): the next run records and deletes it like any other.
//!
//! Every lake in use is visited: the deployment's and every lake a tenant
//! names (data residency). A tenant's partitions are expired in all of
//! them, so rows a tenant left behind when its lake moved are deleted on
//! time too.

use std::collections::BTreeMap;
use std::time::Duration;

use candor_control::{AuditEvent, AuditLog, DocumentStore, Tenant};
use candor_schemas::{Dataset, TenantId};
use chrono::NaiveDate;

use super::tables_of;
use crate::layout::{date_folder, tenant_folder};
use crate::{DatasetTable, Lake, LakeError, Lakes};

#[derive(Debug, thiserror::Error)]
pub enum RetentionError {
    #[error(transparent)]
    Lake(#[from] LakeError),
    #[error("control plane: {0}")]
    Control(#[from] candor_control::DocumentError),
    #[error("audit trail: {0}")]
    Audit(#[from] candor_control::AuditError),
}

#[derive(Debug, Clone)]
pub struct RetentionConfig {
    /// How long a cancelled tenant's data is kept before it is purged.
    pub purge_grace: Duration,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self {
            purge_grace: Duration::from_secs(30 * 86_400),
        }
    }
}

/// One partition removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deleted {
    pub tenant: TenantId,
    pub dataset: Dataset,
    pub date: NaiveDate,
    pub objects: usize,
    pub bytes: u64,
}

/// What a retention run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetentionRun {
    pub deleted: Vec<Deleted>,
    /// Tenants or lakes skipped for an error (logged); the next run tries
    /// them again.
    pub skipped: usize,
}

/// Applies retention to every tenant of the control plane, in every lake
/// in use. `now_ms` is the wall clock. A tenant or a lake that fails is
/// logged and skipped, so one bad document or one unreachable lake does
/// not stop the others' deletions.
pub async fn run(
    lakes: &Lakes,
    docs: &DocumentStore,
    audit: &AuditLog,
    config: &RetentionConfig,
    now_ms: i64,
) -> Result<RetentionRun, RetentionError> {
    let all = super::tenants(docs).await?;
    let mut done = RetentionRun::default();
    for (key, lake) in lakes.in_use(&all)? {
        let name = key.as_deref().unwrap_or("deployment");
        let tables = match tables_of(&lake).await {
            Ok(tables) => tables,
            Err(e) => {
                tracing::error!(lake = name, error = %e, "retention skipped this lake");
                done.skipped += 1;
                continue;
            }
        };
        for mut table in tables {
            for tenant in &all {
                match expire_tenant(&mut table, &lake, name, audit, tenant, config, now_ms).await {
                    Ok(deleted) => done.deleted.extend(deleted),
                    Err(e) => {
                        tracing::error!(tenant = %tenant.id, table = table.dataset().name(), error = %e, "retention skipped this tenant");
                        done.skipped += 1;
                    }
                }
            }
        }
    }
    Ok(done)
}

/// Deletes one tenant's expired partitions of one table of `lake` (all of
/// them once a cancelled tenant's grace period is over), rows and bytes.
pub async fn expire_tenant(
    table: &mut DatasetTable,
    lake: &Lake,
    lake_name: &str,
    audit: &AuditLog,
    tenant: &Tenant,
    config: &RetentionConfig,
    now_ms: i64,
) -> Result<Vec<Deleted>, RetentionError> {
    let today = chrono::DateTime::from_timestamp_millis(now_ms)
        .expect("the clock is in range")
        .date_naive();
    let purge = tenant
        .cancelled_at_ms
        .is_some_and(|at| now_ms - at >= config.purge_grace.as_millis() as i64);
    let keep_from = today - chrono::Days::new(u64::from(tenant.retention_days()));
    table.refresh().await?;
    let dataset = table.dataset();
    // The tenant's partitions in the table, with what they hold, and the
    // folders of partitions the table no longer names.
    let mut partitions: BTreeMap<String, Held> = BTreeMap::new();
    for object in table.tenant_objects(&tenant.id)? {
        let held = partitions.entry(object.date).or_insert(Held::IN_TABLE);
        held.objects += 1;
        held.bytes += object.size;
    }
    for date in lake
        .folders_under(&tenant_folder(dataset, &tenant.id))
        .await?
    {
        if let Some(date) = date.strip_prefix("date=") {
            partitions
                .entry(date.to_string())
                .or_insert(Held::LEFT_BEHIND);
        }
    }
    let mut deleted = Vec::new();
    for (date, mut held) in partitions {
        let Ok(day) = date.parse::<NaiveDate>() else {
            tracing::warn!(tenant = %tenant.id, dataset = dataset.name(), date, "a partition whose date is not a date: left alone");
            continue;
        };
        if !purge && day >= keep_from {
            continue;
        }
        let partition = tenant_folder(dataset, &tenant.id).join(date_folder(&date));
        if !held.in_table {
            let left = lake.list(&partition).await?;
            if left.is_empty() {
                lake.remove_empty_folder(&partition)?;
                continue;
            }
            held.objects = left.len();
            held.bytes = left.iter().map(|o| o.size).sum();
        }
        let event = AuditEvent {
            actor: "retention".into(),
            role: "system".into(),
            action: if purge {
                "lake.purge"
            } else {
                "lake.retention"
            }
            .into(),
            target: partition.to_string(),
            source: "processor".into(),
            detail: serde_json::json!({
                "lake": lake_name,
                "objects": held.objects,
                "bytes": held.bytes,
                "table_version": table.version(),
                "in_table": held.in_table,
                "retention_days": tenant.retention_days(),
                "cancelled_at_ms": tenant.cancelled_at_ms,
            }),
        };
        // Recorded before anything is deleted: an interrupted run leaves an
        // entry and the partition (or its folder), which the next run
        // deletes (and records again).
        audit.append(&tenant.id, event, now_ms).await?;
        if held.in_table {
            let predicate = format!(
                "tenant = '{}' AND date = '{}'",
                tenant.id,
                date.replace('\'', "''")
            );
            table.delete_rows(&predicate).await?;
        }
        let objects_deleted = lake.delete_folder(&partition).await?;
        tracing::info!(tenant = %tenant.id, %partition, objects = held.objects, bytes = held.bytes, objects_deleted, version = table.version(), "deleted an expired partition");
        deleted.push(Deleted {
            tenant: tenant.id.clone(),
            dataset,
            date: day,
            objects: held.objects,
            bytes: held.bytes,
        });
    }
    Ok(deleted)
}

/// What a partition holds, and whether the table still names it.
struct Held {
    objects: usize,
    bytes: u64,
    in_table: bool,
}

impl Held {
    const IN_TABLE: Self = Self {
        objects: 0,
        bytes: 0,
        in_table: true,
    };
    const LEFT_BEHIND: Self = Self {
        objects: 0,
        bytes: 0,
        in_table: false,
    };
}
