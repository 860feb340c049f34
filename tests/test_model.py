"""Backbones, the trunk/branch split and MemoNet's expansion rules (memo-reference.md)."""

from __future__ import annotations

import pytest
import torch

from memo_edge.model import BACKBONES, MemoNet, create_backbone, split_parameter_counts

# (trunk, branch) learnable parameters from the reference.
REFERENCE_COUNTS = {
    "resnet14": (42_320, 129_536),
    "resnet20": (65_552, 203_520),
    "resnet26": (88_784, 277_504),
    "resnet32": (112_016, 351_488),
    "resnet18": (2_782_784, 8_393_728),
}


@pytest.mark.parametrize("name", sorted(REFERENCE_COUNTS))
def test_parameter_counts_match_reference(name: str) -> None:
    assert split_parameter_counts(name) == REFERENCE_COUNTS[name]


def test_resnet32_total_is_463504() -> None:
    assert sum(split_parameter_counts("resnet32")) == 463_504


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_trunk_and_branch_shapes(name: str) -> None:
    spec = create_backbone(name)
    size = 64 if name == "resnet18" else 32
    x = torch.randn(2, 3, size, size)
    shared = spec.trunk(x)
    assert shared.shape[1] == spec.trunk_channels
    feats = spec.new_branch()(shared)
    assert feats.shape == (2, spec.feature_dim)
    assert torch.isfinite(feats).all()


def test_resnet32_trunk_output_is_32x16x16() -> None:
    spec = create_backbone("resnet32")
    assert spec.trunk(torch.zeros(1, 3, 32, 32)).shape == (1, 32, 16, 16)


@pytest.mark.parametrize("split,trunk_channels", [(1, 16), (2, 32)])
def test_split_moves_stages_between_trunk_and_branch(split: int, trunk_channels: int) -> None:
    spec = create_backbone("resnet20", split=split)
    trunk, branch = split_parameter_counts("resnet20", split=split)
    assert trunk + branch == 269_072
    assert spec.trunk(torch.zeros(1, 3, 32, 32)).shape[1] == trunk_channels


def test_bad_backbone_and_split_are_rejected() -> None:
    with pytest.raises(ValueError, match="resnet32"):
        create_backbone("vgg11")
    with pytest.raises(ValueError, match="split"):
        create_backbone("resnet32", split=3)


def test_expand_copies_previous_branch_and_old_classifier_block() -> None:
    torch.manual_seed(0)
    net = MemoNet("resnet8")
    net.expand(3)
    assert net.aux_fc is None
    with torch.no_grad():  # make branch 0 differ from any fresh init
        for p in net.branches[0].parameters():
            p.add_(torch.randn_like(p))
    old_w, old_b = net.fc.weight.clone(), net.fc.bias.clone()
    net.expand(2)

    for (k0, v0), (k1, v1) in zip(net.branches[0].state_dict().items(), net.branches[1].state_dict().items()):
        assert k0 == k1 and torch.equal(v0, v1)
    assert net.fc.weight.shape == (5, 2 * net.feature_dim)
    assert torch.equal(net.fc.weight[:3, : net.feature_dim], old_w)
    assert torch.equal(net.fc.bias[:3], old_b)
    # The rest keeps its random init (not zero), bias of new classes is 0.
    assert net.fc.weight[3:].abs().sum() > 0 and net.fc.weight[:3, net.feature_dim :].abs().sum() > 0
    assert torch.equal(net.fc.bias[3:], torch.zeros(2))
    assert net.aux_fc is not None and net.aux_fc.weight.shape == (3, net.feature_dim)
    assert (net.num_tasks, net.num_classes, net.known_classes) == (2, 5, 3)


def test_forward_shapes() -> None:
    net = MemoNet("resnet8")
    net.expand(2)
    net.expand(3)
    out = net(torch.randn(4, 3, 32, 32))
    assert out.logits.shape == (4, 5)
    assert out.aux_logits.shape == (4, 4)
    assert out.features.shape == (4, 2 * net.feature_dim)


def test_weight_align_equalises_mean_row_norms() -> None:
    torch.manual_seed(0)
    net = MemoNet("resnet8")
    net.expand(4)
    net.expand(3)
    with torch.no_grad():
        net.fc.weight[4:] *= 5.0  # new classes dominate, as after training on new data
    gamma = net.weight_align()
    norms = net.fc.weight.norm(dim=1)
    assert gamma < 1.0
    assert torch.allclose(norms[:4].mean(), norms[4:].mean(), rtol=1e-5)


def test_train_mode_keeps_frozen_parts_in_eval() -> None:
    net = MemoNet("resnet8")
    net.expand(2)
    net.expand(2)
    net.freeze_old_branches()
    net.freeze_trunk()
    net.train()
    assert not net.branches[0].training and not net.trunk.training
    assert net.branches[1].training
    assert not any(p.requires_grad for p in net.branches[0].parameters())
    assert not any(p.requires_grad for p in net.trunk.parameters())


# -- declared stages ----------------------------------------------------------------------------
def _owned(net: MemoNet, branch: int) -> dict[int, str]:
    """id of every parameter and buffer reached through the declared stages -> its stage (each once)."""
    owned: dict[int, str] = {}
    for stage in net.stage_info:
        for module in net.stage_modules(stage, branch):
            for t in [*module.parameters(), *module.buffers()]:
                assert id(t) not in owned, f"{stage.name} shares a tensor with {owned[id(t)]}"
                owned[id(t)] = stage.name
    return owned


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_declared_stages_cover_every_split_exactly_once(name: str) -> None:
    """Every split (0 = DER, the whole backbone per task) and replay's single branch (grow=False): the
    stages hold each trunk/branch tensor once, the classifiers none, and run in order they are the forward."""
    stages = create_backbone(name).stages
    assert [s.name for s in stages][0] == "stem" and len({s.name for s in stages}) == len(stages)
    with pytest.raises(ValueError, match="split"):
        create_backbone(name, split=len(stages) - 1)  # at least one stage stays in the branch
    size = 32  # ResNet-18 too: its layer4 (reduction 32) is then 1x1
    x = torch.randn(1, 3, size, size)
    for split in range(len(stages) - 1):
        for grow in (True, False):
            net = MemoNet(name, split=split, grow=grow)
            net.expand(2)
            net.expand(3)
            assert [s.part for s in net.stage_info] == ["trunk"] * (split + 1 if split else 0) + ["branch"] * (
                len(stages) - (split + 1 if split else 0))
            assert [s.name for s in net.stage_info] == [s.name for s in stages]
            net.eval()
            everything = {id(t) for t in [*net.parameters(), *net.buffers()]}
            classifiers = {id(p) for fc in (net.fc, net.aux_fc) if fc is not None for p in fc.parameters()}
            covered: set[int] = set()
            for b in range(net.num_branches):
                owned = _owned(net, b)
                parts = (net.trunk, net.branches[b])
                expected = {id(t) for part in parts for t in [*part.parameters(), *part.buffers()]}
                assert set(owned) == expected, (split, grow, b)
                covered |= set(owned)
                with torch.no_grad():
                    outs = list(net.forward_stages(x, b))
                    pooled = torch.flatten(outs[-1][1].mean(dim=(2, 3)), 1)
                    torch.testing.assert_close(pooled, net.branches[b](net.trunk(x)), rtol=1e-4, atol=1e-5)
                for stage, y in outs:
                    assert tuple(y.shape[1:]) == (stage.channels, size // stage.reduction, size // stage.reduction)
            assert covered == everything - classifiers  # only the classifiers are deliberately in no stage
            assert net.feature_dim == stages[-1].channels
            with pytest.raises(ValueError, match=f"branch {net.num_branches}"):
                net.stage_modules(stages[-1], net.num_branches)


def test_trunk_channels_follow_the_declared_stages() -> None:
    assert [create_backbone("resnet20", split=s).trunk_channels for s in (0, 1, 2)] == [3, 16, 32]
    assert [create_backbone("resnet18", split=s).trunk_channels for s in (0, 1, 2, 3)] == [3, 64, 128, 256]
