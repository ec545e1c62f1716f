//! GPS routes across uploads.
//!
//! An agent uploads every few minutes, so with a point a minute, the
//! segment between two uploads is a fifth of a route. To count it, the
//! processor carries each device's last point from one record to the next
//! ([`Routes`]), and from one flush to the next: in memory while it keeps a
//! log partition ([`RouteMemory`]), and in the processors' state table for
//! whoever takes the partition next (see `state`), so a restart, a rebalance or a replay computes the
//! same routes as one processor that never stopped.
//!
//! Whether a record continues its device's route depends on that device
//! alone, never on which devices share its log partition or where chunks
//! end: its first point must come after the carried one, at most
//! `MAX_SEGMENT_MS` later (see `aggregate`), and the record must have been
//! received at most [`ROUTE_MEMORY_MS`] after the carried point's record.
//! A device silent for longer starts a new route.
//!
//! ## In the lake
//!
//! Carried points are precise positions of identifiable devices, which the
//! lake never holds in clear (its rows are pseudonymous and coarsened), so
//! each flush's changes are sealed per tenant under the tenant's at-rest key
//! (XChaCha20-Poly1305, a random nonce per block): destroying a tenant's
//! keys makes its carried points unreadable with its log records. They are
//! state entries of kind `routes`, each a 4-byte magic
//! `CRS1` followed by one block per tenant:
//!
//! ```text
//! u16 tenant length, tenant id (UTF-8)
//! u32 at-rest key version
//! i64 newest receive time of the block's points (ms; i64::MIN: none)
//! [24] nonce
//! u32 sealed length, sealed (ciphertext || 16-byte tag)
//! ```
//!
//! All integers are big-endian; the associated data is `AAD_DOMAIN`, the
//! tenant id, the version and the newest receive time. The sealed payload is
//! a sequence of entries: u16 device length, device id, a tag (0: the route
//! was cut, nothing carried; 1, 2, 3: a point whose last segment was
//! unknown, stopped, moving), and for a point i64 time (ms), f64 latitude,
//! f64 longitude, i64 receive time (ms). Later entries override earlier ones
//! device by device. A block is opened when the processor first sees one of
//! its tenant's records, with the keys that open the record; a block that
//! does not open (keys destroyed) is dropped, which costs its devices one
//! segment each.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use candor_control::keyring::TenantKeys;
use candor_schemas::crypto::{self, NONCE_LEN};
use candor_schemas::ids::{DeviceId, TenantId};

/// How long after a device's last record its next one may still continue
/// its route (by receive time). Its next upload continues the route only if
/// it starts within `MAX_SEGMENT_MS` of the carried point, but it can
/// arrive hours later: a device that was offline sends its backlog when it
/// is back.
pub(crate) const ROUTE_MEMORY_MS: i64 = 6 * 3600 * 1000;

/// How long past [`ROUTE_MEMORY_MS`] a point stays in memory: records of a
/// partition arrive roughly, not exactly, in receive-time order (ingest
/// nodes' clocks differ), and forgetting a point a later record may still
/// continue would make routes depend on where chunks end.
const FORGET_SLACK_MS: i64 = 3600 * 1000;

const MAGIC: &[u8; 4] = b"CRS1";
const AAD_DOMAIN: &[u8] = b"candor route state v1";

/// A device's last GPS point: its time, position, whether the segment that
/// ended there was moving, and when its record was received.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct RoutePoint {
    pub at_ms: i64,
    pub at: (f64, f64),
    pub moving: Option<bool>,
    pub received_ms: i64,
}

impl RoutePoint {
    /// Whether a record received at `received_ms` whose first point is at
    /// `first_ms` continues the route from this point.
    pub fn continued_by(&self, first_ms: i64, received_ms: i64, max_segment_ms: i64) -> bool {
        first_ms > self.at_ms
            && first_ms - self.at_ms <= max_segment_ms
            && received_ms - self.received_ms <= ROUTE_MEMORY_MS
    }
}

/// A tenant's changes of one flush (or its whole memory), sealed.
#[derive(Debug, Clone)]
struct SealedBlock {
    version: u32,
    newest_received_ms: i64,
    nonce: [u8; NONCE_LEN],
    sealed: Vec<u8>,
}

#[derive(Debug, Default)]
struct TenantRoutes {
    devices: HashMap<DeviceId, RoutePoint>,
    /// Devices whose carried point changed (or was cut) since the last
    /// state file.
    changed: HashSet<DeviceId>,
    /// Read from the lake, not opened yet, oldest first.
    sealed: Vec<SealedBlock>,
    /// The keys the tenant's newest records opened with, to seal its changes.
    keys: Option<Arc<TenantKeys>>,
}

/// Each device's last GPS point, per tenant.
#[derive(Debug, Default)]
pub struct Routes {
    tenants: HashMap<TenantId, TenantRoutes>,
}

impl Routes {
    pub(crate) fn carried(&self, tenant: &TenantId, device: &DeviceId) -> Option<RoutePoint> {
        self.tenants.get(tenant)?.devices.get(device).copied()
    }

    /// Carries `point` as the device's last one (`None`: its route was cut).
    pub(crate) fn carry(
        &mut self,
        tenant: &TenantId,
        device: &DeviceId,
        point: Option<RoutePoint>,
    ) {
        let routes = self.tenants.entry(tenant.clone()).or_default();
        match point {
            Some(point) => routes.devices.insert(device.clone(), point),
            None => routes.devices.remove(device),
        };
        routes.changed.insert(device.clone());
    }

    /// Opens what the lake held of `tenant`'s routes, before its records
    /// are added, and keeps `keys` to seal its changes.
    pub fn open(&mut self, tenant: &TenantId, keys: &Arc<TenantKeys>) {
        let routes = self.tenants.entry(tenant.clone()).or_default();
        for block in std::mem::take(&mut routes.sealed) {
            let opened = keys.at_rest(block.version).and_then(|key| {
                let aad = aad(tenant, block.version, block.newest_received_ms);
                crypto::open(key.as_bytes(), &block.nonce, &aad, &block.sealed).ok()
            });
            let applied = opened
                .ok_or_else(|| "does not open with the tenant's keys".to_string())
                .and_then(|payload| apply_entries(&payload, &mut routes.devices));
            if let Err(e) = applied {
                tracing::warn!(%tenant, version = block.version, error = %e, "dropped carried GPS points; their devices' routes restart");
            }
        }
        routes.keys = Some(keys.clone());
    }

    /// Forgets points no record can continue any more (bounds memory to the
    /// devices heard from in the last hours).
    pub(crate) fn forget_stale(&mut self) {
        let newest = self
            .tenants
            .values()
            .flat_map(|t| {
                let points = t.devices.values().map(|p| p.received_ms);
                points.chain(t.sealed.iter().map(|b| b.newest_received_ms))
            })
            .max()
            .unwrap_or(i64::MIN);
        let oldest = newest.saturating_sub(ROUTE_MEMORY_MS + FORGET_SLACK_MS);
        self.tenants.retain(|_, t| {
            t.devices.retain(|_, p| p.received_ms >= oldest);
            t.sealed.retain(|b| b.newest_received_ms >= oldest);
            !t.devices.is_empty() || !t.sealed.is_empty() || !t.changed.is_empty()
        });
    }

    /// The changes since the last call as a state file, or `None` when no
    /// route changed.
    pub fn take_changes(&mut self) -> Option<Vec<u8>> {
        let mut out = MAGIC.to_vec();
        for (tenant, routes) in &mut self.tenants {
            if routes.changed.is_empty() {
                continue;
            }
            let changed = std::mem::take(&mut routes.changed);
            let Some(keys) = &routes.keys else {
                // Only records that opened change routes, and their tenant
                // was opened first.
                tracing::error!(%tenant, "GPS route changes without the tenant's keys: not persisted");
                continue;
            };
            let entries = changed
                .iter()
                .map(|device| (device, routes.devices.get(device).copied()));
            seal_block(&mut out, tenant, keys, entries);
        }
        (out.len() > MAGIC.len()).then_some(out)
    }

    /// The whole memory as one state file: opened tenants sealed anew,
    /// tenants not opened yet as the blocks read.
    pub(crate) fn snapshot(&self) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        for (tenant, routes) in &self.tenants {
            for block in &routes.sealed {
                write_block(&mut out, tenant, block);
            }
            if let (Some(keys), false) = (&routes.keys, routes.devices.is_empty()) {
                let entries = routes.devices.iter().map(|(d, p)| (d, Some(*p)));
                seal_block(&mut out, tenant, keys, entries);
            }
        }
        out
    }

    /// Adds a state file's blocks, still sealed, after those read before.
    fn read_file(&mut self, bytes: &[u8]) -> Result<(), String> {
        let mut r = Reader(bytes);
        if r.take(MAGIC.len())? != MAGIC {
            return Err("not a route state file".into());
        }
        while !r.0.is_empty() {
            let tenant_len = r.u16()? as usize;
            let tenant = std::str::from_utf8(r.take(tenant_len)?)
                .ok()
                .and_then(|t| TenantId::new(t).ok())
                .ok_or("a block's tenant id is not valid")?;
            let version = r.u32()?;
            let newest_received_ms = r.i64()?;
            let nonce: [u8; NONCE_LEN] = r.take(NONCE_LEN)?.try_into().expect("NONCE_LEN bytes");
            let sealed_len = r.u32()? as usize;
            let sealed = r.take(sealed_len)?.to_vec();
            self.tenants
                .entry(tenant)
                .or_default()
                .sealed
                .push(SealedBlock {
                    version,
                    newest_received_ms,
                    nonce,
                    sealed,
                });
        }
        Ok(())
    }
}

fn aad(tenant: &TenantId, version: u32, newest_received_ms: i64) -> Vec<u8> {
    let mut aad = AAD_DOMAIN.to_vec();
    aad.extend_from_slice(tenant.as_str().as_bytes());
    aad.extend_from_slice(&version.to_be_bytes());
    aad.extend_from_slice(&newest_received_ms.to_be_bytes());
    aad
}

/// Seals `entries` under the tenant's current at-rest key and appends the
/// block to `out`.
fn seal_block<'a>(
    out: &mut Vec<u8>,
    tenant: &TenantId,
    keys: &TenantKeys,
    entries: impl Iterator<Item = (&'a DeviceId, Option<RoutePoint>)>,
) {
    let mut payload = Vec::new();
    let mut newest_received_ms = i64::MIN;
    for (device, point) in entries {
        let id = device.as_str().as_bytes();
        payload.extend_from_slice(&(id.len() as u16).to_be_bytes());
        payload.extend_from_slice(id);
        match point {
            None => payload.push(0),
            Some(p) => {
                payload.push(match p.moving {
                    None => 1,
                    Some(false) => 2,
                    Some(true) => 3,
                });
                payload.extend_from_slice(&p.at_ms.to_be_bytes());
                payload.extend_from_slice(&p.at.0.to_be_bytes());
                payload.extend_from_slice(&p.at.1.to_be_bytes());
                payload.extend_from_slice(&p.received_ms.to_be_bytes());
                newest_received_ms = newest_received_ms.max(p.received_ms);
            }
        }
    }
    let (version, key) = keys.current_at_rest();
    let nonce: [u8; NONCE_LEN] = rand::random();
    let sealed = crypto::seal(
        key.as_bytes(),
        &nonce,
        &aad(tenant, version, newest_received_ms),
        &payload,
    );
    write_block(
        out,
        tenant,
        &SealedBlock {
            version,
            newest_received_ms,
            nonce,
            sealed,
        },
    );
}

fn write_block(out: &mut Vec<u8>, tenant: &TenantId, block: &SealedBlock) {
    let id = tenant.as_str().as_bytes();
    out.extend_from_slice(&(id.len() as u16).to_be_bytes());
    out.extend_from_slice(id);
    out.extend_from_slice(&block.version.to_be_bytes());
    out.extend_from_slice(&block.newest_received_ms.to_be_bytes());
    out.extend_from_slice(&block.nonce);
    out.extend_from_slice(&(block.sealed.len() as u32).to_be_bytes());
    out.extend_from_slice(&block.sealed);
}

/// Applies an opened block's entries, in order, to a tenant's devices.
fn apply_entries(
    payload: &[u8],
    devices: &mut HashMap<DeviceId, RoutePoint>,
) -> Result<(), String> {
    let mut r = Reader(payload);
    while !r.0.is_empty() {
        let len = r.u16()? as usize;
        let device = std::str::from_utf8(r.take(len)?)
            .ok()
            .and_then(|d| DeviceId::new(d).ok())
            .ok_or("an entry's device id is not valid")?;
        let moving = match r.take(1)?[0] {
            0 => {
                devices.remove(&device);
                continue;
            }
            1 => None,
            2 => Some(false),
            3 => Some(true),
            tag => return Err(format!("unknown entry tag {tag}")),
        };
        let at_ms = r.i64()?;
        let at = (r.f64()?, r.f64()?);
        let received_ms = r.i64()?;
        devices.insert(
            device,
            RoutePoint {
                at_ms,
                at,
                moving,
                received_ms,
            },
        );
    }
    Ok(())
}

/// Reads a state file front to back; every length is checked against what
/// is left before anything is allocated.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.0.len() < n {
            return Err(format!(
                "truncated: {n} bytes wanted, {} left",
                self.0.len()
            ));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        Ok(self.take(N)?.try_into().expect("N bytes"))
    }

    fn u16(&mut self) -> Result<u16, String> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    fn i64(&mut self) -> Result<i64, String> {
        Ok(i64::from_be_bytes(self.array()?))
    }

    fn f64(&mut self) -> Result<f64, String> {
        Ok(f64::from_be_bytes(self.array()?))
    }
}

/// The devices' routes of every partition this processor reads, as of
/// each partition's last commit; `None` while a chunk has them.
#[derive(Default)]
pub struct RouteMemory {
    partitions: HashMap<i32, Option<Routes>>,
}

impl RouteMemory {
    /// Rebuilds a partition's routes from its committed route entries,
    /// oldest first (each flush's changes, or one standing for all before
    /// it), when this processor takes the partition over.
    pub fn load<'a>(
        &mut self,
        partition: i32,
        entries: impl IntoIterator<Item = &'a [u8]>,
    ) -> Result<(), String> {
        let mut routes = Routes::default();
        for entry in entries {
            routes.read_file(entry)?;
        }
        routes.forget_stale();
        self.partitions.insert(partition, Some(routes));
        Ok(())
    }

    /// The partition's routes for its next chunk.
    pub fn take(&mut self, partition: i32) -> Routes {
        self.partitions
            .get_mut(&partition)
            .and_then(Option::take)
            .unwrap_or_default()
    }

    /// After the chunk's commit: its routes are the partition's.
    pub fn committed(&mut self, partition: i32, routes: Routes) {
        self.partitions.insert(partition, Some(routes));
    }
}

#[cfg(test)]
mod tests {
    use candor_control::keyring::KeyringDoc;
    use candor_schemas::MasterSecret;

    use super::*;

    fn keys(tenant: &TenantId, seed: u8) -> Arc<TenantKeys> {
        let master = MasterSecret::from_bytes(&[seed; 32]).unwrap();
        Arc::new(KeyringDoc::new(&master, tenant, 0).keys(&master).unwrap())
    }

    fn point(at_ms: i64, received_ms: i64) -> RoutePoint {
        RoutePoint {
            at_ms,
            at: (48.0 + at_ms as f64 * 1e-9, 11.123456789),
            moving: Some(true),
            received_ms,
        }
    }

    fn ids() -> (TenantId, DeviceId, DeviceId) {
        (
            TenantId::new("acme").unwrap(),
            DeviceId::new("phone-1").unwrap(),
            DeviceId::new("phone-2").unwrap(),
        )
    }

    /// Commits `routes`' changes, as a flush does, into `entries`.
    fn flush(memory: &mut RouteMemory, entries: &mut Vec<Vec<u8>>, mut routes: Routes) {
        entries.extend(routes.take_changes());
        memory.committed(0, routes);
    }

    fn reloaded(entries: &[Vec<u8>]) -> Result<Routes, String> {
        let mut memory = RouteMemory::default();
        memory.load(0, entries.iter().map(Vec::as_slice))?;
        Ok(memory.take(0))
    }

    #[test]
    fn a_successor_carries_the_points_its_predecessor_committed() {
        let (tenant, one, two) = ids();
        let keys = keys(&tenant, 7);
        let (mut memory, mut entries) = (RouteMemory::default(), Vec::new());
        let mut routes = memory.take(0);
        routes.open(&tenant, &keys);
        routes.carry(&tenant, &one, Some(point(1_000, 5_000)));
        routes.carry(&tenant, &two, Some(point(2_000, 5_000)));
        flush(&mut memory, &mut entries, routes);
        let mut routes = memory.take(0);
        routes.carry(&tenant, &one, Some(point(3_000, 6_000)));
        routes.carry(&tenant, &two, None);
        flush(&mut memory, &mut entries, routes);
        assert_eq!(entries.len(), 2);

        // Sealed: neither the device nor the position is in an entry.
        for bytes in &entries {
            assert!(!bytes.windows(7).any(|w| w == b"phone-1"));
            assert!(!bytes.windows(8).any(|w| w == 11.123456789f64.to_be_bytes()));
        }

        let mut routes = reloaded(&entries).unwrap();
        // Still sealed until the tenant's keys open them.
        assert_eq!(routes.carried(&tenant, &one), None);
        routes.open(&tenant, &keys);
        assert_eq!(routes.carried(&tenant, &one), Some(point(3_000, 6_000)));
        assert_eq!(routes.carried(&tenant, &two), None);

        // One entry standing for all of them says the same.
        let whole = memory.take(0).snapshot();
        let mut routes = reloaded(&[whole]).unwrap();
        routes.open(&tenant, &keys);
        assert_eq!(routes.carried(&tenant, &one), Some(point(3_000, 6_000)));
        assert_eq!(routes.carried(&tenant, &two), None);
    }

    #[test]
    fn points_that_do_not_open_are_dropped_and_a_torn_entry_is_refused() {
        let (tenant, one, _) = ids();
        let (mut memory, mut entries) = (RouteMemory::default(), Vec::new());
        let mut routes = memory.take(0);
        routes.open(&tenant, &keys(&tenant, 7));
        routes.carry(&tenant, &one, Some(point(1_000, 5_000)));
        flush(&mut memory, &mut entries, routes);

        // Other keys (the tenant's were destroyed and it was made anew).
        let mut routes = reloaded(&entries).unwrap();
        routes.open(&tenant, &keys(&tenant, 8));
        assert_eq!(routes.carried(&tenant, &one), None);

        let torn = entries[0][..entries[0].len() - 3].to_vec();
        let refused = reloaded(&[torn]);
        assert!(
            matches!(&refused, Err(e) if e.contains("truncated")),
            "{:?}",
            refused.err()
        );
    }

    #[test]
    fn only_a_record_received_within_the_memory_continues_a_route() {
        let p = point(60_000, 1_000_000);
        let max_segment = 10 * 60_000;
        assert!(p.continued_by(120_000, 1_000_000 + ROUTE_MEMORY_MS, max_segment));
        assert!(!p.continued_by(120_000, 1_000_001 + ROUTE_MEMORY_MS, max_segment));
        // Older or too far after the carried point.
        assert!(!p.continued_by(60_000, 1_000_000, max_segment));
        assert!(!p.continued_by(60_001 + max_segment, 1_000_000, max_segment));

        // Forgetting keeps what a record may still continue.
        let (tenant, one, two) = ids();
        let mut routes = Routes::default();
        routes.carry(&tenant, &one, Some(p));
        let newest = 1_000_000 + ROUTE_MEMORY_MS + FORGET_SLACK_MS;
        routes.carry(&tenant, &two, Some(point(0, newest)));
        routes.forget_stale();
        assert_eq!(routes.carried(&tenant, &one), Some(p));
        routes.carry(&tenant, &two, Some(point(0, newest + 1)));
        routes.forget_stale();
        assert_eq!(routes.carried(&tenant, &one), None);
    }
}
