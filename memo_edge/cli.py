"""The ``memo-edge`` command line: each command parses, builds a config, calls one library function.

Errors are mapped to exit codes in one place (``MemoEdgeGroup.invoke``), by their code
(``memo_edge.errors.CODES``): a user's mistake exits 2, a failure 1, both as one line without a
traceback; an exception that is no declared error is a bug and keeps its traceback.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import click
import numpy as np

from memo_edge import __version__
from memo_edge.errors import InputError, as_error, code_of, exit_status
from memo_edge.options import ENGINE_PRECISIONS, UpdateOptions
from memo_edge.serve.command import backend_option, graph_precision_option, serve as serve_command
from memo_edge.utils.click_options import renamed_option
from memo_edge.cli_options import record_options, run_config, run_options

__all__ = ["main"]


class CodedError(click.ClickException):
    """One line on stderr; the exit status of the error's code (2: click's for bad invocations)."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.exit_code = exit_status(code)


class MemoEdgeGroup(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except Exception as exc:  # a declared error, a missing extra, a user's path: one line
            error = as_error(exc, ctx.invoked_subcommand)
            if error is None:
                raise
            raise CodedError(str(error), error.code) from None


@click.group(cls=MemoEdgeGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="memo-edge")
@click.option("-v", "--verbose", is_flag=True, help="Log debug messages (per-epoch losses).")
def main(verbose: bool) -> None:
    """MEMO class-incremental learning: train on a workstation, deploy to edge GPUs."""
    # -v is about memo-edge's own messages: third-party loggers (PIL, matplotlib) stay at WARNING,
    # or their debug output would bury ours.
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    for name in {"memo_edge", __name__}:  # __name__ is "__main__" under python -m memo_edge.cli
        logging.getLogger(name).setLevel(logging.DEBUG if verbose else logging.INFO)


@main.command()
@run_options
@click.option("--method", type=click.Choice(["memo", "der", "replay"]), default="memo", show_default=True,
              help="MEMO, or a baseline of the paper's comparison (DER-style expansion, single-backbone replay).")
@click.option("--memory", default="2000", show_default=True,
              help="Exemplars in total, or 'aligned' for the method's memory-aligned count of the scenario.")
@click.option("--memory-per-class", type=click.IntRange(min=1), help="A fixed number of exemplars per class instead.")
@click.option("--memory-bytes", type=click.IntRange(min=1), help="Exemplar memory in bytes instead (under a codec, "
              "--memory N means the bytes of N raw exemplars).")
@click.option("--out", type=click.Path(path_type=Path), help="Run directory (checkpoints, results, plots).")
@click.option("--resume", type=click.Path(path_type=Path, file_okay=False), help="Continue the run in this directory.")
@click.option("--force", is_flag=True, help="Overwrite a run already in --out.")
@click.option("--nproc", type=click.IntRange(min=1), help="Processes on this machine, as torchrun would start them "
              "(one per GPU; Gloo with --device cpu); --batch-size stays the global batch.")
@click.option("--dist-timeout", type=click.FloatRange(min=1), default=300, show_default=True,
              help="Seconds a process of a distributed run waits for the others before it stops with an error.")
def train(out: Path | None, resume: Path | None, force: bool, device: str | None, data_dir: Path | None,
          nproc: int | None, dist_timeout: float, **options: Any) -> None:
    """Train MEMO task by task; checkpoints after every task (docs/distributed.md: many GPUs, torchrun)."""
    from memo_edge.train.launch import run_training
    from memo_edge.train.run import resume_config

    if resume is not None:
        config = resume_config(resume, device=device)
    elif out is None:
        raise InputError("give --out DIR for a new run, or --resume DIR to continue one")
    else:
        config = run_config(out, data_dir, device=device, **options)
    results = run_training(config, resume=resume is not None, force=force, on_task=_print_task, nproc=nproc,
                           timeout_s=dist_timeout)
    _print_summary(results, Path(config.out))


def _print_task(record: Any, num_tasks: int) -> None:
    m = record.metrics
    # The quota per class, or what is stored beside it: classes with fewer training images than the
    # quota keep them all, so "1000/class" alone would overstate the memory in use.
    per_class = f"{record.per_class}/class"
    if record.codec != "raw":  # a byte share per class: how many fit depends on each image's encoded size
        per_class = f"avg {record.exemplars / max(m['seen_classes'], 1):.1f}/class in {record.class_bytes:,} B each, {record.codec}"
    elif record.exemplars != record.per_class * m["seen_classes"]:
        stored = record.exemplars / max(m["seen_classes"], 1)
        shown = f"{stored:.0f}" if stored.is_integer() else f"avg {stored:.1f}"
        per_class = f"{shown}/class stored, quota {per_class}"
    click.echo(
        f"task-{record.task:02d} ({record.task + 1}/{num_tasks}): {m['seen_classes']} classes  top-1 {m['top1']:.1f}%  "
        f"NME {m['nme_top1']:.1f}%  exemplars {record.exemplars} ({per_class}, "
        f"{record.exemplar_bytes / 2**20:.2f} MiB)  model {record.model_bytes / 2**20:.2f} MiB  "
        f"{record.wall_time_s:.0f}s"
    )


def _print_summary(results: dict[str, Any], out: Path) -> None:
    if not results:
        return
    s = results["summary"]
    forgetting = "n/a" if s["forgetting"] is None else f"{s['forgetting']:.1f}"
    click.echo(f"average incremental accuracy {s['average_incremental_accuracy']:.2f}%  "
               f"last {s['last_accuracy']:.2f}%  forgetting {forgetting}")
    click.echo(f"results: {out / 'results.json'}  (metrics.csv, accuracy.png, accuracy_matrix.png, task-XX/)")


@main.command()
@click.option("--backbone", default="resnet32", show_default=True, help="Backbone to measure (built live).")
@click.option("--split", type=int, help="Stages in the shared trunk [default: the paper's cut].")
@click.option("--image-size", type=click.IntRange(min=1), default=32, show_default=True, help="Exemplar height = width.")
@click.option("--channels", type=click.IntRange(min=1), default=3, show_default=True, help="Exemplar channels.")
@click.option("--classes", type=click.IntRange(min=2), default=100, show_default=True, help="Classes in the dataset.")
@click.option("--base-exemplars", type=click.IntRange(min=0), default=2000, show_default=True,
              help="Exemplars of the DER reference budget.")
@click.option("--scenario", default="B0Inc10", show_default=True, help="Scenario of the per-task quota table.")
@click.option("--exemplar-codec", default="raw", show_default=True, help="Also count exemplars stored as png, jpeg:Q or webp:Q.")
@click.option("--codec-data", help="Dataset to measure the codec's mean exemplar size on (digits, npz:DIR, ...).")
@click.option("--codec-bytes", type=click.IntRange(min=1), help="Or state the codec's mean exemplar size in bytes.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def budget(as_json: bool, **options: Any) -> None:
    """Memory alignment: one model in exemplars, and the aligned exemplar counts per scenario."""
    from memo_edge.model.budget import BudgetRequest, budget_report, format_budget_report

    report = budget_report(BudgetRequest(**options))  # what it refuses is an InvalidValue: exit 2
    click.echo(json.dumps(report, indent=2) if as_json else format_budget_report(report))


@main.command()
@click.argument("run_dir", type=click.Path(path_type=Path, file_okay=False, exists=True))
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Package directory to write.")
@click.option("--task", type=click.IntRange(min=0), help="Export the model after this task (task-XX, 0-based) [default: last].")
@click.option("--full/--no-full", default=True, show_default=True, help="Also export full.onnx (image -> logits).")
@click.option("--int8", is_flag=True,
              help="Also an int8 copy of full.onnx for CPU inference (ort-cpu), calibrated on the exemplars and checked.")
@click.option("--verify-images", type=click.IntRange(min=1), default=256, show_default=True,
              help="Held-out test images for the ONNX Runtime vs PyTorch check.")
@click.option("--total-budget", "total_budget", type=click.IntRange(min=1),
              help="Device memory budget in bytes (model + exemplars) [default: what the run uses at this task].")
@click.option("--trt", is_flag=True, help="Also build TensorRT engines (needs tensorrt and an NVIDIA GPU).")
@renamed_option("--engine-precision", old="--fp16", old_value="fp16", type=click.Choice(ENGINE_PRECISIONS),
                default="fp32", show_default=True, help="Arithmetic of the TensorRT engines (--trt).")
@click.option("--min-batch", type=click.IntRange(min=1), default=1, show_default=True, help="TensorRT profile: smallest batch.")
@click.option("--opt-batch", type=click.IntRange(min=1), default=8, show_default=True, help="TensorRT profile: tuned batch.")
@click.option("--max-batch", type=click.IntRange(min=1), default=32, show_default=True, help="TensorRT profile: largest batch.")
@click.option("--workspace", type=click.IntRange(min=16), default=1024, show_default=True, help="TensorRT workspace (MiB).")
@click.option("--force", is_flag=True, help="Replace an existing package at --out.")
def export(run_dir: Path, out: Path, task: int | None, full: bool, int8: bool, verify_images: int,
           total_budget: int | None, trt: bool, engine_precision: str, min_batch: int, opt_batch: int, max_batch: int,
           workspace: int, force: bool) -> None:
    """Export a trained run as a verified package (ONNX, weights, exemplars; TensorRT engines with --trt)."""
    from memo_edge.export.exporter import ExportConfig, export_run
    from memo_edge.runtime.engine_cache import EngineOptions, ShapeProfile

    engine = EngineOptions(engine_precision, ShapeProfile(min_batch, opt_batch, max_batch), workspace)
    config = ExportConfig(run_dir, out, task, full, int8, verify_images, total_budget, force, engine if trt else None)
    version, engines = export_run(config)
    v = version.manifest.verification["graphs"]["end_to_end"]
    click.echo(f"package {out}: {len(version.manifest.files)} files, verified on "
               f"{version.manifest.verification['images']} images (max logit difference {v['max_abs_diff']:.2e}, "
               f"top-1 agreement {100 * v['top1_agreement']:.1f}%)")
    q = version.manifest.verification["graphs"].get("full-int8")
    if q is not None:
        click.echo(f"int8 full graph: top-1 agreement with float32 {100 * q['top1_agreement']:.1f}%")
    for record in engines:
        click.echo(f"engine {record.name}: {'built' if record.built else 'cached'} {record.path}")


@main.command()
@click.argument("package", type=click.Path(path_type=Path, file_okay=False, exists=True))
@click.option("--version", "version", type=click.IntRange(min=1), help="Show this version [default: current].")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (the manifest).")
def info(package: Path, version: int | None, as_json: bool) -> None:
    """What a package holds: classes, tasks, files and sizes, budget, verification.

    Checks the whole package first (SQLite integrity, every kept version's manifest, exemplars and
    files) and exits 2 naming what is damaged.
    """
    from memo_edge.runtime.check import require_intact
    from memo_edge.runtime.info import format_info
    from memo_edge.runtime.package import open_package

    check = require_intact(package, full=True)
    pkg = open_package(package, version=version, verify=False)  # the check has just hashed every file
    click.echo(json.dumps(pkg.manifest.to_json(), indent=2) if as_json else format_info(pkg, check))


@main.command()
@click.argument("package", type=click.Path(path_type=Path, file_okay=False, exists=True))
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path, exists=True))
@click.option("--top", type=click.IntRange(min=1), default=1, show_default=True, help="Classes to report per image.")
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True, help="Images per batch.")
@backend_option
@graph_precision_option
def predict(package: Path, inputs: tuple[Path, ...], top: int, batch_size: int, backend: str, precision: str) -> None:
    """Classify images (files, directories of images, or npz files with x); one JSON line per image."""
    from memo_edge.runtime.backends import precision_options
    from memo_edge.runtime.predict import load, read_inputs

    rt = load(package, backend=backend, **precision_options(precision))
    manifest = rt.package.manifest
    logging.getLogger(__name__).info("package version %d, backend %s (%s)", manifest.version, rt.backend.name,
                                     rt.backend.precision)
    for names, images in read_inputs(list(inputs), manifest.input, batch_size):
        _, scores = rt.predict(images)
        order = np.argsort(-scores, axis=1)[:, :top]
        for name, row, best in zip(names, scores, order):
            classes = [{"label": int(k), "class": rt.class_names[k], "score": round(float(row[k]), 6)} for k in best]
            click.echo(json.dumps({"input": name, "top": classes}))


@main.command()
@click.argument("package", type=click.Path(path_type=Path, file_okay=False, exists=True))
@click.option("--data", required=True, help="New classes: DIR/<class>/*.png, npz:DIR or imagefolder:DIR.")
@record_options(UpdateOptions)  # memo_edge/options.py: the same options as POST /update's query
@click.option("--json", "json_lines", is_flag=True,
              help="Progress and the outcome as JSON lines on stdout, for programs (the service's update jobs).")
def update(package: Path, data: str, json_lines: bool, **options: Any) -> None:
    """Learn a new task on this device and append it as a new package version (same memory budget)."""
    from memo_edge.device.update import UpdateConfig, update_package

    config = UpdateConfig(package=package, data=data, options=UpdateOptions(**options))
    if json_lines:
        _update_json_lines(config)
        return
    version = update_package(config)
    m, v = version.manifest, version.manifest.verification["graphs"]["end_to_end"]
    click.echo(f"package {package}: version {m.version} with {len(m.task_classes)} tasks, {len(m.class_names)} classes; "
               f"exemplars {m.budget.exemplars} ({'' if m.budget.codec == 'raw' else 'at least '}{m.budget.per_class}/class, "
               f"{m.budget.exemplar_bytes:,} B{'' if m.budget.codec == 'raw' else ' as ' + m.budget.codec}) + model "
               f"{m.budget.model_bytes:,} B <= budget {m.budget.total_bytes:,} B; verified (max logit difference "
               f"{v['max_abs_diff']:.1e})")
    q = m.verification["graphs"].get("full-int8")
    if q is not None:
        click.echo(f"int8 full graph re-made: top-1 agreement with float32 {100 * q['top1_agreement']:.1f}%")


def _update_json_lines(config: Any) -> None:
    """``update --json``: one JSON object per line, flushed at once; a failure is an event too (with the
    error's stable code, which the service turns into an HTTP status), then the usual one-line error and
    exit status."""
    from memo_edge.device.update import update_package

    def emit(event: dict) -> None:
        click.echo(json.dumps(event))  # click.echo flushes

    try:
        version = update_package(config, on_event=emit)
    except Exception as exc:
        said = str(as_error(exc, "update") or exc)
        emit({"event": "failed", "code": code_of(exc, "update"), "kind": type(exc).__name__,
              "error": said.splitlines()[0] if said else ""})
        raise
    m = version.manifest
    emit({"event": "committed", "version": m.version, "tasks": len(m.task_classes), "classes": len(m.class_names),
          "exemplars": m.budget.exemplars, "exemplar_bytes": m.budget.exemplar_bytes, "codec": m.budget.codec,
          "model_bytes": m.budget.model_bytes, "total_bytes": m.budget.total_bytes})


@main.command()
@click.argument("package", type=click.Path(path_type=Path, file_okay=False, exists=True))
def rollback(package: Path) -> None:
    """Make the previous package version current again."""
    from memo_edge.runtime.versions import rollback as rollback_package

    click.echo(f"package {package}: version {rollback_package(package)} is current")


main.add_command(serve_command)  # memo_edge/serve/command.py: HTTP predictions (click only until it runs)


@main.command()
@click.argument("package", type=click.Path(path_type=Path, file_okay=False, exists=True))
@click.option("--batch", default="1,8,64", show_default=True, help="Comma-separated batch sizes.")
@click.option("--backend", "backends", multiple=True, default=["auto"], show_default=True,
              help="Backend(s) to measure; repeat the option for several.")
@click.option("--iterations", type=click.IntRange(min=1), default=50, show_default=True, help="Timed runs per batch.")
@graph_precision_option
def bench(package: Path, batch: str, backends: tuple[str, ...], iterations: int, precision: str) -> None:
    """Latency p50/p95, throughput and peak memory per backend and batch size."""
    from memo_edge.runtime.bench import bench as run_bench, format_bench

    try:
        batches = [int(b) for b in batch.split(",") if b.strip()]
    except ValueError:
        raise InputError(f"--batch: expected comma-separated sizes like 1,8,64, got {batch!r}") from None
    click.echo(format_bench(run_bench(package, backends=backends, batches=batches, iterations=iterations,
                                      precision=precision)))


@main.command()
@click.option("--json", "as_json", is_flag=True,
              help="Machine-readable output: every check (status, detail, what it enables) and each capability.")
def doctor(as_json: bool) -> None:
    """What this machine can run and why not: Python, ONNX Runtime, CUDA, GPUs, TensorRT, torch, JetPack.

    A report, not a gate: it exits 0 whatever it finds (docs/runtime.md).
    """
    from memo_edge.runtime.doctor import format_report, run_checks

    report = run_checks()
    click.echo(json.dumps(report.to_json(), indent=2) if as_json else format_report(report))


def _methods(value: str) -> list[str]:
    from memo_edge.model.methods import method_names

    methods = [m.strip() for m in value.split(",") if m.strip()]
    unknown = [m for m in methods if m not in method_names()]
    if unknown or not methods:
        raise InputError(f"--methods: unknown {unknown or value!r}; choose from {', '.join(method_names())}")
    return methods


@main.command()
@run_options
@click.option("--methods", default="memo,der,replay", show_default=True, help="Comma-separated methods to compare.")
@click.option("--memory", default="aligned", show_default=True,
              help="Total budget for model + exemplars: 'aligned' (DER's: T backbones + 2,000 exemplars) or MiB.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Directory for the runs and the table.")
@click.option("--force", is_flag=True, help="Retrain runs already in --out instead of continuing them.")
def compare(out: Path, methods: str, memory: str, force: bool, data_dir: Path | None, **options: Any) -> None:
    """Methods under one total memory budget: table (JSON, CSV, markdown) and plot."""
    from memo_edge.experiments.compare import compare as run_compare

    rows = run_compare(run_config(out, data_dir, **options), _methods(methods), memory, out, force=force,
                       on_task=_print_task)
    click.echo((out / "comparison.md").read_text().rstrip())
    click.echo(f"results: {out}/comparison.{{json,csv,md,png}} and one run directory per method ({len(rows)})")


@main.command()
@run_options
@click.option("--methods", default="memo,der,replay", show_default=True, help="Comma-separated methods.")
@click.option("--budgets", default="7.6,12.4,16.0,19.8,23.5", show_default=True,
              help="Total budgets in MiB (the paper's CIFAR-100 B0Inc10 points by default).")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Directory for the runs and the curve.")
@click.option("--force", is_flag=True, help="Retrain runs already in --out instead of continuing them.")
def curve(out: Path, methods: str, budgets: str, force: bool, data_dir: Path | None, **options: Any) -> None:
    """Accuracy against total memory per method, AUC-A and AUC-L (smaller backbones at small budgets)."""
    from memo_edge.experiments.compare import curve as run_curve

    try:
        points = [float(b) for b in budgets.split(",") if b.strip()]
    except ValueError:
        raise InputError(f"--budgets: expected comma-separated MiB values, got {budgets!r}") from None
    run_curve(run_config(out, data_dir, **options), _methods(methods), points, out, force=force, on_task=_print_task)
    click.echo((out / "curve.md").read_text().rstrip())
    click.echo(f"results: {out}/curve.{{json,md,png}}")


@main.command("analyze-layers")
@click.argument("run_dir", type=click.Path(path_type=Path, file_okay=False, exists=True))
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Directory for layers.json and layers.png.")
@click.option("--images", type=click.IntRange(min=2), default=500, show_default=True,
              help="Test images of the first task's classes to compare features on.")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:N.")
def analyze_layers(run_dir: Path, out: Path, images: int, device: str) -> None:
    """Where tasks share and where they differ: per stage, feature similarity (linear CKA) between the
    models after successive tasks, and how far each stage's weights moved."""
    from memo_edge.analysis import analyze_layers as run_analysis, format_layers

    click.echo(format_layers(run_analysis(run_dir, out, images=images, device=device)))
    click.echo(f"results: {out / 'layers.json'}, {out / 'layers.png'}")


if __name__ == "__main__":
    main()
