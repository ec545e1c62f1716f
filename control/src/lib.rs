//! Candor's control plane: what every node must know about tenants (policy,
//! retention, time zone, where their lake lives), their keys, the directory,
//! devices and their revocations, and API tokens, kept as small versioned
//! JSON documents under a reserved prefix of the object store. No database
//! server is needed on one machine, and on many the object store is the only
//! shared part.
//!
//! Writes never overwrite: each change is a new version written with a
//! create-if-absent put, so of two writers who read the same version one
//! wins and the other gets a conflict it can retry. No secret is stored in
//! clear: keys derive from the master secret and per-tenant seeds that are
//! stored wrapped (`keyring`), and tokens are stored as hashes (`tokens`).
//! Every change is written to the tenant's hash-chained audit log (`audit`)
//! before it is made: a change that cannot be audited is not made (`admin`).

pub mod admin;
pub mod audit;
pub mod auth;
pub mod cache;
pub mod devices;
pub mod directory;
pub mod documents;
pub mod keyring;
pub mod store;
pub mod tenant;
pub mod testkit;
pub mod tokens;

pub use admin::{Actor, Admin, AdminError, CreatedToken, Enrollment, TokenRequest};
pub use audit::{AuditEntry, AuditError, AuditEvent, AuditLog, Checkpoint, Finding, Verification};
pub use auth::{
    AuthError, Principal, authenticate, authenticate_owner_of_cancelled, authenticate_sign_in,
};
pub use cache::{CacheConfig, CacheError, ControlCache, Readiness, TenantView};
pub use devices::{DeviceDoc, Revocations};
pub use directory::{Directory, Member};
pub use documents::{DocumentError, DocumentStore, Kind, Versioned};
pub use keyring::{KeyringError, TenantKeys};
pub use store::{StoreError, open_store};
pub use tenant::{Plan, PrivacyMode, Site, Tenant, TenantError, WorkHours};
pub use tokens::{Role, TokenKind, TokenRecord};
