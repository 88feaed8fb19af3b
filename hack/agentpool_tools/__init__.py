"""Generators of the project's committed artefacts (not shipped in any image).

`gen_crd` writes the AgentPool CRD from the API models (`crd.py` turns pydantic's JSON schema
into a structural one); `monitoring` writes the chart's Grafana dashboards, Prometheus alert
rules and prometheus-adapter rules from code. Tests fail while a committed file differs from
what these produce (`make chart-check`).
"""
