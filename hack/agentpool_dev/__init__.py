"""Development harness: a real Kubernetes control plane and real services on loopback.

Used by the test fixtures and by people through `python -m agentpool_dev` (see the Makefile).
Not part of the shipped distribution.
"""
