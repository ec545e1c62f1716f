//! Writes the wire test vectors to stdout as JSON:
//!
//! ```sh
//! cargo run -p candor-schemas --example make_vectors > schemas/testdata/vectors.json
//! ```
//!
//! Everything is fixed (secret, ids, nonces, batch ids, clock), so the file
//! only changes when the contract does. `tests/vectors.rs` checks the code
//! against the checked-in file.

use candor_schemas::envelope::{self, EnvelopeHeader};
use candor_schemas::keys::{
    AT_REST_KEY_LABEL, DEVICE_KEY_LABEL, HKDF_SALT, MasterSecret, PSEUDONYM_KEY_LABEL, TenantSeed,
};
use candor_schemas::record::{RecordFormat, RecordMeta, seal_batch};
use candor_schemas::{DeviceId, EmployeeId, Limits, TenantId, decode_json};
use serde_json::{Value, json};

const RECEIVED_AT_MS: i64 = 1_795_000_000_000; // 2026-11-18T11:06:40Z
const MASTER_HEX: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

fn header(employee: &str) -> EnvelopeHeader {
    EnvelopeHeader {
        key_version: 1,
        batch_id: *b"\x6b\x1f\x7e\x20\x0c\x44\x4c\x2a\x9d\x1e\x33\x5a\x80\x11\x22\x33",
        tenant: TenantId::new("acme").unwrap(),
        employee: EmployeeId::new(employee).unwrap(),
        device: DeviceId::new("laptop-7").unwrap(),
    }
}

fn nonce(n: u8) -> [u8; 24] {
    std::array::from_fn(|i| n.wrapping_mul(31).wrapping_add(i as u8))
}

fn valid_json(t: i64) -> String {
    format!(
        r#"{{"v":1,"sent_at_ms":{t},"activity":[{{"start_ms":{a},"active_s":45,"idle_s":15}},{{"start_ms":{b},"active_s":60,"idle_s":0}}],"app_usage":[{{"start_ms":{a},"duration_s":120,"app":"Firefox","host":"docs.example.com"}}],"gps":[{{"at_ms":{a},"lat":52.520008,"lon":13.404954,"accuracy_m":12.5}}],"attendance":[{{"at_ms":{a},"kind":"clock_in"}}]}}"#,
        a = t - 120_000,
        b = t - 60_000
    )
}

struct Case {
    name: &'static str,
    note: &'static str,
    employee_in_header: &'static str,
    sealed_by: &'static str,
    json: String,
    /// Compress with zstd (false: the JSON is sealed raw, which is refused).
    compress: bool,
    /// Applied to the sealed bytes after sealing.
    tamper: fn(&mut Vec<u8>),
    expect: &'static str,
}

fn main() {
    let master = MasterSecret::from_hex(MASTER_HEX).unwrap();
    let t = RECEIVED_AT_MS - 1_000;
    let none: fn(&mut Vec<u8>) = |_| {};
    let cases = vec![
        Case {
            name: "valid-all-event-kinds",
            note: "a batch with every event kind; accepted",
            employee_in_header: "e-1042",
            sealed_by: "e-1042",
            json: valid_json(t),
            compress: true,
            tamper: none,
            expect: "accept",
        },
        Case {
            name: "flipped-tag-bit",
            note: "the valid batch with the lowest bit of the last tag byte flipped",
            employee_in_header: "e-1042",
            sealed_by: "e-1042",
            json: valid_json(t),
            compress: true,
            tamper: |b| {
                let n = b.len();
                b[n - 1] ^= 1
            },
            expect: "bad_tag",
        },
        Case {
            name: "flipped-ciphertext-bit",
            note: "the valid batch with the highest bit (0x80) of ciphertext byte N - 24 flipped (0-based, N = ciphertext length): envelope byte len - 40, the 24th byte before the tag",
            employee_in_header: "e-1042",
            sealed_by: "e-1042",
            json: valid_json(t),
            compress: true,
            tamper: |b| {
                let n = b.len();
                b[n - 40] ^= 0x80
            },
            expect: "bad_tag",
        },
        Case {
            name: "wrong-employee-in-header",
            note: "sealed with e-1042's device key, header claims e-2000: the key derived from the header differs, so the tag fails",
            employee_in_header: "e-2000",
            sealed_by: "e-1042",
            json: valid_json(t),
            compress: true,
            tamper: none,
            expect: "bad_tag",
        },
        Case {
            name: "truncated-body",
            note: "the valid envelope cut 20 bytes short: the tag no longer verifies",
            employee_in_header: "e-1042",
            sealed_by: "e-1042",
            json: valid_json(t),
            compress: true,
            tamper: |b| {
                let n = b.len();
                b.truncate(n - 20)
            },
            expect: "bad_tag",
        },
        Case {
            name: "truncated-header",
            note: "the valid envelope cut inside its header",
            employee_in_header: "e-1042",
            sealed_by: "e-1042",
            json: valid_json(t),
            compress: true,
            tamper: |b| b.truncate(30),
            expect: "malformed_envelope",
        },
        Case {
            name: "bad-magic",
            note: "first byte changed",
            employee_in_header: "e-1042",
            sealed_by: "e-1042",
            json: valid_json(t),
            compress: true,
            tamper: |b| b[0] = b'X',
            expect: "malformed_envelope",
        },
        Case {
            name: "not-zstd",
            note: "authentic, but the sealed payload is raw JSON, not a zstd frame",
            employee_in_header: "e-1042",
            sealed_by: "e-1042",
            json: valid_json(t),
            compress: false,
            tamper: none,
            expect: "bad_compression",
        },
        Case {
            name: "unknown-field-keystrokes",
            note: "authentic, but carries a field the model does not have",
            employee_in_header: "e-1042",
            sealed_by: "e-1042",
            json: format!(
                r#"{{"v":1,"sent_at_ms":{t},"keystrokes":"hunter2","activity":[{{"start_ms":{t},"active_s":60,"idle_s":0}}]}}"#
            ),
            compress: true,
            tamper: none,
            expect: "unknown_field",
        },
        Case {
            name: "window-title",
            note: "app usage may carry app and host only; a title is an unknown field",
            employee_in_header: "e-1042",
            sealed_by: "e-1042",
            json: format!(
                r#"{{"v":1,"sent_at_ms":{t},"app_usage":[{{"start_ms":{t},"duration_s":10,"app":"Outlook","title":"Re: salary"}}]}}"#
            ),
            compress: true,
            tamper: none,
            expect: "unknown_field",
        },
        Case {
            name: "future-timestamp",
            note: "an event 10 minutes after received_at_ms (more than 5 minutes of skew)",
            employee_in_header: "e-1042",
            sealed_by: "e-1042",
            json: format!(
                r#"{{"v":1,"sent_at_ms":{t},"activity":[{{"start_ms":{},"active_s":60,"idle_s":0}}]}}"#,
                RECEIVED_AT_MS + 600_000
            ),
            compress: true,
            tamper: none,
            expect: "timestamp_in_future",
        },
        Case {
            name: "gps-out-of-range",
            note: "latitude 91",
            employee_in_header: "e-1042",
            sealed_by: "e-1042",
            json: format!(
                r#"{{"v":1,"sent_at_ms":{t},"gps":[{{"at_ms":{t},"lat":91.0,"lon":0.0,"accuracy_m":5.0}}]}}"#
            ),
            compress: true,
            tamper: none,
            expect: "invalid_event",
        },
        Case {
            name: "url-as-host",
            note: "a full URL where a host is expected",
            employee_in_header: "e-1042",
            sealed_by: "e-1042",
            json: format!(
                r#"{{"v":1,"sent_at_ms":{t},"app_usage":[{{"start_ms":{t},"duration_s":10,"app":"Chrome","host":"https://mail.example.com/inbox"}}]}}"#
            ),
            compress: true,
            tamper: none,
            expect: "invalid_event",
        },
        Case {
            name: "empty-batch",
            note: "no events",
            employee_in_header: "e-1042",
            sealed_by: "e-1042",
            json: format!(r#"{{"v":1,"sent_at_ms":{t}}}"#),
            compress: true,
            tamper: none,
            expect: "empty_batch",
        },
    ];

    let mut vectors = Vec::new();
    for (i, c) in cases.iter().enumerate() {
        let claimed = header(c.employee_in_header);
        let signer = header(c.sealed_by);
        let key = master.device_key(
            &signer.tenant,
            &signer.employee,
            &signer.device,
            signer.key_version,
        );
        let frame = if c.compress {
            zstd::bulk::compress(c.json.as_bytes(), 3).unwrap()
        } else {
            c.json.as_bytes().to_vec()
        };
        let n = nonce(i as u8);
        let mut sealed = envelope::seal(&claimed, &key, &n, &frame);
        (c.tamper)(&mut sealed);
        vectors.push(json!({
            "name": c.name,
            "note": c.note,
            "tenant": claimed.tenant.as_str(),
            "employee": claimed.employee.as_str(),
            "device": claimed.device.as_str(),
            "key_version": claimed.key_version,
            "sealed_by_employee": signer.employee.as_str(),
            "device_key_hex": hex::encode(key.as_bytes()),
            "batch_id_hex": hex::encode(claimed.batch_id),
            "nonce_hex": hex::encode(n),
            "plaintext_json": c.json,
            "payload_hex": hex::encode(&frame),
            "sealed_hex": hex::encode(&sealed),
            "expect": c.expect,
        }));
    }
    let tenant = TenantId::new("acme").unwrap();
    let employee = EmployeeId::new("e-1042").unwrap();
    // A fixed seed, so the file is reproducible; real seeds are random.
    let seed = TenantSeed::from_bytes(*b"candor test vector tenant seed!!");
    let log_records = log_records(&master, &seed, &header("e-1042"), &valid_json(t));
    let out: Value = json!({
        "about": "Candor wire test vectors; see schemas/WIRE.md. Regenerate with: cargo run -p candor-schemas --example make_vectors > schemas/testdata/vectors.json",
        "master_secret_hex": MASTER_HEX,
        "hkdf": {
            "hash": "SHA-256",
            "salt_ascii": String::from_utf8_lossy(HKDF_SALT),
            "device_key_label": DEVICE_KEY_LABEL,
            "at_rest_key_label": AT_REST_KEY_LABEL,
            "pseudonym_key_label": PSEUDONYM_KEY_LABEL,
            "tenant_keys_ikm": "master secret || tenant seed (32 bytes)",
        },
        "received_at_ms": RECEIVED_AT_MS,
        "limits": {"max_body_bytes": 1048576, "max_decompressed_bytes": 8388608, "max_events": 10000, "max_future_ms": 300000, "max_age_ms": 31536000000_i64},
        "tenant_keys": [{
            "tenant": tenant.as_str(),
            "version": 1,
            "seed_hex": hex::encode(seed.as_bytes()),
            "at_rest_key_hex": hex::encode(master.at_rest_key(&tenant, 1, &seed).as_bytes()),
            "pseudonym_key_hex": hex::encode(master.pseudonym_key(&tenant, 1, &seed).as_bytes()),
            "subject_of_employee": employee.as_str(),
            "subject": master.pseudonym_key(&tenant, 1, &seed).subject(&employee),
        }],
        "vectors": vectors,
        "log_records": log_records,
    });
    println!("{}", serde_json::to_string_pretty(&out).unwrap());
}

/// The accepted batch as ingest appends it to the log, in both record
/// layouts, sealed with the tenant's at-rest key: what a processor of any
/// later release must still open, byte for byte.
fn log_records(
    master: &MasterSecret,
    seed: &TenantSeed,
    header: &EnvelopeHeader,
    json: &str,
) -> Vec<Value> {
    let batch = decode_json(json.as_bytes(), &Limits::default(), RECEIVED_AT_MS)
        .expect("the valid vector decodes");
    let meta = RecordMeta {
        employee: header.employee.clone(),
        device: header.device.clone(),
        batch_id: header.batch_id,
        received_at_ms: RECEIVED_AT_MS,
    };
    let key = master.at_rest_key(&header.tenant, 1, seed);
    [RecordFormat::V1, RecordFormat::V2]
        .into_iter()
        .map(|format| {
            let mut nonces = Vec::new();
            let records = seal_batch(
                format,
                &header.tenant,
                &key,
                1,
                &meta,
                &batch.datasets,
                || {
                    let n = nonce(100 + 10 * format as u8 + nonces.len() as u8);
                    nonces.push(hex::encode(n));
                    n
                },
            );
            json!({
                "format": format as u8,
                "from_vector": "valid-all-event-kinds",
                "tenant": header.tenant.as_str(),
                "key_version": 1,
                "employee": meta.employee.as_str(),
                "device": meta.device.as_str(),
                "batch_id_hex": hex::encode(meta.batch_id),
                "received_at_ms": meta.received_at_ms,
                "datasets": batch.datasets.iter().map(|(d, e)| json!({"dataset": d.name(), "tag": *d as u8, "events": e.num_rows()})).collect::<Vec<_>>(),
                "nonces_hex": nonces,
                "records_hex": records.iter().map(hex::encode).collect::<Vec<_>>(),
            })
        })
        .collect()
}
