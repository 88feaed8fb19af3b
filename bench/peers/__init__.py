"""Adapters that start each benchmarked system and submit tasks to it (see `base.System`)."""
