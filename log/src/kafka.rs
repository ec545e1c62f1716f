//! The log on Kafka (any Kafka-API broker), through librdkafka.
//!
//! Producer: idempotent, `acks=all`, so a 202 means every in-sync replica
//! has the record and librdkafka's retries cannot duplicate or reorder it.
//! Consumer: a consumer group with auto-commit off; the processor commits
//! positions itself, after the lake objects covering them are durable.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

use crate::{Delivered, LogConsumer, LogError, LogProducer, Record, Resume};

/// Connection and producer settings, each with the default Candor ships.
#[derive(Debug, Clone)]
pub struct KafkaConfig {
    /// `bootstrap.servers`, e.g. `127.0.0.1:19092`.
    pub brokers: String,
    pub topic: String,
    /// `linger.ms`: how long the producer waits to fill a batch (default 5).
    pub linger_ms: u32,
    /// `message.timeout.ms`: how long a record may wait for its acknowledgement
    /// before the append fails and the agent gets a 503 (default 10000).
    pub message_timeout_ms: u32,
    /// `queue.buffering.max.messages`: records queued in the producer before
    /// `append` reports `Full` (default 100000).
    pub queue_max_messages: u32,
    /// Any other librdkafka property, passed through unchanged and applied last.
    pub extra: BTreeMap<String, String>,
}

impl KafkaConfig {
    pub fn new(brokers: impl Into<String>, topic: impl Into<String>) -> Self {
        Self {
            brokers: brokers.into(),
            topic: topic.into(),
            linger_ms: 5,
            message_timeout_ms: 10_000,
            queue_max_messages: 100_000,
            extra: BTreeMap::new(),
        }
    }

    fn client_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers);
        c
    }

    fn with_extra(&self, mut c: ClientConfig) -> ClientConfig {
        for (k, v) in &self.extra {
            c.set(k, v);
        }
        c
    }
}

fn fatal(e: KafkaError) -> LogError {
    LogError::Fatal(e.to_string())
}

pub struct KafkaProducer {
    producer: FutureProducer,
    topic: String,
}

impl KafkaProducer {
    pub fn new(config: &KafkaConfig) -> Result<Self, LogError> {
        let mut c = config.client_config();
        c.set("acks", "all")
            .set("enable.idempotence", "true")
            .set("linger.ms", config.linger_ms.to_string())
            .set("message.timeout.ms", config.message_timeout_ms.to_string())
            .set(
                "queue.buffering.max.messages",
                config.queue_max_messages.to_string(),
            )
            // Values are sealed (ciphertext does not compress): spend no CPU on it.
            .set("compression.type", "none");
        let producer = config.with_extra(c).create().map_err(fatal)?;
        Ok(Self {
            producer,
            topic: config.topic.clone(),
        })
    }
}

#[async_trait]
impl LogProducer for KafkaProducer {
    async fn append(&self, records: Vec<Record>) -> Result<(), LogError> {
        let mut pending = Vec::with_capacity(records.len());
        let mut first_error = None;
        for r in &records {
            let record = FutureRecord::to(&self.topic).key(&r.key).payload(&r.value);
            match self.producer.send_result(record) {
                Ok(delivery) => pending.push(delivery),
                Err((e, _)) => {
                    first_error = Some(match e {
                        KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull) => {
                            LogError::Full("producer queue is full".into())
                        }
                        e => LogError::Unavailable(e.to_string()),
                    });
                    break;
                }
            }
        }
        // Wait for every acknowledgement, even after a failure, so no record
        // of this batch is still in flight when the caller hears the answer.
        for delivery in pending {
            let outcome = match delivery.await {
                Ok(Ok(_)) => continue,
                Ok(Err((e, _))) => LogError::Unavailable(e.to_string()),
                Err(_) => LogError::Unavailable("producer dropped the delivery".into()),
            };
            first_error.get_or_insert(outcome);
        }
        first_error.map_or(Ok(()), Err)
    }

    async fn flush(&self, timeout: Duration) -> Result<(), LogError> {
        let producer = self.producer.clone();
        tokio::task::spawn_blocking(move || producer.flush(timeout))
            .await
            .map_err(|e| LogError::Fatal(e.to_string()))?
            .map_err(|e| LogError::Unavailable(e.to_string()))
    }

    async fn check(&self) -> Result<(), LogError> {
        let producer = self.producer.clone();
        let topic = self.topic.clone();
        tokio::task::spawn_blocking(move || {
            producer
                .client()
                .fetch_metadata(Some(&topic), Duration::from_secs(2))
        })
        .await
        .map_err(|e| LogError::Fatal(e.to_string()))?
        .map(|_| ())
        .map_err(|e| LogError::Unavailable(e.to_string()))
    }
}

pub struct KafkaConsumer {
    consumer: Arc<StreamConsumer>,
    /// A client outside the group, for watermark queries: on the group
    /// consumer's connections they would queue behind its long-polling fetches.
    meta: Arc<BaseConsumer>,
    topic: String,
}

impl KafkaConsumer {
    /// Joins `group` and subscribes to the topic. A group with no committed
    /// position starts from the earliest record.
    pub fn new(config: &KafkaConfig, group: &str) -> Result<Self, LogError> {
        let mut c = config.client_config();
        c.set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false");
        let consumer: StreamConsumer = config.with_extra(c).create().map_err(fatal)?;
        consumer.subscribe(&[&config.topic]).map_err(fatal)?;
        let meta: BaseConsumer = config
            .with_extra(config.client_config())
            .create()
            .map_err(fatal)?;
        Ok(Self {
            consumer: Arc::new(consumer),
            meta: Arc::new(meta),
            topic: config.topic.clone(),
        })
    }
}

#[async_trait]
impl LogConsumer for KafkaConsumer {
    async fn poll(
        &mut self,
        max_records: usize,
        wait: Duration,
    ) -> Result<Vec<Delivered>, LogError> {
        let mut out = Vec::new();
        let deadline = tokio::time::Instant::now() + wait;
        while out.len() < max_records {
            // After the first record, take only what is already buffered.
            let until = if out.is_empty() {
                deadline
            } else {
                tokio::time::Instant::now() + Duration::from_millis(1)
            };
            match tokio::time::timeout_at(until, self.consumer.recv()).await {
                Err(_) => break,
                Ok(Err(e)) => return Err(LogError::Unavailable(e.to_string())),
                Ok(Ok(m)) => out.push(Delivered {
                    partition: m.partition(),
                    offset: m.offset(),
                    key: m.key().unwrap_or_default().to_vec(),
                    value: m.payload().unwrap_or_default().to_vec(),
                }),
            }
        }
        Ok(out)
    }

    async fn commit(&mut self, positions: &[Resume]) -> Result<(), LogError> {
        if positions.is_empty() {
            return Ok(());
        }
        let mut tpl = TopicPartitionList::new();
        for p in positions {
            tpl.add_partition_offset(&self.topic, p.partition, Offset::Offset(p.next_offset))
                .map_err(fatal)?;
        }
        let consumer = self.consumer.clone();
        tokio::task::spawn_blocking(move || consumer.commit(&tpl, CommitMode::Sync))
            .await
            .map_err(|e| LogError::Fatal(e.to_string()))?
            .map_err(|e| LogError::Unavailable(e.to_string()))
    }

    async fn end_offsets(&self) -> Result<Vec<Resume>, LogError> {
        let (meta, topic) = (self.meta.clone(), self.topic.clone());
        Ok(
            tokio::task::spawn_blocking(move || watermarks(meta.as_ref(), &topic))
                .await
                .map_err(|e| LogError::Fatal(e.to_string()))??
                .into_iter()
                .map(|(partition, next_offset)| Resume {
                    partition,
                    next_offset,
                })
                .collect(),
        )
    }

    async fn committed(&self) -> Result<Vec<Resume>, LogError> {
        let mut tpl = TopicPartitionList::new();
        for r in self.end_offsets().await? {
            tpl.add_partition(&self.topic, r.partition);
        }
        let consumer = self.consumer.clone();
        let committed = tokio::task::spawn_blocking(move || {
            consumer.committed_offsets(tpl, Duration::from_secs(10))
        })
        .await
        .map_err(|e| LogError::Fatal(e.to_string()))?
        .map_err(|e| LogError::Unavailable(e.to_string()))?;
        Ok(committed
            .elements()
            .iter()
            .map(|e| Resume {
                partition: e.partition(),
                next_offset: match e.offset() {
                    Offset::Offset(o) => o,
                    _ => 0,
                },
            })
            .collect())
    }
}

/// Creates the topic if it does not exist yet.
pub async fn ensure_topic(config: &KafkaConfig, partitions: i32) -> Result<(), LogError> {
    let admin: AdminClient<DefaultClientContext> = config
        .with_extra(config.client_config())
        .create()
        .map_err(fatal)?;
    let topic = NewTopic::new(&config.topic, partitions, TopicReplication::Fixed(1));
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let results = admin
        .create_topics([&topic], &opts)
        .await
        .map_err(|e| LogError::Unavailable(e.to_string()))?;
    for r in results {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => {
                return Err(LogError::Fatal(format!("creating topic {name}: {code}")));
            }
        }
    }
    Ok(())
}

/// The high watermark (offset after the last record) of every partition,
/// through a client of its own: for tools and tests. A consumer asks
/// through its own client (`LogConsumer::end_offsets`).
pub async fn end_offsets(config: &KafkaConfig) -> Result<Vec<(i32, i64)>, LogError> {
    let consumer: BaseConsumer = config
        .with_extra(config.client_config())
        .create()
        .map_err(fatal)?;
    let topic = config.topic.clone();
    tokio::task::spawn_blocking(move || watermarks(&consumer, &topic))
        .await
        .map_err(|e| LogError::Fatal(e.to_string()))?
}

/// High watermarks of every partition of `topic` (blocking: run it off the
/// async threads).
fn watermarks(consumer: &impl Consumer, topic: &str) -> Result<Vec<(i32, i64)>, LogError> {
    let timeout = Duration::from_secs(10);
    let unavailable = |e: KafkaError| LogError::Unavailable(e.to_string());
    let metadata = consumer
        .fetch_metadata(Some(topic), timeout)
        .map_err(unavailable)?;
    let partitions = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .map(|t| t.partitions().iter().map(|p| p.id()).collect::<Vec<_>>())
        .unwrap_or_default();
    partitions
        .into_iter()
        .map(|p| {
            let (_, high) = consumer
                .fetch_watermarks(topic, p, timeout)
                .map_err(unavailable)?;
            Ok((p, high))
        })
        .collect()
}
