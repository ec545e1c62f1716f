//! The serving loop over real sockets: TLS with HTTP/2 and HTTP/1.1,
//! plain HTTP/2, slow and idle peers cut off, and a graceful shutdown that
//! finishes the request in flight.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use axum::routing::get;
use candor_http::{ServeConfig, TlsError, load_tls, serve};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, oneshot};

/// Hang guard: a server that never answers fails the test instead of CI.
const GUARD: Duration = Duration::from_secs(30);

fn app() -> Router {
    Router::new().route(
        "/peer",
        get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move { peer.ip().to_string() }),
    )
}

struct Running {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    done: tokio::task::JoinHandle<std::io::Result<()>>,
}

async fn start(app: Router, config: ServeConfig) -> Running {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let done = tokio::spawn(async move {
        serve(listener, app, &config, async move {
            let _ = stopped.await;
        })
        .await
    });
    Running {
        addr,
        stop: Some(stop),
        done,
    }
}

/// A self-signed certificate for `localhost`, written as PEM files.
fn certificate(
    dir: &std::path::Path,
) -> (std::path::PathBuf, std::path::PathBuf, reqwest::Certificate) {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    let root = reqwest::Certificate::from_pem(cert.cert.pem().as_bytes()).unwrap();
    (cert_path, key_path, root)
}

#[tokio::test]
async fn tls_offers_http2_and_http1_and_tells_handlers_the_peer() {
    tokio::time::timeout(GUARD, async {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key, root) = certificate(dir.path());
        let config = ServeConfig {
            tls: Some(load_tls(&cert, &key).unwrap()),
            ..ServeConfig::default()
        };
        let server = start(app(), config).await;
        let url = format!("https://localhost:{}/peer", server.addr.port());
        for (http1_only, want) in [
            (false, reqwest::Version::HTTP_2),
            (true, reqwest::Version::HTTP_11),
        ] {
            let mut client = reqwest::Client::builder()
                .add_root_certificate(root.clone())
                .resolve("localhost", server.addr);
            if http1_only {
                client = client.http1_only();
            }
            let answer = client.build().unwrap().get(&url).send().await.unwrap();
            assert_eq!(answer.version(), want);
            assert_eq!(answer.text().await.unwrap(), "127.0.0.1");
        }
        // A client that does not trust the certificate gets no answer.
        let untrusted = reqwest::Client::builder()
            .resolve("localhost", server.addr)
            .build()
            .unwrap();
        assert!(untrusted.get(&url).send().await.is_err());
    })
    .await
    .expect("within the hang guard");
}

#[tokio::test]
async fn plain_http_speaks_http2_with_prior_knowledge() {
    tokio::time::timeout(GUARD, async {
        let server = start(app(), ServeConfig::default()).await;
        let client = reqwest::Client::builder()
            .http2_prior_knowledge()
            .build()
            .unwrap();
        let answer = client
            .get(format!("http://{}/peer", server.addr))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.version(), reqwest::Version::HTTP_2);
    })
    .await
    .expect("within the hang guard");
}

/// Reads until the server closes the connection; returns what it sent.
async fn read_until_closed(stream: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let _ = stream.read_to_end(&mut got).await;
    got
}

#[tokio::test]
async fn slow_headers_and_idle_connections_are_closed() {
    tokio::time::timeout(GUARD, async {
        let config = ServeConfig {
            header_read_timeout: Duration::from_millis(300),
            ..ServeConfig::default()
        };
        let server = start(app(), config).await;

        // Slowloris: headers started, never finished.
        let mut slow = TcpStream::connect(server.addr).await.unwrap();
        slow.write_all(b"GET /peer HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        let got = read_until_closed(&mut slow).await;
        assert!(
            got.is_empty() || got.starts_with(b"HTTP/1.1 408"),
            "a slow client got {:?}",
            String::from_utf8_lossy(&got)
        );

        // A keep-alive connection that goes quiet after one request is closed too.
        let mut idle = TcpStream::connect(server.addr).await.unwrap();
        idle.write_all(b"GET /peer HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let got = read_until_closed(&mut idle).await;
        assert!(
            got.starts_with(b"HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&got)
        );
    })
    .await
    .expect("a slow or idle connection was never closed");
}

#[tokio::test]
async fn shutdown_finishes_the_request_in_flight_and_takes_no_new_one() {
    tokio::time::timeout(GUARD, async {
        let entered = Arc::new(Notify::new());
        let release = Arc::new(Notify::new());
        let app = Router::new().route(
            "/slow",
            get({
                let (entered, release) = (entered.clone(), release.clone());
                move || async move {
                    entered.notify_one();
                    release.notified().await;
                    "finished"
                }
            }),
        );
        let mut server = start(app, ServeConfig::default()).await;
        let url = format!("http://{}/slow", server.addr);
        let in_flight = tokio::spawn(async move { reqwest::get(url).await?.text().await });
        entered.notified().await;
        server.stop.take().unwrap().send(()).unwrap();
        // The listener closes while the request is still running...
        while TcpStream::connect(server.addr).await.is_ok() {
            tokio::task::yield_now().await;
        }
        assert!(
            !server.done.is_finished(),
            "serve returned with a request in flight"
        );
        // ...and the request still gets its whole answer.
        release.notify_one();
        assert_eq!(in_flight.await.unwrap().unwrap(), "finished");
        server.done.await.unwrap().unwrap();
    })
    .await
    .expect("within the hang guard");
}

#[test]
fn unusable_tls_files_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, _) = certificate(dir.path());
    let missing = dir.path().join("missing.pem");
    assert!(matches!(
        load_tls(&missing, &key),
        Err(TlsError::Pem { .. })
    ));
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "").unwrap();
    assert!(matches!(
        load_tls(&empty, &key),
        Err(TlsError::NoCertificate(_))
    ));
    // A key that belongs to another certificate.
    let (_, other_key, _) = certificate(&{
        let d = dir.path().join("other");
        std::fs::create_dir(&d).unwrap();
        d
    });
    assert!(matches!(
        load_tls(&cert, &other_key),
        Err(TlsError::Config(_))
    ));
}
