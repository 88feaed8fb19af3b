"""PostgreSQL through the pod's PgBouncer (transaction pooling), with asyncpg.

    pool.py        the asyncpg pool every process opens (handlers' `ctx.db`, results, upkeep)
    database.py    the wrapper it comes in: acquire timeout, one retry on a dropped connection
    results.py     task results and events: written by workers, read back by clients
    migrations.py  the schema and its upgrades (the supervisor, at start)
    partitions.py  monthly partitions of results and events, their retention (the supervisor)

Imports the config and the queue's envelope (`TaskResult`), nothing above it.
"""
