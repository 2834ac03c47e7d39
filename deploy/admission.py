"""A replica's admission control: refuse a row at once when the rows ahead of it would outlast its deadline.

Bounded queues alone cannot tell a queue that drains in 50 ms from one that drains in 5 s (that depends
on the device and the backbone); the replica knows both its queue and how fast it serves, so it refuses
at the door what it could only answer late, and its queue never holds more than the deadlines allow.
"""

from __future__ import annotations

from ..runtime.errors import ServiceBusyError

SMOOTHING = 0.2  # weight of the newest batch in the serving rate: a few batches follow a change of load


class Admission:
    """Rows held (admitted, not yet answered) and the serving rate measured from the batches run."""

    def __init__(self) -> None:
        self.held = 0
        self.rows_per_s: float | None = None  # None until a batch has run

    def expected_wait_s(self) -> float:
        return self.held / self.rows_per_s if self.rows_per_s else 0.0

    def refusal(self, now: float, deadline: float) -> ServiceBusyError | None:
        """Why a row due by `deadline` is refused, or None to admit it. An empty replica admits every row,
        so a rate measured too low (a slow first batch) is corrected by the next batches, never kept."""
        if self.held == 0 or now + self.expected_wait_s() <= deadline:
            return None
        return ServiceBusyError(f"this replica holds {self.held} rows, about {self.expected_wait_s() * 1000:.0f} ms "
                                f"of work, and the request's deadline is {max(deadline - now, 0) * 1000:.0f} ms away; "
                                f"retry later or allow a longer X-Request-Timeout-Ms")

    def served(self, rows: int, seconds: float) -> None:
        rate = rows / max(seconds, 1e-6)
        self.rows_per_s = rate if self.rows_per_s is None else (1 - SMOOTHING) * self.rows_per_s + SMOOTHING * rate
