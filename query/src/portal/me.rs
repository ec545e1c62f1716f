//! The routes of a person's own page: what Candor records about them (from
//! the batch model, so it cannot drift) and who looked at their data (from
//! the audit trail).
//!
//! Every KPI and SQL entry of the trail records the scope it was answered
//! in ([`scope_detail`]): the whole tenant, some departments, or one
//! subject, with or without identities, and whether as group figures only.
//! A person's access list is every such entry whose scope held them (by
//! their pseudonymous subject, or their department as the directory has it
//! now), and every extract, which covers everyone as groups.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use candor_control::AuditEntry;
use candor_schemas::transparency::{NEVER_RECORDED, RECORDED};

use crate::api::{ApiError, Caller, QueryState, caller_tenant};
use crate::scope::{Rows, Scope, ScopeError};

/// Most entries one access list shows, newest first.
pub const MAX_ACCESS_ENTRIES: usize = 500;
/// Most audit entries one access list reads, newest first: the list covers
/// the tenant's recent questions, and says when it looked no further.
pub const MAX_ENTRIES_READ: usize = 5000;

/// The scope an audit entry records for a KPI or SQL answer.
pub fn scope_detail(scope: &Scope) -> serde_json::Value {
    let rows = match &scope.rows {
        Rows::Tenant => serde_json::json!("tenant"),
        Rows::Departments(d) => serde_json::json!({"departments": d}),
        Rows::Subject(s) => serde_json::json!({"subject": s}),
    };
    serde_json::json!({
        "rows": rows,
        "identities": scope.identities,
        "groups_only": scope.groups_only,
    })
}

/// `GET /v1/me/recorded`: what Candor records and never records, and the
/// caller's tenant's settings that decide what is kept.
pub async fn recorded(
    State(state): State<Arc<QueryState>>,
    caller: Caller,
) -> Result<Response, ApiError> {
    let view = caller_tenant(&state, &caller).await?;
    let doc = &view.tenant.doc;
    Ok(Json(serde_json::json!({
        "recorded": RECORDED,
        "never_recorded": NEVER_RECORDED,
        "kept_days": doc.retention_days(),
        "work_hours": doc.work_hours,
        "track_outside_work_hours": doc.track_outside_work_hours,
        "privacy_mode": doc.privacy_mode,
        "k": doc.extract_k,
    }))
    .into_response())
}

/// `GET /v1/me/access`: every audited question whose answer could hold the
/// caller's own data: who asked (role and token), when, what, and how it
/// ended. For tokens that act for an employee (employee and manager).
/// Reads the newest [`MAX_ENTRIES_READ`] entries of the trail at most;
/// `truncated` says the list may go further back.
pub async fn access(
    State(state): State<Arc<QueryState>>,
    caller: Caller,
) -> Result<Response, ApiError> {
    let p = &caller.principal;
    let employee = p
        .employee
        .as_ref()
        .ok_or(ApiError::Scope(ScopeError::NoEmployee(p.role)))?;
    let view = caller_tenant(&state, &caller).await?;
    let keys = view.keys.as_ref().ok_or(ScopeError::KeysDestroyed)?;
    let subject = keys.pseudonym().subject(employee);
    let department = view.directory.department_of(employee);
    let entries = state
        .admin
        .audit_log()
        .latest(&p.tenant, MAX_ENTRIES_READ)
        .await
        .map_err(ApiError::AuditUnavailable)?;
    let looked_back = entries.len() == MAX_ENTRIES_READ;
    let seen: Vec<serde_json::Value> = entries
        .iter()
        .filter(|e| covers(e, &subject, department))
        .take(MAX_ACCESS_ENTRIES)
        .map(|e| {
            let detail = &e.event.detail;
            let scope = &detail["scope"];
            serde_json::json!({
                "at_ms": e.at_ms,
                "seq": e.seq,
                "role": e.event.role,
                "token": e.event.actor,
                "action": e.event.action,
                "target": e.event.target,
                "outcome": detail["result"]["refused"].as_str().unwrap_or("ok"),
                "with_identities": scope["identities"].as_bool().unwrap_or(false),
                "groups_only": !scope["groups_only"].is_null() || e.event.action == "query.extract",
            })
        })
        .collect();
    let truncated = seen.len() == MAX_ACCESS_ENTRIES || looked_back;
    Ok(Json(serde_json::json!({"entries": seen, "truncated": truncated})).into_response())
}

/// Whether `entry` is a question whose scope held `subject` (of
/// `department`).
fn covers(entry: &AuditEntry, subject: &str, department: Option<&str>) -> bool {
    let action = entry.event.action.as_str();
    if action == "query.extract" {
        return true;
    }
    if !action.starts_with("query.") || action == "query.sql.received" {
        return false;
    }
    let rows = &entry.event.detail["scope"]["rows"];
    if rows == "tenant" {
        return true;
    }
    if rows["subject"] == subject {
        return true;
    }
    rows["departments"]
        .as_array()
        .is_some_and(|d| department.is_some_and(|mine| d.iter().any(|x| x == mine)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candor_control::AuditEvent;

    fn entry(action: &str, scope: serde_json::Value) -> AuditEntry {
        AuditEntry {
            seq: 1,
            at_ms: 0,
            tenant: candor_schemas::TenantId::new("acme").unwrap(),
            event: AuditEvent {
                actor: "t".into(),
                role: "manager".into(),
                action: action.into(),
                target: String::new(),
                source: String::new(),
                detail: serde_json::json!({"scope": scope}),
            },
            prev: String::new(),
            mac: String::new(),
        }
    }

    #[test]
    fn an_entry_covers_the_people_of_its_scope_only() {
        let rows = |rows| serde_json::json!({"rows": rows});
        let sales = rows(serde_json::json!({"departments": ["Sales"]}));
        let me = rows(serde_json::json!({"subject": "s1"}));
        let cases = [
            (entry("query.kpi.activity", rows("tenant".into())), true),
            (entry("query.kpi.activity", sales.clone()), true),
            (entry("query.sql", me.clone()), true),
            (entry("query.extract", serde_json::Value::Null), true),
            (
                entry(
                    "query.kpi.apps",
                    rows(serde_json::json!({"departments": ["Ops"]})),
                ),
                false,
            ),
            (
                entry("query.sql", rows(serde_json::json!({"subject": "s2"}))),
                false,
            ),
            (entry("query.sql.received", rows("tenant".into())), false),
            (entry("token.create", rows("tenant".into())), false),
        ];
        for (e, expected) in cases {
            assert_eq!(covers(&e, "s1", Some("Sales")), expected, "{:?}", e.event);
        }
        assert!(!covers(&entry("query.kpi.gps", sales), "s1", None));
    }
}
