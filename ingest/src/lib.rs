//! Candor's ingest node: takes sealed batches from agents over HTTP, opens
//! and validates them, turns each into sealed Arrow log records, and answers
//! 202 only once the log says every record is durable. Bad input never
//! reaches the log.

mod error;
mod metrics;

use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

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
use candor_schemas::{Limits, open_batch};
use serde::Serialize;

pub use error::IngestError;
pub use metrics::IngestMetrics;

/// The media type of a sealed batch (WIRE.md).
pub const BATCH_CONTENT_TYPE: &str = "application/vnd.candor.batch";
/// The route agents POST batches to.
pub const BATCH_ROUTE: &str = "/v1/batches";

/// What one ingest node needs to run.
pub struct IngestState {
    /// Derives device keys (WIRE.md): no lookup is needed to check a tag.
    pub master: MasterSecret,
    pub limits: Limits,
    /// Tenants, their at-rest keys and device revocations.
    pub control: Arc<ControlCache>,
    pub log: Arc<dyn LogProducer>,
    pub metrics: IngestMetrics,
}

pub fn router(state: Arc<IngestState>) -> Router {
    Router::new()
        .route(BATCH_ROUTE, post(accept_batch))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(state)
}

#[derive(Debug, Serialize)]
struct Accepted {
    status: &'static str,
    batch_id: String,
    events: usize,
}

async fn accept_batch(State(state): State<Arc<IngestState>>, request: Request) -> Response {
    let started = Instant::now();
    let outcome = handle_batch(&state, request).await;
    state.metrics.observe(&outcome, started.elapsed());
    match outcome {
        Ok(accepted) => (StatusCode::ACCEPTED, axum::Json(accepted)).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn handle_batch(state: &IngestState, request: Request) -> Result<Accepted, IngestError> {
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if content_type != BATCH_CONTENT_TYPE {
        return Err(IngestError::UnsupportedMediaType(content_type.to_string()));
    }
    let body = read_body(request.into_body(), state.limits.max_body_bytes).await?;
    state.metrics.bytes_received.inc_by(body.len() as u64);

    let received_at_ms = now_ms();
    let opened = open_batch(&body, &state.master, &state.limits, received_at_ms)?;
    let h = &opened.header;
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
    let (key_version, key) = keys.current_at_rest();
    let meta = RecordMeta {
        employee: h.employee.clone(),
        device: h.device.clone(),
        batch_id: h.batch_id,
        received_at_ms,
    };
    let log_key = record::log_key(&h.tenant, &h.device);
    let records = record::encode_events(&opened)
        .into_iter()
        .map(|(dataset, events)| Record {
            key: log_key.clone(),
            value: record::seal_record(
                &h.tenant,
                key,
                key_version,
                &rand::random(),
                dataset,
                &meta,
                &events,
            ),
        })
        .collect();
    state.log.append(records).await?;
    let events = opened.batch.event_count();
    state.metrics.events_accepted.inc_by(events as u64);
    Ok(Accepted {
        status: "accepted",
        batch_id: h.batch_id_hex(),
        events,
    })
}

/// Reads at most `max` bytes: a longer body is refused as soon as it passes
/// the cap, without buffering the rest.
async fn read_body(body: Body, max: usize) -> Result<bytes::Bytes, IngestError> {
    axum::body::to_bytes(body, max).await.map_err(|e| {
        // `to_bytes` wraps its length-limit error; anything else is a broken read.
        if std::error::Error::source(&e).is_some_and(|s| s.is::<http_body_util::LengthLimitError>())
        {
            IngestError::BodyTooLarge(max)
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
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}

fn now_ms() -> i64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970");
    i64::try_from(since.as_millis()).expect("time fits i64 ms")
}

/// Serves the ingest routes on `listener` until `shutdown` resolves, then
/// lets in-flight requests finish and flushes the log producer.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<IngestState>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let log = state.log.clone();
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await?;
    if let Err(e) = log.flush(std::time::Duration::from_secs(10)).await {
        tracing::warn!(error = %e, "log producer did not flush cleanly");
    }
    Ok(())
}
