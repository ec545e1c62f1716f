//! Version 1 payloads: an Arrow IPC stream (schema, then one record
//! batch) whose schema metadata says who and when.

use std::collections::HashMap;
use std::io::Cursor;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::ipc::reader::StreamReader;
use arrow::ipc::writer::StreamWriter;

use super::{RecordError, RecordMeta, decode_error};
use crate::datasets::Dataset;
use crate::ids::{DeviceId, EmployeeId};

const META_EMPLOYEE: &str = "candor.employee_id";
const META_DEVICE: &str = "candor.device_id";
const META_BATCH: &str = "candor.batch_id";
const META_RECEIVED: &str = "candor.received_at_ms";

pub(super) fn encode(meta: &RecordMeta, events: &RecordBatch) -> Vec<u8> {
    let metadata = HashMap::from([
        (META_EMPLOYEE.to_string(), meta.employee.to_string()),
        (META_DEVICE.to_string(), meta.device.to_string()),
        (META_BATCH.to_string(), hex::encode(meta.batch_id)),
        (META_RECEIVED.to_string(), meta.received_at_ms.to_string()),
    ]);
    let schema = Arc::new(events.schema().as_ref().clone().with_metadata(metadata));
    let mut ipc = Vec::with_capacity(events.get_array_memory_size() + 512);
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
    drop(writer);
    ipc
}

pub(super) fn decode(
    dataset: Dataset,
    ipc: &[u8],
) -> Result<(RecordMeta, RecordBatch), RecordError> {
    let mut reader = StreamReader::try_new(Cursor::new(ipc), None).map_err(|e| decode_error(&e))?;
    let schema = reader.schema();
    if schema.fields() != dataset.log_schema().fields() {
        return Err(decode_error(&format!(
            "fields differ from the {} log schema",
            dataset.name()
        )));
    }
    let md = schema.metadata();
    let get = |k: &str| {
        md.get(k)
            .ok_or_else(|| decode_error(&format!("missing metadata {k}")))
    };
    let meta = RecordMeta {
        employee: EmployeeId::new(get(META_EMPLOYEE)?.as_str()).map_err(|e| decode_error(&e))?,
        device: DeviceId::new(get(META_DEVICE)?.as_str()).map_err(|e| decode_error(&e))?,
        batch_id: hex::decode(get(META_BATCH)?)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| decode_error(&"bad batch id"))?,
        received_at_ms: get(META_RECEIVED)?.parse().map_err(|e| decode_error(&e))?,
    };
    let events = reader
        .next()
        .ok_or_else(|| decode_error(&"no record batch"))?
        .map_err(|e| decode_error(&e))?;
    if reader.next().is_some() {
        return Err(decode_error(&"more than one record batch"));
    }
    Ok((meta, events))
}
