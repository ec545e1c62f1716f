//! Aggregation of opened log records into lake rows: one row per subject,
//! 15-minute slot and key columns, with additive measures only, so rows from
//! late batches add up with earlier ones and compaction can merge them.
//!
//! The tenant's policy is applied here, per event: activity, app usage and
//! GPS outside the tenant's work hours (in its time zone) are dropped unless
//! the tenant tracks around the clock; attendance events are always kept,
//! since they are what attendance is computed from. The department is the
//! directory's at processing time, and each app-usage row carries the
//! tenant's category for its app or host.

use std::collections::BTreeMap;
// Looked up per event: foldhash's randomly seeded hash instead of SipHash
// (about a tenth of the processor's CPU went to SipHash with 5-minute
// uploads); the keys are integers and a tenant's own names.
use foldhash::HashMap;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, Float64Array, Int64Array, RecordBatch, StringArray,
    TimestampMillisecondArray,
};
use arrow::datatypes::{Float64Type, TimestampMillisecondType, UInt32Type};
use candor_control::tenant::{AppCategories, Category, Site, Tenant, WorkWindow};
use candor_lake::PartitionKey;
use candor_schemas::batch::haversine_m;
use candor_schemas::datasets::{Dataset, slot_start};
use candor_schemas::ids::TenantId;
use candor_schemas::record::LogRecord;

use crate::routes::{RoutePoint, Routes};

const MS_PER_DAY: i64 = 86_400_000;

fn utc_date(ts_ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ts_ms)
        .expect("validated timestamps are in range")
        .format("%Y-%m-%d")
        .to_string()
}

#[derive(Default)]
struct ActivityRow {
    tracked_s: i64,
    active_s: i64,
    idle_s: i64,
    samples: i64,
}

#[derive(Default)]
struct GpsRow {
    points: i64,
    distance_m: f64,
    lat_sum: f64,
    lon_sum: f64,
    moving_ms: i64,
    stopped_ms: i64,
    stops: i64,
}

/// Consecutive positions further apart in time are not one segment: the
/// device was off or without a fix, so the time between is not counted.
const MAX_SEGMENT_MS: i64 = 10 * 60 * 1000;
/// A segment faster than this is moving (walking is about 1.4 m/s); slower
/// is stopped, which GPS jitter of a resting device stays well below.
const MOVING_SPEED_MPS: f64 = 1.0;

struct AttendanceRow {
    events: i64,
    first_at: i64,
    last_at: i64,
}

/// Whose row: the pseudonymous subject and the department it belonged to
/// when processed.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Subject {
    pub pseudonym: String,
    pub department: Option<String>,
}

struct AppRow {
    category: Category,
    seconds: i64,
}

/// Rows of one partition, keyed by (subject, slot, key columns...), the
/// subject and every string key as its number in the aggregator's
/// [`Interned`]: a lookup per event hashes integers and allocates nothing.
/// Rows are sorted by their keys' values when the batch is built.
#[derive(Default)]
struct Rows {
    activity: HashMap<(SubjectId, i64), ActivityRow>,
    /// (subject, slot, app, host)
    app_usage: HashMap<(SubjectId, i64, NameId, Option<NameId>), AppRow>,
    /// (subject, slot, site)
    gps: HashMap<(SubjectId, i64, Option<NameId>), GpsRow>,
    /// (subject, slot, kind)
    attendance: HashMap<(SubjectId, i64, NameId), AttendanceRow>,
}

type SubjectId = u32;
type NameId = u32;

/// The subjects and the strings (apps, hosts, sites, attendance kinds) of
/// an aggregator's rows, each stored once and known by its number.
#[derive(Default)]
struct Interned {
    subjects: Vec<Arc<Subject>>,
    subject_ids: HashMap<Arc<Subject>, SubjectId>,
    names: Vec<Box<str>>,
    name_ids: HashMap<Box<str>, NameId>,
}

impl Interned {
    fn subject(&mut self, subject: &Arc<Subject>) -> SubjectId {
        if let Some(&id) = self.subject_ids.get(subject) {
            return id;
        }
        let id = SubjectId::try_from(self.subjects.len()).expect("fewer than 2^32 subjects");
        self.subjects.push(subject.clone());
        self.subject_ids.insert(subject.clone(), id);
        id
    }

    /// A string's number; allocates only the first time it is seen.
    fn name(&mut self, name: &str) -> NameId {
        if let Some(&id) = self.name_ids.get(name) {
            return id;
        }
        let id = NameId::try_from(self.names.len()).expect("fewer than 2^32 names");
        self.names.push(name.into());
        self.name_ids.insert(name.into(), id);
        id
    }

    fn subject_of(&self, id: SubjectId) -> &Subject {
        &self.subjects[id as usize]
    }

    fn name_of(&self, id: NameId) -> &str {
        &self.names[id as usize]
    }
}

/// What the processor applies of a tenant's document.
#[derive(Debug, Clone, Default)]
pub struct TenantPolicy {
    /// `None`: keep events at any hour.
    pub work_window: Option<WorkWindow>,
    pub categories: AppCategories,
    pub sites: Vec<Site>,
}

impl TenantPolicy {
    pub fn of(tenant: &Tenant) -> Self {
        Self {
            work_window: tenant.work_window(),
            categories: tenant.app_categories.clone(),
            sites: tenant.sites.clone(),
        }
    }

    /// The first of the tenant's sites that holds `at`.
    fn site_at(&self, at: (f64, f64)) -> Option<&str> {
        self.sites
            .iter()
            .find(|s| haversine_m((s.lat, s.lon), at) <= s.radius_m)
            .map(|s| s.name.as_str())
    }

    fn keeps(&self, ts_ms: i64) -> bool {
        self.work_window.is_none_or(|w| w.contains(ts_ms))
    }
}

/// Collects rows from many records, then yields one batch per partition.
#[derive(Default)]
pub struct Aggregator {
    /// Per tenant, per dataset and UTC day (days since 1970-01-01): the
    /// rows of one partition. Looked up per event, so no key is built or
    /// cloned on the way.
    partitions: HashMap<TenantId, BTreeMap<(Dataset, i64), Rows>>,
    interned: Interned,
    routes: Routes,
    /// Events dropped because they lie outside the tenant's work hours.
    pub outside_work_hours: u64,
}

impl Aggregator {
    /// An aggregator that continues the devices' routes of earlier flushes.
    pub fn with_routes(routes: Routes) -> Self {
        Self {
            routes,
            ..Self::default()
        }
    }

    /// The devices' routes as they stand, for the next flush.
    pub fn take_routes(&mut self) -> Routes {
        let mut routes = std::mem::take(&mut self.routes);
        routes.forget_stale();
        routes
    }

    fn rows(&mut self, dataset: Dataset, tenant: &TenantId, slot: i64) -> &mut Rows {
        if !self.partitions.contains_key(tenant) {
            self.partitions.insert(tenant.clone(), BTreeMap::new());
        }
        self.partitions
            .get_mut(tenant)
            .expect("inserted above")
            .entry((dataset, slot.div_euclid(MS_PER_DAY)))
            .or_default()
    }

    /// Adds one opened record's events for `subject`, under the tenant's
    /// policy. Every row shares the subject: a count, not two strings, per
    /// event.
    pub fn add(&mut self, record: &LogRecord, subject: &Arc<Subject>, policy: &TenantPolicy) {
        let subject = self.interned.subject(subject);
        for (dataset, events) in &record.datasets {
            self.add_events(record, *dataset, events, subject, policy);
        }
    }

    /// One dataset's events of `record`.
    fn add_events(
        &mut self,
        record: &LogRecord,
        dataset: Dataset,
        e: &RecordBatch,
        subject: SubjectId,
        policy: &TenantPolicy,
    ) {
        let ts = |i: usize| e.column(i).as_primitive::<TimestampMillisecondType>();
        let u32s = |i: usize| e.column(i).as_primitive::<UInt32Type>();
        let f64s = |i: usize| e.column(i).as_primitive::<Float64Type>();
        let tenant = &record.tenant;
        match dataset {
            Dataset::Activity => {
                let (start, active, idle) = (ts(0), u32s(1), u32s(2));
                for i in 0..e.num_rows() {
                    if !policy.keeps(start.value(i)) {
                        self.outside_work_hours += 1;
                        continue;
                    }
                    let slot = slot_start(start.value(i));
                    let row = self
                        .rows(Dataset::Activity, tenant, slot)
                        .activity
                        .entry((subject, slot))
                        .or_default();
                    let (a, d) = (i64::from(active.value(i)), i64::from(idle.value(i)));
                    row.tracked_s += a + d;
                    row.active_s += a;
                    row.idle_s += d;
                    row.samples += 1;
                }
            }
            Dataset::AppUsage => {
                let (start, duration) = (ts(0), u32s(1));
                let (app, host) = (
                    e.column(2).as_string::<i32>(),
                    e.column(3).as_string::<i32>(),
                );
                for i in 0..e.num_rows() {
                    if !policy.keeps(start.value(i)) {
                        self.outside_work_hours += 1;
                        continue;
                    }
                    let slot = slot_start(start.value(i));
                    let (app, host) = (app.value(i), host.is_valid(i).then(|| host.value(i)));
                    let key = (
                        subject,
                        slot,
                        self.interned.name(app),
                        host.map(|h| self.interned.name(h)),
                    );
                    self.rows(Dataset::AppUsage, tenant, slot)
                        .app_usage
                        .entry(key)
                        .or_insert_with(|| AppRow {
                            category: policy.categories.of(app, host),
                            seconds: 0,
                        })
                        .seconds += i64::from(duration.value(i));
                }
            }
            Dataset::Gps => {
                let (at, lat, lon) = (ts(0), f64s(1), f64s(2));
                let mut order: Vec<usize> = (0..e.num_rows()).collect();
                order.sort_by_key(|&i| at.value(i));
                let device = &record.meta.device;
                let received_ms = record.meta.received_at_ms;
                let carried = self.routes.carried(tenant, device);
                // The previous kept point: the device's carried one if this
                // record continues its route.
                let mut previous = match (carried, order.first()) {
                    (Some(p), Some(&i))
                        if p.continued_by(at.value(i), received_ms, MAX_SEGMENT_MS) =>
                    {
                        Some((p.at_ms, p.at, p.moving))
                    }
                    _ => None,
                };
                for &i in &order {
                    if !policy.keeps(at.value(i)) {
                        // The route is cut: no distance across the gap.
                        self.outside_work_hours += 1;
                        previous = None;
                        continue;
                    }
                    let (t, here) = (at.value(i), (lat.value(i), lon.value(i)));
                    let slot = slot_start(t);
                    let site = policy.site_at(here).map(|s| self.interned.name(s));
                    let row = self
                        .rows(Dataset::Gps, tenant, slot)
                        .gps
                        .entry((subject, slot, site))
                        .or_default();
                    row.points += 1;
                    row.lat_sum += here.0;
                    row.lon_sum += here.1;
                    // Distance and time come from precise points, before
                    // coarsening; a segment counts in the row where it ends.
                    let mut moving = None;
                    if let Some((prev_t, prev, was_moving)) = previous {
                        let metres = haversine_m(prev, here);
                        row.distance_m += metres;
                        let dt = t - prev_t;
                        if dt > 0 && dt <= MAX_SEGMENT_MS {
                            let fast = metres / (dt as f64 / 1000.0) > MOVING_SPEED_MPS;
                            if fast {
                                row.moving_ms += dt;
                            } else {
                                row.stopped_ms += dt;
                                row.stops += i64::from(was_moving == Some(true));
                            }
                            moving = Some(fast);
                        }
                    }
                    previous = Some((t, here, moving));
                }
                // The route goes on from this record's last point, unless
                // the record is older than what the device already sent.
                let last_t = order.last().map(|&i| at.value(i));
                if last_t.is_some_and(|t| carried.is_none_or(|p| t > p.at_ms)) {
                    let point = previous.map(|(at_ms, at, moving)| RoutePoint {
                        at_ms,
                        at,
                        moving,
                        received_ms,
                    });
                    self.routes.carry(tenant, device, point);
                }
            }
            Dataset::Attendance => {
                let (at, kind) = (ts(0), e.column(1).as_string::<i32>());
                for i in 0..e.num_rows() {
                    let t = at.value(i);
                    let slot = slot_start(t);
                    let kind = self.interned.name(kind.value(i));
                    self.rows(Dataset::Attendance, tenant, slot)
                        .attendance
                        .entry((subject, slot, kind))
                        .and_modify(|r| {
                            r.events += 1;
                            r.first_at = r.first_at.min(t);
                            r.last_at = r.last_at.max(t);
                        })
                        .or_insert(AttendanceRow {
                            events: 1,
                            first_at: t,
                            last_at: t,
                        });
                }
            }
        }
    }

    /// One batch per partition, in the dataset's lake schema.
    pub fn finish(self) -> Vec<(PartitionKey, RecordBatch)> {
        let interned = &self.interned;
        let mut out: Vec<_> = self
            .partitions
            .into_iter()
            .flat_map(|(tenant, partitions)| {
                partitions.into_iter().map(move |((dataset, day), rows)| {
                    let key = PartitionKey {
                        dataset,
                        tenant: tenant.clone(),
                        date: utc_date(day * MS_PER_DAY),
                    };
                    let columns = rows.into_columns(dataset, interned);
                    let batch = RecordBatch::try_new(dataset.lake_schema(), columns)
                        .expect("columns are built to the dataset's lake schema");
                    (key, batch)
                })
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }
}

fn utc_ts(values: Vec<i64>) -> ArrayRef {
    Arc::new(TimestampMillisecondArray::from(values).with_timezone("UTC"))
}

fn strings<'a>(values: impl Iterator<Item = Option<&'a str>>) -> ArrayRef {
    Arc::new(values.collect::<StringArray>())
}

fn ints(values: impl Iterator<Item = i64>) -> ArrayRef {
    Arc::new(values.collect::<Int64Array>())
}

/// A map's rows in the order of their keys' values (`order` turns a key
/// into what it sorts by).
fn sorted<K: Copy, V, O: Ord>(map: HashMap<K, V>, order: impl Fn(&K) -> O) -> Vec<(K, V)> {
    let mut rows: Vec<(K, V)> = map.into_iter().collect();
    rows.sort_by_cached_key(|(k, _)| order(k));
    rows
}

impl Rows {
    /// Columns in lake-schema order: subject, department, slot_start,
    /// measures; rows sorted by subject, slot and key columns.
    fn into_columns(self, dataset: Dataset, n: &Interned) -> Vec<ArrayRef> {
        macro_rules! common {
            ($rows:expr) => {{
                vec![
                    strings(
                        $rows
                            .iter()
                            .map(|(k, _)| Some(n.subject_of(k.0).pseudonym.as_str())),
                    ),
                    strings(
                        $rows
                            .iter()
                            .map(|(k, _)| n.subject_of(k.0).department.as_deref()),
                    ),
                    utc_ts($rows.iter().map(|(k, _)| k.1).collect()),
                ]
            }};
        }
        match dataset {
            Dataset::Activity => {
                let m = sorted(self.activity, |k| (n.subject_of(k.0), k.1));
                let mut c = common!(m);
                c.push(ints(m.iter().map(|(_, r)| r.tracked_s)));
                c.push(ints(m.iter().map(|(_, r)| r.active_s)));
                c.push(ints(m.iter().map(|(_, r)| r.idle_s)));
                c.push(ints(m.iter().map(|(_, r)| r.samples)));
                c
            }
            Dataset::AppUsage => {
                let m = sorted(self.app_usage, |k| {
                    (
                        n.subject_of(k.0),
                        k.1,
                        n.name_of(k.2),
                        k.3.map(|h| n.name_of(h)),
                    )
                });
                let mut c = common!(m);
                c.push(strings(m.iter().map(|(k, _)| Some(n.name_of(k.2)))));
                c.push(strings(m.iter().map(|(k, _)| k.3.map(|h| n.name_of(h)))));
                c.push(strings(m.iter().map(|(_, r)| Some(r.category.as_str()))));
                c.push(ints(m.iter().map(|(_, r)| r.seconds)));
                c
            }
            Dataset::Gps => {
                let m = sorted(self.gps, |k| {
                    (n.subject_of(k.0), k.1, k.2.map(|s| n.name_of(s)))
                });
                let mut c = common!(m);
                c.push(ints(m.iter().map(|(_, r)| r.points)));
                c.push(Arc::new(
                    m.iter()
                        .map(|(_, r)| r.distance_m)
                        .collect::<Float64Array>(),
                ));
                c.push(Arc::new(
                    m.iter()
                        .map(|(_, r)| Some(r.cell()))
                        .collect::<StringArray>(),
                ));
                c.push(strings(m.iter().map(|(k, _)| k.2.map(|s| n.name_of(s)))));
                c.push(ints(m.iter().map(|(_, r)| r.moving_ms / 1000)));
                c.push(ints(m.iter().map(|(_, r)| r.stopped_ms / 1000)));
                c.push(ints(m.iter().map(|(_, r)| r.stops)));
                c
            }
            Dataset::Attendance => {
                let m = sorted(self.attendance, |k| {
                    (n.subject_of(k.0), k.1, n.name_of(k.2))
                });
                let mut c = common!(m);
                c.push(strings(m.iter().map(|(k, _)| Some(n.name_of(k.2)))));
                c.push(ints(m.iter().map(|(_, r)| r.events)));
                c.push(utc_ts(m.iter().map(|(_, r)| r.first_at).collect()));
                c.push(utc_ts(m.iter().map(|(_, r)| r.last_at).collect()));
                c
            }
        }
    }
}

impl GpsRow {
    /// The slot's centroid rounded to 0.01 degrees (about 1 km): the only
    /// position that reaches the lake.
    fn cell(&self) -> String {
        let n = self.points as f64;
        format!("{:.2},{:.2}", self.lat_sum / n, self.lon_sum / n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn haversine_matches_a_known_distance() {
        // Berlin Hbf to Munich Hbf: about 504 km.
        let d = haversine_m((52.5251, 13.3694), (48.1402, 11.5600));
        assert!((d - 504_000.0).abs() < 2_000.0, "{d}");
    }

    #[test]
    fn partition_paths_are_hive_style() {
        let key = PartitionKey {
            dataset: Dataset::Activity,
            tenant: TenantId::new("acme").unwrap(),
            date: utc_date(0),
        };
        assert_eq!(
            key.object_path("part-x.parquet").as_ref(),
            "activity/tenant=acme/date=1970-01-01/part-x.parquet"
        );
    }

    fn record(json: &str, received_at_ms: i64) -> Vec<LogRecord> {
        use candor_schemas::record::RecordMeta;
        use candor_schemas::{DeviceId, EmployeeId, Limits, decode_json};
        let decoded = decode_json(json.as_bytes(), &Limits::default(), received_at_ms).unwrap();
        decoded
            .datasets
            .into_iter()
            .map(|dataset| LogRecord {
                tenant: TenantId::new("acme").unwrap(),
                key_version: 1,
                meta: RecordMeta {
                    employee: EmployeeId::new("e1").unwrap(),
                    device: DeviceId::new("d1").unwrap(),
                    batch_id: [1; 16],
                    received_at_ms,
                },
                datasets: vec![dataset],
            })
            .collect()
    }

    #[test]
    fn policy_drops_off_hours_and_rates_apps_and_rows_carry_the_department() {
        let at = |s: &str| {
            chrono::DateTime::parse_from_rfc3339(s)
                .unwrap()
                .timestamp_millis()
        };
        // Monday 2026-03-30 in Berlin (UTC+2): 06:30 UTC is 08:30 local.
        let (before, inside) = (at("2026-03-30T06:30:00Z"), at("2026-03-30T08:00:00Z"));
        let json = format!(
            r#"{{"v":1,"sent_at_ms":{inside},
            "activity":[{{"start_ms":{before},"active_s":60,"idle_s":0}},{{"start_ms":{inside},"active_s":50,"idle_s":10}}],
            "app_usage":[{{"start_ms":{inside},"duration_s":60,"app":"Firefox","host":"api.github.com"}},
                         {{"start_ms":{inside},"duration_s":30,"app":"Solitaire"}},
                         {{"start_ms":{before},"duration_s":30,"app":"Excel"}}],
            "gps":[{{"at_ms":{before},"lat":52.0,"lon":13.0,"accuracy_m":5.0}},
                   {{"at_ms":{inside},"lat":52.01,"lon":13.0,"accuracy_m":5.0}}],
            "attendance":[{{"at_ms":{before},"kind":"clock_in"}}]}}"#
        );
        let mut tenant = Tenant::new(
            TenantId::new("acme").unwrap(),
            candor_control::tenant::Plan::Starter,
            "Europe/Berlin",
        );
        tenant.app_categories = AppCategories {
            productive: vec!["github.com".into()],
            unproductive: vec!["solitaire".into()],
        };
        let policy = TenantPolicy::of(&tenant);
        let subject = Arc::new(Subject {
            pseudonym: "p1".into(),
            department: Some("Sales".into()),
        });
        let mut agg = Aggregator::default();
        for r in record(&json, inside) {
            agg.add(&r, &subject, &policy);
        }
        assert_eq!(agg.outside_work_hours, 3, "activity, app and gps at 08:30");
        let out = agg.finish();
        let table = |d: Dataset| &out.iter().find(|(k, _)| k.dataset == d).unwrap().1;
        let activity = table(Dataset::Activity);
        assert_eq!(activity.num_rows(), 1);
        assert_eq!(activity.column(1).as_string::<i32>().value(0), "Sales");
        assert_eq!(
            activity
                .column(3)
                .as_primitive::<arrow::datatypes::Int64Type>()
                .value(0),
            60
        );
        let apps = table(Dataset::AppUsage);
        let categories: Vec<_> = (0..apps.num_rows())
            .map(|i| {
                (
                    apps.column(3).as_string::<i32>().value(i),
                    apps.column(5).as_string::<i32>().value(i),
                )
            })
            .collect();
        assert_eq!(
            categories,
            vec![("Firefox", "productive"), ("Solitaire", "unproductive")]
        );
        // The route starts again inside work hours: no distance from 08:30's point.
        let gps = table(Dataset::Gps);
        assert_eq!(gps.column(4).as_primitive::<Float64Type>().value(0), 0.0);
        // Attendance is kept at any hour.
        assert_eq!(table(Dataset::Attendance).num_rows(), 1);

        let mut around_the_clock = tenant.clone();
        around_the_clock.track_outside_work_hours = true;
        let mut agg = Aggregator::default();
        for r in record(&json, inside) {
            agg.add(&r, &subject, &TenantPolicy::of(&around_the_clock));
        }
        assert_eq!(agg.outside_work_hours, 0);
    }

    #[test]
    fn gps_time_is_split_into_moving_and_stopped_and_attributed_to_sites() {
        use candor_schemas::datasets::SLOT_MS;
        // 12:00 UTC, in one slot: drive 1.1 km north in 2 minutes (9 m/s),
        // then stand at the depot for 4 minutes, then a 20-minute gap.
        let t0 = 1_780_000_200_000_i64 - 1_780_000_200_000 % SLOT_MS;
        let point = |minute: i64, lat: f64| {
            format!(
                r#"{{"at_ms":{},"lat":{lat},"lon":11.0,"accuracy_m":5.0}}"#,
                t0 + minute * 60_000
            )
        };
        let points = [
            point(0, 48.0),
            point(2, 48.01),
            point(4, 48.01001),
            point(6, 48.01),
            point(26, 48.01),
        ];
        let json = format!(
            r#"{{"v":1,"sent_at_ms":{t0},"gps":[{}]}}"#,
            points.join(",")
        );
        let mut tenant = Tenant::new(
            TenantId::new("acme").unwrap(),
            candor_control::tenant::Plan::Starter,
            "UTC",
        );
        tenant.track_outside_work_hours = true;
        tenant.sites = vec![Site {
            name: "Depot".into(),
            lat: 48.01,
            lon: 11.0,
            radius_m: 100.0,
        }];
        let subject = Arc::new(Subject {
            pseudonym: "p1".into(),
            department: None,
        });
        let mut agg = Aggregator::default();
        for r in record(&json, t0 + 30 * 60_000) {
            agg.add(&r, &subject, &TenantPolicy::of(&tenant));
        }
        let out = agg.finish();
        let gps = out
            .iter()
            .filter(|(k, _)| k.dataset == Dataset::Gps)
            .map(|(_, b)| b)
            .collect::<Vec<_>>();
        let column = |b: &RecordBatch, name: &str| b.column_by_name(name).unwrap().clone();
        let mut rows = Vec::new();
        for b in gps {
            for i in 0..b.num_rows() {
                let int = |name: &str| {
                    column(b, name)
                        .as_primitive::<arrow::datatypes::Int64Type>()
                        .value(i)
                };
                let site = column(b, "site");
                let site = site.as_string::<i32>();
                rows.push((
                    site.is_valid(i).then(|| site.value(i).to_string()),
                    b.column_by_name("slot_start")
                        .unwrap()
                        .as_primitive::<TimestampMillisecondType>()
                        .value(i),
                    int("points"),
                    int("moving_s"),
                    int("stopped_s"),
                    int("stops"),
                ));
            }
        }
        rows.sort();
        let depot = Some("Depot".to_string());
        assert_eq!(
            rows,
            vec![
                (None, t0, 1, 0, 0, 0),
                // Arrived moving (2 min), stood 4 min: one stop.
                (depot.clone(), t0, 3, 120, 240, 1),
                // After the gap: a point, no time.
                (depot, t0 + SLOT_MS, 1, 0, 0, 0),
            ]
        );
    }

    /// Total GPS distance (m) and moving seconds in the aggregator's rows.
    fn gps_totals(out: &[(PartitionKey, RecordBatch)]) -> (f64, i64) {
        let (mut metres, mut moving) = (0.0, 0);
        for (_, b) in out.iter().filter(|(k, _)| k.dataset == Dataset::Gps) {
            let d = b.column_by_name("distance_m").unwrap();
            let m = b.column_by_name("moving_s").unwrap();
            for i in 0..b.num_rows() {
                metres += d.as_primitive::<Float64Type>().value(i);
                moving += m.as_primitive::<arrow::datatypes::Int64Type>().value(i);
            }
        }
        (metres, moving)
    }

    /// A device driving north at 0.001 degrees (111 m) a minute, uploading
    /// every 5 minutes: the segment between two uploads counts, in the same
    /// flush and in the next one; a late upload of older points neither
    /// joins the route nor moves it back.
    #[test]
    fn a_route_continues_across_records_and_flushes() {
        use candor_schemas::datasets::SLOT_MS;
        let t0 = 1_780_000_200_000_i64 - 1_780_000_200_000 % SLOT_MS;
        let upload = |minutes: std::ops::Range<i64>| {
            let points: Vec<String> = minutes
                .clone()
                .map(|m| {
                    format!(
                        r#"{{"at_ms":{},"lat":{},"lon":11.0,"accuracy_m":5.0}}"#,
                        t0 + m * 60_000,
                        48.0 + 0.001 * m as f64
                    )
                })
                .collect();
            let json = format!(
                r#"{{"v":1,"sent_at_ms":{},"gps":[{}]}}"#,
                t0 + minutes.end * 60_000,
                points.join(",")
            );
            record(&json, t0 + minutes.end.max(60) * 60_000)
        };
        let mut tenant = Tenant::new(
            TenantId::new("acme").unwrap(),
            candor_control::tenant::Plan::Starter,
            "UTC",
        );
        tenant.track_outside_work_hours = true;
        let policy = TenantPolicy::of(&tenant);
        let subject = Arc::new(Subject {
            pseudonym: "p1".into(),
            department: None,
        });
        let step = haversine_m((48.0, 11.0), (48.001, 11.0));

        // One flush: minutes 0-4 and 5-9, nine segments of one minute.
        let mut agg = Aggregator::default();
        for r in upload(0..5).into_iter().chain(upload(5..10)) {
            agg.add(&r, &subject, &policy);
        }
        let routes = agg.take_routes();
        let (metres, moving) = gps_totals(&agg.finish());
        assert!(
            (metres - 9.0 * step).abs() < 1.0,
            "{metres} vs {}",
            9.0 * step
        );
        assert_eq!(moving, 9 * 60);

        // The next flush: a late upload of minutes 0-2 (three points, two
        // segments of its own), then minutes 10-14, which continue from 9.
        let mut agg = Aggregator::with_routes(routes);
        for r in upload(0..3).into_iter().chain(upload(10..15)) {
            agg.add(&r, &subject, &policy);
        }
        let (metres, moving) = gps_totals(&agg.finish());
        assert!(
            (metres - 7.0 * step).abs() < 1.0,
            "{metres} vs {}",
            7.0 * step
        );
        assert_eq!(moving, 7 * 60);

        // Without a carried route, minutes 10-14 are four segments.
        let mut agg = Aggregator::default();
        for r in upload(10..15) {
            agg.add(&r, &subject, &policy);
        }
        let (metres, _) = gps_totals(&agg.finish());
        assert!((metres - 4.0 * step).abs() < 1.0, "{metres}");

        // An hourly uploader: while its next hour is on the way, another
        // device's newer points arrive, 70 minutes past its last point.
        // Its route still continues: minutes 60-64 are five segments.
        let mut agg = Aggregator::default();
        for r in upload(0..60) {
            agg.add(&r, &subject, &policy);
        }
        let routes = agg.take_routes();
        let mut agg = Aggregator::with_routes(routes);
        for mut r in upload(60..120).into_iter().chain(upload(120..130)) {
            r.meta.device = candor_schemas::DeviceId::new("d2").unwrap();
            agg.add(&r, &subject, &policy);
        }
        let routes = agg.take_routes();
        let mut agg = Aggregator::with_routes(routes);
        for r in upload(60..65) {
            agg.add(&r, &subject, &policy);
        }
        let (metres, _) = gps_totals(&agg.finish());
        assert!((metres - 5.0 * step).abs() < 1.0, "{metres}");
    }
}
