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
//! Every lake in use is visited, each under its maintenance lease: the
//! deployment's and every lake a tenant names (data residency). A tenant's
//! partitions are expired in all of them, so rows a tenant left behind when
//! its lake moved are deleted on time too.

use std::time::Duration;

use candor_control::{AuditEvent, AuditLog, DocumentStore, Tenant};
use candor_schemas::{Dataset, TenantId};
use chrono::NaiveDate;

use candor_lake::layout::{date_folder, parse_date_folder, tenant_folder};
use candor_lake::{Lake, LakeError, Lakes};

#[derive(Debug, thiserror::Error)]
pub enum RetentionError {
    #[error(transparent)]
    Lake(#[from] LakeError),
    #[error("control plane: {0}")]
    Control(#[from] candor_control::DocumentError),
    #[error("audit trail: {0}")]
    Audit(#[from] candor_control::AuditError),
    #[error(
        "another maintenance job (compaction, retention or erasure) is running on the lake; try again in a few minutes"
    )]
    LeaseBusy,
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
    /// Lakes left alone because another job holds their maintenance lease.
    pub lakes_busy: usize,
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
    let all = crate::tenants::all(docs).await?;
    let mut done = RetentionRun::default();
    for (key, lake) in lakes.in_use(&all)? {
        let name = key.as_deref().unwrap_or("deployment");
        let lease = match lake.lease("retention", now_ms).await {
            Ok(Some(lease)) => lease,
            Ok(None) => {
                done.lakes_busy += 1;
                continue;
            }
            Err(e) => {
                tracing::error!(lake = name, error = %e, "retention skipped this lake");
                done.skipped += 1;
                continue;
            }
        };
        for tenant in &all {
            match expire_tenant(&lake, name, audit, tenant, config, now_ms).await {
                Ok(deleted) => done.deleted.extend(deleted),
                Err(e) => {
                    tracing::error!(tenant = %tenant.id, error = %e, "retention skipped this tenant");
                    done.skipped += 1;
                }
            }
        }
        lease.release().await?;
    }
    Ok(done)
}

/// Deletes one tenant's expired partitions (all of them once a cancelled
/// tenant's grace period is over).
pub async fn expire_tenant(
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
    let mut deleted = Vec::new();
    for dataset in Dataset::ALL {
        for date in partition_dates(lake, dataset, &tenant.id).await? {
            if purge || date < keep_from {
                let partition = (dataset, date);
                let gone =
                    delete_partition(lake, lake_name, audit, tenant, partition, purge, now_ms)
                        .await?;
                deleted.extend(gone);
            }
        }
    }
    Ok(deleted)
}

/// The dates of a tenant's partitions of one dataset.
async fn partition_dates(
    lake: &Lake,
    dataset: Dataset,
    tenant: &TenantId,
) -> Result<Vec<NaiveDate>, LakeError> {
    let listing = lake
        .store()
        .list_with_delimiter(Some(&tenant_folder(dataset, tenant)))
        .await?;
    Ok(listing
        .common_prefixes
        .iter()
        .filter_map(|p| parse_date_folder(p.filename()?))
        .collect())
}

async fn delete_partition(
    lake: &Lake,
    lake_name: &str,
    audit: &AuditLog,
    tenant: &Tenant,
    (dataset, date): (Dataset, NaiveDate),
    purge: bool,
    now_ms: i64,
) -> Result<Option<Deleted>, RetentionError> {
    let prefix = tenant_folder(dataset, &tenant.id).join(date_folder(&date.to_string()));
    let objects = lake.list(&prefix).await?;
    if objects.is_empty() {
        lake.remove_empty_folder(&prefix)?;
        return Ok(None);
    }
    let bytes = objects.iter().map(|o| o.size).sum();
    let event = AuditEvent {
        actor: "retention".into(),
        role: "system".into(),
        action: if purge {
            "lake.purge"
        } else {
            "lake.retention"
        }
        .into(),
        target: prefix.to_string(),
        source: "processor".into(),
        detail: serde_json::json!({
            "lake": lake_name,
            "objects": objects.len(),
            "bytes": bytes,
            "retention_days": tenant.retention_days(),
            "cancelled_at_ms": tenant.cancelled_at_ms,
        }),
    };
    // Recorded before anything is deleted: an interrupted run leaves an
    // entry and some objects, which the next run deletes (and records again).
    audit.append(&tenant.id, event, now_ms).await?;
    for object in &objects {
        lake.delete_durable(&object.location).await?;
    }
    lake.remove_empty_folder(&prefix)?;
    tracing::info!(tenant = %tenant.id, partition = %prefix, objects = objects.len(), bytes, "deleted an expired partition");
    Ok(Some(Deleted {
        tenant: tenant.id.clone(),
        dataset,
        date,
        objects: objects.len(),
        bytes,
    }))
}
