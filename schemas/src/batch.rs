//! The batch an agent sends, once opened and decompressed: JSON, one
//! employee and one device (named in the envelope header), many events.
//!
//! The model is closed: unknown fields are refused, and there is no field
//! for keystroke content, clipboard, screenshots, webcam, microphone or
//! message content, so such data cannot be sent by mistake. App usage
//! carries an application name and a host only, never window titles or URLs.
//! Every unit and range is documented in WIRE.md.

use serde::{Deserialize, Serialize};

use crate::reason::{RejectReason, Rejection};

/// The only `v` this node accepts.
pub const BATCH_MODEL_VERSION: u32 = 1;
/// Longest activity sample or app-usage interval: one 15-minute slot.
pub const MAX_INTERVAL_S: u32 = 900;
pub const MAX_APP_NAME_LEN: usize = 128;
pub const MAX_HOST_LEN: usize = 253;
pub const MAX_ACCURACY_M: f64 = 100_000.0;
/// Earliest timestamp any batch may carry: 2020-01-01T00:00:00Z.
pub const EPOCH_FLOOR_MS: i64 = 1_577_836_800_000;

/// Caps applied before and while a batch is opened (bounded before it
/// allocates: the body cap before reading, the decompressed cap while
/// inflating, the event cap before encoding).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_body_bytes: usize,
    pub max_decompressed_bytes: usize,
    pub max_events: usize,
    /// How far in the future an event may lie (agent clock skew).
    pub max_future_ms: i64,
    /// How far in the past an event may lie (the tenant's retention).
    pub max_age_ms: i64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: 1024 * 1024,
            max_decompressed_bytes: 8 * 1024 * 1024,
            max_events: 10_000,
            max_future_ms: 5 * 60 * 1000,
            max_age_ms: 365 * 24 * 3600 * 1000,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Batch {
    /// Model version; must be 1.
    pub v: u32,
    /// When the agent sealed the batch (Unix ms, agent clock); informative.
    pub sent_at_ms: i64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub activity: Vec<ActivitySample>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub app_usage: Vec<AppUsage>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gps: Vec<GpsPoint>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attendance: Vec<AttendanceEvent>,
}

/// An interval of tracked time split into active and idle seconds. The
/// interval is `[start_ms, start_ms + (active_s + idle_s) * 1000)`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActivitySample {
    pub start_ms: i64,
    pub active_s: u32,
    pub idle_s: u32,
}

/// Foreground time of one application, and for browsers the host only.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppUsage {
    pub start_ms: i64,
    pub duration_s: u32,
    pub app: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

/// A precise position. Precise positions never reach the lake: the
/// processor computes distances from them, then coarsens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpsPoint {
    pub at_ms: i64,
    pub lat: f64,
    pub lon: f64,
    pub accuracy_m: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttendanceKind {
    ClockIn,
    ClockOut,
    BreakStart,
    BreakEnd,
}

impl AttendanceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ClockIn => "clock_in",
            Self::ClockOut => "clock_out",
            Self::BreakStart => "break_start",
            Self::BreakEnd => "break_end",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttendanceEvent {
    pub at_ms: i64,
    pub kind: AttendanceKind,
}

impl Batch {
    /// Parses the decompressed JSON, refusing unknown fields.
    pub fn from_json(bytes: &[u8]) -> Result<Self, Rejection> {
        serde_json::from_slice(bytes).map_err(|e| {
            // serde reports unknown fields only through its message text.
            let reason = if e.to_string().starts_with("unknown field") {
                RejectReason::UnknownField
            } else {
                RejectReason::InvalidJson
            };
            Rejection::new(reason, e.to_string())
        })
    }

    pub fn event_count(&self) -> usize {
        self.activity.len() + self.app_usage.len() + self.gps.len() + self.attendance.len()
    }

    /// Checks every event against WIRE.md's rules. `received_at_ms` is the
    /// ingest node's clock, against which future and age limits are judged.
    pub fn validate(&self, limits: &Limits, received_at_ms: i64) -> Result<(), Rejection> {
        if self.v != BATCH_MODEL_VERSION {
            return Err(Rejection::new(
                RejectReason::UnsupportedVersion,
                format!(
                    "batch model v{} (this node speaks v{BATCH_MODEL_VERSION})",
                    self.v
                ),
            ));
        }
        let events = self.event_count();
        if events == 0 {
            return Err(Rejection::new(
                RejectReason::EmptyBatch,
                "batch holds no event",
            ));
        }
        if events > limits.max_events {
            return Err(Rejection::new(
                RejectReason::TooManyEvents,
                format!("{events} events; at most {}", limits.max_events),
            ));
        }
        let clock = Clock {
            latest: received_at_ms.saturating_add(limits.max_future_ms),
            earliest: received_at_ms
                .saturating_sub(limits.max_age_ms)
                .max(EPOCH_FLOOR_MS),
        };
        for (i, s) in self.activity.iter().enumerate() {
            let at = || format!("activity[{i}]");
            clock.check(s.start_ms, &at)?;
            let total = u64::from(s.active_s) + u64::from(s.idle_s);
            if total == 0 || total > u64::from(MAX_INTERVAL_S) {
                return Err(invalid(
                    at(),
                    format!("active_s + idle_s must be 1..={MAX_INTERVAL_S}"),
                ));
            }
        }
        for (i, u) in self.app_usage.iter().enumerate() {
            let at = || format!("app_usage[{i}]");
            clock.check(u.start_ms, &at)?;
            if u.duration_s == 0 || u.duration_s > MAX_INTERVAL_S {
                return Err(invalid(
                    at(),
                    format!("duration_s must be 1..={MAX_INTERVAL_S}"),
                ));
            }
            check_app_name(&u.app).map_err(|d| invalid(format!("{}.app", at()), d))?;
            if let Some(host) = &u.host {
                check_host(host).map_err(|d| invalid(format!("{}.host", at()), d))?;
            }
        }
        for (i, p) in self.gps.iter().enumerate() {
            let at = || format!("gps[{i}]");
            clock.check(p.at_ms, &at)?;
            if !(p.lat.is_finite() && (-90.0..=90.0).contains(&p.lat)) {
                return Err(invalid(at(), "lat must be within -90..=90"));
            }
            if !(p.lon.is_finite() && (-180.0..=180.0).contains(&p.lon)) {
                return Err(invalid(at(), "lon must be within -180..=180"));
            }
            if !(p.accuracy_m.is_finite() && (0.0..=MAX_ACCURACY_M).contains(&p.accuracy_m)) {
                return Err(invalid(
                    at(),
                    format!("accuracy_m must be within 0..={MAX_ACCURACY_M}"),
                ));
            }
        }
        for (i, a) in self.attendance.iter().enumerate() {
            clock.check(a.at_ms, &|| format!("attendance[{i}]"))?;
        }
        Ok(())
    }
}

fn invalid(path: String, detail: impl AsRef<str>) -> Rejection {
    Rejection::new(
        RejectReason::InvalidEvent,
        format!("{path}: {}", detail.as_ref()),
    )
}

struct Clock {
    earliest: i64,
    latest: i64,
}

impl Clock {
    fn check(&self, ts_ms: i64, at: &dyn Fn() -> String) -> Result<(), Rejection> {
        if ts_ms > self.latest {
            return Err(Rejection::new(
                RejectReason::TimestampInFuture,
                format!("{}: {ts_ms} is after {}", at(), self.latest),
            ));
        }
        if ts_ms < self.earliest {
            return Err(Rejection::new(
                RejectReason::TimestampTooOld,
                format!("{}: {ts_ms} is before {}", at(), self.earliest),
            ));
        }
        Ok(())
    }
}

/// An application name: 1..=128 bytes of printable text, no control characters.
fn check_app_name(app: &str) -> Result<(), String> {
    if app.is_empty() || app.len() > MAX_APP_NAME_LEN {
        return Err(format!("must be 1..={MAX_APP_NAME_LEN} bytes"));
    }
    if app.chars().any(char::is_control) {
        return Err("must not contain control characters".into());
    }
    Ok(())
}

/// A host name only: lowercase LDH labels separated by dots. Anything that
/// looks like more (scheme, port, path, query, credentials) is refused, so a
/// full URL can never reach the lake.
fn check_host(host: &str) -> Result<(), String> {
    if host.is_empty() || host.len() > MAX_HOST_LEN {
        return Err(format!("must be 1..={MAX_HOST_LEN} bytes"));
    }
    for label in host.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !ok {
            return Err(
                "must be a lowercase host name only (no scheme, port, path or query)".into(),
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_780_000_000_000;

    fn batch(json: &str) -> Result<Batch, Rejection> {
        let b = Batch::from_json(json.as_bytes())?;
        b.validate(&Limits::default(), NOW)?;
        Ok(b)
    }

    fn reason(json: &str) -> RejectReason {
        batch(json).unwrap_err().reason
    }

    #[test]
    fn accepts_every_event_kind() {
        let b = batch(&format!(
            r#"{{"v":1,"sent_at_ms":{NOW},
            "activity":[{{"start_ms":{NOW},"active_s":40,"idle_s":20}}],
            "app_usage":[{{"start_ms":{NOW},"duration_s":60,"app":"Excel"}},
                         {{"start_ms":{NOW},"duration_s":60,"app":"Firefox","host":"docs.example.com"}}],
            "gps":[{{"at_ms":{NOW},"lat":52.52,"lon":13.405,"accuracy_m":8.5}}],
            "attendance":[{{"at_ms":{NOW},"kind":"clock_in"}}]}}"#
        ))
        .unwrap();
        assert_eq!(b.event_count(), 5);
    }

    #[test]
    fn refuses_fields_for_content_candor_never_collects() {
        for field in [
            "keystrokes",
            "clipboard",
            "screenshot",
            "webcam",
            "microphone",
            "message",
            "title",
            "url",
        ] {
            let json = format!(
                r#"{{"v":1,"sent_at_ms":{NOW},"{field}":"x","activity":[{{"start_ms":{NOW},"active_s":1,"idle_s":0}}]}}"#
            );
            assert_eq!(reason(&json), RejectReason::UnknownField, "{field}");
        }
        let json = format!(
            r#"{{"v":1,"sent_at_ms":{NOW},"app_usage":[{{"start_ms":{NOW},"duration_s":5,"app":"Chrome","title":"Inbox"}}]}}"#
        );
        assert_eq!(reason(&json), RejectReason::UnknownField);
    }

    #[test]
    fn refuses_out_of_range_values() {
        let cases = [
            (
                r#"{"v":1,"sent_at_ms":0}"#.to_string(),
                RejectReason::EmptyBatch,
            ),
            (
                r#"{"v":2,"sent_at_ms":0}"#.to_string(),
                RejectReason::UnsupportedVersion,
            ),
            (
                format!(
                    r#"{{"v":1,"sent_at_ms":0,"activity":[{{"start_ms":{},"active_s":1,"idle_s":0}}]}}"#,
                    NOW + 300_001
                ),
                RejectReason::TimestampInFuture,
            ),
            (
                format!(
                    r#"{{"v":1,"sent_at_ms":0,"activity":[{{"start_ms":{},"active_s":1,"idle_s":0}}]}}"#,
                    NOW - 366 * 86_400_000
                ),
                RejectReason::TimestampTooOld,
            ),
            (
                format!(
                    r#"{{"v":1,"sent_at_ms":0,"activity":[{{"start_ms":{NOW},"active_s":0,"idle_s":0}}]}}"#
                ),
                RejectReason::InvalidEvent,
            ),
            (
                format!(
                    r#"{{"v":1,"sent_at_ms":0,"activity":[{{"start_ms":{NOW},"active_s":901,"idle_s":0}}]}}"#
                ),
                RejectReason::InvalidEvent,
            ),
            (
                format!(
                    r#"{{"v":1,"sent_at_ms":0,"gps":[{{"at_ms":{NOW},"lat":91.0,"lon":0.0,"accuracy_m":1.0}}]}}"#
                ),
                RejectReason::InvalidEvent,
            ),
            (
                format!(
                    r#"{{"v":1,"sent_at_ms":0,"gps":[{{"at_ms":{NOW},"lat":0.0,"lon":-180.5,"accuracy_m":1.0}}]}}"#
                ),
                RejectReason::InvalidEvent,
            ),
            (
                format!(
                    r#"{{"v":1,"sent_at_ms":0,"app_usage":[{{"start_ms":{NOW},"duration_s":5,"app":"Chrome","host":"https://x.com/inbox"}}]}}"#
                ),
                RejectReason::InvalidEvent,
            ),
            (
                format!(
                    r#"{{"v":1,"sent_at_ms":0,"app_usage":[{{"start_ms":{NOW},"duration_s":5,"app":"Chrome","host":"x.com:443"}}]}}"#
                ),
                RejectReason::InvalidEvent,
            ),
            (
                format!(
                    r#"{{"v":1,"sent_at_ms":0,"app_usage":[{{"start_ms":{NOW},"duration_s":5,"app":""}}]}}"#
                ),
                RejectReason::InvalidEvent,
            ),
            (
                format!(
                    r#"{{"v":1,"sent_at_ms":0,"attendance":[{{"at_ms":{NOW},"kind":"lunch"}}]}}"#
                ),
                RejectReason::InvalidJson,
            ),
            ("[1,2".to_string(), RejectReason::InvalidJson),
        ];
        for (json, want) in cases {
            assert_eq!(reason(&json), want, "{json}");
        }
    }

    #[test]
    fn caps_the_event_count() {
        let sample = format!(r#"{{"start_ms":{NOW},"active_s":1,"idle_s":0}}"#);
        let json = format!(
            r#"{{"v":1,"sent_at_ms":0,"activity":[{}]}}"#,
            vec![sample; 10_001].join(",")
        );
        assert_eq!(reason(&json), RejectReason::TooManyEvents);
    }
}
