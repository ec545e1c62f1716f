//! Shared helpers for end-to-end tests: the real Kafka-API broker, fresh
//! topics, an in-process ingest node on a loopback port.

#![allow(dead_code)]

use std::sync::Arc;

use candor_ingest::{IngestMetrics, IngestState};
use candor_log::kafka::{KafkaConfig, KafkaProducer};
use candor_schemas::Limits;
use candor_schemas::keys::MasterSecret;

/// A new topic with a unique name, so tests never see each other's records.
pub async fn fresh_topic(prefix: &str, partitions: i32) -> KafkaConfig {
    candor_log::testkit::fresh_topic(prefix, partitions)
        .await
        .expect("topic created on the test broker")
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
