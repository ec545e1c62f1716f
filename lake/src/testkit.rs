//! For tests that read the lake with engines other than Candor's (the PyPI
//! `deltalake` package and DuckDB's delta extension, through
//! `lake/tests/read_delta.py`). Not used by the product.

/// What the external engines read in the local lake at `dir`: per engine
/// (`deltalake`, `duckdb`) and dataset, `[tenant, rows, sum of measure]`
/// per tenant, for each `(dataset, measure)` wanted. Panics when the
/// script fails: a test has nothing to go on without it.
pub fn external_sums(dir: &std::path::Path, wanted: &[(&str, &str)]) -> serde_json::Value {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/read_delta.py");
    let output = std::process::Command::new("python3")
        .arg(&script)
        .arg(dir)
        .args(
            wanted
                .iter()
                .map(|(dataset, measure)| format!("{dataset}:{measure}")),
        )
        .output()
        .expect("python3 runs");
    assert!(
        output.status.success(),
        "{} failed: {}",
        script.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("the script prints JSON")
}
