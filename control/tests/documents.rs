//! The control plane's document store, against a local directory and against
//! a real S3-compatible server: versions, conflicts, limits, and concurrent
//! writers that lose no update.

use candor_control::{DocumentError, Kind, Plan, Tenant};
use candor_schemas::TenantId;
use object_store::ObjectStoreExt;
use object_store::path::Path;
use serde::{Deserialize, Serialize};

use candor_control::testkit::TestStore as Backend;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Counter {
    value: u64,
    note: String,
}

async fn versions_move_forward_and_stale_writes_conflict(b: Backend) {
    let docs = b.documents();
    let acme = Tenant::new(
        TenantId::new("acme").unwrap(),
        Plan::Starter,
        "Europe/Berlin",
    );
    assert_eq!(docs.create(Kind::Tenant, "acme", &acme).await.unwrap(), 1);
    assert!(matches!(
        docs.create(Kind::Tenant, "acme", &acme).await,
        Err(DocumentError::Exists { .. })
    ));

    let read = docs
        .get::<Tenant>(Kind::Tenant, "acme")
        .await
        .unwrap()
        .unwrap();
    assert_eq!((read.version, &read.doc), (1, &acme));
    let mut professional = acme.clone();
    professional.plan = Plan::Professional;
    assert_eq!(
        docs.update(Kind::Tenant, "acme", 1, &professional)
            .await
            .unwrap(),
        2
    );

    // A writer that read version 1 cannot replace version 2.
    let mut stale = acme.clone();
    stale.time_zone = "UTC".into();
    let err = docs
        .update(Kind::Tenant, "acme", 1, &stale)
        .await
        .unwrap_err();
    assert!(
        matches!(err, DocumentError::Conflict { expected: 1, .. }),
        "{err}"
    );
    let now = docs
        .get::<Tenant>(Kind::Tenant, "acme")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (now.version, now.doc.plan, now.doc.time_zone.as_str()),
        (2, Plan::Professional, "Europe/Berlin")
    );

    assert!(matches!(
        docs.update(Kind::Tenant, "globex", 1, &acme).await,
        Err(DocumentError::NotFound { .. })
    ));
    assert!(
        docs.get::<Tenant>(Kind::Tenant, "globex")
            .await
            .unwrap()
            .is_none()
    );
    docs.create(Kind::Tenant, "globex", &acme).await.unwrap();
    assert_eq!(
        docs.ids(Kind::Tenant).await.unwrap(),
        vec!["acme", "globex"]
    );
}

async fn concurrent_writers_lose_no_update(b: Backend) {
    let docs = b.documents();
    docs.create(
        Kind::Directory,
        "acme",
        &Counter {
            value: 0,
            note: String::new(),
        },
    )
    .await
    .unwrap();
    let (writers, increments) = (6u64, 4u64);
    let mut tasks = Vec::new();
    for w in 0..writers {
        let docs = docs.clone();
        tasks.push(tokio::spawn(async move {
            let mut conflicts = 0u64;
            for _ in 0..increments {
                // Read, change, write; on a conflict read again (bounded).
                for attempt in 0.. {
                    assert!(attempt < 200, "writer {w} starved");
                    let cur = docs
                        .get::<Counter>(Kind::Directory, "acme")
                        .await
                        .unwrap()
                        .unwrap();
                    let next = Counter {
                        value: cur.doc.value + 1,
                        note: format!("writer {w}"),
                    };
                    match docs
                        .update(Kind::Directory, "acme", cur.version, &next)
                        .await
                    {
                        Ok(_) => break,
                        Err(DocumentError::Conflict { .. }) => conflicts += 1,
                        Err(e) => panic!("{e}"),
                    }
                }
            }
            conflicts
        }));
    }
    let mut conflicts = 0;
    for t in tasks {
        conflicts += t.await.unwrap();
    }
    let end = docs
        .get::<Counter>(Kind::Directory, "acme")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        end.doc.value,
        writers * increments,
        "an update was lost ({conflicts} conflicts retried)"
    );
    assert_eq!(end.version, writers * increments + 1);
}

async fn oversized_malformed_and_bad_ids_are_refused(b: Backend) {
    let docs = b.documents();
    docs.create(
        Kind::Tokens,
        "acme",
        &Counter {
            value: 1,
            note: String::new(),
        },
    )
    .await
    .unwrap();
    let huge = Counter {
        value: 2,
        note: "x".repeat(2 * 1024 * 1024),
    };
    assert!(matches!(
        docs.update(Kind::Tokens, "acme", 1, &huge).await,
        Err(DocumentError::TooLarge { .. })
    ));
    let kept = docs
        .get::<Counter>(Kind::Tokens, "acme")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (kept.version, kept.doc.value),
        (1, 1),
        "a refused write changes nothing"
    );

    for id in ["", "../acme", "a/b/c", "a//b", "a/", ".hidden"] {
        assert!(
            matches!(
                docs.get::<Counter>(Kind::Tokens, id).await,
                Err(DocumentError::BadId(_))
            ),
            "{id:?}"
        );
    }

    // A version someone wrote by hand that is not a document.
    let path = Path::from("deployment/_control/tokens/acme/00000000000000000002.json");
    b.raw()
        .put(&path, b"{not json".to_vec().into())
        .await
        .unwrap();
    assert!(matches!(
        docs.get::<Counter>(Kind::Tokens, "acme").await,
        Err(DocumentError::Malformed { .. })
    ));
}

candor_control::on_both_stores!(
    versions_move_forward_and_stale_writes_conflict,
    concurrent_writers_lose_no_update,
    oversized_malformed_and_bad_ids_are_refused,
);
