"""A training job's run on disk (no Ray): checkpoints per epoch, exact resume after a crash, clear refusals."""

from __future__ import annotations

import copy
from dataclasses import replace

import pytest
import torch
from PIL import Image

from mosaserve.adapters.backbone import load_backbone
from mosaserve.adapters.file_format import load_adapter
from mosaserve.deploy.training.records import JobRecords
from mosaserve.deploy.training.run import JobCancelled, JobResumeError, run_job
from mosaserve.deploy.training.jobs import JobStatus, TrainRequest, status_after_restart

from ..conftest import TINY_VIT


class Crash(Exception):
    """Stands in for the sidecar dying at an epoch end, after the checkpoint and before the record."""


@pytest.fixture(scope="module")
def backbone():
    torch.manual_seed(0)
    return load_backbone(TINY_VIT)


@pytest.fixture
def shades(tmp_path):
    """A two-class image folder, as POST /v1/train would name it: folder:/abs/path."""
    for name, colour in (("light", 220), ("dark", 20)):
        (tmp_path / "shades" / name).mkdir(parents=True)
        for i in range(12):
            Image.new("L", (18, 18), colour + 3 * (i % 4)).save(tmp_path / "shades" / name / f"{i}.png")
    return TrainRequest(task_id="shades", dataset=f"folder:{tmp_path / 'shades'}", epochs=4, train_size=16,
                        test_size=8, lr=0.01)


def new_job(request: TrainRequest) -> JobStatus:
    return JobStatus("job1", request.task_id, request.method, request.dataset, request.epochs, state="running")


def crash_at_epoch(epoch: int):
    def on_epoch_end(seconds: float, loss: float) -> None:
        if on_epoch_end.epochs == epoch - 1:
            raise Crash()
        on_epoch_end.epochs += 1

    on_epoch_end.epochs = 0
    return on_epoch_end


def restarted(records: JobRecords) -> JobStatus:
    """What a new sidecar reads back and makes of the job."""
    (record,) = records.load_all()
    return status_after_restart(record.status, max_restarts=3)


def test_an_unbroken_run_saves_a_checkpoint_and_the_record_at_every_epoch(backbone, shades, tmp_path):
    records, job, seen = JobRecords(tmp_path / "jobs"), new_job(shades), []
    trained = run_job(job, shades, records, *backbone, on_epoch_end=lambda s, loss: seen.append(
        (records.load_checkpoint("job1").epochs_done, records.load_all()[0].status.epoch)))
    assert seen == [(1, 0), (2, 1), (3, 2), (4, 3)]  # checkpoint of the epoch first, then the record
    assert records.load_all()[0].status.epoch == 4 and job.dataset_sha256 and job.resumed_from_epoch is None
    assert load_adapter(trained.file_bytes, backbone[1].fingerprint).header.labels == ("dark", "light")


def test_a_run_killed_after_epoch_two_resumes_there_and_yields_the_same_file(backbone, shades, tmp_path):
    unbroken = run_job(new_job(shades), shades, JobRecords(tmp_path / "a"), *backbone)

    records = JobRecords(tmp_path / "b")
    with pytest.raises(Crash):
        run_job(new_job(shades), shades, records, *backbone, on_epoch_end=crash_at_epoch(2))
    job = restarted(records)
    assert job.state == "queued" and job.restarts == 1 and job.epoch == 1  # the record lags the checkpoint
    resumed = run_job(job, shades, records, copy.deepcopy(backbone[0]), backbone[1])
    assert job.resumed_from_epoch == 2 and job.epoch == 4
    assert resumed.file_bytes == unbroken.file_bytes and resumed.test_accuracy == unbroken.test_accuracy
    assert resumed.epoch_losses == unbroken.epoch_losses


def test_a_run_killed_before_its_first_checkpoint_starts_over(backbone, shades, tmp_path):
    records = JobRecords(tmp_path / "jobs")
    with pytest.raises(Crash):
        run_job(new_job(shades), shades, records, *backbone, on_epoch_end=crash_at_epoch(1))
    records.drop_checkpoint("job1")  # as if it died inside epoch 1
    job = restarted(records)
    run_job(job, shades, records, *backbone)
    assert job.resumed_from_epoch == 0 and job.epoch == 4


def test_a_cancel_stops_the_run_at_the_epoch_end(backbone, shades, tmp_path):
    records, job = JobRecords(tmp_path / "jobs"), new_job(shades)

    def cancel_after_first(seconds: float, loss: float) -> None:
        job.cancel_requested = True

    with pytest.raises(JobCancelled):
        run_job(job, shades, records, *backbone, on_epoch_end=cancel_after_first)
    assert job.epoch == 1 and records.load_all()[0].status.cancel_requested


def test_unresumable_jobs_fail_with_the_reason(backbone, shades, tmp_path):
    records = JobRecords(tmp_path / "jobs")
    with pytest.raises(Crash):
        run_job(new_job(shades), shades, records, *backbone, on_epoch_end=crash_at_epoch(2))
    checkpoint = records.checkpoint_path("job1")
    good = checkpoint.read_bytes()

    checkpoint.write_bytes(good[:100])
    with pytest.raises(JobResumeError, match="cannot resume: training checkpoint .* unreadable"):
        run_job(restarted(records), shades, records, *backbone)

    checkpoint.write_bytes(good)
    first = next((tmp_path / "shades" / "dark").iterdir())
    Image.new("L", (18, 18), 99).save(first)  # one training image changed
    with pytest.raises(JobResumeError, match="cannot resume: dataset .* changed since the job started"):
        run_job(restarted(records), shades, records, *backbone)

    gone = replace(shades, dataset=f"folder:{tmp_path / 'moved-away'}")
    with pytest.raises(JobResumeError, match="cannot resume: dataset .* is gone or unreadable .*does not exist"):
        run_job(restarted(records), gone, records, *backbone)


def test_a_job_without_epochs_runs_the_default_schedule_and_says_how_many_epochs(backbone, shades, tmp_path):
    """16 images at batch 64 are one step an epoch: the default schedule takes 400 of them, not 10."""
    request = replace(shades, epochs=None, method="adapter")
    records, job, ends = JobRecords(tmp_path / "jobs"), new_job(request), []
    run_job(job, request, records, *backbone, on_epoch_end=lambda s, loss: ends.append(loss))
    assert job.epochs == 400 and job.epoch == 400 and len(ends) == 400
    assert records.load_all()[0].status.epochs == 400
