//! A query session for one request: its only tables are views of the
//! caller's tenant, already filtered to the caller's scope.
//!
//! Each view shows exactly the columns queries have always seen: the
//! dataset's lake columns, with their lake types, then `date` (`Utf8`).
//! The tables underneath are Delta tables as delta-rs reads them: partition
//! columns `tenant` and `date` as dictionaries, strings as views,
//! timestamps in microseconds. The views cast back and leave `tenant` out
//! (each table holds one tenant's files anyway).
//!
//! The base tables never enter the session's catalog: each view's plan holds
//! its table directly, so a name in the caller's SQL can only resolve to a
//! view. The session has no `information_schema`, no table functions, no
//! URL tables, and statements other than one `SELECT` query are refused
//! before planning (DDL, DML, `COPY`, `SET`, `EXPLAIN`, ...). Every
//! statement, the service's own KPI queries included, runs through here.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use candor_schemas::TenantId;
use candor_schemas::datasets::Dataset;
use datafusion::catalog::TableProvider;
use datafusion::catalog::view::ViewTable;
use datafusion::common::ScalarValue;
use datafusion::datasource::provider_as_source;
use datafusion::execution::SessionStateBuilder;
use datafusion::execution::context::SQLOptions;
use datafusion::execution::memory_pool::MemoryConsumer;
use datafusion::logical_expr::{Expr, LogicalPlan, LogicalPlanBuilder, cast, col, ident, lit};
use datafusion::physical_plan::execute_stream;
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion::sql::parser::Statement;
use datafusion::sql::sqlparser::ast::Statement as SqlStatement;
use datafusion::sql::sqlparser::dialect::dialect_from_str;
use futures::StreamExt;

use crate::bounds::{self, ShapeLimits};
use crate::engine::SqlEngine;
use crate::guard::{Interrupt, guarded};
use crate::lake::{Epoch, QueryLake, TableVersions, TenantTables, expected_schema};
use crate::scope::{Rows, Scope};
use crate::{QueryError, bounded_functions};

/// Bounds on one statement.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Longest statement, in bytes.
    pub max_sql_bytes: usize,
    /// Rows returned at most; the answer says when it was cut.
    pub max_rows: usize,
    /// Memory for joins, sorts and aggregations; a query over it fails.
    pub memory_bytes: usize,
    pub timeout: Duration,
    /// How large a statement's shape may be.
    pub shape: ShapeLimits,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_sql_bytes: 16 * 1024,
            max_rows: 100_000,
            memory_bytes: 256 * 1024 * 1024,
            timeout: Duration::from_secs(30),
            shape: ShapeLimits::default(),
        }
    }
}

/// The rows of one answer.
#[derive(Debug)]
pub struct Answer {
    pub schema: SchemaRef,
    pub batches: Vec<RecordBatch>,
    /// More rows existed than `Limits::max_rows`.
    pub truncated: bool,
}

impl Answer {
    pub fn num_rows(&self) -> usize {
        self.batches.iter().map(RecordBatch::num_rows).sum()
    }
}

pub struct ScopedSession {
    ctx: SessionContext,
    scope: Scope,
    limits: Limits,
    tenant: TenantId,
    engine: Arc<SqlEngine>,
    /// The table version each view reads.
    table_versions: TableVersions,
    /// Makes the lake's cached tables stale when a version proves outdated.
    epoch: Epoch,
}

impl ScopedSession {
    pub fn new(
        lake: &QueryLake,
        tables: &TenantTables,
        scope: &Scope,
        limits: Limits,
    ) -> Result<Self, QueryError> {
        let config = SessionConfig::new()
            .with_information_schema(false)
            .with_create_default_catalog_and_schema(true);
        let state = SessionStateBuilder::new()
            .with_config(config)
            .with_runtime_env(lake.runtime(limits.memory_bytes)?)
            .with_default_features()
            .with_table_functions(HashMap::new())
            .build();
        let ctx = SessionContext::new_with_state(state);
        // Functions that would tell a caller about the server, not the data.
        for name in ["version", "input_file_name"] {
            ctx.deregister_udf(name);
        }
        bounded_functions::install(&ctx);
        let filter = match &scope.rows {
            Rows::Tenant => None,
            Rows::Departments(departments) => Some(
                col("department")
                    .in_list(departments.iter().map(|d| lit(d.as_str())).collect(), false),
            ),
            Rows::Subject(subject) => Some(col("subject").eq(lit(subject.as_str()))),
        };
        for (dataset, table) in &tables.tables {
            let view = ViewTable::new(view_plan(*dataset, table, filter.as_ref())?, None);
            ctx.register_table(dataset.name(), Arc::new(view))?;
        }
        Ok(Self {
            ctx,
            scope: scope.clone(),
            limits,
            tenant: tables.tenant.clone(),
            engine: lake.engine().clone(),
            table_versions: tables.versions.clone(),
            epoch: lake.epoch().clone(),
        })
    }

    pub fn scope(&self) -> &Scope {
        &self.scope
    }

    /// The table version each of the session's views reads, by dataset; a
    /// dataset with no table (yet, or readable) has none.
    pub fn table_versions(&self) -> &TableVersions {
        &self.table_versions
    }

    /// Runs one `SELECT` statement within the limits, on the node's SQL
    /// runtime ([`crate::engine`]): its shape is checked before it is
    /// parsed and planned ([`crate::bounds`]), and the time limit covers
    /// parsing, planning and execution alike.
    pub async fn query(&self, sql: &str) -> Result<Answer, QueryError> {
        if sql.len() > self.limits.max_sql_bytes {
            return Err(QueryError::TooLong {
                bytes: sql.len(),
                max: self.limits.max_sql_bytes,
            });
        }
        let (ctx, limits, sql) = (self.ctx.clone(), self.limits.clone(), sql.to_string());
        let answer = self
            .engine
            .run(
                self.tenant.as_str(),
                self.limits.timeout,
                |interrupt| async move {
                    let plan = plan(&ctx, &limits, &sql).await?;
                    run(&ctx, &limits, plan, &interrupt).await
                },
            )
            .await;
        // An object the version named is gone: the table moved on and the
        // object was vacuumed since the version was loaded. The next
        // request reads the tables as they are now (the answer says to
        // try again shortly).
        if matches!(answer, Err(QueryError::Vanished(_))) {
            self.epoch.advance();
        }
        answer
    }
}

/// The view of `dataset` over `table`: the rows `filter` keeps, as the
/// columns queries see ([`expected_schema`]), each cast to its lake type
/// where delta-rs reads it as another. A column the table lacks (a table
/// no writer of this release has evolved yet) reads as null.
fn view_plan(
    dataset: Dataset,
    table: &Arc<dyn TableProvider>,
    filter: Option<&Expr>,
) -> Result<LogicalPlan, QueryError> {
    let found = table.schema();
    let mut plan =
        LogicalPlanBuilder::scan(dataset.name(), provider_as_source(table.clone()), None)?;
    if let Some(filter) = filter {
        plan = plan.filter(filter.clone())?;
    }
    let columns = expected_schema(dataset)
        .fields()
        .iter()
        .map(|wanted| {
            let name = wanted.name();
            Ok(match found.field_with_name(name) {
                Ok(field) if field.data_type() == wanted.data_type() => ident(name),
                Ok(_) => cast(ident(name), wanted.data_type().clone()).alias(name),
                Err(_) => lit(ScalarValue::try_from(wanted.data_type())?).alias(name),
            })
        })
        .collect::<Result<Vec<Expr>, QueryError>>()?;
    Ok(plan.project(columns)?.build()?)
}

/// Checks, parses and plans one statement.
async fn plan(ctx: &SessionContext, limits: &Limits, sql: &str) -> Result<LogicalPlan, QueryError> {
    let state = ctx.state();
    let dialect_name = state.config().options().sql_parser.dialect;
    {
        // Scoped: the dialect is not `Send`, and planning awaits below.
        let dialect = dialect_from_str(dialect_name)
            .ok_or_else(|| QueryError::BadSql(format!("unknown SQL dialect {dialect_name}")))?;
        bounds::check_tokens(sql, dialect.as_ref(), &limits.shape)?;
    }
    // One statement only (more is refused by the parser), parsed with the
    // configured nesting limit.
    let statement = state
        .sql_to_statement(sql, &dialect_name)
        .map_err(|e| QueryError::BadSql(e.to_string()))?;
    let Statement::Statement(inner) = &statement else {
        return Err(refused());
    };
    if !matches!(**inner, SqlStatement::Query(_)) {
        return Err(refused());
    }
    bounds::check_tree(inner, &limits.shape)?;
    let plan = state
        .statement_to_plan(statement)
        .await
        .map_err(QueryError::from_planning)?;
    // A SELECT cannot carry DDL or DML; the plan is checked as well, with
    // DataFusion's own rules, in case a future parser lets one in.
    SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false)
        .verify_plan(&plan)
        .map_err(|e| QueryError::Refused(e.to_string()))?;
    Ok(plan)
}

fn refused() -> QueryError {
    QueryError::Refused("only SELECT queries over the scoped views are allowed".into())
}

async fn run(
    ctx: &SessionContext,
    limits: &Limits,
    plan: LogicalPlan,
    interrupt: &Interrupt,
) -> Result<Answer, QueryError> {
    let df = ctx.execute_logical_plan(plan).await?;
    let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
    let task = Arc::new(df.task_ctx());
    let physical = guarded(df.create_physical_plan().await?, interrupt)?;
    let mut stream = execute_stream(physical, task)?;
    // The answer being collected is held in the statement's memory budget
    // too, so many large answers at once cannot take the node's memory.
    let reservation = MemoryConsumer::new("answer").register(&ctx.runtime_env().memory_pool);
    let (mut batches, mut rows, mut truncated) = (Vec::new(), 0usize, false);
    while let Some(batch) = stream.next().await {
        let mut batch = batch?;
        if rows + batch.num_rows() > limits.max_rows {
            batch = batch.slice(0, limits.max_rows - rows);
            truncated = true;
        }
        reservation.try_grow(batch.get_array_memory_size())?;
        rows += batch.num_rows();
        batches.push(batch);
        if truncated {
            break;
        }
    }
    Ok(Answer {
        schema,
        batches,
        truncated,
    })
}
