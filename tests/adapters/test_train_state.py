"""A run stopped at an epoch end and resumed from its checkpoint file ends exactly where an unbroken run ends."""

import copy

import pytest
import torch

from mosaserve.adapters.backbone import load_backbone
from mosaserve.adapters.config import AdapterConfig
from mosaserve.adapters.errors import TrainStateError
from mosaserve.adapters.model import AdaptedViT
from mosaserve.adapters.train_state import TrainState, load_train_state, save_train_state
from mosaserve.adapters.training import TrainConfig, train_adapter

from ..conftest import TINY_VIT

EPOCHS, STOP_AFTER = 4, 2


class Stopped(Exception):
    """Stands in for a crash right after an epoch's checkpoint was written."""


@pytest.fixture(scope="module")
def backbone():
    torch.manual_seed(0)
    return load_backbone(TINY_VIT)[0]


@pytest.fixture(scope="module")
def data():
    generator = torch.Generator().manual_seed(7)
    return torch.randn(40, 3, 16, 16, generator=generator), torch.randint(0, 3, (40,), generator=generator)


def fresh_model(backbone, method: str, seed: int = 3407) -> AdaptedViT:
    """Initial values drawn from `seed` (torch's generator); MoSA's expert draws seeded by it too."""
    torch.manual_seed(seed)
    # dropout 0.2: torch's global generator matters during training, not only MoSA's expert draws.
    return AdaptedViT(copy.deepcopy(backbone), AdapterConfig(method=method, r=4, dropout=0.2), 3, seed=seed)


def train_until_stopped(model, data, cfg, path) -> None:
    def save_then_maybe_stop(state: TrainState) -> None:
        save_train_state(path, state)
        if state.epochs_done == STOP_AFTER:
            raise Stopped()

    with pytest.raises(Stopped):
        train_adapter(model, *data, cfg, progress=False, on_checkpoint=save_then_maybe_stop)


@pytest.mark.parametrize("method,optimizer", [("mosa", "expert-adamw"), ("mosa", "adamw"),
                                              ("adapter", "expert-adamw"), ("lora", "adamw")])
def test_resumed_run_equals_the_unbroken_run_exactly(backbone, data, tmp_path, method, optimizer):
    cfg = TrainConfig(epochs=EPOCHS, batch_size=16, lr=0.02, warmup_epochs=1.5, optimizer=optimizer)
    unbroken = fresh_model(backbone, method)
    straight = train_adapter(unbroken, *data, cfg, progress=False)

    train_until_stopped(fresh_model(backbone, method), data, cfg, tmp_path / "ckpt.safetensors")
    resumed_model = fresh_model(backbone, method, seed=1)  # other initial values and draw seed: overwritten
    checkpoint = load_train_state(tmp_path / "ckpt.safetensors")
    assert checkpoint.epochs_done == STOP_AFTER and checkpoint.steps == STOP_AFTER * 3
    epochs_seen = []
    resumed = train_adapter(resumed_model, *data, cfg, progress=False, resume=checkpoint,
                            on_epoch=lambda epoch, loss: epochs_seen.append(epoch))

    assert epochs_seen == list(range(STOP_AFTER, EPOCHS))
    assert resumed.epoch_losses == straight.epoch_losses and resumed.steps == straight.steps == EPOCHS * 3
    for (name, want), (_, got) in zip(unbroken.state_dict().items(), resumed_model.state_dict().items()):
        assert torch.equal(want, got), name  # bit for bit on CPU
    assert straight.epoch_losses[-1] != straight.epoch_losses[STOP_AFTER - 1]  # it did train on after the stop


def test_a_checkpoint_after_the_last_epoch_resumes_to_no_more_training(backbone, data, tmp_path):
    cfg = TrainConfig(epochs=2, batch_size=16)
    states = []
    train_adapter(fresh_model(backbone, "mosa"), *data, cfg, progress=False, on_checkpoint=states.append)
    assert [s.epochs_done for s in states] == [1, 2]
    model = fresh_model(backbone, "mosa", seed=5)
    result = train_adapter(model, *data, cfg, progress=False, resume=states[-1])
    assert result.steps == 6 and len(result.epoch_losses) == 2 and not model.training
    assert torch.equal(model.head.out.weight, states[-1].trainable["head.out.weight"])


def test_a_checkpoint_resumes_only_its_own_run(backbone, data, tmp_path):
    cfg = TrainConfig(epochs=3, batch_size=16)
    states = []
    train_adapter(fresh_model(backbone, "mosa"), *data, cfg, progress=False, on_checkpoint=states.append)
    with pytest.raises(TrainStateError, match="another run.*train_config"):
        train_adapter(fresh_model(backbone, "mosa"), *data, TrainConfig(epochs=3, batch_size=16, lr=0.1),
                      progress=False, resume=states[0])
    with pytest.raises(TrainStateError, match="another run.*examples"):
        train_adapter(fresh_model(backbone, "mosa"), data[0][:30], data[1][:30], cfg, progress=False, resume=states[0])
    with pytest.raises(TrainStateError, match="another run.*adapter_config"):
        train_adapter(fresh_model(backbone, "adapter"), *data, cfg, progress=False, resume=states[0])


def test_damaged_or_foreign_checkpoint_files_are_refused_with_a_reason(backbone, data, tmp_path):
    states = []
    train_adapter(fresh_model(backbone, "adapter"), *data, TrainConfig(epochs=1, batch_size=16), progress=False,
                  on_checkpoint=states.append)
    path = save_train_state(tmp_path / "ckpt.safetensors", states[0])
    good = path.read_bytes()
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.safetensors"]  # no temp file left behind

    with pytest.raises(TrainStateError, match="no training checkpoint"):
        load_train_state(tmp_path / "absent.safetensors")
    path.write_bytes(good[: len(good) // 2])
    with pytest.raises(TrainStateError, match="unreadable"):
        load_train_state(path)
    flipped = bytearray(good)
    flipped[-3] ^= 0xFF  # a bit of the last tensor's data
    path.write_bytes(bytes(flipped))
    with pytest.raises(TrainStateError, match="sha256"):
        load_train_state(path)
    from safetensors.torch import save as safetensors_save

    path.write_bytes(safetensors_save({"x": torch.zeros(2)}))
    with pytest.raises(TrainStateError, match="not a mosaserve training checkpoint"):
        load_train_state(path)
