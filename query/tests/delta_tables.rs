//! The query node reads each dataset's Delta table, not its folders: on a
//! real lake in a temporary directory, written and committed through the
//! lake's own API (`candor_lake`), an object that was written but never
//! committed counts in no answer; a new commit shows once the cached table
//! is older than the snapshot TTL, with the version every answer and audit
//! entry reports; a tenant sees its own rows only; a table whose log was
//! edited by hand fails the questions about it with an error naming it and
//! no other; and the views show queries the very columns the folder
//! listing tables did.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{
    Array, ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray, TimestampMillisecondArray,
};
use arrow::datatypes::{DataType, TimeUnit};
use candor_lake::{DatasetTable, Lake, NewObject, PartitionKey, Prior, Progress};
use candor_query::QueryError;
use candor_query::engine::EngineConfig;
use candor_query::kpi::{self, GroupBy, KpiRequest};
use candor_query::lake::{LakeConfig, QueryLake, TableVersions};
use candor_query::scope::{Rows, Scope};
use candor_query::session::{Answer, Limits, ScopedSession};
use candor_schemas::TenantId;
use candor_schemas::datasets::Dataset;
use chrono::NaiveDate;

/// 2026-03-01T00:00:00Z.
const DAY_START_MS: i64 = 1_772_323_200_000;
const DAY: &str = "2026-03-01";

fn day() -> NaiveDate {
    DAY.parse().unwrap()
}

/// `rows` rows of `dataset` for `subject` in department `sales`, one per
/// 15-minute slot of the day, every integer column `seconds`.
fn rows(dataset: Dataset, subject: &str, rows: usize, seconds: i64) -> RecordBatch {
    let schema = dataset.lake_schema();
    let columns = schema
        .fields()
        .iter()
        .map(|field| -> ArrayRef {
            match (field.name().as_str(), field.data_type()) {
                ("subject", _) => Arc::new(StringArray::from(vec![subject; rows])),
                ("department", _) => Arc::new(StringArray::from(vec![Some("sales"); rows])),
                (_, DataType::Utf8) => Arc::new(StringArray::from(vec!["x"; rows])),
                (_, DataType::Int64) => Arc::new(Int64Array::from(vec![seconds; rows])),
                (_, DataType::Float64) => Arc::new(Float64Array::from(vec![1.5; rows])),
                (_, DataType::Timestamp(TimeUnit::Millisecond, _)) => Arc::new(
                    TimestampMillisecondArray::from(
                        (0..rows as i64)
                            .map(|i| DAY_START_MS + i * 900_000)
                            .collect::<Vec<_>>(),
                    )
                    .with_timezone("UTC"),
                ),
                (name, other) => panic!("no test values for {name} ({other})"),
            }
        })
        .collect();
    RecordBatch::try_new(schema, columns).unwrap()
}

/// Writes objects into a lake and commits them, as the processor does.
struct Writer {
    lake: Lake,
    /// The last log offset committed: every commit goes further.
    offset: i64,
    objects: usize,
}

impl Writer {
    fn new(dir: &std::path::Path) -> Self {
        Self {
            lake: Lake::local(dir).unwrap(),
            offset: 0,
            objects: 0,
        }
    }

    /// Writes `n` rows of `tenant`'s subject `<tenant>-<who>` as one
    /// durable object, not committed.
    async fn write(
        &mut self,
        dataset: Dataset,
        tenant: &str,
        who: &str,
        n: usize,
        seconds: i64,
    ) -> NewObject {
        self.objects += 1;
        let key = PartitionKey {
            dataset,
            tenant: TenantId::new(tenant).unwrap(),
            date: DAY.into(),
        };
        let file_name = format!("{}-{}.parquet", self.objects, uuid_like(self.objects));
        let batch = rows(dataset, &format!("{tenant}-{who}"), n, seconds);
        let size = self
            .lake
            .write_parquet(&key.object_path(&file_name), &batch)
            .await
            .unwrap();
        NewObject {
            key,
            file_name,
            size: size as u64,
            rows: n as u64,
        }
    }

    /// Commits `objects` (all of one dataset) as one table version.
    async fn commit(&mut self, objects: &[NewObject]) -> u64 {
        let dataset = objects[0].key.dataset;
        let mut table = DatasetTable::open(&self.lake, dataset).await.unwrap();
        self.offset += 10;
        let progress = [(Progress::of_partition("g", 0, self.offset), Prior::Older)];
        table.append(objects, &progress).await.unwrap()
    }

    /// Writes and commits one object.
    async fn add(
        &mut self,
        dataset: Dataset,
        tenant: &str,
        who: &str,
        n: usize,
        seconds: i64,
    ) -> u64 {
        let object = self.write(dataset, tenant, who, n, seconds).await;
        self.commit(&[object]).await
    }
}

/// A name as unique as the processor's, without a clock.
fn uuid_like(n: usize) -> String {
    format!("{:016x}", (n as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

fn query_lake(dir: &std::path::Path, ttl: Duration) -> QueryLake {
    let mut config = LakeConfig::new(dir.to_str().unwrap());
    config.snapshot_ttl = ttl;
    config.engine = EngineConfig {
        workers: 1,
        ..EngineConfig::default()
    };
    QueryLake::new(config).unwrap()
}

async fn session_in(lake: &QueryLake, tenant: &str, scope: &Scope) -> ScopedSession {
    let tables = lake
        .tables_at(&TenantId::new(tenant).unwrap(), None)
        .await
        .unwrap();
    ScopedSession::new(lake, &tables, scope, Limits::default()).unwrap()
}

async fn session(lake: &QueryLake, tenant: &str) -> ScopedSession {
    session_in(lake, tenant, &Scope::whole_tenant()).await
}

/// The answer's cells as text, row by row.
fn cells(answer: &Answer) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for batch in &answer.batches {
        let columns: Vec<ArrayRef> = batch
            .columns()
            .iter()
            .map(|c| arrow::compute::cast(c, &DataType::Utf8).unwrap())
            .collect();
        for i in 0..batch.num_rows() {
            out.push(
                columns
                    .iter()
                    .map(|c| {
                        let c = c.as_any().downcast_ref::<StringArray>().unwrap();
                        if c.is_null(i) {
                            "NULL".to_string()
                        } else {
                            c.value(i).to_string()
                        }
                    })
                    .collect(),
            );
        }
    }
    out
}

/// `(rows, sum of tracked_s)` of the session's activity view.
async fn activity_totals(session: &ScopedSession) -> (String, String) {
    let answer = session
        .query("SELECT count(*), coalesce(sum(tracked_s), 0) FROM activity")
        .await
        .unwrap();
    let row = cells(&answer).remove(0);
    (row[0].clone(), row[1].clone())
}

/// Tracked seconds of the day as the activity KPI sums them.
async fn kpi_tracked(session: &ScopedSession) -> i64 {
    let request = KpiRequest {
        time_zone: "UTC".into(),
        from: day(),
        to: day(),
        group_by: vec![GroupBy::Day],
        limit: 100,
        offset: 0,
    };
    let page = kpi::activity(session, &request, None).await.unwrap();
    page.rows.iter().map(|r| r.tracked_s).sum()
}

fn versions(pairs: &[(&'static str, u64)]) -> TableVersions {
    pairs.iter().copied().collect()
}

/// Waits until `done` holds, checking every few milliseconds, for at most
/// 30 s.
async fn eventually<F, Fut>(what: &str, mut done: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done().await {
        assert!(Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_committed_objects_count_and_new_commits_show_after_the_ttl() {
    let dir = tempfile::tempdir().unwrap();
    let mut writer = Writer::new(dir.path());
    assert_eq!(writer.add(Dataset::Activity, "acme", "a", 3, 60).await, 1);
    // A flush that wrote its object and never committed it: the object is
    // in the partition's folder, in no table version.
    writer.write(Dataset::Activity, "acme", "a", 50, 60).await;
    let folder = dir.path().join(format!("activity/tenant=acme/date={DAY}"));
    assert_eq!(std::fs::read_dir(&folder).unwrap().count(), 2);

    let ttl = Duration::from_millis(700);
    let lake = query_lake(dir.path(), ttl);
    let first_read = Instant::now();
    let s = session(&lake, "acme").await;
    assert_eq!(activity_totals(&s).await, ("3".into(), "180".into()));
    assert_eq!(kpi_tracked(&s).await, 180, "the KPI counts committed rows");
    assert_eq!(
        s.table_versions(),
        &versions(&[("activity", 1)]),
        "datasets without a table have no version"
    );
    // The other datasets have no table yet: empty, and queryable.
    for view in ["app_usage", "gps", "attendance"] {
        let answer = s.query(&format!("SELECT * FROM {view}")).await.unwrap();
        assert_eq!(answer.num_rows(), 0, "{view}");
    }

    // A new commit: invisible while the cached version is younger than
    // the TTL, read after it.
    assert_eq!(writer.add(Dataset::Activity, "acme", "b", 2, 30).await, 2);
    let s = session(&lake, "acme").await;
    if first_read.elapsed() < ttl {
        assert_eq!(s.table_versions(), &versions(&[("activity", 1)]));
        assert_eq!(activity_totals(&s).await, ("3".into(), "180".into()));
    }
    eventually("the second commit is read", || async {
        session(&lake, "acme")
            .await
            .table_versions()
            .get("activity")
            == Some(&2)
    })
    .await;
    let s = session(&lake, "acme").await;
    assert_eq!(s.table_versions(), &versions(&[("activity", 2)]));
    assert_eq!(activity_totals(&s).await, ("5".into(), "240".into()));
    assert_eq!(kpi_tracked(&s).await, 240);
    // A session keeps reading the version it opened with: an answer is
    // about one version, whatever is committed meanwhile.
    writer.add(Dataset::Activity, "acme", "c", 1, 10).await;
    writer.add(Dataset::Gps, "acme", "c", 4, 10).await;
    assert_eq!(activity_totals(&s).await, ("5".into(), "240".into()));

    // Told to, the node reads the tables anew at once, whatever their age.
    let patient = query_lake(dir.path(), Duration::from_secs(3600));
    assert_eq!(
        session(&patient, "acme").await.table_versions(),
        &versions(&[("activity", 3), ("gps", 1)])
    );
    writer.add(Dataset::Activity, "acme", "d", 1, 10).await;
    assert_eq!(
        session(&patient, "acme").await.table_versions(),
        &versions(&[("activity", 3), ("gps", 1)]),
        "an hour's TTL"
    );
    patient.refresh_tables();
    let s = session(&patient, "acme").await;
    assert_eq!(
        s.table_versions(),
        &versions(&[("activity", 4), ("gps", 1)])
    );
    assert_eq!(activity_totals(&s).await, ("7".into(), "260".into()));
    let answer = s
        .query("SELECT count(*), sum(points) FROM gps")
        .await
        .unwrap();
    assert_eq!(
        cells(&answer),
        vec![vec!["4".to_string(), "40".to_string()]]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_never_sees_another_tenants_rows() {
    let dir = tempfile::tempdir().unwrap();
    let mut writer = Writer::new(dir.path());
    // One commit holds both tenants' objects, as one flush does.
    let objects = vec![
        writer.write(Dataset::Activity, "acme", "a", 3, 60).await,
        writer.write(Dataset::Activity, "globex", "g", 5, 100).await,
    ];
    writer.commit(&objects).await;
    let lake = query_lake(dir.path(), Duration::from_secs(2));

    let acme = session(&lake, "acme").await;
    for sql in [
        "SELECT count(*), sum(tracked_s) FROM activity",
        "SELECT count(*), sum(tracked_s) FROM activity WHERE subject LIKE 'globex%' OR true",
        "SELECT count(*), sum(tracked_s) FROM activity WHERE date = '2026-03-01' OR 1 = 1",
    ] {
        let answer = acme.query(sql).await.unwrap();
        assert_eq!(
            cells(&answer),
            vec![vec!["3".to_string(), "180".to_string()]],
            "{sql}"
        );
    }
    let subjects = acme
        .query("SELECT DISTINCT subject FROM activity")
        .await
        .unwrap();
    assert_eq!(cells(&subjects), vec![vec!["acme-a".to_string()]]);
    // No view has a tenant column to ask for.
    let refused = acme.query("SELECT tenant FROM activity").await;
    assert!(matches!(refused, Err(QueryError::BadSql(_))), "{refused:?}");
    assert_eq!(kpi_tracked(&acme).await, 180);

    let globex = session(&lake, "globex").await;
    assert_eq!(activity_totals(&globex).await, ("5".into(), "500".into()));
    assert_eq!(kpi_tracked(&globex).await, 500);

    // A tenant with no files in the table reads nothing, not everything.
    let initech = session(&lake, "initech").await;
    assert_eq!(activity_totals(&initech).await, ("0".into(), "0".into()));
    assert_eq!(
        initech.table_versions(),
        &versions(&[("activity", 1)]),
        "it read version 1, which has none of its files"
    );

    // The scope's filter still applies within the tenant.
    let departments = |d: &[&str]| Scope {
        rows: Rows::Departments(d.iter().map(|d| d.to_string()).collect::<BTreeSet<_>>()),
        ..Scope::whole_tenant()
    };
    let sales = session_in(&lake, "acme", &departments(&["sales"])).await;
    assert_eq!(activity_totals(&sales).await, ("3".into(), "180".into()));
    let ops = session_in(&lake, "acme", &departments(&["ops"])).await;
    assert_eq!(activity_totals(&ops).await, ("0".into(), "0".into()));
    let own = Scope {
        rows: Rows::Subject("acme-a".into()),
        ..Scope::whole_tenant()
    };
    let own = session_in(&lake, "acme", &own).await;
    assert_eq!(activity_totals(&own).await, ("3".into(), "180".into()));
}

/// `SELECT *` of `dataset` as the listing tables of earlier releases
/// answered it, over the tenant's folder (which here holds committed
/// objects only).
async fn as_listed(dir: &std::path::Path, dataset: Dataset, tenant: &str) -> Answer {
    use datafusion::datasource::file_format::parquet::ParquetFormat;
    use datafusion::datasource::listing::{
        ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
    };
    let folder = dir.join(dataset.name()).join(format!("tenant={tenant}"));
    std::fs::create_dir_all(&folder).unwrap();
    let url = ListingTableUrl::parse(format!("{}/", folder.display())).unwrap();
    let options = ListingOptions::new(Arc::new(ParquetFormat::default()))
        .with_file_extension(".parquet")
        .with_table_partition_cols(vec![("date".to_string(), DataType::Utf8)]);
    let config = ListingTableConfig::new(url)
        .with_listing_options(options)
        .with_schema(dataset.lake_schema());
    let ctx = datafusion::prelude::SessionContext::new();
    ctx.register_table("t", Arc::new(ListingTable::try_new(config).unwrap()))
        .unwrap();
    let df = ctx
        .sql("SELECT * FROM t ORDER BY slot_start")
        .await
        .unwrap();
    let schema = Arc::new(df.schema().as_arrow().clone());
    Answer {
        schema,
        batches: df.collect().await.unwrap(),
        truncated: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_views_show_the_columns_queries_always_saw() {
    let dir = tempfile::tempdir().unwrap();
    let mut writer = Writer::new(dir.path());
    // Activity and gps with rows, app_usage a table without any, and no
    // attendance table at all.
    writer.add(Dataset::Activity, "acme", "a", 3, 60).await;
    writer.add(Dataset::Gps, "acme", "a", 2, 7).await;
    DatasetTable::open(&writer.lake, Dataset::AppUsage)
        .await
        .unwrap();
    let lake = query_lake(dir.path(), Duration::from_secs(2));
    let s = session(&lake, "acme").await;
    assert_eq!(
        s.table_versions(),
        &versions(&[("activity", 1), ("app_usage", 0), ("gps", 1)])
    );
    for dataset in Dataset::ALL {
        let view = dataset.name();
        let ours = s
            .query(&format!("SELECT * FROM {view} ORDER BY slot_start"))
            .await
            .unwrap();
        let before = as_listed(dir.path(), dataset, "acme").await;
        let fields = |a: &Answer| {
            a.schema
                .fields()
                .iter()
                .map(|f| (f.name().clone(), f.data_type().clone(), f.is_nullable()))
                .collect::<Vec<_>>()
        };
        assert_eq!(fields(&ours), fields(&before), "{view}");
        assert_eq!(ours.schema.fields().last().unwrap().name(), "date");
        assert_eq!(cells(&ours), cells(&before), "{view}: the same rows");
    }
    let dates = s
        .query("SELECT DISTINCT date, arrow_typeof(date) FROM activity")
        .await
        .unwrap();
    assert_eq!(
        cells(&dates),
        vec![vec![DAY.to_string(), "Utf8".to_string()]]
    );
    // A filter on the partition column still picks its rows.
    let answer = s
        .query("SELECT count(*) FROM activity WHERE date >= '2026-03-01' AND date <= '2026-03-01'")
        .await
        .unwrap();
    assert_eq!(cells(&answer), vec![vec!["3".to_string()]]);
    let answer = s
        .query("SELECT count(*) FROM activity WHERE date = '2026-03-02'")
        .await
        .unwrap();
    assert_eq!(cells(&answer), vec![vec!["0".to_string()]]);
}

/// Makes `version`'s commit of `dataset`'s table unreadable, as a person
/// editing it by hand might; returns what it held.
fn corrupt(dir: &std::path::Path, dataset: Dataset, version: u64) -> (std::path::PathBuf, String) {
    let commit = dir
        .join(dataset.name())
        .join(format!("_delta_log/{version:020}.json"));
    let text = std::fs::read_to_string(&commit).unwrap();
    std::fs::write(&commit, text.replacen("{\"add\"", "{\"add\" oops", 1)).unwrap();
    (commit, text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hand_edited_log_fails_questions_about_that_table_alone() {
    let dir = tempfile::tempdir().unwrap();
    let mut writer = Writer::new(dir.path());
    writer.add(Dataset::Activity, "acme", "a", 3, 60).await;
    writer.add(Dataset::Gps, "acme", "a", 2, 7).await;
    let (commit, good) = corrupt(dir.path(), Dataset::Activity, 1);

    let lake = query_lake(dir.path(), Duration::from_secs(3600));
    let s = session(&lake, "acme").await;
    assert_eq!(
        s.table_versions(),
        &versions(&[("gps", 1)]),
        "the activity table is read at no version"
    );
    let gps = s.query("SELECT count(*) FROM gps").await.unwrap();
    assert_eq!(cells(&gps), vec![vec!["2".to_string()]]);
    let failed = s.query("SELECT count(*) FROM activity").await;
    let Err(QueryError::TableUnavailable(error)) = &failed else {
        panic!("{failed:?}");
    };
    assert_eq!(error.dataset, Dataset::Activity);
    assert!(
        error.to_string().starts_with("the activity table: "),
        "{error}"
    );
    assert!(!error.transient);
    let request = KpiRequest {
        time_zone: "UTC".into(),
        from: day(),
        to: day(),
        group_by: vec![GroupBy::Day],
        limit: 100,
        offset: 0,
    };
    let kpi = kpi::activity(&s, &request, None).await;
    assert!(
        matches!(kpi, Err(QueryError::TableUnavailable(_))),
        "{kpi:?}"
    );
    let gps_kpi = kpi::gps(&s, &request, None).await.unwrap();
    assert_eq!(gps_kpi.rows.len(), 1, "the gps KPI is answered");
    // A join over both needs the broken one: refused alike.
    let both = s
        .query("SELECT count(*) FROM gps JOIN activity USING (subject)")
        .await;
    assert!(
        matches!(both, Err(QueryError::TableUnavailable(_))),
        "{both:?}"
    );

    // Mended, it is read again at the next check.
    std::fs::write(&commit, good).unwrap();
    lake.refresh_tables();
    let s = session(&lake, "acme").await;
    assert_eq!(
        s.table_versions(),
        &versions(&[("activity", 1), ("gps", 1)])
    );
    assert_eq!(activity_totals(&s).await, ("3".into(), "180".into()));

    // A commit that cannot be read when a loaded table is brought up to
    // date stops that table alike.
    writer.add(Dataset::Gps, "acme", "b", 1, 7).await;
    corrupt(dir.path(), Dataset::Gps, 2);
    lake.refresh_tables();
    let s = session(&lake, "acme").await;
    assert_eq!(s.table_versions(), &versions(&[("activity", 1)]));
    let failed = s.query("SELECT count(*) FROM gps").await;
    assert!(
        matches!(&failed, Err(QueryError::TableUnavailable(e)) if e.to_string().starts_with("the gps table: ")),
        "{failed:?}"
    );
    assert_eq!(activity_totals(&s).await, ("3".into(), "180".into()));
}

mod api {
    //! The versions a question read, in its audit entry and its extract.

    use super::*;
    use candor_control::testkit::TestStore;
    use candor_control::{
        Actor, Admin, AuditLog, CacheConfig, ControlCache, Plan, Role, Tenant, TokenRequest,
    };
    use candor_query::api::QueryState;
    use candor_schemas::keys::MasterSecret;
    use serde_json::{Value, json};

    struct Node {
        url: String,
        token: String,
        admin: Arc<Admin>,
        state: Arc<QueryState>,
        _control: TestStore,
    }

    async fn node(lake_dir: &std::path::Path) -> Node {
        use rand::Rng;
        let master = MasterSecret::from_bytes(&rand::rng().random::<[u8; 32]>()).unwrap();
        let store = TestStore::local();
        let audit = AuditLog::new(store.raw(), &TestStore::prefix(), master.clone());
        let admin = Arc::new(Admin::new(
            store.documents(),
            Arc::new(audit),
            master.clone(),
        ));
        let cache = Arc::new(ControlCache::new(
            store.documents(),
            master.clone(),
            CacheConfig {
                tokens: true,
                directory: true,
                ..CacheConfig::default()
            },
            &prometheus::Registry::new(),
        ));
        let acme = TenantId::new("acme").unwrap();
        admin
            .create_tenant(
                &Actor::operator(),
                &Tenant::new(acme.clone(), Plan::Starter, "UTC"),
            )
            .await
            .unwrap();
        let request = TokenRequest {
            name: "owner".into(),
            role: Role::Owner,
            employee: None,
            expires_at_ms: None,
            tenant: None,
        };
        let token = admin
            .create_token(&Actor::operator(), &acme, &request)
            .await
            .unwrap()
            .token;
        cache.reload(&acme).await.unwrap();
        let state = Arc::new(QueryState::new(
            cache,
            admin.clone(),
            Arc::new(query_lake(lake_dir, Duration::from_secs(3600))),
            master,
            prometheus::Registry::new(),
        ));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(candor_query::api::serve(
            listener,
            state.clone(),
            Default::default(),
            std::future::pending(),
        ));
        Node {
            url,
            token,
            admin,
            state,
            _control: store,
        }
    }

    impl Node {
        async fn call(&self, request: reqwest::RequestBuilder) -> (u16, Value) {
            let response = request.bearer_auth(&self.token).send().await.unwrap();
            let status = response.status().as_u16();
            (status, response.json().await.unwrap_or_default())
        }

        async fn kpi(&self, name: &str) -> (u16, Value) {
            let http = reqwest::Client::new();
            self.call(http.get(format!("{}/v1/kpi/{name}", self.url)).query(&[
                ("from", DAY),
                ("to", DAY),
                ("group_by", "day"),
            ]))
            .await
        }

        async fn sql(&self, sql: &str) -> (u16, Value) {
            let http = reqwest::Client::new();
            self.call(
                http.post(format!("{}/v1/sql", self.url))
                    .json(&json!({"sql": sql})),
            )
            .await
        }

        async fn extract(&self) -> (u16, Value) {
            let http = reqwest::Client::new();
            self.call(
                http.post(format!("{}/v1/extracts", self.url))
                    .json(&json!({"from": DAY, "to": DAY})),
            )
            .await
        }

        /// The detail of the last audit entry of `action`.
        async fn last(&self, action: &str) -> Value {
            let entries = self
                .admin
                .audit_log()
                .entries(&TenantId::new("acme").unwrap())
                .await
                .unwrap();
            entries
                .iter()
                .rev()
                .find(|e| e.event.action == action)
                .unwrap_or_else(|| panic!("no {action} entry"))
                .event
                .detail
                .clone()
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn audit_entries_and_extracts_record_the_table_versions_read() {
        let dir = tempfile::tempdir().unwrap();
        let mut writer = Writer::new(dir.path());
        writer.add(Dataset::Activity, "acme", "a", 3, 60).await;
        writer.add(Dataset::Activity, "acme", "b", 2, 60).await;
        writer.add(Dataset::Gps, "acme", "a", 2, 7).await;
        // Never committed: counted nowhere.
        writer.write(Dataset::Activity, "acme", "a", 40, 60).await;
        let node = node(dir.path()).await;
        let read = json!({"activity": 2, "gps": 1});

        let (status, answer) = node.kpi("activity").await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["rows"][0]["tracked_s"], 300, "{answer}");
        let detail = node.last("query.kpi.activity").await;
        assert_eq!(detail["table_versions"], read, "{detail}");
        assert_eq!(detail["scope"]["rows"], "tenant", "the scope stays");

        let (status, answer) = node.sql("SELECT count(*) AS n FROM activity").await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["rows"][0]["n"], 5, "{answer}");
        assert_eq!(node.last("query.sql").await["table_versions"], read);

        let (status, answer) = node.extract().await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["extract"]["table_versions"], read, "{answer}");
        assert_eq!(node.last("query.extract").await["table_versions"], read);
        assert_eq!(node.last("extract.produce").await["table_versions"], read);
        // The day's release records the versions it was computed from.
        let released = std::fs::read_to_string(
            dir.path()
                .join(format!("extracts/tenant=acme/released/{DAY}.json")),
        );
        if let Ok(released) = released {
            let released: Value = serde_json::from_str(&released).unwrap();
            assert_eq!(released["table_versions"], read);
        }

        // Newer versions, once read, are what the entries name.
        writer.add(Dataset::Activity, "acme", "c", 1, 60).await;
        node.state.lake.refresh_tables();
        let (status, answer) = node.kpi("gps").await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(
            node.last("query.kpi.gps").await["table_versions"],
            json!({"activity": 3, "gps": 1})
        );

        // A table that cannot be read (its newest commit edited by hand):
        // its questions are refused with a reason naming it, audited, and
        // the others are answered.
        writer.add(Dataset::Gps, "acme", "b", 1, 7).await;
        corrupt(dir.path(), Dataset::Gps, 2);
        node.state.lake.refresh_tables();
        let (status, answer) = node.kpi("gps").await;
        assert_eq!(
            (status, answer["reason"].as_str()),
            (503, Some("table_unavailable")),
            "{answer}"
        );
        let message = answer["message"].as_str().unwrap();
        assert!(message.contains("the gps table"), "{message}");
        assert!(!message.contains("_delta_log"), "no details: {message}");
        let detail = node.last("query.kpi.gps").await;
        assert_eq!(detail["result"]["refused"], "table_unavailable");
        assert_eq!(detail["table_versions"], json!({"activity": 3}));
        let (status, answer) = node.kpi("activity").await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["rows"][0]["tracked_s"], 360, "{answer}");
    }
}
