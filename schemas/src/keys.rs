//! Key derivation. Every key Candor uses is derived with HKDF-SHA256 from one
//! master secret, so no node stores per-device keys and ingest needs no key
//! lookup: the ids in an envelope's header, plus the master secret, give the
//! key that must have sealed it.
//!
//! `info` binds each key to its purpose, its ids and its version:
//!
//! ```text
//! info = label || 0x00 || (len:u8 || id bytes)* || version:u32 big-endian
//! ```
//!
//! Device keys come from the master secret alone, so ingest can check any
//! envelope without a lookup. Tenant keys (at rest, pseudonyms) also take a
//! random 32-byte *tenant seed* per key version as input key material
//! (`IKM = master || seed`). The control plane keeps the seeds, wrapped under
//! a master-derived key; destroying them (crypto-shredding) makes everything
//! sealed or pseudonymized under those keys unrecoverable, even to someone
//! holding the master secret.
//!
//! The exact labels and the salt are part of the wire contract (WIRE.md).

use std::fmt;

use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::crypto::KEY_LEN;
use crate::ids::{DeviceId, EmployeeId, TenantId};

/// HKDF salt for every Candor key (fixed; domain separation is in `info`).
pub const HKDF_SALT: &[u8] = b"candor/hkdf/v1";
pub const DEVICE_KEY_LABEL: &str = "candor/device-key";
pub const AT_REST_KEY_LABEL: &str = "candor/tenant-at-rest-key";
pub const PSEUDONYM_KEY_LABEL: &str = "candor/tenant-pseudonym-key";
/// Wraps (seals) a tenant's seeds where the control plane stores them.
pub const SEED_WRAP_KEY_LABEL: &str = "candor/tenant-seed-wrap-key";
/// Chains a tenant's audit entries (HMAC-SHA256), so only a holder of the
/// master secret can write an entry that verifies.
pub const AUDIT_KEY_LABEL: &str = "candor/audit-key";
/// Signs a tenant's AI extract deliveries (HMAC-SHA256).
pub const EXTRACT_SIGNING_KEY_LABEL: &str = "candor/extract-signing-key";
/// Seeds the Laplace noise of a tenant's extracts. Internal: it leaves no
/// node, so no receiver of an extract (who holds the signing key) can
/// recompute the noise and take it off.
pub const EXTRACT_NOISE_KEY_LABEL: &str = "candor/extract-noise-key";
/// Length of a tenant seed.
pub const SEED_LEN: usize = 32;

pub const MIN_MASTER_SECRET_LEN: usize = 32;
pub const MAX_MASTER_SECRET_LEN: usize = 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MasterSecretError {
    #[error(
        "master secret is {0} bytes; it must be {MIN_MASTER_SECRET_LEN} to {MAX_MASTER_SECRET_LEN}"
    )]
    BadLength(usize),
    #[error("master secret is not hex: {0}")]
    NotHex(String),
}

/// The root of all key material. Never logged: `Debug` prints nothing of it.
#[derive(Clone)]
pub struct MasterSecret(Zeroizing<Vec<u8>>);

impl MasterSecret {
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, MasterSecretError> {
        if !(MIN_MASTER_SECRET_LEN..=MAX_MASTER_SECRET_LEN).contains(&bytes.len()) {
            return Err(MasterSecretError::BadLength(bytes.len()));
        }
        Ok(Self(Zeroizing::new(bytes.to_vec())))
    }

    /// Parses hex, ignoring surrounding whitespace (a trailing newline in a file).
    pub fn from_hex(text: &str) -> Result<Self, MasterSecretError> {
        let bytes = Zeroizing::new(
            hex::decode(text.trim()).map_err(|e| MasterSecretError::NotHex(e.to_string()))?,
        );
        Self::from_bytes(&bytes)
    }

    fn derive(
        &self,
        label: &str,
        ids: &[&str],
        version: u32,
        seed: Option<&TenantSeed>,
    ) -> Zeroizing<[u8; KEY_LEN]> {
        let mut info = Vec::with_capacity(label.len() + 1 + ids.len() * 65 + 4);
        info.extend_from_slice(label.as_bytes());
        info.push(0);
        for id in ids {
            // Ids are at most 64 bytes (see `ids`), so the length fits a byte.
            let len = u8::try_from(id.len()).expect("ids are at most 64 bytes");
            info.push(len);
            info.extend_from_slice(id.as_bytes());
        }
        info.extend_from_slice(&version.to_be_bytes());
        let hk = match seed {
            None => Hkdf::<Sha256>::new(Some(HKDF_SALT), &self.0),
            Some(seed) => {
                let mut ikm = Zeroizing::new(Vec::with_capacity(self.0.len() + SEED_LEN));
                ikm.extend_from_slice(&self.0);
                ikm.extend_from_slice(seed.as_bytes());
                Hkdf::<Sha256>::new(Some(HKDF_SALT), &ikm)
            }
        };
        let mut okm = Zeroizing::new([0u8; KEY_LEN]);
        hk.expand(&info, okm.as_mut())
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        okm
    }

    /// The key a device seals its batches with.
    pub fn device_key(
        &self,
        tenant: &TenantId,
        employee: &EmployeeId,
        device: &DeviceId,
        version: u32,
    ) -> DeviceKey {
        DeviceKey(self.derive(
            DEVICE_KEY_LABEL,
            &[tenant.as_str(), employee.as_str(), device.as_str()],
            version,
            None,
        ))
    }

    /// The key log records (and other data at rest) of a tenant are sealed
    /// with; `seed` is the tenant's seed of the same version.
    pub fn at_rest_key(&self, tenant: &TenantId, version: u32, seed: &TenantSeed) -> AtRestKey {
        AtRestKey(self.derive(AT_REST_KEY_LABEL, &[tenant.as_str()], version, Some(seed)))
    }

    /// The key under which a tenant's employee ids become pseudonyms.
    pub fn pseudonym_key(
        &self,
        tenant: &TenantId,
        version: u32,
        seed: &TenantSeed,
    ) -> PseudonymKey {
        PseudonymKey(self.derive(PSEUDONYM_KEY_LABEL, &[tenant.as_str()], version, Some(seed)))
    }

    /// The key a tenant's seed of one version is wrapped with for storage.
    pub fn seed_wrap_key(&self, tenant: &TenantId, version: u32) -> SeedWrapKey {
        SeedWrapKey(self.derive(SEED_WRAP_KEY_LABEL, &[tenant.as_str()], version, None))
    }

    /// The key that chains a tenant's audit entries. It does not depend on
    /// the tenant's seeds: the audit trail outlives a crypto-shredded tenant.
    pub fn audit_key(&self, tenant: &TenantId) -> AuditKey {
        AuditKey(self.derive(AUDIT_KEY_LABEL, &[tenant.as_str()], 1, None))
    }

    /// The secret a tenant's AI extract receiver checks signatures with.
    pub fn extract_signing_key(&self, tenant: &TenantId, version: u32) -> ExtractSigningKey {
        ExtractSigningKey(self.derive(EXTRACT_SIGNING_KEY_LABEL, &[tenant.as_str()], version, None))
    }

    /// The secret a tenant's extract noise is drawn from; never given out.
    pub fn extract_noise_key(&self, tenant: &TenantId) -> ExtractNoiseKey {
        ExtractNoiseKey(self.derive(EXTRACT_NOISE_KEY_LABEL, &[tenant.as_str()], 1, None))
    }
}

impl fmt::Debug for MasterSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterSecret(<redacted>)")
    }
}

macro_rules! key_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone)]
        pub struct $name(Zeroizing<[u8; KEY_LEN]>);

        impl $name {
            pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
                Self(Zeroizing::new(bytes))
            }

            pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
                &self.0
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}(<redacted>)", stringify!($name))
            }
        }
    };
}

key_type!(
    /// Seals one device's batches (XChaCha20-Poly1305).
    DeviceKey
);
key_type!(
    /// Seals a tenant's log records (XChaCha20-Poly1305).
    AtRestKey
);
key_type!(
    /// Turns a tenant's employee ids into pseudonyms (HMAC-SHA256).
    PseudonymKey
);
key_type!(
    /// Random input to a tenant's keys; destroying it shreds them.
    TenantSeed
);
key_type!(
    /// Seals a tenant seed for storage in the control plane.
    SeedWrapKey
);
key_type!(
    /// Chains a tenant's audit entries (HMAC-SHA256).
    AuditKey
);
key_type!(
    /// Signs a tenant's AI extract deliveries (HMAC-SHA256).
    ExtractSigningKey
);
key_type!(
    /// Seeds the noise of a tenant's extracts (HMAC-SHA256 per value).
    ExtractNoiseKey
);

impl TenantSeed {
    /// A fresh seed from the operating system's random source.
    pub fn random() -> Self {
        // rand's thread generator is a CSPRNG seeded from the OS.
        let mut bytes = Zeroizing::new([0u8; SEED_LEN]);
        rand::RngCore::fill_bytes(&mut rand::rng(), bytes.as_mut());
        Self(bytes)
    }
}

/// HMAC-SHA256 of `message` under any of the keys above.
pub fn hmac_sha256(key: &[u8; KEY_LEN], message: &[u8]) -> [u8; 32] {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC accepts any key length");
    mac.update(message);
    mac.finalize().into_bytes().into()
}

impl PseudonymKey {
    /// The lake's `subject` column: lowercase hex of HMAC-SHA256(key, employee id).
    pub fn subject(&self, employee: &EmployeeId) -> String {
        hex::encode(hmac_sha256(self.as_bytes(), employee.as_str().as_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn master() -> MasterSecret {
        MasterSecret::from_bytes(&[7u8; 32]).unwrap()
    }

    #[test]
    fn keys_are_bound_to_ids_purpose_and_version() {
        let m = master();
        let t = TenantId::new("acme").unwrap();
        let e = EmployeeId::new("e1").unwrap();
        let d = DeviceId::new("d1").unwrap();
        let k = m.device_key(&t, &e, &d, 1);
        let other_employee = m.device_key(&t, &EmployeeId::new("e2").unwrap(), &d, 1);
        let other_version = m.device_key(&t, &e, &d, 2);
        assert_ne!(k.as_bytes(), other_employee.as_bytes());
        assert_ne!(k.as_bytes(), other_version.as_bytes());
        let seed = TenantSeed::from_bytes([9u8; SEED_LEN]);
        assert_ne!(
            m.at_rest_key(&t, 1, &seed).as_bytes(),
            m.pseudonym_key(&t, 1, &seed).as_bytes()
        );
        // Without the seed the master secret alone gives another key.
        assert_ne!(
            m.at_rest_key(&t, 1, &seed).as_bytes(),
            m.at_rest_key(&t, 1, &TenantSeed::from_bytes([8u8; SEED_LEN]))
                .as_bytes()
        );
        // Length prefixes keep ("ab","c") and ("a","bc") apart.
        let split1 = m.device_key(
            &t,
            &EmployeeId::new("ab").unwrap(),
            &DeviceId::new("c").unwrap(),
            1,
        );
        let split2 = m.device_key(
            &t,
            &EmployeeId::new("a").unwrap(),
            &DeviceId::new("bc").unwrap(),
            1,
        );
        assert_ne!(split1.as_bytes(), split2.as_bytes());
    }

    #[test]
    fn master_secret_is_bounded_and_never_printed() {
        assert!(MasterSecret::from_bytes(&[1u8; 31]).is_err());
        assert!(MasterSecret::from_hex("zz").is_err());
        let m = MasterSecret::from_hex(&format!("{}\n", "ab".repeat(32))).unwrap();
        assert!(!format!("{m:?}").contains("ab"));
    }

    #[test]
    fn subjects_are_stable_per_tenant_hex_hmacs() {
        let (acme, globex) = (
            TenantId::new("acme").unwrap(),
            TenantId::new("globex").unwrap(),
        );
        let (e1, e2) = (
            EmployeeId::new("e1").unwrap(),
            EmployeeId::new("e2").unwrap(),
        );
        let seed = TenantSeed::from_bytes([9u8; SEED_LEN]);
        let s = master().pseudonym_key(&acme, 1, &seed).subject(&e1);
        assert_eq!(s.len(), 64);
        assert!(
            s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        );
        assert_eq!(
            s,
            master().pseudonym_key(&acme, 1, &seed).subject(&e1),
            "stable"
        );
        assert_ne!(s, master().pseudonym_key(&acme, 1, &seed).subject(&e2));
        assert_ne!(
            s,
            master().pseudonym_key(&globex, 1, &seed).subject(&e1),
            "not linkable across tenants"
        );
        assert_ne!(
            s,
            master().pseudonym_key(&acme, 2, &seed).subject(&e1),
            "rotates with the key version"
        );
    }
}
