//! Candor's processor: consumes sealed log records, pseudonymizes them,
//! aggregates them into additive 15-minute slots and writes hive-partitioned
//! Parquet to the lake, committing log positions only after the objects that
//! cover them are durable.

mod aggregate;
mod chunk;
pub mod compaction;
mod dedup;
pub mod erasure;
mod flush_state;
mod intent;
mod metrics;
mod open;
pub mod retention;
mod routes;
mod stall;
mod tenants;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use candor_control::{CacheError, ControlCache, TenantView};
use candor_log::{Delivered, LogConsumer, LogError, LogProducer, Record, Resume};
use candor_schemas::TenantId;
use candor_schemas::record::read_header;
use object_store::path::Path as ObjectPath;

pub use aggregate::{Aggregator, Subject, TenantPolicy};
pub use candor_lake::PartitionKey;
pub use candor_lake::{LEASE_MS, Lake, LakeError, Lakes, Lease};
use chunk::{AggregatedChunk, ChunkInput, ChunkTenants};
pub use dedup::{ChunkIds, SeenBatches};
pub use intent::{FlushIntent, Intents};
pub use metrics::{MaintenanceMetrics, ProcessorMetrics};
pub use routes::{RouteMemory, Routes};
use stall::{PartitionProgress, StallWatch};

/// Serves a processor's `/metrics` (everything in `registry`) and
/// `/healthz` until `shutdown` resolves. A processor answers nothing else.
pub async fn serve_metrics(
    listener: tokio::net::TcpListener,
    registry: prometheus::Registry,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let routes = axum::Router::new()
        .route(
            "/metrics",
            axum::routing::get(move || {
                let registry = registry.clone();
                async move { candor_http::metrics_response(&registry) }
            }),
        )
        .route("/healthz", axum::routing::get(|| async { "ok" }));
    candor_http::serve(
        listener,
        routes,
        &candor_http::ServeConfig::default(),
        shutdown,
    )
    .await
}

#[derive(Debug, thiserror::Error)]
pub enum ProcessorError {
    #[error(transparent)]
    Log(#[from] LogError),
    #[error(transparent)]
    Lake(#[from] LakeError),
    #[error("control plane: {0}")]
    Control(#[from] CacheError),
}

#[derive(Debug, Clone)]
pub struct ProcessorConfig {
    /// The consumer group; names where its flush intents live in the lake.
    pub group: String,
    /// Most records turned into one set of files.
    pub max_records_per_flush: usize,
    /// How long a batch id is remembered to drop a second copy of the
    /// batch (see `dedup`), counted back from the newest batch seen.
    pub dedup_window: Duration,
    /// How long a poll waits for the first record.
    pub poll_wait: Duration,
    /// How long a partition with records waiting may go without a commit
    /// from the group before this processor rejoins it (see `stall`);
    /// `None`: never.
    pub rejoin_stalled_after: Option<Duration>,
}

impl Default for ProcessorConfig {
    fn default() -> Self {
        Self {
            group: "candor-processor".into(),
            max_records_per_flush: 10_000,
            dedup_window: Duration::from_secs(48 * 3600),
            poll_wait: Duration::from_millis(500),
            rejoin_stalled_after: Some(Duration::from_secs(60)),
        }
    }
}

/// Running totals since the processor started (a snapshot of its metrics).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ProcessorStats {
    pub records: u64,
    /// Events of the log records opened.
    pub events: u64,
    /// Events of the log records whose flush is committed: `events` once
    /// every flush under way has landed.
    pub events_committed: u64,
    /// Events outside the tenant's work hours, kept out of the lake.
    pub events_outside_work_hours: u64,
    /// Events of a batch already in the lake (a second copy in the log).
    pub events_duplicate: u64,
    /// Records that could not be opened or decoded: sent to the dead-letter
    /// log (when one is configured), counted and skipped.
    pub records_undecodable: u64,
    pub files_written: u64,
    pub rows_written: u64,
    /// Objects of flushes that never committed, deleted before a replay.
    pub leftover_objects_deleted: u64,
}

pub struct Processor<C> {
    consumer: C,
    /// Tenants' keys (at rest, pseudonyms) and policy.
    control: Arc<ControlCache>,
    /// The deployment's lake and the tenants' own.
    lakes: Lakes,
    intents: Intents,
    seen: SeenBatches,
    /// Where records that cannot be opened or decoded go, with their reason.
    dead_letters: Option<Arc<dyn LogProducer>>,
    config: ProcessorConfig,
    metrics: ProcessorMetrics,
    /// When lag was last measured; it costs a round trip to the log.
    lag_measured: Option<Instant>,
    /// Per log partition, the devices' GPS routes as of its last commit.
    routes: RouteMemory,
    /// The group's commits, to find partitions nobody reads.
    stalls: StallWatch,
}

impl<C: LogConsumer> Processor<C> {
    /// A processor writing each tenant's rows to its own lake when its
    /// document names one, else to the deployment's lake (`lakes`, or a
    /// single [`Lake`]), which also keeps the processors' own state.
    pub fn new(
        consumer: C,
        control: Arc<ControlCache>,
        lakes: impl Into<Lakes>,
        config: ProcessorConfig,
    ) -> Self {
        let lakes = lakes.into();
        Self {
            consumer,
            control,
            intents: Intents::new(lakes.clone(), &config.group),
            seen: SeenBatches::new(lakes.home().clone(), &config.group, config.dedup_window),
            routes: RouteMemory::new(lakes.home().clone(), &config.group),
            lakes,
            dead_letters: None,
            config,
            metrics: ProcessorMetrics::default(),
            lag_measured: None,
            stalls: StallWatch::default(),
        }
    }

    /// Sends records that cannot be opened or decoded to `log` (a
    /// dead-letter topic or spool), each with its reason and position.
    pub fn with_dead_letters(mut self, log: Arc<dyn LogProducer>) -> Self {
        self.dead_letters = Some(log);
        self
    }

    /// Counts into `metrics` (registered where the process exports them).
    pub fn with_metrics(mut self, metrics: ProcessorMetrics) -> Self {
        self.metrics = metrics;
        self
    }

    pub fn stats(&self) -> ProcessorStats {
        let m = &self.metrics;
        ProcessorStats {
            records: m.records.get(),
            events: m.events.get(),
            events_committed: m.events_committed.get(),
            events_outside_work_hours: m
                .events_dropped
                .with_label_values(&["outside_work_hours"])
                .get(),
            events_duplicate: m
                .events_dropped
                .with_label_values(&["duplicate_batch"])
                .get(),
            records_undecodable: m.records_undecodable.get(),
            files_written: m.files_written.get(),
            rows_written: m.rows_written.get(),
            leftover_objects_deleted: m.leftover_objects_deleted.get(),
        }
    }

    /// The group's commits and the records before `ends` after them, per
    /// partition.
    async fn progress(&self, ends: &[Resume]) -> Result<Vec<PartitionProgress>, ProcessorError> {
        let committed: BTreeMap<i32, i64> = self
            .consumer
            .committed()
            .await?
            .into_iter()
            .map(|r| (r.partition, r.next_offset))
            .collect();
        Ok(ends
            .iter()
            .map(|e| {
                let committed = committed.get(&e.partition).copied().unwrap_or(0);
                PartitionProgress {
                    partition: e.partition,
                    committed,
                    behind: (e.next_offset - committed).max(0),
                }
            })
            .collect())
    }

    /// Every partition's progress up to the log's end now; updates the
    /// lag gauges.
    async fn lag(&self) -> Result<Vec<PartitionProgress>, ProcessorError> {
        let progress = self.progress(&self.consumer.end_offsets().await?).await?;
        for p in &progress {
            self.metrics
                .partition_lag_records
                .with_label_values(&[&p.partition.to_string()])
                .set(p.behind);
        }
        self.metrics
            .lag_records
            .set(progress.iter().map(|p| p.behind).sum());
        Ok(progress)
    }

    /// Refreshes the lag gauges, at most once a second, and rejoins the
    /// group when a partition has no working reader (see `stall`).
    async fn measure_lag(&mut self) -> Result<(), ProcessorError> {
        if self
            .lag_measured
            .is_some_and(|t| t.elapsed() < Duration::from_secs(1))
        {
            return Ok(());
        }
        let progress = self.lag().await?;
        self.lag_measured = Some(Instant::now());
        // Only a group can leave a partition without a reader.
        let (Some(after), Some(assigned)) =
            (self.config.rejoin_stalled_after, self.consumer.assigned())
        else {
            return Ok(());
        };
        let stalled = self.stalls.stalled(Instant::now(), &progress, after);
        if stalled.is_empty() {
            return Ok(());
        }
        tracing::warn!(
            ?stalled,
            ?assigned,
            "partitions with records waiting had no commit from the group for {}s: rejoining the group so every partition is assigned again",
            after.as_secs()
        );
        self.consumer.rejoin().await?;
        self.metrics.group_rejoins.inc();
        self.stalls.reset();
        Ok(())
    }

    /// One round: poll, aggregate, write, commit. Returns the records handled.
    pub async fn step(&mut self) -> Result<usize, ProcessorError> {
        let delivered = self
            .consumer
            .poll(self.config.max_records_per_flush, self.config.poll_wait)
            .await?;
        if delivered.is_empty() {
            return Ok(0);
        }
        let count = delivered.len();
        let mut by_partition: BTreeMap<i32, Vec<Delivered>> = BTreeMap::new();
        for d in delivered {
            by_partition.entry(d.partition).or_default().push(d);
        }
        // What each chunk needs from the lake and the control plane is read
        // first; the chunks are then worked on in parallel, and written one
        // after another.
        let timer = Instant::now();
        let mut inputs = Vec::with_capacity(by_partition.len());
        for (partition, records) in &by_partition {
            inputs.push(self.prepare_chunk(*partition, records).await?);
        }
        let (seen, metrics) = (&self.seen, &self.metrics);
        let aggregated = chunk::off_reactor(|| chunk::aggregate_all(inputs, seen, metrics))?;
        // Each chunk's share of the time spent on all of them together.
        let shared = timer.elapsed().as_secs_f64() / aggregated.len() as f64;
        let mut positions = Vec::with_capacity(aggregated.len());
        let mut taken_in = Vec::with_capacity(aggregated.len());
        let mut events = 0;
        for chunk in aggregated {
            let timer = Instant::now();
            let partition = chunk.partition;
            let written = self.write_chunk(chunk).await?;
            events += written.events;
            self.metrics
                .flush_seconds
                .observe(shared + timer.elapsed().as_secs_f64());
            positions.push(Resume {
                partition,
                next_offset: written.next_offset,
            });
            taken_in.push((partition, written));
        }
        // Only now, with every object durable, may the log forget the records.
        self.commit(&positions).await?;
        self.metrics.events_committed.inc_by(events);
        for (partition, chunk) in taken_in {
            let next_offset = chunk.next_offset;
            self.seen
                .committed(partition, next_offset, chunk.ids, chunk.ids_file)
                .await;
            self.routes
                .committed(partition, next_offset, chunk.routes, chunk.routes_file)
                .await;
        }
        Ok(count)
    }

    /// Commits, retrying while the log is unavailable: the next flush of a
    /// partition may start only once this one is committed (see `intent`).
    async fn commit(&mut self, positions: &[Resume]) -> Result<(), ProcessorError> {
        let mut backoff = Backoff::default();
        loop {
            match self.consumer.commit(positions).await {
                Ok(()) => {
                    self.metrics.commits.inc();
                    return Ok(());
                }
                Err(e) if e.is_transient() => backoff.wait("commit", &e).await,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Reads what a partition's chunk needs before it can be worked on:
    /// the partition's batch ids and routes as of its last commit, and the
    /// view and policy of each tenant in it.
    async fn prepare_chunk<'a>(
        &mut self,
        partition: i32,
        records: &'a [Delivered],
    ) -> Result<ChunkInput<'a>, ProcessorError> {
        let first = records.first().expect("chunks are non-empty").offset;
        let mut backoff = Backoff::default();
        while let Err(e) = self.seen.prepare(partition, first).await {
            if !e.is_transient() {
                return Err(e.into());
            }
            self.metrics.lake_retries.inc();
            backoff.wait("reading the partition's batch ids", &e).await;
        }
        let mut backoff = Backoff::default();
        let mut routes = loop {
            match self.routes.take(partition, first).await {
                Ok(routes) => break routes,
                Err(e) if e.is_transient() => {
                    self.metrics.lake_retries.inc();
                    backoff.wait("reading the partition's GPS routes", &e).await;
                }
                Err(e) => return Err(e.into()),
            }
        };
        // The tenants' views and policies, looked up once per chunk, and
        // their devices' carried points opened with their keys. An unknown
        // tenant or destroyed keys leave no keys: its records do not open.
        let mut tenants = ChunkTenants::new();
        for d in records {
            let Ok(header) = read_header(&d.value) else {
                continue;
            };
            if tenants.contains_key(&header.tenant) {
                continue;
            }
            let known = self.tenant_view(&header.tenant).await?.map(|view| {
                let policy = TenantPolicy::of(&view.tenant.doc);
                (view, policy)
            });
            if let Some(keys) = known.as_ref().and_then(|(v, _)| v.keys.as_ref()) {
                routes.open(&header.tenant, keys);
            }
            tenants.insert(header.tenant, known);
        }
        Ok(ChunkInput {
            partition,
            records,
            tenants,
            routes,
        })
    }

    /// Writes a worked-on chunk: one object per dataset, tenant and date,
    /// plus the state that travels with the flush, then its dead letters.
    async fn write_chunk(
        &mut self,
        chunk: AggregatedChunk<'_>,
    ) -> Result<WrittenChunk, ProcessorError> {
        let AggregatedChunk {
            partition,
            records,
            tenants,
            objects: encoded,
            ids,
            dead,
            events,
            outside_work_hours,
            mut routes,
        } = chunk;
        let first = records.first().expect("chunks are non-empty").offset;
        let last = records.last().expect("chunks are non-empty").offset;
        // Named after the log positions covered: replaying the same records
        // rewrites the same objects instead of adding duplicates.
        let file_name = format!("part-{partition:05}-{first:020}-{last:020}.parquet");
        self.metrics
            .events_dropped
            .with_label_values(&["outside_work_hours"])
            .inc_by(outside_work_hours);
        let routes_file = routes
            .take_changes()
            .map(|bytes| (self.routes.path(partition, first, last), bytes));
        // Each tenant's objects go to its own lake when it has one.
        let mut objects = LakeObjects::new();
        for object in encoded {
            let location = match tenants.get(&object.key.tenant) {
                Some(Some((view, _))) => view.tenant.doc.lake_url.as_deref(),
                _ => None,
            };
            let lake = self.lakes.key(location)?;
            objects.entry(lake).or_default().push(LakeObject {
                path: object.key.object_path(&file_name),
                rows: object.rows,
                bytes: object.parquet.into(),
            });
        }
        // The batch ids taken in and the routes' changes travel with the
        // flush, as objects of their own in the deployment's lake.
        let ids_file =
            (!ids.is_empty()).then(|| (self.seen.ids_path(partition, first, last), ids.to_bytes()));
        let state_files: Vec<(ObjectPath, Vec<u8>)> =
            ids_file.iter().chain(&routes_file).cloned().collect();
        let paths = |objects: &[LakeObject]| -> Vec<String> {
            objects.iter().map(|o| o.path.to_string()).collect()
        };
        let intent = FlushIntent {
            partition,
            first,
            last,
            objects: objects
                .get(&None)
                .map(|home| paths(home))
                .unwrap_or_default()
                .into_iter()
                .chain(state_files.iter().map(|(path, _)| path.to_string()))
                .collect(),
            elsewhere: objects
                .iter()
                .filter_map(|(lake, objects)| Some((lake.clone()?, paths(objects))))
                .collect(),
        };
        // While the lake cannot be written, the flush is retried as a whole
        // (its intent first, so a half-written try is cleaned up) and
        // nothing is committed: the log keeps the records meanwhile.
        let mut backoff = Backoff::default();
        while let Err(e) = self.write_flush(&intent, &objects, &state_files).await {
            if !e.is_transient() {
                return Err(e.into());
            }
            self.metrics.lake_retries.inc();
            backoff.wait("writing the flush", &e).await;
        }
        // Dead letters are durable before the commit that skips their records.
        if let (Some(log), false) = (&self.dead_letters, dead.is_empty()) {
            let mut backoff = Backoff::default();
            while let Err(e) = log.append(dead.clone()).await {
                if !e.is_transient() {
                    return Err(e.into());
                }
                backoff.wait("dead-letter append", &e).await;
            }
        }
        Ok(WrittenChunk {
            next_offset: last + 1,
            ids,
            ids_file: ids_file.map(|(path, _)| path),
            routes,
            routes_file: routes_file.map(|(path, _)| path),
            events,
        })
    }

    /// Records the flush's intent, then writes its objects durably.
    async fn write_flush(
        &self,
        intent: &FlushIntent,
        objects: &LakeObjects,
        state_files: &[(ObjectPath, Vec<u8>)],
    ) -> Result<(), LakeError> {
        let deleted = self.intents.begin(intent).await?;
        self.metrics.leftover_objects_deleted.inc_by(deleted as u64);
        let state: Vec<(ObjectPath, bytes::Bytes)> = state_files
            .iter()
            .map(|(path, bytes)| (path.clone(), bytes.clone().into()))
            .collect();
        for (lake, objects) in objects {
            // A key is itself a location (see `Lakes::key`). The state
            // files go with the deployment's objects: one round of fsyncs.
            let home = lake.is_none();
            let puts: Vec<(ObjectPath, bytes::Bytes)> = objects
                .iter()
                .map(|o| (o.path.clone(), o.bytes.clone()))
                .chain(state.iter().filter(|_| home).cloned())
                .collect();
            self.lakes
                .at(lake.as_deref())?
                .put_all_durable(&puts)
                .await?;
            for object in objects {
                self.metrics.rows_written.inc_by(object.rows as u64);
                self.metrics.bytes_written.inc_by(object.bytes.len() as u64);
                self.metrics.files_written.inc();
            }
        }
        if !objects.contains_key(&None) {
            self.lakes.home().put_all_durable(&state).await?;
        }
        Ok(())
    }

    /// A tenant's view, retried with backoff while the control plane cannot
    /// be reached (records already polled must not be skipped).
    async fn tenant_view(
        &self,
        tenant: &TenantId,
    ) -> Result<Option<Arc<TenantView>>, ProcessorError> {
        let mut wait = Duration::from_millis(200);
        loop {
            match self.control.get(tenant).await {
                Ok(view) => return Ok(view),
                Err(e) if wait <= Duration::from_secs(5) => {
                    tracing::warn!(%tenant, error = %e, "control plane unavailable; retrying");
                    tokio::time::sleep(wait).await;
                    wait *= 2;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Processes until every record that existed when it was called is
    /// committed by this consumer group, then returns. For batch runs, the
    /// demo and tests. Progress is read from the group's commits, so a
    /// restarted processor, or another member's work, counts too.
    pub async fn drain(&mut self) -> Result<(), ProcessorError> {
        let targets = self.consumer.end_offsets().await?;
        loop {
            let behind = self.progress(&targets).await?;
            if behind.iter().all(|p| p.behind == 0) {
                self.lag().await?;
                return Ok(());
            }
            self.step().await?;
        }
    }

    /// Processes until `shutdown` resolves.
    ///
    /// Unavailability is waited out, never skipped: a failed poll is
    /// retried (it lost nothing), a commit is retried until it lands, and a
    /// flush the lake refuses is retried with backoff while the log keeps
    /// the records. Any other error (a fatal log error, a lake object that
    /// cannot be read) ends the run; a restart resumes from the last commit.
    pub async fn run(
        &mut self,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<(), ProcessorError> {
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            // A shutdown may cut a round short, even one waiting for the
            // lake: nothing is committed before its objects are durable, and
            // the flush intents clean up a cut flush at the next start.
            let stepped = tokio::select! {
                () = &mut shutdown => return Ok(()),
                stepped = self.step() => stepped,
            };
            match stepped {
                Ok(_) => {
                    if let Err(e) = self.measure_lag().await {
                        tracing::warn!(error = %e, "could not measure lag");
                    }
                }
                Err(ProcessorError::Log(e)) if e.is_transient() => {
                    tracing::warn!(error = %e, "log unavailable; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// A partition chunk written and not yet committed: where the partition
/// resumes after it, and its state for after the commit.
struct WrittenChunk {
    next_offset: i64,
    ids: ChunkIds,
    ids_file: Option<ObjectPath>,
    routes: Routes,
    routes_file: Option<ObjectPath>,
    /// Events of the records that opened.
    events: u64,
}

/// One encoded object of a flush.
struct LakeObject {
    path: ObjectPath,
    rows: usize,
    bytes: bytes::Bytes,
}

/// A flush's objects by the lake they go to ([`Lakes::key`]; `None`: the
/// deployment's).
type LakeObjects = BTreeMap<Option<String>, Vec<LakeObject>>;

/// Waits between retries of a call that failed transiently (the log or
/// the lake unavailable): 100 ms, doubling up to 5 s.
struct Backoff(Duration);

impl Default for Backoff {
    fn default() -> Self {
        Self(Duration::from_millis(100))
    }
}

impl Backoff {
    async fn wait(&mut self, what: &str, error: &(dyn std::fmt::Display + Sync)) {
        tracing::warn!(%error, "{what} failed; retrying");
        tokio::time::sleep(self.0).await;
        self.0 = (self.0 * 2).min(Duration::from_secs(5));
    }
}

/// A record the processor could not open or decode, as it goes to the
/// dead-letter log: the reason, where it was, and the sealed bytes untouched
/// (hex), so an operator can inspect or replay it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DeadLetter {
    pub reason: String,
    pub partition: i32,
    pub offset: i64,
    pub key: String,
    pub value_hex: String,
}

impl DeadLetter {
    fn of(d: &Delivered, reason: &str) -> Self {
        Self {
            reason: reason.to_string(),
            partition: d.partition,
            offset: d.offset,
            key: String::from_utf8_lossy(&d.key).into_owned(),
            value_hex: hex::encode(&d.value),
        }
    }

    fn record(&self) -> Record {
        Record {
            key: self.key.clone(),
            value: serde_json::to_vec(self).expect("a dead letter serializes"),
        }
    }
}
