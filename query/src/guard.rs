//! Guards on a statement's running plan: it stops the moment its time is
//! up, and no operator hands on a batch larger than a statement may hold.
//!
//! Aborting a task takes effect only when the task next yields, and some
//! operators do a great deal of work without yielding: an aggregation
//! pulls batch after batch from a cross join that never waits for input,
//! and a nested-loop join probes every buffered row against a batch inside
//! one poll (two ranges of 10^5 rows are 10^10 pairs, minutes of CPU). So a
//! statement carries an [`Interrupt`], and its physical plan is rewritten
//! before it runs ([`guarded`]) to look at it:
//!
//! - every operator's output stream checks it on each poll, so a chain of
//!   operators that never waits still stops at its next batch;
//! - join filters check it on each evaluation, which a nested-loop or hash
//!   join makes once per buffered row (or candidate chunk) and probe batch,
//!   so the inner loops stop within one evaluation.
//!
//! A tripped statement ends with an error at its next check; the SQL
//! runtime ([`crate::engine`]) trips it when the time limit passes or the
//! caller goes away. A check is one relaxed atomic load.
//!
//! Expression results are not in the memory pool, and operators can grow
//! them level by level (`s || s` over nested subqueries doubles a string
//! per level) where no single function is unbounded. So every operator's
//! output batch is also measured, and one over
//! [`MAX_RESULT_BYTES`](crate::bounded_functions::MAX_RESULT_BYTES) ends the
//! statement with 422 `query_too_large`: a growth chain stops at its first
//! level past the bound, never at the node's memory.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, FieldRef, Schema, SchemaRef};
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{DataFusionError, Result as DfResult};
use datafusion::execution::{RecordBatchStream, SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::ColumnarValue;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::joins::utils::JoinFilter;
use datafusion::physical_plan::joins::{
    HashJoinExec, HashJoinExecBuilder, NestedLoopJoinExec, NestedLoopJoinExecBuilder,
};
use datafusion::physical_plan::{
    ChildrenPropertiesMode, DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties,
    ReplaceChildrenOptions,
};
use futures::Stream;

use crate::bounded_functions::MAX_RESULT_BYTES;

/// The flag one statement's work looks at; cloned into every check.
#[derive(Debug, Clone, Default)]
pub struct Interrupt(Arc<AtomicBool>);

impl Interrupt {
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks the statement's work to stop at its next check.
    pub fn trip(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    pub fn is_tripped(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    fn check(&self) -> DfResult<()> {
        if self.is_tripped() {
            Err(DataFusionError::Execution(
                "the statement was stopped (time limit or caller gone)".into(),
            ))
        } else {
            Ok(())
        }
    }
}

/// `plan` with every operator and join filter checking `interrupt`, and
/// every operator's output batches measured.
pub fn guarded(
    plan: Arc<dyn ExecutionPlan>,
    interrupt: &Interrupt,
) -> DfResult<Arc<dyn ExecutionPlan>> {
    plan.transform_up(|node| {
        let node = with_interruptible_join_filter(node, interrupt)?;
        Ok(Transformed::yes(Arc::new(GuardedExec {
            input: node,
            interrupt: interrupt.clone(),
        }) as Arc<dyn ExecutionPlan>))
    })
    .map(|t| t.data)
}

/// The joins whose inner loops evaluate a filter many times per poll, with
/// that filter checking `interrupt` first.
fn with_interruptible_join_filter(
    node: Arc<dyn ExecutionPlan>,
    interrupt: &Interrupt,
) -> DfResult<Arc<dyn ExecutionPlan>> {
    let wrap = |filter: &JoinFilter| {
        JoinFilter::new(
            Arc::new(InterruptibleExpr {
                inner: filter.expression().clone(),
                interrupt: interrupt.clone(),
            }),
            filter.column_indices().to_vec(),
            filter.schema().clone(),
        )
    };
    if let Some(join) = node.downcast_ref::<NestedLoopJoinExec>()
        && let Some(filter) = join.filter()
    {
        let rebuilt = NestedLoopJoinExecBuilder::from(join)
            .with_filter(Some(wrap(filter)))
            .build()?;
        return Ok(Arc::new(rebuilt));
    }
    if let Some(join) = node.downcast_ref::<HashJoinExec>()
        && let Some(filter) = join.filter()
    {
        let builder: HashJoinExecBuilder = join.builder();
        return builder.with_filter(Some(wrap(filter))).build_exec();
    }
    Ok(node)
}

/// An operator whose output stream checks the statement's interrupt on
/// each poll and the size of each batch; otherwise its input, unchanged.
#[derive(Debug)]
struct GuardedExec {
    input: Arc<dyn ExecutionPlan>,
    interrupt: Interrupt,
}

impl DisplayAs for GuardedExec {
    fn fmt_as(&self, _: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "GuardedExec")
    }
}

impl ExecutionPlan for GuardedExec {
    fn name(&self) -> &str {
        "GuardedExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        self.input.properties()
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![true]
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DfResult<TreeNodeRecursion>,
    ) -> DfResult<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn replace_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
        _options: ReplaceChildrenOptions,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        if children.len() != 1 {
            return Err(DataFusionError::Internal(format!(
                "GuardedExec has one input, not {}",
                children.len()
            )));
        }
        // The properties are the input's, so either mode is the same.
        Ok(Arc::new(Self {
            input: children.swap_remove(0),
            interrupt: self.interrupt.clone(),
        }))
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        self.replace_children(
            children,
            ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute),
        )
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> DfResult<SendableRecordBatchStream> {
        self.interrupt.check()?;
        Ok(Box::pin(GuardedStream {
            inner: self.input.execute(partition, context)?,
            interrupt: self.interrupt.clone(),
        }))
    }
}

struct GuardedStream {
    inner: SendableRecordBatchStream,
    interrupt: Interrupt,
}

impl Stream for GuardedStream {
    type Item = DfResult<RecordBatch>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if let Err(e) = self.interrupt.check() {
            return Poll::Ready(Some(Err(e)));
        }
        match self.inner.as_mut().poll_next(cx) {
            Poll::Ready(Some(Ok(batch))) => Poll::Ready(Some(bounded(batch))),
            other => other,
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.inner.size_hint()
    }
}

/// `batch`, unless it is larger than any statement may hold.
fn bounded(batch: RecordBatch) -> DfResult<RecordBatch> {
    let bytes = batch.get_array_memory_size();
    if bytes > MAX_RESULT_BYTES {
        return Err(DataFusionError::ResourcesExhausted(format!(
            "an operator produced {bytes} bytes in one batch; at most {MAX_RESULT_BYTES} are allowed"
        )));
    }
    Ok(batch)
}

impl RecordBatchStream for GuardedStream {
    fn schema(&self) -> SchemaRef {
        self.inner.schema()
    }
}

/// A join filter that checks the statement's interrupt before each
/// evaluation; otherwise the filter, unchanged.
#[derive(Debug, Clone)]
struct InterruptibleExpr {
    inner: Arc<dyn PhysicalExpr>,
    interrupt: Interrupt,
}

impl fmt::Display for InterruptibleExpr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.inner, f)
    }
}

impl PartialEq for InterruptibleExpr {
    fn eq(&self, other: &Self) -> bool {
        self.inner.as_ref() == other.inner.as_ref()
    }
}

impl Eq for InterruptibleExpr {}

impl Hash for InterruptibleExpr {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.inner.hash(state);
    }
}

impl PhysicalExpr for InterruptibleExpr {
    fn data_type(&self, input_schema: &Schema) -> DfResult<DataType> {
        self.inner.data_type(input_schema)
    }

    fn nullable(&self, input_schema: &Schema) -> DfResult<bool> {
        self.inner.nullable(input_schema)
    }

    fn return_field(&self, input_schema: &Schema) -> DfResult<FieldRef> {
        self.inner.return_field(input_schema)
    }

    fn evaluate(&self, batch: &RecordBatch) -> DfResult<ColumnarValue> {
        self.interrupt.check()?;
        self.inner.evaluate(batch)
    }

    fn children(&self) -> Vec<&Arc<dyn PhysicalExpr>> {
        vec![&self.inner]
    }

    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn PhysicalExpr>>,
    ) -> DfResult<Arc<dyn PhysicalExpr>> {
        if children.len() != 1 {
            return Err(DataFusionError::Internal(
                "an interruptible filter wraps one expression".into(),
            ));
        }
        Ok(Arc::new(Self {
            inner: children.swap_remove(0),
            interrupt: self.interrupt.clone(),
        }))
    }

    fn fmt_sql(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.fmt_sql(f)
    }
}

#[cfg(test)]
mod tests {
    use datafusion::physical_plan::collect;
    use datafusion::prelude::SessionContext;

    use super::*;

    /// A hash join with a filter, a nested-loop join and an aggregation.
    const JOINS: &str = "SELECT x.a, count(*) AS n, sum(y.b) AS s \
        FROM (SELECT unnest(range(1, 300)) AS a) x \
        JOIN (SELECT unnest(range(1, 300)) AS b) y ON x.a % 7 = y.b % 7 AND x.a < y.b \
        JOIN (SELECT unnest(range(1, 40)) AS c) z ON x.a * z.c < 200 OR z.c = 1 \
        GROUP BY x.a ORDER BY x.a";

    async fn physical(ctx: &SessionContext, sql: &str) -> Arc<dyn ExecutionPlan> {
        ctx.sql(sql)
            .await
            .unwrap()
            .create_physical_plan()
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn a_guarded_plan_answers_as_the_plain_one() {
        let ctx = SessionContext::new();
        let plain = collect(physical(&ctx, JOINS).await, ctx.task_ctx())
            .await
            .unwrap();
        let plan = guarded(physical(&ctx, JOINS).await, &Interrupt::new()).unwrap();
        let shown = datafusion::physical_plan::displayable(plan.as_ref())
            .indent(false)
            .to_string();
        assert!(shown.contains("NestedLoopJoinExec") && shown.contains("HashJoinExec"));
        assert!(shown.contains("GuardedExec"), "{shown}");
        let wrapped = collect(plan, ctx.task_ctx()).await.unwrap();
        assert!(!plain.is_empty());
        assert_eq!(plain, wrapped);
    }

    #[tokio::test]
    async fn a_batch_larger_than_a_statement_may_hold_is_refused() {
        // Each column within the functions' bounds, the batch over its own.
        let ctx = SessionContext::new();
        crate::bounded_functions::install(&ctx);
        let sql = "SELECT repeat('x', 1000000) AS a, repeat('y', 1000000) AS b \
                   FROM (SELECT unnest(range(1, 60)) AS n)";
        let plan = guarded(physical(&ctx, sql).await, &Interrupt::new()).unwrap();
        let error = collect(plan, ctx.task_ctx()).await.unwrap_err();
        assert!(
            matches!(error.find_root(), DataFusionError::ResourcesExhausted(_)),
            "{error}"
        );
        assert!(error.to_string().contains("in one batch"), "{error}");
    }

    /// The interrupt is tripped from inside the join's first filter
    /// evaluation (by `trip(a)`, which answers false), in a join of 10^10
    /// pairs that would run for hours: the plan must stop at the next one.
    #[test]
    fn a_nested_loop_join_stops_inside_its_probe_loop() {
        use arrow::array::BooleanArray;
        use datafusion::logical_expr::{Volatility, create_udf};

        let interrupt = Interrupt::new();
        let tripper = interrupt.clone();
        let trip = create_udf(
            "trip",
            vec![DataType::Int64],
            DataType::Boolean,
            Volatility::Volatile,
            Arc::new(move |args: &[ColumnarValue]| {
                tripper.trip();
                let rows = match &args[0] {
                    ColumnarValue::Array(a) => a.len(),
                    ColumnarValue::Scalar(_) => 1,
                };
                Ok(ColumnarValue::Array(Arc::new(BooleanArray::from(vec![
                    false;
                    rows
                ]))))
            }),
        );
        let (done, outcome) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            let result = runtime.block_on(async {
                // Each side one batch, so only a check inside the probe
                // loop can stop it (between batches is hours away).
                let ctx = SessionContext::new_with_config(
                    datafusion::prelude::SessionConfig::new().with_batch_size(200_000),
                );
                ctx.register_udf(trip);
                let sql = "SELECT count(*) AS n FROM (SELECT unnest(range(1, 100000)) AS a) x \
                           JOIN (SELECT unnest(range(1, 100000)) AS b) y \
                           ON x.a * y.b < 0 OR trip(x.a + y.b)";
                let plan = guarded(physical(&ctx, sql).await, &interrupt).unwrap();
                collect(plan, ctx.task_ctx()).await
            });
            let _ = done.send(result);
        });
        let result = outcome
            .recv_timeout(std::time::Duration::from_secs(120))
            .expect("the join stopped once interrupted");
        let error = result.unwrap_err();
        assert!(error.to_string().contains("stopped"), "{error}");
    }
}
