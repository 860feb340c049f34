"""``memo-edge update``: learn a new task on the device and append it to the package.

The device's learning side. It sits beside the torch-free runtime (``memo_edge.runtime``, the device's
inference side, which never imports this module) and above export: it imports torch, calls the
trainer's own task step (``memo_edge.train.task.learn_task``) with the package's byte budget as the
memory rule, so a new branch's bytes come out of the exemplar memory, serializes the model as export
does, and commits the result as a new version through the runtime's package writer.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from memo_edge.data.datasets import folder_source, load_dataset
from memo_edge.data.sources import FolderSource, ImageSource, warn_resized
from memo_edge.errors import BudgetError, InputError
from memo_edge.export.exporter import exemplar_tasks, model_blobs, model_manifest
from memo_edge.export.quantize import calibration_images
from memo_edge.export.verify import verify_package
from memo_edge.memory.alignment import model_bytes
from memo_edge.memory.codec import RAW, parse_codec
from memo_edge.memory.policy import MemoryPolicy
from memo_edge.model import MemoNet, create_backbone
from memo_edge.options import UpdateOptions
from memo_edge.runtime.manifest import Manifest, Role
from memo_edge.runtime.package import PackageVersion
from memo_edge.runtime.writer import PackageWriter
from memo_edge.train.config import TaskOptions
from memo_edge.train.device import select_device
from memo_edge.train.plan import Transforms, plan_tasks
from memo_edge.train.task import TaskResult, learn_task

__all__ = ["UpdateConfig", "Event", "update_package", "branch_bytes", "check_budget", "load_new_classes"]

log = logging.getLogger(__name__)
Event = Callable[[dict], None]  # progress for another process: {"event": "checked" | "epoch" | "exporting", ...}


@dataclass(frozen=True)
class UpdateConfig:
    package: Path
    data: str  # npz:DIR, imagefolder:DIR (its train/ split), or DIR of class folders
    options: UpdateOptions = UpdateOptions()  # memo_edge/options.py: the CLI's and POST /update's options
    verify_images: int = 256


def branch_bytes(manifest: Manifest) -> int:
    """Bytes one more branch adds to the model side of the budget."""
    spec = create_backbone(manifest.model.backbone, split=manifest.model.split)
    return model_bytes(spec.new_branch())


def check_budget(manifest: Manifest, new_classes: int) -> None:
    """Refuse (before any training) a task whose branch leaves less than one exemplar per class."""
    b = manifest.budget
    model_after = b.model_bytes + branch_bytes(manifest)
    seen = len(manifest.class_names) + new_classes
    # An encoded exemplar's size is known once it is encoded: the stored ones' mean stands in.
    fixed = parse_codec(b.codec).fixed_size(b.bytes_per_exemplar)
    each = fixed if fixed is not None else -(-b.exemplar_bytes // max(b.exemplars, 1))
    needed = model_after + seen * each
    if needed > b.total_bytes:
        about = "" if fixed is not None else f", {each:,} B each as {b.codec} on average"
        raise BudgetError(
            f"the budget cannot fit another task: model {model_after:,} B + one exemplar for each of {seen} classes "
            f"({seen * each:,} B{about}) needs {needed:,} B of {b.total_bytes:,} B; "
            f"{needed - b.total_bytes:,} B missing. Nothing was changed."
        )


def load_new_classes(spec: str, manifest: Manifest) -> tuple[ImageSource, tuple[str, ...]]:
    """The new task's training images (labels 0..k-1) and class names; names must be new."""
    inp = manifest.input
    if spec.startswith(("npz:", "imagefolder:")):
        dataset = load_dataset(spec, image_size=inp.height if spec.startswith("imagefolder:") else None)
        source, names = dataset.train, dataset.class_names
    else:
        source, names = _class_folders(Path(spec), inp.height, inp.file_resize)
    if source.image_shape != inp.shape:
        raise InputError(f"{spec}: images are {source.image_shape}, the package expects {inp.shape}")
    if manifest.model.augment == "cifar":  # ImageNet-style images are resized as a rule
        warn_resized(source, spec)
    clash = sorted(set(names) & set(manifest.class_names))
    if clash:
        raise InputError(f"{spec}: class names already in the package: {', '.join(clash[:10])}; new classes need new names")
    if len(names) < 2:
        raise InputError(f"{spec}: a task needs at least 2 new classes (MEMO's auxiliary classifier), found {len(names)}")
    return source, tuple(names)


def _class_folders(root: Path, size: int, resize_to: int) -> tuple[FolderSource, tuple[str, ...]]:
    if not root.is_dir():
        raise InputError(f"{root}: no such directory (give DIR/<class>/*.png, npz:DIR or imagefolder:DIR)")
    names = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    return folder_source(root, names, size, resize_to, str(root), require_each=True), tuple(names)


def _load_model(version: PackageVersion) -> MemoNet:
    m = version.manifest
    model = MemoNet.with_tasks(m.model.backbone, list(m.model.task_sizes), split=m.model.split)
    whole = m.file(Role.WEIGHTS)  # older packages: one file with every tensor
    parts = (Role.WEIGHTS_TRUNK, Role.WEIGHTS_BRANCH, Role.WEIGHTS_HEAD)  # one file per component
    entries = [whole] if whole is not None else [f for f in m.files if f.role in parts]
    if not entries:
        raise InputError(f"{version.root}: the package has no training weights; it cannot learn on the device")
    state: dict[str, torch.Tensor] = {}
    try:
        for entry in entries:
            state.update(load_file(str(version.path(entry))))
        model.load_state_dict(state)
    except (SafetensorError, RuntimeError) as exc:
        names = ", ".join(version.path(e).name for e in entries)
        raise InputError(f"{names}: training weights do not fit the manifest's model: {exc}") from None
    model.freeze_old_branches()
    if m.model.trunk_frozen:
        model.freeze_trunk()
    return model


def update_package(config: UpdateConfig, on_event: Event | None = None) -> PackageVersion:
    """Train one new task on this device and commit it as the package's next version.

    Holds the package's writer lock throughout (``PackageWriter.append``): a second writer is refused
    at once, not at the commit. ``on_event`` hears ``checked`` once the data and the budget passed
    every check (nothing was trained yet), ``epoch`` after each training epoch, and ``exporting`` when
    training is done.
    """
    with PackageWriter.append(config.package, "update") as writer:
        _update(config, writer, on_event or (lambda event: None))
    return writer.written


def _codec_report(result: TaskResult) -> dict:
    """What a codec cost this update (nothing is added for raw exemplars)."""
    codec = result.exemplars.codec
    return {} if codec == RAW else {"codec": codec.spec, "codec_seconds": result.codec_seconds}


def _update(config: UpdateConfig, writer: PackageWriter, on_event: Event) -> None:
    version = writer.current
    if version is None:
        raise RuntimeError("an update appends to a package: PackageWriter.append, not create")
    opts = config.options
    m = version.manifest
    new_data, new_names = load_new_classes(config.data, m)
    check_budget(m, len(new_names))
    if opts.int8 and m.file(Role.FULL) is None:
        raise InputError(f"{config.package}: --int8 quantizes the full graph, which this package does not have")
    augment = m.model.augment
    # Checked here, before any work (fp16 on a CPU, --codec-mix under a lossless codec, ...).
    plan = plan_tasks(TaskOptions(epochs=opts.epochs, batch_size=opts.batch_size, schedule=opts.schedule,
                                  precision=opts.train_precision, codec_mix=opts.codec_mix),
                      Transforms.of(augment, m.input.mean, m.input.std, m.input.height),
                      memory=MemoryPolicy("bytes", m.budget.total_bytes), train_base=opts.train_base,
                      device=select_device(opts.device), codec=parse_codec(m.budget.codec))
    on_event({"event": "checked", "version": m.version, "classes": list(new_names), "images": len(new_data),
              "epochs": opts.epochs})
    torch.manual_seed(opts.seed)
    generator = torch.Generator().manual_seed(opts.seed)
    model = _load_model(version)
    exemplars, _ = version.exemplars()
    known = len(m.class_names)
    result = learn_task(
        model, plan, new_data.with_labels(new_data.labels + known), exemplars, num_new=len(new_names),
        generator=generator, desc=f"task {model.num_tasks}",
        on_epoch=lambda epoch, epochs, loss: on_event({"event": "epoch", "epoch": epoch, "epochs": epochs,
                                                       "loss": round(loss, 6)}),
    )
    on_event({"event": "exporting"})
    model = model.cpu().eval()
    manifest = model_manifest(writer.version, model, result.exemplars, spec=m.input,
                              class_names=(*m.class_names, *new_names), augment=augment,
                              total_budget_bytes=m.budget.total_bytes,
                              source={**m.source, "update": {"data": config.data, "epochs": opts.epochs,
                                                             "train_base": opts.train_base, "precision": plan.precision,
                                                             **_codec_report(result)}})
    new_task = model.num_branches - 1
    # An int8 full graph is re-made from the new float graph, calibrated on the new exemplars.
    int8 = m.file(Role.FULL_INT8) is not None if opts.int8 is None else opts.int8
    calibration = calibration_images(result.exemplars.images, result.exemplars.labels) if int8 else None
    # The complement of what the writer keeps (Role.kept_by_update): the new branch, the trunk if trained.
    blobs = model_blobs(model, m.input, branches=[new_task], trunk=opts.train_base,
                        full=m.file(Role.FULL) is not None, int8_calibration=calibration)
    rng = np.random.default_rng(opts.seed)
    sample = rng.permutation(len(new_data))[: config.verify_images // 2]
    images = np.concatenate([new_data.take(np.sort(sample)), result.exemplars.images[: config.verify_images // 2]])

    # Only the graphs this update wrote are compared one by one; the kept ones were when they were
    # written (their files are checked by sha256 on every load). The end-to-end checks run in full.
    written = [b.role if b.task is None else f"{b.role}-{b.task}" for b in blobs if b.role in (Role.TRUNK, Role.BRANCH)]

    def verify(candidate: PackageVersion) -> dict:
        return verify_package(candidate, model, images, graphs=written) | {"images_from": "new task data + exemplars"}

    writer.commit(manifest, result.exemplars, exemplar_tasks(result.exemplars, manifest.task_classes), blobs=blobs,
                  keep=writer.kept_files(train_base=opts.train_base), verify=verify)
