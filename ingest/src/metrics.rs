//! Prometheus metrics of an ingest node, named `candor_ingest_<name>_<unit>`.

use std::time::Duration;

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, Opts, Registry, TextEncoder,
};

use crate::IngestError;

/// Ingest's metrics, registered in a registry that other components of the
/// same process may share (standalone mode serves them all on one `/metrics`).
pub struct IngestMetrics {
    registry: Registry,
    requests: IntCounterVec,
    pub bytes_received: IntCounter,
    pub events_accepted: IntCounter,
    request_seconds: Histogram,
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
            "Events in batches answered 202",
        )
        .expect("valid metric");
        let request_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "candor_ingest_request_duration_seconds",
                "Time from request to answer for batch requests",
            )
            .buckets(prometheus::exponential_buckets(0.0005, 2.0, 14).expect("valid buckets")),
        )
        .expect("valid metric");
        for c in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(bytes_received.clone()),
            Box::new(events_accepted.clone()),
            Box::new(request_seconds.clone()),
        ] {
            registry.register(c).expect("unique metric names");
        }
        Self {
            registry,
            requests,
            bytes_received,
            events_accepted,
            request_seconds,
        }
    }

    pub(crate) fn observe<T>(&self, outcome: &Result<T, IngestError>, elapsed: Duration) {
        let (status, reason) = match outcome {
            Ok(_) => (202, "accepted"),
            Err(e) => (e.status().as_u16(), e.reason()),
        };
        self.requests
            .with_label_values(&[status.to_string().as_str(), reason])
            .inc();
        self.request_seconds.observe(elapsed.as_secs_f64());
    }

    /// Every metric of the registry (not only ingest's), in text format.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding to memory");
        String::from_utf8(out).expect("prometheus text is UTF-8")
    }
}

impl Default for IngestMetrics {
    fn default() -> Self {
        Self::new(Registry::new())
    }
}
