//! The replay window: batch ids this node accepted recently, so that an
//! agent retrying a batch whose 202 it never saw gets 202 again and the
//! batch is not appended twice.
//!
//! The key covers tenant, device and batch id: the batch id is chosen by
//! the agent, and a device must not be able to mask another device's batch
//! by reusing its id. The window is bounded in time and in entries; a retry
//! that reaches another node, or arrives after its entry left the window,
//! is appended again and the processor deduplicates it by batch id.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use candor_schemas::envelope::EnvelopeHeader;
use sha2::{Digest, Sha256};

/// Independent locks, so concurrent requests rarely wait on each other.
const SHARDS: usize = 16;

/// 128 bits of SHA-256 over tenant, device and batch id: a fixed-size key
/// whatever the ids' lengths, with no practical chance of two colliding.
type BatchKey = [u8; 16];

#[derive(Debug, Clone, Copy)]
pub struct ReplayConfig {
    /// How long an accepted batch id is remembered.
    pub window: Duration,
    /// Most ids remembered; past it the oldest are forgotten early.
    pub max_entries: usize,
}

impl Default for ReplayConfig {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(600),
            max_entries: 500_000,
        }
    }
}

enum State {
    /// Being opened and appended right now by another request.
    InFlight,
    Accepted,
}

#[derive(Default)]
struct Shard {
    states: HashMap<BatchKey, State>,
    /// Accepted keys, oldest first.
    accepted: VecDeque<(Instant, BatchKey)>,
}

pub struct ReplayWindow {
    config: ReplayConfig,
    shards: Vec<Mutex<Shard>>,
}

/// What the window says about a batch.
pub enum Claim<'a> {
    /// Not seen: the caller owns the id until it drops or accepts the guard.
    Fresh(ClaimGuard<'a>),
    /// Accepted before, within the window.
    Accepted,
    /// Another request is appending the same batch right now.
    InFlight,
}

impl ReplayWindow {
    pub fn new(config: ReplayConfig) -> Self {
        Self {
            config,
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
        }
    }

    fn key(header: &EnvelopeHeader) -> BatchKey {
        let mut hash = Sha256::new();
        for part in [
            header.tenant.as_str().as_bytes(),
            header.device.as_str().as_bytes(),
        ] {
            // Length-prefixed, so ("ab","c") and ("a","bc") differ.
            hash.update([part.len() as u8]);
            hash.update(part);
        }
        hash.update(header.batch_id);
        hash.finalize()[..16].try_into().expect("16 bytes")
    }

    fn shard(&self, key: &BatchKey) -> std::sync::MutexGuard<'_, Shard> {
        self.shards[key[0] as usize % SHARDS]
            .lock()
            .expect("no panic while holding the lock")
    }

    pub fn claim(&self, header: &EnvelopeHeader) -> Claim<'_> {
        let key = Self::key(header);
        let mut shard = self.shard(&key);
        self.expire(&mut shard, Instant::now());
        match shard.states.get(&key) {
            Some(State::Accepted) => Claim::Accepted,
            Some(State::InFlight) => Claim::InFlight,
            None => {
                shard.states.insert(key, State::InFlight);
                Claim::Fresh(ClaimGuard {
                    window: self,
                    key,
                    accepted: false,
                })
            }
        }
    }

    /// Ids remembered right now (accepted and in flight).
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| {
                s.lock()
                    .expect("no panic while holding the lock")
                    .states
                    .len()
            })
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forgets ids past the window, and the oldest beyond the entry cap.
    fn expire(&self, shard: &mut Shard, now: Instant) {
        let cap = self.config.max_entries.div_ceil(SHARDS);
        while let Some(&(at, key)) = shard.accepted.front() {
            if now.duration_since(at) < self.config.window && shard.accepted.len() <= cap {
                break;
            }
            shard.accepted.pop_front();
            shard.states.remove(&key);
        }
    }
}

/// Ownership of a batch id while its request runs. Dropped without
/// [`ClaimGuard::accepted`] (the batch was refused or the log failed), the
/// id is released and a retry is appended normally.
pub struct ClaimGuard<'a> {
    window: &'a ReplayWindow,
    key: BatchKey,
    accepted: bool,
}

impl ClaimGuard<'_> {
    /// The batch is durable: remember it for the window.
    pub fn accepted(mut self) {
        let mut shard = self.window.shard(&self.key);
        shard.states.insert(self.key, State::Accepted);
        shard.accepted.push_back((Instant::now(), self.key));
        self.accepted = true;
    }
}

impl Drop for ClaimGuard<'_> {
    fn drop(&mut self) {
        if !self.accepted {
            self.window.shard(&self.key).states.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candor_schemas::{DeviceId, EmployeeId, TenantId};

    fn header(tenant: &str, device: &str, id: u8) -> EnvelopeHeader {
        EnvelopeHeader {
            key_version: 1,
            batch_id: [id; 16],
            tenant: TenantId::new(tenant).unwrap(),
            employee: EmployeeId::new("e1").unwrap(),
            device: DeviceId::new(device).unwrap(),
        }
    }

    fn is_fresh(claim: Claim<'_>) -> bool {
        matches!(claim, Claim::Fresh(_))
    }

    #[test]
    fn an_accepted_id_is_a_replay_and_a_released_one_is_not() {
        let w = ReplayWindow::new(ReplayConfig::default());
        let h = header("acme", "d1", 1);
        let Claim::Fresh(guard) = w.claim(&h) else {
            panic!("fresh")
        };
        assert!(matches!(w.claim(&h), Claim::InFlight));
        drop(guard); // refused or the log failed: a retry must be appended
        let Claim::Fresh(guard) = w.claim(&h) else {
            panic!("released")
        };
        guard.accepted();
        assert!(matches!(w.claim(&h), Claim::Accepted));
        // Same batch id from another device or tenant is another batch.
        assert!(is_fresh(w.claim(&header("acme", "d2", 1))));
        assert!(is_fresh(w.claim(&header("globex", "d1", 1))));
    }

    #[test]
    fn ids_leave_after_the_window_and_beyond_the_cap() {
        let w = ReplayWindow::new(ReplayConfig {
            window: Duration::ZERO,
            max_entries: 1000,
        });
        let h = header("acme", "d1", 1);
        let Claim::Fresh(g) = w.claim(&h) else {
            panic!()
        };
        g.accepted();
        assert!(is_fresh(w.claim(&h)), "a zero window remembers nothing");

        let w = ReplayWindow::new(ReplayConfig {
            window: Duration::from_secs(3600),
            max_entries: SHARDS,
        });
        for id in 0..=255u8 {
            if let Claim::Fresh(g) = w.claim(&header("acme", "d1", id)) {
                g.accepted();
            }
        }
        // One per shard, plus at most one over the cap per shard until its next claim.
        assert!(w.len() <= 2 * SHARDS, "{} entries", w.len());
    }
}
