//! Retention on a real lake directory and control plane: expired date
//! partitions are deleted from the Delta tables per tenant plan, their
//! bytes vacuumed at once, a cancelled tenant is purged
//! after its grace period, each deletion is in the tenant's audit trail
//! (which still verifies), and a second run finds nothing more to do. A
//! tenant with a lake of its own (on a real S3-compatible server) has its
//! partitions deleted there. A cancellation's grace is counted from the
//! time the server stamped, and one that cannot be back-dated.

mod common;

use std::collections::BTreeSet;

use candor_control::testkit::{TcpProxy, s3_client};
use candor_control::{Actor, AdminError, AuditLog, Kind, Plan, Tenant};
use candor_lake::jobs::retention::{self, RetentionConfig};
use candor_lake::{Lake, Lakes};
use candor_schemas::TenantId;
use chrono::{Days, NaiveDate, Utc};
use common::{Control, random_master};
use futures::TryStreamExt;
use object_store::path::Path as ObjectPath;

const DAY_MS: i64 = 86_400_000;

/// A tenant as the cancel operation leaves it, cancelled at `at_ms`: to
/// stand for a cancellation long ago, its document is written straight to
/// the store (the admin operations stamp the present).
async fn create_cancelled(control: &Control, tenant: Tenant, at_ms: i64) {
    control.create(tenant.clone()).await;
    let cancelled = Tenant {
        cancelled_at_ms: Some(at_ms),
        ..tenant
    };
    control
        .store
        .documents()
        .update(Kind::Tenant, cancelled.id.as_str(), 1, &cancelled)
        .await
        .unwrap();
}

async fn put(lake: &Lake, dataset: &str, tenant: &str, date: NaiveDate) -> String {
    common::lake::put_committed(lake, dataset, tenant, date).await
}

async fn all_objects(lake: &Lake) -> BTreeSet<String> {
    lake.store()
        .list(None)
        .map_ok(|m| m.location.to_string())
        .try_collect()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_partitions_and_cancelled_tenants_go_and_each_deletion_is_audited() {
    let master = random_master();
    let control = Control::local_with(&master, &["acme"]).await; // starter: 30 days
    let now_ms = Utc::now().timestamp_millis();
    // Initech's lake is its own, on S3 (data residency).
    let (bucket, store) = candor_control::testkit::fresh_named_bucket("initech");
    let initech_location = format!("s3://{bucket}/lake");
    control
        .create(Tenant {
            lake_url: Some(initech_location.clone()),
            ..Tenant::new(TenantId::new("initech").unwrap(), Plan::Free, "UTC") // 7 days
        })
        .await;
    create_cancelled(
        &control,
        Tenant::new(TenantId::new("globex").unwrap(), Plan::Enterprise, "UTC"),
        now_ms - 40 * DAY_MS,
    )
    .await;
    // Cancelled, but still within the 30-day grace period.
    create_cancelled(
        &control,
        Tenant::new(TenantId::new("hooli").unwrap(), Plan::Enterprise, "UTC"),
        now_ms - 10 * DAY_MS,
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let lake = Lake::local(dir.path()).unwrap();
    let initech_lake = Lake::on_store(store, &initech_location).unwrap();
    let lakes = Lakes::from(lake.clone())
        .with_lake(&initech_location, initech_lake.clone())
        .unwrap();
    let today = Utc::now().date_naive();
    let ago = |days| today - Days::new(days);

    let acme_expired = put(&lake, "activity", "acme", ago(31)).await;
    let acme_expired_apps = put(&lake, "app_usage", "acme", ago(45)).await;
    let acme_kept = put(&lake, "activity", "acme", ago(30)).await;
    let initech_expired = put(&initech_lake, "gps", "initech", ago(8)).await;
    let initech_kept = put(&initech_lake, "gps", "initech", ago(7)).await;
    // Initech's rows left in the deployment's lake from before it moved
    // expire there too.
    let initech_left_behind = put(&lake, "gps", "initech", ago(8)).await;
    let globex_purged = put(&lake, "activity", "globex", ago(1)).await;
    let hooli_kept = put(&lake, "activity", "hooli", ago(1)).await;
    // The processors' own state is not a dataset and is never touched.
    lake.put_durable(
        &ObjectPath::from("_candor/processor_state/kept.parquet"),
        b"{}".to_vec().into(),
    )
    .await
    .unwrap();

    let (store, prefix) = (
        control.store.raw(),
        candor_control::testkit::TestStore::prefix(),
    );
    let audit = AuditLog::new(store, &prefix, master.clone());
    let docs = control.store.documents();
    let config = RetentionConfig::default();
    let done = retention::run(&lakes, &docs, &audit, &config, now_ms)
        .await
        .unwrap();
    assert_eq!(done.skipped, 0, "{done:?}");
    let deleted = done.deleted;
    let gone: BTreeSet<_> = deleted
        .iter()
        .map(|d| format!("{}/{}/{}", d.tenant, d.dataset.name(), d.date))
        .collect();
    assert_eq!(
        gone,
        BTreeSet::from([
            format!("acme/activity/{}", ago(31)),
            format!("acme/app_usage/{}", ago(45)),
            format!("globex/activity/{}", ago(1)),
            format!("initech/gps/{}", ago(8)),
        ])
    );
    assert_eq!(
        deleted.len(),
        5,
        "initech's partition in each lake: {deleted:?}"
    );
    assert!(deleted.iter().all(|d| d.objects == 1 && d.bytes > 0));
    let left = all_objects(&lake).await;
    for path in [
        &acme_expired,
        &acme_expired_apps,
        &globex_purged,
        &initech_left_behind,
    ] {
        assert!(!left.contains(path.as_str()), "{path} survived");
    }
    for path in [&acme_kept, &hooli_kept] {
        assert!(left.contains(path.as_str()), "{path} was deleted");
    }
    let left_in_initechs = all_objects(&initech_lake).await;
    assert!(!left_in_initechs.contains(initech_expired.as_str()));
    assert!(left_in_initechs.contains(initech_kept.as_str()));
    assert!(left.contains("_candor/processor_state/kept.parquet"));
    assert!(
        !dir.path()
            .join(format!("activity/tenant=acme/date={}", ago(31)))
            .exists(),
        "an emptied partition leaves no folder"
    );

    // Each deletion is in its tenant's trail, with what it removed.
    let acme = TenantId::new("acme").unwrap();
    let entries = audit.entries(&acme).await.unwrap();
    let retention_entries: Vec<_> = entries
        .iter()
        .filter(|e| e.event.action == "lake.retention")
        .collect();
    assert_eq!(retention_entries.len(), 2);
    assert!(retention_entries.iter().any(|e| e.event.target
        == format!("activity/tenant=acme/date={}", ago(31))
        && e.event.detail["objects"] == 1
        && e.event.detail["bytes"].as_u64() > Some(0)));
    let globex = TenantId::new("globex").unwrap();
    assert!(
        audit
            .entries(&globex)
            .await
            .unwrap()
            .iter()
            .any(|e| e.event.action == "lake.purge")
    );
    assert!(audit.verify(&acme).await.unwrap().first_problem.is_none());

    // A second run has nothing left to delete and records nothing.
    let again = retention::run(&lakes, &docs, &audit, &config, now_ms)
        .await
        .unwrap();
    assert!(again.deleted.is_empty(), "{again:?}");
    assert_eq!(audit.entries(&acme).await.unwrap().len(), entries.len());
}

/// An expired partition goes with every object in its folder, whether the
/// table names it (a compaction's replaced file, a flush that never
/// committed) or not; and a partition an interrupted run deleted from the
/// table, leaving its files, is recorded and deleted by the next run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_partition_goes_with_every_object_in_its_folder() {
    let master = random_master();
    let control = Control::local_with(&master, &["acme"]).await; // starter: 30 days
    let dir = tempfile::tempdir().unwrap();
    let lake = Lake::local(dir.path()).unwrap();
    let today = Utc::now().date_naive();
    let folder = |days: u64| format!("activity/tenant=acme/date={}", today - Days::new(days));
    let orphan =
        |days: u64| ObjectPath::from(format!("{}/part-never-committed.parquet", folder(days)));
    put(&lake, "activity", "acme", today - Days::new(40)).await;
    put(&lake, "activity", "acme", today - Days::new(10)).await;
    for days in [40, 10] {
        lake.put_durable(&orphan(days), b"rows".to_vec().into())
            .await
            .unwrap();
    }
    // A run stopped after its DELETE of day 50 committed: the file stays.
    let interrupted = put(&lake, "activity", "acme", today - Days::new(50)).await;
    let mut table = candor_lake::DatasetTable::open(&lake, candor_schemas::Dataset::Activity)
        .await
        .unwrap();
    table
        .delete_rows(&format!(
            "tenant = 'acme' AND date = '{}'",
            today - Days::new(50)
        ))
        .await
        .unwrap();
    assert!(all_objects(&lake).await.contains(interrupted.as_str()));

    let (store, prefix) = (
        control.store.raw(),
        candor_control::testkit::TestStore::prefix(),
    );
    let audit = AuditLog::new(store, &prefix, master.clone());
    let docs = control.store.documents();
    let lakes = Lakes::from(lake.clone());
    let now_ms = Utc::now().timestamp_millis();
    let config = RetentionConfig::default();
    let done = retention::run(&lakes, &docs, &audit, &config, now_ms)
        .await
        .unwrap();
    let mut gone: Vec<_> = done.deleted.iter().map(|d| (d.date, d.objects)).collect();
    gone.sort();
    assert_eq!(
        gone,
        vec![(today - Days::new(50), 1), (today - Days::new(40), 1)],
        "{done:?}"
    );
    for days in [50, 40] {
        assert!(
            !dir.path().join(folder(days)).exists(),
            "day {days} left a folder"
        );
    }
    let left = all_objects(&lake).await;
    assert!(
        left.contains(orphan(10).as_ref()),
        "a kept partition keeps its objects"
    );
    assert_eq!(
        left.iter().filter(|o| o.starts_with(&folder(10))).count(),
        2
    );
    let acme = TenantId::new("acme").unwrap();
    let entries = audit.entries(&acme).await.unwrap();
    let recorded: Vec<_> = entries
        .iter()
        .filter(|e| e.event.action == "lake.retention")
        .map(|e| (e.event.target.clone(), e.event.detail["in_table"].clone()))
        .collect();
    assert_eq!(
        recorded,
        vec![
            (folder(50), serde_json::json!(false)),
            (folder(40), serde_json::json!(true)),
        ]
    );
    let again = retention::run(&lakes, &docs, &audit, &config, now_ms)
        .await
        .unwrap();
    assert!(again.deleted.is_empty(), "{again:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_deleted_when_the_deletion_cannot_be_audited() {
    let master = random_master();
    let control = Control::local_with(&master, &["acme"]).await; // starter: 30 days
    let dir = tempfile::tempdir().unwrap();
    let lake = Lake::local(dir.path()).unwrap();
    let expired = put(
        &lake,
        "activity",
        "acme",
        Utc::now().date_naive() - Days::new(40),
    )
    .await;
    // The audit trail's store is out of reach.
    let proxy = TcpProxy::start(&candor_control::testkit::s3_endpoint()).await;
    let audit = AuditLog::new(
        s3_client(&proxy.endpoint(), "audit-outage"),
        &ObjectPath::from("deployment"),
        master.clone(),
    );
    proxy.cut();
    let docs = control.store.documents();
    let now_ms = Utc::now().timestamp_millis();
    let lakes = Lakes::from(lake.clone());
    let done = retention::run(&lakes, &docs, &audit, &RetentionConfig::default(), now_ms)
        .await
        .unwrap();
    assert!(done.deleted.is_empty(), "{done:?}");
    assert_eq!(done.skipped, 1, "the tenant is skipped, not the run failed");
    assert!(all_objects(&lake).await.contains(expired.as_str()));

    // Once the trail can be written, the same run deletes it, recorded.
    proxy.restore();
    let done = retention::run(&lakes, &docs, &audit, &RetentionConfig::default(), now_ms)
        .await
        .unwrap();
    assert_eq!(done.deleted.len(), 1);
    assert!(!all_objects(&lake).await.contains(expired.as_str()));
    let acme = TenantId::new("acme").unwrap();
    assert_eq!(audit.entries(&acme).await.unwrap().len(), 1);
}

/// A cancellation stamped by the server keeps the tenant's lake for the
/// whole grace period counted from that stamp: a back-dated one cannot be
/// written, and the purge comes only once the grace is over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_tenant_is_purged_only_after_the_grace_from_the_servers_stamp() {
    let master = random_master();
    let control = Control::new(candor_control::testkit::TestStore::local(), &master);
    let acme = TenantId::new("acme").unwrap();
    // A year of retention, so only the purge deletes anything here.
    control
        .create(Tenant::new(acme.clone(), Plan::Enterprise, "UTC"))
        .await;
    let dir = tempfile::tempdir().unwrap();
    let lake = Lake::local(dir.path()).unwrap();
    let kept = put(
        &lake,
        "activity",
        "acme",
        Utc::now().date_naive() - Days::new(1),
    )
    .await;
    let lakes = Lakes::from(lake.clone());
    let audit = AuditLog::new(
        control.store.raw(),
        &candor_control::testkit::TestStore::prefix(),
        master.clone(),
    );
    let docs = control.store.documents();
    let config = RetentionConfig::default(); // 30 days of grace
    let run = |at_ms: i64| {
        let (lakes, docs, audit, config) = (&lakes, &docs, &audit, &config);
        async move {
            retention::run(lakes, docs, audit, config, at_ms)
                .await
                .unwrap()
        }
    };

    // The attack of the finding: a cancellation dated 1970, by the
    // document. Refused, so retention has nothing to purge.
    let op = Actor::operator();
    let mut doc = control.admin.get_tenant(&op, &acme).await.unwrap().doc;
    doc.cancelled_at_ms = Some(1);
    assert!(matches!(
        control.admin.update_tenant(&op, &doc, None).await,
        Err(AdminError::CancellationIsSeparate { .. })
    ));
    assert!(run(Utc::now().timestamp_millis()).await.deleted.is_empty());

    // Cancelled now: kept through the grace period, purged after it.
    let before = Utc::now().timestamp_millis();
    let cancelled = control.admin.cancel_tenant(&op, &acme).await.unwrap();
    let at = cancelled.doc.cancelled_at_ms.unwrap();
    assert!(at >= before, "stamped by the server, now");
    for later in [0, DAY_MS, 29 * DAY_MS] {
        let done = run(at + later).await;
        assert!(done.deleted.is_empty(), "{later} ms after: {done:?}");
    }
    assert!(all_objects(&lake).await.contains(kept.as_str()));
    // Reinstated within the grace: nothing is ever purged.
    control.admin.reinstate_tenant(&op, &acme).await.unwrap();
    assert!(run(at + 31 * DAY_MS).await.deleted.is_empty());
    assert!(all_objects(&lake).await.contains(kept.as_str()));
    // Cancelled again: the grace counts from the new stamp.
    let again = control.admin.cancel_tenant(&op, &acme).await.unwrap();
    let at = again.doc.cancelled_at_ms.unwrap();
    assert!(run(at + 29 * DAY_MS).await.deleted.is_empty());
    let done = run(at + 30 * DAY_MS).await;
    assert_eq!(done.deleted.len(), 1, "{done:?}");
    assert!(!all_objects(&lake).await.contains(kept.as_str()));
    let entries = audit.entries(&acme).await.unwrap();
    assert!(
        entries
            .iter()
            .any(|e| e.event.action == "lake.purge" && e.event.detail["cancelled_at_ms"] == at)
    );
    assert!(audit.verify(&acme).await.unwrap().first_problem.is_none());
}
