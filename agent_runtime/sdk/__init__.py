"""What handler authors and clients use (re-exported from `agent_runtime`).

    client.py        `TaskClient`: submit tasks, wait for their results, cancel them
    context.py       `TaskContext`, what a handler sees, over its worker's shared resources
    cache.py         `ctx.cache(name)`: Redis with a TTL, a small in-process LRU in front
    http.py          `ctx.http`: one keep-alive aiohttp session per worker, timed per API
    jsonstream.py    incremental JSON parsing for large HTTP responses (pure)
    metrics_sink.py  where the helpers count hits and latencies (a protocol)

Builds on the queue and the database packages; never imports the worker or the supervisor,
which run these helpers, not the other way round.
"""
