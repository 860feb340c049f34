"""One GPU session in one call: every GPU check of memo-edge, in order of value, inside one time budget.

A lent GPU machine gives a session 15 minutes in all and 10 minutes a command, carries at most 64 MiB
of the working tree, and returns only what is written to ``$OUT`` (at most 8 files). So one command
(``bash benchmarks/gpu_session.sh``) runs the stages below, each under its own cap and all under one
global budget (``--budget``, 420 s by default): a stage gets at most what is left, a slow stage is cut
and the next one still runs. After every stage the session rewrites in ``$OUT``: ``summary.md`` (the
table: stage, status, seconds, figures, what it proves), ``summary.json``, ``env.json``,
``session.log`` (every stage's output) and ``benchmarks.md`` (the docs/benchmarks.md sections the
session wrote), so a session killed at its limit still returns what it did. Back here,
``gpu_session.py merge FILES_AT/benchmarks.md`` puts those sections into docs/benchmarks.md.

Stages (``--stages`` picks some, in this order):

- env: what the machine is (GPU, driver, CUDA, cuDNN, torch, the TF32 defaults, bf16 support) and
  ``memo-edge doctor --json`` (onnxruntime and its providers, cuda-python and the GPUs it sees, TensorRT).
- tests: tests/test_gpu.py (a CUDA step equals the CPU's, fp16 with its scaler, learn_task in every
  precision and path, resident batches, no read-back inside a step, cuda-python's probe and buffers)
  and the CPU-side tests of the same paths, of the backends and of the environment checks.
- gpu_check: benchmarks/gpu_check.sh as it is (fp32 training, export, ONNX Runtime verification).
- precisions: bf16 and fp16 (GradScaler), each plain and with --stack-frozen: training, then export.
- nccl: torchrun with one NCCL process (the distributed path on a GPU).
- speed: the training step at T = 1, 5, 10 by precision, frozen path and layout, and the TF32 lever.
- accuracy: the real 20-class CIFAR-100 subset (.gpu-data, carried) in fp32, bf16 and fp16, the protocol
  of the CPU's bf16_accuracy section.
- autocast: what autocast changes in herding, class means and evaluation (on the fp32 run above).
- protocol: all 10 tasks of the paper's protocol shape on synthetic data made on the machine, projected
  per task to 200/170 epochs.

``--device cpu --quick`` runs the same driver with tiny sizes on a CPU (the stages that need a GPU are
skipped), which is how the tests check the driver's logic.

    bash benchmarks/gpu_session.sh                       # on the GPU machine: OUT=... set by the device tool
    .venv/bin/python benchmarks/gpu_session.py merge /work/.device/<files_at>/benchmarks.md
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "benchmarks"), str(ROOT)]  # the GPU machine runs this checkout uninstalled
from _report import write_section  # noqa: E402

from memo_edge.utils.io import atomic_write_bytes  # noqa: E402

DEFAULT_BUDGET_S = 420
REPORT_RESERVE_S = 10  # kept back from every stage for the report files
MIN_STAGE_S = 15  # a stage that would get less is skipped, not started
OUT_FILES = ("summary.md", "summary.json", "env.json", "session.log", "benchmarks.md")
_SECTION = re.compile(r"<!-- (\S+):begin -->\n.*?<!-- \1:end -->", re.DOTALL)


# --- the plan ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Context:
    """Where and how a session runs."""

    device: str  # "cuda" or "cpu"
    python: str
    work: Path  # scratch: run directories, packages, data made on the machine
    docs: Path  # the benchmarks file the stages write their sections into
    data: Path  # .gpu-data (carried): the real CIFAR-100 subset
    quick: bool = False  # tiny sizes: the driver's own CPU test
    stage_s: int = 0  # the seconds the running stage was given (its commands may plan with them)

    @property
    def gpu(self) -> bool:
        return self.device == "cuda"


Command = list[str]


@dataclass(frozen=True)
class Stage:
    name: str
    cap_s: int
    proves: str
    commands: Callable[[Context], list[Command]]
    figures: Callable[[Context], str] = lambda ctx: ""
    needs_gpu: bool = False
    missing: Callable[[Context], str | None] = lambda ctx: None  # why the stage cannot run here (skipped), or None


@dataclass
class StageResult:
    name: str
    status: str  # passed, failed, cut, skipped
    seconds: float
    detail: str = ""
    figures: str = ""
    proves: str = ""


def allot(cap_s: int, remaining_s: float, reserve_s: float = REPORT_RESERVE_S, minimum_s: float = MIN_STAGE_S) -> int | None:
    """The seconds a stage may run: its cap, or what the budget still has after the reserve; None when
    the budget leaves it less than ``minimum_s`` (or its whole cap, if smaller): such a stage is skipped
    rather than started only to be cut."""
    available = int(min(cap_s, remaining_s - reserve_s))
    return available if available >= min(minimum_s, cap_s) else None


def select(stages: list[Stage], names: str | None) -> list[Stage]:
    """The stages named in ``names`` (comma-separated), in the session's order; all when None."""
    if not names:
        return list(stages)
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    known = {s.name for s in stages}
    unknown = [n for n in wanted if n not in known]
    if unknown:
        raise SystemExit(f"unknown stage {unknown[0]!r}; choose from {', '.join(s.name for s in stages)}")
    return [s for s in stages if s.name in wanted]


def written_sections(before: str, after: str) -> dict[str, str]:
    """The marked sections of ``after`` that are new or changed since ``before`` (name -> whole block)."""
    old = {m.group(1): m.group(0) for m in _SECTION.finditer(before)}
    return {m.group(1): m.group(0) for m in _SECTION.finditer(after) if old.get(m.group(1)) != m.group(0)}


def merge(blocks_file: Path, docs: Path) -> list[str]:
    """Write every marked section of ``blocks_file`` into ``docs`` (replacing its namesake); their names."""
    names = []
    for m in _SECTION.finditer(blocks_file.read_text()):
        body = m.group(0).split("\n", 1)[1].rsplit("\n", 1)[0]
        write_section(docs, m.group(1), body)
        names.append(m.group(1))
    return names


# --- running ------------------------------------------------------------------------------------------


def run_command(cmd: Command, timeout_s: float, log, env: dict[str, str]) -> int | None:
    """``cmd`` in its own process group, output to ``log``; its exit status, or None when cut (the whole
    group is stopped: torchrun's workers and a script's children too)."""
    log.write(f"$ {shlex.join(cmd)}\n")
    log.flush()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        return proc.wait(timeout=max(timeout_s, 0.1))
    except subprocess.TimeoutExpired:
        for sig, grace in ((signal.SIGINT, 5), (signal.SIGTERM, 5), (signal.SIGKILL, 5)):
            try:
                os.killpg(proc.pid, sig)
                proc.wait(timeout=grace)
                break
            except subprocess.TimeoutExpired:
                continue
            except ProcessLookupError:
                break
        return None


def run_stage(stage: Stage, ctx: Context, timeout_s: int, log, env: dict[str, str]) -> StageResult:
    start = time.monotonic()
    log.write(f"\n===== stage {stage.name} (up to {timeout_s} s) =====\n")
    status, detail = "passed", ""
    for cmd in stage.commands(replace(ctx, stage_s=timeout_s)):
        left = timeout_s - (time.monotonic() - start)
        rc = run_command(cmd, left, log, env)
        if rc is None:
            status, detail = "cut", f"cut at its {timeout_s} s: {shlex.join(cmd)[:120]}"
            break
        if rc != 0:
            status, detail = "failed", f"exit {rc}: {shlex.join(cmd)[:120]}"
            break
    seconds = time.monotonic() - start
    try:
        figures = stage.figures(ctx)
    except Exception as exc:  # a figure that cannot be read is a line in the report, never a lost report
        figures = f"(figures unreadable: {type(exc).__name__}: {exc})"
    log.write(f"===== stage {stage.name}: {status} in {seconds:.0f} s {detail}\n")
    log.flush()
    return StageResult(stage.name, status, seconds, detail, figures, stage.proves)


def run_session(stages: list[Stage], ctx: Context, *, budget_s: float, out: Path | None,
                clock: Callable[[], float] = time.monotonic) -> list[StageResult]:
    """Every stage in order under the budget; the report files rewritten after each (in ``out`` too)."""
    ctx.work.mkdir(parents=True, exist_ok=True)
    deadline = clock() + budget_s
    docs_before = ctx.docs.read_text() if ctx.docs.exists() else ""
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}".rstrip(os.pathsep),
           "PYTHONUNBUFFERED": "1", "PYTHON": ctx.python}
    results: list[StageResult] = []
    log_path = ctx.work / "session.log"
    with log_path.open("a") as log:
        for stage in stages:
            reason = "needs a GPU" if stage.needs_gpu and not ctx.gpu else stage.missing(ctx)
            if reason:
                result = StageResult(stage.name, "skipped", 0.0, reason, proves=stage.proves)
            else:
                timeout = allot(stage.cap_s, deadline - clock())
                if timeout is None:
                    result = StageResult(stage.name, "skipped", 0.0, "the session's budget is spent", proves=stage.proves)
                else:
                    result = run_stage(stage, ctx, timeout, log, env)
            results.append(result)
            print(f"[gpu_session] {result.name}: {result.status} in {result.seconds:.0f} s {result.detail} "
                  f"{result.figures}".rstrip(), flush=True)
            report(results, ctx, docs_before, out, budget_s)
    return results


# --- the report ------------------------------------------------------------------------------------


def summary_markdown(results: list[StageResult], env: dict[str, Any], budget_s: float) -> str:
    gpu = env.get("gpu") or {}
    torch_env = env.get("torch") or {}
    total = sum(r.seconds for r in results)
    lines = [
        "## GPU session: every GPU check in one call (benchmarks/gpu_session.sh)",
        "",
        f"- when: {env.get('when', '?')}",
        f"- where: {gpu.get('name', 'no GPU')} (driver {gpu.get('driver', '-')}, compute capability "
        f"{gpu.get('compute_capability', '-')}), torch {torch_env.get('version', '-')} (CUDA {torch_env.get('cuda', '-')}, "
        f"cuDNN {torch_env.get('cudnn', '-')}), Python {env.get('python', '-')}; TF32 defaults: cuDNN "
        f"{torch_env.get('cudnn_allow_tf32', '-')}, cuBLAS {torch_env.get('matmul_allow_tf32', '-')}",
        "- command: the device tool's `run` with `command='bash benchmarks/gpu_session.sh'`, `carry=['.gpu-data']`, "
        "`timeout_s=480`, then `give_back`",
        f"- {len(results)} stages in {total:.0f} s of a {budget_s:.0f} s budget: "
        + ", ".join(f"{sum(r.status == s for r in results)} {s}" for s in ("passed", "failed", "cut", "skipped")),
        "",
        "| stage | status | seconds | figures | what it proves |",
        "|---|---|---|---|---|",
    ]
    for r in results:
        status = r.status + (f" ({r.detail})" if r.detail else "")
        lines.append(f"| {r.name} | {status} | {r.seconds:.0f} | {r.figures or '-'} | {r.proves} |")
    return "\n".join(lines) + "\n"


def report(results: list[StageResult], ctx: Context, docs_before: str, out: Path | None, budget_s: float) -> None:
    """The report files, in the work directory and copied to ``out`` (written whole each time)."""
    env_path = ctx.work / "env.json"
    env = json.loads(env_path.read_text()) if env_path.is_file() else {}
    summary = summary_markdown(results, env, budget_s)
    write_section(ctx.docs, f"gpu_session_{ctx.device}", summary)
    docs_after = ctx.docs.read_text() if ctx.docs.exists() else ""
    sections = written_sections(docs_before, docs_after)
    files = {
        "summary.md": summary,
        "summary.json": json.dumps({"budget_s": budget_s, "device": ctx.device,
                                    "stages": [asdict(r) for r in results]}, indent=1) + "\n",
        "benchmarks.md": "\n\n".join(sections.values()) + "\n",
    }
    for name, text in files.items():
        (ctx.work / name).write_text(text)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        for name in OUT_FILES:
            if (ctx.work / name).is_file():
                atomic_write_bytes(out / name, (ctx.work / name).read_bytes())


# --- the stages ----------------------------------------------------------------------------------


def _py(ctx: Context, *args: str) -> Command:
    return [ctx.python, *args]


def _memo(ctx: Context, *args: str) -> Command:
    return [ctx.python, "-m", "memo_edge", *args]


def _json(path: Path) -> Any:
    return json.loads(path.read_text())


def env_commands(ctx: Context) -> list[Command]:
    return [_py(ctx, str(ROOT / "benchmarks" / "gpu_session.py"), "env", "--out", str(ctx.work / "env.json"),
                 "--device", ctx.device)]


def env_figures(ctx: Context) -> str:
    env = _json(ctx.work / "env.json")
    gpu, torch_env = env.get("gpu") or {}, env.get("torch") or {}
    return (f"{gpu.get('name', 'no GPU')}, torch {torch_env.get('version')}, cuDNN {torch_env.get('cudnn')}, "
            f"bf16 native {torch_env.get('bf16_native')}, TensorRT: {_doctor_check(env, 'tensorrt')}, "
            f"doctor: {env.get('doctor_summary', '-')}")


def _doctor_check(env: dict[str, Any], name: str) -> str:
    """One line of the doctor's report in env.json (its status and detail), or "-"."""
    checks = env.get("doctor", {}).get("checks", []) if isinstance(env.get("doctor"), dict) else []
    found = next((c for c in checks if c.get("name") == name), None)
    return f"{found['status']} ({found['detail']})" if found else "-"


TEST_FILES = ("tests/test_gpu.py", "tests/test_cuda_paths.py", "tests/test_augment.py", "tests/test_backends.py",
              "tests/test_doctor.py", "tests/test_trt_ops.py")


def tests_commands(ctx: Context) -> list[Command]:
    files = [f for f in TEST_FILES if (ROOT / f).is_file()]
    return [_py(ctx, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={ctx.work / 'tests.xml'}", *files)]


def tests_figures(ctx: Context) -> str:
    suites = ET.parse(ctx.work / "tests.xml").getroot()
    suite = suites if suites.tag == "testsuite" else suites[0]
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    failed = [f"{c.get('classname', '').rsplit('.', 1)[-1]}::{c.get('name')}" for c in suite.iter("testcase")
              if c.find("failure") is not None or c.find("error") is not None]
    passed = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    text = f"{passed} passed, {counts['failures'] + counts['errors']} failed, {counts['skipped']} skipped"
    return text + (f"; failed: {', '.join(failed[:6])}" if failed else "")


def gpu_check_commands(ctx: Context) -> list[Command]:
    return [["env", f"PYTHON={ctx.python}", f"WORK={ctx.work / 'gpu_check'}", "bash", str(ROOT / "benchmarks" / "gpu_check.sh")]]


def gpu_check_figures(ctx: Context) -> str:
    results = _json(ctx.work / "gpu_check" / "run" / "results.json")
    return (f"digits B0Inc4 resnet32 fp32: average {results['summary']['average_incremental_accuracy']:.1f} %, "
            f"{sum(t['wall_time_s'] for t in results['tasks']):.0f} s of tasks")


def _digits_run(ctx: Context, out: Path, *extra: str) -> Command:
    backbone, init, epochs = ("resnet8", "1", "1") if ctx.quick else ("resnet32", "4", "3")
    return _memo(ctx, "train", "--dataset", "digits", "--scenario", "B0Inc4", "--backbone", backbone, "--init-epochs",
                 init, "--epochs", epochs, "--batch-size", "64", "--memory", "200", "--device", ctx.device, "--out",
                 str(out), "--force", *extra)


def _precision_runs(ctx: Context) -> list[tuple[str, str, bool]]:
    lower = ("bf16", "fp16") if ctx.gpu else ("bf16",)  # fp16 trains on GPUs only
    return [(f"{p}{'-stacked' if s else ''}", p, s) for s in (False, True) for p in lower]


def precisions_commands(ctx: Context) -> list[Command]:
    cmds = []
    for name, precision, stacked in _precision_runs(ctx):
        run = ctx.work / "precisions" / name
        cmds.append(_digits_run(ctx, run, "--train-precision", precision, *(["--stack-frozen"] if stacked else [])))
        cmds.append(_memo(ctx, "export", str(run), "--out", str(run.with_name(f"{name}-pkg")), "--force"))
    return cmds


def precisions_figures(ctx: Context) -> str:
    rows, cells = [], []
    for name, _, stacked in _precision_runs(ctx):
        run = ctx.work / "precisions" / name
        if not (run / "results.json").is_file():
            continue
        r = _json(run / "results.json")
        exported = (run.with_name(f"{name}-pkg") / "catalog.sqlite").is_file()
        avg = r["summary"]["average_incremental_accuracy"]
        speed = max(t["train_images_per_s"] for t in r["tasks"])
        cells.append(f"{name} {avg:.1f} %{'' if exported else ' (not exported)'}")
        rows.append(f"| {r['precision']} | {'stacked' if stacked else 'plain'} | {avg:.2f} | "
                    f"{r['summary']['last_accuracy']:.2f} | {speed:.0f} | {'yes' if exported else 'NO'} | "
                    f"{json.dumps(r.get('numerics'))} |")
    if rows:
        write_section(ctx.docs, f"gpu_precisions_{ctx.device}", "\n".join([
            f"## Mixed-precision training and export on {ctx.device} (gpu_session precisions stage)",
            "",
            f"- when: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC",
            "- what: `memo-edge train --dataset digits --scenario B0Inc4 --batch-size 64 --memory 200 --train-precision P "
            "[--stack-frozen]`, then `memo-edge export` (ONNX graphs verified against PyTorch with ONNX Runtime); "
            "the run's own results.json figures",
            "- command: `bash benchmarks/gpu_session.sh` (stage precisions)",
            "",
            "| precision | frozen branches | avg incremental top-1 (%) | last top-1 (%) | best train images/s | exported "
            "| numerics (results.json) |",
            "|---|---|---|---|---|---|---|",
            *rows]) + "\n")
    return "; ".join(cells)


def nccl_commands(ctx: Context) -> list[Command]:
    train = _digits_run(ctx, ctx.work / "nccl-1")
    return [[ctx.python, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1", *train[1:]]]


def nccl_figures(ctx: Context) -> str:
    r = _json(ctx.work / "nccl-1" / "results.json")
    return (f"backend {r['distributed']['backend']}, world size {r['distributed']['world_size']}, "
            f"average {r['summary']['average_incremental_accuracy']:.1f} %")


def speed_commands(ctx: Context) -> list[Command]:
    script = str(ROOT / "benchmarks" / "train_speed.py")
    if ctx.quick:
        matrix = ["--tasks", "1,2", "--precision", "fp32", "--path", "plain,stacked", "--steps", "2", "--warmup", "1"]
        lever = ["--tasks", "1", "--precision", "fp32", "--steps", "2", "--warmup", "1"]
    else:
        lower = "fp32,bf16,fp16" if ctx.gpu else "fp32,bf16"
        matrix = ["--tasks", "1,5,10", "--precision", lower, "--path", "plain,stacked", "--steps", "20", "--warmup", "3"]
        lever = ["--tasks", "1,10", "--precision", "fp32", "--steps", "20", "--warmup", "3"]
    layouts = "contiguous,nhwc" if ctx.gpu else "nchw"
    return [
        _py(ctx, script, "--device", ctx.device, *matrix, "--memory-format", layouts, "--json",
            str(ctx.work / "speed.json"), "--write", str(ctx.docs), "--section", f"train_speed_{ctx.device}"),
        _py(ctx, script, "--device", ctx.device, *lever, "--memory-format", layouts.split(",")[0], "--tf32", "off,on",
            "--write", str(ctx.docs), "--section", f"train_speed_{ctx.device}_tf32"),
    ]


def speed_figures(ctx: Context) -> str:
    rows = _json(ctx.work / "speed.json")
    best: dict[int, dict] = {}
    for r in rows:
        if r["tasks"] not in best or r["images_per_s"] > best[r["tasks"]]["images_per_s"]:
            best[r["tasks"]] = r
    return "; ".join(f"T={t}: {r['images_per_s']:.0f} img/s ({r['precision']} {r['path']} {r['memory_format']})"
                     for t, r in sorted(best.items()))


def no_subset(ctx: Context) -> str | None:
    if (ctx.data / "cifar100-20" / "meta.json").is_file():
        return None
    return f"no {ctx.data / 'cifar100-20'}: stage it (stage_gpu_data.py subset) and carry it"


def no_fp32_run(ctx: Context) -> str | None:
    if (ctx.work / "accuracy" / "fp32" / "results.json").is_file():
        return None
    return "no fp32 run: the accuracy stage did not finish one"


def accuracy_commands(ctx: Context) -> list[Command]:
    epochs = ["--init-epochs", "1", "--epochs", "1", "--backbone", "resnet8"] if ctx.quick else \
        ["--init-epochs", "10", "--epochs", "8"]
    precisions = "fp32,bf16,fp16" if ctx.gpu else "fp32,bf16"
    return [_py(ctx, str(ROOT / "benchmarks" / "bf16_accuracy.py"), "--device", ctx.device, "--precisions", precisions,
                "--subset", str(ctx.data / "cifar100-20"), *epochs, "--out", str(ctx.work / "accuracy"),
                "--write", str(ctx.docs))]


def accuracy_figures(ctx: Context) -> str:
    cells = []
    for run in sorted((ctx.work / "accuracy").glob("*/results.json")):
        r = _json(run)
        cells.append(f"{r['precision']} {r['summary']['average_incremental_accuracy']:.2f} %")
    return "average incremental top-1: " + ", ".join(cells) + " (the CPU's: section bf16_accuracy)"


def autocast_commands(ctx: Context) -> list[Command]:
    precisions = "bf16,fp16" if ctx.gpu else "bf16"
    return [_py(ctx, str(ROOT / "benchmarks" / "autocast_inference.py"), "--run", str(ctx.work / "accuracy" / "fp32"),
                "--device", ctx.device, "--precisions", precisions, "--json", str(ctx.work / "autocast.json"),
                "--write", str(ctx.docs))]


def autocast_figures(ctx: Context) -> str:
    rows = _json(ctx.work / "autocast.json")["rows"]
    return "; ".join(f"{r['precision']}: herding overlap {r['herding_overlap']:.3f}, CNN {r['cnn_delta_pp']:+.2f} pp, "
                     f"NME {r['nme_delta_pp']:+.2f} pp" for r in rows)


def protocol_commands(ctx: Context) -> list[Command]:
    data = ctx.work / "synthetic"
    if ctx.quick:
        make = ["--classes", "10", "--train-per-class", "20", "--test-per-class", "4"]
        run = ["--scenario", "B0Inc5", "--backbone", "resnet8", "--init-epochs", "2", "--epochs", "2", "--memory", "40"]
    else:
        make = ["--classes", "100", "--train-per-class", "500", "--test-per-class", "100"]
        run = ["--init-epochs", "3", "--epochs", "2"]
    precision = ["--precision", "bf16", "--stack-frozen"] if ctx.gpu else ["--precision", "fp32"]
    # Stop after the task that passes the stage's time less a margin (making the data, the last task,
    # the report): a clean stop writes the section, a cut one only the JSON of the finished tasks.
    budget = ["--budget-s", str(max(ctx.stage_s - PROTOCOL_MARGIN_S, 10))] if ctx.stage_s else []
    return [
        _py(ctx, str(ROOT / "benchmarks" / "stage_gpu_data.py"), "synthetic", "--out", str(data), *make, "--seed", "0"),
        _py(ctx, str(ROOT / "benchmarks" / "protocol_projection.py"), "--data", str(data), "--out",
            str(ctx.work / "protocol"), "--device", ctx.device, *precision, *run, *budget, "--json",
            str(ctx.work / "protocol.json"), "--write", str(ctx.docs)),
    ]


PROTOCOL_MARGIN_S = 75


def protocol_figures(ctx: Context) -> str:
    r = _json(ctx.work / "protocol.json")
    return (f"projected full protocol {r['projected_total_s'] / 60:.1f} min ({len(r['tasks'])} of "
            f"{len(r['projection'])} tasks measured)")


STAGES = [
    Stage("env", 30, "what the machine is; memo-edge doctor", env_commands, env_figures),
    Stage("tests", 150, "CUDA step = CPU step, fp16 + scaler, learn_task x precision x path, resident batches, "
          "sync-free steps, cuda-python buffers; the backend tests right on a GPU without TensorRT",
          tests_commands, tests_figures),
    Stage("gpu_check", 120, "fp32 GPU training, export and ONNX Runtime verification (gpu_check.sh)",
          gpu_check_commands, gpu_check_figures, needs_gpu=True),
    Stage("precisions", 150, "bf16 and fp16 (GradScaler) training, plain and stacked, and their export",
          precisions_commands, precisions_figures),
    Stage("nccl", 90, "torchrun with one NCCL process", nccl_commands, nccl_figures),
    Stage("speed", 150, "training step speed at T = 1, 5, 10 by precision, path, layout; the TF32 lever",
          speed_commands, speed_figures),
    Stage("accuracy", 240, "real CIFAR-100 (20 classes) accuracy in fp32, bf16 and fp16 against the CPU figure",
          accuracy_commands, accuracy_figures, missing=no_subset),
    Stage("autocast", 60, "what autocast changes in herding, class means and evaluation",
          autocast_commands, autocast_figures, missing=no_fp32_run),
    Stage("protocol", 240, "all 10 tasks of the paper's protocol shape, projected to 200/170 epochs",
          protocol_commands, protocol_figures),
]


# --- env ---------------------------------------------------------------------------------------------


def environment(device: str) -> dict[str, Any]:
    """What the machine is, every probe guarded: a missing piece is a value, not a failure."""
    env: dict[str, Any] = {"when": f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC",
                           "python": platform.python_version(), "machine": platform.machine(),
                           "cpus": os.cpu_count(), "device": device}
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,compute_cap",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=20, check=True)
        name, driver, memory, cap = [x.strip() for x in smi.stdout.splitlines()[0].split(",")]
        env["gpu"] = {"name": name, "driver": driver, "memory": memory, "compute_capability": cap,
                      "count": len(smi.stdout.splitlines())}
    except (OSError, subprocess.SubprocessError, ValueError, IndexError) as exc:
        env["gpu"] = None
        env["nvidia_smi"] = f"{type(exc).__name__}: {exc}"
    try:
        import torch

        cuda = torch.cuda.is_available()
        env["torch"] = {
            "version": torch.__version__, "cuda": torch.version.cuda, "cuda_available": cuda,
            "cudnn": torch.backends.cudnn.version() if cuda else None,
            "devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else [],
            "bf16_native": torch.cuda.is_bf16_supported(including_emulation=False) if cuda else None,
            "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32, "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
            "float32_matmul_precision": torch.get_float32_matmul_precision(),
            "cudnn_benchmark": torch.backends.cudnn.benchmark, "cudnn_deterministic": torch.backends.cudnn.deterministic,
            "nccl": ".".join(map(str, torch.cuda.nccl.version())) if cuda and torch.distributed.is_nccl_available() else None,
        }
    except Exception as exc:  # noqa: BLE001 - a broken torch is a finding
        env["torch"] = {"error": f"{type(exc).__name__}: {exc}"}
    # numpy, onnx, onnxruntime and its providers, cuda-python, TensorRT: the doctor's lines say them.
    try:
        doctor = subprocess.run([sys.executable, "-m", "memo_edge", "doctor", "--json"], capture_output=True,
                                text=True, cwd=ROOT, timeout=60)
    except subprocess.TimeoutExpired:
        doctor = subprocess.CompletedProcess([], 124, "", "memo-edge doctor took over 60 s")
    if doctor.returncode == 0:
        try:
            env["doctor"] = json.loads(doctor.stdout)
        except ValueError:
            env["doctor"] = doctor.stdout[-2000:]
    else:
        env["doctor"] = f"exit {doctor.returncode}: {doctor.stderr.strip()[-300:]}"
    env["doctor_summary"] = _doctor_summary(env["doctor"])
    return env


def _doctor_summary(doctor: Any) -> str:
    checks = doctor.get("checks") if isinstance(doctor, dict) else None
    if not isinstance(checks, list):
        return "not available"
    counts: dict[str, int] = {}
    for check in checks:
        status = str(check.get("status", "?")) if isinstance(check, dict) else "?"
        counts[status] = counts.get(status, 0) + 1
    return ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))


# --- command line -----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="mode")
    env = sub.add_parser("env", help="write env.json (the session's first stage)")
    env.add_argument("--out", type=Path, required=True)
    env.add_argument("--device", default="cuda")
    mrg = sub.add_parser("merge", help="put the sections of a session's benchmarks.md into docs/benchmarks.md")
    mrg.add_argument("file", type=Path)
    mrg.add_argument("--docs", type=Path, default=ROOT / "docs" / "benchmarks.md")
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--stages", help=f"comma-separated, from {','.join(s.name for s in STAGES)} [all]")
    parser.add_argument("--budget", type=float, default=DEFAULT_BUDGET_S, help="seconds for all stages together")
    parser.add_argument("--out", type=Path, default=Path(os.environ["OUT"]) if os.environ.get("OUT") else None,
                        help="where the report files are copied after every stage [$OUT]")
    parser.add_argument("--work", type=Path, help="scratch directory [a new temporary one]")
    parser.add_argument("--docs", type=Path, default=ROOT / "docs" / "benchmarks.md")
    parser.add_argument("--data", type=Path, default=ROOT / ".gpu-data")
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--quick", action="store_true", help="tiny sizes (the driver's own CPU test)")
    args = parser.parse_args(argv)
    if args.mode == "env":
        args.out.write_text(json.dumps(environment(args.device), indent=1) + "\n")
        return 0
    if args.mode == "merge":
        names = merge(args.file, args.docs)
        print(f"merged {len(names)} sections into {args.docs}: {', '.join(names)}")
        return 0
    stages = select(STAGES, args.stages)
    work = args.work or Path(tempfile.mkdtemp(prefix="gpu-session-"))
    ctx = Context(device=args.device, python=args.python, work=work, docs=args.docs, data=args.data, quick=args.quick)
    print(f"[gpu_session] {len(stages)} stages, budget {args.budget:.0f} s, work {work}, out {args.out}", flush=True)
    results = run_session(stages, ctx, budget_s=args.budget, out=args.out)
    print((work / "summary.md").read_text())
    return 0 if all(r.status in ("passed", "skipped") for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
