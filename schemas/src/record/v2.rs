//! Version 2 payloads: a fixed binary header, then one schema-less Arrow
//! IPC record-batch message per dataset, decoded against the dataset's log
//! schema (layout in the module documentation of `record`).

use std::collections::HashMap;

use arrow::array::RecordBatch;
use arrow::buffer::Buffer;
use arrow::ipc::reader::read_record_batch;
use arrow::ipc::writer::{DictionaryTracker, IpcDataGenerator, IpcWriteContext, IpcWriteOptions};
use arrow::ipc::{MetadataVersion, root_as_message};

use super::{RecordError, RecordMeta, decode_error};
use crate::datasets::Dataset;
use crate::envelope::BATCH_ID_LEN;
use crate::ids::{DeviceId, EmployeeId};

/// Arrow buffers start at multiples of this within the payload.
const BODY_ALIGN: usize = 8;

pub(super) fn encode(meta: &RecordMeta, datasets: &[(Dataset, RecordBatch)]) -> Vec<u8> {
    let (employee, device) = (meta.employee.as_str(), meta.device.as_str());
    let body_guess: usize = datasets
        .iter()
        .map(|(_, e)| e.get_array_memory_size() + 256)
        .sum();
    let mut out = Vec::with_capacity(27 + employee.len() + device.len() + body_guess);
    out.extend_from_slice(&meta.received_at_ms.to_be_bytes());
    out.extend_from_slice(&meta.batch_id);
    for id in [employee, device] {
        out.push(u8::try_from(id.len()).expect("employee and device ids are at most 64 bytes"));
        out.extend_from_slice(id.as_bytes());
    }
    out.push(u8::try_from(datasets.len()).expect("at most one section per dataset"));
    let generator = IpcDataGenerator::default();
    // Buffers padded to 8 bytes, not the default 64: a 5-event section
    // would otherwise be mostly padding.
    let options = IpcWriteOptions::try_new(BODY_ALIGN, false, MetadataVersion::V5)
        .expect("8 is a valid IPC alignment");
    let mut sorted: Vec<&(Dataset, RecordBatch)> = datasets.iter().collect();
    sorted.sort_by_key(|(dataset, _)| *dataset as u8);
    for (dataset, events) in sorted {
        // No dictionary-encoded field exists in a log schema, so the
        // tracker never holds anything.
        let (dictionaries, message) = generator
            .encode(
                events,
                &mut DictionaryTracker::new(false),
                &options,
                &mut IpcWriteContext::default(),
            )
            .expect("encoding IPC to memory cannot fail");
        debug_assert!(dictionaries.is_empty(), "log schemas have no dictionaries");
        let header_len = u32::try_from(message.ipc_message.len()).expect("a message under 4 GiB");
        let body_len = u32::try_from(message.arrow_data.len()).expect("a body under 4 GiB");
        out.push(*dataset as u8);
        out.extend_from_slice(&header_len.to_be_bytes());
        out.extend_from_slice(&body_len.to_be_bytes());
        out.extend_from_slice(&message.ipc_message);
        out.resize(out.len().next_multiple_of(BODY_ALIGN), 0);
        out.extend_from_slice(&message.arrow_data);
    }
    out
}

pub(super) fn decode(
    payload: Vec<u8>,
) -> Result<(RecordMeta, Vec<(Dataset, RecordBatch)>), RecordError> {
    // The Arrow arrays of the decoded batches share this allocation.
    let payload = Buffer::from_vec(payload);
    let mut r = Reader {
        bytes: payload.as_slice(),
        at: 0,
    };
    let received_at_ms = i64::from_be_bytes(r.array()?);
    let batch_id: [u8; BATCH_ID_LEN] = r.array()?;
    let employee = EmployeeId::new(r.short_str()?).map_err(|e| decode_error(&e))?;
    let device = DeviceId::new(r.short_str()?).map_err(|e| decode_error(&e))?;
    let count = r.u8()?;
    if count == 0 || usize::from(count) > Dataset::ALL.len() {
        return Err(malformed(&format!("{count} dataset sections")));
    }
    let mut datasets = Vec::with_capacity(usize::from(count));
    for _ in 0..count {
        let tag = r.u8()?;
        let dataset = Dataset::from_tag(tag).ok_or(RecordError::UnknownDataset(tag))?;
        if datasets
            .last()
            .is_some_and(|(previous, _): &(Dataset, _)| *previous as u8 >= tag)
        {
            return Err(malformed("dataset sections out of order or repeated"));
        }
        let header_len = r.u32()? as usize;
        let body_len = r.u32()? as usize;
        let header = r.take(header_len)?;
        r.zeros_to(BODY_ALIGN)?;
        let body_at = r.at;
        r.take(body_len)?;
        let message = root_as_message(header).map_err(|e| decode_error(&e))?;
        let batch = message
            .header_as_record_batch()
            .ok_or_else(|| decode_error(&"a section is not a record batch message"))?;
        let events = read_record_batch(
            &payload.slice_with_length(body_at, body_len),
            batch,
            dataset.log_schema(),
            &HashMap::new(),
            None,
            &message.version(),
        )
        .map_err(|e| decode_error(&e))?;
        datasets.push((dataset, events));
    }
    if r.at != r.bytes.len() {
        return Err(malformed("bytes after the last dataset section"));
    }
    let meta = RecordMeta {
        employee,
        device,
        batch_id,
        received_at_ms,
    };
    Ok((meta, datasets))
}

fn malformed(what: &str) -> RecordError {
    RecordError::Malformed(what.to_string())
}

/// Reads the payload front to back; every length is checked against what
/// is left before anything is sliced.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], RecordError> {
        if self.bytes.len() - self.at < n {
            return Err(malformed("payload ends inside a field"));
        }
        let taken = &self.bytes[self.at..self.at + n];
        self.at += n;
        Ok(taken)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], RecordError> {
        Ok(self.take(N)?.try_into().expect("N bytes taken"))
    }

    fn u8(&mut self) -> Result<u8, RecordError> {
        Ok(self.array::<1>()?[0])
    }

    fn u32(&mut self) -> Result<u32, RecordError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    fn short_str(&mut self) -> Result<&'a str, RecordError> {
        let len = self.u8()?;
        std::str::from_utf8(self.take(usize::from(len))?).map_err(|e| decode_error(&e))
    }

    /// Padding: zero bytes up to the next multiple of `align`.
    fn zeros_to(&mut self, align: usize) -> Result<(), RecordError> {
        let padding = self.at.next_multiple_of(align) - self.at;
        if self.take(padding)?.iter().any(|&b| b != 0) {
            return Err(malformed("non-zero padding"));
        }
        Ok(())
    }
}
