//! The portal: the web app the query node serves at `/` for employees,
//! managers, HR, analysts and owners. Its files (`query/portal/`) are built
//! into the binary; every figure it shows comes from the public API, with
//! the caller's own scope, so it shows nothing an API caller of that role
//! could not get.
//!
//! - [`session`]: sign-in (a token or a one-time link exchanged for a
//!   short-lived HttpOnly session cookie), sign-out, and the same-origin
//!   rules a cookie-authenticated request must meet.
//! - [`me`]: the routes of the employee's own page: what is recorded, and
//!   who looked at their data.
//! - [`secure`]: the headers every answer carries (CSP without inline
//!   script, no framing, no sniffing, no referrer, HSTS on TLS, no caching
//!   of API answers).

pub mod me;
pub mod session;

use axum::extract::{Path, Request};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

/// The portal's files: (name under `/portal/`, content type, bytes).
const ASSETS: &[(&str, &str, &[u8])] = &[
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../portal/app.js"),
    ),
    (
        "app.css",
        "text/css; charset=utf-8",
        include_bytes!("../../portal/app.css"),
    ),
    (
        "chart.umd.min.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../portal/vendor/chart.umd.min.js"),
    ),
    (
        "chart.js-LICENSE.md",
        "text/plain; charset=utf-8",
        include_bytes!("../../portal/vendor/chart.js-LICENSE.md"),
    ),
];

const INDEX: &[u8] = include_bytes!("../../portal/index.html");

/// `GET /`: the portal's page.
pub async fn index() -> Response {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], INDEX).into_response()
}

/// `GET /portal/{file}`: one of its files.
pub async fn asset(Path(file): Path<String>) -> Response {
    match ASSETS.iter().find(|(name, ..)| *name == file) {
        Some((_, content_type, bytes)) => (
            [
                (header::CONTENT_TYPE, *content_type),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            *bytes,
        )
            .into_response(),
        None => candor_http::error_response(StatusCode::NOT_FOUND, "not_found", "no such file"),
    }
}

/// Whether the request reached this node over TLS: set on every request by
/// [`secure`], read where a cookie gets its `Secure` flag.
#[derive(Debug, Clone, Copy)]
pub struct Transport {
    pub tls: bool,
}

/// The content security policy: this node's own scripts, styles and API
/// only; no inline script or style, no framing, no plugins, no forms
/// posted elsewhere.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
     connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'self'; \
     frame-ancestors 'none'";

/// Middleware: records the transport on the request and puts the security
/// headers on its answer.
pub async fn secure(tls: bool, mut request: Request, next: Next) -> Response {
    request.extensions_mut().insert(Transport { tls });
    let api = request.uri().path().starts_with("/v1/");
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    let set = |headers: &mut axum::http::HeaderMap, name, value: &'static str| {
        headers.insert(name, HeaderValue::from_static(value));
    };
    set(headers, header::CONTENT_SECURITY_POLICY, CSP);
    set(headers, header::X_FRAME_OPTIONS, "DENY");
    set(headers, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(headers, header::REFERRER_POLICY, "no-referrer");
    set(
        headers,
        header::HeaderName::from_static("cross-origin-opener-policy"),
        "same-origin",
    );
    if tls {
        set(
            headers,
            header::STRICT_TRANSPORT_SECURITY,
            "max-age=31536000; includeSubDomains",
        );
    }
    // Answers about people are not kept by browsers or proxies.
    if api && !headers.contains_key(header::CACHE_CONTROL) {
        set(headers, header::CACHE_CONTROL, "no-store");
    }
    response
}
