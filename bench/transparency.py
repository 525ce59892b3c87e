"""`make bench-log`: the transparency log at one million leaves in Postgres: what a proof costs as the log grows.

Seeds a fresh Postgres database in steps (1,000, 10,000, 100,000, 1,000,000 leaves) by COPY, with the hashes of
the complete subtrees computed here as appends compute them. At each size: inclusion proofs for random leaves through
the log service (latency, the nodes each reads, and the rows Postgres itself reports fetched), consistency proofs,
and single appends. At the last size, proofs through `GET /verify/proof/{hash}` of a running `gateway serve`.
Postgres comes from BENCH_POSTGRES_URL (default: the local server, user postgres). Markdown goes to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import httpx
from usage import ADMIN_URL, admin  # bench/usage.py: the same admin connection to the local Postgres

from gateway.db.engine import Database
from gateway.transparency.compact import CompactRange
from gateway.transparency.hashing import leaf_hash
from gateway.transparency.log import TransparencyLog, canonical_json
from gateway.transparency.proof import NodeId, inclusion_ranges, nodes_needed, perfect_subtrees
from gateway.transparency.signer import NoteSigner

GATEWAY = str(Path(sys.executable).parent / "gateway")
SIZES = (1_000, 10_000, 100_000, 1_000_000)
# Postgres' own counts of what was read: scans and rows fetched, for the leaves and nodes tables, and sequential
# scans of the one-row tree head (a scan of one row is how Postgres reads a table that small).
COUNTERS = """
SELECT coalesce(sum(seq_scan) FILTER (WHERE relname <> 'transparency_tree_heads'), 0),
       coalesce(sum(idx_scan), 0),
       coalesce(sum(idx_tup_fetch), 0),
       coalesce(sum(seq_tup_read) FILTER (WHERE relname = 'transparency_tree_heads'), 0)
FROM pg_stat_user_tables
WHERE relname IN ('transparency_leaves', 'transparency_nodes', 'transparency_tree_heads')
"""


def event(index: int) -> dict[str, object]:
    return {"type": "bench", "n": index, "content_sha256": f"{index:064x}"}


class Seeder:
    """Grows the log by COPY, keeping the compact range as the appends would."""

    def __init__(self, database_url: str) -> None:
        self.database_url = database_url
        self.tree = CompactRange()
        self.hashes: list[bytes] = []

    async def grow_to(self, size: int) -> float:
        began = time.perf_counter()
        connection = await asyncpg.connect(self.database_url)
        try:
            head = await connection.fetchrow("SELECT tree_size, compact_range FROM transparency_tree_heads")
            assert head is not None
            self.tree = CompactRange.from_bytes(head["tree_size"], head["compact_range"])
            now = datetime.now(UTC)
            while self.tree.size < size:
                chunk_end = min(size, self.tree.size + 100_000)
                leaves, nodes = [], []
                for index in range(self.tree.size, chunk_end):
                    content = canonical_json(event(index))
                    hashed = leaf_hash(content)
                    self.hashes.append(hashed)
                    leaves.append((index, hashed, f"ocs_{index % 97:04d}", "bench", content, now))
                    nodes.extend((n.level, n.index, h) for n, h in self.tree.append(hashed))
                await connection.copy_records_to_table(
                    "transparency_leaves",
                    records=leaves,
                    columns=["leaf_index", "leaf_hash", "agent_id", "kind", "content", "created_at"],
                )
                await connection.copy_records_to_table(
                    "transparency_nodes", records=nodes, columns=["level", "node_index", "hash"]
                )
            await connection.execute(
                "UPDATE transparency_tree_heads SET tree_size = $1, root_hash = $2, compact_range = $3",
                self.tree.size,
                self.tree.root(),
                self.tree.to_bytes(),
            )
            await connection.execute("VACUUM ANALYZE")
        finally:
            await connection.close()
        return time.perf_counter() - began


async def counters(database_url: str) -> tuple[int, ...]:
    connection = await asyncpg.connect(database_url)
    try:
        await asyncio.sleep(0.5)  # backends that just exited have flushed their statistics
        await connection.execute("SELECT pg_stat_clear_snapshot()")
        row = await connection.fetchrow(COUNTERS)
        assert row is not None
        return tuple(int(value) for value in row)
    finally:
        await connection.close()


def peaks(size: int) -> set[NodeId]:
    """The perfect subtrees the tree head itself holds: a proof reads these from the head, not the nodes table."""
    return set(perfect_subtrees(0, size))


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, math.ceil(fraction * len(ordered)) - 1)]


async def measure(database_url: str, hashes: list[bytes], *, proofs: int, appends: int) -> dict[str, float]:
    """Proof and append costs through the log service, and Postgres' own counters for the proofs."""
    rng = random.Random(len(hashes))
    before = await counters(database_url)
    database = Database(database_url.replace("postgresql://", "postgresql+asyncpg://", 1))
    database.open()
    log = TransparencyLog(database, NoteSigner(bytes(32), name="bench/log"))
    try:
        await log.checkpoint()  # connect first: the pool's warm-up is not a proof's cost
        latencies, nodes = [], []
        for _ in range(proofs):
            index = rng.randrange(len(hashes))
            began = time.perf_counter()
            proof = await log.proof_for(hashes[index])
            latencies.append((time.perf_counter() - began) * 1000)
            assert proof is not None and proof.leaf_index == index and proof.is_verified()
            nodes.append(len(nodes_needed(inclusion_ranges(index, proof.tree_size)) - peaks(proof.tree_size)))
    finally:
        await database.close()  # the backends exit, flushing the statistics counted below
    after = await counters(database_url)
    database.open()
    try:
        consistency = []
        for _ in range(proofs // 5):
            second = len(hashes)  # before the appends below
            first = rng.randrange(1, second + 1)
            began = time.perf_counter()
            await log.consistency(first, second)
            consistency.append((time.perf_counter() - began) * 1000)
        append_latencies = []
        for i in range(appends):
            began = time.perf_counter()
            appended = await log.append(agent_id=None, kind="bench", event={"appended": i, "at": len(hashes)})
            assert appended.index == len(hashes)
            hashes.append(appended.leaf_hash)  # the list stays indexed by leaf index
            append_latencies.append((time.perf_counter() - began) * 1000)
    finally:
        await database.close()
    seq_scans, index_scans, index_rows, _ = (a - b for a, b in zip(after, before, strict=True))
    return {
        "p50": statistics.median(latencies),
        "p99": percentile(latencies, 0.99),
        "max": max(latencies),
        "nodes_mean": statistics.mean(nodes),
        "nodes_max": max(nodes),
        "rows_per_proof": index_rows / proofs,
        "index_scans_per_proof": index_scans / proofs,
        "seq_scans": seq_scans,
        "consistency_p50": statistics.median(consistency),
        "append_p50": statistics.median(append_latencies),
    }


def http_proofs(database_url: str, hashes: list[bytes], count: int) -> tuple[float, float, float]:
    """p50, p99 and worst ms of `GET /verify/proof/{hash}` from a `gateway serve` on the database."""
    workdir = Path(tempfile.mkdtemp(prefix="bench-log-"))
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": os.environ.get("HOME", "/tmp"),
        "DATABASE_URL": database_url,
        "DATA_DIR": str(workdir / "data"),
    }
    port = 19000 + random.randint(0, 999)
    server = subprocess.Popen(
        [GATEWAY, "serve", "--port", str(port)],
        env=env,
        cwd=workdir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            for _ in range(300):
                try:
                    client.get("/health")
                    break
                except httpx.TransportError:
                    time.sleep(0.1)
            rng = random.Random(1)
            client.get(f"/verify/proof/sha256:{hashes[0].hex()}")  # warm
            latencies = []
            for _ in range(count):
                leaf = hashes[rng.randrange(len(hashes))]
                began = time.perf_counter()
                response = client.get(f"/verify/proof/sha256:{leaf.hex()}")
                latencies.append((time.perf_counter() - began) * 1000)
                assert response.status_code == 200 and response.json()["verified"] is True
    finally:
        server.terminate()
        server.wait(timeout=30)
    return statistics.median(latencies), percentile(latencies, 0.99), max(latencies)


async def explain_nodes_query(database_url: str, index: int, size: int) -> list[str]:
    """Postgres' plan for one proof's node read (the statement the store sends, with its values inlined)."""
    needed = nodes_needed(inclusion_ranges(index, size)) - peaks(size)
    inner = ", ".join(f"({n.level}, {n.index})" for n in needed if n.level > 0)
    leaves = ", ".join(str(n.index) for n in needed if n.level == 0) or "-1"
    query = (
        "SELECT level, node_index, hash FROM transparency_nodes "
        f"WHERE (level, node_index) IN ({inner or '(-1, -1)'}) "
        "UNION ALL SELECT 0, leaf_index, leaf_hash FROM transparency_leaves "
        f"WHERE leaf_index IN ({leaves})"
    )
    connection = await asyncpg.connect(database_url)
    try:
        rows = await connection.fetch(f"EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF) {query}")
    finally:
        await connection.close()
    lines = [row[0] for row in rows if "Recheck Cond" not in row[0]]
    # One bitmap index probe per node: show two, count the rest.
    probes = [i for i, line in enumerate(lines) if "Bitmap Index Scan" in line]
    if len(probes) > 2:
        indent = lines[probes[2]][: len(lines[probes[2]]) - len(lines[probes[2]].lstrip())]
        lines[probes[2] : probes[-1] + 2] = [
            f"{indent}... {len(probes) - 2} more probes of pk_transparency_nodes"
        ]
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--leaves", type=int, default=SIZES[-1], help="the largest size (default 1,000,000)")
    parser.add_argument("--proofs", type=int, default=1000, help="random-leaf proofs per size")
    parser.add_argument("--appends", type=int, default=200, help="single appends timed per size")
    parser.add_argument("--keep", action="store_true", help="keep the database (its URL is printed)")
    args = parser.parse_args()
    sizes = [size for size in SIZES if size < args.leaves] + [args.leaves]
    name = f"gateway_bench_log_{uuid.uuid4().hex[:8]}"
    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    database_url = f"{ADMIN_URL.rsplit('/', 1)[0]}/{name}"
    try:
        env = {**os.environ, "DATABASE_URL": database_url, "DATA_DIR": tempfile.mkdtemp(prefix="bench-log-")}
        subprocess.run([GATEWAY, "migrate"], env=env, check=True, capture_output=True)
        seeder = Seeder(database_url)
        results = {}
        for size in sizes:
            seconds = asyncio.run(seeder.grow_to(size))
            print(f"seeded {size:,} leaves ({seconds:.1f} s); measuring ...", file=sys.stderr)
            results[size] = asyncio.run(
                measure(database_url, seeder.hashes, proofs=args.proofs, appends=args.appends)
            )
        http = http_proofs(database_url, seeder.hashes, args.proofs)
        plan = asyncio.run(explain_nodes_query(database_url, len(seeder.hashes) // 3, len(seeder.hashes)))
    finally:
        if args.keep:
            print(f"database kept: {database_url}", file=sys.stderr)
        else:
            asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))

    print(
        f"\nTransparency log in Postgres, {datetime.now(UTC):%Y-%m-%d}, {args.proofs} random leaves per size\n"
    )
    print(
        "| leaves | proof p50 ms | p99 ms | worst ms | nodes read per proof (mean / max) | rows fetched per proof "
        "| index probes per proof | seq scans of leaves, nodes | consistency p50 ms | append p50 ms |"
    )
    print("|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
    for size, r in results.items():
        print(
            f"| {size:,} | {r['p50']:.2f} | {r['p99']:.2f} | {r['max']:.2f} "
            f"| {r['nodes_mean']:.1f} / {r['nodes_max']} | {r['rows_per_proof']:.1f} "
            f"| {r['index_scans_per_proof']:.1f} | {r['seq_scans']} | {r['consistency_p50']:.2f} "
            f"| {r['append_p50']:.2f} |"
        )
    print(
        f"\n`GET /verify/proof/{{hash}}` at {sizes[-1]:,} leaves (gateway serve, one worker, over HTTP): "
        f"p50 {http[0]:.2f} ms, p99 {http[1]:.2f} ms, worst {http[2]:.2f} ms\n"
    )
    print("Plan of one proof's node read:\n\n```")
    print("\n".join(plan))
    print("```")
    return 0


if __name__ == "__main__":
    sys.exit(main())
