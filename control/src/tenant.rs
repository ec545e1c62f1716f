//! The tenant document: plan and retention, time zone, work-hours policy,
//! app categories, the k of anonymized extracts, where AI extracts are delivered, where the
//! tenant's lake lives (data residency), and whether it was cancelled.
//! The extract signing secret is not stored: it is derived from the master
//! secret like every other key.

use std::str::FromStr;

use candor_schemas::TenantId;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Plan {
    Free,
    Starter,
    Professional,
    Enterprise,
}

impl Plan {
    /// Days of data kept when the tenant sets no retention of its own.
    pub fn default_retention_days(self) -> u32 {
        match self {
            Plan::Free => 7,
            Plan::Starter => 30,
            Plan::Professional => 90,
            Plan::Enterprise => 365,
        }
    }
}

/// When tracking is expected, in the tenant's time zone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkHours {
    /// ISO weekdays: 1 is Monday, 7 is Sunday.
    pub days: Vec<u8>,
    /// `HH:MM`, local time.
    pub start: String,
    /// `HH:MM`, local time, after `start`.
    pub end: String,
}

impl Default for WorkHours {
    fn default() -> Self {
        Self {
            days: vec![1, 2, 3, 4, 5],
            start: "09:00".into(),
            end: "17:00".into(),
        }
    }
}

/// Minutes after midnight of an `HH:MM` string.
fn minutes(hhmm: &str) -> Option<u32> {
    let (h, m) = hhmm.split_once(':')?;
    if h.len() != 2 || m.len() != 2 {
        return None;
    }
    let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
    (h < 24 && m < 60).then_some(h * 60 + m)
}

impl WorkHours {
    /// When the workday starts, in minutes after local midnight.
    pub fn start_minutes(&self) -> u32 {
        minutes(&self.start).unwrap_or(0)
    }

    /// Whether `day` is a work day.
    pub fn is_work_day(&self, day: chrono::Weekday) -> bool {
        self.days.contains(&(day.number_from_monday() as u8))
    }

    /// The window as the processor applies it, in `time_zone`.
    pub fn window(&self, time_zone: chrono_tz::Tz) -> WorkWindow {
        WorkWindow {
            time_zone,
            days: self
                .days
                .iter()
                .fold(0u8, |mask, d| mask | 1u8.wrapping_shl(u32::from(*d))),
            start_min: self.start_minutes(),
            end_min: minutes(&self.end).unwrap_or(24 * 60),
        }
    }
}

/// Work hours resolved against a time zone: which instants are inside.
/// Local time comes from the zone's rules at that instant, so in Berlin a
/// 09:00 start is 07:00 UTC in summer and 08:00 UTC in winter.
#[derive(Debug, Clone, Copy)]
pub struct WorkWindow {
    time_zone: chrono_tz::Tz,
    /// Bit `d` set for ISO weekday `d`.
    days: u8,
    start_min: u32,
    end_min: u32,
}

impl WorkWindow {
    /// Whether `ts_ms` lies on a work day, at or after the start and before
    /// the end, in the tenant's local time.
    pub fn contains(&self, ts_ms: i64) -> bool {
        use chrono::{Datelike, Timelike};
        let Some(utc) = chrono::DateTime::from_timestamp_millis(ts_ms) else {
            return false;
        };
        let local = utc.with_timezone(&self.time_zone);
        let day = local.weekday().number_from_monday();
        let minute = local.hour() * 60 + local.minute();
        self.days & (1 << day) != 0 && (self.start_min..self.end_min).contains(&minute)
    }
}

/// Most sites a tenant may define.
pub const MAX_SITES: usize = 500;

/// A circular geofence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Site {
    /// 1-64 bytes of printable text, unique in the tenant.
    pub name: String,
    pub lat: f64,
    pub lon: f64,
    /// 10 m to 10 km.
    pub radius_m: f64,
}

impl Site {
    fn validate(&self) -> Result<(), String> {
        let name_ok = !self.name.is_empty()
            && self.name.len() <= 64
            && self.name.trim() == self.name
            && !self.name.chars().any(char::is_control);
        if !name_ok {
            return Err(format!(
                "site name {:?} must be 1-64 bytes of printable text",
                self.name
            ));
        }
        if !((-90.0..=90.0).contains(&self.lat) && (-180.0..=180.0).contains(&self.lon)) {
            return Err(format!(
                "site {:?}: latitude or longitude out of range",
                self.name
            ));
        }
        if !(10.0..=10_000.0).contains(&self.radius_m) {
            return Err(format!(
                "site {:?}: radius must be 10 m to 10 km",
                self.name
            ));
        }
        Ok(())
    }
}

/// How a tenant rates applications and web hosts, for the productive share.
/// Anything listed in neither is neutral.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppCategories {
    /// Application names (compared without case) or host names (a host also
    /// covers its subdomains: `github.com` covers `api.github.com`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub productive: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unproductive: Vec<String>,
}

/// Most entries in both category lists together.
pub const MAX_APP_CATEGORY_ENTRIES: usize = 2000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Category {
    Productive,
    Neutral,
    Unproductive,
}

impl Category {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Productive => "productive",
            Self::Neutral => "neutral",
            Self::Unproductive => "unproductive",
        }
    }
}

impl AppCategories {
    pub fn is_empty(&self) -> bool {
        self.productive.is_empty() && self.unproductive.is_empty()
    }

    /// The category of an app (and, for a browser, the host it showed). A
    /// listed host decides before the app name, so a browser is rated by
    /// what it showed.
    pub fn of(&self, app: &str, host: Option<&str>) -> Category {
        let listed = |list: &[String], hit: &dyn Fn(&str) -> bool| list.iter().any(|e| hit(e));
        if let Some(host) = host {
            let covers = |entry: &str| {
                host == entry
                    || host
                        .strip_suffix(entry)
                        .is_some_and(|rest| rest.ends_with('.'))
            };
            if listed(&self.productive, &covers) {
                return Category::Productive;
            }
            if listed(&self.unproductive, &covers) {
                return Category::Unproductive;
            }
        }
        let names = |entry: &str| entry.eq_ignore_ascii_case(app);
        if listed(&self.productive, &names) {
            Category::Productive
        } else if listed(&self.unproductive, &names) {
            Category::Unproductive
        } else {
            Category::Neutral
        }
    }

    fn validate(&self) -> Result<(), TenantError> {
        let bad = |reason: String| Err(TenantError::BadAppCategories(reason));
        if self.productive.len() + self.unproductive.len() > MAX_APP_CATEGORY_ENTRIES {
            return bad(format!("at most {MAX_APP_CATEGORY_ENTRIES} entries"));
        }
        for entry in self.productive.iter().chain(&self.unproductive) {
            if entry.is_empty() || entry.len() > 253 || entry.chars().any(char::is_control) {
                return bad(format!("{entry:?} must be 1-253 bytes of printable text"));
            }
        }
        if let Some(both) = self
            .productive
            .iter()
            .find(|p| self.unproductive.iter().any(|u| u.eq_ignore_ascii_case(p)))
        {
            return bad(format!("{both:?} is listed as productive and unproductive"));
        }
        Ok(())
    }
}

fn default_extract_k() -> u32 {
    5
}

/// How much managers and HR may see about one person, chosen by the tenant
/// (a works council's question, not an accident of the API). Owners and
/// admins are not limited by it, analysts see pseudonyms in either mode,
/// and employees always see their own figures.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PrivacyMode {
    /// Managers and HR see figures per employee of their scope.
    #[default]
    PerPerson,
    /// Managers and HR see group figures only: groups of at least
    /// `extract_k` people, by the extracts' suppression rules, and no SQL.
    TeamOnly,
}

impl PrivacyMode {
    pub fn is_per_person(&self) -> bool {
        *self == PrivacyMode::PerPerson
    }

    pub fn name(self) -> &'static str {
        match self {
            PrivacyMode::PerPerson => "per_person",
            PrivacyMode::TeamOnly => "team_only",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tenant {
    pub id: TenantId,
    pub plan: Plan,
    /// Overrides the plan's retention, in days.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention_days: Option<u32>,
    /// IANA name, e.g. `Europe/Berlin`.
    pub time_zone: String,
    #[serde(default)]
    pub work_hours: WorkHours,
    /// Keep activity outside work hours (otherwise the processor drops it).
    #[serde(default)]
    pub track_outside_work_hours: bool,
    /// Productive and unproductive apps and hosts.
    #[serde(default, skip_serializing_if = "AppCategories::is_empty")]
    pub app_categories: AppCategories,
    /// Places whose visits are measured (customer sites, depots): the
    /// processor attributes GPS time and distance to the first site a
    /// position lies in, from precise positions, before coarsening them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sites: Vec<Site>,
    /// Smallest group an AI extract may show, and managers and HR in
    /// [`PrivacyMode::TeamOnly`].
    #[serde(default = "default_extract_k")]
    pub extract_k: u32,
    /// What managers and HR may see per person.
    #[serde(default, skip_serializing_if = "PrivacyMode::is_per_person")]
    pub privacy_mode: PrivacyMode,
    /// Laplace noise on AI extracts: the privacy parameter ε spent on each
    /// published value (smaller is noisier). No noise when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extract_epsilon: Option<f64>,
    /// Where AI extracts are POSTed (https; http only to loopback).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ai_delivery_url: Option<String>,
    /// Where the tenant's lake lives (`s3://bucket/prefix` or a path); the
    /// deployment's lake when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lake_url: Option<String>,
    /// When the tenant was cancelled, by the server's clock: set only by
    /// [`crate::Admin::cancel_tenant`] (owner or operator) and cleared by
    /// [`crate::Admin::reinstate_tenant`], never by replacing the document.
    /// Its lake is purged once the grace period after it is over.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancelled_at_ms: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TenantError {
    #[error("unknown time zone {0:?}; use an IANA name such as Europe/Berlin")]
    BadTimeZone(String),
    #[error("retention of {0} days; it must be 1 to 3650")]
    BadRetention(u32),
    #[error("work hours: {0}")]
    BadWorkHours(String),
    #[error("app categories: {0}")]
    BadAppCategories(String),
    #[error("extract k of {0}; it must be 2 to 1000")]
    BadExtractK(u32),
    #[error("sites: {0}")]
    BadSites(String),
    #[error("extract epsilon of {0}; it must be above 0 and at most 10")]
    BadExtractEpsilon(String),
    #[error("{field}: {reason}")]
    BadUrl { field: &'static str, reason: String },
}

impl Tenant {
    /// A tenant with the plan's defaults.
    pub fn new(id: TenantId, plan: Plan, time_zone: impl Into<String>) -> Self {
        Self {
            id,
            plan,
            retention_days: None,
            time_zone: time_zone.into(),
            work_hours: WorkHours::default(),
            track_outside_work_hours: false,
            app_categories: AppCategories::default(),
            sites: Vec::new(),
            extract_k: default_extract_k(),
            privacy_mode: PrivacyMode::default(),
            extract_epsilon: None,
            ai_delivery_url: None,
            lake_url: None,
            cancelled_at_ms: None,
        }
    }

    pub fn retention_days(&self) -> u32 {
        self.retention_days
            .unwrap_or_else(|| self.plan.default_retention_days())
    }

    pub fn is_active(&self) -> bool {
        self.cancelled_at_ms.is_none()
    }

    /// The tenant's time zone (validated when the document was stored).
    pub fn tz(&self) -> chrono_tz::Tz {
        chrono_tz::Tz::from_str(&self.time_zone).unwrap_or(chrono_tz::UTC)
    }

    /// When activity is kept: `None` if the tenant tracks around the clock.
    pub fn work_window(&self) -> Option<WorkWindow> {
        (!self.track_outside_work_hours).then(|| self.work_hours.window(self.tz()))
    }

    pub fn validate(&self) -> Result<(), TenantError> {
        chrono_tz::Tz::from_str(&self.time_zone)
            .map_err(|_| TenantError::BadTimeZone(self.time_zone.clone()))?;
        if let Some(days) = self.retention_days
            && !(1..=3650).contains(&days)
        {
            return Err(TenantError::BadRetention(days));
        }
        let w = &self.work_hours;
        if w.days.is_empty() || w.days.iter().any(|d| !(1..=7).contains(d)) {
            return Err(TenantError::BadWorkHours(
                "days must be ISO weekdays 1-7".into(),
            ));
        }
        match (minutes(&w.start), minutes(&w.end)) {
            (Some(s), Some(e)) if s < e => {}
            _ => {
                return Err(TenantError::BadWorkHours(
                    "start and end must be HH:MM with start before end".into(),
                ));
            }
        }
        self.app_categories.validate()?;
        if !(2..=1000).contains(&self.extract_k) {
            return Err(TenantError::BadExtractK(self.extract_k));
        }
        if let Some(e) = self.extract_epsilon
            && !(e.is_finite() && e > 0.0 && e <= 10.0)
        {
            return Err(TenantError::BadExtractEpsilon(e.to_string()));
        }
        if let Some(u) = &self.ai_delivery_url {
            let url = url::Url::parse(u).map_err(|e| TenantError::BadUrl {
                field: "ai_delivery_url",
                reason: e.to_string(),
            })?;
            let loopback = matches!(url.host_str(), Some("127.0.0.1" | "localhost" | "[::1]"));
            if !(url.scheme() == "https" || (url.scheme() == "http" && loopback)) {
                return Err(TenantError::BadUrl {
                    field: "ai_delivery_url",
                    reason: "must be https (http only to a loopback address)".into(),
                });
            }
        }
        if self.sites.len() > MAX_SITES {
            return Err(TenantError::BadSites(format!("at most {MAX_SITES} sites")));
        }
        let mut names = std::collections::HashSet::new();
        for site in &self.sites {
            site.validate().map_err(TenantError::BadSites)?;
            if !names.insert(site.name.as_str()) {
                return Err(TenantError::BadSites(format!(
                    "site {:?} is defined twice",
                    site.name
                )));
            }
        }
        if let Some(u) = &self.lake_url {
            let scheme_ok =
                !u.contains("://") || u.starts_with("s3://") || u.starts_with("file://");
            if !scheme_ok {
                return Err(TenantError::BadUrl {
                    field: "lake_url",
                    reason: "must be s3://bucket/prefix, file:///path or a path".into(),
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant() -> Tenant {
        Tenant::new(
            TenantId::new("acme").unwrap(),
            Plan::Starter,
            "Europe/Berlin",
        )
    }

    #[test]
    fn plans_set_retention_unless_overridden() {
        let mut t = tenant();
        assert_eq!(t.retention_days(), 30);
        for (plan, days) in [
            (Plan::Free, 7),
            (Plan::Professional, 90),
            (Plan::Enterprise, 365),
        ] {
            t.plan = plan;
            assert_eq!(t.retention_days(), days);
        }
        t.retention_days = Some(14);
        assert_eq!(t.retention_days(), 14);
        t.validate().unwrap();
    }

    #[test]
    fn bad_settings_are_refused_with_a_reason() {
        type Breaker = fn(&mut Tenant);
        let cases: Vec<(Breaker, &str)> = vec![
            (|t| t.time_zone = "Mars/Olympus".into(), "time zone"),
            (|t| t.retention_days = Some(0), "retention"),
            (|t| t.work_hours.start = "18:00".into(), "work hours"),
            (|t| t.work_hours.days = vec![0], "work hours"),
            (|t| t.extract_k = 1, "extract k"),
            (|t| t.extract_epsilon = Some(0.0), "extract epsilon"),
            (
                |t| {
                    t.sites = vec![Site {
                        name: "Depot".into(),
                        lat: 48.0,
                        lon: 11.0,
                        radius_m: 5.0,
                    }]
                },
                "radius",
            ),
            (
                |t| t.ai_delivery_url = Some("http://example.com/hook".into()),
                "https",
            ),
            (|t| t.lake_url = Some("ftp://x/y".into()), "lake_url"),
            (
                |t| {
                    t.app_categories.productive = vec!["Slack".into()];
                    t.app_categories.unproductive = vec!["slack".into()];
                },
                "app categories",
            ),
        ];
        for (break_it, says) in cases {
            let mut t = tenant();
            break_it(&mut t);
            let err = t.validate().unwrap_err().to_string();
            assert!(err.contains(says), "{err:?} should mention {says}");
        }
    }

    #[test]
    fn unknown_fields_and_bad_ids_do_not_parse() {
        let ok = r#"{"id":"acme","plan":"free","time_zone":"UTC"}"#;
        assert_eq!(serde_json::from_str::<Tenant>(ok).unwrap().extract_k, 5);
        assert!(
            serde_json::from_str::<Tenant>(
                r#"{"id":"acme","plan":"free","time_zone":"UTC","role":"x"}"#
            )
            .is_err()
        );
        assert!(
            serde_json::from_str::<Tenant>(r#"{"id":"../x","plan":"free","time_zone":"UTC"}"#)
                .is_err()
        );
        assert!(
            serde_json::from_str::<Tenant>(r#"{"id":"acme","plan":"gold","time_zone":"UTC"}"#)
                .is_err()
        );
    }

    #[test]
    fn work_hours_follow_the_zone_across_daylight_saving() {
        let t = tenant(); // Europe/Berlin, Monday to Friday, 09:00-17:00
        let w = t.work_window().unwrap();
        let at = |s: &str| {
            chrono::DateTime::parse_from_rfc3339(s)
                .unwrap()
                .timestamp_millis()
        };
        // Friday 2026-03-27 is winter time (UTC+1); Monday 2026-03-30 summer (UTC+2).
        assert!(!w.contains(at("2026-03-27T07:30:00Z")), "08:30 local");
        assert!(w.contains(at("2026-03-27T08:00:00Z")), "09:00 local");
        assert!(w.contains(at("2026-03-30T07:30:00Z")), "09:30 local");
        assert!(!w.contains(at("2026-03-30T06:59:00Z")), "08:59 local");
        assert!(w.contains(at("2026-03-30T14:59:59Z")), "16:59 local");
        assert!(!w.contains(at("2026-03-30T15:00:00Z")), "17:00 local");
        // Sunday is not a work day; nor, in Berlin, is Saturday 00:30 local
        // even though it is still Friday in UTC.
        assert!(!w.contains(at("2026-03-29T10:00:00Z")));
        assert!(!w.contains(at("2026-03-27T23:30:00Z")));
        let mut all_hours = tenant();
        all_hours.track_outside_work_hours = true;
        assert!(all_hours.work_window().is_none());
    }

    #[test]
    fn hosts_decide_before_app_names() {
        let c = AppCategories {
            productive: vec!["github.com".into(), "Excel".into()],
            unproductive: vec!["youtube.com".into(), "Solitaire".into()],
        };
        assert_eq!(c.of("excel", None), Category::Productive);
        assert_eq!(c.of("Solitaire", None), Category::Unproductive);
        assert_eq!(
            c.of("Firefox", Some("api.github.com")),
            Category::Productive
        );
        assert_eq!(c.of("Firefox", Some("notgithub.com")), Category::Neutral);
        assert_eq!(
            c.of("Excel", Some("www.youtube.com")),
            Category::Unproductive
        );
        assert_eq!(c.of("Notepad", None), Category::Neutral);
    }
}
