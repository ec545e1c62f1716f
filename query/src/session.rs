//! A query session for one request: its only tables are views of the
//! caller's tenant, already filtered to the caller's scope.
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
use datafusion::catalog::view::ViewTable;
use datafusion::datasource::provider_as_source;
use datafusion::execution::SessionStateBuilder;
use datafusion::execution::context::SQLOptions;
use datafusion::logical_expr::{LogicalPlan, LogicalPlanBuilder, col, lit};
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion::sql::parser::Statement;
use datafusion::sql::sqlparser::ast::Statement as SqlStatement;
use futures::StreamExt;

use crate::QueryError;
use crate::lake::{QueryLake, TenantTables};
use crate::scope::{Rows, Scope};

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
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_sql_bytes: 16 * 1024,
            max_rows: 100_000,
            memory_bytes: 256 * 1024 * 1024,
            timeout: Duration::from_secs(30),
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
        let filter = match &scope.rows {
            Rows::Tenant => None,
            Rows::Departments(departments) => Some(
                col("department")
                    .in_list(departments.iter().map(|d| lit(d.as_str())).collect(), false),
            ),
            Rows::Subject(subject) => Some(col("subject").eq(lit(subject.as_str()))),
        };
        for (dataset, table) in &tables.tables {
            let mut plan =
                LogicalPlanBuilder::scan(dataset.name(), provider_as_source(table.clone()), None)?;
            if let Some(filter) = &filter {
                plan = plan.filter(filter.clone())?;
            }
            let view = ViewTable::new(plan.build()?, None);
            ctx.register_table(dataset.name(), Arc::new(view))?;
        }
        Ok(Self {
            ctx,
            scope: scope.clone(),
            limits,
        })
    }

    pub fn scope(&self) -> &Scope {
        &self.scope
    }

    /// Runs one `SELECT` statement within the limits.
    pub async fn query(&self, sql: &str) -> Result<Answer, QueryError> {
        if sql.len() > self.limits.max_sql_bytes {
            return Err(QueryError::TooLong {
                bytes: sql.len(),
                max: self.limits.max_sql_bytes,
            });
        }
        let state = self.ctx.state();
        let dialect = state.config().options().sql_parser.dialect;
        // One statement only (more is refused by the parser), parsed with
        // the configured nesting limit.
        let statement = state
            .sql_to_statement(sql, &dialect)
            .map_err(|e| QueryError::BadSql(e.to_string()))?;
        match &statement {
            Statement::Statement(s) if matches!(**s, SqlStatement::Query(_)) => {}
            _ => {
                return Err(QueryError::Refused(
                    "only SELECT queries over the scoped views are allowed".into(),
                ));
            }
        }
        let plan = state
            .statement_to_plan(statement)
            .await
            .map_err(QueryError::from_planning)?;
        // A SELECT cannot carry DDL or DML; the plan is checked as well,
        // with DataFusion's own rules, in case a future parser lets one in.
        SQLOptions::new()
            .with_allow_ddl(false)
            .with_allow_dml(false)
            .with_allow_statements(false)
            .verify_plan(&plan)
            .map_err(|e| QueryError::Refused(e.to_string()))?;
        match self.run(plan.clone()).await {
            // An object listed moments ago is gone: compaction merged it or
            // retention deleted it after the listing was cached. Forget the
            // listings and run once more on a fresh one.
            Err(QueryError::Vanished(_)) => {
                if let Some(cache) = self.ctx.runtime_env().cache_manager.get_list_files_cache() {
                    cache.clear();
                }
                self.run(plan).await
            }
            answer => answer,
        }
    }

    async fn run(&self, plan: LogicalPlan) -> Result<Answer, QueryError> {
        let df = self.ctx.execute_logical_plan(plan).await?;
        let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
        let max_rows = self.limits.max_rows;
        let collect = async {
            let mut stream = df.execute_stream().await?;
            let (mut batches, mut rows, mut truncated) = (Vec::new(), 0usize, false);
            while let Some(batch) = stream.next().await {
                let batch = batch?;
                if rows + batch.num_rows() > max_rows {
                    batches.push(batch.slice(0, max_rows - rows));
                    truncated = true;
                    break;
                }
                rows += batch.num_rows();
                batches.push(batch);
            }
            Ok::<_, QueryError>((batches, truncated))
        };
        let (batches, truncated) = tokio::time::timeout(self.limits.timeout, collect)
            .await
            .map_err(|_| QueryError::Timeout(self.limits.timeout))??;
        Ok(Answer {
            schema,
            batches,
            truncated,
        })
    }
}
