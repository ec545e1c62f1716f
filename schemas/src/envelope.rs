//! The sealed envelope an agent POSTs: a clear header, authenticated as
//! associated data, followed by the XChaCha20-Poly1305 ciphertext of a zstd
//! frame of the batch JSON. Layout (all integers big-endian):
//!
//! ```text
//! off  len  field
//!   0    4  magic "CNDB"
//!   4    1  format version = 1
//!   5    1  compression = 1 (zstd)
//!   6    4  key version (u32, >= 1)
//!  10   16  batch id (random, chosen by the agent; the idempotency key)
//!  26    1  tenant id length T, then T bytes of tenant id
//!    ...    employee id length E (u8), then E bytes
//!    ...    device id length D (u8), then D bytes
//!    ...24  nonce (random per batch)
//!    ...    ciphertext || 16-byte tag
//! ```
//!
//! Associated data = every byte from offset 0 to the end of the nonce.

use crate::crypto::{self, NONCE_LEN, TAG_LEN};
use crate::ids::{DeviceId, EmployeeId, TenantId};
use crate::keys::DeviceKey;
use crate::reason::{RejectReason, Rejection};

pub const MAGIC: [u8; 4] = *b"CNDB";
pub const FORMAT_VERSION: u8 = 1;
pub const COMPRESSION_ZSTD: u8 = 1;
pub const BATCH_ID_LEN: usize = 16;
/// Bytes before the tenant id length.
const FIXED_PREFIX_LEN: usize = 4 + 1 + 1 + 4 + BATCH_ID_LEN;

/// What the header says, in clear, about who sealed the batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvelopeHeader {
    pub key_version: u32,
    pub batch_id: [u8; BATCH_ID_LEN],
    pub tenant: TenantId,
    pub employee: EmployeeId,
    pub device: DeviceId,
}

impl EnvelopeHeader {
    /// The header bytes up to (not including) the nonce.
    fn encode_prefix(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&MAGIC);
        out.push(FORMAT_VERSION);
        out.push(COMPRESSION_ZSTD);
        out.extend_from_slice(&self.key_version.to_be_bytes());
        out.extend_from_slice(&self.batch_id);
        for id in [
            self.tenant.as_str(),
            self.employee.as_str(),
            self.device.as_str(),
        ] {
            out.push(u8::try_from(id.len()).expect("ids are at most 64 bytes"));
            out.extend_from_slice(id.as_bytes());
        }
    }

    pub fn batch_id_hex(&self) -> String {
        hex::encode(self.batch_id)
    }
}

/// Seals a zstd frame into an envelope. Agents do exactly this; Rust agents
/// and tests use this function, others follow WIRE.md.
pub fn seal(
    header: &EnvelopeHeader,
    key: &DeviceKey,
    nonce: &[u8; NONCE_LEN],
    zstd_frame: &[u8],
) -> Vec<u8> {
    let mut out =
        Vec::with_capacity(FIXED_PREFIX_LEN + 3 + 192 + NONCE_LEN + zstd_frame.len() + TAG_LEN);
    header.encode_prefix(&mut out);
    out.extend_from_slice(nonce);
    let sealed = crypto::seal(key.as_bytes(), nonce, &out, zstd_frame);
    out.extend_from_slice(&sealed);
    out
}

/// Compresses batch JSON with zstd and seals it: what an agent does.
pub fn seal_json(
    header: &EnvelopeHeader,
    key: &DeviceKey,
    nonce: &[u8; NONCE_LEN],
    json: &[u8],
) -> Vec<u8> {
    let frame = zstd::bulk::compress(json, 3).expect("compressing to memory cannot fail");
    seal(header, key, nonce, &frame)
}

/// An envelope whose header parsed; its ciphertext is not yet authenticated.
#[derive(Debug)]
pub struct ParsedEnvelope<'a> {
    pub header: EnvelopeHeader,
    aad: &'a [u8],
    nonce: [u8; NONCE_LEN],
    sealed: &'a [u8],
}

fn malformed(detail: impl Into<String>) -> Rejection {
    Rejection::new(RejectReason::MalformedEnvelope, detail)
}

/// Reads an envelope's header. Nothing it returns is trusted until `open`.
pub fn parse(bytes: &[u8]) -> Result<ParsedEnvelope<'_>, Rejection> {
    if bytes.len() < FIXED_PREFIX_LEN {
        return Err(malformed("envelope shorter than its fixed header"));
    }
    if bytes[0..4] != MAGIC {
        return Err(malformed("bad magic; expected \"CNDB\""));
    }
    if bytes[4] != FORMAT_VERSION {
        return Err(Rejection::new(
            RejectReason::UnsupportedVersion,
            format!(
                "format version {} (this node speaks {FORMAT_VERSION})",
                bytes[4]
            ),
        ));
    }
    if bytes[5] != COMPRESSION_ZSTD {
        return Err(Rejection::new(
            RejectReason::UnsupportedEncoding,
            format!("compression {} (only 1 = zstd)", bytes[5]),
        ));
    }
    let key_version = u32::from_be_bytes(bytes[6..10].try_into().expect("4 bytes"));
    if key_version == 0 {
        return Err(Rejection::new(
            RejectReason::UnsupportedEncoding,
            "key version 0 is reserved",
        ));
    }
    let batch_id: [u8; BATCH_ID_LEN] = bytes[10..26].try_into().expect("16 bytes");
    let mut pos = FIXED_PREFIX_LEN;
    let mut next_id = |what: &str| -> Result<&str, Rejection> {
        let len = *bytes
            .get(pos)
            .ok_or_else(|| malformed(format!("header ends before the {what} id")))?
            as usize;
        let raw = bytes
            .get(pos + 1..pos + 1 + len)
            .ok_or_else(|| malformed(format!("header ends inside the {what} id")))?;
        pos += 1 + len;
        std::str::from_utf8(raw).map_err(|_| malformed(format!("{what} id is not ASCII")))
    };
    let tenant = TenantId::new(next_id("tenant")?).map_err(|e| malformed(e.to_string()))?;
    let employee = EmployeeId::new(next_id("employee")?).map_err(|e| malformed(e.to_string()))?;
    let device = DeviceId::new(next_id("device")?).map_err(|e| malformed(e.to_string()))?;
    let nonce_end = pos + NONCE_LEN;
    if bytes.len() < nonce_end + TAG_LEN {
        return Err(malformed("envelope ends before its nonce and tag"));
    }
    Ok(ParsedEnvelope {
        header: EnvelopeHeader {
            key_version,
            batch_id,
            tenant,
            employee,
            device,
        },
        aad: &bytes[..nonce_end],
        nonce: bytes[pos..nonce_end].try_into().expect("24 bytes"),
        sealed: &bytes[nonce_end..],
    })
}

impl ParsedEnvelope<'_> {
    /// Authenticates header and ciphertext and returns the zstd frame.
    pub fn open(&self, key: &DeviceKey) -> Result<Vec<u8>, Rejection> {
        crypto::open(key.as_bytes(), &self.nonce, self.aad, self.sealed).map_err(|_| {
            Rejection::new(
                RejectReason::BadTag,
                "authentication failed: wrong key, revoked key version, or altered bytes",
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::MasterSecret;
    use proptest::prelude::*;

    fn header() -> EnvelopeHeader {
        EnvelopeHeader {
            key_version: 3,
            batch_id: [9; 16],
            tenant: TenantId::new("acme").unwrap(),
            employee: EmployeeId::new("e-17").unwrap(),
            device: DeviceId::new("laptop-1").unwrap(),
        }
    }

    fn key(h: &EnvelopeHeader) -> DeviceKey {
        MasterSecret::from_bytes(&[42; 32]).unwrap().device_key(
            &h.tenant,
            &h.employee,
            &h.device,
            h.key_version,
        )
    }

    proptest! {
        #[test]
        fn open_of_seal_is_identity(payload in proptest::collection::vec(any::<u8>(), 0..2048),
                                    nonce in any::<[u8; 24]>()) {
            let h = header();
            let sealed = seal(&h, &key(&h), &nonce, &payload);
            let parsed = parse(&sealed).unwrap();
            prop_assert_eq!(&parsed.header, &h);
            prop_assert_eq!(parsed.open(&key(&h)).unwrap(), payload);
        }

        #[test]
        fn any_flipped_bit_is_rejected(payload in proptest::collection::vec(any::<u8>(), 1..512),
                                       nonce in any::<[u8; 24]>(),
                                       bit in any::<proptest::sample::Index>()) {
            let h = header();
            let mut sealed = seal(&h, &key(&h), &nonce, &payload);
            let bit = bit.index(sealed.len() * 8);
            sealed[bit / 8] ^= 1 << (bit % 8);
            // A flip in the header either breaks parsing or changes the ids,
            // version or nonce the key and tag depend on; a flip anywhere
            // else breaks the tag. Either way nothing opens.
            let opened = parse(&sealed).and_then(|p| {
                let k = MasterSecret::from_bytes(&[42; 32]).unwrap().device_key(
                    &p.header.tenant, &p.header.employee, &p.header.device, p.header.key_version);
                p.open(&k)
            });
            prop_assert!(opened.is_err());
        }
    }

    #[test]
    fn truncation_is_malformed_or_unauthentic() {
        let h = header();
        let sealed = seal(&h, &key(&h), &[1; 24], b"hello");
        for len in 0..sealed.len() {
            let r = parse(&sealed[..len]).and_then(|p| p.open(&key(&h)));
            assert!(r.is_err(), "truncated to {len} still opened");
        }
    }
}
