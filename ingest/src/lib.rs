//! Candor's ingest node: takes sealed batches from agents over HTTP, opens
//! and validates them, turns each into sealed Arrow log records, and answers
//! 202 only once the log says every record is durable. Bad input never
//! reaches the log.

mod config;
mod error;
mod metrics;
mod quota;
mod replay;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use candor_control::ControlCache;
use candor_log::{LogProducer, Record};
use candor_schemas::keys::MasterSecret;
use candor_schemas::record::{self, RecordMeta};
use candor_schemas::{Limits, authenticate, decode};
use serde::Serialize;
use tokio::sync::Semaphore;

pub use config::IngestConfig;
pub use error::IngestError;
pub use metrics::{IngestMetrics, Stage};
pub use quota::{QuotaConfig, Quotas};
pub use replay::{Claim, ReplayConfig, ReplayWindow};

/// The media type of a sealed batch (WIRE.md).
pub const BATCH_CONTENT_TYPE: &str = "application/vnd.candor.batch";
/// The route agents POST batches to.
pub const BATCH_ROUTE: &str = "/v1/batches";

/// What one ingest node needs to run.
pub struct IngestState {
    /// Derives device keys (WIRE.md): no lookup is needed to check a tag.
    master: MasterSecret,
    config: IngestConfig,
    /// Tenants, their at-rest keys and device revocations.
    control: Arc<ControlCache>,
    log: Arc<dyn LogProducer>,
    metrics: IngestMetrics,
    quotas: Quotas,
    replay: ReplayWindow,
    in_flight: Semaphore,
    decode_slots: Semaphore,
}

impl IngestState {
    /// Fails only on a configuration that could never accept a batch.
    pub fn new(
        master: MasterSecret,
        config: IngestConfig,
        control: Arc<ControlCache>,
        log: Arc<dyn LogProducer>,
        metrics: IngestMetrics,
    ) -> Result<Self, String> {
        Ok(Self {
            quotas: Quotas::new(config.quotas, config.limits.max_events)?,
            replay: ReplayWindow::new(config.replay),
            in_flight: Semaphore::new(config.max_in_flight),
            decode_slots: Semaphore::new(config.decode_slots.max(1)),
            master,
            config,
            control,
            log,
            metrics,
        })
    }

    pub fn config(&self) -> &IngestConfig {
        &self.config
    }
}

/// The node's routes. Every other path is answered 404 `not_found`, and a
/// method a route does not take (`GET /v1/batches`) 405
/// `method_not_allowed` with an `Allow` header, each with the JSON body
/// of every refusal.
pub fn router(state: Arc<IngestState>) -> Router {
    Router::new()
        .route(BATCH_ROUTE, post(accept_batch))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .fallback(|| async { IngestError::NoRoute })
        .method_not_allowed_fallback(|method: axum::http::Method| async move {
            IngestError::MethodNotAllowed(method.to_string())
        })
        .with_state(state)
}

#[derive(Debug, Serialize)]
struct Accepted {
    status: &'static str,
    batch_id: String,
    /// Events in the batch; 0 when it is a replay of one accepted before.
    events: usize,
    /// True when this batch id was accepted before and is not appended again.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    replay: bool,
}

async fn accept_batch(State(state): State<Arc<IngestState>>, request: Request) -> Response {
    let started = Instant::now();
    // Refused before the body is read: an overloaded node spends nothing more.
    let Ok(_permit) = state.in_flight.try_acquire() else {
        let e = IngestError::Overloaded;
        state
            .metrics
            .observe(e.status().as_u16(), e.reason(), started.elapsed());
        return e.into_response();
    };
    let outcome = {
        // A guard, because the future is dropped if the client goes away.
        let _counted = InFlightGauge::enter(&state.metrics.in_flight);
        handle_batch(&state, request).await
    };
    let (status, reason) = match &outcome {
        Ok(a) if a.replay => (202, "replay"),
        Ok(_) => (202, "accepted"),
        Err(e) => (e.status().as_u16(), e.reason()),
    };
    state.metrics.observe(status, reason, started.elapsed());
    match outcome {
        Ok(accepted) => (StatusCode::ACCEPTED, axum::Json(accepted)).into_response(),
        Err(e) => e.into_response(),
    }
}

/// Counts a request in `candor_ingest_in_flight_requests` while it lives.
struct InFlightGauge<'a>(&'a prometheus::IntGauge);

impl<'a> InFlightGauge<'a> {
    fn enter(gauge: &'a prometheus::IntGauge) -> Self {
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for InFlightGauge<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// One batch, in the order that keeps each check cheap for whoever fails
/// it: size and media type, tag (no lookup, no inflation for forgeries),
/// tenant and device standing, replay and device quota (no inflation for
/// retries and floods), then decode and validate, tenant quota, encode and
/// append.
async fn handle_batch(state: &IngestState, request: Request) -> Result<Accepted, IngestError> {
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if content_type != BATCH_CONTENT_TYPE {
        return Err(IngestError::UnsupportedMediaType(content_type.to_string()));
    }
    let limits = &state.config.limits;
    let body = tokio::time::timeout(
        state.config.body_timeout,
        read_body(request.into_body(), limits.max_body_bytes),
    )
    .await
    .map_err(|_| IngestError::BodyTimeout(state.config.body_timeout))??;
    state.metrics.bytes_received.inc_by(body.len() as u64);
    let received_at_ms = now_ms();

    let timer = Instant::now();
    let authentic = on_cpu(body.len() > LIGHT_FRAME_BYTES, || {
        authenticate(&body, &state.master, limits)
    })?;
    state.metrics.stage(Stage::Open, timer.elapsed());
    let h = &authentic.header;
    // Only now, with the tag verified, is the control plane asked: a forged
    // envelope cannot make this node look tenants up.
    let view = state
        .control
        .get(&h.tenant)
        .await
        .map_err(|e| IngestError::ControlPlane(e.to_string()))?
        .ok_or_else(|| IngestError::UnknownTenant(h.tenant.to_string()))?;
    if !view.tenant.doc.is_active() {
        return Err(IngestError::TenantCancelled(h.tenant.to_string()));
    }
    if view.revocations.is_revoked(&h.device, h.key_version) {
        return Err(IngestError::RevokedDevice {
            device: h.device.to_string(),
            key_version: h.key_version,
        });
    }
    let keys = view
        .keys
        .as_ref()
        .ok_or_else(|| IngestError::KeysDestroyed(h.tenant.to_string()))?;

    let claim = match state.replay.claim(h) {
        Claim::Fresh(claim) => claim,
        Claim::Accepted => {
            return Ok(Accepted {
                status: "accepted",
                batch_id: h.batch_id_hex(),
                events: 0,
                replay: true,
            });
        }
        Claim::InFlight => return Err(IngestError::BatchInFlight),
    };
    let log_key = record::log_key(&h.tenant, &h.device);
    state
        .quotas
        .take_device_batch(&log_key)
        .map_err(|retry_after| IngestError::DeviceQuota {
            device: h.device.to_string(),
            retry_after,
        })?;

    // Late data is welcome as far back as the tenant keeps data.
    let tenant_limits = Limits {
        max_age_ms: i64::from(view.tenant.doc.retention_days()) * 86_400_000,
        ..*limits
    };
    let heavy = heavy(&authentic.frame);
    if heavy {
        state.metrics.heavy_batches.inc();
    }
    let batch = {
        let _slot = state
            .decode_slots
            .acquire()
            .await
            .expect("the semaphore is never closed");
        let timer = Instant::now();
        let decoded = on_cpu(heavy, || {
            decode(&authentic.frame, &tenant_limits, received_at_ms)
        });
        state.metrics.stage(Stage::Validate, timer.elapsed());
        decoded
    };
    let batch = batch.inspect_err(|rejection| {
        if let Some(events) = rejection.events {
            state
                .metrics
                .rejected_events(rejection.reason.code(), events);
        }
    })?;
    let events = batch.event_count();
    state
        .quotas
        .take_tenant_events(&h.tenant, events)
        .map_err(|retry_after| {
            state
                .metrics
                .rejected_events("tenant_quota_exceeded", events);
            IngestError::TenantQuota {
                tenant: h.tenant.to_string(),
                retry_after,
            }
        })?;

    let timer = Instant::now();
    let (key_version, key) = keys.current_at_rest();
    let meta = RecordMeta {
        employee: h.employee.clone(),
        device: h.device.clone(),
        batch_id: h.batch_id,
        received_at_ms,
    };
    let records = on_cpu(heavy, || {
        record::seal_batch(
            state.config.record_format,
            &h.tenant,
            key,
            key_version,
            &meta,
            &batch.datasets,
            rand::random,
        )
    })
    .into_iter()
    .map(|value| Record {
        key: log_key.clone(),
        value,
    })
    .collect();
    state.metrics.stage(Stage::Encode, timer.elapsed());

    let timer = Instant::now();
    let appended = state.log.append(records).await;
    state.metrics.stage(Stage::Produce, timer.elapsed());
    if let Err(e) = appended {
        state
            .metrics
            .rejected_events(IngestError::Log(e.clone()).reason(), events);
        return Err(e.into());
    }
    claim.accepted();
    state.metrics.events_accepted.inc_by(events as u64);
    Ok(Accepted {
        status: "accepted",
        batch_id: h.batch_id_hex(),
        events,
        replay: false,
    })
}

/// Batches a 5-minute upload is far below: decoding one costs tens of
/// microseconds, less than handing it to another thread.
const LIGHT_FRAME_BYTES: usize = 16 * 1024;
const LIGHT_JSON_BYTES: u64 = 256 * 1024;

/// Whether decoding `frame` is heavy CPU work: a large frame, or one that
/// inflates (or may inflate: it does not say) past what a light batch holds.
fn heavy(frame: &[u8]) -> bool {
    frame.len() > LIGHT_FRAME_BYTES
        || candor_schemas::intake::declared_size(frame).is_none_or(|size| size > LIGHT_JSON_BYTES)
}

/// Runs `work` on this thread when light, and otherwise with the reactor
/// told this worker blocks (`block_in_place`: its other tasks move to
/// another worker meanwhile), so a large batch never stalls the requests
/// queued behind it. A current-thread runtime (some tests) runs it inline.
fn on_cpu<T>(heavy: bool, work: impl FnOnce() -> T) -> T {
    use tokio::runtime::{Handle, RuntimeFlavor};
    if heavy && Handle::current().runtime_flavor() == RuntimeFlavor::MultiThread {
        tokio::task::block_in_place(work)
    } else {
        work()
    }
}

/// Reads at most `max` bytes: a longer body is refused as soon as it passes
/// the cap, without buffering the rest. A body past the listener's deadline
/// (`ServeConfig::request_body_timeout`) is a 408 like one past the node's
/// own `body_timeout`.
async fn read_body(body: Body, max: usize) -> Result<bytes::Bytes, IngestError> {
    axum::body::to_bytes(body, max).await.map_err(|e| {
        // `to_bytes` wraps its length-limit error; anything else is a broken read.
        if std::error::Error::source(&e).is_some_and(|s| s.is::<http_body_util::LengthLimitError>())
        {
            IngestError::BodyTooLarge(max)
        } else if let Some(candor_http::BodyTimeout(timeout)) = candor_http::BodyTimeout::find(&e) {
            IngestError::BodyTimeout(*timeout)
        } else {
            IngestError::BadBody(e.to_string())
        }
    })
}

/// Ready when the log answers and the control-plane copy is fresh enough.
async fn readyz(State(state): State<Arc<IngestState>>) -> Response {
    let control = state.control.readiness();
    match state.log.check().await {
        Ok(()) if control.ready => {
            (StatusCode::OK, format!("ready\n{}", control.detail)).into_response()
        }
        Ok(()) => (StatusCode::SERVICE_UNAVAILABLE, control.detail).into_response(),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("log: {e}\n{}", control.detail),
        )
            .into_response(),
    }
}

async fn metrics_text(State(state): State<Arc<IngestState>>) -> Response {
    let m = &state.metrics;
    m.log_queue
        .set(i64::try_from(state.log.queue_depth()).unwrap_or(i64::MAX));
    m.replay_entries
        .set(i64::try_from(state.replay.len()).unwrap_or(i64::MAX));
    candor_http::metrics_response(m.registry())
}

fn now_ms() -> i64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970");
    i64::try_from(since.as_millis()).expect("time fits i64 ms")
}

/// Serves the ingest routes on `listener` (TLS and timeouts from the
/// node's config) until `shutdown` resolves, then lets in-flight requests
/// finish and flushes the log producer.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<IngestState>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let log = state.log.clone();
    // Quota buckets of quiet devices are dropped once a minute.
    let housekeeping = tokio::spawn({
        let state = state.clone();
        async move {
            let mut every = tokio::time::interval(Duration::from_secs(60));
            loop {
                every.tick().await;
                state.quotas.forget_idle();
            }
        }
    });
    let serve_config = state.config.serve.clone();
    let served = candor_http::serve(listener, router(state), &serve_config, shutdown).await;
    housekeeping.abort();
    if let Err(e) = log.flush(Duration::from_secs(10)).await {
        tracing::warn!(error = %e, "log producer did not flush cleanly");
    }
    served
}
