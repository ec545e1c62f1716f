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

    fn derive(&self, label: &str, ids: &[&str], version: u32) -> Zeroizing<[u8; KEY_LEN]> {
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
        let hk = Hkdf::<Sha256>::new(Some(HKDF_SALT), &self.0);
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
        ))
    }

    /// The key log records (and other data at rest) of a tenant are sealed with.
    pub fn at_rest_key(&self, tenant: &TenantId, version: u32) -> AtRestKey {
        AtRestKey(self.derive(AT_REST_KEY_LABEL, &[tenant.as_str()], version))
    }

    /// The key under which a tenant's employee ids become pseudonyms.
    pub fn pseudonym_key(&self, tenant: &TenantId, version: u32) -> PseudonymKey {
        PseudonymKey(self.derive(PSEUDONYM_KEY_LABEL, &[tenant.as_str()], version))
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

impl PseudonymKey {
    /// The lake's `subject` column: lowercase hex of HMAC-SHA256(key, employee id).
    pub fn subject(&self, employee: &EmployeeId) -> String {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(self.as_bytes())
            .expect("HMAC accepts any key length");
        mac.update(employee.as_str().as_bytes());
        hex::encode(mac.finalize().into_bytes())
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
        assert_ne!(
            m.at_rest_key(&t, 1).as_bytes(),
            m.pseudonym_key(&t, 1).as_bytes()
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
        let s = master().pseudonym_key(&acme, 1).subject(&e1);
        assert_eq!(s.len(), 64);
        assert!(
            s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        );
        assert_eq!(s, master().pseudonym_key(&acme, 1).subject(&e1), "stable");
        assert_ne!(s, master().pseudonym_key(&acme, 1).subject(&e2));
        assert_ne!(
            s,
            master().pseudonym_key(&globex, 1).subject(&e1),
            "not linkable across tenants"
        );
        assert_ne!(
            s,
            master().pseudonym_key(&acme, 2).subject(&e1),
            "rotates with the key version"
        );
    }
}
