#!/usr/bin/env python3
"""DuckDB answering Candor's activity KPI on the same Parquet files.

The baseline of `candor-bench-query`. Each shape is the statement of
`query/src/kpi.rs` written in DuckDB's SQL: partitions pruned on the hive
`date` column (the UTC days either side of the range), each slot's local day
in the tenant's time zone, activity summed per group, ordered by the keys,
`LIMIT limit + 1` (Candor asks for one row more to know whether a next page
exists). One connection, `--warmup` runs then `--requests` timed runs per
shape, one after another; a run is `execute` plus `fetchall`, so the answer
is in Python objects when the clock stops.

Prints one JSON object: p50 and p95 per shape in milliseconds, and the rows
of the last run (`[keys..., tracked_s, active_s, idle_s]`, at most `limit`)
so the caller can check that both engines gave the same answer.

    python3 benchmarks/duckdb_kpi.py --root LAKE --tenant bench \
        --time-zone Europe/Berlin \
        --shape a:department,day:2026-10-29:2026-11-27:1000
"""

import argparse
import datetime
import json
import re
import sys
import time

import duckdb

COLUMNS = {"employee": "subject", "department": "department", "day": "day", "week": "week"}


def statement(glob, time_zone, group_by, first, last, limit):
    keys = ", ".join(COLUMNS[g] for g in group_by)
    day = datetime.date.fromisoformat
    first_partition = day(first) - datetime.timedelta(days=1)
    last_partition = day(last) + datetime.timedelta(days=1)
    # The local day is a DATE until the page is cut, as in Candor, in
    # DuckDB's own way (ICU's time zone conversion per row).
    return f"""
        SELECT {keys}, sum(tracked_s) AS tracked_s, sum(active_s) AS active_s, sum(idle_s) AS idle_s
        FROM (
          SELECT subject, department, tracked_s, active_s, idle_s, day,
                 CAST(date_trunc('week', day) AS DATE) AS week
          FROM (
            SELECT subject, department, tracked_s, active_s, idle_s,
                   CAST(timezone('{time_zone}', slot_start) AS DATE) AS day
            FROM read_parquet('{glob}', hive_partitioning = true,
                              hive_types = {{'date': VARCHAR}})
            WHERE date >= '{first_partition}' AND date <= '{last_partition}'
          )
          WHERE day >= DATE '{first}' AND day <= DATE '{last}'
        )
        GROUP BY {keys}
        ORDER BY {keys}
        LIMIT {limit + 1}"""


def percentile(values, p):
    ordered = sorted(values)
    return ordered[round((len(ordered) - 1) * p)]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", required=True, help="the lake's root directory")
    parser.add_argument("--tenant", required=True)
    parser.add_argument("--time-zone", required=True)
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument(
        "--shape",
        action="append",
        required=True,
        help="name:group_by:from:to:limit, e.g. a:department,day:2026-10-29:2026-11-27:1000",
    )
    args = parser.parse_args()
    # Both go inside a statement: refuse anything but plain names.
    if not re.fullmatch(r"[A-Za-z0-9_+\-/]+", args.time_zone):
        sys.exit(f"bad time zone {args.time_zone!r}")
    if not re.fullmatch(r"[a-z0-9_\-]+", args.tenant) or "'" in args.root:
        sys.exit("bad tenant or root")
    glob = f"{args.root.rstrip('/')}/activity/tenant={args.tenant}/*/*.parquet"

    con = duckdb.connect()
    out = {
        "duckdb": duckdb.__version__,
        "threads": con.execute("SELECT current_setting('threads')").fetchone()[0],
        "shapes": [],
    }
    for spec in args.shape:
        name, group_by, first, last, limit = spec.split(":")
        group_by, limit = group_by.split(","), int(limit)
        if any(g not in COLUMNS for g in group_by):
            sys.exit(f"bad group_by in {spec!r}")
        for d in (first, last):
            datetime.date.fromisoformat(d)
        sql = statement(glob, args.time_zone, group_by, first, last, limit)
        for _ in range(args.warmup):
            con.execute(sql).fetchall()
        latencies, rows = [], []
        for _ in range(args.requests):
            started = time.perf_counter()
            rows = con.execute(sql).fetchall()
            latencies.append((time.perf_counter() - started) * 1000.0)
        out["shapes"].append(
            {
                "name": name,
                "p50_ms": percentile(latencies, 0.5),
                "p95_ms": percentile(latencies, 0.95),
                "rows": [
                    [*(str(k) if k is not None else None for k in r[:-3]), *map(int, r[-3:])]
                    for r in rows[:limit]
                ],
            }
        )
    json.dump(out, sys.stdout)
    print()


if __name__ == "__main__":
    main()
