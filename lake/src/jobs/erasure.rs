//! Erasure of one employee from the lake: the employee's rows are deleted
//! from every dataset table of the tenant (Delta's DELETE: each file that
//! holds the subject is rewritten without those rows, in one version per
//! table), then VACUUM deletes the old files' bytes at once, so no object
//! of any lake holds a row of the subject when it returns.
//!
//! The request is written to the tenant's audit trail before anything is
//! touched, and the outcome (files rewritten, rows removed, each table's
//! versions before and after) after, so an interrupted erasure is on
//! record and running it again finishes it. A query planned on a version
//! before the delete may fail to read a vacuumed file; it is planned again
//! on the next request.
//!
//! Every lake in use is searched: the deployment's and each lake a tenant
//! names (data residency), so rows a tenant left behind when its lake moved
//! are erased too.
//!
//! What this does not reach: records still in the log (sealed, expiring
//! with the topic's retention) and a flush in flight when it runs. Revoke
//! the employee's devices and remove them from the directory first; a
//! flush of the log's older records after the erasure could bring rows
//! back, so run it again once the log has aged past the erasure.

use std::time::Duration;

use candor_control::{AuditEvent, AuditLog};
use candor_schemas::TenantId;

use super::retention::RetentionError;
use super::{UNCOMMITTED_RETENTION, tables_of};
use crate::{LakeError, Lakes};

/// What an erasure removed.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Erased {
    /// Files that held the subject's rows, replaced.
    pub objects_rewritten: usize,
    /// Files written in their place (the other rows of those files).
    pub objects_written: usize,
    pub rows_removed: usize,
    /// Per lake and table, the versions before and after.
    pub tables: Vec<ErasedTable>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ErasedTable {
    pub lake: String,
    pub table: String,
    pub version_before: u64,
    pub version_after: u64,
}

/// Who asked, for the audit trail.
#[derive(Debug, Clone)]
pub struct ErasureRequest {
    pub tenant: TenantId,
    /// The employee's lake subject (the pseudonym, never the raw id).
    pub subject: String,
    pub actor: String,
    pub source: String,
}

/// Removes every row of `request.subject` from the tenant's part of every
/// lake in use (tenants from `docs`).
pub async fn erase_subject(
    lakes: &Lakes,
    docs: &candor_control::DocumentStore,
    audit: &AuditLog,
    request: &ErasureRequest,
    now_ms: i64,
) -> Result<Erased, RetentionError> {
    if !request
        .subject
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(
            LakeError::Refused(format!("{:?} is not a lake subject", request.subject)).into(),
        );
    }
    let event = |action: &str, detail: serde_json::Value| AuditEvent {
        actor: request.actor.clone(),
        role: "operator".into(),
        action: action.into(),
        target: format!("subject:{}", request.subject),
        source: request.source.clone(),
        detail,
    };
    audit
        .append(
            &request.tenant,
            event("lake.erasure.start", serde_json::Value::Null),
            now_ms,
        )
        .await?;
    let predicate = format!(
        "tenant = '{}' AND subject = '{}'",
        request.tenant, request.subject
    );
    let mut erased = Erased::default();
    for (key, lake) in lakes.in_use(&super::tenants(docs).await?)? {
        let lake_name = key.as_deref().unwrap_or("deployment").to_string();
        for mut table in tables_of(&lake).await? {
            let deleted = table.delete_rows(&predicate).await?;
            // Even when this run deleted no row: an interrupted run's
            // delete committed and left the old files for this VACUUM.
            table.vacuum(Duration::ZERO, UNCOMMITTED_RETENTION).await?;
            erased.objects_rewritten += deleted.files_removed;
            erased.objects_written += deleted.files_added;
            erased.rows_removed += deleted.rows.unwrap_or(0);
            erased.tables.push(ErasedTable {
                lake: lake_name.clone(),
                table: table.dataset().name().to_string(),
                version_before: deleted.version_before,
                version_after: deleted.version_after,
            });
        }
    }
    let detail = serde_json::to_value(&erased).expect("counts serialize");
    audit
        .append(&request.tenant, event("lake.erasure", detail), now_ms)
        .await?;
    Ok(erased)
}
