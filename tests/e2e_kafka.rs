//! The walking skeleton, end to end through a real Kafka-API broker:
//! sealed batches over real HTTP to ingest, Kafka, the processor, Parquet in
//! a local-directory lake, and a KPI answered by DataFusion.

mod common;

use std::path::Path;
use std::time::Duration;

use arrow::array::{Array, AsArray};
use candor_control::admin::Actor;
use candor_control::directory::Directory;
use candor_control::tenant::{Plan, Tenant};
use candor_log::kafka::{KafkaConfig, KafkaConsumer, end_offsets};
use candor_processor::Processor;
use candor_query::{ActivityDay, TenantLake};
use candor_schemas::batch::{AppUsage, AttendanceEvent, AttendanceKind, GpsPoint};
use candor_schemas::envelope::{self, EnvelopeHeader};
use candor_schemas::record::RecordFormat;
use candor_schemas::{Limits, TenantId};
use chrono::{Days, NaiveDate, Utc};
use common::{
    Control, activity_batch, fresh_topic, header, ms, post, random_master, samples, seal,
    seal_batch, start_ingest,
};

/// Hang guard: a broken broker fails the test instead of stalling CI.
const GUARD: Duration = Duration::from_secs(180);

async fn total_records(kafka: &KafkaConfig) -> i64 {
    end_offsets(kafka)
        .await
        .unwrap()
        .iter()
        .map(|(_, high)| high)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_reason_and_never_reaches_the_log() {
    tokio::time::timeout(GUARD, async {
        let kafka = fresh_topic("e2e-bad", 3).await;
        let master = random_master();
        let limits = Limits { max_body_bytes: 64 * 1024, max_decompressed_bytes: 256 * 1024, ..Limits::default() };
        let control = Control::local_with(&master, &["acme"]).await;
        let url = start_ingest(master.clone(), control.cache.clone(), &kafka, &common::ingest_config(&limits)).await;
        let now = Utc::now().timestamp_millis();
        let h = header("acme", "employee-0001", "laptop-0001");
        let good = seal_batch(&master, &h, &activity_batch(samples(now - 600_000, 3, 50, 10)));

        let mut bad_tag = good.clone();
        *bad_tag.last_mut().unwrap() ^= 1;
        let wrong_key = seal_batch(&random_master(), &h, &activity_batch(samples(now - 600_000, 3, 50, 10)));
        let mut other_employee = header("acme", "employee-0002", "laptop-0001");
        other_employee.batch_id = h.batch_id;
        // Sealed with employee-0001's key, but claiming to be employee-0002.
        let key_1 = master.device_key(&h.tenant, &h.employee, &h.device, 1);
        let impersonation = envelope::seal_json(&other_employee, &key_1, &rand::random(), br#"{"v":1,"sent_at_ms":0}"#);
        let mut other_tenant = header("globex", "employee-0001", "laptop-0001");
        other_tenant.batch_id = h.batch_id;
        // Sealed with acme's device key, but claiming to be globex's device.
        let wrong_tenant = envelope::seal_json(&other_tenant, &key_1, &rand::random(), br#"{"v":1,"sent_at_ms":0}"#);
        let truncated = good[..good.len() - 7].to_vec();
        let cut_in_header = good[..20].to_vec();
        let garbage = b"GET / HTTP/1.1 pretending to be a batch".to_vec();
        let oversize = vec![7u8; 100 * 1024];
        // Authentic, tiny on the wire, inflates to 1 MiB of spaces.
        let bomb = {
            let mut json = br#"{"v":1,"sent_at_ms":0,"activity":[]}"#.to_vec();
            json.resize(1024 * 1024, b' ');
            seal(&master, &h, &json)
        };
        assert!(bomb.len() < 4096);
        let keystrokes = seal(&master, &h, format!(r#"{{"v":1,"sent_at_ms":0,"keystrokes":"hunter2","activity":[{{"start_ms":{now},"active_s":1,"idle_s":0}}]}}"#).as_bytes());
        let future = seal_batch(&master, &h, &activity_batch(samples(now + 3_600_000, 1, 60, 0)));

        let ct = "application/vnd.candor.batch";
        let cases: Vec<(&str, &str, Vec<u8>, u16, &str)> = vec![
            ("flipped tag bit", ct, bad_tag, 401, "bad_tag"),
            ("wrong master secret", ct, wrong_key, 401, "bad_tag"),
            ("another employee's header", ct, impersonation, 401, "bad_tag"),
            ("another tenant's header", ct, wrong_tenant, 401, "bad_tag"),
            ("truncated body", ct, truncated, 401, "bad_tag"),
            ("body cut inside the header", ct, cut_in_header, 400, "malformed_envelope"),
            ("garbage", ct, garbage, 400, "malformed_envelope"),
            ("oversize body", ct, oversize, 413, "body_too_large"),
            ("decompression bomb", ct, bomb, 413, "decompressed_too_large"),
            ("keystroke field", ct, keystrokes, 400, "unknown_field"),
            ("future timestamp", ct, future, 400, "timestamp_in_future"),
            ("wrong content type", "application/json", good.clone(), 415, "unsupported_media_type"),
        ];
        for (what, content_type, body, status, reason) in cases {
            let (got, answer) = post(&url, content_type, body).await;
            assert_eq!(got, status, "{what}: {answer}");
            assert_eq!(answer["reason"], reason, "{what}: {answer}");
        }
        assert_eq!(total_records(&kafka).await, 0, "refused input reached the topic");
        let metrics = reqwest::get(format!("{url}/metrics")).await.unwrap().text().await.unwrap();
        for line in [
            r#"candor_ingest_requests_total{reason="bad_tag",status="401"} 5"#,
            r#"candor_ingest_requests_total{reason="decompressed_too_large",status="413"} 1"#,
            r#"candor_ingest_requests_total{reason="unsupported_media_type",status="415"} 1"#,
        ] {
            assert!(metrics.contains(line), "missing {line} in\n{metrics}");
        }

        // The same check sees an accepted batch, so the zero above is meaningful.
        let (got, answer) = post(&url, ct, good).await;
        assert_eq!(got, 202, "{answer}");
        assert_eq!(total_records(&kafka).await, 1);
    })
    .await
    .expect("test finished within its hang guard");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sealed_batches_become_a_kpi_through_the_real_broker() {
    tokio::time::timeout(GUARD, async {
        let kafka = fresh_topic("e2e-kpi", 3).await;
        let master = random_master();
        let control = Control::local_with(&master, &["acme", "globex"]).await;
        // Initech keeps the default policy: Monday to Friday, 09:00-17:00 UTC.
        control
            .create(Tenant::new(
                TenantId::new("initech").unwrap(),
                Plan::Starter,
                "UTC",
            ))
            .await;
        // Alice is in Sales; Bob is in no department yet.
        let sales: Directory = serde_json::from_str(
            r#"{"employees": {"employee-alice-0001": {"department": "Sales"}}}"#,
        )
        .unwrap();
        control
            .admin
            .load_directory(
                &Actor::operator(),
                &TenantId::new("acme").unwrap(),
                &sales,
                None,
            )
            .await
            .unwrap();
        let url = start_ingest(
            master.clone(),
            control.cache.clone(),
            &kafka,
            &common::ingest_defaults(),
        )
        .await;
        let day = Utc::now().date_naive() - Days::new(3);
        let alice = header("acme", "employee-alice-0001", "laptop-alice-01");
        let bob = header("acme", "employee-bob-0002", "phone-bob-02");
        let mallory = header("globex", "employee-mallory-0003", "laptop-mallory-03");
        let night_owl = header("initech", "employee-owl-0004", "laptop-owl-04");

        // Known input. Asia/Kolkata is UTC+05:30, so 20:00 UTC is 01:30 the
        // next local day: the KPI must count it there.
        let mut morning = activity_batch(samples(ms(day, 4, 0), 10, 45, 15));
        morning.app_usage.push(AppUsage {
            start_ms: ms(day, 4, 0),
            duration_s: 600,
            app: "Excel".into(),
            host: None,
        });
        morning.gps = vec![
            GpsPoint {
                at_ms: ms(day, 4, 1),
                lat: 12.971_598_7,
                lon: 77.594_562_7,
                accuracy_m: 8.0,
            },
            GpsPoint {
                at_ms: ms(day, 4, 6),
                lat: 12.981_598_7,
                lon: 77.594_562_7,
                accuracy_m: 8.0,
            },
        ];
        morning.attendance.push(AttendanceEvent {
            at_ms: ms(day, 4, 0),
            kind: AttendanceKind::ClockIn,
        });
        let late_night = activity_batch(samples(ms(day, 20, 0), 4, 30, 30));
        let bobs = activity_batch(samples(ms(day, 5, 0), 5, 60, 0));
        let mallorys = activity_batch(samples(ms(day, 5, 0), 5, 0, 60));
        // 05:00 UTC is outside initech's work hours whatever the weekday.
        let mut owls = activity_batch(samples(ms(day, 5, 0), 6, 60, 0));
        owls.attendance.push(AttendanceEvent {
            at_ms: ms(day, 5, 0),
            kind: AttendanceKind::ClockIn,
        });
        for (h, b) in [
            (&alice, &morning),
            // Each batch has its own id: one id twice would be a replay.
            (
                &EnvelopeHeader {
                    batch_id: rand::random(),
                    ..alice.clone()
                },
                &late_night,
            ),
            (&bob, &bobs),
            (&mallory, &mallorys),
            (&night_owl, &owls),
        ] {
            let (status, answer) = post(
                &url,
                "application/vnd.candor.batch",
                seal_batch(&master, h, b),
            )
            .await;
            assert_eq!(status, 202, "{answer}");
        }
        // One record per batch, or in version 1 per batch and dataset: 4
        // for the morning, 2 for the night owl's, 1 for each other batch.
        let records = match common::record_format() {
            RecordFormat::V2 => 5,
            RecordFormat::V1 => 9,
        };
        assert_eq!(total_records(&kafka).await, records);

        let lake_dir = tempfile::tempdir().unwrap();
        let processor = drained_processor(&kafka, &control, lake_dir.path()).await;
        assert_eq!(processor.stats().records, records as u64);
        assert_eq!(processor.stats().records_undecodable, 0);
        assert_eq!(processor.stats().events, 10 + 1 + 2 + 1 + 4 + 5 + 5 + 6 + 1);
        // The night owl's activity stays out of the lake; the clock-in does not.
        assert_eq!(processor.stats().events_outside_work_hours, 6);
        assert!(!lake_dir.path().join("activity/tenant=initech").exists());
        assert!(lake_dir.path().join("attendance/tenant=initech").is_dir());

        // A restarted processor of the same group resumes after the commits:
        // nothing is read twice.
        drop(processor);
        let restarted = drained_processor(&kafka, &control, lake_dir.path()).await;
        assert_eq!(restarted.stats().records, 0);

        let acme = TenantId::new("acme").unwrap();
        let (alice_subject, bob_subject) = (
            control.subject(&acme, &alice.employee).await,
            control.subject(&acme, &bob.employee).await,
        );
        let subject = |h: &EnvelopeHeader| {
            if h.employee == alice.employee {
                alice_subject.clone()
            } else {
                bob_subject.clone()
            }
        };
        let row = |h: &EnvelopeHeader, d: NaiveDate, tracked: i64, active: i64| ActivityDay {
            subject: subject(h),
            day: d.to_string(),
            tracked_s: tracked,
            active_s: active,
            idle_s: tracked - active,
            activity_pct: 100.0 * active as f64 / tracked as f64,
        };
        let lake = TenantLake::open_local(lake_dir.path(), &acme)
            .await
            .unwrap();
        let next = day + Days::new(1);
        let mut expected = vec![
            row(&alice, day, 600, 450),
            row(&alice, next, 240, 120),
            row(&bob, day, 300, 300),
        ];
        expected.sort_by(|a, b| (&a.subject, &a.day).cmp(&(&b.subject, &b.day)));
        let got = lake
            .activity_by_subject_day("Asia/Kolkata", day - Days::new(1), next)
            .await
            .unwrap();
        assert_eq!(got, expected);
        assert_eq!(
            got.iter()
                .find(|r| r.subject == subject(&alice) && r.day == day.to_string())
                .unwrap()
                .activity_pct,
            75.0
        );

        // In UTC both of Alice's stretches fall on the same day.
        let utc = lake.activity_by_subject_day("UTC", day, day).await.unwrap();
        let alice_utc = utc.iter().find(|r| r.subject == subject(&alice)).unwrap();
        assert_eq!((alice_utc.tracked_s, alice_utc.active_s), (840, 570));

        // Hive layout, and nothing of globex in acme's view.
        let date_dir = lake_dir
            .path()
            .join(format!("activity/tenant=acme/date={day}"));
        let files: Vec<_> = std::fs::read_dir(&date_dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(
            !files.is_empty()
                && files
                    .iter()
                    .all(|f| f.to_string_lossy().ends_with(".parquet")),
            "{files:?}"
        );
        for dataset in ["app_usage", "gps", "attendance"] {
            assert!(
                lake_dir
                    .path()
                    .join(format!("{dataset}/tenant=acme/date={day}"))
                    .is_dir(),
                "{dataset}"
            );
        }
        assert!(
            lake_dir
                .path()
                .join(format!("activity/tenant=globex/date={day}"))
                .is_dir()
        );
        assert_eq!(got.len(), 3, "acme's view holds only acme's subjects");

        // The department is the directory's at processing time.
        let rows = lake
            .session()
            .query("SELECT DISTINCT subject, department FROM activity")
            .await
            .unwrap();
        let mut departments = Vec::new();
        for batch in &rows.batches {
            let (who, department) = (
                batch.column(0).as_string::<i32>(),
                batch.column(1).as_string::<i32>(),
            );
            for i in 0..batch.num_rows() {
                departments.push((
                    who.value(i).to_string(),
                    department
                        .is_valid(i)
                        .then(|| department.value(i).to_string()),
                ));
            }
        }
        departments.sort();
        let mut expected_departments = vec![
            (subject(&alice), Some("Sales".to_string())),
            (subject(&bob), None),
        ];
        expected_departments.sort();
        assert_eq!(departments, expected_departments);

        // No raw employee or device id and no precise coordinate anywhere in the lake.
        let mut forbidden: Vec<Vec<u8>> = [&alice, &bob, &mallory, &night_owl]
            .iter()
            .flat_map(|h| {
                [
                    h.employee.as_str().as_bytes().to_vec(),
                    h.device.as_str().as_bytes().to_vec(),
                ]
            })
            .collect();
        forbidden.push(12.971_598_7_f64.to_le_bytes().to_vec());
        forbidden.push(77.594_562_7_f64.to_le_bytes().to_vec());
        forbidden.push(b"12.9715987".to_vec());
        let mut scanned = 0;
        for file in walk(lake_dir.path()) {
            let bytes = std::fs::read(&file).unwrap();
            scanned += 1;
            for f in &forbidden {
                assert!(
                    !bytes.windows(f.len()).any(|w| w == &f[..]),
                    "{} holds {:?}",
                    file.display(),
                    String::from_utf8_lossy(f)
                );
            }
        }
        assert!(scanned >= 5, "scanned {scanned} files");
    })
    .await
    .expect("test finished within its hang guard");
}

/// A processor of the test's consumer group that has drained the topic.
async fn drained_processor(
    kafka: &KafkaConfig,
    control: &Control,
    lake: &Path,
) -> Processor<KafkaConsumer> {
    // A group of its own per topic: groups outlive test runs on the broker.
    let group = format!("{}-processor", kafka.topic);
    let consumer = KafkaConsumer::new(kafka, &group).unwrap();
    // As `candor processor` builds it: its role's control cache (directory,
    // no tokens) and its settings.
    let mut config = candor::config::Config::defaults(candor::config::Role::Processor);
    config.lake.url = Some(lake.to_str().unwrap().into());
    config.processor.group = group;
    let mut processor = candor::node::processor(
        &config,
        consumer,
        control.cache_for(candor::config::Role::Processor),
        None,
        &prometheus::Registry::new(),
    )
    .unwrap();
    processor.drain().await.unwrap();
    processor
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}
