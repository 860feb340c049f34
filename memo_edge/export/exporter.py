"""``memo-edge export``: a trained run directory -> a verified, deployable package.

Reads top to bottom: check TensorRT first when asked (fail before any work), load the task's
checkpoint and the run's config, export the graphs, write the package (verified with ONNX Runtime
before it becomes visible), then build TensorRT engines into its cache.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from safetensors.numpy import save as save_numpy
from safetensors.torch import save as save_torch

from memo_edge.data.sources import eval_resize
from memo_edge.errors import InputError
from memo_edge.export import graphs
from memo_edge.export.quantize import calibration_images, quantize_full
from memo_edge.export.verify import verify_package
from memo_edge.memory.alignment import exemplar_bytes
from memo_edge.memory.exemplars import ExemplarSet
from memo_edge.model import MemoNet
from memo_edge.runtime.catalog import CATALOG
from memo_edge.runtime.engine_build import build_engines
from memo_edge.runtime.engine_cache import (
    EngineOptions, EngineRecord, GpuInfo, TrtEnvironment, engine_graphs, probe_environment,
)
from memo_edge.runtime.lock import writer_lock
from memo_edge.runtime.manifest import Budget, InputSpec, Manifest, ModelRecord, Role
from memo_edge.runtime.package import PackageVersion
from memo_edge.runtime.writer import Blob, PackageWriter
from memo_edge.train.checkpoint import load_checkpoint, verified_states
from memo_edge.train.results import producer_versions
from memo_edge.train.rundir import RunHeader, read_run_header, run_test_split
from memo_edge.utils.paths import check_separate
from memo_edge.utils.phases import timed

__all__ = ["ExportConfig", "export_run", "model_blobs", "weight_blobs", "model_manifest", "package_model", "exemplar_tasks"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExportConfig:
    run_dir: Path
    out: Path
    task: int | None = None  # checkpoint task-XX to export; None: the last complete one
    full: bool = True  # also export full.onnx (one graph: image -> logits)
    int8: bool = False  # also an int8 copy of full.onnx for CPU inference (calibrated on the exemplars)
    verify_images: int = 256
    total_budget_bytes: int | None = None  # None: model bytes + the run's exemplar memory at this task
    force: bool = False
    trt: EngineOptions | None = None  # build TensorRT engines with these options


def export_run(config: ExportConfig) -> tuple[PackageVersion, list[EngineRecord]]:
    # --force replaces --out whole: a package written over (or around) its run would delete the run.
    check_separate(config.out, config.run_dir, what="package")
    env = probe_environment(gpu_probe=torch_gpu_probe) if config.trt is not None else None  # before any work
    if config.out.exists() and any(config.out.iterdir()) and not config.force:
        raise InputError(f"{config.out} exists and is not empty; pass --force to replace it")
    # Replacing a package: not while one of its writers (update, rollback, a service's job) is at work.
    # Its contents are not read first: --force replaces a damaged package too.
    replacing = (config.out / CATALOG).is_file()
    with writer_lock(config.out, "export --force", check_package=False) if replacing else contextlib.nullcontext():
        return _export(config, env)


def _export(config: ExportConfig, env: TrtEnvironment | None) -> tuple[PackageVersion, list[EngineRecord]]:
    header = read_run_header(config.run_dir)
    states = verified_states(config.run_dir)
    task = _pick_task(config.run_dir, config.task, len(states))
    ckpt = load_checkpoint(config.run_dir, task, state=states[task])
    model, exemplars = ckpt.model.eval(), ckpt.exemplars
    scenario = header.scenario
    spec = _input_spec(header)
    images, image_source = _verification_images(header, task, exemplars, config.verify_images)
    total = _total_budget(header, model, exemplars, spec, config.total_budget_bytes, task)
    version = package_model(
        config.out, model, exemplars, spec=spec, class_names=header.class_names[: model.num_classes],
        augment=header.augment, total_budget_bytes=total, verify_images=images, full=config.full,
        int8=config.int8,
        source={"run": str(config.run_dir.resolve()), "task": task, "scenario": scenario.spec,
                "train_base": header.train_base, "verification_images": image_source},
    )
    engines = build_engines(config.out, engine_graphs(version), config.trt, env=env) if config.trt and env else []
    return version, engines


def torch_gpu_probe() -> GpuInfo | None:
    """The GPU torch sees (export runs where torch is): the device TensorRT will build for."""
    try:
        if not torch.cuda.is_available():
            return None
        major, minor = torch.cuda.get_device_capability(0)
        return GpuInfo(f"{major}.{minor}", torch.cuda.get_device_name(0))
    except RuntimeError:  # a broken driver surfaces here; to the user it is "no GPU"
        return None


@timed("model_blobs")
def model_blobs(model: MemoNet, spec: InputSpec, *, branches: Sequence[int], trunk: bool, full: bool,
                int8_calibration: np.ndarray | None = None) -> list[Blob]:
    """Serialized files of ``model`` for a package: the named graphs, the head and the training weights
    (every component's: the caller's content addressing keeps the unchanged ones).

    With ``int8_calibration`` (uint8 images) the full graph also gets its int8 copy.
    """
    model = model.eval()
    blobs: list[Blob] = []
    if trunk:
        blobs.append(Blob(graphs.trunk_graph(model, spec.mean, spec.std, spec.shape).data, Role.TRUNK, ".onnx"))
    if branches:
        with torch.no_grad():
            trunk_shape = tuple(model.trunk(torch.zeros((1, spec.channels, spec.height, spec.width))).shape[1:])
        blobs += [Blob(graphs.branch_graph(model, t, trunk_shape).data, Role.BRANCH, ".onnx", t) for t in branches]
    if full:
        data = graphs.full_graph(model, spec.mean, spec.std, spec.shape).data
        blobs.append(Blob(data, Role.FULL, ".onnx"))
        if int8_calibration is not None:
            blobs.append(Blob(quantize_full(data, int8_calibration), Role.FULL_INT8, ".onnx"))
    if model.fc is None:
        raise InputError("the model has no classifier (no task learned)")
    head = {"weight": model.fc.weight.detach().cpu().numpy(), "bias": model.fc.bias.detach().cpu().numpy()}
    blobs.append(Blob(save_numpy(head), Role.HEAD, ".safetensors"))
    return blobs + weight_blobs(model)


def weight_blobs(model: MemoNet) -> list[Blob]:
    """The training weights, one safetensors file per component (the ``Role.WEIGHTS_*`` roles).

    Trunk, each branch, and the classifiers: the keys of ``model.state_dict()`` split by module, so a
    frozen component serializes to the same bytes after an update, hence to the same content-addressed
    file, and only the new branch and the head (plus the trunk with ``--train-base``) are new bytes.
    """
    parts: dict[tuple[Role, int | None], dict[str, torch.Tensor]] = {}
    for key, tensor in model.state_dict().items():
        first, _, rest = key.partition(".")
        if first == "trunk":
            part = (Role.WEIGHTS_TRUNK, None)
        elif first == "branches":
            part = (Role.WEIGHTS_BRANCH, int(rest.partition(".")[0]))
        else:
            part = (Role.WEIGHTS_HEAD, None)
        parts.setdefault(part, {})[key] = tensor.detach().cpu().contiguous()
    if (Role.WEIGHTS_TRUNK, None) not in parts:  # a DER-style model (split=0) has no trunk parameters
        parts[(Role.WEIGHTS_TRUNK, None)] = {}
    return [Blob(save_torch(tensors), role, ".safetensors", task) for (role, task), tensors in sorted(
        parts.items(), key=lambda item: (item[0][0], -1 if item[0][1] is None else item[0][1]))]


def exemplar_tasks(exemplars: ExemplarSet, task_classes: Sequence[tuple[int, int]]) -> np.ndarray:
    """The task that introduced each exemplar's class."""
    ends = np.array([end for _, end in task_classes])
    return np.searchsorted(ends, exemplars.labels, side="right")


def package_model(
    out: Path,
    model: MemoNet,
    exemplars: ExemplarSet,
    *,
    spec: InputSpec,
    class_names: Sequence[str],
    augment: str,
    total_budget_bytes: int,
    verify_images: np.ndarray,
    full: bool = True,
    int8: bool = False,
    source: dict[str, Any] | None = None,
) -> PackageVersion:
    """Write ``model`` + ``exemplars`` as a new package (version 1) at ``out``, verified, all or nothing.

    ``int8``: also the full graph in int8, calibrated on ``exemplars`` (needs ``full``).
    """
    if int8 and not full:
        raise InputError("int8 quantizes the full graph: it cannot be combined with --no-full")
    manifest = model_manifest(1, model, exemplars, spec=spec, class_names=class_names, augment=augment,
                              total_budget_bytes=total_budget_bytes, source=source or {})
    calibration = calibration_images(exemplars.images, exemplars.labels) if int8 else None
    blobs = model_blobs(model, spec, branches=range(model.num_branches), trunk=True, full=full,
                        int8_calibration=calibration)
    tasks = exemplar_tasks(exemplars, manifest.task_classes)

    def verify(version: PackageVersion) -> dict[str, Any]:
        return verify_package(version, model, verify_images) | {"images_from": manifest.source.get("verification_images", "")}

    with PackageWriter.create(out) as writer:
        written = writer.commit(manifest, exemplars, tasks, blobs=blobs, verify=verify)
    log.info("package %s: version %d, %d files, verified on %d images", out, written.version, len(written.files),
             len(verify_images))
    return writer.written


def _pick_task(run_dir: Path, task: int | None, done: int) -> int:
    if done == 0:
        raise InputError(f"{run_dir} has no finished task to export")
    if task is None:
        return done - 1
    if not 0 <= task < done:
        raise InputError(f"--task {task}: {run_dir} has tasks 0..{done - 1} (task-00 .. task-{done - 1:02d})")
    return task


def _input_spec(header: RunHeader) -> InputSpec:
    if header.image_shape is None or header.mean is None or header.std is None:
        raise InputError("the run's config.json does not record its image shape and normalisation (a run from "
                         "before export existed): train it again to export it")
    h, w, c = header.image_shape
    return InputSpec(h, w, c, header.mean, header.std, resize_to=eval_resize(h, header.augment))


def _verification_images(header: RunHeader, task: int, exemplars: ExemplarSet, count: int) -> tuple[np.ndarray, str]:
    """Held-out test images of the seen classes, spread over classes; exemplars if the data is gone."""
    try:
        test = run_test_split(header.config, header.scenario, task)
    except InputError as exc:
        log.warning("verification uses exemplars: the run's test data cannot be loaded (%s)", exc)
        return exemplars.images[:count], "exemplars"
    pick = np.sort(np.random.default_rng(0).permutation(len(test))[: min(count, len(test))])
    return test.take(pick), f"test split of {header.config.dataset}"


def _total_budget(header: RunHeader, model: MemoNet, exemplars: ExemplarSet, spec: InputSpec,
                  requested: int | None, task: int) -> int:
    """The device budget: as requested, else the model plus the exemplar memory the run allowed."""
    model_bytes, per_exemplar = model.model_bytes(), exemplar_bytes(spec.shape)
    if requested is None:
        policy = header.memory.policy
        seen = model.num_classes
        whole = exemplars.codec.fixed_size(per_exemplar) or 1  # raw: whole exemplars, as before codecs existed
        share = policy.class_bytes(seen, model_bytes=model_bytes, bytes_per_exemplar=per_exemplar) // whole * whole
        requested = model_bytes + share * seen
    if requested < model_bytes + exemplars.nbytes:
        raise InputError(f"total budget {requested:,} B is below what task-{task:02d} already holds: model "
                         f"{model_bytes:,} B + exemplars {exemplars.nbytes:,} B")
    return requested


def model_manifest(version: int, model: MemoNet, exemplars: ExemplarSet, *, spec: InputSpec,
                   class_names: Sequence[str], augment: str, total_budget_bytes: int,
                   source: dict[str, Any]) -> Manifest:
    """The manifest of ``model`` (files, verification and digests are filled in when written)."""
    bounds = np.cumsum([0, *model.task_sizes])
    counts = exemplars.counts()
    return Manifest(
        version=version,
        class_names=tuple(class_names),
        task_classes=tuple((int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])),
        input=spec,
        model=ModelRecord(backbone=model.backbone_name, split=model.split, feature_dim=model.feature_dim,
                          task_sizes=tuple(model.task_sizes), trunk_frozen=model.trunk_frozen, augment=augment),
        budget=Budget(total_bytes=total_budget_bytes, model_bytes=model.model_bytes(),
                      exemplar_bytes=exemplars.nbytes, bytes_per_exemplar=exemplar_bytes(spec.shape),
                      exemplars=len(exemplars), per_class=min(counts.values()) if counts else 0,
                      codec=exemplars.codec.spec, codec_header=exemplars.codec.header_sha256(spec.channels)),
        files=(),
        opset=graphs.OPSET,
        producer=producer_versions() | {"onnx": onnx.__version__, "opset": str(graphs.OPSET)},
        source=source,
    )
