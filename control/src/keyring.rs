//! A tenant's keyring: one random seed per key version, stored wrapped
//! (XChaCha20-Poly1305 under a key derived from the master secret), from
//! which the tenant's at-rest and pseudonym keys are derived.
//!
//! - Rotation adds a version: new log records are sealed with it, and old
//!   records stay readable because old seeds stay in the keyring.
//! - Destruction (crypto-shredding) deletes every version of the document, so
//!   no seed survives in the store: records sealed under the tenant's keys
//!   and the link from pseudonyms to employees are gone for good, even to
//!   someone holding the master secret. (On a bucket with object versioning
//!   turned on, the store keeps old object versions; the control-plane bucket
//!   must not have it, see README.)
//!
//! The pseudonym key stays at the version it was first derived with: a new
//! pseudonym key would split every employee into two subjects.

use std::collections::BTreeMap;

use candor_schemas::TenantId;
use candor_schemas::crypto::{self, NONCE_LEN};
use candor_schemas::keys::{AtRestKey, MasterSecret, PseudonymKey, SEED_LEN, TenantSeed};
use serde::{Deserialize, Serialize};

use crate::documents::{DocumentError, DocumentStore, Kind};

/// How many key versions a keyring may hold.
pub const MAX_KEY_VERSIONS: usize = 1000;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyringDoc {
    pub tenant: TenantId,
    /// The version new data is sealed with.
    pub current: u32,
    /// The version pseudonyms are computed with.
    pub pseudonym_version: u32,
    pub seeds: Vec<WrappedSeed>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WrappedSeed {
    pub version: u32,
    pub created_at_ms: i64,
    /// Hex of nonce (24 bytes) || sealed seed || tag.
    pub wrapped: String,
}

#[derive(Debug, thiserror::Error)]
pub enum KeyringError {
    #[error("tenant {0} has no keys (never created, or destroyed)")]
    NoKeys(TenantId),
    #[error(
        "keyring of {tenant}: seed version {version} does not open (wrong master secret or altered document)"
    )]
    Unwrap { tenant: TenantId, version: u32 },
    #[error("keyring of {0} is not consistent: {1}")]
    Inconsistent(TenantId, String),
    #[error("keyring of {0} holds {MAX_KEY_VERSIONS} versions; no more rotations")]
    Full(TenantId),
    #[error(transparent)]
    Document(#[from] DocumentError),
}

/// What a node holds in memory for one tenant: every at-rest key version
/// and the pseudonym key.
pub struct TenantKeys {
    pub tenant: TenantId,
    pub current: u32,
    at_rest: BTreeMap<u32, AtRestKey>,
    pseudonym: PseudonymKey,
}

impl TenantKeys {
    /// The version and key new data is sealed with.
    pub fn current_at_rest(&self) -> (u32, &AtRestKey) {
        (self.current, &self.at_rest[&self.current])
    }

    /// The at-rest key of a version, to open older data.
    pub fn at_rest(&self, version: u32) -> Option<&AtRestKey> {
        self.at_rest.get(&version)
    }

    pub fn pseudonym(&self) -> &PseudonymKey {
        &self.pseudonym
    }
}

impl std::fmt::Debug for TenantKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantKeys")
            .field("tenant", &self.tenant)
            .field("current", &self.current)
            .field("versions", &self.at_rest.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

fn wrap_aad(tenant: &TenantId, version: u32) -> Vec<u8> {
    let mut aad = b"candor/tenant-seed\0".to_vec();
    aad.extend_from_slice(tenant.as_str().as_bytes());
    aad.extend_from_slice(&version.to_be_bytes());
    aad
}

fn wrap(master: &MasterSecret, tenant: &TenantId, version: u32, now_ms: i64) -> WrappedSeed {
    let seed = TenantSeed::random();
    let nonce: [u8; NONCE_LEN] = rand::random();
    let key = master.seed_wrap_key(tenant, version);
    let mut out = nonce.to_vec();
    out.extend(crypto::seal(
        key.as_bytes(),
        &nonce,
        &wrap_aad(tenant, version),
        seed.as_bytes(),
    ));
    WrappedSeed {
        version,
        created_at_ms: now_ms,
        wrapped: hex::encode(out),
    }
}

fn unwrap(
    master: &MasterSecret,
    tenant: &TenantId,
    seed: &WrappedSeed,
) -> Result<TenantSeed, KeyringError> {
    let fail = || KeyringError::Unwrap {
        tenant: tenant.clone(),
        version: seed.version,
    };
    let bytes = hex::decode(&seed.wrapped).map_err(|_| fail())?;
    if bytes.len() != NONCE_LEN + SEED_LEN + crypto::TAG_LEN {
        return Err(fail());
    }
    let (nonce, sealed) = bytes.split_at(NONCE_LEN);
    let key = master.seed_wrap_key(tenant, seed.version);
    let plain = crypto::open(
        key.as_bytes(),
        nonce.try_into().expect("split at NONCE_LEN"),
        &wrap_aad(tenant, seed.version),
        sealed,
    )
    .map_err(|_| fail())?;
    let plain = zeroize::Zeroizing::new(plain);
    Ok(TenantSeed::from_bytes(
        plain.as_slice().try_into().map_err(|_| fail())?,
    ))
}

impl KeyringDoc {
    /// A keyring with version 1.
    pub fn new(master: &MasterSecret, tenant: &TenantId, now_ms: i64) -> Self {
        Self {
            tenant: tenant.clone(),
            current: 1,
            pseudonym_version: 1,
            seeds: vec![wrap(master, tenant, 1, now_ms)],
        }
    }

    /// Adds the next version and makes it current.
    pub fn rotate(&mut self, master: &MasterSecret, now_ms: i64) -> Result<u32, KeyringError> {
        if self.seeds.len() >= MAX_KEY_VERSIONS {
            return Err(KeyringError::Full(self.tenant.clone()));
        }
        let next = self.seeds.iter().map(|s| s.version).max().unwrap_or(0) + 1;
        self.seeds.push(wrap(master, &self.tenant, next, now_ms));
        self.current = next;
        Ok(next)
    }

    /// Unwraps every seed and derives the keys.
    pub fn keys(&self, master: &MasterSecret) -> Result<TenantKeys, KeyringError> {
        let tenant = &self.tenant;
        let mut seeds = BTreeMap::new();
        for wrapped in &self.seeds {
            seeds.insert(wrapped.version, unwrap(master, tenant, wrapped)?);
        }
        let missing = |what: &str, v: u32| {
            KeyringError::Inconsistent(tenant.clone(), format!("{what} version {v} has no seed"))
        };
        let pseudonym_seed = seeds
            .get(&self.pseudonym_version)
            .ok_or_else(|| missing("pseudonym", self.pseudonym_version))?;
        if !seeds.contains_key(&self.current) {
            return Err(missing("current", self.current));
        }
        Ok(TenantKeys {
            tenant: tenant.clone(),
            current: self.current,
            pseudonym: master.pseudonym_key(tenant, self.pseudonym_version, pseudonym_seed),
            at_rest: seeds
                .iter()
                .map(|(v, seed)| (*v, master.at_rest_key(tenant, *v, seed)))
                .collect(),
        })
    }
}

/// Creates a tenant's keyring (version 1); `Exists` if it has one.
pub async fn create(
    docs: &DocumentStore,
    master: &MasterSecret,
    tenant: &TenantId,
    now_ms: i64,
) -> Result<(), KeyringError> {
    docs.create(
        Kind::Keyring,
        tenant.as_str(),
        &KeyringDoc::new(master, tenant, now_ms),
    )
    .await?;
    Ok(())
}

/// Loads and unwraps a tenant's keys; `None` if it has no keyring.
pub async fn load(
    docs: &DocumentStore,
    master: &MasterSecret,
    tenant: &TenantId,
) -> Result<Option<TenantKeys>, KeyringError> {
    match docs
        .get::<KeyringDoc>(Kind::Keyring, tenant.as_str())
        .await?
    {
        None => Ok(None),
        Some(v) if &v.doc.tenant != tenant => Err(KeyringError::Inconsistent(
            tenant.clone(),
            format!("document names tenant {}", v.doc.tenant),
        )),
        Some(v) => v.doc.keys(master).map(Some),
    }
}

/// Adds a key version and makes it current; returns it.
pub async fn rotate(
    docs: &DocumentStore,
    master: &MasterSecret,
    tenant: &TenantId,
    now_ms: i64,
) -> Result<u32, KeyringError> {
    let written = docs
        .modify::<KeyringDoc, KeyringError, _>(Kind::Keyring, tenant.as_str(), |current| {
            let mut doc = current
                .ok_or_else(|| KeyringError::NoKeys(tenant.clone()))?
                .doc;
            doc.rotate(master, now_ms)?;
            Ok(doc)
        })
        .await?;
    Ok(written.doc.current)
}

/// Deletes every seed of a tenant (crypto-shredding); returns how many
/// document versions were deleted.
pub async fn destroy(docs: &DocumentStore, tenant: &TenantId) -> Result<usize, KeyringError> {
    let deleted = docs.destroy(Kind::Keyring, tenant.as_str()).await?;
    if deleted == 0 {
        return Err(KeyringError::NoKeys(tenant.clone()));
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_keeps_old_versions_and_the_pseudonym_key() {
        let master = MasterSecret::from_bytes(&[4; 32]).unwrap();
        let t = TenantId::new("acme").unwrap();
        let mut doc = KeyringDoc::new(&master, &t, 0);
        let before = doc.keys(&master).unwrap();
        assert_eq!(doc.rotate(&master, 1).unwrap(), 2);
        let after = doc.keys(&master).unwrap();
        assert_eq!(after.current_at_rest().0, 2);
        assert_eq!(
            after.at_rest(1).unwrap().as_bytes(),
            before.at_rest(1).unwrap().as_bytes()
        );
        assert_ne!(
            after.at_rest(2).unwrap().as_bytes(),
            after.at_rest(1).unwrap().as_bytes()
        );
        assert_eq!(after.pseudonym().as_bytes(), before.pseudonym().as_bytes());
    }

    #[test]
    fn seeds_do_not_open_with_another_master_or_tenant() {
        let master = MasterSecret::from_bytes(&[4; 32]).unwrap();
        let t = TenantId::new("acme").unwrap();
        let doc = KeyringDoc::new(&master, &t, 0);
        let other = MasterSecret::from_bytes(&[5; 32]).unwrap();
        assert!(matches!(doc.keys(&other), Err(KeyringError::Unwrap { .. })));
        let mut moved = doc.clone();
        moved.tenant = TenantId::new("globex").unwrap();
        assert!(matches!(
            moved.keys(&master),
            Err(KeyringError::Unwrap { .. })
        ));
        // The document holds no seed in clear.
        let text = serde_json::to_string(&doc).unwrap();
        let keys = doc.keys(&master).unwrap();
        assert!(!text.contains(&hex::encode(keys.at_rest(1).unwrap().as_bytes())));
    }
}
