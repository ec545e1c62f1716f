//! Versioned documents on an object store.
//!
//! Layout: `<root>/_control/<kind>/<id>/<version, 20 digits>.json`, where a
//! tenant-scoped id is `<tenant>/<name>` (devices). A document's
//! current value is its highest version. Version 1 is written by `create`,
//! version n+1 by `update(expected = n)`, always with a create-if-absent put
//! (`PutMode::Create`: a hard link on a local directory, `If-None-Match: *`
//! on S3), so a write based on a stale read can never replace a newer one.
//! Older versions stay as the document's history.

use std::sync::Arc;

use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// The reserved prefix of the control plane inside a store.
pub const CONTROL_PREFIX: &str = "_control";
/// Largest document read or written, except the directory; checked before
/// anything is allocated.
pub const MAX_DOCUMENT_BYTES: u64 = 1024 * 1024;
/// Largest directory document: about 200,000 employees.
pub const MAX_DIRECTORY_BYTES: u64 = 16 * 1024 * 1024;
/// How often `modify` rereads and retries after losing a race.
const MODIFY_ATTEMPTS: usize = 16;

/// The kinds of document the control plane keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// One per tenant: policy, retention, residency, lifecycle.
    Tenant,
    /// One per tenant: its wrapped key seeds.
    Keyring,
    /// One per tenant: employee to department, managers.
    Directory,
    /// One per device, id `<tenant>/<device>`: its enrollment.
    Device,
    /// One per tenant: revoked device key versions (what ingest checks).
    Revocations,
    /// One per tenant: API token hashes.
    Tokens,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Tenant => "tenants",
            Kind::Keyring => "keyrings",
            Kind::Directory => "directory",
            Kind::Device => "devices",
            Kind::Revocations => "revocations",
            Kind::Tokens => "tokens",
        }
    }

    pub fn max_bytes(self) -> u64 {
        match self {
            Kind::Directory => MAX_DIRECTORY_BYTES,
            _ => MAX_DOCUMENT_BYTES,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DocumentError {
    #[error("{kind} {id} changed since version {expected}; read it again and retry")]
    Conflict {
        kind: &'static str,
        id: String,
        expected: u64,
    },
    #[error("{kind} {id} already exists")]
    Exists { kind: &'static str, id: String },
    #[error("{kind} {id} does not exist")]
    NotFound { kind: &'static str, id: String },
    #[error("document {path} is {size} bytes; at most {max}")]
    TooLarge { path: String, size: u64, max: u64 },
    #[error("document {path} is not valid: {reason}")]
    Malformed { path: String, reason: String },
    #[error("document id {0:?} must be 1-128 of [A-Za-z0-9._:@-], or two such parts joined by /")]
    BadId(String),
    #[error("{kind} {id}: still conflicting after {MODIFY_ATTEMPTS} attempts")]
    Contended { kind: &'static str, id: String },
    #[error("object store: {0}")]
    Store(#[from] object_store::Error),
}

/// A document and the version it was read at (the token for `update`).
#[derive(Debug, Clone, PartialEq)]
pub struct Versioned<T> {
    pub version: u64,
    pub doc: T,
}

#[derive(Clone)]
pub struct DocumentStore {
    store: Arc<dyn ObjectStore>,
    root: Path,
}

fn check_id(id: &str) -> Result<(), DocumentError> {
    let part_ok = |part: &str| {
        !part.is_empty()
            && part.len() <= 128
            && part
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':' | b'@'))
            && !part.starts_with('.')
    };
    let parts: Vec<&str> = id.split('/').collect();
    if parts.len() <= 2 && parts.iter().all(|p| part_ok(p)) {
        Ok(())
    } else {
        Err(DocumentError::BadId(id.to_string()))
    }
}

impl DocumentStore {
    /// Documents under `<prefix>/_control/` of `store`.
    pub fn new(store: Arc<dyn ObjectStore>, prefix: &Path) -> Self {
        Self {
            store,
            root: prefix.clone().join(CONTROL_PREFIX),
        }
    }

    fn dir(&self, kind: Kind, id: &str) -> Path {
        id.split('/')
            .fold(self.root.clone().join(kind.name()), |path, part| {
                path.join(part)
            })
    }

    fn path(&self, kind: Kind, id: &str, version: u64) -> Path {
        self.dir(kind, id).join(format!("{version:020}.json"))
    }

    /// The highest version of a document and its size, if it exists.
    async fn latest(&self, kind: Kind, id: &str) -> Result<Option<(u64, u64)>, DocumentError> {
        let entries: Vec<_> = self
            .store
            .list(Some(&self.dir(kind, id)))
            .try_collect()
            .await?;
        Ok(entries
            .iter()
            .filter_map(|meta| {
                let version = meta
                    .location
                    .filename()?
                    .strip_suffix(".json")?
                    .parse()
                    .ok()?;
                Some((version, meta.size))
            })
            .max())
    }

    /// The current version of a document, or `None` if it was never created.
    pub async fn get<T: DeserializeOwned>(
        &self,
        kind: Kind,
        id: &str,
    ) -> Result<Option<Versioned<T>>, DocumentError> {
        check_id(id)?;
        let Some((version, size)) = self.latest(kind, id).await? else {
            return Ok(None);
        };
        let path = self.path(kind, id, version);
        if size > kind.max_bytes() {
            return Err(DocumentError::TooLarge {
                path: path.to_string(),
                size,
                max: kind.max_bytes(),
            });
        }
        let bytes = self.store.get(&path).await?.bytes().await?;
        let doc = serde_json::from_slice(&bytes).map_err(|e| DocumentError::Malformed {
            path: path.to_string(),
            reason: e.to_string(),
        })?;
        Ok(Some(Versioned { version, doc }))
    }

    /// Writes version 1 of a new document.
    pub async fn create<T: Serialize>(
        &self,
        kind: Kind,
        id: &str,
        doc: &T,
    ) -> Result<u64, DocumentError> {
        check_id(id)?;
        if self.latest(kind, id).await?.is_some() {
            return Err(DocumentError::Exists {
                kind: kind.name(),
                id: id.to_string(),
            });
        }
        self.put_version(kind, id, 1, doc)
            .await
            .map_err(|e| match e {
                DocumentError::Conflict { .. } => DocumentError::Exists {
                    kind: kind.name(),
                    id: id.to_string(),
                },
                other => other,
            })
    }

    /// Writes the version after `expected`, if `expected` is still current.
    pub async fn update<T: Serialize>(
        &self,
        kind: Kind,
        id: &str,
        expected: u64,
        doc: &T,
    ) -> Result<u64, DocumentError> {
        check_id(id)?;
        match self.latest(kind, id).await? {
            None => Err(DocumentError::NotFound {
                kind: kind.name(),
                id: id.to_string(),
            }),
            Some((current, _)) if current != expected => Err(DocumentError::Conflict {
                kind: kind.name(),
                id: id.to_string(),
                expected,
            }),
            // Another writer may still get there first: the put decides.
            Some(_) => self.put_version(kind, id, expected + 1, doc).await,
        }
    }

    /// Refuses a document too large for its kind, as a write would, before
    /// anything is written.
    pub fn check_size<T: Serialize>(
        &self,
        kind: Kind,
        id: &str,
        doc: &T,
    ) -> Result<(), DocumentError> {
        let path = self.path(kind, id, 0);
        let body = serde_json::to_vec_pretty(doc).map_err(|e| DocumentError::Malformed {
            path: path.to_string(),
            reason: e.to_string(),
        })?;
        if body.len() as u64 > kind.max_bytes() {
            return Err(DocumentError::TooLarge {
                path: self.dir(kind, id).to_string(),
                size: body.len() as u64,
                max: kind.max_bytes(),
            });
        }
        Ok(())
    }

    async fn put_version<T: Serialize>(
        &self,
        kind: Kind,
        id: &str,
        version: u64,
        doc: &T,
    ) -> Result<u64, DocumentError> {
        let path = self.path(kind, id, version);
        let body = serde_json::to_vec_pretty(doc).map_err(|e| DocumentError::Malformed {
            path: path.to_string(),
            reason: e.to_string(),
        })?;
        if body.len() as u64 > kind.max_bytes() {
            return Err(DocumentError::TooLarge {
                path: path.to_string(),
                size: body.len() as u64,
                max: kind.max_bytes(),
            });
        }
        let opts = PutOptions::from(PutMode::Create);
        match self.store.put_opts(&path, body.into(), opts).await {
            Ok(_) => Ok(version),
            Err(
                object_store::Error::AlreadyExists { .. }
                | object_store::Error::Precondition { .. },
            ) => Err(DocumentError::Conflict {
                kind: kind.name(),
                id: id.to_string(),
                expected: version - 1,
            }),
            Err(e) => Err(e.into()),
        }
    }

    /// Reads the current version (or `None`), lets `change` build the next
    /// one, and writes it; when another writer got there first, reads again
    /// and calls `change` again, so no update is lost. `change` returning an
    /// error stops without writing. Returns the written document.
    pub async fn modify<T, E, F>(
        &self,
        kind: Kind,
        id: &str,
        mut change: F,
    ) -> Result<Versioned<T>, E>
    where
        T: Serialize + DeserializeOwned,
        E: From<DocumentError>,
        F: FnMut(Option<Versioned<T>>) -> Result<T, E>,
    {
        for _ in 0..MODIFY_ATTEMPTS {
            let current = self.get::<T>(kind, id).await?;
            let version = current.as_ref().map(|c| c.version);
            let next = change(current)?;
            let written = match version {
                None => self.create(kind, id, &next).await,
                Some(v) => self.update(kind, id, v, &next).await,
            };
            match written {
                Ok(version) => return Ok(Versioned { version, doc: next }),
                Err(
                    DocumentError::Conflict { .. }
                    | DocumentError::Exists { .. }
                    | DocumentError::NotFound { .. },
                ) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(DocumentError::Contended {
            kind: kind.name(),
            id: id.to_string(),
        }
        .into())
    }

    /// Deletes every version of a document. Used to destroy key seeds: no
    /// history of them may remain.
    pub async fn destroy(&self, kind: Kind, id: &str) -> Result<usize, DocumentError> {
        check_id(id)?;
        let entries: Vec<_> = self
            .store
            .list(Some(&self.dir(kind, id)))
            .try_collect()
            .await?;
        for meta in &entries {
            match self.store.delete(&meta.location).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(entries.len())
    }

    /// Ids of every document of a kind.
    pub async fn ids(&self, kind: Kind) -> Result<Vec<String>, DocumentError> {
        self.ids_under(kind, None).await
    }

    /// Names of the documents `<parent>/<name>` of a kind (a tenant's
    /// devices), or, without a parent, the first parts of every id.
    pub async fn ids_under(
        &self,
        kind: Kind,
        parent: Option<&str>,
    ) -> Result<Vec<String>, DocumentError> {
        let mut dir = self.root.clone().join(kind.name());
        if let Some(parent) = parent {
            check_id(parent)?;
            dir = dir.join(parent);
        }
        let listing = self.store.list_with_delimiter(Some(&dir)).await?;
        let mut ids: Vec<String> = listing
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename().map(str::to_string))
            .collect();
        ids.sort();
        Ok(ids)
    }
}
