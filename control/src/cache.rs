//! What every node keeps of the control plane in memory: per tenant, its
//! document, unwrapped keys, revocations and (where the node needs them)
//! tokens and directory.
//!
//! A tenant is loaded on first use (a miss) and then refreshed on an
//! interval, so a change (a revoked device, a revoked token) takes effect
//! on every node within one interval plus one load. When the store cannot be
//! reached, the node keeps serving with the last good copy; readiness says
//! so, and turns to not-ready once the copy is older than `stale_after`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use candor_schemas::TenantId;
use candor_schemas::keys::MasterSecret;
use prometheus::{IntCounter, IntGauge, Registry};

use crate::devices::Revocations;
use crate::directory::Directory;
use crate::documents::{DocumentError, DocumentStore, Kind, Versioned};
use crate::keyring::{self, KeyringError, TenantKeys};
use crate::tenant::Tenant;
use crate::tokens::TokensDoc;

#[derive(Debug, Clone)]
pub struct CacheConfig {
    /// How often cached tenants are reloaded.
    pub refresh_every: Duration,
    /// How old the last good copy may get before the node reports not ready.
    pub stale_after: Duration,
    /// A tenant that was not found is looked up again after this long.
    pub miss_retry: Duration,
    /// Load tokens (query nodes).
    pub tokens: bool,
    /// Load the directory (processors, query nodes).
    pub directory: bool,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            refresh_every: Duration::from_secs(10),
            stale_after: Duration::from_secs(120),
            miss_retry: Duration::from_secs(1),
            tokens: false,
            directory: false,
        }
    }
}

/// One tenant as a node sees it.
#[derive(Debug)]
pub struct TenantView {
    pub tenant: Versioned<Tenant>,
    /// `None` when the tenant's keys were destroyed.
    pub keys: Option<Arc<TenantKeys>>,
    pub revocations: Revocations,
    /// Empty unless the cache loads tokens.
    pub tokens: TokensDoc,
    /// Empty unless the cache loads the directory.
    pub directory: Arc<Directory>,
    pub loaded_at: Instant,
}

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("control plane unreachable: {0}")]
    Unavailable(String),
    #[error("control plane document is not valid: {0}")]
    Invalid(String),
}

impl From<DocumentError> for CacheError {
    fn from(e: DocumentError) -> Self {
        match e {
            DocumentError::Store(e) => CacheError::Unavailable(e.to_string()),
            other => CacheError::Invalid(other.to_string()),
        }
    }
}

impl From<KeyringError> for CacheError {
    fn from(e: KeyringError) -> Self {
        match e {
            KeyringError::Document(d) => d.into(),
            other => CacheError::Invalid(other.to_string()),
        }
    }
}

enum Entry {
    Present(Arc<TenantView>),
    Absent(Instant),
}

struct Health {
    last_ok: Instant,
    last_error: Option<String>,
}

/// Readiness as the control plane sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Readiness {
    pub ready: bool,
    pub detail: String,
}

pub struct CacheMetrics {
    pub age_seconds: IntGauge,
    pub refreshes: IntCounter,
    pub refresh_failures: IntCounter,
    pub tenants: IntGauge,
}

impl CacheMetrics {
    pub fn new(registry: &Registry) -> Self {
        let age_seconds = IntGauge::new(
            "candor_control_cache_age_seconds",
            "Seconds since the control-plane cache last refreshed successfully",
        )
        .expect("valid metric");
        let refreshes = IntCounter::new(
            "candor_control_refreshes_total",
            "Control-plane refresh rounds that succeeded",
        )
        .expect("valid metric");
        let refresh_failures = IntCounter::new(
            "candor_control_refresh_failures_total",
            "Control-plane refresh rounds or loads that failed",
        )
        .expect("valid metric");
        let tenants = IntGauge::new("candor_control_tenants_cached", "Tenants held in memory")
            .expect("valid metric");
        for m in [
            Box::new(age_seconds.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(refreshes.clone()),
            Box::new(refresh_failures.clone()),
            Box::new(tenants.clone()),
        ] {
            registry.register(m).expect("metric registered once");
        }
        Self {
            age_seconds,
            refreshes,
            refresh_failures,
            tenants,
        }
    }
}

pub struct ControlCache {
    docs: DocumentStore,
    master: MasterSecret,
    config: CacheConfig,
    /// Each tenant's entry, with the number of the load that produced it.
    tenants: RwLock<HashMap<TenantId, (u64, Entry)>>,
    /// Numbers loads in the order they start, so a slow load (a refresh
    /// that began before a change) never replaces what a later one stored.
    loads: std::sync::atomic::AtomicU64,
    health: Mutex<Health>,
    metrics: CacheMetrics,
}

impl ControlCache {
    pub fn new(
        docs: DocumentStore,
        master: MasterSecret,
        config: CacheConfig,
        registry: &Registry,
    ) -> Self {
        Self {
            docs,
            master,
            config,
            tenants: RwLock::new(HashMap::new()),
            loads: std::sync::atomic::AtomicU64::new(0),
            health: Mutex::new(Health {
                last_ok: Instant::now(),
                last_error: None,
            }),
            metrics: CacheMetrics::new(registry),
        }
    }

    pub fn documents(&self) -> &DocumentStore {
        &self.docs
    }

    pub fn config(&self) -> &CacheConfig {
        &self.config
    }

    /// Reads a tenant's documents from the store.
    async fn load(&self, id: &TenantId) -> Result<Option<TenantView>, CacheError> {
        let Some(tenant) = self.docs.get::<Tenant>(Kind::Tenant, id.as_str()).await? else {
            return Ok(None);
        };
        let keys = keyring::load(&self.docs, &self.master, id).await?;
        let revocations = self
            .docs
            .get::<Revocations>(Kind::Revocations, id.as_str())
            .await?
            .map(|v| v.doc)
            .unwrap_or_default();
        let tokens = if self.config.tokens {
            self.docs
                .get::<TokensDoc>(Kind::Tokens, id.as_str())
                .await?
                .map(|v| v.doc)
                .unwrap_or_default()
        } else {
            TokensDoc::default()
        };
        let directory = if self.config.directory {
            self.docs
                .get::<Directory>(Kind::Directory, id.as_str())
                .await?
                .map(|v| v.doc)
                .unwrap_or_default()
        } else {
            Directory::default()
        };
        Ok(Some(TenantView {
            tenant,
            keys: keys.map(Arc::new),
            revocations,
            tokens,
            directory: Arc::new(directory),
            loaded_at: Instant::now(),
        }))
    }

    /// Loads a tenant and keeps it, unless a load that started later has
    /// stored one already (then that newer copy is returned).
    async fn load_and_store(&self, id: &TenantId) -> Result<Option<Arc<TenantView>>, CacheError> {
        let seq = self
            .loads
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let view = self.load(id).await?;
        Ok(self.store(id, seq, view))
    }

    fn store(&self, id: &TenantId, seq: u64, view: Option<TenantView>) -> Option<Arc<TenantView>> {
        let mut tenants = self.tenants.write().expect("cache lock");
        if let Some((newer, entry)) = tenants.get(id)
            && *newer > seq
        {
            return match entry {
                Entry::Present(v) => Some(v.clone()),
                Entry::Absent(_) => None,
            };
        }
        let view = view.map(Arc::new);
        tenants.insert(
            id.clone(),
            (
                seq,
                match &view {
                    Some(v) => Entry::Present(v.clone()),
                    None => Entry::Absent(Instant::now()),
                },
            ),
        );
        self.metrics.tenants.set(
            tenants
                .values()
                .filter(|(_, e)| matches!(e, Entry::Present(_)))
                .count() as i64,
        );
        view
    }

    /// A tenant as last loaded, loading it on a miss. `Ok(None)`: no such
    /// tenant. An error only when the tenant is not cached and the store
    /// cannot be read.
    pub async fn get(&self, id: &TenantId) -> Result<Option<Arc<TenantView>>, CacheError> {
        match self.tenants.read().expect("cache lock").get(id) {
            Some((_, Entry::Present(view))) => return Ok(Some(view.clone())),
            Some((_, Entry::Absent(at))) if at.elapsed() < self.config.miss_retry => {
                return Ok(None);
            }
            _ => {}
        }
        self.reload(id).await
    }

    /// Loads a tenant now (after this node changed it, or on a miss).
    pub async fn reload(&self, id: &TenantId) -> Result<Option<Arc<TenantView>>, CacheError> {
        match self.load_and_store(id).await {
            Ok(view) => Ok(view),
            Err(e) => {
                self.metrics.refresh_failures.inc();
                Err(e)
            }
        }
    }

    /// Reloads every cached tenant; on failure keeps the last good copies.
    pub async fn refresh_all(&self) -> Result<(), CacheError> {
        let ids: Vec<TenantId> = {
            let mut tenants = self.tenants.write().expect("cache lock");
            // Forget misses; they are looked up again when asked for.
            tenants.retain(|_, (_, e)| matches!(e, Entry::Present(_)));
            tenants.keys().cloned().collect()
        };
        let outcome = async {
            // A listing proves the store is reachable even with no tenant cached.
            self.docs.ids(Kind::Tenant).await?;
            for id in &ids {
                self.load_and_store(id).await?;
            }
            Ok::<(), CacheError>(())
        }
        .await;
        let mut health = self.health.lock().expect("health lock");
        match &outcome {
            Ok(()) => {
                health.last_ok = Instant::now();
                health.last_error = None;
                self.metrics.refreshes.inc();
            }
            Err(e) => {
                health.last_error = Some(e.to_string());
                self.metrics.refresh_failures.inc();
                tracing::warn!(error = %e, "control-plane refresh failed; serving the last good copy");
            }
        }
        self.metrics
            .age_seconds
            .set(health.last_ok.elapsed().as_secs() as i64);
        outcome
    }

    /// Refreshes every `refresh_every` until `shutdown` resolves.
    pub async fn run_refresher(&self, shutdown: impl std::future::Future<Output = ()>) {
        let mut shutdown = std::pin::pin!(shutdown);
        let mut tick = tokio::time::interval(self.config.refresh_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = &mut shutdown => return,
                _ = tick.tick() => { let _ = self.refresh_all().await; }
            }
        }
    }

    pub fn readiness(&self) -> Readiness {
        let health = self.health.lock().expect("health lock");
        let age = health.last_ok.elapsed();
        match &health.last_error {
            None => Readiness {
                ready: true,
                detail: "control plane: fresh".into(),
            },
            Some(e) => Readiness {
                ready: age < self.config.stale_after,
                detail: format!(
                    "control plane: serving the last good copy, {}s old (limit {}s); last refresh failed: {e}",
                    age.as_secs(),
                    self.config.stale_after.as_secs()
                ),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tenant::Plan;

    fn view(version: u64) -> TenantView {
        TenantView {
            tenant: Versioned {
                version,
                doc: Tenant::new(TenantId::new("acme").unwrap(), Plan::Starter, "UTC"),
            },
            keys: None,
            revocations: Revocations::default(),
            tokens: TokensDoc::default(),
            directory: Arc::new(Directory::default()),
            loaded_at: Instant::now(),
        }
    }

    #[test]
    fn a_load_that_started_earlier_never_replaces_a_later_one() {
        let cache = ControlCache::new(
            crate::testkit::TestStore::local().documents(),
            MasterSecret::from_bytes(&[1; 32]).unwrap(),
            CacheConfig::default(),
            &Registry::new(),
        );
        let acme = TenantId::new("acme").unwrap();
        // A refresh began (load 1), then a change was reloaded (load 2) and
        // stored first; the refresh's older copy arrives last.
        let kept = cache.store(&acme, 2, Some(view(7)));
        assert_eq!(kept.unwrap().tenant.version, 7);
        let kept = cache.store(&acme, 1, Some(view(6)));
        assert_eq!(kept.unwrap().tenant.version, 7, "the newer copy stays");
        let kept = cache.store(&acme, 3, Some(view(8)));
        assert_eq!(kept.unwrap().tenant.version, 8);
    }
}
