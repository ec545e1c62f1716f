//! The CPU part of a flush: opening a partition chunk's records, dropping
//! repeated batches, aggregating and encoding the rows as Parquet.
//!
//! It needs nothing from the log or the lake (what it reads was fetched
//! before: the tenants' views, the partition's batch ids and routes), so
//! the chunks of one poll are worked on in parallel, one scoped thread per
//! core taking chunks in turn. Within a chunk everything that depends on
//! order (dedup, routes, aggregation) stays on one thread; a poll that
//! holds a single chunk opens its records on every core instead.

use std::collections::HashMap;
use std::num::NonZero;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use candor_control::TenantView;
use candor_log::{Delivered, Record};
use candor_schemas::{EmployeeId, TenantId};

use crate::aggregate::{Aggregator, Subject, TenantPolicy};
use crate::dedup::{ChunkIds, SeenBatches};
use crate::metrics::ProcessorMetrics;
use crate::routes::Routes;
use crate::{DeadLetter, open};
use candor_lake::{LakeError, PartitionKey, encode_parquet};

/// Each tenant of a chunk with its view and policy; `None`: unknown tenant.
pub(crate) type ChunkTenants = HashMap<TenantId, Option<(Arc<TenantView>, TenantPolicy)>>;

/// A chunk with everything it needs read: ready to be worked on off the
/// processor's task.
pub(crate) struct ChunkInput<'a> {
    pub partition: i32,
    pub records: &'a [Delivered],
    pub tenants: ChunkTenants,
    /// The devices' routes as of the partition's last commit, opened for
    /// every tenant with keys.
    pub routes: Routes,
}

/// One lake object of a chunk, encoded.
pub(crate) struct EncodedObject {
    pub key: PartitionKey,
    pub parquet: Vec<u8>,
    pub rows: usize,
}

/// A chunk worked on: its objects, and the state that travels with it.
pub(crate) struct AggregatedChunk<'a> {
    pub partition: i32,
    pub records: &'a [Delivered],
    pub tenants: ChunkTenants,
    pub objects: Vec<EncodedObject>,
    /// Batch ids taken in.
    pub ids: ChunkIds,
    /// Records that did not open, as they go to the dead-letter log.
    pub dead: Vec<Record>,
    /// Events of the records that opened.
    pub events: u64,
    pub outside_work_hours: u64,
    pub routes: Routes,
}

/// Runs `work` with the runtime told that this worker blocks
/// (`block_in_place`: its other tasks move to another worker meanwhile), so
/// where the processor shares a runtime with ingest and the query API
/// (`candor standalone`) their requests do not wait behind a flush. A
/// current-thread runtime (some tests) runs it inline.
pub(crate) fn off_reactor<T>(work: impl FnOnce() -> T) -> T {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(work)
        }
        _ => work(),
    }
}

/// Works on every chunk, in parallel where there are several, and returns
/// them in the order given.
pub(crate) fn aggregate_all<'a>(
    inputs: Vec<ChunkInput<'a>>,
    seen: &SeenBatches,
    metrics: &ProcessorMetrics,
) -> Result<Vec<AggregatedChunk<'a>>, LakeError> {
    let cores = std::thread::available_parallelism().map_or(1, NonZero::get);
    let threads = cores.min(inputs.len());
    if threads <= 1 {
        return inputs
            .into_iter()
            .map(|input| aggregate(input, seen, metrics, cores))
            .collect();
    }
    let count = inputs.len();
    // Taken by whichever thread is free next: chunks differ in size.
    let inputs: Vec<std::sync::Mutex<Option<ChunkInput<'a>>>> = inputs
        .into_iter()
        .map(|input| std::sync::Mutex::new(Some(input)))
        .collect();
    let next = AtomicUsize::new(0);
    let work = || {
        let mut done = Vec::new();
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            let Some(slot) = inputs.get(i) else {
                return done;
            };
            let input = slot
                .lock()
                .expect("no thread panics holding a chunk")
                .take()
                .expect("each chunk is taken once");
            done.push((i, aggregate(input, seen, metrics, 1)));
        }
    };
    let mut results: Vec<_> = std::thread::scope(|scope| {
        let others: Vec<_> = (1..threads).map(|_| scope.spawn(work)).collect();
        let mut all = work();
        for other in others {
            all.extend(other.join().expect("aggregating a chunk does not panic"));
        }
        all
    });
    debug_assert_eq!(results.len(), count);
    results.sort_by_key(|(i, _)| *i);
    results.into_iter().map(|(_, chunk)| chunk).collect()
}

/// One chunk, its records opened on `open_threads` threads.
fn aggregate<'a>(
    input: ChunkInput<'a>,
    seen: &SeenBatches,
    metrics: &ProcessorMetrics,
    open_threads: usize,
) -> Result<AggregatedChunk<'a>, LakeError> {
    let ChunkInput {
        partition,
        records,
        tenants,
        routes,
    } = input;
    let view_of = |tenant: &TenantId| tenants.get(tenant).and_then(Option::as_ref);
    let opened = open::open_all(
        records,
        |tenant| view_of(tenant)?.0.keys.clone(),
        open_threads,
    );
    let mut agg = Aggregator::with_routes(routes);
    let mut ids = ChunkIds::default();
    let (mut dead, mut events) = (Vec::new(), 0);
    // Each employee's subject (an HMAC) and department, once per chunk.
    let mut subjects: foldhash::HashMap<(TenantId, EmployeeId), Arc<Subject>> =
        foldhash::HashMap::default();
    for (d, opened) in records.iter().zip(opened) {
        metrics.records.inc();
        let mut record = match opened {
            Ok(record) => record,
            Err(e) => {
                metrics.records_undecodable.inc();
                tracing::error!(partition, offset = d.offset, error = %e, "undecodable log record: dead-lettered and skipped");
                dead.push(DeadLetter::of(d, &e.to_string()).record());
                continue;
            }
        };
        let (view, policy) =
            view_of(&record.tenant).expect("a record opened, so its tenant exists");
        let record_events = record.event_count() as u64;
        metrics.events.inc_by(record_events);
        events += record_events;
        // Batch ids are remembered per dataset, so a batch counts once
        // whether its copies are one record (version 2) or one per dataset
        // (version 1), even both across an upgrade.
        let (batch_id, received_at_ms) = (record.meta.batch_id, record.meta.received_at_ms);
        record.datasets.retain(|(dataset, events)| {
            let key = (batch_id, *dataset as u8);
            let repeated = seen.is_duplicate(partition, key, received_at_ms, &mut ids);
            if repeated {
                metrics
                    .events_dropped
                    .with_label_values(&["duplicate_batch"])
                    .inc_by(events.num_rows() as u64);
            }
            !repeated
        });
        if record.datasets.is_empty() {
            continue;
        }
        let subject = subjects
            .entry((record.tenant.clone(), record.meta.employee.clone()))
            .or_insert_with(|| {
                let keys = view
                    .keys
                    .as_ref()
                    .expect("a record opened, so its keys exist");
                Arc::new(Subject {
                    pseudonym: keys.pseudonym().subject(&record.meta.employee),
                    department: view
                        .directory
                        .department_of(&record.meta.employee)
                        .map(str::to_string),
                })
            });
        agg.add(&record, subject, policy);
    }
    let outside_work_hours = agg.outside_work_hours;
    let routes = agg.take_routes();
    let objects = agg
        .finish()
        .into_iter()
        .map(|(key, batch)| {
            Ok(EncodedObject {
                parquet: encode_parquet(&batch)?,
                rows: batch.num_rows(),
                key,
            })
        })
        .collect::<Result<_, LakeError>>()?;
    Ok(AggregatedChunk {
        partition,
        records,
        tenants,
        objects,
        ids,
        dead,
        events,
        outside_work_hours,
        routes,
    })
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use candor_control::keyring::KeyringDoc;
    use candor_control::tenant::{Plan, Tenant};
    use candor_control::tokens::TokensDoc;
    use candor_control::{Directory, Revocations, Versioned};
    use candor_schemas::record::{RecordFormat, RecordMeta, seal_batch};
    use candor_schemas::{DeviceId, Limits, MasterSecret, decode_json};

    use super::*;

    /// Chunks of several partitions, worked on by whichever thread is free,
    /// come back in the order given and exactly as each would alone: same
    /// objects byte for byte, a batch repeated within a chunk counted once.
    #[test]
    fn chunks_worked_on_in_parallel_equal_chunks_worked_on_alone() {
        let master = MasterSecret::from_bytes(&[4; 32]).unwrap();
        let acme = TenantId::new("acme").unwrap();
        let keys = Arc::new(KeyringDoc::new(&master, &acme, 0).keys(&master).unwrap());
        let mut tenant = Tenant::new(acme.clone(), Plan::Starter, "UTC");
        tenant.track_outside_work_hours = true;
        let policy = TenantPolicy::of(&tenant);
        let view = Arc::new(TenantView {
            tenant: Versioned {
                version: 1,
                doc: tenant,
            },
            keys: Some(keys.clone()),
            revocations: Revocations::default(),
            tokens: TokensDoc::default(),
            directory: Arc::new(Directory::default()),
            loaded_at: Instant::now(),
        });
        let now = 1_780_000_000_000;
        let record = |partition: i32, offset: i64, batch: u8| {
            let json = format!(
                r#"{{"v":1,"sent_at_ms":0,"activity":[{{"start_ms":{},"active_s":{},"idle_s":1}}]}}"#,
                now - offset * 60_000,
                1 + offset % 50
            );
            let events = decode_json(json.as_bytes(), &Limits::default(), now).unwrap();
            let meta = RecordMeta {
                employee: EmployeeId::new(format!("e{}", offset % 7)).unwrap(),
                device: DeviceId::new(format!("d{partition}")).unwrap(),
                batch_id: [batch; 16],
                received_at_ms: now,
            };
            let (version, key) = keys.current_at_rest();
            Delivered {
                partition,
                offset,
                key: Vec::new(),
                value: seal_batch(
                    RecordFormat::V2,
                    &acme,
                    key,
                    version,
                    &meta,
                    &events.datasets,
                    rand::random,
                )
                .remove(0),
            }
        };
        // Partition 1's last record repeats the batch id of its first.
        let partitions: Vec<Vec<Delivered>> = (0..3)
            .map(|p| {
                (0..40)
                    .map(|o| record(p, o, if p == 1 && o == 39 { 0 } else { o as u8 }))
                    .collect()
            })
            .collect();
        let seen = SeenBatches::new(Duration::from_secs(3600));
        let metrics = ProcessorMetrics::default();
        let inputs = || {
            partitions
                .iter()
                .map(|records| ChunkInput {
                    partition: records[0].partition,
                    records,
                    tenants: [(acme.clone(), Some((view.clone(), policy.clone())))].into(),
                    routes: Routes::default(),
                })
                .collect::<Vec<_>>()
        };
        let parallel = aggregate_all(inputs(), &seen, &metrics).unwrap();
        let alone: Vec<_> = inputs()
            .into_iter()
            .map(|input| aggregate(input, &seen, &metrics, 1).unwrap())
            .collect();
        assert_eq!(parallel.len(), 3);
        for (p, (parallel, alone)) in parallel.iter().zip(&alone).enumerate() {
            assert_eq!(parallel.partition, p as i32);
            assert_eq!(parallel.events, 40, "partition {p}: every record opened");
            let objects = |c: &AggregatedChunk| {
                c.objects
                    .iter()
                    .map(|o| (o.key.clone(), o.rows, o.parquet.clone()))
                    .collect::<Vec<_>>()
            };
            assert_eq!(objects(parallel), objects(alone), "partition {p}");
            assert!(!parallel.objects.is_empty());
            let taken_in = if p == 1 { 39 } else { 40 };
            // 25 bytes per batch id taken in (see `dedup`).
            assert_eq!(
                parallel.ids.to_bytes().len(),
                25 * taken_in,
                "partition {p}: batch ids taken in"
            );
        }
    }
}
