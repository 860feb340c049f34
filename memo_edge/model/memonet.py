"""MemoNet: one shared trunk, one branch per task, a classifier over the concatenated branch features.

Rules (Zhou et al., ICLR 2023; reference implementation ``AdaptiveNet``):
- ``expand``: a new branch starts as a copy of the previous one; the classifier grows to
  Linear(d*T, seen) with the old weights copied into its top-left block and the rest freshly
  initialised; a fresh auxiliary classifier Linear(d, new + 1) sees the newest branch only.
- ``freeze_old_branches``: old branches get no gradient and keep BN in eval; the trunk is frozen
  (BN eval) too when the run does not train it after task 0.
- ``weight_align``: scale new-class classifier rows so their mean norm equals the old rows'.

Baselines of the paper's comparison are the same network with other settings: DER-style expansion is
``split=0`` (nothing shared: every task adds a whole backbone), a single-backbone replay model is
``grow=False`` (one branch for all tasks, only the classifier grows).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import NamedTuple

import torch
from torch import Tensor, nn

from memo_edge.memory.alignment import model_bytes
from memo_edge.model.backbones import Backbone, StageInfo, create_backbone
from memo_edge.model.frozen import StackedBranches, can_stack

__all__ = ["MemoNet", "MemoOutput", "new_linear"]


def new_linear(in_features: int, out_features: int) -> nn.Linear:
    """Classifier init of the reference (SimpleLinear): kaiming-uniform weights, zero bias."""
    layer = nn.Linear(in_features, out_features)
    nn.init.kaiming_uniform_(layer.weight, nonlinearity="linear")
    nn.init.zeros_(layer.bias)
    return layer


def _frozen(module: nn.Module) -> bool:
    """No parameter of ``module`` takes a gradient (an empty trunk counts as frozen)."""
    return not any(p.requires_grad for p in module.parameters())


class MemoOutput(NamedTuple):
    logits: Tensor
    aux_logits: Tensor | None
    features: Tensor


class MemoNet(nn.Module):
    def __init__(self, backbone: str = "resnet32", *, split: int | None = None, grow: bool = True) -> None:
        super().__init__()
        spec: Backbone = create_backbone(backbone, split=split)
        self.grow = grow
        self.backbone_name = spec.name
        self.split = spec.split
        self.feature_dim = spec.feature_dim
        self.stage_info: tuple[StageInfo, ...] = spec.stages  # as timm's feature_info: what each stage is
        self._new_branch = spec.new_branch
        self.trunk = spec.trunk
        self.branches = nn.ModuleList()
        self.fc: nn.Linear | None = None
        self.aux_fc: nn.Linear | None = None
        self.task_sizes: list[int] = []
        self.trunk_frozen = False
        self._stack: StackedBranches | None = None  # the frozen old branches as one network, while a task trains

    # -- shape of the model -------------------------------------------------------------------
    @property
    def num_tasks(self) -> int:
        return len(self.task_sizes)

    @property
    def num_branches(self) -> int:
        return len(self.branches)

    @property
    def num_classes(self) -> int:
        return sum(self.task_sizes)

    def model_bytes(self) -> int:
        """The model side of the memory budget: 4 x parameters of trunk + branches, classifiers
        excluded (as in the paper), frozen parameters included."""
        return model_bytes(self.trunk, *self.branches)

    @property
    def known_classes(self) -> int:
        """Classes learned before the newest task."""
        return sum(self.task_sizes[:-1])

    # -- growing ------------------------------------------------------------------------------
    def expand(self, num_new: int) -> None:
        """Start a new task with ``num_new`` classes."""
        if num_new < 1:
            raise ValueError(f"a task needs at least one new class, got {num_new}")
        if self.grow or not self.branches:
            branch = self._new_branch()
            if self.branches:
                branch.load_state_dict(self.branches[-1].state_dict())
            self.branches.append(branch.to(self._device()))
        self.task_sizes.append(num_new)
        self._stack = None

        old_fc = self.fc
        fc = new_linear(self.feature_dim * self.num_branches, self.num_classes).to(self._device())
        if old_fc is not None:
            with torch.no_grad():
                rows, cols = old_fc.weight.shape
                fc.weight[:rows, :cols] = old_fc.weight
                fc.bias[:rows] = old_fc.bias
        self.fc = fc
        # The auxiliary classifier (new classes + one "old" bucket) only exists from task 1 on.
        self.aux_fc = new_linear(self.feature_dim, num_new + 1).to(self._device()) if self.num_branches > 1 else None

    def freeze_old_branches(self) -> None:
        for branch in self.branches[:-1]:
            branch.requires_grad_(False)
            branch.eval()

    def freeze_trunk(self) -> None:
        self.trunk.requires_grad_(False)
        self.trunk.eval()
        self.trunk_frozen = True

    def stack_frozen_branches(self) -> bool:
        """Run the frozen old branches as one grouped network (``model/frozen.py``) until
        ``unstack_frozen_branches``; returns whether they could be stacked (CIFAR ResNets only). Call it
        after any memory-format change: the stack's weights take the branches' layout at this moment."""
        old = list(self.branches[:-1])
        frozen = all(not p.requires_grad for b in old for p in b.parameters()) and not any(b.training for b in old)
        self._stack = StackedBranches(old) if old and frozen and can_stack(old) else None
        return self._stack is not None

    def unstack_frozen_branches(self) -> None:
        self._stack = None

    def train(self, mode: bool = True) -> MemoNet:
        """Like nn.Module.train, but frozen parts keep BN statistics frozen (eval) in every epoch."""
        super().train(mode)
        if mode:
            for branch in self.branches[:-1]:
                branch.eval()
            if self.trunk_frozen:
                self.trunk.eval()
        return self

    @torch.no_grad()
    def weight_align(self) -> float:
        """Scale the newest task's classifier rows; returns gamma (1.0 when nothing is old)."""
        if self.fc is None or self.known_classes == 0:
            return 1.0
        norms = self.fc.weight.norm(p=2, dim=1)
        known = self.known_classes
        gamma = norms[:known].mean() / norms[known:].mean()
        self.fc.weight[known:] *= gamma
        return float(gamma)

    # -- forward ------------------------------------------------------------------------------
    def forward_features(self, x: Tensor) -> Tensor:
        """Concatenated branch features [B, feature_dim * num_branches] (what herding and NME use).

        Frozen-branch fast path: a frozen trunk, and frozen branches whose input needs no gradient, run
        under ``torch.no_grad()`` (no graph is recorded for them); frozen branches on a trained trunk
        pass gradients to it but compute none for their own weights (``requires_grad`` is off). With
        ``stack_frozen_branches`` the old branches run as one grouped network.
        """
        with torch.no_grad() if _frozen(self.trunk) and not x.requires_grad else contextlib.nullcontext():
            shared = self.trunk(x)
        feats, rest = [], list(self.branches)
        if self._stack is not None:
            with torch.no_grad() if not shared.requires_grad else contextlib.nullcontext():
                feats.append(self._stack(shared))
            rest = rest[self._stack.k :]
        for branch in rest:
            with torch.no_grad() if _frozen(branch) and not shared.requires_grad else contextlib.nullcontext():
                feats.append(branch(shared))
        return torch.cat(feats, dim=1)

    def forward_head(self, features: Tensor) -> MemoOutput:
        if self.fc is None:
            raise RuntimeError("MemoNet has no task yet: call expand() first")
        aux = self.aux_fc(features[:, -self.feature_dim :]) if self.aux_fc is not None else None
        return MemoOutput(self.fc(features), aux, features)

    def forward(self, x: Tensor) -> MemoOutput:
        return self.forward_head(self.forward_features(x))

    # -- stages (for analyses) -----------------------------------------------------------------
    def stage_modules(self, stage: StageInfo, branch: int) -> tuple[nn.Module, ...]:
        """The modules of ``stage``: from the trunk, or from branch ``branch`` for a branch stage."""
        part = self.trunk if stage.part == "trunk" else self._branch(branch)
        return tuple(part.get_submodule(path) for path in stage.modules)

    def forward_stages(self, x: Tensor, branch: int) -> Iterator[tuple[StageInfo, Tensor]]:
        """Every stage's output for ``x`` in forward order: the trunk, then branch ``branch`` (before pooling).

        Lazy, unlike timm's ``forward_intermediates``: one stage output is alive at a time, so a caller
        reducing each map (pooling, a Gram matrix) never holds all of an ImageNet-size pass.
        """
        # Resolve every stage first: a bad branch fails before any compute.
        modules = [(stage, self.stage_modules(stage, branch)) for stage in self.stage_info]
        for stage, group in modules:
            for module in group:
                x = module(x)
            yield stage, x

    def _branch(self, branch: int) -> nn.Module:
        if not 0 <= branch < len(self.branches):
            raise ValueError(f"branch {branch} out of range: the model has {len(self.branches)} branch(es)")
        return self.branches[branch]

    # -- helpers ------------------------------------------------------------------------------
    def _device(self) -> torch.device:
        param = next(self.parameters(), None)  # a DER-style trunk has none, nor a model before task 0
        return param.device if param is not None else torch.device("cpu")

    @classmethod
    def with_tasks(cls, backbone: str, task_sizes: list[int], *, split: int | None = None, grow: bool = True) -> MemoNet:
        """An empty network of the right shape for loading a checkpoint of ``len(task_sizes)`` tasks."""
        net = cls(backbone, split=split, grow=grow)
        for size in task_sizes:
            net.expand(size)
        return net
