"""Every benchmark script still imports and parses its options, and the ones a CPU can run do one tiny
iteration end to end, so renaming something a benchmark uses breaks a test, not the next measurement."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import write_npz

BENCHMARKS = Path(__file__).parents[1] / "benchmarks"
SCRIPTS = sorted(p.name for p in BENCHMARKS.glob("*.py") if not p.name.startswith("_"))
SHELL = sorted(p.name for p in BENCHMARKS.glob("*.sh"))


def load(name: str):
    """The script as a module (its ``main`` not run), with benchmarks/ on sys.path as when it runs."""
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(f"benchmark_{name.removesuffix('.py')}", BENCHMARKS / name)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", SCRIPTS)
def test_every_benchmark_imports_and_has_help(name: str, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    module = load(name)
    monkeypatch.setattr(sys, "argv", [name, "--help"])
    with pytest.raises(SystemExit) as exit_:
        module.main()
    assert exit_.value.code == 0 and "usage:" in capsys.readouterr().out


@pytest.mark.parametrize("name", SHELL)
def test_every_benchmark_shell_script_parses(name: str) -> None:
    subprocess.run(["bash", "-n", str(BENCHMARKS / name)], check=True)


def run(name: str, *args: object, timeout: float = 600) -> str:
    done = subprocess.run([sys.executable, str(BENCHMARKS / name), *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=BENCHMARKS.parent)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return done.stdout


# The smallest arguments each CPU-capable script takes: one iteration of everything it measures. GPU-only
# scripts (trt_compare, gpu_session's stages, protocol_projection's 100-class run) stop at --help above.
SMOKE = {
    "herding_speed.py": ["--repeats", "1"],
    "runtime_speed.py": ["--tasks", "1", "--iterations", "1", "--iterations-64", "1", "--warmup", "0", "--rounds", "1"],
    "ort_cpu_profile.py": ["--tasks", "1", "--iterations", "1", "--iterations-64", "1", "--warmup", "0",
                           "--profile-calls", "1"],
    "ort_levers.py": ["--tasks", "1", "--repeats", "1", "--calls", "1", "--warmup", "0"],
    "train_speed.py": ["--device", "cpu", "--batch", "8", "--steps", "1", "--warmup", "0", "--tasks", "1"],
    "update_speed.py": ["--tasks", "2,3", "--repeats", "1", "--exemplars", "40", "--new-per-class", "2",
                        "--no-int8-cost"],
    "serve_load.py": ["--tasks", "1", "--seconds", "0.5", "--bench-iterations", "1", "--update-epochs", "1", "--update-images", "2"],
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SMOKE))
def test_a_benchmark_runs_one_tiny_iteration(name: str, tmp_path: Path) -> None:
    out = tmp_path / "benchmarks.md"
    run(name, *SMOKE[name], "--write", out)
    assert out.read_text().count(":begin -->") >= 1


@pytest.mark.slow
def test_the_codec_benchmark_runs_on_a_small_npz(tmp_path: Path) -> None:
    data = write_npz(tmp_path / "data", [0, 1])
    run("codec_speed.py", "--data", data, "--images", "8", "--repeats", "1", "--write", tmp_path / "b.md")


@pytest.mark.slow
def test_the_run_benchmarks_run_on_the_session_run(base: dict[str, Path], tmp_path: Path) -> None:
    run_dir = base["root"] / "run"
    run("int8_accuracy.py", run_dir, "--write", tmp_path / "int8.md")
    run("autocast_inference.py", "--run", run_dir, "--device", "cpu", "--precisions", "bf16", "--write", tmp_path / "a.md")
