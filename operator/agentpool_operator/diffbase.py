"""A kopf diff-base storage that keeps nothing: the operator uses raw event handlers only.

kopf deep-copies every watched body (each Deployment status update included) to diff it for
change handlers; raw event handlers never read that diff, so building it is wasted CPU.
"""

from __future__ import annotations

from typing import Any, cast

import kopf


class NoDiffBase(kopf.DiffBaseStorage):
    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> kopf.BodyEssence:
        return cast(kopf.BodyEssence, {})

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        return None
