//! Reading a lake as its tables say, and a store that fails the commits
//! of one table on demand (a processor stopped at an exact point).

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use async_trait::async_trait;
use candor_lake::{DatasetTable, Lake};
use candor_schemas::TenantId;
use candor_schemas::datasets::Dataset;
use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, Result,
};

/// The objects of `tenant` that `dataset`'s table names now (none before
/// the table exists): what every reader of the table reads.
pub async fn committed_objects(lake: &Lake, dataset: Dataset, tenant: &str) -> Vec<Path> {
    let Some(table) = DatasetTable::load(lake, dataset).await.unwrap() else {
        return Vec::new();
    };
    let tenant = TenantId::new(tenant).unwrap();
    let mut paths: Vec<Path> = table
        .tenant_objects(&tenant)
        .unwrap()
        .into_iter()
        .map(|o| Path::from(o.path))
        .collect();
    paths.sort();
    paths
}

/// A store that, while armed, refuses every new version of the table
/// rooted at `table` (its `_delta_log` entries after the first), so a
/// writer retries that commit until it is stopped, and counts the refusals.
#[derive(Debug)]
pub struct FailingCommits {
    inner: Arc<dyn ObjectStore>,
    log: String,
    armed: AtomicBool,
    refused: AtomicUsize,
}

impl FailingCommits {
    pub fn wrap(inner: Arc<dyn ObjectStore>, lake_prefix: &str, table: &str) -> Arc<Self> {
        Arc::new(Self {
            inner,
            log: match lake_prefix.trim_matches('/') {
                "" => format!("{table}/_delta_log/"),
                prefix => format!("{prefix}/{table}/_delta_log/"),
            },
            armed: AtomicBool::new(true),
            refused: AtomicUsize::new(0),
        })
    }

    pub fn refused(&self) -> usize {
        self.refused.load(Ordering::SeqCst)
    }

    pub fn disarm(&self) {
        self.armed.store(false, Ordering::SeqCst);
    }
}

impl fmt::Display for FailingCommits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FailingCommits({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for FailingCommits {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        let path = location.as_ref();
        let a_new_version = path.starts_with(&self.log)
            && path.ends_with(".json")
            && !path.ends_with("00000000000000000000.json");
        if a_new_version && self.armed.load(Ordering::SeqCst) {
            self.refused.fetch_add(1, Ordering::SeqCst);
            return Err(object_store::Error::Generic {
                store: "failing commits",
                source: "refused for the test".into(),
            });
        }
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
        self.inner.list(prefix)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list_with_offset(prefix, offset)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.inner.copy_opts(from, to, options).await
    }
}

/// Writes an object of `dataset`'s rows (none: the rows do not matter
/// here) into `tenant`'s partition of `date` and commits it to the table,
/// as a flush would; returns its path within the lake.
pub async fn put_committed(
    lake: &Lake,
    dataset: &str,
    tenant: &str,
    date: impl ToString,
) -> String {
    use candor_lake::{NewObject, PartitionKey, Prior, Progress};
    let dataset = Dataset::ALL
        .into_iter()
        .find(|d| d.name() == dataset)
        .expect("a dataset");
    let key = PartitionKey {
        dataset,
        tenant: TenantId::new(tenant).unwrap(),
        date: date.to_string(),
    };
    let file_name = format!(
        "part-00000-{}.parquet",
        format_args!("{:032x}", rand::random::<u128>())
    );
    let batch = arrow::array::RecordBatch::new_empty(dataset.lake_schema());
    let size = lake
        .write_parquet(&key.object_path(&file_name), &batch)
        .await
        .unwrap();
    let path = key.object_path(&file_name).to_string();
    let mut table = DatasetTable::open(lake, dataset).await.unwrap();
    // A writer of its own for each object.
    let progress = Progress::of_partition(&format!("test-{:032x}", rand::random::<u128>()), 0, 0);
    table
        .append(
            &[NewObject {
                key,
                file_name,
                size: size as u64,
                rows: 0,
            }],
            &[(progress, Prior::Older)],
        )
        .await
        .unwrap();
    path
}

/// What engines other than Candor's read in the local lake at `dir`: per
/// engine (`deltalake`, `duckdb`) and dataset, `[tenant, rows, sum of
/// measure]` per tenant (`lake/tests/read_delta.py`: the PyPI `deltalake`
/// package and DuckDB's delta extension).
pub fn external_sums(dir: &std::path::Path, wanted: &[(&str, &str)]) -> serde_json::Value {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("lake/tests/read_delta.py");
    let output = std::process::Command::new("python3")
        .arg(&script)
        .arg(dir)
        .args(
            wanted
                .iter()
                .map(|(dataset, measure)| format!("{dataset}:{measure}")),
        )
        .output()
        .expect("python3 runs");
    assert!(
        output.status.success(),
        "{} failed: {}",
        script.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("the script prints JSON")
}
