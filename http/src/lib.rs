//! How every Candor node serves HTTP: HTTP/1.1 and HTTP/2 on one port,
//! TLS with rustls (HTTP/2 chosen by ALPN) or plain HTTP for a trusted
//! network, bounded connections, deadlines that close silent, slow or idle
//! peers (408 for a body that stops short), and a graceful shutdown that
//! lets in-flight requests finish.
//!
//! axum's own `serve` has no TLS and no header timeout, so a node put on
//! the internet would keep every slowloris connection open forever; this
//! loop is hyper-util's connection builder with those settings.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hyper::body::{Bytes, Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::time::{Instant, Sleep};
use tower_service::Service;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How a node serves its routes.
#[derive(Clone)]
pub struct ServeConfig {
    /// TLS settings; `None` serves plain HTTP (only for a trusted network,
    /// or behind a proxy that terminates TLS).
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Connections served at once. The next one waits in the kernel's
    /// accept queue, so a flood of connections costs no memory here.
    pub max_connections: usize,
    /// How long a connection may go without a request in flight: the
    /// time a client has to send its first request's headers (from the
    /// accept, or the end of the TLS handshake; this covers telling
    /// HTTP/1.1 from HTTP/2), to send the next one's after an answer, and
    /// an idle keep-alive connection's life (HTTP/1.1 and HTTP/2). Then
    /// the connection is closed and its slot freed.
    pub header_read_timeout: Duration,
    /// How long a client may take to send a request's body, from the end
    /// of its headers; a body still unfinished then is answered 408
    /// `request_timeout`.
    pub request_body_timeout: Duration,
    /// How long a client may take to finish the TLS handshake.
    pub handshake_timeout: Duration,
    /// Streams one HTTP/2 connection may have open at once.
    pub max_concurrent_streams: u32,
    /// How long shutdown waits for in-flight requests before closing.
    pub shutdown_grace: Duration,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            tls: None,
            max_connections: 10_000,
            header_read_timeout: Duration::from_secs(10),
            request_body_timeout: Duration::from_secs(30),
            handshake_timeout: Duration::from_secs(10),
            max_concurrent_streams: 64,
            shutdown_grace: Duration::from_secs(30),
        }
    }
}

impl ServeConfig {
    /// `https` or `http`, for printing where a node listens.
    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {path}: {message}")]
    Pem { path: PathBuf, message: String },
    #[error("{0} holds no certificate")]
    NoCertificate(PathBuf),
    #[error("certificate and key do not make a TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// A TLS configuration from a PEM certificate chain (leaf first) and a PEM
/// private key (PKCS#8, PKCS#1 or SEC1), offering HTTP/2 and HTTP/1.1.
pub fn load_tls(
    cert_chain: &Path,
    private_key: &Path,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let pem_error = |path: &Path, e: rustls_pki_types::pem::Error| TlsError::Pem {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    let chain = CertificateDer::pem_file_iter(cert_chain)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| pem_error(cert_chain, e))?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate(cert_chain.to_path_buf()));
    }
    let key = PrivateKeyDer::from_pem_file(private_key).map_err(|e| pem_error(private_key, e))?;
    tls_config(chain, key)
}

/// A TLS configuration from DER parts: TLS 1.2 and 1.3 only, ring's
/// provider, ALPN `h2` then `http/1.1`.
pub fn tls_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Serves `app` on `listener` until `shutdown` resolves; then stops
/// accepting, lets in-flight requests finish (up to `shutdown_grace`) and
/// returns. Handlers can read the peer's address as `ConnectInfo<SocketAddr>`.
///
/// Every connection holds one of `max_connections` slots until it ends,
/// and every phase a peer controls has a deadline: the TLS handshake
/// (`handshake_timeout`); the time with no request in flight, which covers
/// the HTTP/1-or-HTTP/2 detection, a head sent slowly and an idle
/// keep-alive connection (`header_read_timeout`); and each request's body
/// (`request_body_timeout`, then 408). A peer that sends nothing cannot
/// keep its slot.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    config: &ServeConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_read_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(config.max_concurrent_streams)
        .keep_alive_interval(Some(Duration::from_secs(30)));
    let builder = Arc::new(builder);
    let tls = config.tls.clone().map(tokio_rustls::TlsAcceptor::from);
    // At least one, and few enough to take them all back at shutdown.
    let max_connections = config
        .max_connections
        .clamp(1, Semaphore::MAX_PERMITS.min(u32::MAX as usize));
    let slots = Arc::new(Semaphore::new(max_connections));
    let deadlines = Deadlines {
        handshake: config.handshake_timeout,
        idle: config.header_read_timeout,
        body: config.request_body_timeout,
    };
    let (closing, closing_rx) = watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of descriptors or a connection reset before accept:
                    // back off briefly instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let connection = Connection {
            peer,
            app: app.clone(),
            builder: builder.clone(),
            deadlines,
            closing: closing_rx.clone(),
        };
        let tls = tls.clone();
        tokio::spawn(async move {
            let _slot = slot;
            connection.run(stream, tls).await;
        });
    }
    drop(listener);
    closing.send_replace(true);
    // A connection gives its slot back when it ends: all of them back means
    // every connection is done.
    let all = u32::try_from(max_connections).expect("clamped to u32 above");
    if tokio::time::timeout(config.shutdown_grace, slots.acquire_many(all))
        .await
        .is_err()
    {
        tracing::warn!(
            grace_s = config.shutdown_grace.as_secs(),
            "requests still in flight when the shutdown grace ended"
        );
    }
    Ok(())
}

/// The deadlines of one connection, from [`ServeConfig`].
#[derive(Clone, Copy)]
struct Deadlines {
    handshake: Duration,
    /// Longest time with no request in flight.
    idle: Duration,
    body: Duration,
}

/// One accepted connection, before its TLS handshake.
struct Connection {
    peer: SocketAddr,
    app: Router,
    builder: Arc<auto::Builder<TokioExecutor>>,
    deadlines: Deadlines,
    /// Turns true when the server stops.
    closing: watch::Receiver<bool>,
}

impl Connection {
    async fn run(mut self, stream: TcpStream, tls: Option<tokio_rustls::TlsAcceptor>) {
        let peer = self.peer;
        let outcome = match tls {
            None => self.serve_http(stream).await,
            Some(acceptor) => {
                let handshake =
                    tokio::time::timeout(self.deadlines.handshake, acceptor.accept(stream));
                let stream = tokio::select! {
                    handshake = handshake => match handshake {
                        Ok(Ok(stream)) => stream,
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "TLS handshake timed out");
                            return;
                        }
                    },
                    () = closed(&mut self.closing) => return,
                };
                self.serve_http(stream).await
            }
        };
        if let Err(e) = outcome {
            tracing::debug!(%peer, error = %e, "connection ended with an error");
        }
    }

    /// HTTP/1.1 or HTTP/2 on a connection, until it ends, the server stops
    /// or it has had no request in flight for the idle deadline.
    async fn serve_http<I>(&mut self, io: I) -> Result<(), BoxError>
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let peer = self.peer;
        let (activity, mut idle) = watch::channel(Activity {
            in_flight: 0,
            requests: 0,
            idle_since: Instant::now(),
        });
        let service = PeerService {
            app: self.app.clone(),
            peer,
            activity: Arc::new(activity),
            body_timeout: self.deadlines.body,
        };
        let conn = self.builder.serve_connection(TokioIo::new(io), service);
        tokio::pin!(conn);
        // Set once the connection is asked to close: it may still finish
        // the requests in flight, and is dropped if it then sits idle.
        let mut winding_down = false;
        let mut idle_from = Instant::now();
        loop {
            tokio::select! {
                outcome = conn.as_mut() => return outcome,
                () = closed(&mut self.closing), if !winding_down => {
                    conn.as_mut().graceful_shutdown();
                    winding_down = true;
                }
                () = idle_for(&mut idle, self.deadlines.idle, idle_from) => {
                    // Hyper's own header timer only starts once it knows
                    // the protocol, and HTTP/2 has none: a peer that never
                    // finished a request head is cut off here.
                    if winding_down || idle.borrow().requests == 0 {
                        tracing::debug!(%peer, "connection closed: no request within the header timeout");
                        return Ok(());
                    }
                    conn.as_mut().graceful_shutdown();
                    winding_down = true;
                    idle_from = Instant::now();
                }
            }
        }
    }
}

/// Resolves once the server stops (or is gone).
async fn closed(closing: &mut watch::Receiver<bool>) {
    let _ = closing.wait_for(|closing| *closing).await;
}

/// What a connection is doing, as its requests start and finish.
struct Activity {
    /// Requests whose answer is not yet fully sent.
    in_flight: usize,
    /// Requests received so far.
    requests: u64,
    /// When `in_flight` last dropped to zero (or the connection opened).
    idle_since: Instant,
}

/// Resolves once the connection has had no request in flight for
/// `timeout`, counted from its last answer and no earlier than `from`.
async fn idle_for(activity: &mut watch::Receiver<Activity>, timeout: Duration, from: Instant) {
    loop {
        let deadline = {
            let now = activity.borrow_and_update();
            (now.in_flight == 0).then(|| now.idle_since.max(from) + timeout)
        };
        match deadline {
            None => {
                if activity.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
            Some(deadline) => tokio::select! {
                () = tokio::time::sleep_until(deadline) => return,
                changed = activity.changed() => if changed.is_err() {
                    tokio::time::sleep_until(deadline).await;
                    return;
                },
            },
        }
    }
}

/// Counts a request in its connection's [`Activity`] until its answer is
/// sent (or abandoned).
struct InFlight(Arc<watch::Sender<Activity>>);

impl InFlight {
    fn enter(activity: Arc<watch::Sender<Activity>>) -> Self {
        activity.send_modify(|a| {
            a.in_flight += 1;
            a.requests += 1;
        });
        Self(activity)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.send_modify(|a| {
            a.in_flight -= 1;
            if a.in_flight == 0 {
                a.idle_since = Instant::now();
            }
        });
    }
}

/// The router as a hyper service that tells handlers who the peer is,
/// puts a deadline on each request body, and counts requests in flight.
#[derive(Clone)]
struct PeerService {
    app: Router,
    peer: SocketAddr,
    activity: Arc<watch::Sender<Activity>>,
    body_timeout: Duration,
}

impl hyper::service::Service<hyper::Request<Incoming>> for PeerService {
    type Response = hyper::Response<TrackedBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn call(&self, mut request: hyper::Request<Incoming>) -> Self::Future {
        let in_flight = InFlight::enter(self.activity.clone());
        let method = request.method().clone();
        request.extensions_mut().insert(ConnectInfo(self.peer));
        let timed_out = Arc::new(AtomicBool::new(false));
        let body_timeout = self.body_timeout;
        let request = request.map(|body| {
            axum::body::Body::new(DeadlineBody {
                inner: body,
                deadline: Instant::now() + body_timeout,
                timeout: body_timeout,
                sleep: None,
                timed_out: timed_out.clone(),
            })
        });
        // A router is always ready (axum's own `serve` relies on the same).
        let answer = self.app.clone().call(request);
        Box::pin(async move {
            let Ok(mut response) = answer.await;
            // Whatever the handler made of the failed read (a 400, say),
            // the client is told its body was too slow; handlers that
            // answer 408 themselves keep their own body.
            if timed_out.load(Ordering::Acquire) && response.status() != StatusCode::REQUEST_TIMEOUT
            {
                response = body_timeout_response(body_timeout);
            }
            let response = with_json_body(&method, response);
            Ok(response.map(|body| TrackedBody {
                body,
                _in_flight: in_flight,
            }))
        })
    }
}

/// What reading a request body fails with once
/// [`ServeConfig::request_body_timeout`] has passed; the answer is then 408
/// whatever the handler returns.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the request body did not arrive within {0:?}")]
pub struct BodyTimeout(pub Duration);

impl BodyTimeout {
    /// The body timeout somewhere in an error's chain of sources (body
    /// errors arrive wrapped by axum and by `http_body_util::Limited`).
    pub fn find<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a BodyTimeout> {
        let mut next = Some(error);
        while let Some(e) = next {
            if let Some(timeout) = e.downcast_ref::<BodyTimeout>() {
                return Some(timeout);
            }
            next = e.source();
        }
        None
    }
}

/// The answer to a request whose body missed its deadline, in the style of
/// the nodes' JSON errors.
pub fn body_timeout_response(timeout: Duration) -> Response {
    error_response(
        StatusCode::REQUEST_TIMEOUT,
        "request_timeout",
        BodyTimeout(timeout).to_string(),
    )
}

/// An error answer in the nodes' JSON shape:
/// `{"status": "error", "reason": <code>, "message": <text>}`.
pub fn error_response(status: StatusCode, reason: &str, message: impl Into<String>) -> Response {
    let body = serde_json::json!({
        "status": "error",
        "reason": reason,
        "message": message.into(),
    });
    (status, axum::Json(body)).into_response()
}

/// The machine-readable reason of an error answer that came without a body:
/// `not_found` (no such route), `method_not_allowed` (the route exists, the
/// method does not; the `Allow` header lists those that do), otherwise the
/// status's name in snake case (`payload_too_large`, ...).
pub fn status_reason(status: StatusCode) -> String {
    match status {
        StatusCode::NOT_FOUND => "not_found".into(),
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed".into(),
        _ => status
            .canonical_reason()
            .unwrap_or("error")
            .to_ascii_lowercase()
            .replace(|c: char| !c.is_ascii_alphanumeric(), "_"),
    }
}

/// Every error answer a node sends has a JSON body: one that has none
/// (axum's 404 for an unknown route, its 405 for a method a route does
/// not take, a bare status code from a handler) gets
/// [`error_response`]'s, headers such as `Allow` kept. Answers to `HEAD`
/// stay bodiless, as HTTP requires.
fn with_json_body(method: &Method, response: Response) -> Response {
    use hyper::body::Body as _;
    let status = response.status();
    let bodiless = response.body().size_hint().exact() == Some(0);
    if !(status.is_client_error() || status.is_server_error())
        || !bodiless
        || method == Method::HEAD
    {
        return response;
    }
    let message = match status {
        StatusCode::NOT_FOUND => "no such route".to_string(),
        StatusCode::METHOD_NOT_ALLOWED => {
            format!("this route does not take {method}; the Allow header lists what it takes")
        }
        _ => status.canonical_reason().unwrap_or("error").to_string(),
    };
    let (mut parts, _) = response.into_parts();
    let json = error_response(status, &status_reason(status), message);
    let (json_parts, body) = json.into_parts();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        json_parts
            .headers
            .get(header::CONTENT_TYPE)
            .cloned()
            .unwrap_or(HeaderValue::from_static("application/json")),
    );
    Response::from_parts(parts, body)
}

/// A request body that fails with [`BodyTimeout`] if it has not ended by
/// its deadline.
struct DeadlineBody {
    inner: Incoming,
    deadline: Instant,
    timeout: Duration,
    /// Made the first time the body has to wait.
    sleep: Option<Pin<Box<Sleep>>>,
    timed_out: Arc<AtomicBool>,
}

impl hyper::body::Body for DeadlineBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if this.timed_out.load(Ordering::Acquire) {
            return Poll::Ready(None);
        }
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        let deadline = this.deadline;
        let sleep = this
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if sleep.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        this.timed_out.store(true, Ordering::Release);
        Poll::Ready(Some(Err(Box::new(BodyTimeout(this.timeout)))))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// An answer's body, holding its request's place in the connection's
/// count of requests in flight until it is sent.
struct TrackedBody {
    body: axum::body::Body,
    _in_flight: InFlight,
}

impl hyper::body::Body for TrackedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A registry's metrics as a Prometheus text-format answer: what every
/// node's `/metrics` route returns.
pub fn metrics_response(registry: &prometheus::Registry) -> axum::response::Response {
    use axum::http::{StatusCode, header};
    use axum::response::IntoResponse;
    let mut out = String::new();
    match prometheus::TextEncoder::new().encode_utf8(&registry.gather(), &mut out) {
        Ok(()) => ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use axum::routing::{get, post};

    use super::*;

    /// Every error answer has a JSON body, over a real socket: the unknown
    /// route, the method a route does not take (its `Allow` kept), and a
    /// bare status from a handler; answers with a body of their own and
    /// answers to `HEAD` are left as they are.
    #[tokio::test]
    async fn bodiless_error_answers_get_the_json_error_body() {
        let app = Router::new()
            .route("/things", post(|| async { "made" }))
            .route("/teapot", get(|| async { StatusCode::IM_A_TEAPOT }))
            .route(
                "/own",
                get(|| async { (StatusCode::CONFLICT, "my own words") }),
            );
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let served = tokio::spawn(async move {
            serve(listener, app, &ServeConfig::default(), async move {
                let _ = stopped.await;
            })
            .await
        });
        let client = reqwest::Client::new();
        let cases = [
            (Method::GET, "/nowhere", 404, "not_found"),
            (Method::POST, "/nowhere", 404, "not_found"),
            (Method::GET, "/things", 405, "method_not_allowed"),
            (Method::PUT, "/things", 405, "method_not_allowed"),
            (Method::GET, "/teapot", 418, "i_m_a_teapot"),
        ];
        for (method, path, status, reason) in cases {
            let answer = tokio::time::timeout(
                Duration::from_secs(30),
                client
                    .request(method.clone(), format!("{url}{path}"))
                    .send(),
            )
            .await
            .expect("answered in time")
            .unwrap();
            assert_eq!(answer.status().as_u16(), status, "{method} {path}");
            assert_eq!(
                answer.headers()[header::CONTENT_TYPE],
                "application/json",
                "{method} {path}"
            );
            if status == 405 {
                assert_eq!(answer.headers()[header::ALLOW], "POST", "{method} {path}");
            }
            let body: serde_json::Value = answer.json().await.unwrap();
            assert_eq!(body["status"], "error", "{method} {path}: {body}");
            assert_eq!(body["reason"], reason, "{method} {path}: {body}");
            assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
        }
        let own = client.get(format!("{url}/own")).send().await.unwrap();
        assert_eq!(own.status().as_u16(), 409);
        assert_eq!(own.text().await.unwrap(), "my own words");
        let head = client.head(format!("{url}/nowhere")).send().await.unwrap();
        assert_eq!(head.status().as_u16(), 404);
        assert_eq!(head.bytes().await.unwrap().len(), 0);
        let made = client.post(format!("{url}/things")).send().await.unwrap();
        assert_eq!(made.status().as_u16(), 200);
        assert_eq!(made.text().await.unwrap(), "made");
        stop.send(()).unwrap();
        served.await.unwrap().unwrap();
    }
}
