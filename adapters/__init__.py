"""MoSA and baseline adapters for frozen timm Vision Transformers, and the one-file adapter format."""

from .backbone import BackboneInfo, BackboneSpec, load_backbone, save_backbone
from .config import AdapterConfig
from .errors import AdapterConfigError, AdapterFileError, BackboneError, BackboneMismatchError
from .file_format import AdapterFile, AdapterHeader, load_adapter, save_adapter
from .loading import build_adapted_model
from .model import AdaptedViT
from .preprocess import Preprocessor
from .training import TrainConfig, train_adapter

__all__ = [
    "AdaptedViT", "AdapterConfig", "AdapterConfigError", "AdapterFile", "AdapterFileError", "AdapterHeader",
    "BackboneError", "BackboneInfo", "BackboneMismatchError", "BackboneSpec", "Preprocessor", "TrainConfig",
    "build_adapted_model", "load_adapter", "load_backbone", "save_adapter", "save_backbone", "train_adapter",
]
