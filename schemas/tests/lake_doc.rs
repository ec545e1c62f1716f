//! LAKE.md, the lake's documentation for readers outside Rust, against the
//! code: every dataset's table lists exactly its lake columns, in order,
//! with their types and nullability, and the constants it quotes are the
//! code's.

use arrow::datatypes::{DataType, TimeUnit};
use candor_schemas::Dataset;
use candor_schemas::batch::haversine_m;
use candor_schemas::datasets::{MEMBERS_SUFFIX, MERGED_PREFIX, SLOT_MS};

fn lake_md() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../LAKE.md");
    std::fs::read_to_string(path).expect("LAKE.md at the repository root")
}

/// The rows of the first table after `heading`: (column, type, null).
fn table_after(doc: &str, heading: &str) -> Vec<(String, String, String)> {
    let start = doc
        .lines()
        .position(|l| l.trim() == heading)
        .unwrap_or_else(|| panic!("LAKE.md has no heading {heading:?}"));
    let rows: Vec<Vec<String>> = doc
        .lines()
        .skip(start + 1)
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .map(|l| {
            l.trim_matches('|')
                .split('|')
                .map(|c| c.trim().to_string())
                .collect()
        })
        .collect();
    assert!(rows.len() > 2, "{heading}: no table");
    assert_eq!(
        rows[0][..3],
        ["column", "type", "null"],
        "{heading}: header"
    );
    rows[2..]
        .iter()
        .map(|r| {
            (
                r[0].trim_matches('`').to_string(),
                r[1].clone(),
                r[2].clone(),
            )
        })
        .collect()
}

/// How LAKE.md names an Arrow type (before any Parquet detail in brackets).
fn doc_type(ty: &DataType) -> &'static str {
    match ty {
        DataType::Utf8 => "string",
        DataType::Int64 => "int64",
        DataType::Float64 => "double",
        DataType::Timestamp(TimeUnit::Millisecond, Some(tz)) if tz.as_ref() == "UTC" => {
            "timestamp ms UTC"
        }
        other => panic!("LAKE.md has no name for {other}; add one"),
    }
}

#[test]
fn every_dataset_table_lists_exactly_its_columns() {
    let doc = lake_md();
    for dataset in Dataset::ALL {
        let heading = format!("### `{}`", dataset.name());
        let documented = table_after(&doc, &heading);
        let schema = dataset.lake_schema();
        let code: Vec<(String, String, String)> = schema
            .fields()
            .iter()
            .map(|f| {
                let null = if f.is_nullable() { "yes" } else { "no" };
                (
                    f.name().clone(),
                    doc_type(f.data_type()).to_string(),
                    null.to_string(),
                )
            })
            .collect();
        let documented: Vec<(String, String, String)> = documented
            .into_iter()
            .map(|(name, ty, null)| {
                let ty = ty.split(" (").next().unwrap().to_string();
                (name, ty, null)
            })
            .collect();
        assert_eq!(documented, code, "{heading}: LAKE.md against lake_schema()");
    }
    // The columns every dataset starts with.
    let common = table_after(&doc, "Every dataset starts with the same three columns:");
    let first: Vec<String> = Dataset::Activity.lake_schema().fields()[..3]
        .iter()
        .map(|f| f.name().clone())
        .collect();
    let names: Vec<String> = common.into_iter().map(|(name, _, _)| name).collect();
    assert_eq!(names, first);
}

#[test]
fn the_constants_it_quotes_are_the_codes() {
    let doc = lake_md();
    // One degree of a great circle is radius * pi / 180.
    let radius = haversine_m((0.0, 0.0), (0.0, 1.0)) / 1f64.to_radians();
    assert!((radius - 6_371_008.8).abs() < 1e-6, "{radius}");
    let quoted = [
        "6,371,008.8 m".to_string(),
        format!("{SLOT_MS}")
            .as_bytes()
            .rchunks(3)
            .rev()
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect::<Vec<_>>()
            .join(",")
            + " ms",
        format!("`{MERGED_PREFIX}<id>{MEMBERS_SUFFIX}`"),
        format!("`{MERGED_PREFIX}<id>.parquet`"),
    ];
    for text in quoted {
        assert!(doc.contains(&text), "LAKE.md does not say {text:?}");
    }
    for dataset in Dataset::ALL {
        assert!(
            doc.contains(&format!("### `{}`", dataset.name())),
            "{}",
            dataset.name()
        );
    }
}
