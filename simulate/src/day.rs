//! One device's day: habits, the events of an office or field workday, and
//! how they become batches.

use std::collections::BTreeMap;

use candor_schemas::batch::{
    ActivitySample, AppUsage, AttendanceEvent, AttendanceKind, Batch, GpsPoint,
};
use chrono::{NaiveDate, Offset, TimeZone};
use chrono_tz::Tz;
use rand::Rng;
use rand::rngs::StdRng;

use crate::SAMPLE_S;
use crate::apps::{self, App, AppMix};
use crate::geo::{self, Position};

const MINUTE: i64 = 60;
const HOUR: i64 = 3600;
/// Nobody is still at work after this (local time).
const LATEST_END: i64 = 20 * HOUR;

/// How one employee works, drawn once: the same person every day, give or
/// take the day's jitter.
#[derive(Debug, Clone)]
pub(crate) struct Habits {
    /// Usual arrival, seconds after local midnight.
    pub arrival_s: i64,
    /// Usual time from arrival to departure, lunch included.
    pub day_s: i64,
    pub lunch_s: i64,
    pub lunch_len_s: i64,
    /// Chance that a minute of work is a busy one.
    pub diligence: f64,
    /// Chance of staying in the same app from one minute to the next.
    pub focus: f64,
    /// Chance of being absent on a workday.
    pub absence: f64,
    /// Field staff: where their customers are, from the depot, in metres
    /// (north, east).
    pub territory_m: (f64, f64),
}

impl Habits {
    /// Habits for someone whose absences average `absence_share`.
    pub fn draw(rng: &mut impl Rng, absence_share: f64) -> Self {
        // Most arrive between 08:10 and 09:00; one in seven is a late riser.
        let arrival_s = if rng.random_bool(0.15) {
            rng.random_range(9 * HOUR..9 * HOUR + 30 * MINUTE)
        } else {
            rng.random_range(8 * HOUR + 10 * MINUTE..9 * HOUR)
        };
        let angle = rng.random_range(0.0..std::f64::consts::TAU);
        let reach = rng.random_range(2_000.0..10_000.0);
        Self {
            arrival_s,
            day_s: rng.random_range(8 * HOUR..9 * HOUR + 15 * MINUTE),
            lunch_s: rng.random_range(11 * HOUR + 45 * MINUTE..13 * HOUR),
            lunch_len_s: rng.random_range(30 * MINUTE..=60 * MINUTE),
            diligence: rng.random_range(0.6..0.95),
            focus: rng.random_range(0.55..0.85),
            absence: (absence_share * rng.random_range(0.3..1.7)).clamp(0.0, 1.0),
            territory_m: (reach * angle.sin(), reach * angle.cos()),
        }
    }
}

/// Local times of one day as Unix milliseconds, with the zone's offset at
/// local noon (working hours never straddle a daylight-saving change).
#[derive(Debug, Clone, Copy)]
pub(crate) struct DayClock {
    midnight_ms: i64,
}

impl DayClock {
    pub fn new(tz: Tz, date: NaiveDate) -> Self {
        let noon = date.and_hms_opt(12, 0, 0).expect("noon exists");
        let offset_s = tz
            .offset_from_local_datetime(&noon)
            .earliest()
            .map_or(0, |o| o.fix().local_minus_utc());
        let midnight = date.and_hms_opt(0, 0, 0).expect("midnight exists");
        Self {
            midnight_ms: midnight.and_utc().timestamp_millis() - i64::from(offset_s) * 1000,
        }
    }

    /// Unix ms of `s` seconds after local midnight.
    pub fn ms(&self, s: i64) -> i64 {
        self.midnight_ms + s * 1000
    }
}

/// A device's events of one day, before they are cut into batches.
#[derive(Debug, Default)]
pub(crate) struct Timeline {
    pub activity: Vec<ActivitySample>,
    pub app_usage: Vec<AppUsage>,
    pub gps: Vec<GpsPoint>,
    pub attendance: Vec<AttendanceEvent>,
}

impl Timeline {
    fn attend(&mut self, clock: &DayClock, s: i64, kind: AttendanceKind) {
        self.attendance.push(AttendanceEvent {
            at_ms: clock.ms(s),
            kind,
        });
    }

    /// One minute's activity sample and foreground app, starting at `s`.
    fn sample(&mut self, clock: &DayClock, s: i64, active_s: u32, app: App) {
        let start_ms = clock.ms(s);
        self.activity.push(ActivitySample {
            start_ms,
            active_s,
            idle_s: SAMPLE_S - active_s,
        });
        self.app_usage.push(AppUsage {
            start_ms,
            duration_s: SAMPLE_S,
            app: app.0.to_string(),
            host: app.1.map(str::to_string),
        });
    }

    fn fix(&mut self, clock: &DayClock, s: i64, at: Position, accuracy_m: f64) {
        self.gps.push(GpsPoint {
            at_ms: clock.ms(s),
            lat: at.0,
            lon: at.1,
            accuracy_m,
        });
    }

    fn first_ms(&self) -> Option<i64> {
        [
            self.activity.iter().map(|e| e.start_ms).min(),
            self.app_usage.iter().map(|e| e.start_ms).min(),
            self.gps.iter().map(|e| e.at_ms).min(),
            self.attendance.iter().map(|e| e.at_ms).min(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    fn last_ms(&self) -> Option<i64> {
        [
            self.activity
                .iter()
                .map(|e| e.start_ms + i64::from(e.active_s + e.idle_s) * 1000)
                .max(),
            self.app_usage
                .iter()
                .map(|e| e.start_ms + i64::from(e.duration_s) * 1000)
                .max(),
            self.gps.iter().map(|e| e.at_ms).max(),
            self.attendance.iter().map(|e| e.at_ms).max(),
        ]
        .into_iter()
        .flatten()
        .max()
    }

    /// The batches the device uploads: one per window of `minutes` from
    /// its first event that has any event, sent when the window ends (the
    /// last one when the device stops), in time order.
    pub fn into_batches(self, minutes: i64) -> Vec<Batch> {
        let (Some(first), Some(last)) = (self.first_ms(), self.last_ms()) else {
            return Vec::new();
        };
        let window = minutes.max(1) * 60_000;
        let mut batches: BTreeMap<i64, Batch> = BTreeMap::new();
        // A window's batch is sent when the window closes, or when the
        // device stops.
        let at = |t: i64| {
            let k = (t - first).div_euclid(window);
            (k, (first + (k + 1) * window).min(last + 1000))
        };
        for e in self.activity {
            let (k, sent) = at(e.start_ms);
            window_batch(&mut batches, k, sent).activity.push(e);
        }
        for e in self.app_usage {
            let (k, sent) = at(e.start_ms);
            window_batch(&mut batches, k, sent).app_usage.push(e);
        }
        for e in self.gps {
            let (k, sent) = at(e.at_ms);
            window_batch(&mut batches, k, sent).gps.push(e);
        }
        let mut attendance = self.attendance;
        attendance.sort_by_key(|e| e.at_ms);
        for e in attendance {
            let (k, sent) = at(e.at_ms);
            window_batch(&mut batches, k, sent).attendance.push(e);
        }
        batches.into_values().collect()
    }
}

fn window_batch(batches: &mut BTreeMap<i64, Batch>, k: i64, sent_at_ms: i64) -> &mut Batch {
    batches.entry(k).or_insert_with(|| Batch {
        v: 1,
        sent_at_ms,
        activity: Vec::new(),
        app_usage: Vec::new(),
        gps: Vec::new(),
        attendance: Vec::new(),
    })
}

/// A symmetric jitter in `-half..=half` seconds, most often near 0.
fn jitter(rng: &mut impl Rng, half: i64) -> i64 {
    if half == 0 {
        return 0;
    }
    (rng.random_range(-half..=half) + rng.random_range(-half..=half)) / 2
}

fn overlaps(a: (i64, i64), b: (i64, i64)) -> bool {
    a.0 < b.1 && b.0 < a.1
}

/// The day's lunch break, when the day is long enough to have one.
fn lunch(h: &Habits, arrival: i64, departure: i64, rng: &mut impl Rng) -> Option<(i64, i64)> {
    let start = h.lunch_s + jitter(rng, 15 * MINUTE);
    let end = start + (h.lunch_len_s + jitter(rng, 5 * MINUTE)).max(20 * MINUTE);
    (start > arrival + HOUR && end < departure - HOUR).then_some((start, end))
}

/// `n` stretches of `len` seconds (a range) inside `within`, none
/// overlapping `avoid` or each other.
fn stretches(
    rng: &mut impl Rng,
    n: usize,
    len: std::ops::RangeInclusive<i64>,
    within: (i64, i64),
    avoid: &[(i64, i64)],
) -> Vec<(i64, i64)> {
    let mut out: Vec<(i64, i64)> = Vec::new();
    if within.1 - within.0 <= *len.end() {
        return out;
    }
    // A few tries each: a day full of meetings has room for fewer.
    for _ in 0..n * 5 {
        if out.len() == n {
            break;
        }
        let l = rng.random_range(len.clone());
        let start = rng.random_range(within.0..within.1 - l);
        let s = (start, start + l);
        if !avoid.iter().chain(&out).any(|&o| overlaps(o, s)) {
            out.push(s);
        }
    }
    out
}

/// Samples a minute of desk work: busy (mostly active) or not, idle in
/// meetings.
fn desk_minute(rng: &mut impl Rng, diligence: f64, meeting: bool) -> u32 {
    if meeting {
        rng.random_range(0..=8)
    } else if rng.random_bool(diligence) {
        rng.random_range(30..=SAMPLE_S)
    } else {
        rng.random_range(0..=20)
    }
}

/// Where desk work pauses (breaks: no samples) and idles (meetings).
#[derive(Default)]
struct Interruptions<'a> {
    breaks: &'a [(i64, i64)],
    meetings: &'a [(i64, i64)],
}

/// Desk work on a computer from `from` to `to` (local seconds): a sample a
/// minute, none during breaks, idle ones during meetings, the app changing
/// now and then.
fn desk_work(
    tl: &mut Timeline,
    clock: &DayClock,
    h: &Habits,
    mix: &AppMix,
    (from, to): (i64, i64),
    Interruptions { breaks, meetings }: Interruptions<'_>,
    rng: &mut impl Rng,
) {
    let mut app = mix.draw(rng);
    let mut t = from;
    while t + MINUTE <= to {
        let minute = (t, t + MINUTE);
        if breaks.iter().any(|&b| overlaps(b, minute)) {
            t += MINUTE;
            continue;
        }
        let meeting = meetings.iter().any(|&m| overlaps(m, minute));
        // A little less busy late in the afternoon.
        let diligence = if t > 15 * HOUR + 30 * MINUTE {
            h.diligence * 0.9
        } else {
            h.diligence
        };
        let active = desk_minute(rng, diligence, meeting);
        if !rng.random_bool(h.focus) {
            app = mix.draw(rng);
        }
        tl.sample(clock, t, active, if meeting { mix.meeting } else { app });
        t += MINUTE;
    }
}

/// An office worker's day on their laptop: arrival (sometimes late),
/// clock-in, work with a lunch break, short breaks and meetings,
/// clock-out.
pub(crate) fn office_day(h: &Habits, mix: &AppMix, clock: &DayClock, rng: &mut StdRng) -> Timeline {
    let mut arrival = h.arrival_s + jitter(rng, 15 * MINUTE);
    if rng.random_bool(0.06) {
        // The train was late, or the dentist.
        arrival += rng.random_range(20..=70) * MINUTE;
    }
    let departure = (arrival + h.day_s + jitter(rng, 35 * MINUTE)).min(LATEST_END);
    let lunch = lunch(h, arrival, departure, rng);
    let mut breaks: Vec<(i64, i64)> = lunch.into_iter().collect();
    let n = rng.random_range(1..=3);
    let short = stretches(
        rng,
        n,
        5 * MINUTE..=15 * MINUTE,
        (arrival + 30 * MINUTE, departure - 30 * MINUTE),
        &breaks,
    );
    breaks.extend(short);
    let n = rng.random_range(0..=3);
    let meetings = stretches(
        rng,
        n,
        15 * MINUTE..=60 * MINUTE,
        (arrival + 15 * MINUTE, departure - 15 * MINUTE),
        &breaks,
    );

    let mut tl = Timeline::default();
    tl.attend(clock, arrival, AttendanceKind::ClockIn);
    if let Some((start, end)) = lunch {
        tl.attend(clock, start, AttendanceKind::BreakStart);
        tl.attend(clock, end, AttendanceKind::BreakEnd);
    }
    desk_work(
        &mut tl,
        clock,
        h,
        mix,
        (arrival, departure),
        Interruptions {
            breaks: &breaks,
            meetings: &meetings,
        },
        rng,
    );
    tl.attend(clock, departure, AttendanceKind::ClockOut);
    tl
}

/// GPS accuracy a phone reports, in metres.
fn accuracy(rng: &mut impl Rng, driving: bool) -> f64 {
    let a: f64 = if driving {
        rng.random_range(5.0..25.0)
    } else {
        rng.random_range(4.0..15.0)
    };
    (a * 10.0).round() / 10.0
}

/// A fix near `at`: within a few metres, as a resting phone reports.
fn near(rng: &mut impl Rng, at: Position, metres: f64) -> Position {
    geo::offset(
        at,
        rng.random_range(-metres..=metres),
        rng.random_range(-metres..=metres),
    )
}

/// A field worker's route, minute by minute, on their phone.
struct Route<'a> {
    clock: &'a DayClock,
    phone: Timeline,
    /// Local seconds.
    t: i64,
    at: Position,
}

impl Route<'_> {
    /// Stays where it is until `until`: a fix a minute; with `work`, also
    /// the phone's samples (at a customer's), else GPS only (at the depot,
    /// the phone in a pocket).
    fn stay(&mut self, until: i64, work: Option<&Habits>, rng: &mut impl Rng) {
        let mut app = apps::FIELD_PHONE.draw(rng);
        while self.t + MINUTE <= until {
            if let Some(h) = work {
                let active = if rng.random_bool(h.diligence) {
                    rng.random_range(15..=50)
                } else {
                    rng.random_range(0..=10)
                };
                if !rng.random_bool(h.focus) {
                    app = apps::FIELD_PHONE.draw(rng);
                }
                self.phone.sample(self.clock, self.t, active, app);
            }
            let fix = near(rng, self.at, 6.0);
            let accuracy = accuracy(rng, false);
            self.phone
                .fix(self.clock, self.t + MINUTE / 2, fix, accuracy);
            self.t += MINUTE;
        }
    }

    /// Drives to `to` at city speeds, by way of a corner (streets are not
    /// straight lines): a fix a minute, the phone showing the map.
    fn drive(&mut self, to: Position, rng: &mut impl Rng) {
        let corner = if rng.random_bool(0.5) {
            (self.at.0, to.1)
        } else {
            (to.0, self.at.1)
        };
        let legs = [(self.at, corner), (corner, to)];
        let cruise = rng.random_range(7.0..14.0); // 25 to 50 km/h
        for (from, leg_to) in legs {
            let length = geo::distance_m(from, leg_to);
            let mut done = 0.0;
            while done < length {
                let speed = if rng.random_bool(0.1) {
                    rng.random_range(0.0..2.0) // a red light, a jam
                } else {
                    cruise * rng.random_range(0.7..1.3)
                };
                done = (done + speed * MINUTE as f64).min(length);
                let here =
                    geo::between(from, leg_to, if length > 0.0 { done / length } else { 1.0 });
                let active = rng.random_range(0..=5);
                self.phone
                    .sample(self.clock, self.t, active, apps::NAVIGATION);
                let accuracy = accuracy(rng, true);
                self.phone.fix(
                    self.clock,
                    self.t + MINUTE / 2,
                    near(rng, here, 3.0),
                    accuracy,
                );
                self.t += MINUTE;
            }
        }
        self.at = to;
    }
}

/// Minutes needed to drive from `a` to `b` (by way of a corner, at 30 km/h).
fn drive_s(a: Position, b: Position) -> i64 {
    let corner = (a.0, b.1);
    let metres = geo::distance_m(a, corner) + geo::distance_m(corner, b);
    (metres / 8.3) as i64 + MINUTE
}

/// A field worker's day: the laptop (planning at the depot in the morning,
/// reports in the evening) and the phone (clock-in and out, a GPS fix a
/// minute, a drive to each customer site and a stop there, lunch on the
/// way, back to the depot).
pub(crate) fn field_day(
    h: &Habits,
    depot: Position,
    clock: &DayClock,
    rng: &mut StdRng,
) -> (Timeline, Timeline) {
    let arrival = h.arrival_s - 20 * MINUTE + jitter(rng, 10 * MINUTE);
    let departure = (arrival + h.day_s + jitter(rng, 30 * MINUTE)).min(LATEST_END);
    let planning = rng.random_range(15..=35) * MINUTE;
    let reports = rng.random_range(15..=30) * MINUTE;
    let lunch_at = h.lunch_s + jitter(rng, 20 * MINUTE);
    let territory = geo::offset(depot, h.territory_m.0, h.territory_m.1);

    let mut laptop = Timeline::default();
    let mut route = Route {
        clock,
        phone: Timeline::default(),
        t: arrival,
        at: depot,
    };
    route.phone.attend(clock, arrival, AttendanceKind::ClockIn);
    desk_work(
        &mut laptop,
        clock,
        h,
        &apps::FIELD_LAPTOP,
        (arrival + 2 * MINUTE, arrival + planning),
        Interruptions::default(),
        rng,
    );
    route.stay(arrival + planning, None, rng);

    let latest_back = departure - reports;
    let mut had_lunch = false;
    for visit in 0..8 {
        let site = geo::offset(
            territory,
            rng.random_range(-2_500.0..2_500.0),
            rng.random_range(-2_500.0..2_500.0),
        );
        let stay = rng.random_range(25..=75) * MINUTE;
        let needed = drive_s(route.at, site) + stay + drive_s(site, depot);
        if visit > 0 && route.t + needed > latest_back {
            break;
        }
        route.drive(site, rng);
        if !had_lunch && route.t >= lunch_at {
            // Lunch near the customer: no samples, no positions.
            let len = (h.lunch_len_s + jitter(rng, 5 * MINUTE)).clamp(20 * MINUTE, 60 * MINUTE);
            route
                .phone
                .attend(clock, route.t, AttendanceKind::BreakStart);
            route.t += len;
            route.phone.attend(clock, route.t, AttendanceKind::BreakEnd);
            had_lunch = true;
        }
        let until = route.t + stay;
        route.stay(until, Some(h), rng);
    }
    route.drive(depot, rng);
    let reports_from = route.t;
    let end = (reports_from + reports).min(LATEST_END.max(reports_from + MINUTE));
    desk_work(
        &mut laptop,
        clock,
        h,
        &apps::FIELD_LAPTOP,
        (reports_from, end),
        Interruptions::default(),
        rng,
    );
    route.stay(end, None, rng);
    route.phone.attend(clock, route.t, AttendanceKind::ClockOut);
    (laptop, route.phone)
}

/// A device that went offline for part of the day: the batches it would
/// have sent meanwhile are sent when it comes back, oldest first, a second
/// apart. Returns each batch with whether it is late.
pub(crate) fn offline_stretch(
    batches: Vec<Batch>,
    share: f64,
    rng: &mut impl Rng,
) -> Vec<(Batch, bool)> {
    if batches.is_empty() {
        return Vec::new();
    }
    if share <= 0.0 || !rng.random_bool(share.min(1.0)) {
        return batches.into_iter().map(|b| (b, false)).collect();
    }
    // Offline from one of its uploads on, for 45 minutes to 3 hours.
    let start = batches[rng.random_range(0..batches.len())].sent_at_ms;
    let back = start + rng.random_range(45..=180) * 60_000;
    let mut backlog = 0;
    batches
        .into_iter()
        .map(|mut b| {
            let late = (start..back).contains(&b.sent_at_ms);
            if late {
                b.sent_at_ms = back + backlog * 1000;
                backlog += 1;
            }
            (b, late)
        })
        .collect()
}
