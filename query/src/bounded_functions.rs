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
//! Concatenation grows only by the sum of its inputs, but nesting it
//! compounds (`x || x || ... || x` over a 64 MiB column is 512 times that),
//! so `concat`, `concat_ws` and the `||` operator are bounded the same way:
//! the operator is rewritten, after type coercion and before any constant
//! folding, into a call of [`StringConcat`], which checks its bound and then
//! evaluates the engine's own `||` ([`BoundedStringConcat`]).
//!
//! Functions not listed grow at most linearly in their input, once
//! (`upper`, `substr`, ...); their inputs are bounded as above, by the
//! lake's own columns and by the statement's length.

use std::hash::Hash;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch, RecordBatchOptions};
use arrow::datatypes::{DataType, Field, FieldRef, Schema};
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{DataFusionError, ExprSchema, Result, ScalarValue};
use datafusion::logical_expr::expr::{BinaryExpr, ScalarFunction};
use datafusion::logical_expr::interval_arithmetic::Interval;
use datafusion::logical_expr::preimage::PreimageResult;
use datafusion::logical_expr::simplify::{ExprSimplifyResult, SimplifyContext};
use datafusion::logical_expr::sort_properties::{ExprProperties, SortProperties};
use datafusion::logical_expr::type_coercion::binary::BinaryTypeCoercer;
use datafusion::logical_expr::{
    ColumnarValue, Documentation, Expr, ExpressionPlacement, ReturnFieldArgs, ScalarFunctionArgs,
    ScalarUDF, ScalarUDFImpl, Signature, StructFieldMapping,
};
use datafusion::logical_expr::{LogicalPlan, Operator, Volatility};
use datafusion::optimizer::AnalyzerRule;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::expressions::{BinaryExpr as PhysicalBinaryExpr, Column};
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
    /// `concat(a, b, ...)`, and the `||` operator: the sum of the parts.
    Concat,
    /// `concat_ws(sep, a, b, ...)`: the parts and a separator between each two.
    ConcatWs,
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
            "concat" => Growth::Concat,
            "concat_ws" => Growth::ConcatWs,
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
            Growth::Concat => (0..args.len()).map(len).sum(),
            Growth::ConcatWs => {
                let parts = args.len().saturating_sub(1) as u128;
                len(0) * parts.saturating_sub(1) + (1..args.len()).map(len).sum::<u128>()
            }
        })
    }
}

/// Replaces every growing function of `ctx` with its bounded wrapper, and
/// the `||` operator with [`StringConcat`].
pub fn install(ctx: &SessionContext) {
    ctx.add_analyzer_rule(Arc::new(BoundedStringConcat));
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
        match self.growth.bound(&args.args) {
            Some(per_value) => check_bound(self.udf.name(), per_value, args.number_rows),
            None => Ok(()),
        }
    }
}

/// A call of a growing function that is not behind its bound yet, bounded.
fn rebound(expr: Expr) -> Result<Transformed<Expr>> {
    if let Expr::ScalarFunction(call) = &expr
        && !call.func.inner().is::<Bounded>()
        && let Some(growth) = Growth::of(call.func.name())
    {
        let func = Arc::new(ScalarUDF::new_from_impl(Bounded {
            udf: call.func.as_ref().clone(),
            growth,
        }));
        return Ok(Transformed::yes(Expr::ScalarFunction(
            ScalarFunction::new_udf(func, call.args.clone()),
        )));
    }
    Ok(Transformed::no(expr))
}

/// Refuses a call whose values would pass [`MAX_VALUE_BYTES`], or whose
/// column would pass [`MAX_RESULT_BYTES`] over `rows`.
fn check_bound(name: &str, per_value: u128, rows: usize) -> Result<()> {
    let rows = rows.max(1) as u128;
    if per_value > MAX_VALUE_BYTES as u128 {
        return Err(exhausted(format!(
            "{name}() would return about {per_value} bytes for one row; at most {MAX_VALUE_BYTES} are allowed"
        )));
    }
    if per_value * rows > MAX_RESULT_BYTES as u128 {
        return Err(exhausted(format!(
            "{name}() would return up to {} bytes for {rows} rows; at most {MAX_RESULT_BYTES} are allowed",
            per_value * rows
        )));
    }
    Ok(())
}

/// Refuses a result over the bounds, whatever the estimate said before.
fn check_result(name: &str, out: &ColumnarValue, rows: usize) -> Result<()> {
    let rows = rows.max(1);
    let bytes = result_bytes(out);
    if bytes > MAX_RESULT_BYTES || bytes / rows > MAX_VALUE_BYTES {
        return Err(exhausted(format!(
            "{name}() returned {bytes} bytes for {rows} rows, over its bound"
        )));
    }
    Ok(())
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
        let rows = args.number_rows;
        let out = self.inner().invoke_with_args(args)?;
        check_result(self.udf.name(), &out, rows)?;
        Ok(out)
    }

    /// The function's own simplification, with any call it makes of an
    /// unbounded growing function (`concat` merging its literals builds a
    /// new `concat`) bounded again.
    fn simplify(&self, args: Vec<Expr>, info: &SimplifyContext) -> Result<ExprSimplifyResult> {
        Ok(match self.inner().simplify(args, info)? {
            ExprSimplifyResult::Simplified(expr) => {
                ExprSimplifyResult::Simplified(expr.transform_up(rebound)?.data)
            }
            original => original,
        })
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

/// Rewrites every `a || b` of a plan, its subqueries included, into
/// `StringConcat(a, b)`. An analyzer rule, so it runs after type coercion
/// (the operands have their final types) and before the optimizer folds
/// constants (which would otherwise concatenate at planning, unbounded).
#[derive(Debug)]
pub struct BoundedStringConcat;

impl AnalyzerRule for BoundedStringConcat {
    fn name(&self) -> &str {
        "bounded_string_concat"
    }

    fn analyze(&self, plan: LogicalPlan, _config: &ConfigOptions) -> Result<LogicalPlan> {
        let operator = Arc::new(ScalarUDF::new_from_impl(StringConcat::default()));
        plan.transform_up_with_subqueries(|node| {
            node.map_expressions(|e| {
                e.transform_up(|e| match e {
                    Expr::BinaryExpr(BinaryExpr {
                        left,
                        op: Operator::StringConcat,
                        right,
                    }) => Ok(Transformed::yes(Expr::ScalarFunction(
                        ScalarFunction::new_udf(operator.clone(), vec![*left, *right]),
                    ))),
                    other => Ok(Transformed::no(other)),
                })
            })
        })
        .map(|t| t.data)
    }
}

/// The `||` operator behind the bound: the engine's own operator, called
/// once the sum of its operands is known to fit.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct StringConcat {
    signature: Signature,
}

impl Default for StringConcat {
    fn default() -> Self {
        Self {
            signature: Signature::any(2, Volatility::Immutable),
        }
    }
}

impl ScalarUDFImpl for StringConcat {
    fn name(&self) -> &str {
        "||"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        let [left, right] = arg_types else {
            return Err(DataFusionError::Plan("|| takes two operands".into()));
        };
        BinaryTypeCoercer::new(left, &Operator::StringConcat, right).get_result_type()
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        let types: Vec<DataType> = args
            .arg_fields
            .iter()
            .map(|f| f.data_type().clone())
            .collect();
        let nullable = args.arg_fields.iter().any(|f| f.is_nullable());
        Ok(Arc::new(Field::new(
            self.name(),
            self.return_type(&types)?,
            nullable,
        )))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let rows = args.number_rows;
        check_bound("||", Growth::Concat.bound(&args.args).unwrap_or(0), rows)?;
        // The operands as a batch of two columns, and `#0 || #1` over it.
        let fields: Vec<FieldRef> = args
            .arg_fields
            .iter()
            .enumerate()
            .map(|(i, f)| Arc::new(f.as_ref().clone().with_name(format!("operand{i}"))))
            .collect();
        let columns = args
            .args
            .iter()
            .map(|a| a.to_array(rows))
            .collect::<Result<Vec<_>>>()?;
        let batch = RecordBatch::try_new_with_options(
            Arc::new(Schema::new(fields)),
            columns,
            &RecordBatchOptions::new().with_row_count(Some(rows)),
        )?;
        let operator = PhysicalBinaryExpr::new(
            Arc::new(Column::new("operand0", 0)),
            Operator::StringConcat,
            Arc::new(Column::new("operand1", 1)),
        );
        let out = operator.evaluate(&batch)?;
        check_result("||", &out, rows)?;
        Ok(out)
    }

    /// The operator's own column name (`a || b`), so that rewriting it
    /// changes no answer's column names.
    fn schema_name(&self, args: &[Expr]) -> Result<String> {
        let [left, right] = args else {
            return Err(DataFusionError::Plan("|| takes two operands".into()));
        };
        Ok(format!("{} || {}", left.schema_name(), right.schema_name()))
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
            // Concatenation compounds when nested, as function or operator.
            "SELECT length(concat(repeat('a', 600000), repeat('b', 600000)))",
            "SELECT length(concat_ws('-', repeat('a', 600000), repeat('b', 600000)))",
            "SELECT length(repeat('a', 600000) || repeat('b', 600000))",
            "WITH a AS (SELECT repeat('x', 60000) AS s FROM unnest(range(1, 1000))) \
             SELECT length(s || s) FROM a",
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

    #[tokio::test]
    async fn the_bounded_operator_answers_as_the_engines_own() {
        // Strings, views, numbers coerced to text, nulls, and the column name.
        let sql = "SELECT 'a' || 'b' AS ab, arrow_cast('v', 'Utf8View') || 'w' AS vw, \
                   'n' || 1 AS n1, 'x' || NULL AS x0, s || s FROM (SELECT 'q' AS s)";
        let bounded = run(sql).await.unwrap();
        let plain = SessionContext::new()
            .sql(sql)
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        assert_eq!(bounded[0].schema(), plain[0].schema());
        assert_eq!(bounded, plain);
        let text = arrow::util::pretty::pretty_format_batches(&bounded)
            .unwrap()
            .to_string();
        assert!(text.contains("s || s") && text.contains("qq"), "{text}");
    }
}
