//! Candor's control plane: what every node must know about tenants (policy,
//! retention, time zone, where their lake lives), the directory, device
//! revocations and API tokens, kept as small versioned JSON documents under
//! a reserved prefix of the object store. No database server is needed on
//! one machine, and on many the object store is the only shared part.
//!
//! Writes never overwrite: each change is a new version written with a
//! create-if-absent put, so of two writers who read the same version one
//! wins and the other gets a conflict it can retry. Nothing secret is stored
//! here; keys are derived from the master secret (see `candor_schemas::keys`).

pub mod documents;
pub mod store;
pub mod tenant;
pub mod testkit;

pub use documents::{DocumentError, DocumentStore, Kind, Versioned};
pub use store::{StoreError, open_store};
pub use tenant::{Plan, Tenant, TenantError, WorkHours};
