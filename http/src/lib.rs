//! How every Candor node serves HTTP: HTTP/1.1 and HTTP/2 on one port,
//! TLS with rustls (HTTP/2 chosen by ALPN) or plain HTTP for a trusted
//! network, bounded connections, timeouts that close slow or idle peers,
//! and a graceful shutdown that lets in-flight requests finish.
//!
//! axum's own `serve` has no TLS and no header timeout, so a node put on
//! the internet would keep every slowloris connection open forever; this
//! loop is hyper-util's connection builder with those settings.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower_service::Service;

/// How a node serves its routes.
#[derive(Clone)]
pub struct ServeConfig {
    /// TLS settings; `None` serves plain HTTP (only for a trusted network,
    /// or behind a proxy that terminates TLS).
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Connections served at once. The next one waits in the kernel's
    /// accept queue, so a flood of connections costs no memory here.
    pub max_connections: usize,
    /// How long a client may take to send a request's headers, and how
    /// long an HTTP/1.1 connection may sit idle between requests.
    pub header_read_timeout: Duration,
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
    let slots = Arc::new(Semaphore::new(config.max_connections));
    let graceful = GracefulShutdown::new();
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
        let service = with_peer(app.clone(), peer);
        let (builder, tls, watcher) = (builder.clone(), tls.clone(), graceful.watcher());
        let handshake_timeout = config.handshake_timeout;
        tokio::spawn(async move {
            let _slot = slot;
            let outcome =
                match tls {
                    None => {
                        let conn = builder.serve_connection(TokioIo::new(stream), service);
                        watcher.watch(conn.into_owned()).await
                    }
                    Some(acceptor) => {
                        let stream =
                            match tokio::time::timeout(handshake_timeout, acceptor.accept(stream))
                                .await
                            {
                                Ok(Ok(stream)) => stream,
                                Ok(Err(e)) => {
                                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                                    return;
                                }
                                Err(_) => {
                                    tracing::debug!(%peer, "TLS handshake timed out");
                                    return;
                                }
                            };
                        let conn = builder.serve_connection(TokioIo::new(stream), service);
                        watcher.watch(conn.into_owned()).await
                    }
                };
            if let Err(e) = outcome {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(config.shutdown_grace, graceful.shutdown())
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

/// The router as a hyper service that tells handlers who the peer is.
#[derive(Clone)]
struct PeerService {
    app: Router,
    peer: SocketAddr,
}

fn with_peer(app: Router, peer: SocketAddr) -> PeerService {
    PeerService { app, peer }
}

impl hyper::service::Service<hyper::Request<Incoming>> for PeerService {
    type Response = <Router as Service<hyper::Request<axum::body::Body>>>::Response;
    type Error = <Router as Service<hyper::Request<axum::body::Body>>>::Error;
    type Future = <Router as Service<hyper::Request<axum::body::Body>>>::Future;

    fn call(&self, mut request: hyper::Request<Incoming>) -> Self::Future {
        request.extensions_mut().insert(ConnectInfo(self.peer));
        // A router is always ready (axum's own `serve` relies on the same).
        self.app.clone().call(request.map(axum::body::Body::new))
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
