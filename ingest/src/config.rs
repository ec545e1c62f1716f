//! Everything an ingest node's behaviour depends on, with the defaults it
//! ships. Worst-case memory of batch handling is bounded by
//! `max_in_flight × limits.max_body_bytes + decode_slots ×
//! limits.max_decompressed_bytes` (with the defaults: 256 MiB + 8 MiB per
//! decode slot), whatever agents send.

use std::time::Duration;

use candor_http::ServeConfig;
use candor_schemas::Limits;
use candor_schemas::record::RecordFormat;

use crate::quota::QuotaConfig;
use crate::replay::ReplayConfig;

#[derive(Clone)]
pub struct IngestConfig {
    /// Size, event and time caps of one batch. `max_age_ms` is replaced per
    /// batch by the tenant's retention: late data is accepted as far back
    /// as the tenant keeps data, and no further.
    pub limits: Limits,
    pub quotas: QuotaConfig,
    pub replay: ReplayConfig,
    /// Batch requests handled at once; the next one gets 503 `overloaded`.
    pub max_in_flight: usize,
    /// Batches decompressed and validated at once (CPU work: about the
    /// number of cores); other requests wait for a slot.
    pub decode_slots: usize,
    /// How long a client may take to send a request body (slow senders get 408).
    pub body_timeout: Duration,
    /// TLS, connection limits and header timeouts.
    pub serve: ServeConfig,
    /// Layout of the log records written (version 1 only while processors
    /// of an older release still read the log).
    pub record_format: RecordFormat,
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            limits: Limits::default(),
            quotas: QuotaConfig::default(),
            replay: ReplayConfig::default(),
            max_in_flight: 256,
            decode_slots: std::thread::available_parallelism().map_or(2, |n| n.get()),
            body_timeout: Duration::from_secs(30),
            serve: ServeConfig::default(),
            record_format: RecordFormat::CURRENT,
        }
    }
}
