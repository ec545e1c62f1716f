//! The query service's HTTP API. So far: authentication by bearer token and
//! the admin routes of the control plane (owner and admin tokens). Every
//! answer that is not a success is JSON `{"status": "error", "reason",
//! "message"}` with a machine-readable reason.
//!
//! | route | does |
//! | --- | --- |
//! | `GET /v1/admin/tenant` | the token's tenant document (`ETag` = its version) |
//! | `PUT /v1/admin/tenant` | replace it (`If-Match: <version>` to refuse a stale write) |
//! | `GET /v1/admin/directory`, `PUT /v1/admin/directory` | the same for the directory |
//! | `POST /v1/admin/devices` | enroll `{employee, device}`; answers the device key, once |
//! | `POST /v1/admin/devices/{device}/revoke` | revoke the device's current key version |
//! | `GET /v1/admin/tokens`, `POST /v1/admin/tokens` | list tokens; create one (shown once) |
//! | `DELETE /v1/admin/tokens/{id}` | revoke a token |

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{ConnectInfo, DefaultBodyLimit, FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use candor_control::documents::MAX_DIRECTORY_BYTES;
use candor_control::{
    Actor, Admin, AdminError, AuthError, ControlCache, Directory, DocumentError, Principal, Tenant,
    TokenRequest, authenticate,
};
use candor_http::ServeConfig;
use candor_schemas::{DeviceId, EmployeeId, TenantId};
use serde::Deserialize;

/// What the query service needs to run.
pub struct QueryState {
    pub control: Arc<ControlCache>,
    pub admin: Arc<Admin>,
    pub registry: prometheus::Registry,
}

pub fn router(state: Arc<QueryState>) -> Router {
    let admin = Router::new()
        .route("/tenant", get(get_tenant).put(put_tenant))
        .route(
            "/directory",
            get(get_directory)
                .put(put_directory)
                .layer(DefaultBodyLimit::max(MAX_DIRECTORY_BYTES as usize + 4096)),
        )
        .route("/devices", post(enroll_device))
        .route("/devices/{device}/revoke", post(revoke_device))
        .route("/tokens", get(list_tokens).post(create_token))
        .route("/tokens/{id}", axum::routing::delete(revoke_token));
    Router::new()
        .nest("/v1/admin", admin)
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(state)
}

/// Serves on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<QueryState>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    // Plain HTTP with header timeouts for now; TLS settings are the
    // ingest node's and come to the query node with its own API work.
    candor_http::serve(listener, router(state), &ServeConfig::default(), shutdown).await
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error(transparent)]
    Admin(#[from] AdminError),
    #[error("request body: {message}")]
    BadBody { status: StatusCode, message: String },
    #[error("If-Match must be a document version number")]
    BadIfMatch,
}

impl ApiError {
    fn status_and_reason(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::Auth(AuthError::Unavailable(_)) => {
                (StatusCode::SERVICE_UNAVAILABLE, "control_plane_unavailable")
            }
            ApiError::Auth(e) => (StatusCode::UNAUTHORIZED, e.reason()),
            ApiError::Admin(e) => match e {
                AdminError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
                AdminError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
                AdminError::AlreadyExists(_) => (StatusCode::CONFLICT, "already_exists"),
                AdminError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
                AdminError::Invalid(_) => (StatusCode::BAD_REQUEST, "invalid"),
                AdminError::Document(DocumentError::TooLarge { .. }) => {
                    (StatusCode::PAYLOAD_TOO_LARGE, "too_large")
                }
                AdminError::Document(DocumentError::Store(_)) => {
                    (StatusCode::SERVICE_UNAVAILABLE, "store_unavailable")
                }
                AdminError::Audit(_) => (StatusCode::INTERNAL_SERVER_ERROR, "audit_failed"),
                _ => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
            },
            ApiError::BadBody { status, .. } if *status == StatusCode::PAYLOAD_TOO_LARGE => {
                (StatusCode::PAYLOAD_TOO_LARGE, "too_large")
            }
            ApiError::BadBody { status, .. } if *status == StatusCode::UNSUPPORTED_MEDIA_TYPE => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
            ApiError::BadBody { .. } => (StatusCode::BAD_REQUEST, "invalid_json"),
            ApiError::BadIfMatch => (StatusCode::BAD_REQUEST, "bad_if_match"),
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(e: JsonRejection) -> Self {
        ApiError::BadBody {
            status: e.status(),
            message: e.body_text(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, reason) = self.status_and_reason();
        if status.is_server_error() {
            tracing::error!(error = %self, "request failed");
        }
        let body =
            serde_json::json!({"status": "error", "reason": reason, "message": self.to_string()});
        let mut response = (status, Json(body)).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// The authenticated caller of a request, as a principal and as an actor.
pub struct Caller {
    pub principal: Principal,
    pub actor: Actor,
}

impl FromRequestParts<Arc<QueryState>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<QueryState>,
    ) -> Result<Self, ApiError> {
        let token = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or(AuthError::Malformed)?;
        let now = chrono::Utc::now().timestamp_millis();
        let principal = authenticate(&state.control, token.trim(), now).await?;
        let source = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map_or_else(|| "unknown".into(), |c| c.0.ip().to_string());
        let actor = Actor {
            id: principal.token_id.clone(),
            role: Some(principal.role),
            tenant: Some(principal.tenant.clone()),
            source,
        };
        Ok(Caller { principal, actor })
    }
}

fn if_match(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    headers
        .get(header::IF_MATCH)
        .map(|v| {
            v.to_str()
                .ok()
                .map(|s| s.trim().trim_matches('"'))
                .and_then(|s| s.parse().ok())
                .ok_or(ApiError::BadIfMatch)
        })
        .transpose()
}

fn versioned<T: serde::Serialize>(version: u64, doc: T) -> Response {
    let mut response =
        Json(serde_json::json!({"version": version, "document": doc})).into_response();
    response.headers_mut().insert(
        header::ETAG,
        HeaderValue::from_str(&format!("\"{version}\"")).expect("digits are a valid header"),
    );
    response
}

/// After a change, this node sees it at once (others at their next refresh).
async fn reload(state: &QueryState, tenant: &TenantId) {
    if let Err(e) = state.control.reload(tenant).await {
        tracing::warn!(%tenant, error = %e, "could not reload after a change");
    }
}

async fn get_tenant(
    State(state): State<Arc<QueryState>>,
    caller: Caller,
) -> Result<Response, ApiError> {
    let t = state
        .admin
        .get_tenant(&caller.actor, &caller.principal.tenant)
        .await?;
    Ok(versioned(t.version, t.doc))
}

async fn put_tenant(
    State(state): State<Arc<QueryState>>,
    caller: Caller,
    headers: HeaderMap,
    body: Result<Json<Tenant>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(tenant) = body?;
    if tenant.id != caller.principal.tenant {
        return Err(AdminError::Forbidden(format!(
            "the document names tenant {}; this token belongs to {}",
            tenant.id, caller.principal.tenant
        ))
        .into());
    }
    let version = state
        .admin
        .update_tenant(&caller.actor, &tenant, if_match(&headers)?)
        .await?;
    reload(&state, &tenant.id).await;
    Ok(versioned(version, tenant))
}

async fn get_directory(
    State(state): State<Arc<QueryState>>,
    caller: Caller,
) -> Result<Response, ApiError> {
    let d = state
        .admin
        .get_directory(&caller.actor, &caller.principal.tenant)
        .await?;
    Ok(versioned(d.version, d.doc))
}

async fn put_directory(
    State(state): State<Arc<QueryState>>,
    caller: Caller,
    headers: HeaderMap,
    body: Result<Json<Directory>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(directory) = body?;
    let tenant = &caller.principal.tenant;
    let version = state
        .admin
        .load_directory(&caller.actor, tenant, &directory, if_match(&headers)?)
        .await?;
    reload(&state, tenant).await;
    Ok(
        Json(serde_json::json!({"version": version, "employees": directory.employees.len()}))
            .into_response(),
    )
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EnrollRequest {
    employee: EmployeeId,
    device: DeviceId,
}

async fn enroll_device(
    State(state): State<Arc<QueryState>>,
    caller: Caller,
    body: Result<Json<EnrollRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(req) = body?;
    let enrolled = state
        .admin
        .enroll_device(
            &caller.actor,
            &caller.principal.tenant,
            &req.employee,
            &req.device,
        )
        .await?;
    Ok((StatusCode::CREATED, Json(enrolled)).into_response())
}

async fn revoke_device(
    State(state): State<Arc<QueryState>>,
    caller: Caller,
    Path(device): Path<String>,
) -> Result<Response, ApiError> {
    let device =
        DeviceId::new(device).map_err(|e| AdminError::Invalid(format!("device id: {e}")))?;
    let tenant = &caller.principal.tenant;
    let doc = state
        .admin
        .revoke_device(&caller.actor, tenant, &device)
        .await?;
    reload(&state, tenant).await;
    Ok(Json(doc).into_response())
}

async fn list_tokens(
    State(state): State<Arc<QueryState>>,
    caller: Caller,
) -> Result<Response, ApiError> {
    let tokens = state
        .admin
        .list_tokens(&caller.actor, &caller.principal.tenant)
        .await?;
    Ok(Json(serde_json::json!({"tokens": tokens})).into_response())
}

async fn create_token(
    State(state): State<Arc<QueryState>>,
    caller: Caller,
    body: Result<Json<TokenRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(req) = body?;
    let tenant = &caller.principal.tenant;
    let mut created = state
        .admin
        .create_token(&caller.actor, tenant, &req)
        .await?;
    created.record.sha256.clear();
    reload(&state, tenant).await;
    Ok((StatusCode::CREATED, Json(created)).into_response())
}

async fn revoke_token(
    State(state): State<Arc<QueryState>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let tenant = &caller.principal.tenant;
    let record = state.admin.revoke_token(&caller.actor, tenant, &id).await?;
    reload(&state, tenant).await;
    Ok(Json(record).into_response())
}

async fn readyz(State(state): State<Arc<QueryState>>) -> Response {
    let r = state.control.readiness();
    let status = if r.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, r.detail).into_response()
}

async fn metrics_text(State(state): State<Arc<QueryState>>) -> Response {
    candor_http::metrics_response(&state.registry)
}
