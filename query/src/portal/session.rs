//! Portal sign-in: a token (pasted, or a one-time link the CLI prints) is
//! exchanged for a session, a token of its own kept in an HttpOnly,
//! SameSite=Strict cookie (Secure on TLS) that script cannot read. A
//! session lasts at most 8 hours, ends at sign-out, and ends with the token
//! it was opened with; owners see and revoke sessions with the tokens.
//!
//! A request that authenticates with the cookie must come from the portal
//! itself: one a browser marks as sent from another site
//! (`Sec-Fetch-Site`) is refused, and a request that changes anything
//! (any method but GET and HEAD) must name this node as its `Origin`. The
//! sign-in itself is refused from another origin, so no page elsewhere can
//! sign a browser in to a session of its choosing.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::request::Parts;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use candor_control::{AdminError, TokenKind, authenticate_sign_in};
use serde::Deserialize;

use super::Transport;
use crate::api::{ApiError, Caller, QueryState, caller_tenant};

/// The session cookie's name.
pub const COOKIE: &str = "candor_session";

/// Longest `Cookie` header read, and longest token taken from it.
const MAX_COOKIE_HEADER: usize = 8 * 1024;

/// The session token in the request's cookie, if it has one.
pub fn cookie_token(parts: &Parts) -> Option<String> {
    parts
        .headers
        .get_all(header::COOKIE)
        .iter()
        .filter(|v| v.len() <= MAX_COOKIE_HEADER)
        .filter_map(|v| v.to_str().ok())
        .flat_map(cookie::Cookie::split_parse)
        .filter_map(Result::ok)
        .find(|c| c.name() == COOKIE)
        .map(|c| c.value().to_string())
}

/// This node's origin as the request addressed it (`http://host:port`).
fn own_origin(parts: &Parts) -> Option<String> {
    let tls = parts.extensions.get::<Transport>().is_some_and(|t| t.tls);
    let host = parts
        .headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .or_else(|| parts.uri.authority().map(|a| a.to_string()))?;
    Some(format!("{}://{host}", if tls { "https" } else { "http" }))
}

/// Refuses a request the browser says came from another site, and one
/// that changes something without naming this node as its origin.
pub fn same_origin(parts: &Parts, changes: bool) -> Result<(), ApiError> {
    let header = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(site) = header("sec-fetch-site")
        && !matches!(site, "same-origin" | "none")
    {
        return Err(ApiError::CrossOrigin(format!(
            "the browser says this request came from a {site} page"
        )));
    }
    let origin = header("origin");
    match (origin, own_origin(parts)) {
        (Some(origin), Some(own)) if origin == own => Ok(()),
        (Some(origin), _) => Err(ApiError::CrossOrigin(format!(
            "a request from {origin} may not use this node's session"
        ))),
        (None, _) if changes => Err(ApiError::CrossOrigin(
            "a request that changes anything must name its Origin".into(),
        )),
        (None, _) => Ok(()),
    }
}

/// Whether a request with `method` may change something.
pub fn changes(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignIn {
    token: String,
}

/// `POST /v1/session`: opens a session with the token in the body and sets
/// its cookie.
pub async fn sign_in(
    State(state): State<Arc<QueryState>>,
    parts: Parts,
    body: Result<Json<SignIn>, JsonRejection>,
) -> Result<Response, ApiError> {
    same_origin(&parts, false)?;
    let Json(SignIn { token }) = body?;
    let now = chrono::Utc::now().timestamp_millis();
    let principal = authenticate_sign_in(&state.control, token.trim(), now).await?;
    let caller = Caller::of(principal, &parts);
    let opened = state
        .admin
        .open_session(&caller.actor, &caller.principal)
        .await?;
    let expires = opened.record.expires_at_ms.unwrap_or(now);
    let tls = parts.extensions.get::<Transport>().is_some_and(|t| t.tls);
    let cookie = cookie::Cookie::build((COOKIE, opened.token))
        .path("/")
        .http_only(true)
        .secure(tls)
        .same_site(cookie::SameSite::Strict)
        .max_age(cookie::time::Duration::milliseconds(expires - now))
        .build();
    // The node that opened the session knows it at once.
    if let Err(e) = state.control.reload(&caller.principal.tenant).await {
        tracing::warn!(error = %e, "could not reload tokens after a sign-in");
    }
    let session = Caller {
        principal: candor_control::Principal {
            token_id: opened.record.id.clone(),
            kind: TokenKind::Session,
            ..caller.principal
        },
        actor: caller.actor,
    };
    let mut response = (
        StatusCode::CREATED,
        Json(who(&state, &session, Some(expires)).await?),
    )
        .into_response();
    set_cookie(&mut response, &cookie.to_string());
    Ok(response)
}

/// `GET /v1/session`: who the caller is (session or token).
pub async fn current(
    State(state): State<Arc<QueryState>>,
    caller: Caller,
) -> Result<Response, ApiError> {
    let expires = {
        let view = caller_tenant(&state, &caller).await?;
        view.tokens
            .tokens
            .iter()
            .find(|t| t.id == caller.principal.token_id)
            .and_then(|t| t.expires_at_ms)
    };
    Ok(Json(who(&state, &caller, expires).await?).into_response())
}

/// `DELETE /v1/session`: signs out: ends the caller's session and clears
/// its cookie.
pub async fn sign_out(
    State(state): State<Arc<QueryState>>,
    caller: Caller,
) -> Result<Response, ApiError> {
    if caller.principal.kind != TokenKind::Session {
        return Err(AdminError::Invalid(
            "this is an API token, not a session; revoke it with DELETE /v1/admin/tokens/{id}"
                .into(),
        )
        .into());
    }
    let tenant = caller.principal.tenant.clone();
    state
        .admin
        .end_session(&caller.actor, &tenant, &caller.principal.token_id)
        .await?;
    if let Err(e) = state.control.reload(&tenant).await {
        tracing::warn!(error = %e, "could not reload tokens after a sign-out");
    }
    let cleared = cookie::Cookie::build((COOKIE, ""))
        .path("/")
        .http_only(true)
        .same_site(cookie::SameSite::Strict)
        .max_age(cookie::time::Duration::ZERO)
        .build();
    let mut response = StatusCode::NO_CONTENT.into_response();
    set_cookie(&mut response, &cleared.to_string());
    Ok(response)
}

fn set_cookie(response: &mut Response, cookie: &str) {
    if let Ok(value) = HeaderValue::from_str(cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
}

/// The caller as the portal needs it: tenant, role, employee, the
/// tenant's privacy mode and k, and when the session ends.
async fn who(
    state: &QueryState,
    caller: &Caller,
    expires_at_ms: Option<i64>,
) -> Result<serde_json::Value, ApiError> {
    let view = caller_tenant(state, caller).await?;
    let doc = &view.tenant.doc;
    let p = &caller.principal;
    let department = p
        .employee
        .as_ref()
        .and_then(|e| view.directory.department_of(e));
    let manages: Vec<&String> = match &p.employee {
        Some(e) if p.role == candor_control::Role::Manager => view
            .directory
            .employees
            .get(e)
            .map(|m| m.manages.iter().collect())
            .unwrap_or_default(),
        _ => Vec::new(),
    };
    Ok(serde_json::json!({
        "tenant": p.tenant,
        "token": p.token_id,
        "role": p.role,
        "employee": p.employee,
        "department": department,
        "manages": manages,
        "kind": p.kind,
        "expires_at_ms": expires_at_ms,
        "time_zone": doc.time_zone,
        "privacy_mode": doc.privacy_mode,
        "k": doc.extract_k,
    }))
}
