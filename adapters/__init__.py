"""MoSA and baseline adapters for frozen timm Vision Transformers, and the one-file adapter format.

The names below load on first use: a process that only reads adapter files or images (the ingress, the task
board) never imports timm or the training code.
"""

from importlib import import_module

_EXPORTS = {
    "BackboneInfo": "backbone", "BackboneSpec": "backbone", "load_backbone": "backbone", "save_backbone": "backbone",
    "AdapterConfig": "config",
    "AdapterConfigError": "errors", "AdapterFileError": "errors", "BackboneError": "errors",
    "BackboneMismatchError": "errors",
    "AdapterFile": "file_format", "AdapterHeader": "file_format", "load_adapter": "file_format",
    "save_adapter": "file_format",
    "build_adapted_model": "loading", "AdaptedViT": "model", "Preprocessor": "preprocess",
    "TrainConfig": "train_config", "train_adapter": "training",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
