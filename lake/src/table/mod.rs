//! Delta tables in a lake: each dataset's ([`dataset`]) and the
//! processors' own state ([`state`]), opened, created and evolved alike,
//! and committed to with the log progress that makes a writer exactly-once.
//!
//! A writer first makes its Parquet objects durable and then commits them
//! in one Delta transaction that also records how far into its source it
//! got: an application transaction (`txn`) whose app id names the consumer
//! group and log partition and whose version is the last offset committed.
//! Objects written by a try that never committed are in no table version,
//! so no reader sees them. The commit is refused if the table moved on for
//! the same app id since the writer looked (a successor took the partition
//! over): Delta's own check for concurrent transactions of one app id, so a
//! stalled processor cannot add its rows after its successor's.

pub mod dataset;
pub mod maintenance;
pub mod manifest;
pub mod state;
mod tenant_scan;

pub use dataset::PARTITION_COLUMNS;

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use deltalake::kernel::transaction::{CommitBuilder, CommitProperties, TransactionError};
use deltalake::kernel::{Action, StructField, Transaction};
use deltalake::logstore::{LogStore, LogStoreFactory, StorageConfig, default_logstore};
use deltalake::operations::create::CreateBuilder;
use deltalake::protocol::{DeltaOperation, SaveMode};
use deltalake::{DeltaTable, DeltaTableBuilder, DeltaTableError, ObjectStore};
use object_store::path::Path as ObjectPath;
use url::Url;

use crate::{Lake, LakeError};

/// How far a writer got in its source, recorded with its commit: the
/// consumer group and log partition (`app_id`) and the last offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    pub app_id: String,
    pub version: i64,
}

impl Progress {
    /// Progress of `group`'s reader of log `partition`, through offset
    /// `last`: app id `<group>/<partition>` (the partition, a number, is
    /// after the last slash whatever the group's name).
    pub fn of_partition(group: &str, partition: i32, last: i64) -> Self {
        Self {
            app_id: format!("{group}/{partition}"),
            version: last,
        }
    }
}

/// A moment of a table's history: a version, or the last version
/// committed at or before a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AsOf {
    Version(u64),
    Time(chrono::DateTime<chrono::Utc>),
}

/// What a table is: where it lives in a lake and its columns.
pub(crate) struct TableSpec {
    /// Named in errors and logs.
    pub name: &'static str,
    /// The table's root within the lake (no trailing slash).
    pub folder: String,
    /// Every column, the partition columns last.
    pub fields: Vec<StructField>,
    pub partition_columns: &'static [&'static str],
}

/// A table in a lake, at the version last loaded. Always loaded: opening
/// loads it or creates version 0.
pub(crate) struct Table {
    name: &'static str,
    table: DeltaTable,
    progress: ProgressMemory,
}

/// The app ids' progress known at one version of a table. Delta answers
/// "the last `txn` of this app id" by replaying the log since its last
/// checkpoint, a file read per version (up to 100); a writer asks once per
/// partition per commit, so each answer is kept until the table moves on.
#[derive(Default)]
struct ProgressMemory {
    known: std::sync::Mutex<KnownProgress>,
}

/// The version it is of, and each app id's last progress then.
type KnownProgress = (Option<u64>, HashMap<String, Option<i64>>);

impl ProgressMemory {
    fn get(&self, version: u64, app_id: &str) -> Option<Option<i64>> {
        let known = self.known.lock().expect("not poisoned");
        (known.0 == Some(version))
            .then(|| known.1.get(app_id).copied())
            .flatten()
    }

    /// Keeps `progress` of app ids as of `version`; what was known of an
    /// older version is forgotten unless `carried`.
    fn put(
        &self,
        version: u64,
        progress: impl IntoIterator<Item = (String, Option<i64>)>,
        carried: bool,
    ) {
        let mut known = self.known.lock().expect("not poisoned");
        if known.0 != Some(version) && !carried {
            known.1.clear();
        }
        known.0 = Some(version);
        known.1.extend(progress);
    }
}

impl Table {
    /// The table `spec` describes in `lake`, created empty if the lake has
    /// none yet, with the columns the spec has and the table lacks added.
    /// Two processes creating or evolving it at once end up with one table.
    pub async fn open(lake: &Lake, spec: TableSpec) -> Result<Self, LakeError> {
        // delta-rs reads a local table only from an existing folder.
        lake.ensure_folder(&ObjectPath::from(spec.folder.as_str()))?;
        let url = lake
            .url()
            .join(&format!("{}/", spec.folder))
            .map_err(|e| LakeError::Refused(format!("{} table location: {e}", spec.name)))?;
        let log_store = log_store(lake, &url)?;
        let mut table = DeltaTable::new(log_store.clone());
        let name = spec.name;
        match table.load().await {
            Ok(()) => {}
            Err(DeltaTableError::NotATable(_)) => table = create(log_store, &spec).await?,
            Err(e) => return Err(table_error(name, e)),
        }
        let table = evolve(table, &spec).await?;
        Ok(Self::loaded(name, table))
    }

    /// The table `spec` describes in `lake` if there is one, loaded as it
    /// is: for readers, which neither create nor change tables.
    pub async fn load(lake: &Lake, spec: &TableSpec) -> Result<Option<Self>, LakeError> {
        // delta-rs refuses a local location that does not exist at all.
        if lake.lacks_local_folder(&ObjectPath::from(spec.folder.as_str())) {
            return Ok(None);
        }
        let url = lake
            .url()
            .join(&format!("{}/", spec.folder))
            .map_err(|e| LakeError::Refused(format!("{} table location: {e}", spec.name)))?;
        let mut table = DeltaTable::new(log_store(lake, &url)?);
        match table.load().await {
            Ok(()) => Ok(Some(Self::loaded(spec.name, table))),
            Err(DeltaTableError::NotATable(_)) => Ok(None),
            Err(e) => Err(table_error(spec.name, e)),
        }
    }

    /// The table as it was at `as_of`, if it existed then: for readers.
    pub async fn load_as_of(
        lake: &Lake,
        spec: &TableSpec,
        as_of: AsOf,
    ) -> Result<Option<Self>, LakeError> {
        // Loaded first, so a lake with no table is told from a moment
        // before the table's first version.
        let Some(Self {
            name, mut table, ..
        }) = Self::load(lake, spec).await?
        else {
            return Ok(None);
        };
        let loaded = match as_of {
            AsOf::Version(version) => {
                if version > table.version().unwrap_or_default() {
                    return Err(LakeError::Refused(format!(
                        "the {name} table has no version {version} yet"
                    )));
                }
                table.load_version(version).await
            }
            // The last version whose commit is not after `at`; a moment
            // before the first gives version 0, created empty.
            AsOf::Time(at) => table.load_with_datetime(at).await,
        };
        match loaded {
            Ok(()) => Ok(Some(Self::loaded(name, table))),
            Err(e) => Err(table_error(name, e)),
        }
    }

    fn loaded(name: &'static str, table: DeltaTable) -> Self {
        Self {
            name,
            table,
            progress: ProgressMemory::default(),
        }
    }

    pub fn delta(&self) -> &DeltaTable {
        &self.table
    }

    /// Takes the table as an operation of delta-rs left it.
    pub fn replace_delta(&mut self, table: DeltaTable) {
        self.table = table;
    }

    pub fn version(&self) -> u64 {
        self.table.version().unwrap_or_default()
    }

    pub async fn refresh(&mut self) -> Result<(), LakeError> {
        let name = self.name;
        self.table
            .update_incremental(None)
            .await
            .map_err(|e| table_error(name, e))
    }

    pub fn snapshot(&self) -> Result<&deltalake::table::state::DeltaTableState, LakeError> {
        self.table.snapshot().map_err(|e| table_error(self.name, e))
    }

    /// The last version committed for `app_id` in the loaded version.
    pub async fn progress(&self, app_id: &str) -> Result<Option<i64>, LakeError> {
        let version = self.version();
        if let Some(known) = self.progress.get(version, app_id) {
            return Ok(known);
        }
        let found = self
            .snapshot()?
            .transaction_version(self.table.log_store().as_ref(), app_id)
            .await
            .map_err(|e| table_error(self.name, e))?;
        self.progress
            .put(version, [(app_id.to_string(), found)], false);
        Ok(found)
    }

    /// Commits `actions` as one new version recording every progress in
    /// `progress`, each provided the table's last progress of its app id is
    /// still what its [`Prior`] expects. Another writer's commit of a
    /// different app id in between is fine; one of the same app id that
    /// breaks the expectation, before or during this call, makes it fail
    /// with [`LakeError::Superseded`] and commit nothing, unless it
    /// committed this very progress: then the rows are in already, and
    /// nothing more is committed (the answer is the loaded version). A
    /// writer may so retry a commit whose answer it never saw.
    pub async fn commit(
        &mut self,
        actions: Vec<Action>,
        operation: DeltaOperation,
        progress: &[(Progress, Prior)],
    ) -> Result<u64, LakeError> {
        // delta-rs itself retries a commit that lost the race for a version
        // to a commit it does not conflict with; a conflict it reports is
        // either the same app id (superseded) or something else that moved
        // under this commit (a schema change), which is worth one more try
        // from the new version.
        const TRIES: usize = 3;
        for _ in 0..TRIES {
            let mut committed_already = 0;
            for (progress, prior) in progress {
                let found = self.progress(&progress.app_id).await?;
                if found == Some(progress.version) {
                    committed_already += 1;
                } else if !prior.allows(found, progress.version) {
                    return Err(LakeError::Superseded {
                        app_id: progress.app_id.clone(),
                        expected: prior.expected(),
                        found,
                    });
                }
            }
            if committed_already > 0 {
                // This very progress is committed: by an earlier try of
                // this writer whose answer was lost (a cut connection), or
                // by another writer that covered the same records. Either
                // way the rows are in; committing them again would double
                // them. One commit holds all of them or none, so a mix
                // means another writer committed some (a successor
                // completing a flush): the caller commits the rest alone.
                if committed_already < progress.len() {
                    return Err(LakeError::PartlyCommitted { table: self.name });
                }
                tracing::info!(table = self.name, "already committed");
                return Ok(self.version());
            }
            let txns = progress.iter().map(|(progress, _)| {
                Transaction::new_with_last_update(
                    &progress.app_id,
                    progress.version,
                    Some(now_ms()),
                )
            });
            let committed = CommitBuilder::from(
                CommitProperties::default().with_application_transactions(txns.collect()),
            )
            .with_actions(actions.clone())
            .build(
                Some(self.snapshot()?),
                self.table.log_store(),
                operation.clone(),
            )
            .await;
            match committed {
                Ok(done) => {
                    let (before, version) = (self.version(), done.version());
                    self.table.state = Some(done.snapshot());
                    // This commit's progress is the table's now. What else
                    // was known stays true only if no other writer's commit
                    // came in between (their app ids may have moved).
                    let ours = progress
                        .iter()
                        .map(|(p, _)| (p.app_id.clone(), Some(p.version)));
                    self.progress.put(version, ours, version == before + 1);
                    return Ok(version);
                }
                Err(DeltaTableError::Transaction {
                    source: TransactionError::CommitConflict(conflict),
                }) => {
                    tracing::info!(table = self.name, %conflict, "commit conflict; checking the table again");
                    self.refresh().await?;
                }
                Err(e) => return Err(table_error(self.name, e)),
            }
        }
        Err(LakeError::Refused(format!(
            "the {} table kept changing under a commit ({TRIES} tries)",
            self.name
        )))
    }
}

/// What a commit expects of the table's last progress of an app id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prior {
    /// Exactly this (`None`: none yet): the writer's own last commit, so a
    /// commit by anyone else in between supersedes it. The processors'
    /// state table, which orders a log partition's flushes, is committed so.
    Exactly(Option<i64>),
    /// Any progress before the one committed: the writer holds the
    /// partition by other means (its state commit), and the table only
    /// must not go back. Dataset tables are committed so.
    Older,
}

impl Prior {
    fn allows(self, found: Option<i64>, version: i64) -> bool {
        match self {
            Self::Exactly(expected) => found == expected,
            Self::Older => found.is_none_or(|found| found < version),
        }
    }

    fn expected(self) -> Option<i64> {
        match self {
            Self::Exactly(expected) => expected,
            Self::Older => None,
        }
    }
}

/// Creates the empty table; if another process created it first, loads
/// that one.
async fn create(log_store: Arc<dyn LogStore>, spec: &TableSpec) -> Result<DeltaTable, LakeError> {
    let created = CreateBuilder::new()
        .with_log_store(log_store.clone())
        .with_table_name(spec.name)
        .with_columns(spec.fields.clone())
        .with_partition_columns(spec.partition_columns.iter().copied())
        .with_save_mode(SaveMode::Ignore)
        .await;
    match created {
        Ok(table) => Ok(table),
        // Another process committed version 0 first.
        Err(DeltaTableError::VersionAlreadyExists(_)) => {
            let mut table = DeltaTable::new(log_store);
            table.load().await.map_err(|e| table_error(spec.name, e))?;
            Ok(table)
        }
        Err(e) => Err(table_error(spec.name, e)),
    }
}

/// Brings the table's schema up to the spec's: a column this release added
/// is added to the table, an ordinary Delta schema change (rows written
/// before read it as null). Only nullable columns may be added that way,
/// and a column whose type differs from the spec's is refused, never
/// rewritten. A column the table has and the spec lacks (written by a newer
/// release) stays: rows written here leave it null.
async fn evolve(mut table: DeltaTable, spec: &TableSpec) -> Result<DeltaTable, LakeError> {
    // Two processes may add the same columns at once; the loser of the
    // commit race reloads and finds nothing left to add.
    for _ in 0..3 {
        let current = table
            .snapshot()
            .map_err(|e| table_error(spec.name, e))?
            .schema();
        let mut missing = Vec::new();
        for wanted in &spec.fields {
            match current.field(wanted.name()) {
                Some(found) if found.data_type() == wanted.data_type() => {}
                Some(found) => {
                    return Err(LakeError::Refused(format!(
                        "the {} table's column {} is {:?}, not the {:?} this release writes",
                        spec.name,
                        wanted.name(),
                        found.data_type(),
                        wanted.data_type()
                    )));
                }
                None if wanted.is_nullable() => missing.push(wanted.clone()),
                None => {
                    return Err(LakeError::Refused(format!(
                        "the {} table lacks column {}, which cannot be added: it is not nullable",
                        spec.name,
                        wanted.name()
                    )));
                }
            }
        }
        if missing.is_empty() {
            return Ok(table);
        }
        let names: Vec<String> = missing.iter().map(|f| f.name().clone()).collect();
        let log_store = table.log_store();
        match table.add_columns().with_fields(missing).await {
            Ok(evolved) => {
                tracing::info!(table = spec.name, columns = ?names, "added columns to the table");
                return Ok(evolved);
            }
            Err(DeltaTableError::Transaction {
                source: TransactionError::CommitConflict(_),
            }) => {
                table = DeltaTable::new(log_store);
                table.load().await.map_err(|e| table_error(spec.name, e))?;
            }
            Err(e) => return Err(table_error(spec.name, e)),
        }
    }
    Err(LakeError::Refused(format!(
        "the {} table's schema kept changing while columns were added",
        spec.name
    )))
}

/// The log store of the table at `url`, over the lake's own store, so the
/// log is written with the lake's durability and credentials.
fn log_store(lake: &Lake, url: &Url) -> Result<Arc<dyn LogStore>, LakeError> {
    register_s3_log_stores();
    DeltaTableBuilder::from_url(url.clone())
        .and_then(|builder| {
            builder
                .with_storage_backend(lake.root_store(), url.clone())
                .build_storage()
        })
        .map_err(|e| LakeError::Refused(format!("table at {url}: {e}")))
}

/// delta-rs knows `s3://` only through its AWS crate (DynamoDB locking,
/// the AWS SDK). The lake's S3 store commits with conditional puts
/// (`If-None-Match`), which is all Delta's log needs, so `s3://` tables
/// use delta-rs's default log store over it.
fn register_s3_log_stores() {
    static REGISTERED: OnceLock<()> = OnceLock::new();
    REGISTERED.get_or_init(|| {
        let scheme = Url::parse("s3://").expect("a valid URL");
        deltalake::logstore::logstore_factories().insert(scheme, Arc::new(ConditionalPutLogStores));
    });
}

struct ConditionalPutLogStores;

impl LogStoreFactory for ConditionalPutLogStores {
    fn with_options(
        &self,
        prefixed_store: Arc<dyn ObjectStore>,
        root_store: Arc<dyn ObjectStore>,
        location: &Url,
        options: &StorageConfig,
    ) -> deltalake::DeltaResult<Arc<dyn LogStore>> {
        Ok(default_logstore(
            prefixed_store,
            root_store,
            location,
            options,
        ))
    }
}

pub(crate) fn table_error(table: &'static str, error: DeltaTableError) -> LakeError {
    LakeError::Table {
        table,
        source: Box::new(error),
    }
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or_default()
}
