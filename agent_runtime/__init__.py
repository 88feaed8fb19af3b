"""The AgentPool runtime: warm worker processes that run agent tasks from a Redis queue."""
