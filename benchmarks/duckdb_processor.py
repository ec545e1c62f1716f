#!/usr/bin/env python3
"""DuckDB baseline for `candor-bench-processor`.

`run`: from the events as agents sent them (`<input>/<dataset>.parquet`,
written by the benchmark from the very batches it posted to ingest), compute
the processor's lake tables and write them as hive-partitioned Parquet
(`<dataset>/tenant=<id>/date=<YYYY-MM-DD>/`, zstd level 3, as the processor
writes), then fsync them. Prints one JSON line: wall and CPU seconds of that
work (`time.perf_counter`, `time.process_time`, which counts every DuckDB
thread), the fsync part, the machine's busy CPU seconds meanwhile, files and
rows written.

The same aggregates as `processor/src/aggregate.rs`:
- subject: hex HMAC-SHA256 of the employee id under the tenant's pseudonym
  key, built from DuckDB's sha256 (HMAC = H(K^opad || H(K^ipad || m))),
  computed once per distinct employee, so subjects equal the processor's;
- activity: tracked/active/idle seconds and samples per subject and
  15-minute slot;
- app_usage: seconds per subject, slot, app and host, with the tenant's
  category (the tenants' rules, in a CASE);
- gps: points and haversine distance per subject and slot, and the centroid
  rounded to 0.01 degrees. As the processor does, a segment joins two
  consecutive points of a device, counted in the slot where it ends: any
  two of one batch, and across batches when the later batch's point comes
  after the earlier one's by at most 10 minutes (the route carried from
  one upload to the next);
- attendance: events, first and last time per subject, slot and kind.
Department is NULL on both sides (no directory is loaded).

`verify`: untimed; compares the processor's lake with DuckDB's, summed per
key (the processor writes one file per flush, so a key may have several
rows), and prints the mismatches per dataset as JSON.
"""

import argparse
import json
import os
import time

import duckdb

SLOT_MS = 15 * 60 * 1000
DATASETS = ["activity", "app_usage", "gps", "attendance"]


def machine_busy_seconds():
    with open("/proc/stat") as f:
        v = [float(x) for x in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal
    return (v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / 100.0


def sql_str(s):
    return "'" + s.replace("'", "''") + "'"


def hmac_pads(key_hex):
    key = bytes.fromhex(key_hex) + bytes(32)  # padded to SHA-256's 64-byte block
    return bytes(b ^ 0x36 for b in key).hex(), bytes(b ^ 0x5C for b in key).hex()


def category_sql(productive, unproductive):
    """AppCategories::of: host rules first (a host covers its subdomains),
    then application names without case."""

    def host_match(entries):
        if not entries:
            return "false"
        return " OR ".join(
            f"host = {sql_str(e)} OR ends_with(host, {sql_str('.' + e)})" for e in entries
        )

    def name_match(entries):
        if not entries:
            return "false"
        return f"lower(app) IN ({', '.join(sql_str(e.lower()) for e in entries)})"

    return f"""CASE
        WHEN host IS NOT NULL AND ({host_match(productive)}) THEN 'productive'
        WHEN host IS NOT NULL AND ({host_match(unproductive)}) THEN 'unproductive'
        WHEN {name_match(productive)} THEN 'productive'
        WHEN {name_match(unproductive)} THEN 'unproductive'
        ELSE 'neutral' END"""


def queries(input_dir, conf):
    src = {d: sql_str(os.path.join(input_dir, f"{d}.parquet")) for d in DATASETS}

    def with_subject(agg, measures):
        # The HMAC once per distinct employee, joined to the aggregated rows.
        return f"""
        WITH agg AS ({agg}),
        subjects AS (
            SELECT e.tenant, e.employee,
                   sha256(k.opad || unhex(sha256(k.ipad || encode(e.employee)))) AS subject
            FROM (SELECT DISTINCT tenant, employee FROM agg) e JOIN pseudonym_keys k USING (tenant))
        SELECT s.subject, NULL::VARCHAR AS department, epoch_ms(agg.slot) AS slot_start,
               {measures},
               agg.tenant, strftime(epoch_ms(agg.slot), '%Y-%m-%d') AS date
        FROM agg JOIN subjects s USING (tenant, employee)"""

    return {
        "activity": with_subject(
            f"""SELECT tenant, employee, start_ms - start_ms % {SLOT_MS} AS slot,
                   sum(active_s + idle_s)::BIGINT AS tracked_s, sum(active_s)::BIGINT AS active_s,
                   sum(idle_s)::BIGINT AS idle_s, count(*) AS samples
            FROM read_parquet({src['activity']}) GROUP BY ALL""",
            "tracked_s, active_s, idle_s, samples",
        ),
        "app_usage": with_subject(
            f"""SELECT tenant, employee, start_ms - start_ms % {SLOT_MS} AS slot, app, host,
                   sum(duration_s)::BIGINT AS seconds
            FROM read_parquet({src['app_usage']}) GROUP BY ALL""",
            f"app, host, {category_sql(conf['productive'], conf['unproductive'])} AS category, seconds",
        ),
        "gps": with_subject(
            f"""SELECT tenant, employee, at_ms - at_ms % {SLOT_MS} AS slot, count(*) AS points,
                   coalesce(sum(2 * 6371008.8 * asin(sqrt(
                       pow(sin((radians(lat) - radians(plat)) / 2), 2)
                       + cos(radians(plat)) * cos(radians(lat)) * pow(sin(radians(lon - plon) / 2), 2)))), 0)
                     AS distance_m,
                   avg(lat) AS lat_c, avg(lon) AS lon_c
            FROM (SELECT tenant, employee, at_ms, lat, lon,
                         CASE WHEN pbatch = batch OR (at_ms > pat AND at_ms - pat <= 600000)
                              THEN plat END AS plat,
                         plon
                  FROM (SELECT tenant, employee, batch, at_ms, lat, lon,
                               lag(lat) OVER w AS plat, lag(lon) OVER w AS plon,
                               lag(at_ms) OVER w AS pat, lag(batch) OVER w AS pbatch
                        FROM read_parquet({src['gps']})
                        WINDOW w AS (PARTITION BY tenant, device ORDER BY at_ms, batch)))
            GROUP BY ALL""",
            "points, distance_m, printf('%.2f,%.2f', lat_c, lon_c) AS cell",
        ),
        "attendance": with_subject(
            f"""SELECT tenant, employee, at_ms - at_ms % {SLOT_MS} AS slot, kind,
                   count(*) AS events, min(at_ms) AS first_ms, max(at_ms) AS last_ms
            FROM read_parquet({src['attendance']}) GROUP BY ALL""",
            "kind, events, epoch_ms(first_ms) AS first_at, epoch_ms(last_ms) AS last_at",
        ),
    }


def fsync_tree(root):
    files = 0
    for dirpath, _, names in os.walk(root, topdown=False):
        for name in names:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            os.fsync(fd)
            os.close(fd)
            files += 1
        fd = os.open(dirpath, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
    return files


def run(args):
    with open(os.path.join(args.input, "tenants.json")) as f:
        conf = json.load(f)
    busy0, cpu0, wall0 = machine_busy_seconds(), time.process_time(), time.perf_counter()
    con = duckdb.connect()
    if args.threads:
        con.execute(f"SET threads = {int(args.threads)}")
    threads = con.execute("SELECT current_setting('threads')").fetchall()[0][0]
    rows = [
        f"({sql_str(t['tenant'])}, unhex('{ipad}'), unhex('{opad}'))"
        for t in conf["tenants"]
        for ipad, opad in [hmac_pads(t["pseudonym_key"])]
    ]
    con.execute(
        "CREATE TEMP TABLE pseudonym_keys AS SELECT * FROM (VALUES "
        + ", ".join(rows)
        + ") t(tenant, ipad, opad)"
    )
    os.makedirs(args.output, exist_ok=True)
    written = {}
    for dataset, query in queries(args.input, conf).items():
        out = os.path.join(args.output, dataset)
        n = con.execute(
            f"COPY ({query}) TO {sql_str(out)} "
            "(FORMAT parquet, COMPRESSION zstd, COMPRESSION_LEVEL 3, PARTITION_BY (tenant, date))"
        ).fetchall()[0][0]
        written[dataset] = n
    con.close()
    fsync0 = time.perf_counter()
    files = fsync_tree(args.output)
    end = time.perf_counter()
    print(
        json.dumps(
            {
                "wall_s": end - wall0,
                "cpu_s": time.process_time() - cpu0,
                "fsync_s": end - fsync0,
                "machine_busy_s": machine_busy_seconds() - busy0,
                "threads": threads,
                "files": files,
                "rows": sum(written.values()),
                "rows_per_dataset": written,
                "duckdb": duckdb.__version__,
            }
        )
    )


# Per dataset: key columns, and (measure, how rows of one key combine).
VERIFY = {
    "activity": (
        ["subject", "slot"],
        [("tracked_s", "sum"), ("active_s", "sum"), ("idle_s", "sum"), ("samples", "sum")],
    ),
    "app_usage": (
        ["subject", "slot", "app", "coalesce(host, '')"],
        [("seconds", "sum"), ("category", "min"), ("category", "max")],
    ),
    "gps": (["subject", "slot"], [("points", "sum"), ("distance_m", "sum")]),
    "attendance": (
        ["subject", "slot", "kind"],
        [("events", "sum"), ("epoch_ms(first_at)", "min"), ("epoch_ms(last_at)", "max")],
    ),
}


def verify(args):
    con = duckdb.connect()
    report = {"mismatched": 0}
    for dataset, (keys, measures) in VERIFY.items():
        sides = {}
        for side, root in (("p", args.lake), ("d", args.duckdb)):
            glob = sql_str(os.path.join(root, dataset, "*", "*", "*.parquet"))
            key_cols = ", ".join(
                f"{k.replace('slot', 'epoch_ms(slot_start)')} AS k{i}" for i, k in enumerate(keys)
            )
            vals = ", ".join(f"{agg}({m}) AS m{i}" for i, (m, agg) in enumerate(measures))
            sides[side] = (
                f"SELECT tenant::VARCHAR AS tenant, date::VARCHAR AS date, {key_cols}, {vals}, "
                f"count(*) AS file_rows "
                f"FROM read_parquet({glob}, hive_partitioning = true) GROUP BY ALL"
            )
        on = " AND ".join(
            ["p.tenant = d.tenant", "p.date = d.date"] + [f"p.k{i} = d.k{i}" for i in range(len(keys))]
        )

        def differs(i, m):
            if m == "distance_m":
                return f"abs(p.m{i} - d.m{i}) > 1e-6 * greatest(abs(d.m{i}), 1)"
            return f"p.m{i} IS DISTINCT FROM d.m{i}"

        diff = " OR ".join(differs(i, m) for i, (m, _) in enumerate(measures))
        row = con.execute(
            f"""SELECT count(*) FILTER (WHERE p.k0 IS NULL OR d.k0 IS NULL OR {diff}),
                       count(p.k0), count(d.k0), sum(p.file_rows), sum(d.file_rows),
                       sum(p.m0), sum(d.m0)
                FROM ({sides['p']}) p FULL OUTER JOIN ({sides['d']}) d ON {on}"""
        ).fetchall()[0]
        report[dataset] = {
            "mismatched_keys": row[0],
            "processor_keys": row[1],
            "duckdb_keys": row[2],
            "processor_rows": row[3],
            "duckdb_rows": row[4],
            f"processor_{measures[0][0]}": row[5],
            f"duckdb_{measures[0][0]}": row[6],
        }
        report["mismatched"] += row[0]
    print(json.dumps(report, default=str))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="time DuckDB computing the lake tables")
    r.add_argument("--input", required=True)
    r.add_argument("--output", required=True)
    r.add_argument("--threads", type=int, default=0, help="0: DuckDB's default")
    v = sub.add_parser("verify", help="compare the processor's lake with DuckDB's")
    v.add_argument("--lake", required=True)
    v.add_argument("--duckdb", required=True)
    args = parser.parse_args()
    run(args) if args.command == "run" else verify(args)


if __name__ == "__main__":
    main()
