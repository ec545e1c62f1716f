//! Every way a batch request can fail, and the one place each maps to an
//! HTTP answer. The body is always JSON: `{"status", "reason", "message"}`.

use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use candor_log::LogError;
use candor_schemas::{RejectReason, Rejection};

/// Seconds an agent should wait before retrying after a 503 or 409.
const RETRY_AFTER_S: u64 = 1;

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error(transparent)]
    Rejected(#[from] Rejection),
    #[error("content type {0:?} is not application/vnd.candor.batch")]
    UnsupportedMediaType(String),
    #[error("body is larger than {0} bytes")]
    BodyTooLarge(usize),
    #[error("request body could not be read: {0}")]
    BadBody(String),
    #[error("the request body did not arrive within {0:?}")]
    BodyTimeout(Duration),
    #[error("this node is handling as many batches as it may; retry later")]
    Overloaded,
    #[error("device {device} sends faster than its quota")]
    DeviceQuota {
        device: String,
        retry_after: Duration,
    },
    #[error("tenant {tenant} sends more events than its quota")]
    TenantQuota {
        tenant: String,
        retry_after: Duration,
    },
    #[error("the same batch is being accepted by another request; retry later")]
    BatchInFlight,
    #[error("tenant {0} does not exist")]
    UnknownTenant(String),
    #[error("tenant {0} is cancelled")]
    TenantCancelled(String),
    #[error("tenant {0}'s keys were destroyed; it takes no more data")]
    KeysDestroyed(String),
    #[error("device {device} key version {key_version} is revoked")]
    RevokedDevice { device: String, key_version: u32 },
    #[error("control plane unavailable: {0}")]
    ControlPlane(String),
    #[error(transparent)]
    Log(#[from] LogError),
    #[error("no such route; agents POST batches to /v1/batches")]
    NoRoute,
    #[error("this route does not take {0}; the Allow header lists what it takes")]
    MethodNotAllowed(String),
}

impl IngestError {
    /// The machine-readable reason code (WIRE.md, "Answers").
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Rejected(r) => r.reason.code(),
            Self::UnsupportedMediaType(_) => "unsupported_media_type",
            Self::BodyTooLarge(_) => RejectReason::BodyTooLarge.code(),
            Self::BadBody(_) => "bad_body",
            Self::BodyTimeout(_) => "request_timeout",
            Self::Overloaded => "overloaded",
            Self::DeviceQuota { .. } => "device_quota_exceeded",
            Self::TenantQuota { .. } => "tenant_quota_exceeded",
            Self::BatchInFlight => "batch_in_flight",
            Self::UnknownTenant(_) => "unknown_tenant",
            Self::TenantCancelled(_) => "tenant_cancelled",
            Self::KeysDestroyed(_) => "tenant_keys_destroyed",
            Self::RevokedDevice { .. } => "revoked_device",
            Self::ControlPlane(_) => "control_plane_unavailable",
            Self::Log(LogError::Full(_)) => "log_queue_full",
            Self::Log(e) if e.is_transient() => "log_unavailable",
            Self::Log(_) => "internal",
            Self::NoRoute => "not_found",
            Self::MethodNotAllowed(_) => "method_not_allowed",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::Rejected(r) => StatusCode::from_u16(r.reason.http_status())
                .expect("reason statuses are valid HTTP codes"),
            Self::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::BodyTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::BadBody(_) => StatusCode::BAD_REQUEST,
            Self::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            Self::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
            Self::DeviceQuota { .. } | Self::TenantQuota { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::BatchInFlight => StatusCode::CONFLICT,
            Self::UnknownTenant(_) | Self::TenantCancelled(_) | Self::KeysDestroyed(_) => {
                StatusCode::FORBIDDEN
            }
            Self::RevokedDevice { .. } => StatusCode::UNAUTHORIZED,
            Self::ControlPlane(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Log(e) if e.is_transient() => StatusCode::SERVICE_UNAVAILABLE,
            Self::Log(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Self::NoRoute => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
        }
    }
}

impl IngestError {
    /// Whole seconds to put in `Retry-After`, for answers worth retrying.
    fn retry_after(&self) -> Option<u64> {
        match self {
            // Rounded up: retrying before the bucket refills is refused again.
            Self::DeviceQuota { retry_after, .. } | Self::TenantQuota { retry_after, .. } => {
                Some(retry_after.as_secs_f64().ceil().max(1.0) as u64)
            }
            Self::BatchInFlight => Some(RETRY_AFTER_S),
            _ if self.status() == StatusCode::SERVICE_UNAVAILABLE => Some(RETRY_AFTER_S),
            _ => None,
        }
    }
}

impl IntoResponse for IngestError {
    fn into_response(self) -> Response {
        let status = self.status();
        let message = match &self {
            Self::Rejected(r) => r.detail.clone(),
            Self::Log(_) => "the log could not confirm the batch is durable; retry later".into(),
            other => other.to_string(),
        };
        if matches!(self, Self::Log(_) | Self::ControlPlane(_)) {
            tracing::warn!(error = %self, "batch not accepted");
        }
        let retry_after = self.retry_after();
        let body = serde_json::json!({
            "status": "rejected",
            "reason": self.reason(),
            "message": message,
        });
        let mut response = (status, axum::Json(body)).into_response();
        if let Some(seconds) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}
