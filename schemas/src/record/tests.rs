use super::*;
use crate::batch::Limits;
use crate::columns::decode_json;
use crate::keys::{MasterSecret, TenantSeed};

const NOW: i64 = 1_780_000_000_000;

fn acme() -> TenantId {
    TenantId::new("acme").unwrap()
}

fn meta() -> RecordMeta {
    RecordMeta {
        employee: EmployeeId::new("e1").unwrap(),
        device: DeviceId::new("d1").unwrap(),
        batch_id: [5; 16],
        received_at_ms: NOW,
    }
}

/// A 5-minute upload of a field worker: every dataset, 5 events of most.
fn five_minutes() -> Vec<(Dataset, RecordBatch)> {
    let minute = |i: i64| NOW - 300_000 + i * 60_000;
    let activity: Vec<String> = (0..5)
        .map(|i| {
            format!(
                r#"{{"start_ms":{},"active_s":{},"idle_s":{}}}"#,
                minute(i),
                50 - i,
                10 + i
            )
        })
        .collect();
    let apps: Vec<String> = (0..5)
        .map(|i| {
            format!(
                r#"{{"start_ms":{},"duration_s":60,"app":"app-{i}","host":{}}}"#,
                minute(i),
                if i % 2 == 0 {
                    r#""example.com""#.to_string()
                } else {
                    "null".to_string()
                }
            )
        })
        .collect();
    let gps: Vec<String> = (0..5)
        .map(|i| {
            format!(
                r#"{{"at_ms":{},"lat":48.85{i},"lon":2.35{i},"accuracy_m":5}}"#,
                minute(i)
            )
        })
        .collect();
    let json = format!(
        r#"{{"v":1,"sent_at_ms":{NOW},"activity":[{}],"app_usage":[{}],"gps":[{}],"attendance":[{{"at_ms":{},"kind":"clock_in"}}]}}"#,
        activity.join(","),
        apps.join(","),
        gps.join(","),
        minute(0)
    );
    decode_json(json.as_bytes(), &Limits::default(), NOW)
        .unwrap()
        .datasets
}

fn keys() -> (MasterSecret, TenantSeed) {
    (
        MasterSecret::from_bytes(&[3; 32]).unwrap(),
        TenantSeed::from_bytes([5; 32]),
    )
}

fn seal(format: RecordFormat, datasets: &[(Dataset, RecordBatch)]) -> Vec<Vec<u8>> {
    let (master, seed) = keys();
    let key = master.at_rest_key(&acme(), 1, &seed);
    let mut n = 0u8;
    seal_batch(format, &acme(), &key, 1, &meta(), datasets, || {
        n += 1;
        [n; NONCE_LEN]
    })
}

fn open(bytes: &[u8]) -> Result<LogRecord, RecordError> {
    let (master, seed) = keys();
    open_record(bytes, |t, v| Some(master.at_rest_key(t, v, &seed)))
}

#[test]
fn both_versions_round_trip_every_dataset_of_a_batch() {
    let datasets = five_minutes();
    assert_eq!(datasets.len(), 4, "the fixture has every dataset");
    for format in [RecordFormat::V1, RecordFormat::V2] {
        let sealed = seal(format, &datasets);
        let expected_records = match format {
            RecordFormat::V1 => datasets.len(),
            RecordFormat::V2 => 1,
        };
        assert_eq!(sealed.len(), expected_records, "{format:?}");
        let mut opened = Vec::new();
        for value in &sealed {
            let header = read_header(value).unwrap();
            assert_eq!((header.format, header.key_version), (format, 1));
            assert_eq!(header.tenant, acme());
            let record = open(value).unwrap();
            assert_eq!(record.meta, meta(), "{format:?}");
            assert_eq!(record.tenant, acme());
            opened.extend(record.datasets);
        }
        assert_eq!(opened.len(), datasets.len());
        for ((dataset, events), (want_dataset, want)) in opened.iter().zip(&datasets) {
            assert_eq!(dataset, want_dataset, "{format:?}");
            // Same columns and values; the schema is the dataset's log
            // schema whatever metadata the writer's had.
            assert_eq!(events.columns(), want.columns(), "{format:?} {dataset:?}");
            assert_eq!(events.schema().fields(), dataset.log_schema().fields());
        }
    }
}

#[test]
fn version_2_is_one_small_record_per_batch() {
    let sizes = |datasets: &[(Dataset, RecordBatch)]| {
        let size = |format| -> usize { seal(format, datasets).iter().map(Vec::len).sum() };
        (size(RecordFormat::V1), size(RecordFormat::V2))
    };
    // An office worker's 5 minutes (activity and apps, 5 events each), and
    // a field worker's (every dataset).
    let all = five_minutes();
    let (office_v1, office_v2) = sizes(&all[..2]);
    let (field_v1, field_v2) = sizes(&all);
    println!(
        "5-minute batches: office (2 datasets, 10 events) version 1 {office_v1} bytes in 2 records, \
         version 2 {office_v2} in 1; field (4 datasets, 16 events) {field_v1} in 4, {field_v2} in 1"
    );
    assert!(office_v2 * 2 < office_v1, "{office_v2} against {office_v1}");
    assert!(field_v2 * 2 < field_v1, "{field_v2} against {field_v1}");
}

#[test]
fn sections_are_written_in_tag_order_whatever_the_order_given() {
    let mut datasets = five_minutes();
    datasets.reverse();
    let record = open(&seal(RecordFormat::V2, &datasets)[0]).unwrap();
    let tags: Vec<u8> = record.datasets.iter().map(|(d, _)| *d as u8).collect();
    assert_eq!(tags, [1, 2, 3, 4]);
}

#[test]
fn records_bind_the_tenant_and_hide_who_sent_them() {
    let (master, seed) = keys();
    let other = TenantId::new("globex").unwrap();
    for format in [RecordFormat::V1, RecordFormat::V2] {
        let sealed = &seal(format, &five_minutes())[0];
        // No employee or device id, app or host in clear on the broker's disk.
        for clear in [&b"e1"[..], b"d1", b"app-0", b"example.com"] {
            assert!(
                !sealed.windows(clear.len()).any(|w| w == clear),
                "{format:?}"
            );
        }
        // Another tenant's key (or a destroyed key) opens nothing.
        assert_eq!(
            open_record(sealed, |_, v| Some(master.at_rest_key(&other, v, &seed))).unwrap_err(),
            RecordError::Authentication
        );
        assert_eq!(
            open_record(sealed, |_, _| None).unwrap_err(),
            RecordError::Authentication
        );
        // A record claiming another tenant in its clear header fails too.
        let mut moved = sealed.clone();
        let tenant_at = if format == RecordFormat::V1 { 11 } else { 10 };
        moved[tenant_at] = b'b';
        assert!(open(&moved).is_err(), "{format:?}");
    }
}

#[test]
fn every_altered_or_cut_record_is_refused_without_a_panic() {
    for format in [RecordFormat::V1, RecordFormat::V2] {
        let sealed = &seal(format, &five_minutes())[0];
        for at in 0..sealed.len() {
            let mut altered = sealed.clone();
            altered[at] ^= 0x40;
            assert!(open(&altered).is_err(), "{format:?}: byte {at} altered");
            assert!(open(&sealed[..at]).is_err(), "{format:?}: cut at {at}");
        }
    }
    let mut future = seal(RecordFormat::V2, &five_minutes()).remove(0);
    future[4] = 3;
    assert!(
        read_header(&future)
            .unwrap_err()
            .to_string()
            .contains("unknown format version 3")
    );
}

/// The payload's own checks, below the seal: what ingest of this release
/// can never write is refused, not misread.
#[test]
fn malformed_version_2_payloads_are_refused() {
    let datasets = five_minutes();
    let payload = v2::encode(&meta(), &datasets);
    assert_eq!(v2::decode(payload.clone()).unwrap().0, meta());
    for at in 0..payload.len() {
        assert!(v2::decode(payload[..at].to_vec()).is_err(), "cut at {at}");
    }
    let mut trailing = payload.clone();
    trailing.push(0);
    assert!(v2::decode(trailing).is_err());
    // The dataset count sits after the receive time, batch id and two ids.
    let count_at = 8 + 16 + 3 + 3;
    for count in [0, 5] {
        let mut bad = payload.clone();
        bad[count_at] = count;
        assert!(v2::decode(bad).is_err(), "count {count}");
    }
    // One section given twice.
    let activity = &datasets[..1];
    let mut twice = v2::encode(&meta(), activity);
    let section = twice[count_at + 1..].to_vec();
    twice[count_at] = 2;
    twice.extend_from_slice(&section);
    assert_eq!(
        v2::decode(twice).unwrap_err(),
        RecordError::Malformed("dataset sections out of order or repeated".into())
    );
    // A section claiming another dataset's tag is not decoded as that one.
    let mut relabelled = v2::encode(&meta(), activity);
    relabelled[count_at + 1] = Dataset::Gps as u8;
    assert!(matches!(
        v2::decode(relabelled).unwrap_err(),
        RecordError::Decode(_)
    ));
}
