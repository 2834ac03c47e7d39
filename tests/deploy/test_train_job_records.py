"""Training jobs on disk (no Ray): records round-trip, what a restart makes of each job, one owner at a time."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from mosaserve.deploy.config import ServeConfig, ServeConfigError
from mosaserve.deploy.training.records import JobRecords, JobRecordsBusyError
from mosaserve.deploy.training.jobs import JobStatus, TrainRequest, status_after_restart

REQUEST = TrainRequest(task_id="cats", dataset="digits", epochs=5)


def job(job_id: str, state: str = "queued", created_at: float = 1.0, **changes) -> JobStatus:
    return replace(JobStatus(job_id, "cats", "mosa", "digits", 5, state=state, created_at=created_at), **changes)


def test_records_round_trip_oldest_first_and_crash_leftovers_are_cleared(tmp_path):
    records = JobRecords(tmp_path / "jobs")
    records.save(REQUEST, job("b", "running", created_at=2.0, epoch=3, loss=0.5))
    records.save(REQUEST, job("a", "succeeded", created_at=1.0, version=2))
    (tmp_path / "jobs" / "b" / ".checkpoint.safetensors.x1.tmp").write_bytes(b"half")  # a crash mid-write
    (tmp_path / "jobs" / "c").mkdir()
    (tmp_path / "jobs" / "c" / ".job.json.x2.tmp").write_bytes(b"{")  # a crash before c's first record
    (tmp_path / "jobs" / "d").mkdir()
    (tmp_path / "jobs" / "d" / "job.json").write_text("{not json")  # damaged by hand: skipped, kept

    loaded = JobRecords(tmp_path / "jobs").load_all()
    assert [r.status.job_id for r in loaded] == ["a", "b"]
    assert loaded[1].request == REQUEST and loaded[1].status == job("b", "running", created_at=2.0, epoch=3, loss=0.5)
    assert not (tmp_path / "jobs" / "c").exists() and list((tmp_path / "jobs" / "b").iterdir()) == [
        tmp_path / "jobs" / "b" / "job.json"]
    assert (tmp_path / "jobs" / "d" / "job.json").exists()
    assert json.loads((tmp_path / "jobs" / "a" / "job.json").read_text())["status"]["version"] == 2


def test_after_a_restart_finished_jobs_stay_waiting_wait_and_interrupted_ones_resume_or_end():
    for state in ("succeeded", "failed", "cancelled", "queued"):
        assert status_after_restart(job("x", state), max_restarts=3) == job("x", state)
    resumed = status_after_restart(job("x", "running", epoch=4, eta_s=9.0), max_restarts=3)
    assert resumed == job("x", "queued", epoch=4, restarts=1)
    cancelled = status_after_restart(job("x", "running", cancel_requested=True), max_restarts=3)
    assert cancelled.state == "cancelled" and cancelled.finished_at is not None
    gave_up = status_after_restart(job("x", "running", restarts=3), max_restarts=3)
    assert gave_up.state == "failed" and "stopped 4 times" in gave_up.error


def test_only_one_sidecar_owns_a_jobs_folder_until_its_process_lets_go(tmp_path):
    first = JobRecords(tmp_path)
    first.take_ownership(timeout_s=1)
    with pytest.raises(JobRecordsBusyError, match="another training sidecar"):
        JobRecords(tmp_path).take_ownership(timeout_s=0.3)
    first._owner.close()  # what the OS does when the first sidecar's process dies
    JobRecords(tmp_path).take_ownership(timeout_s=1)


def test_jobs_dir_defaults_beside_the_store_and_never_overlaps_it(tmp_path):
    assert ServeConfig.of(store_dir=str(tmp_path / "store")).resolved_jobs_dir() == tmp_path / "store-jobs"
    assert ServeConfig.from_dict({"jobs_dir": tmp_path / "j"}).resolved_jobs_dir() == tmp_path / "j"
    for jobs_dir in (tmp_path / "store", tmp_path / "store" / "jobs", tmp_path):
        with pytest.raises(ServeConfigError, match="must not contain each other"):
            ServeConfig.of(store_dir=str(tmp_path / "store"), jobs_dir=str(jobs_dir))
    with pytest.raises(ServeConfigError, match="jobs_dir"):
        ServeConfig.of(jobs_dir=" ")
