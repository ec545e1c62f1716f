//! An ingest node as agents on the internet meet it, over real sockets and
//! an embedded log on real files: HTTPS with HTTP/2, the replay window,
//! quotas, the in-flight cap, slow senders, and late or early data judged
//! against the tenant's retention.

mod common;

use std::sync::Arc;
use std::time::Duration;

use candor_log::LogConsumer;
use candor_log::spool::{Spool, SpoolConfig};
use candor_schemas::batch::GpsPoint;
use chrono::Utc;
use common::{Control, activity_batch, header, random_master, samples, seal_batch};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Hang guard: a node that never answers fails the test instead of CI.
const GUARD: Duration = Duration::from_secs(60);
const BATCH: &str = "application/vnd.candor.batch";

struct Node {
    url: String,
    spool: Spool,
    _dir: tempfile::TempDir,
    master: candor_schemas::keys::MasterSecret,
    _control: Control,
}

impl Node {
    async fn start(config: candor::config::Config) -> Self {
        let master = random_master();
        let control = Control::local_with(&master, &["acme", "globex"]).await;
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(SpoolConfig::new(dir.path().join("spool"))).unwrap();
        let url = common::start_ingest_with(
            master.clone(),
            control.cache.clone(),
            Arc::new(spool.producer()),
            &config,
            std::future::pending(),
        )
        .await;
        Self {
            url,
            spool,
            _dir: dir,
            master,
            _control: control,
        }
    }

    /// Records appended to the log so far.
    async fn records(&self) -> i64 {
        let consumer = self.spool.consumer("count").unwrap();
        consumer
            .end_offsets()
            .await
            .unwrap()
            .iter()
            .map(|r| r.next_offset)
            .sum()
    }

    async fn post(&self, client: &reqwest::Client, body: Vec<u8>) -> Answer {
        let response = client
            .post(format!("{}/v1/batches", self.url))
            .header("content-type", BATCH)
            .body(body)
            .send()
            .await
            .expect("ingest answers");
        Answer {
            status: response.status().as_u16(),
            version: response.version(),
            retry_after: response
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().parse::<u64>().unwrap()),
            body: response.json().await.unwrap_or_default(),
        }
    }

    async fn metrics(&self, client: &reqwest::Client) -> String {
        let url = format!("{}/metrics", self.url);
        client.get(url).send().await.unwrap().text().await.unwrap()
    }
}

#[derive(Debug)]
struct Answer {
    status: u16,
    version: reqwest::Version,
    retry_after: Option<u64>,
    body: serde_json::Value,
}

fn now() -> i64 {
    Utc::now().timestamp_millis()
}

/// A fresh batch of `n` one-minute samples for a device, ending `age_ms` ago.
fn batch_for(node: &Node, device: &str, n: i64, age_ms: i64) -> Vec<u8> {
    let h = header("acme", "employee-0001", device);
    let start = now() - age_ms - n * 60_000;
    seal_batch(&node.master, &h, &activity_batch(samples(start, n, 50, 10)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_http2_and_a_retried_batch_is_appended_once() {
    tokio::time::timeout(GUARD, async {
        let dir = tempfile::tempdir().unwrap();
        let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
        let (cert_pem, key_pem) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        std::fs::write(&cert_pem, cert.cert.pem()).unwrap();
        std::fs::write(&key_pem, cert.signing_key.serialize_pem()).unwrap();
        let mut config = common::ingest_defaults();
        config.tls.cert = Some(cert_pem);
        config.tls.key = Some(key_pem);
        let node = Node::start(config).await;
        assert!(node.url.starts_with("https://"), "{}", node.url);
        let client = reqwest::Client::builder()
            .add_root_certificate(
                reqwest::Certificate::from_pem(cert.cert.pem().as_bytes()).unwrap(),
            )
            .build()
            .unwrap();

        let body = batch_for(&node, "laptop-1", 5, 0);
        let first = node.post(&client, body.clone()).await;
        assert_eq!(
            (first.status, first.version),
            (202, reqwest::Version::HTTP_2),
            "{first:?}"
        );
        assert_eq!(first.body["events"], 5);
        assert_eq!(node.records().await, 1);

        // The agent never saw the 202 and sends the very same bytes again.
        let retry = node.post(&client, body).await;
        assert_eq!(retry.status, 202, "{retry:?}");
        assert_eq!(retry.body["replay"], true, "{retry:?}");
        assert_eq!(retry.body["batch_id"], first.body["batch_id"]);
        assert_eq!(node.records().await, 1, "a replay was appended again");

        let metrics = node.metrics(&client).await;
        for line in [
            r#"candor_ingest_requests_total{reason="accepted",status="202"} 1"#,
            r#"candor_ingest_requests_total{reason="replay",status="202"} 1"#,
            "candor_ingest_events_accepted_total 5",
            "candor_ingest_replay_window_entries 1",
            r#"candor_ingest_stage_duration_seconds_count{stage="produce"} 1"#,
        ] {
            assert!(metrics.contains(line), "missing {line} in\n{metrics}");
        }
    })
    .await
    .expect("within the hang guard");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotas_answer_429_with_retry_after_per_device_and_per_tenant() {
    tokio::time::timeout(GUARD, async {
        let mut config = common::ingest_defaults();
        config.ingest.max_events = 10;
        config.ingest.device_batches_per_s = 1;
        config.ingest.device_burst = 2;
        config.ingest.tenant_events_per_s = 1;
        config.ingest.tenant_burst = 25;
        let node = Node::start(config).await;
        let client = reqwest::Client::new();
        for _ in 0..2 {
            let a = node
                .post(&client, batch_for(&node, "laptop-1", 10, 0))
                .await;
            assert_eq!(a.status, 202, "{a:?}");
        }
        // The device's burst is spent; another device of the tenant is not.
        let refused = node.post(&client, batch_for(&node, "laptop-1", 1, 0)).await;
        assert_eq!(refused.status, 429, "{refused:?}");
        assert_eq!(refused.body["reason"], "device_quota_exceeded");
        assert!(refused.retry_after.is_some_and(|s| s >= 1), "{refused:?}");
        let other = node.post(&client, batch_for(&node, "laptop-2", 5, 0)).await;
        assert_eq!(other.status, 202, "{other:?}");

        // 25 of the tenant's events are spent; the next 10 do not fit.
        let refused = node
            .post(&client, batch_for(&node, "laptop-3", 10, 0))
            .await;
        assert_eq!(refused.status, 429, "{refused:?}");
        assert_eq!(refused.body["reason"], "tenant_quota_exceeded");
        assert!(refused.retry_after.is_some_and(|s| s >= 5), "{refused:?}");
        assert_eq!(node.records().await, 3, "refused batches reached the log");

        // A refused batch is not remembered: its retry is judged afresh.
        let metrics = node.metrics(&client).await;
        assert!(
            metrics.contains(
                r#"candor_ingest_events_rejected_total{reason="tenant_quota_exceeded"} 10"#
            ),
            "{metrics}"
        );
        assert!(
            metrics.contains("candor_ingest_replay_window_entries 3"),
            "{metrics}"
        );
    })
    .await
    .expect("within the hang guard");
}

/// Sends headers announcing `content_length` bytes, then only `sent` of them.
async fn start_slow_post(url: &str, content_length: usize, sent: &[u8]) -> TcpStream {
    let addr = url.trim_start_matches("http://");
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /v1/batches HTTP/1.1\r\nHost: {addr}\r\nContent-Type: {BATCH}\r\nContent-Length: {content_length}\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(sent).await.unwrap();
    stream
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_body_gets_408_and_a_full_node_gets_503() {
    tokio::time::timeout(GUARD, async {
        let mut config = common::ingest_defaults();
        config.ingest.max_in_flight = 1;
        config.ingest.body_timeout_secs = 1;
        let node = Node::start(config).await;
        let client = reqwest::Client::new();
        // A slowloris client: half a body, then nothing.
        let body = batch_for(&node, "laptop-1", 3, 0);
        let mut slow = start_slow_post(&node.url, body.len(), &body[..body.len() / 2]).await;
        // Once it holds the only slot (retrying a post until one is shed
        // would run into the device's quota on a slow machine), the next
        // request is shed at once.
        while !node
            .metrics(&client)
            .await
            .contains("candor_ingest_in_flight_requests 1")
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let shed = node.post(&client, batch_for(&node, "laptop-2", 1, 0)).await;
        assert_eq!(shed.status, 503, "{shed:?}");
        assert_eq!(shed.body["reason"], "overloaded");
        assert_eq!(shed.retry_after, Some(1));

        let mut answer = Vec::new();
        slow.read_to_end(&mut answer).await.unwrap();
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        assert!(answer.contains("request_timeout"), "{answer}");

        // The slot is free again.
        let ok = node.post(&client, batch_for(&node, "laptop-3", 1, 0)).await;
        assert_eq!(ok.status, 202, "{ok:?}");
    })
    .await
    .expect("within the hang guard");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_data_is_welcome_back_to_the_tenants_retention_and_no_further() {
    tokio::time::timeout(GUARD, async {
        // Test tenants are on the starter plan: 30 days of retention.
        let node = Node::start(common::ingest_defaults()).await;
        let client = reqwest::Client::new();
        let day = 86_400_000;
        let cases = [
            ("a device offline for 29 days", 29 * day, 202, "accepted"),
            ("older than the tenant keeps", 31 * day, 400, "timestamp_too_old"),
            ("4 minutes of clock skew", -4 * 60_000 - 60_000, 202, "accepted"),
            ("6 minutes in the future", -6 * 60_000 - 60_000, 400, "timestamp_in_future"),
        ];
        for (what, age_ms, status, reason) in cases {
            let a = node.post(&client, batch_for(&node, "laptop-1", 1, age_ms)).await;
            assert_eq!(a.status, status, "{what}: {a:?}");
            if status != 202 {
                assert_eq!(a.body["reason"], reason, "{what}: {a:?}");
            }
        }
        // Out-of-range GPS, and a field the model does not have.
        let h = header("acme", "employee-0001", "phone-1");
        let mut gps = activity_batch(vec![]);
        gps.gps = vec![GpsPoint { at_ms: now(), lat: 12.0, lon: 181.0, accuracy_m: 5.0 }];
        let a = node.post(&client, seal_batch(&node.master, &h, &gps)).await;
        assert_eq!((a.status, a.body["reason"].as_str()), (400, Some("invalid_event")), "{a:?}");
        let unknown = format!(
            r#"{{"v":1,"sent_at_ms":0,"battery_pct":80,"activity":[{{"start_ms":{},"active_s":1,"idle_s":0}}]}}"#,
            now()
        );
        let a = node.post(&client, common::seal(&node.master, &h, unknown.as_bytes())).await;
        assert_eq!((a.status, a.body["reason"].as_str()), (400, Some("unknown_field")), "{a:?}");
        assert_eq!(node.records().await, 2);
    })
    .await
    .expect("within the hang guard");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn negative_seconds_are_invalid_events_naming_the_event() {
    tokio::time::timeout(GUARD, async {
        let node = Node::start(common::ingest_defaults()).await;
        let client = reqwest::Client::new();
        let h = header("acme", "employee-0001", "laptop-1");
        let t = now() - 60_000;
        let good = format!(r#"{{"start_ms":{t},"active_s":30,"idle_s":30}}"#);
        let app = format!(r#"{{"start_ms":{t},"duration_s":60,"app":"Excel"}}"#);
        let cases = [
            (
                format!(r#""activity":[{good},{{"start_ms":{t},"active_s":-5,"idle_s":10}}]"#),
                "activity[1].active_s",
            ),
            (
                format!(r#""activity":[{{"start_ms":{t},"active_s":10,"idle_s":-1}}]"#),
                "activity[0].idle_s",
            ),
            (
                format!(r#""app_usage":[{app},{{"start_ms":{t},"duration_s":-60,"app":"Excel"}}]"#),
                "app_usage[1].duration_s",
            ),
        ];
        for (events, names) in cases {
            let json = format!(r#"{{"v":1,"sent_at_ms":{t},{events}}}"#);
            let a = node.post(&client, common::seal(&node.master, &h, json.as_bytes())).await;
            assert_eq!((a.status, a.body["reason"].as_str()), (400, Some("invalid_event")), "{a:?}");
            assert_eq!(a.body["status"], "rejected", "{a:?}");
            let message = a.body["message"].as_str().unwrap();
            assert!(message.starts_with(names), "{names}: {a:?}");
        }
        // A fraction where an integer belongs is still the wrong type.
        let json = format!(r#"{{"v":1,"sent_at_ms":{t},"activity":[{{"start_ms":{t},"active_s":1.5,"idle_s":0}}]}}"#);
        let a = node.post(&client, common::seal(&node.master, &h, json.as_bytes())).await;
        assert_eq!((a.status, a.body["reason"].as_str()), (400, Some("invalid_json")), "{a:?}");
        assert_eq!(node.records().await, 0, "refused batches never reach the log");
    })
    .await
    .expect("within the hang guard");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_routes_and_methods_answer_json_with_a_reason() {
    tokio::time::timeout(GUARD, async {
        let node = Node::start(common::ingest_defaults()).await;
        let client = reqwest::Client::new();
        let cases = [
            (
                reqwest::Method::GET,
                "/v1/batches",
                405,
                "method_not_allowed",
                Some("POST"),
            ),
            (
                reqwest::Method::PUT,
                "/v1/batches",
                405,
                "method_not_allowed",
                Some("POST"),
            ),
            (
                reqwest::Method::DELETE,
                "/v1/batches",
                405,
                "method_not_allowed",
                Some("POST"),
            ),
            (
                reqwest::Method::POST,
                "/metrics",
                405,
                "method_not_allowed",
                Some("GET,HEAD"),
            ),
            (reqwest::Method::POST, "/v1/batch", 404, "not_found", None),
            (reqwest::Method::GET, "/", 404, "not_found", None),
        ];
        for (method, path, status, reason, allow) in cases {
            let answer = client
                .request(method.clone(), format!("{}{path}", node.url))
                .header("content-type", BATCH)
                .send()
                .await
                .expect("ingest answers");
            let what = format!("{method} {path}");
            assert_eq!(answer.status().as_u16(), status, "{what}");
            assert_eq!(
                answer
                    .headers()
                    .get("content-type")
                    .map(|v| v.to_str().unwrap()),
                Some("application/json"),
                "{what}"
            );
            assert_eq!(
                answer.headers().get("allow").map(|v| v.to_str().unwrap()),
                allow,
                "{what}"
            );
            let body: serde_json::Value = answer.json().await.expect("a JSON body");
            assert_eq!(body["status"], "rejected", "{what}: {body}");
            assert_eq!(body["reason"], reason, "{what}: {body}");
            assert!(
                body["message"].as_str().is_some_and(|m| !m.is_empty()),
                "{what}: {body}"
            );
        }
        assert_eq!(node.records().await, 0);
    })
    .await
    .expect("within the hang guard");
}

/// A batch at the event cap is opened, decoded and sealed with the worker
/// handed over (`block_in_place`), while small batches beside it take the
/// inline path: each is appended once, whichever path it took.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_at_the_event_cap_and_small_ones_beside_it_are_each_appended_once() {
    tokio::time::timeout(GUARD, async {
        let node = Node::start(common::ingest_defaults()).await;
        let client = reqwest::Client::new();
        let max_events = common::ingest_defaults().ingest.max_events as i64;
        let large = batch_for(&node, "laptop-large", max_events, 0);
        let small = (0..20).map(|i| batch_for(&node, &format!("laptop-{i}"), 5, 0));
        let posts = std::iter::once(large)
            .chain(small)
            .map(|body| node.post(&client, body));
        let answers = futures::future::join_all(posts).await;
        for answer in &answers {
            assert_eq!(answer.status, 202, "{answer:?}");
        }
        assert_eq!(answers[0].body["events"], max_events);
        assert_eq!(node.records().await, 21, "one record per one-dataset batch");
        let metrics = node.metrics(&client).await;
        for line in [
            format!("candor_ingest_events_accepted_total {}", max_events + 100),
            // The large one inflates past what a light batch holds.
            "candor_ingest_heavy_batches_total 1".to_string(),
        ] {
            assert!(metrics.contains(&line), "missing {line} in\n{metrics}");
        }
    })
    .await
    .expect("within the hang guard");
}
