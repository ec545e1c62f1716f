//! Candor's processor: consumes sealed log records, pseudonymizes them,
//! aggregates them into additive 15-minute slots and appends them to the
//! lake's Delta tables, exactly once (see `ledger`), committing log
//! positions only after the tables hold the records' rows.

mod aggregate;
mod chunk;
mod dedup;
mod ledger;
mod metrics;
mod open;
mod routes;
mod stall;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use candor_control::{CacheError, ControlCache, TenantView};
use candor_log::{Delivered, LogConsumer, LogError, LogProducer, Record, Resume};
use candor_schemas::TenantId;
use candor_schemas::record::read_header;

pub use aggregate::{Aggregator, Subject, TenantPolicy};
use candor_lake::NewObject;
pub use candor_lake::PartitionKey;
pub use candor_lake::{Lake, LakeError, Lakes};
use chunk::{AggregatedChunk, ChunkInput, ChunkTenants};
pub use dedup::{ChunkIds, SeenBatches};
use ledger::{ChunkCommit, Ledger, TableKey};
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
    /// The consumer group; names its progress in the lake's tables.
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
    /// Flushes another processor committed the state of and not all of
    /// the rows, whose rows this one committed on taking the partition over.
    pub flushes_completed: u64,
    /// Seconds spent in the flushes' Delta commits (state and dataset
    /// tables, retries included).
    pub table_commit_time: Duration,
}

pub struct Processor<C> {
    consumer: C,
    /// Tenants' keys (at rest, pseudonyms) and policy.
    control: Arc<ControlCache>,
    /// The deployment's lake and the tenants' own.
    lakes: Lakes,
    /// The tables it commits to and what it knows of each partition.
    ledger: Ledger,
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
            ledger: Ledger::new(lakes.clone(), &config.group),
            seen: SeenBatches::new(config.dedup_window),
            routes: RouteMemory::default(),
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
            flushes_completed: m.flushes_completed.get(),
            table_commit_time: Duration::from_secs_f64(m.table_commit_seconds.get_sample_sum()),
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
        // first; the chunks are then worked on in parallel, and committed
        // together.
        let timer = Instant::now();
        let mut positions = Vec::with_capacity(by_partition.len());
        let mut inputs = Vec::with_capacity(by_partition.len());
        for (&partition, records) in &by_partition {
            let first = records.first().expect("chunks are non-empty").offset;
            let next_offset = records.last().expect("chunks are non-empty").offset + 1;
            positions.push(Resume {
                partition,
                next_offset,
            });
            let progress = self.resume(partition, first).await?;
            // Records the lake holds already (their flush committed its
            // state, and the log did not hear of it) are not taken in again.
            let fresh = &records[records.partition_point(|d| Some(d.offset) <= progress)..];
            if fresh.is_empty() {
                self.ledger.skipped(partition, next_offset);
                continue;
            }
            inputs.push(self.prepare_chunk(partition, fresh).await?);
        }
        let (seen, metrics) = (&self.seen, &self.metrics);
        let aggregated = chunk::off_reactor(|| chunk::aggregate_all(inputs, seen, metrics))?;
        let chunks = aggregated.len();
        let events = self.flush(aggregated).await?;
        if chunks > 0 {
            // One flush of several partitions: each its share of the time.
            let share = timer.elapsed().as_secs_f64() / chunks as f64;
            for _ in 0..chunks {
                self.metrics.flush_seconds.observe(share);
            }
        }
        // Only now, with every row in the tables, may the log forget the records.
        self.commit(&positions).await?;
        self.metrics.events_committed.inc_by(events);
        Ok(count)
    }

    /// Makes a partition's state current for a chunk starting at `first`
    /// (see [`Ledger::resume`]), retrying while the lake is unavailable.
    async fn resume(&mut self, partition: i32, first: i64) -> Result<Option<i64>, ProcessorError> {
        let mut backoff = Backoff::default();
        loop {
            let completed = self.ledger.flushes_completed();
            match self
                .ledger
                .resume(partition, first, &mut self.seen, &mut self.routes)
                .await
            {
                Ok(progress) => {
                    self.metrics
                        .flushes_completed
                        .inc_by(self.ledger.flushes_completed() - completed);
                    return Ok(progress);
                }
                Err(e) if e.is_transient() => {
                    self.metrics.lake_retries.inc();
                    backoff
                        .wait("reading the partition's committed state", &e)
                        .await;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Commits, retrying while the log is unavailable. The log's offsets
    /// only save a successor reading again what the lake holds already.
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
    /// the view and policy of each tenant in it, and the partition's
    /// routes opened with their keys.
    async fn prepare_chunk<'a>(
        &mut self,
        partition: i32,
        records: &'a [Delivered],
    ) -> Result<ChunkInput<'a>, ProcessorError> {
        let mut routes = self.routes.take(partition);
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

    /// Writes the worked-on chunks' objects, sends their dead letters and
    /// commits them (see `ledger`), retrying while the lake or the
    /// dead-letter log is unavailable; then the chunks' state is this
    /// processor's memory of their partitions. Returns the events of the
    /// records that opened.
    async fn flush(&mut self, chunks: Vec<AggregatedChunk<'_>>) -> Result<u64, ProcessorError> {
        if chunks.is_empty() {
            return Ok(0);
        }
        let mut dead = Vec::new();
        let mut events = 0;
        let mut prepared = Vec::with_capacity(chunks.len());
        for chunk in chunks {
            events += chunk.events;
            dead.extend(chunk.dead.iter().cloned());
            prepared.push(self.prepare_flush(chunk)?);
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
        let mut commits = self.write_objects(&mut prepared).await?;
        let committing = Instant::now();
        let mut backoff = Backoff::default();
        let mut written_at = Instant::now();
        while let Err(e) = self.ledger.commit_state(&commits).await {
            if !e.is_transient() {
                return Err(e.into());
            }
            self.metrics.lake_retries.inc();
            backoff.wait("committing the flush's state", &e).await;
            // Objects no version names are deleted by VACUUM once old
            // enough; a flush kept waiting that long writes them afresh.
            if written_at.elapsed() > REWRITE_OBJECTS_AFTER {
                commits = self.write_objects(&mut prepared).await?;
                written_at = Instant::now();
            }
        }
        let mut backoff = Backoff::default();
        while let Err(e) = self.ledger.commit_tables(&commits).await {
            if !e.is_transient() {
                return Err(e.into());
            }
            self.metrics.lake_retries.inc();
            backoff.wait("committing the flush's rows", &e).await;
        }
        self.metrics
            .table_commit_seconds
            .observe(committing.elapsed().as_secs_f64());
        for object in prepared.iter().flat_map(|p| &p.objects) {
            self.metrics.rows_written.inc_by(object.rows as u64);
            self.metrics.bytes_written.inc_by(object.bytes.len() as u64);
            self.metrics.files_written.inc();
        }
        for chunk in prepared {
            self.seen.committed(chunk.partition, chunk.ids);
            self.routes.committed(chunk.partition, chunk.routes);
        }
        Ok(events)
    }

    /// A chunk's objects by the lake they go to, and its state to commit.
    fn prepare_flush(
        &mut self,
        chunk: AggregatedChunk<'_>,
    ) -> Result<PreparedChunk, ProcessorError> {
        let AggregatedChunk {
            partition,
            records,
            tenants,
            objects: encoded,
            ids,
            events: _,
            dead: _,
            outside_work_hours,
            mut routes,
        } = chunk;
        let first = records.first().expect("chunks are non-empty").offset;
        let last = records.last().expect("chunks are non-empty").offset;
        self.metrics
            .events_dropped
            .with_label_values(&["outside_work_hours"])
            .inc_by(outside_work_hours);
        let replace = self.ledger.replaces(partition);
        let changes = routes.take_changes();
        let (batch_ids, route_state) = if replace {
            (
                self.seen.whole_with(partition, &ids),
                Some(routes.snapshot()),
            )
        } else {
            (ids.to_bytes(), changes)
        };
        // Each tenant's objects go to its own lake when it has one.
        let mut objects = Vec::with_capacity(encoded.len());
        for object in encoded {
            let location = match tenants.get(&object.key.tenant) {
                Some(Some((view, _))) => view.tenant.doc.lake_url.as_deref(),
                _ => None,
            };
            objects.push(LakeObject {
                lake: self.lakes.key(location)?,
                key: object.key,
                rows: object.rows,
                bytes: object.parquet.into(),
            });
        }
        Ok(PreparedChunk {
            partition,
            first,
            last,
            replace,
            batch_ids,
            route_state,
            objects,
            ids,
            routes,
        })
    }

    /// Writes every chunk's objects durably, each under a name of its own
    /// (`part-<partition>-<first>-<last>-<uuid>.parquet`: no try overwrites
    /// another's), retrying while a lake cannot be written; returns what
    /// the chunks commit.
    async fn write_objects(
        &self,
        chunks: &mut [PreparedChunk],
    ) -> Result<Vec<ChunkCommit>, ProcessorError> {
        let attempt = uuid::Uuid::new_v4().simple();
        let mut by_lake: BTreeMap<Option<String>, Vec<(object_store::path::Path, bytes::Bytes)>> =
            BTreeMap::new();
        let mut commits = Vec::with_capacity(chunks.len());
        for chunk in chunks.iter() {
            let file_name = format!(
                "part-{:05}-{:020}-{:020}-{attempt}.parquet",
                chunk.partition, chunk.first, chunk.last
            );
            let mut objects: std::collections::HashMap<TableKey, Vec<NewObject>> =
                std::collections::HashMap::new();
            for object in &chunk.objects {
                by_lake
                    .entry(object.lake.clone())
                    .or_default()
                    .push((object.key.object_path(&file_name), object.bytes.clone()));
                objects
                    .entry((object.lake.clone(), object.key.dataset))
                    .or_default()
                    .push(NewObject {
                        key: object.key.clone(),
                        file_name: file_name.clone(),
                        size: object.bytes.len() as u64,
                        rows: object.rows as u64,
                    });
            }
            commits.push(ChunkCommit {
                partition: chunk.partition,
                first: chunk.first,
                last: chunk.last,
                replace: chunk.replace,
                batch_ids: chunk.batch_ids.clone(),
                routes: chunk.route_state.clone(),
                objects,
            });
        }
        for (lake, puts) in &by_lake {
            let mut backoff = Backoff::default();
            loop {
                let written = match self.lakes.at(lake.as_deref()) {
                    Ok(at) => at.put_all_durable(puts).await,
                    Err(e) => Err(e),
                };
                match written {
                    Ok(()) => break,
                    Err(e) if e.is_transient() => {
                        self.metrics.lake_retries.inc();
                        backoff.wait("writing the flush's objects", &e).await;
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
        Ok(commits)
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
            // a flush cut between its commits is completed by whoever
            // reads the partition next (see `ledger`).
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

/// How long a flush may wait for its state commit before it writes its
/// objects again: well under the VACUUM retention, which deletes objects
/// no table version names once they are older than it.
const REWRITE_OBJECTS_AFTER: Duration = Duration::from_secs(15 * 60);

/// A worked-on chunk on its way into the lake: its objects and the state
/// it commits, and its memory for after the commit.
struct PreparedChunk {
    partition: i32,
    first: i64,
    last: i64,
    /// Whether its state commit replaces the partition's state files.
    replace: bool,
    batch_ids: Vec<u8>,
    route_state: Option<Vec<u8>>,
    objects: Vec<LakeObject>,
    ids: ChunkIds,
    routes: Routes,
}

/// One encoded object of a flush.
struct LakeObject {
    /// The lake it goes to ([`Lakes::key`]; `None`: the deployment's).
    lake: Option<String>,
    key: PartitionKey,
    rows: usize,
    bytes: bytes::Bytes,
}

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
