"""Mixed-task batches: every row equals running its task's adapted model alone."""

import copy

import pytest
import torch

from mosaserve.runtime.bank import AdapterBank
from mosaserve.runtime.errors import UnknownTaskError
from mosaserve.runtime.executor import MixedTaskExecutor

from .helpers import adapter_file, random_model

# Tasks with different class counts, ranks, target blocks, a head-only (linear probe) task, LoRA tasks and
# format 1's head on the pooled features ("e", "d" and "g" read the pooled features, "h" and "i" the final
# and the middle block's tokens, the rest the final tokens).
TASKS = {
    "a": dict(seed=1, classes=3), "b": dict(seed=2, classes=5, r=8), "c": dict(seed=3, classes=2, target_blocks=(1,)),
    "d": dict(seed=4, classes=4, method="linear", head="pooled"), "e": dict(seed=5, classes=7, head="pooled"),
    "f": dict(seed=6, classes=3, method="lora"), "g": dict(seed=7, classes=2, method="lora", r=2, target_blocks=(0, 2), head="pooled"),
    "h": dict(seed=8, classes=4, head="tokens_mid"), "i": dict(seed=9, classes=3, method="lora", head="tokens_mid"),
}


@pytest.fixture
def served(tiny_backbone):
    backbone, info = tiny_backbone
    bank = AdapterBank(info, max_resident=16)
    references = {}
    for task_id, kw in TASKS.items():
        model = random_model(copy.deepcopy(backbone), **kw)
        bank.register(task_id, adapter_file(model, info), version=1)
        references[task_id] = model
    return backbone, bank, references


def reference_rows(references, backbone, images, task_ids):
    expected = []
    for row, task_id in enumerate(task_ids):
        x = images[row : row + 1]
        expected.append(backbone(x)[0] if task_id is None else references[task_id](x)[0])
    return expected


@pytest.mark.parametrize("strategy", ["grouped", "gathered", "auto"])
@pytest.mark.parametrize(
    "task_ids",
    [
        ["a"] * 6,  # one task
        ["a", "b", "a", "c", "b", "a"],  # several
        ["a", "b", "c", "d", "e", None],  # all tasks and a bare-backbone row
        [None, "e", None, "c", "c", "d"],
        [None, None],
        ["f"] * 4,  # LoRA alone
        ["a", "f", "g", "d", None, "f", "g", "b"],  # LoRA mixed with bottleneck adapters, heads and bare rows
        ["h", "a", "i", None, "e", "h"],  # middle-block heads beside every other head
        ["h"] * 3,
    ],
)
def test_each_row_equals_its_task_alone(served, strategy, task_ids):
    backbone, bank, references = served
    images = torch.randn(len(task_ids), 3, 16, 16, generator=torch.Generator().manual_seed(9))
    with torch.inference_mode():
        expected = reference_rows(references, backbone, images, task_ids)
    for ref in references.values():
        ref.remove_taps()  # the executor installs its own taps on the shared backbone
    executor = MixedTaskExecutor(backbone, bank, strategy=strategy, gather_from_tasks=3)
    results = executor.run(images, task_ids)
    for row, (result, want) in enumerate(zip(results, expected)):
        assert result.task_id == task_ids[row]
        assert result.output.shape == want.shape  # heads of different class counts in one batch
        torch.testing.assert_close(result.output, want, rtol=1e-5, atol=1e-5)


def test_unknown_task_fails_the_plan_before_any_compute(served):
    backbone, bank, references = served
    for ref in references.values():
        ref.remove_taps()
    with pytest.raises(UnknownTaskError, match="'zzz' is not registered"):
        MixedTaskExecutor(backbone, bank).run(torch.randn(2, 3, 16, 16), ["a", "zzz"])


@pytest.mark.parametrize("strategy", ["grouped", "gathered"])
def test_a_bfloat16_bank_serves_each_row_as_its_float32_task_alone_within_bfloat16_rounding(served, strategy):
    """The GPU serving precision, checked on the CPU: weights folded in float64, then cast once."""
    backbone, bank, references = served
    task_ids = ["a", "f", "g", "d", None, "b", "e", "c"]
    images = torch.randn(len(task_ids), 3, 16, 16, generator=torch.Generator().manual_seed(9))
    with torch.inference_mode():
        expected = reference_rows(references, backbone, images, task_ids)
    for ref in references.values():
        ref.remove_taps()
    low = AdapterBank(bank.info, dtype=torch.bfloat16, max_resident=16)
    for task_id, model in references.items():
        low.register(task_id, adapter_file(model, bank.info), version=1)
    executor = MixedTaskExecutor(copy.deepcopy(backbone).to(torch.bfloat16), low, strategy=strategy)
    results = executor.run(images, task_ids)
    for result, want in zip(results, expected):
        assert result.output.dtype == torch.bfloat16
        # bfloat16 keeps 8 significant bits; a token head sums a few hundred rounded terms, so the error is
        # measured against the row's own scale (up to 12% seen across initial seeds). A row computed with
        # another task's adapter is off by O(scale).
        error, scale = (result.output.float() - want).abs().max(), want.abs().max()
        assert error <= 0.15 * max(scale, 1.0), (result.task_id, float(error), float(scale))
