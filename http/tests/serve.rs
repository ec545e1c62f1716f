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

/// The first 24 bytes an HTTP/2 client sends, then an empty SETTINGS frame.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const H2_EMPTY_SETTINGS: &[u8] = &[0, 0, 0, 4, 0, 0, 0, 0, 0];

/// Waits, within the hang guard, until the server closes `stream`; fails
/// the test if it never does.
async fn closed_by_server(stream: &mut TcpStream, what: &str) -> Vec<u8> {
    tokio::time::timeout(GUARD, read_until_closed(stream))
        .await
        .unwrap_or_else(|_| panic!("{what} was never closed"))
}

#[tokio::test]
async fn silent_connections_beyond_the_limit_are_closed_and_the_next_request_is_served() {
    tokio::time::timeout(GUARD, async {
        let config = ServeConfig {
            max_connections: 3,
            header_read_timeout: Duration::from_millis(300),
            ..ServeConfig::default()
        };
        let server = start(app(), config).await;
        // Twice the limit: some say nothing at all, some stop inside the
        // HTTP/2 preface (while the server still tells HTTP/1 from 2), some
        // open HTTP/2 and then never start a stream.
        let mut silent = Vec::new();
        for i in 0..6 {
            let mut stream = TcpStream::connect(server.addr).await.unwrap();
            match i % 3 {
                0 => {}
                1 => stream.write_all(&H2_PREFACE[..10]).await.unwrap(),
                _ => {
                    stream.write_all(H2_PREFACE).await.unwrap();
                    stream.write_all(H2_EMPTY_SETTINGS).await.unwrap();
                }
            }
            silent.push(stream);
        }
        // A real request behind all of them is answered.
        let answer = reqwest::get(format!("http://{}/peer", server.addr))
            .await
            .expect("answered while silent connections held every slot");
        assert_eq!(answer.status(), 200);
        assert_eq!(answer.text().await.unwrap(), "127.0.0.1");
        for (i, stream) in silent.iter_mut().enumerate() {
            let got = closed_by_server(stream, &format!("silent connection {i}")).await;
            assert!(
                !got.starts_with(b"HTTP/1.1 200"),
                "{}",
                String::from_utf8_lossy(&got)
            );
        }
    })
    .await
    .expect("within the hang guard");
}

#[tokio::test]
async fn silent_tls_connections_are_closed_before_and_after_the_handshake() {
    tokio::time::timeout(GUARD, async {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key, root) = certificate(dir.path());
        let config = ServeConfig {
            tls: Some(load_tls(&cert, &key).unwrap()),
            max_connections: 2,
            header_read_timeout: Duration::from_millis(300),
            handshake_timeout: Duration::from_millis(300),
            ..ServeConfig::default()
        };
        let server = start(app(), config).await;

        // Never says hello.
        let mut no_hello = TcpStream::connect(server.addr).await.unwrap();
        // Finishes the handshake (offering HTTP/2), then says nothing.
        let mut client = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates({
            use rustls_pki_types::pem::PemObject;
            let mut roots = rustls::RootCertStore::empty();
            roots
                .add(rustls_pki_types::CertificateDer::from_pem_file(&cert).unwrap())
                .unwrap();
            roots
        })
        .with_no_client_auth();
        client.alpn_protocols = vec![b"h2".to_vec()];
        let mut after_hello = tokio_rustls::TlsConnector::from(Arc::new(client))
            .connect(
                "localhost".try_into().unwrap(),
                TcpStream::connect(server.addr).await.unwrap(),
            )
            .await
            .expect("TLS handshake");

        let answer = reqwest::Client::builder()
            .add_root_certificate(root)
            .resolve("localhost", server.addr)
            .build()
            .unwrap()
            .get(format!("https://localhost:{}/peer", server.addr.port()))
            .send()
            .await
            .expect("answered while silent connections held every slot");
        assert_eq!(answer.status(), 200);

        closed_by_server(&mut no_hello, "a connection without a TLS hello").await;
        tokio::time::timeout(GUARD, async {
            let mut got = Vec::new();
            let _ = after_hello.read_to_end(&mut got).await;
        })
        .await
        .expect("a silent connection after its TLS handshake was never closed");
    })
    .await
    .expect("within the hang guard");
}

/// Sends `head` and then `trickle` forever, one byte every 20 ms, until
/// the server closes the connection; returns what the server sent.
async fn trickle(addr: SocketAddr, head: &'static [u8], trickle: u8) -> Vec<u8> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    let writer = tokio::spawn(async move {
        for byte in head.iter().copied().chain(std::iter::repeat(trickle)) {
            if write.write_all(&[byte]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let mut got = Vec::new();
    let closed = tokio::time::timeout(GUARD, read.read_to_end(&mut got)).await;
    writer.abort();
    assert!(closed.is_ok(), "a trickled head was never closed");
    got
}

#[tokio::test]
async fn a_head_trickled_byte_by_byte_is_closed() {
    tokio::time::timeout(GUARD, async {
        let config = ServeConfig {
            header_read_timeout: Duration::from_millis(300),
            ..ServeConfig::default()
        };
        let server = start(app(), config).await;
        // An HTTP/1.1 head whose last header never ends, and an HTTP/2
        // preface sent so slowly that it is still being read when the
        // deadline passes (the server has not yet chosen a protocol).
        for (head, byte) in [
            (&b"GET /peer HTTP/1.1\r\nHost: x\r\nX-Slow: "[..], b'a'),
            (H2_PREFACE, 0),
        ] {
            let got = trickle(server.addr, head, byte).await;
            assert!(
                got.is_empty() || got.starts_with(b"HTTP/1.1 408"),
                "a trickled head got {:?}",
                String::from_utf8_lossy(&got)
            );
        }
        // The server still serves.
        let answer = reqwest::get(format!("http://{}/peer", server.addr))
            .await
            .unwrap();
        assert_eq!(answer.status(), 200);
    })
    .await
    .expect("within the hang guard");
}

#[tokio::test]
async fn a_body_that_stops_short_of_its_length_gets_408() {
    tokio::time::timeout(GUARD, async {
        let app = app().route(
            "/echo",
            axum::routing::post(|body: axum::body::Bytes| async move { body }),
        );
        let config = ServeConfig {
            max_connections: 2,
            request_body_timeout: Duration::from_millis(300),
            ..ServeConfig::default()
        };
        let server = start(app, config).await;
        // More stopped bodies than slots: each is answered and closed, so
        // none keeps its slot.
        for _ in 0..3 {
            let mut short = TcpStream::connect(server.addr).await.unwrap();
            short
                .write_all(
                    b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789",
                )
                .await
                .unwrap();
            let got = closed_by_server(&mut short, "a short body").await;
            let got = String::from_utf8_lossy(&got);
            assert!(got.starts_with("HTTP/1.1 408"), "{got}");
            assert!(got.contains(r#""reason":"request_timeout""#), "{got}");
            assert!(got.contains(r#""status":"error""#), "{got}");
        }
        // A whole body is echoed as before.
        let answer = reqwest::Client::new()
            .post(format!("http://{}/echo", server.addr))
            .body("whole")
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 200);
        assert_eq!(answer.text().await.unwrap(), "whole");
    })
    .await
    .expect("within the hang guard");
}

#[tokio::test]
async fn a_request_in_flight_outlives_the_idle_deadline() {
    tokio::time::timeout(GUARD, async {
        let release = Arc::new(Notify::new());
        let app = Router::new().route(
            "/slow",
            get({
                let release = release.clone();
                move || async move {
                    release.notified().await;
                    "finished"
                }
            }),
        );
        let config = ServeConfig {
            header_read_timeout: Duration::from_millis(100),
            ..ServeConfig::default()
        };
        let server = start(app, config).await;
        for client in [
            reqwest::Client::new(),
            reqwest::Client::builder()
                .http2_prior_knowledge()
                .build()
                .unwrap(),
        ] {
            let url = format!("http://{}/slow", server.addr);
            let answer = tokio::spawn(async move { client.get(url).send().await?.text().await });
            // Several idle deadlines pass while the handler works: the
            // connection has a request in flight, so it stays open.
            tokio::time::sleep(Duration::from_millis(500)).await;
            release.notify_one();
            assert_eq!(answer.await.unwrap().unwrap(), "finished");
        }
    })
    .await
    .expect("within the hang guard");
}
