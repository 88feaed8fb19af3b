"""Fleet-wide API budgets: one shared limit per external API key across every pod and pool.

`limits.py` says what a budget key allows, `keys.py` where its state lives in Redis,
`scripts.py` the atomic Lua steps and `limiter.py` the client a worker holds.
"""
