//! Reading a lake as its tables say, and a store with faults on demand
//! (a writer stopped at an exact point): one table's commits refused, or
//! deletions held after the first few.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use async_trait::async_trait;
use candor_lake::{DatasetTable, Lake};
use candor_schemas::TenantId;
use candor_schemas::datasets::Dataset;
use futures::StreamExt;
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

/// A store that, while armed, refuses every new version of one table (its
/// `_delta_log` entries after the first), so a writer retries that commit
/// until it is stopped, and counts the refusals; or that lets a number of
/// data-file deletions through and holds every later one forever, so a
/// VACUUM can be stopped midway.
#[derive(Debug)]
pub struct FaultyStore {
    inner: Arc<dyn ObjectStore>,
    /// The log whose new versions are refused, while armed.
    refused_log: Option<String>,
    armed: AtomicBool,
    refused: AtomicUsize,
    deletes: Option<Arc<DeleteGate>>,
}

/// Lets `allowed` deletions of data files (Parquet objects outside any
/// `_delta_log`) through, then holds the rest; shared by the stores of one
/// lake.
#[derive(Debug)]
pub struct DeleteGate {
    allowed: usize,
    asked: AtomicUsize,
}

impl DeleteGate {
    pub fn after(allowed: usize) -> Arc<Self> {
        Arc::new(Self {
            allowed,
            asked: AtomicUsize::new(0),
        })
    }

    /// Whether a deletion beyond the allowed ones is being held.
    pub fn holding(&self) -> bool {
        self.asked.load(Ordering::SeqCst) > self.allowed
    }
}

impl FaultyStore {
    pub fn refusing_commits(
        inner: Arc<dyn ObjectStore>,
        lake_prefix: &str,
        table: &str,
    ) -> Arc<Self> {
        Arc::new(Self {
            inner,
            refused_log: Some(match lake_prefix.trim_matches('/') {
                "" => format!("{table}/_delta_log/"),
                prefix => format!("{prefix}/{table}/_delta_log/"),
            }),
            armed: AtomicBool::new(true),
            refused: AtomicUsize::new(0),
            deletes: None,
        })
    }

    pub fn holding_deletes(inner: Arc<dyn ObjectStore>, gate: Arc<DeleteGate>) -> Arc<Self> {
        Arc::new(Self {
            inner,
            refused_log: None,
            armed: AtomicBool::new(false),
            refused: AtomicUsize::new(0),
            deletes: Some(gate),
        })
    }

    pub fn refused(&self) -> usize {
        self.refused.load(Ordering::SeqCst)
    }

    pub fn disarm(&self) {
        self.armed.store(false, Ordering::SeqCst);
    }
}

impl fmt::Display for FaultyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FaultyStore({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for FaultyStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        let path = location.as_ref();
        let a_new_version = self
            .refused_log
            .as_ref()
            .is_some_and(|log| path.starts_with(log.as_str()))
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
        let Some(gate) = self.deletes.clone() else {
            return self.inner.delete_stream(locations);
        };
        let gated = locations.then(move |location| {
            let gate = gate.clone();
            async move {
                let data_file = location.as_ref().is_ok_and(|p| {
                    p.as_ref().ends_with(".parquet") && !p.as_ref().contains("_delta_log/")
                });
                if data_file && gate.asked.fetch_add(1, Ordering::SeqCst) >= gate.allowed {
                    std::future::pending::<()>().await;
                }
                location
            }
        });
        self.inner.delete_stream(Box::pin(gated))
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

/// Rows whose `subject` is `subject` in every Parquet object under `dir`
/// (the Delta logs aside), the objects that hold any, and the objects read.
pub fn rows_of_subject(dir: &std::path::Path, subject: &str) -> (usize, Vec<String>, usize) {
    use arrow::array::AsArray;
    let (mut rows, mut holding, mut read) = (0, Vec::new(), 0);
    let mut folders = vec![dir.to_path_buf()];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(&folder).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                if !path.ends_with("_delta_log") {
                    folders.push(path);
                }
                continue;
            }
            if path.extension().is_none_or(|e| e != "parquet") {
                continue;
            }
            read += 1;
            let file = std::fs::File::open(&path).unwrap();
            let reader =
                parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
                    .unwrap()
                    .build()
                    .unwrap();
            for batch in reader {
                let batch = batch.unwrap();
                let Some(column) = batch.column_by_name("subject") else {
                    continue;
                };
                // Rewritten files may hold strings as views.
                let column =
                    arrow::compute::cast(column, &arrow::datatypes::DataType::Utf8).unwrap();
                let found = column
                    .as_string::<i32>()
                    .iter()
                    .filter(|s| *s == Some(subject))
                    .count();
                if found > 0 {
                    rows += found;
                    holding.push(path.display().to_string());
                }
            }
        }
    }
    (rows, holding, read)
}
