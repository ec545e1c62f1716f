"""Reads a Candor lake's Delta tables with two engines that are not Candor's:
the PyPI `deltalake` package (delta-rs's Python reader, its own release of
delta-rs and DataFusion) and DuckDB with its `delta` extension (from the
PyPI package `duckdb-ext-delta`, loaded from its file: no download).

    python3 read_delta.py <lake directory> <dataset>:<measure> ...

prints, for each engine and dataset, [tenant, rows, sum of measure] per
tenant, as one JSON object. Exits 2 with the pip command when a package is
missing.
"""

import glob
import json
import os
import sys

try:
    import deltalake
    import duckdb
except ImportError as missing:
    print(
        f"{missing}: pip install 'deltalake==1.6.6' 'duckdb==1.4.4' 'duckdb-ext-delta==1.4.4.20260205'",
        file=sys.stderr,
    )
    sys.exit(2)


def delta_extension():
    """The delta extension's file, for this DuckDB's version."""
    pattern = os.path.join(
        "duckdb_ext", "extensions", f"v{duckdb.__version__}", "*", "delta.duckdb_extension"
    )
    for folder in sys.path:
        found = glob.glob(os.path.join(folder, pattern))
        if found:
            return found[0]
    print(
        f"no delta extension for duckdb {duckdb.__version__}: pip install 'duckdb-ext-delta==1.4.4.20260205'",
        file=sys.stderr,
    )
    sys.exit(2)


def query(dataset, measure):
    return (
        f"SELECT CAST(tenant AS VARCHAR) AS tenant, COUNT(*) AS row_count, SUM({measure}) AS total "
        f"FROM {dataset} GROUP BY tenant ORDER BY tenant"
    )


def with_deltalake(lake, dataset, measure):
    table = deltalake.DeltaTable(os.path.join(lake, dataset))
    batches = deltalake.QueryBuilder().register(dataset, table).execute(query(dataset, measure))
    rows = []
    for batch in batches:
        columns = [batch.column(i).to_pylist() for i in range(batch.num_columns)]
        rows.extend([list(r) for r in zip(*columns)])
    return rows


def with_duckdb(con, lake, dataset, measure):
    path = os.path.join(lake, dataset)
    sql = query(dataset, measure).replace(f"FROM {dataset}", f"FROM delta_scan('{path}')")
    return [list(r) for r in con.execute(sql).fetchall()]


def main():
    lake, wanted = sys.argv[1], [arg.split(":") for arg in sys.argv[2:]]
    con = duckdb.connect()
    con.execute(f"LOAD '{delta_extension()}'")
    out = {"deltalake": {}, "duckdb": {}}
    for dataset, measure in wanted:
        out["deltalake"][dataset] = with_deltalake(lake, dataset, measure)
        out["duckdb"][dataset] = with_duckdb(con, lake, dataset, measure)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
