//! The log between ingest and the processor: one pair of traits, so ingest
//! and the processor do not care whether records go through Kafka (many
//! machines) or an embedded durable spool (one machine).
//!
//! Contract both implementations keep:
//! - `append` returns `Ok` only once every record is durable (Kafka:
//!   acknowledged by all in-sync replicas; spool: fsynced). On `Err` some
//!   records may still have been stored; callers retry the whole batch and
//!   the processor deduplicates by batch id.
//! - records with the same key keep their order;
//! - a consumer's committed position survives restarts, and after a crash
//!   it resumes from its last commit (at-least-once delivery).

use std::time::Duration;

use async_trait::async_trait;

pub mod kafka;
pub mod spool;
pub mod testkit;

/// A record to append: key `tenant/device`, value a sealed log record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub key: String,
    pub value: Vec<u8>,
}

/// A record read back, with its position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivered {
    pub partition: i32,
    pub offset: i64,
    pub key: Vec<u8>,
    pub value: Vec<u8>,
}

/// Where a consumer resumes: the offset of the next record to read in a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resume {
    pub partition: i32,
    pub next_offset: i64,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum LogError {
    /// The local queue is full: the caller should shed load (503).
    #[error("log queue is full: {0}")]
    Full(String),
    /// The log could not confirm durability in time (broker down, timeout).
    #[error("log unavailable: {0}")]
    Unavailable(String),
    /// Misconfiguration or a bug; retrying will not help.
    #[error("log error: {0}")]
    Fatal(String),
}

impl LogError {
    /// Whether the same call may succeed later.
    pub fn is_transient(&self) -> bool {
        !matches!(self, LogError::Fatal(_))
    }
}

#[async_trait]
pub trait LogProducer: Send + Sync + 'static {
    /// Appends records; `Ok` means every one of them is durable.
    async fn append(&self, records: Vec<Record>) -> Result<(), LogError>;

    /// Waits until everything queued has been acknowledged or failed.
    async fn flush(&self, timeout: Duration) -> Result<(), LogError>;

    /// Confirms the log can take appends now (for readiness probes).
    async fn check(&self) -> Result<(), LogError>;

    /// How much is queued and not yet durable: records in the Kafka
    /// producer's queue, append requests waiting for the spool's fsync.
    fn queue_depth(&self) -> u64;
}

#[async_trait]
pub trait LogConsumer: Send + 'static {
    /// Returns up to `max_records`, waiting at most `wait` for the first one.
    /// An empty result means nothing arrived in time.
    async fn poll(
        &mut self,
        max_records: usize,
        wait: Duration,
    ) -> Result<Vec<Delivered>, LogError>;

    /// Records that everything before each `next_offset` is processed.
    async fn commit(&mut self, positions: &[Resume]) -> Result<(), LogError>;

    /// The offset after the last record of every partition, right now.
    async fn end_offsets(&self) -> Result<Vec<Resume>, LogError>;

    /// The positions this consumer's group has committed, for every
    /// partition (0 where it has committed nothing yet).
    async fn committed(&self) -> Result<Vec<Resume>, LogError>;

    /// The partitions the group assigns this consumer right now; `None`
    /// where there is no group to share them with (the spool's one reader
    /// reads every partition).
    fn assigned(&self) -> Option<Vec<i32>> {
        None
    }

    /// Leaves the group and joins it again, so that it assigns every
    /// partition afresh. Reading resumes from the group's commits. Where
    /// there is no group, nothing to do.
    async fn rejoin(&mut self) -> Result<(), LogError> {
        Ok(())
    }
}
