"""kopf is told to keep no diff base: nothing is copied, stored or read back."""

from __future__ import annotations

import kopf

from agentpool_operator.diffbase import NoDiffBase
from agentpool_operator.watches import configure


def test_the_operator_settings_use_the_empty_diff_base() -> None:
    settings = kopf.OperatorSettings()
    configure(settings)
    storage = settings.persistence.diffbase_storage
    assert isinstance(storage, NoDiffBase)
    body = kopf.Body({"metadata": {"name": "p", "labels": {"a": "b"}}, "spec": {"x": 1}})
    assert storage.build(body=body) == {}
    assert storage.fetch(body=body) is None


def test_workers_and_initial_lists_hold_little_memory() -> None:
    settings = kopf.OperatorSettings()
    configure(settings)
    assert settings.watching.chunk_size is not None
    assert settings.watching.chunk_size <= 250
    assert settings.queueing.idle_timeout <= 1.0
