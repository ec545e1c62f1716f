//! A local directory as an object store whose writes survive a power cut.
//!
//! `object_store`'s local file system writes through the page cache and
//! has no durability flag. The lake's own writes fsync after the fact
//! ([`crate::Lake::put_durable`]), but the Delta log is written by
//! delta-rs through the store it is given, so that store itself must not
//! return from a write before the file and every folder naming it, up to
//! the lake's root, are on disk. This is that store: the whole file system
//! (`/`, as delta-rs expects of a root store), with each completed write,
//! copy, rename and deletion under the lake's root fsynced before it
//! returns.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use futures::stream::{BoxStream, StreamExt};
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions, Result, UploadPart,
};

#[derive(Debug, Clone)]
pub struct DurableLocalStore {
    inner: Arc<LocalFileSystem>,
    /// Folders are fsynced from a written file up to this one.
    lake_root: Arc<PathBuf>,
}

impl DurableLocalStore {
    /// The file system, with writes under `lake_root` (an absolute,
    /// canonical path) made durable.
    pub fn new(lake_root: PathBuf) -> Self {
        Self {
            inner: Arc::new(LocalFileSystem::new()),
            lake_root: Arc::new(lake_root),
        }
    }

    fn file(&self, location: &ObjectPath) -> PathBuf {
        Path::new("/").join(location.as_ref())
    }

    /// fsyncs `files`, then each folder from them up to the lake's root.
    async fn sync(&self, files: Vec<PathBuf>) -> Result<()> {
        let root = self.lake_root.clone();
        tokio::task::spawn_blocking(move || crate::store::fsync_files_and_folders(&root, &files))
            .await
            .expect("fsync task does not panic")
            .map_err(|e| object_store::Error::Generic {
                store: "DurableLocalStore",
                source: Box::new(e),
            })
    }

    /// fsyncs the folder that held a deleted or renamed-away file, so its
    /// absence is durable too.
    async fn sync_parent(&self, location: &ObjectPath) -> Result<()> {
        let file = self.file(location);
        match file.parent() {
            Some(parent) if parent.exists() => self.sync_folder_only(parent.to_path_buf()).await,
            _ => Ok(()),
        }
    }

    async fn sync_folder_only(&self, folder: PathBuf) -> Result<()> {
        tokio::task::spawn_blocking(move || std::fs::File::open(&folder).and_then(|f| f.sync_all()))
            .await
            .expect("fsync task does not panic")
            .map_err(|e| object_store::Error::Generic {
                store: "DurableLocalStore",
                source: Box::new(e),
            })
    }
}

impl fmt::Display for DurableLocalStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DurableLocalStore({})", self.lake_root.display())
    }
}

#[async_trait]
impl ObjectStore for DurableLocalStore {
    async fn put_opts(
        &self,
        location: &ObjectPath,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        let put = self.inner.put_opts(location, payload, opts).await?;
        self.sync(vec![self.file(location)]).await?;
        Ok(put)
    }

    async fn put_multipart_opts(
        &self,
        location: &ObjectPath,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        let upload = self.inner.put_multipart_opts(location, opts).await?;
        Ok(Box::new(DurableUpload {
            upload,
            store: self.clone(),
            location: location.clone(),
        }))
    }

    async fn get_opts(&self, location: &ObjectPath, options: GetOptions) -> Result<GetResult> {
        self.inner.get_opts(location, options).await
    }

    async fn get_ranges(
        &self,
        location: &ObjectPath,
        ranges: &[std::ops::Range<u64>],
    ) -> Result<Vec<bytes::Bytes>> {
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<ObjectPath>>,
    ) -> BoxStream<'static, Result<ObjectPath>> {
        let store = self.clone();
        self.inner
            .delete_stream(locations)
            .then(move |deleted| {
                let store = store.clone();
                async move {
                    let path = deleted?;
                    store.sync_parent(&path).await?;
                    Ok(path)
                }
            })
            .boxed()
    }

    fn list(&self, prefix: Option<&ObjectPath>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&ObjectPath>,
        offset: &ObjectPath,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list_with_offset(prefix, offset)
    }

    async fn list_with_delimiter(&self, prefix: Option<&ObjectPath>) -> Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &ObjectPath,
        to: &ObjectPath,
        options: CopyOptions,
    ) -> Result<()> {
        self.inner.copy_opts(from, to, options).await?;
        self.sync(vec![self.file(to)]).await
    }

    async fn rename_opts(
        &self,
        from: &ObjectPath,
        to: &ObjectPath,
        options: RenameOptions,
    ) -> Result<()> {
        self.inner.rename_opts(from, to, options).await?;
        self.sync(vec![self.file(to)]).await?;
        self.sync_parent(from).await
    }
}

/// A multipart write whose completion waits for the file to be durable.
#[derive(Debug)]
struct DurableUpload {
    upload: Box<dyn MultipartUpload>,
    store: DurableLocalStore,
    location: ObjectPath,
}

#[async_trait]
impl MultipartUpload for DurableUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        self.upload.put_part(data)
    }

    async fn complete(&mut self) -> Result<PutResult> {
        let put = self.upload.complete().await?;
        self.store
            .sync(vec![self.store.file(&self.location)])
            .await?;
        Ok(put)
    }

    async fn abort(&mut self) -> Result<()> {
        self.upload.abort().await
    }
}
