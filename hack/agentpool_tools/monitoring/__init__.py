"""Monitoring as code: the AgentPool dashboards and alerts (a Python "mixin").

`metrics` names every metric queried, `promql` holds the label conventions, `dashboards` builds
the Grafana dashboards with grafana-foundation-sdk and `alerts` the alerting rules with their
runbooks. `python -m agentpool_tools.monitoring` (`gen.py`) writes them, and the CRD, into
the Helm chart; `--check` fails when the committed files differ. Used at build time only: the
operator never imports this package.
"""
