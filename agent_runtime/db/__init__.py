"""PostgreSQL through the pod's PgBouncer (transaction pooling), with asyncpg.

    pool.py        the asyncpg pool every process opens (handlers' `ctx.db`, results, upkeep)
    results.py     task results and events: written by workers, read back by clients
    migrations.py  the schema, monthly event partitions and their retention (the supervisor)

Imports the config and the queue's envelope (`TaskResult`), nothing above it.
"""
