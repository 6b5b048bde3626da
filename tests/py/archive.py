"""Independent readers of vigil's Parquet archive, for the Rust integration tests.

Every command prints one JSON document on stdout. DuckDB and pyarrow read the files; nothing here
imports vigil code, so the tests prove the archive with readers vigil did not write.
"""
import glob
import json
import os
import sys

import duckdb
import pyarrow.dataset as ds
import pyarrow.parquet as pq


def jsonable(v):
    if hasattr(v, "timestamp"):
        return int(round(v.timestamp() * 1000))
    if hasattr(v, "isoformat"):
        return v.isoformat()
    if isinstance(v, (bytes, bytearray)):
        return v.hex()
    if isinstance(v, list):
        return [jsonable(x) for x in v]
    return v


def files(root, table):
    return sorted(glob.glob(os.path.join(root, table, "**", "*.parquet"), recursive=True))


def duckdb_rows(root, table, order):
    pattern = os.path.join(root, table, "**", "*.parquet")
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    rel = con.sql(
        f"SELECT * FROM read_parquet('{pattern}', hive_partitioning = true) ORDER BY {order}"
    )
    cols = rel.columns
    return [dict(zip(cols, (jsonable(v) for v in row))) for row in rel.fetchall()]


def pyarrow_rows(root, table, order):
    dataset = ds.dataset(os.path.join(root, table), format="parquet", partitioning="hive")
    t = dataset.to_table().sort_by([(order, "ascending")])
    return [{k: jsonable(v) for k, v in row.items()} for row in t.to_pylist()]


def main():
    cmd, root = sys.argv[1], sys.argv[2]
    if cmd == "rows":
        table, order = sys.argv[3], sys.argv[4]
        out = {"duckdb": duckdb_rows(root, table, order), "pyarrow": pyarrow_rows(root, table, order)}
    elif cmd == "readme-sql":
        # Every statement of every ```sql block of a README, run with `root` as the working directory
        # (the README's paths are relative: vigil-demo/...); its rows counted, an error fails the run.
        import re
        os.chdir(root)
        text = open(sys.argv[3]).read()
        out = {"statements": []}
        for block in re.findall(r"```sql\n(.*?)```", text, re.S):
            for stmt in block.split(";"):
                code = [l for l in stmt.splitlines() if l.strip() and not l.strip().startswith("--")]
                if not code:
                    continue
                rows = duckdb.sql(stmt).fetchall()
                out["statements"].append({"sql": stmt.strip(), "rows": len(rows)})
    elif cmd == "open-all":
        # Open every file under a final name; any partial file would fail here.
        out = {"files": 0, "rows": 0, "tmp": 0}
        for table in ("events", "findings", "control", "dead-letters"):
            for f in files(root, table):
                out["files"] += 1
                out["rows"] += pq.ParquetFile(f).metadata.num_rows
            out["tmp"] += len(glob.glob(os.path.join(root, table, "**", ".*.tmp"), recursive=True))
    elif cmd == "event-counts":
        pattern = os.path.join(root, "events", "**", "*.parquet")
        if not files(root, "events"):
            out = {"rows": 0, "distinct": 0}
        else:
            n, d = duckdb.sql(
                f"SELECT count(*), count(DISTINCT event_id) FROM read_parquet('{pattern}', hive_partitioning = true)"
            ).fetchall()[0]
            out = {"rows": n, "distinct": d}
    elif cmd == "compression":
        f = files(root, sys.argv[3])[0]
        md = pq.ParquetFile(f).metadata
        rg = md.row_group(0)
        out = {
            rg.column(i).path_in_schema: {
                "compression": rg.column(i).compression,
                "encodings": list(rg.column(i).encodings),
            }
            for i in range(rg.num_columns)
        }
    else:
        raise SystemExit(f"unknown command {cmd}")
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
