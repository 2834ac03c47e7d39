"""The served demo reuses a trained task file only when it fits today's backbone and head."""

import copy

from mosaserve.adapters.config import AdapterConfig
from mosaserve.adapters.file_format import AdapterHeader, save_adapter
from mosaserve.adapters.model import AdaptedViT
from mosaserve.deploy.demo import _fits


def test_a_demo_file_with_an_older_head_or_another_backbone_is_trained_again(tiny_backbone, tmp_path):
    backbone, info = tiny_backbone
    for head in ("tokens", "pooled"):
        model = AdaptedViT(copy.deepcopy(backbone), AdapterConfig(method="linear", head=head), 3)
        save_adapter(tmp_path / f"{head}.safetensors", AdapterHeader(model.config, info, ("a", "b", "c")),
                     model.export_tensors())
    assert _fits(tmp_path / "tokens.safetensors", info.fingerprint)
    assert not _fits(tmp_path / "pooled.safetensors", info.fingerprint)  # kept loadable, but retrained for the demo
    assert not _fits(tmp_path / "tokens.safetensors", "0" * 64)
    assert not _fits(tmp_path / "missing.safetensors", info.fingerprint)
