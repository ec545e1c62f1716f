//! The settings of an ingest node, shared by `candor ingest` and
//! `candor standalone`: TLS (shared with the query node), caps, quotas, the
//! replay window, concurrency and timeouts; and the query node's connection
//! limits and timeouts. Every flag has an environment variable, so a container
//! is configured the same way as a command line.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Result, bail};
use candor_http::{ServeConfig, load_tls};
use candor_ingest::{IngestConfig, QuotaConfig, ReplayConfig};
use candor_schemas::Limits;
use clap::Args;

/// How a node serves HTTP: HTTPS with a certificate, or plain HTTP, which
/// is refused on a non-loopback address unless asked for. Shared by every
/// node that listens (ingest and query).
#[derive(Args, Clone)]
pub struct TlsArgs {
    /// PEM certificate chain for HTTPS (leaf first). With --tls-key, the
    /// node serves HTTPS with HTTP/2 and HTTP/1.1.
    #[arg(long, env = "CANDOR_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of the certificate.
    #[arg(long, env = "CANDOR_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Serve plain HTTP on a non-loopback address. Only for a trusted
    /// network or behind a proxy that terminates TLS; loopback addresses
    /// never need it.
    #[arg(long, env = "CANDOR_PLAIN_HTTP")]
    pub plain_http: bool,
}

impl TlsArgs {
    /// How a node of kind `node` listening on `listen` serves, with the
    /// defaults of everything but TLS.
    pub fn serve_config(&self, node: &str, listen: SocketAddr) -> Result<ServeConfig> {
        let tls = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some(load_tls(cert, key)?),
            _ => None,
        };
        if tls.is_none() && !listen.ip().is_loopback() && !self.plain_http {
            bail!(
                "{node} would serve plain HTTP on {listen}: give --tls-cert and --tls-key, \
                 or --plain-http if a trusted network or a TLS proxy is in front"
            );
        }
        Ok(ServeConfig {
            tls,
            ..ServeConfig::default()
        })
    }
}

/// The query node's connection limits and timeouts: the same flags as an
/// ingest node's, with `CANDOR_QUERY_*` variables.
#[derive(Args, Clone)]
pub struct QueryServeArgs {
    /// Connections served at once; more wait to be accepted.
    #[arg(long, env = "CANDOR_QUERY_MAX_CONNECTIONS", default_value_t = ServeConfig::default().max_connections)]
    pub max_connections: usize,
    /// Seconds a connection may go without a request in flight: the time a
    /// client has to send its request headers, and an idle connection's life.
    #[arg(long, env = "CANDOR_QUERY_HEADER_TIMEOUT_SECS", default_value_t = ServeConfig::default().header_read_timeout.as_secs())]
    pub header_timeout_secs: u64,
    /// Seconds a client may take to send its request body (then 408).
    #[arg(long, env = "CANDOR_QUERY_BODY_TIMEOUT_SECS", default_value_t = ServeConfig::default().request_body_timeout.as_secs())]
    pub body_timeout_secs: u64,
}

impl QueryServeArgs {
    /// `serve` with these limits and timeouts.
    pub fn apply(&self, serve: ServeConfig) -> ServeConfig {
        ServeConfig {
            max_connections: self.max_connections,
            header_read_timeout: Duration::from_secs(self.header_timeout_secs),
            request_body_timeout: Duration::from_secs(self.body_timeout_secs),
            ..serve
        }
    }
}

#[derive(Args, Clone)]
pub struct IngestNodeArgs {
    #[command(flatten)]
    pub tls: TlsArgs,
    /// Largest request body accepted, in bytes.
    #[arg(long, env = "CANDOR_INGEST_MAX_BODY_BYTES", default_value_t = Limits::default().max_body_bytes)]
    pub max_body_bytes: usize,
    /// Largest batch after decompression, in bytes (decompression-bomb cap).
    #[arg(long, env = "CANDOR_INGEST_MAX_DECOMPRESSED_BYTES", default_value_t = Limits::default().max_decompressed_bytes)]
    pub max_decompressed_bytes: usize,
    /// Most events in one batch.
    #[arg(long, env = "CANDOR_INGEST_MAX_EVENTS", default_value_t = Limits::default().max_events)]
    pub max_events: usize,
    /// Batches per second one device may send, sustained (0 = no limit).
    #[arg(long, env = "CANDOR_INGEST_DEVICE_BATCHES_PER_S", default_value_t = QuotaConfig::default().device_batches_per_s)]
    pub device_batches_per_s: u32,
    /// Batches a device may send at once (an agent catching up after being offline).
    #[arg(long, env = "CANDOR_INGEST_DEVICE_BURST", default_value_t = QuotaConfig::default().device_burst)]
    pub device_burst: u32,
    /// Events per second one tenant may send to this node (0 = no limit).
    #[arg(long, env = "CANDOR_INGEST_TENANT_EVENTS_PER_S", default_value_t = QuotaConfig::default().tenant_events_per_s)]
    pub tenant_events_per_s: u32,
    /// Events a tenant may send at once (at least --max-events).
    #[arg(long, env = "CANDOR_INGEST_TENANT_BURST", default_value_t = QuotaConfig::default().tenant_burst)]
    pub tenant_burst: u32,
    /// Seconds an accepted batch id is remembered, so a retry is answered
    /// 202 without being appended again.
    #[arg(long, env = "CANDOR_INGEST_REPLAY_WINDOW_SECS", default_value_t = ReplayConfig::default().window.as_secs())]
    pub replay_window_secs: u64,
    /// Most batch ids remembered (about 100 bytes each).
    #[arg(long, env = "CANDOR_INGEST_REPLAY_MAX_ENTRIES", default_value_t = ReplayConfig::default().max_entries)]
    pub replay_max_entries: usize,
    /// Batch requests handled at once; more get 503 with Retry-After.
    #[arg(long, env = "CANDOR_INGEST_MAX_IN_FLIGHT", default_value_t = IngestConfig::default().max_in_flight)]
    pub max_in_flight: usize,
    /// Connections served at once; more wait to be accepted. In
    /// standalone, the query listener has as many again.
    #[arg(long, env = "CANDOR_INGEST_MAX_CONNECTIONS", default_value_t = ServeConfig::default().max_connections)]
    pub max_connections: usize,
    /// Seconds a connection may go without a request in flight: the time a
    /// client has to send its request headers, and an idle connection's
    /// life. In standalone, also the query listener's.
    #[arg(long, env = "CANDOR_INGEST_HEADER_TIMEOUT_SECS", default_value_t = ServeConfig::default().header_read_timeout.as_secs())]
    pub header_timeout_secs: u64,
    /// Seconds a client may take to send its request body (then 408). In
    /// standalone, also the query listener's.
    #[arg(long, env = "CANDOR_INGEST_BODY_TIMEOUT_SECS", default_value_t = IngestConfig::default().body_timeout.as_secs())]
    pub body_timeout_secs: u64,
}

impl IngestNodeArgs {
    /// How a node of kind `node` listening on `listen` serves with these
    /// connection limits and timeouts (standalone's query listener uses
    /// them too).
    pub fn serve_config(&self, node: &str, listen: SocketAddr) -> Result<ServeConfig> {
        let serve = self.tls.serve_config(node, listen)?;
        Ok(ServeConfig {
            max_connections: self.max_connections,
            header_read_timeout: Duration::from_secs(self.header_timeout_secs),
            request_body_timeout: Duration::from_secs(self.body_timeout_secs),
            ..serve
        })
    }

    /// The node's configuration; refuses plain HTTP on a public address
    /// unless asked for.
    pub fn config(&self, listen: SocketAddr) -> Result<IngestConfig> {
        let serve = self.serve_config("ingest", listen)?;
        let defaults = IngestConfig::default();
        Ok(IngestConfig {
            limits: Limits {
                max_body_bytes: self.max_body_bytes,
                max_decompressed_bytes: self.max_decompressed_bytes,
                max_events: self.max_events,
                ..Limits::default()
            },
            quotas: QuotaConfig {
                device_batches_per_s: self.device_batches_per_s,
                device_burst: self.device_burst,
                tenant_events_per_s: self.tenant_events_per_s,
                tenant_burst: self.tenant_burst,
            },
            replay: ReplayConfig {
                window: Duration::from_secs(self.replay_window_secs),
                max_entries: self.replay_max_entries,
            },
            max_in_flight: self.max_in_flight,
            body_timeout: Duration::from_secs(self.body_timeout_secs),
            serve,
            ..defaults
        })
    }
}
