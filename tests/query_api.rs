//! The query service over real HTTP, on a lake the real processor wrote
//! from batches ingest accepted: KPIs and SQL under each role's scope, and
//! every way we know of to reach rows outside it. Each refusal is clear and
//! audited; every answer contains only permitted rows.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use candor_control::{Actor, Directory, Member, Role, TokenRequest};
use candor_log::LogProducer;
use candor_log::spool::{Spool, SpoolConfig};
use candor_processor::{Lake, Lakes, Processor, ProcessorConfig};
use candor_query::api::{QueryState, TRUNCATED_HEADER};
use candor_query::session::Limits;
use candor_schemas::batch::{AppUsage, GpsPoint};
use candor_schemas::{EmployeeId, TenantId};
use chrono::{Datelike, Days, NaiveDate, Utc};
use common::{Control, activity_batch, header, ms, post, random_master, samples, seal_batch};
use futures::StreamExt;
use reqwest::StatusCode;
use serde_json::{Value, json};

const GUARD: Duration = Duration::from_secs(120);
const BATCH: &str = "application/vnd.candor.batch";

/// Who works where, and what each sent on `day()`: (tenant, employee,
/// department, minutes, active seconds per minute). Idle is the rest.
const STAFF: [(&str, &str, &str, i64, u32); 5] = [
    ("acme", "alice", "Sales", 10, 50),
    ("acme", "bob", "Sales", 20, 30),
    ("acme", "mary", "Sales", 4, 40),
    ("acme", "carol", "Field", 5, 60),
    ("globex", "gina", "Ops", 7, 45),
];

/// The latest work day (Monday to Friday) at least two days back.
/// App time on `day()` at acme: (employee, app, host, seconds).
const APPS: [(&str, &str, Option<&str>, u32); 3] = [
    ("alice", "Excel", None, 600),
    ("alice", "Chrome", Some("www.youtube.com"), 300),
    ("bob", "Excel", None, 900),
];

fn day() -> NaiveDate {
    let mut day = Utc::now().date_naive() - Days::new(2);
    while day.weekday().number_from_monday() > 5 {
        day = day - Days::new(1);
    }
    day
}

struct Service {
    url: String,
    http: reqwest::Client,
    control: Control,
    master: candor_schemas::keys::MasterSecret,
    state: Arc<QueryState>,
    tokens: BTreeMap<&'static str, String>,
    /// The ingest node's URL and the processor, for data sent later.
    pipeline: tokio::sync::Mutex<(String, Processor<candor_log::spool::SpoolConsumer>)>,
    /// The lakes the processor writes (for maintenance jobs).
    lakes: Lakes,
    _dir: tempfile::TempDir,
}

impl Service {
    async fn start(limits: Limits) -> Self {
        Self::start_with(limits, None).await
    }

    /// With `acme_lake` (an S3 bucket's name and client), acme's tenant
    /// document names `s3://<bucket>/lake` as its own lake (data
    /// residency): the processor writes acme's rows there and globex's to
    /// the deployment's lake, a local folder.
    async fn start_with(
        limits: Limits,
        acme_lake: Option<(String, Arc<dyn object_store::ObjectStore>)>,
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let master = random_master();
        let control = Control::local_with(&master, &["acme", "globex"]).await;
        for tenant in ["acme", "globex"] {
            let mut directory = Directory::default();
            for (_, employee, department, ..) in STAFF.iter().filter(|s| s.0 == tenant) {
                let manages = if *employee == "mary" {
                    ["Sales".to_string()].into()
                } else {
                    Default::default()
                };
                directory.employees.insert(
                    EmployeeId::new(*employee).unwrap(),
                    Member {
                        department: department.to_string(),
                        manages,
                    },
                );
            }
            let id = TenantId::new(tenant).unwrap();
            control
                .admin
                .load_directory(&Actor::operator(), &id, &directory, None)
                .await
                .unwrap();
            let mut doc = control
                .admin
                .get_tenant(&Actor::operator(), &id)
                .await
                .unwrap()
                .doc;
            doc.app_categories.productive = vec!["Excel".into()];
            doc.app_categories.unproductive = vec!["youtube.com".into()];
            doc.sites = vec![candor_control::Site {
                name: "Client".into(),
                lat: 48.01,
                lon: 11.0,
                radius_m: 100.0,
            }];
            control
                .admin
                .update_tenant(&Actor::operator(), &doc, None)
                .await
                .unwrap();
            control.cache.reload(&id).await.unwrap();
        }

        // Batches through a real ingest node into the embedded log, then the
        // processor into a local lake.
        let spool = Spool::open(SpoolConfig::new(dir.path().join("spool"))).unwrap();
        let producer: Arc<dyn LogProducer> = Arc::new(spool.producer());
        let ingest = common::start_ingest_on(
            master.clone(),
            control.cache.clone(),
            producer,
            &common::ingest_defaults(),
        )
        .await;
        for (tenant, employee, _, minutes, active) in STAFF {
            let h = header(tenant, employee, &format!("{employee}-laptop"));
            let batch = activity_batch(samples(ms(day(), 10, 0), minutes, active, 60 - active));
            let (status, answer) = post(&ingest, BATCH, seal_batch(&master, &h, &batch)).await;
            assert_eq!(status, 202, "{answer}");
        }
        // Carol, in the field, drives 0.01 degrees of latitude north.
        let h = header("acme", "carol", "carol-laptop");
        let mut batch = activity_batch(vec![]);
        batch.gps = (0..3)
            .map(|i| GpsPoint {
                at_ms: ms(day(), 10, i * 2),
                lat: 48.0 + 0.005 * f64::from(i),
                lon: 11.0,
                accuracy_m: 5.0,
            })
            .collect();
        let (status, answer) = post(&ingest, BATCH, seal_batch(&master, &h, &batch)).await;
        assert_eq!(status, 202, "{answer}");
        for (employee, app, host, seconds) in APPS {
            let h = header("acme", employee, &format!("{employee}-laptop"));
            let mut batch = activity_batch(vec![]);
            batch.app_usage = vec![AppUsage {
                start_ms: ms(day(), 10, 0),
                duration_s: seconds,
                app: app.into(),
                host: host.map(str::to_string),
            }];
            let (status, answer) = post(&ingest, BATCH, seal_batch(&master, &h, &batch)).await;
            assert_eq!(status, 202, "{answer}");
        }
        let lake_dir = dir.path().join("lake");
        let mut lakes = Lakes::from(Lake::local(&lake_dir).unwrap());
        if let Some((bucket, store)) = &acme_lake {
            let location = format!("s3://{bucket}/lake");
            control.set_lake_url("acme", &location).await;
            lakes = lakes
                .with_lake(&location, Lake::on_store(store.clone(), &location).unwrap())
                .unwrap();
        }
        let mut processor = Processor::new(
            spool.consumer("g").unwrap(),
            control.cache.clone(),
            lakes.clone(),
            ProcessorConfig {
                poll_wait: Duration::from_millis(50),
                ..ProcessorConfig::default()
            },
        );
        processor.drain().await.unwrap();
        let pipeline = tokio::sync::Mutex::new((ingest, processor));

        let mut tokens = BTreeMap::new();
        let roles: [(&str, &str, Role, Option<&str>); 8] = [
            ("owner", "acme", Role::Owner, None),
            ("hr", "acme", Role::Hr, None),
            ("manager", "acme", Role::Manager, Some("mary")),
            ("employee", "acme", Role::Employee, Some("alice")),
            ("analyst", "acme", Role::Analyst, None),
            ("ai", "acme", Role::Ai, None),
            ("globex", "globex", Role::Owner, None),
            ("carol-manager", "acme", Role::Manager, Some("carol")),
        ];
        for (name, tenant, role, employee) in roles {
            let request = TokenRequest {
                name: name.into(),
                role,
                employee: employee.map(|e| EmployeeId::new(e).unwrap()),
                expires_at_ms: None,
                tenant: None,
            };
            let created = control
                .admin
                .create_token(
                    &Actor::operator(),
                    &TenantId::new(tenant).unwrap(),
                    &request,
                )
                .await
                .unwrap();
            tokens.insert(name, created.token);
        }
        for tenant in ["acme", "globex"] {
            control
                .cache
                .reload(&TenantId::new(tenant).unwrap())
                .await
                .unwrap();
        }

        // The query node as `candor query` builds it, on this lake and
        // control plane, with the test's statement limits.
        let mut config = control.config(candor::config::Role::Query);
        config.lake.url = Some(lake_dir.display().to_string());
        config.query.sql_max_bytes = limits.max_sql_bytes;
        config.query.sql_max_rows = limits.max_rows;
        config.query.sql_memory_bytes = limits.memory_bytes;
        config.query.sql_timeout_secs = limits.timeout.as_secs();
        // The test's AI receiver listens on loopback, as an operator's
        // internal receiver would be allowed by name.
        config.query.extract_receiver_allow_hosts = vec!["127.0.0.1".into()];
        config.validate(candor::config::Role::Query).unwrap();
        let state = candor::node::query_state(
            &config,
            control.cache.clone(),
            &master,
            &prometheus::Registry::new(),
        )
        .unwrap();
        if let Some((bucket, store)) = acme_lake {
            state
                .lake
                .register_store(&format!("s3://{bucket}"), store)
                .unwrap();
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(candor_query::api::serve(
            listener,
            state.clone(),
            Default::default(),
            std::future::pending(),
        ));
        Self {
            url,
            http: reqwest::Client::new(),
            control,
            master,
            state,
            tokens,
            pipeline,
            lakes,
            _dir: dir,
        }
    }

    /// Sends one more sealed batch through ingest and the processor.
    async fn add(&self, tenant: &str, employee: &str, batch: &candor_schemas::batch::Batch) {
        let mut pipeline = self.pipeline.lock().await;
        let (ingest, processor) = &mut *pipeline;
        let h = header(tenant, employee, &format!("{employee}-laptop"));
        let (status, answer) = post(ingest, BATCH, seal_batch(&self.master, &h, batch)).await;
        assert_eq!(status, 202, "{answer}");
        processor.drain().await.unwrap();
    }

    async fn kpi(&self, token: &str, group_by: &str) -> (StatusCode, Value) {
        let response = self
            .http
            .get(format!("{}/v1/kpi/activity", self.url))
            .bearer_auth(token)
            .query(&[
                ("from", day().to_string()),
                ("to", day().to_string()),
                ("group_by", group_by.to_string()),
            ])
            .send()
            .await
            .unwrap();
        (response.status(), response.json().await.unwrap_or_default())
    }

    async fn sql_as(&self, token: &str, sql: &str, format: &str) -> reqwest::Response {
        self.http
            .post(format!("{}/v1/sql", self.url))
            .bearer_auth(token)
            .json(&json!({"sql": sql, "format": format}))
            .send()
            .await
            .unwrap()
    }

    /// The JSON answer of `sql` run as `who`.
    async fn sql(&self, who: &str, sql: &str) -> (StatusCode, Value) {
        let response = self.sql_as(&self.tokens[who], sql, "json").await;
        (response.status(), response.json().await.unwrap_or_default())
    }
}

/// (employee, active seconds) of STAFF, for one tenant and filter.
fn expected(tenant: &str, keep: impl Fn(&str, &str) -> bool) -> Vec<(String, i64)> {
    let mut rows: Vec<(String, i64)> = STAFF
        .iter()
        .filter(|s| s.0 == tenant && keep(s.1, s.2))
        .map(|s| (s.1.to_string(), s.3 * i64::from(s.4)))
        .collect();
    rows.sort();
    rows
}

/// The employee of each row, in the order served.
fn served_employees(answer: &Value) -> Vec<String> {
    answer["rows"]
        .as_array()
        .unwrap_or_else(|| panic!("rows in {answer}"))
        .iter()
        .map(|r| r["employee"].as_str().expect("an employee id").to_string())
        .collect()
}

fn by_employee(answer: &Value) -> Vec<(String, i64)> {
    let mut rows: Vec<(String, i64)> = answer["rows"]
        .as_array()
        .unwrap_or_else(|| panic!("rows in {answer}"))
        .iter()
        .map(|r| {
            (
                r["employee"].as_str().expect("an employee id").to_string(),
                r["active_s"].as_i64().unwrap(),
            )
        })
        .collect();
    rows.sort();
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kpis_answer_within_each_roles_scope() {
    tokio::time::timeout(GUARD, async {
        let s = Service::start(Limits::default()).await;
        let t = &s.tokens;

        let (status, owner) = s.kpi(&t["owner"], "employee").await;
        assert_eq!(status, StatusCode::OK, "{owner}");
        assert_eq!(by_employee(&owner), expected("acme", |_, _| true));
        // Served in the order of the ids the caller sees, not of pseudonyms.
        assert_eq!(
            served_employees(&owner),
            expected("acme", |_, _| true)
                .into_iter()
                .map(|(e, _)| e)
                .collect::<Vec<_>>()
        );
        let alice = owner["rows"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["employee"] == "alice")
            .unwrap();
        assert_eq!(alice["tracked_s"], 600);
        assert_eq!(
            alice["activity_pct"].as_f64().unwrap(),
            100.0 * 500.0 / 600.0
        );
        assert_eq!(
            by_employee(&s.kpi(&t["hr"], "employee").await.1),
            expected("acme", |_, _| true)
        );

        // By department, and by department and day.
        let (_, departments) = s.kpi(&t["owner"], "department,day").await;
        let rows = departments["rows"].as_array().unwrap();
        assert_eq!(rows.len(), 2, "{departments}");
        assert_eq!(rows[0]["department"], "Field");
        assert_eq!(rows[0]["day"], day().to_string());
        assert_eq!(rows[1]["department"], "Sales");
        assert_eq!(rows[1]["active_s"], 10 * 50 + 20 * 30 + 4 * 40);
        assert!(rows[0].get("employee").is_none() && rows[0].get("subject").is_none());
        let (_, weeks) = s.kpi(&t["owner"], "week").await;
        let monday = day() - Days::new(u64::from(day().weekday().num_days_from_monday()));
        assert_eq!(weeks["rows"][0]["week"], monday.to_string(), "{weeks}");
        assert_eq!(
            weeks["rows"][0]["active_s"],
            10 * 50 + 20 * 30 + 4 * 40 + 5 * 60
        );

        // A manager sees the departments they manage; an employee themself.
        let (_, managed) = s.kpi(&t["manager"], "employee").await;
        assert_eq!(by_employee(&managed), expected("acme", |_, d| d == "Sales"));
        let (_, own) = s.kpi(&t["employee"], "employee").await;
        assert_eq!(by_employee(&own), expected("acme", |e, _| e == "alice"));
        let (_, own_total) = s.kpi(&t["employee"], "department").await;
        assert_eq!(own_total["rows"][0]["active_s"], 500);

        // An analyst sees the whole tenant as pseudonyms.
        let (_, pseudonymous) = s.kpi(&t["analyst"], "employee").await;
        let rows = pseudonymous["rows"].as_array().unwrap();
        assert_eq!(rows.len(), 4);
        let acme = TenantId::new("acme").unwrap();
        let alice_subject = s
            .control
            .subject(&acme, &EmployeeId::new("alice").unwrap())
            .await;
        for row in rows {
            assert!(row.get("employee").is_none(), "{row}");
            assert_eq!(row["subject"].as_str().unwrap().len(), 64);
        }
        assert!(rows.iter().any(|r| r["subject"] == alice_subject.as_str()));
        assert!(!pseudonymous.to_string().contains("alice"));

        // The other tenant sees its own employee only.
        let (_, globex) = s.kpi(&t["globex"], "employee").await;
        assert_eq!(by_employee(&globex), expected("globex", |_, _| true));

        // A manager of no department sees nothing; the AI role no KPIs.
        let (_, nothing) = s.kpi(&t["carol-manager"], "employee").await;
        assert_eq!(nothing["rows"], json!([]));
        let (status, refused) = s.kpi(&t["ai"], "employee").await;
        assert_eq!(
            (status, refused["reason"].as_str()),
            (StatusCode::FORBIDDEN, Some("forbidden"))
        );

        // Bad parameters are clear errors.
        let (status, bad) = s.kpi(&t["owner"], "employee,employee").await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
        let (status, bad) = s.kpi(&t["owner"], "title").await;
        assert_eq!(
            (status, bad["reason"].as_str()),
            (StatusCode::BAD_REQUEST, Some("bad_request"))
        );

        // Paging: one row at a time, in a stable order.
        let page = |offset: usize| {
            s.http
                .get(format!("{}/v1/kpi/activity", s.url))
                .bearer_auth(&t["owner"])
                .query(&[
                    ("from", day().to_string()),
                    ("to", day().to_string()),
                    ("group_by", "employee".into()),
                    ("limit", "3".into()),
                    ("offset", offset.to_string()),
                ])
                .send()
        };
        let first: Value = page(0).await.unwrap().json().await.unwrap();
        assert_eq!(first["rows"].as_array().unwrap().len(), 3);
        assert_eq!(first["next_offset"], 3);
        let second: Value = page(3).await.unwrap().json().await.unwrap();
        assert_eq!(second["rows"].as_array().unwrap().len(), 1);
        assert!(second["next_offset"].is_null());
        let mut paged = served_employees(&first);
        paged.extend(served_employees(&second));
        assert_eq!(
            paged,
            served_employees(&owner),
            "pages follow the same order"
        );

        // Attendance: everyone started at 10:00 UTC, the schedule at 09:00.
        let attendance = |who: &str, from: NaiveDate, group_by: &str, grace: &str| {
            s.http
                .get(format!("{}/v1/kpi/attendance", s.url))
                .bearer_auth(t[who].clone())
                .query(&[
                    ("from", from.to_string()),
                    ("to", day().to_string()),
                    ("group_by", group_by.into()),
                    ("grace_minutes", grace.into()),
                ])
                .send()
        };
        let days: Value = attendance("owner", day(), "employee,day", "59")
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let rows = days["rows"].as_array().unwrap();
        assert_eq!(rows.len(), 4, "{days}");
        let bob = rows.iter().find(|r| r["employee"] == "bob").unwrap();
        assert_eq!(
            (
                bob["first_activity"].as_str(),
                bob["last_activity"].as_str()
            ),
            (Some("10:00"), Some("10:30"))
        );
        assert!(
            rows.iter()
                .all(|r| r["late_days"] == 1 && r["present_days"] == 1)
        );
        let on_time: Value = attendance("owner", day(), "employee,day", "60")
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert!(
            on_time["rows"]
                .as_array()
                .unwrap()
                .iter()
                .all(|r| r["late_days"] == 0)
        );
        // A week back: every other work day is an absence.
        let week_back = day() - Days::new(7);
        let departments: Value = attendance("owner", week_back, "department", "10")
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let sales = departments["rows"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["department"] == "Sales")
            .unwrap()
            .clone();
        assert_eq!(
            (
                sales["present_days"].as_u64(),
                sales["absent_days"].as_u64()
            ),
            (Some(3), Some(15)),
            "{departments}"
        );
        let own: Value = attendance("employee", week_back, "employee", "10")
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(own["rows"].as_array().unwrap().len(), 1);
        assert_eq!(
            (
                own["rows"][0]["employee"].as_str(),
                own["rows"][0]["absent_days"].as_u64()
            ),
            (Some("alice"), Some(5))
        );
        let managed: Value = attendance("manager", week_back, "employee", "10")
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(served_employees(&managed), ["alice", "bob", "mary"]);
        let pseudonymous: Value = attendance("analyst", week_back, "employee", "10")
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(pseudonymous["rows"].as_array().unwrap().len(), 4);
        assert!(!pseudonymous.to_string().contains("alice"));

        // App time: the productive share by the tenant's categories.
        let apps = |who: &str, group_by: &str| {
            s.http
                .get(format!("{}/v1/kpi/apps", s.url))
                .bearer_auth(t[who].clone())
                .query(&[
                    ("from", day().to_string()),
                    ("to", day().to_string()),
                    ("group_by", group_by.into()),
                ])
                .send()
        };
        let by_employee: Value = apps("owner", "employee")
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let served = served_employees(&by_employee);
        let mut sorted = served.clone();
        sorted.sort();
        assert_eq!(served, sorted, "apps rows in the order of the ids shown");
        let alice = by_employee["rows"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["employee"] == "alice")
            .unwrap();
        assert_eq!(
            alice["seconds_by_category"],
            json!({"productive": 600, "unproductive": 300})
        );
        assert_eq!(alice["productive_share"].as_f64().unwrap(), 600.0 / 900.0);
        assert_eq!(alice["top_apps"][0]["app"], "Excel");
        assert_eq!(alice["top_apps"][1]["host"], "www.youtube.com");
        let sales: Value = apps("manager", "department")
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(sales["rows"].as_array().unwrap().len(), 1, "{sales}");
        assert_eq!(
            sales["rows"][0]["productive_share"].as_f64().unwrap(),
            1500.0 / 1800.0
        );
        let own: Value = apps("employee", "employee")
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(own["rows"].as_array().unwrap().len(), 1);
        let none: Value = apps("globex", "employee")
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(none["rows"], json!([]));

        // Distance: 0.01 degrees of latitude is 1.112 km.
        let gps: Value = s
            .http
            .get(format!("{}/v1/kpi/gps", s.url))
            .bearer_auth(t["hr"].clone())
            .query(&[
                ("from", day().to_string()),
                ("to", day().to_string()),
                ("group_by", "employee".into()),
            ])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(gps["rows"].as_array().unwrap().len(), 1, "{gps}");
        assert_eq!(
            (
                gps["rows"][0]["employee"].as_str(),
                gps["rows"][0]["points"].as_i64()
            ),
            (Some("carol"), Some(3))
        );
        let km = gps["rows"][0]["distance_km"].as_f64().unwrap();
        assert!((km - 1.112).abs() < 0.001, "{km}");
        // 556 m per 2 minutes is moving; the last segment ends at the client.
        let carol = &gps["rows"][0];
        assert_eq!(
            [
                &carol["moving_s"],
                &carol["stopped_s"],
                &carol["stops"],
                &carol["on_site_s"]
            ],
            [240, 0, 0, 120]
        );
        let sites: Value = s
            .http
            .get(format!("{}/v1/kpi/gps", s.url))
            .bearer_auth(t["hr"].clone())
            .query(&[
                ("from", day().to_string()),
                ("to", day().to_string()),
                ("group_by", "site".into()),
            ])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(sites["rows"][0]["site"], "Client", "{sites}");
        assert_eq!(sites["rows"][0]["points"], 1);
        assert!(sites["rows"][1].get("site").is_none(), "outside every site");
        let (status, _) = s.kpi(&t["owner"], "site").await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "site is for gps only");
        let managed: Value = s
            .http
            .get(format!("{}/v1/kpi/gps", s.url))
            .bearer_auth(t["manager"].clone())
            .query(&[("from", day().to_string()), ("to", day().to_string())])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(managed["rows"], json!([]), "carol is not in Sales");

        // Data processed while the service runs is answered without a
        // restart, once the folder listing is older than its 2 s TTL.
        s.add(
            "acme",
            "carol",
            &activity_batch(samples(ms(day(), 11, 0), 3, 60, 0)),
        )
        .await;
        let carol_active = |answer: &Value| {
            answer["rows"]
                .as_array()
                .unwrap()
                .iter()
                .find(|r| r["employee"] == "carol")
                .map(|r| r["active_s"].as_i64().unwrap())
        };
        loop {
            let (_, now) = s.kpi(&t["owner"], "employee").await;
            if carol_active(&now) == Some(5 * 60 + 3 * 60) {
                break;
            }
            assert_eq!(
                carol_active(&now),
                Some(5 * 60),
                "the old answer or the new"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }

        // Every route the OpenAPI document names is served.
        let doc: Value = s
            .http
            .get(format!("{}/v1/openapi.json", s.url))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(
            doc,
            serde_json::from_str::<Value>(candor_query::api::OPENAPI).unwrap()
        );
        // What is served is what is documented, both ways: the router's
        // table against the document, then each path probed with every
        // method (a method not served is 405, with a JSON body).
        let documented: BTreeSet<(String, String)> = doc["paths"]
            .as_object()
            .unwrap()
            .iter()
            .flat_map(|(path, methods)| {
                methods
                    .as_object()
                    .unwrap()
                    .keys()
                    .map(|m| (m.to_uppercase(), path.clone()))
            })
            .collect();
        let served: BTreeSet<(String, String)> = candor_query::api::routes()
            .iter()
            .flat_map(|r| {
                let names: Vec<&str> = if r.path.contains("{name}") {
                    candor_query::api::KPI_NAMES.to_vec()
                } else {
                    vec![""]
                };
                names
                    .into_iter()
                    .map(|n| (r.method.to_string(), r.path.replace("{name}", n)))
                    .collect::<Vec<_>>()
            })
            .collect();
        assert_eq!(served, documented);
        let paths: BTreeSet<&String> = documented.iter().map(|(_, p)| p).collect();
        for path in paths {
            let url = format!(
                "{}{}",
                s.url,
                path.replace("{device}", "d1")
                    .replace("{id}", "t1")
                    .replace("{file}", "app.js")
            );
            for method in ["GET", "POST", "PUT", "DELETE", "PATCH"] {
                let response = s
                    .http
                    .request(
                        reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
                        &url,
                    )
                    .send()
                    .await
                    .unwrap();
                let status = response.status();
                if documented.contains(&(method.to_string(), path.clone())) {
                    assert!(
                        status != StatusCode::NOT_FOUND && status != StatusCode::METHOD_NOT_ALLOWED,
                        "{method} {path}: {status}"
                    );
                } else {
                    let body: Value = response.json().await.unwrap_or_default();
                    assert_eq!(
                        (status, body["reason"].as_str()),
                        (StatusCode::METHOD_NOT_ALLOWED, Some("method_not_allowed")),
                        "{method} {path}: {body}"
                    );
                }
            }
        }
        for path in ["/v1/kpi/nothing", "/v1/nothing"] {
            let response = s
                .http
                .get(format!("{}{path}", s.url))
                .bearer_auth(&t["owner"])
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), StatusCode::NOT_FOUND, "{path}");
            let body: Value = response.json().await.unwrap();
            assert!(body["reason"].is_string(), "{path}: {body}");
        }
    })
    .await
    .expect("test finished within its hang guard");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_reaches_only_the_scoped_views_and_every_refusal_is_audited() {
    tokio::time::timeout(GUARD, async {
        let s = Service::start(Limits {
            max_rows: 3,
            ..Limits::default()
        })
        .await;
        let count = |answer: &Value| answer["rows"][0]["n"].as_i64().unwrap();

        let (status, all) = s.sql("analyst", "SELECT count(DISTINCT subject) AS n FROM activity").await;
        assert_eq!(status, StatusCode::OK, "{all}");
        assert_eq!(count(&all), 4);
        let (_, managed) = s.sql("manager", "SELECT count(DISTINCT subject) AS n FROM activity").await;
        assert_eq!(count(&managed), 3);
        let (_, own) = s.sql("employee", "SELECT count(DISTINCT subject) AS n FROM activity").await;
        assert_eq!(count(&own), 1);
        let (_, globex) = s.sql("globex", "SELECT count(DISTINCT subject) AS n FROM activity").await;
        assert_eq!(count(&globex), 1);

        // Queries that try to widen the scope get only the scope's rows.
        for sql in [
            "SELECT count(*) AS n FROM activity WHERE department <> 'Sales'",
            "SELECT count(*) AS n FROM (SELECT * FROM activity UNION ALL SELECT * FROM app_usage WHERE 1 = 0) WHERE department = 'Field'",
            "SELECT count(*) AS n FROM datafusion.public.activity WHERE department = 'Field'",
            "SELECT count(*) AS n FROM activity a JOIN gps g ON a.subject = g.subject WHERE a.department = 'Field'",
            "SELECT count(*) AS n FROM activity WHERE subject IN (SELECT subject FROM activity WHERE department = 'Field')",
            "SELECT count(*) AS n FROM (SELECT * FROM activity WHERE true OR department = 'Field') WHERE department <> 'Sales'",
        ] {
            let (status, answer) = s.sql("manager", sql).await;
            assert_eq!(status, StatusCode::OK, "{sql}: {answer}");
            assert_eq!(count(&answer), 0, "{sql}");
        }

        // Everything that is not one SELECT over the views is refused.
        let lake_globex = format!("{}/lake/activity/tenant=globex/", s._dir.path().display());
        let refused = [
            (format!("CREATE EXTERNAL TABLE g STORED AS PARQUET LOCATION '{lake_globex}'"), "statement_refused"),
            ("COPY (SELECT 1) TO '/tmp/candor-copy.parquet'".into(), "statement_refused"),
            ("INSERT INTO activity SELECT * FROM activity".into(), "statement_refused"),
            ("DROP TABLE activity".into(), "statement_refused"),
            ("CREATE VIEW v AS SELECT 1".into(), "statement_refused"),
            ("SET datafusion.catalog.information_schema = true".into(), "statement_refused"),
            ("EXPLAIN SELECT * FROM activity".into(), "statement_refused"),
            (format!("SELECT * FROM '{lake_globex}'"), "bad_sql"),
            ("SELECT * FROM information_schema.tables".into(), "bad_sql"),
            (format!("SELECT * FROM read_parquet('{lake_globex}')"), "bad_sql"),
            ("SELECT * FROM generate_series(1, 10)".into(), "bad_sql"),
            ("SELECT 1; SELECT 2".into(), "bad_sql"),
            (format!("SELECT {}1{}", "(".repeat(500), ")".repeat(500)), "statement_too_complex"),
            (format!("SELECT 1 -- {}", "x".repeat(20_000)), "statement_too_long"),
        ];
        for (sql, reason) in &refused {
            let (status, answer) = s.sql("analyst", sql).await;
            assert_eq!(answer["reason"], *reason, "{sql}: {status} {answer}");
            assert!(status.is_client_error(), "{sql}: {status}");
        }
        assert!(!std::path::Path::new("/tmp/candor-copy.parquet").exists());

        // The AI role has no SQL; a forged token, nothing.
        let (status, _) = s.sql("ai", "SELECT 1").await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        let forged = format!("candor.acme.{}", "ab".repeat(32));
        let response = s.sql_as(&forged, "SELECT 1", "json").await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);

        // The row limit cuts the answer and says so.
        let response = s.sql_as(&s.tokens["analyst"], "SELECT subject FROM activity", "csv").await;
        assert_eq!(response.headers()[TRUNCATED_HEADER], "true");
        let csv = response.text().await.unwrap();
        assert_eq!(csv.lines().count(), 1 + 3, "{csv}");
        assert_eq!(csv.lines().next(), Some("subject"));
        // Arrow IPC and Parquet answers decode to the same rows.
        let sql = "SELECT department, sum(active_s) AS active_s FROM activity GROUP BY department ORDER BY department";
        let arrow = s.sql_as(&s.tokens["owner"], sql, "arrow").await.bytes().await.unwrap();
        let reader = arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(arrow), None).unwrap();
        let rows: usize = reader.map(|b| b.unwrap().num_rows()).sum();
        assert_eq!(rows, 2);
        let parquet = s.sql_as(&s.tokens["owner"], sql, "parquet").await.bytes().await.unwrap();
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(parquet)
            .unwrap()
            .build()
            .unwrap();
        let rows: usize = reader.map(|b| b.unwrap().num_rows()).sum();
        assert_eq!(rows, 2);

        // Every request above is in the tenant's audit chain, refusals with
        // their reason, and the chain verifies.
        let acme = TenantId::new("acme").unwrap();
        let audit = s.control.admin.audit_log();
        let entries = audit.entries(&acme).await.unwrap();
        let queries: Vec<_> = entries.iter().filter(|e| e.event.action == "query.sql").collect();
        let acme_requests = 3 + 6 + refused.len() + 1 + 3;
        assert_eq!(queries.len(), acme_requests);
        for (sql, reason) in &refused {
            let cut: String = sql.chars().take(4096).collect();
            assert!(
                queries.iter().any(|e| e.event.detail["request"]["sql"] == cut.as_str()
                    && e.event.detail["result"]["refused"] == *reason),
                "no refusal audited for {sql}"
            );
        }
        assert!(queries.iter().any(|e| e.event.role == "ai" && e.event.detail["result"]["refused"] == "forbidden"));
        assert_eq!(audit.verify(&acme).await.unwrap().first_problem, None);

        // The owner exports the log as CSV, verified on the way; no one else may.
        let export = |who: &str| {
            s.http
                .get(format!("{}/v1/audit.csv", s.url))
                .bearer_auth(s.tokens[who].clone())
                .send()
        };
        assert_eq!(export("analyst").await.unwrap().status(), StatusCode::FORBIDDEN);
        let before = audit.entries(&acme).await.unwrap().len();
        let response = export("owner").await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["candor-audit-verified"], before.to_string().as_str());
        assert!(response.headers().get("candor-audit-problem").is_none());
        let csv = response.text().await.unwrap();
        let mut reader = csv::Reader::from_reader(csv.as_bytes());
        let records: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
        assert_eq!(records.len(), before);
        assert!(records.iter().any(|r| &r[4] == "query.sql" && r[7].contains("statement_refused")));
    })
    .await
    .expect("test finished within its hang guard");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_over_its_memory_budget_fails_clearly() {
    tokio::time::timeout(GUARD, async {
        let s = Service::start(Limits {
            memory_bytes: 2 * 1024 * 1024,
            ..Limits::default()
        })
        .await;
        let (status, answer) = s
            .sql(
                "analyst",
                "SELECT count(DISTINCT x) AS n FROM (SELECT unnest(range(1, 3000000)) AS x)",
            )
            .await;
        assert_eq!(
            (status, answer["reason"].as_str()),
            (StatusCode::UNPROCESSABLE_ENTITY, Some("query_too_large")),
            "{answer}"
        );
        // Small queries still run in the same budget.
        let (status, _) = s.sql("analyst", "SELECT count(*) AS n FROM activity").await;
        assert_eq!(status, StatusCode::OK);
    })
    .await
    .expect("test finished within its hang guard");
}

/// What the test's AI receiver was sent: (headers, body) per request.
type Received = Arc<std::sync::Mutex<Vec<(axum::http::HeaderMap, Vec<u8>)>>>;

/// An AI receiver on a loopback port that answers 503 to the first POST.
async fn receiver() -> (String, Received) {
    let received: Received = Arc::default();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post({
            let received = received.clone();
            move |headers: axum::http::HeaderMap, body: axum::body::Bytes| async move {
                let mut got = received.lock().unwrap();
                got.push((headers, body.to_vec()));
                if got.len() == 1 {
                    StatusCode::SERVICE_UNAVAILABLE
                } else {
                    StatusCode::OK
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, received)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_extract_shows_no_small_group_and_no_id_and_is_signed_and_audited() {
    tokio::time::timeout(GUARD, async {
        let s = Service::start(Limits::default()).await;
        let acme = TenantId::new("acme").unwrap();
        let (hook, received) = receiver().await;
        let mut tenant = s
            .control
            .admin
            .get_tenant(&Actor::operator(), &acme)
            .await
            .unwrap()
            .doc;
        // Sales has 3 subjects, Field 1: with k = 3, Field is suppressed,
        // and Sales with it, or the total minus Sales would give Field away.
        tenant.extract_k = 3;
        tenant.ai_delivery_url = Some(hook);
        s.control
            .admin
            .update_tenant(&Actor::operator(), &tenant, None)
            .await
            .unwrap();
        s.control.cache.reload(&acme).await.unwrap();

        let request = json!({"from": day(), "to": day(), "period": "day"});
        let extract = |token: &str| {
            s.http
                .post(format!("{}/v1/extracts", s.url))
                .bearer_auth(token.to_string())
                .json(&request)
                .send()
        };
        let refused = extract(&s.tokens["analyst"]).await.unwrap();
        assert_eq!(refused.status(), StatusCode::FORBIDDEN);
        let response = extract(&s.tokens["ai"]).await.unwrap();
        let status = response.status();
        let answer: Value = response.json().await.unwrap();
        assert_eq!(status, StatusCode::OK, "{answer}");
        let groups = answer["extract"]["groups"].as_array().unwrap();
        assert_eq!(groups.len(), 1, "only the tenant row: {answer}");
        assert!(groups[0].get("department").is_none());
        assert_eq!(groups[0]["subjects"], 4.0);
        let active: i64 = STAFF
            .iter()
            .filter(|s| s.0 == "acme")
            .map(|s| s.3 * i64::from(s.4))
            .sum();
        assert_eq!(
            groups[0]["active_hours"].as_f64().unwrap(),
            active as f64 / 3600.0
        );
        assert_eq!(answer["suppressed_groups"], 2);

        // No id, no pseudonym, no department name of a suppressed group.
        let body = received.lock().unwrap().last().unwrap().1.clone();
        let text = String::from_utf8(body.clone()).unwrap();
        for (_, employee, department, ..) in STAFF {
            let subject = s
                .control
                .subject(&acme, &EmployeeId::new(employee).unwrap())
                .await;
            assert!(
                !text.contains(employee) && !text.contains(&subject),
                "{employee} in {text}"
            );
            assert!(!text.contains(department), "{department} in {text}");
        }

        // Delivered after one retry, signed, and the same bytes as the lake's copy.
        let got = received.lock().unwrap().clone();
        assert_eq!(got.len(), 2, "a 503, then success");
        let (headers, _) = &got[1];
        let timestamp: i64 = headers["candor-timestamp"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        let key = s.master.extract_signing_key(&acme, 1);
        assert_eq!(
            headers["candor-signature"].to_str().unwrap(),
            candor_query::delivery::signature(key.as_bytes(), timestamp, &body)
        );
        let sha256 = answer["sha256"].as_str().unwrap();
        assert_eq!(headers["candor-extract-id"], sha256);
        // The location is within the tenant's lake; no server path is told.
        let location = answer["location"].as_str().unwrap();
        assert!(location.starts_with("extracts/tenant=acme/"), "{location}");
        let stored = std::fs::read(s._dir.path().join("lake").join(location)).unwrap();
        assert_eq!(stored, body);
        // The day's published rows are in the release ledger, and a second
        // request after the tenant changed its k and ε publishes the same.
        let ledger = s
            ._dir
            .path()
            .join("lake")
            .join(candor_query::extract::released_location(&acme, day()));
        assert!(ledger.exists(), "{}", ledger.display());
        let mut changed = s
            .control
            .admin
            .get_tenant(&Actor::operator(), &acme)
            .await
            .unwrap()
            .doc;
        changed.extract_k = 2;
        changed.extract_epsilon = Some(0.5);
        s.control
            .admin
            .update_tenant(&Actor::operator(), &changed, None)
            .await
            .unwrap();
        s.control.cache.reload(&acme).await.unwrap();
        let again: Value = extract(&s.tokens["ai"])
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(
            again["extract"]["groups"], answer["extract"]["groups"],
            "{again}"
        );
        // The released day computes again, from the versions it recorded
        // and with the k and ε it was released under, to the same rows;
        // a ledger edited by hand does not.
        let noise = s.master.extract_noise_key(&acme);
        let verify = || async {
            candor_query::extract::verify(&s.state.lake, &changed, day(), day(), noise.as_bytes())
                .await
                .unwrap()
        };
        let checks = verify().await;
        assert_eq!(checks.len(), 1, "{checks:?}");
        assert_eq!(checks[0].verdict, candor_query::extract::Verdict::Same, "{checks:?}");
        assert!(checks[0].table_versions.contains_key("activity"), "{checks:?}");
        let honest = std::fs::read(&ledger).unwrap();
        let mut edited: Value = serde_json::from_slice(&honest).unwrap();
        let hours = edited["groups"][0]["tracked_hours"].as_f64().unwrap();
        edited["groups"][0]["tracked_hours"] = json!(hours + 1.0);
        std::fs::write(&ledger, serde_json::to_vec(&edited).unwrap()).unwrap();
        let checks = verify().await;
        assert!(
            matches!(&checks[0].verdict, candor_query::extract::Verdict::Differs(why) if why.contains("first difference")),
            "{checks:?}"
        );
        std::fs::write(&ledger, honest).unwrap();
        // A week over the same day publishes only sums of released rows.
        let week: Value = s
            .http
            .post(format!("{}/v1/extracts", s.url))
            .bearer_auth(s.tokens["ai"].clone())
            .json(&json!({"from": day() - Days::new(6), "to": day(), "period": "week"}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        for group in week["extract"]["groups"].as_array().unwrap() {
            assert!(
                group.get("department").is_none(),
                "no department was released: {week}"
            );
        }
        // Today has not ended: it cannot be extracted yet.
        let today = s
            .http
            .post(format!("{}/v1/extracts", s.url))
            .bearer_auth(s.tokens["ai"].clone())
            .json(&json!({"from": Utc::now().date_naive(), "to": Utc::now().date_naive()}))
            .send()
            .await
            .unwrap();
        assert_eq!(today.status(), StatusCode::BAD_REQUEST);
        assert_eq!(answer["delivered"]["attempts"], 2);

        let entries = s.control.admin.audit_log().entries(&acme).await.unwrap();
        let target = format!("sha256:{sha256}");
        // The schedule delivers yesterday's extract once: a second run finds
        // its receipt and sends nothing.
        let sent = received.lock().unwrap().len();
        let scheduled = candor_query::api::scheduled_extracts(&s.state)
            .await
            .unwrap();
        assert_eq!(scheduled, 1);
        assert_eq!(received.lock().unwrap().len(), sent + 1);
        let again = candor_query::api::scheduled_extracts(&s.state)
            .await
            .unwrap();
        assert_eq!((again, received.lock().unwrap().len()), (0, sent + 1));

        for action in ["extract.produce", "extract.deliver"] {
            assert!(
                entries
                    .iter()
                    .any(|e| e.event.action == action && e.event.target == target),
                "{action} audited"
            );
        }
    })
    .await
    .expect("test finished within its hang guard");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_with_its_own_lake_on_s3_is_read_from_there() {
    tokio::time::timeout(GUARD, async {
        // A real S3-compatible server (moto, started by scripts/test or here),
        // behind a proxy the test can cut.
        let proxy =
            candor_control::testkit::TcpProxy::start(&candor_control::testkit::s3_endpoint()).await;
        let (bucket, store) =
            candor_control::testkit::named_s3_client(&proxy.endpoint(), "residency");
        let s = Service::start_with(Limits::default(), Some((bucket.clone(), store.clone()))).await;
        // Each tenant's rows were written to its own lake only.
        let in_s3: Vec<String> = store
            .list(None)
            .map(|meta| meta.unwrap().location.to_string())
            .collect()
            .await;
        assert!(
            in_s3
                .iter()
                .any(|p| p.starts_with("lake/activity/tenant=acme/")),
            "{in_s3:?}"
        );
        assert!(
            in_s3.iter().all(|p| p.contains("/tenant=acme/")
                || p.contains("/_delta_log/")
                || p.starts_with("lake/extracts/")),
            "only acme's rows in acme's lake: {in_s3:?}"
        );
        let lake_dir = s._dir.path().join("lake");
        assert!(!lake_dir.join("activity/tenant=acme").exists());
        assert!(lake_dir.join("activity/tenant=globex").exists());
        let (status, owner) = s.kpi(&s.tokens["owner"], "employee").await;
        assert_eq!(status, StatusCode::OK, "{owner}");
        assert_eq!(by_employee(&owner), expected("acme", |_, _| true));
        let (_, managed) = s.kpi(&s.tokens["manager"], "employee").await;
        assert_eq!(by_employee(&managed), expected("acme", |_, d| d == "Sales"));
        let (status, answer) = s
            .sql(
                "analyst",
                "SELECT count(DISTINCT subject) AS n FROM activity",
            )
            .await;
        assert_eq!(
            (status, answer["rows"][0]["n"].as_i64()),
            (StatusCode::OK, Some(4))
        );
        // Globex has no lake of its own: the deployment's lake.
        let (_, globex) = s.kpi(&s.tokens["globex"], "employee").await;
        assert_eq!(by_employee(&globex), expected("globex", |_, _| true));
        // An extract of acme is written to acme's lake.
        let answer: Value = s
            .http
            .post(format!("{}/v1/extracts", s.url))
            .bearer_auth(s.tokens["ai"].clone())
            .json(&json!({"from": day(), "to": day()}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        // The answer names the extract within the tenant's lake, not where
        // that lake is.
        let location = answer["location"].as_str().unwrap();
        assert!(location.starts_with("extracts/tenant=acme/"), "{location}");

        // The tenant's lake unreachable: a clear 503, audited, then answers
        // again once it is back.
        proxy.cut();
        let (status, answer) = s.kpi(&s.tokens["owner"], "employee").await;
        assert_eq!(
            (status, answer["reason"].as_str()),
            (StatusCode::SERVICE_UNAVAILABLE, Some("lake_unavailable")),
            "{answer}"
        );
        let entries = s
            .control
            .admin
            .audit_log()
            .entries(&TenantId::new("acme").unwrap())
            .await
            .unwrap();
        let last = &entries.last().unwrap().event;
        assert_eq!(last.action, "query.kpi.activity");
        assert!(
            last.detail.to_string().contains("lake_unavailable"),
            "{last:?}"
        );
        proxy.restore();
        let (status, again) = s.kpi(&s.tokens["owner"], "employee").await;
        assert_eq!(status, StatusCode::OK, "{again}");
        assert_eq!(by_employee(&again), expected("acme", |_, _| true));

        // Compaction reaches acme's own lake and changes no answer there.
        for i in 0..6 {
            let batch = activity_batch(samples(ms(day(), 12, i * 2), 2, 30, 30));
            s.add("acme", ["alice", "bob"][i as usize % 2], &batch)
                .await;
        }
        let before = every_row(&s).await;
        let (docs, config) = (s.control.store.documents(), Default::default());
        let compact_all = || candor_lake::jobs::compaction::compact_all(&s.lakes, &docs, &config);
        // Acme's lake unreachable: the run goes on with the deployment's
        // lake and reports acme's as failed, for the next run to redo.
        proxy.cut();
        let cut = compact_all().await.unwrap();
        assert_eq!((cut.lakes_failed, cut.objects_merged), (1, 0), "{cut:?}");
        proxy.restore();
        let done = compact_all().await.unwrap();
        assert!(done.objects_merged >= 4, "{done:?}");
        assert_eq!(done.lakes_failed, 0, "{done:?}");
        assert_eq!(every_row(&s).await, before, "compaction changed a row");

        // Erasure reaches it too.
        let alice = s
            .control
            .subject(
                &TenantId::new("acme").unwrap(),
                &EmployeeId::new("alice").unwrap(),
            )
            .await;
        assert!(before.iter().any(|row| row.contains(&alice)));
        let request = candor_lake::jobs::erasure::ErasureRequest {
            tenant: TenantId::new("acme").unwrap(),
            subject: alice.clone(),
            actor: "operator".into(),
            source: "test".into(),
        };
        let erased = candor_lake::jobs::erasure::erase_subject(
            &s.lakes,
            &s.control.store.documents(),
            s.control.admin.audit_log(),
            &request,
            Utc::now().timestamp_millis(),
        )
        .await
        .unwrap();
        assert!(erased.rows_removed > 0, "{erased:?}");
        let after = every_row(&s).await;
        assert!(!after.iter().any(|row| row.contains(&alice)));
        assert!(after.len() < before.len());
    })
    .await
    .expect("test finished within its hang guard");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erasing_an_employee_removes_their_rows_and_only_theirs() {
    use candor_lake::jobs::erasure::{ErasureRequest, erase_subject};
    tokio::time::timeout(GUARD, async {
        let s = Service::start(Limits::default()).await;
        let acme = TenantId::new("acme").unwrap();
        let alice = s
            .control
            .subject(&acme, &EmployeeId::new("alice").unwrap())
            .await;
        let request = ErasureRequest {
            tenant: acme.clone(),
            subject: alice.clone(),
            actor: "operator".into(),
            source: "test".into(),
        };
        let audit = s.control.admin.audit_log();
        let now = Utc::now().timestamp_millis();
        let docs = s.control.store.documents();
        let erased = erase_subject(&s.lakes, &docs, audit, &request, now)
            .await
            .unwrap();
        // Alice's activity and app rows were in objects shared with others.
        assert!(erased.rows_removed >= 3, "{erased:?}");
        assert!(erased.objects_rewritten >= 2, "{erased:?}");
        // Every object in the lake, committed or not, read whole: none
        // holds a row of hers (the files rewritten are vacuumed at once).
        let lake_dir = s._dir.path().join("lake");
        let scanned = common::lake::rows_of_subject(&lake_dir, &alice);
        assert_eq!(
            scanned.0, 0,
            "rows of the erased subject left in {:?}",
            scanned.1
        );
        assert!(scanned.2 > 0, "objects were scanned");
        // The trail records each table's versions before and after.
        let activity = erased
            .tables
            .iter()
            .find(|t| t.table == "activity" && t.lake == "deployment")
            .expect("the activity table was searched");
        assert!(
            activity.version_after > activity.version_before,
            "{erased:?}"
        );

        let (_, owner) = s.kpi(&s.tokens["owner"], "employee").await;
        assert_eq!(by_employee(&owner), expected("acme", |e, _| e != "alice"));
        let (_, rows) = s
            .sql(
                "analyst",
                &format!("SELECT count(*) AS n FROM app_usage WHERE subject = '{alice}'"),
            )
            .await;
        assert_eq!(rows["rows"][0]["n"], 0);
        let (_, bob_apps) = s
            .sql("owner", "SELECT sum(seconds) AS n FROM app_usage")
            .await;
        assert_eq!(bob_apps["rows"][0]["n"], 900, "bob's app time is untouched");

        // Running it again finds nothing; both runs are on record.
        let again = erase_subject(&s.lakes, &docs, audit, &request, now)
            .await
            .unwrap();
        assert_eq!(again.rows_removed, 0);
        let entries = audit.entries(&acme).await.unwrap();
        let target = format!("subject:{alice}");
        let done: Vec<_> = entries
            .iter()
            .filter(|e| e.event.action == "lake.erasure" && e.event.target == target)
            .collect();
        assert_eq!(done.len(), 2);
        assert_eq!(done[0].event.detail["rows_removed"], erased.rows_removed);
        assert!(
            entries
                .iter()
                .any(|e| e.event.action == "lake.erasure.start")
        );
        for entry in entries
            .iter()
            .filter(|e| e.event.action.starts_with("lake.erasure"))
        {
            let text = serde_json::to_string(entry).unwrap();
            assert!(!text.contains("\"alice\""), "the raw id stays out: {text}");
        }
    })
    .await
    .expect("test finished within its hang guard");
}

/// Every row of every view the analyst can see, as sorted JSON texts: the
/// whole tenant's lake content, independent of how it is split in files.
/// Every table is read at its latest version, not the service's cached one.
async fn every_row(s: &Service) -> Vec<String> {
    s.state.lake.refresh_tables();
    let mut rows = Vec::new();
    for view in ["activity", "app_usage", "gps", "attendance"] {
        let (status, answer) = s.sql("analyst", &format!("SELECT * FROM {view}")).await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        for row in answer["rows"].as_array().unwrap() {
            rows.push(format!("{view} {row}"));
        }
    }
    rows.sort();
    rows
}

/// The Parquet objects and other files of a lake folder, by name.
fn folder_files(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_changes_no_answer_even_beside_appends() {
    use candor_lake::jobs::compaction::{CompactionConfig, compact};
    use candor_schemas::datasets::Dataset;
    tokio::time::timeout(GUARD, async {
        let s = Service::start(Limits::default()).await;
        // More flushes, so acme's partition of the day holds many objects.
        for i in 0..8 {
            let batch = activity_batch(samples(ms(day(), 12, i * 2), 2, 30, 30));
            s.add("acme", ["alice", "bob"][i as usize % 2], &batch)
                .await;
        }
        let lake = s.lakes.home().clone();
        let in_partition = || async {
            let partition = format!("activity/tenant=acme/date={}/", day());
            common::lake::committed_objects(&lake, Dataset::Activity, "acme")
                .await
                .into_iter()
                .filter(|p| p.as_ref().starts_with(&partition))
                .count()
        };
        let before_objects = in_partition().await;
        let before = every_row(&s).await;
        let (_, kpi_before) = s.kpi(&s.tokens["owner"], "department").await;
        assert!(before_objects >= 6, "{before_objects}");

        let config = CompactionConfig::default();
        let done = compact(&lake, &config).await.unwrap();
        assert!(
            done.objects_written >= 1 && done.objects_merged >= 4,
            "{done:?}"
        );
        assert_eq!(in_partition().await, 1, "the day's objects in one");
        assert_eq!(every_row(&s).await, before, "compaction changed a row");
        let (_, kpi_after) = s.kpi(&s.tokens["owner"], "department").await;
        assert_eq!(kpi_after, kpi_before);

        // Compaction while flushes append to the same partition: neither
        // conflicts with the other, and every row is there once.
        let batch = activity_batch(samples(ms(day(), 14, 0), 2, 30, 30));
        let (_, compacted) = tokio::join!(
            async {
                for employee in ["alice", "bob", "alice"] {
                    s.add("acme", employee, &batch).await;
                }
            },
            compact(&lake, &config)
        );
        compacted.unwrap();
        let after = every_row(&s).await;
        let mut left = after.clone();
        for row in &before {
            let at = left
                .iter()
                .position(|r| r == row)
                .unwrap_or_else(|| panic!("{row} is gone"));
            left.remove(at);
        }
        assert!(!left.is_empty(), "the appended rows are in");
        let again = compact(&lake, &config).await.unwrap();
        assert_eq!(every_row(&s).await, after, "{again:?}");

        // The replaced files stay for queries planned before, until VACUUM.
        let mut table = candor_lake::DatasetTable::open(&lake, Dataset::Activity)
            .await
            .unwrap();
        let vacuumed = table
            .vacuum(Duration::ZERO, candor_lake::jobs::UNCOMMITTED_RETENTION)
            .await
            .unwrap();
        assert!(vacuumed >= 6, "{vacuumed}");
        let folder = s
            ._dir
            .path()
            .join(format!("lake/activity/tenant=acme/date={}", day()));
        assert_eq!(folder_files(&folder).len(), in_partition().await);
        assert_eq!(every_row(&s).await, after);
    })
    .await
    .expect("test finished within its hang guard");
}

/// 3.6 * 10^9 pairs through a nested-loop join, none of which matches: minutes
/// of CPU on a debug build, past the hang guard, so a test that sees it
/// stop has seen it interrupted.
const ENDLESS: &str = "SELECT count(*) AS n FROM (SELECT unnest(range(1, 60000)) AS a) x \
                       JOIN (SELECT unnest(range(1, 60000)) AS b) y ON x.a * y.b < 0 OR x.a = -y.b";

/// `n` copies of `term` joined by `op`.
fn chain(op: &str, term: &str, n: usize) -> String {
    vec![term; n].join(op)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_that_could_overflow_the_stack_are_refused_and_the_node_stays_up() {
    tokio::time::timeout(GUARD, async {
        let s = Service::start(Limits::default()).await;
        let mut ctes = String::from("WITH c0 AS (SELECT 1 AS x)");
        for i in 1..300 {
            ctes += &format!(", c{i} AS (SELECT x FROM c{})", i - 1);
        }
        ctes += " SELECT * FROM c299";
        let attacks = [
            format!("SELECT {} AS x", chain("+", "1", 300)),
            format!("SELECT {} AS x", chain("+", "1", 5000)),
            format!("SELECT 1 AS x WHERE {}", chain(" AND ", "true", 1500)),
            format!("SELECT {} AS x", chain("||", "'a'", 3000)),
            ctes,
        ];
        for sql in &attacks {
            // The employee role is enough to try.
            let (status, answer) = s.sql("employee", sql).await;
            assert_eq!(
                (status, answer["reason"].as_str()),
                (StatusCode::BAD_REQUEST, Some("statement_too_complex")),
                "{answer}"
            );
        }
        let (status, answer) = s.sql("employee", "SELECT 1 + 1 AS x").await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        // Each was on record when it arrived, and with its outcome after.
        let acme = TenantId::new("acme").unwrap();
        let entries = s.control.admin.audit_log().entries(&acme).await.unwrap();
        let received = entries
            .iter()
            .filter(|e| e.event.action == "query.sql.received")
            .count();
        assert_eq!(received, attacks.len() + 1);
    })
    .await
    .expect("test finished within its hang guard");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_past_its_time_limit_is_stopped_and_the_node_keeps_serving() {
    tokio::time::timeout(GUARD, async {
        let s = Arc::new(
            Service::start(Limits {
                timeout: Duration::from_secs(2),
                ..Limits::default()
            })
            .await,
        );
        let heavy = {
            let s = s.clone();
            tokio::spawn(async move { s.sql("employee", ENDLESS).await })
        };
        let engine = s.state.lake.engine().clone();
        while engine.running() == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // Meanwhile the node answers its health check, and ingest takes a batch.
        let health = s
            .http
            .get(format!("{}/healthz", s.url))
            .send()
            .await
            .unwrap();
        assert_eq!(health.status(), StatusCode::OK);
        {
            let pipeline = s.pipeline.lock().await;
            let h = header("globex", "gina", "gina-laptop");
            let batch = activity_batch(samples(ms(day(), 12, 0), 5, 30, 30));
            let (status, answer) =
                post(&pipeline.0, BATCH, seal_batch(&s.master, &h, &batch)).await;
            assert_eq!(status, 202, "{answer}");
        }
        let (status, answer) = heavy.await.unwrap();
        assert_eq!(
            (status, answer["reason"].as_str()),
            (StatusCode::UNPROCESSABLE_ENTITY, Some("query_timeout")),
            "{answer}"
        );
        // Its work stops too (the slot is given back when the task ends),
        // long before the join could have finished.
        while engine.running() != 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("test finished within its hang guard");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_whose_caller_hangs_up_is_stopped() {
    tokio::time::timeout(GUARD, async {
        // A time limit far past the hang guard: only the hang-up can stop it.
        let s = Service::start(Limits {
            timeout: Duration::from_secs(3600),
            ..Limits::default()
        })
        .await;
        let engine = s.state.lake.engine().clone();
        let request = s
            .http
            .post(format!("{}/v1/sql", s.url))
            .bearer_auth(&s.tokens["employee"])
            .json(&json!({"sql": ENDLESS, "format": "json"}))
            .send();
        let caller = tokio::spawn(request);
        while engine.running() == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // The caller goes away: its connection is closed.
        caller.abort();
        while engine.running() != 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let (status, answer) = s.sql("employee", "SELECT 1 AS x").await;
        assert_eq!(status, StatusCode::OK, "{answer}");
    })
    .await
    .expect("test finished within its hang guard");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_over_the_node_cap_get_429_and_large_results_are_refused_before_they_allocate() {
    tokio::time::timeout(GUARD, async {
        let s = Arc::new(
            Service::start(Limits {
                timeout: Duration::from_secs(3),
                ..Limits::default()
            })
            .await,
        );
        let engine = s.state.lake.engine().clone();
        // Six large results at once: each refused before it allocates.
        let before = engine.memory_reserved();
        let big: Vec<_> = (0..6)
            .map(|i| {
                let s = s.clone();
                let who = if i % 2 == 0 { "analyst" } else { "globex" };
                tokio::spawn(async move {
                    s.sql(who, "SELECT length(repeat('xy', 300000000)) AS n")
                        .await
                })
            })
            .collect();
        for b in big {
            let (status, answer) = b.await.unwrap();
            assert!(
                status == StatusCode::UNPROCESSABLE_ENTITY
                    || status == StatusCode::TOO_MANY_REQUESTS,
                "{status} {answer}"
            );
            if status == StatusCode::UNPROCESSABLE_ENTITY {
                assert_eq!(answer["reason"], "query_too_large", "{answer}");
            }
        }
        assert_eq!(engine.memory_reserved(), before);

        // Caller mistakes are 4xx; the engine's name and server paths are not told.
        for sql in [
            "SELECT CAST('abc' AS INT) AS n",
            "SELECT version() AS v",
            "SELECT input_file_name() AS f FROM activity",
        ] {
            let (status, answer) = s.sql("analyst", sql).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{sql}: {answer}");
            let text = answer.to_string();
            assert!(
                !text.contains("DataFusion") && !text.contains(&*s._dir.path().to_string_lossy()),
                "{text}"
            );
        }

        // Past the tenant's cap, the next statement is refused at once.
        let cap = s.state.lake.engine().config().max_statements_per_tenant;
        let heavy: Vec<_> = (0..cap)
            .map(|_| {
                let s = s.clone();
                tokio::spawn(async move { s.sql("analyst", ENDLESS).await })
            })
            .collect();
        while (engine.running() as usize) < cap {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let response = s.sql_as(&s.tokens["owner"], "SELECT 1 AS x", "json").await;
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()["retry-after"], "1");
        for h in heavy {
            let (status, _) = h.await.unwrap();
            assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        }
    })
    .await
    .expect("test finished within its hang guard");
}

/// An owner asks as of a moment before more data came: the answer of
/// then, audited with the versions it read; SQL too; any other role is
/// refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_asks_as_of_an_earlier_moment() {
    tokio::time::timeout(GUARD, async {
        let s = Service::start(Limits::default()).await;
        let kpi_as_of = |token: String, at: String| {
            let s = &s;
            async move {
                let response = s
                    .http
                    .get(format!("{}/v1/kpi/activity", s.url))
                    .bearer_auth(token)
                    .query(&[
                        ("from", day().to_string()),
                        ("to", day().to_string()),
                        ("group_by", "employee".to_string()),
                        ("as_of", at),
                    ])
                    .send()
                    .await
                    .unwrap();
                let status = response.status();
                (status, response.json::<Value>().await.unwrap_or_default())
            }
        };
        s.state.lake.refresh_tables();
        let (_, then) = s.kpi(&s.tokens["owner"], "employee").await;
        let versions_then = s
            .state
            .lake
            .tables_at(&TenantId::new("acme").unwrap(), None)
            .await
            .unwrap()
            .versions;
        // A version's time is its log entry's (the file's modification
        // time): the moment asked about falls strictly between the commits.
        let clock_past = |at: chrono::DateTime<Utc>| async move {
            while Utc::now() <= at + chrono::Duration::milliseconds(2) {
                tokio::task::yield_now().await;
            }
        };
        clock_past(Utc::now()).await;
        let moment = Utc::now();
        clock_past(moment).await;
        let moment = moment.to_rfc3339();
        let batch = activity_batch(samples(ms(day(), 15, 0), 2, 30, 30));
        s.add("acme", "alice", &batch).await;
        s.state.lake.refresh_tables();
        let (_, now) = s.kpi(&s.tokens["owner"], "employee").await;
        assert_ne!(
            by_employee(&now),
            by_employee(&then),
            "the new rows count now"
        );

        let (status, past) = kpi_as_of(s.tokens["owner"].clone(), moment.clone()).await;
        assert_eq!(status, StatusCode::OK, "{past}");
        assert_eq!(by_employee(&past), by_employee(&then));
        let (status, sql) = s
            .http
            .post(format!("{}/v1/sql", s.url))
            .bearer_auth(s.tokens["owner"].clone())
            .json(&json!({"sql": "SELECT sum(active_s) AS n FROM activity", "as_of": moment}))
            .send()
            .await
            .map(|r| (r.status(), r))
            .unwrap();
        assert_eq!(status, StatusCode::OK);
        let sql: Value = sql.json().await.unwrap();
        let total_then: i64 = by_employee(&then).iter().map(|(_, n)| n).sum();
        assert_eq!(sql["rows"][0]["n"], total_then, "{sql}");

        // The trail has the versions the past answer read.
        let acme = TenantId::new("acme").unwrap();
        let entries = s.control.admin.audit_log().entries(&acme).await.unwrap();
        let kpi_entry = entries
            .iter()
            .rev()
            .find(|e| {
                e.event.action == "query.kpi.activity"
                    && e.event.detail["request"]["query"]
                        .as_str()
                        .is_some_and(|q| q.contains("as_of"))
            })
            .expect("the past question is audited");
        assert_eq!(
            kpi_entry.event.detail["table_versions"]["activity"], versions_then["activity"],
            "{:?}",
            kpi_entry.event.detail
        );

        for role in ["analyst", "manager", "employee"] {
            let (status, answer) = kpi_as_of(s.tokens[role].clone(), moment.clone()).await;
            assert_eq!(status, StatusCode::FORBIDDEN, "{role}: {answer}");
        }
    })
    .await
    .expect("test finished within its hang guard");
}
