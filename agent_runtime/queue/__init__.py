"""The work queue on Redis Streams: everything that knows its keys and the layout of its entries.

    keys.py         the Redis key names of one pool (pure)
    envelope.py     a task as stored (`TaskEnvelope`), its result (`TaskResult`), retry policy
                    (pure)
    validation.py   checks an entry from any producer before a worker trusts it (pure)
    scripts.py      the Lua scripts for the steps that must be atomic
    producer.py     the client's side: submit, cancel, read results
    consumer.py     a worker's side: read, adopt, reclaim, complete, retry, dead-letter, hand back
    maintenance.py  the supervisor's side: leases, hand-over, delayed retries, trimming, pruning
    replies.py      one reader of a client's reply list, waking every wait concerned
    backlog.py      waiting and in-flight tasks, for the operator's metrics API

Imports the contract, the config and the errors (and `aio`), never the worker, the supervisor
or the SDK: they build on it.
"""
