//! Aggregation of opened log records into lake rows: one row per subject,
//! 15-minute slot and key columns, with additive measures only, so rows from
//! late batches add up with earlier ones and compaction can merge them.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, Float64Array, Int64Array, RecordBatch, StringArray,
    TimestampMillisecondArray,
};
use arrow::datatypes::{Float64Type, TimestampMillisecondType, UInt32Type};
use candor_schemas::datasets::{Dataset, slot_start};
use candor_schemas::ids::TenantId;
use candor_schemas::record::LogRecord;
use object_store::path::Path as ObjectPath;

/// One hive partition of the lake: `<dataset>/tenant=<id>/date=<YYYY-MM-DD>`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct PartitionKey {
    pub dataset: Dataset,
    pub tenant: TenantId,
    /// UTC date of the rows' slots.
    pub date: String,
}

impl PartitionKey {
    pub fn object_path(&self, file_name: &str) -> ObjectPath {
        ObjectPath::from(format!(
            "{}/tenant={}/date={}/{file_name}",
            self.dataset.name(),
            self.tenant,
            self.date
        ))
    }
}

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
}

struct AttendanceRow {
    events: i64,
    first_at: i64,
    last_at: i64,
}

/// Rows of one partition, keyed by (subject, slot, key columns...).
#[derive(Default)]
struct Rows {
    activity: BTreeMap<(String, i64), ActivityRow>,
    app_usage: BTreeMap<(String, i64, String, Option<String>), i64>,
    gps: BTreeMap<(String, i64), GpsRow>,
    attendance: BTreeMap<(String, i64, String), AttendanceRow>,
}

/// Collects rows from many records, then yields one batch per partition.
#[derive(Default)]
pub struct Aggregator {
    partitions: BTreeMap<PartitionKey, Rows>,
}

impl Aggregator {
    fn rows(&mut self, dataset: Dataset, tenant: &TenantId, slot: i64) -> &mut Rows {
        let key = PartitionKey {
            dataset,
            tenant: tenant.clone(),
            date: utc_date(slot),
        };
        self.partitions.entry(key).or_default()
    }

    /// Adds one opened record's events under pseudonym `subject`.
    pub fn add(&mut self, record: &LogRecord, subject: &str) {
        let e = &record.events;
        let ts = |i: usize| e.column(i).as_primitive::<TimestampMillisecondType>();
        let u32s = |i: usize| e.column(i).as_primitive::<UInt32Type>();
        let f64s = |i: usize| e.column(i).as_primitive::<Float64Type>();
        let tenant = &record.tenant;
        match record.dataset {
            Dataset::Activity => {
                let (start, active, idle) = (ts(0), u32s(1), u32s(2));
                for i in 0..e.num_rows() {
                    let slot = slot_start(start.value(i));
                    let row = self
                        .rows(Dataset::Activity, tenant, slot)
                        .activity
                        .entry((subject.to_string(), slot))
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
                    let slot = slot_start(start.value(i));
                    let host = host.is_valid(i).then(|| host.value(i).to_string());
                    *self
                        .rows(Dataset::AppUsage, tenant, slot)
                        .app_usage
                        .entry((subject.to_string(), slot, app.value(i).to_string(), host))
                        .or_default() += i64::from(duration.value(i));
                }
            }
            Dataset::Gps => {
                let (at, lat, lon) = (ts(0), f64s(1), f64s(2));
                let mut order: Vec<usize> = (0..e.num_rows()).collect();
                order.sort_by_key(|&i| at.value(i));
                let mut previous: Option<(f64, f64)> = None;
                for i in order {
                    let slot = slot_start(at.value(i));
                    let here = (lat.value(i), lon.value(i));
                    let row = self
                        .rows(Dataset::Gps, tenant, slot)
                        .gps
                        .entry((subject.to_string(), slot))
                        .or_default();
                    row.points += 1;
                    row.lat_sum += here.0;
                    row.lon_sum += here.1;
                    // Distance comes from precise points, before coarsening;
                    // a segment counts in the slot where it ends.
                    if let Some(prev) = previous {
                        row.distance_m += haversine_m(prev, here);
                    }
                    previous = Some(here);
                }
            }
            Dataset::Attendance => {
                let (at, kind) = (ts(0), e.column(1).as_string::<i32>());
                for i in 0..e.num_rows() {
                    let t = at.value(i);
                    let slot = slot_start(t);
                    self.rows(Dataset::Attendance, tenant, slot)
                        .attendance
                        .entry((subject.to_string(), slot, kind.value(i).to_string()))
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
        self.partitions
            .into_iter()
            .map(|(key, rows)| {
                let columns = rows.into_columns(key.dataset);
                let batch = RecordBatch::try_new(key.dataset.lake_schema(), columns)
                    .expect("columns are built to the dataset's lake schema");
                (key, batch)
            })
            .collect()
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

impl Rows {
    /// Columns in lake-schema order: subject, department, slot_start, measures.
    fn into_columns(self, dataset: Dataset) -> Vec<ArrayRef> {
        // The directory (and so the department) arrives with the control plane;
        // until then the column is null.
        macro_rules! common {
            ($map:expr) => {{
                let n = $map.len();
                vec![
                    strings($map.keys().map(|k| Some(k.0.as_str()))),
                    Arc::new(StringArray::new_null(n)) as ArrayRef,
                    utc_ts($map.keys().map(|k| k.1).collect()),
                ]
            }};
        }
        match dataset {
            Dataset::Activity => {
                let m = &self.activity;
                let mut c = common!(m);
                c.push(ints(m.values().map(|r| r.tracked_s)));
                c.push(ints(m.values().map(|r| r.active_s)));
                c.push(ints(m.values().map(|r| r.idle_s)));
                c.push(ints(m.values().map(|r| r.samples)));
                c
            }
            Dataset::AppUsage => {
                let m = &self.app_usage;
                let mut c = common!(m);
                c.push(strings(m.keys().map(|k| Some(k.2.as_str()))));
                c.push(strings(m.keys().map(|k| k.3.as_deref())));
                c.push(ints(m.values().copied()));
                c
            }
            Dataset::Gps => {
                let m = &self.gps;
                let mut c = common!(m);
                c.push(ints(m.values().map(|r| r.points)));
                c.push(Arc::new(
                    m.values().map(|r| r.distance_m).collect::<Float64Array>(),
                ));
                c.push(Arc::new(
                    m.values().map(|r| Some(r.cell())).collect::<StringArray>(),
                ));
                c
            }
            Dataset::Attendance => {
                let m = &self.attendance;
                let mut c = common!(m);
                c.push(strings(m.keys().map(|k| Some(k.2.as_str()))));
                c.push(ints(m.values().map(|r| r.events)));
                c.push(utc_ts(m.values().map(|r| r.first_at).collect()));
                c.push(utc_ts(m.values().map(|r| r.last_at).collect()));
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

/// Great-circle distance in metres between two (lat, lon) points in degrees.
pub fn haversine_m(a: (f64, f64), b: (f64, f64)) -> f64 {
    const EARTH_RADIUS_M: f64 = 6_371_008.8;
    let (lat1, lat2) = (a.0.to_radians(), b.0.to_radians());
    let dlat = lat2 - lat1;
    let dlon = (b.1 - a.1).to_radians();
    let h = (dlat / 2.0).sin().powi(2) + lat1.cos() * lat2.cos() * (dlon / 2.0).sin().powi(2);
    2.0 * EARTH_RADIUS_M * h.sqrt().asin()
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
}
