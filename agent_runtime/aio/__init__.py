"""asyncio building blocks that know nothing of tasks, queues or processes.

`coalesce.PerIteration` batches the calls one event-loop iteration makes into one flush (one
Redis round trip); `supervised.Supervised` keeps a background loop running through crashes
and reports its health. Used by the queue, the SDK, the worker and the supervisor alike, so
they live below all of them: this package imports nothing else from `agent_runtime`.
"""
