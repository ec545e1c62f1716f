use super::*;

fn file(text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("candor.toml");
    std::fs::write(&path, text).unwrap();
    (dir, path)
}

fn error_of(text: &str, role: Role) -> String {
    let (_dir, path) = file(text);
    format!("{:#}", check_file(&path, role).unwrap_err())
}

#[test]
fn every_role_starts_valid_and_roles_differ_only_in_maintenance() {
    for role in [
        Role::Standalone,
        Role::Ingest,
        Role::Processor,
        Role::Query,
        Role::Operator,
    ] {
        Config::defaults(role).validate(role).unwrap();
    }
    let (mut one, many) = (
        Config::defaults(Role::Standalone),
        Config::defaults(Role::Processor),
    );
    assert_eq!(one.maintenance.retention_every_hours, 6);
    assert_eq!(many.maintenance.retention_every_hours, 0);
    one.maintenance = many.maintenance.clone();
    assert_eq!(one, many);
}

#[test]
fn a_file_overrides_defaults_and_prints_back_the_same() {
    let (_dir, path) = file(
        "data_dir = \"/srv/candor\"\n\
         [kafka]\nbrokers = \"k1:9092,k2:9092\"\nreplication_factor = 3\n\
         [kafka.properties]\n\"security.protocol\" = \"ssl\"\n\
         [processor]\nmax_records_per_flush = 500\n",
    );
    let config = check_file(&path, Role::Processor).unwrap();
    assert_eq!(config.kafka.replication_factor, 3);
    assert_eq!(config.kafka().replication_factor, 3);
    assert_eq!(config.kafka().extra["security.protocol"], "ssl");
    assert_eq!(config.processor.max_records_per_flush, 500);
    assert_eq!(config.lake_url(), "/srv/candor/lake");
    // What `config print` shows is itself a valid file, of the same settings.
    let (_dir2, printed) = file(&config.to_toml().unwrap());
    assert_eq!(
        check_file(&printed, Role::Processor).unwrap(),
        config.resolved()
    );
}

#[test]
fn an_unknown_key_is_refused_by_name() {
    let e = error_of("[kafka]\nbrokres = \"k:9092\"\n", Role::Ingest);
    assert!(e.contains("brokres"), "{e}");
    let e = error_of("retention_days = 3\n", Role::Standalone);
    assert!(e.contains("retention_days"), "{e}");
    let e = error_of("[lakes]\nurl = \"x\"\n", Role::Query);
    assert!(e.contains("lakes"), "{e}");
}

#[test]
fn a_wrong_type_is_refused_with_its_key() {
    let e = error_of("[ingest]\nmax_in_flight = \"many\"\n", Role::Ingest);
    assert!(e.contains("max_in_flight"), "{e}");
    let e = error_of("[ingest]\nlisten = \"localhost\"\n", Role::Ingest);
    assert!(e.contains("listen"), "{e}");
    let e = error_of("[kafka]\nacks = \"1\"\n", Role::Ingest);
    assert!(e.contains("acks"), "{e}");
}

#[test]
fn contradictions_are_refused() {
    let e = error_of("[kafka]\nacks = \"leader\"\n", Role::Ingest);
    assert!(e.contains("idempotence"), "{e}");
    // Without idempotence, leader acks are a choice the operator may make.
    let (_d, ok) = file("[kafka]\nacks = \"leader\"\nidempotence = false\n");
    check_file(&ok, Role::Ingest).unwrap();
    for managed in [
        "acks",
        "enable.idempotence",
        "group.id",
        "bootstrap.servers",
    ] {
        let e = error_of(
            &format!("[kafka.properties]\n\"{managed}\" = \"1\"\n"),
            Role::Processor,
        );
        assert!(e.contains(managed) && e.contains("manages"), "{e}");
    }
    let e = error_of("[tls]\ncert = \"c.pem\"\n", Role::Query);
    assert!(e.contains("tls.key"), "{e}");
    let e = error_of("[ingest]\nlisten = \"0.0.0.0:8080\"\n", Role::Ingest);
    assert!(e.contains("plain HTTP"), "{e}");
    let e = error_of(
        "[ingest]\nlisten = \"127.0.0.1:9000\"\n[query]\nlisten = \"127.0.0.1:9000\"\n",
        Role::Standalone,
    );
    assert!(e.contains("different"), "{e}");
    let e = error_of("[kafka]\nreplication_factor = 0\n", Role::Ingest);
    assert!(e.contains("replication_factor"), "{e}");
    let e = error_of("[query]\nsql_timeout_secs = 0\n", Role::Query);
    assert!(e.contains("query.sql_timeout_secs"), "{e}");
    let e = error_of("[query]\nsql_memory_bytes = 1000\n", Role::Query);
    assert!(e.contains("query.sql_memory_bytes"), "{e}");
}

#[test]
fn overrides_win_and_lists_take_commas() {
    let loaded = load(
        Role::Query,
        &Sources {
            overrides: vec![
                ("query.listen".into(), "127.0.0.1:0".into()),
                (
                    "query.extract_receiver_allow_hosts".into(),
                    "a.internal, b.internal".into(),
                ),
                (
                    "kafka.properties".into(),
                    "client.id=x,socket.timeout.ms=5".into(),
                ),
                // A name that looks like a number is still a name.
                ("processor.group".into(), "2026".into()),
            ],
            ..Sources::default()
        },
    )
    .unwrap();
    let c = loaded.config;
    assert_eq!(c.query.listen.port(), 0);
    assert_eq!(
        c.query.extract_receiver_allow_hosts,
        ["a.internal", "b.internal"]
    );
    assert_eq!(c.kafka.properties["socket.timeout.ms"], "5");
    assert_eq!(c.processor.group, "2026");
}

#[test]
fn print_redacts_secrets_of_the_passthrough() {
    let mut c = Config::defaults(Role::Ingest);
    c.kafka
        .properties
        .insert("sasl.password".into(), "hunter2".into());
    c.kafka
        .properties
        .insert("security.protocol".into(), "sasl_ssl".into());
    let text = c.to_toml().unwrap();
    assert!(!text.contains("hunter2"), "{text}");
    assert!(text.contains("sasl_ssl"), "{text}");
}

#[test]
fn every_legacy_variable_names_a_real_key() {
    // Each old name must land on a key the configuration has, or it
    // would be refused as unknown instead of mapped.
    for (name, key) in LEGACY_VARIABLES {
        let value = match *key {
            k if k.ends_with("listen") => "127.0.0.1:1",
            k if k.ends_with("url") || k.starts_with("kafka.") && !k.ends_with("_ms") => "x",
            "tls.cert" | "tls.key" => "x.pem",
            "tls.plain_http" => "true",
            _ => "1",
        };
        let value = match *key {
            "kafka.acks" => "all",
            "kafka.compression" => "none",
            "kafka.partitions" | "kafka.queue_max_messages" | "kafka.queue_max_kbytes" => "1",
            "kafka.properties" => "client.id=x",
            "query.extract_receiver_allow_hosts" => "receiver.internal",
            _ => value,
        };
        load(
            Role::Operator,
            &Sources {
                overrides: vec![(key.to_string(), value.to_string())],
                ..Sources::default()
            },
        )
        .unwrap_or_else(|e| panic!("{name} -> {key}: {e:#}"));
    }
}
