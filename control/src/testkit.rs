//! For tests that speak to a real S3-compatible server: find or start it
//! (moto, through `scripts/s3-server`), and make a fresh bucket per test.
//! Not used by the product.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use object_store::ObjectStore;
use object_store::aws::AmazonS3Builder;

/// `TEST_S3_ENDPOINT` if set, otherwise the project's script starts (or
/// finds) moto on 127.0.0.1:`CANDOR_S3_PORT` (default 19000).
pub fn s3_endpoint() -> String {
    static ENDPOINT: OnceLock<String> = OnceLock::new();
    ENDPOINT
        .get_or_init(|| {
            if let Ok(e) = std::env::var("TEST_S3_ENDPOINT") {
                return e;
            }
            let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/s3-server");
            let status = Command::new(&script)
                .arg("start")
                .status()
                .unwrap_or_else(|e| panic!("running {}: {e}", script.display()));
            assert!(status.success(), "{} start failed", script.display());
            let port = std::env::var("CANDOR_S3_PORT").unwrap_or_else(|_| "19000".into());
            format!("http://127.0.0.1:{port}")
        })
        .clone()
}

/// A store for one test: a temporary local directory, or a fresh bucket on
/// the test S3 server.
pub enum TestStore {
    /// The directory lives as long as the store in it.
    Local(tempfile::TempDir, Arc<dyn ObjectStore>),
    S3(Arc<dyn ObjectStore>),
}

impl TestStore {
    pub fn local() -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        let store =
            object_store::local::LocalFileSystem::new_with_prefix(dir.path()).expect("local store");
        TestStore::Local(dir, Arc::new(store))
    }

    pub fn s3() -> Self {
        TestStore::S3(fresh_bucket("control"))
    }

    pub fn raw(&self) -> Arc<dyn ObjectStore> {
        match self {
            TestStore::Local(_, s) | TestStore::S3(s) => s.clone(),
        }
    }

    /// The deployment prefix every test uses inside the store.
    pub fn prefix() -> object_store::path::Path {
        object_store::path::Path::from("deployment")
    }

    pub fn documents(&self) -> crate::DocumentStore {
        crate::DocumentStore::new(self.raw(), &Self::prefix())
    }
}

/// A bucket no other test has used, on the test S3 server.
pub fn fresh_bucket(prefix: &str) -> Arc<dyn ObjectStore> {
    s3_client(&s3_endpoint(), prefix)
}

/// Like [`fresh_bucket`], with the bucket's name.
pub fn fresh_named_bucket(prefix: &str) -> (String, Arc<dyn ObjectStore>) {
    named_s3_client(&s3_endpoint(), prefix)
}

/// A client of a fresh bucket on `endpoint` (the test server, or a proxy in
/// front of it), with short retries so a test of an unreachable store does
/// not wait minutes.
pub fn s3_client(endpoint: &str, prefix: &str) -> Arc<dyn ObjectStore> {
    named_s3_client(endpoint, prefix).1
}

/// A fresh bucket's name, and a client of it on `endpoint` (the test
/// server, or a proxy in front of it).
pub fn named_s3_client(endpoint: &str, prefix: &str) -> (String, Arc<dyn ObjectStore>) {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let stamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros())
        .unwrap_or_default();
    let bucket = format!(
        "{prefix}-{}-{stamp}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    );
    create_bucket(&s3_endpoint(), &bucket);
    let store = AmazonS3Builder::new()
        .with_endpoint(endpoint)
        .with_retry(object_store::RetryConfig {
            max_retries: 2,
            retry_timeout: std::time::Duration::from_secs(2),
            backoff: object_store::BackoffConfig {
                init_backoff: std::time::Duration::from_millis(50),
                max_backoff: std::time::Duration::from_millis(200),
                base: 2.0,
            },
        })
        .with_allow_http(true)
        .with_bucket_name(&bucket)
        .with_region("us-east-1")
        .with_access_key_id("candor-test")
        .with_secret_access_key("candor-test")
        .build()
        .expect("S3 client for the test server");
    (bucket, Arc::new(store))
}

/// CreateBucket, unsigned: the test server accepts it, and object_store
/// has no bucket API.
fn create_bucket(endpoint: &str, bucket: &str) {
    let host = endpoint.trim_start_matches("http://").trim_end_matches('/');
    let mut conn = TcpStream::connect(host).unwrap_or_else(|e| panic!("connecting to {host}: {e}"));
    write!(
        conn,
        "PUT /{bucket} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .expect("sending CreateBucket");
    let mut answer = String::new();
    conn.read_to_string(&mut answer)
        .expect("reading CreateBucket's answer");
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "CreateBucket {bucket}: {answer}"
    );
}

/// A TCP proxy in front of a server, which a test can cut (every connection
/// dropped, new ones refused) and restore: a real network outage, without
/// stopping a server other tests share.
pub struct TcpProxy {
    addr: std::net::SocketAddr,
    open: Arc<std::sync::atomic::AtomicBool>,
    connections: Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl TcpProxy {
    /// Proxies to `target` (`http://host:port`).
    pub async fn start(target: &str) -> Self {
        let target = target
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_string();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding the proxy");
        let addr = listener.local_addr().expect("proxy address");
        let open = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let connections = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (open2, conns2) = (open.clone(), connections.clone());
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !open2.load(Ordering::SeqCst) {
                    continue; // dropped: the client sees the connection close
                }
                let target = target.clone();
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                conns2.lock().expect("proxy lock").push(task);
            }
        });
        Self {
            addr,
            open,
            connections,
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Drops every connection and refuses new ones.
    pub fn cut(&self) {
        self.open.store(false, Ordering::SeqCst);
        for task in self.connections.lock().expect("proxy lock").drain(..) {
            task.abort();
        }
    }

    pub fn restore(&self) {
        self.open.store(true, Ordering::SeqCst);
    }
}

/// Runs each `async fn case(store: TestStore)` twice, as `local::case` on a
/// temporary directory and as `s3::case` on a fresh bucket of the test S3
/// server.
#[macro_export]
macro_rules! on_both_stores {
    ($($case:ident),* $(,)?) => {
        mod local {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case($crate::testkit::TestStore::local()).await;
                }
            )*
        }
        mod s3 {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case($crate::testkit::TestStore::s3()).await;
                }
            )*
        }
    };
}
