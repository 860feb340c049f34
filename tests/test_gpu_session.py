"""benchmarks/gpu_session.py, the one command of a GPU lease, checked on the CPU: stage selection, the
budget (a slow stage is cut, the next still runs, a spent budget skips), the report files in $OUT after
every stage, the sections it hands back and their merge, and the protocol projection's arithmetic."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


session = _load("gpu_session")
projection = _load("protocol_projection")


def _ctx(tmp_path: Path, device: str = "cpu") -> object:
    return session.Context(device=device, python=sys.executable, work=tmp_path / "work", docs=tmp_path / "bench.md",
                           data=tmp_path / "data", quick=True)


def _py(code: str) -> list[str]:
    return [sys.executable, "-c", code]


# --- the plan -----------------------------------------------------------------------------------------


def test_a_stage_gets_its_cap_or_what_the_budget_has_left() -> None:
    assert session.allot(120, remaining_s=400) == 120
    assert session.allot(120, remaining_s=60) == 50  # 10 s kept back for the report
    assert session.allot(120, remaining_s=20) is None  # 10 s would only start it to cut it
    assert session.allot(5, remaining_s=20) == 5  # a short stage still fits in a short remainder
    assert session.allot(5, remaining_s=12) is None


def test_stages_are_picked_by_name_in_the_sessions_order() -> None:
    names = [s.name for s in session.select(session.STAGES, "protocol, env,tests")]
    assert names == ["env", "tests", "protocol"]
    assert session.select(session.STAGES, None) == session.STAGES
    with pytest.raises(SystemExit, match="unknown stage 'gpu'; choose from env, tests, gpu_check"):
        session.select(session.STAGES, "env,gpu")


def test_the_order_of_value_and_what_a_cpu_session_runs(tmp_path: Path) -> None:
    assert [s.name for s in session.STAGES] == ["env", "tests", "gpu_check", "precisions", "nccl", "speed",
                                                "accuracy", "autocast", "protocol"]
    gpu, cpu = _ctx(tmp_path, "cuda"), _ctx(tmp_path, "cpu")
    assert [n for n, _, _ in session._precision_runs(gpu)] == ["bf16", "fp16", "bf16-stacked", "fp16-stacked"]
    assert [n for n, _, _ in session._precision_runs(cpu)] == ["bf16", "bf16-stacked"]  # fp16 trains on GPUs only
    assert session.no_subset(cpu) is not None and session.no_fp32_run(cpu) is not None
    (cpu.data / "cifar100-20").mkdir(parents=True)
    (cpu.data / "cifar100-20" / "meta.json").write_text("{}")
    assert session.no_subset(cpu) is None
    protocol = session.protocol_commands(dataclasses.replace(gpu, stage_s=200))[1]  # stops itself in time
    assert protocol[protocol.index("--budget-s") + 1] == str(200 - session.PROTOCOL_MARGIN_S)
    assert "--budget-s" not in session.protocol_commands(gpu)[1]
    train = session.nccl_commands(gpu)[0]
    assert train[1:7] == ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1", "-m"]
    assert train[train.index("--device") + 1] == "cuda"


def test_sections_written_are_found_and_merged(tmp_path: Path) -> None:
    before = "# B\n\n<!-- a:begin -->\nold a\n<!-- a:end -->\n\n<!-- b:begin -->\nsame b\n<!-- b:end -->\n"
    after = before.replace("old a", "new a") + "\n<!-- c:begin -->\nnew c\n<!-- c:end -->\n"
    blocks = session.written_sections(before, after)
    assert list(blocks) == ["a", "c"]
    handed_back = tmp_path / "benchmarks.md"
    handed_back.write_text("\n\n".join(blocks.values()) + "\n")
    docs = tmp_path / "docs.md"
    docs.write_text(before)
    assert session.merge(handed_back, docs) == ["a", "c"]
    assert docs.read_text() == after.rstrip("\n") + "\n"


# --- running --------------------------------------------------------------------------------------


def test_a_slow_stage_is_cut_the_next_runs_and_a_spent_budget_skips(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path)
    write = ("import sys; sys.path.insert(0, %r); from _report import write_section; "
             "write_section(__import__('pathlib').Path(%r), 'fake_section', 'figures of the fast stage')"
             % (str(BENCHMARKS), str(ctx.docs)))
    stages = [
        session.Stage("slow", 2, "nothing", lambda c: [_py("import time; time.sleep(60)")]),
        session.Stage("fast", 30, "a section", lambda c: [_py(write)], figures=lambda c: "42 img/s"),
        session.Stage("broken", 30, "an exit status", lambda c: [_py("raise SystemExit(3)")]),
        session.Stage("gpu", 30, "a GPU", lambda c: [_py("")], needs_gpu=True),
        session.Stage("late", 30, "the budget", lambda c: [_py("")]),
    ]
    ticks = iter([0.0, 0.0, 0.0, 0.0, 500.0, 500.0])  # the budget is spent once "gpu" has been considered
    out = tmp_path / "out"
    results = session.run_session(stages, ctx, budget_s=100, out=out, clock=lambda: next(ticks))
    status = {r.name: (r.status, r.detail) for r in results}
    assert status["slow"][0] == "cut" and "cut at its 2 s" in status["slow"][1]
    assert results[0].seconds < 30  # the sleeping process was stopped
    assert status["fast"] == ("passed", "") and results[1].figures == "42 img/s"
    assert status["broken"][0] == "failed" and status["broken"][1].startswith("exit 3")
    assert status["gpu"] == ("skipped", "needs a GPU")
    assert status["late"] == ("skipped", "the session's budget is spent")

    files = sorted(p.relative_to(out) for p in out.rglob("*"))
    assert [str(f) for f in files] == ["benchmarks.md", "session.log", "summary.json", "summary.md"]  # no env.json: no env stage
    summary = (out / "summary.md").read_text()
    for name, state in (("slow", "cut"), ("fast", "passed"), ("broken", "failed"), ("late", "skipped")):
        assert f"| {name} | {state}" in summary
    assert "5 stages in" in summary and "1 passed, 1 failed, 1 cut, 2 skipped" in summary
    assert [s["status"] for s in json.loads((out / "summary.json").read_text())["stages"]] == [
        "cut", "passed", "failed", "skipped", "skipped"]
    handed_back = (out / "benchmarks.md").read_text()  # the sections this session wrote: its own and the stage's
    assert "<!-- fake_section:begin -->\nfigures of the fast stage" in handed_back
    assert "<!-- gpu_session_cpu:begin -->" in handed_back
    log = (out / "session.log").read_text()
    assert "===== stage slow (up to 2 s) =====" in log and "SystemExit(3)" in log


@pytest.mark.slow
def test_a_quick_cpu_session_end_to_end(tmp_path: Path) -> None:
    """The real script on the CPU: env (with memo-edge doctor) and the protocol stage's projection."""
    docs = tmp_path / "benchmarks.md"
    docs.write_text("# Benchmarks\n")
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, str(BENCHMARKS / "gpu_session.py"), "--device", "cpu", "--quick",
                           "--stages", "env,gpu_check,protocol", "--budget", "300", "--out", str(out), "--work",
                           str(tmp_path / "work"), "--docs", str(docs)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["benchmarks.md", "env.json", "session.log", "summary.json",
                                                     "summary.md"]
    env = json.loads((out / "env.json").read_text())
    assert env["device"] == "cpu" and env["torch"]["version"] and isinstance(env["doctor"], dict)
    stages = {s["name"]: s for s in json.loads((out / "summary.json").read_text())["stages"]}
    assert stages["env"]["status"] == "passed" and stages["gpu_check"]["status"] == "skipped"
    assert stages["protocol"]["status"] == "passed"
    assert "projected full protocol" in stages["protocol"]["figures"]
    assert "(2 of 2 tasks measured)" in stages["protocol"]["figures"]
    sections = (out / "benchmarks.md").read_text()
    assert "<!-- protocol_projection_cpu:begin -->" in sections and "<!-- gpu_session_cpu:begin -->" in sections
    assert "<!-- protocol_projection_cpu:begin -->" in docs.read_text()


# --- the protocol projection's arithmetic ----------------------------------------------------------------


def test_an_epoch_is_the_median_gap_between_epoch_ends() -> None:
    assert projection.epoch_time([10.0, 12.0, 15.0, 17.0], 4, train_seconds=99) == 2.0  # gaps 2, 3, 2
    assert projection.epoch_time([10.0], 1, train_seconds=7.5) == 7.5  # one epoch: its training seconds
    assert projection.epoch_time([], 3, train_seconds=6.0) == 2.0


def test_the_projection_multiplies_epochs_and_adds_the_rest_once() -> None:
    timings = [projection.TaskTiming(0, 3, epoch_s=2.0, wall_s=10.0), projection.TaskTiming(1, 2, epoch_s=3.0, wall_s=9.0)]
    assert [t.rest_s for t in timings] == [4.0, 3.0]
    rows = projection.project(timings, projection.full_epochs(4))
    assert projection.full_epochs(4) == (200, 170, 170, 170)
    assert [r["projected_s"] for r in rows] == [200 * 2 + 4, 170 * 3 + 3, 170 * 3 + 3, 170 * 3 + 3]
    assert [r["measured"] for r in rows] == [True, True, False, False]
    assert projection.TaskTiming(0, 3, epoch_s=5.0, wall_s=10.0).rest_s == 0.0  # never negative
    with pytest.raises(ValueError, match="no task finished"):
        projection.project([], projection.full_epochs(10))
