"""memo-edge doctor: one line per check and exit 0, --json, the L4T/JetPack table on real release files,
the onnxruntime conflict, CUDA and TensorRT missing with their install hints, and no torch import ever."""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from click.testing import CliRunner

from memo_edge.cli import main
from memo_edge.runtime import doctor
from memo_edge.runtime.backends import BACKENDS, OrtCpuBackend, ort as ort_module
from memo_edge.runtime.cuda import cuda_gpu_probe
from memo_edge.runtime.doctor import (CAPABILITIES, ERROR, MISSING, OK, WARN, Finding, L4tRelease, jetpack_for,
                                      parse_nv_tegra_release, probe_jetson, probe_torch, run_checks)

REPO = Path(__file__).parents[1]
NAMES = ["python", "numpy", "onnxruntime", "onnx", "cuda", "gpu", "tensorrt", "torch", "serve", "jetson",
         *(f"backend {name}" for name in BACKENDS)]
CPU_TORCH = Finding(WARN, "2.9.0 (CPU-only build), no CUDA in this build: update and train run on the CPU only",
                    {"version": "2.9.0", "cuda": None, "available": False, "devices": []})

# First lines of real /etc/nv_tegra_release files (R32.7.1 and R35.3.1 as quoted in dusty-nv/jetson-containers'
# l4t_version.py, R32.5.1 from a TX2, R36.4.3 and R36.4.7 from Orin boards), and what they mean.
R32_7_1 = "# R32 (release), REVISION: 7.1, GCID: 29689809, BOARD: t186ref, EABI: aarch64, DATE: Wed Feb  2 21:33:23 UTC 2022\n"
R32_5_1 = "# R32 (release), REVISION: 5.1, GCID: 26202423, BOARD: t186ref, EABI: aarch64, DATE: Fri Feb 19 16:50:29 UTC 2021\n"
R35_3_1 = "# R35 (release), REVISION: 3.1, GCID: 32790763, BOARD: t186ref, EABI: aarch64, DATE: Wed Mar 15 07:54:12 UTC 2023\n"
R36_4_3 = ("# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64, DATE: Wed Jan  8 01:49:37 UTC 2025\n"
           "# KERNEL_VARIANT: oot\nTARGET_USERSPACE_LIB_DIR=nvidia\n"
           "TARGET_USERSPACE_LIB_DIR_PATH=usr/lib/aarch64-linux-gnu/nvidia\n")
R36_4_7 = "# R36 (release), REVISION: 4.7, GCID: 42132812, BOARD: generic, EABI: aarch64, DATE: Thu Sep 18 22:54:44 UTC 2025\n"


@pytest.fixture
def cpu_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    """A torch probe without the child process (seconds each); the real one is tested once, below."""
    monkeypatch.setattr(doctor, "probe_torch", lambda: CPU_TORCH)


def by_name(report: doctor.Report) -> dict[str, doctor.Check]:
    return {check.name: check for check in report.checks}


class FakeCudart:
    """cuda.bindings.runtime as far as the doctor asks: versions, device count and properties."""

    def __init__(self, devices: tuple[str, ...] = (), driver: int = 12060, runtime: int = 12060) -> None:
        self.__name__ = "cuda.bindings.runtime"
        self.cudaError_t = SimpleNamespace(cudaSuccess=0, cudaErrorNoDevice=100)
        self.devices, self.driver, self.runtime = devices, driver, runtime

    def cudaRuntimeGetVersion(self) -> tuple[int, int]:
        return 0, self.runtime

    def cudaDriverGetVersion(self) -> tuple[int, int]:
        return 0, self.driver

    def cudaGetDeviceCount(self) -> tuple[int, int]:
        return (0, len(self.devices)) if self.devices else (self.cudaError_t.cudaErrorNoDevice, 0)

    def cudaGetDeviceProperties(self, index: int) -> tuple[int, SimpleNamespace]:
        return 0, SimpleNamespace(name=self.devices[index].encode() + b"\0\0", major=8, minor=7, totalGlobalMem=8 * 2**30)


def use_cudart(monkeypatch: pytest.MonkeyPatch, rt: FakeCudart | None) -> None:
    """The CUDA runtime bindings the runtime's loader will find (None: cuda-python is not installed)."""
    monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", rt)
    monkeypatch.setitem(sys.modules, "cuda.cudart", rt)


def test_the_text_report_is_one_line_per_check_then_what_runs_and_exits_0(cpu_torch: None) -> None:
    result = CliRunner().invoke(main, ["doctor"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == len(NAMES) + 1
    for line, name in zip(lines, NAMES):
        assert re.match(rf"(ok|warn|missing|error) +{re.escape(name)} +\S", line), line
    assert lines[-1].startswith("runs here: ")
    assert "Traceback" not in result.output


def test_json_has_the_documented_keys(cpu_torch: None) -> None:
    result = CliRunner().invoke(main, ["doctor", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert set(report) == {"schema", "memo_edge", "checks", "capabilities"} and report["schema"] == 1
    assert [c["name"] for c in report["checks"]] == NAMES
    for check in report["checks"]:
        assert set(check) == {"name", "status", "detail", "enables", "facts"}
        assert check["status"] in {OK, WARN, MISSING, ERROR} and "\n" not in check["detail"]
        assert set(check["enables"]) <= set(CAPABILITIES)
    assert list(report["capabilities"]) == list(CAPABILITIES)
    for capability in report["capabilities"].values():
        assert capability["available"] == (not capability["blocked_by"])
    by = {c["name"]: c for c in report["checks"]}
    assert by["torch"]["facts"]["version"] == "2.9.0"
    assert report["capabilities"]["ort-cpu"]["available"]  # make test installs onnxruntime
    assert report["capabilities"]["update"]["available"]  # a torch warning (CPU only) blocks nothing


@pytest.mark.parametrize(("text", "release", "jetpack", "tensorrt", "exact"), [
    (R32_7_1, L4tRelease(32, 7, 1, "t186ref"), "4.6.1", "8.2", True),
    (R32_5_1, L4tRelease(32, 5, 1, "t186ref"), "4.x", None, False),  # not in the table: its JetPack line only
    (R35_3_1, L4tRelease(35, 3, 1, "t186ref"), "5.1.1", "8.5.2", True),
    (R36_4_3, L4tRelease(36, 4, 3, "generic"), "6.2", "10.3", True),
    (R36_4_7, L4tRelease(36, 4, 7, "generic"), "6.x", None, False),
])
def test_real_release_files_name_their_jetpack(text: str, release: L4tRelease, jetpack: str, tensorrt: str | None,
                                               exact: bool) -> None:
    assert parse_nv_tegra_release(text) == release
    found = jetpack_for(release)
    assert found is not None and (found.version, found.tensorrt, found.exact) == (jetpack, tensorrt, exact)


def test_the_jetson_line(tmp_path: Path) -> None:
    assert probe_jetson(tmp_path / "absent") == Finding(OK, f"not a Jetson (no {tmp_path / 'absent'})")
    release = tmp_path / "nv_tegra_release"
    release.write_text(R36_4_3)
    found = probe_jetson(release)
    assert found.status == OK and found.detail == "Jetson, L4T R36.4.3: JetPack 6.2, which ships TensorRT 10.3"
    assert found.facts == {"l4t": "36.4.3", "board": "generic", "jetpack": "6.2", "jetpack_tensorrt": "10.3"}
    release.write_text(R35_3_1)  # JetPack 5's TensorRT 8.5 cannot load the native backend's engines
    found = probe_jetson(release)
    assert found.status == WARN and "JetPack 5.1.1, which ships TensorRT 8.5.2" in found.detail
    assert "needs TensorRT 10 (JetPack 6.1 or later)" in found.detail
    release.write_text(R36_4_7)
    assert "JetPack 6.x (this revision is not in memo-edge's table)" in probe_jetson(release).detail
    release.write_text("# R99 (release), REVISION: 1.0, GCID: 1, BOARD: x, EABI: aarch64\n")
    assert probe_jetson(release).status == WARN


@pytest.mark.parametrize("garbage", ["", "\n\n", "hello world\n", "R35 (release) REVISION 3.1\n", "\x00\xff\x17binary"])
def test_a_garbage_release_file_is_a_warning_not_an_error(tmp_path: Path, garbage: str) -> None:
    assert parse_nv_tegra_release(garbage) is None
    release = tmp_path / "nv_tegra_release"
    release.write_text(garbage, errors="surrogateescape")
    found = probe_jetson(release)
    assert found.status == WARN and "names no L4T release" in found.detail and "\n" not in found.detail


def test_both_onnxruntime_wheels_are_shown_with_the_fix(monkeypatch: pytest.MonkeyPatch, cpu_torch: None) -> None:
    wheels = [SimpleNamespace(metadata={"Name": name}) for name in ("numpy", "onnxruntime", "onnxruntime-gpu")]
    monkeypatch.setattr(importlib.metadata, "distributions", lambda: wheels)  # what load_onnxruntime looks at
    result = CliRunner().invoke(main, ["doctor"])
    assert result.exit_code == 0, result.output
    line = next(line for line in result.stdout.splitlines() if line.split()[1] == "onnxruntime")
    assert line.startswith("error") and "both onnxruntime and onnxruntime-gpu are installed" in line
    assert "pip uninstall -y onnxruntime onnxruntime-gpu" in line
    report = run_checks()
    assert report.blockers()["ort-cpu"] == ["onnxruntime", "backend ort-cpu"]
    assert "onnxruntime" in report.blockers()["update"]
    if report.blockers()["tensorrt"]:  # no backend left: serve has nothing to serve with
        assert report.blockers()["serve"] == ["a backend"]


def test_without_torch_update_is_unavailable_and_no_child_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    real = doctor.find_spec
    monkeypatch.setattr(doctor, "find_spec", lambda name: None if name == "torch" else real(name))
    monkeypatch.setattr(doctor.subprocess, "run", lambda *a, **k: pytest.fail("started a torch probe"))
    found = probe_torch()
    assert found.status == MISSING
    assert "update, train and export are unavailable" in found.detail and "pip install 'memo-edge[train]'" in found.detail
    report = run_checks()
    assert by_name(report)["torch"].status == MISSING
    assert {"update", "train", "export"} <= {cap for cap, names in report.blockers().items() if "torch" in names}


def test_the_doctor_process_never_imports_torch() -> None:
    """The torch line comes from a child process: the doctor's own process stays torch-free."""
    code = ("import json, sys\n"
            "from click.testing import CliRunner\n"
            "from memo_edge.cli import main\n"
            "result = CliRunner().invoke(main, ['doctor', '--json'])\n"
            "assert result.exit_code == 0, result.output\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision'))\n"
            "assert not bad, bad\n"
            "print(json.dumps(next(c for c in json.loads(result.stdout)['checks'] if c['name'] == 'torch')))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env={**os.environ})
    assert done.returncode == 0, done.stderr
    torch_line = json.loads(done.stdout.splitlines()[-1])
    try:
        version = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        assert torch_line["status"] == MISSING
    else:  # the child imported it and said which it is
        assert torch_line["status"] in (OK, WARN)
        assert torch_line["facts"]["version"].split("+")[0] == version.split("+")[0]  # 2.5.1+cu124 is 2.5.1


def test_a_torch_that_fails_to_import_is_a_finding(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(doctor, "_importable", lambda module: True)
    monkeypatch.setattr(doctor, "_TORCH_CODE", "import sys\nsys.exit('OSError: libcudnn.so.9: cannot open shared object file')")
    found = probe_torch()
    assert found == Finding(ERROR, "torch is installed but does not import: OSError: libcudnn.so.9: cannot open "
                                   "shared object file")


def test_cuda_and_tensorrt_absent_say_how_to_install(monkeypatch: pytest.MonkeyPatch, cpu_torch: None) -> None:
    use_cudart(monkeypatch, None)  # import cuda.bindings.runtime -> ImportError
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    real = doctor._version
    monkeypatch.setattr(doctor, "_version", lambda dist: None if dist.startswith("cuda") else real(dist))
    checks = by_name(run_checks())
    assert checks["cuda"].status == MISSING and "pip install 'memo-edge[trt]'" in checks["cuda"].detail
    assert checks["tensorrt"].status == MISSING and "pip install 'memo-edge[trt]'" in checks["tensorrt"].detail
    assert checks["gpu"].status == WARN and "without cuda-python" in checks["gpu"].detail
    assert checks["backend tensorrt"].status == MISSING


@pytest.mark.skipif(cuda_gpu_probe() is not None or doctor._importable("tensorrt"),
                    reason="this machine has a GPU or TensorRT: the no-GPU lines cannot be seen here")
def test_on_this_machine_cuda_gpu_and_tensorrt_are_missing_with_hints(cpu_torch: None) -> None:
    checks = by_name(run_checks())
    assert checks["gpu"].status in (MISSING, WARN)
    assert checks["cuda"].status in (MISSING, ERROR) and ("driver" in checks["cuda"].detail
                                                          or "pip install 'memo-edge[trt]'" in checks["cuda"].detail)
    assert checks["tensorrt"].status in (MISSING, ERROR)
    assert "pip install 'memo-edge[trt]'" in checks["tensorrt"].detail


@pytest.mark.parametrize(("rt", "cuda", "gpu", "words"), [
    (FakeCudart(driver=0), MISSING, MISSING, ["no NVIDIA driver answers", "no NVIDIA GPU visible"]),
    (FakeCudart(("Orin", "Orin"), driver=12060, runtime=13000), WARN, OK,
     ["built for CUDA 13.0, the NVIDIA driver supports CUDA 12.6", "2 GPUs: 0: Orin (sm 8.7, 8.0 GiB); 1: Orin"]),
    (FakeCudart(("Orin",)), OK, OK, ["CUDA runtime 12.6, the driver supports CUDA 12.6", "1 GPU: 0: Orin (sm 8.7"]),
])
def test_driver_and_gpus_through_cudart(monkeypatch: pytest.MonkeyPatch, cpu_torch: None, rt: FakeCudart, cuda: str,
                                        gpu: str, words: list[str]) -> None:
    use_cudart(monkeypatch, rt)
    checks = by_name(run_checks())
    assert (checks["cuda"].status, checks["gpu"].status) == (cuda, gpu)
    assert words[0] in checks["cuda"].detail and words[1] in checks["gpu"].detail


def test_a_tensorrt_older_than_10_is_a_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", SimpleNamespace(__version__="8.5.2.2"))
    found = doctor._tensorrt()
    assert found.status == WARN and "need TensorRT 10 or later" in found.detail


def test_a_backend_the_registry_offers_without_a_gpu_is_a_warning(monkeypatch: pytest.MonkeyPatch,
                                                                   cpu_torch: None) -> None:
    """onnxruntime-gpu in a container without the GPU: auto would pick ort-trt and fail on its first graph."""
    ort = SimpleNamespace(__version__="1.20.0", get_available_providers=lambda: [
        "TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(ort_module, "load_onnxruntime", lambda: ort)
    monkeypatch.setattr(doctor, "load_onnxruntime", lambda: ort)
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    use_cudart(monkeypatch, FakeCudart())  # a driver, no device
    checks = by_name(run_checks())
    assert checks["backend ort-trt"].status == WARN
    assert checks["backend ort-trt"].detail == ("the registry offers it, but the gpu check fails here; --backend auto "
                                                "picks it all the same: pass --backend ort-cpu")
    assert checks["backend ort-cuda"].detail == "the registry offers it, but the gpu check fails here"
    assert checks["backend ort-cpu"].detail == "available"


def test_a_machine_with_tensorrt_and_a_gpu_runs_every_backend(monkeypatch: pytest.MonkeyPatch, cpu_torch: None) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", SimpleNamespace(__version__="10.3.0"))
    use_cudart(monkeypatch, FakeCudart(("Orin",)))
    report = run_checks()
    checks = by_name(report)
    assert checks["tensorrt"].detail == "TensorRT 10.3.0"  # the library's line, not the backend's
    assert checks["backend tensorrt"] == doctor.Check("backend tensorrt", OK, "available; --backend auto picks it",
                                                      ("tensorrt",))
    assert not report.blockers()["tensorrt"] and not report.blockers()["export --trt"]


def test_a_probe_that_raises_becomes_an_error_line(monkeypatch: pytest.MonkeyPatch, cpu_torch: None) -> None:
    def broken(cls: type) -> str | None:
        raise RuntimeError("the provider list is garbled\nsecond line")

    monkeypatch.setattr(OrtCpuBackend, "missing", classmethod(broken))
    result = CliRunner().invoke(main, ["doctor"])
    assert result.exit_code == 0 and "Traceback" not in result.output
    line = next(line for line in result.stdout.splitlines() if "backend ort-cpu" in line)
    assert line.split()[0] == ERROR
    assert line.endswith("the check failed: RuntimeError: the provider list is garbled second line")


def test_a_missing_serve_extra_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    real = doctor._version
    monkeypatch.setattr(doctor, "_version", lambda dist: None if dist in ("uvicorn", "python-multipart") else real(dist))
    assert doctor._serve().detail == "uvicorn, python-multipart not installed: pip install 'memo-edge[serve]'"


def test_the_constants_match_pyproject() -> None:
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert doctor.REQUIRES_PYTHON == project["requires-python"]
    assert sorted(doctor.SERVE_EXTRA) == sorted(re.split(r"[<>=\[ ]", req)[0]
                                                for req in project["optional-dependencies"]["serve"])
