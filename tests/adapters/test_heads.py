"""Task heads: the token-map head keeps where things are, and format 1 files keep their pooled head."""

import copy
import json
from dataclasses import replace

import pytest
import torch
from safetensors.torch import save as safetensors_save

from mosaserve.adapters.config import AdapterConfig
from mosaserve.adapters.errors import AdapterFileError, BackboneMismatchError
from mosaserve.adapters.file_format import (
    METADATA_KEY, AdapterHeader, content_digest, encode_adapter, load_adapter,
)
from mosaserve.adapters.heads import PooledHead, TokenMapHead, middle_block
from mosaserve.adapters.loading import build_adapted_model
from mosaserve.adapters.model import AdaptedViT
from mosaserve.runtime.bank import AdapterBank
from mosaserve.runtime.executor import MixedTaskExecutor

from ..runtime.helpers import random_model

LABELS = ("a", "b", "c")


def test_token_head_sees_where_tokens_are_and_a_pooled_head_does_not(tiny_backbone):
    backbone, _ = tiny_backbone
    tokens = torch.randn(2, 1 + 16, 32, generator=torch.Generator().manual_seed(3))
    swapped = tokens.clone()
    swapped[:, [1, 16]] = tokens[:, [16, 1]]  # two patches change places; the same set of tokens
    torch.manual_seed(0)
    token_head, pooled_head = TokenMapHead(32, 1, 16, 4, 3), PooledHead(backbone, 3)
    assert not torch.allclose(token_head(tokens), token_head(swapped), atol=1e-3)
    torch.testing.assert_close(pooled_head(tokens), pooled_head(swapped))


def test_token_head_parameters_follow_its_formula(tiny_backbone):
    backbone, _ = tiny_backbone
    model = AdaptedViT(backbone, AdapterConfig(method="linear", head_rank=4), num_classes=3)
    dim, patches, k, classes = 32, 16, 4, 3
    assert sum(p.numel() for p in model.head.parameters()) == 2 * dim + (dim + 1) * k + (patches * k + 1) * classes


def test_a_middle_block_head_reads_that_block_with_its_adapter_beside_the_final_tokens(tiny_backbone, images):
    backbone, _ = tiny_backbone
    model = random_model(copy.deepcopy(backbone), seed=1, method="adapter", head="tokens_mid")
    dim, patches, k, classes = 32, 16, 3, 3
    assert sum(p.numel() for p in model.head.parameters()) == 4 * dim + (2 * dim + 1) * k + (patches * k + 1) * classes
    seen = []
    hook = model.backbone.blocks[middle_block(len(backbone.blocks))].register_forward_hook(lambda m, a, out: seen.append(out))
    with torch.inference_mode():
        logits = model(images)
        final, middle = model.backbone.forward_features(images)[:, 1:], seen[-1][:, 1:]  # the adapter's delta included
        head = model.head
        both = torch.cat([head.norm(final), head.norm_mid(middle)], dim=-1)
        torch.testing.assert_close(logits, head.out(head.down(both).flatten(1)))
    hook.remove()


def format_1_file(model: AdaptedViT, info) -> bytes:
    """What the previous release wrote: no head kind, no patch count, format_version 1."""
    tensors = model.export_tensors()
    raw = AdapterHeader(model.config, info, LABELS).to_dict(content_digest(tensors))
    raw["format_version"] = 1
    for name in ("head", "head_rank"):
        del raw["adapter"][name]
    del raw["backbone"]["num_patches"]
    return safetensors_save(tensors, metadata={METADATA_KEY: json.dumps(raw)})


@pytest.mark.parametrize("method", ["adapter", "linear", "lora"])
def test_a_format_1_file_loads_with_its_pooled_head_and_serves_as_before(tiny_backbone, images, method):
    backbone, info = tiny_backbone
    model = random_model(copy.deepcopy(backbone), seed=1, method=method, head="pooled")
    loaded = load_adapter(format_1_file(model, info), info.fingerprint)
    assert loaded.header.adapter.head == "pooled" and loaded.header.backbone.num_patches is None
    with torch.inference_mode():
        expected = model(images)
        torch.testing.assert_close(build_adapted_model(copy.deepcopy(backbone), info, loaded)(images), expected)
        bank = AdapterBank(info)
        bank.register("old", loaded, version=1)
        rows = MixedTaskExecutor(copy.deepcopy(backbone), bank).run(images, ["old"] * len(images))
    torch.testing.assert_close(torch.stack([r.output for r in rows]), expected, rtol=1e-5, atol=1e-5)
    # Written again today, it is a format 2 file with the same head.
    again = load_adapter(encode_adapter(loaded.header, loaded.tensors), info.fingerprint)
    assert again.header.adapter == loaded.header.adapter


def test_a_format_1_header_that_names_a_head_is_refused(tiny_backbone):
    backbone, info = tiny_backbone
    model = AdaptedViT(backbone, AdapterConfig(method="linear"), 3)
    tensors = model.export_tensors()
    raw = AdapterHeader(model.config, info, LABELS).to_dict(content_digest(tensors))
    raw["format_version"] = 1  # format 1 had no head kind: such a file was not written by any release
    del raw["backbone"]["num_patches"]
    with pytest.raises(AdapterFileError, match="adapter config has unknown fields: \\['head', 'head_rank'\\]"):
        load_adapter(safetensors_save(tensors, metadata={METADATA_KEY: json.dumps(raw)}))


def test_a_token_head_without_a_patch_count_is_refused(tiny_backbone):
    backbone, info = tiny_backbone
    model = AdaptedViT(backbone, AdapterConfig(method="linear"), 3)
    tensors = model.export_tensors()
    raw = AdapterHeader(model.config, info, LABELS).to_dict(content_digest(tensors))
    raw["backbone"]["num_patches"] = None
    with pytest.raises(AdapterFileError, match="'tokens' head needs the backbone's num_patches"):
        load_adapter(safetensors_save(tensors, metadata={METADATA_KEY: json.dumps(raw)}))


def test_a_token_head_for_another_patch_grid_is_refused_by_the_bank(tiny_backbone):
    backbone, info = tiny_backbone
    model = AdaptedViT(backbone, AdapterConfig(method="linear", head_rank=2), 3)
    tensors = model.export_tensors()
    tensors["head.out.weight"] = torch.zeros(3, 9 * 2)  # a 3 x 3 grid, where the served backbone has 4 x 4
    forged = load_adapter(encode_adapter(AdapterHeader(model.config, replace(info, num_patches=9), LABELS), tensors))
    with pytest.raises(BackboneMismatchError, match="reads 9 patch tokens, but the served backbone has 16"):
        AdapterBank(info).register("grid", forged, version=1)
