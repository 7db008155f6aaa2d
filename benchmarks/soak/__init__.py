"""Soak: a real `mmrec serve` under mixed load for a bounded time; errors, latency, RSS.

Protocol. A fresh data dir in a temporary folder; `mmrec serve` starts on it as a
subprocess on loopback (CLIP off; the LLM off unless ``--rerank-share`` > 0; the
packaged all-MiniLM-L6-v2 text encoder; ``store.optimize_after`` 1000 so a long run
goes through background HNSW builds). Setup, timed and reported: wait until the server
is SERVING, index the MovieLens-100k films over UpsertItems, record the first 20 ratings
of each user over RecordEvents. Then the benchmark's own process (the client, a separate
process from the server) runs ``--concurrency`` closed-loop streams for ``--seconds``,
each drawing Search 40 %, Recommend 35 %, RecordEvents 15 %, UpsertItems 10 %
(``benchmarks.soak.load`` says each request's shape). No behaviour model is trained:
Recommend uses the live profiles (content channel), popularity for new visitors.

Recorded: every call's client-side latency and status (OK, a gRPC status name, or
BAD_ANSWER for an answer that breaks its contract); RESOURCE_EXHAUSTED is shed load, kept
apart from errors. p50/p95/p99 of answered calls per RPC, throughput, and the server
process's VmRSS every second with a fitted slope after the warm-up and the growth rule of
``benchmarks.soak.stats``; the server's child processes are sampled too, to mark when a
background index build ran (its swap holds two shards for a moment: an RSS spike). Histories
do grow during a soak (each event is kept, up to ``profiles.max_events`` per user), so a
short run's slope mixes that legitimate growth with any leak. Writes ``soak.json``,
``soak.md`` and ``soak.png`` to ``--out`` (default benchmarks/results/).

    python -m benchmarks.soak [--seconds 600] [--concurrency 16] [--rerank-share 0]
        [--items 0] [--users 0] [--out benchmarks/results]
"""
