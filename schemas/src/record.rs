//! Log records: what ingest appends and the processor consumes. One record
//! per batch and dataset, keyed `tenant/device` so one device's records stay
//! in order. The value is an Arrow IPC stream sealed with the tenant's
//! at-rest key, so broker disks never hold telemetry in clear. Layout:
//!
//! ```text
//! off  len  field
//!   0    4  magic "CNDL"
//!   4    1  format version = 1
//!   5    1  dataset tag (1 activity, 2 app_usage, 3 gps, 4 attendance)
//!   6    4  at-rest key version (u32 big-endian)
//!  10    1  tenant id length T, then T bytes
//!    ...24  nonce
//!    ...    XChaCha20-Poly1305(Arrow IPC stream) || tag; AAD = bytes 0..nonce end
//! ```
//!
//! The employee id, device id, batch id and receive time travel inside the
//! sealed payload, as metadata of the Arrow schema.

use std::collections::HashMap;
use std::io::Cursor;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::ipc::reader::StreamReader;
use arrow::ipc::writer::StreamWriter;

use crate::crypto::{self, NONCE_LEN, TAG_LEN};
use crate::datasets::Dataset;
use crate::envelope::BATCH_ID_LEN;
use crate::ids::{DeviceId, EmployeeId, TenantId};
use crate::keys::AtRestKey;

pub const RECORD_MAGIC: [u8; 4] = *b"CNDL";
pub const RECORD_FORMAT_VERSION: u8 = 1;

const META_EMPLOYEE: &str = "candor.employee_id";
const META_DEVICE: &str = "candor.device_id";
const META_BATCH: &str = "candor.batch_id";
const META_RECEIVED: &str = "candor.received_at_ms";

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

/// An opened log record.
#[derive(Debug, Clone)]
pub struct LogRecord {
    pub dataset: Dataset,
    pub tenant: TenantId,
    pub key_version: u32,
    pub meta: RecordMeta,
    pub events: RecordBatch,
}

/// The log key of a device's records: `tenant/device`.
pub fn log_key(tenant: &TenantId, device: &DeviceId) -> String {
    format!("{tenant}/{device}")
}

/// Seals one dataset's events of a batch into a log record value.
pub fn seal_record(
    tenant: &TenantId,
    key: &AtRestKey,
    key_version: u32,
    nonce: &[u8; NONCE_LEN],
    dataset: Dataset,
    meta: &RecordMeta,
    events: &RecordBatch,
) -> Vec<u8> {
    let metadata = HashMap::from([
        (META_EMPLOYEE.to_string(), meta.employee.to_string()),
        (META_DEVICE.to_string(), meta.device.to_string()),
        (META_BATCH.to_string(), hex::encode(meta.batch_id)),
        (META_RECEIVED.to_string(), meta.received_at_ms.to_string()),
    ]);
    let schema = Arc::new(events.schema().as_ref().clone().with_metadata(metadata));
    let mut ipc = Vec::with_capacity(events.get_array_memory_size() + 512);
    {
        let mut writer =
            StreamWriter::try_new(&mut ipc, &schema).expect("writing IPC to memory cannot fail");
        let batch = events
            .clone()
            .with_schema(schema.clone())
            .expect("same fields, only metadata added");
        writer
            .write(&batch)
            .expect("writing IPC to memory cannot fail");
        writer.finish().expect("writing IPC to memory cannot fail");
    }
    let mut out = Vec::with_capacity(11 + tenant.as_str().len() + NONCE_LEN + ipc.len() + TAG_LEN);
    out.extend_from_slice(&RECORD_MAGIC);
    out.push(RECORD_FORMAT_VERSION);
    out.push(dataset as u8);
    out.extend_from_slice(&key_version.to_be_bytes());
    out.push(u8::try_from(tenant.as_str().len()).expect("tenant ids are at most 63 bytes"));
    out.extend_from_slice(tenant.as_str().as_bytes());
    out.extend_from_slice(nonce);
    let sealed = crypto::seal(key.as_bytes(), nonce, &out, &ipc);
    out.extend_from_slice(&sealed);
    out
}

/// The clear part of a sealed record: enough to choose the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordHeader {
    pub dataset: Dataset,
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
    if bytes.len() < 11 || bytes[0..4] != RECORD_MAGIC {
        return Err(bad("bad magic or too short"));
    }
    if bytes[4] != RECORD_FORMAT_VERSION {
        return Err(bad("unknown format version"));
    }
    let dataset = Dataset::from_tag(bytes[5]).ok_or(RecordError::UnknownDataset(bytes[5]))?;
    let key_version = u32::from_be_bytes(bytes[6..10].try_into().expect("4 bytes"));
    let tenant_end = 11 + bytes[10] as usize;
    let nonce_end = tenant_end + NONCE_LEN;
    if bytes.len() < nonce_end + TAG_LEN {
        return Err(bad("record ends before its nonce and tag"));
    }
    let tenant = std::str::from_utf8(&bytes[11..tenant_end])
        .ok()
        .and_then(|t| TenantId::new(t).ok())
        .ok_or_else(|| bad("bad tenant id"))?;
    Ok((
        RecordHeader {
            dataset,
            key_version,
            tenant,
        },
        nonce_end,
    ))
}

/// Opens a record; `key_for` returns the tenant's at-rest key of a version,
/// or `None` if that key is gone (a crypto-shredded tenant).
pub fn open_record(
    bytes: &[u8],
    key_for: impl FnOnce(&TenantId, u32) -> Option<AtRestKey>,
) -> Result<LogRecord, RecordError> {
    let (
        RecordHeader {
            dataset,
            key_version,
            tenant,
        },
        nonce_end,
    ) = read_header_and_nonce(bytes)?;
    let nonce: [u8; NONCE_LEN] = bytes[nonce_end - NONCE_LEN..nonce_end]
        .try_into()
        .expect("24 bytes");
    let key = key_for(&tenant, key_version).ok_or(RecordError::Authentication)?;
    let ipc = crypto::open(
        key.as_bytes(),
        &nonce,
        &bytes[..nonce_end],
        &bytes[nonce_end..],
    )
    .map_err(|_| RecordError::Authentication)?;
    let (meta, events) = decode_ipc(dataset, &ipc)?;
    Ok(LogRecord {
        dataset,
        tenant,
        key_version,
        meta,
        events,
    })
}

fn decode_ipc(dataset: Dataset, ipc: &[u8]) -> Result<(RecordMeta, RecordBatch), RecordError> {
    let decode = |e: &dyn std::fmt::Display| RecordError::Decode(e.to_string());
    let mut reader = StreamReader::try_new(Cursor::new(ipc), None).map_err(|e| decode(&e))?;
    let schema = reader.schema();
    if schema.fields() != dataset.log_schema().fields() {
        return Err(decode(&format!(
            "fields differ from the {} log schema",
            dataset.name()
        )));
    }
    let md = schema.metadata();
    let get = |k: &str| {
        md.get(k)
            .ok_or_else(|| decode(&format!("missing metadata {k}")))
    };
    let meta = RecordMeta {
        employee: EmployeeId::new(get(META_EMPLOYEE)?.as_str()).map_err(|e| decode(&e))?,
        device: DeviceId::new(get(META_DEVICE)?.as_str()).map_err(|e| decode(&e))?,
        batch_id: hex::decode(get(META_BATCH)?)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| decode(&"bad batch id"))?,
        received_at_ms: get(META_RECEIVED)?.parse().map_err(|e| decode(&e))?,
    };
    let events = reader
        .next()
        .ok_or_else(|| decode(&"no record batch"))?
        .map_err(|e| decode(&e))?;
    if reader.next().is_some() {
        return Err(decode(&"more than one record batch"));
    }
    Ok((meta, events))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::Limits;
    use crate::columns::decode_json;
    use crate::envelope::EnvelopeHeader;
    use crate::intake::OpenedBatch;
    use crate::keys::MasterSecret;

    const NOW: i64 = 1_780_000_000_000;

    fn opened() -> OpenedBatch {
        let json = format!(
            r#"{{"v":1,"sent_at_ms":{NOW},"activity":[{{"start_ms":{NOW},"active_s":30,"idle_s":30}}]}}"#
        );
        OpenedBatch {
            header: EnvelopeHeader {
                key_version: 1,
                batch_id: [5; 16],
                tenant: TenantId::new("acme").unwrap(),
                employee: EmployeeId::new("e1").unwrap(),
                device: DeviceId::new("d1").unwrap(),
            },
            batch: decode_json(json.as_bytes(), &Limits::default(), NOW).unwrap(),
            received_at_ms: NOW,
        }
    }

    #[test]
    fn records_round_trip_and_bind_the_tenant() {
        let master = MasterSecret::from_bytes(&[3; 32]).unwrap();
        let o = opened();
        let tenant = o.header.tenant.clone();
        let meta = RecordMeta {
            employee: o.header.employee.clone(),
            device: o.header.device.clone(),
            batch_id: o.header.batch_id,
            received_at_ms: o.received_at_ms,
        };
        let (dataset, events) = o.batch.datasets.into_iter().next().unwrap();
        let seed = crate::keys::TenantSeed::from_bytes([5; 32]);
        let key = master.at_rest_key(&tenant, 1, &seed);
        let sealed = seal_record(&tenant, &key, 1, &[8; 24], dataset, &meta, &events);
        let rec = open_record(&sealed, |t, v| Some(master.at_rest_key(t, v, &seed))).unwrap();
        assert_eq!(rec.meta, meta);
        assert_eq!(rec.events.num_rows(), 1);
        assert_eq!(rec.dataset, Dataset::Activity);
        // No employee id in clear on the broker's disk.
        assert!(!sealed.windows(2).any(|w| w == b"e1"));
        // Another tenant's key (or a destroyed key) opens nothing.
        let other = TenantId::new("globex").unwrap();
        assert_eq!(
            open_record(&sealed, |_, v| Some(master.at_rest_key(&other, v, &seed))).unwrap_err(),
            RecordError::Authentication
        );
        assert_eq!(
            open_record(&sealed, |_, _| None).unwrap_err(),
            RecordError::Authentication
        );
    }
}
