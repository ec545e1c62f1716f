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

/// `CANDOR_S3_ENDPOINT` if set, otherwise the project's script starts (or
/// finds) moto on 127.0.0.1:`CANDOR_S3_PORT` (default 19000).
pub fn s3_endpoint() -> String {
    static ENDPOINT: OnceLock<String> = OnceLock::new();
    ENDPOINT
        .get_or_init(|| {
            if let Ok(e) = std::env::var("CANDOR_S3_ENDPOINT") {
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

/// A bucket no other test has used, on the test S3 server.
pub fn fresh_bucket(prefix: &str) -> Arc<dyn ObjectStore> {
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
    let endpoint = s3_endpoint();
    create_bucket(&endpoint, &bucket);
    let store = AmazonS3Builder::new()
        .with_endpoint(&endpoint)
        .with_allow_http(true)
        .with_bucket_name(&bucket)
        .with_region("us-east-1")
        .with_access_key_id("candor-test")
        .with_secret_access_key("candor-test")
        .build()
        .expect("S3 client for the test server");
    Arc::new(store)
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
