"""The operator's two failure kinds, as kopf and controller-runtime have them.

`TransientError`: worth retrying as is (conflicts, throttling, an unavailable API server, a
referenced Secret that does not exist yet); the work queue retries with backoff.
`ApiFailure`: the API server refused a request for a reason retrying alone won't fix; it is
reported in status and retried with backoff too, because the cause (RBAC, an admission policy)
may be fixed by a person meanwhile.
"""

from __future__ import annotations


class OperatorError(Exception):
    """Base of the operator's own errors; messages never contain secret values."""


class TransientError(OperatorError):
    """A failure that is expected to go away on its own."""


class ApiFailure(OperatorError):
    """The API server refused a request; `code` is its HTTP status."""

    def __init__(self, message: str, *, code: int) -> None:
        super().__init__(message)
        self.code = code


class Expired(OperatorError):
    """A watch's resourceVersion is too old (410 Gone): only a new list can continue it."""
