"""Admission control: refuse a row at once when the rows ahead of it would outlast its deadline.

Bounded queues alone cannot tell a queue that drains in 50 ms from one that drains in 5 s (that depends
on the device and the backbone); a replica knows both its queue and how fast it serves, so it refuses
at the door what it could only answer late, and its queue never holds more than the deadlines allow.
The ingress hears each replica's serving rate with every answer and refuses before decoding anything
while the rows it has sent out would keep a request too long: on a small machine a refusal must cost far
less than an answer.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from ..runtime.errors import ServiceBusyError

DEADLINE_HEADER = "X-Request-Timeout-Ms"  # a client's deadline for one prediction, in milliseconds
SMOOTHING = 0.2  # weight of the newest batch in the serving rate: a few batches follow a change of load
# The ingress admits a request only if the rows ahead of it take at most this share of its remaining time:
# the rest covers its decoding, its own batch and the trip back. A replica refuses only rows that cannot
# be served in time at all, a backstop for what the ingress could not see (other ingresses, a slow trip).
INGRESS_SHARE = 0.3


def busy_error(wait_s: float, remaining_s: float, where: str) -> ServiceBusyError:
    return ServiceBusyError(f"{where} about {wait_s * 1000:.0f} ms of work ahead of this request, whose deadline is "
                            f"{max(remaining_s, 0) * 1000:.0f} ms away; retry later or allow a longer "
                            f"{DEADLINE_HEADER}")


class Admission:
    """A replica's rows held (admitted, not yet answered) and the serving rate measured from its batches."""

    def __init__(self) -> None:
        self.held = 0
        self.rows_per_s: float | None = None  # None until a batch has run

    def expected_wait_s(self) -> float:
        return self.held / self.rows_per_s if self.rows_per_s else 0.0

    def refusal(self, now: float, deadline: float) -> ServiceBusyError | None:
        """Why a row due by `deadline` is refused, or None to admit it. An empty replica admits every row,
        so a rate measured too low (a slow first batch) is corrected by the next batches, never kept."""
        wait_s = self.expected_wait_s()
        if self.held == 0 or wait_s <= deadline - now:
            return None
        return busy_error(wait_s, deadline - now, f"this replica holds {self.held} rows,")

    def served(self, rows: int, seconds: float) -> None:
        rate = rows / max(seconds, 1e-6)
        self.rows_per_s = rate if self.rows_per_s is None else (1 - SMOOTHING) * self.rows_per_s + SMOOTHING * rate


class IngressAdmission:
    """At the ingress: the rows it has sent and not heard back, and each replica's serving rate as its last
    answer told it, so a request that would wait too long is refused before anything of it is decoded."""

    def __init__(self) -> None:
        self.rows_out = 0
        self._rates: dict[str, float] = {}  # replica -> rows per second

    @contextmanager
    def sending(self, rows: int) -> Iterator[None]:
        self.rows_out += rows
        try:
            yield
        finally:
            self.rows_out -= rows

    def tell(self, replica: str, rows_per_s: float | None) -> None:
        if rows_per_s:
            self._rates[replica] = rows_per_s

    def expected_wait_s(self) -> float:
        """The rows out, served by every replica together; 0 before any replica has told its rate."""
        total = sum(self._rates.values())
        return self.rows_out / total if total else 0.0

    def refusal(self, now: float, deadline: float) -> ServiceBusyError | None:
        wait_s = self.expected_wait_s()
        if self.rows_out == 0 or wait_s <= INGRESS_SHARE * (deadline - now):
            return None
        return busy_error(wait_s, deadline - now, f"the replicas have {self.rows_out} rows,")
