//! Control-plane changes: one function per operation, shared by the admin
//! HTTP API (actors are tokens) and the `candor` command line (the actor is
//! the operator). Each checks who may do it and validates, then writes its
//! audit entry, and only then applies the change with conditional puts.
//!
//! Who may do what:
//!
//! | operation | operator | owner | admin |
//! | --- | --- | --- | --- |
//! | create a tenant, change its plan or lake location, destroy its keys | yes | no | no |
//! | update the rest of the tenant, load the directory, enroll and revoke devices | yes | yes | yes |
//! | create, list, revoke tokens | yes | yes | yes, except owner tokens |
//! | rotate the tenant's keys | yes | yes | no |
//! | cancel the tenant, reinstate a cancelled one | yes | yes | no |
//!
//! Other roles may do none of these.
//!
//! **Audited first.** A change's entry (its action, target and what it
//! writes: the new document's SHA-256 and the version it was based on, or
//! the token, device or key version concerned) is appended before anything
//! is written. If the audit log cannot be written, nothing is changed and
//! the answer is [`AdminError::Audit`] (HTTP 503 `audit_unavailable`). So
//! every change in effect has its entry. An entry states a change that was
//! about to be applied: if applying it then fails (a lost race, the store
//! failing), an entry `<action>.failed` follows, naming the first one
//! (`detail.intent_seq`) and why. Should that one not be writable either,
//! the first entry stands alone, and the document's digest in it tells
//! whether the change landed. Refusals found before the entry (bad input,
//! the wrong role, a stale `If-Match`) write nothing.
//!
//! **Cancellation.** A tenant's `cancelled_at_ms` is not changed by
//! replacing its document ([`AdminError::CancellationIsSeparate`], even for
//! the operator). [`Admin::cancel_tenant`] sets it to the server's clock,
//! owner or operator only; [`Admin::reinstate_tenant`] clears it again. The
//! retention job purges a cancelled tenant's lake only once its grace
//! period, counted from that server-stamped time, is over.

use std::sync::Arc;

use candor_schemas::keys::MasterSecret;
use candor_schemas::{DeviceId, EmployeeId, TenantId};
use serde::{Deserialize, Serialize};

use crate::audit::{AuditError, AuditEvent, AuditLog};
use crate::auth::Principal;
use crate::devices::{DeviceDoc, Revocations};
use crate::directory::Directory;
use crate::documents::{DocumentError, DocumentStore, Kind, Versioned};
use crate::keyring::{self, KeyringError};
use crate::tenant::Tenant;
use crate::tokens::{
    self, MAX_TOKEN_NAME_LEN, MAX_TOKENS, Role, SESSION_TTL_MS, SIGN_IN_LINK_TTL_MS, TokenKind,
    TokenRecord, TokensDoc,
};

/// Who asks for a change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    /// `operator`, or the id of the token used.
    pub id: String,
    /// `None` for the operator (the command line, with store access).
    pub role: Option<Role>,
    /// The tenant a token belongs to; `None` for the operator.
    pub tenant: Option<TenantId>,
    /// The client's address, or `cli`.
    pub source: String,
}

impl Actor {
    pub fn operator() -> Self {
        Self {
            id: "operator".into(),
            role: None,
            tenant: None,
            source: "cli".into(),
        }
    }

    fn role_name(&self) -> String {
        self.role
            .map_or_else(|| "operator".into(), |r| r.to_string())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("forbidden: {0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Document(DocumentError),
    #[error(transparent)]
    Keyring(KeyringError),
    #[error("the audit log cannot be written, so nothing was changed: {0}")]
    Audit(#[from] AuditError),
    #[error(
        "cancelled_at_ms is not changed by replacing the tenant document: an owner cancels \
         with POST /v1/admin/tenant/cancel (the server stamps the time) and reinstates with \
         POST /v1/admin/tenant/reinstate; send the value the tenant has ({current})"
    )]
    CancellationIsSeparate { current: String },
}

impl From<DocumentError> for AdminError {
    fn from(e: DocumentError) -> Self {
        match e {
            DocumentError::Conflict { .. } => AdminError::Conflict(e.to_string()),
            DocumentError::Exists { .. } => AdminError::AlreadyExists(e.to_string()),
            DocumentError::NotFound { .. } => AdminError::NotFound(e.to_string()),
            other => AdminError::Document(other),
        }
    }
}

impl From<KeyringError> for AdminError {
    fn from(e: KeyringError) -> Self {
        match e {
            KeyringError::Document(d) => d.into(),
            KeyringError::NoKeys(_) => AdminError::NotFound(e.to_string()),
            other => AdminError::Keyring(other),
        }
    }
}

/// What the operation needs of its actor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Needs {
    Operator,
    Owner,
    Administer,
}

/// A device's key, returned once at enrollment. Nothing of it is stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Enrollment {
    pub tenant: TenantId,
    pub employee: EmployeeId,
    pub device: DeviceId,
    pub key_version: u32,
    /// Hex of the 32-byte device key, for the agent's key store.
    pub device_key_hex: String,
}

/// A tenant's tokens as stored, pruned of those that ended, if there is
/// room for one more (tokens and live sessions count alike).
fn with_room(doc: Option<TokensDoc>, tenant: &TenantId, now: i64) -> Result<TokensDoc, AdminError> {
    let mut doc = doc.unwrap_or_default();
    doc.prune(now);
    if doc.tokens.len() >= MAX_TOKENS {
        return Err(AdminError::Invalid(format!(
            "tenant {tenant} has {MAX_TOKENS} tokens and sessions; revoke some, or wait for \
             sessions to end"
        )));
    }
    Ok(doc)
}

/// A request for a new token.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    pub name: String,
    pub role: Role,
    /// For manager and employee tokens: the employee it acts for.
    #[serde(default)]
    pub employee: Option<EmployeeId>,
    /// When it stops working; never, if absent.
    #[serde(default)]
    pub expires_at_ms: Option<i64>,
    /// If given, must be the tenant the token is created in.
    #[serde(default)]
    pub tenant: Option<TenantId>,
}

/// A token as shown once at creation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreatedToken {
    pub token: String,
    pub record: TokenRecord,
}

pub struct Admin {
    docs: DocumentStore,
    audit: Arc<AuditLog>,
    master: MasterSecret,
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// The SHA-256 of a document as JSON: what an audit entry says was written.
fn digest<T: Serialize>(doc: &T) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(
        serde_json::to_vec(doc).expect("documents serialize"),
    ))
}

/// An audit entry written before its change.
struct Intent {
    seq: u64,
    action: &'static str,
    target: String,
}

/// Refuses a replacement of the tenant document that would change what
/// only the operator, or only the cancel and reinstate operations, change.
fn check_replacement(actor: &Actor, current: &Tenant, next: &Tenant) -> Result<(), AdminError> {
    if current.cancelled_at_ms != next.cancelled_at_ms {
        return Err(AdminError::CancellationIsSeparate {
            current: current
                .cancelled_at_ms
                .map_or_else(|| "absent".into(), |at| at.to_string()),
        });
    }
    if actor.role.is_some() && (current.plan != next.plan || current.lake_url != next.lake_url) {
        return Err(AdminError::Forbidden(
            "plan and lake location are changed by the operator".into(),
        ));
    }
    Ok(())
}

impl Admin {
    pub fn new(docs: DocumentStore, audit: Arc<AuditLog>, master: MasterSecret) -> Self {
        Self {
            docs,
            audit,
            master,
        }
    }

    pub fn audit_log(&self) -> &Arc<AuditLog> {
        &self.audit
    }

    fn authorize(&self, actor: &Actor, tenant: &TenantId, needs: Needs) -> Result<(), AdminError> {
        let Some(role) = actor.role else {
            return Ok(()); // the operator
        };
        if actor.tenant.as_ref() != Some(tenant) {
            return Err(AdminError::Forbidden(format!(
                "a token of another tenant cannot change {tenant}"
            )));
        }
        let allowed = match needs {
            Needs::Operator => false,
            Needs::Owner => role == Role::Owner,
            Needs::Administer => role.administers(),
        };
        if allowed {
            Ok(())
        } else {
            Err(AdminError::Forbidden(format!(
                "role {role} may not do this"
            )))
        }
    }

    /// Appends the entry of a change about to be made. If it cannot be
    /// written, the change must not be made.
    async fn intend(
        &self,
        actor: &Actor,
        tenant: &TenantId,
        action: &'static str,
        target: &str,
        detail: serde_json::Value,
    ) -> Result<Intent, AdminError> {
        let event = AuditEvent {
            actor: actor.id.clone(),
            role: actor.role_name(),
            action: action.into(),
            target: target.into(),
            source: actor.source.clone(),
            detail,
        };
        match self.audit.append(tenant, event, now_ms()).await {
            Ok(entry) => Ok(Intent {
                seq: entry.seq,
                action,
                target: target.into(),
            }),
            Err(e) => {
                tracing::error!(%tenant, action, error = %e, "change refused: it cannot be audited");
                Err(e.into())
            }
        }
    }

    /// Passes on the outcome of a change whose entry was written; a failure
    /// is recorded as `<action>.failed` after it.
    async fn settle<T>(
        &self,
        actor: &Actor,
        tenant: &TenantId,
        intent: Intent,
        outcome: Result<T, AdminError>,
    ) -> Result<T, AdminError> {
        if let Err(error) = &outcome {
            let event = AuditEvent {
                actor: actor.id.clone(),
                role: actor.role_name(),
                action: format!("{}.failed", intent.action),
                target: intent.target,
                source: actor.source.clone(),
                detail: serde_json::json!({"intent_seq": intent.seq, "reason": error.to_string()}),
            };
            if let Err(e) = self.audit.append(tenant, event, now_ms()).await {
                tracing::error!(%tenant, intent_seq = intent.seq, error = %e,
                    "a change was audited but failed, and its failure could not be audited");
            }
        }
        outcome
    }

    async fn active_tenant(&self, tenant: &TenantId) -> Result<Versioned<Tenant>, AdminError> {
        let doc = self
            .docs
            .get::<Tenant>(Kind::Tenant, tenant.as_str())
            .await?
            .ok_or_else(|| AdminError::NotFound(format!("no tenant {tenant}")))?;
        if !doc.doc.is_active() {
            return Err(AdminError::Invalid(format!("tenant {tenant} is cancelled")));
        }
        Ok(doc)
    }

    /// Creates a tenant and its keys (operator only). A tenant is created
    /// active: a document that says it is cancelled is refused.
    pub async fn create_tenant(&self, actor: &Actor, tenant: &Tenant) -> Result<u64, AdminError> {
        self.authorize(actor, &tenant.id, Needs::Operator)?;
        tenant
            .validate()
            .map_err(|e| AdminError::Invalid(e.to_string()))?;
        if tenant.cancelled_at_ms.is_some() {
            return Err(AdminError::Invalid(
                "a tenant is created active: leave cancelled_at_ms out (cancel it afterwards)"
                    .into(),
            ));
        }
        if self
            .docs
            .get::<Tenant>(Kind::Tenant, tenant.id.as_str())
            .await?
            .is_some()
        {
            return Err(AdminError::AlreadyExists(format!(
                "tenant {} already exists",
                tenant.id
            )));
        }
        let intent = self
            .intend(
                actor,
                &tenant.id,
                "tenant.create",
                tenant.id.as_str(),
                serde_json::json!({"tenant": tenant, "sha256": digest(tenant)}),
            )
            .await?;
        let outcome = async {
            // Keys first: a tenant document is never visible without its
            // keys, and a creation that failed in between is simply run again.
            match keyring::create(&self.docs, &self.master, &tenant.id, now_ms()).await {
                Ok(()) | Err(KeyringError::Document(DocumentError::Exists { .. })) => {}
                Err(e) => return Err(e.into()),
            }
            Ok(self
                .docs
                .create(Kind::Tenant, tenant.id.as_str(), tenant)
                .await?)
        }
        .await;
        self.settle(actor, &tenant.id, intent, outcome).await
    }

    /// The tenant's document, cancelled or not.
    pub async fn get_tenant(
        &self,
        actor: &Actor,
        tenant: &TenantId,
    ) -> Result<Versioned<Tenant>, AdminError> {
        self.authorize(actor, tenant, Needs::Administer)?;
        self.tenant_doc(tenant).await
    }

    async fn tenant_doc(&self, tenant: &TenantId) -> Result<Versioned<Tenant>, AdminError> {
        self.docs
            .get::<Tenant>(Kind::Tenant, tenant.as_str())
            .await?
            .ok_or_else(|| AdminError::NotFound(format!("no tenant {tenant}")))
    }

    /// Replaces a tenant's document. With `expected`, only if it is still at
    /// that version (else `Conflict`); without, after whatever is current.
    /// `cancelled_at_ms` must stay as it is ([`Self::cancel_tenant`] and
    /// [`Self::reinstate_tenant`] change it).
    pub async fn update_tenant(
        &self,
        actor: &Actor,
        tenant: &Tenant,
        expected: Option<u64>,
    ) -> Result<u64, AdminError> {
        self.authorize(actor, &tenant.id, Needs::Administer)?;
        tenant
            .validate()
            .map_err(|e| AdminError::Invalid(e.to_string()))?;
        let stale = |at: u64, expected: u64| {
            AdminError::Conflict(format!(
                "tenant {} is at version {at}, not {expected}; read it again",
                tenant.id
            ))
        };
        let base = self.tenant_doc(&tenant.id).await?;
        if let Some(expected) = expected
            && expected != base.version
        {
            return Err(stale(base.version, expected));
        }
        check_replacement(actor, &base.doc, tenant)?;
        let intent = self
            .intend(
                actor,
                &tenant.id,
                "tenant.update",
                tenant.id.as_str(),
                serde_json::json!({"base_version": base.version, "sha256": digest(tenant), "tenant": tenant}),
            )
            .await?;
        let outcome = self
            .docs
            .modify::<Tenant, AdminError, _>(Kind::Tenant, tenant.id.as_str(), |current| {
                let current = current
                    .ok_or_else(|| AdminError::NotFound(format!("no tenant {}", tenant.id)))?;
                if let Some(expected) = expected
                    && expected != current.version
                {
                    return Err(stale(current.version, expected));
                }
                check_replacement(actor, &current.doc, tenant)?;
                Ok(tenant.clone())
            })
            .await
            .map(|written| written.version);
        self.settle(actor, &tenant.id, intent, outcome).await
    }

    /// Cancels a tenant now (owner or operator): its tokens and devices stop
    /// working, except that its owners may still read the tenant and
    /// reinstate it; its lake is purged once the grace period after this
    /// moment (the server's clock) is over. A tenant already cancelled is a
    /// `Conflict`: its time is never moved.
    pub async fn cancel_tenant(
        &self,
        actor: &Actor,
        tenant: &TenantId,
    ) -> Result<Versioned<Tenant>, AdminError> {
        self.authorize(actor, tenant, Needs::Owner)?;
        let already = |at: i64| {
            AdminError::Conflict(format!(
                "tenant {tenant} was already cancelled (cancelled_at_ms {at})"
            ))
        };
        let base = self.tenant_doc(tenant).await?;
        if let Some(at) = base.doc.cancelled_at_ms {
            return Err(already(at));
        }
        let now = now_ms();
        self.change_cancellation(
            actor,
            tenant,
            "tenant.cancel",
            serde_json::json!({"base_version": base.version, "cancelled_at_ms": now}),
            |doc| match doc.cancelled_at_ms {
                Some(at) => Err(already(at)),
                None => {
                    doc.cancelled_at_ms = Some(now);
                    Ok(())
                }
            },
        )
        .await
    }

    /// Undoes a cancellation (owner or operator). Within the grace period
    /// nothing of the tenant's lake has been purged yet; after it, the
    /// tenant is active again but the purged data is gone.
    pub async fn reinstate_tenant(
        &self,
        actor: &Actor,
        tenant: &TenantId,
    ) -> Result<Versioned<Tenant>, AdminError> {
        self.authorize(actor, tenant, Needs::Owner)?;
        let base = self.tenant_doc(tenant).await?;
        let Some(cancelled_at) = base.doc.cancelled_at_ms else {
            return Err(AdminError::Conflict(format!(
                "tenant {tenant} is not cancelled"
            )));
        };
        self.change_cancellation(
            actor,
            tenant,
            "tenant.reinstate",
            serde_json::json!({"base_version": base.version, "cancelled_at_ms": cancelled_at}),
            |doc| {
                if doc.cancelled_at_ms != Some(cancelled_at) {
                    return Err(AdminError::Conflict(format!(
                        "tenant {tenant}'s cancellation changed meanwhile; read it again"
                    )));
                }
                doc.cancelled_at_ms = None;
                Ok(())
            },
        )
        .await
    }

    /// Cancels or reinstates as one audited step: the intent on record
    /// first, then `change` applied to the tenant's current document (it
    /// refuses when the document has moved on), then the outcome.
    async fn change_cancellation(
        &self,
        actor: &Actor,
        tenant: &TenantId,
        action: &'static str,
        detail: serde_json::Value,
        mut change: impl FnMut(&mut Tenant) -> Result<(), AdminError>,
    ) -> Result<Versioned<Tenant>, AdminError> {
        let intent = self
            .intend(actor, tenant, action, tenant.as_str(), detail)
            .await?;
        let outcome = self
            .docs
            .modify::<Tenant, AdminError, _>(Kind::Tenant, tenant.as_str(), |current| {
                let mut doc = current
                    .ok_or_else(|| AdminError::NotFound(format!("no tenant {tenant}")))?
                    .doc;
                change(&mut doc)?;
                Ok(doc)
            })
            .await;
        self.settle(actor, tenant, intent, outcome).await
    }

    /// Replaces the tenant's directory.
    pub async fn load_directory(
        &self,
        actor: &Actor,
        tenant: &TenantId,
        directory: &Directory,
        expected: Option<u64>,
    ) -> Result<u64, AdminError> {
        self.authorize(actor, tenant, Needs::Administer)?;
        directory
            .validate()
            .map_err(|e| AdminError::Invalid(e.to_string()))?;
        self.docs
            .check_size(Kind::Directory, tenant.as_str(), directory)?;
        self.active_tenant(tenant).await?;
        let stale = |at: u64, e: u64| {
            AdminError::Conflict(format!(
                "directory of {tenant} is at version {at}, not {e}; read it again"
            ))
        };
        let base = self
            .docs
            .get::<Directory>(Kind::Directory, tenant.as_str())
            .await?
            .map_or(0, |c| c.version);
        if let Some(e) = expected
            && e != base
        {
            return Err(stale(base, e));
        }
        let intent = self
            .intend(
                actor,
                tenant,
                "directory.load",
                tenant.as_str(),
                serde_json::json!({"base_version": base, "sha256": digest(directory), "employees": directory.employees.len()}),
            )
            .await?;
        let outcome = self
            .docs
            .modify::<Directory, AdminError, _>(Kind::Directory, tenant.as_str(), |current| {
                let at = current.map_or(0, |c| c.version);
                match expected {
                    Some(e) if e != at => Err(stale(at, e)),
                    _ => Ok(directory.clone()),
                }
            })
            .await
            .map(|written| written.version);
        self.settle(actor, tenant, intent, outcome).await
    }

    pub async fn get_directory(
        &self,
        actor: &Actor,
        tenant: &TenantId,
    ) -> Result<Versioned<Directory>, AdminError> {
        self.authorize(actor, tenant, Needs::Administer)?;
        Ok(self
            .docs
            .get::<Directory>(Kind::Directory, tenant.as_str())
            .await?
            .unwrap_or(Versioned {
                version: 0,
                doc: Directory::default(),
            }))
    }

    /// Enrolls a device for an employee and returns its key. A device that is
    /// enrolled and not revoked cannot be enrolled again; a revoked one can,
    /// with the next key version.
    pub async fn enroll_device(
        &self,
        actor: &Actor,
        tenant: &TenantId,
        employee: &EmployeeId,
        device: &DeviceId,
    ) -> Result<Enrollment, AdminError> {
        self.authorize(actor, tenant, Needs::Administer)?;
        self.active_tenant(tenant).await?;
        let doc_id = DeviceDoc::doc_id(tenant, device);
        let enrolled = |c: &Versioned<DeviceDoc>| {
            AdminError::AlreadyExists(format!(
                "device {device} is already enrolled (for {}); revoke it first",
                c.doc.employee
            ))
        };
        let base = self.docs.get::<DeviceDoc>(Kind::Device, &doc_id).await?;
        if let Some(c) = base.as_ref().filter(|c| c.doc.is_active()) {
            return Err(enrolled(c));
        }
        let version = base.map_or(1, |c| c.doc.key_version + 1);
        let intent = self
            .intend(
                actor,
                tenant,
                "device.enroll",
                device.as_str(),
                serde_json::json!({"employee": employee, "key_version": version}),
            )
            .await?;
        let now = now_ms();
        let outcome = self
            .docs
            .modify::<DeviceDoc, AdminError, _>(Kind::Device, &doc_id, |current| match current {
                Some(c) if c.doc.is_active() => Err(enrolled(&c)),
                current if current.as_ref().map_or(1, |c| c.doc.key_version + 1) != version => Err(
                    AdminError::Conflict(format!("device {device} changed meanwhile; try again")),
                ),
                _ => Ok(DeviceDoc {
                    tenant: tenant.clone(),
                    device: device.clone(),
                    employee: employee.clone(),
                    key_version: version,
                    enrolled_at_ms: now,
                    revoked_at_ms: None,
                }),
            })
            .await;
        self.settle(actor, tenant, intent, outcome).await?;
        let key = self.master.device_key(tenant, employee, device, version);
        Ok(Enrollment {
            tenant: tenant.clone(),
            employee: employee.clone(),
            device: device.clone(),
            key_version: version,
            device_key_hex: hex::encode(key.as_bytes()),
        })
    }

    /// Revokes a device's current key version (and every earlier one).
    pub async fn revoke_device(
        &self,
        actor: &Actor,
        tenant: &TenantId,
        device: &DeviceId,
    ) -> Result<DeviceDoc, AdminError> {
        self.authorize(actor, tenant, Needs::Administer)?;
        let doc_id = DeviceDoc::doc_id(tenant, device);
        let not_enrolled = || AdminError::NotFound(format!("device {device} is not enrolled"));
        let through = self
            .docs
            .get::<DeviceDoc>(Kind::Device, &doc_id)
            .await?
            .ok_or_else(not_enrolled)?
            .doc
            .key_version;
        let intent = self
            .intend(
                actor,
                tenant,
                "device.revoke",
                device.as_str(),
                serde_json::json!({"through_key_version": through}),
            )
            .await?;
        let now = now_ms();
        let outcome = async {
            let written = self
                .docs
                .modify::<DeviceDoc, AdminError, _>(Kind::Device, &doc_id, |current| {
                    let mut doc = current.ok_or_else(not_enrolled)?.doc;
                    if doc.key_version != through {
                        return Err(AdminError::Conflict(format!(
                            "device {device} was enrolled again meanwhile; try again"
                        )));
                    }
                    doc.revoked_at_ms.get_or_insert(now);
                    Ok(doc)
                })
                .await?;
            // Then the list ingest reads. If this fails, running the
            // revocation again completes it (both steps are idempotent).
            self.docs
                .modify::<Revocations, AdminError, _>(
                    Kind::Revocations,
                    tenant.as_str(),
                    |current| {
                        let mut doc = current.map(|c| c.doc).unwrap_or_default();
                        doc.revoke(device, through);
                        Ok(doc)
                    },
                )
                .await?;
            Ok(written.doc)
        }
        .await;
        self.settle(actor, tenant, intent, outcome).await
    }

    pub async fn create_token(
        &self,
        actor: &Actor,
        tenant: &TenantId,
        request: &TokenRequest,
    ) -> Result<CreatedToken, AdminError> {
        self.create(actor, tenant, request, TokenKind::Api).await
    }

    /// A one-time sign-in link for the portal: a token that opens one
    /// session within [`SIGN_IN_LINK_TTL_MS`] (or its own earlier expiry)
    /// and is good for nothing else.
    pub async fn create_sign_in_link(
        &self,
        actor: &Actor,
        tenant: &TenantId,
        request: &TokenRequest,
    ) -> Result<CreatedToken, AdminError> {
        let latest = now_ms() + SIGN_IN_LINK_TTL_MS;
        let request = TokenRequest {
            expires_at_ms: Some(request.expires_at_ms.map_or(latest, |e| e.min(latest))),
            ..request.clone()
        };
        self.create(actor, tenant, &request, TokenKind::SignInLink)
            .await
    }

    async fn create(
        &self,
        actor: &Actor,
        tenant: &TenantId,
        request: &TokenRequest,
        kind: TokenKind,
    ) -> Result<CreatedToken, AdminError> {
        let needs = if request.role == Role::Owner {
            Needs::Owner
        } else {
            Needs::Administer
        };
        self.authorize(actor, tenant, needs)?;
        if let Some(other) = &request.tenant
            && other != tenant
        {
            return Err(AdminError::Invalid(format!(
                "the token's scope names tenant {other}; tokens are created in {tenant} only"
            )));
        }
        if request.name.is_empty()
            || request.name.len() > MAX_TOKEN_NAME_LEN
            || request.name.chars().any(char::is_control)
        {
            return Err(AdminError::Invalid(format!(
                "token name must be 1-{MAX_TOKEN_NAME_LEN} bytes of printable text"
            )));
        }
        match (request.role.needs_employee(), &request.employee) {
            (true, None) => {
                return Err(AdminError::Invalid(format!(
                    "a {} token needs the employee it acts for",
                    request.role
                )));
            }
            (false, Some(_)) => {
                return Err(AdminError::Invalid(format!(
                    "a {} token covers the whole tenant; it takes no employee",
                    request.role
                )));
            }
            _ => {}
        }
        let now = now_ms();
        if request.expires_at_ms.is_some_and(|e| e <= now) {
            return Err(AdminError::Invalid("expires_at_ms is in the past".into()));
        }
        self.active_tenant(tenant).await?;
        let base = self
            .docs
            .get::<TokensDoc>(Kind::Tokens, tenant.as_str())
            .await?
            .map(|c| c.doc);
        with_room(base, tenant, now)?;
        let (token, sha256) = tokens::mint(tenant);
        let record = TokenRecord {
            id: sha256[..16].to_string(),
            name: request.name.clone(),
            role: request.role,
            employee: request.employee.clone(),
            sha256,
            created_at_ms: now,
            created_by: actor.id.clone(),
            expires_at_ms: request.expires_at_ms,
            revoked_at_ms: None,
            kind,
            parent: None,
            used_at_ms: None,
        };
        let intent = self
            .intend(
                actor,
                tenant,
                "token.create",
                &record.id,
                serde_json::json!({"role": record.role, "name": record.name, "employee": record.employee, "expires_at_ms": record.expires_at_ms, "kind": record.kind}),
            )
            .await?;
        let outcome = self
            .docs
            .modify::<TokensDoc, AdminError, _>(Kind::Tokens, tenant.as_str(), |current| {
                let mut doc = with_room(current.map(|c| c.doc), tenant, now)?;
                doc.tokens.push(record.clone());
                Ok(doc)
            })
            .await;
        self.settle(actor, tenant, intent, outcome).await?;
        Ok(CreatedToken { token, record })
    }

    /// The tenant's tokens, without their hashes.
    pub async fn list_tokens(
        &self,
        actor: &Actor,
        tenant: &TenantId,
    ) -> Result<Vec<TokenRecord>, AdminError> {
        self.authorize(actor, tenant, Needs::Administer)?;
        let doc = self
            .docs
            .get::<TokensDoc>(Kind::Tokens, tenant.as_str())
            .await?
            .map(|v| v.doc)
            .unwrap_or_default();
        Ok(doc
            .tokens
            .into_iter()
            .map(|mut t| {
                t.sha256.clear();
                t
            })
            .collect())
    }

    pub async fn revoke_token(
        &self,
        actor: &Actor,
        tenant: &TenantId,
        token_id: &str,
    ) -> Result<TokenRecord, AdminError> {
        self.authorize(actor, tenant, Needs::Administer)?;
        self.revoke(actor, tenant, token_id, "token.revoke", |token| {
            if token.role == Role::Owner && actor.role.is_some_and(|r| r != Role::Owner) {
                return Err(AdminError::Forbidden(
                    "only an owner revokes owner tokens".into(),
                ));
            }
            Ok(())
        })
        .await
    }

    /// Opens a portal session for `principal`, the caller of `actor`, with
    /// the token it presented (an API token or an unused sign-in link): a
    /// new token of the same role and employee that lasts at most
    /// [`SESSION_TTL_MS`], and no longer than the token it was opened with.
    /// A sign-in link is marked used in the same write, so it opens one
    /// session even when two requests race.
    pub async fn open_session(
        &self,
        actor: &Actor,
        principal: &Principal,
    ) -> Result<CreatedToken, AdminError> {
        let tenant = &principal.tenant;
        self.active_tenant(tenant).await?;
        let now = now_ms();
        let (token, sha256) = tokens::mint(tenant);
        let mut record = TokenRecord {
            id: sha256[..16].to_string(),
            name: "portal session".into(),
            role: principal.role,
            employee: principal.employee.clone(),
            sha256,
            created_at_ms: now,
            created_by: actor.id.clone(),
            expires_at_ms: Some(now + SESSION_TTL_MS),
            revoked_at_ms: None,
            kind: TokenKind::Session,
            parent: Some(principal.token_id.clone()),
            used_at_ms: None,
        };
        let intent = self
            .intend(
                actor,
                tenant,
                "session.open",
                &record.id,
                serde_json::json!({"role": record.role, "employee": record.employee, "opened_with": principal.token_id}),
            )
            .await?;
        let outcome = self
            .docs
            .modify::<TokensDoc, AdminError, _>(Kind::Tokens, tenant.as_str(), |current| {
                let mut doc = with_room(current.map(|c| c.doc), tenant, now)?;
                let parent = doc
                    .tokens
                    .iter_mut()
                    .find(|t| t.id == principal.token_id && t.ended_at_ms(now).is_none())
                    .ok_or_else(|| AdminError::Forbidden("the token has ended".into()))?;
                match parent.kind {
                    TokenKind::Session => {
                        return Err(AdminError::Forbidden(
                            "a session does not open another".into(),
                        ));
                    }
                    TokenKind::SignInLink if parent.used_at_ms.is_some() => {
                        return Err(AdminError::Forbidden(
                            "this sign-in link was used already".into(),
                        ));
                    }
                    TokenKind::SignInLink => parent.used_at_ms = Some(now),
                    TokenKind::Api => {}
                }
                if let Some(end) = parent.expires_at_ms {
                    record.expires_at_ms = record.expires_at_ms.map(|e| e.min(end));
                }
                doc.tokens.push(record.clone());
                Ok(doc)
            })
            .await;
        self.settle(actor, tenant, intent, outcome).await?;
        Ok(CreatedToken { token, record })
    }

    /// Ends a portal session: its own (signing out), or any, for an owner
    /// or admin.
    pub async fn end_session(
        &self,
        actor: &Actor,
        tenant: &TenantId,
        session_id: &str,
    ) -> Result<TokenRecord, AdminError> {
        if actor.id != session_id {
            self.authorize(actor, tenant, Needs::Administer)?;
        }
        self.revoke(actor, tenant, session_id, "session.end", |token| {
            if token.kind != TokenKind::Session {
                return Err(AdminError::NotFound(format!("no session {session_id}")));
            }
            Ok(())
        })
        .await
    }

    /// Revokes token `token_id` of `tenant` if `check` lets it, audited as
    /// `action`.
    async fn revoke(
        &self,
        actor: &Actor,
        tenant: &TenantId,
        token_id: &str,
        action: &'static str,
        check: impl Fn(&TokenRecord) -> Result<(), AdminError>,
    ) -> Result<TokenRecord, AdminError> {
        let find = |doc: &TokensDoc| -> Result<TokenRecord, AdminError> {
            let token = doc
                .find_by_id(token_id)
                .ok_or_else(|| AdminError::NotFound(format!("no token {token_id}")))?;
            check(token)?;
            Ok(token.clone())
        };
        let base = self
            .docs
            .get::<TokensDoc>(Kind::Tokens, tenant.as_str())
            .await?
            .map(|c| c.doc)
            .unwrap_or_default();
        let role = find(&base)?.role;
        let intent = self
            .intend(
                actor,
                tenant,
                action,
                token_id,
                serde_json::json!({"role": role}),
            )
            .await?;
        let now = now_ms();
        let mut revoked = None;
        let outcome = self
            .docs
            .modify::<TokensDoc, AdminError, _>(Kind::Tokens, tenant.as_str(), |current| {
                let mut doc = current.map(|c| c.doc).unwrap_or_default();
                find(&doc)?;
                let token = doc
                    .tokens
                    .iter_mut()
                    .find(|t| t.id == token_id)
                    .expect("found above");
                token.revoked_at_ms.get_or_insert(now);
                revoked = Some(token.clone());
                Ok(doc)
            })
            .await;
        self.settle(actor, tenant, intent, outcome).await?;
        let mut revoked = revoked.expect("set when the change was written");
        revoked.sha256.clear();
        Ok(revoked)
    }

    /// Adds a key version; new data is sealed with it, old data stays readable.
    pub async fn rotate_keys(&self, actor: &Actor, tenant: &TenantId) -> Result<u32, AdminError> {
        self.authorize(actor, tenant, Needs::Owner)?;
        let from = self
            .docs
            .get::<keyring::KeyringDoc>(Kind::Keyring, tenant.as_str())
            .await?
            .ok_or_else(|| AdminError::NotFound(format!("tenant {tenant} has no keys")))?
            .doc
            .current;
        let intent = self
            .intend(
                actor,
                tenant,
                "keys.rotate",
                tenant.as_str(),
                serde_json::json!({"from": from}),
            )
            .await?;
        let outcome = keyring::rotate(&self.docs, &self.master, tenant, now_ms())
            .await
            .map_err(AdminError::from);
        self.settle(actor, tenant, intent, outcome).await
    }

    /// Destroys every key seed of a tenant (crypto-shredding; operator only).
    pub async fn destroy_keys(
        &self,
        actor: &Actor,
        tenant: &TenantId,
    ) -> Result<usize, AdminError> {
        self.authorize(actor, tenant, Needs::Operator)?;
        let versions = self
            .docs
            .get::<keyring::KeyringDoc>(Kind::Keyring, tenant.as_str())
            .await?
            .ok_or_else(|| AdminError::NotFound(format!("tenant {tenant} has no keys")))?
            .version;
        let intent = self
            .intend(
                actor,
                tenant,
                "keys.destroy",
                tenant.as_str(),
                serde_json::json!({"keyring_versions": versions}),
            )
            .await?;
        let outcome = keyring::destroy(&self.docs, tenant)
            .await
            .map_err(AdminError::from);
        self.settle(actor, tenant, intent, outcome).await
    }
}
