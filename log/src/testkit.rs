//! Helpers for tests that speak to a real Kafka-API broker: find or start
//! it, and make a fresh topic per test. Not used by the product.

use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::LogError;
use crate::kafka::{KafkaConfig, ensure_topic};

/// Bootstrap address of the test broker: `CANDOR_KAFKA_BROKERS` if set,
/// otherwise `scripts/kafka-broker start` starts (or finds) Tansu on
/// 127.0.0.1:`CANDOR_BROKER_PORT` (default 19092), building it once.
pub fn broker() -> String {
    static BROKERS: OnceLock<String> = OnceLock::new();
    BROKERS
        .get_or_init(|| {
            if let Ok(b) = std::env::var("CANDOR_KAFKA_BROKERS") {
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
