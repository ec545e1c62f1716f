//! Prometheus metrics of an ingest node, named `candor_ingest_<name>_<unit>`.

use std::time::Duration;

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
};

/// The steps of a batch request, each timed on its own.
#[derive(Debug, Clone, Copy)]
pub enum Stage {
    /// Envelope parse and tag check.
    Open,
    /// Decompression, JSON parse and event validation.
    Validate,
    /// Arrow encoding and sealing of the log records.
    Encode,
    /// Until the log confirmed every record durable.
    Produce,
}

impl Stage {
    fn label(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::Validate => "validate",
            Self::Encode => "encode",
            Self::Produce => "produce",
        }
    }
}

/// Ingest's metrics, registered in a registry that other components of the
/// same process may share (standalone mode serves them all on one `/metrics`).
pub struct IngestMetrics {
    registry: Registry,
    requests: IntCounterVec,
    pub bytes_received: IntCounter,
    pub events_accepted: IntCounter,
    /// Authentic batches decoded with the worker handed over (large, or
    /// not saying what they inflate to).
    pub heavy_batches: IntCounter,
    events_rejected: IntCounterVec,
    request_seconds: Histogram,
    stage_seconds: HistogramVec,
    pub in_flight: IntGauge,
    pub log_queue: IntGauge,
    pub replay_entries: IntGauge,
}

impl IngestMetrics {
    pub fn new(registry: Registry) -> Self {
        let requests = IntCounterVec::new(
            Opts::new(
                "candor_ingest_requests_total",
                "Batch requests by status and reason",
            ),
            &["status", "reason"],
        )
        .expect("valid metric");
        let bytes_received = IntCounter::new(
            "candor_ingest_received_bytes_total",
            "Bytes of batch bodies read",
        )
        .expect("valid metric");
        let events_accepted = IntCounter::new(
            "candor_ingest_events_accepted_total",
            "Events in batches answered 202 (replays not counted again)",
        )
        .expect("valid metric");
        let heavy_batches = IntCounter::new(
            "candor_ingest_heavy_batches_total",
            "Authentic batches decoded off the request's worker thread (large, or of undeclared size)",
        )
        .expect("valid metric");
        let events_rejected = IntCounterVec::new(
            Opts::new(
                "candor_ingest_events_rejected_total",
                "Events in batches refused after they were decoded, by reason",
            ),
            &["reason"],
        )
        .expect("valid metric");
        let buckets = prometheus::exponential_buckets(0.000_05, 2.0, 16).expect("valid buckets");
        let request_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "candor_ingest_request_duration_seconds",
                "Time from request to answer for batch requests",
            )
            .buckets(buckets.clone()),
        )
        .expect("valid metric");
        let stage_seconds = HistogramVec::new(
            HistogramOpts::new(
                "candor_ingest_stage_duration_seconds",
                "Time of each step of a batch request: open, validate, encode, produce",
            )
            .buckets(buckets),
            &["stage"],
        )
        .expect("valid metric");
        let in_flight = IntGauge::new(
            "candor_ingest_in_flight_requests",
            "Batch requests being handled",
        )
        .expect("valid metric");
        let log_queue = IntGauge::new(
            "candor_ingest_log_queue_depth",
            "Records (Kafka) or appends (spool) waiting to become durable",
        )
        .expect("valid metric");
        let replay_entries = IntGauge::new(
            "candor_ingest_replay_window_entries",
            "Batch ids remembered to answer retries without appending again",
        )
        .expect("valid metric");
        for c in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(bytes_received.clone()),
            Box::new(events_accepted.clone()),
            Box::new(heavy_batches.clone()),
            Box::new(events_rejected.clone()),
            Box::new(request_seconds.clone()),
            Box::new(stage_seconds.clone()),
            Box::new(in_flight.clone()),
            Box::new(log_queue.clone()),
            Box::new(replay_entries.clone()),
        ] {
            registry.register(c).expect("unique metric names");
        }
        Self {
            registry,
            requests,
            bytes_received,
            events_accepted,
            heavy_batches,
            events_rejected,
            request_seconds,
            stage_seconds,
            in_flight,
            log_queue,
            replay_entries,
        }
    }

    /// Counts one answered batch request: 202 with reason `accepted` or
    /// `replay`, or an error's status and reason.
    pub(crate) fn observe(&self, status: u16, reason: &str, elapsed: Duration) {
        self.requests
            .with_label_values(&[status.to_string().as_str(), reason])
            .inc();
        self.request_seconds.observe(elapsed.as_secs_f64());
    }

    pub(crate) fn rejected_events(&self, reason: &str, events: usize) {
        self.events_rejected
            .with_label_values(&[reason])
            .inc_by(events as u64);
    }

    pub(crate) fn stage(&self, stage: Stage, elapsed: Duration) {
        self.stage_seconds
            .with_label_values(&[stage.label()])
            .observe(elapsed.as_secs_f64());
    }

    /// The registry ingest's metrics are in (other components' too, in
    /// standalone mode).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }
}

impl Default for IngestMetrics {
    fn default() -> Self {
        Self::new(Registry::new())
    }
}
