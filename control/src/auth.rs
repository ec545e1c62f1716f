//! Turning a bearer token into who is asking. The token's tenant says which
//! tokens document to look in; a token whose hash is not there (a new token
//! another node just created) causes one reload of that tenant, at most once
//! per `miss_retry`, before it is refused.

use candor_schemas::{EmployeeId, TenantId};

use crate::cache::{CacheError, ControlCache};
use crate::tokens::{self, Role};

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub tenant: TenantId,
    pub role: Role,
    pub token_id: String,
    /// For manager and employee tokens.
    pub employee: Option<EmployeeId>,
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("missing or malformed bearer token")]
    Malformed,
    #[error("unknown token")]
    Unknown,
    #[error("token revoked")]
    Revoked,
    #[error("token expired")]
    Expired,
    #[error("tenant is cancelled")]
    TenantInactive,
    #[error(transparent)]
    Unavailable(#[from] CacheError),
}

impl AuthError {
    /// The machine-readable reason in error answers.
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::Malformed => "malformed_token",
            AuthError::Unknown => "unknown_token",
            AuthError::Revoked => "revoked_token",
            AuthError::Expired => "expired_token",
            AuthError::TenantInactive => "tenant_cancelled",
            AuthError::Unavailable(_) => "control_plane_unavailable",
        }
    }
}

/// The caller a token stands for. Every token of a cancelled tenant is
/// refused (`TenantInactive`).
pub async fn authenticate(
    cache: &ControlCache,
    token: &str,
    now_ms: i64,
) -> Result<Principal, AuthError> {
    authenticate_with(cache, token, now_ms, false).await
}

/// Like [`authenticate`], except that an owner token of a cancelled tenant
/// is let through: for the few routes an owner needs to see the tenant and
/// undo the cancellation within its grace period. Other roles of a
/// cancelled tenant are refused as by [`authenticate`].
pub async fn authenticate_owner_of_cancelled(
    cache: &ControlCache,
    token: &str,
    now_ms: i64,
) -> Result<Principal, AuthError> {
    authenticate_with(cache, token, now_ms, true).await
}

async fn authenticate_with(
    cache: &ControlCache,
    token: &str,
    now_ms: i64,
    cancelled_owner: bool,
) -> Result<Principal, AuthError> {
    let presented = tokens::parse(token).map_err(|_| AuthError::Malformed)?;
    let mut view = cache
        .get(&presented.tenant)
        .await?
        .ok_or(AuthError::Unknown)?;
    if view.tokens.find_by_hash(&presented.sha256).is_none()
        && view.loaded_at.elapsed() >= cache.config().miss_retry
    {
        view = cache
            .reload(&presented.tenant)
            .await?
            .ok_or(AuthError::Unknown)?;
    }
    let record = view
        .tokens
        .find_by_hash(&presented.sha256)
        .ok_or(AuthError::Unknown)?;
    if record.revoked_at_ms.is_some() {
        return Err(AuthError::Revoked);
    }
    if record.expires_at_ms.is_some_and(|e| e <= now_ms) {
        return Err(AuthError::Expired);
    }
    let let_through = cancelled_owner && record.role == Role::Owner;
    if !(view.tenant.doc.is_active() || let_through) {
        return Err(AuthError::TenantInactive);
    }
    Ok(Principal {
        tenant: presented.tenant,
        role: record.role,
        token_id: record.id.clone(),
        employee: record.employee.clone(),
    })
}
