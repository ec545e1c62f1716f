//! Opening a chunk's records on every core.
//!
//! Opening a record (XChaCha20-Poly1305, then Arrow IPC decoding) is most
//! of what a record costs the processor, and needs nothing but the record
//! and its tenant's keys, so a chunk's records are opened in shares on
//! scoped threads, up to the threads given, and handed back in log order:
//! everything that depends on order (batch-id dedup, routes, aggregation)
//! stays on one thread. The calling thread blocks meanwhile (a chunk of
//! 10,000 records takes tens of milliseconds).

use std::sync::Arc;

use candor_control::keyring::TenantKeys;
use candor_log::Delivered;
use candor_schemas::TenantId;
use candor_schemas::record::{LogRecord, RecordError, open_record};

/// Fewest records worth a thread of their own.
const MIN_SHARE: usize = 256;

/// Opens every record, in order, on at most `max_threads` threads;
/// `keys_of` gives a tenant's keys (`None`: unknown tenant or destroyed
/// keys, and its records do not open).
pub fn open_all(
    records: &[Delivered],
    keys_of: impl Fn(&TenantId) -> Option<Arc<TenantKeys>> + Sync,
    max_threads: usize,
) -> Vec<Result<LogRecord, RecordError>> {
    let open = |d: &Delivered| {
        open_record(&d.value, |tenant, version| {
            keys_of(tenant)?.at_rest(version).cloned()
        })
    };
    let threads = max_threads.min(records.len().div_ceil(MIN_SHARE)).max(1);
    if threads == 1 {
        return records.iter().map(open).collect();
    }
    let share = records.len().div_ceil(threads);
    let open = &open;
    std::thread::scope(|scope| {
        let others: Vec<_> = records
            .chunks(share)
            .skip(1)
            .map(|chunk| scope.spawn(move || chunk.iter().map(open).collect::<Vec<_>>()))
            .collect();
        let mut opened: Vec<_> = records[..share].iter().map(open).collect();
        for other in others {
            opened.extend(other.join().expect("opening a record does not panic"));
        }
        opened
    })
}

#[cfg(test)]
mod tests {
    use candor_control::keyring::KeyringDoc;
    use candor_schemas::record::{RecordFormat, RecordMeta, seal_batch};
    use candor_schemas::{DeviceId, EmployeeId, Limits, MasterSecret, decode_json};

    use super::*;

    /// Enough records for every core, from two tenants of which one has
    /// no keys, in both layouts: each comes back where it was, opened or
    /// refused.
    #[test]
    fn records_come_back_in_log_order_whatever_thread_opened_them() {
        let master = MasterSecret::from_bytes(&[9; 32]).unwrap();
        let (acme, gone) = (
            TenantId::new("acme").unwrap(),
            TenantId::new("gone").unwrap(),
        );
        let keys = |t: &TenantId| Arc::new(KeyringDoc::new(&master, t, 0).keys(&master).unwrap());
        let (acme_keys, gone_keys) = (keys(&acme), keys(&gone));
        let records: Vec<Delivered> = (0..3 * MIN_SHARE as i64)
            .map(|i| {
                let json = format!(
                    r#"{{"v":1,"sent_at_ms":0,"activity":[{{"start_ms":{},"active_s":{},"idle_s":0}}]}}"#,
                    1_780_000_000_000 - i * 60_000,
                    1 + i % 60
                );
                let batch = decode_json(json.as_bytes(), &Limits::default(), 1_780_000_000_000)
                    .unwrap();
                let (tenant, keys) = if i % 7 == 0 {
                    (&gone, &gone_keys)
                } else {
                    (&acme, &acme_keys)
                };
                let meta = RecordMeta {
                    employee: EmployeeId::new(format!("e{i}")).unwrap(),
                    device: DeviceId::new("d1").unwrap(),
                    batch_id: [1; 16],
                    received_at_ms: i,
                };
                let (version, key) = keys.current_at_rest();
                let format = if i % 2 == 0 { RecordFormat::V1 } else { RecordFormat::V2 };
                Delivered {
                    partition: 0,
                    offset: i,
                    key: Vec::new(),
                    // Both layouts, as a log holds them across an upgrade.
                    value: seal_batch(format, tenant, key, version, &meta, &batch.datasets, rand::random)
                        .remove(0),
                }
            })
            .collect();
        let opened = open_all(&records, |t| (t == &acme).then(|| acme_keys.clone()), 3);
        assert_eq!(opened.len(), records.len());
        for (i, opened) in opened.iter().enumerate() {
            match opened {
                Ok(record) => {
                    assert_ne!(i % 7, 0, "record {i} of the tenant without keys opened");
                    assert_eq!(record.meta.received_at_ms, i as i64);
                }
                Err(e) => {
                    assert_eq!(i % 7, 0, "record {i}: {e}");
                    assert_eq!(*e, RecordError::Authentication);
                }
            }
        }
    }
}
