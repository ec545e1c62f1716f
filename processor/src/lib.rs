//! Candor's processor: consumes sealed log records, pseudonymizes them,
//! aggregates them into additive 15-minute slots and writes hive-partitioned
//! Parquet to the lake, committing log positions only after the objects that
//! cover them are durable.

mod aggregate;
mod lake;
mod metrics;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use candor_control::{CacheError, ControlCache, TenantView};
use candor_log::{Delivered, LogConsumer, LogError, Resume};
use candor_schemas::TenantId;
use candor_schemas::record::{open_record, read_header};
use futures::FutureExt;

pub use aggregate::{Aggregator, PartitionKey, Subject, TenantPolicy};
pub use lake::{Lake, LakeError};
pub use metrics::ProcessorMetrics;

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
    /// Most records turned into one set of files.
    pub max_records_per_flush: usize,
    /// How long a poll waits for the first record.
    pub poll_wait: Duration,
}

impl Default for ProcessorConfig {
    fn default() -> Self {
        Self {
            max_records_per_flush: 10_000,
            poll_wait: Duration::from_millis(500),
        }
    }
}

/// Running totals since the processor started (a snapshot of its metrics).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ProcessorStats {
    pub records: u64,
    pub events: u64,
    /// Events outside the tenant's work hours, kept out of the lake.
    pub events_outside_work_hours: u64,
    /// Records that could not be opened or decoded; logged and skipped.
    pub records_undecodable: u64,
    pub files_written: u64,
    pub rows_written: u64,
}

pub struct Processor<C> {
    consumer: C,
    /// Tenants' keys (at rest, pseudonyms) and policy.
    control: Arc<ControlCache>,
    lake: Lake,
    config: ProcessorConfig,
    metrics: ProcessorMetrics,
    /// When lag was last measured; it costs a round trip to the log.
    lag_measured: Option<Instant>,
}

impl<C: LogConsumer> Processor<C> {
    pub fn new(
        consumer: C,
        control: Arc<ControlCache>,
        lake: Lake,
        config: ProcessorConfig,
    ) -> Self {
        Self {
            consumer,
            control,
            lake,
            config,
            metrics: ProcessorMetrics::default(),
            lag_measured: None,
        }
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
            events_outside_work_hours: m
                .events_dropped
                .with_label_values(&["outside_work_hours"])
                .get(),
            records_undecodable: m.records_undecodable.get(),
            files_written: m.files_written.get(),
            rows_written: m.rows_written.get(),
        }
    }

    /// Records before `ends` the group has yet to commit, summed over partitions.
    async fn records_behind(&self, ends: &[Resume]) -> Result<i64, ProcessorError> {
        let committed: BTreeMap<i32, i64> = self
            .consumer
            .committed()
            .await?
            .into_iter()
            .map(|r| (r.partition, r.next_offset))
            .collect();
        Ok(ends
            .iter()
            .map(|e| (e.next_offset - committed.get(&e.partition).copied().unwrap_or(0)).max(0))
            .sum())
    }

    /// Records in the log the group has yet to commit.
    async fn lag(&self) -> Result<i64, ProcessorError> {
        self.records_behind(&self.consumer.end_offsets().await?)
            .await
    }

    /// Refreshes the lag gauge, at most once a second.
    async fn measure_lag(&mut self) -> Result<(), ProcessorError> {
        if self
            .lag_measured
            .is_some_and(|t| t.elapsed() < Duration::from_secs(1))
        {
            return Ok(());
        }
        let lag = self.lag().await?;
        self.metrics.lag_records.set(lag);
        self.lag_measured = Some(Instant::now());
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
        let mut positions = Vec::with_capacity(by_partition.len());
        for (partition, records) in by_partition {
            let last = self.write_partition_chunk(partition, &records).await?;
            positions.push(Resume {
                partition,
                next_offset: last + 1,
            });
        }
        // Only now, with every object durable, may the log forget the records.
        self.consumer.commit(&positions).await?;
        Ok(count)
    }

    /// Aggregates one partition's records and writes one object per dataset,
    /// tenant and date. Returns the last offset covered.
    async fn write_partition_chunk(
        &mut self,
        partition: i32,
        records: &[Delivered],
    ) -> Result<i64, ProcessorError> {
        let first = records.first().expect("chunks are non-empty").offset;
        let last = records.last().expect("chunks are non-empty").offset;
        let mut agg = Aggregator::default();
        let mut tenants: HashMap<TenantId, Option<(Arc<TenantView>, TenantPolicy)>> =
            HashMap::new();
        for d in records {
            self.metrics.records.inc();
            // The tenant's view and policy, looked up once per chunk. An
            // unknown tenant or destroyed keys leave `keys` empty: the record
            // does not open.
            let tenant = match read_header(&d.value) {
                Ok(header) => match tenants.get(&header.tenant) {
                    Some(known) => known.clone(),
                    None => {
                        let known = self.tenant_view(&header.tenant).await?.map(|view| {
                            let policy = TenantPolicy::of(&view.tenant.doc);
                            (view, policy)
                        });
                        tenants.insert(header.tenant, known.clone());
                        known
                    }
                },
                Err(_) => None,
            };
            let keys = tenant.as_ref().and_then(|(view, _)| view.keys.clone());
            let opened = open_record(&d.value, |_, version| {
                keys.as_ref().and_then(|k| k.at_rest(version).cloned())
            });
            match opened {
                Ok(record) => {
                    let (view, policy) = tenant
                        .as_ref()
                        .expect("a record opened, so its tenant exists");
                    let keys = keys.as_ref().expect("a record opened, so its keys exist");
                    self.metrics.events.inc_by(record.events.num_rows() as u64);
                    let subject = Subject {
                        pseudonym: keys.pseudonym().subject(&record.meta.employee),
                        department: view
                            .directory
                            .department_of(&record.meta.employee)
                            .map(str::to_string),
                    };
                    agg.add(&record, &subject, policy);
                }
                Err(e) => {
                    self.metrics.records_undecodable.inc();
                    tracing::error!(partition, offset = d.offset, error = %e, "skipping undecodable log record");
                }
            }
        }
        // Named after the log positions covered: replaying the same records
        // rewrites the same objects instead of adding duplicates.
        let file_name = format!("part-{partition:05}-{first:020}-{last:020}.parquet");
        self.metrics
            .events_dropped
            .with_label_values(&["outside_work_hours"])
            .inc_by(agg.outside_work_hours);
        for (key, batch) in agg.finish() {
            self.metrics.rows_written.inc_by(batch.num_rows() as u64);
            self.lake
                .write_parquet(&key.object_path(&file_name), &batch)
                .await?;
            self.metrics.files_written.inc();
        }
        Ok(last)
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
            if self.records_behind(&targets).await? == 0 {
                self.metrics.lag_records.set(self.lag().await?);
                return Ok(());
            }
            self.step().await?;
        }
    }

    /// Processes until `shutdown` resolves; the round in progress finishes first.
    ///
    /// A transient log error is retried: a failed poll loses nothing, and a
    /// failed commit is covered by the next one. Any other error ends the
    /// run: records already read could not be written, and only a restart
    /// (which resumes from the last commit) brings them back.
    pub async fn run(
        &mut self,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<(), ProcessorError> {
        let mut shutdown = std::pin::pin!(shutdown);
        // Checked between rounds, never during one: a round is not cut off
        // between writing its objects and committing their positions.
        while (&mut shutdown).now_or_never().is_none() {
            match self.step().await {
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
        Ok(())
    }
}
