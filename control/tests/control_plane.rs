//! The control plane's operations against a local directory and a real
//! S3-compatible server: enrollment and revocation, the token lifecycle, key
//! rotation, crypto-shredding, concurrent writers, the audit chain, and a
//! node serving its last good copy while the store is unreachable.

use std::sync::Arc;
use std::time::Duration;

use candor_control::testkit::TestStore;
use candor_control::{
    Actor, Admin, AdminError, AuditLog, AuthError, CacheConfig, ControlCache, Directory,
    DocumentError, Finding, Kind, Member, Plan, Role, Tenant, TokenKind, TokenRequest,
    authenticate, authenticate_sign_in,
};
use candor_schemas::keys::MasterSecret;
use candor_schemas::record::{self, RecordMeta};
use candor_schemas::{DeviceId, EmployeeId, TenantId};
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};

fn master() -> MasterSecret {
    MasterSecret::from_bytes(&[42; 32]).unwrap()
}

fn admin_on(store: &TestStore) -> Admin {
    let audit = AuditLog::new(store.raw(), &TestStore::prefix(), master());
    Admin::new(store.documents(), Arc::new(audit), master())
}

fn cache_on(store: &TestStore) -> ControlCache {
    let config = CacheConfig {
        tokens: true,
        directory: true,
        // Look again at once on a miss (nodes wait a second between lookups).
        miss_retry: Duration::ZERO,
        ..CacheConfig::default()
    };
    ControlCache::new(
        store.documents(),
        master(),
        config,
        &prometheus::Registry::new(),
    )
}

fn tid(s: &str) -> TenantId {
    TenantId::new(s).unwrap()
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

async fn new_tenant(admin: &Admin, id: &str) -> TenantId {
    let tenant = Tenant::new(tid(id), Plan::Starter, "Europe/Berlin");
    admin
        .create_tenant(&Actor::operator(), &tenant)
        .await
        .unwrap();
    tid(id)
}

/// An actor for a token, as the HTTP layer builds it.
fn token_actor(tenant: &TenantId, role: Role) -> Actor {
    Actor {
        id: format!("tok-{role}"),
        role: Some(role),
        tenant: Some(tenant.clone()),
        source: "127.0.0.1".into(),
    }
}

fn request(name: &str, role: Role, employee: Option<&str>) -> TokenRequest {
    TokenRequest {
        name: name.into(),
        role,
        employee: employee.map(|e| EmployeeId::new(e).unwrap()),
        expires_at_ms: None,
        tenant: None,
    }
}

/// A sealed log record of `tenant`, sealed with its current key.
async fn sealed_record(cache: &ControlCache, tenant: &TenantId) -> (u32, Vec<u8>) {
    let view = cache.get(tenant).await.unwrap().unwrap();
    let keys = view.keys.clone().unwrap();
    let (version, key) = keys.current_at_rest();
    let schema = candor_schemas::datasets::Dataset::Activity.log_schema();
    let events = arrow::array::RecordBatch::new_empty(schema);
    let meta = RecordMeta {
        employee: EmployeeId::new("e1").unwrap(),
        device: DeviceId::new("d1").unwrap(),
        batch_id: [1; 16],
        received_at_ms: 0,
    };
    let sealed = record::seal_batch(
        record::RecordFormat::CURRENT,
        tenant,
        key,
        version,
        &meta,
        &[(candor_schemas::datasets::Dataset::Activity, events)],
        || [9; 24],
    )
    .remove(0);
    (version, sealed)
}

fn opens_with(view: &candor_control::TenantView, sealed: &[u8]) -> bool {
    record::open_record(sealed, |_, v| {
        view.keys.as_ref().and_then(|k| k.at_rest(v).cloned())
    })
    .is_ok()
}

async fn enrollment_and_revocation(store: TestStore) {
    let admin = admin_on(&store);
    let acme = new_tenant(&admin, "acme").await;
    let op = Actor::operator();
    let (e1, d1) = (EmployeeId::new("e1").unwrap(), DeviceId::new("d1").unwrap());

    let enrolled = admin.enroll_device(&op, &acme, &e1, &d1).await.unwrap();
    assert_eq!(enrolled.key_version, 1);
    // The returned key is the one ingest derives, so a batch sealed with it opens.
    let key = master().device_key(&acme, &e1, &d1, 1);
    assert_eq!(enrolled.device_key_hex, hex::encode(key.as_bytes()));
    // Nothing of the key is stored.
    let stored: Vec<_> = store.raw().list(None).try_collect().await.unwrap();
    for meta in &stored {
        let bytes = store
            .raw()
            .get(&meta.location)
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        assert!(
            !String::from_utf8_lossy(&bytes).contains(&enrolled.device_key_hex),
            "{} holds the device key",
            meta.location
        );
    }

    // A duplicate enrollment is refused and changes nothing.
    let other = EmployeeId::new("e2").unwrap();
    assert!(matches!(
        admin.enroll_device(&op, &acme, &other, &d1).await,
        Err(AdminError::AlreadyExists(_))
    ));
    let device = store
        .documents()
        .get::<candor_control::DeviceDoc>(Kind::Device, "acme/d1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!((device.version, device.doc.employee), (1, e1.clone()));

    let cache = cache_on(&store);
    let view = cache.get(&acme).await.unwrap().unwrap();
    assert!(!view.revocations.is_revoked(&d1, 1));

    admin.revoke_device(&op, &acme, &d1).await.unwrap();
    // The node sees it at its next refresh.
    cache.refresh_all().await.unwrap();
    let view = cache.get(&acme).await.unwrap().unwrap();
    assert!(view.revocations.is_revoked(&d1, 1));

    // Re-enrolling a revoked device gives the next key version, which verifies.
    let again = admin.enroll_device(&op, &acme, &e1, &d1).await.unwrap();
    assert_eq!(again.key_version, 2);
    cache.refresh_all().await.unwrap();
    let view = cache.get(&acme).await.unwrap().unwrap();
    assert!(view.revocations.is_revoked(&d1, 1) && !view.revocations.is_revoked(&d1, 2));

    assert!(matches!(
        admin
            .revoke_device(&op, &acme, &DeviceId::new("never").unwrap())
            .await,
        Err(AdminError::NotFound(_))
    ));
    // Only owners and admins of the tenant may enroll.
    for role in [
        Role::Hr,
        Role::Manager,
        Role::Employee,
        Role::Analyst,
        Role::Ai,
    ] {
        assert!(matches!(
            admin
                .enroll_device(
                    &token_actor(&acme, role),
                    &acme,
                    &e1,
                    &DeviceId::new("x").unwrap()
                )
                .await,
            Err(AdminError::Forbidden(_))
        ));
    }
    let globex = new_tenant(&admin, "globex").await;
    assert!(matches!(
        admin
            .enroll_device(
                &token_actor(&globex, Role::Owner),
                &acme,
                &e1,
                &DeviceId::new("x").unwrap()
            )
            .await,
        Err(AdminError::Forbidden(_))
    ));
}

async fn token_lifecycle(store: TestStore) {
    let admin = admin_on(&store);
    let acme = new_tenant(&admin, "acme").await;
    let cache = cache_on(&store);

    // The bootstrap owner token, made by the operator.
    let owner = admin
        .create_token(
            &Actor::operator(),
            &acme,
            &request("bootstrap", Role::Owner, None),
        )
        .await
        .unwrap();
    let p = authenticate(&cache, &owner.token, now_ms()).await.unwrap();
    assert_eq!((p.tenant.clone(), p.role), (acme.clone(), Role::Owner));

    // The owner makes an admin token; the admin cannot make owner tokens.
    let owner_actor = token_actor(&acme, Role::Owner);
    let admin_token = admin
        .create_token(&owner_actor, &acme, &request("ops", Role::Admin, None))
        .await
        .unwrap();
    // Created after the cache loaded the tenant: found by a reload on the miss.
    let p = authenticate(&cache, &admin_token.token, now_ms() + 2000).await;
    assert!(
        matches!(p, Ok(ref p) if p.role == Role::Admin),
        "a new token is found after a miss: {p:?}"
    );
    let before = admin.list_tokens(&owner_actor, &acme).await.unwrap();
    let admin_actor = token_actor(&acme, Role::Admin);
    assert!(matches!(
        admin
            .create_token(&admin_actor, &acme, &request("sneaky", Role::Owner, None))
            .await,
        Err(AdminError::Forbidden(_))
    ));
    // Bad requests: each a clear error, and nothing changes.
    let mut other_scope = request("x", Role::Analyst, None);
    other_scope.tenant = Some(tid("globex"));
    let mut past = request("x", Role::Analyst, None);
    past.expires_at_ms = Some(1);
    for bad in [
        request("m", Role::Manager, None),
        request("a", Role::Analyst, Some("e1")),
        request("", Role::Analyst, None),
        other_scope,
        past,
    ] {
        assert!(
            matches!(
                admin.create_token(&owner_actor, &acme, &bad).await,
                Err(AdminError::Invalid(_))
            ),
            "{bad:?}"
        );
    }
    assert!(
        serde_json::from_str::<TokenRequest>(r#"{"name":"x","role":"root"}"#).is_err(),
        "unknown roles do not parse"
    );
    assert_eq!(
        admin.list_tokens(&owner_actor, &acme).await.unwrap(),
        before
    );
    assert!(
        before.iter().all(|t| t.sha256.is_empty()),
        "listing shows no hashes"
    );

    // Expiry.
    let mut expiring = request("temp", Role::Employee, Some("e1"));
    expiring.expires_at_ms = Some(now_ms() + 60_000);
    let temp = admin
        .create_token(&owner_actor, &acme, &expiring)
        .await
        .unwrap();
    let p = authenticate(&cache, &temp.token, now_ms() + 5000)
        .await
        .unwrap();
    assert_eq!(p.employee, Some(EmployeeId::new("e1").unwrap()));
    assert!(matches!(
        authenticate(&cache, &temp.token, now_ms() + 61_000).await,
        Err(AuthError::Expired)
    ));

    // Revocation reaches a node at its next refresh.
    admin
        .revoke_token(&owner_actor, &acme, &admin_token.record.id)
        .await
        .unwrap();
    cache.refresh_all().await.unwrap();
    assert!(matches!(
        authenticate(&cache, &admin_token.token, now_ms()).await,
        Err(AuthError::Revoked)
    ));
    // An admin cannot revoke an owner token.
    assert!(matches!(
        admin
            .revoke_token(&admin_actor, &acme, &owner.record.id)
            .await,
        Err(AdminError::Forbidden(_))
    ));

    // Forged and foreign tokens.
    let forged = format!("candor.acme.{}", "ab".repeat(32));
    assert!(matches!(
        authenticate(&cache, &forged, now_ms()).await,
        Err(AuthError::Unknown)
    ));
    assert!(matches!(
        authenticate(&cache, "Bearer nonsense", now_ms()).await,
        Err(AuthError::Malformed)
    ));
    // A token of globex, relabelled as acme's, is not acme's.
    let globex = new_tenant(&admin, "globex").await;
    let g = admin
        .create_token(
            &Actor::operator(),
            &globex,
            &request("g", Role::Owner, None),
        )
        .await
        .unwrap();
    let relabelled = g.token.replace("candor.globex.", "candor.acme.");
    assert!(matches!(
        authenticate(&cache, &relabelled, now_ms() + 5000).await,
        Err(AuthError::Unknown)
    ));
    assert!(matches!(
        admin
            .list_tokens(&token_actor(&globex, Role::Owner), &acme)
            .await,
        Err(AdminError::Forbidden(_))
    ));
}

async fn rotation_keeps_old_data_readable(store: TestStore) {
    let admin = admin_on(&store);
    let acme = new_tenant(&admin, "acme").await;
    let cache = cache_on(&store);
    let (v1, old) = sealed_record(&cache, &acme).await;
    assert_eq!(v1, 1);
    let pseudonym_before = cache
        .get(&acme)
        .await
        .unwrap()
        .unwrap()
        .keys
        .clone()
        .unwrap();

    assert_eq!(
        admin.rotate_keys(&Actor::operator(), &acme).await.unwrap(),
        2
    );
    assert!(matches!(
        admin
            .rotate_keys(&token_actor(&acme, Role::Admin), &acme)
            .await,
        Err(AdminError::Forbidden(_))
    ));
    let view = cache.reload(&acme).await.unwrap().unwrap();
    let keys = view.keys.clone().unwrap();
    assert_eq!(keys.current_at_rest().0, 2);
    let (v2, new) = sealed_record(&cache, &acme).await;
    assert_eq!(v2, 2);
    assert!(opens_with(&view, &old), "old records stay readable");
    assert!(opens_with(&view, &new));
    assert_eq!(
        keys.pseudonym().as_bytes(),
        pseudonym_before.pseudonym().as_bytes(),
        "subjects stay the same across rotation"
    );
}

async fn crypto_shredding_makes_data_unreadable(store: TestStore) {
    let admin = admin_on(&store);
    let acme = new_tenant(&admin, "acme").await;
    let globex = new_tenant(&admin, "globex").await;
    admin.rotate_keys(&Actor::operator(), &acme).await.unwrap();
    let cache = cache_on(&store);
    let (_, sealed) = sealed_record(&cache, &acme).await;
    let (_, globex_sealed) = sealed_record(&cache, &globex).await;
    let employee = EmployeeId::new("e1").unwrap();
    let subject = cache
        .get(&acme)
        .await
        .unwrap()
        .unwrap()
        .keys
        .clone()
        .unwrap()
        .pseudonym()
        .subject(&employee);

    // Owners cannot; the operator can.
    assert!(matches!(
        admin
            .destroy_keys(&token_actor(&acme, Role::Owner), &acme)
            .await,
        Err(AdminError::Forbidden(_))
    ));
    assert_eq!(
        admin.destroy_keys(&Actor::operator(), &acme).await.unwrap(),
        2
    );

    // No version of the keyring is left in the store.
    let left: Vec<_> = store
        .raw()
        .list(Some(
            &TestStore::prefix()
                .join("_control")
                .join("keyrings")
                .join("acme"),
        ))
        .try_collect()
        .await
        .unwrap();
    assert!(left.is_empty(), "{left:?}");

    // A node that reloads has no keys, and nothing opens the old record,
    // not even new keys made from the same master secret.
    let view = cache.reload(&acme).await.unwrap().unwrap();
    assert!(view.keys.is_none());
    assert!(!opens_with(&view, &sealed));
    candor_control::keyring::create(&store.documents(), &master(), &acme, 0)
        .await
        .unwrap();
    let view = cache.reload(&acme).await.unwrap().unwrap();
    assert!(
        !opens_with(&view, &sealed),
        "new seeds do not bring old data back"
    );
    assert_ne!(
        view.keys.clone().unwrap().pseudonym().subject(&employee),
        subject,
        "old pseudonyms no longer link to the employee"
    );
    // Other tenants are untouched.
    let g = cache.reload(&globex).await.unwrap().unwrap();
    assert!(opens_with(&g, &globex_sealed));
    // And the destruction is audited.
    let entries = admin.audit_log().entries(&acme).await.unwrap();
    assert!(entries.iter().any(|e| e.event.action == "keys.destroy"));
}

async fn concurrent_admins_lose_nothing(store: TestStore) {
    let acme = new_tenant(&admin_on(&store), "acme").await;
    // Several nodes, each with its own audit head cache.
    let nodes: Vec<Arc<Admin>> = (0..4).map(|_| Arc::new(admin_on(&store))).collect();
    let op = Actor::operator();

    // Eight enrollments of one device: exactly one wins.
    let mut tasks = Vec::new();
    for i in 0..8 {
        let (node, op, acme) = (nodes[i % 4].clone(), op.clone(), acme.clone());
        tasks.push(tokio::spawn(async move {
            let e = EmployeeId::new(format!("e{i}")).unwrap();
            node.enroll_device(&op, &acme, &e, &DeviceId::new("shared").unwrap())
                .await
        }));
    }
    let mut won = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => won += 1,
            Err(AdminError::AlreadyExists(_)) => {}
            Err(e) => panic!("unexpected: {e}"),
        }
    }
    assert_eq!(won, 1);

    // Twelve token creations: all twelve are kept.
    let mut tasks = Vec::new();
    for i in 0..12 {
        let (node, op, acme) = (nodes[i % 4].clone(), op.clone(), acme.clone());
        tasks.push(tokio::spawn(async move {
            node.create_token(&op, &acme, &request(&format!("t{i}"), Role::Analyst, None))
                .await
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let tokens = nodes[0].list_tokens(&op, &acme).await.unwrap();
    assert_eq!(tokens.len(), 12);

    // Changes of two tenants interleaved on the same nodes: each node
    // appends to both chains at once (one audit lock per tenant).
    let globex = new_tenant(&admin_on(&store), "globex").await;
    let mut tasks = Vec::new();
    for i in 0..16 {
        let (node, op) = (nodes[i % 4].clone(), op.clone());
        let tenant = if i % 2 == 0 {
            acme.clone()
        } else {
            globex.clone()
        };
        tasks.push(tokio::spawn(async move {
            node.create_token(
                &op,
                &tenant,
                &request(&format!("x{i}"), Role::Analyst, None),
            )
            .await
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }

    // Every change has exactly one audit entry, written before it, and each
    // chain verifies. An enrollment that lost the race after its entry was
    // written is followed by `device.enroll.failed`.
    let audit = nodes[0].audit_log();
    let check = audit.verify(&globex).await.unwrap();
    assert_eq!(check.first_problem, None);
    let entries = audit.entries(&globex).await.unwrap();
    assert_eq!(check.verified as usize, entries.len());
    assert_eq!(
        entries
            .iter()
            .filter(|e| e.event.action == "token.create")
            .count(),
        8
    );
    let check = audit.verify(&acme).await.unwrap();
    assert_eq!(check.first_problem, None);
    let entries = audit.entries(&acme).await.unwrap();
    assert_eq!(check.verified as usize, entries.len());
    let count = |action: &str| entries.iter().filter(|e| e.event.action == action).count();
    assert_eq!(
        (
            count("tenant.create"),
            count("device.enroll") - count("device.enroll.failed"),
            count("token.create"),
            count("token.create.failed"),
        ),
        (1, 1, 20, 0)
    );
    // Each failed one names the entry it undoes, an enrollment, whose
    // device document was never written by it.
    for failed in entries
        .iter()
        .filter(|e| e.event.action == "device.enroll.failed")
    {
        let intent = failed.event.detail["intent_seq"].as_u64().unwrap();
        assert_eq!(entries[intent as usize - 1].event.action, "device.enroll");
    }
}

async fn audit_chain_shows_tampering(store: TestStore) {
    let admin = admin_on(&store);
    let acme = new_tenant(&admin, "acme").await;
    let op = Actor::operator();
    let raw = store.raw();
    let head_path = |seq: u64| {
        TestStore::prefix()
            .join("_audit")
            .join("acme")
            .join(format!("head-{seq:020}.json"))
    };
    let mut head4 = None;
    for i in 0..4 {
        admin
            .create_token(&op, &acme, &request(&format!("t{i}"), Role::Ai, None))
            .await
            .unwrap();
        if i == 2 {
            // The head as it was after entry 4, kept by someone with write
            // access to the bucket.
            head4 = Some(raw.get(&head_path(4)).await.unwrap().bytes().await.unwrap());
        }
    }
    let head4 = head4.unwrap();
    let audit = admin.audit_log();
    let ok = audit.verify(&acme).await.unwrap();
    assert_eq!((ok.verified, ok.first_problem.clone()), (5, None));

    let path = |seq: u64| {
        TestStore::prefix()
            .join("_audit")
            .join("acme")
            .join(format!("{seq:020}.json"))
    };
    let read = |p: Path| {
        let raw = raw.clone();
        async move { raw.get(&p).await.unwrap().bytes().await.unwrap() }
    };
    let original: Vec<_> = futures::future::join_all((1..=5).map(|s| read(path(s)))).await;
    let restore = || async {
        for (i, bytes) in original.iter().enumerate() {
            raw.put(&path(i as u64 + 1), bytes.clone().into())
                .await
                .unwrap();
        }
    };
    let first = |v: candor_control::Verification| v.first_problem;

    // Edited: a changed target.
    let edited = String::from_utf8(original[2].to_vec())
        .unwrap()
        .replace("\"target\": \"", "\"target\": \"x");
    raw.put(&path(3), edited.into_bytes().into()).await.unwrap();
    assert_eq!(
        first(audit.verify(&acme).await.unwrap()),
        Some(Finding::Edited { seq: 3 })
    );
    restore().await;

    // Missing: one in the middle deleted.
    raw.delete(&path(2)).await.unwrap();
    assert_eq!(
        first(audit.verify(&acme).await.unwrap()),
        Some(Finding::Missing { seq: 2 })
    );
    restore().await;

    // Reordered: two entries swapped.
    raw.put(&path(2), original[2].clone().into()).await.unwrap();
    raw.put(&path(3), original[1].clone().into()).await.unwrap();
    assert_eq!(
        first(audit.verify(&acme).await.unwrap()),
        Some(Finding::Reordered { seq: 2 })
    );
    restore().await;

    // Truncated: the last one deleted.
    raw.delete(&path(5)).await.unwrap();
    assert_eq!(
        first(audit.verify(&acme).await.unwrap()),
        Some(Finding::Truncated { last: 4, head: 5 })
    );
    restore().await;
    assert_eq!(first(audit.verify(&acme).await.unwrap()), None);

    // A chain rewritten without the master secret does not verify.
    let forger = AuditLog::new(
        raw.clone(),
        &TestStore::prefix(),
        MasterSecret::from_bytes(&[1; 32]).unwrap(),
    );
    assert_eq!(
        first(forger.verify(&acme).await.unwrap()),
        Some(Finding::Edited { seq: 1 })
    );

    // The head: one per chain, the older one deleted as it moves on.
    let heads: Vec<_> = raw
        .list(Some(&TestStore::prefix().join("_audit").join("acme")))
        .try_collect::<Vec<_>>()
        .await
        .unwrap()
        .into_iter()
        .filter(|m| m.location.filename().unwrap().starts_with("head"))
        .map(|m| m.location)
        .collect();
    assert_eq!(heads, [head_path(5)]);
    let head5 = read(head_path(5)).await;
    // Deleted while entries exist.
    raw.delete(&head_path(5)).await.unwrap();
    assert_eq!(
        first(audit.verify(&acme).await.unwrap()),
        Some(Finding::HeadMissing { last: 5 })
    );
    // An older head put back.
    raw.put(&head_path(4), head4.clone().into()).await.unwrap();
    assert_eq!(
        first(audit.verify(&acme).await.unwrap()),
        Some(Finding::HeadBehind { head: 4, last: 5 })
    );
    raw.delete(&head_path(4)).await.unwrap();
    // A head made without the master secret.
    let forged = serde_json::json!({"seq": 5, "mac": "ab".repeat(32)});
    raw.put(&head_path(5), serde_json::to_vec(&forged).unwrap().into())
        .await
        .unwrap();
    assert_eq!(
        first(audit.verify(&acme).await.unwrap()),
        Some(Finding::HeadForged { seq: 5 })
    );
    raw.put(&head_path(5), head5.clone().into()).await.unwrap();
    let checkpoint = AuditLog::new(raw.clone(), &TestStore::prefix(), master())
        .verify(&acme)
        .await
        .unwrap()
        .checkpoint
        .unwrap();
    assert_eq!(checkpoint.seq, 5);

    // The last entry cut AND the head rolled back with it: the store holds
    // exactly the chain as it was after entry 4, so a verifier that knows
    // nothing else finds nothing...
    raw.delete(&path(5)).await.unwrap();
    raw.delete(&head_path(5)).await.unwrap();
    raw.put(&head_path(4), head4.clone().into()).await.unwrap();
    let stranger = AuditLog::new(raw.clone(), &TestStore::prefix(), master());
    assert_eq!(first(stranger.verify(&acme).await.unwrap()), None);
    // ...but a checkpoint kept from an earlier verification shows it,
    assert_eq!(
        first(
            stranger
                .verify_against(&acme, Some(&checkpoint))
                .await
                .unwrap()
        ),
        Some(Finding::RolledBack { last: 4, seen: 5 })
    );
    // and so does the node that wrote entry 5.
    assert_eq!(
        first(audit.verify(&acme).await.unwrap()),
        Some(Finding::RolledBack { last: 4, seen: 5 })
    );
    // Entries appended after the cut make a chain that verifies alone, but
    // not against what was seen before.
    let event = candor_control::AuditEvent {
        actor: "x".into(),
        role: "operator".into(),
        action: "tenant.update".into(),
        target: "acme".into(),
        source: "cli".into(),
        detail: serde_json::Value::Null,
    };
    stranger.append(&acme, event, now_ms()).await.unwrap();
    assert_eq!(first(stranger.verify(&acme).await.unwrap()), None);
    assert_eq!(
        first(
            stranger
                .verify_against(&acme, Some(&checkpoint))
                .await
                .unwrap()
        ),
        Some(Finding::Diverged { seq: 5 })
    );
    // And the node that knew entry 5 appends after it, which breaks the
    // chain for everyone.
    admin
        .create_token(&op, &acme, &request("late", Role::Ai, None))
        .await
        .unwrap();
    assert_eq!(
        first(stranger.verify(&acme).await.unwrap()),
        Some(Finding::Reordered { seq: 6 })
    );
}

async fn bad_documents_change_nothing(store: TestStore) {
    let admin = admin_on(&store);
    let acme = new_tenant(&admin, "acme").await;
    let op = Actor::operator();
    let mut directory = Directory::default();
    directory.employees.insert(
        EmployeeId::new("e1").unwrap(),
        Member {
            department: "Sales".into(),
            manages: Default::default(),
        },
    );
    assert_eq!(
        admin
            .load_directory(&op, &acme, &directory, None)
            .await
            .unwrap(),
        1
    );

    // Too large: ~300k employees is more than 16 MiB.
    let mut huge = Directory::default();
    for i in 0..300_000 {
        huge.employees.insert(
            EmployeeId::new(format!("employee-{i:08}")).unwrap(),
            Member {
                department: "A department with a long name".into(),
                manages: Default::default(),
            },
        );
    }
    assert!(matches!(
        admin.load_directory(&op, &acme, &huge, None).await,
        Err(AdminError::Document(DocumentError::TooLarge { .. }))
    ));
    // Invalid: a department with a newline; a stale expected version.
    let mut bad = directory.clone();
    bad.employees.values_mut().next().unwrap().department = "a\nb".into();
    assert!(matches!(
        admin.load_directory(&op, &acme, &bad, None).await,
        Err(AdminError::Invalid(_))
    ));
    assert!(matches!(
        admin.load_directory(&op, &acme, &directory, Some(7)).await,
        Err(AdminError::Conflict(_))
    ));
    let mut bad_tenant = Tenant::new(acme.clone(), Plan::Free, "Mars/Base");
    assert!(matches!(
        admin.update_tenant(&op, &bad_tenant, None).await,
        Err(AdminError::Invalid(_))
    ));
    // An admin may not move the lake or change the plan.
    bad_tenant.time_zone = "Europe/Berlin".into();
    assert!(matches!(
        admin
            .update_tenant(&token_actor(&acme, Role::Admin), &bad_tenant, None)
            .await,
        Err(AdminError::Forbidden(_))
    ));
    let current = admin.get_directory(&op, &acme).await.unwrap();
    assert_eq!((current.version, current.doc), (1, directory));
    let tenant = admin.get_tenant(&op, &acme).await.unwrap();
    assert_eq!((tenant.version, tenant.doc.plan), (1, Plan::Starter));
    assert!(matches!(
        admin
            .create_tenant(&op, &Tenant::new(acme.clone(), Plan::Free, "UTC"))
            .await,
        Err(AdminError::AlreadyExists(_))
    ));

    // A malformed document in the store: a node refuses it with a clear error.
    let raw = store.raw();
    let path = TestStore::prefix()
        .join("_control")
        .join("tenants")
        .join("broken")
        .join(format!("{:020}.json", 1));
    raw.put(&path, b"{not json".to_vec().into()).await.unwrap();
    let cache = cache_on(&store);
    let err = cache.get(&tid("broken")).await.unwrap_err();
    assert!(err.to_string().contains("not valid"), "{err}");
}

/// Every object of the store, with its content.
async fn snapshot(raw: &Arc<dyn ObjectStore>) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let listed: Vec<_> = raw.list(None).try_collect().await.unwrap();
    for meta in listed {
        let bytes = raw
            .get(&meta.location)
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        out.push((meta.location.to_string(), bytes.to_vec()));
    }
    out.sort();
    out
}

/// The audit trail's store is cut off (a proxy in front of the S3 server):
/// no admin change is applied, each is refused as `Audit`, and the control
/// documents are byte for byte what they were. Once the trail is back, the
/// same changes go through, each with its entry.
async fn changes_that_cannot_be_audited_are_not_made(store: TestStore) {
    let proxy =
        candor_control::testkit::TcpProxy::start(&candor_control::testkit::s3_endpoint()).await;
    let audit = AuditLog::new(
        candor_control::testkit::s3_client(&proxy.endpoint(), "audit-cut"),
        &TestStore::prefix(),
        master(),
    );
    let admin = Admin::new(store.documents(), Arc::new(audit), master());
    let acme = new_tenant(&admin, "acme").await;
    let owner = token_actor(&acme, Role::Owner);
    let (e1, d1) = (EmployeeId::new("e1").unwrap(), DeviceId::new("d1").unwrap());
    admin.enroll_device(&owner, &acme, &e1, &d1).await.unwrap();
    let mut directory = Directory::default();
    directory.employees.insert(
        e1.clone(),
        Member {
            department: "Sales".into(),
            manages: Default::default(),
        },
    );
    let mut tenant = admin.get_tenant(&owner, &acme).await.unwrap().doc;
    tenant.extract_k = 7;

    proxy.cut();
    let before = snapshot(&store.raw()).await;
    let refused = |what: &str, r: Result<(), AdminError>| match r {
        Err(AdminError::Audit(_)) => {}
        other => panic!("{what}: {other:?}"),
    };
    refused(
        "token",
        admin
            .create_token(&owner, &acme, &request("bi", Role::Analyst, None))
            .await
            .map(drop),
    );
    refused(
        "directory",
        admin
            .load_directory(&owner, &acme, &directory, None)
            .await
            .map(drop),
    );
    refused(
        "enroll",
        admin
            .enroll_device(&owner, &acme, &e1, &DeviceId::new("d2").unwrap())
            .await
            .map(drop),
    );
    refused(
        "revoke",
        admin.revoke_device(&owner, &acme, &d1).await.map(drop),
    );
    refused(
        "tenant",
        admin.update_tenant(&owner, &tenant, None).await.map(drop),
    );
    refused("cancel", admin.cancel_tenant(&owner, &acme).await.map(drop));
    refused("rotate", admin.rotate_keys(&owner, &acme).await.map(drop));
    refused(
        "destroy",
        admin
            .destroy_keys(&Actor::operator(), &acme)
            .await
            .map(drop),
    );
    assert!(
        snapshot(&store.raw()).await == before,
        "a change was made though it could not be audited"
    );
    assert!(admin.list_tokens(&owner, &acme).await.unwrap().is_empty());
    assert_eq!(admin.get_directory(&owner, &acme).await.unwrap().version, 0);

    proxy.restore();
    admin
        .create_token(&owner, &acme, &request("bi", Role::Analyst, None))
        .await
        .unwrap();
    assert_eq!(
        admin
            .load_directory(&owner, &acme, &directory, None)
            .await
            .unwrap(),
        1
    );
    let check = admin.audit_log().verify(&acme).await.unwrap();
    assert_eq!(check.first_problem, None);
    let actions: Vec<String> = admin
        .audit_log()
        .entries(&acme)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.event.action)
        .collect();
    assert_eq!(
        actions,
        [
            "tenant.create",
            "device.enroll",
            "token.create",
            "directory.load"
        ]
    );
}

/// Cancellation is the owner's, stamped by the server, and reversible: an
/// ordinary replacement of the tenant document cannot touch it (not even
/// the operator's), an admin cannot cancel, an owner's cancellation is
/// "now", its owners can still read the tenant and reinstate it, and
/// other tokens stop working until then.
async fn cancellation_is_the_owners_stamped_now_and_reversible(store: TestStore) {
    let admin = admin_on(&store);
    let acme = new_tenant(&admin, "acme").await;
    let cache = cache_on(&store);
    let op = Actor::operator();
    let owner = admin
        .create_token(&op, &acme, &request("owner", Role::Owner, None))
        .await
        .unwrap();
    let ops = admin
        .create_token(&op, &acme, &request("ops", Role::Admin, None))
        .await
        .unwrap();
    let (owner_actor, admin_actor) = (
        token_actor(&acme, Role::Owner),
        token_actor(&acme, Role::Admin),
    );

    // A back-dated cancellation through the document is refused, for
    // everyone, and changes nothing.
    let mut doc = admin.get_tenant(&op, &acme).await.unwrap().doc;
    doc.cancelled_at_ms = Some(1);
    for actor in [&admin_actor, &owner_actor, &op] {
        assert!(
            matches!(
                admin.update_tenant(actor, &doc, None).await,
                Err(AdminError::CancellationIsSeparate { .. })
            ),
            "{actor:?}"
        );
    }
    let mut cancelled = Tenant::new(tid("initech"), Plan::Free, "UTC");
    cancelled.cancelled_at_ms = Some(1);
    assert!(matches!(
        admin.create_tenant(&op, &cancelled).await,
        Err(AdminError::Invalid(_))
    ));
    // An admin may not cancel; other roles neither.
    for role in [Role::Admin, Role::Hr, Role::Analyst] {
        assert!(matches!(
            admin.cancel_tenant(&token_actor(&acme, role), &acme).await,
            Err(AdminError::Forbidden(_))
        ));
    }
    let current = admin.get_tenant(&op, &acme).await.unwrap();
    assert_eq!((current.version, current.doc.cancelled_at_ms), (1, None));

    // The owner cancels: the time is the server's.
    let before = now_ms();
    let done = admin.cancel_tenant(&owner_actor, &acme).await.unwrap();
    let at = done.doc.cancelled_at_ms.unwrap();
    assert!((before..=now_ms()).contains(&at), "{at}");
    assert!(matches!(
        admin.cancel_tenant(&owner_actor, &acme).await,
        Err(AdminError::Conflict(_))
    ));
    // Once cancelled, a replacement must still carry that time.
    let mut doc = done.doc.clone();
    doc.cancelled_at_ms = Some(1);
    assert!(matches!(
        admin.update_tenant(&op, &doc, None).await,
        Err(AdminError::CancellationIsSeparate { .. })
    ));
    cache.reload(&acme).await.unwrap();
    for token in [&owner.token, &ops.token] {
        assert!(matches!(
            authenticate(&cache, token, now_ms()).await,
            Err(AuthError::TenantInactive)
        ));
    }
    // Only the owner gets through to the reinstatement.
    let p = candor_control::authenticate_owner_of_cancelled(&cache, &owner.token, now_ms())
        .await
        .unwrap();
    assert_eq!(p.role, Role::Owner);
    assert!(matches!(
        candor_control::authenticate_owner_of_cancelled(&cache, &ops.token, now_ms()).await,
        Err(AuthError::TenantInactive)
    ));
    assert!(matches!(
        admin.reinstate_tenant(&admin_actor, &acme).await,
        Err(AdminError::Forbidden(_))
    ));
    let back = admin.reinstate_tenant(&owner_actor, &acme).await.unwrap();
    assert_eq!(back.doc.cancelled_at_ms, None);
    assert!(matches!(
        admin.reinstate_tenant(&owner_actor, &acme).await,
        Err(AdminError::Conflict(_))
    ));
    cache.reload(&acme).await.unwrap();
    assert_eq!(
        authenticate(&cache, &ops.token, now_ms())
            .await
            .unwrap()
            .role,
        Role::Admin
    );
    // Both are in the trail, by the owner, with the server's time.
    let entries = admin.audit_log().entries(&acme).await.unwrap();
    let cancel = entries
        .iter()
        .find(|e| e.event.action == "tenant.cancel")
        .unwrap();
    assert_eq!(
        (
            cancel.event.role.as_str(),
            cancel.event.detail["cancelled_at_ms"].as_i64()
        ),
        ("owner", Some(at))
    );
    assert!(entries.iter().any(|e| e.event.action == "tenant.reinstate"));
    assert!(!entries.iter().any(|e| e.event.action.ends_with(".failed")));
}

/// Portal sessions: opened with a token, of its role and employee, ended by
/// signing out or with the token they were opened with; sign-in links open
/// one session only and are good for nothing else.
async fn sessions_and_sign_in_links(store: TestStore) {
    let admin = admin_on(&store);
    let acme = new_tenant(&admin, "acme").await;
    let cache = cache_on(&store);
    let owner_actor = token_actor(&acme, Role::Owner);
    let employee = admin
        .create_token(
            &owner_actor,
            &acme,
            &request("e1", Role::Employee, Some("e1")),
        )
        .await
        .unwrap();
    let p = authenticate_sign_in(&cache, &employee.token, now_ms())
        .await
        .unwrap();
    let actor = Actor {
        id: p.token_id.clone(),
        role: Some(p.role),
        tenant: Some(acme.clone()),
        source: "127.0.0.1".into(),
    };
    let session = admin.open_session(&actor, &p).await.unwrap();
    let s = authenticate(&cache, &session.token, now_ms() + 2000)
        .await
        .unwrap();
    assert_eq!(
        (s.role, s.employee.clone(), s.kind),
        (Role::Employee, p.employee.clone(), TokenKind::Session)
    );
    let expires = session.record.expires_at_ms.unwrap();
    assert!(expires <= now_ms() + 8 * 3600 * 1000);
    assert!(matches!(
        authenticate(&cache, &session.token, expires).await,
        Err(AuthError::Expired)
    ));
    // A session opens no other.
    assert!(matches!(
        authenticate_sign_in(&cache, &session.token, now_ms()).await,
        Err(AuthError::SessionEnded)
    ));
    // Another caller of the tenant cannot end it; the session itself can.
    let other = token_actor(&acme, Role::Employee);
    assert!(matches!(
        admin.end_session(&other, &acme, &session.record.id).await,
        Err(AdminError::Forbidden(_))
    ));
    let session_actor = Actor {
        id: session.record.id.clone(),
        ..actor.clone()
    };
    // end_session ends sessions only.
    assert!(matches!(
        admin
            .end_session(&owner_actor, &acme, &employee.record.id)
            .await,
        Err(AdminError::NotFound(_))
    ));
    admin
        .end_session(&session_actor, &acme, &session.record.id)
        .await
        .unwrap();
    cache.refresh_all().await.unwrap();
    assert!(matches!(
        authenticate(&cache, &session.token, now_ms()).await,
        Err(AuthError::Revoked)
    ));
    // Revoking the token a session was opened with ends the session.
    let second = admin.open_session(&actor, &p).await.unwrap();
    admin
        .revoke_token(&owner_actor, &acme, &employee.record.id)
        .await
        .unwrap();
    cache.refresh_all().await.unwrap();
    assert!(matches!(
        authenticate(&cache, &second.token, now_ms()).await,
        Err(AuthError::SessionEnded)
    ));

    // A sign-in link: refused as a bearer token, opens one session.
    let link = admin
        .create_sign_in_link(
            &Actor::operator(),
            &acme,
            &request("link", Role::Owner, None),
        )
        .await
        .unwrap();
    assert!(link.record.expires_at_ms.unwrap() <= now_ms() + 15 * 60 * 1000);
    assert!(matches!(
        authenticate(&cache, &link.token, now_ms() + 2000).await,
        Err(AuthError::SignInLinkOnly)
    ));
    let l = authenticate_sign_in(&cache, &link.token, now_ms())
        .await
        .unwrap();
    let link_actor = Actor {
        id: l.token_id.clone(),
        ..owner_actor.clone()
    };
    let from_link = admin.open_session(&link_actor, &l).await.unwrap();
    assert!(matches!(
        admin.open_session(&link_actor, &l).await,
        Err(AdminError::Forbidden(_))
    ));
    cache.refresh_all().await.unwrap();
    assert!(matches!(
        authenticate_sign_in(&cache, &link.token, now_ms()).await,
        Err(AuthError::LinkUsed)
    ));
    let s = authenticate(&cache, &from_link.token, now_ms())
        .await
        .unwrap();
    assert_eq!(s.role, Role::Owner);
    // Sessions are in the audit trail (the second use of the link as an
    // intent and its failure), and listed with the tokens.
    let entries = admin.audit_log().entries(&acme).await.unwrap();
    let actions: Vec<&str> = entries.iter().map(|e| e.event.action.as_str()).collect();
    let count = |action: &str| actions.iter().filter(|a| **a == action).count();
    assert_eq!(
        (count("session.open"), count("session.open.failed")),
        (4, 1)
    );
    assert_eq!(count("session.end"), 1);
    let listed = admin.list_tokens(&owner_actor, &acme).await.unwrap();
    assert!(
        listed
            .iter()
            .any(|t| t.id == from_link.record.id && t.kind == TokenKind::Session)
    );
}

candor_control::on_both_stores!(
    changes_that_cannot_be_audited_are_not_made,
    cancellation_is_the_owners_stamped_now_and_reversible,
    enrollment_and_revocation,
    token_lifecycle,
    sessions_and_sign_in_links,
    rotation_keeps_old_data_readable,
    crypto_shredding_makes_data_unreadable,
    concurrent_admins_lose_nothing,
    audit_chain_shows_tampering,
    bad_documents_change_nothing,
);

/// A node keeps serving its last good copy while S3 is unreachable (a proxy
/// in front of the real server is cut), says so in readiness, and recovers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_good_copy_while_the_store_is_unreachable() {
    let proxy =
        candor_control::testkit::TcpProxy::start(&candor_control::testkit::s3_endpoint()).await;
    let raw = candor_control::testkit::s3_client(&proxy.endpoint(), "outage");
    let store = TestStore::S3(raw);
    let admin = admin_on(&store);
    let acme = new_tenant(&admin, "acme").await;
    let config = CacheConfig {
        stale_after: Duration::from_secs(3600),
        ..CacheConfig::default()
    };
    let cache = ControlCache::new(
        store.documents(),
        master(),
        config,
        &prometheus::Registry::new(),
    );
    cache.get(&acme).await.unwrap().unwrap();
    cache.refresh_all().await.unwrap();
    assert!(cache.readiness().ready);

    proxy.cut();
    assert!(cache.refresh_all().await.is_err());
    let view = cache.get(&acme).await.unwrap();
    assert!(
        view.is_some_and(|v| v.keys.is_some()),
        "the last good copy still serves"
    );
    let r = cache.readiness();
    assert!(r.ready, "within stale_after: {r:?}");
    assert!(r.detail.contains("last good copy"), "{r:?}");
    // An unknown tenant cannot be looked up meanwhile: a clear error.
    assert!(cache.get(&tid("globex")).await.is_err());

    proxy.restore();
    cache.refresh_all().await.unwrap();
    assert_eq!(cache.readiness().detail, "control plane: fresh");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_older_than_the_limit_is_not_ready() {
    let proxy =
        candor_control::testkit::TcpProxy::start(&candor_control::testkit::s3_endpoint()).await;
    let store = TestStore::S3(candor_control::testkit::s3_client(
        &proxy.endpoint(),
        "stale",
    ));
    let config = CacheConfig {
        stale_after: Duration::ZERO,
        ..CacheConfig::default()
    };
    let cache = ControlCache::new(
        store.documents(),
        master(),
        config,
        &prometheus::Registry::new(),
    );
    cache.refresh_all().await.unwrap();
    proxy.cut();
    assert!(cache.refresh_all().await.is_err());
    assert!(!cache.readiness().ready);
}
