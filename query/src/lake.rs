//! Where the query service reads: the deployment's lake (a local directory
//! or `s3://bucket/prefix`) or, for a tenant whose document names a
//! `lake_url`, that tenant's own lake (data residency).
//!
//! A dataset's rows are what its Delta table names (`candor_lake`'s
//! [`DatasetTable`]), never what a folder holds: an object written by a
//! flush that never committed, or one a compaction already replaced, is in
//! no table version and so in no answer. Nothing here lists a folder.
//!
//! Every loaded table is cached per lake and dataset and shared by all
//! requests. A cached table older than [`LakeConfig::snapshot_ttl`] is
//! brought up to date (incrementally: only the commits since) by the next
//! request that reads it, which bounds how long a new commit stays
//! invisible. Each request then reads one snapshot of each table: its
//! tenant's files of that version and nothing else
//! ([`DatasetTable::tenant_provider`]).
//!
//! A table that cannot be loaded or brought up to date (an unreadable log
//! entry, its store unreachable) stops only the questions that read it:
//! its provider fails when scanned with an error naming the table
//! ([`TableUnavailable`]), and the other datasets are answered.
//!
//! Every session shares one object store registry and one cache manager, so
//! Parquet footers and page indexes are read once per file (objects are
//! never rewritten in place: a rewrite is a new object in a new version).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use async_trait::async_trait;
use candor_control::Tenant;
use candor_lake::{DatasetTable, Lake, LakeError};
use candor_schemas::TenantId;
use candor_schemas::datasets::Dataset;
use datafusion::catalog::{Session, TableProvider};
use datafusion::datasource::empty::EmptyTable;
use datafusion::error::DataFusionError;
use datafusion::execution::cache::cache_manager::{CacheManager, CacheManagerConfig};
use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
use datafusion::execution::object_store::{DefaultObjectStoreRegistry, ObjectStoreRegistry};
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use datafusion::logical_expr::{Expr, TableType};
use datafusion::physical_plan::ExecutionPlan;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};
use tokio::sync::RwLock;

use crate::QueryError;
use crate::engine::{EngineConfig, SqlEngine};

#[derive(Debug, Clone)]
pub struct LakeConfig {
    /// The deployment's lake: a path or `s3://bucket/prefix` (S3 settings
    /// from `AWS_*`).
    pub url: String,
    /// How long a loaded table version is read before the table is checked
    /// for newer commits: how long a new commit may stay invisible.
    pub snapshot_ttl: Duration,
    /// Memory for cached Parquet footers and page indexes.
    pub metadata_cache_bytes: usize,
    /// Where and how many statements run ([`crate::engine`]).
    pub engine: EngineConfig,
}

impl LakeConfig {
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            snapshot_ttl: Duration::from_secs(2),
            metadata_cache_bytes: 64 * 1024 * 1024,
            engine: EngineConfig::default(),
        }
    }
}

/// The table version each of a request's tables reads, by dataset name. A
/// dataset with no table yet, or whose table cannot be read, has none.
pub type TableVersions = BTreeMap<&'static str, u64>;

/// One tenant's four tables, each over that tenant's files of one version.
pub struct TenantTables {
    pub tenant: TenantId,
    /// Each provider exposes the table's columns as delta-rs reads them,
    /// the `tenant` and `date` partition columns included; sessions show
    /// queries the dataset's own columns ([`crate::session`]).
    pub tables: Vec<(Dataset, Arc<dyn TableProvider>)>,
    pub versions: TableVersions,
}

/// A dataset's table that could not be loaded or brought up to date. A
/// question that reads it fails with this error; the others are answered.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct TableUnavailable {
    pub dataset: Dataset,
    /// What went wrong, naming the table first ("the activity table: …").
    pub message: String,
    /// The store could not be reached: the same read may work shortly.
    pub transient: bool,
}

impl TableUnavailable {
    fn of(dataset: Dataset, error: &LakeError) -> Self {
        let text = error.to_string();
        let name = format!("the {} table", dataset.name());
        let message = if text.starts_with(&name) {
            text
        } else {
            format!("{name}: {text}")
        };
        Self {
            dataset,
            message,
            transient: error.is_transient(),
        }
    }
}

/// The lake as every query session sees it.
pub struct QueryLake {
    config: LakeConfig,
    registry: Arc<dyn ObjectStoreRegistry>,
    caches: Arc<CacheManager>,
    engine: Arc<SqlEngine>,
    /// Stores given for (or opened for) object store bases (`s3://bucket`),
    /// by base without a trailing slash.
    stores: Mutex<HashMap<String, Arc<dyn ObjectStore>>>,
    /// Lakes opened so far, by [`location_key`].
    lakes: Mutex<HashMap<String, Lake>>,
    /// Each lake's tables, as last loaded, by lake and dataset.
    tables: Mutex<HashMap<(String, Dataset), TableSlot>>,
    /// Bumped to make every cached table be checked at its next read.
    epoch: Epoch,
}

/// A count whose increase makes every cached table stale.
#[derive(Debug, Clone, Default)]
pub(crate) struct Epoch(Arc<AtomicU64>);

impl Epoch {
    fn now(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }

    /// Every table cached before this call is checked at its next read.
    pub(crate) fn advance(&self) {
        self.0.fetch_add(1, Ordering::AcqRel);
    }
}

/// The cache's place for one lake's table of one dataset: empty until
/// first read, then checked under its write lock and read under its read
/// lock, so requests share one loaded table and one check at a time.
type TableSlot = Arc<RwLock<Option<CachedTable>>>;

/// A dataset's table in one lake as the cache holds it.
struct CachedTable {
    state: TableState,
    /// When it was last loaded or brought up to date; `None`: check it at
    /// the next read.
    checked: Option<Instant>,
    /// The [`Epoch`] it was checked in.
    epoch: u64,
    /// Providers already built over this version, by tenant: built once
    /// per version, not per request.
    providers: Mutex<HashMap<TenantId, Arc<dyn TableProvider>>>,
}

enum TableState {
    /// The lake has no table for the dataset yet.
    Missing,
    Loaded(DatasetTable),
    Unreadable(TableUnavailable),
}

impl TableState {
    fn version(&self) -> Option<u64> {
        match self {
            TableState::Loaded(table) => Some(table.version()),
            TableState::Missing | TableState::Unreadable(_) => None,
        }
    }
}

impl QueryLake {
    pub fn new(config: LakeConfig) -> Result<Self, QueryError> {
        let caches = CacheManager::try_new(
            &CacheManagerConfig::default().with_metadata_cache_limit(config.metadata_cache_bytes),
        )?;
        let lake = Self {
            engine: Arc::new(SqlEngine::new(config.engine.clone())?),
            config,
            // `file://` is the local file system already; each S3 bucket's
            // store is added when a lake in it is opened.
            registry: Arc::new(DefaultObjectStoreRegistry::new()),
            caches,
            stores: Mutex::default(),
            lakes: Mutex::default(),
            tables: Mutex::default(),
            epoch: Epoch::default(),
        };
        // Refuse a bad deployment URL at start, not at the first query.
        lake.lake(None)?;
        Ok(lake)
    }

    /// Uses `store` for every location under `base` (`s3://bucket`),
    /// instead of a client built from the `AWS_*` variables. Lakes under it
    /// opened already are opened again on it, with their tables.
    pub fn register_store(
        &self,
        base: &str,
        store: Arc<dyn ObjectStore>,
    ) -> Result<(), QueryError> {
        let url = url::Url::parse(base).map_err(|e| QueryError::BadLake {
            url: base.to_string(),
            reason: e.to_string(),
        })?;
        let base = store_base(&url);
        self.registry.register_store(&url, store.clone());
        self.stores
            .lock()
            .expect("stores lock")
            .insert(base.clone(), store);
        let under = |key: &str| key == base || key.starts_with(&format!("{base}/"));
        self.lakes
            .lock()
            .expect("lakes lock")
            .retain(|key, _| !under(key));
        self.tables
            .lock()
            .expect("tables lock")
            .retain(|(key, _), _| !under(key));
        Ok(())
    }

    pub fn config(&self) -> &LakeConfig {
        &self.config
    }

    /// The runtime and caps statements run under.
    pub fn engine(&self) -> &Arc<SqlEngine> {
        &self.engine
    }

    /// Makes the next request that reads each cached table check it for
    /// new commits first, whatever its age (after the lake was changed
    /// behind the node's back, or a file a version named was gone).
    pub fn refresh_tables(&self) {
        self.epoch.advance();
    }

    /// What sessions hold to make every cached table stale.
    pub(crate) fn epoch(&self) -> &Epoch {
        &self.epoch
    }

    /// A runtime for one query: the shared stores and caches, its own memory
    /// budget within the node's, and no spilling to disk (a query over
    /// budget fails instead).
    pub fn runtime(&self, memory_bytes: usize) -> Result<Arc<RuntimeEnv>, QueryError> {
        let config = CacheManagerConfig::default()
            .with_file_metadata_cache(Some(self.caches.get_file_metadata_cache()))
            .with_metadata_cache_limit(self.config.metadata_cache_bytes);
        Ok(Arc::new(
            RuntimeEnvBuilder::new()
                .with_memory_pool(self.engine.statement_pool(memory_bytes))
                .with_disk_manager_builder(
                    DiskManagerBuilder::default().with_mode(DiskManagerMode::Disabled),
                )
                .with_cache_manager(config)
                .with_object_store_registry(self.registry.clone())
                .build()?,
        ))
    }

    /// The lake at `location` (`None`: the deployment's) and its key,
    /// opened on first use.
    fn lake(&self, location: Option<&str>) -> Result<(String, Lake), QueryError> {
        let location = location.unwrap_or(&self.config.url);
        let bad = |reason: String| QueryError::BadLake {
            url: location.to_string(),
            reason,
        };
        let key = location_key(location).map_err(bad)?;
        if let Some(lake) = self.lakes.lock().expect("lakes lock").get(&key) {
            return Ok((key, lake.clone()));
        }
        let lake = if is_local(location) {
            Lake::local(&key).map_err(|e| bad(e.to_string()))?
        } else {
            let url = url::Url::parse(location).map_err(|e| bad(e.to_string()))?;
            let base = store_base(&url);
            let store = self.store(&base).map_err(bad)?;
            Lake::on_store(store, location).map_err(|e| bad(e.to_string()))?
        };
        let mut lakes = self.lakes.lock().expect("lakes lock");
        let lake = lakes.entry(key.clone()).or_insert(lake).clone();
        Ok((key, lake))
    }

    /// The store of `base` (`s3://bucket`): the one given, else a client
    /// from the `AWS_*` settings, made once.
    fn store(&self, base: &str) -> Result<Arc<dyn ObjectStore>, String> {
        let mut stores = self.stores.lock().expect("stores lock");
        if let Some(store) = stores.get(base) {
            return Ok(store.clone());
        }
        let (store, _) = candor_control::open_store(base).map_err(|e| e.to_string())?;
        let url = url::Url::parse(base).map_err(|e| e.to_string())?;
        self.registry.register_store(&url, store.clone());
        stores.insert(base.to_string(), store.clone());
        Ok(store)
    }

    /// The tenant's lake and `relative` as a path in it.
    fn object(&self, tenant: &Tenant, relative: &str) -> Result<(Lake, ObjectPath), QueryError> {
        let (_, lake) = self.lake(tenant.lake_url.as_deref())?;
        let path = ObjectPath::parse(relative).map_err(|e| QueryError::BadLake {
            url: relative.to_string(),
            reason: e.to_string(),
        })?;
        Ok((lake, path))
    }

    /// Writes `bytes` at `relative` under the tenant's lake root, durably;
    /// returns the object's URL.
    pub async fn put(
        &self,
        tenant: &Tenant,
        relative: &str,
        bytes: Vec<u8>,
    ) -> Result<String, QueryError> {
        let (lake, path) = self.object(tenant, relative)?;
        lake.put_durable(&path, bytes.into())
            .await
            .map_err(|e| QueryError::Lake(e.to_string()))?;
        Ok(format!("{}{path}", lake.url()))
    }

    /// The object at `relative` under the tenant's lake root, if any.
    pub async fn get(
        &self,
        tenant: &Tenant,
        relative: &str,
    ) -> Result<Option<Vec<u8>>, QueryError> {
        let (lake, path) = self.object(tenant, relative)?;
        let found = lake
            .get_optional(&path)
            .await
            .map_err(|e| QueryError::Lake(e.to_string()))?;
        Ok(found.map(|bytes| bytes.to_vec()))
    }

    /// Writes `bytes` at `relative` unless an object is there already;
    /// returns whether this call wrote it. Two writers racing for one
    /// place get one winner, on a local directory and on S3 alike.
    pub async fn create(
        &self,
        tenant: &Tenant,
        relative: &str,
        bytes: Vec<u8>,
    ) -> Result<bool, QueryError> {
        let (lake, path) = self.object(tenant, relative)?;
        let options = object_store::PutOptions::from(object_store::PutMode::Create);
        match lake.store().put_opts(&path, bytes.into(), options).await {
            Ok(_) => Ok(true),
            Err(
                object_store::Error::AlreadyExists { .. }
                | object_store::Error::Precondition { .. },
            ) => Ok(false),
            Err(e) => Err(QueryError::Lake(e.to_string())),
        }
    }

    /// Whether an object exists at `relative` under the tenant's lake root.
    pub async fn exists(&self, tenant: &Tenant, relative: &str) -> Result<bool, QueryError> {
        let (lake, path) = self.object(tenant, relative)?;
        match lake.store().head(&path).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(QueryError::Lake(e.to_string())),
        }
    }

    /// The tenant's tables, in its lake (`lake_url`, else the
    /// deployment's). Each reads the tenant's files of the table's version
    /// and nothing else, so nothing planned over it can read another
    /// tenant's rows.
    pub async fn tables(&self, tenant: &Tenant) -> Result<TenantTables, QueryError> {
        self.tables_at(&tenant.id, tenant.lake_url.as_deref()).await
    }

    /// The tables of `tenant` in `lake_url`, or in the deployment's lake.
    pub async fn tables_at(
        &self,
        tenant: &TenantId,
        lake_url: Option<&str>,
    ) -> Result<TenantTables, QueryError> {
        let (key, lake) = self.lake(lake_url)?;
        let read = Dataset::ALL.map(|dataset| self.read(&key, &lake, dataset, tenant));
        let mut tables = Vec::with_capacity(Dataset::ALL.len());
        let mut versions = TableVersions::new();
        for (dataset, (provider, version)) in Dataset::ALL
            .into_iter()
            .zip(futures::future::join_all(read).await)
        {
            if let Some(version) = version {
                versions.insert(dataset.name(), version);
            }
            tables.push((dataset, provider));
        }
        Ok(TenantTables {
            tenant: tenant.clone(),
            tables,
            versions,
        })
    }

    /// The tables of `tenant` as they were at `as_of` (an owner's question
    /// for an audit or a dispute), each loaded for this request alone and
    /// built over that tenant's files of that version. A version whose
    /// files VACUUM has deleted since cannot be read: the question fails
    /// with the table's error.
    ///
    /// `as_of` says each dataset's moment; `None`: the dataset had no table
    /// then, and reads as empty.
    pub async fn tables_as_of(
        &self,
        tenant: &Tenant,
        as_of: impl Fn(Dataset) -> Option<candor_lake::AsOf>,
    ) -> Result<TenantTables, QueryError> {
        let (key, lake) = self.lake(tenant.lake_url.as_deref())?;
        let mut tables = Vec::with_capacity(Dataset::ALL.len());
        let mut versions = TableVersions::new();
        for dataset in Dataset::ALL {
            let as_of = as_of(dataset);
            let loaded = match as_of {
                Some(as_of) => DatasetTable::load_as_of(&lake, dataset, as_of).await,
                None => Ok(None),
            };
            let provider = match loaded {
                Ok(None) => Arc::new(EmptyTable::new(expected_schema(dataset))) as _,
                Ok(Some(table)) => match table.tenant_provider(&tenant.id).await {
                    Ok(provider) => {
                        versions.insert(dataset.name(), table.version());
                        provider
                    }
                    Err(e) => unreadable(TableUnavailable::of(dataset, &e)),
                },
                Err(e) => {
                    let error = TableUnavailable::of(dataset, &e);
                    tracing::warn!(lake = key, table = dataset.name(), ?as_of, error = %error, "cannot read the table as of then");
                    unreadable(error)
                }
            };
            tables.push((dataset, provider));
        }
        Ok(TenantTables {
            tenant: tenant.id.clone(),
            tables,
            versions,
        })
    }

    /// `tenant`'s provider of `dataset` in the lake `key`, from the cached
    /// table (checked first if it is stale), and the version it reads.
    async fn read(
        &self,
        key: &str,
        lake: &Lake,
        dataset: Dataset,
        tenant: &TenantId,
    ) -> (Arc<dyn TableProvider>, Option<u64>) {
        let entry = self
            .tables
            .lock()
            .expect("tables lock")
            .entry((key.to_string(), dataset))
            .or_default()
            .clone();
        let fresh = |cached: &Option<CachedTable>| {
            cached.as_ref().is_some_and(|c| {
                c.epoch == self.epoch.now()
                    && c.checked
                        .is_some_and(|at| at.elapsed() < self.config.snapshot_ttl)
            })
        };
        let cached = entry.read().await;
        let cached = if fresh(&cached) {
            cached
        } else {
            drop(cached);
            let mut cached = entry.write().await;
            // Another request may have checked it meanwhile.
            if !fresh(&cached) {
                let epoch = self.epoch.now();
                let (previous, built) = match cached.take() {
                    Some(c) => (Some(c.state), c.providers.into_inner().unwrap_or_default()),
                    None => (None, HashMap::new()),
                };
                let version_before = previous.as_ref().and_then(TableState::version);
                let state = check(key, lake, dataset, previous).await;
                // A store that could not be reached is tried again at the
                // next read; anything else stands until the next check.
                let transient = matches!(&state, TableState::Unreadable(e) if e.transient);
                // Providers over a version still current are kept.
                let unchanged = version_before.is_some() && state.version() == version_before;
                *cached = Some(CachedTable {
                    state,
                    checked: (!transient).then(Instant::now),
                    epoch,
                    providers: Mutex::new(if unchanged { built } else { HashMap::new() }),
                });
            }
            cached.downgrade()
        };
        let cached = cached.as_ref().expect("checked above");
        match &cached.state {
            TableState::Missing => (Arc::new(EmptyTable::new(expected_schema(dataset))), None),
            TableState::Unreadable(error) => (unreadable(error.clone()), None),
            TableState::Loaded(table) => {
                let version = Some(table.version());
                let built = cached
                    .providers
                    .lock()
                    .expect("providers lock")
                    .get(tenant)
                    .cloned();
                if let Some(provider) = built {
                    return (provider, version);
                }
                match table.tenant_provider(tenant).await {
                    Ok(provider) => {
                        cached
                            .providers
                            .lock()
                            .expect("providers lock")
                            .insert(tenant.clone(), provider.clone());
                        (provider, version)
                    }
                    Err(e) => {
                        let error = TableUnavailable::of(dataset, &e);
                        tracing::error!(lake = key, table = dataset.name(), %tenant, error = %error, "cannot read the table");
                        (unreadable(error), None)
                    }
                }
            }
        }
    }
}

/// The table of `dataset` in `lake` as it is now: `previous` brought up
/// to date when it was loaded, else loaded afresh.
async fn check(
    key: &str,
    lake: &Lake,
    dataset: Dataset,
    previous: Option<TableState>,
) -> TableState {
    let checked = match previous {
        Some(TableState::Loaded(mut table)) => {
            let before = table.version();
            match table.refresh().await {
                Ok(()) => {
                    if table.version() != before {
                        tracing::debug!(
                            lake = key,
                            table = dataset.name(),
                            version = table.version(),
                            "read a newer table version"
                        );
                    }
                    Ok(Some(table))
                }
                Err(e) => Err(e),
            }
        }
        _ => DatasetTable::load(lake, dataset).await,
    };
    match checked {
        Ok(Some(table)) => TableState::Loaded(table),
        Ok(None) => TableState::Missing,
        Err(e) => {
            let error = TableUnavailable::of(dataset, &e);
            tracing::error!(
                lake = key,
                table = dataset.name(),
                transient = error.transient,
                error = %error,
                "cannot load the table; questions that read it fail, the others are answered"
            );
            // Loaded afresh at the next check: a failed update leaves
            // nothing to build on.
            TableState::Unreadable(error)
        }
    }
}

/// The columns a query sees of `dataset`: its lake columns, then `date`.
/// A dataset with no table yet reads as an empty table of them.
pub fn expected_schema(dataset: Dataset) -> SchemaRef {
    let mut fields: Vec<Field> = dataset
        .lake_schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    fields.push(Field::new("date", DataType::Utf8, false));
    Arc::new(Schema::new(fields))
}

fn unreadable(error: TableUnavailable) -> Arc<dyn TableProvider> {
    Arc::new(Unreadable {
        schema: expected_schema(error.dataset),
        error,
    })
}

/// A table that cannot be read: planning over it works (it has the
/// columns), scanning it fails with the reason.
#[derive(Debug)]
struct Unreadable {
    schema: SchemaRef,
    error: TableUnavailable,
}

#[async_trait]
impl TableProvider for Unreadable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        _projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        Err(DataFusionError::External(Box::new(self.error.clone())))
    }
}

/// The folder of `dataset`'s table when `lake` is a local directory.
fn is_local(location: &str) -> bool {
    !location.contains("://") || location.starts_with("file://")
}

/// One spelling per place: a local path made absolute without a trailing
/// slash, a URL without a trailing slash.
fn location_key(location: &str) -> Result<String, String> {
    if is_local(location) {
        let path = location.trim_start_matches("file://");
        let absolute = std::path::absolute(path).map_err(|e| e.to_string())?;
        let key = absolute
            .to_str()
            .ok_or_else(|| "not valid UTF-8".to_string())?;
        // The root directory keeps its one slash.
        return Ok(match key.trim_end_matches('/') {
            "" => "/".to_string(),
            key => key.to_string(),
        });
    }
    Ok(location.trim_end_matches('/').to_string())
}

/// The object store base of a URL: `s3://bucket`.
fn store_base(url: &url::Url) -> String {
    format!("{}://{}", url.scheme(), url.authority())
}
