"""A training run's state at an epoch end, enough to resume it exactly, and its checkpoint file.

Resuming from a `TrainState` continues a run as if it had never stopped (bit for bit on CPU). It
holds what the rest of the run reads:
- the trainable tensors: adapters and head, with MoSA's frozen initial values and expert masks;
- the optimizer's per-parameter state (AdamW moments and step counts, one per expert for MoSA);
- the global step, from which the learning-rate schedule is computed;
- every random stream the run draws from: the shuffle generator (batch order), torch's global
  generator (dropout) and Python `random` generators (MoSA's expert draws).

The file is a safetensors file: tensors, plus one JSON document in the safetensors metadata with
the counters, the run's identity and a sha256 of the tensor content. Written atomically, read
without unpickling; any damage raises `TrainStateError`.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save as safetensors_save
from torch import Tensor, nn

from .atomic_write import write_atomically
from .errors import TrainStateError
from .file_format import content_digest
from .model import AdaptedViT
from .mosa import MoSAAdapter

FORMAT_NAME = "mosaserve-train-state"
FORMAT_VERSION = 1
METADATA_KEY = "mosaserve-train-state"
HEADER_FIELDS = {"format", "format_version", "epochs_done", "steps", "epoch_losses", "run", "draw_rngs",
                 "content_sha256"}


@dataclass
class TrainState:
    epochs_done: int
    steps: int  # optimizer steps taken; the learning rate of the next step is a function of it
    epoch_losses: list[float]
    run: dict[str, Any]  # what identifies the run (configs, example count): a state resumes only its own run
    trainable: dict[str, Tensor]  # "adapters.*" and "head.*" state dicts, buffers included
    optimizer: dict[int, dict[str, Tensor]]  # the optimizer's state_dict()["state"]
    shuffle_rng: Tensor  # uint8 state of the batch-order generator
    torch_rng: Tensor  # uint8 state of torch's global CPU generator
    draw_rngs: list[list]  # Python `random` states (version, 625 words, gauss_next) of MoSA's expert draws

    def to_tensors(self) -> tuple[dict[str, Tensor], dict[str, Any]]:
        """The tensors to store and the JSON header that goes with them."""
        tensors = {f"trainable.{name}": t for name, t in self.trainable.items()}
        for index, slots in self.optimizer.items():
            tensors.update({f"optimizer.{index}.{slot}": t for slot, t in slots.items()})
        tensors.update({"rng.shuffle": self.shuffle_rng, "rng.torch": self.torch_rng})
        header = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "epochs_done": self.epochs_done,
                  "steps": self.steps, "epoch_losses": list(self.epoch_losses), "run": self.run,
                  "draw_rngs": self.draw_rngs}
        return tensors, header

    @classmethod
    def from_tensors(cls, tensors: dict[str, Tensor], header: dict[str, Any]) -> "TrainState":
        trainable, optimizer = {}, {}
        for name, tensor in tensors.items():
            group, _, rest = name.partition(".")
            if group == "trainable":
                trainable[rest] = tensor
            elif group == "optimizer":
                index, _, slot = rest.partition(".")
                optimizer.setdefault(int(index), {})[slot] = tensor
        return cls(int(header["epochs_done"]), int(header["steps"]), [float(v) for v in header["epoch_losses"]],
                   dict(header["run"]), trainable, optimizer, tensors["rng.shuffle"], tensors["rng.torch"],
                   [list(s) for s in header["draw_rngs"]])


# ---------------------------------------------------------------- from and into a live run


def trainable_modules(model: AdaptedViT) -> dict[str, nn.Module]:
    return {"adapters": model.adapters, "head": model.head}


def draw_generators(model: AdaptedViT) -> list[random.Random]:
    """MoSA's expert-draw generators, each once (the adapters of one model share one), in block order."""
    found: dict[int, random.Random] = {}
    for module in model.adapters.values():
        if isinstance(module, MoSAAdapter):
            found.setdefault(id(module.draw_rng), module.draw_rng)
    return list(found.values())


def _copy(tensor: Tensor) -> Tensor:
    return tensor.detach().to("cpu").contiguous().clone()


def capture_train_state(model: AdaptedViT, optimizer: torch.optim.Optimizer, shuffle: torch.Generator,
                        epoch_losses: list[float], steps: int, run: dict[str, Any]) -> TrainState:
    """A copy of the run's state now, at an epoch end: training on does not change it."""
    trainable = {f"{prefix}.{name}": _copy(t) for prefix, module in trainable_modules(model).items()
                 for name, t in module.state_dict().items()}
    optimizer_state = {}
    for index, slots in optimizer.state_dict()["state"].items():
        if not all(isinstance(v, Tensor) for v in slots.values()):
            raise TrainStateError(f"optimizer state of parameter {index} holds non-tensor values: {sorted(slots)}")
        optimizer_state[int(index)] = {slot: _copy(v) for slot, v in slots.items()}
    draws = [[version, list(words), gauss] for version, words, gauss in (g.getstate() for g in draw_generators(model))]
    return TrainState(len(epoch_losses), steps, list(epoch_losses), json.loads(json.dumps(run)), trainable,
                      optimizer_state, shuffle.get_state(), torch.get_rng_state(), draws)


def restore_train_state(state: TrainState, model: AdaptedViT, optimizer: torch.optim.Optimizer,
                        shuffle: torch.Generator, run: dict[str, Any]) -> None:
    """Puts a fresh model, optimizer and shuffle generator (and torch's generator) where the run stopped."""
    _check_same_run(state, run)
    try:
        for prefix, module in trainable_modules(model).items():
            own = {n[len(prefix) + 1:]: _copy(t) for n, t in state.trainable.items() if n.startswith(prefix + ".")}
            module.load_state_dict(own, strict=True)
        _restore_optimizer(state.optimizer, optimizer)
        shuffle.set_state(state.shuffle_rng)
        torch.set_rng_state(state.torch_rng)
        _restore_draws(state.draw_rngs, draw_generators(model))
    except (RuntimeError, ValueError, TypeError, IndexError) as exc:
        raise TrainStateError(f"the checkpoint does not fit this model: {exc}") from exc


def _check_same_run(state: TrainState, run: dict[str, Any]) -> None:
    expected = json.loads(json.dumps(run))
    if state.run != expected:
        differing = sorted(k for k in set(expected) | set(state.run) if expected.get(k) != state.run.get(k))
        raise TrainStateError(f"the checkpoint belongs to another run: {differing} differ")
    if not 0 <= state.epochs_done <= run["epochs"] or state.epochs_done != len(state.epoch_losses):
        raise TrainStateError(f"the checkpoint's epoch count {state.epochs_done} is inconsistent")


def _restore_optimizer(saved: dict[int, dict[str, Tensor]], optimizer: torch.optim.Optimizer) -> None:
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for index, slots in saved.items():
        if not 0 <= index < len(params):
            raise ValueError(f"optimizer state for parameter {index}, but the optimizer has {len(params)}")
        for slot, value in slots.items():
            if slot.startswith("exp_avg") and value.shape != params[index].shape:
                raise ValueError(f"optimizer {slot} of parameter {index} has shape {tuple(value.shape)}, "
                                 f"the parameter {tuple(params[index].shape)}")
    groups = optimizer.state_dict()["param_groups"]  # hyper-parameters come from the (checked) config
    optimizer.load_state_dict({"state": {i: {k: _copy(v) for k, v in s.items()} for i, s in saved.items()},
                               "param_groups": groups})


def _restore_draws(saved: list[list], generators: list[random.Random]) -> None:
    if len(saved) != len(generators):
        raise ValueError(f"{len(saved)} expert-draw generator states for {len(generators)} generators")
    for generator, (version, words, gauss) in zip(generators, saved):
        generator.setstate((version, tuple(words), gauss))


# ---------------------------------------------------------------- the checkpoint file


def encode_train_state(state: TrainState) -> bytes:
    tensors, header = state.to_tensors()
    tensors = {name: t.detach().to("cpu").contiguous() for name, t in tensors.items()}
    header["content_sha256"] = content_digest(tensors)
    return safetensors_save(tensors, metadata={METADATA_KEY: json.dumps(header)})


def save_train_state(path: str | os.PathLike, state: TrainState) -> Path:
    """Atomically: a reader (a resuming run) sees the previous checkpoint or this one, never a torn file."""
    return write_atomically(path, encode_train_state(state))


def load_train_state(path: str | os.PathLike) -> TrainState:
    """Reads and checks a checkpoint; `TrainStateError` says what is wrong with it."""
    tensors, metadata = _read_safetensors(Path(path))
    header = _parse_header(metadata, path)
    if content_digest(tensors) != header["content_sha256"]:
        raise TrainStateError(f"training checkpoint {path} is damaged: its tensors do not match the recorded sha256")
    try:
        return TrainState.from_tensors(tensors, header)
    except (KeyError, ValueError, TypeError) as exc:
        raise TrainStateError(f"training checkpoint {path} is malformed: {type(exc).__name__}: {exc}") from exc


def _read_safetensors(path: Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    if not path.is_file():
        raise TrainStateError(f"no training checkpoint at {path}")
    try:
        with safe_open(str(path), framework="pt") as handle:
            return {name: handle.get_tensor(name) for name in handle.keys()}, dict(handle.metadata() or {})
    except Exception as exc:  # noqa: BLE001 - the Rust reader's errors all mean "not a readable safetensors file"
        raise TrainStateError(f"training checkpoint {path} is unreadable: {exc}") from exc


def _parse_header(metadata: dict[str, str], path: str | os.PathLike) -> dict[str, Any]:
    try:
        header = json.loads(metadata[METADATA_KEY])
    except (KeyError, json.JSONDecodeError) as exc:
        raise TrainStateError(f"{path} is not a mosaserve training checkpoint: no readable {METADATA_KEY!r} "
                              "metadata") from exc
    if not isinstance(header, dict) or set(header) != HEADER_FIELDS or header["format"] != FORMAT_NAME:
        raise TrainStateError(f"{path} is not a mosaserve training checkpoint (format {FORMAT_NAME})")
    if header["format_version"] != FORMAT_VERSION:
        raise TrainStateError(f"checkpoint format_version {header['format_version']!r} is not supported "
                              f"(this reader: {FORMAT_VERSION})")
    return header
