"""The pure plan step of a reconcile: a pool's identity, spec and Secret values in, its desired
children out, or the reason there can be none.

Called by `reconcile.py` between reading the referenced Secrets and applying. Whatever the API
server accepted must come out as children or as a reported reason, never as an exception
that makes the work queue retry: the builders are pure, so a retry would fail the same way,
and each attempt would log a traceback and nothing would tell the user. So:

* `InvalidDatabaseDsn` (the Secret's DSN cannot be carried out) passes through: it is about
  the Secret, not the spec, and is reported as `InvalidDatabaseDSN`;
* everything else the builders or the runtime's config model refuse becomes `InvalidSpec`,
  with the spec field and how to fix it when the refusal names one.
"""

from __future__ import annotations

import logging
from typing import Any

from pydantic import ValidationError

from agent_runtime.contract import check_pool_name
from agentpool_operator import builders
from agentpool_operator.builders.config import SPEC_FIELD_OF_RUNTIME_SETTING
from agentpool_operator.builders.context import PoolContext

log = logging.getLogger(__name__)


class InvalidSpec(Exception):
    """The pool's spec cannot be turned into children; the message says which field and how
    to fix it, and never quotes a Secret value."""


def plan_children(ctx: PoolContext) -> builders.Children:
    """The desired children of a pool. Raises `InvalidSpec` or `InvalidDatabaseDsn`."""
    try:
        check_pool_name(ctx.name)
    except ValueError as exc:
        raise InvalidSpec(f"metadata.name: {exc}; create the pool under another name") from None
    try:
        return builders.build_children(ctx)
    except builders.InvalidDatabaseDsn:
        raise
    except ValidationError as error:
        raise InvalidSpec(runtime_config_message(error)) from None
    except Exception as exc:
        # A builder bug, not the user's: deterministic, so it is reported once, not retried.
        log.exception("%s/%s: building the children failed", ctx.namespace, ctx.name)
        raise InvalidSpec(
            f"the operator cannot build this pool's objects ({type(exc).__name__}); this is "
            "an operator bug, please report it with the pool's spec") from None


def runtime_config_message(error: ValidationError) -> str:
    """A refusal of the runtime's config model, in terms of the spec fields it came from."""
    parts = []
    for item in error.errors(include_input=False, include_url=False)[:5]:
        setting = str(item["loc"][0]) if item["loc"] else ""
        where = SPEC_FIELD_OF_RUNTIME_SETTING.get(setting, f"runtime setting {setting}")
        parts.append(f"{where}: {_plain(item)}")
    return "; ".join(parts) + " (the pod's runtime would refuse this configuration)"


def _plain(item: Any) -> str:
    message = str(item["msg"])
    return message.removeprefix("Value error, ")
