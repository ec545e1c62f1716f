//! Opening an object store from a URL: `file:///path` (or a plain path) for a
//! local directory, `s3://bucket/prefix` for S3 and S3-compatible servers.
//! S3 settings come from the usual `AWS_*` environment variables
//! (`AWS_ENDPOINT_URL`, `AWS_REGION`, `AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY`, `AWS_ALLOW_HTTP` for a plain-HTTP test server).

use std::sync::Arc;

use object_store::ObjectStore;
use object_store::local::LocalFileSystem;
use object_store::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store URL {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("object store: {0}")]
    Store(#[from] object_store::Error),
}

/// The store a URL names and the prefix inside it.
pub fn open_store(location: &str) -> Result<(Arc<dyn ObjectStore>, Path), StoreError> {
    let bad = |reason: String| StoreError::BadUrl {
        url: location.to_string(),
        reason,
    };
    if !location.contains("://") {
        // A plain path: a local directory, created if missing.
        std::fs::create_dir_all(location).map_err(|e| bad(e.to_string()))?;
        let store = LocalFileSystem::new_with_prefix(location)?;
        return Ok((Arc::new(store), Path::default()));
    }
    let url = url::Url::parse(location).map_err(|e| bad(e.to_string()))?;
    let options: Vec<(String, String)> = std::env::vars()
        .filter(|(k, _)| k.starts_with("AWS_"))
        .map(|(k, v)| (k.to_ascii_lowercase(), v))
        .collect();
    let (store, prefix) = object_store::parse_url_opts(&url, options)?;
    Ok((Arc::from(store), prefix))
}
