//! Turning a bearer token into who is asking. The token's tenant says which
//! tokens document to look in; a token whose hash is not there (a new token
//! another node just created) causes one reload of that tenant, at most once
//! per `miss_retry`, before it is refused.

use candor_schemas::{EmployeeId, TenantId};

use crate::cache::{CacheError, ControlCache};
use crate::tokens::{self, Role, TokenKind};

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub tenant: TenantId,
    pub role: Role,
    pub token_id: String,
    /// For manager and employee tokens.
    pub employee: Option<EmployeeId>,
    /// An API token or a portal session (never a sign-in link: those only
    /// open sessions, through [`authenticate_sign_in`]).
    pub kind: TokenKind,
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
    #[error("a sign-in link only opens a session")]
    SignInLinkOnly,
    #[error("this sign-in link was used already")]
    LinkUsed,
    #[error("this session has ended (signed out, or its token was revoked)")]
    SessionEnded,
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
            AuthError::SignInLinkOnly => "sign_in_link_only",
            AuthError::LinkUsed => "sign_in_link_used",
            AuthError::SessionEnded => "session_ended",
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
    no_sign_in_link(authenticate_with(cache, token, now_ms, false).await?)
}

fn no_sign_in_link(principal: Principal) -> Result<Principal, AuthError> {
    if principal.kind == TokenKind::SignInLink {
        return Err(AuthError::SignInLinkOnly);
    }
    Ok(principal)
}

/// The caller a token that opens a portal session stands for: an API
/// token, or a sign-in link not used yet (its single use is recorded when
/// the session is written). A session cannot open another.
pub async fn authenticate_sign_in(
    cache: &ControlCache,
    token: &str,
    now_ms: i64,
) -> Result<Principal, AuthError> {
    let principal = authenticate_with(cache, token, now_ms, false).await?;
    if principal.kind == TokenKind::Session {
        return Err(AuthError::SessionEnded);
    }
    Ok(principal)
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
    no_sign_in_link(authenticate_with(cache, token, now_ms, true).await?)
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
    if record.kind == TokenKind::SignInLink && record.used_at_ms.is_some() {
        return Err(AuthError::LinkUsed);
    }
    // A session lives as long as the token it was opened with.
    if record.kind == TokenKind::Session {
        let parent = record
            .parent
            .as_deref()
            .and_then(|p| view.tokens.find_by_id(p));
        if parent.is_none_or(|p| p.ended_at_ms(now_ms).is_some()) {
            return Err(AuthError::SessionEnded);
        }
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
        kind: record.kind,
    })
}
