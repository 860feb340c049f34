"""An update's cost does not grow with the tasks: kept files are not rewritten, kept graphs not
re-verified, training weights stored per component (and old one-file packages still update)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save

import memo_edge.device.update as update_module
from memo_edge.device.update import UpdateConfig, update_package
from memo_edge.options import UpdateOptions
from memo_edge.export.exporter import exemplar_tasks, model_blobs, model_manifest, package_model, weight_blobs
from memo_edge.memory.alignment import model_bytes
from memo_edge.memory.exemplars import ExemplarSet
from memo_edge.model import MemoNet
from memo_edge.runtime.manifest import WEIGHTS_BRANCH, WEIGHTS_HEAD, WEIGHTS_ROLE, WEIGHTS_TRUNK, manifest_problem
from memo_edge.runtime.package import InputSpec, open_package
from memo_edge.runtime.writer import Blob, PackageWriter

SPEC = InputSpec(32, 32, 3, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
WEIGHT_ROLES = (WEIGHTS_TRUNK, WEIGHTS_BRANCH, WEIGHTS_HEAD)


def _model(tasks: int) -> MemoNet:
    torch.manual_seed(0)
    model = MemoNet("resnet8")
    for _ in range(tasks):
        model.expand(2)
    return model.eval()


def _exemplars(classes: int, per_class: int = 4) -> ExemplarSet:
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(classes, dtype=np.int64), per_class)
    return ExemplarSet(rng.integers(0, 256, (len(labels), *SPEC.shape), dtype=np.uint8), labels,
                       np.tile(np.arange(per_class, dtype=np.int64), classes))


def _budget(model: MemoNet, exemplars: int = 40) -> int:
    return model.model_bytes() + 2 * model_bytes(model.branches[-1]) + exemplars * 3072


def _package(out: Path, tasks: int) -> Path:
    model = _model(tasks)
    exemplars = _exemplars(model.num_classes)
    package_model(out, model, exemplars, spec=SPEC, class_names=[f"c{i}" for i in range(model.num_classes)],
                  augment="cifar", total_budget_bytes=_budget(model), verify_images=exemplars.images[:8])
    return out


def _new_classes(root: Path, tag: str = "new") -> str:
    rng = np.random.default_rng(1)
    root.mkdir(parents=True)
    x = rng.integers(0, 256, (16, *SPEC.shape), dtype=np.uint8)
    y = np.repeat(np.arange(2, dtype=np.int64), 8)
    files = []
    for split in ("train", "test"):
        np.savez(root / f"{split}-00.npz", x=x, y=y)
        files.append({"file": f"{split}-00.npz", "sha256": hashlib.sha256((root / f"{split}-00.npz").read_bytes()).hexdigest()})
    (root / "meta.json").write_text(json.dumps({"class_names": [f"{tag}0", f"{tag}1"], "files": files}))
    return f"npz:{root}"


def _config(pkg: Path, data: str, **kw) -> UpdateConfig:
    return UpdateConfig(pkg, data, UpdateOptions(epochs=1, batch_size=16, device="cpu", **kw), verify_images=16)


def _stat(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_ino, st.st_mtime_ns


def test_weights_are_stored_per_component_and_round_trip_exactly() -> None:
    model = _model(3)
    blobs = weight_blobs(model)
    assert sorted((role, task) for _, role, _, task in blobs) == sorted(
        [(WEIGHTS_TRUNK, None), (WEIGHTS_HEAD, None)] + [(WEIGHTS_BRANCH, t) for t in range(3)])
    parts = [load_file_bytes(data) for data, *_ in blobs]
    keys = [k for part in parts for k in part]
    assert len(keys) == len(set(keys))  # each tensor in exactly one file
    merged = {k: v for part in parts for k, v in part.items()}
    state = model.state_dict()
    assert merged.keys() == state.keys()
    assert all(torch.equal(merged[k], state[k]) and merged[k].dtype == state[k].dtype for k in state)
    branch1 = next(data for data, role, _, task in blobs if role == WEIGHTS_BRANCH and task == 1)
    assert set(load_file_bytes(branch1)) == {k for k in state if k.startswith("branches.1.")}


def load_file_bytes(data: bytes) -> dict[str, torch.Tensor]:
    from safetensors.torch import load

    return load(data)


def test_an_update_at_three_tasks_rewrites_and_reverifies_only_what_changed(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    pkg = _package(tmp_path / "pkg", tasks=3)
    before = open_package(pkg).manifest
    kept_roles = ("trunk", "branch", WEIGHTS_TRUNK, WEIGHTS_BRANCH)
    old = {f.name: _stat(pkg / f.name) for f in before.files if f.role in kept_roles}
    assert len(old) == 2 + 2 * 3
    calls: list[list[str] | None] = []
    real = update_module.verify_package

    def counting(version, model, images, **kw):
        calls.append(kw.get("graphs"))
        return real(version, model, images, **kw)

    monkeypatch.setattr(update_module, "verify_package", counting)
    update_package(_config(pkg, _new_classes(tmp_path / "new")))

    after = open_package(pkg).manifest
    assert after.version == 2 and len(after.branches()) == 4
    for name, stat in old.items():  # the same files, untouched: same inode, same mtime
        assert name in {f.name for f in after.files} and _stat(pkg / name) == stat, name
    new = {(f.role, f.task) for f in after.files if f.name not in {g.name for g in before.files}}
    assert new == {("branch", 3), (WEIGHTS_BRANCH, 3), (WEIGHTS_HEAD, None), ("head", None), ("full", None)}
    assert calls == [["branch-3"]]  # one verification, of the one new split graph ...
    graphs = after.verification["graphs"]
    assert set(graphs) == {"branch-3", "end_to_end", "full"}  # ... plus the end-to-end checks
    assert after.verification["kept_graphs"] == ["trunk", "branch-0", "branch-1", "branch-2"]
    # The model read back from the per-component files is the one that was trained and verified.
    model = update_module._load_model(open_package(pkg))
    assert model.num_branches == 4


def test_train_base_rewrites_and_verifies_the_trunk_too(tmp_path: Path) -> None:
    pkg = _package(tmp_path / "pkg", tasks=2)
    trunk = open_package(pkg).manifest.file("trunk")
    update_package(_config(pkg, _new_classes(tmp_path / "new"), train_base=True))
    after = open_package(pkg).manifest
    assert after.file("trunk").sha256 != trunk.sha256
    assert {"trunk", "branch-2"} <= set(after.verification["graphs"])
    assert after.verification["kept_graphs"] == ["branch-0", "branch-1"]


def test_an_old_package_with_one_weights_file_still_updates(tmp_path: Path) -> None:
    """A package as memo-edge wrote it before per-component weights: one "weights" file."""
    model = _model(2)
    exemplars = _exemplars(model.num_classes)
    blobs = [b for b in model_blobs(model, SPEC, branches=range(2), trunk=True, full=True) if b.role not in WEIGHT_ROLES]
    blobs.append(Blob(save({k: v.contiguous() for k, v in model.state_dict().items()}), WEIGHTS_ROLE, ".safetensors"))
    manifest = model_manifest(1, model, exemplars, spec=SPEC, class_names=["a", "b", "c", "d"], augment="cifar",
                              total_budget_bytes=_budget(model), source={})
    pkg = tmp_path / "old"
    with PackageWriter.create(pkg) as writer:
        writer.commit(manifest, exemplars, exemplar_tasks(exemplars, manifest.task_classes), blobs=blobs)
    assert {f.role for f in open_package(pkg).manifest.files} >= {WEIGHTS_ROLE}

    loaded = update_module._load_model(open_package(pkg))
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in model.state_dict().items())
    update_package(_config(pkg, _new_classes(tmp_path / "new")))
    after = open_package(pkg).manifest
    assert after.version == 2 and after.file(WEIGHTS_ROLE) is None
    assert sorted(f.task for f in after.files if f.role == WEIGHTS_BRANCH) == [0, 1, 2]
    # the old branches' weights, now in their own files, are the old tensors
    branch0 = load_file(str(pkg / after.file(WEIGHTS_BRANCH, 0).name))
    assert all(torch.equal(t, model.state_dict()[k]) for k, t in branch0.items())
    update_package(_config(pkg, _new_classes(tmp_path / "newer", tag="newer")))  # and updates again from them
    assert open_package(pkg).manifest.version == 3


def test_the_manifest_refuses_incomplete_or_mixed_weights(tmp_path: Path) -> None:
    pkg = _package(tmp_path / "pkg", tasks=2)
    m = open_package(pkg).manifest
    assert manifest_problem(m) is None
    without_branch1 = tuple(f for f in m.files if not (f.role == WEIGHTS_BRANCH and f.task == 1))
    assert "weights-branch for tasks [0]" in manifest_problem(dataclasses.replace(m, files=without_branch1))
    mixed = (*m.files, dataclasses.replace(m.file(WEIGHTS_TRUNK), role=WEIGHTS_ROLE))
    assert "both a whole weights file" in manifest_problem(dataclasses.replace(m, files=mixed))
    no_head = tuple(f for f in m.files if f.role != WEIGHTS_HEAD)
    assert "weights-head" in manifest_problem(dataclasses.replace(m, files=no_head))
    no_weights = tuple(f for f in m.files if f.role not in WEIGHT_ROLES)  # weights stay optional
    assert manifest_problem(dataclasses.replace(m, files=no_weights)) is None
