//! The audit trail: per tenant, an append-only chain of entries, one object
//! each, `<root>/_audit/<tenant>/<seq, 20 digits>.json`.
//!
//! Each entry carries the MAC of the one before it, and its own MAC is
//! HMAC-SHA256 under the tenant's audit key (derived from the master
//! secret) over its content and that previous MAC. So editing, reordering or
//! deleting an entry breaks the chain at that point, and someone who can
//! write to the bucket but does not hold the master secret cannot write a
//! chain that verifies. Entries are written with create-if-absent puts, so
//! two nodes appending at once never overwrite each other: the loser rereads
//! the head and appends after it.
//!
//! A `head.json` object next to the entries records the last sequence number
//! written (also MACed), so that cutting entries off the end is found too.
//! It is rewritten after every append; it may briefly lag behind the last
//! entry, never run ahead of it.

use std::collections::HashMap;
use std::sync::Arc;

use candor_schemas::TenantId;
use candor_schemas::keys::{MasterSecret, hmac_sha256};
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

pub const AUDIT_PREFIX: &str = "_audit";
/// Largest entry read back; entries are small.
pub const MAX_ENTRY_BYTES: u64 = 64 * 1024;
const HEAD: &str = "head.json";
const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
const APPEND_ATTEMPTS: usize = 64;

/// What happened, as the caller describes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// Who: a token id, or `operator` for the command line.
    pub actor: String,
    /// The actor's role, or `operator`.
    pub role: String,
    /// What: e.g. `tenant.update`, `device.enroll`, `token.create`, `query`.
    pub action: String,
    /// On what: a device id, token id, partition, query hash.
    pub target: String,
    /// From where: the client's address, or `cli`.
    pub source: String,
    /// Anything else worth keeping (never secrets, never telemetry).
    #[serde(default)]
    pub detail: serde_json::Value,
}

/// One stored entry. (No `deny_unknown_fields`: serde does not support it
/// with `flatten`; an added field fails the MAC anyway.)
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub seq: u64,
    pub at_ms: i64,
    pub tenant: TenantId,
    #[serde(flatten)]
    pub event: AuditEvent,
    /// MAC of the previous entry (64 zeros for the first).
    pub prev: String,
    /// HMAC-SHA256 of this entry with `mac` empty, under the tenant's audit key.
    pub mac: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Head {
    seq: u64,
    mac: String,
}

/// The first place a chain stops verifying.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "finding", rename_all = "snake_case")]
pub enum Finding {
    /// The entry's content does not match its MAC.
    Edited { seq: u64 },
    /// The entry is intact but sits in the wrong place in the chain.
    Reordered { seq: u64 },
    /// No entry with this sequence number, though later ones exist.
    Missing { seq: u64 },
    /// The head says entries up to `head` were written; the chain ends at `last`.
    Truncated { last: u64, head: u64 },
    /// The object cannot be read as an entry.
    Unreadable { seq: u64, reason: String },
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Finding::Edited { seq } => write!(f, "entry {seq} was edited"),
            Finding::Reordered { seq } => write!(f, "entry {seq} is out of order"),
            Finding::Missing { seq } => write!(f, "entry {seq} is missing"),
            Finding::Truncated { last, head } => {
                write!(f, "entries {}..={head} were cut off the end", last + 1)
            }
            Finding::Unreadable { seq, reason } => write!(f, "entry {seq} is unreadable: {reason}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verification {
    pub tenant: TenantId,
    /// Entries that verified, in order, before the first finding.
    pub verified: u64,
    pub first_problem: Option<Finding>,
}

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit log of {0}: appends keep conflicting; try again")]
    Contended(TenantId),
    #[error("audit log of {tenant}: head entry {seq} does not verify; run `candor audit verify`")]
    BrokenHead { tenant: TenantId, seq: u64 },
    #[error("audit log: object store: {0}")]
    Store(#[from] object_store::Error),
}

pub struct AuditLog {
    store: Arc<dyn ObjectStore>,
    root: Path,
    master: MasterSecret,
    /// Per tenant, the last known (seq, mac), so appends need not list,
    /// behind that tenant's own lock: appends of one tenant are serialized
    /// within the node, appends of different tenants do not wait for each
    /// other.
    heads: std::sync::Mutex<HashMap<TenantId, Arc<Mutex<KnownHead>>>>,
}

/// A tenant's last known head entry (seq, mac), if this node knows it.
type KnownHead = Option<(u64, String)>;

fn seq_of(path: &Path) -> Option<u64> {
    path.filename()?.strip_suffix(".json")?.parse().ok()
}

impl AuditLog {
    pub fn new(store: Arc<dyn ObjectStore>, prefix: &Path, master: MasterSecret) -> Self {
        Self {
            store,
            root: prefix.clone().join(AUDIT_PREFIX),
            master,
            heads: std::sync::Mutex::new(HashMap::new()),
        }
    }

    fn dir(&self, tenant: &TenantId) -> Path {
        self.root.clone().join(tenant.as_str())
    }

    fn entry_path(&self, tenant: &TenantId, seq: u64) -> Path {
        self.dir(tenant).join(format!("{seq:020}.json"))
    }

    fn mac(&self, entry: &AuditEntry) -> String {
        let mut unsigned = entry.clone();
        unsigned.mac = String::new();
        let bytes = serde_json::to_vec(&unsigned).expect("entries serialize");
        hex::encode(hmac_sha256(
            self.master.audit_key(&entry.tenant).as_bytes(),
            &bytes,
        ))
    }

    fn head_mac(&self, tenant: &TenantId, seq: u64, mac: &str) -> String {
        let message = format!("head\0{tenant}\0{seq}\0{mac}");
        hex::encode(hmac_sha256(
            self.master.audit_key(tenant).as_bytes(),
            message.as_bytes(),
        ))
    }

    /// Sequence numbers of the stored entries after `after`, ascending.
    async fn seqs_after(&self, tenant: &TenantId, after: u64) -> Result<Vec<u64>, AuditError> {
        let dir = self.dir(tenant);
        let offset = self.entry_path(tenant, after);
        let listed: Vec<_> = if after == 0 {
            self.store.list(Some(&dir)).try_collect().await?
        } else {
            self.store
                .list_with_offset(Some(&dir), &offset)
                .try_collect()
                .await?
        };
        let mut seqs: Vec<u64> = listed
            .iter()
            .filter_map(|m| seq_of(&m.location))
            .filter(|&s| s > after)
            .collect();
        seqs.sort_unstable();
        Ok(seqs)
    }

    async fn read(&self, tenant: &TenantId, seq: u64) -> Result<AuditEntry, Finding> {
        let unreadable = |reason: String| Finding::Unreadable { seq, reason };
        let got = self
            .store
            .get(&self.entry_path(tenant, seq))
            .await
            .map_err(|e| unreadable(e.to_string()))?;
        if got.meta.size > MAX_ENTRY_BYTES {
            return Err(unreadable(format!("{} bytes", got.meta.size)));
        }
        let bytes = got.bytes().await.map_err(|e| unreadable(e.to_string()))?;
        serde_json::from_slice(&bytes).map_err(|e| unreadable(e.to_string()))
    }

    /// The current head (seq, mac), from memory or the store.
    async fn head(
        &self,
        tenant: &TenantId,
        known: Option<(u64, String)>,
    ) -> Result<(u64, String), AuditError> {
        let (mut seq, mut mac) = known.unwrap_or((0, GENESIS.to_string()));
        if let Some(&last) = self.seqs_after(tenant, seq).await?.last() {
            let entry = self
                .read(tenant, last)
                .await
                .map_err(|_| AuditError::BrokenHead {
                    tenant: tenant.clone(),
                    seq: last,
                })?;
            if entry.seq != last || self.mac(&entry) != entry.mac {
                return Err(AuditError::BrokenHead {
                    tenant: tenant.clone(),
                    seq: last,
                });
            }
            (seq, mac) = (last, entry.mac);
        }
        Ok((seq, mac))
    }

    /// Appends an entry after the current head and returns it.
    pub async fn append(
        &self,
        tenant: &TenantId,
        event: AuditEvent,
        now_ms: i64,
    ) -> Result<AuditEntry, AuditError> {
        // One append per tenant at a time within a node; across nodes the
        // create-if-absent put decides.
        let slot = self
            .heads
            .lock()
            .expect("audit heads lock")
            .entry(tenant.clone())
            .or_default()
            .clone();
        let mut cached = slot.lock().await;
        let mut known = cached.clone();
        for _ in 0..APPEND_ATTEMPTS {
            let (seq, prev) = match known.take() {
                Some(head) => head,
                None => self.head(tenant, None).await?,
            };
            let mut entry = AuditEntry {
                seq: seq + 1,
                at_ms: now_ms,
                tenant: tenant.clone(),
                event: event.clone(),
                prev: prev.clone(),
                mac: String::new(),
            };
            entry.mac = self.mac(&entry);
            let body = serde_json::to_vec_pretty(&entry).expect("entries serialize");
            let put = self
                .store
                .put_opts(
                    &self.entry_path(tenant, entry.seq),
                    body.into(),
                    PutOptions::from(PutMode::Create),
                )
                .await;
            match put {
                Ok(_) => {
                    *cached = Some((entry.seq, entry.mac.clone()));
                    self.write_head(tenant, entry.seq, &entry.mac).await?;
                    return Ok(entry);
                }
                Err(
                    object_store::Error::AlreadyExists { .. }
                    | object_store::Error::Precondition { .. },
                ) => {
                    // Someone else appended: catch up from where we were.
                    known = Some(self.head(tenant, Some((seq, prev))).await?);
                }
                Err(e) => {
                    *cached = None;
                    return Err(e.into());
                }
            }
        }
        Err(AuditError::Contended(tenant.clone()))
    }

    async fn write_head(&self, tenant: &TenantId, seq: u64, mac: &str) -> Result<(), AuditError> {
        let head = Head {
            seq,
            mac: self.head_mac(tenant, seq, mac),
        };
        let path = self.dir(tenant).join(HEAD);
        // Never move the head backwards past a concurrent writer's.
        if let Some(stored) = self.read_head(tenant).await
            && stored.seq >= seq
        {
            return Ok(());
        }
        self.store
            .put(
                &path,
                serde_json::to_vec(&head).expect("heads serialize").into(),
            )
            .await?;
        Ok(())
    }

    async fn read_head(&self, tenant: &TenantId) -> Option<Head> {
        let got = self.store.get(&self.dir(tenant).join(HEAD)).await.ok()?;
        if got.meta.size > MAX_ENTRY_BYTES {
            return None;
        }
        serde_json::from_slice(&got.bytes().await.ok()?).ok()
    }

    /// Every entry of a tenant, in order, stopping at the first unreadable one.
    pub async fn entries(&self, tenant: &TenantId) -> Result<Vec<AuditEntry>, AuditError> {
        let mut out = Vec::new();
        for seq in self.seqs_after(tenant, 0).await? {
            match self.read(tenant, seq).await {
                Ok(entry) => out.push(entry),
                Err(_) => break,
            }
        }
        Ok(out)
    }

    /// Walks the chain and reports the first entry that does not verify.
    pub async fn verify(&self, tenant: &TenantId) -> Result<Verification, AuditError> {
        let seqs = self.seqs_after(tenant, 0).await?;
        let mut prev = GENESIS.to_string();
        let mut verified = 0;
        let done = |verified, finding| {
            Ok(Verification {
                tenant: tenant.clone(),
                verified,
                first_problem: finding,
            })
        };
        for (i, &seq) in seqs.iter().enumerate() {
            let expected = i as u64 + 1;
            if seq != expected {
                return done(verified, Some(Finding::Missing { seq: expected }));
            }
            let entry = match self.read(tenant, seq).await {
                Ok(entry) => entry,
                Err(finding) => return done(verified, Some(finding)),
            };
            if &entry.tenant != tenant || self.mac(&entry) != entry.mac {
                return done(verified, Some(Finding::Edited { seq }));
            }
            if entry.seq != seq || entry.prev != prev {
                return done(verified, Some(Finding::Reordered { seq }));
            }
            prev = entry.mac;
            verified += 1;
        }
        if let Some(head) = self.read_head(tenant).await {
            let last = seqs.len() as u64;
            // A head we cannot authenticate proves nothing either way; one
            // that verifies and points past the end proves a cut.
            if head.seq > last {
                return done(
                    verified,
                    Some(Finding::Truncated {
                        last,
                        head: head.seq,
                    }),
                );
            }
            if head.seq == last && last > 0 && head.mac != self.head_mac(tenant, last, &prev) {
                return done(verified, Some(Finding::Edited { seq: last }));
            }
        }
        done(verified, None)
    }
}
