//! `candor standalone`, the real binary, with a small `ingest.max_connections` and `query.max_connections`
//! and short timeouts: on both the ingest and the query port, connections
//! that send nothing (more of them than the limit) are closed and the next
//! request is still answered, and a body that stops short of its
//! `Content-Length` gets 408 `request_timeout`.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use common::process::{Standalone, candor, secret_in};

/// Bound of every wait: far above the 1 s timeouts the node runs with, so
/// a failure means "never", not "slow".
const WAIT: Duration = Duration::from_secs(20);
/// Connections each listener serves at once in this test.
const MAX_CONNECTIONS: usize = 3;

/// Waits until the server closes `stream`; returns what it sent.
async fn closed_by_server(stream: &mut TcpStream, what: &str) -> String {
    let mut got = Vec::new();
    tokio::time::timeout(WAIT, async {
        let _ = stream.read_to_end(&mut got).await;
    })
    .await
    .unwrap_or_else(|_| panic!("{what} was never closed"));
    String::from_utf8_lossy(&got).into_owned()
}

/// `GET /healthz` on `addr`, answered within the wait.
async fn healthz(addr: SocketAddr) -> u16 {
    tokio::time::timeout(WAIT, reqwest::get(format!("http://{addr}/healthz")))
        .await
        .unwrap_or_else(|_| panic!("{addr} never answered /healthz"))
        .unwrap_or_else(|e| panic!("{addr}: {e}"))
        .status()
        .as_u16()
}

/// Twice the limit of connections that say nothing (or stop inside the
/// HTTP/2 preface) do not keep the next request from being answered, and
/// are all closed.
async fn silent_connections_are_closed(addr: SocketAddr, port: &str) {
    let mut silent = Vec::new();
    for i in 0..2 * MAX_CONNECTIONS {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        if i % 2 == 1 {
            stream.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
        }
        silent.push(stream);
    }
    assert_eq!(healthz(addr).await, 200, "{port}");
    for (i, stream) in silent.iter_mut().enumerate() {
        let got = closed_by_server(stream, &format!("{port}'s silent connection {i}")).await;
        assert!(!got.starts_with("HTTP/1.1 200"), "{port}: {got}");
    }
}

/// More requests than the limit whose bodies stop short of their
/// `Content-Length` each get 408 `request_timeout`, and the port still
/// answers afterwards.
async fn short_bodies_get_408(addr: SocketAddr, port: &str, head: &str, partial: &str) {
    let mut short = Vec::new();
    for _ in 0..MAX_CONNECTIONS + 1 {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let request = format!(
            "{head}Host: {addr}\r\nContent-Length: {}\r\n\r\n{partial}",
            partial.len() + 100
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        short.push(stream);
    }
    for (i, stream) in short.iter_mut().enumerate() {
        let got = closed_by_server(stream, &format!("{port}'s short body {i}")).await;
        assert!(got.starts_with("HTTP/1.1 408"), "{port}: {got}");
        assert!(
            got.contains(r#""reason":"request_timeout""#),
            "{port}: {got}"
        );
    }
    assert_eq!(healthz(addr).await, 200, "{port}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_short_connections_free_their_slots_on_ingest_and_query() {
    let data = tempfile::tempdir().unwrap();
    let (_, secret_file) = secret_in(data.path());
    // A token, so the query node reads the SQL request's body.
    let token = candor(
        data.path(),
        &secret_file,
        &[
            "tenant",
            "create",
            "--tenant",
            "acme",
            "--time-zone",
            "UTC",
            "--bootstrap-token",
        ],
    );
    let token = token.trim();
    let max = MAX_CONNECTIONS.to_string();
    let node = Standalone::start(
        data.path(),
        &secret_file,
        &[
            "--set",
            &format!("ingest.max_connections={max}"),
            "--set",
            &format!("query.max_connections={max}"),
            "--set",
            "ingest.header_timeout_secs=1",
            "--set",
            "query.header_timeout_secs=1",
            "--set",
            "ingest.body_timeout_secs=1",
            "--set",
            "query.body_timeout_secs=1",
            "--set",
            "maintenance.retention_every_hours=0",
            "--set",
            "maintenance.compact_every_minutes=0",
            "--set",
            "maintenance.extracts_every_hours=0",
        ],
    );
    // Both listeners are up before the limits are put to the test.
    assert_eq!(healthz(node.ingest).await, 200);
    assert_eq!(healthz(node.query).await, 200);

    silent_connections_are_closed(node.ingest, "ingest").await;
    silent_connections_are_closed(node.query, "query").await;

    short_bodies_get_408(
        node.ingest,
        "ingest",
        "POST /v1/batches HTTP/1.1\r\nContent-Type: application/vnd.candor.batch\r\n",
        "a sealed batch that never ends",
    )
    .await;
    short_bodies_get_408(
        node.query,
        "query",
        &format!(
            "POST /v1/sql HTTP/1.1\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\n"
        ),
        r#"{"sql": "SELECT 1"#,
    )
    .await;
}
