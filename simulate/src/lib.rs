//! Simulated workforce agents: what `candor simulate`, `scripts/demo` and
//! the benchmarks send to Candor.
//!
//! A [`Simulation`] is a tenant's staff: employees `emp-00000`, `emp-00001`,
//! ... in departments (a pure function of the employee's index, so the
//! directory comes from the same parameters), each with habits drawn once
//! from the seed. [`Simulation::day`] turns one employee and one date into
//! the batches their devices upload:
//!
//! - office staff: a laptop (`dev-XXXXX-laptop`) sampling every minute from
//!   arrival to departure, with a lunch break and short breaks (no samples),
//!   meetings (idle samples), the apps of their department (an app name and,
//!   for browsers, a host; never a window title, URL path, keystroke,
//!   screenshot or message content), clock-in and clock-out;
//! - field staff (the `Field` department): the same laptop at the depot in
//!   the morning and evening, and a phone (`dev-XXXXX-phone`) that clocks in
//!   and out and reports a GPS fix a minute along a route: driving at city
//!   speeds, stops at customer sites, around the tenant's centre;
//! - some days absent (no batch at all);
//! - on a share of device-days, an offline stretch: those batches are
//!   marked late, with the `sent_at_ms` of when the device came back, for
//!   the caller to send after everything else (the processor's late-data
//!   path).
//!
//! Batches cover [`BATCH_MINUTES`] each (or [`Params::batch_minutes`]),
//! are sealed exactly as
//! `schemas/WIRE.md` says ([`SimulatedAgent::seal`]) and posted with the
//! retry rules agents follow ([`post_batch`]). Everything is deterministic
//! for a seed except the envelopes' batch ids and nonces, which are fresh
//! random bytes as the wire contract requires.
//!
//! Device keys come from the master secret: ingest derives them from the
//! envelope's ids, so simulated devices need no enrollment.

mod apps;
mod day;
mod geo;
mod population;
mod send;

use candor_schemas::batch::Batch;
use candor_schemas::envelope::{self, EnvelopeHeader};
use candor_schemas::keys::MasterSecret;
use candor_schemas::{DeviceId, EmployeeId, TenantId};
use chrono::{Datelike, NaiveDate, Weekday};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

pub use chrono_tz::Tz;
pub use geo::distance_m;
pub use population::{
    DayStatus, DirectoryEntry, EmployeeDay, FIELD_DEPARTMENT, Params, Simulation, Upload,
};
pub use send::{Outcome, post_batch};

/// An agent posts one batch per this many minutes of work (WIRE.md: every
/// few minutes).
pub const BATCH_MINUTES: i64 = 5;
/// Each activity sample covers one minute.
pub const SAMPLE_S: u32 = 60;

/// Which of an employee's devices sent a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Device {
    /// `dev-XXXXX-laptop`: every employee has one.
    Laptop,
    /// `dev-XXXXX-phone`: field staff only; carries the GPS route.
    Phone,
}

/// One simulated device of one employee: the ids its envelopes carry.
#[derive(Debug, Clone)]
pub struct SimulatedAgent {
    pub tenant: TenantId,
    pub employee: EmployeeId,
    pub device: DeviceId,
    pub key_version: u32,
}

impl SimulatedAgent {
    /// Employee `emp-<index>` with their laptop `dev-<index>-laptop`.
    pub fn new(tenant: &TenantId, index: usize) -> Self {
        Self::with_device(tenant, index, Device::Laptop)
    }

    /// Employee `emp-<index>` with one of their devices.
    pub fn with_device(tenant: &TenantId, index: usize, device: Device) -> Self {
        let kind = match device {
            Device::Laptop => "laptop",
            Device::Phone => "phone",
        };
        Self {
            tenant: tenant.clone(),
            employee: employee_id(index),
            device: DeviceId::new(format!("dev-{index:05}-{kind}")).expect("valid id"),
            key_version: 1,
        }
    }

    /// The batches of one office workday (UTC, the general app mix), or
    /// none on weekends. Habits come from `seed`, so the same seed gives
    /// the same day. Never absent, never late, never GPS: what the
    /// benchmarks need for a predictable load. The full population (field
    /// staff, absences, late uploads, departments) is [`Simulation`].
    pub fn workday(&self, day: NaiveDate, seed: u64) -> Vec<Batch> {
        if is_weekend(day) {
            return Vec::new();
        }
        let mut rng = StdRng::seed_from_u64(seed);
        let habits = day::Habits::draw(&mut rng, 0.0);
        let clock = day::DayClock::new(Tz::UTC, day);
        let timeline = day::office_day(&habits, &apps::GENERAL, &clock, &mut rng);
        timeline.into_batches(BATCH_MINUTES)
    }

    /// Seals a batch as the agent would (fresh batch id and nonce from
    /// `rng`), per WIRE.md: zstd, then XChaCha20-Poly1305 under the device
    /// key, the header as associated data.
    pub fn seal(&self, master: &MasterSecret, batch: &Batch, rng: &mut impl Rng) -> Vec<u8> {
        let header = EnvelopeHeader {
            key_version: self.key_version,
            batch_id: rng.random(),
            tenant: self.tenant.clone(),
            employee: self.employee.clone(),
            device: self.device.clone(),
        };
        let key = master.device_key(&self.tenant, &self.employee, &self.device, self.key_version);
        let json = serde_json::to_vec(batch).expect("batches serialize");
        envelope::seal_json(&header, &key, &rng.random(), &json)
    }
}

/// `emp-00042` for index 42.
pub fn employee_id(index: usize) -> EmployeeId {
    EmployeeId::new(format!("emp-{index:05}")).expect("valid id")
}

/// Saturday and Sunday: nobody works.
pub fn is_weekend(day: NaiveDate) -> bool {
    matches!(day.weekday(), Weekday::Sat | Weekday::Sun)
}

#[cfg(test)]
mod tests;
