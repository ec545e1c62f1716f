//! Helpers for tests that speak to a real Kafka-API broker: find or start
//! it, and make a fresh topic per test. Not used by the product.

use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::LogError;
use crate::kafka::{KafkaConfig, ensure_topic};

/// Bootstrap address of the test broker: `TEST_KAFKA_BROKERS` if set,
/// otherwise `scripts/kafka-broker start` starts (or finds) Tansu on
/// 127.0.0.1:`CANDOR_BROKER_PORT` (default 19092), building it once.
pub fn broker() -> String {
    static BROKERS: OnceLock<String> = OnceLock::new();
    BROKERS
        .get_or_init(|| {
            if let Ok(b) = std::env::var("TEST_KAFKA_BROKERS") {
                return b;
            }
            // This crate sits one folder below the workspace root.
            let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/kafka-broker");
            let status = Command::new(&script)
                .arg("start")
                .status()
                .unwrap_or_else(|e| panic!("running {}: {e}", script.display()));
            assert!(status.success(), "{} start failed", script.display());
            let port = std::env::var("CANDOR_BROKER_PORT").unwrap_or_else(|_| "19092".into());
            format!("127.0.0.1:{port}")
        })
        .clone()
}

/// A name no other test, run or process has used.
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!(
        "{prefix}-{}-{nanos}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// A new topic on the test broker, so tests never see each other's records.
pub async fn fresh_topic(prefix: &str, partitions: i32) -> Result<KafkaConfig, LogError> {
    let config = KafkaConfig::new(broker(), unique_name(prefix));
    ensure_topic(&config, partitions).await?;
    Ok(config)
}

/// A broker of a test's own, on its own port and data directory, that the
/// test may kill and restart (the shared broker must stay up for the
/// others). Killed when dropped.
pub struct PrivateBroker {
    binary: std::path::PathBuf,
    dir: std::path::PathBuf,
    port: u16,
    child: Option<std::process::Child>,
}

impl PrivateBroker {
    /// Starts Tansu (the binary `scripts/kafka-broker bin` names) with its
    /// sqlite engine in `dir`, on a free loopback port.
    pub fn start(dir: &Path) -> Self {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/kafka-broker");
        let out = Command::new(&script)
            .arg("bin")
            .output()
            .unwrap_or_else(|e| panic!("running {}: {e}", script.display()));
        assert!(out.status.success(), "{} bin failed", script.display());
        let binary = String::from_utf8(out.stdout).expect("a UTF-8 path");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let mut broker = Self {
            binary: binary.trim().into(),
            dir: dir.to_path_buf(),
            port,
            child: None,
        };
        broker.restart();
        broker
    }

    /// `bootstrap.servers` of this broker.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// SIGKILL: no clean shutdown, as when a machine dies.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the broker again on the same port and data, and waits until
    /// it accepts connections.
    pub fn restart(&mut self) {
        self.kill();
        let url = format!("tcp://{}", self.address());
        let log = std::fs::File::create(self.dir.join("tansu.log")).expect("broker log file");
        // Tansu resolves a relative sqlite path against its working directory.
        let child = Command::new(&self.binary)
            .current_dir(&self.dir)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", "sqlite://tansu.db"])
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", self.binary.display()));
        self.child = Some(child);
        for _ in 0..600 {
            if std::net::TcpStream::connect(self.address()).is_ok() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        panic!(
            "the private broker did not listen on {} within 30 s",
            self.address()
        );
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        self.kill();
    }
}
