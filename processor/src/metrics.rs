//! Prometheus metrics of a processor, named `candor_processor_<name>_<unit>`.

use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};

#[derive(Clone)]
pub struct ProcessorMetrics {
    pub records: IntCounter,
    pub events: IntCounter,
    pub records_undecodable: IntCounter,
    /// Events the tenant's policy kept out of the lake, by reason.
    pub events_dropped: IntCounterVec,
    pub files_written: IntCounter,
    pub rows_written: IntCounter,
    /// Records in the log not yet committed by this processor's group.
    pub lag_records: IntGauge,
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
        Self {
            events_dropped,
            records: counter("candor_processor_records_total", "Log records consumed"),
            events: counter(
                "candor_processor_events_total",
                "Events in the log records consumed",
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
