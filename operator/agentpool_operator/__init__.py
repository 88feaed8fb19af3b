"""The AgentPool operator: reconciles `AgentPool` resources into running worker pools.

Imported as `agentpool_operator`; the folder `operator/` is not a package, because a
top-level package named `operator` would shadow Python's standard library module.
"""
