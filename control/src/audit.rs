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
//! The end of the chain is anchored by its head: after entry `n` is written,
//! `head-<n, 20 digits>.json` is created next to it (create-if-absent, so a
//! head never moves backwards, and the one before it is deleted), holding
//! `n` and a MAC over the tenant, `n` and entry `n`'s MAC. Verification reads
//! the head before it lists the entries and reports, besides edited,
//! reordered and missing entries:
//!
//! - entries cut off the end (the head names an entry that is gone);
//! - a head that is missing while entries exist, or that is older than the
//!   last entry (an older head put back), once a short wait rules out an
//!   append in flight;
//! - a head whose MAC does not verify (forged without the master secret);
//! - a chain that ends before, or differs from, an entry this process
//!   appended or verified earlier, or a checkpoint the caller kept from an
//!   earlier verification ([`Checkpoint`]).
//!
//! What the store alone cannot show: someone who deletes the last entries
//! *and* puts back the head that was current when the chain ended there
//! leaves exactly a state the chain really was in. That is found only by an
//! anchor kept elsewhere: a checkpoint from an earlier `verify` (the
//! `candor audit verify --checkpoint` file), a node that appended later
//! entries (its next entry leaves a gap, and its own verification refers to
//! what it wrote), or the documents whose changes those entries recorded.
//! An append interrupted between its entry and its head (a crash) also
//! shows as a head behind the last entry, until the next append moves it.

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
/// The head of chains written before heads were versioned; still read.
const LEGACY_HEAD: &str = "head.json";
const HEAD_PREFIX: &str = "head-";
/// How long verification waits for an append in flight to move the head
/// before it reports a head that lags behind the last entry.
const HEAD_SETTLE: [std::time::Duration; 3] = [
    std::time::Duration::from_millis(50),
    std::time::Duration::from_millis(200),
    std::time::Duration::from_millis(500),
];
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
    /// Entries up to `last` exist but no head does: it was deleted (or the
    /// very first append was interrupted before it wrote one).
    HeadMissing { last: u64 },
    /// The head says `head`, but the chain goes on to `last`: an older head
    /// was put back (or an append was interrupted before it moved the head;
    /// the next append does).
    HeadBehind { head: u64, last: u64 },
    /// The head's MAC does not verify: it was not written with the master
    /// secret.
    HeadForged { seq: u64 },
    /// The chain ends at `last`, though entry `seen` was seen before (by this
    /// process, or in the checkpoint given): entries were cut off the end and
    /// the head rolled back with them.
    RolledBack { last: u64, seen: u64 },
    /// Entry `seq` is not the entry seen there before: the chain was cut and
    /// written again from there.
    Diverged { seq: u64 },
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
            Finding::HeadMissing { last } => write!(
                f,
                "the head is missing though entries 1..={last} exist: it was deleted \
                 (or the first append was interrupted)"
            ),
            Finding::HeadBehind { head, last } => write!(
                f,
                "the head says {head} but entries go on to {last}: an older head was put back \
                 (or an append was interrupted before it moved the head)"
            ),
            Finding::HeadForged { seq } => {
                write!(f, "the head (entry {seq}) does not verify: it was forged")
            }
            Finding::RolledBack { last, seen } => write!(
                f,
                "the chain ends at {last} but entry {seen} was seen before: \
                 entries were cut off the end and the head rolled back"
            ),
            Finding::Diverged { seq } => write!(
                f,
                "entry {seq} is not the one seen before: the chain was cut and rewritten"
            ),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verification {
    pub tenant: TenantId,
    /// Entries that verified, in order, before the first finding.
    pub verified: u64,
    pub first_problem: Option<Finding>,
    /// The last entry that verified: keep it (somewhere the store's writers
    /// cannot reach) and pass it to the next [`AuditLog::verify_against`],
    /// which then also finds a chain cut back before it.
    pub checkpoint: Option<Checkpoint>,
}

impl Verification {
    pub fn is_intact(&self) -> bool {
        self.first_problem.is_none()
    }
}

/// An entry of a chain as a verification saw it: its sequence number and MAC.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    pub tenant: TenantId,
    pub seq: u64,
    pub mac: String,
}

/// What the head objects of a chain say.
enum HeadState {
    Absent,
    /// The newest head (highest sequence number).
    Present(Head),
    /// A head object that is not a head, named for this sequence number.
    Unreadable(u64),
}

impl HeadState {
    fn seq(&self) -> Option<u64> {
        match self {
            HeadState::Absent => None,
            HeadState::Present(h) => Some(h.seq),
            HeadState::Unreadable(seq) => Some(*seq),
        }
    }
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
    /// Per tenant, the newest entry this process appended or verified: a
    /// chain that later ends before it, or differs there, was cut.
    anchors: std::sync::Mutex<HashMap<TenantId, Checkpoint>>,
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
            anchors: std::sync::Mutex::new(HashMap::new()),
        }
    }

    /// Remembers an entry as seen, unless a later one already is.
    fn anchor(&self, tenant: &TenantId, seq: u64, mac: &str) {
        let mut anchors = self.anchors.lock().expect("audit anchors lock");
        let newer = anchors.get(tenant).is_some_and(|a| a.seq >= seq);
        if !newer {
            anchors.insert(
                tenant.clone(),
                Checkpoint {
                    tenant: tenant.clone(),
                    seq,
                    mac: mac.to_string(),
                },
            );
        }
    }

    fn head_path(&self, tenant: &TenantId, seq: u64) -> Path {
        self.dir(tenant)
            .join(format!("{HEAD_PREFIX}{seq:020}.json"))
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
                    self.anchor(tenant, entry.seq, &entry.mac);
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

    /// Creates the head for entry `seq` (never replacing one: a head only
    /// moves forward), then deletes the one before it.
    async fn write_head(&self, tenant: &TenantId, seq: u64, mac: &str) -> Result<(), AuditError> {
        let head = Head {
            seq,
            mac: self.head_mac(tenant, seq, mac),
        };
        let body = serde_json::to_vec(&head).expect("heads serialize");
        match self
            .store
            .put_opts(
                &self.head_path(tenant, seq),
                body.into(),
                PutOptions::from(PutMode::Create),
            )
            .await
        {
            Ok(_)
            | Err(
                object_store::Error::AlreadyExists { .. }
                | object_store::Error::Precondition { .. },
            ) => {}
            Err(e) => return Err(e.into()),
        }
        if seq > 1 {
            match self.store.delete(&self.head_path(tenant, seq - 1)).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                // A head left behind is harmless: the newest one counts.
                Err(e) => tracing::debug!(%tenant, error = %e, "could not delete an older head"),
            }
        }
        Ok(())
    }

    /// The newest head of a tenant's chain.
    async fn read_head(&self, tenant: &TenantId) -> Result<HeadState, AuditError> {
        let dir = self.dir(tenant);
        let mut attempts = 0;
        loop {
            let listed: Vec<_> = self
                .store
                .list_with_offset(Some(&dir), &dir.clone().join(HEAD_PREFIX))
                .try_collect()
                .await?;
            let mut newest: Option<(u64, Path)> = None;
            for meta in &listed {
                let Some(name) = meta.location.filename() else {
                    continue;
                };
                // The legacy head's number is inside; it ranks below any other.
                let seq = if name == LEGACY_HEAD {
                    Some(0)
                } else {
                    name.strip_prefix(HEAD_PREFIX)
                        .and_then(|n| n.strip_suffix(".json"))
                        .and_then(|n| n.parse::<u64>().ok())
                };
                if let Some(seq) = seq
                    && newest.as_ref().is_none_or(|(s, _)| seq >= *s)
                {
                    newest = Some((seq, meta.location.clone()));
                }
            }
            let Some((named, path)) = newest else {
                return Ok(HeadState::Absent);
            };
            let got = match self.store.get(&path).await {
                Ok(got) => got,
                // Deleted since the listing: an append moved the head on.
                Err(object_store::Error::NotFound { .. }) if attempts < 3 => {
                    attempts += 1;
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            if got.meta.size > MAX_ENTRY_BYTES {
                return Ok(HeadState::Unreadable(named));
            }
            let bytes = got.bytes().await?;
            return Ok(match serde_json::from_slice::<Head>(&bytes) {
                Ok(head) if named == 0 || head.seq == named => HeadState::Present(head),
                _ => HeadState::Unreadable(named),
            });
        }
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

    /// The newest `at_most` entries of a tenant, newest first, skipping any
    /// that cannot be read: a bounded look back, for views of recent
    /// activity that must not read a whole long chain.
    pub async fn latest(
        &self,
        tenant: &TenantId,
        at_most: usize,
    ) -> Result<Vec<AuditEntry>, AuditError> {
        let seqs = self.seqs_after(tenant, 0).await?;
        let mut out = Vec::new();
        for seq in seqs.into_iter().rev().take(at_most) {
            if let Ok(entry) = self.read(tenant, seq).await {
                out.push(entry);
            }
        }
        Ok(out)
    }

    /// Walks the chain and reports the first entry that does not verify,
    /// or a head that shows the end was cut (see the module's notes).
    pub async fn verify(&self, tenant: &TenantId) -> Result<Verification, AuditError> {
        self.verify_against(tenant, None).await
    }

    /// [`verify`](Self::verify), and also finds a chain that ends before, or
    /// differs from, `checkpoint` (from an earlier verification).
    pub async fn verify_against(
        &self,
        tenant: &TenantId,
        checkpoint: Option<&Checkpoint>,
    ) -> Result<Verification, AuditError> {
        // What was seen before, then the head, then the entries: whatever
        // is appended meanwhile only adds entries after what was read first.
        let mut anchors: Vec<Checkpoint> = checkpoint.cloned().into_iter().collect();
        let remembered = self
            .anchors
            .lock()
            .expect("audit anchors lock")
            .get(tenant)
            .cloned();
        anchors.extend(remembered);
        let head = self.read_head(tenant).await?;
        let seqs = self.seqs_after(tenant, 0).await?;
        let mut macs: Vec<String> = Vec::with_capacity(seqs.len());
        let mut prev = GENESIS.to_string();
        let done = |verified: u64, finding: Option<Finding>, macs: &[String]| {
            let checkpoint = (verified > 0).then(|| Checkpoint {
                tenant: tenant.clone(),
                seq: verified,
                mac: macs[verified as usize - 1].clone(),
            });
            Ok(Verification {
                tenant: tenant.clone(),
                verified,
                first_problem: finding,
                checkpoint,
            })
        };
        for (i, &seq) in seqs.iter().enumerate() {
            let verified = i as u64;
            let expected = verified + 1;
            if seq != expected {
                return done(verified, Some(Finding::Missing { seq: expected }), &macs);
            }
            let entry = match self.read(tenant, seq).await {
                Ok(entry) => entry,
                Err(finding) => return done(verified, Some(finding), &macs),
            };
            if &entry.tenant != tenant || self.mac(&entry) != entry.mac {
                return done(verified, Some(Finding::Edited { seq }), &macs);
            }
            if entry.seq != seq || entry.prev != prev {
                return done(verified, Some(Finding::Reordered { seq }), &macs);
            }
            prev = entry.mac.clone();
            macs.push(entry.mac);
        }
        let last = macs.len() as u64;
        // A head that points past the end proves a cut (a head is written
        // only after its entry, and was read before the entries were).
        if let Some(at) = head.seq()
            && at > last
        {
            return done(last, Some(Finding::Truncated { last, head: at }), &macs);
        }
        for anchor in &anchors {
            if anchor.seq > last {
                let seen = anchor.seq;
                return done(last, Some(Finding::RolledBack { last, seen }), &macs);
            }
            if anchor.seq > 0 && macs[anchor.seq as usize - 1] != anchor.mac {
                let seq = anchor.seq;
                return done(seq - 1, Some(Finding::Diverged { seq }), &macs);
            }
        }
        if last == 0 {
            return done(0, None, &macs);
        }
        // A head missing or behind the last entry: an append in flight moves
        // it within moments; one that stays so was deleted or rolled back.
        let mut head = head;
        for pause in HEAD_SETTLE {
            if head.seq().is_some_and(|at| at >= last) {
                break;
            }
            tokio::time::sleep(pause).await;
            head = self.read_head(tenant).await?;
        }
        match head {
            HeadState::Absent => done(last, Some(Finding::HeadMissing { last }), &macs),
            HeadState::Unreadable(seq) => done(last, Some(Finding::HeadForged { seq }), &macs),
            HeadState::Present(h) if h.seq > last => {
                done(last, Some(Finding::Truncated { last, head: h.seq }), &macs)
            }
            HeadState::Present(h) if h.seq < last => {
                done(last, Some(Finding::HeadBehind { head: h.seq, last }), &macs)
            }
            HeadState::Present(h) => {
                if h.seq == 0 || h.mac != self.head_mac(tenant, h.seq, &macs[h.seq as usize - 1]) {
                    return done(last, Some(Finding::HeadForged { seq: h.seq }), &macs);
                }
                self.anchor(tenant, last, &macs[last as usize - 1]);
                done(last, None, &macs)
            }
        }
    }
}
