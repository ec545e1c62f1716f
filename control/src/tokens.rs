//! API tokens. A token is `candor.<tenant>.<64 hex chars of randomness>`,
//! shown once when it is created; the control plane stores only its SHA-256
//! (plain SHA-256 is enough: 256 random bits cannot be guessed from their
//! hash), with its role, scope, expiry and revocation. The tenant in the
//! token only says where to look: a token is valid only if its hash is in
//! that tenant's document.

use std::fmt;
use std::str::FromStr;

use candor_schemas::{EmployeeId, TenantId};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub const TOKEN_PREFIX: &str = "candor";
/// Most tokens a tenant may hold (live or recently ended).
pub const MAX_TOKENS: usize = 2000;
/// Longest token name, in bytes.
pub const MAX_TOKEN_NAME_LEN: usize = 100;
/// Revoked and expired tokens are forgotten this long after they ended.
pub const ENDED_TOKEN_KEEP_MS: i64 = 30 * 24 * 3600 * 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Everything in the tenant, including owner tokens.
    Owner,
    /// Everything in the tenant except owner tokens and key destruction.
    Admin,
    /// The whole tenant, with identities.
    Hr,
    /// The departments the token's employee manages, with identities.
    Manager,
    /// The token's own employee only.
    Employee,
    /// The whole tenant, pseudonyms only.
    Analyst,
    /// AI extracts only.
    Ai,
}

impl Role {
    pub const ALL: [Role; 7] = [
        Role::Owner,
        Role::Admin,
        Role::Hr,
        Role::Manager,
        Role::Employee,
        Role::Analyst,
        Role::Ai,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Role::Owner => "owner",
            Role::Admin => "admin",
            Role::Hr => "hr",
            Role::Manager => "manager",
            Role::Employee => "employee",
            Role::Analyst => "analyst",
            Role::Ai => "ai",
        }
    }

    /// Whether a token of this role acts for one employee (who must be named).
    pub fn needs_employee(self) -> bool {
        matches!(self, Role::Manager | Role::Employee)
    }

    /// Whether this role may change the tenant's control-plane documents.
    pub fn administers(self) -> bool {
        matches!(self, Role::Owner | Role::Admin)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown role {0:?}; one of owner, admin, hr, manager, employee, analyst, ai")]
pub struct UnknownRole(pub String);

impl FromStr for Role {
    type Err = UnknownRole;
    fn from_str(s: &str) -> Result<Self, UnknownRole> {
        Role::ALL
            .into_iter()
            .find(|r| r.name() == s)
            .ok_or_else(|| UnknownRole(s.to_string()))
    }
}

/// How a token may be used.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenKind {
    /// A bearer token for the API.
    #[default]
    Api,
    /// A one-time sign-in link: it only opens one portal session, within
    /// minutes of being created.
    SignInLink,
    /// A portal session, held in an HttpOnly cookie; opened with another
    /// token, and ended with it.
    Session,
}

impl TokenKind {
    pub fn is_api(&self) -> bool {
        *self == TokenKind::Api
    }
}

/// How long a portal session lasts at most.
pub const SESSION_TTL_MS: i64 = 8 * 3600 * 1000;
/// How long a sign-in link may wait to be used.
pub const SIGN_IN_LINK_TTL_MS: i64 = 15 * 60 * 1000;

/// What the control plane keeps about one token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRecord {
    /// Public handle for listing and revoking (first 16 hex chars of the hash).
    pub id: String,
    pub name: String,
    pub role: Role,
    /// The employee a manager or employee token acts for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub employee: Option<EmployeeId>,
    /// Hex SHA-256 of the whole token; blanked (and then not shown) when a
    /// record is handed out.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sha256: String,
    pub created_at_ms: i64,
    pub created_by: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "TokenKind::is_api")]
    pub kind: TokenKind,
    /// A session's token it was opened with: revoking that one ends it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// When a sign-in link opened its session (it opens one only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub used_at_ms: Option<i64>,
}

impl TokenRecord {
    /// When the token stopped being valid, if it has.
    pub fn ended_at_ms(&self, now_ms: i64) -> Option<i64> {
        match (self.revoked_at_ms, self.expires_at_ms) {
            (Some(r), _) => Some(r),
            (None, Some(e)) if e <= now_ms => Some(e),
            _ => None,
        }
    }
}

/// A tenant's tokens: `tokens/<tenant>`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokensDoc {
    pub tokens: Vec<TokenRecord>,
}

impl TokensDoc {
    pub fn find_by_hash(&self, sha256: &str) -> Option<&TokenRecord> {
        self.tokens.iter().find(|t| t.sha256 == sha256)
    }

    /// Forgets tokens that ended more than `ENDED_TOKEN_KEEP_MS` ago.
    /// Forgets tokens that ended long enough ago, and sessions as soon as
    /// they end (they are many, and each is in the audit trail).
    pub fn prune(&mut self, now_ms: i64) {
        self.tokens.retain(|t| match t.ended_at_ms(now_ms) {
            None => true,
            Some(_) if t.kind == TokenKind::Session => false,
            Some(ended) => now_ms - ended < ENDED_TOKEN_KEEP_MS,
        });
    }

    pub fn find_by_id(&self, id: &str) -> Option<&TokenRecord> {
        self.tokens.iter().find(|t| t.id == id)
    }
}

/// A token as presented: its tenant and its hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresentedToken {
    pub tenant: TenantId,
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a Candor token (expected candor.<tenant>.<64 hex>)")]
pub struct MalformedToken;

/// Splits a presented token; bounded before anything is hashed.
pub fn parse(token: &str) -> Result<PresentedToken, MalformedToken> {
    if token.len() > 200 {
        return Err(MalformedToken);
    }
    let mut parts = token.split('.');
    let (Some(prefix), Some(tenant), Some(secret), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(MalformedToken);
    };
    if prefix != TOKEN_PREFIX
        || secret.len() != 64
        || !secret.bytes().all(|b| b.is_ascii_hexdigit())
    {
        return Err(MalformedToken);
    }
    let tenant = TenantId::new(tenant).map_err(|_| MalformedToken)?;
    Ok(PresentedToken {
        tenant,
        sha256: hash(token),
    })
}

pub fn hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// A new random token of a tenant, and its hash.
pub fn mint(tenant: &TenantId) -> (String, String) {
    let secret: [u8; 32] = rand::random();
    let token = format!("{TOKEN_PREFIX}.{tenant}.{}", hex::encode(secret));
    let sha = hash(&token);
    (token, sha)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_tokens_parse_to_their_hash_and_tenant() {
        let t = TenantId::new("acme").unwrap();
        let (token, sha) = mint(&t);
        let p = parse(&token).unwrap();
        assert_eq!((p.tenant, p.sha256), (t.clone(), sha.clone()));
        assert_ne!(mint(&t).0, token);
        for bad in [
            "",
            "candor.acme",
            "Bearer x",
            &format!("{token}.x"),
            &token.replace("candor.", "other."),
            &token[..token.len() - 1],
            &format!("candor.ACME.{}", "a".repeat(64)),
            &format!("candor.acme.{}", "g".repeat(64)),
        ] {
            assert_eq!(parse(bad), Err(MalformedToken), "{bad}");
        }
    }

    #[test]
    fn roles_parse_and_ended_tokens_are_pruned_after_a_while_and_sessions_at_once() {
        assert_eq!("manager".parse::<Role>().unwrap(), Role::Manager);
        assert!("root".parse::<Role>().is_err());
        let record = |id: &str, revoked: Option<i64>, expires: Option<i64>| TokenRecord {
            id: id.into(),
            name: id.into(),
            role: Role::Analyst,
            employee: None,
            sha256: id.into(),
            created_at_ms: 0,
            created_by: "test".into(),
            expires_at_ms: expires,
            revoked_at_ms: revoked,
            kind: TokenKind::Api,
            parent: None,
            used_at_ms: None,
        };
        let now = ENDED_TOKEN_KEEP_MS * 2;
        let session = |id: &str, expires: i64| TokenRecord {
            kind: TokenKind::Session,
            parent: Some("live".into()),
            ..record(id, None, Some(expires))
        };
        let mut doc = TokensDoc {
            tokens: vec![
                session("ended-session", now - 1),
                session("live-session", now + 1),
                record("live", None, None),
                record("old-revoked", Some(1), None),
                record("new-revoked", Some(now - 1), None),
                record("old-expired", None, Some(1)),
                record("future", None, Some(now + 1)),
            ],
        };
        doc.prune(now);
        let ids: Vec<_> = doc.tokens.iter().map(|t| t.id.as_str()).collect();
        assert_eq!(ids, ["live-session", "live", "new-revoked", "future"]);
    }
}
