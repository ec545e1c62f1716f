//! Where a dataset's rows live inside one lake, the single place that knows
//! it: the processor writes these paths, maintenance lists and deletes
//! them, and the query node roots each tenant's tables at them.
//!
//! A dataset's rows sit under `<dataset>/tenant=<id>/date=<YYYY-MM-DD>/`
//! (hive partitions, so any engine reading the folders sees `tenant` and
//! `date` as columns). `date` is the UTC date of the rows' slots.

use candor_schemas::TenantId;
use candor_schemas::datasets::Dataset;
use object_store::path::Path as ObjectPath;

/// One partition of the lake: a dataset's rows of one tenant and one date.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct PartitionKey {
    pub dataset: Dataset,
    pub tenant: TenantId,
    /// UTC date of the rows' slots, `YYYY-MM-DD`.
    pub date: String,
}

impl PartitionKey {
    /// The partition's folder.
    pub fn folder(&self) -> ObjectPath {
        tenant_folder(self.dataset, &self.tenant).join(date_folder(&self.date))
    }

    /// The object `file_name` as its dataset's table names it: relative to
    /// the table's root, the dataset's folder.
    pub fn path_in_table(&self, file_name: &str) -> String {
        format!(
            "tenant={}/{}/{file_name}",
            self.tenant,
            date_folder(&self.date)
        )
    }

    /// The object `file_name` in the partition's folder.
    pub fn object_path(&self, file_name: &str) -> ObjectPath {
        self.folder().join(file_name)
    }
}

/// The folder of every partition of one tenant in one dataset:
/// `<dataset>/tenant=<id>`. Nothing of another tenant is under it.
pub fn tenant_folder(dataset: Dataset, tenant: &TenantId) -> ObjectPath {
    ObjectPath::from(dataset.name()).join(format!("tenant={tenant}"))
}

/// A date partition's folder name within a tenant's folder.
pub fn date_folder(date: &str) -> String {
    format!("date={date}")
}

/// The date a partition folder's name (`date=YYYY-MM-DD`) stands for.
pub fn parse_date_folder(name: &str) -> Option<chrono::NaiveDate> {
    name.strip_prefix("date=")?.parse().ok()
}

/// The folder a query node roots one tenant's table of `dataset` at, under
/// a lake's root URL (`file:///…` or `s3://bucket/prefix`), with the
/// trailing slash a listing needs to treat it as a folder.
pub fn tenant_table_url(lake_root: &str, dataset: Dataset, tenant: &TenantId) -> String {
    format!(
        "{}/{}/",
        lake_root.trim_end_matches('/'),
        tenant_folder(dataset, tenant)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_layout_every_crate_reads() {
        let tenant = TenantId::new("acme").unwrap();
        let key = PartitionKey {
            dataset: Dataset::Activity,
            tenant: tenant.clone(),
            date: "2026-03-01".into(),
        };
        assert_eq!(
            key.object_path("0-41.parquet").as_ref(),
            "activity/tenant=acme/date=2026-03-01/0-41.parquet"
        );
        assert_eq!(
            format!("activity/{}", key.path_in_table("0-41.parquet")),
            key.object_path("0-41.parquet").as_ref()
        );
        assert_eq!(
            tenant_table_url("s3://lake/prod/", Dataset::Gps, &tenant),
            "s3://lake/prod/gps/tenant=acme/"
        );
        assert_eq!(
            parse_date_folder("date=2026-03-01"),
            chrono::NaiveDate::from_ymd_opt(2026, 3, 1)
        );
        assert_eq!(parse_date_folder("tenant=acme"), None);
    }
}
