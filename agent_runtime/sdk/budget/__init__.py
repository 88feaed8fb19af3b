"""Fleet-wide API budgets: one shared limit per external API key across every pod and pool.

`limits.py` says what a budget key allows, `agent_runtime.contract.BudgetKeys` where its state
lives in Redis (there because the operator reads it too), `scripts.py` the atomic Lua steps and
`limiter.py` the client a worker holds.
"""
