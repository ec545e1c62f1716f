//! What a token may see. The tenant comes from the token; the rows within
//! it from the role:
//!
//! | role | rows | identities |
//! | --- | --- | --- |
//! | owner, admin, hr | the whole tenant | yes |
//! | manager | the departments they manage (by the directory, now) | yes |
//! | employee | their own subject | yes (their own) |
//! | analyst | the whole tenant | no: pseudonyms only |
//! | ai | nothing: extracts only | no |
//!
//! In a tenant whose privacy mode is `team_only`, managers and HR keep
//! their rows but see them as group figures only ([`Scope::groups_only`],
//! enforced by [`crate::team_only`]): no figure per employee, no SQL.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use candor_control::{Directory, Principal, PrivacyMode, Role, TenantView};
use candor_schemas::{EmployeeId, TenantId};

/// The rows of the tenant a caller may see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rows {
    Tenant,
    Departments(BTreeSet<String>),
    /// One pseudonymous subject.
    Subject(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    pub role: Role,
    pub rows: Rows,
    /// Whether answers may name employees instead of pseudonyms.
    pub identities: bool,
    /// `Some(k)`: the caller sees group figures of at least k people only
    /// (privacy mode `team_only`, for managers and HR).
    pub groups_only: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScopeError {
    #[error("role {0} may not query telemetry")]
    RoleNotAllowed(Role),
    #[error("this {0} token names no employee")]
    NoEmployee(Role),
    #[error("the tenant's keys were destroyed; its data can no longer be read")]
    KeysDestroyed,
}

impl Scope {
    /// The scope of `principal` in its tenant as `view` shows it now.
    pub fn of(principal: &Principal, view: &TenantView) -> Result<Scope, ScopeError> {
        let role = principal.role;
        let employee = || {
            principal
                .employee
                .as_ref()
                .ok_or(ScopeError::NoEmployee(role))
        };
        let (rows, identities) = match role {
            Role::Owner | Role::Admin | Role::Hr => (Rows::Tenant, true),
            Role::Analyst => (Rows::Tenant, false),
            Role::Manager => (
                Rows::Departments(view.directory.managed_by(employee()?)),
                true,
            ),
            Role::Employee => {
                let keys = view.keys.as_ref().ok_or(ScopeError::KeysDestroyed)?;
                (Rows::Subject(keys.pseudonym().subject(employee()?)), true)
            }
            Role::Ai => return Err(ScopeError::RoleNotAllowed(role)),
        };
        let doc = &view.tenant.doc;
        let groups_only = (doc.privacy_mode == PrivacyMode::TeamOnly
            && matches!(role, Role::Manager | Role::Hr))
        .then_some(doc.extract_k);
        Ok(Scope {
            role,
            rows,
            identities,
            groups_only,
        })
    }

    /// The whole tenant, pseudonymous: for operators' tools.
    pub fn whole_tenant() -> Scope {
        Scope {
            role: Role::Analyst,
            rows: Rows::Tenant,
            identities: false,
            groups_only: None,
        }
    }
}

/// Pseudonym to employee id, for the directory's employees: how the service
/// re-identifies rows for roles that may see identities. Never stored.
pub struct Identities {
    by_subject: HashMap<String, EmployeeId>,
}

impl Identities {
    pub fn of(view: &TenantView) -> Result<Identities, ScopeError> {
        let keys = view.keys.as_ref().ok_or(ScopeError::KeysDestroyed)?;
        let by_subject = view
            .directory
            .employees
            .keys()
            .map(|e| (keys.pseudonym().subject(e), e.clone()))
            .collect();
        Ok(Identities { by_subject })
    }

    pub fn employee(&self, subject: &str) -> Option<&EmployeeId> {
        self.by_subject.get(subject)
    }

    /// Every (subject, employee) of the directory.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &EmployeeId)> {
        self.by_subject.iter().map(|(s, e)| (s.as_str(), e))
    }
}

/// A tenant's identities and the directory they were computed from.
type CachedIdentities = (Arc<Directory>, Arc<Identities>);

/// Identities per tenant, rebuilt when the tenant's directory changes
/// (one HMAC per employee), so KPI answers do not pay for it each time.
#[derive(Default)]
pub struct IdentityCache {
    entries: std::sync::Mutex<HashMap<TenantId, CachedIdentities>>,
}

impl IdentityCache {
    pub fn get(&self, view: &TenantView) -> Result<Arc<Identities>, ScopeError> {
        // The directory is replaced as a whole on every change, so the same
        // allocation means the same version (the entry holds it, so its
        // address cannot be reused meanwhile).
        let tenant = &view.tenant.doc.id;
        if let Some((directory, ids)) = self.entries.lock().expect("identity lock").get(tenant)
            && Arc::ptr_eq(directory, &view.directory)
        {
            return Ok(ids.clone());
        }
        let ids = Arc::new(Identities::of(view)?);
        self.entries
            .lock()
            .expect("identity lock")
            .insert(tenant.clone(), (view.directory.clone(), ids.clone()));
        Ok(ids)
    }
}
