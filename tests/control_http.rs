//! The control plane end to end over real HTTP, on a local directory and on
//! a real S3 server: a bootstrap owner token drives the admin API of a query
//! node; a device enrolled there seals batches an ingest node (on the
//! embedded log) accepts; its revocation reaches the ingest node through the
//! node's refresh; tokens are created, refused and revoked; bad requests
//! change nothing; every change is in the audit chain.

mod common;

use std::sync::Arc;
use std::time::Duration;

use candor_control::testkit::TestStore;
use candor_control::{Actor, CacheConfig, ControlCache, Role, TokenRequest};
use candor_log::LogConsumer;
use candor_log::spool::{Spool, SpoolConfig};
use candor_query::api::QueryState;
use candor_schemas::{Limits, TenantId};
use chrono::{Days, Utc};
use common::{Control, activity_batch, header, ms, post, random_master, samples};
use reqwest::StatusCode;
use serde_json::{Value, json};

const GUARD: Duration = Duration::from_secs(120);
const BATCH: &str = "application/vnd.candor.batch";

/// A query node of its own (its own cache, as on another machine).
async fn start_query(control: &Control, master: &candor_schemas::keys::MasterSecret) -> String {
    let config = CacheConfig {
        tokens: true,
        directory: true,
        ..CacheConfig::default()
    };
    let registry = prometheus::Registry::new();
    let cache = Arc::new(ControlCache::new(
        control.store.documents(),
        master.clone(),
        config,
        &registry,
    ));
    let lake = candor_query::lake::QueryLake::new(candor_query::lake::LakeConfig::new(
        std::env::temp_dir()
            .join("candor-control-http-lake")
            .to_string_lossy(),
    ))
    .unwrap();
    let state = Arc::new(QueryState::new(
        cache,
        control.admin.clone(),
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
        Limits::default(),
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
        Limits::default(),
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
