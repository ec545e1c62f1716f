//! Prometheus metrics of a processor, named `candor_processor_<name>_<unit>`.

use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

#[derive(Clone)]
pub struct ProcessorMetrics {
    pub records: IntCounter,
    pub events: IntCounter,
    /// Events whose flush is committed: equal to the events ingest accepted
    /// exactly when every accepted batch is in the lake.
    pub events_committed: IntCounter,
    pub records_undecodable: IntCounter,
    /// Events the tenant's policy kept out of the lake, by reason.
    pub events_dropped: IntCounterVec,
    pub files_written: IntCounter,
    pub rows_written: IntCounter,
    pub bytes_written: IntCounter,
    /// Flushes whose processor stopped after committing their state and
    /// before all of their rows, completed by this one (see `ledger`).
    pub flushes_completed: IntCounter,
    /// Times this processor left and rejoined its group because a partition
    /// had no working reader.
    pub group_rejoins: IntCounter,
    /// Log positions committed (each after its objects were durable).
    pub commits: IntCounter,
    /// Flushes retried because the lake could not be written.
    pub lake_retries: IntCounter,
    /// One partition's flush: aggregate, write the objects, commit them.
    pub flush_seconds: Histogram,
    /// One flush's Delta commits: the state table's version, then one per
    /// dataset table it wrote (retries included). What the table format
    /// costs a flush beyond writing its objects.
    pub table_commit_seconds: Histogram,
    /// Records in the log not yet committed by this processor's group.
    pub lag_records: IntGauge,
    /// The same, per log partition.
    pub partition_lag_records: IntGaugeVec,
}

impl ProcessorMetrics {
    pub fn register(registry: &Registry) -> Self {
        let counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric name");
            c
        };
        let lag_records = IntGauge::new(
            "candor_processor_lag_records",
            "Records in the log not yet committed by the processor's group",
        )
        .expect("valid metric");
        registry
            .register(Box::new(lag_records.clone()))
            .expect("unique metric name");
        let events_dropped = IntCounterVec::new(
            Opts::new(
                "candor_processor_events_dropped_total",
                "Events kept out of the lake by the tenant's policy, by reason",
            ),
            &["reason"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(events_dropped.clone()))
            .expect("unique metric name");
        let flush_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "candor_processor_flush_seconds",
                "Time to aggregate one partition's chunk and make its objects durable",
            )
            .buckets(prometheus::exponential_buckets(0.001, 2.0, 16).expect("valid buckets")),
        )
        .expect("valid metric");
        registry
            .register(Box::new(flush_seconds.clone()))
            .expect("unique metric name");
        let table_commit_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "candor_processor_table_commit_seconds",
                "Time to commit one flush to the lake's Delta tables (the state table, then each dataset table written), retries included",
            )
            .buckets(prometheus::exponential_buckets(0.0005, 2.0, 16).expect("valid buckets")),
        )
        .expect("valid metric");
        registry
            .register(Box::new(table_commit_seconds.clone()))
            .expect("unique metric name");
        let partition_lag_records = IntGaugeVec::new(
            Opts::new(
                "candor_processor_partition_lag_records",
                "Records of a log partition not yet committed by the processor's group",
            ),
            &["partition"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(partition_lag_records.clone()))
            .expect("unique metric name");
        Self {
            partition_lag_records,
            events_dropped,
            flush_seconds,
            table_commit_seconds,
            bytes_written: counter(
                "candor_processor_bytes_written_total",
                "Bytes of Parquet objects written",
            ),
            commits: counter(
                "candor_processor_commits_total",
                "Commits of log positions, each after the objects covering them were durable",
            ),
            lake_retries: counter(
                "candor_processor_lake_retries_total",
                "Flushes retried because the lake could not be written",
            ),
            group_rejoins: counter(
                "candor_processor_group_rejoins_total",
                "Times the processor rejoined its group because a partition with records waiting had no commit from anyone",
            ),
            flushes_completed: counter(
                "candor_processor_flushes_completed_total",
                "Flushes another processor committed the state of and not every table's rows, completed on taking the partition over",
            ),
            records: counter("candor_processor_records_total", "Log records consumed"),
            events: counter(
                "candor_processor_events_total",
                "Events in the log records consumed",
            ),
            events_committed: counter(
                "candor_processor_events_committed_total",
                "Events of log records whose flush is committed (rows in the lake, log positions committed); \
                 duplicates and events outside work hours count too, as they are settled",
            ),
            records_undecodable: counter(
                "candor_processor_records_undecodable_total",
                "Log records that could not be opened or decoded, logged and skipped",
            ),
            files_written: counter(
                "candor_processor_files_written_total",
                "Parquet objects written",
            ),
            rows_written: counter("candor_processor_rows_written_total", "Lake rows written"),
            lag_records,
        }
    }
}

impl Default for ProcessorMetrics {
    /// Metrics kept in a private registry (for runs that do not export them).
    fn default() -> Self {
        Self::register(&Registry::new())
    }
}

/// Prometheus metrics of the lake's maintenance jobs (compaction and
/// retention) run by a processor or `candor standalone`.
#[derive(Clone)]
pub struct MaintenanceMetrics {
    /// Runs by job (`compaction`, `retention`) and outcome (`ok`,
    /// `failed`).
    pub runs: IntCounterVec,
    pub objects_compacted: IntCounter,
    pub merged_objects_written: IntCounter,
    pub partitions_deleted: IntCounter,
}

impl MaintenanceMetrics {
    pub fn register(registry: &Registry) -> Self {
        let runs = IntCounterVec::new(
            Opts::new(
                "candor_processor_maintenance_runs_total",
                "Runs of the lake's maintenance jobs, by job and outcome",
            ),
            &["job", "outcome"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(runs.clone()))
            .expect("unique metric name");
        let counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric name");
            c
        };
        Self {
            runs,
            objects_compacted: counter(
                "candor_processor_objects_compacted_total",
                "Small lake objects merged into larger ones (and deleted)",
            ),
            merged_objects_written: counter(
                "candor_processor_merged_objects_written_total",
                "Merged objects written by compaction",
            ),
            partitions_deleted: counter(
                "candor_processor_retention_partitions_deleted_total",
                "Date partitions deleted by retention (each audited first)",
            ),
        }
    }
}
