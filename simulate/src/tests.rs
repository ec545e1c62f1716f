use std::collections::BTreeMap;

use candor_schemas::batch::{AttendanceKind, Batch};
use candor_schemas::keys::MasterSecret;
use candor_schemas::{Limits, TenantId, decode_json, open_batch};
use chrono::{Days, NaiveDate, Timelike};

use super::*;

fn tenant() -> TenantId {
    TenantId::new("acme").unwrap()
}

/// Monday 2026-11-16 to Sunday 2026-11-22.
fn week() -> Vec<NaiveDate> {
    let monday = NaiveDate::from_ymd_opt(2026, 11, 16).unwrap();
    (0..7).map(|d| monday + Days::new(d)).collect()
}

fn sim(employees: usize, f: impl FnOnce(&mut Params)) -> Simulation {
    let mut p = Params::new(tenant(), employees);
    f(&mut p);
    Simulation::new(p).unwrap()
}

fn ms_of(day: NaiveDate, h: u32, m: u32) -> i64 {
    day.and_hms_opt(h, m, 0)
        .unwrap()
        .and_utc()
        .timestamp_millis()
}

#[test]
fn the_same_seed_gives_the_same_days_and_another_seed_others() {
    let a = sim(12, |_| {});
    let b = sim(12, |_| {});
    let c = sim(12, |p| p.seed = 2);
    let mut differs = false;
    for day in week() {
        for i in 0..12 {
            let (x, y, z) = (a.day(i, day), b.day(i, day), c.day(i, day));
            let batches = |d: &EmployeeDay| -> Vec<(Device, Batch, bool)> {
                d.uploads
                    .iter()
                    .map(|u| (u.device, u.batch.clone(), u.late))
                    .collect()
            };
            assert_eq!(batches(&x), batches(&y), "employee {i} on {day}");
            assert_eq!(x.status, y.status);
            differs |= batches(&x) != batches(&z);
        }
    }
    assert!(differs, "another seed, other days");
}

#[test]
fn departments_are_a_function_of_the_index_with_field_staff_among_them() {
    let s = sim(300, |_| {});
    assert_eq!(
        s.departments(),
        ["Sales", "Support", "Engineering", "Finance", "Field"]
    );
    let mut sizes: BTreeMap<&str, usize> = BTreeMap::new();
    for i in 0..300 {
        *sizes.entry(s.department_of(i)).or_default() += 1;
        assert_eq!(s.is_field(i), s.department_of(i) == FIELD_DEPARTMENT);
        assert_eq!(
            s.devices(i).len(),
            if s.is_field(i) { 2 } else { 1 },
            "field staff have a phone too"
        );
    }
    assert_eq!(sizes["Field"], 45, "15% of 300");
    assert!(sizes.values().all(|&n| n >= 20), "{sizes:?}");
    assert!(sizes["Engineering"] > sizes["Finance"], "{sizes:?}");

    // The same parameters with fewer employees: the same departments for
    // those that remain (the directory does not depend on the run's size).
    let small = sim(5, |_| {});
    for i in 0..5 {
        assert_eq!(small.department_of(i), s.department_of(i));
    }
    assert!(
        (0..5).any(|i| small.is_field(i)),
        "five employees include one in the field"
    );

    // The directory matches, and names a manager per department.
    let directory = s.directory();
    assert_eq!(directory.len(), 300);
    assert_eq!(directory[7].employee.as_str(), "emp-00007");
    let managers: Vec<&str> = directory
        .iter()
        .filter_map(|e| e.manages.as_deref())
        .collect();
    assert_eq!(managers.len(), 5);
    for e in &directory {
        let i: usize = e.employee.as_str()[4..].parse().unwrap();
        assert_eq!(e.department, s.department_of(i));
        if let Some(m) = &e.manages {
            assert_eq!(m, &e.department);
        }
    }

    // No field staff: every department is an office one.
    let office = sim(50, |p| {
        p.field_share = 0.0;
        p.departments = 14;
    });
    assert_eq!(office.departments().len(), 14);
    assert_eq!(office.departments()[13], "Department 14");
    assert!((0..50).all(|i| !office.is_field(i)));
    assert!(
        Simulation::new(Params {
            departments: 0,
            ..Params::new(tenant(), 3)
        })
        .is_err()
    );
    assert!(
        Simulation::new(Params {
            late_share: 1.5,
            ..Params::new(tenant(), 3)
        })
        .is_err()
    );
}

#[test]
fn workdays_have_a_lunch_break_and_short_breaks_without_samples() {
    let s = sim(40, |p| p.field_share = 0.0);
    let day = week()[2];
    let mut lunches = 0;
    for i in 0..40 {
        let d = s.day(i, day);
        if d.status != DayStatus::Worked {
            continue;
        }
        let batches: Vec<&Batch> = d.uploads.iter().map(|u| &u.batch).collect();
        let samples: Vec<i64> = batches
            .iter()
            .flat_map(|b| b.activity.iter().map(|a| a.start_ms))
            .collect();
        let at = |kind| {
            batches
                .iter()
                .flat_map(|b| b.attendance.iter())
                .find(|e| e.kind == kind)
                .map(|e| e.at_ms)
        };
        let (clock_in, clock_out) = (
            at(AttendanceKind::ClockIn).unwrap(),
            at(AttendanceKind::ClockOut).unwrap(),
        );
        assert!(samples.iter().all(|&t| t >= clock_in && t < clock_out));
        if let (Some(start), Some(end)) =
            (at(AttendanceKind::BreakStart), at(AttendanceKind::BreakEnd))
        {
            lunches += 1;
            assert!(
                end - start >= 20 * 60_000,
                "a lunch break of 20 minutes or more"
            );
            assert!(
                samples.iter().all(|&t| t + 60_000 <= start || t >= end),
                "no sample during lunch"
            );
        }
        // Besides lunch, short breaks: fewer samples than minutes at work.
        let gaps = samples.windows(2).filter(|w| w[1] - w[0] > 60_000).count();
        assert!(
            gaps >= 2,
            "employee {i}: lunch and at least one short break"
        );
        // Idle stretches: some samples mostly idle.
        let idle = batches
            .iter()
            .flat_map(|b| b.activity.iter())
            .filter(|a| a.idle_s >= 40)
            .count();
        assert!(idle > 0);
    }
    assert!(lunches >= 30, "most have lunch: {lunches}");
}

#[test]
fn days_mostly_fall_in_office_hours_with_some_late_arrivals_and_absences() {
    let s = sim(150, |p| p.field_share = 0.0);
    let (mut inside, mut all, mut absent, mut late, mut worked) = (0, 0, 0, 0, 0);
    for day in week() {
        for i in 0..150 {
            let d = s.day(i, day);
            match d.status {
                DayStatus::Weekend => {
                    assert!(is_weekend(day) && d.uploads.is_empty());
                    continue;
                }
                DayStatus::Absent => {
                    absent += 1;
                    assert!(d.uploads.is_empty());
                    continue;
                }
                DayStatus::Worked => worked += 1,
            }
            let mut first = i64::MAX;
            for u in &d.uploads {
                for a in &u.batch.activity {
                    first = first.min(a.start_ms);
                    all += 1;
                    inside += usize::from(
                        a.start_ms >= ms_of(day, 9, 0) && a.start_ms < ms_of(day, 17, 0),
                    );
                }
            }
            late += usize::from(first > ms_of(day, 9, 15));
        }
    }
    assert!(
        inside * 100 / all >= 80,
        "{inside} of {all} samples in 09-17"
    );
    let share = |n: usize| n as f64 / (worked + absent) as f64;
    assert!((0.01..0.08).contains(&share(absent)), "absent {absent}");
    assert!((0.05..0.4).contains(&share(late)), "late {late}");
}

#[test]
fn field_staff_drive_between_sites_with_plausible_speeds() {
    let s = sim(40, |p| p.field_share = 0.5);
    let centre = s.params().centre;
    let mut phones = 0;
    for i in (0..40).filter(|&i| s.is_field(i)) {
        let d = s.day(i, week()[1]);
        if d.status != DayStatus::Worked {
            continue;
        }
        let laptop = d.uploads.iter().filter(|u| u.device == Device::Laptop);
        assert!(
            laptop.clone().all(|u| u.batch.gps.is_empty()),
            "laptops report no GPS"
        );
        assert!(laptop.count() > 3, "planning and reports at the depot");
        let mut fixes: Vec<_> = d
            .uploads
            .iter()
            .filter(|u| u.device == Device::Phone)
            .flat_map(|u| u.batch.gps.iter())
            .collect();
        fixes.sort_by_key(|g| g.at_ms);
        assert!(
            fixes.len() > 200,
            "a fix a minute for most of the day: {}",
            fixes.len()
        );
        phones += 1;
        let (mut moving, mut stopped) = (0, 0);
        for w in fixes.windows(2) {
            let dt = (w[1].at_ms - w[0].at_ms) as f64 / 1000.0;
            assert!(dt >= 60.0);
            let speed = distance_m((w[0].lat, w[0].lon), (w[1].lat, w[1].lon)) / dt;
            assert!(speed < 30.0, "{speed} m/s");
            if dt <= 61.0 {
                if speed > 4.0 {
                    moving += 1;
                } else if speed < 0.5 {
                    stopped += 1;
                }
            }
        }
        assert!(
            moving >= 10 && stopped >= 60,
            "moving {moving}, stopped {stopped}"
        );
        for g in &fixes {
            assert!(distance_m(centre, (g.lat, g.lon)) < 20_000.0);
            assert!((1.0..=30.0).contains(&g.accuracy_m));
        }
        // Clock-in and out come from the phone.
        let kinds: Vec<AttendanceKind> = d
            .uploads
            .iter()
            .filter(|u| u.device == Device::Phone)
            .flat_map(|u| u.batch.attendance.iter().map(|e| e.kind))
            .collect();
        assert_eq!(kinds.first(), Some(&AttendanceKind::ClockIn));
        assert_eq!(kinds.last(), Some(&AttendanceKind::ClockOut));
    }
    assert!(phones >= 15);
}

#[test]
fn offline_devices_upload_their_backlog_late() {
    let none = sim(30, |p| p.late_share = 0.0);
    let all = sim(30, |p| p.late_share = 1.0);
    let some = sim(300, |_| {});
    let day = week()[3];
    for i in 0..30 {
        assert!(none.day(i, day).uploads.iter().all(|u| !u.late));
        let d = all.day(i, day);
        if d.status != DayStatus::Worked {
            continue;
        }
        for device in none.devices(i) {
            let uploads: Vec<&Upload> = d.uploads.iter().filter(|u| u.device == device).collect();
            let late: Vec<&&Upload> = uploads.iter().filter(|u| u.late).collect();
            assert!(!late.is_empty(), "employee {i} {device:?}");
            // Sent when the device came back: after the last event they
            // hold, oldest first.
            for w in late.windows(2) {
                assert!(w[0].batch.sent_at_ms < w[1].batch.sent_at_ms);
            }
            for u in &late {
                let newest = u
                    .batch
                    .activity
                    .iter()
                    .map(|a| a.start_ms)
                    .max()
                    .unwrap_or(0);
                assert!(u.batch.sent_at_ms > newest);
            }
        }
        // The same events either way: only when they are sent differs.
        let events =
            |d: &EmployeeDay| -> usize { d.uploads.iter().map(|u| u.batch.event_count()).sum() };
        assert_eq!(events(&d), events(&none.day(i, day)));
    }
    // 5% of device-days.
    let (mut late_days, mut days) = (0, 0);
    for day in week() {
        for i in 0..300 {
            let d = some.day(i, day);
            for device in some.devices(i) {
                let uploads = d.uploads.iter().filter(|u| u.device == device);
                days += usize::from(uploads.clone().next().is_some());
                late_days += usize::from(uploads.clone().any(|u| u.late));
            }
        }
    }
    assert!(
        (0.02..0.09).contains(&(late_days as f64 / days as f64)),
        "{late_days} of {days}"
    );
}

#[test]
fn every_batch_is_accepted_by_the_wire_validation() {
    let s = sim(24, |p| {
        p.field_share = 0.3;
        p.late_share = 0.2;
        p.time_zone = "Europe/Berlin".parse().unwrap();
    });
    let master = MasterSecret::from_bytes(&[7u8; 32]).unwrap();
    let received_at = ms_of(week()[6], 23, 0);
    let limits = Limits::default();
    let mut rng = rand::rng();
    let mut batches = 0;
    for day in &week()[..5] {
        for i in 0..24 {
            for u in s.day(i, *day).uploads {
                let b = &u.batch;
                assert!(b.event_count() >= 1 && b.event_count() <= limits.max_events);
                let json = serde_json::to_vec(b).unwrap();
                decode_json(&json, &limits, received_at).unwrap();
                // Sealed for the right device, it opens as ingest opens it.
                let agent = s.agent(i, u.device);
                let opened = open_batch(
                    &agent.seal(&master, b, &mut rng),
                    &master,
                    &limits,
                    received_at,
                )
                .unwrap();
                assert_eq!(opened.header.device, agent.device);
                assert_eq!(opened.batch.event_count(), b.event_count());
                for a in &b.app_usage {
                    assert!(a.host.as_deref().is_none_or(|h| !h.contains('/')));
                }
                batches += 1;
            }
        }
    }
    assert!(batches > 8_000, "{batches}");
}

#[test]
fn workdays_follow_the_tenant_time_zone() {
    let berlin = sim(30, |p| {
        p.time_zone = "Europe/Berlin".parse().unwrap();
        p.field_share = 0.0;
    });
    let day = week()[1];
    for i in 0..30 {
        for u in berlin.day(i, day).uploads {
            for e in &u.batch.attendance {
                let utc = chrono::DateTime::from_timestamp_millis(e.at_ms).unwrap();
                // 08:00 to 20:00 in Berlin (UTC+1 in November).
                assert!((6..20).contains(&utc.hour()), "{utc}");
            }
        }
    }
}

#[test]
fn the_benchmarks_office_workday_is_valid_and_empty_on_weekends() {
    let agent = SimulatedAgent::new(&tenant(), 7);
    assert_eq!(agent.device.as_str(), "dev-00007-laptop");
    let day = NaiveDate::from_ymd_opt(2026, 11, 18).unwrap(); // a Wednesday
    let batches = agent.workday(day, 1);
    assert_eq!(batches, agent.workday(day, 1));
    assert!(batches.len() > 60, "{}", batches.len());
    let end_of_day = ms_of(day, 23, 59);
    for b in &batches {
        assert!(b.gps.is_empty());
        let json = serde_json::to_vec(b).unwrap();
        decode_json(&json, &Limits::default(), end_of_day).unwrap();
    }
    for w in batches.windows(2) {
        assert!(w[0].sent_at_ms < w[1].sent_at_ms);
    }
    assert!(
        agent
            .workday(NaiveDate::from_ymd_opt(2026, 11, 21).unwrap(), 1)
            .is_empty()
    );
}

#[test]
fn longer_upload_intervals_send_the_same_events_in_fewer_batches() {
    let five = sim(10, |_| {});
    let fifteen = sim(10, |p| p.batch_minutes = 15);
    let day = week()[0];
    let (mut batches, mut events) = ([0usize; 2], [0usize; 2]);
    for i in 0..10 {
        for (k, s) in [&five, &fifteen].into_iter().enumerate() {
            for u in s.day(i, day).uploads {
                batches[k] += 1;
                events[k] += u.batch.event_count();
            }
        }
    }
    assert_eq!(events[0], events[1]);
    assert!(batches[1] * 25 < batches[0] * 10, "{batches:?}");
    assert!(
        Simulation::new(Params {
            batch_minutes: 0,
            ..Params::new(tenant(), 3)
        })
        .is_err()
    );
}
