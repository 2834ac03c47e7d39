import pytest
import torch

from mosaserve.adapters.backbone import BackboneSpec, load_backbone, save_backbone
from mosaserve.adapters.errors import BackboneError


def test_checkpoint_round_trip_keeps_the_fingerprint(tiny_backbone, tiny_spec, tmp_path):
    model, info = tiny_backbone
    save_backbone(model, tmp_path / "bb.safetensors")
    torch.manual_seed(123)  # different random init: the checkpoint must overwrite it
    spec = BackboneSpec(tiny_spec.name, tiny_spec.kwargs, str(tmp_path / "bb.safetensors"))
    _, loaded = load_backbone(spec)
    assert loaded.fingerprint == info.fingerprint
    torch.manual_seed(123)
    assert load_backbone(tiny_spec)[1].fingerprint != info.fingerprint


def test_missing_checkpoint_fails_clearly_without_download(tiny_spec, tmp_path):
    spec = BackboneSpec(tiny_spec.name, tiny_spec.kwargs, str(tmp_path / "absent.safetensors"))
    with pytest.raises(BackboneError, match="does not exist.*no hub download"):
        load_backbone(spec)


def test_non_vit_model_is_refused():
    with pytest.raises(BackboneError, match="not a timm VisionTransformer"):
        load_backbone(BackboneSpec("resnet18", {}))
