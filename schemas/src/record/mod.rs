//! Log records: what ingest appends and the processor consumes, keyed
//! `tenant/device` so one device's records stay in order. The value is
//! sealed with the tenant's at-rest key, so broker disks never hold
//! telemetry in clear; only what chooses the key is in clear.
//!
//! Two layouts exist. The processor reads both, because a log may hold
//! records of the previous release when it is upgraded; ingest writes the
//! one its `ingest.log_record_format` setting names (version 2 unless
//! processors of the previous release still read the log).
//!
//! **Version 2** (`v2.rs`): one record per batch, carrying all its datasets.
//!
//! ```text
//! off  len  field (clear)
//!   0    4  magic "CNDL"
//!   4    1  format version = 2
//!   5    4  at-rest key version (u32 big-endian)
//!   9    1  tenant id length T, then T bytes
//!    ...24  nonce
//!    ...    XChaCha20-Poly1305(payload) || tag; AAD = every byte before it
//!
//! payload (sealed)
//!   0    8  receive time, ms since the epoch (i64 big-endian)
//!   8   16  batch id
//!  24    1  employee id length E, then E bytes (UTF-8)
//!    ... 1  device id length D, then D bytes (UTF-8)
//!    ... 1  dataset count N (1..=4), then N sections in ascending tag order:
//!             1  dataset tag (1 activity, 2 app_usage, 3 gps, 4 attendance)
//!             4  message length M (u32 big-endian)
//!             4  body length B (u32 big-endian)
//!             M  Arrow IPC `Message` flatbuffer holding a `RecordBatch`
//!                header (no schema message: both sides know the dataset's
//!                log schema, `Dataset::log_schema`)
//!                zero bytes up to the next multiple of 8 of the payload
//!             B  the message body (Arrow buffers, 8-byte aligned)
//!  nothing after the last section
//! ```
//!
//! **Version 1** (`v1.rs`): one record per batch and dataset, an Arrow IPC
//! stream with its schema; who and when are schema metadata.
//!
//! ```text
//! off  len  field (clear)
//!   0    4  magic "CNDL"
//!   4    1  format version = 1
//!   5    1  dataset tag
//!   6    4  at-rest key version (u32 big-endian)
//!  10    1  tenant id length T, then T bytes
//!    ...24  nonce
//!    ...    XChaCha20-Poly1305(Arrow IPC stream) || tag; AAD = every byte before it
//! ```
//!
//! An office worker's 5-minute batch (activity and app usage, 5 events
//! each) is 2 records and 2,558 bytes in version 1, where schemas and
//! metadata are most of it, and one record of 934 bytes in version 2 (the
//! tests print these): one seal, one open and no schema to parse per batch.

mod v1;
mod v2;

use arrow::array::RecordBatch;

use crate::crypto::{self, NONCE_LEN, TAG_LEN};
use crate::datasets::Dataset;
use crate::envelope::BATCH_ID_LEN;
use crate::ids::{DeviceId, EmployeeId, TenantId};
use crate::keys::AtRestKey;

pub const RECORD_MAGIC: [u8; 4] = *b"CNDL";

/// A layout of log records (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RecordFormat {
    /// One record per batch and dataset, a whole Arrow IPC stream.
    V1 = 1,
    /// One record per batch, a binary header and schema-less messages.
    V2 = 2,
}

impl RecordFormat {
    /// The layout ingest writes unless configured otherwise.
    pub const CURRENT: Self = Self::V2;

    /// The layout of a format-version byte, if it is one.
    pub fn from_version(version: u8) -> Option<Self> {
        match version {
            1 => Some(Self::V1),
            2 => Some(Self::V2),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("malformed log record: {0}")]
    Malformed(String),
    #[error("log record names unknown dataset tag {0}")]
    UnknownDataset(u8),
    #[error("log record failed authentication (wrong or destroyed tenant key, or altered bytes)")]
    Authentication,
    #[error("log record payload is not valid Arrow IPC of its dataset: {0}")]
    Decode(String),
}

/// Who and when, for the events of one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordMeta {
    pub employee: EmployeeId,
    pub device: DeviceId,
    pub batch_id: [u8; BATCH_ID_LEN],
    pub received_at_ms: i64,
}

/// An opened log record: one batch's events of one dataset (version 1) or
/// of each of its datasets (version 2), in ascending dataset tag order.
#[derive(Debug, Clone)]
pub struct LogRecord {
    pub tenant: TenantId,
    pub key_version: u32,
    pub meta: RecordMeta,
    pub datasets: Vec<(Dataset, RecordBatch)>,
}

impl LogRecord {
    /// Events of every dataset of the record.
    pub fn event_count(&self) -> usize {
        self.datasets.iter().map(|(_, e)| e.num_rows()).sum()
    }
}

/// The log key of a device's records: `tenant/device`.
pub fn log_key(tenant: &TenantId, device: &DeviceId) -> String {
    format!("{tenant}/{device}")
}

/// Seals the events of one batch (its datasets, as decoding returns them,
/// in the dataset schemas' field order) into log record values: one in
/// version 2, one per dataset in version 1. `nonce` is asked for one fresh
/// nonce per value. A batch without datasets gives no record.
pub fn seal_batch(
    format: RecordFormat,
    tenant: &TenantId,
    key: &AtRestKey,
    key_version: u32,
    meta: &RecordMeta,
    datasets: &[(Dataset, RecordBatch)],
    mut nonce: impl FnMut() -> [u8; NONCE_LEN],
) -> Vec<Vec<u8>> {
    if datasets.is_empty() {
        return Vec::new();
    }
    let seal = |header: Vec<u8>, payload: &[u8], nonce: [u8; NONCE_LEN]| {
        let mut out = header;
        out.extend_from_slice(&nonce);
        let sealed = crypto::seal(key.as_bytes(), &nonce, &out, payload);
        out.extend_from_slice(&sealed);
        out
    };
    match format {
        RecordFormat::V2 => {
            let payload = v2::encode(meta, datasets);
            vec![seal(
                clear_header(format, None, key_version, tenant),
                &payload,
                nonce(),
            )]
        }
        RecordFormat::V1 => datasets
            .iter()
            .map(|(dataset, events)| {
                let payload = v1::encode(meta, events);
                seal(
                    clear_header(format, Some(*dataset), key_version, tenant),
                    &payload,
                    nonce(),
                )
            })
            .collect(),
    }
}

/// Magic, version, (version 1: dataset tag), key version and tenant.
fn clear_header(
    format: RecordFormat,
    dataset: Option<Dataset>,
    key_version: u32,
    tenant: &TenantId,
) -> Vec<u8> {
    let tenant = tenant.as_str().as_bytes();
    let mut out = Vec::with_capacity(11 + tenant.len() + NONCE_LEN);
    out.extend_from_slice(&RECORD_MAGIC);
    out.push(format as u8);
    if let Some(dataset) = dataset {
        out.push(dataset as u8);
    }
    out.extend_from_slice(&key_version.to_be_bytes());
    out.push(u8::try_from(tenant.len()).expect("tenant ids are at most 63 bytes"));
    out.extend_from_slice(tenant);
    out
}

/// The clear part of a sealed record: enough to choose the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordHeader {
    pub format: RecordFormat,
    /// The one dataset of a version 1 record; version 2 names its datasets
    /// inside the sealed payload.
    pub dataset: Option<Dataset>,
    pub key_version: u32,
    pub tenant: TenantId,
}

/// Reads a record's clear header, to choose the key that opens it.
pub fn read_header(bytes: &[u8]) -> Result<RecordHeader, RecordError> {
    read_header_and_nonce(bytes).map(|(header, _)| header)
}

/// The header and where the nonce ends (the AAD is everything before).
fn read_header_and_nonce(bytes: &[u8]) -> Result<(RecordHeader, usize), RecordError> {
    let bad = |what: &str| RecordError::Malformed(what.to_string());
    if bytes.len() < 5 || bytes[0..4] != RECORD_MAGIC {
        return Err(bad("bad magic or too short"));
    }
    let format = RecordFormat::from_version(bytes[4]).ok_or_else(|| {
        bad(&format!(
            "unknown format version {} (this release reads 1 and 2)",
            bytes[4]
        ))
    })?;
    let (dataset, key_at) = match format {
        RecordFormat::V1 => {
            let tag = *bytes.get(5).ok_or_else(|| bad("too short"))?;
            let dataset = Dataset::from_tag(tag).ok_or(RecordError::UnknownDataset(tag))?;
            (Some(dataset), 6)
        }
        RecordFormat::V2 => (None, 5),
    };
    let tenant_at = key_at + 5;
    if bytes.len() < tenant_at {
        return Err(bad("record ends in its header"));
    }
    let key_version = u32::from_be_bytes(bytes[key_at..key_at + 4].try_into().expect("4 bytes"));
    let tenant_end = tenant_at + bytes[tenant_at - 1] as usize;
    let nonce_end = tenant_end + NONCE_LEN;
    if bytes.len() < nonce_end + TAG_LEN {
        return Err(bad("record ends before its nonce and tag"));
    }
    let tenant = std::str::from_utf8(&bytes[tenant_at..tenant_end])
        .ok()
        .and_then(|t| TenantId::new(t).ok())
        .ok_or_else(|| bad("bad tenant id"))?;
    Ok((
        RecordHeader {
            format,
            dataset,
            key_version,
            tenant,
        },
        nonce_end,
    ))
}

/// A sealed record cut into its parts, not yet opened.
#[derive(Debug)]
pub struct SealedRecord<'a> {
    pub header: RecordHeader,
    /// The associated data: every byte before the ciphertext.
    pub aad: &'a [u8],
    pub nonce: [u8; NONCE_LEN],
    /// Ciphertext and tag.
    pub sealed: &'a [u8],
}

impl<'a> SealedRecord<'a> {
    pub fn parse(bytes: &'a [u8]) -> Result<Self, RecordError> {
        let (header, nonce_end) = read_header_and_nonce(bytes)?;
        Ok(Self {
            header,
            aad: &bytes[..nonce_end],
            nonce: bytes[nonce_end - NONCE_LEN..nonce_end]
                .try_into()
                .expect("24 bytes"),
            sealed: &bytes[nonce_end..],
        })
    }

    /// The payload in clear, if `key` opens it.
    pub fn decrypt(&self, key: &AtRestKey) -> Result<Vec<u8>, RecordError> {
        crypto::open(key.as_bytes(), &self.nonce, self.aad, self.sealed)
            .map_err(|_| RecordError::Authentication)
    }
}

/// Opens a record of either version; `key_for` returns the tenant's at-rest
/// key of a version, or `None` if that key is gone (a crypto-shredded
/// tenant).
pub fn open_record(
    bytes: &[u8],
    key_for: impl FnOnce(&TenantId, u32) -> Option<AtRestKey>,
) -> Result<LogRecord, RecordError> {
    let record = SealedRecord::parse(bytes)?;
    let header = &record.header;
    let key = key_for(&header.tenant, header.key_version).ok_or(RecordError::Authentication)?;
    let payload = record.decrypt(&key)?;
    let (meta, datasets) = match header.dataset {
        Some(dataset) => {
            let (meta, events) = v1::decode(dataset, &payload)?;
            (meta, vec![(dataset, events)])
        }
        None => v2::decode(payload)?,
    };
    Ok(LogRecord {
        tenant: record.header.tenant,
        key_version: record.header.key_version,
        meta,
        datasets,
    })
}

fn decode_error(e: &dyn std::fmt::Display) -> RecordError {
    RecordError::Decode(e.to_string())
}

#[cfg(test)]
mod tests;
