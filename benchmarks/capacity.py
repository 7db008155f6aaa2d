"""Capacity on paper: a deployment sized from the measured per-item and per-query costs.

    python -m benchmarks.capacity [--items 100000000] [--qps 5000] [--p99-ms 100]
                                  [--node-cores 32] [--node-ram-gib 256]

Reads what the other benchmarks measured (``results/scale.json``: bytes per item and the
query-cost exponent; ``results/quantisation.json``: bytes, speed and recall of int8 and
binary against float32; ``results/service_load.json``: the query encoder's cost, alone and
batched) and sizes a Qdrant cluster plus encoder capacity for the target, for a few shard
sizes, under stated assumptions (``Assumptions``). It is an extrapolation from at most 100k
measured items to 100M: ``docs/capacity.md`` says what to re-measure before buying hardware.

Model, per shard of S items: query cost c(S) = c0 (S / S0)^a core-ms, from the fused
layout's p50 c0 at its largest measured size S0 and the steeper of the measured exponents a
(HNSW search grows slowly with size), times the measured p50 ratio of a quantized kind to
float32 (rescoring reads originals); RAM per item as measured for float32, and for a
quantized kind the float vectors replaced by the measured quantized bytes a dimension;
p99 = c(S) x the measured p95/p50 ratio x a tail factor. A query visits every shard
(Qdrant fans out), so store CPU per query = shards x c(S). Cores = QPS x CPU per query /
utilisation; RAM = items x bytes per item x replication; nodes = the larger need, and at
least the replication factor.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import asdict, dataclass
from typing import Any

from benchmarks.report import COMMITTED, NONE, Provenance, markdown_table, real_weights, write


@dataclass(frozen=True, slots=True)
class Assumptions:
    """What is not measured here, stated so that it can be argued with."""

    node_cores: int = 32
    node_ram_gib: float = 256.0
    ram_headroom: float = 0.7
    """Share of a node's RAM the store may use (OS, page cache for rescoring, growth)."""
    utilisation: float = 0.5
    """Target CPU utilisation at peak QPS: the rest absorbs bursts and a lost node."""
    replication: int = 2
    tail_factor: float = 1.5
    """p99 over the measured p95 (the scale suite reports p50 and p95)."""
    store_budget_share: float = 0.6
    """Share of the p99 budget the store may take; the rest is encode, fusion and gRPC."""
    fused_dims: int = 896 + 512 + 384
    """Dense dimensions of a fused item (fused, clip, text), as the scale suite stores it."""


def load(name: str) -> dict[str, Any] | None:
    """A committed result, or None when that benchmark has not been run."""
    path = COMMITTED / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def inputs() -> dict[str, Any]:
    """The measured figures the model uses, each with the file it came from."""
    scale = load("scale")
    if scale is None:
        raise SystemExit("benchmarks/results/scale.json is missing: run python -m benchmarks.scale")
    fused = [r for r in scale["rows"] if r["layout"] == "fused"]
    largest = max(fused, key=lambda r: r["size"])
    exponent = max(f["exponent"] for f in scale["fits"].values())
    out = {"fused_rss_bytes_per_item": scale["fits"]["fused"]["marginal_rss_bytes_per_item"],
           "fused_disk_bytes_per_item": scale["fits"]["fused"]["marginal_disk_bytes_per_item"],
           "c0_ms": largest["p50_ms"], "s0": largest["size"], "exponent": exponent,
           "tail_p95_over_p50": largest["p95_ms"] / largest["p50_ms"],
           "sources": ["scale.json"]}
    quant = load("quantisation")
    if quant is not None:  # measured on one 512-d vector: bytes a dimension, speed, recall
        by_kind = {r["quantization"]["kind"]: r for r in quant["rows"]}
        dims = quant["rows"][0]["data"]["dim"]
        out["quantized_bytes_per_dim"] = {k: r["quantized_bytes_per_item"] / dims
                                          for k, r in by_kind.items() if k != "none"}
        out["p50_ratio"] = {k: r["p50_ms"] / by_kind["none"]["p50_ms"]
                            for k, r in by_kind.items()}
        out["recall"] = {k: r["recall_at_10"] for k, r in by_kind.items()}
        out["sources"].append("quantisation.json")
    service = load("service_load")
    if service is not None:  # the encoder alone, one query and in batches of 32
        out["encode_ms"] = service["raw_parts"]["encode_p50_ms"]
        out["encode_batched_ms"] = service["raw_parts"]["encode_batched_ms_per_query"]
        out["text_model"] = service.get("text_model")
        out["sources"].append("service_load.json")
    out["store"] = largest.get("store", "EdgeStore")
    return out


def provenance(m: dict[str, Any], target: argparse.Namespace) -> Provenance:
    """Nothing is measured here: the data are the results read, the model the query encoder
    service_load.json timed, the store the one scale.json measured; no device runs."""
    models = {"query encoder (timed in service_load.json)": real_weights(m["text_model"])
              } if m.get("text_model") else {}
    return Provenance(f"measured results ({', '.join(m['sources'])}) extrapolated to "
                      f"{target.items:,} items at {target.qps:,.0f} QPS", models,
                      f"{m['store']} (as measured in scale.json), sized as a Qdrant cluster",
                      f"{NONE} (arithmetic over the results read)")


def item_ram(kind: str, m: dict[str, Any], a: Assumptions) -> float:
    """Resident bytes of a fused item: as measured for float32; quantized, the float vectors
    (4 B a dimension, kept on disk for rescoring) give way to the measured quantized bytes."""
    measured = float(m["fused_rss_bytes_per_item"])
    if kind == "none":
        return measured
    return measured - a.fused_dims * (4.0 - m["quantized_bytes_per_dim"][kind])


def plan(shard_items: int, kind: str, m: dict[str, Any], target: argparse.Namespace,
         a: Assumptions) -> dict[str, Any]:
    """The cluster for one shard size and one quantisation kind."""
    shards = math.ceil(target.items / shard_items)
    cost = (m["c0_ms"] * (shard_items / m["s0"]) ** m["exponent"]
            * m.get("p50_ratio", {}).get(kind, 1.0))  # rescoring's cost, as measured
    p99 = cost * m["tail_p95_over_p50"] * a.tail_factor
    cores = target.qps * shards * cost / 1000 / a.utilisation
    ram_total = target.items * item_ram(kind, m, a) * a.replication
    nodes_cpu = math.ceil(cores / a.node_cores)
    nodes_ram = math.ceil(ram_total / (a.node_ram_gib * 2**30 * a.ram_headroom))
    return {"shard_items": shard_items, "quantization": kind, "shards": shards,
            "shard_query_ms": cost, "shard_p99_ms": p99,
            "fits_budget": p99 <= target.p99_ms * a.store_budget_share,
            "store_cores": cores, "ram_tib": ram_total / 2**40,
            "nodes": max(nodes_cpu, nodes_ram, a.replication), "bound_by":
            "CPU" if nodes_cpu >= nodes_ram else "RAM",
            "disk_tib": target.items * m["fused_disk_bytes_per_item"] * a.replication / 2**40}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=100_000_000)
    parser.add_argument("--qps", type=float, default=5000)
    parser.add_argument("--p99-ms", type=float, default=100)
    parser.add_argument("--node-cores", type=int, default=Assumptions().node_cores)
    parser.add_argument("--node-ram-gib", type=float, default=Assumptions().node_ram_gib)
    target = parser.parse_args()
    a = Assumptions(node_cores=target.node_cores, node_ram_gib=target.node_ram_gib)
    m = inputs()
    kinds = ["none", *(k for k in ("int8", "binary") if k in m.get("quantized_bytes_per_dim",
                                                                         {}))]
    rows = [plan(s, k, m, target, a) for k in kinds
            for s in (1_000_000, 5_000_000, 12_500_000, 25_000_000)]
    encode = m.get("encode_batched_ms", float("nan"))
    encoder_cores = target.qps * encode / 1000 / a.utilisation
    table = markdown_table(
        ["quantization", "items per shard", "shards", "shard query ms", "shard p99 ms",
         "fits", "store cores", "RAM TiB (x2)", "disk TiB (x2)", "nodes", "bound by"],
        [[r["quantization"], f"{r['shard_items']:,}", r["shards"],
          round(r["shard_query_ms"], 1), round(r["shard_p99_ms"], 1),
          "yes" if r["fits_budget"] else "no", round(r["store_cores"]),
          round(r["ram_tib"], 2), round(r["disk_tib"], 2), r["nodes"], r["bound_by"]]
         for r in rows])
    md = (f"# Capacity on paper: {target.items:,} items, {target.qps:,.0f} QPS, p99 <= "
          f"{target.p99_ms:.0f} ms\n\nMeasured inputs ({', '.join(m['sources'])}): fused item "
          f"{m['fused_rss_bytes_per_item']:.0f} B RAM and {m['fused_disk_bytes_per_item']:.0f}"
          f" B disk; hybrid query {m['c0_ms']:.2f} ms p50 at {m['s0']:,} items, growing as "
          f"size^{m['exponent']:.3f}; p95/p50 {m['tail_p95_over_p50']:.2f}; query encode "
          f"{m.get('encode_ms', float('nan')):.1f} core-ms alone, {encode:.1f} in batches of "
          f"32. Assumptions: {asdict(a)}.\n\n{table}\n\nEncoders: "
          f"{encoder_cores:.0f} CPU cores at {a.utilisation:.0%} for {target.qps:,.0f} "
          f"queries/s at {encode:.1f} core-ms each in batches (the service's micro-batching forms "
          "them under load; or GPUs: the gpu suite measures their rate).")
    write("capacity", {"inputs": m, "assumptions": asdict(a), "target": vars(target),
                       "rows": rows, "encoder_cores": encoder_cores}, md,
          provenance=provenance(m, target))
    print(md)


if __name__ == "__main__":
    main()
