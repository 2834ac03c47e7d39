"""Admission control: refuse a row at once when the rows ahead of it would outlast its deadline.

Bounded queues alone cannot tell a queue that drains in 50 ms from one that drains in 5 s (that depends
on the device and the backbone); a replica knows both its queue and how fast it serves, so it refuses
at the door what it could only answer late, and its queue never holds more than the deadlines allow.
The ingress hears each replica's expected wait with every answer and refuses before decoding anything
while every replica is that far behind: on a small machine a refusal must cost far less than an answer.
"""

from __future__ import annotations

from ..runtime.errors import ServiceBusyError

DEADLINE_HEADER = "X-Request-Timeout-Ms"  # a client's deadline for one prediction, in milliseconds
SMOOTHING = 0.2  # weight of the newest batch in the serving rate: a few batches follow a change of load
# A row is admitted only if the queue ahead of it takes at most this share of its remaining time: the
# rest covers its own batch, the trip back, and the time the ingress took before it.
ADMIT_SHARE = 0.5


def busy_error(wait_s: float, remaining_s: float, where: str) -> ServiceBusyError:
    return ServiceBusyError(f"{where} about {wait_s * 1000:.0f} ms of work ahead of this request, whose deadline is "
                            f"{max(remaining_s, 0) * 1000:.0f} ms away; retry later or allow a longer "
                            f"X-Request-Timeout-Ms")


def admits(wait_s: float, remaining_s: float) -> bool:
    return wait_s <= ADMIT_SHARE * remaining_s


class Admission:
    """A replica's rows held (admitted, not yet answered) and the serving rate measured from its batches."""

    def __init__(self) -> None:
        self.held = 0
        self.rows_per_s: float | None = None  # None until a batch has run

    def expected_wait_s(self, leaving: int = 0) -> float:
        """How long the rows held, less `leaving` (a batch being answered), take to serve."""
        return max(self.held - leaving, 0) / self.rows_per_s if self.rows_per_s else 0.0

    def refusal(self, now: float, deadline: float) -> ServiceBusyError | None:
        """Why a row due by `deadline` is refused, or None to admit it. An empty replica admits every row,
        so a rate measured too low (a slow first batch) is corrected by the next batches, never kept."""
        wait_s = self.expected_wait_s()
        if self.held == 0 or admits(wait_s, deadline - now):
            return None
        return busy_error(wait_s, deadline - now, f"this replica holds {self.held} rows,")

    def served(self, rows: int, seconds: float) -> None:
        rate = rows / max(seconds, 1e-6)
        self.rows_per_s = rate if self.rows_per_s is None else (1 - SMOOTHING) * self.rows_per_s + SMOOTHING * rate


class ReplicaWaits:
    """At the ingress: each replica's expected wait as its last answer told it, drained since at the pace of
    time (a replica sent nothing more serves its queue down), so a refusal never outlives the queue behind it."""

    def __init__(self) -> None:
        self._told: dict[str, tuple[float, float]] = {}  # replica -> (expected wait, when told)

    def tell(self, replica: str, wait_s: float, now: float) -> None:
        self._told[replica] = (wait_s, now)

    def shortest_s(self, now: float) -> float:
        """The least expected wait of any replica (the router picks a less loaded one); 0 before any answer."""
        return min((max(0.0, wait - (now - told)) for wait, told in self._told.values()), default=0.0)

    def refusal(self, now: float, deadline: float) -> ServiceBusyError | None:
        wait_s = self.shortest_s(now)
        return None if admits(wait_s, deadline - now) else busy_error(wait_s, deadline - now, "every replica has")
