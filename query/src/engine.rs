//! Where statements run, and how many at once.
//!
//! SQL is planned and executed on a runtime of its own, apart from the one
//! that serves HTTP, takes in batches and drives the processor: a statement
//! that burns CPU takes the SQL threads' time, never `/healthz`'s or
//! ingest's. Its threads have large stacks (planning recurses over the
//! statement's tree, already bounded by [`crate::bounds`]).
//!
//! - Statements run at once are capped node-wide and per tenant; one over
//!   the cap is refused at once ([`QueryError::Busy`], 429 with
//!   `Retry-After`) rather than queued without bound.
//! - The time limit covers parsing, planning and execution; when it passes
//!   (or the caller goes away) the statement's [`Interrupt`] is tripped,
//!   which stops its operators at their next check ([`crate::guard`]),
//!   and its task is aborted, which drops its streams and the engine's own
//!   tasks with them. The statement's slot is released only when its task
//!   has really ended, so the gauge of running statements is the truth
//!   about the work still on the CPU.
//! - One memory pool is shared by every statement of the node
//!   ([`EngineConfig::memory_bytes`]); each statement also has its own cap
//!   within it ([`crate::session::Limits::memory_bytes`]).

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use datafusion::common::{DataFusionError, Result as DfResult};
use datafusion::execution::memory_pool::{
    GreedyMemoryPool, MemoryLimit, MemoryPool, MemoryReservation,
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::QueryError;
use crate::guard::Interrupt;

/// How the node runs statements.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Threads of the SQL runtime.
    pub workers: usize,
    /// Stack of each SQL thread.
    pub thread_stack_bytes: usize,
    /// Statements running at once on the node.
    pub max_statements: usize,
    /// Statements running at once for one tenant.
    pub max_statements_per_tenant: usize,
    /// Memory shared by all statements of the node (joins, sorts,
    /// aggregations, and the answers being collected).
    pub memory_bytes: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self {
            // Leave a core to serving and ingest where there is more than one.
            workers: cores.saturating_sub(1).max(1),
            thread_stack_bytes: 16 * 1024 * 1024,
            max_statements: 8,
            max_statements_per_tenant: 4,
            memory_bytes: 1024 * 1024 * 1024,
        }
    }
}

/// The node's SQL runtime with its caps.
pub struct SqlEngine {
    config: EngineConfig,
    /// `Some` until drop; shut down in the background on drop, so an
    /// engine may be dropped inside an async context.
    runtime: Option<tokio::runtime::Runtime>,
    statements: Arc<Semaphore>,
    per_tenant: Arc<Mutex<HashMap<String, usize>>>,
    pool: Arc<GreedyMemoryPool>,
    running: prometheus::IntGauge,
    refused: prometheus::IntCounter,
}

impl fmt::Debug for SqlEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqlEngine")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl SqlEngine {
    pub fn new(config: EngineConfig) -> Result<Self, QueryError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(config.workers.max(1))
            .thread_stack_size(config.thread_stack_bytes)
            .thread_name("candor-sql")
            .enable_all()
            .build()
            .map_err(|e| QueryError::Engine(DataFusionError::External(Box::new(e))))?;
        let running = prometheus::IntGauge::new(
            "candor_query_statements_running",
            "SQL statements whose work is still running (an aborted one counts until it has stopped)",
        )
        .expect("valid metric");
        let refused = prometheus::IntCounter::new(
            "candor_query_statements_refused_total",
            "SQL statements refused because the node or the tenant had too many running",
        )
        .expect("valid metric");
        Ok(Self {
            statements: Arc::new(Semaphore::new(config.max_statements.max(1))),
            per_tenant: Arc::default(),
            pool: Arc::new(GreedyMemoryPool::new(config.memory_bytes)),
            runtime: Some(runtime),
            config,
            running,
            refused,
        })
    }

    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// Registers the engine's metrics (once; a second registry keeps none).
    pub fn register_metrics(&self, registry: &prometheus::Registry) {
        let _ = registry.register(Box::new(self.running.clone()));
        let _ = registry.register(Box::new(self.refused.clone()));
    }

    /// Statements whose work has not ended yet.
    pub fn running(&self) -> i64 {
        self.running.get()
    }

    /// Memory the node's statements hold now.
    pub fn memory_reserved(&self) -> usize {
        self.pool.reserved()
    }

    /// A memory pool for one statement: at most `limit` bytes of its own,
    /// taken from the node's pool.
    pub fn statement_pool(&self, limit: usize) -> Arc<dyn MemoryPool> {
        Arc::new(StatementPool {
            node: self.pool.clone(),
            limit,
            used: AtomicUsize::new(0),
        })
    }

    /// Runs the work `start` makes for `tenant` on the SQL runtime within
    /// `timeout`. The work is given the [`Interrupt`] that is tripped when
    /// the time is up or this future is dropped (the caller went away).
    pub async fn run<T: Send + 'static, W>(
        &self,
        tenant: &str,
        timeout: Duration,
        start: impl FnOnce(Interrupt) -> W,
    ) -> Result<T, QueryError>
    where
        W: Future<Output = Result<T, QueryError>> + Send + 'static,
    {
        let slot = self.admit(tenant)?;
        let runtime = self.runtime.as_ref().expect("runtime lives until drop");
        let interrupt = Interrupt::new();
        let _trip_when_done = TripOnDrop(interrupt.clone());
        let work = start(interrupt);
        let mut task = runtime.spawn(async move {
            // Held by the task: released when the work has really stopped.
            let _slot = slot;
            work.await
        });
        match tokio::time::timeout(timeout, &mut task).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(e)) if e.is_panic() => Err(QueryError::Engine(DataFusionError::Execution(
                "the statement failed inside the engine".into(),
            ))),
            Ok(Err(_)) => Err(QueryError::Timeout(timeout)),
            Err(_) => {
                task.abort();
                Err(QueryError::Timeout(timeout))
            }
        }
    }

    fn admit(&self, tenant: &str) -> Result<Slot, QueryError> {
        let busy = || {
            self.refused.inc();
            QueryError::Busy
        };
        let permit = self
            .statements
            .clone()
            .try_acquire_owned()
            .map_err(|_| busy())?;
        {
            let mut per_tenant = self.per_tenant.lock().expect("tenant counts");
            let count = per_tenant.entry(tenant.to_string()).or_default();
            if *count >= self.config.max_statements_per_tenant.max(1) {
                drop(per_tenant);
                return Err(busy());
            }
            *count += 1;
        }
        self.running.inc();
        Ok(Slot {
            _permit: permit,
            tenant: tenant.to_string(),
            per_tenant: self.per_tenant.clone(),
            running: self.running.clone(),
        })
    }
}

impl Drop for SqlEngine {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Trips a statement's interrupt when its caller stops waiting for it,
/// whether the answer came, the time ran out or the caller went away.
struct TripOnDrop(Interrupt);

impl Drop for TripOnDrop {
    fn drop(&mut self) {
        self.0.trip();
    }
}

/// One running statement's place under the caps.
struct Slot {
    _permit: OwnedSemaphorePermit,
    tenant: String,
    per_tenant: Arc<Mutex<HashMap<String, usize>>>,
    running: prometheus::IntGauge,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut per_tenant = self.per_tenant.lock().expect("tenant counts");
        if let Some(count) = per_tenant.get_mut(&self.tenant) {
            *count -= 1;
            if *count == 0 {
                per_tenant.remove(&self.tenant);
            }
        }
        self.running.dec();
    }
}

/// A statement's share of the node's pool: refuses growth past its own
/// limit or past what the node has left.
#[derive(Debug)]
struct StatementPool {
    node: Arc<GreedyMemoryPool>,
    limit: usize,
    used: AtomicUsize,
}

impl fmt::Display for StatementPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "statement(used: {}, limit: {}) in {}",
            self.used.load(Ordering::Relaxed),
            self.limit,
            self.node
        )
    }
}

impl MemoryPool for StatementPool {
    fn name(&self) -> &str {
        "statement"
    }

    fn grow(&self, reservation: &MemoryReservation, additional: usize) {
        self.used.fetch_add(additional, Ordering::Relaxed);
        self.node.grow(reservation, additional);
    }

    fn shrink(&self, reservation: &MemoryReservation, shrink: usize) {
        self.used.fetch_sub(shrink, Ordering::Relaxed);
        self.node.shrink(reservation, shrink);
    }

    fn try_grow(&self, reservation: &MemoryReservation, additional: usize) -> DfResult<()> {
        self.used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                let new = used.checked_add(additional)?;
                (new <= self.limit).then_some(new)
            })
            .map_err(|used| {
                DataFusionError::ResourcesExhausted(format!(
                    "the statement needs {additional} more bytes; {} of its {} are left",
                    self.limit.saturating_sub(used),
                    self.limit
                ))
            })?;
        if let Err(e) = self.node.try_grow(reservation, additional) {
            self.used.fetch_sub(additional, Ordering::Relaxed);
            return Err(match e {
                DataFusionError::ResourcesExhausted(_) => DataFusionError::ResourcesExhausted(
                    "the node's memory for queries is in use by other statements".into(),
                ),
                other => other,
            });
        }
        Ok(())
    }

    fn reserved(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    fn memory_limit(&self) -> MemoryLimit {
        MemoryLimit::Finite(self.limit)
    }
}

#[cfg(test)]
mod tests {
    use datafusion::execution::memory_pool::MemoryConsumer;

    use super::*;

    fn engine(max: usize, per_tenant: usize) -> SqlEngine {
        SqlEngine::new(EngineConfig {
            workers: 1,
            max_statements: max,
            max_statements_per_tenant: per_tenant,
            memory_bytes: 1000,
            ..EngineConfig::default()
        })
        .unwrap()
    }

    #[test]
    fn a_statement_is_bounded_by_its_own_limit_and_by_the_node() {
        let engine = engine(4, 4);
        let (a, b) = (engine.statement_pool(600), engine.statement_pool(600));
        let ra = MemoryConsumer::new("a").register(&a);
        let rb = MemoryConsumer::new("b").register(&b);
        ra.try_grow(600).unwrap();
        assert!(ra.try_grow(1).is_err(), "over its own limit");
        assert!(rb.try_grow(500).is_err(), "over what the node has left");
        rb.try_grow(400).unwrap();
        assert_eq!(engine.memory_reserved(), 1000);
        drop(ra);
        assert_eq!(engine.memory_reserved(), 400);
        assert_eq!(b.reserved(), 400);
    }

    #[tokio::test]
    async fn statements_over_the_caps_are_refused_and_slots_come_back() {
        let engine = Arc::new(engine(2, 1));
        let (release, wait) = tokio::sync::oneshot::channel::<()>();
        let e2 = engine.clone();
        let first = tokio::spawn(async move {
            e2.run("t1", Duration::from_secs(60), |_| async move {
                let _ = wait.await;
                Ok(1)
            })
            .await
        });
        while engine.running() == 0 {
            tokio::task::yield_now().await;
        }
        let again = engine
            .run("t1", Duration::from_secs(5), |_| async { Ok(2) })
            .await;
        assert!(matches!(again, Err(QueryError::Busy)), "per-tenant cap");
        let other = engine
            .run("t2", Duration::from_secs(5), |_| async { Ok(3) })
            .await;
        assert_eq!(other.unwrap(), 3, "another tenant still runs");
        release.send(()).unwrap();
        assert_eq!(first.await.unwrap().unwrap(), 1);
        assert_eq!(engine.running(), 0);
    }

    #[tokio::test]
    async fn the_time_limit_aborts_the_work() {
        let engine = engine(2, 2);
        let answer = engine
            .run("t", Duration::from_millis(50), |_| async {
                std::future::pending::<()>().await;
                Ok(())
            })
            .await;
        assert!(matches!(answer, Err(QueryError::Timeout(_))));
        // The aborted task gives its slot back once it has stopped.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while engine.running() != 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "the aborted work never stopped"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
