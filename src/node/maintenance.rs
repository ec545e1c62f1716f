//! The lake's maintenance jobs (retention, purge, compaction), as a
//! long-running node schedules them and as the operator's commands run them
//! once.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Result, bail};
use candor_control::AuditLog;
use candor_lake::Lakes;
use candor_lake::jobs::compaction::{self, Compacted, CompactionConfig};
use candor_lake::jobs::retention::{self, RetentionConfig, RetentionRun};
use candor_processor::MaintenanceMetrics;
use candor_schemas::keys::MasterSecret;

use super::{Stop, control_store};
use crate::config::Config;

/// The jobs of one node, with the lakes, control plane and secret they need.
pub struct Maintenance {
    lakes: Lakes,
    config: Config,
    master: MasterSecret,
    metrics: MaintenanceMetrics,
}

impl Maintenance {
    pub fn new(
        config: &Config,
        master: MasterSecret,
        registry: &prometheus::Registry,
    ) -> Result<Arc<Self>> {
        Ok(Arc::new(Self {
            lakes: Lakes::open(&config.lake_url())?,
            config: config.clone(),
            master,
            metrics: MaintenanceMetrics::register(registry),
        }))
    }

    /// Runs retention every `maintenance.retention_every_hours` and
    /// compaction every `maintenance.compact_every_minutes` (0 leaves a job
    /// out), each first at once, until the node stops.
    pub fn schedule(self: &Arc<Self>, config: &Config, stop: &Stop) {
        let m = &config.maintenance;
        for (job, secs) in [
            (Job::Retention, m.retention_every_hours * 3600),
            (Job::Compaction, m.compact_every_minutes * 60),
        ] {
            if secs == 0 {
                continue;
            }
            let this = self.clone();
            tokio::spawn(run_every(
                Duration::from_secs(secs),
                stop.stopped(),
                move || {
                    let this = this.clone();
                    async move {
                        match job {
                            Job::Retention => this.retention().await,
                            Job::Compaction => this.compaction().await,
                        }
                    }
                },
            ));
        }
    }

    fn count(&self, job: &str, outcome: &str) {
        self.metrics.runs.with_label_values(&[job, outcome]).inc();
    }

    async fn retention(&self) {
        match retention_once(&self.lakes, &self.config, &self.master).await {
            Ok(done) => {
                self.count("retention", outcome(done.skipped));
                let n = done.deleted.len();
                self.metrics.partitions_deleted.inc_by(n as u64);
                tracing::info!(
                    partitions_deleted = n,
                    skipped = done.skipped,
                    "retention applied"
                );
            }
            Err(e) => {
                self.count("retention", "failed");
                tracing::error!(error = %e, "retention failed; retrying at the next run");
            }
        }
    }

    async fn compaction(&self) {
        match compact_once(&self.lakes, &self.config).await {
            Ok(done) => {
                self.count("compaction", outcome(done.lakes_failed));
                self.metrics.objects_compacted.inc_by(done.objects_merged);
                self.metrics
                    .merged_objects_written
                    .inc_by(done.objects_written);
                if done.objects_written > 0 {
                    tracing::info!(
                        partitions = done.partitions,
                        objects_merged = done.objects_merged,
                        objects_vacuumed = done.objects_vacuumed,
                        "lake compacted"
                    );
                }
            }
            Err(e) => {
                self.count("compaction", "failed");
                tracing::error!(error = %e, "compaction failed; retrying at the next run");
            }
        }
    }
}

#[derive(Clone, Copy)]
enum Job {
    Retention,
    Compaction,
}

/// Runs `job` now and then every `every` until `stop`. A job logs its own
/// failure and is tried again at its next run.
async fn run_every<F, Fut>(every: Duration, stop: impl Future<Output = ()>, mut job: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    let mut stop = std::pin::pin!(stop);
    loop {
        job().await;
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            () = &mut stop => return,
        }
    }
}

/// How a maintenance run over every lake in use ended, as its metric says:
/// `failed` when a lake or tenant failed (logged), else `ok`.
fn outcome(failed: usize) -> &'static str {
    if failed == 0 { "ok" } else { "failed" }
}

/// A maintenance command's exit: an error unless every lake was done.
pub fn command_outcome(failed: usize) -> Result<()> {
    if failed > 0 {
        bail!("{failed} lakes or tenants failed and were left for the next run (see the log)");
    }
    Ok(())
}

/// Compacts and vacuums every lake in use once, now.
pub async fn compact_once(lakes: &Lakes, config: &Config) -> Result<Compacted> {
    let docs = control_store(config)?.documents;
    Ok(compaction::compact_all(lakes, &docs, &CompactionConfig::default()).await?)
}

/// Applies retention and purges to every lake in use once, now; every
/// deletion is audited first.
pub async fn retention_once(
    lakes: &Lakes,
    config: &Config,
    master: &MasterSecret,
) -> Result<RetentionRun> {
    let c = control_store(config)?;
    let audit = AuditLog::new(c.store, &c.prefix, master.clone());
    let retention = RetentionConfig {
        purge_grace: Duration::from_secs(u64::from(config.maintenance.purge_grace_days) * 86_400),
    };
    let now_ms = chrono::Utc::now().timestamp_millis();
    let done = retention::run(lakes, &c.documents, &audit, &retention, now_ms).await?;
    for d in &done.deleted {
        tracing::info!(tenant = %d.tenant, dataset = d.dataset.name(), date = %d.date, objects = d.objects, bytes = d.bytes, "partition deleted");
    }
    Ok(done)
}
