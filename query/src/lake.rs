//! Where the query service reads: the deployment's lake (a local directory
//! or `s3://bucket/prefix`) or, for a tenant whose document names a
//! `lake_url`, that tenant's own lake (data residency).
//!
//! Every session shares one object store registry and one cache manager, so
//! Parquet footers and page indexes are read once per file (the cache checks
//! each file's size and modification time before using an entry), while
//! folder listings are cached for at most [`LakeConfig::listing_ttl`], which
//! bounds how long a newly written file stays invisible.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow::datatypes::DataType;
use candor_control::Tenant;
use candor_schemas::TenantId;
use candor_schemas::datasets::Dataset;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::execution::cache::cache_manager::{CacheManager, CacheManagerConfig};
use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
use datafusion::execution::object_store::{DefaultObjectStoreRegistry, ObjectStoreRegistry};
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use object_store::ObjectStoreExt;

use crate::QueryError;
use crate::engine::{EngineConfig, SqlEngine};
use crate::merged::MergedAware;

#[derive(Debug, Clone)]
pub struct LakeConfig {
    /// The deployment's lake: a path or `s3://bucket/prefix` (S3 settings
    /// from `AWS_*`).
    pub url: String,
    /// How long a folder listing is reused.
    pub listing_ttl: Duration,
    /// Memory for cached Parquet footers and page indexes.
    pub metadata_cache_bytes: usize,
    /// Where and how many statements run ([`crate::engine`]).
    pub engine: EngineConfig,
}

impl LakeConfig {
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            listing_ttl: Duration::from_secs(2),
            metadata_cache_bytes: 64 * 1024 * 1024,
            engine: EngineConfig::default(),
        }
    }
}

/// The lake as every query session sees it.
pub struct QueryLake {
    config: LakeConfig,
    registry: Arc<dyn ObjectStoreRegistry>,
    caches: Arc<CacheManager>,
    engine: Arc<SqlEngine>,
    /// Object store bases (`s3://bucket`) already registered.
    registered: Mutex<HashSet<String>>,
}

/// One tenant's four tables, rooted at its own folders.
pub struct TenantTables {
    pub tenant: TenantId,
    pub tables: Vec<(Dataset, Arc<ListingTable>)>,
}

impl QueryLake {
    pub fn new(config: LakeConfig) -> Result<Self, QueryError> {
        let caches = CacheManager::try_new(
            &CacheManagerConfig::default()
                .with_list_files_cache_ttl(Some(config.listing_ttl))
                .with_metadata_cache_limit(config.metadata_cache_bytes),
        )?;
        // Every store is read through `MergedAware`, the local one too, so
        // a folder being compacted never shows a row twice.
        let registry = DefaultObjectStoreRegistry::new();
        let local: Arc<dyn object_store::ObjectStore> =
            Arc::new(object_store::local::LocalFileSystem::new());
        let file_url = url::Url::parse("file://").expect("a valid URL");
        registry.register_store(&file_url, MergedAware::wrap(local));
        let lake = Self {
            engine: Arc::new(SqlEngine::new(config.engine.clone())?),
            config,
            registry: Arc::new(registry),
            caches,
            registered: Mutex::new(HashSet::new()),
        };
        // Refuse a bad deployment URL at start, not at the first query.
        lake.root(None)?;
        Ok(lake)
    }

    /// Uses `store` for every location under `base` (`s3://bucket`),
    /// instead of a client built from the `AWS_*` variables.
    pub fn register_store(
        &self,
        base: &str,
        store: Arc<dyn object_store::ObjectStore>,
    ) -> Result<(), QueryError> {
        let url = url::Url::parse(base).map_err(|e| QueryError::BadLake {
            url: base.to_string(),
            reason: e.to_string(),
        })?;
        self.registry.register_store(&url, MergedAware::wrap(store));
        self.registered
            .lock()
            .expect("registry lock")
            .insert(base.trim_end_matches('/').to_string());
        Ok(())
    }

    pub fn config(&self) -> &LakeConfig {
        &self.config
    }

    /// The runtime and caps statements run under.
    pub fn engine(&self) -> &Arc<SqlEngine> {
        &self.engine
    }

    /// Forgets every cached folder listing, so the next query lists afresh
    /// (after objects it listed were merged or deleted).
    pub fn forget_listings(&self) {
        if let Some(cache) = self.caches.get_list_files_cache() {
            cache.clear();
        }
    }

    /// A runtime for one query: the shared stores and caches, its own memory
    /// budget within the node's, and no spilling to disk (a query over
    /// budget fails instead).
    pub fn runtime(&self, memory_bytes: usize) -> Result<Arc<RuntimeEnv>, QueryError> {
        let caches = &self.caches;
        let config = CacheManagerConfig::default()
            .with_file_statistics_cache(caches.get_file_statistic_cache())
            .with_list_files_cache(caches.get_list_files_cache())
            .with_list_files_cache_ttl(Some(self.config.listing_ttl))
            .with_file_metadata_cache(Some(caches.get_file_metadata_cache()))
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

    /// The lake root for a tenant (`lake_url`, else the deployment's), as a
    /// URL prefix without a trailing slash; registers its object store.
    fn root(&self, tenant_lake: Option<&str>) -> Result<String, QueryError> {
        let location = tenant_lake.unwrap_or(&self.config.url);
        let bad = |reason: String| QueryError::BadLake {
            url: location.to_string(),
            reason,
        };
        if !location.contains("://") || location.starts_with("file://") {
            let path = location.trim_start_matches("file://");
            let absolute = std::path::absolute(path).map_err(|e| bad(e.to_string()))?;
            let root = absolute
                .to_str()
                .ok_or_else(|| bad("not valid UTF-8".into()))?;
            return Ok(root.trim_end_matches('/').to_string());
        }
        let url = url::Url::parse(location).map_err(|e| bad(e.to_string()))?;
        let base = format!("{}://{}", url.scheme(), url.authority());
        let mut registered = self.registered.lock().expect("registry lock");
        if !registered.contains(&base) {
            let (store, _) = candor_control::open_store(&base).map_err(|e| bad(e.to_string()))?;
            let base_url = url::Url::parse(&base).map_err(|e| bad(e.to_string()))?;
            self.registry
                .register_store(&base_url, MergedAware::wrap(store));
            registered.insert(base);
        }
        Ok(location.trim_end_matches('/').to_string())
    }

    /// Writes `bytes` at `relative` under the tenant's lake root; returns
    /// the object's URL.
    pub async fn put(
        &self,
        tenant: &Tenant,
        relative: &str,
        bytes: Vec<u8>,
    ) -> Result<String, QueryError> {
        let full = format!("{}/{relative}", self.root(tenant.lake_url.as_deref())?);
        let url = ListingTableUrl::parse(&full)?;
        let store = self.registry.get_store(url.as_ref())?;
        store
            .put(url.prefix(), bytes.into())
            .await
            .map_err(|e| QueryError::Lake(e.to_string()))?;
        Ok(full)
    }

    /// The object at `relative` under the tenant's lake root, if any.
    pub async fn get(
        &self,
        tenant: &Tenant,
        relative: &str,
    ) -> Result<Option<Vec<u8>>, QueryError> {
        let full = format!("{}/{relative}", self.root(tenant.lake_url.as_deref())?);
        let url = ListingTableUrl::parse(&full)?;
        let store = self.registry.get_store(url.as_ref())?;
        let lake_error = |e: object_store::Error| QueryError::Lake(e.to_string());
        match store.get(url.prefix()).await {
            Ok(object) => Ok(Some(object.bytes().await.map_err(lake_error)?.to_vec())),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(lake_error(e)),
        }
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
        let full = format!("{}/{relative}", self.root(tenant.lake_url.as_deref())?);
        let url = ListingTableUrl::parse(&full)?;
        let store = self.registry.get_store(url.as_ref())?;
        let options = object_store::PutOptions::from(object_store::PutMode::Create);
        match store.put_opts(url.prefix(), bytes.into(), options).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. }) => Ok(false),
            Err(e) => Err(QueryError::Lake(e.to_string())),
        }
    }

    /// Whether an object exists at `relative` under the tenant's lake root.
    pub async fn exists(&self, tenant: &Tenant, relative: &str) -> Result<bool, QueryError> {
        let full = format!("{}/{relative}", self.root(tenant.lake_url.as_deref())?);
        let url = ListingTableUrl::parse(&full)?;
        let store = self.registry.get_store(url.as_ref())?;
        match store.head(url.prefix()).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(QueryError::Lake(e.to_string())),
        }
    }

    /// The tenant's tables. Each is rooted at `<dataset>/tenant=<id>/`, so
    /// nothing planned over it can list or read another tenant's files;
    /// `date` is its only partition column.
    pub fn tables(&self, tenant: &Tenant) -> Result<TenantTables, QueryError> {
        self.tables_at(&tenant.id, tenant.lake_url.as_deref())
    }

    /// The tables of `tenant` in `lake_url`, or in the deployment's lake.
    pub fn tables_at(
        &self,
        tenant: &TenantId,
        lake_url: Option<&str>,
    ) -> Result<TenantTables, QueryError> {
        let root = self.root(lake_url)?;
        let tables = Dataset::ALL
            .into_iter()
            .map(|dataset| {
                let dir = candor_lake::layout::tenant_table_url(&root, dataset, tenant);
                let url = ListingTableUrl::parse(&dir)?;
                let options = ListingOptions::new(Arc::new(ParquetFormat::default()))
                    .with_file_extension(".parquet")
                    .with_table_partition_cols(vec![("date".to_string(), DataType::Utf8)]);
                let config = ListingTableConfig::new(url)
                    .with_listing_options(options)
                    .with_schema(dataset.lake_schema());
                Ok((dataset, Arc::new(ListingTable::try_new(config)?)))
            })
            .collect::<Result<_, QueryError>>()?;
        Ok(TenantTables {
            tenant: tenant.clone(),
            tables,
        })
    }
}
