//! A batch's JSON decoded straight into the Arrow columns of its log
//! records, each event validated as it is appended.
//!
//! This is the only validator of the batch model (WIRE.md, "Batch"). It is a
//! set of serde `DeserializeSeed`s over the JSON: numbers land in locals,
//! strings go from the parser's buffer into the column's buffer, and nothing
//! is allocated per event (the builders grow by doubling). Ingest then seals
//! the columns as they are.
//!
//! Verdicts keep the precedence a parse-then-validate design would have: a
//! syntax error or unknown field anywhere wins over a bad value; then the
//! model version, an empty batch, too many events, and finally the first bad
//! event in document order. After the first problem the decoder stops
//! appending but reads on, so that it can still report syntax errors and
//! count the events it refuses. Appending also stops at `max_events`, so the
//! columns never hold more than the cap.

use std::marker::PhantomData;
use std::sync::Arc;

use arrow::array::{
    ArrayBuilder, ArrayRef, Float64Builder, RecordBatch, StringBuilder,
    TimestampMillisecondBuilder, UInt32Builder,
};
use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};

use crate::batch::{
    AttendanceKind, BATCH_MODEL_VERSION, EPOCH_FLOOR_MS, Limits, MAX_ACCURACY_M, MAX_APP_NAME_LEN,
    MAX_HOST_LEN, MAX_INTERVAL_S,
};
use crate::datasets::Dataset;
use crate::reason::{RejectReason, Rejection};

/// A validated batch as Arrow columns: one record batch per non-empty
/// dataset, in dataset order, each with the dataset's log schema.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodedBatch {
    /// When the agent sealed the batch (Unix ms, agent clock); informative.
    pub sent_at_ms: i64,
    pub events: usize,
    pub datasets: Vec<(Dataset, RecordBatch)>,
}

impl DecodedBatch {
    pub fn event_count(&self) -> usize {
        self.events
    }
}

/// Parses and validates a batch's decompressed JSON. `received_at_ms` is the
/// ingest node's clock, against which the future and age limits are judged.
pub fn decode_json(
    json: &[u8],
    limits: &Limits,
    received_at_ms: i64,
) -> Result<DecodedBatch, Rejection> {
    let mut decoder = Decoder {
        state: State {
            clock: Clock {
                latest: received_at_ms.saturating_add(limits.max_future_ms),
                earliest: received_at_ms
                    .saturating_sub(limits.max_age_ms)
                    .max(EPOCH_FLOOR_MS),
            },
            max_events: limits.max_events,
            events: 0,
            first_problem: None,
            unknown_field: false,
        },
        v: None,
        sent_at_ms: None,
        activity: ActivityColumns::default(),
        app_usage: AppUsageColumns::default(),
        gps: GpsColumns::default(),
        attendance: AttendanceColumns::default(),
    };
    let mut json_in = serde_json::Deserializer::from_slice(json);
    let parsed = (&mut decoder)
        .deserialize(&mut json_in)
        .and_then(|()| json_in.end());
    if let Err(e) = parsed {
        let reason = if decoder.state.unknown_field {
            RejectReason::UnknownField
        } else {
            RejectReason::InvalidJson
        };
        return Err(Rejection::new(reason, e.to_string()));
    }
    decoder.finish()
}

struct Decoder {
    state: State,
    v: Option<i64>,
    sent_at_ms: Option<i64>,
    activity: ActivityColumns,
    app_usage: AppUsageColumns,
    gps: GpsColumns,
    attendance: AttendanceColumns,
}

/// What every event reader shares: the rules, the count, the first problem.
struct State {
    clock: Clock,
    max_events: usize,
    events: usize,
    first_problem: Option<Rejection>,
    /// Set when the parse error about to surface is an unknown field.
    unknown_field: bool,
}

impl Decoder {
    fn finish(mut self) -> Result<DecodedBatch, Rejection> {
        let events = self.state.events;
        let v = self.v.expect("a parsed batch has its v");
        if v != i64::from(BATCH_MODEL_VERSION) {
            return Err(Rejection::new(
                RejectReason::UnsupportedVersion,
                format!("batch model v{v} (this node speaks v{BATCH_MODEL_VERSION})"),
            )
            .with_events(events));
        }
        if events == 0 {
            return Err(Rejection::new(
                RejectReason::EmptyBatch,
                "batch holds no event",
            ));
        }
        if events > self.state.max_events {
            return Err(Rejection::new(
                RejectReason::TooManyEvents,
                format!("{events} events; at most {}", self.state.max_events),
            )
            .with_events(events));
        }
        if let Some(problem) = self.state.first_problem {
            return Err(problem.with_events(events));
        }
        let mut datasets = Vec::with_capacity(4);
        self.activity.finish_into(&mut datasets);
        self.app_usage.finish_into(&mut datasets);
        self.gps.finish_into(&mut datasets);
        self.attendance.finish_into(&mut datasets);
        Ok(DecodedBatch {
            sent_at_ms: self.sent_at_ms.expect("a parsed batch has its sent_at_ms"),
            events,
            datasets,
        })
    }
}

const BATCH_FIELDS: &[&str] = &[
    "v",
    "sent_at_ms",
    "activity",
    "app_usage",
    "gps",
    "attendance",
];

impl<'de> DeserializeSeed<'de> for &mut Decoder {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for &mut Decoder {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a batch object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut seen = [false; BATCH_FIELDS.len()];
        while let Some(i) =
            map.next_key_seed(FieldName::new(BATCH_FIELDS, &mut self.state.unknown_field))?
        {
            if std::mem::replace(&mut seen[i], true) {
                return Err(de::Error::duplicate_field(BATCH_FIELDS[i]));
            }
            let state = &mut self.state;
            match i {
                0 => self.v = Some(map.next_value_seed(Integer)?),
                1 => self.sent_at_ms = Some(map.next_value()?),
                2 => map.next_value_seed(Events::new(state, &mut self.activity))?,
                3 => map.next_value_seed(Events::new(state, &mut self.app_usage))?,
                4 => map.next_value_seed(Events::new(state, &mut self.gps))?,
                _ => map.next_value_seed(Events::new(state, &mut self.attendance))?,
            }
        }
        if self.v.is_none() {
            return Err(de::Error::missing_field("v"));
        }
        if self.sent_at_ms.is_none() {
            return Err(de::Error::missing_field("sent_at_ms"));
        }
        Ok(())
    }
}

/// A key of a closed object: its index in `names`, or an unknown-field error.
struct FieldName<'a> {
    names: &'static [&'static str],
    unknown: &'a mut bool,
}

impl<'a> FieldName<'a> {
    fn new(names: &'static [&'static str], unknown: &'a mut bool) -> Self {
        Self { names, unknown }
    }
}

impl<'de> DeserializeSeed<'de> for FieldName<'_> {
    type Value = usize;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<usize, D::Error> {
        deserializer.deserialize_identifier(self)
    }
}

impl<'de> Visitor<'de> for FieldName<'_> {
    type Value = usize;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a field name")
    }

    fn visit_str<E: de::Error>(self, name: &str) -> Result<usize, E> {
        self.names.iter().position(|n| *n == name).ok_or_else(|| {
            *self.unknown = true;
            E::unknown_field(name, self.names)
        })
    }
}

/// One event's first problem; the caller adds where it is.
struct Problem {
    reason: RejectReason,
    field: Option<&'static str>,
    detail: String,
}

impl Problem {
    fn invalid(field: Option<&'static str>, detail: impl Into<String>) -> Self {
        Self {
            reason: RejectReason::InvalidEvent,
            field,
            detail: detail.into(),
        }
    }

    fn into_rejection(self, dataset: Dataset, index: usize) -> Rejection {
        let field = self.field.map(|f| format!(".{f}")).unwrap_or_default();
        Rejection::new(
            self.reason,
            format!("{}[{index}]{field}: {}", dataset.name(), self.detail),
        )
    }
}

/// The columns of one dataset's log record, and how one event object of it
/// is read.
trait Columns: Default {
    const DATASET: Dataset;
    const FIELDS: &'static [&'static str];

    /// Reads one event object. Appends it when `append` and the event is
    /// valid; returns its first problem otherwise. A syntax error is the
    /// `Err`; a bad value is the `Ok(Some(_))`.
    fn read<'de, A: MapAccess<'de>>(
        &mut self,
        map: A,
        event: EventContext<'_>,
    ) -> Result<Option<Problem>, A::Error>;

    fn rows(&self) -> usize;

    fn finish(&mut self) -> Vec<ArrayRef>;

    fn finish_into(&mut self, out: &mut Vec<(Dataset, RecordBatch)>) {
        if self.rows() > 0 {
            let batch = RecordBatch::try_new(Self::DATASET.log_schema(), self.finish())
                .expect("columns are built to the dataset's log schema");
            out.push((Self::DATASET, batch));
        }
    }
}

struct EventContext<'a> {
    clock: &'a Clock,
    append: bool,
    unknown_field: &'a mut bool,
}

impl<'a> EventContext<'a> {
    fn field(&mut self, names: &'static [&'static str]) -> FieldName<'_> {
        FieldName::new(names, self.unknown_field)
    }
}

/// The array of one dataset's events.
struct Events<'a, C> {
    state: &'a mut State,
    columns: &'a mut C,
}

impl<'a, C> Events<'a, C> {
    fn new(state: &'a mut State, columns: &'a mut C) -> Self {
        Self { state, columns }
    }
}

impl<'de, C: Columns> DeserializeSeed<'de> for Events<'_, C> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de, C: Columns> Visitor<'de> for Events<'_, C> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "an array of {} events", C::DATASET.name())
    }

    fn visit_seq<S: SeqAccess<'de>>(self, mut seq: S) -> Result<(), S::Error> {
        let mut index = 0;
        loop {
            let state = &mut *self.state;
            state.events += 1;
            let append = state.first_problem.is_none() && state.events <= state.max_events;
            let event = Event::<C> {
                columns: &mut *self.columns,
                context: EventContext {
                    clock: &state.clock,
                    append,
                    unknown_field: &mut state.unknown_field,
                },
                dataset: PhantomData,
            };
            match seq.next_element_seed(event)? {
                None => {
                    state.events -= 1;
                    return Ok(());
                }
                Some(None) => {}
                Some(Some(problem)) => {
                    if state.first_problem.is_none() {
                        state.first_problem = Some(problem.into_rejection(C::DATASET, index));
                    }
                }
            }
            index += 1;
        }
    }
}

/// One event object of a dataset.
struct Event<'a, C> {
    columns: &'a mut C,
    context: EventContext<'a>,
    dataset: PhantomData<C>,
}

impl<'de, C: Columns> DeserializeSeed<'de> for Event<'_, C> {
    type Value = Option<Problem>;

    fn deserialize<D: de::Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<Option<Problem>, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de, C: Columns> Visitor<'de> for Event<'_, C> {
    type Value = Option<Problem>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "a {} event object", C::DATASET.name())
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Option<Problem>, A::Error> {
        self.columns.read(map, self.context)
    }
}

/// A JSON integer (a number without fraction or exponent) of any sign and
/// size, for the validator to judge: a negative count of seconds is an
/// `invalid_event` naming the event, not a parse error. Integers past the
/// 64-bit range saturate (they are out of every field's range anyway);
/// a fraction or a string is still the wrong type (`invalid_json`).
struct Integer;

impl<'de> DeserializeSeed<'de> for Integer {
    type Value = i64;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<i64, D::Error> {
        deserializer.deserialize_i64(self)
    }
}

impl<'de> Visitor<'de> for Integer {
    type Value = i64;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an integer")
    }

    fn visit_i64<E: de::Error>(self, value: i64) -> Result<i64, E> {
        Ok(value)
    }

    fn visit_u64<E: de::Error>(self, value: u64) -> Result<i64, E> {
        Ok(i64::try_from(value).unwrap_or(i64::MAX))
    }
}

/// A count of seconds within `min..=MAX_INTERVAL_S`, or the event's problem.
fn seconds(value: i64, min: u32, name: &'static str) -> Result<u32, Problem> {
    u32::try_from(value)
        .ok()
        .filter(|s| (min..=MAX_INTERVAL_S).contains(s))
        .ok_or_else(|| Problem::invalid(Some(name), format!("must be {min}..={MAX_INTERVAL_S}")))
}

/// Stores a field's value, refusing a second one.
fn set<T, E: de::Error>(slot: &mut Option<T>, value: T, name: &'static str) -> Result<(), E> {
    if slot.replace(value).is_some() {
        return Err(E::duplicate_field(name));
    }
    Ok(())
}

fn required<T, E: de::Error>(slot: Option<T>, name: &'static str) -> Result<T, E> {
    slot.ok_or_else(|| E::missing_field(name))
}

fn utc_timestamps() -> TimestampMillisecondBuilder {
    TimestampMillisecondBuilder::new().with_timezone("UTC")
}

struct ActivityColumns {
    start: TimestampMillisecondBuilder,
    active: UInt32Builder,
    idle: UInt32Builder,
}

impl Default for ActivityColumns {
    fn default() -> Self {
        Self {
            start: utc_timestamps(),
            active: UInt32Builder::new(),
            idle: UInt32Builder::new(),
        }
    }
}

impl Columns for ActivityColumns {
    const DATASET: Dataset = Dataset::Activity;
    const FIELDS: &'static [&'static str] = &["start_ms", "active_s", "idle_s"];

    fn read<'de, A: MapAccess<'de>>(
        &mut self,
        mut map: A,
        mut event: EventContext<'_>,
    ) -> Result<Option<Problem>, A::Error> {
        let (mut start, mut active, mut idle) = (None, None, None);
        while let Some(i) = map.next_key_seed(event.field(Self::FIELDS))? {
            match i {
                0 => set(&mut start, map.next_value_seed(Integer)?, "start_ms")?,
                1 => set(&mut active, map.next_value_seed(Integer)?, "active_s")?,
                _ => set(&mut idle, map.next_value_seed(Integer)?, "idle_s")?,
            }
        }
        let start = required(start, "start_ms")?;
        let active = required(active, "active_s")?;
        let idle = required(idle, "idle_s")?;
        if let Some(problem) = event.clock.check(start) {
            return Ok(Some(problem));
        }
        let active = match seconds(active, 0, "active_s") {
            Ok(s) => s,
            Err(problem) => return Ok(Some(problem)),
        };
        let idle = match seconds(idle, 0, "idle_s") {
            Ok(s) => s,
            Err(problem) => return Ok(Some(problem)),
        };
        let total = active + idle;
        if total == 0 || total > MAX_INTERVAL_S {
            return Ok(Some(Problem::invalid(
                None,
                format!("active_s + idle_s must be 1..={MAX_INTERVAL_S}"),
            )));
        }
        if event.append {
            self.start.append_value(start);
            self.active.append_value(active);
            self.idle.append_value(idle);
        }
        Ok(None)
    }

    fn rows(&self) -> usize {
        self.start.len()
    }

    fn finish(&mut self) -> Vec<ArrayRef> {
        vec![
            Arc::new(self.start.finish()),
            Arc::new(self.active.finish()),
            Arc::new(self.idle.finish()),
        ]
    }
}

struct AppUsageColumns {
    start: TimestampMillisecondBuilder,
    duration: UInt32Builder,
    app: StringBuilder,
    host: StringBuilder,
}

impl Default for AppUsageColumns {
    fn default() -> Self {
        Self {
            start: utc_timestamps(),
            duration: UInt32Builder::new(),
            app: StringBuilder::new(),
            host: StringBuilder::new(),
        }
    }
}

impl Columns for AppUsageColumns {
    const DATASET: Dataset = Dataset::AppUsage;
    const FIELDS: &'static [&'static str] = &["start_ms", "duration_s", "app", "host"];

    fn read<'de, A: MapAccess<'de>>(
        &mut self,
        mut map: A,
        mut event: EventContext<'_>,
    ) -> Result<Option<Problem>, A::Error> {
        let (mut start, mut duration) = (None, None);
        // The strings go to their columns as they are read (the parser's
        // buffer does not outlive the call), so a row is complete only once
        // every field is in; a refused batch drops its columns anyway.
        let (mut app, mut host) = (Text::new(check_app_name), Text::new(check_host));
        let append = event.append;
        while let Some(i) = map.next_key_seed(event.field(Self::FIELDS))? {
            match i {
                0 => set(&mut start, map.next_value_seed(Integer)?, "start_ms")?,
                1 => set(&mut duration, map.next_value_seed(Integer)?, "duration_s")?,
                2 => map.next_value_seed(
                    app.seed::<A::Error>(append.then_some(&mut self.app), "app")?,
                )?,
                _ => map.next_value_seed(
                    host.seed::<A::Error>(append.then_some(&mut self.host), "host")?
                        .nullable(),
                )?,
            }
        }
        let start = required(start, "start_ms")?;
        let duration = required(duration, "duration_s")?;
        if !app.seen {
            return Err(de::Error::missing_field("app"));
        }
        if !host.seen && append {
            self.host.append_null();
        }
        if let Some(problem) = event.clock.check(start) {
            return Ok(Some(problem));
        }
        let duration = match seconds(duration, 1, "duration_s") {
            Ok(s) => s,
            Err(problem) => return Ok(Some(problem)),
        };
        if let Some(problem) = app.problem.or(host.problem) {
            return Ok(Some(problem));
        }
        if append {
            self.start.append_value(start);
            self.duration.append_value(duration);
        }
        Ok(None)
    }

    fn rows(&self) -> usize {
        self.start.len()
    }

    fn finish(&mut self) -> Vec<ArrayRef> {
        vec![
            Arc::new(self.start.finish()),
            Arc::new(self.duration.finish()),
            Arc::new(self.app.finish()),
            Arc::new(self.host.finish()),
        ]
    }
}

/// A string field of an event, checked and appended straight from the
/// parser's buffer.
struct Text {
    check: fn(&str) -> Result<(), String>,
    seen: bool,
    problem: Option<Problem>,
}

impl Text {
    fn new(check: fn(&str) -> Result<(), String>) -> Self {
        Self {
            check,
            seen: false,
            problem: None,
        }
    }

    fn seed<'a, E: de::Error>(
        &'a mut self,
        column: Option<&'a mut StringBuilder>,
        name: &'static str,
    ) -> Result<TextSeed<'a>, E> {
        if std::mem::replace(&mut self.seen, true) {
            return Err(E::duplicate_field(name));
        }
        Ok(TextSeed {
            text: self,
            column,
            name,
            nullable: false,
        })
    }
}

struct TextSeed<'a> {
    text: &'a mut Text,
    column: Option<&'a mut StringBuilder>,
    name: &'static str,
    nullable: bool,
}

impl TextSeed<'_> {
    fn nullable(self) -> Self {
        Self {
            nullable: true,
            ..self
        }
    }
}

impl<'de> DeserializeSeed<'de> for TextSeed<'_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        if self.nullable {
            deserializer.deserialize_option(self)
        } else {
            deserializer.deserialize_str(self)
        }
    }
}

impl<'de> Visitor<'de> for TextSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a string")
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<(), E> {
        if let Err(detail) = (self.text.check)(value) {
            self.text.problem = Some(Problem::invalid(Some(self.name), detail));
        }
        if let Some(column) = self.column {
            column.append_value(value);
        }
        Ok(())
    }

    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        if let Some(column) = self.column {
            column.append_null();
        }
        Ok(())
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.visit_none()
    }

    fn visit_some<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_str(self)
    }
}

struct GpsColumns {
    at: TimestampMillisecondBuilder,
    lat: Float64Builder,
    lon: Float64Builder,
    accuracy: Float64Builder,
}

impl Default for GpsColumns {
    fn default() -> Self {
        Self {
            at: utc_timestamps(),
            lat: Float64Builder::new(),
            lon: Float64Builder::new(),
            accuracy: Float64Builder::new(),
        }
    }
}

impl Columns for GpsColumns {
    const DATASET: Dataset = Dataset::Gps;
    const FIELDS: &'static [&'static str] = &["at_ms", "lat", "lon", "accuracy_m"];

    fn read<'de, A: MapAccess<'de>>(
        &mut self,
        mut map: A,
        mut event: EventContext<'_>,
    ) -> Result<Option<Problem>, A::Error> {
        let (mut at, mut lat, mut lon, mut accuracy) = (None, None, None, None);
        while let Some(i) = map.next_key_seed(event.field(Self::FIELDS))? {
            match i {
                0 => set(&mut at, map.next_value_seed(Integer)?, "at_ms")?,
                1 => set(&mut lat, map.next_value::<f64>()?, "lat")?,
                2 => set(&mut lon, map.next_value::<f64>()?, "lon")?,
                _ => set(&mut accuracy, map.next_value::<f64>()?, "accuracy_m")?,
            }
        }
        let at = required(at, "at_ms")?;
        let lat = required(lat, "lat")?;
        let lon = required(lon, "lon")?;
        let accuracy = required(accuracy, "accuracy_m")?;
        if let Some(problem) = event.clock.check(at) {
            return Ok(Some(problem));
        }
        if !(lat.is_finite() && (-90.0..=90.0).contains(&lat)) {
            return Ok(Some(Problem::invalid(None, "lat must be within -90..=90")));
        }
        if !(lon.is_finite() && (-180.0..=180.0).contains(&lon)) {
            return Ok(Some(Problem::invalid(
                None,
                "lon must be within -180..=180",
            )));
        }
        if !(accuracy.is_finite() && (0.0..=MAX_ACCURACY_M).contains(&accuracy)) {
            return Ok(Some(Problem::invalid(
                None,
                format!("accuracy_m must be within 0..={MAX_ACCURACY_M}"),
            )));
        }
        if event.append {
            self.at.append_value(at);
            self.lat.append_value(lat);
            self.lon.append_value(lon);
            self.accuracy.append_value(accuracy);
        }
        Ok(None)
    }

    fn rows(&self) -> usize {
        self.at.len()
    }

    fn finish(&mut self) -> Vec<ArrayRef> {
        vec![
            Arc::new(self.at.finish()),
            Arc::new(self.lat.finish()),
            Arc::new(self.lon.finish()),
            Arc::new(self.accuracy.finish()),
        ]
    }
}

struct AttendanceColumns {
    at: TimestampMillisecondBuilder,
    kind: StringBuilder,
}

impl Default for AttendanceColumns {
    fn default() -> Self {
        Self {
            at: utc_timestamps(),
            kind: StringBuilder::new(),
        }
    }
}

impl Columns for AttendanceColumns {
    const DATASET: Dataset = Dataset::Attendance;
    const FIELDS: &'static [&'static str] = &["at_ms", "kind"];

    fn read<'de, A: MapAccess<'de>>(
        &mut self,
        mut map: A,
        mut event: EventContext<'_>,
    ) -> Result<Option<Problem>, A::Error> {
        let (mut at, mut kind) = (None, None);
        while let Some(i) = map.next_key_seed(event.field(Self::FIELDS))? {
            match i {
                0 => set(&mut at, map.next_value_seed(Integer)?, "at_ms")?,
                _ => set(&mut kind, map.next_value::<AttendanceKind>()?, "kind")?,
            }
        }
        let at = required(at, "at_ms")?;
        let kind = required(kind, "kind")?;
        if let Some(problem) = event.clock.check(at) {
            return Ok(Some(problem));
        }
        if event.append {
            self.at.append_value(at);
            self.kind.append_value(kind.as_str());
        }
        Ok(None)
    }

    fn rows(&self) -> usize {
        self.at.len()
    }

    fn finish(&mut self) -> Vec<ArrayRef> {
        vec![Arc::new(self.at.finish()), Arc::new(self.kind.finish())]
    }
}

/// The window of event times a node accepts.
struct Clock {
    earliest: i64,
    latest: i64,
}

impl Clock {
    fn check(&self, ts_ms: i64) -> Option<Problem> {
        let (reason, detail) = if ts_ms > self.latest {
            (
                RejectReason::TimestampInFuture,
                format!("{ts_ms} is after {}", self.latest),
            )
        } else if ts_ms < self.earliest {
            (
                RejectReason::TimestampTooOld,
                format!("{ts_ms} is before {}", self.earliest),
            )
        } else {
            return None;
        };
        Some(Problem {
            reason,
            field: None,
            detail,
        })
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
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::{Float64Type, TimestampMillisecondType, UInt32Type};
    use proptest::prelude::*;

    use super::*;
    use crate::batch::{ActivitySample, AppUsage, AttendanceEvent, Batch, GpsPoint};

    const NOW: i64 = 1_780_000_000_000;

    fn batch(json: &str) -> Result<DecodedBatch, Rejection> {
        decode_json(json.as_bytes(), &Limits::default(), NOW)
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
    fn out_of_range_integers_are_invalid_events_naming_the_event() {
        // WIRE.md: a value outside its range is `invalid_event`, and the
        // message names the event; only a wrong type is `invalid_json`.
        let ok = format!(r#"{{"start_ms":{NOW},"active_s":30,"idle_s":30}}"#);
        let app = |duration: &str| {
            format!(r#"{{"start_ms":{NOW},"duration_s":{duration},"app":"Excel"}}"#)
        };
        let cases = [
            (
                format!(r#""activity":[{ok},{{"start_ms":{NOW},"active_s":-5,"idle_s":10}}]"#),
                "activity[1].active_s: ",
            ),
            (
                format!(r#""activity":[{{"start_ms":{NOW},"active_s":10,"idle_s":-1}}]"#),
                "activity[0].idle_s: ",
            ),
            (
                format!(r#""activity":[{{"start_ms":{NOW},"active_s":4294967296,"idle_s":0}}]"#),
                "activity[0].active_s: ",
            ),
            (
                format!(
                    r#""activity":[{{"start_ms":{NOW},"active_s":18446744073709551615,"idle_s":0}}]"#
                ),
                "activity[0].active_s: ",
            ),
            (
                format!(
                    r#""activity":[{{"start_ms":{NOW},"active_s":-9223372036854775808,"idle_s":0}}]"#
                ),
                "activity[0].active_s: ",
            ),
            (
                format!(r#""app_usage":[{},{}]"#, app("60"), app("-60")),
                "app_usage[1].duration_s: ",
            ),
            (
                format!(r#""app_usage":[{}]"#, app("0")),
                "app_usage[0].duration_s: ",
            ),
            (
                format!(r#""app_usage":[{}]"#, app("901")),
                "app_usage[0].duration_s: ",
            ),
            (
                format!(r#""gps":[{{"at_ms":{NOW},"lat":1,"lon":2,"accuracy_m":-1}}]"#),
                "gps[0]: accuracy_m",
            ),
        ];
        for (events, detail) in cases {
            let r = batch(&format!(r#"{{"v":1,"sent_at_ms":0,{events}}}"#)).unwrap_err();
            assert_eq!(r.reason, RejectReason::InvalidEvent, "{events}: {r}");
            assert!(r.detail.starts_with(detail), "{events}: {r}");
        }
        // Timestamps: any integer is a time, judged against the window.
        for (at, want) in [
            ("-1", RejectReason::TimestampTooOld),
            ("-9223372036854775808", RejectReason::TimestampTooOld),
            ("9223372036854775807", RejectReason::TimestampInFuture),
            ("18446744073709551615", RejectReason::TimestampInFuture),
        ] {
            let json = format!(
                r#"{{"v":1,"sent_at_ms":0,"attendance":[{{"at_ms":{at},"kind":"clock_in"}}]}}"#
            );
            assert_eq!(reason(&json), want, "{at}");
        }
        // Any integer `v` but 1 is a version this node does not speak.
        for v in ["-1", "0", "4294967297"] {
            let json = format!(r#"{{"v":{v},"sent_at_ms":0,"activity":[{ok}]}}"#);
            assert_eq!(reason(&json), RejectReason::UnsupportedVersion, "{v}");
        }
        // The wrong type stays `invalid_json`: a fraction, an exponent, a string.
        for value in ["1.5", "30.0", "3e1", "\"30\"", "null", "true"] {
            let json = format!(
                r#"{{"v":1,"sent_at_ms":0,"activity":[{{"start_ms":{NOW},"active_s":{value},"idle_s":0}}]}}"#
            );
            assert_eq!(reason(&json), RejectReason::InvalidJson, "{value}");
        }
        // The edges of the range are accepted.
        let b = batch(&format!(
            r#"{{"v":1,"sent_at_ms":0,"activity":[{{"start_ms":{NOW},"active_s":0,"idle_s":900}},{{"start_ms":{NOW},"active_s":900,"idle_s":0}}],"app_usage":[{},{}]}}"#,
            app("1"),
            app("900")
        ))
        .unwrap();
        assert_eq!(b.event_count(), 4);
    }

    #[test]
    fn caps_the_event_count() {
        let sample = format!(r#"{{"start_ms":{NOW},"active_s":1,"idle_s":0}}"#);
        let json = format!(
            r#"{{"v":1,"sent_at_ms":0,"activity":[{}]}}"#,
            vec![sample; 10_001].join(",")
        );
        let r = batch(&json).unwrap_err();
        assert_eq!(r.reason, RejectReason::TooManyEvents);
        assert_eq!(r.events, Some(10_001));
    }

    #[test]
    fn bad_values_carry_the_event_count_and_syntax_errors_win() {
        let bad = format!(r#"{{"start_ms":{NOW},"active_s":0,"idle_s":0}}"#);
        let good = format!(r#"{{"start_ms":{NOW},"active_s":1,"idle_s":0}}"#);
        let r = batch(&format!(
            r#"{{"v":1,"sent_at_ms":0,"activity":[{good},{bad},{good}]}}"#
        ))
        .unwrap_err();
        assert_eq!(r.reason, RejectReason::InvalidEvent);
        assert_eq!(r.events, Some(3), "every refused event is counted");
        assert!(r.detail.starts_with("activity[1]:"), "{}", r.detail);

        // A later syntax error or unknown field outranks an earlier bad value.
        let r = batch(&format!(
            r#"{{"v":1,"sent_at_ms":0,"activity":[{bad},{{"start_ms":"x"}}]}}"#
        ))
        .unwrap_err();
        assert_eq!((r.reason, r.events), (RejectReason::InvalidJson, None));
        let r = batch(&format!(
            r#"{{"v":1,"sent_at_ms":0,"activity":[{bad}],"attendance":[{{"at_ms":{NOW},"kind":"clock_in","note":"x"}}]}}"#
        ))
        .unwrap_err();
        assert_eq!(r.reason, RejectReason::UnknownField);
        // The model version outranks bad values, wherever `v` stands.
        let r = batch(&format!(r#"{{"activity":[{bad}],"sent_at_ms":0,"v":2}}"#)).unwrap_err();
        assert_eq!(r.reason, RejectReason::UnsupportedVersion);
    }

    #[test]
    fn duplicate_missing_and_null_fields() {
        let cases = [
            r#"{"v":1,"v":1,"sent_at_ms":0,"gps":[]}"#.to_string(),
            r#"{"v":1,"sent_at_ms":0,"gps":[],"gps":[]}"#.to_string(),
            r#"{"sent_at_ms":0,"activity":[]}"#.to_string(),
            r#"{"v":1,"activity":[]}"#.to_string(),
            format!(
                r#"{{"v":1,"sent_at_ms":0,"activity":[{{"start_ms":{NOW},"start_ms":{NOW},"active_s":1,"idle_s":0}}]}}"#
            ),
            format!(r#"{{"v":1,"sent_at_ms":0,"activity":[{{"start_ms":{NOW},"active_s":1}}]}}"#),
            format!(
                r#"{{"v":1,"sent_at_ms":0,"app_usage":[{{"start_ms":{NOW},"duration_s":5}}]}}"#
            ),
            format!(
                r#"{{"v":1,"sent_at_ms":0,"app_usage":[{{"start_ms":{NOW},"duration_s":5,"app":null}}]}}"#
            ),
            format!(
                r#"{{"v":1,"sent_at_ms":0,"app_usage":[{{"start_ms":{NOW},"duration_s":5,"app":"a","app":"b"}}]}}"#
            ),
            r#"{"v":1,"sent_at_ms":0,"gps":null}"#.to_string(),
            r#"{"v":1,"sent_at_ms":0,"activity":[]} trailing"#.to_string(),
        ];
        for json in cases {
            assert_eq!(reason(&json), RejectReason::InvalidJson, "{json}");
        }
        // A null host is no host; an escaped string is unescaped.
        let b = batch(&format!(
            r#"{{"v":1,"sent_at_ms":0,"app_usage":[{{"start_ms":{NOW},"duration_s":5,"app":"Caf\u00e9 \"Pro\"","host":null}},{{"host":"a.example","start_ms":{NOW},"duration_s":5,"app":"x"}}]}}"#
        ))
        .unwrap();
        let (dataset, rows) = &b.datasets[0];
        assert_eq!(*dataset, Dataset::AppUsage);
        assert_eq!(rows.column(2).as_string::<i32>().value(0), "Café \"Pro\"");
        let host = rows.column(3).as_string::<i32>();
        assert!(host.is_null(0));
        assert_eq!(host.value(1), "a.example");
    }

    fn batches() -> impl Strategy<Value = Batch> {
        let start = NOW - 1_000_000_000..=NOW;
        let activity =
            (start.clone(), 0u32..=450, 1u32..=450).prop_map(|(s, a, i)| ActivitySample {
                start_ms: s,
                active_s: a,
                idle_s: i,
            });
        let app = (
            start.clone(),
            1u32..=900,
            "[A-Za-z0-9 é._\"\\\\-]{1,40}",
            proptest::option::of("[a-z0-9]{1,10}(\\.[a-z0-9]{1,10}){0,3}"),
        )
            .prop_map(|(s, d, app, host)| AppUsage {
                start_ms: s,
                duration_s: d,
                app,
                host,
            });
        let gps = (start.clone(), -90.0..=90.0, -180.0..=180.0, 0.0..=1000.0).prop_map(
            |(at, lat, lon, acc)| GpsPoint {
                at_ms: at,
                lat,
                lon,
                accuracy_m: acc,
            },
        );
        let kinds = [
            AttendanceKind::ClockIn,
            AttendanceKind::ClockOut,
            AttendanceKind::BreakStart,
            AttendanceKind::BreakEnd,
        ];
        let attendance = (start, proptest::sample::select(kinds.to_vec()))
            .prop_map(|(at, kind)| AttendanceEvent { at_ms: at, kind });
        (
            proptest::collection::vec(activity, 0..20),
            proptest::collection::vec(app, 0..20),
            proptest::collection::vec(gps, 0..20),
            proptest::collection::vec(attendance, 0..5),
        )
            .prop_map(|(activity, app_usage, gps, attendance)| Batch {
                v: 1,
                sent_at_ms: NOW,
                activity,
                app_usage,
                gps,
                attendance,
            })
            .prop_filter("at least one event", |b| b.event_count() > 0)
    }

    fn column(b: &DecodedBatch, dataset: Dataset, i: usize) -> Option<&arrow::array::ArrayRef> {
        b.datasets
            .iter()
            .find(|(d, _)| *d == dataset)
            .map(|(_, rows)| rows.column(i))
    }

    fn values<T: arrow::datatypes::ArrowPrimitiveType>(
        b: &DecodedBatch,
        dataset: Dataset,
        i: usize,
    ) -> Vec<T::Native> {
        column(b, dataset, i)
            .map(|c| c.as_primitive::<T>().values().to_vec())
            .unwrap_or_default()
    }

    proptest! {
        #[test]
        fn columns_hold_exactly_what_was_sent(sent in batches()) {
            let json = serde_json::to_vec(&sent).unwrap();
            let b = decode_json(&json, &Limits::default(), NOW).unwrap();
            prop_assert_eq!(b.event_count(), sent.event_count());
            prop_assert_eq!(b.sent_at_ms, NOW);
            let starts: Vec<i64> = sent.activity.iter().map(|s| s.start_ms).collect();
            prop_assert_eq!(values::<TimestampMillisecondType>(&b, Dataset::Activity, 0), starts);
            let idle: Vec<u32> = sent.activity.iter().map(|s| s.idle_s).collect();
            prop_assert_eq!(values::<UInt32Type>(&b, Dataset::Activity, 2), idle);
            let durations: Vec<u32> = sent.app_usage.iter().map(|u| u.duration_s).collect();
            prop_assert_eq!(values::<UInt32Type>(&b, Dataset::AppUsage, 1), durations);
            if let Some(apps) = column(&b, Dataset::AppUsage, 2) {
                let hosts = column(&b, Dataset::AppUsage, 3).unwrap().as_string::<i32>();
                for (i, u) in sent.app_usage.iter().enumerate() {
                    prop_assert_eq!(apps.as_string::<i32>().value(i), u.app.as_str());
                    prop_assert_eq!(hosts.is_valid(i).then(|| hosts.value(i)), u.host.as_deref());
                }
            }
            let lons: Vec<f64> = sent.gps.iter().map(|p| p.lon).collect();
            prop_assert_eq!(values::<Float64Type>(&b, Dataset::Gps, 2), lons);
            if let Some(kinds) = column(&b, Dataset::Attendance, 1) {
                for (i, a) in sent.attendance.iter().enumerate() {
                    prop_assert_eq!(kinds.as_string::<i32>().value(i), a.kind.as_str());
                }
            }
        }
    }
}
