"""A replica's admission: what it refuses at once, from the rows it holds and the rate its batches ran at."""

from __future__ import annotations

import time

import pytest

from mosaserve.deploy.admission import Admission, ReplicaWaits
from mosaserve.deploy.http.requests import deadline_of
from mosaserve.runtime.errors import ServiceBusyError


def test_a_row_is_admitted_only_if_the_queue_ahead_takes_at_most_half_its_remaining_time():
    admission = Admission()
    admission.served(rows=32, seconds=0.5)  # 64 rows/s
    admission.held = 32  # 0.5 s of work ahead
    assert admission.refusal(now=100.0, deadline=101.1) is None
    refusal = admission.refusal(now=100.0, deadline=100.8)
    assert isinstance(refusal, ServiceBusyError) and "32 rows" in str(refusal) and "500 ms of work" in str(refusal)
    assert admission.expected_wait_s(leaving=16) == 0.25  # a batch of 16 being answered is no longer ahead


def test_an_empty_replica_admits_every_row_so_a_rate_measured_too_low_is_corrected():
    admission = Admission()
    admission.served(rows=1, seconds=30.0)  # a first batch slowed by start-up work
    assert admission.refusal(now=0.0, deadline=0.1) is None  # nothing held
    admission.held = 1
    assert admission.refusal(now=0.0, deadline=0.1) is not None
    for _ in range(20):  # the batches that follow run at the true rate
        admission.served(rows=32, seconds=0.1)
    assert admission.expected_wait_s() == pytest.approx(1 / 320, rel=0.05)
    assert admission.refusal(now=0.0, deadline=0.1) is None


def test_the_ingress_refuses_while_every_replica_is_behind_and_forgets_a_queue_as_it_drains():
    waits = ReplicaWaits()
    assert waits.refusal(now=0.0, deadline=0.5) is None  # nothing heard yet
    waits.tell("a", wait_s=2.0, now=0.0)
    waits.tell("b", wait_s=0.6, now=0.0)
    refusal = waits.refusal(now=0.0, deadline=1.0)  # the shorter queue, 0.6 s, is over half of 1 s
    assert isinstance(refusal, ServiceBusyError) and "600 ms of work" in str(refusal)
    assert waits.refusal(now=0.2, deadline=1.0) is None  # 0.4 s left of b's queue
    assert waits.shortest_s(now=5.0) == 0.0


def test_a_client_may_shorten_the_deadline_never_lengthen_it():
    now = time.time()
    assert deadline_of(None, 10.0) == pytest.approx(now + 10.0, abs=0.05)
    assert deadline_of(250, 10.0) == pytest.approx(now + 0.25, abs=0.05)
    assert deadline_of(60_000, 10.0) == pytest.approx(now + 10.0, abs=0.05)
