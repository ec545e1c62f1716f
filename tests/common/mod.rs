//! Shared helpers for end-to-end tests: the real Kafka-API broker, fresh
//! topics, an in-process ingest node on a loopback port.

#![allow(dead_code)]

use std::path::Path;
use std::process::Command;
use std::sync::{Arc, OnceLock};

use candor_ingest::{IngestMetrics, IngestState};
use candor_log::kafka::{KafkaConfig, KafkaProducer, ensure_topic};
use candor_schemas::Limits;
use candor_schemas::keys::MasterSecret;

/// Bootstrap address of the test broker: `CANDOR_KAFKA_BROKERS` if set,
/// otherwise the project's script starts (or finds) Tansu on a loopback port.
pub fn broker() -> String {
    static BROKERS: OnceLock<String> = OnceLock::new();
    BROKERS
        .get_or_init(|| {
            if let Ok(b) = std::env::var("CANDOR_KAFKA_BROKERS") {
                return b;
            }
            let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/kafka-broker");
            let status = Command::new(&script)
                .arg("start")
                .status()
                .expect("running scripts/kafka-broker start");
            assert!(status.success(), "scripts/kafka-broker start failed");
            let port = std::env::var("CANDOR_BROKER_PORT").unwrap_or_else(|_| "19092".into());
            format!("127.0.0.1:{port}")
        })
        .clone()
}

/// A new topic with a unique name, so tests never see each other's records.
pub async fn fresh_topic(prefix: &str, partitions: i32) -> KafkaConfig {
    let name = format!("{prefix}-{}", uuid_like());
    let config = KafkaConfig::new(broker(), name);
    ensure_topic(&config, partitions)
        .await
        .expect("topic created");
    config
}

fn uuid_like() -> String {
    use rand::Rng;
    hex::encode(rand::rng().random::<[u8; 8]>())
}

pub fn random_master() -> MasterSecret {
    use rand::Rng;
    MasterSecret::from_bytes(&rand::rng().random::<[u8; 32]>()).unwrap()
}

/// Starts an ingest node on 127.0.0.1:<free port>; returns its base URL.
pub async fn start_ingest(master: MasterSecret, kafka: &KafkaConfig, limits: Limits) -> String {
    let state = Arc::new(IngestState {
        master,
        limits,
        at_rest_key_version: 1,
        log: Arc::new(KafkaProducer::new(kafka).expect("producer")),
        metrics: IngestMetrics::new(),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(candor_ingest::serve(
        listener,
        state,
        std::future::pending(),
    ));
    format!("http://{addr}")
}
