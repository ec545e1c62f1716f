//! A lake's objects: a local directory on one machine (every write
//! fsynced before it is called durable), S3 or any S3-compatible server
//! across machines; and the set of lakes one deployment writes (its own
//! and tenants' own, for data residency).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use arrow::array::RecordBatch;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::prefix::PrefixStore;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use url::Url;

use crate::durable::DurableLocalStore;

impl LakeError {
    /// Whether the same write may succeed later: the store or the disk was
    /// unavailable (a network error, a full or read-only disk, a missing
    /// folder). Encoding errors and unreadable objects are not.
    pub fn is_transient(&self) -> bool {
        match self {
            LakeError::Store(_) | LakeError::Io { .. } => true,
            LakeError::Table { source, .. } => matches!(
                **source,
                deltalake::DeltaTableError::ObjectStore { .. }
                    | deltalake::DeltaTableError::Io { .. }
                    | deltalake::DeltaTableError::KernelError(
                        delta_kernel::Error::ObjectStore(_) | delta_kernel::Error::IOError(_)
                    )
            ),
            _ => false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LakeError {
    #[error("object store: {0}")]
    Store(#[from] object_store::Error),
    #[error("parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    #[error("lake holds an unreadable object: {0}")]
    Corrupt(String),
    #[error("lake location: {0}")]
    Location(#[from] candor_control::StoreError),
    #[error("control plane: {0}")]
    Control(String),
    /// A table refused what was asked: a schema this release cannot
    /// write, a location that names no table, a table that kept changing.
    #[error("{0}")]
    Refused(String),
    #[error("the {table} table: {source}")]
    Table {
        table: &'static str,
        source: Box<deltalake::DeltaTableError>,
    },
    /// A commit found that someone else had committed progress for the
    /// same source since this writer began: it lost that source.
    /// A commit of several partitions' progress found some of them in the
    /// table already (another writer completed those partitions' flush):
    /// commit the rest on their own.
    #[error("the {table} table holds part of one commit's progress already")]
    PartlyCommitted { table: &'static str },
    #[error(
        "{app_id} moved on while this writer worked (expected its last commit at {expected:?}, found {found:?})"
    )]
    Superseded {
        app_id: String,
        expected: Option<i64>,
        found: Option<i64>,
    },
    #[error("lake directory {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

#[derive(Clone)]
pub struct Lake {
    /// The lake's objects, by their path within the lake.
    store: Arc<dyn ObjectStore>,
    /// Set for a local-directory lake, whose writes must be fsynced by us:
    /// the object store API has no durability flag.
    local_root: Option<PathBuf>,
    /// Where the lake is (`file:///…/` or `s3://bucket/prefix/`), with a
    /// trailing slash: tables are named relative to it.
    url: Url,
    /// The store `url`'s path is a path in (the file system, or the
    /// bucket), as delta-rs takes it: it roots each table's log there.
    root_store: Arc<dyn ObjectStore>,
}

impl Lake {
    /// A lake in a local directory, created if missing.
    pub fn local(root: impl AsRef<Path>) -> Result<Self, LakeError> {
        let root = root.as_ref();
        let io = |source| LakeError::Io {
            path: root.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(root).map_err(io)?;
        let root = root.canonicalize().map_err(io)?;
        let url = Url::from_directory_path(&root).map_err(|()| LakeError::Io {
            path: root.clone(),
            source: std::io::Error::other("not an absolute path"),
        })?;
        Ok(Self {
            store: Arc::new(LocalFileSystem::new_with_prefix(&root)?),
            root_store: Arc::new(DurableLocalStore::new(root.clone())),
            local_root: Some(root),
            url,
        })
    }

    /// The lake at `location`: a path or `file:///path` (a local directory,
    /// created if missing), or `s3://bucket/prefix` with the S3 settings in
    /// `AWS_*` variables (`AWS_ENDPOINT_URL` for an S3-compatible server).
    pub fn open(location: &str) -> Result<Self, LakeError> {
        if let Some(path) = location.strip_prefix("file://") {
            return Self::local(path);
        }
        if !location.contains("://") {
            return Self::local(location);
        }
        let (store, _prefix) = candor_control::open_store(location)?;
        Self::on_store(store, location)
    }

    /// The lake at `location` (`s3://bucket/prefix`), read and written
    /// through `bucket`, a store of that location's bucket whose writes
    /// are durable once they return (S3 and its kin; not a local
    /// directory, which needs [`Lake::local`] for its fsyncs).
    pub fn on_store(bucket: Arc<dyn ObjectStore>, location: &str) -> Result<Self, LakeError> {
        let bad = |reason: String| {
            LakeError::Location(candor_control::StoreError::BadUrl {
                url: location.to_string(),
                reason,
            })
        };
        let mut url = Url::parse(location).map_err(|e| bad(e.to_string()))?;
        if url.host_str().is_none_or(str::is_empty) {
            return Err(bad("names no bucket".into()));
        }
        if !url.path().ends_with('/') {
            url.set_path(&format!("{}/", url.path()));
        }
        let prefix = ObjectPath::from(url.path());
        let store: Arc<dyn ObjectStore> = if prefix.as_ref().is_empty() {
            bucket.clone()
        } else {
            Arc::new(PrefixStore::new(bucket.clone(), prefix))
        };
        Ok(Self {
            store,
            local_root: None,
            url,
            root_store: bucket,
        })
    }

    /// The same lake, every request to its stores passing through `layer`
    /// (a wrapper that counts, delays or fails them, as fault tests do).
    pub fn layered(self, layer: impl Fn(Arc<dyn ObjectStore>) -> Arc<dyn ObjectStore>) -> Self {
        Self {
            store: layer(self.store),
            root_store: layer(self.root_store),
            ..self
        }
    }

    /// Where the lake is, with a trailing slash.
    pub fn url(&self) -> &Url {
        &self.url
    }

    /// The store [`Lake::url`]'s path lies in (see the field).
    pub(crate) fn root_store(&self) -> Arc<dyn ObjectStore> {
        self.root_store.clone()
    }

    pub fn store(&self) -> Arc<dyn ObjectStore> {
        self.store.clone()
    }

    /// Writes `batch` as one Parquet object and returns, once it is durable,
    /// its size in bytes.
    pub async fn write_parquet(
        &self,
        path: &ObjectPath,
        batch: &RecordBatch,
    ) -> Result<usize, LakeError> {
        let bytes = encode_parquet(batch)?;
        let size = bytes.len();
        self.put_durable(path, bytes.into()).await?;
        Ok(size)
    }

    /// Writes every object and returns once all are durable. On a local
    /// lake each file is fsynced, then each folder once for all of them,
    /// not once per object.
    pub async fn put_all_durable(
        &self,
        objects: &[(ObjectPath, bytes::Bytes)],
    ) -> Result<(), LakeError> {
        if objects.is_empty() {
            return Ok(());
        }
        for (path, bytes) in objects {
            self.store.put(path, bytes.clone().into()).await?;
        }
        if let Some(root) = &self.local_root {
            let paths: Vec<ObjectPath> = objects.iter().map(|(p, _)| p.clone()).collect();
            sync_local_all(root, &paths).await?;
        }
        Ok(())
    }

    /// Writes one object and returns once it is durable.
    pub async fn put_durable(&self, path: &ObjectPath, bytes: PutPayload) -> Result<(), LakeError> {
        self.store.put(path, bytes).await?;
        if let Some(root) = &self.local_root {
            sync_local(root, path).await?;
        }
        Ok(())
    }

    /// Every object under `prefix`, in no particular order.
    pub async fn list(
        &self,
        prefix: &ObjectPath,
    ) -> Result<Vec<object_store::ObjectMeta>, LakeError> {
        use futures::TryStreamExt;
        Ok(self.store.list(Some(prefix)).try_collect().await?)
    }

    /// The names of the folders right under `prefix` (`date=…` under a
    /// tenant's folder), whatever objects they hold.
    pub async fn folders_under(&self, prefix: &ObjectPath) -> Result<Vec<String>, LakeError> {
        let listed = self.store.list_with_delimiter(Some(prefix)).await?;
        Ok(listed
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename().map(str::to_string))
            .collect())
    }

    /// Deletes every object under `prefix`, and on a local lake the emptied
    /// folder, once the deletions are durable; returns how many objects.
    pub async fn delete_folder(&self, prefix: &ObjectPath) -> Result<usize, LakeError> {
        use futures::StreamExt;
        let locations: Vec<_> = self
            .list(prefix)
            .await?
            .into_iter()
            .map(|o| Ok(o.location))
            .collect();
        let objects = locations.len();
        let mut deleted = self
            .store
            .delete_stream(futures::stream::iter(locations).boxed());
        while let Some(outcome) = deleted.next().await {
            match outcome {
                Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        if let Some(root) = &self.local_root {
            let dir = root.join(prefix.as_ref());
            if dir.exists() {
                fsync_path(&dir)?;
            }
        }
        self.remove_empty_folder(prefix)?;
        Ok(objects)
    }

    /// An object's bytes, or `None` if there is no such object.
    pub async fn get_optional(&self, path: &ObjectPath) -> Result<Option<bytes::Bytes>, LakeError> {
        match self.store.get(path).await {
            Ok(found) => Ok(Some(found.bytes().await?)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Whether an object is there (its metadata only is read).
    pub async fn exists(&self, path: &ObjectPath) -> Result<bool, LakeError> {
        match self.store.head(path).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Deletes an object (a missing one is already deleted) and returns once
    /// the deletion is durable.
    pub async fn delete_durable(&self, path: &ObjectPath) -> Result<(), LakeError> {
        match self.store.delete(path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        if let Some(root) = &self.local_root {
            let dir = root.join(path.as_ref());
            if let Some(parent) = dir.parent().filter(|p| p.exists()) {
                fsync_path(parent)?;
            }
        }
        Ok(())
    }
}

impl Lake {
    /// Creates a local lake's folder for `prefix` (and durably names it in
    /// its parent) if missing. Object stores have no folders; there this
    /// does nothing.
    pub fn ensure_folder(&self, prefix: &ObjectPath) -> Result<(), LakeError> {
        let Some(root) = &self.local_root else {
            return Ok(());
        };
        let dir = root.join(prefix.as_ref());
        if dir.is_dir() {
            return Ok(());
        }
        std::fs::create_dir_all(&dir).map_err(|source| LakeError::Io {
            path: dir.clone(),
            source,
        })?;
        fsync_files_and_folders(root, &[dir])
    }

    /// Whether `prefix` is a folder a local lake lacks (an object store has
    /// no folders: never).
    pub fn lacks_local_folder(&self, prefix: &ObjectPath) -> bool {
        self.local_root
            .as_ref()
            .is_some_and(|root| !root.join(prefix.as_ref()).is_dir())
    }

    /// Removes a local lake's folder for `prefix` once it is empty, so an
    /// emptied partition does not linger as a folder. Object stores have no
    /// folders; there this does nothing.
    pub fn remove_empty_folder(&self, prefix: &ObjectPath) -> Result<(), LakeError> {
        let Some(root) = &self.local_root else {
            return Ok(());
        };
        let dir = root.join(prefix.as_ref());
        match std::fs::remove_dir(&dir) {
            Ok(()) => dir.parent().map_or(Ok(()), fsync_path),
            // Not there, or not empty (a write raced in): leave it.
            Err(_) => Ok(()),
        }
    }
}

fn fsync_path(path: &Path) -> Result<(), LakeError> {
    std::fs::File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(|source| LakeError::Io {
            path: path.to_path_buf(),
            source,
        })
}

/// A batch as one Parquet object: zstd, page statistics (so readers can
/// prune pages), one row group.
pub fn encode_parquet(batch: &RecordBatch) -> Result<Vec<u8>, LakeError> {
    let props = writer_properties();
    let mut buf = Vec::with_capacity(batch.get_array_memory_size() / 2 + 4096);
    let mut writer = ArrowWriter::try_new(&mut buf, batch.schema(), Some(props))?;
    writer.write(batch)?;
    writer.close()?;
    Ok(buf)
}

/// How every Parquet object of the lake is written, by the processor and
/// by the tables' own rewrites (compaction, deletes) alike.
pub fn writer_properties() -> WriterProperties {
    WriterProperties::builder()
        .set_compression(Compression::ZSTD(
            ZstdLevel::try_new(3).expect("3 is a valid zstd level"),
        ))
        .set_statistics_enabled(EnabledStatistics::Page)
        .build()
}

/// fsyncs files written under `root`, then each directory from them up to
/// `root` once, deepest first, so the objects and their names survive a
/// power loss.
async fn sync_local_all(root: &Path, paths: &[ObjectPath]) -> Result<(), LakeError> {
    let files: Vec<PathBuf> = paths.iter().map(|p| root.join(p.as_ref())).collect();
    let root = root.to_path_buf();
    tokio::task::spawn_blocking(move || fsync_files_and_folders(&root, &files))
        .await
        .expect("fsync task does not panic")
}

/// fsyncs `files`, then each folder from them up to `root` once, a folder
/// before the folder that names it.
pub(crate) fn fsync_files_and_folders(root: &Path, files: &[PathBuf]) -> Result<(), LakeError> {
    let mut dirs = std::collections::BTreeSet::new();
    for file in files {
        fsync_path(file)?;
        let mut dir = file.parent();
        while let Some(d) = dir {
            dirs.insert(d.to_path_buf());
            if d == root || !d.starts_with(root) {
                break;
            }
            dir = d.parent();
        }
    }
    // Longer paths first: a folder before the folder that names it.
    let mut dirs: Vec<PathBuf> = dirs.into_iter().collect();
    dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
    dirs.iter().try_for_each(|d| fsync_path(d))
}

/// fsyncs a file written under `root` and every directory from it up to
/// `root`, so the object and its name survive a power loss.
async fn sync_local(root: &Path, path: &ObjectPath) -> Result<(), LakeError> {
    sync_local_all(root, std::slice::from_ref(path)).await
}

/// Every lake a processor writes: the deployment's (where the processors'
/// own state lives too: the processors' state table) and each tenant's
/// own lake when its document names a `lake_url` (data residency).
///
/// A location is named by its `lake_url`; `None` is the deployment's lake.
/// A `lake_url` naming the deployment's own location is the deployment's
/// lake, so one place never goes by two names.
#[derive(Clone)]
pub struct Lakes {
    home: Lake,
    /// The deployment's location in the form [`location_key`] gives, when
    /// it is known (a lake built from a store has none).
    home_key: Option<String>,
    /// Tenants' lakes opened so far, by [`location_key`].
    others: Arc<Mutex<HashMap<String, Lake>>>,
}

impl From<Lake> for Lakes {
    fn from(home: Lake) -> Self {
        Self {
            home,
            home_key: None,
            others: Arc::default(),
        }
    }
}

impl Lakes {
    /// The deployment's lake at `location` (see [`Lake::open`]).
    pub fn open(location: &str) -> Result<Self, LakeError> {
        Ok(Self {
            home_key: Some(location_key(location)?),
            ..Self::from(Lake::open(location)?)
        })
    }

    /// Uses `lake` for the tenants whose `lake_url` is `location`, instead
    /// of opening it with the `AWS_*` settings (an S3 client of its own).
    pub fn with_lake(self, location: &str, lake: Lake) -> Result<Self, LakeError> {
        let key = location_key(location)?;
        self.others.lock().expect("lakes lock").insert(key, lake);
        Ok(self)
    }

    /// The deployment's lake.
    pub fn home(&self) -> &Lake {
        &self.home
    }

    /// The lake at `location` (`None`: the deployment's), opened on first
    /// use.
    pub fn at(&self, location: Option<&str>) -> Result<Lake, LakeError> {
        match self.key(location)? {
            None => Ok(self.home.clone()),
            Some(key) => {
                let mut others = self.others.lock().expect("lakes lock");
                if let Some(lake) = others.get(&key) {
                    return Ok(lake.clone());
                }
                let lake = Lake::open(location.expect("a key comes from a location"))?;
                others.insert(key, lake.clone());
                Ok(lake)
            }
        }
    }

    /// How flush intents name `location`: `None` for the deployment's lake,
    /// else one spelling of it (a path made absolute, no trailing slash),
    /// which [`Lakes::at`] accepts as a location.
    pub fn key(&self, location: Option<&str>) -> Result<Option<String>, LakeError> {
        let Some(location) = location else {
            return Ok(None);
        };
        let key = location_key(location)?;
        Ok((self.home_key.as_ref() != Some(&key)).then_some(key))
    }

    /// The deployment's lake and every lake one of `tenants` names, once
    /// each, with the key flush intents know it by.
    pub fn in_use(
        &self,
        tenants: &[candor_control::Tenant],
    ) -> Result<Vec<(Option<String>, Lake)>, LakeError> {
        let mut keys = std::collections::BTreeSet::new();
        for tenant in tenants {
            keys.extend(self.key(tenant.lake_url.as_deref())?);
        }
        let mut lakes = vec![(None, self.home.clone())];
        for key in keys {
            // A key is itself a location.
            lakes.push((Some(key.clone()), self.at(Some(&key))?));
        }
        Ok(lakes)
    }
}

/// One spelling per place: a local path made absolute without a trailing
/// slash, a URL without a trailing slash. A key is itself a location, and
/// its own key.
fn location_key(location: &str) -> Result<String, LakeError> {
    let local = location
        .strip_prefix("file://")
        .or((!location.contains("://")).then_some(location));
    let key = match local {
        Some(path) => std::path::absolute(path)
            .map_err(|source| LakeError::Io {
                path: path.into(),
                source,
            })?
            .to_string_lossy()
            .into_owned(),
        None => location.to_string(),
    };
    Ok(key.trim_end_matches('/').to_string())
}
