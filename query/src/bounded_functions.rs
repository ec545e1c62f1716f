//! Scalar functions whose result can be far larger than their input,
//! bounded before they allocate.
//!
//! The memory pool sees joins, sorts and aggregations, not the strings and
//! arrays a scalar function returns: `repeat('xy', 300000000)` once took a
//! node to 2.4 GiB inside a 256 MiB statement budget. Each function below
//! is replaced, in every session, by a wrapper that works out from its
//! arguments an upper bound of what it would return and refuses, with the
//! engine's "resources exhausted" error, when one value would pass
//! [`MAX_VALUE_BYTES`] or one batch [`MAX_RESULT_BYTES`]. The wrapper then
//! checks what the function really returned against the same bound, so a
//! bound that underestimates cannot compound through nested calls.
//!
//! Functions not listed grow at most linearly in their input (`concat`,
//! `upper`, `substr`, ...); their inputs are bounded by the lake's own
//! columns and by the statement's length.

use std::hash::Hash;

use arrow::array::{Array, ArrayRef, AsArray};
use arrow::datatypes::{DataType, FieldRef};
use datafusion::common::config::ConfigOptions;
use datafusion::common::{DataFusionError, ExprSchema, Result, ScalarValue};
use datafusion::logical_expr::interval_arithmetic::Interval;
use datafusion::logical_expr::preimage::PreimageResult;
use datafusion::logical_expr::simplify::{ExprSimplifyResult, SimplifyContext};
use datafusion::logical_expr::sort_properties::{ExprProperties, SortProperties};
use datafusion::logical_expr::{
    ColumnarValue, Documentation, Expr, ExpressionPlacement, ReturnFieldArgs, ScalarFunctionArgs,
    ScalarUDF, ScalarUDFImpl, Signature, StructFieldMapping,
};
use datafusion::prelude::SessionContext;

/// Largest string or array one function call may return for one row.
pub const MAX_VALUE_BYTES: usize = 1024 * 1024;
/// Largest column one function call may return for one batch.
pub const MAX_RESULT_BYTES: usize = 64 * 1024 * 1024;

/// How a function's result grows with its arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Growth {
    /// `repeat(s, n)`: `len(s) * n`.
    Repeat,
    /// `lpad(s, n [, fill])`, `rpad`: `n` characters, 4 bytes at most each.
    PadTo,
    /// `replace(s, from, to)`: every `from` may become `to`.
    Replace,
    /// `regexp_replace(s, pattern, replacement [, flags])`: a pattern can
    /// match between every two characters.
    RegexpReplace,
    /// `array_repeat(x, n)`, `array_resize(a, n [, fill])`: `n` elements.
    Elements,
    /// `range(a, b [, step])`, `generate_series`: `(b - a) / step` elements.
    Series,
}

impl Growth {
    fn of(name: &str) -> Option<Growth> {
        Some(match name {
            "repeat" => Growth::Repeat,
            "lpad" | "rpad" => Growth::PadTo,
            "replace" => Growth::Replace,
            "regexp_replace" => Growth::RegexpReplace,
            "array_repeat" | "array_resize" | "list_repeat" | "list_resize" => Growth::Elements,
            "range" | "generate_series" => Growth::Series,
            _ => return None,
        })
    }

    /// An upper bound, in bytes, of one result value for the largest
    /// arguments of the batch; `None` when it cannot be told beforehand.
    fn bound(self, args: &[ColumnarValue]) -> Option<u128> {
        let len = |i: usize| args.get(i).map_or(0, |a| max_string_bytes(a) as u128);
        let int = |i: usize| args.get(i).and_then(max_integer).flatten();
        Some(match self {
            Growth::Repeat => len(0) * int(1)?.max(0) as u128,
            Growth::PadTo => 4 * int(1)?.max(0) as u128,
            Growth::Replace => {
                let from = len(1).max(1);
                len(0) + len(0) / from * len(2)
            }
            Growth::RegexpReplace => len(0) + (len(0) + 1) * (len(2) + len(0)),
            Growth::Elements => 16 * int(1)?.max(0) as u128,
            Growth::Series => {
                let (start, stop) = match args.len() {
                    1 => (0, int(0)?),
                    _ => (min_integer(&args[0])?, int(1)?),
                };
                let step = args.get(2).map_or(Some(1), min_abs_integer)?.max(1);
                16 * ((stop as i128 - start as i128).unsigned_abs() / step as u128 + 1)
            }
        })
    }
}

/// Replaces every growing function of `ctx` with its bounded wrapper.
pub fn install(ctx: &SessionContext) {
    let state = ctx.state();
    for udf in state.scalar_functions().values() {
        if let Some(growth) = Growth::of(udf.name()) {
            ctx.register_udf(ScalarUDF::new_from_impl(Bounded {
                udf: udf.as_ref().clone(),
                growth,
            }));
        }
    }
}

fn exhausted(message: String) -> DataFusionError {
    DataFusionError::ResourcesExhausted(message)
}

/// Bytes of the longest string among the values, or of the scalar.
fn max_string_bytes(arg: &ColumnarValue) -> usize {
    match arg {
        ColumnarValue::Scalar(s) => match s {
            ScalarValue::Utf8(Some(v))
            | ScalarValue::LargeUtf8(Some(v))
            | ScalarValue::Utf8View(Some(v)) => v.len(),
            _ => 0,
        },
        ColumnarValue::Array(a) => match a.data_type() {
            DataType::Utf8 => longest(a.as_string::<i32>().iter()),
            DataType::LargeUtf8 => longest(a.as_string::<i64>().iter()),
            DataType::Utf8View => longest(a.as_string_view().iter()),
            _ => 0,
        },
    }
}

fn longest<'a>(values: impl Iterator<Item = Option<&'a str>>) -> usize {
    values.map(|v| v.map_or(0, str::len)).max().unwrap_or(0)
}

fn integers(arg: &ColumnarValue) -> Option<Vec<i64>> {
    let cast = |a: &ArrayRef| -> Option<Vec<i64>> {
        let a = arrow::compute::cast(a, &DataType::Int64).ok()?;
        Some(
            a.as_primitive::<arrow::datatypes::Int64Type>()
                .iter()
                .flatten()
                .collect(),
        )
    };
    match arg {
        ColumnarValue::Scalar(s) if s.is_null() => Some(Vec::new()),
        ColumnarValue::Scalar(s) => cast(&s.to_array().ok()?),
        ColumnarValue::Array(a) => cast(a),
    }
}

/// The largest integer among the values; `Some(None)` when all are null,
/// `None` when they are not integers.
fn max_integer(arg: &ColumnarValue) -> Option<Option<i64>> {
    integers(arg).map(|v| v.into_iter().max())
}

fn min_integer(arg: &ColumnarValue) -> Option<i64> {
    integers(arg).map(|v| v.into_iter().min().unwrap_or(0))
}

fn min_abs_integer(arg: &ColumnarValue) -> Option<i64> {
    integers(arg).map(|v| v.into_iter().map(|x| x.saturating_abs()).min().unwrap_or(1))
}

/// Bytes a result holds (a scalar's as one value).
fn result_bytes(value: &ColumnarValue) -> usize {
    match value {
        ColumnarValue::Scalar(s) => s.size(),
        ColumnarValue::Array(a) => a.get_array_memory_size(),
    }
}

/// A growing function behind its bound.
#[derive(Debug, PartialEq, Eq, Hash)]
struct Bounded {
    udf: ScalarUDF,
    growth: Growth,
}

impl Bounded {
    fn inner(&self) -> &dyn ScalarUDFImpl {
        self.udf.inner().as_ref()
    }

    fn check_before(&self, args: &ScalarFunctionArgs) -> Result<()> {
        // Arguments that are not integers (an interval step, a date range)
        // have no bound here; the check after the call still holds.
        let Some(per_value) = self.growth.bound(&args.args) else {
            return Ok(());
        };
        let rows = args.number_rows.max(1) as u128;
        if per_value > MAX_VALUE_BYTES as u128 {
            return Err(exhausted(format!(
                "{}() would return about {per_value} bytes for one row; at most {MAX_VALUE_BYTES} are allowed",
                self.udf.name()
            )));
        }
        if per_value * rows > MAX_RESULT_BYTES as u128 {
            return Err(exhausted(format!(
                "{}() would return up to {} bytes for {rows} rows; at most {MAX_RESULT_BYTES} are allowed",
                self.udf.name(),
                per_value * rows
            )));
        }
        Ok(())
    }
}

impl ScalarUDFImpl for Bounded {
    fn name(&self) -> &str {
        self.inner().name()
    }

    fn aliases(&self) -> &[String] {
        self.inner().aliases()
    }

    fn schema_name(&self, args: &[Expr]) -> Result<String> {
        self.inner().schema_name(args)
    }

    fn signature(&self) -> &Signature {
        self.inner().signature()
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        self.inner().return_type(arg_types)
    }

    fn with_updated_config(&self, config: &ConfigOptions) -> Option<ScalarUDF> {
        let udf = self.inner().with_updated_config(config)?;
        Some(ScalarUDF::new_from_impl(Bounded {
            udf,
            growth: self.growth,
        }))
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        self.inner().return_field_from_args(args)
    }

    #[allow(deprecated)]
    fn is_nullable(&self, args: &[Expr], schema: &dyn ExprSchema) -> bool {
        self.inner().is_nullable(args, schema)
    }

    fn is_strict(&self) -> bool {
        self.inner().is_strict()
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        self.check_before(&args)?;
        let rows = args.number_rows.max(1);
        let out = self.inner().invoke_with_args(args)?;
        let bytes = result_bytes(&out);
        if bytes > MAX_RESULT_BYTES || bytes / rows > MAX_VALUE_BYTES {
            return Err(exhausted(format!(
                "{}() returned {bytes} bytes for {rows} rows, over its bound",
                self.udf.name()
            )));
        }
        Ok(out)
    }

    fn simplify(&self, args: Vec<Expr>, info: &SimplifyContext) -> Result<ExprSimplifyResult> {
        self.inner().simplify(args, info)
    }

    fn preimage(
        &self,
        args: &[Expr],
        lit_expr: &Expr,
        info: &SimplifyContext,
    ) -> Result<PreimageResult> {
        self.inner().preimage(args, lit_expr, info)
    }

    fn short_circuits(&self) -> bool {
        self.inner().short_circuits()
    }

    fn conditional_arguments<'a>(
        &self,
        args: &'a [Expr],
    ) -> Option<(Vec<&'a Expr>, Vec<&'a Expr>)> {
        self.inner().conditional_arguments(args)
    }

    fn evaluate_bounds(&self, input: &[&Interval]) -> Result<Interval> {
        self.inner().evaluate_bounds(input)
    }

    fn propagate_constraints(
        &self,
        interval: &Interval,
        inputs: &[&Interval],
    ) -> Result<Option<Vec<Interval>>> {
        self.inner().propagate_constraints(interval, inputs)
    }

    fn output_ordering(&self, inputs: &[ExprProperties]) -> Result<SortProperties> {
        self.inner().output_ordering(inputs)
    }

    fn preserves_lex_ordering(&self, inputs: &[ExprProperties]) -> Result<bool> {
        self.inner().preserves_lex_ordering(inputs)
    }

    fn strictly_order_preserving(&self, inputs: &[ExprProperties]) -> Result<bool> {
        self.inner().strictly_order_preserving(inputs)
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        self.inner().coerce_types(arg_types)
    }

    fn struct_field_mapping(
        &self,
        literal_args: &[Option<ScalarValue>],
    ) -> Option<StructFieldMapping> {
        self.inner().struct_field_mapping(literal_args)
    }

    fn documentation(&self) -> Option<&Documentation> {
        self.inner().documentation()
    }

    fn placement(&self, args: &[ExpressionPlacement]) -> ExpressionPlacement {
        self.inner().placement(args)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn run(sql: &str) -> Result<Vec<arrow::array::RecordBatch>> {
        let ctx = SessionContext::new();
        install(&ctx);
        ctx.sql(sql).await?.collect().await
    }

    fn is_exhausted(e: &DataFusionError) -> bool {
        matches!(e.find_root(), DataFusionError::ResourcesExhausted(_))
    }

    #[tokio::test]
    async fn growing_functions_are_refused_before_they_allocate() {
        for sql in [
            "SELECT length(repeat('xy', 300000000))",
            "SELECT lpad('a', 2000000000)",
            "SELECT rpad('a', 2000000000, 'b')",
            "SELECT cardinality(array_repeat(1, 1000000000))",
            "SELECT cardinality(range(1, 10000000000))",
            "SELECT cardinality(generate_series(1, 10000000000, 1))",
            "SELECT length(replace(repeat('a', 4000), 'a', repeat('b', 4000)))",
        ] {
            let e = run(sql).await.expect_err(sql);
            assert!(is_exhausted(&e), "{sql}: {e}");
        }
    }

    #[tokio::test]
    async fn ordinary_calls_still_answer() {
        let batches = run(
            "SELECT repeat('ab', 3) AS r, lpad('7', 3, '0') AS p, replace('a-b', '-', '+') AS x, \
             cardinality(range(1, 11)) AS n, regexp_replace('a1b2', '[0-9]', '', 'g') AS g",
        )
        .await
        .unwrap();
        let text = arrow::util::pretty::pretty_format_batches(&batches)
            .unwrap()
            .to_string();
        for part in ["ababab", "007", "a+b", "10", "ab"] {
            assert!(text.contains(part), "{part} in {text}");
        }
    }
}
