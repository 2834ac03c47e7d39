"""A replica's admission: what it refuses at once, from the rows it holds and the rate its batches ran at."""

from __future__ import annotations

import time

import pytest

from mosaserve.deploy.admission import Admission, IngressAdmission
from mosaserve.deploy.http.requests import deadline_of
from mosaserve.runtime.errors import ServiceBusyError


def test_a_replica_refuses_a_row_it_cannot_serve_before_its_deadline():
    admission = Admission()
    admission.served(rows=32, seconds=0.5)  # 64 rows/s
    admission.held = 32  # 0.5 s of work ahead
    assert admission.refusal(now=100.0, deadline=100.6) is None
    refusal = admission.refusal(now=100.0, deadline=100.4)
    assert isinstance(refusal, ServiceBusyError) and "32 rows" in str(refusal) and "500 ms of work" in str(refusal)


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


def test_the_ingress_refuses_while_the_rows_it_sent_out_would_keep_a_request_too_long():
    admission = IngressAdmission()
    with admission.sending(40):
        assert admission.refusal(now=0.0, deadline=0.5) is None  # no replica has told its rate yet
        admission.tell("a", 60.0)
        admission.tell("b", 20.0)  # together 80 rows/s: 40 rows out are 0.5 s of work
        admission.tell("b", None)  # an answer without a rate (a failed row) keeps the last one
        refusal = admission.refusal(now=0.0, deadline=1.6)  # 0.5 s is over 30% of 1.6 s
        assert isinstance(refusal, ServiceBusyError) and "40 rows" in str(refusal) and "500 ms of work" in str(refusal)
        assert admission.refusal(now=0.0, deadline=1.7) is None
    assert admission.rows_out == 0 and admission.refusal(now=0.0, deadline=0.001) is None  # all answered


def test_a_client_may_shorten_the_deadline_never_lengthen_it():
    now = time.time()
    assert deadline_of(None, 10.0) == pytest.approx(now + 10.0, abs=0.05)
    assert deadline_of(250, 10.0) == pytest.approx(now + 0.25, abs=0.05)
    assert deadline_of(60_000, 10.0) == pytest.approx(now + 10.0, abs=0.05)
