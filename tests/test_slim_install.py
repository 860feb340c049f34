"""The base install is the device's inference side: a fresh venv with memo-edge's base install plus
onnxruntime, torch not installed at all, loads a package and predicts, and a command that needs the
[train] extra says so in one line."""

from __future__ import annotations

import json
import os
import subprocess
import venv
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).parents[1]


@pytest.fixture(scope="module")
def slim_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv with the base install and onnxruntime only (from the registry or pip's cache, as a user would)."""
    env_dir = tmp_path_factory.mktemp("slim") / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    result = subprocess.run([str(python), "-m", "pip", "install", "--quiet", str(REPO), "onnxruntime"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"pip could not install memo-edge and onnxruntime: {result.stderr[-2000:]}"
    return python


def run(python: Path, *args: str) -> subprocess.CompletedProcess:
    # Not from the repository root: the installed package must be the one imported.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([str(python), *args], capture_output=True, text=True, cwd=python.parents[2], env=env,
                          timeout=300)


@pytest.mark.slow
def test_the_base_install_predicts_without_torch(slim_python: Path, base: dict[str, Path], tmp_path: Path) -> None:
    missing = run(slim_python, "-c", "import importlib.util as u; print([m for m in ('torch', 'torchvision', "
                  "'matplotlib', 'sklearn') if u.find_spec(m)])")
    assert missing.stdout.strip() == "[]", missing.stdout + missing.stderr  # torch is not installed at all

    images = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    np.save(tmp_path / "x.npy", images)
    code = ("import sys, numpy as np, memo_edge.runtime as rt\n"
            f"r = rt.load({str(base['pkg'])!r})\n"
            f"labels, scores = r.predict(np.load({str(tmp_path / 'x.npy')!r}))\n"
            "print([int(k) for k in labels])\n"
            "assert str(r.__class__.__module__) == 'memo_edge.runtime.predict'\n")
    result = run(slim_python, "-c", code)
    assert result.returncode == 0, result.stderr
    from memo_edge.runtime import load

    assert result.stdout.strip() == str([int(k) for k in load(base["pkg"]).predict(images)[0]])

    np.savez(tmp_path / "x.npz", x=images)
    cli = run(slim_python, "-m", "memo_edge.cli", "predict", str(base["pkg"]), str(tmp_path / "x.npz"))
    assert cli.returncode == 0, cli.stderr
    assert len([json.loads(line) for line in cli.stdout.splitlines()]) == 3
    assert run(slim_python, "-m", "memo_edge.cli", "info", str(base["pkg"])).returncode == 0


@pytest.mark.slow
def test_a_training_command_names_the_extra_it_needs(slim_python: Path, tmp_path: Path) -> None:
    for args in (["train", "--out", str(tmp_path / "run")], ["budget"]):
        result = run(slim_python, "-m", "memo_edge.cli", *args)
        assert result.returncode == 2, result.stdout + result.stderr
        assert "Traceback" not in result.stderr
        assert f"memo-edge {args[0]} needs torch" in result.stderr and "pip install 'memo-edge[train]'" in result.stderr
    assert not (tmp_path / "run").exists()
