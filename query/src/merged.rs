//! Reading a lake while it is compacted. Compaction writes a merged object
//! before it deletes the objects it replaces (see
//! `candor_processor::compaction`), so for a moment a folder lists both.
//! This store wrapper hides the replaced objects from every listing in which
//! their merged object shows, using the members file compaction writes
//! first, so no row is counted twice.

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use candor_schemas::datasets::{MEMBERS_SUFFIX, MergedMembers};
use futures::stream::{self, BoxStream, StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, Result,
};

/// An object store whose listings leave out objects already merged into a
/// merged object that is listed with them.
#[derive(Debug)]
pub struct MergedAware {
    inner: Arc<dyn ObjectStore>,
}

impl MergedAware {
    pub fn wrap(inner: Arc<dyn ObjectStore>) -> Arc<dyn ObjectStore> {
        Arc::new(Self { inner })
    }
}

impl MergedAware {
    /// A listing, whole (which objects to hide depends on all of it), then
    /// without the objects a listed merged object replaces.
    fn filtered(
        &self,
        listing: BoxStream<'static, Result<ObjectMeta>>,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        let inner = self.inner.clone();
        stream::once(async move {
            let objects: Vec<ObjectMeta> = listing.try_collect().await?;
            visible(inner.as_ref(), objects).await
        })
        .map_ok(|objects| stream::iter(objects.into_iter().map(Ok)))
        .try_flatten()
        .boxed()
    }
}

impl fmt::Display for MergedAware {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MergedAware({})", self.inner)
    }
}

/// `objects` without those a listed merged object replaces.
async fn visible(inner: &dyn ObjectStore, mut objects: Vec<ObjectMeta>) -> Result<Vec<ObjectMeta>> {
    let merging = |o: &ObjectMeta| o.location.as_ref().ends_with(MEMBERS_SUFFIX);
    // The common case, on every query's listing: no merge in progress.
    if !objects.iter().any(merging) {
        return Ok(objects);
    }
    let names: HashSet<String> = objects.iter().map(|o| o.location.to_string()).collect();
    let mut replaced = HashSet::new();
    for object in &objects {
        let Some(merged) = object.location.as_ref().strip_suffix(MEMBERS_SUFFIX) else {
            continue;
        };
        if !names.contains(&format!("{merged}.parquet")) {
            continue; // not written yet: its members are still the data
        }
        let members: MergedMembers = match inner
            .get_opts(&object.location, GetOptions::default())
            .await
        {
            Ok(got) => serde_json::from_slice(&got.bytes().await?).map_err(|e| {
                object_store::Error::Generic {
                    store: "lake",
                    source: format!("{}: {e}", object.location).into(),
                }
            })?,
            // Compaction finished meanwhile: the members are gone, and a
            // read of one fails and is retried on a fresh listing.
            Err(object_store::Error::NotFound { .. }) => continue,
            Err(e) => return Err(e),
        };
        let folder = object
            .location
            .as_ref()
            .rfind('/')
            .map_or("", |i| &object.location.as_ref()[..=i]);
        replaced.extend(members.objects.iter().map(|m| format!("{folder}{m}")));
    }
    if !replaced.is_empty() {
        objects.retain(|o| !replaced.contains(o.location.as_ref()));
    }
    Ok(objects)
}

#[async_trait]
impl ObjectStore for MergedAware {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        self.inner.get_opts(location, options).await
    }

    async fn get_ranges(
        &self,
        location: &Path,
        ranges: &[std::ops::Range<u64>],
    ) -> Result<Vec<bytes::Bytes>> {
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.filtered(self.inner.list(prefix))
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        self.filtered(self.inner.list_with_offset(prefix, offset))
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        let mut listed = self.inner.list_with_delimiter(prefix).await?;
        listed.objects = visible(self.inner.as_ref(), listed.objects).await?;
        Ok(listed)
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.inner.copy_opts(from, to, options).await
    }
}
