"""Test-suite wiring: each area's fixtures live in a plugin module under tests/plugins/."""

pytest_plugins = [
    "tests.plugins.stages",
    "tests.plugins.cluster",
    "tests.plugins.services",
    "tests.plugins.crd",
    "tests.plugins.operator",
    "tests.plugins.runtime",
    "tests.plugins.durable_redis",
    "tests.plugins.metrics_api",
    "tests.plugins.chart",
    "tests.plugins.realpods",
    "tests.plugins.releases",
]
