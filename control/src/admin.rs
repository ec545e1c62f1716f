//! Control-plane changes: one function per operation, shared by the admin
//! HTTP API (actors are tokens) and the `candor` command line (the actor is
//! the operator). Each checks who may do it, validates, writes with
//! conditional puts, and then writes an audit entry.
//!
//! Who may do what:
//!
//! | operation | operator | owner | admin |
//! | --- | --- | --- | --- |
//! | create a tenant, change its plan or lake location, destroy its keys | yes | no | no |
//! | update the rest of the tenant, load the directory, enroll and revoke devices | yes | yes | yes |
//! | create, list, revoke tokens | yes | yes | yes, except owner tokens |
//! | rotate the tenant's keys | yes | yes | no |
//!
//! Other roles may do none of these.

use std::sync::Arc;

use candor_schemas::keys::MasterSecret;
use candor_schemas::{DeviceId, EmployeeId, TenantId};
use serde::{Deserialize, Serialize};

use crate::audit::{AuditError, AuditEvent, AuditLog};
use crate::devices::{DeviceDoc, Revocations};
use crate::directory::Directory;
use crate::documents::{DocumentError, DocumentStore, Kind, Versioned};
use crate::keyring::{self, KeyringError};
use crate::tenant::Tenant;
use crate::tokens::{self, MAX_TOKEN_NAME_LEN, MAX_TOKENS, Role, TokenRecord, TokensDoc};

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
    #[error("the change was applied but its audit entry could not be written: {0}")]
    Audit(#[from] AuditError),
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

    async fn record(
        &self,
        actor: &Actor,
        tenant: &TenantId,
        action: &str,
        target: &str,
        detail: serde_json::Value,
    ) -> Result<(), AdminError> {
        let event = AuditEvent {
            actor: actor.id.clone(),
            role: actor.role_name(),
            action: action.into(),
            target: target.into(),
            source: actor.source.clone(),
            detail,
        };
        if let Err(e) = self.audit.append(tenant, event, now_ms()).await {
            tracing::error!(%tenant, action, error = %e, "change applied but not audited");
            return Err(e.into());
        }
        Ok(())
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

    /// Creates a tenant and its keys (operator only).
    pub async fn create_tenant(&self, actor: &Actor, tenant: &Tenant) -> Result<u64, AdminError> {
        self.authorize(actor, &tenant.id, Needs::Operator)?;
        tenant
            .validate()
            .map_err(|e| AdminError::Invalid(e.to_string()))?;
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
        // Keys first: a tenant document is never visible without its keys,
        // and a creation that failed in between is simply run again.
        match keyring::create(&self.docs, &self.master, &tenant.id, now_ms()).await {
            Ok(()) | Err(KeyringError::Document(DocumentError::Exists { .. })) => {}
            Err(e) => return Err(e.into()),
        }
        let version = self
            .docs
            .create(Kind::Tenant, tenant.id.as_str(), tenant)
            .await?;
        self.record(
            actor,
            &tenant.id,
            "tenant.create",
            tenant.id.as_str(),
            serde_json::to_value(tenant).expect("tenants serialize"),
        )
        .await?;
        Ok(version)
    }

    pub async fn get_tenant(
        &self,
        actor: &Actor,
        tenant: &TenantId,
    ) -> Result<Versioned<Tenant>, AdminError> {
        self.authorize(actor, tenant, Needs::Administer)?;
        self.docs
            .get::<Tenant>(Kind::Tenant, tenant.as_str())
            .await?
            .ok_or_else(|| AdminError::NotFound(format!("no tenant {tenant}")))
    }

    /// Replaces a tenant's document. With `expected`, only if it is still at
    /// that version (else `Conflict`); without, after whatever is current.
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
        let written = self
            .docs
            .modify::<Tenant, AdminError, _>(Kind::Tenant, tenant.id.as_str(), |current| {
                let current = current
                    .ok_or_else(|| AdminError::NotFound(format!("no tenant {}", tenant.id)))?;
                if let Some(expected) = expected
                    && expected != current.version
                {
                    return Err(AdminError::Conflict(format!(
                        "tenant {} is at version {}, not {expected}; read it again",
                        tenant.id, current.version
                    )));
                }
                if actor.role.is_some()
                    && (current.doc.plan != tenant.plan || current.doc.lake_url != tenant.lake_url)
                {
                    return Err(AdminError::Forbidden(
                        "plan and lake location are changed by the operator".into(),
                    ));
                }
                Ok(tenant.clone())
            })
            .await?;
        self.record(
            actor,
            &tenant.id,
            "tenant.update",
            tenant.id.as_str(),
            serde_json::json!({"version": written.version, "tenant": tenant}),
        )
        .await?;
        Ok(written.version)
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
        self.active_tenant(tenant).await?;
        let written = self
            .docs
            .modify::<Directory, AdminError, _>(Kind::Directory, tenant.as_str(), |current| {
                let at = current.map_or(0, |c| c.version);
                match expected {
                    Some(e) if e != at => Err(AdminError::Conflict(format!(
                        "directory of {tenant} is at version {at}, not {e}; read it again"
                    ))),
                    _ => Ok(directory.clone()),
                }
            })
            .await?;
        self.record(
            actor,
            tenant,
            "directory.load",
            tenant.as_str(),
            serde_json::json!({"version": written.version, "employees": directory.employees.len()}),
        )
        .await?;
        Ok(written.version)
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
        let now = now_ms();
        let written = self
            .docs
            .modify::<DeviceDoc, AdminError, _>(
                Kind::Device,
                &DeviceDoc::doc_id(tenant, device),
                |current| match current {
                    Some(c) if c.doc.is_active() => Err(AdminError::AlreadyExists(format!(
                        "device {device} is already enrolled (for {}); revoke it first",
                        c.doc.employee
                    ))),
                    current => Ok(DeviceDoc {
                        tenant: tenant.clone(),
                        device: device.clone(),
                        employee: employee.clone(),
                        key_version: current.map_or(1, |c| c.doc.key_version + 1),
                        enrolled_at_ms: now,
                        revoked_at_ms: None,
                    }),
                },
            )
            .await?;
        let version = written.doc.key_version;
        self.record(
            actor,
            tenant,
            "device.enroll",
            device.as_str(),
            serde_json::json!({"employee": employee, "key_version": version}),
        )
        .await?;
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
        let now = now_ms();
        let written = self
            .docs
            .modify::<DeviceDoc, AdminError, _>(
                Kind::Device,
                &DeviceDoc::doc_id(tenant, device),
                |current| {
                    let mut doc = current
                        .ok_or_else(|| {
                            AdminError::NotFound(format!("device {device} is not enrolled"))
                        })?
                        .doc;
                    doc.revoked_at_ms.get_or_insert(now);
                    Ok(doc)
                },
            )
            .await?;
        // Then the list ingest reads. If this fails, running the revocation
        // again completes it (both steps are idempotent).
        let through = written.doc.key_version;
        self.docs
            .modify::<Revocations, AdminError, _>(Kind::Revocations, tenant.as_str(), |current| {
                let mut doc = current.map(|c| c.doc).unwrap_or_default();
                doc.revoke(device, through);
                Ok(doc)
            })
            .await?;
        self.record(
            actor,
            tenant,
            "device.revoke",
            device.as_str(),
            serde_json::json!({"through_key_version": through}),
        )
        .await?;
        Ok(written.doc)
    }

    pub async fn create_token(
        &self,
        actor: &Actor,
        tenant: &TenantId,
        request: &TokenRequest,
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
        };
        self.docs
            .modify::<TokensDoc, AdminError, _>(Kind::Tokens, tenant.as_str(), |current| {
                let mut doc = current.map(|c| c.doc).unwrap_or_default();
                doc.prune(now);
                if doc.tokens.len() >= MAX_TOKENS {
                    return Err(AdminError::Invalid(format!(
                        "tenant {tenant} has {MAX_TOKENS} tokens; revoke some first"
                    )));
                }
                doc.tokens.push(record.clone());
                Ok(doc)
            })
            .await?;
        self.record(
            actor,
            tenant,
            "token.create",
            &record.id,
            serde_json::json!({"role": record.role, "name": record.name, "employee": record.employee, "expires_at_ms": record.expires_at_ms}),
        )
        .await?;
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
        let now = now_ms();
        let mut revoked = None;
        self.docs
            .modify::<TokensDoc, AdminError, _>(Kind::Tokens, tenant.as_str(), |current| {
                let mut doc = current.map(|c| c.doc).unwrap_or_default();
                let token = doc
                    .tokens
                    .iter_mut()
                    .find(|t| t.id == token_id)
                    .ok_or_else(|| AdminError::NotFound(format!("no token {token_id}")))?;
                if token.role == Role::Owner && actor.role.is_some_and(|r| r != Role::Owner) {
                    return Err(AdminError::Forbidden(
                        "only an owner revokes owner tokens".into(),
                    ));
                }
                token.revoked_at_ms.get_or_insert(now);
                revoked = Some(token.clone());
                Ok(doc)
            })
            .await?;
        let mut revoked = revoked.expect("set when the change was written");
        self.record(
            actor,
            tenant,
            "token.revoke",
            token_id,
            serde_json::json!({"role": revoked.role}),
        )
        .await?;
        revoked.sha256.clear();
        Ok(revoked)
    }

    /// Adds a key version; new data is sealed with it, old data stays readable.
    pub async fn rotate_keys(&self, actor: &Actor, tenant: &TenantId) -> Result<u32, AdminError> {
        self.authorize(actor, tenant, Needs::Owner)?;
        let version = keyring::rotate(&self.docs, &self.master, tenant, now_ms()).await?;
        self.record(
            actor,
            tenant,
            "keys.rotate",
            tenant.as_str(),
            serde_json::json!({"current": version}),
        )
        .await?;
        Ok(version)
    }

    /// Destroys every key seed of a tenant (crypto-shredding; operator only).
    pub async fn destroy_keys(
        &self,
        actor: &Actor,
        tenant: &TenantId,
    ) -> Result<usize, AdminError> {
        self.authorize(actor, tenant, Needs::Operator)?;
        let deleted = keyring::destroy(&self.docs, tenant).await?;
        self.record(
            actor,
            tenant,
            "keys.destroy",
            tenant.as_str(),
            serde_json::json!({"keyring_versions_deleted": deleted}),
        )
        .await?;
        Ok(deleted)
    }
}
