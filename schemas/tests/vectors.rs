//! Checks the Rust implementation against every vector in
//! `schemas/testdata/vectors.json`: key derivation, sealing byte for byte,
//! and the verdict of the whole intake path.

use candor_schemas::envelope::{self, EnvelopeHeader};
use candor_schemas::keys::{MasterSecret, TenantSeed};
use candor_schemas::{DeviceId, EmployeeId, Limits, TenantId, decode_json, open_batch};
use serde_json::Value;

fn vectors() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/vectors.json");
    serde_json::from_str(&std::fs::read_to_string(path).expect("vectors.json exists"))
        .expect("valid JSON")
}

fn hex_of(v: &Value, field: &str) -> Vec<u8> {
    hex::decode(
        v[field]
            .as_str()
            .unwrap_or_else(|| panic!("{field} missing")),
    )
    .expect("hex")
}

fn str_of<'a>(v: &'a Value, field: &str) -> &'a str {
    v[field]
        .as_str()
        .unwrap_or_else(|| panic!("{field} missing"))
}

#[test]
fn every_vector_gets_its_verdict() {
    let all = vectors();
    let master = MasterSecret::from_bytes(&hex_of(&all, "master_secret_hex")).unwrap();
    let received_at_ms = all["received_at_ms"].as_i64().unwrap();
    let l = &all["limits"];
    let limits = Limits {
        max_body_bytes: l["max_body_bytes"].as_u64().unwrap() as usize,
        max_decompressed_bytes: l["max_decompressed_bytes"].as_u64().unwrap() as usize,
        max_events: l["max_events"].as_u64().unwrap() as usize,
        max_future_ms: l["max_future_ms"].as_i64().unwrap(),
        max_age_ms: l["max_age_ms"].as_i64().unwrap(),
    };
    let list = all["vectors"].as_array().unwrap();
    assert!(list.len() >= 10, "the vector file lost cases");
    let mut seen_accept = false;
    for v in list {
        let name = str_of(v, "name");
        let tenant = TenantId::new(str_of(v, "tenant")).unwrap();
        let device = DeviceId::new(str_of(v, "device")).unwrap();
        let version = v["key_version"].as_u64().unwrap() as u32;
        let signer = EmployeeId::new(str_of(v, "sealed_by_employee")).unwrap();

        // 1. Key derivation.
        let key = master.device_key(&tenant, &signer, &device, version);
        assert_eq!(
            key.as_bytes().to_vec(),
            hex_of(v, "device_key_hex"),
            "{name}: device key"
        );

        // 2. Sealing is deterministic given the payload and nonce: an
        //    untampered vector must be reproduced byte for byte.
        let header = EnvelopeHeader {
            key_version: version,
            batch_id: hex_of(v, "batch_id_hex").try_into().unwrap(),
            tenant: tenant.clone(),
            employee: EmployeeId::new(str_of(v, "employee")).unwrap(),
            device: device.clone(),
        };
        let nonce: [u8; 24] = hex_of(v, "nonce_hex").try_into().unwrap();
        let resealed = envelope::seal(&header, &key, &nonce, &hex_of(v, "payload_hex"));
        let sealed = hex_of(v, "sealed_hex");
        let tampered = [
            "flipped-tag-bit",
            "flipped-ciphertext-bit",
            "truncated-body",
            "truncated-header",
            "bad-magic",
        ]
        .contains(&name);
        assert_eq!(
            resealed == sealed,
            !tampered,
            "{name}: sealing reproduces the vector iff untampered"
        );

        // 3. The verdict of the whole intake path.
        let expect = str_of(v, "expect");
        match open_batch(&sealed, &master, &limits, received_at_ms) {
            Ok(opened) => {
                assert_eq!(expect, "accept", "{name}: accepted but expected {expect}");
                let plain = decode_json(
                    str_of(v, "plaintext_json").as_bytes(),
                    &limits,
                    received_at_ms,
                )
                .unwrap();
                assert_eq!(opened.batch, plain, "{name}: opened batch");
                assert_eq!(opened.header, header, "{name}: header");
                seen_accept = true;
            }
            Err(r) => assert_eq!(r.reason.code(), expect, "{name}: {r}"),
        }
    }
    assert!(seen_accept, "at least one vector must be accepted");
}

#[test]
fn tenant_keys_and_subjects_match() {
    let all = vectors();
    let master = MasterSecret::from_bytes(&hex_of(&all, "master_secret_hex")).unwrap();
    for t in all["tenant_keys"].as_array().unwrap() {
        let tenant = TenantId::new(str_of(t, "tenant")).unwrap();
        let version = t["version"].as_u64().unwrap() as u32;
        let seed = TenantSeed::from_bytes(hex_of(t, "seed_hex").try_into().unwrap());
        assert_eq!(
            master
                .at_rest_key(&tenant, version, &seed)
                .as_bytes()
                .to_vec(),
            hex_of(t, "at_rest_key_hex")
        );
        let pk = master.pseudonym_key(&tenant, version, &seed);
        assert_eq!(pk.as_bytes().to_vec(), hex_of(t, "pseudonym_key_hex"));
        let employee = EmployeeId::new(str_of(t, "subject_of_employee")).unwrap();
        assert_eq!(pk.subject(&employee), str_of(t, "subject"));
    }
}

/// The flipped vectors differ from their own untampered seal in exactly
/// the bit their notes name, so an implementer who compares bytes is told
/// the truth.
#[test]
fn flipped_vectors_flip_the_bit_their_note_names() {
    let all = vectors();
    let master = MasterSecret::from_bytes(&hex_of(&all, "master_secret_hex")).unwrap();
    let by_name = |name: &str| {
        all["vectors"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("vector {name}"))
            .clone()
    };
    // (name, mask, words the note must hold); the index is checked below.
    let cases = [
        (
            "flipped-tag-bit",
            0x01,
            &["lowest bit", "last tag byte"][..],
        ),
        (
            "flipped-ciphertext-bit",
            0x80,
            &["highest bit (0x80)", "ciphertext byte N - 24", "len - 40"][..],
        ),
    ];
    for (name, mask, words) in cases {
        let v = by_name(name);
        let tenant = TenantId::new(str_of(&v, "tenant")).unwrap();
        let device = DeviceId::new(str_of(&v, "device")).unwrap();
        let version = v["key_version"].as_u64().unwrap() as u32;
        let employee = EmployeeId::new(str_of(&v, "employee")).unwrap();
        let key = master.device_key(&tenant, &employee, &device, version);
        let header = EnvelopeHeader {
            key_version: version,
            batch_id: hex_of(&v, "batch_id_hex").try_into().unwrap(),
            tenant,
            employee,
            device,
        };
        let nonce: [u8; 24] = hex_of(&v, "nonce_hex").try_into().unwrap();
        let payload = hex_of(&v, "payload_hex");
        let untampered = envelope::seal(&header, &key, &nonce, &payload);
        let sealed = hex_of(&v, "sealed_hex");
        assert_eq!(sealed.len(), untampered.len(), "{name}");
        let diffs: Vec<(usize, u8)> = sealed
            .iter()
            .zip(&untampered)
            .enumerate()
            .filter(|(_, (a, b))| a != b)
            .map(|(i, (a, b))| (i, a ^ b))
            .collect();
        // The envelope ends with the ciphertext (N bytes) and the 16-byte tag.
        let (len, n) = (sealed.len(), payload.len());
        let index = match name {
            "flipped-tag-bit" => len - 1,
            _ => {
                let ciphertext_start = len - 16 - n;
                assert_eq!(ciphertext_start + n - 24, len - 40);
                len - 40
            }
        };
        assert_eq!(diffs, vec![(index, mask)], "{name}");
        let note = str_of(&v, "note");
        for word in words {
            assert!(note.contains(word), "{name}: note {note:?} lacks {word:?}");
        }
    }
}

/// The accepted batch as log records of both layouts: each opens to the
/// batch the intake path decodes, and sealing the batch again with the
/// vector's nonces reproduces the records byte for byte, so a layout
/// cannot change without this file changing with it.
#[test]
fn log_records_of_both_layouts_open_and_reseal_byte_for_byte() {
    use candor_schemas::record::{RecordFormat, RecordMeta, open_record, seal_batch};

    let all = vectors();
    let master = MasterSecret::from_bytes(&hex_of(&all, "master_secret_hex")).unwrap();
    let keys = &all["tenant_keys"][0];
    let seed = TenantSeed::from_bytes(hex_of(keys, "seed_hex").try_into().unwrap());
    let received_at_ms = all["received_at_ms"].as_i64().unwrap();
    let sets = all["log_records"].as_array().expect("log_records");
    let mut formats: Vec<u64> = sets.iter().map(|s| s["format"].as_u64().unwrap()).collect();
    formats.sort();
    assert_eq!(formats, [1, 2], "one set of records per layout");
    for set in sets {
        let format = RecordFormat::from_version(set["format"].as_u64().unwrap() as u8).unwrap();
        let source = all["vectors"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == set["from_vector"])
            .expect("the batch's vector");
        let batch = decode_json(
            str_of(source, "plaintext_json").as_bytes(),
            &Limits::default(),
            received_at_ms,
        )
        .unwrap();
        let tenant = TenantId::new(str_of(set, "tenant")).unwrap();
        let version = set["key_version"].as_u64().unwrap() as u32;
        let meta = RecordMeta {
            employee: EmployeeId::new(str_of(set, "employee")).unwrap(),
            device: DeviceId::new(str_of(set, "device")).unwrap(),
            batch_id: hex_of(set, "batch_id_hex").try_into().unwrap(),
            received_at_ms: set["received_at_ms"].as_i64().unwrap(),
        };
        let key = master.at_rest_key(&tenant, version, &seed);
        assert_eq!(key.as_bytes().to_vec(), hex_of(keys, "at_rest_key_hex"));
        let records: Vec<Vec<u8>> = set["records_hex"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| hex::decode(r.as_str().unwrap()).unwrap())
            .collect();
        let mut nonces = set["nonces_hex"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| <[u8; 24]>::try_from(hex::decode(n.as_str().unwrap()).unwrap()).unwrap());
        let resealed = seal_batch(
            format,
            &tenant,
            &key,
            version,
            &meta,
            &batch.datasets,
            || nonces.next().expect("a nonce per record"),
        );
        assert_eq!(resealed, records, "{format:?}: sealed again byte for byte");

        let mut opened = Vec::new();
        for record in &records {
            let record = open_record(record, |t, v| {
                (t == &tenant && v == version).then(|| key.clone())
            })
            .unwrap_or_else(|e| panic!("{format:?}: {e}"));
            assert_eq!(record.meta, meta, "{format:?}: who and when");
            opened.extend(record.datasets);
        }
        // Version 1 batches carry who and when as schema metadata too:
        // the events are the columns.
        let events = |sets: &[(candor_schemas::datasets::Dataset, arrow::array::RecordBatch)]| {
            sets.iter()
                .map(|(d, e)| (*d, e.schema().fields().clone(), e.columns().to_vec()))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            events(&opened),
            events(&batch.datasets),
            "{format:?}: the batch's events"
        );
        let expected = if format == RecordFormat::V2 {
            1
        } else {
            batch.datasets.len()
        };
        assert_eq!(records.len(), expected, "{format:?}: records per batch");
    }
}
