"""What one budget key allows: requests per second and minute, tokens per minute, requests in
flight. Any of them may be absent; a key with none is unlimited (and costs one round trip)."""

from __future__ import annotations

from dataclasses import dataclass

SECOND_MS = 1_000
MINUTE_MS = 60_000


@dataclass(frozen=True)
class Limits:
    requests_per_second: int | None = None
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    concurrent_requests: int | None = None

    def __post_init__(self) -> None:
        for name in ("requests_per_second", "requests_per_minute", "tokens_per_minute",
                     "concurrent_requests"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1 (or absent for no limit), "
                                 f"not {value}")

    @property
    def longest_window_ms(self) -> int:
        """How far back the request log must reach."""
        if self.requests_per_minute or self.tokens_per_minute:
            return MINUTE_MS
        return SECOND_MS
