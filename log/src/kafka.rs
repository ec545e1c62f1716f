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
use prometheus::{GaugeVec, IntGauge, IntGaugeVec, Opts, Registry};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::statistics::Statistics;
use rdkafka::{Offset, TopicPartitionList};

use crate::{Delivered, LogConsumer, LogError, LogProducer, Record, Resume};

/// Connection and producer settings, each with the default Candor ships.
/// The defaults favour durability: a 202 means every in-sync replica has
/// the record.
#[derive(Debug, Clone)]
pub struct KafkaConfig {
    /// `bootstrap.servers`, e.g. `127.0.0.1:19092`.
    pub brokers: String,
    pub topic: String,
    /// `acks` (default `all`). `leader` answers once the partition leader
    /// has the record: faster, and a leader failover can lose acknowledged
    /// batches. `acks=0` is not offered: ingest could not keep its promise.
    pub acks: Acks,
    /// `enable.idempotence` (default true): librdkafka's retries cannot
    /// duplicate or reorder records. Requires `acks=all`.
    pub idempotence: bool,
    /// `linger.ms`: how long the producer waits to fill a batch (default 5).
    pub linger_ms: u32,
    /// `batch.size` in bytes (default 1000000).
    pub batch_bytes: u32,
    /// `compression.type` (default `none`: values are sealed, and
    /// ciphertext does not compress).
    pub compression: Compression,
    /// `message.timeout.ms`: how long a record may wait for its acknowledgement
    /// before the append fails and the agent gets a 503 (default 10000).
    pub message_timeout_ms: u32,
    /// `queue.buffering.max.messages`: records queued in the producer before
    /// `append` reports `Full` (default 100000).
    pub queue_max_messages: u32,
    /// `queue.buffering.max.kbytes`: the same bound in KiB (default 65536),
    /// which caps the producer's memory.
    pub queue_max_kbytes: u32,
    /// `statistics.interval.ms`: how often librdkafka's statistics are
    /// turned into metrics (default 5000; 0 turns them off).
    pub statistics_interval_ms: u32,
    /// Replicas of each partition when Candor creates a topic (default 1,
    /// for a single broker; 3 on a production cluster).
    pub replication_factor: i32,
    /// How long a consumer group member may go unheard before the broker
    /// gives its partitions to the others (`session.timeout.ms`): how long
    /// a dead processor's partitions wait. Within the broker's
    /// `group.min.session.timeout.ms` and `group.max.session.timeout.ms`.
    pub session_timeout_ms: u32,
    /// Any other librdkafka property, passed through unchanged and applied
    /// last. A property Candor sets itself ([`MANAGED_PROPERTIES`]) is
    /// refused by [`KafkaConfig::validate`]: it would silently undo a
    /// guarantee (`acks=1` under an idempotent producer, say).
    pub extra: BTreeMap<String, String>,
}

/// The librdkafka properties Candor sets from its own settings, which the
/// passthrough may not override.
pub const MANAGED_PROPERTIES: &[&str] = &[
    "bootstrap.servers",
    "metadata.broker.list",
    "acks",
    "request.required.acks",
    "enable.idempotence",
    "linger.ms",
    "queue.buffering.max.ms",
    "batch.size",
    "compression.type",
    "compression.codec",
    "message.timeout.ms",
    "delivery.timeout.ms",
    "queue.buffering.max.messages",
    "queue.buffering.max.kbytes",
    "statistics.interval.ms",
    "group.id",
    "session.timeout.ms",
    "enable.auto.commit",
    "enable.auto.offset.store",
    "auto.offset.reset",
    "enable.partition.eof",
];

/// Which acknowledgement the producer waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Acks {
    All,
    Leader,
}

impl std::str::FromStr for Acks {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "all" | "-1" => Ok(Self::All),
            "leader" | "1" => Ok(Self::Leader),
            other => Err(format!("acks {other:?}: use all or leader")),
        }
    }
}

/// Producer-side compression of record batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    None,
    Lz4,
    Zstd,
}

impl Compression {
    fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Lz4 => "lz4",
            Self::Zstd => "zstd",
        }
    }
}

impl std::str::FromStr for Compression {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "none" => Ok(Self::None),
            "lz4" => Ok(Self::Lz4),
            "zstd" => Ok(Self::Zstd),
            other => Err(format!("compression {other:?}: use none, lz4 or zstd")),
        }
    }
}

impl KafkaConfig {
    pub fn new(brokers: impl Into<String>, topic: impl Into<String>) -> Self {
        Self {
            brokers: brokers.into(),
            topic: topic.into(),
            acks: Acks::All,
            idempotence: true,
            linger_ms: 5,
            batch_bytes: 1_000_000,
            compression: Compression::None,
            message_timeout_ms: 10_000,
            queue_max_messages: 100_000,
            queue_max_kbytes: 65_536,
            statistics_interval_ms: 5_000,
            replication_factor: 1,
            session_timeout_ms: 45_000,
            extra: BTreeMap::new(),
        }
    }

    /// Refuses settings that contradict each other: an idempotent producer
    /// without `acks=all`, a passthrough property Candor manages itself, a
    /// replication factor below 1.
    pub fn validate(&self) -> Result<(), String> {
        if self.idempotence && self.acks != Acks::All {
            return Err(
                "kafka.idempotence needs kafka.acks = \"all\" (an idempotent producer \
                 waits for every in-sync replica); set kafka.idempotence = false to use \"leader\""
                    .into(),
            );
        }
        if let Some(key) = self
            .extra
            .keys()
            .find(|k| MANAGED_PROPERTIES.contains(&k.trim().to_ascii_lowercase().as_str()))
        {
            return Err(format!(
                "kafka.properties.{key:?} is a property Candor manages itself; \
                 use its kafka setting instead (see `candor config print`)"
            ));
        }
        if self.session_timeout_ms < 1 {
            return Err("kafka.session_timeout_ms must be at least 1".into());
        }
        if self.replication_factor < 1 {
            return Err(format!(
                "kafka.replication_factor must be at least 1, not {}",
                self.replication_factor
            ));
        }
        Ok(())
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

    /// The producer's librdkafka properties, passthrough applied last.
    fn producer_config(&self) -> Result<ClientConfig, LogError> {
        self.validate().map_err(LogError::Fatal)?;
        let mut c = self.client_config();
        c.set(
            "acks",
            match self.acks {
                Acks::All => "all",
                Acks::Leader => "1",
            },
        )
        .set("enable.idempotence", self.idempotence.to_string())
        .set("linger.ms", self.linger_ms.to_string())
        .set("batch.size", self.batch_bytes.to_string())
        .set("compression.type", self.compression.as_str())
        .set("message.timeout.ms", self.message_timeout_ms.to_string())
        .set(
            "queue.buffering.max.messages",
            self.queue_max_messages.to_string(),
        )
        .set(
            "queue.buffering.max.kbytes",
            self.queue_max_kbytes.to_string(),
        )
        .set(
            "statistics.interval.ms",
            self.statistics_interval_ms.to_string(),
        );
        Ok(self.with_extra(c))
    }
}

fn fatal(e: KafkaError) -> LogError {
    LogError::Fatal(e.to_string())
}

/// librdkafka's producer statistics as Prometheus metrics, named
/// `candor_kafka_producer_*`. librdkafka reports running totals, so the
/// totals are gauges that only grow.
#[derive(Clone)]
pub struct ProducerStats {
    queue_messages: IntGauge,
    queue_bytes: IntGauge,
    sent_messages: IntGauge,
    sent_bytes: IntGauge,
    broker_up: IntGaugeVec,
    broker_rtt_p99: GaugeVec,
    broker_errors: IntGaugeVec,
    broker_retries: IntGaugeVec,
    broker_timeouts: IntGaugeVec,
}

impl ProducerStats {
    pub fn register(registry: &Registry) -> Self {
        let gauge = |name: &str, help: &str| IntGauge::new(name, help).expect("valid metric");
        let per_broker = |name: &str, help: &str| {
            IntGaugeVec::new(Opts::new(name, help), &["broker"]).expect("valid metric")
        };
        let stats = Self {
            queue_messages: gauge(
                "candor_kafka_producer_queue_messages",
                "Records in the producer's queue, not yet acknowledged",
            ),
            queue_bytes: gauge(
                "candor_kafka_producer_queue_bytes",
                "Bytes of records in the producer's queue",
            ),
            sent_messages: gauge(
                "candor_kafka_producer_sent_messages_total",
                "Records sent to brokers (librdkafka's running total)",
            ),
            sent_bytes: gauge(
                "candor_kafka_producer_sent_bytes_total",
                "Bytes of records sent to brokers (librdkafka's running total)",
            ),
            broker_up: per_broker(
                "candor_kafka_producer_broker_up",
                "1 when the connection to the broker is up",
            ),
            broker_rtt_p99: GaugeVec::new(
                Opts::new(
                    "candor_kafka_producer_broker_rtt_p99_seconds",
                    "99th percentile of request round trips to the broker over the last statistics interval",
                ),
                &["broker"],
            )
            .expect("valid metric"),
            broker_errors: per_broker(
                "candor_kafka_producer_broker_errors_total",
                "Transmission errors towards the broker (librdkafka's running total)",
            ),
            broker_retries: per_broker(
                "candor_kafka_producer_broker_retries_total",
                "Requests retried towards the broker (librdkafka's running total)",
            ),
            broker_timeouts: per_broker(
                "candor_kafka_producer_broker_timeouts_total",
                "Requests to the broker that timed out (librdkafka's running total)",
            ),
        };
        for c in [
            Box::new(stats.queue_messages.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(stats.queue_bytes.clone()),
            Box::new(stats.sent_messages.clone()),
            Box::new(stats.sent_bytes.clone()),
            Box::new(stats.broker_up.clone()),
            Box::new(stats.broker_rtt_p99.clone()),
            Box::new(stats.broker_errors.clone()),
            Box::new(stats.broker_retries.clone()),
            Box::new(stats.broker_timeouts.clone()),
        ] {
            registry.register(c).expect("unique metric names");
        }
        stats
    }

    fn record(&self, s: &Statistics) {
        let int = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        self.queue_messages.set(int(s.msg_cnt));
        self.queue_bytes.set(int(s.msg_size));
        self.sent_messages.set(s.txmsgs);
        self.sent_bytes.set(s.txmsg_bytes);
        for broker in s.brokers.values() {
            // librdkafka's internal and bootstrap entries have node id -1.
            if broker.nodeid < 0 {
                continue;
            }
            let name = broker.nodename.as_str();
            self.broker_up
                .with_label_values(&[name])
                .set(i64::from(broker.state == "UP"));
            if let Some(rtt) = &broker.rtt {
                self.broker_rtt_p99
                    .with_label_values(&[name])
                    .set(rtt.p99 as f64 / 1e6);
            }
            self.broker_errors
                .with_label_values(&[name])
                .set(int(broker.txerrs));
            self.broker_retries
                .with_label_values(&[name])
                .set(int(broker.txretries));
            self.broker_timeouts
                .with_label_values(&[name])
                .set(int(broker.req_timeouts));
        }
    }
}

/// Hands librdkafka's statistics callbacks to the metrics, if any.
pub struct StatsContext {
    stats: Option<ProducerStats>,
}

impl ClientContext for StatsContext {
    fn stats(&self, statistics: Statistics) {
        if let Some(stats) = &self.stats {
            stats.record(&statistics);
        }
    }
}

pub struct KafkaProducer {
    producer: FutureProducer<StatsContext>,
    topic: String,
}

impl KafkaProducer {
    /// A producer without metrics (statistics are still computed if the
    /// interval is set; use [`KafkaProducer::with_stats`] to export them).
    pub fn new(config: &KafkaConfig) -> Result<Self, LogError> {
        Self::build(config, None)
    }

    /// A producer whose librdkafka statistics land in `stats`.
    pub fn with_stats(config: &KafkaConfig, stats: ProducerStats) -> Result<Self, LogError> {
        Self::build(config, Some(stats))
    }

    fn build(config: &KafkaConfig, stats: Option<ProducerStats>) -> Result<Self, LogError> {
        let producer = config
            .producer_config()?
            .create_with_context(StatsContext { stats })
            .map_err(fatal)?;
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

    fn queue_depth(&self) -> u64 {
        u64::try_from(self.producer.in_flight_count()).unwrap_or(0)
    }
}

pub struct KafkaConsumer {
    consumer: Arc<StreamConsumer>,
    /// A client outside the group, for watermark queries: on the group
    /// consumer's connections they would queue behind its long-polling fetches.
    meta: Arc<BaseConsumer>,
    /// What a rejoin builds its new member from.
    config: KafkaConfig,
    group: String,
}

impl KafkaConsumer {
    /// Joins `group` and subscribes to the topic. A group with no committed
    /// position starts from the earliest record.
    pub fn new(config: &KafkaConfig, group: &str) -> Result<Self, LogError> {
        config.validate().map_err(LogError::Fatal)?;
        let consumer = Self::member(config, group)?;
        consumer.subscribe(&[&config.topic]).map_err(fatal)?;
        let meta: BaseConsumer = config
            .with_extra(config.client_config())
            .create()
            .map_err(fatal)?;
        Ok(Self {
            consumer: Arc::new(consumer),
            meta: Arc::new(meta),
            config: config.clone(),
            group: group.to_string(),
        })
    }

    /// A group member, not yet subscribed.
    fn member(config: &KafkaConfig, group: &str) -> Result<StreamConsumer, LogError> {
        let mut c = config.client_config();
        c.set("group.id", group)
            .set("session.timeout.ms", config.session_timeout_ms.to_string())
            // Six heartbeats per session instead of librdkafka's fixed 3 s
            // (two per 6 s session): one late heartbeat must not cost a
            // live member its partitions.
            .set(
                "heartbeat.interval.ms",
                (config.session_timeout_ms / 6).clamp(1, 3000).to_string(),
            )
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false");
        config.with_extra(c).create().map_err(fatal)
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
            tpl.add_partition_offset(
                &self.config.topic,
                p.partition,
                Offset::Offset(p.next_offset),
            )
            .map_err(fatal)?;
        }
        let consumer = self.consumer.clone();
        tokio::task::spawn_blocking(move || consumer.commit(&tpl, CommitMode::Sync))
            .await
            .map_err(|e| LogError::Fatal(e.to_string()))?
            .map_err(|e| LogError::Unavailable(e.to_string()))
    }

    async fn end_offsets(&self) -> Result<Vec<Resume>, LogError> {
        let (meta, topic) = (self.meta.clone(), self.config.topic.clone());
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
            tpl.add_partition(&self.config.topic, r.partition);
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

    fn assigned(&self) -> Option<Vec<i32>> {
        let assignment = self.consumer.assignment().ok()?;
        Some(
            assignment
                .elements()
                .iter()
                .map(|e| e.partition())
                .collect(),
        )
    }

    async fn rejoin(&mut self) -> Result<(), LogError> {
        // The old member leaves first (closing it sends LeaveGroup and
        // waits for it), so the group forms anew around the new one rather
        // than around a state the broker got wrong.
        let fresh = Arc::new(Self::member(&self.config, &self.group)?);
        let old = std::mem::replace(&mut self.consumer, fresh);
        tokio::task::spawn_blocking(move || drop(old))
            .await
            .map_err(|e| LogError::Fatal(e.to_string()))?;
        self.consumer
            .subscribe(&[&self.config.topic])
            .map_err(fatal)
    }
}

/// Creates the topic if it does not exist yet.
pub async fn ensure_topic(config: &KafkaConfig, partitions: i32) -> Result<(), LogError> {
    let admin: AdminClient<DefaultClientContext> = config
        .with_extra(config.client_config())
        .create()
        .map_err(fatal)?;
    let topic = NewTopic::new(
        &config.topic,
        partitions,
        TopicReplication::Fixed(config.replication_factor),
    );
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
