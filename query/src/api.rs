//! The query service's HTTP API: authentication by bearer token, KPIs and
//! SQL over the caller's scoped views, and the admin routes of the control
//! plane (owner and admin tokens). Every answer that is not a success is
//! JSON `{"status": "error", "reason", "message"}` with a machine-readable
//! reason. Every KPI and SQL request, answered or refused, is written to the
//! tenant's audit chain before its answer is sent; if the audit log cannot
//! be written, nothing is answered.
//!
//! The routes are [`routes`]; `query/api/openapi.json` (served at
//! `GET /v1/openapi.json`) documents each with its parameters, bodies and
//! answers, and a test holds the two equal both ways.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{ConnectInfo, DefaultBodyLimit, FromRequestParts, Path, State};
use axum::handler::Handler;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodFilter, MethodRouter, on};
use axum::{Json, Router};
use candor_control::documents::MAX_DIRECTORY_BYTES;
use candor_control::{
    Actor, Admin, AdminError, AuditError, AuditEvent, AuthError, ControlCache, Directory,
    DocumentError, Principal, PrivacyMode, Role, Tenant, TenantView, TokenKind, TokenRequest,
    authenticate, authenticate_owner_of_cancelled,
};
use candor_http::ServeConfig;
use candor_schemas::{DeviceId, EmployeeId, TenantId};
use serde::Deserialize;

use crate::QueryError;
use crate::delivery::{self, Delivered, RetryPolicy};
use crate::extract::{self, ExtractRequest, Period};
use crate::kpi::{self, GroupBy, KpiRequest, KpiRow};
use crate::lake::{QueryLake, TableVersions};
use crate::portal;
use crate::scope::{IdentityCache, Rows, Scope, ScopeError};
use crate::session::{Answer, Limits, ScopedSession};
use crate::team_only::{self, Published};
use candor_schemas::keys::MasterSecret;

/// What the query service needs to run.
pub struct QueryState {
    pub control: Arc<ControlCache>,
    pub admin: Arc<Admin>,
    pub lake: Arc<QueryLake>,
    pub limits: Limits,
    pub registry: prometheus::Registry,
    /// Derives each tenant's extract signing key.
    master: MasterSecret,
    pub delivery: RetryPolicy,
    http: reqwest::Client,
    identities: IdentityCache,
    metrics: QueryMetrics,
}

impl QueryState {
    pub fn new(
        control: Arc<ControlCache>,
        admin: Arc<Admin>,
        lake: Arc<QueryLake>,
        master: MasterSecret,
        registry: prometheus::Registry,
    ) -> Self {
        lake.engine().register_metrics(&registry);
        Self {
            control,
            admin,
            lake,
            master,
            delivery: RetryPolicy::default(),
            http: reqwest::Client::new(),
            limits: Limits::default(),
            metrics: QueryMetrics::register(&registry),
            registry,
            identities: IdentityCache::default(),
        }
    }
}

struct QueryMetrics {
    requests: prometheus::IntCounterVec,
    seconds: prometheus::HistogramVec,
}

impl QueryMetrics {
    fn register(registry: &prometheus::Registry) -> Self {
        let requests = prometheus::IntCounterVec::new(
            prometheus::Opts::new(
                "candor_query_requests_total",
                "KPI and SQL requests by route and outcome (ok or the error reason)",
            ),
            &["route", "outcome"],
        )
        .expect("valid metric");
        let seconds = prometheus::HistogramVec::new(
            prometheus::HistogramOpts::new(
                "candor_query_duration_seconds",
                "Time to answer a KPI or SQL request, audit included",
            )
            .buckets(prometheus::exponential_buckets(0.001, 2.0, 16).expect("valid buckets")),
            &["route"],
        )
        .expect("valid metric");
        for c in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(seconds.clone()),
        ] {
            // Registering twice (two services on one registry) keeps the first.
            let _ = registry.register(c);
        }
        Self { requests, seconds }
    }
}

/// One served route: its method, its path as the router matches it, and
/// its handler.
pub struct Route {
    pub method: Method,
    pub path: &'static str,
    handler: MethodRouter<Arc<QueryState>>,
}

impl Route {
    fn new<H, T>(method: Method, path: &'static str, handler: H) -> Self
    where
        H: Handler<T, Arc<QueryState>>,
        T: 'static,
    {
        let filter = MethodFilter::try_from(method.clone()).expect("a method a route can take");
        Route {
            method,
            path,
            handler: on(filter, handler),
        }
    }

    /// Bodies up to `bytes` (the default limit is 2 MiB).
    fn body_limit(mut self, bytes: usize) -> Self {
        self.handler = self.handler.layer(DefaultBodyLimit::max(bytes));
        self
    }
}

/// Every route the node serves. The router is built from this list alone,
/// and a test holds it equal to the OpenAPI document, both ways, so what
/// is served is what is documented. `{name}` of the KPI route is one of
/// [`KPI_NAMES`].
pub fn routes() -> Vec<Route> {
    use Method as M;
    vec![
        Route::new(M::GET, "/v1/kpi/{name}", kpi_page),
        Route::new(M::POST, "/v1/extracts", request_extract),
        Route::new(M::GET, "/v1/audit.csv", export_audit),
        Route::new(M::GET, "/v1/openapi.json", openapi),
        Route::new(M::POST, "/v1/sql", run_sql).body_limit(MAX_SQL_BODY_BYTES),
        Route::new(M::GET, "/v1/admin/tenant", get_tenant),
        Route::new(M::PUT, "/v1/admin/tenant", put_tenant),
        Route::new(M::POST, "/v1/admin/tenant/cancel", cancel_tenant),
        Route::new(M::POST, "/v1/admin/tenant/reinstate", reinstate_tenant),
        Route::new(M::GET, "/v1/admin/directory", get_directory),
        Route::new(M::PUT, "/v1/admin/directory", put_directory)
            .body_limit(MAX_DIRECTORY_BYTES as usize + 4096),
        Route::new(M::POST, "/v1/admin/devices", enroll_device),
        Route::new(M::POST, "/v1/admin/devices/{device}/revoke", revoke_device),
        Route::new(M::GET, "/v1/admin/tokens", list_tokens),
        Route::new(M::POST, "/v1/admin/tokens", create_token),
        Route::new(M::DELETE, "/v1/admin/tokens/{id}", revoke_token),
        Route::new(M::POST, "/v1/session", portal::session::sign_in),
        Route::new(M::GET, "/v1/session", portal::session::current),
        Route::new(M::DELETE, "/v1/session", portal::session::sign_out),
        Route::new(M::GET, "/v1/me/recorded", portal::me::recorded),
        Route::new(M::GET, "/v1/me/access", portal::me::access),
        Route::new(M::GET, "/", portal::index),
        Route::new(M::GET, "/portal/{file}", portal::asset),
        Route::new(M::GET, "/healthz", || async { "ok" }),
        Route::new(M::GET, "/readyz", readyz),
        Route::new(M::GET, "/metrics", metrics_text),
    ]
}

pub fn router(state: Arc<QueryState>) -> Router {
    let mut router = Router::new();
    for route in routes() {
        // Routes of one path merge into one method router.
        router = router.route(route.path, route.handler);
    }
    router.with_state(state)
}

/// Serves on `listener` with `serve` (TLS, connection caps, timeouts)
/// until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<QueryState>,
    serve: ServeConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let tls = serve.tls.is_some();
    let app = router(state).layer(axum::middleware::from_fn(move |request, next| {
        portal::secure(tls, request, next)
    }));
    candor_http::serve(listener, app, &serve, shutdown).await
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
    #[error(transparent)]
    Scope(#[from] ScopeError),
    #[error(transparent)]
    Query(#[from] QueryError),
    #[error("tenant {0} is not in the control plane")]
    UnknownTenant(TenantId),
    #[error("the audit log cannot be written, so nothing is answered: {0}")]
    AuditUnavailable(AuditError),
    #[error("encoding the answer: {0}")]
    Encode(String),
    #[error("no KPI named {0:?}: activity, attendance, apps or gps")]
    NoSuchKpi(String),
    #[error("refused: {0}")]
    CrossOrigin(String),
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
                AdminError::Audit(_) => (StatusCode::SERVICE_UNAVAILABLE, "audit_unavailable"),
                AdminError::CancellationIsSeparate { .. } => {
                    (StatusCode::BAD_REQUEST, "cancelled_at_ms_read_only")
                }
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
            ApiError::Scope(ScopeError::KeysDestroyed) => (StatusCode::GONE, "keys_destroyed"),
            ApiError::Scope(_) => (StatusCode::FORBIDDEN, "forbidden"),
            ApiError::Query(e) => match e {
                QueryError::Refused(_) => (StatusCode::FORBIDDEN, "statement_refused"),
                QueryError::TeamOnly(_) => (StatusCode::FORBIDDEN, "privacy_mode"),
                QueryError::BadSql(_) => (StatusCode::BAD_REQUEST, "bad_sql"),
                QueryError::TooLong { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "statement_too_long"),
                QueryError::TooComplex(_) => (StatusCode::BAD_REQUEST, "statement_too_complex"),
                QueryError::Busy => (StatusCode::TOO_MANY_REQUESTS, "too_many_statements"),
                QueryError::BadRequest(_) | QueryError::BadRange { .. } => {
                    (StatusCode::BAD_REQUEST, "bad_request")
                }
                QueryError::BadTimeZone(_) => (StatusCode::BAD_REQUEST, "bad_time_zone"),
                QueryError::TooLarge(_) => (StatusCode::UNPROCESSABLE_ENTITY, "query_too_large"),
                QueryError::Timeout(_) => (StatusCode::UNPROCESSABLE_ENTITY, "query_timeout"),
                QueryError::Lake(_) | QueryError::Vanished(_) => {
                    (StatusCode::SERVICE_UNAVAILABLE, "lake_unavailable")
                }
                QueryError::TableUnavailable(_) => {
                    (StatusCode::SERVICE_UNAVAILABLE, "table_unavailable")
                }
                QueryError::BadLake { .. } | QueryError::Engine(_) => {
                    (StatusCode::INTERNAL_SERVER_ERROR, "query_failed")
                }
            },
            ApiError::UnknownTenant(_) => (StatusCode::UNAUTHORIZED, "unknown_token"),
            ApiError::AuditUnavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "audit_unavailable"),
            ApiError::Encode(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
            ApiError::NoSuchKpi(_) => (StatusCode::NOT_FOUND, "no_such_kpi"),
            ApiError::CrossOrigin(_) => (StatusCode::FORBIDDEN, "cross_origin"),
        }
    }
}

impl ApiError {
    /// What the caller is told. A server-side failure names its kind, not
    /// its details: those (object paths, engine internals) go to the
    /// operator's log only.
    fn public_message(&self) -> String {
        let (status, _) = self.status_and_reason();
        match self {
            ApiError::Query(QueryError::Lake(_) | QueryError::Vanished(_)) => {
                "the lake cannot be read now; try again shortly".into()
            }
            // Which table, not why: the reason (the log entry, the object)
            // is the operator's.
            ApiError::Query(QueryError::TableUnavailable(table)) => format!(
                "the {} table cannot be read now, so this question cannot be answered; \
                 questions about the other tables can; the operator's log has the details",
                table.dataset.name()
            ),
            ApiError::AuditUnavailable(_) => {
                "the audit log cannot be written, so nothing is answered".into()
            }
            _ if status.is_server_error() => {
                "the request failed on the server; the operator's log has the details".into()
            }
            _ => self.to_string(),
        }
    }

    /// Seconds to wait before trying again, for answers that ask for it.
    fn retry_after(&self) -> Option<u64> {
        match self {
            ApiError::Query(QueryError::Busy) => Some(1),
            ApiError::Query(QueryError::Lake(_) | QueryError::Vanished(_))
            | ApiError::AuditUnavailable(_)
            | ApiError::Auth(AuthError::Unavailable(_)) => Some(5),
            _ => None,
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
        let message = self.public_message();
        if status.is_server_error() {
            tracing::error!(error = %self, "request failed");
        }
        let body = serde_json::json!({"status": "error", "reason": reason, "message": message});
        let mut response = (status, Json(body)).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Some(seconds) = self.retry_after() {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
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
        let now = chrono::Utc::now().timestamp_millis();
        let principal = match credential(parts)? {
            Credential::Bearer(token) => authenticate(&state.control, &token, now).await?,
            Credential::Session(token) => {
                session_only(authenticate(&state.control, &token, now).await?)?
            }
        };
        Ok(Caller::of(principal, parts))
    }
}

/// How a request authenticates.
enum Credential {
    /// `Authorization: Bearer`, as API clients do.
    Bearer(String),
    /// The portal's session cookie, from a page of this node only.
    Session(String),
}

/// The request's credential: its bearer token, else its session cookie
/// (which must meet [`portal::session::same_origin`]).
fn credential(parts: &Parts) -> Result<Credential, ApiError> {
    if parts.headers.contains_key(header::AUTHORIZATION) {
        return Ok(Credential::Bearer(bearer(parts)?.to_string()));
    }
    match portal::session::cookie_token(parts) {
        Some(token) => {
            portal::session::same_origin(parts, portal::session::changes(&parts.method))?;
            Ok(Credential::Session(token))
        }
        None => Err(AuthError::Malformed.into()),
    }
}

/// A cookie holds sessions only, never an API token.
fn session_only(principal: Principal) -> Result<Principal, ApiError> {
    if principal.kind == TokenKind::Session {
        Ok(principal)
    } else {
        Err(AuthError::Unknown.into())
    }
}

impl Caller {
    /// The caller as `principal`, from the request's peer address.
    pub(crate) fn of(principal: Principal, parts: &Parts) -> Self {
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
        Caller { principal, actor }
    }
}

/// The request's bearer token.
fn bearer(parts: &Parts) -> Result<&str, ApiError> {
    let token = parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or(AuthError::Malformed)?;
    Ok(token.trim())
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

/// The caller of the routes an owner of a cancelled tenant may still use
/// (reading the tenant, cancelling and reinstating it). Any other token of
/// a cancelled tenant is refused as by [`Caller`].
pub struct OwnerOfCancelledCaller(Caller);

impl FromRequestParts<Arc<QueryState>> for OwnerOfCancelledCaller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<QueryState>,
    ) -> Result<Self, ApiError> {
        let now = chrono::Utc::now().timestamp_millis();
        let principal = match credential(parts)? {
            Credential::Bearer(token) => {
                authenticate_owner_of_cancelled(&state.control, &token, now).await?
            }
            Credential::Session(token) => {
                session_only(authenticate_owner_of_cancelled(&state.control, &token, now).await?)?
            }
        };
        Ok(Self(Caller::of(principal, parts)))
    }
}

async fn get_tenant(
    State(state): State<Arc<QueryState>>,
    OwnerOfCancelledCaller(caller): OwnerOfCancelledCaller,
) -> Result<Response, ApiError> {
    let t = state
        .admin
        .get_tenant(&caller.actor, &caller.principal.tenant)
        .await?;
    Ok(versioned(t.version, t.doc))
}

async fn cancel_tenant(
    State(state): State<Arc<QueryState>>,
    OwnerOfCancelledCaller(caller): OwnerOfCancelledCaller,
) -> Result<Response, ApiError> {
    let tenant = &caller.principal.tenant;
    let t = state.admin.cancel_tenant(&caller.actor, tenant).await?;
    reload(&state, tenant).await;
    Ok(versioned(t.version, t.doc))
}

async fn reinstate_tenant(
    State(state): State<Arc<QueryState>>,
    OwnerOfCancelledCaller(caller): OwnerOfCancelledCaller,
) -> Result<Response, ApiError> {
    let tenant = &caller.principal.tenant;
    let t = state.admin.reinstate_tenant(&caller.actor, tenant).await?;
    reload(&state, tenant).await;
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

/// Largest SQL request body (the statement itself is bounded by
/// [`Limits::max_sql_bytes`]).
const MAX_SQL_BODY_BYTES: usize = 64 * 1024;

/// The caller's tenant as the control plane has it now.
pub(crate) async fn caller_tenant(
    state: &QueryState,
    caller: &Caller,
) -> Result<Arc<TenantView>, ApiError> {
    let tenant = &caller.principal.tenant;
    state
        .control
        .get(tenant)
        .await
        .map_err(AuthError::from)?
        .ok_or_else(|| ApiError::UnknownTenant(tenant.clone()))
}

/// The caller's session: its tenant as the control plane has it now, its
/// scope, and a session over that tenant's views only.
///
/// With `as_of`, the tables as they were then: the tenant's owner alone
/// may ask (for audits and disputes), and the answer is audited with the
/// versions it read like any other.
async fn open_scope(
    state: &QueryState,
    caller: &Caller,
    as_of: Option<chrono::DateTime<chrono::Utc>>,
) -> Result<(Arc<TenantView>, ScopedSession), ApiError> {
    let view = caller_tenant(state, caller).await?;
    let scope = Scope::of(&caller.principal, &view)?;
    let tables = match as_of {
        None => state.lake.tables(&view.tenant.doc).await?,
        Some(at) => {
            if caller.principal.role != Role::Owner {
                return Err(ApiError::Scope(ScopeError::RoleNotAllowed(
                    caller.principal.role,
                )));
            }
            let at = candor_lake::AsOf::Time(at);
            state
                .lake
                .tables_as_of(&view.tenant.doc, |_| Some(at))
                .await?
        }
    };
    let session = ScopedSession::new(&state.lake, &tables, &scope, state.limits.clone())?;
    Ok((view, session))
}

/// Audits a request's outcome, answered or refused, then answers it. An
/// answer whose audit entry cannot be written is not sent. `answered_in`
/// is the scope a question's session had, if it got that far: the entry
/// records it, for "who looked at my data". `read` is the table version
/// each of its tables read (`detail.table_versions`), so an answer can be
/// traced to the data it came from.
#[allow(clippy::too_many_arguments)]
async fn audited(
    state: &QueryState,
    caller: &Caller,
    action: &'static str,
    target: String,
    request: serde_json::Value,
    answered_in: Option<&Scope>,
    read: Option<&TableVersions>,
    outcome: Result<(Response, serde_json::Value), ApiError>,
    started: std::time::Instant,
) -> Result<Response, ApiError> {
    let (label, result) = match &outcome {
        Ok((_, result)) => ("ok", result.clone()),
        Err(e) => (
            e.status_and_reason().1,
            serde_json::json!({"refused": e.status_and_reason().1, "message": e.to_string()}),
        ),
    };
    let mut detail = serde_json::json!({"request": request, "result": result});
    if let Some(scope) = answered_in {
        detail["scope"] = portal::me::scope_detail(scope);
    }
    if let Some(versions) = read {
        detail["table_versions"] = serde_json::json!(versions);
    }
    let event = AuditEvent {
        actor: caller.actor.id.clone(),
        role: caller.principal.role.name().to_string(),
        action: action.to_string(),
        target,
        source: caller.actor.source.clone(),
        detail,
    };
    let now = chrono::Utc::now().timestamp_millis();
    let audit = state
        .admin
        .audit_log()
        .append(&caller.principal.tenant, event, now)
        .await;
    let outcome = match audit {
        Ok(_) => outcome,
        Err(e) => Err(ApiError::AuditUnavailable(e)),
    };
    let label = if outcome.is_ok() {
        label
    } else {
        outcome
            .as_ref()
            .err()
            .map_or(label, |e| e.status_and_reason().1)
    };
    state
        .metrics
        .requests
        .with_label_values(&[action, label])
        .inc();
    state
        .metrics
        .seconds
        .with_label_values(&[action])
        .observe(started.elapsed().as_secs_f64());
    outcome.map(|(response, _)| response)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KpiParams {
    from: chrono::NaiveDate,
    to: chrono::NaiveDate,
    /// Comma-separated: employee, department, day, week.
    #[serde(default = "default_group_by")]
    group_by: String,
    #[serde(default = "default_limit")]
    limit: usize,
    #[serde(default)]
    offset: usize,
    /// Attendance only: minutes after the scheduled start before an
    /// arrival counts as late.
    #[serde(default)]
    grace_minutes: Option<u32>,
    /// The lake as it was at this moment (RFC 3339); owners only.
    #[serde(default)]
    as_of: Option<chrono::DateTime<chrono::Utc>>,
}

fn default_group_by() -> String {
    "employee,day".into()
}

fn default_limit() -> usize {
    100
}

impl KpiParams {
    fn request(&self, view: &TenantView) -> Result<KpiRequest, ApiError> {
        Ok(KpiRequest {
            time_zone: view.tenant.doc.time_zone.clone(),
            from: self.from,
            to: self.to,
            group_by: self
                .group_by
                .split(',')
                .map(|g| g.trim().parse())
                .collect::<Result<Vec<GroupBy>, _>>()?,
            limit: self.limit,
            offset: self.offset,
        })
    }
}

/// Runs one KPI for the caller and audits it as `query.kpi.<name>`.
/// The KPIs, by the last segment of their route.
#[derive(Debug, Clone, Copy)]
enum Kpi {
    Activity,
    Attendance,
    Apps,
    Gps,
}

/// The KPIs, by the name their route takes.
pub const KPI_NAMES: [&str; 4] = ["activity", "attendance", "apps", "gps"];

impl Kpi {
    fn of(name: &str) -> Option<Kpi> {
        match name {
            "activity" => Some(Kpi::Activity),
            "attendance" => Some(Kpi::Attendance),
            "apps" => Some(Kpi::Apps),
            "gps" => Some(Kpi::Gps),
            _ => None,
        }
    }

    /// The table whose people make up the KPI's groups.
    fn table(self) -> &'static str {
        match self {
            Kpi::Activity | Kpi::Attendance => "activity",
            Kpi::Apps => "app_usage",
            Kpi::Gps => "gps",
        }
    }

    /// The action in the audit trail and the metrics.
    fn action(self) -> &'static str {
        match self {
            Kpi::Activity => "query.kpi.activity",
            Kpi::Attendance => "query.kpi.attendance",
            Kpi::Apps => "query.kpi.apps",
            Kpi::Gps => "query.kpi.gps",
        }
    }
}

/// `GET /v1/kpi/{name}`: one KPI page for the caller, audited.
async fn kpi_page(
    State(state): State<Arc<QueryState>>,
    caller: Caller,
    Path(name): Path<String>,
    params: Result<axum::extract::Query<KpiParams>, axum::extract::rejection::QueryRejection>,
    uri: axum::http::Uri,
) -> Result<Response, ApiError> {
    let Some(kpi) = Kpi::of(&name) else {
        return Err(ApiError::NoSuchKpi(name));
    };
    let started = std::time::Instant::now();
    let (mut answered_in, mut read) = (None, None);
    let outcome = async {
        let axum::extract::Query(params) =
            params.map_err(|e| QueryError::BadRequest(e.body_text()))?;
        if params.grace_minutes.is_some() && !matches!(kpi, Kpi::Attendance) {
            return Err(QueryError::BadRequest("grace_minutes is for attendance".into()).into());
        }
        let (view, session) = open_scope(&state, &caller, params.as_of).await?;
        answered_in = Some(session.scope().clone());
        read = Some(session.table_versions().clone());
        let request = params.request(&view)?;
        if request.group_by.contains(&GroupBy::Site) && !matches!(kpi, Kpi::Gps) {
            return Err(QueryError::BadRequest("group_by site is for gps".into()).into());
        }
        let identities = if session.scope().identities {
            Some(state.identities.get(&view)?)
        } else {
            None
        };
        let identities = identities.as_deref();
        // A group-only caller's answer leaves out the groups suppression hides.
        let groups_only = session.scope().groups_only;
        let published = match groups_only {
            Some(k) => {
                team_only::check(&request)?;
                Some(Published::of(&session, kpi.table(), &request, k).await?)
            }
            None => None,
        };
        let (published, s) = (published.as_ref(), &session);
        let (page, suppressed) = match kpi {
            Kpi::Activity => {
                let fetch =
                    move |r: KpiRequest| async move { kpi::activity(s, &r, identities).await };
                kpi_answer(&request, published, fetch).await
            }
            Kpi::Apps => {
                let fetch = move |r: KpiRequest| async move {
                    kpi::apps(s, &r, identities, groups_only).await
                };
                kpi_answer(&request, published, fetch).await
            }
            Kpi::Gps => {
                let fetch = move |r: KpiRequest| async move { kpi::gps(s, &r, identities).await };
                kpi_answer(&request, published, fetch).await
            }
            Kpi::Attendance => {
                let (policy, in_scope) = attendance_inputs(&state, &view, &session, &params)?;
                let (policy, in_scope) = (&policy, &in_scope);
                let fetch = move |r: KpiRequest| async move {
                    kpi::attendance(s, &r, policy, in_scope, identities).await
                };
                kpi_answer(&request, published, fetch).await
            }
        }?;
        let rows = page.rows.len();
        let mut body = serde_json::json!({
            "time_zone": request.time_zone,
            "from": request.from,
            "to": request.to,
            "rows": page.rows,
            "next_offset": page.next_offset,
        });
        let mut result = serde_json::json!({"rows": rows});
        if let Some(suppressed) = suppressed {
            body["privacy_mode"] = PrivacyMode::TeamOnly.name().into();
            body["suppressed_rows"] = suppressed.into();
            result["suppressed_rows"] = suppressed.into();
        }
        Ok((Json(body).into_response(), result))
    }
    .await;
    let query: String = uri.query().unwrap_or("").chars().take(1024).collect();
    audited(
        &state,
        &caller,
        kpi.action(),
        name,
        serde_json::json!({"query": query}),
        answered_in.as_ref(),
        read.as_ref(),
        outcome,
        started,
    )
    .await
}

/// One page of a KPI, `fetch`ed for the request, as JSON rows; for a
/// group-only caller (`published` given), the page of the rows it may see
/// and how many it may not.
async fn kpi_answer<T, F, Fut>(
    request: &KpiRequest,
    published: Option<&Published>,
    mut fetch: F,
) -> Result<(kpi::Page<serde_json::Value>, Option<usize>), ApiError>
where
    T: KpiRow + serde::Serialize,
    F: FnMut(KpiRequest) -> Fut,
    Fut: Future<Output = Result<kpi::Page<T>, QueryError>>,
{
    match published {
        None => Ok((page_json(fetch(request.clone()).await?)?, None)),
        Some(published) => {
            let (page, suppressed) = team_only::answer(request, published, fetch).await?;
            Ok((page_json(page)?, Some(suppressed)))
        }
    }
}

fn page_json<T: serde::Serialize>(
    page: kpi::Page<T>,
) -> Result<kpi::Page<serde_json::Value>, ApiError> {
    let rows = page
        .rows
        .iter()
        .map(serde_json::to_value)
        .collect::<Result<_, _>>()
        .map_err(|e| ApiError::Encode(e.to_string()))?;
    Ok(kpi::Page {
        rows,
        next_offset: page.next_offset,
    })
}

/// The schedule and grace, and the directory's employees in the caller's
/// scope (for absences), for the attendance KPI.
fn attendance_inputs(
    state: &QueryState,
    view: &TenantView,
    session: &ScopedSession,
    params: &KpiParams,
) -> Result<(kpi::AttendancePolicy, kpi::Roster), ApiError> {
    let grace_minutes = params.grace_minutes.unwrap_or(10);
    if grace_minutes > 240 {
        return Err(QueryError::BadRequest("grace_minutes must be 0 to 240".into()).into());
    }
    let doc = &view.tenant.doc;
    let policy = kpi::AttendancePolicy {
        work_hours: doc.work_hours.clone(),
        grace_minutes,
        today: chrono::Utc::now().with_timezone(&doc.tz()).date_naive(),
    };
    let everyone = state.identities.get(view)?;
    let in_scope = everyone
        .iter()
        .filter_map(|(subject, employee)| {
            let department = view.directory.department_of(employee).map(str::to_string);
            let visible = match &session.scope().rows {
                Rows::Tenant => true,
                Rows::Departments(set) => department.as_ref().is_some_and(|d| set.contains(d)),
                Rows::Subject(own) => own == subject,
            };
            visible.then(|| (subject.to_string(), department))
        })
        .collect();
    Ok((policy, in_scope))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SqlRequest {
    sql: String,
    #[serde(default)]
    format: crate::format::Format,
    /// The lake as it was at this moment (RFC 3339); owners only.
    #[serde(default)]
    as_of: Option<chrono::DateTime<chrono::Utc>>,
}

/// The API's OpenAPI document, checked in at `query/api/openapi.json`.
pub const OPENAPI: &str = include_str!("../api/openapi.json");

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

/// The header that says an answer was cut at the row limit.
pub const TRUNCATED_HEADER: &str = "candor-truncated";

async fn run_sql(
    State(state): State<Arc<QueryState>>,
    caller: Caller,
    body: Result<Json<SqlRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    use sha2::Digest;
    let started = std::time::Instant::now();
    let statement = body.as_ref().map(|b| b.sql.clone()).unwrap_or_default();
    let digest = hex::encode(&sha2::Sha256::digest(statement.as_bytes())[..16]);
    // The statement is kept (cut to 4 KiB) so an investigator can read what
    // was asked; it holds no telemetry, only what the caller typed.
    let text: String = statement.chars().take(4096).collect();
    let as_of = body.as_ref().ok().and_then(|b| b.as_of);
    let request = serde_json::json!({"sql": text, "bytes": statement.len(), "as_of": as_of});
    // On record before it runs: a statement that harms the node is in the
    // trail even if no outcome entry ever follows.
    let arrival = AuditEvent {
        actor: caller.actor.id.clone(),
        role: caller.principal.role.name().to_string(),
        action: "query.sql.received".to_string(),
        target: format!("sql:{digest}"),
        source: caller.actor.source.clone(),
        detail: serde_json::json!({"request": request}),
    };
    let now = chrono::Utc::now().timestamp_millis();
    if let Err(e) = state
        .admin
        .audit_log()
        .append(&caller.principal.tenant, arrival, now)
        .await
    {
        state
            .metrics
            .requests
            .with_label_values(&["query.sql", "audit_unavailable"])
            .inc();
        return Err(ApiError::AuditUnavailable(e));
    }
    let (mut answered_in, mut read) = (None, None);
    let outcome = async {
        let Json(request) = body?;
        let (_, session) = open_scope(&state, &caller, request.as_of).await?;
        answered_in = Some(session.scope().clone());
        read = Some(session.table_versions().clone());
        if session.scope().groups_only.is_some() {
            return Err(QueryError::TeamOnly(
                "SQL reads rows about people, and this tenant shows managers and HR group \
                 figures only: use the KPI routes"
                    .into(),
            )
            .into());
        }
        let answer: Answer = session.query(&request.sql).await?;
        let bytes = request
            .format
            .encode(&answer)
            .map_err(|e| ApiError::Encode(e.to_string()))?;
        let mut response = (
            [(header::CONTENT_TYPE, request.format.content_type())],
            bytes,
        )
            .into_response();
        if answer.truncated {
            response
                .headers_mut()
                .insert(TRUNCATED_HEADER, HeaderValue::from_static("true"));
        }
        let result = serde_json::json!({"rows": answer.num_rows(), "truncated": answer.truncated});
        Ok((response, result))
    }
    .await;
    audited(
        &state,
        &caller,
        "query.sql",
        format!("sql:{digest}"),
        request,
        answered_in.as_ref(),
        read.as_ref(),
        outcome,
        started,
    )
    .await
}

/// What producing one extract did.
#[derive(Debug, serde::Serialize)]
pub struct Produced {
    pub location: String,
    pub sha256: String,
    pub groups: usize,
    pub suppressed_groups: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivered: Option<Delivered>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivery_error: Option<String>,
    /// The table version each dataset was read at (the extract records
    /// them too).
    #[serde(skip)]
    pub table_versions: TableVersions,
    #[serde(skip)]
    pub body: Vec<u8>,
}

/// Where an extract of `request` is kept in the tenant's lake.
pub fn extract_location(tenant: &TenantId, request: &ExtractRequest) -> String {
    let period = match request.period {
        Period::Day => "day",
        Period::Week => "week",
    };
    format!(
        "extracts/tenant={tenant}/period={period}/{}_{}.json",
        request.from, request.to
    )
}

/// Where the receipt of a scheduled extract's delivery is kept.
fn receipt_location(tenant: &TenantId, request: &ExtractRequest) -> String {
    extract_location(tenant, request).replace(".json", ".delivered.json")
}

/// Produces an extract of the tenant's whole lake, writes it to the lake's
/// extracts area, audits it with its content hash (before it leaves: if
/// the audit cannot be written it is not delivered), and delivers it when
/// the tenant has a receiver.
pub async fn produce_extract(
    state: &QueryState,
    actor: &Actor,
    view: &TenantView,
    request: &ExtractRequest,
) -> Result<Produced, ApiError> {
    use sha2::Digest;
    let tenant = &view.tenant.doc;
    let tables = state.lake.tables(tenant).await?;
    let session = ScopedSession::new(
        &state.lake,
        &tables,
        &Scope::whole_tenant(),
        state.limits.clone(),
    )?;
    let key = state.master.extract_signing_key(&tenant.id, 1);
    let noise = state.master.extract_noise_key(&tenant.id);
    let today = chrono::Utc::now().with_timezone(&tenant.tz()).date_naive();
    let extract = extract::build(
        &session,
        &state.lake,
        tenant,
        request,
        noise.as_bytes(),
        today,
    )
    .await?;
    let body = serde_json::to_vec(&extract).map_err(|e| ApiError::Encode(e.to_string()))?;
    let sha256 = hex::encode(sha2::Sha256::digest(&body));
    // Named relative to the tenant's lake: answers and audit entries carry
    // no server path.
    let location = extract_location(&tenant.id, request);
    state.lake.put(tenant, &location, body.clone()).await?;
    let audit = |action: &str, detail: serde_json::Value| AuditEvent {
        actor: actor.id.clone(),
        role: actor.role.map_or("operator", |r| r.name()).to_string(),
        action: action.to_string(),
        target: format!("sha256:{sha256}"),
        source: actor.source.clone(),
        detail,
    };
    let now = || chrono::Utc::now().timestamp_millis();
    let log = state.admin.audit_log();
    log.append(
        &tenant.id,
        audit(
            "extract.produce",
            serde_json::json!({"location": location, "sha256": sha256, "from": request.from, "to": request.to,
                "period": request.period, "groups": extract.groups.len(),
                "suppressed_groups": extract.suppressed_groups,
                "table_versions": session.table_versions()}),
        ),
        now(),
    )
    .await
    .map_err(ApiError::AuditUnavailable)?;
    let mut produced = Produced {
        location,
        sha256: sha256.clone(),
        groups: extract.groups.len(),
        suppressed_groups: extract.suppressed_groups,
        delivered: None,
        delivery_error: None,
        table_versions: session.table_versions().clone(),
        body,
    };
    if let Some(url) = &tenant.ai_delivery_url {
        let outcome = delivery::post_signed(
            &state.http,
            url,
            key.as_bytes(),
            &sha256,
            &produced.body,
            &state.delivery,
        )
        .await;
        let detail = match &outcome {
            Ok(d) => serde_json::json!({"url": url, "status": d.status, "attempts": d.attempts}),
            Err(e) => serde_json::json!({"url": url, "error": e.to_string()}),
        };
        let action = if outcome.is_ok() {
            "extract.deliver"
        } else {
            "extract.delivery_failed"
        };
        if let Err(e) = log.append(&tenant.id, audit(action, detail), now()).await {
            tracing::error!(tenant = %tenant.id, error = %e, "could not audit an extract delivery");
        }
        match outcome {
            Ok(d) => produced.delivered = Some(d),
            Err(e) => produced.delivery_error = Some(e.to_string()),
        }
    }
    Ok(produced)
}

async fn request_extract(
    State(state): State<Arc<QueryState>>,
    caller: Caller,
    body: Result<Json<ExtractRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let started = std::time::Instant::now();
    let mut read = None;
    let outcome = async {
        let Json(request) = body?;
        let role = caller.principal.role;
        if !matches!(role, Role::Ai | Role::Owner | Role::Admin) {
            return Err(ApiError::Scope(ScopeError::RoleNotAllowed(role)));
        }
        let view = caller_tenant(&state, &caller).await?;
        let produced = produce_extract(&state, &caller.actor, &view, &request).await?;
        read = Some(produced.table_versions.clone());
        let mut answer =
            serde_json::to_value(&produced).map_err(|e| ApiError::Encode(e.to_string()))?;
        answer["extract"] =
            serde_json::from_slice(&produced.body).map_err(|e| ApiError::Encode(e.to_string()))?;
        Ok((
            Json(answer).into_response(),
            serde_json::json!({"sha256": produced.sha256}),
        ))
    }
    .await;
    audited(
        &state,
        &caller,
        "query.extract",
        "extract".into(),
        serde_json::Value::Null,
        None,
        read.as_ref(),
        outcome,
        started,
    )
    .await
}

/// Produces the previous local day's extract for every active tenant with
/// a receiver, every `every`, unless the lake already holds it.
pub async fn run_extract_schedule(
    state: Arc<QueryState>,
    every: std::time::Duration,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        if let Err(e) = scheduled_extracts(&state).await {
            tracing::error!(error = %e, "scheduled extracts failed; retrying at the next run");
        }
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            () = &mut shutdown => return,
        }
    }
}

/// One run of the schedule: the previous local day's extract of every
/// active tenant with a receiver, unless one was already delivered (its
/// receipt is in the lake). Returns how many were delivered.
pub async fn scheduled_extracts(state: &QueryState) -> Result<usize, ApiError> {
    let ids = state
        .control
        .documents()
        .ids(candor_control::Kind::Tenant)
        .await
        .map_err(AdminError::Document)?;
    let mut delivered = 0;
    let actor = Actor {
        id: "scheduler".into(),
        role: None,
        tenant: None,
        source: "schedule".into(),
    };
    for id in ids {
        let Ok(tenant) = TenantId::new(id) else {
            continue;
        };
        let Some(view) = state.control.get(&tenant).await.map_err(AuthError::from)? else {
            continue;
        };
        let doc = &view.tenant.doc;
        if !doc.is_active() || doc.ai_delivery_url.is_none() {
            continue;
        }
        let today = chrono::Utc::now().with_timezone(&doc.tz()).date_naive();
        let day = today - chrono::Days::new(1);
        let request = ExtractRequest {
            from: day,
            to: day,
            period: Period::Day,
        };
        let receipt = receipt_location(&tenant, &request);
        if state.lake.exists(doc, &receipt).await? {
            continue;
        }
        match produce_extract(state, &actor, &view, &request).await {
            Ok(Produced {
                delivered: Some(d),
                sha256,
                ..
            }) => {
                let body = serde_json::json!({"sha256": sha256, "status": d.status, "attempts": d.attempts});
                state
                    .lake
                    .put(doc, &receipt, body.to_string().into_bytes())
                    .await?;
                tracing::info!(%tenant, %day, sha256, "extract delivered");
                delivered += 1;
            }
            Ok(p) => {
                tracing::error!(%tenant, %day, error = p.delivery_error, "extract not delivered; retrying at the next run")
            }
            Err(e) => tracing::error!(%tenant, %day, error = %e, "extract failed"),
        }
    }
    Ok(delivered)
}

/// The owner's copy of the tenant's audit log. The chain is verified as it
/// is exported: `candor-audit-verified` says how many entries verified,
/// and `candor-audit-problem` names the first one that did not, if any.
async fn export_audit(
    State(state): State<Arc<QueryState>>,
    caller: Caller,
) -> Result<Response, ApiError> {
    let started = std::time::Instant::now();
    let outcome = async {
        if caller.principal.role != Role::Owner {
            return Err(ApiError::Scope(ScopeError::RoleNotAllowed(
                caller.principal.role,
            )));
        }
        let log = state.admin.audit_log();
        let tenant = &caller.principal.tenant;
        let audit_error = |e| ApiError::AuditUnavailable(e);
        let verification = log.verify(tenant).await.map_err(audit_error)?;
        let entries = log.entries(tenant).await.map_err(audit_error)?;
        let mut writer = csv::Writer::from_writer(Vec::new());
        let encode = |e: csv::Error| ApiError::Encode(e.to_string());
        writer
            .write_record([
                "seq", "at", "actor", "role", "action", "target", "source", "detail", "prev", "mac",
            ])
            .map_err(encode)?;
        for e in &entries {
            let at = chrono::DateTime::from_timestamp_millis(e.at_ms)
                .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
                .unwrap_or_default();
            writer
                .write_record([
                    e.seq.to_string().as_str(),
                    &at,
                    &e.event.actor,
                    &e.event.role,
                    &e.event.action,
                    &e.event.target,
                    &e.event.source,
                    &e.event.detail.to_string(),
                    &e.prev,
                    &e.mac,
                ])
                .map_err(encode)?;
        }
        let body = writer
            .into_inner()
            .map_err(|e| ApiError::Encode(e.to_string()))?;
        let mut response = (
            [
                (header::CONTENT_TYPE, "text/csv; charset=utf-8"),
                (
                    header::CONTENT_DISPOSITION,
                    "attachment; filename=\"audit.csv\"",
                ),
            ],
            body,
        )
            .into_response();
        let headers = response.headers_mut();
        headers.insert(
            "candor-audit-verified",
            HeaderValue::from(verification.verified),
        );
        if let Some(problem) = &verification.first_problem
            && let Ok(value) = HeaderValue::from_str(&problem.to_string())
        {
            headers.insert("candor-audit-problem", value);
        }
        let result =
            serde_json::json!({"entries": entries.len(), "verified": verification.verified});
        Ok((response, result))
    }
    .await;
    audited(
        &state,
        &caller,
        "audit.export",
        "audit".into(),
        serde_json::Value::Null,
        None,
        None,
        outcome,
        started,
    )
    .await
}
