//! The control plane end to end over real HTTP, on a local directory and on
//! a real S3 server: a bootstrap owner token drives the admin API of a query
//! node; a device enrolled there seals batches an ingest node (on the
//! embedded log) accepts; its revocation reaches the ingest node through the
//! node's refresh; tokens are created, refused and revoked; bad requests
//! change nothing; every change is in the audit chain. Cancelling a tenant
//! is the owner's, stamped now and reversible; an admin change that cannot
//! be audited is not made; `candor audit verify` reports a head that is
//! missing or older than the chain.

mod common;

use std::sync::Arc;
use std::time::Duration;

use candor_control::testkit::TestStore;
use candor_control::{Actor, Role, TokenRequest};
use candor_log::LogConsumer;
use candor_log::spool::{Spool, SpoolConfig};
use candor_query::api::QueryState;
use candor_schemas::TenantId;
use chrono::{Days, Utc};
use common::{Control, activity_batch, header, ms, post, random_master, samples};
use reqwest::StatusCode;
use serde_json::{Value, json};

const GUARD: Duration = Duration::from_secs(120);
const BATCH: &str = "application/vnd.candor.batch";

/// A query node of its own (its own cache, as on another machine).
async fn start_query(control: &Control, master: &candor_schemas::keys::MasterSecret) -> String {
    start_query_with(control, control.admin.clone(), master).await
}

/// A query node whose admin operations are `admin`'s.
async fn start_query_with(
    control: &Control,
    admin: Arc<candor_control::Admin>,
    master: &candor_schemas::keys::MasterSecret,
) -> String {
    let registry = prometheus::Registry::new();
    let cache = control.cache_for(candor::config::Role::Query);
    let lake = candor_query::lake::QueryLake::new(candor_query::lake::LakeConfig::new(
        std::env::temp_dir()
            .join("candor-control-http-lake")
            .to_string_lossy(),
    ))
    .unwrap();
    let state = Arc::new(QueryState::new(
        cache,
        admin,
        Arc::new(lake),
        master.clone(),
        registry,
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(candor_query::api::serve(
        listener,
        state,
        Default::default(),
        std::future::pending(),
    ));
    format!("http://{addr}")
}

struct Api {
    url: String,
    http: reqwest::Client,
}

impl Api {
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self.http.request(method, format!("{}{path}", self.url));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let response = req.send().await.unwrap();
        let status = response.status();
        (status, response.json().await.unwrap_or_default())
    }
}

fn reason(answer: &Value) -> &str {
    answer["reason"].as_str().unwrap_or("")
}

async fn admin_api_and_revocation_reach_ingest(store: TestStore) {
    use reqwest::Method;
    let master = random_master();
    let control = Control::new(store, &master);
    control.create_tenant("acme").await;
    control.create_tenant("globex").await;
    let acme = TenantId::new("acme").unwrap();
    let bootstrap = |tenant: TenantId| {
        let admin = control.admin.clone();
        async move {
            let request = TokenRequest {
                name: "bootstrap".into(),
                role: Role::Owner,
                employee: None,
                expires_at_ms: None,
                tenant: None,
            };
            admin
                .create_token(&Actor::operator(), &tenant, &request)
                .await
                .unwrap()
                .token
        }
    };
    let owner = bootstrap(acme.clone()).await;
    let globex_owner = bootstrap(TenantId::new("globex").unwrap()).await;

    let api = Api {
        url: start_query(&control, &master).await,
        http: reqwest::Client::new(),
    };
    let spool_dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(SpoolConfig::new(spool_dir.path())).unwrap();
    let ingest = common::start_ingest_on(
        master.clone(),
        control.cache.clone(),
        Arc::new(spool.producer()),
        &common::ingest_defaults(),
    )
    .await;

    // Enroll over HTTP; the returned key seals batches ingest accepts.
    let device = json!({"employee": "e-1", "device": "laptop-1"});
    let (status, enrolled) = api
        .call(
            Method::POST,
            "/v1/admin/devices",
            Some(&owner),
            Some(device.clone()),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{enrolled}");
    let key_hex = enrolled["device_key_hex"].as_str().unwrap().to_string();
    let day = Utc::now().date_naive() - Days::new(1);
    let batch = |version: u32, key_hex: &str| {
        let mut h = header("acme", "e-1", "laptop-1");
        h.key_version = version;
        let key = candor_schemas::keys::DeviceKey::from_bytes(
            hex::decode(key_hex).unwrap().try_into().unwrap(),
        );
        let json = serde_json::to_vec(&activity_batch(samples(ms(day, 9, 0), 2, 60, 0))).unwrap();
        candor_schemas::envelope::seal_json(&h, &key, &rand::random(), &json)
    };
    let (status, answer) = post(&ingest, BATCH, batch(1, &key_hex)).await;
    assert_eq!(status, 202, "{answer}");
    // A duplicate enrollment is a conflict.
    let (status, answer) = api
        .call(
            Method::POST,
            "/v1/admin/devices",
            Some(&owner),
            Some(device.clone()),
        )
        .await;
    assert_eq!(
        (status, reason(&answer)),
        (StatusCode::CONFLICT, "already_exists")
    );

    // Revoke over HTTP: the ingest node refuses the device within its
    // refresh interval (a condition, waited on within the guard).
    let (status, answer) = api
        .call(
            Method::POST,
            "/v1/admin/devices/laptop-1/revoke",
            Some(&owner),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    tokio::time::timeout(GUARD, async {
        loop {
            let (status, answer) = post(&ingest, BATCH, batch(1, &key_hex)).await;
            if status == 401 {
                assert_eq!(reason(&answer), "revoked_device");
                return;
            }
            assert_eq!(status, 202, "{answer}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the revocation reached ingest");
    // Re-enrolled, the device gets key version 2, which is accepted.
    let (status, again) = api
        .call(
            Method::POST,
            "/v1/admin/devices",
            Some(&owner),
            Some(device),
        )
        .await;
    assert_eq!(
        (status, again["key_version"].as_u64()),
        (StatusCode::CREATED, Some(2))
    );
    let new_key = again["device_key_hex"].as_str().unwrap();
    tokio::time::timeout(GUARD, async {
        loop {
            let (status, answer) = post(&ingest, BATCH, batch(2, new_key)).await;
            if status == 202 {
                return;
            }
            assert_eq!(reason(&answer), "revoked_device", "{answer}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the new key version is accepted");
    let (status, _) = post(&ingest, BATCH, batch(1, &key_hex)).await;
    assert_eq!(status, 401, "the revoked version stays revoked");

    // Tokens: created, refused where the role does not allow, revoked.
    let (status, created) = api
        .call(
            Method::POST,
            "/v1/admin/tokens",
            Some(&owner),
            Some(json!({"name": "bi", "role": "analyst"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let analyst = created["token"].as_str().unwrap().to_string();
    let analyst_id = created["record"]["id"].as_str().unwrap().to_string();
    assert!(
        created["record"].get("sha256").is_none(),
        "the hash is not handed out: {created}"
    );
    let (status, answer) = api
        .call(Method::GET, "/v1/admin/tokens", Some(&analyst), None)
        .await;
    assert_eq!(
        (status, reason(&answer)),
        (StatusCode::FORBIDDEN, "forbidden")
    );
    let (status, listed) = api
        .call(Method::GET, "/v1/admin/tokens", Some(&owner), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(listed["tokens"].as_array().unwrap().len(), 2);
    let (status, _) = api
        .call(
            Method::DELETE,
            &format!("/v1/admin/tokens/{analyst_id}"),
            Some(&owner),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, answer) = api
        .call(Method::GET, "/v1/admin/tenant", Some(&analyst), None)
        .await;
    assert_eq!(
        (status, reason(&answer)),
        (StatusCode::UNAUTHORIZED, "revoked_token")
    );

    // Bad requests: each a clear error, nothing changed.
    let forged = format!("candor.acme.{}", "0".repeat(64));
    for (token, want) in [
        (Some(forged.as_str()), "unknown_token"),
        (Some("not-a-token"), "malformed_token"),
        (None, "malformed_token"),
    ] {
        let (status, answer) = api.call(Method::GET, "/v1/admin/tenant", token, None).await;
        assert_eq!((status, reason(&answer)), (StatusCode::UNAUTHORIZED, want));
    }
    for (body, want_status, want) in [
        (
            json!({"name": "x", "role": "root"}),
            StatusCode::BAD_REQUEST,
            "invalid_json",
        ),
        (
            json!({"name": "x", "role": "analyst", "tenant": "globex"}),
            StatusCode::BAD_REQUEST,
            "invalid",
        ),
        (
            json!({"name": "x", "role": "manager"}),
            StatusCode::BAD_REQUEST,
            "invalid",
        ),
    ] {
        let (status, answer) = api
            .call(Method::POST, "/v1/admin/tokens", Some(&owner), Some(body))
            .await;
        assert_eq!((status, reason(&answer)), (want_status, want), "{answer}");
    }
    let (_, listed_after) = api
        .call(Method::GET, "/v1/admin/tokens", Some(&owner), None)
        .await;
    assert_eq!(listed_after["tokens"].as_array().unwrap().len(), 2);

    // The tenant document: stale If-Match is a conflict; another tenant's id is refused.
    let (status, current) = api
        .call(Method::GET, "/v1/admin/tenant", Some(&owner), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let mut doc = current["document"].clone();
    doc["track_outside_work_hours"] = json!(true);
    let stale = api
        .http
        .put(format!("{}/v1/admin/tenant", api.url))
        .bearer_auth(&owner)
        .header("if-match", "\"99\"")
        .json(&doc)
        .send()
        .await
        .unwrap();
    assert_eq!(stale.status(), StatusCode::CONFLICT);
    let (status, _) = api
        .call(
            Method::PUT,
            "/v1/admin/tenant",
            Some(&owner),
            Some(doc.clone()),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let mut theirs = doc.clone();
    theirs["id"] = json!("globex");
    let (status, _) = api
        .call(Method::PUT, "/v1/admin/tenant", Some(&owner), Some(theirs))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // globex's owner sees globex only.
    let (_, g) = api
        .call(Method::GET, "/v1/admin/tenant", Some(&globex_owner), None)
        .await;
    assert_eq!(g["document"]["id"], "globex");
    // An oversized directory is refused before it is parsed.
    let huge = vec![b' '; 17 * 1024 * 1024];
    let too_big = api
        .http
        .put(format!("{}/v1/admin/directory", api.url))
        .bearer_auth(&owner)
        .header("content-type", "application/json")
        .body(huge)
        .send()
        .await
        .unwrap();
    assert_eq!(too_big.status(), StatusCode::PAYLOAD_TOO_LARGE);

    // Every change is audited, by token, from the client's address.
    let audit = control.admin.audit_log();
    let check = audit.verify(&acme).await.unwrap();
    assert_eq!(check.first_problem, None);
    let entries = audit.entries(&acme).await.unwrap();
    let actions: Vec<&str> = entries.iter().map(|e| e.event.action.as_str()).collect();
    assert_eq!(
        actions,
        [
            "tenant.create",
            "token.create",
            "device.enroll",
            "device.revoke",
            "device.enroll",
            "token.create",
            "token.revoke",
            "tenant.update"
        ]
    );
    assert!(
        entries[2..]
            .iter()
            .all(|e| e.event.source == "127.0.0.1" && e.event.role == "owner")
    );
}

candor_control::on_both_stores!(admin_api_and_revocation_reach_ingest);

/// An owner token of a tenant of its own on a fresh local control plane.
async fn tenant_with_owner(control: &Control, plan: candor_control::Plan) -> (TenantId, String) {
    let acme = TenantId::new("acme").unwrap();
    control
        .create(candor_control::Tenant::new(acme.clone(), plan, "UTC"))
        .await;
    let request = TokenRequest {
        name: "bootstrap".into(),
        role: Role::Owner,
        employee: None,
        expires_at_ms: None,
        tenant: None,
    };
    let owner = control
        .admin
        .create_token(&Actor::operator(), &acme, &request)
        .await
        .unwrap()
        .token;
    (acme, owner)
}

/// The finding: `PUT /v1/admin/tenant` with `"cancelled_at_ms": 1` by an
/// admin was accepted, locked every token out for good, and let the next
/// retention run purge the lake at once. Now the document cannot change
/// it, an admin cannot cancel, the owner's cancellation is stamped now by
/// the server, the owner can still read the tenant and reinstate it, and
/// retention keeps the lake through the grace period after that stamp.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_an_owner_cancels_stamped_now_and_can_reinstate() {
    use candor_lake::jobs::retention::{self, RetentionConfig};
    use candor_lake::{Lake, Lakes};
    use reqwest::Method;
    const DAY_MS: i64 = 86_400_000;
    let master = random_master();
    let control = Control::new(TestStore::local(), &master);
    // A year of retention, so only a purge deletes anything here.
    let (acme, owner) = tenant_with_owner(&control, candor_control::Plan::Enterprise).await;
    let api = Api {
        url: start_query(&control, &master).await,
        http: reqwest::Client::new(),
    };
    let (status, created) = api
        .call(
            Method::POST,
            "/v1/admin/tokens",
            Some(&owner),
            Some(json!({"name": "ops", "role": "admin"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let admin = created["token"].as_str().unwrap().to_string();

    // The lake, with a day of the tenant's data.
    let dir = tempfile::tempdir().unwrap();
    let lake = Lake::local(dir.path()).unwrap();
    let day = Utc::now().date_naive() - Days::new(1);
    let object = common::lake::put_committed(&lake, "activity", "acme", day).await;
    let exists = || dir.path().join(&object).exists();
    let lakes = Lakes::from(lake.clone());
    let audit =
        candor_control::AuditLog::new(control.store.raw(), &TestStore::prefix(), master.clone());
    let docs = control.store.documents();
    let config = RetentionConfig::default();
    let retention_at = |at_ms: i64| {
        let (lakes, docs, audit, config) = (&lakes, &docs, &audit, &config);
        async move {
            retention::run(lakes, docs, audit, config, at_ms)
                .await
                .unwrap()
                .deleted
                .len()
        }
    };

    // The attack: a back-dated cancellation by the document, as the admin
    // and as the owner. Refused with its reason; nothing changes.
    let (_, current) = api
        .call(Method::GET, "/v1/admin/tenant", Some(&admin), None)
        .await;
    let mut doc = current["document"].clone();
    doc["cancelled_at_ms"] = json!(1);
    for token in [&admin, &owner] {
        let (status, answer) = api
            .call(
                Method::PUT,
                "/v1/admin/tenant",
                Some(token),
                Some(doc.clone()),
            )
            .await;
        assert_eq!(
            (status, reason(&answer)),
            (StatusCode::BAD_REQUEST, "cancelled_at_ms_read_only"),
            "{answer}"
        );
    }
    // An admin may not cancel at all.
    let (status, answer) = api
        .call(Method::POST, "/v1/admin/tenant/cancel", Some(&admin), None)
        .await;
    assert_eq!(
        (status, reason(&answer)),
        (StatusCode::FORBIDDEN, "forbidden"),
        "{answer}"
    );
    let (status, answer) = api
        .call(Method::GET, "/v1/admin/tenant", Some(&admin), None)
        .await;
    assert_eq!(status, StatusCode::OK, "every token still works");
    assert_eq!(
        (
            answer["version"].as_u64(),
            answer["document"].get("cancelled_at_ms")
        ),
        (Some(1), None)
    );
    assert_eq!(retention_at(Utc::now().timestamp_millis()).await, 0);
    assert!(exists());

    // The owner cancels: stamped by the server, now.
    let before = Utc::now().timestamp_millis();
    let (status, answer) = api
        .call(Method::POST, "/v1/admin/tenant/cancel", Some(&owner), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let at = answer["document"]["cancelled_at_ms"].as_i64().unwrap();
    assert!(
        (before..=Utc::now().timestamp_millis()).contains(&at),
        "{at}"
    );
    let (status, answer) = api
        .call(Method::POST, "/v1/admin/tenant/cancel", Some(&owner), None)
        .await;
    assert_eq!(
        (status, reason(&answer)),
        (StatusCode::CONFLICT, "conflict"),
        "the time is never moved: {answer}"
    );
    // Other use is refused; the owner can still see the tenant.
    for (token, method, path) in [
        (&admin, Method::GET, "/v1/admin/tenant"),
        (&admin, Method::POST, "/v1/admin/tenant/reinstate"),
        (&owner, Method::GET, "/v1/admin/tokens"),
        (&owner, Method::GET, "/v1/kpi/activity"),
    ] {
        let (status, answer) = api.call(method.clone(), path, Some(token), None).await;
        assert_eq!(
            (status, reason(&answer)),
            (StatusCode::UNAUTHORIZED, "tenant_cancelled"),
            "{method} {path}: {answer}"
        );
    }
    let (status, answer) = api
        .call(Method::GET, "/v1/admin/tenant", Some(&owner), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["document"]["cancelled_at_ms"], at);
    // Retention keeps the lake through the grace period.
    assert_eq!(retention_at(at + 29 * DAY_MS).await, 0);
    assert!(exists());

    // The owner undoes it; every token works again and nothing is purged.
    let (status, answer) = api
        .call(
            Method::POST,
            "/v1/admin/tenant/reinstate",
            Some(&owner),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert!(answer["document"].get("cancelled_at_ms").is_none());
    let (status, _) = api
        .call(Method::GET, "/v1/admin/tokens", Some(&admin), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(retention_at(at + 31 * DAY_MS).await, 0);
    assert!(exists());

    // Cancelled again and left so: purged once the grace is over.
    let (status, answer) = api
        .call(Method::POST, "/v1/admin/tenant/cancel", Some(&owner), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let at = answer["document"]["cancelled_at_ms"].as_i64().unwrap();
    assert_eq!(retention_at(at + 30 * DAY_MS).await, 1);
    assert!(!exists());

    let entries = control.admin.audit_log().entries(&acme).await.unwrap();
    let by_owner: Vec<&str> = entries
        .iter()
        .filter(|e| e.event.action.starts_with("tenant.") && e.event.role == "owner")
        .map(|e| e.event.action.as_str())
        .collect();
    assert_eq!(
        by_owner,
        ["tenant.cancel", "tenant.reinstate", "tenant.cancel"]
    );
    assert!(
        !entries.iter().any(|e| e.event.action == "tenant.update"),
        "the refused PUTs wrote nothing"
    );
}

/// The finding: with the audit store unwritable, a token and a directory
/// version were created, answered 500, and stayed in effect unaudited. Now
/// each change is refused with 503 `audit_unavailable` and has no effect;
/// once the audit store is back, the same requests succeed, audited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_change_that_cannot_be_audited_is_not_made() {
    use candor_control::testkit::{TcpProxy, s3_client, s3_endpoint};
    use reqwest::Method;
    let master = random_master();
    let control = Control::new(TestStore::local(), &master);
    let (acme, owner) = tenant_with_owner(&control, candor_control::Plan::Starter).await;
    // This query node's audit trail lives behind a proxy that is cut.
    let proxy = TcpProxy::start(&s3_endpoint()).await;
    let audit = candor_control::AuditLog::new(
        s3_client(&proxy.endpoint(), "http-audit-cut"),
        &TestStore::prefix(),
        master.clone(),
    );
    let admin = Arc::new(candor_control::Admin::new(
        control.store.documents(),
        Arc::new(audit),
        master.clone(),
    ));
    let api = Api {
        url: start_query_with(&control, admin.clone(), &master).await,
        http: reqwest::Client::new(),
    };
    let directory = json!({"employees": {"e-1": {"department": "Sales", "manages": []}}});
    let token = json!({"name": "bi", "role": "analyst"});
    let device = json!({"employee": "e-1", "device": "laptop-1"});

    proxy.cut();
    for (method, path, body) in [
        (Method::POST, "/v1/admin/tokens", token.clone()),
        (Method::PUT, "/v1/admin/directory", directory.clone()),
        (Method::POST, "/v1/admin/devices", device.clone()),
        (Method::POST, "/v1/admin/tenant/cancel", Value::Null),
    ] {
        let (status, answer) = api
            .call(method.clone(), path, Some(&owner), Some(body))
            .await;
        assert_eq!(
            (status, reason(&answer)),
            (StatusCode::SERVICE_UNAVAILABLE, "audit_unavailable"),
            "{method} {path}: {answer}"
        );
    }
    // Nothing of them is in effect.
    let (_, tokens) = api
        .call(Method::GET, "/v1/admin/tokens", Some(&owner), None)
        .await;
    assert_eq!(tokens["tokens"].as_array().unwrap().len(), 1, "{tokens}");
    let (_, dir) = api
        .call(Method::GET, "/v1/admin/directory", Some(&owner), None)
        .await;
    assert_eq!(dir["version"], 0, "{dir}");
    let docs = control.store.documents();
    assert!(
        docs.get::<candor_control::DeviceDoc>(candor_control::Kind::Device, "acme/laptop-1")
            .await
            .unwrap()
            .is_none()
    );
    let (status, tenant) = api
        .call(Method::GET, "/v1/admin/tenant", Some(&owner), None)
        .await;
    assert_eq!(
        (status, tenant["version"].as_u64()),
        (StatusCode::OK, Some(1))
    );

    proxy.restore();
    let (status, answer) = api
        .call(Method::POST, "/v1/admin/tokens", Some(&owner), Some(token))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");
    let (status, answer) = api
        .call(
            Method::PUT,
            "/v1/admin/directory",
            Some(&owner),
            Some(directory),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let entries = admin.audit_log().entries(&acme).await.unwrap();
    let actions: Vec<&str> = entries.iter().map(|e| e.event.action.as_str()).collect();
    assert_eq!(actions, ["token.create", "directory.load"]);
    assert!(entries[0].event.detail["role"] == "analyst");
    assert!(admin.audit_log().verify(&acme).await.unwrap().is_intact());
}

/// The finding: `candor audit verify` called a chain intact when its head
/// was deleted or an older one put back. Now both are reported, exit
/// status 1; and a chain cut back together with its head, which the store
/// alone cannot show, is found against the checkpoint of an earlier run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn candor_audit_verify_reports_a_missing_or_older_head() {
    use candor_control::{Admin, AuditLog, DocumentStore, Plan, Tenant};
    let dir = tempfile::tempdir().unwrap();
    let control_dir = dir.path().join("control");
    let secret: [u8; 32] = rand::random();
    let secret_file = dir.path().join("master.key");
    std::fs::write(&secret_file, hex::encode(secret)).unwrap();
    let master = candor_schemas::keys::MasterSecret::from_bytes(&secret).unwrap();
    let (store, prefix) = candor_control::open_store(control_dir.to_str().unwrap()).unwrap();
    let admin = Admin::new(
        DocumentStore::new(store.clone(), &prefix),
        Arc::new(AuditLog::new(store, &prefix, master.clone())),
        master,
    );
    let acme = TenantId::new("acme").unwrap();
    let op = Actor::operator();
    admin
        .create_tenant(&op, &Tenant::new(acme.clone(), Plan::Starter, "UTC"))
        .await
        .unwrap();
    let trail = control_dir.join("_audit").join("acme");
    let entry = |seq: u64| trail.join(format!("{seq:020}.json"));
    let head = |seq: u64| trail.join(format!("head-{seq:020}.json"));
    let token = |name: &str| TokenRequest {
        name: name.into(),
        role: Role::Analyst,
        employee: None,
        expires_at_ms: None,
        tenant: None,
    };
    admin.create_token(&op, &acme, &token("a")).await.unwrap();
    let head2 = std::fs::read(head(2)).unwrap();
    admin.create_token(&op, &acme, &token("b")).await.unwrap();
    let head3 = std::fs::read(head(3)).unwrap();
    let entry3 = std::fs::read(entry(3)).unwrap();

    let checkpoint = dir.path().join("acme.checkpoint");
    let verify = |with_checkpoint: bool| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_candor"));
        cmd.args(["audit", "verify", "--tenant", "acme"])
            .env("CANDOR_CONTROL_URL", &control_dir)
            .env("CANDOR_MASTER_SECRET_FILE", &secret_file)
            .env_remove("CANDOR_MASTER_SECRET");
        if with_checkpoint {
            cmd.arg("--checkpoint").arg(&checkpoint);
        }
        let out = cmd.output().unwrap();
        (
            out.status.code(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    let (code, said) = verify(true);
    assert_eq!(code, Some(0), "{said}");
    assert!(said.contains("3 entries, intact"), "{said}");
    assert!(checkpoint.exists(), "an intact run keeps its checkpoint");

    // The head deleted.
    std::fs::remove_file(head(3)).unwrap();
    let (code, said) = verify(false);
    assert_eq!(code, Some(1), "{said}");
    assert!(said.contains("head is missing"), "{said}");
    // An older head put back.
    std::fs::write(head(2), &head2).unwrap();
    let (code, said) = verify(false);
    assert_eq!(code, Some(1), "{said}");
    assert!(
        said.contains("the head says 2 but entries go on to 3"),
        "{said}"
    );
    // The last entry cut as well: the store holds exactly the chain of two
    // entries it once was, so only the checkpoint shows the cut.
    std::fs::remove_file(entry(3)).unwrap();
    let (code, said) = verify(false);
    assert_eq!(code, Some(0), "not detectable from the store alone: {said}");
    let (code, said) = verify(true);
    assert_eq!(code, Some(1), "{said}");
    assert!(said.contains("entry 3 was seen before"), "{said}");
    // The newest head back without its entry: a cut end.
    std::fs::remove_file(head(2)).unwrap();
    std::fs::write(head(3), &head3).unwrap();
    let (code, said) = verify(false);
    assert_eq!(code, Some(1), "{said}");
    assert!(said.contains("cut off the end"), "{said}");
    // Put back whole, it verifies again.
    std::fs::write(entry(3), &entry3).unwrap();
    let (code, said) = verify(true);
    assert_eq!(code, Some(0), "{said}");
}

/// The control store goes away (a proxy in front of the real S3 server is
/// cut): a tenant the ingest node already holds is still served from its
/// last good copy; one it has never seen gets 503 with Retry-After, and
/// nothing of it reaches the log. Once the store is back, it is accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_serves_its_last_good_copy_while_the_control_store_is_down() {
    use candor_control::testkit::{TcpProxy, s3_client, s3_endpoint};
    let master = random_master();
    let proxy = TcpProxy::start(&s3_endpoint()).await;
    let control = Control::new(
        TestStore::S3(s3_client(&proxy.endpoint(), "ingest-outage")),
        &master,
    );
    control.create_tenant("acme").await;
    control.create_tenant("globex").await;
    let spool_dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(SpoolConfig::new(spool_dir.path())).unwrap();
    let ingest = common::start_ingest_on(
        master.clone(),
        control.cache.clone(),
        Arc::new(spool.producer()),
        &common::ingest_defaults(),
    )
    .await;
    let day = Utc::now().date_naive() - Days::new(1);
    let sealed = |tenant: &str| {
        let h = header(tenant, "e-1", "laptop-1");
        common::seal_batch(
            &master,
            &h,
            &activity_batch(samples(ms(day, 9, 0), 2, 60, 0)),
        )
    };
    let (status, answer) = post(&ingest, BATCH, sealed("acme")).await;
    assert_eq!(status, 202, "{answer}");

    proxy.cut();
    let (status, answer) = post(&ingest, BATCH, sealed("acme")).await;
    assert_eq!(status, 202, "a cached tenant is still served: {answer}");
    let response = reqwest::Client::new()
        .post(format!("{ingest}/v1/batches"))
        .header("content-type", BATCH)
        .body(sealed("globex"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(response.headers().contains_key("retry-after"));
    let answer: Value = response.json().await.unwrap();
    assert_eq!(reason(&answer), "control_plane_unavailable");

    proxy.restore();
    let (status, answer) = post(&ingest, BATCH, sealed("globex")).await;
    assert_eq!(status, 202, "{answer}");
    // Three batches accepted, one record each: the refused one is not in the log.
    let consumer = spool.consumer("check").unwrap();
    let records: i64 = consumer
        .end_offsets()
        .await
        .unwrap()
        .iter()
        .map(|r| r.next_offset)
        .sum();
    assert_eq!(records, 3);
}
