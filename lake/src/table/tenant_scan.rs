//! One tenant's files of a dataset table at one version, as DataFusion
//! reads them.
//!
//! The files are the tenant's and no other's, chosen when the table is
//! built (see [`super::DatasetTable::tenant_provider`]). A scan opens only
//! those of them whose `date` partition can match the statement's filters:
//! delta-rs prunes partitions from the table's own file list, not from an
//! explicit selection of files, so without this every question read all of
//! the tenant's files, whatever days it asked about.
//!
//! Such a filter is settled by the choice of files (every row of a file
//! has its partition's date), so it is not evaluated again per row, and a
//! statement that reads `date` only to filter on it never has the column
//! built for its rows.

use std::sync::Arc;

use arrow::array::{Array, BooleanArray, RecordBatch, StringArray};
use arrow::datatypes::{Field, Schema, SchemaRef};
use async_trait::async_trait;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{Column, DFSchema};
use datafusion::datasource::TableType;
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_plan::ExecutionPlan;
use deltalake::DeltaTable;

/// The partition column a scan prunes the tenant's files by.
const DATE: &str = "date";

#[derive(Debug)]
pub(crate) struct TenantScan {
    table: DeltaTable,
    /// The tenant's files: path within the table, and date.
    files: Vec<(String, String)>,
    /// The provider over all of the tenant's files (its schema, and how it
    /// takes filters).
    all: Arc<dyn TableProvider>,
}

impl TenantScan {
    pub async fn new(table: DeltaTable, files: Vec<(String, String)>) -> Result<Self> {
        let all = table
            .table_provider()
            .with_file_paths(files.iter().map(|(path, _)| path.clone()))
            .await?;
        Ok(Self { table, files, all })
    }

    /// The paths of the files whose date every filter on `date` alone
    /// keeps (filters on other columns are left to the inner scan).
    fn files_matching(&self, state: &dyn Session, filters: &[Expr]) -> Result<Vec<String>> {
        let on_date: Vec<&Expr> = filters.iter().filter(|f| on_date_alone(f)).collect();
        if on_date.is_empty() {
            return Ok(self.files.iter().map(|(path, _)| path.clone()).collect());
        }
        // One row per file, its date as the table's column type.
        let field = self.all.schema().field_with_name(DATE)?.clone();
        let dates = StringArray::from_iter_values(self.files.iter().map(|(_, date)| date));
        let dates = arrow::compute::cast(&dates, field.data_type())?;
        let schema = Arc::new(Schema::new(vec![Field::new(
            DATE,
            field.data_type().clone(),
            true,
        )]));
        let batch = RecordBatch::try_new(schema.clone(), vec![dates])?;
        let df_schema = DFSchema::try_from(schema.as_ref().clone())?;
        let mut keep = BooleanArray::from(vec![true; self.files.len()]);
        for filter in on_date {
            let filter = unqualified(filter.clone())?;
            let expr = state.create_physical_expr(filter, &df_schema)?;
            let verdict = expr.evaluate(&batch)?.into_array(batch.num_rows())?;
            // The filter is settled here alone (exact), so one that is not
            // a yes or no per file fails the statement, not a file's rows.
            let Some(verdict) = verdict.as_any().downcast_ref::<BooleanArray>() else {
                return Err(DataFusionError::Plan(format!(
                    "a filter on {DATE} that is not a condition: {}",
                    verdict.data_type()
                )));
            };
            keep = arrow::compute::and_kleene(&keep, verdict)?;
        }
        Ok(self
            .files
            .iter()
            .enumerate()
            // As a filter does with a row: null is not true.
            .filter(|(i, _)| keep.is_valid(*i) && keep.value(*i))
            .map(|(_, (path, _))| path.clone())
            .collect())
    }
}

/// Whether `filter` reads the `date` column and no other, and gives the
/// same answer for the same date every time (so one answer per file is
/// every row's answer).
fn on_date_alone(filter: &Expr) -> bool {
    let columns = filter.column_refs();
    !columns.is_empty() && columns.iter().all(|c| c.name == DATE) && !filter.is_volatile()
}

/// `expr` with its columns' table names left out, as the one-column
/// schema of partition values has none.
fn unqualified(expr: Expr) -> Result<Expr> {
    expr.transform_up(|e| match e {
        Expr::Column(c) => Ok(Transformed::yes(Expr::Column(Column::new_unqualified(
            c.name,
        )))),
        other => Ok(Transformed::no(other)),
    })
    .map(|t| t.data)
}

#[async_trait]
impl TableProvider for TenantScan {
    fn schema(&self) -> SchemaRef {
        self.all.schema()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        let inner = self.all.supports_filters_pushdown(filters)?;
        // A filter on the date chooses the files, exactly.
        Ok(filters
            .iter()
            .zip(inner)
            .map(|(filter, inner)| {
                if on_date_alone(filter) {
                    TableProviderFilterPushDown::Exact
                } else {
                    inner
                }
            })
            .collect())
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let files = self.files_matching(state, filters)?;
        // The filters on the date are settled; the inner scan gets the rest.
        let rest: Vec<Expr> = filters
            .iter()
            .filter(|f| !on_date_alone(f))
            .cloned()
            .collect();
        if files.len() == self.files.len() {
            return self.all.scan(state, projection, &rest, limit).await;
        }
        let chosen = self.table.table_provider().with_file_paths(files).await?;
        chosen.scan(state, projection, &rest, limit).await
    }
}
