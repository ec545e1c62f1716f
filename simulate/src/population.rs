//! A tenant's simulated staff: who works in which department, who works in
//! the field, and what each of them uploads on a given day.

use candor_schemas::batch::Batch;
use candor_schemas::{EmployeeId, TenantId};
use chrono::{Datelike, NaiveDate};
use chrono_tz::Tz;
use rand::SeedableRng;
use rand::rngs::StdRng;

use crate::day::{self, DayClock, Habits};
use crate::{Device, SimulatedAgent, apps, employee_id, is_weekend};

/// The department of field staff.
pub const FIELD_DEPARTMENT: &str = "Field";

/// Office departments in the order they are used, with their relative
/// sizes.
const OFFICE_DEPARTMENTS: &[(&str, u32)] = &[
    ("Sales", 4),
    ("Support", 4),
    ("Engineering", 5),
    ("Finance", 2),
    ("Operations", 3),
    ("Marketing", 2),
    ("HR", 1),
    ("Legal", 1),
    ("Procurement", 1),
    ("Research", 2),
    ("Design", 1),
    ("Quality", 1),
];

/// What to simulate. [`Params::new`] gives the defaults `candor simulate`
/// uses.
#[derive(Debug, Clone)]
pub struct Params {
    pub tenant: TenantId,
    pub employees: usize,
    /// Departments, the `Field` department of field staff included when
    /// there are any (`field_share` > 0 and two or more departments).
    pub departments: usize,
    /// The same seed gives the same staff, habits and workdays.
    pub seed: u64,
    /// Share of employees in the field: a phone with GPS along a route of
    /// customer sites, and a laptop at the depot.
    pub field_share: f64,
    /// Share of device-days with an offline stretch, whose batches are
    /// uploaded late.
    pub late_share: f64,
    /// Average share of workdays an employee is absent.
    pub absence_share: f64,
    /// The depot field staff start from, and around which their customers
    /// are: (latitude, longitude) in degrees.
    pub centre: (f64, f64),
    /// The tenant's time zone: workdays run on its local clock.
    pub time_zone: Tz,
    /// Minutes between a device's uploads: each batch holds that much of
    /// its day.
    pub batch_minutes: i64,
}

impl Params {
    pub fn new(tenant: TenantId, employees: usize) -> Self {
        Self {
            tenant,
            employees,
            departments: 5,
            seed: 1,
            field_share: 0.15,
            late_share: 0.05,
            absence_share: 0.04,
            // Munich.
            centre: (48.137, 11.575),
            time_zone: Tz::UTC,
            batch_minutes: crate::BATCH_MINUTES,
        }
    }
}

/// One employee of the directory the simulation matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectoryEntry {
    pub employee: EmployeeId,
    pub department: String,
    /// The first employee of each department manages it.
    pub manages: Option<String>,
}

/// What one employee did on one day.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DayStatus {
    Weekend,
    Absent,
    Worked,
}

/// One batch one of an employee's devices uploads.
#[derive(Debug, Clone)]
pub struct Upload {
    pub device: Device,
    pub batch: Batch,
    /// Held back while the device was offline: send it after the others.
    /// Its `sent_at_ms` is when the device came back.
    pub late: bool,
}

/// One employee's day.
#[derive(Debug, Clone)]
pub struct EmployeeDay {
    pub employee: usize,
    pub status: DayStatus,
    /// Every device's batches, each device's in the order it sends them.
    pub uploads: Vec<Upload>,
}

/// A tenant's simulated staff.
#[derive(Debug, Clone)]
pub struct Simulation {
    params: Params,
    /// Department names, office ones first, then `Field` if there is one.
    departments: Vec<String>,
    /// Office employee `j` is in department `office_cycle[j % len]`.
    office_cycle: Vec<usize>,
    /// The index of `Field` in `departments`.
    field: Option<usize>,
}

impl Simulation {
    pub fn new(params: Params) -> Result<Self, String> {
        if params.departments == 0 {
            return Err("there must be at least one department".into());
        }
        for (name, share) in [
            ("field share", params.field_share),
            ("late share", params.late_share),
            ("absence share", params.absence_share),
        ] {
            if !(0.0..=1.0).contains(&share) {
                return Err(format!("the {name} must be between 0 and 1, not {share}"));
            }
        }
        let (lat, lon) = params.centre;
        if !(-80.0..=80.0).contains(&lat) || !(-180.0..=180.0).contains(&lon) {
            return Err(format!(
                "the centre {lat},{lon} must be a latitude within 80 degrees of the equator and a longitude"
            ));
        }
        if !(1..=60).contains(&params.batch_minutes) {
            return Err(format!(
                "uploads must be 1 to 60 minutes apart, not {}",
                params.batch_minutes
            ));
        }
        if params.employees > 100_000 {
            return Err("at most 100000 employees (ids are emp-00000 to emp-99999)".into());
        }
        let with_field = params.field_share > 0.0 && params.departments >= 2;
        let offices = params.departments - usize::from(with_field);
        let mut departments = Vec::new();
        let mut weights = Vec::new();
        for k in 0..offices {
            let (name, weight) = OFFICE_DEPARTMENTS.get(k).map_or_else(
                || (format!("Department {}", k + 1), 1),
                |&(n, w)| (n.to_string(), w),
            );
            departments.push(name);
            weights.push(weight);
        }
        let field = with_field.then(|| {
            departments.push(FIELD_DEPARTMENT.to_string());
            departments.len() - 1
        });
        Ok(Self {
            office_cycle: smooth_round_robin(&weights),
            departments,
            field,
            params,
        })
    }

    pub fn params(&self) -> &Params {
        &self.params
    }

    /// Department names, office departments first, `Field` last.
    pub fn departments(&self) -> &[String] {
        &self.departments
    }

    /// Field staff among employees `0..i`: `round(i * field_share)`, so
    /// they are spread evenly and a handful of employees already has one.
    fn field_before(&self, i: usize) -> usize {
        if self.field.is_none() {
            return 0;
        }
        (i as f64 * self.params.field_share + 0.5).floor() as usize
    }

    /// Whether employee `i` works in the field.
    pub fn is_field(&self, i: usize) -> bool {
        self.field_before(i + 1) > self.field_before(i)
    }

    /// Employee `i`'s department: a function of `i` and the parameters
    /// only, so the directory and the workdays always agree.
    pub fn department_of(&self, i: usize) -> &str {
        let k = match self.field {
            Some(field) if self.is_field(i) => field,
            _ => {
                let office = i - self.field_before(i);
                self.office_cycle[office % self.office_cycle.len()]
            }
        };
        &self.departments[k]
    }

    /// The employee's devices: a laptop, and a phone for field staff.
    pub fn devices(&self, i: usize) -> Vec<Device> {
        if self.is_field(i) {
            vec![Device::Laptop, Device::Phone]
        } else {
            vec![Device::Laptop]
        }
    }

    pub fn agent(&self, i: usize, device: Device) -> SimulatedAgent {
        SimulatedAgent::with_device(&self.params.tenant, i, device)
    }

    /// The directory of these employees: department of each, and the first
    /// employee of each department as its manager.
    pub fn directory(&self) -> Vec<DirectoryEntry> {
        let mut managed = std::collections::BTreeSet::new();
        (0..self.params.employees)
            .map(|i| {
                let department = self.department_of(i).to_string();
                let manages = managed
                    .insert(department.clone())
                    .then(|| department.clone());
                DirectoryEntry {
                    employee: employee_id(i),
                    department,
                    manages,
                }
            })
            .collect()
    }

    /// Employee `i`'s habits: drawn once from the seed.
    fn habits(&self, i: usize) -> Habits {
        let mut rng = rng_for(self.params.seed, &[i as u64, 0x4841_4249]);
        Habits::draw(&mut rng, self.params.absence_share)
    }

    /// What employee `i` uploads on `date` (a day in the tenant's time
    /// zone). Deterministic for the parameters.
    pub fn day(&self, i: usize, date: NaiveDate) -> EmployeeDay {
        let nothing = |status| EmployeeDay {
            employee: i,
            status,
            uploads: Vec::new(),
        };
        if is_weekend(date) {
            return nothing(DayStatus::Weekend);
        }
        let habits = self.habits(i);
        let day_number = date.num_days_from_ce() as u64;
        let mut rng = rng_for(self.params.seed, &[i as u64, day_number, 0x0044_4159]);
        if rand::Rng::random_bool(&mut rng, habits.absence) {
            return nothing(DayStatus::Absent);
        }
        let clock = DayClock::new(self.params.time_zone, date);
        let timelines = if self.is_field(i) {
            let (laptop, phone) = day::field_day(&habits, self.params.centre, &clock, &mut rng);
            vec![(Device::Laptop, laptop), (Device::Phone, phone)]
        } else {
            let mix = apps::of_department(self.department_of(i));
            vec![(
                Device::Laptop,
                day::office_day(&habits, mix, &clock, &mut rng),
            )]
        };
        let mut uploads = Vec::new();
        for (device, timeline) in timelines {
            let mut offline = rng_for(
                self.params.seed,
                &[i as u64, day_number, device as u64, 0x4c41_5445],
            );
            let batches = day::offline_stretch(
                timeline.into_batches(self.params.batch_minutes),
                self.params.late_share,
                &mut offline,
            );
            uploads.extend(batches.into_iter().map(|(batch, late)| Upload {
                device,
                batch,
                late,
            }));
        }
        EmployeeDay {
            employee: i,
            status: DayStatus::Worked,
            uploads,
        }
    }
}

/// A random stream of its own for each purpose, from the seed: changing one
/// knob (say the late share) leaves everything else as it was.
fn rng_for(seed: u64, parts: &[u64]) -> StdRng {
    let mut x = splitmix64(seed);
    for &p in parts {
        x = splitmix64(x ^ p);
    }
    StdRng::seed_from_u64(x)
}

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// One cycle of smooth weighted round robin: each index as often as its
/// weight, spread out (heaviest first), so the first few employees already
/// cover the biggest departments.
fn smooth_round_robin(weights: &[u32]) -> Vec<usize> {
    let total: i64 = weights.iter().map(|&w| i64::from(w)).sum();
    let mut current = vec![0i64; weights.len()];
    let mut cycle = Vec::new();
    for _ in 0..total {
        for (c, &w) in current.iter_mut().zip(weights) {
            *c += i64::from(w);
        }
        let best = (0..weights.len())
            .max_by_key(|&k| (current[k], std::cmp::Reverse(k)))
            .expect("at least one department");
        current[best] -= total;
        cycle.push(best);
    }
    cycle
}
