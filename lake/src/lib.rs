//! Candor's lake, as the processor writes it and the query node reads it:
//! the layout of each dataset's partitions ([`layout`]), the stores they
//! live in ([`store`]: one deployment's lake and each residency tenant's
//! own) and the Delta tables of a lake ([`table`]): each dataset's, and the
//! processors' own state.

mod durable;
pub mod jobs;
pub mod layout;
pub mod store;
pub mod table;
pub mod testkit;

pub use layout::PartitionKey;
pub use store::{Lake, LakeError, Lakes, encode_parquet};
pub use table::dataset::{DatasetTable, NewObject, TableObject};
pub use table::maintenance::{Compacted, Deleted};
pub use table::manifest::{FlushManifest, ManifestTable};
pub use table::state::{StateEntry, StateTable, StateWrite};
pub use table::{AsOf, Prior, Progress};
