//! Candor's contracts, shared by every other crate: the wire envelope agents
//! send, the batch model and its validation, key derivation, sealing, the Arrow
//! schemas of log records and lake datasets, and the reasons a batch is
//! refused. Nothing here does I/O; callers pass in bytes, clocks and nonces.
//!
//! The normative description for agent authors is `schemas/WIRE.md`; the test
//! vectors in `schemas/testdata/` pin this code to it.

pub mod batch;
pub mod columns;
pub mod crypto;
pub mod datasets;
pub mod envelope;
pub mod ids;
pub mod intake;
pub mod keys;
pub mod reason;
pub mod record;
pub mod transparency;

pub use batch::{Batch, Limits};
pub use columns::{DecodedBatch, decode_json};
pub use datasets::Dataset;
pub use envelope::EnvelopeHeader;
pub use ids::{DeviceId, EmployeeId, IdError, TenantId};
pub use intake::{AuthenticBatch, OpenedBatch, authenticate, decode, open_batch};
pub use keys::{AtRestKey, DeviceKey, MasterSecret, PseudonymKey};
pub use reason::{RejectReason, Rejection};
