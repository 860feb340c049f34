"""``memo-edge update``: learn a new task on the device and append it to the package.

The only runtime module that imports torch (on-device training). It calls the trainer's own task
step (``memo_edge.train.task.learn_task``) with the package's byte budget as the memory rule, so a
new branch's bytes come out of the exemplar memory, and commits the result as a new version.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from memo_edge.data.datasets import folder_source, load_dataset
from memo_edge.data.sources import FolderSource, ImageSource, warn_resized
from memo_edge.errors import InputError
from memo_edge.export.exporter import exemplar_tasks, model_blobs, model_manifest
from memo_edge.export.quantize import calibration_images
from memo_edge.export.verify import verify_package
from memo_edge.memory.alignment import model_bytes
from memo_edge.memory.codec import parse_codec
from memo_edge.memory.policy import MemoryPolicy
from memo_edge.model import MemoNet, create_backbone
from memo_edge.runtime.check import require_intact
from memo_edge.runtime.lock import writer_lock
from memo_edge.runtime.catalog import next_version
from memo_edge.runtime.manifest import WEIGHTS_BRANCH, WEIGHTS_HEAD, WEIGHTS_ROLE, WEIGHTS_TRUNK
from memo_edge.runtime.package import INT8_ROLE, Manifest, PackageVersion, open_package
from memo_edge.runtime.versions import append_version, collect_garbage, remove_orphans
from memo_edge.train.augment import TestTransform, build_augment
from memo_edge.train.recipe import paper_recipe
from memo_edge.train.device import select_device
from memo_edge.train.precision import resolve_precision
from memo_edge.train.task import TaskResult, Transforms, learn_task

__all__ = ["UpdateConfig", "Event", "update_package", "branch_bytes", "check_budget", "load_new_classes"]

log = logging.getLogger(__name__)
Event = Callable[[dict], None]  # progress for another process: {"event": "checked" | "epoch" | "exporting", ...}


@dataclass(frozen=True)
class UpdateConfig:
    package: Path
    data: str  # npz:DIR, imagefolder:DIR (its train/ split), or DIR of class folders
    epochs: int = 30
    batch_size: int = 128
    schedule: str = "cosine"
    train_base: bool = False  # on the device the trunk stays frozen unless asked
    device: str | None = None
    seed: int = 1993
    verify_images: int = 256
    int8: bool | None = None  # an int8 full graph in the new version; None: if the current version has one
    precision: str = "fp32"  # autocast of training (memo_edge.train.precision); weights stay float32
    codec_mix: float = 0.0  # probability that a new training image is seen through the package's lossy codec


def branch_bytes(manifest: Manifest) -> int:
    """Bytes one more branch adds to the model side of the budget."""
    spec = create_backbone(manifest.model["backbone"], split=manifest.model["split"])
    return model_bytes(spec.new_branch())


def check_budget(manifest: Manifest, new_classes: int) -> None:
    """Refuse (before any training) a task whose branch leaves less than one exemplar per class."""
    b = manifest.budget
    model_after = b.model_bytes + branch_bytes(manifest)
    seen = len(manifest.class_names) + new_classes
    # Under a codec an exemplar's size is known once it is encoded: the stored ones' mean stands in.
    each = b.bytes_per_exemplar if b.codec == "raw" else -(-b.exemplar_bytes // max(b.exemplars, 1))
    needed = model_after + seen * each
    if needed > b.total_bytes:
        about = "" if b.codec == "raw" else f", {each:,} B each as {b.codec} on average"
        raise InputError(
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
    if manifest.model.get("augment", "cifar") == "cifar":  # ImageNet-style images are resized as a rule
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
    model = MemoNet.with_tasks(m.model["backbone"], list(m.model["task_sizes"]), split=m.model["split"])
    whole = m.file(WEIGHTS_ROLE)  # packages written before issue 13: one file with every tensor
    parts = (WEIGHTS_TRUNK, WEIGHTS_BRANCH, WEIGHTS_HEAD)  # since issue 13: one file per component
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
    if m.model.get("trunk_frozen"):
        model.freeze_trunk()
    return model


def update_package(config: UpdateConfig, on_event: Event | None = None) -> PackageVersion:
    """Train one new task on this device and commit it as the package's next version.

    Holds the package's writer lock throughout: a second writer is refused at once, not at the commit.
    ``on_event`` hears ``checked`` once the data and the budget passed every check (nothing was
    trained yet), ``epoch`` after each training epoch, and ``exporting`` when training is done.
    """
    with writer_lock(config.package, "update"):
        require_intact(config.package)  # the cheap check: a damaged catalog is refused before any work
        remove_orphans(config.package)  # what a killed or failed writer left behind
        try:
            return _update(config, on_event or (lambda event: None))
        except BaseException:
            try:  # this update's files, if it wrote any and did not commit
                remove_orphans(config.package)
            except Exception as exc:  # never hide why the update failed; the next writer retries
                log.warning("could not remove the files of the failed update: %s", exc)
            raise


def _codec_report(result: TaskResult) -> dict:
    """What a codec cost this update (nothing is added for raw exemplars)."""
    codec = result.exemplars.codec
    return {} if codec.is_raw else {"codec": codec.spec, "codec_seconds": result.codec_seconds}


def _update(config: UpdateConfig, on_event: Event) -> PackageVersion:
    version = open_package(config.package)
    m = version.manifest
    new_data, new_names = load_new_classes(config.data, m)
    check_budget(m, len(new_names))
    if config.codec_mix and not parse_codec(m.budget.codec).lossy:
        raise InputError(f"--codec-mix shows new images through a lossy exemplar codec; this package stores its "
                         f"exemplars as {m.budget.codec}, which gives them back unchanged")
    if config.int8 and m.file("full") is None:
        raise InputError(f"{config.package}: --int8 quantizes the full graph, which this package does not have")
    device = select_device(config.device)
    precision = resolve_precision(config.precision, device)  # fp16 on a CPU is refused here, before any work
    on_event({"event": "checked", "version": m.version, "classes": list(new_names), "images": len(new_data),
              "epochs": config.epochs})
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    model = _load_model(version)
    exemplars, _ = version.exemplars()
    known = len(m.class_names)
    augment = m.model.get("augment", "cifar")
    transforms = Transforms(build_augment(augment, m.input.mean, m.input.std, m.input.height),
                            TestTransform(m.input.mean, m.input.std))
    recipe = paper_recipe(1, epochs=config.epochs, schedule=config.schedule, batch_size=config.batch_size)  # type: ignore[arg-type]
    result = learn_task(
        model, new_data.with_labels(new_data.labels + known), exemplars, num_new=len(new_names), recipe=recipe,
        train_base=config.train_base, memory=MemoryPolicy("bytes", m.budget.total_bytes), transforms=transforms,
        device=device, generator=generator, desc=f"task {model.num_tasks}", precision=precision,
        codec_mix=config.codec_mix,
        on_epoch=lambda epoch, epochs, loss: on_event({"event": "epoch", "epoch": epoch, "epochs": epochs,
                                                       "loss": round(loss, 6)}),
    )
    on_event({"event": "exporting"})
    model = model.cpu().eval()
    # A new number above every version ever kept (after a rollback the current one is not the newest).
    manifest = replace(
        model_manifest(next_version(config.package), model, result.exemplars, spec=m.input,
                       class_names=(*m.class_names, *new_names), augment=augment,
                       total_budget_bytes=m.budget.total_bytes,
                       source={**m.source, "update": {"data": config.data, "epochs": config.epochs,
                                                      "train_base": config.train_base, "precision": precision,
                                                      **_codec_report(result)}}),
        parent=m.version,
    )
    new_task = model.num_branches - 1
    # An int8 full graph is re-made from the new float graph, calibrated on the new exemplars.
    int8 = m.file(INT8_ROLE) is not None if config.int8 is None else config.int8
    calibration = calibration_images(result.exemplars.images, result.exemplars.labels) if int8 else None
    blobs = model_blobs(model, m.input, branches=[new_task], trunk=config.train_base, full=m.file("full") is not None,
                        int8_calibration=calibration)
    kept = [f for f in m.files if (f.role == "trunk" and not config.train_base) or f.role == "branch"]
    rng = np.random.default_rng(config.seed)
    sample = rng.permutation(len(new_data))[: config.verify_images // 2]
    images = np.concatenate([new_data.take(np.sort(sample)), result.exemplars.images[: config.verify_images // 2]])

    # Only the graphs this update wrote are compared one by one; the kept ones were when they were
    # written (their files are checked by sha256 on every load). The end-to-end checks run in full.
    written = [role if task is None else f"{role}-{task}" for _, role, _, task in blobs if role in ("trunk", "branch")]

    def verify(candidate: PackageVersion) -> dict:
        return verify_package(candidate, model, images, graphs=written) | {"images_from": "new task data + exemplars"}

    committed = append_version(config.package, manifest, blobs, kept, result.exemplars,
                               exemplar_tasks(result.exemplars, manifest.task_classes), verify=verify)
    collect_garbage(config.package)
    return committed
