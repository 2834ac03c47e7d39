"""Injection into real timm ViTs: the formula of the parallel adapter, LoRA, and the frozen backbone."""

import pytest
import torch
import torch.nn.functional as F

from mosaserve.adapters.backbone import BackboneSpec, load_backbone
from mosaserve.adapters.config import AdapterConfig
from mosaserve.adapters.model import AdaptedViT
from mosaserve.adapters.training import TrainConfig, build_optimizer, task_loss

SMALL = {"img_size": 16, "patch_size": 8, "depth": 2}


@pytest.mark.parametrize(
    "name, kwargs",
    [
        ("vit_tiny_patch16_224", SMALL),
        ("vit_small_patch16_224", SMALL),
        ("vit_base_patch16_224", {**SMALL, "depth": 1}),
        ("deit_tiny_patch16_224", SMALL),
        ("vit_tiny_patch16_224", {**SMALL, "init_values": 0.1}),  # LayerScale blocks
    ],
)
def test_parallel_adapter_follows_the_adaptformer_formula(name, kwargs):
    torch.manual_seed(0)
    backbone, _ = load_backbone(BackboneSpec(name, kwargs))
    model = AdaptedViT(backbone, AdapterConfig(method="adapter", r=4), num_classes=3).eval()
    with torch.no_grad():
        for p in model.adapters.parameters():
            p.normal_()
    block, adapter = backbone.blocks[0], model.adapters["0"]
    x = torch.randn(2, 5, backbone.num_features)
    h = x + block.ls1(block.attn(block.norm1(x)))
    expected = h + block.ls2(block.mlp(block.norm2(h))) + 0.1 * adapter.up(F.gelu(adapter.down(adapter.norm(h))))
    torch.testing.assert_close(block(x), expected, rtol=1e-5, atol=1e-5)
    model.remove_taps()
    torch.testing.assert_close(block(x), h + block.ls2(block.mlp(block.norm2(h))))


def test_lora_equals_a_merged_qkv_weight(tiny_backbone):
    backbone, _ = tiny_backbone
    model = AdaptedViT(backbone, AdapterConfig(method="lora", r=2, lora_alpha=4.0), num_classes=3).eval()
    lora = model.adapters["1"]
    with torch.no_grad():
        lora.lora_b.normal_()
    qkv = backbone.blocks[1].attn.qkv
    x = torch.randn(4, backbone.num_features)
    merged_weight = qkv.weight + 2.0 * lora.lora_b @ lora.lora_a
    torch.testing.assert_close(qkv(x), x @ merged_weight.t() + qkv.bias, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("method", ["mosa", "adapter", "lora"])
def test_untrained_adapter_leaves_the_backbone_output_unchanged(tiny_backbone, images, method):
    backbone, _ = tiny_backbone
    bare = backbone(images)
    model = AdaptedViT(backbone, AdapterConfig(method=method), num_classes=3).eval()
    torch.testing.assert_close(backbone(images), bare, rtol=0, atol=0)
    torch.testing.assert_close(model(images), model.head(backbone.forward_features(images)))


@pytest.mark.parametrize("method", ["mosa", "adapter", "lora", "linear"])
def test_training_never_changes_the_frozen_backbone(tiny_backbone, images, method):
    backbone, _ = tiny_backbone
    frozen = {k: v.clone() for k, v in backbone.state_dict().items()}
    model = AdaptedViT(backbone, AdapterConfig(method=method), num_classes=3)
    optimizer = build_optimizer(model, TrainConfig(lr=0.05))
    model.train()
    for _ in range(3):
        task_loss(model, images, torch.tensor([0, 1, 2, 0, 1]), 0.0).backward()
        optimizer.step()
        optimizer.zero_grad()
    assert all(torch.equal(frozen[k], v) for k, v in backbone.state_dict().items())
    assert not backbone.training  # the frozen backbone stays in eval mode while adapters train
    trainable = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == ({"head"} if method == "linear" else {"adapters", "head"})


@pytest.mark.parametrize("optimizer", ["expert-adamw", "expert-adamw-skip"])
def test_mosa_training_step_changes_only_experts_drawn(tiny_backbone, images, optimizer):
    """The official rule steps every expert drawn so far; the skip rule only the one drawn in the step."""
    backbone, _ = tiny_backbone
    config = AdapterConfig(method="mosa", consistency_weight=0.0, dropout=0.0)
    model = AdaptedViT(backbone, config, num_classes=3)
    optimizer = build_optimizer(model, TrainConfig(lr=0.05, optimizer=optimizer))
    model.train()
    drawn_so_far = [set() for _ in model.expert_splits()]
    for _ in range(4):
        before = [s.weight.detach().clone() for s in model.expert_splits()]
        task_loss(model, images, torch.tensor([0, 1, 2, 0, 1]), 0.0).backward()
        active = [s.active.nonzero().flatten().tolist() for s in model.expert_splits()]
        optimizer.step()
        optimizer.zero_grad()
        for split, old, drawn, seen in zip(model.expert_splits(), before, active, drawn_so_far):
            assert len(drawn) == 1  # one expert per block per forward pass
            seen.add(drawn[0])
            stepped = seen if optimizer.undrawn == "step" else {drawn[0]}
            changed = split.weight.detach() != old
            outside = torch.ones_like(changed)
            for expert in stepped:
                outside &= ~split.mask(expert)
            assert not changed[outside].any()


def test_mosa_merge_in_place_keeps_eval_outputs(tiny_backbone, images):
    backbone, _ = tiny_backbone
    model = AdaptedViT(backbone, AdapterConfig(method="mosa"), num_classes=3).eval()
    with torch.no_grad():
        for split in model.expert_splits():
            split.weight.normal_()
    before = model(images)
    model.merge_()
    assert not model.expert_splits()
    torch.testing.assert_close(model(images), before, rtol=1e-6, atol=1e-6)


def test_target_blocks_restrict_where_adapters_go(tiny_backbone):
    backbone, _ = tiny_backbone
    model = AdaptedViT(backbone, AdapterConfig(method="adapter", target_blocks=(2, 0)), num_classes=2)
    assert sorted(model.adapters.keys()) == ["0", "2"]
    assert sorted(model.export_tensors()) == sorted(
        [f"blocks.{b}.{m}.{p}" for b in (0, 2) for m in ("norm", "down", "up") for p in ("weight", "bias")]
        + [f"head.{m}.{p}" for m in ("norm", "down", "out") for p in ("weight", "bias")]
    )


@pytest.mark.parametrize("method", ["mosa", "lora", "linear"])
def test_initial_weights_depend_on_the_seed_alone(tiny_backbone, method):
    backbone, _ = tiny_backbone
    build = lambda seed: AdaptedViT(backbone, AdapterConfig(method=method, r=4), num_classes=3, seed=seed).state_dict()
    torch.manual_seed(1)
    first = build(7)
    torch.manual_seed(2)
    state_before = torch.get_rng_state()
    again, other = build(7), build(8)
    assert torch.equal(torch.get_rng_state(), state_before)  # the caller's random stream is left as it was
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert any(not torch.equal(first[k], other[k]) for k in first)
