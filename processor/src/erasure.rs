//! Erasure of one employee from the lake: every Parquet object of the
//! tenant that holds the employee's subject is rewritten without those rows,
//! under the same name, or deleted when nothing else is in it.
//!
//! The request is written to the tenant's audit trail before anything is
//! touched, and the outcome (objects rewritten and deleted, rows removed)
//! after, so an interrupted erasure is on record and running it again
//! finishes it. Each rewrite replaces the object whole (a local rename or
//! an S3 PUT), so a query sees the object before or after, never half.
//!
//! Every lake in use is searched: the deployment's and each lake a tenant
//! names (data residency), so rows a tenant left behind when its lake moved
//! are erased too.
//!
//! What this does not reach: records still in the log (sealed, expiring
//! with the topic's retention) and a flush in flight when it runs. Revoke
//! the employee's devices and remove them from the directory first; an
//! uncommitted flush replayed from the log after the erasure could bring
//! rows back, so run it again once the log has aged past the erasure.

use arrow::array::{AsArray, BooleanArray};
use arrow::compute::filter_record_batch;
use candor_control::{AuditEvent, AuditLog};
use candor_schemas::{Dataset, TenantId};
use object_store::path::Path as ObjectPath;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use crate::retention::RetentionError;
use candor_lake::layout::tenant_folder;
use candor_lake::{Lake, LakeError, Lakes};

/// What an erasure removed.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Erased {
    pub objects_rewritten: usize,
    pub objects_deleted: usize,
    pub rows_removed: usize,
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
/// lake in use (tenants from `docs`), holding each lake's maintenance lease
/// (so no compaction merges an object while its rows are being erased).
/// All leases are taken before anything is touched, or none.
pub async fn erase_subject(
    lakes: &Lakes,
    docs: &candor_control::DocumentStore,
    audit: &AuditLog,
    request: &ErasureRequest,
    now_ms: i64,
) -> Result<Erased, RetentionError> {
    let mut held = Vec::new();
    let mut busy = false;
    for (_, lake) in lakes.in_use(&crate::tenants::all(docs).await?)? {
        match lake.lease("erasure", now_ms).await? {
            Some(lease) => held.push((lake, lease)),
            None => {
                busy = true;
                break;
            }
        }
    }
    let outcome = if busy {
        Err(RetentionError::LeaseBusy)
    } else {
        let lakes: Vec<&Lake> = held.iter().map(|(lake, _)| lake).collect();
        erase_held(&lakes, audit, request, now_ms).await
    };
    for (_, lease) in held {
        lease.release().await?;
    }
    outcome
}

async fn erase_held(
    lakes: &[&Lake],
    audit: &AuditLog,
    request: &ErasureRequest,
    now_ms: i64,
) -> Result<Erased, RetentionError> {
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
    let mut erased = Erased::default();
    for lake in lakes {
        for dataset in Dataset::ALL {
            let prefix = tenant_folder(dataset, &request.tenant);
            for object in lake.list(&prefix).await? {
                if object.location.extension() != Some("parquet") {
                    continue;
                }
                erase_from_object(lake, &object.location, &request.subject, &mut erased).await?;
            }
        }
    }
    let detail = serde_json::to_value(&erased).expect("counts serialize");
    audit
        .append(&request.tenant, event("lake.erasure", detail), now_ms)
        .await?;
    Ok(erased)
}

async fn erase_from_object(
    lake: &Lake,
    path: &ObjectPath,
    subject: &str,
    erased: &mut Erased,
) -> Result<(), LakeError> {
    let Some(bytes) = lake.get_optional(path).await? else {
        return Ok(());
    };
    let corrupt = |e: &dyn std::fmt::Display| LakeError::Corrupt(format!("{path}: {e}"));
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
        .map_err(|e| corrupt(&e))?
        .build()
        .map_err(|e| corrupt(&e))?;
    let (mut kept, mut removed) = (Vec::new(), 0);
    for batch in reader {
        let batch = batch.map_err(|e| corrupt(&e))?;
        let column = batch
            .column_by_name("subject")
            .ok_or_else(|| corrupt(&"no subject column"))?
            .as_string_opt::<i32>()
            .ok_or_else(|| corrupt(&"subject is not a string column"))?;
        let keep: BooleanArray = column.iter().map(|s| Some(s != Some(subject))).collect();
        let left = filter_record_batch(&batch, &keep).map_err(|e| corrupt(&e))?;
        removed += batch.num_rows() - left.num_rows();
        kept.push(left);
    }
    if removed == 0 {
        return Ok(());
    }
    erased.rows_removed += removed;
    let schema = match kept.first() {
        Some(b) => b.schema(),
        None => return Ok(()),
    };
    let remaining = arrow::compute::concat_batches(&schema, &kept).map_err(|e| corrupt(&e))?;
    if remaining.num_rows() == 0 {
        lake.delete_durable(path).await?;
        erased.objects_deleted += 1;
    } else {
        lake.write_parquet(path, &remaining).await?;
        erased.objects_rewritten += 1;
    }
    Ok(())
}
