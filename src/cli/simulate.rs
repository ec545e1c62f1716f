//! `candor simulate`: simulated agents of a tenant's staff posting sealed
//! workdays to an ingest node (the generator is the `candor-simulate`
//! crate; this file reads the flags, sends, and reports).

use std::collections::{BTreeMap, HashMap};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use candor_control::{Directory, Member};
use candor_schemas::batch::Batch;
use candor_schemas::keys::MasterSecret;
use candor_schemas::{DeviceId, TenantId};
use candor_simulate::{DayStatus, Device, Outcome, Params, SimulatedAgent, Simulation, Tz};
use chrono::{Datelike, Days, NaiveDate, Utc};
use clap::Args;
use tokio::sync::Semaphore;

/// Attempts per batch before it counts as refused (409, 429 and 503 are
/// retried after their Retry-After, failed connections after a second).
const MAX_ATTEMPTS: u32 = 20;

/// `candor simulate --help`.
pub const LONG_ABOUT: &str = "Simulated agents: N employees in M departments of a tenant post realistic \
workdays of the last D days to an ingest node, sealed exactly as schemas/WIRE.md says. \
For demos, load tests and trying Candor out; it needs the deployment's master secret.\n\n\
What a workday looks like: arrival around 08:10-09:30 local time (some days late), clock-in, \
a sample of active and idle seconds every minute, a lunch break and short breaks (no \
samples), meetings (mostly idle), the apps of the employee's department (an app name and, \
for browsers, a host: never a window title, URL, keystroke, screenshot or message), \
clock-out after eight hours or so. Weekends are off, and about 4% of workdays are absences. \
Field staff (the Field department) also carry a phone that clocks in and out and reports a \
GPS fix a minute while they drive to customer sites around --centre and work there. On \
--late-share of the device-days a device goes offline for a while; its batches are sent \
after all the others, as a device coming back online does.\n\n\
The same flags always give the same employees, departments and workdays (--seed). \
Employees are emp-00000, emp-00001, ...; their devices dev-00000-laptop (and \
dev-00000-phone in the field). Device keys are derived from the master secret \
(CANDOR_MASTER_SECRET_FILE, CANDOR_MASTER_SECRET, or the master.key of CANDOR_DATA_DIR \
(default .candor) that `candor standalone` created), so no device needs enrolling. \
The tenant must exist, and keep data at least --days back (its plan's retention).\n\n\
Load the directory (who is in which department) before sending, so the processor can \
attribute departments:\n\n  \
candor simulate --tenant demo --employees 300 --directory-out directory.json --directory-only\n  \
candor directory load --tenant demo --file directory.json\n  \
candor simulate --tenant demo --employees 300 --days 7\n\n\
Progress goes to standard error, a summary to standard output. The exit status is 1 if \
any batch was refused.";

#[derive(Args)]
pub struct SimulateArgs {
    /// Base URL of the ingest node the agents post to; several (repeat
    /// the flag, or separate with commas) spread the employees over them,
    /// and an agent whose node does not answer fails over to the next.
    #[arg(long, default_value = "http://127.0.0.1:8080", value_delimiter = ',')]
    ingest: Vec<String>,
    /// Tenant the employees work for (create it first: `candor tenant create`).
    #[arg(long, default_value = "demo")]
    tenant: TenantId,
    /// Employees, emp-00000 upwards.
    #[arg(long, default_value_t = 20)]
    employees: usize,
    /// Departments: Sales, Support, Engineering, Finance, Operations,
    /// Marketing, ... and Field for field staff (when --field-share > 0).
    #[arg(long, default_value_t = 5)]
    departments: usize,
    /// Days simulated: the D days up to --last-day (weekends are in the
    /// span but nobody works on them).
    #[arg(long, default_value_t = 7, value_parser = clap::value_parser!(u64).range(1..=3660))]
    days: u64,
    /// Last day simulated, YYYY-MM-DD; yesterday (in --time-zone) by
    /// default. Must be before today: agents cannot send the future.
    #[arg(long)]
    last_day: Option<NaiveDate>,
    /// The tenant's IANA time zone: workdays follow its clock (work hours
    /// are counted in it too).
    #[arg(long, default_value = "UTC")]
    time_zone: Tz,
    /// Share of employees working in the field (phone with GPS, Field
    /// department), 0 to 1.
    #[arg(long, default_value_t = 0.15)]
    field_share: f64,
    /// Share of device-days with an offline stretch whose batches are
    /// uploaded late, at the end of the run, 0 to 1.
    #[arg(long, default_value_t = 0.05)]
    late_share: f64,
    /// Average share of workdays an employee is absent, 0 to 1.
    #[arg(long, default_value_t = 0.04)]
    absence_share: f64,
    /// The depot field staff start from, LAT,LON in degrees; their
    /// customers are within about 15 km of it.
    #[arg(long, default_value = "48.137,11.575", value_parser = parse_centre, allow_hyphen_values = true)]
    centre: (f64, f64),
    /// Minutes between a device's uploads (WIRE.md: every few minutes).
    /// Ingest's work grows with batches more than with events: longer
    /// intervals send the same events in fewer batches.
    #[arg(long, default_value_t = candor_simulate::BATCH_MINUTES, value_parser = clap::value_parser!(i64).range(1..=60))]
    batch_minutes: i64,
    /// Seed: the same seed, the same staff and workdays.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Batches in flight at once.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=1024))]
    concurrency: u32,
    /// Write the matching directory (employee to department, a manager per
    /// department) as JSON to this file, `-` for standard output; it is
    /// what `candor directory load` and PUT /v1/admin/directory take.
    #[arg(long)]
    directory_out: Option<PathBuf>,
    /// Only write the directory (--directory-out, standard output by
    /// default); send nothing. Needs no master secret.
    #[arg(long)]
    directory_only: bool,
}

fn parse_centre(text: &str) -> Result<(f64, f64), String> {
    let (lat, lon) = text
        .split_once(',')
        .ok_or_else(|| format!("{text:?} is not LAT,LON"))?;
    let number = |s: &str| {
        s.trim()
            .parse::<f64>()
            .map_err(|_| format!("{s:?} is not a number of degrees"))
    };
    Ok((number(lat)?, number(lon)?))
}

/// The directory the simulation matches, as the control plane takes it.
fn directory(sim: &Simulation) -> Result<Directory> {
    let directory = Directory {
        employees: sim
            .directory()
            .into_iter()
            .map(|e| {
                (
                    e.employee,
                    Member {
                        department: e.department,
                        manages: e.manages.into_iter().collect(),
                    },
                )
            })
            .collect(),
    };
    directory.validate()?;
    Ok(directory)
}

fn write_directory(sim: &Simulation, to: Option<&PathBuf>) -> Result<()> {
    let mut json = serde_json::to_vec_pretty(&directory(sim)?)?;
    json.push(b'\n');
    match to {
        Some(path) if path.as_os_str() != "-" => std::fs::write(path, json)
            .with_context(|| format!("writing the directory to {}", path.display())),
        _ => {
            use std::io::Write;
            std::io::stdout().write_all(&json)?;
            Ok(())
        }
    }
}

/// Counts, shared with the tasks that post.
#[derive(Default)]
struct Tally {
    accepted: AtomicU64,
    accepted_late: AtomicU64,
    refused: AtomicU64,
    events: AtomicU64,
    activity: AtomicU64,
    app_usage: AtomicU64,
    gps: AtomicU64,
    attendance: AtomicU64,
    /// Refusals by status and reason.
    refusals: Mutex<BTreeMap<String, u64>>,
}

impl Tally {
    fn accept(&self, batch: &Batch, late: bool) {
        self.accepted.fetch_add(1, Ordering::Relaxed);
        self.accepted_late
            .fetch_add(u64::from(late), Ordering::Relaxed);
        self.events
            .fetch_add(batch.event_count() as u64, Ordering::Relaxed);
        for (counter, n) in [
            (&self.activity, batch.activity.len()),
            (&self.app_usage, batch.app_usage.len()),
            (&self.gps, batch.gps.len()),
            (&self.attendance, batch.attendance.len()),
        ] {
            counter.fetch_add(n as u64, Ordering::Relaxed);
        }
    }

    fn refuse(&self, why: String) {
        self.refused.fetch_add(1, Ordering::Relaxed);
        *self
            .refusals
            .lock()
            .expect("not poisoned")
            .entry(why)
            .or_default() += 1;
    }

    fn line(&self) -> String {
        format!(
            "{} batches accepted, {} refused, {} events",
            self.accepted.load(Ordering::Relaxed),
            self.refused.load(Ordering::Relaxed),
            self.events.load(Ordering::Relaxed)
        )
    }
}

/// Posts batches, `concurrency` at a time, and each device's one at a
/// time, in order, as an agent does: a device's next batch waits for the
/// answer to its previous one (retries included).
struct Sender {
    client: reqwest::Client,
    /// The batch route of every ingest node.
    urls: Vec<String>,
    master: MasterSecret,
    gate: Arc<Semaphore>,
    /// Held by the post of each device's batch in flight.
    in_flight: HashMap<DeviceId, Arc<tokio::sync::Mutex<()>>>,
    tasks: tokio::task::JoinSet<()>,
    tally: Arc<Tally>,
}

impl Sender {
    /// Posts employee `i`'s batch, first to the employee's own node.
    async fn send(
        &mut self,
        i: usize,
        agent: &SimulatedAgent,
        batch: Batch,
        late: bool,
    ) -> Result<()> {
        let body = agent.seal(&self.master, &batch, &mut rand::rng());
        let device = self
            .in_flight
            .entry(agent.device.clone())
            .or_default()
            .clone()
            .lock_owned()
            .await;
        let permit = self.gate.clone().acquire_owned().await?;
        let mut urls = self.urls.clone();
        let home = i % urls.len();
        urls.rotate_left(home);
        let (client, tally) = (self.client.clone(), self.tally.clone());
        self.tasks.spawn(async move {
            let outcome = candor_simulate::post_batch(&client, &urls, body, MAX_ATTEMPTS).await;
            drop((permit, device));
            match outcome {
                Ok(Outcome::Accepted { .. }) => tally.accept(&batch, late),
                Ok(Outcome::Rejected { status, reason }) => {
                    tally.refuse(format!("{status} {reason}"))
                }
                Err(e) => tally.refuse(format!("no answer: {e}")),
            }
        });
        // Finished posts are reaped as we go.
        while self.tasks.try_join_next().is_some() {}
        Ok(())
    }

    async fn finish(&mut self) {
        while self.tasks.join_next().await.is_some() {}
    }
}

/// Progress on standard error: a line rewritten in place on a terminal,
/// a line every 10 s otherwise.
fn progress(tally: Arc<Tally>, stage: Arc<Mutex<String>>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let terminal = std::io::stderr().is_terminal();
        let every = Duration::from_millis(if terminal { 500 } else { 10_000 });
        loop {
            tokio::time::sleep(every).await;
            let stage = stage.lock().expect("not poisoned").clone();
            if terminal {
                eprint!("\r\x1b[K  {stage}: {}", tally.line());
            } else {
                eprintln!("  {stage}: {}", tally.line());
            }
        }
    })
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// Ends a progress line in place before printing a whole line.
fn clear_line() {
    if std::io::stderr().is_terminal() {
        eprint!("\r\x1b[K");
    }
}

pub async fn run(args: SimulateArgs, config: &candor::config::Config) -> Result<()> {
    let mut params = Params::new(args.tenant.clone(), args.employees);
    params.departments = args.departments;
    params.seed = args.seed;
    params.field_share = args.field_share;
    params.late_share = args.late_share;
    params.absence_share = args.absence_share;
    params.centre = args.centre;
    params.time_zone = args.time_zone;
    params.batch_minutes = args.batch_minutes;
    let sim = Simulation::new(params).map_err(anyhow::Error::msg)?;
    if args.directory_only {
        return write_directory(&sim, args.directory_out.as_ref());
    }
    if let Some(path) = &args.directory_out {
        write_directory(&sim, Some(path))?;
    }

    let master = candor::node::master_secret(config)?;
    let today = Utc::now().with_timezone(&args.time_zone).date_naive();
    let last = match args.last_day {
        Some(day) if day >= today => {
            bail!(
                "--last-day {day} is not before today ({today} in {})",
                args.time_zone
            )
        }
        Some(day) => day,
        None => today - Days::new(1),
    };
    let days: Vec<NaiveDate> = (0..args.days).rev().map(|k| last - Days::new(k)).collect();
    let workdays = days
        .iter()
        .filter(|d| !candor_simulate::is_weekend(**d))
        .count();
    let field = (0..args.employees).filter(|&i| sim.is_field(i)).count();
    let mut sizes: BTreeMap<&str, usize> = BTreeMap::new();
    for i in 0..args.employees {
        *sizes.entry(sim.department_of(i)).or_default() += 1;
    }
    let urls: Vec<String> = args
        .ingest
        .iter()
        .map(|base| format!("{}/v1/batches", base.trim_end_matches('/')))
        .collect();
    let url = urls.join(", ");
    eprintln!(
        "simulate: {} employees of tenant {} ({}), {field} of them in the field with a phone",
        args.employees,
        args.tenant,
        sim.departments()
            .iter()
            .map(|d| format!("{d} {}", sizes.get(d.as_str()).unwrap_or(&0)))
            .collect::<Vec<_>>()
            .join(", "),
    );
    eprintln!(
        "simulate: {} day{}, {} to {} ({workdays} workday{}, {}), posting to {url}",
        days.len(),
        plural(days.len()),
        days[0],
        last,
        plural(workdays),
        args.time_zone
    );

    let started = Instant::now();
    let tally = Arc::new(Tally::default());
    let stage = Arc::new(Mutex::new(String::from("starting")));
    let ticker = progress(tally.clone(), stage.clone());
    let mut sender = Sender {
        client: reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()?,
        urls,
        master,
        gate: Arc::new(Semaphore::new(args.concurrency as usize)),
        in_flight: HashMap::new(),
        tasks: tokio::task::JoinSet::new(),
        tally: tally.clone(),
    };
    let agents: Vec<Vec<(Device, SimulatedAgent)>> = (0..args.employees)
        .map(|i| {
            sim.devices(i)
                .into_iter()
                .map(|d| (d, sim.agent(i, d)))
                .collect()
        })
        .collect();
    let agent = |i: usize, device: Device| {
        &agents[i]
            .iter()
            .find(|(d, _)| *d == device)
            .expect("the employee has this device")
            .1
    };
    let (mut worked, mut absent) = (0u64, 0u64);
    let mut held_back: Vec<(usize, Device, Batch)> = Vec::new();
    for (n, day) in days.iter().enumerate() {
        let mut on_time: Vec<(usize, Device, Batch)> = Vec::new();
        let (mut present, mut away, mut late_batches) = (0, 0, 0);
        for i in 0..args.employees {
            let d = sim.day(i, *day);
            match d.status {
                DayStatus::Weekend => {}
                DayStatus::Absent => away += 1,
                DayStatus::Worked => present += 1,
            }
            for u in d.uploads {
                if u.late {
                    late_batches += 1;
                    held_back.push((i, u.device, u.batch));
                } else {
                    on_time.push((i, u.device, u.batch));
                }
            }
        }
        (worked, absent) = (worked + present, absent + away);
        // Everyone uploads every few minutes: in time order, as the
        // ingest node would see them.
        on_time.sort_by_key(|(i, device, b)| (b.sent_at_ms, *i, *device));
        clear_line();
        if candor_simulate::is_weekend(*day) {
            eprintln!(
                "  day {}/{} {day} {}: weekend, nobody works",
                n + 1,
                days.len(),
                day.weekday()
            );
        } else {
            eprintln!(
                "  day {}/{} {day} {}: {present} at work, {away} absent; {} batches queued, {late_batches} held back by offline devices",
                n + 1,
                days.len(),
                day.weekday(),
                on_time.len(),
            );
        }
        *stage.lock().expect("not poisoned") = format!("day {}/{} {day}", n + 1, days.len());
        for (i, device, batch) in on_time {
            sender.send(i, agent(i, device), batch, false).await?;
        }
    }
    // Devices back online send their backlog, oldest first.
    held_back.sort_by_key(|(i, device, b)| (b.sent_at_ms, *i, *device));
    clear_line();
    eprintln!(
        "  late uploads: {} batches from devices that were offline, sent last",
        held_back.len()
    );
    *stage.lock().expect("not poisoned") = "late uploads".into();
    for (i, device, batch) in held_back {
        sender.send(i, agent(i, device), batch, true).await?;
    }
    sender.finish().await;
    ticker.abort();
    clear_line();

    let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
    println!(
        "simulate: {} batches accepted ({} uploaded late), {} refused",
        load(&tally.accepted),
        load(&tally.accepted_late),
        load(&tally.refused)
    );
    println!(
        "simulate: {} events accepted: {} activity samples, {} app usage, {} GPS points, {} attendance",
        load(&tally.events),
        load(&tally.activity),
        load(&tally.app_usage),
        load(&tally.gps),
        load(&tally.attendance)
    );
    println!(
        "simulate: {worked} employee-days worked, {absent} absent, in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let refusals = tally.refusals.lock().expect("not poisoned");
    if !refusals.is_empty() {
        for (why, n) in refusals.iter() {
            eprintln!("simulate: refused {n} times: {why}");
        }
        bail!("{} batches were refused", load(&tally.refused));
    }
    Ok(())
}
