"""The Python side of scripts/arm64_check.sh: prepare the x86 inputs, predict with the runtime API,
drive a short `memo-edge serve`, compare the x86 and arm64 results, and write the docs section.

    python scripts/arm64_compare.py prepare --out DIR                  # x86 (.venv): images.npz, new-classes/, budget
    python scripts/arm64_compare.py predict PKG IMAGES.npz --out R.json [--versions 2,1]   # either side, torch-free
    python scripts/arm64_compare.py serve PKG IMAGES.npz --out S.json --memo-edge BIN      # either side, torch-free
    python scripts/arm64_compare.py compare X86_DIR ARM_DIR --out SUMMARY.json             # host; exit 1 on a mismatch
    python scripts/arm64_compare.py report SUMMARY.json --write docs/benchmarks.md         # host

`predict`, `serve` and `compare` import only numpy and memo_edge.runtime (the slim install);
`prepare` needs the [train] install (the built-in digits data and the model's parameter counts) and
`report` the repository's benchmarks/_report.py.
"""

from __future__ import annotations

import argparse
import importlib.metadata as metadata
import importlib.util
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

# Score tolerances (absolute, on the softmax scores that predict returns), arm64 against x86.
# fp32: ONNX Runtime's MLAS picks other convolution/GEMM kernels on aarch64 (NEON) than on x86
# (AVX-512/AVX2), so sums are accumulated in another order: float32 rounding moves the logits by
# ~1e-6 relative, the scores by less. 1e-4 is 100x above that and 10x below export's own bar
# (REL_TOLERANCE = 1e-3 on the logits, memo_edge/export/verify.py), so it passes rounding and fails
# a wrong kernel. int8: the CPUs' int8 kernels sum exact integer products, but each may requantize an
# activation near a rounding boundary to the neighbouring 8-bit step, far larger than float rounding:
# 0.02 admits a few such steps (arm64 and x86 were 3e-8 apart on 2026-12-07) and still catches a
# broken int8 path (x86 kernels that saturate, on a CPU without VNNI with the full-range weights export
# made before commit e841d37, moved scores by 0.77). Labels must be identical in both precisions.
TOLERANCE = {"fp32": 1e-4, "int8": 2e-2}
# The int8 graph's reference (_int8_reference: float32 operators between exact (de)quantizations) is
# not what fused int8 kernels compute: they requantize integer sums, and a value near a rounding
# boundary lands one step away. On 2026-12-07 the fused kernels (x86 and arm64 alike, 3e-8 apart)
# were 0.042 from it on one version; x86 kernels that saturate were 0.77 from it with 2 labels in 40
# changed. So the reference only decides who is off when arm64 and x86 disagree, at this looser bar.
REFERENCE_TOLERANCE = 0.1
CLI_ROUNDING = 1e-6  # memo-edge predict and serve print scores rounded to 6 decimals
REPO = Path(__file__).resolve().parents[1]


def _environment() -> dict[str, Any]:
    def version(name: str) -> str | None:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    return {"machine": platform.machine(), "python": platform.python_version(),
            "qemu_cpu": os.environ.get("QEMU_CPU", ""),
            "packages": {n: version(n) for n in ("memo-edge", "numpy", "onnxruntime", "onnx", "starlette", "uvicorn")},
            "torch_installed": importlib.util.find_spec("torch") is not None}


def cmd_prepare(args: argparse.Namespace) -> None:
    """x86: the images to predict (4 test images of each of the 10 digits), the 2 held-back classes as
    class folders for `update`, and the device budget (model after 3 tasks + the exemplar memory)."""
    from PIL import Image

    from memo_edge.data.datasets import load_dataset
    from memo_edge.data.scenario import make_class_order
    from memo_edge.memory.alignment import exemplar_bytes
    from memo_edge.model.methods import METHODS, method_model_bytes

    out = Path(args.out)
    digits, order = load_dataset("digits"), make_class_order(10, seed=1993)  # the order `train` uses
    labels = np.asarray(digits.test.labels)
    picked = [int(i) for c in range(10) for i in np.flatnonzero(labels == c)[: args.per_class]]
    np.savez(out / "images.npz", x=np.asarray(digits.test.take(picked), np.uint8), y=labels[picked])
    for c in order[args.classes:]:  # held back from training: learned by `update`
        folder = out / "new-classes" / digits.class_names[c]
        folder.mkdir(parents=True, exist_ok=True)
        idx = [int(i) for i in np.flatnonzero(np.asarray(digits.train.labels) == c)]
        for i, image in zip(idx, digits.train.take(idx)):
            Image.fromarray(image).save(folder / f"{i}.png")
    tasks = args.classes // args.per_task + 1  # the exported tasks + the update's
    model = method_model_bytes(METHODS["memo"], args.backbone, tasks)
    (out / "budget.txt").write_text(f"{model + args.memory * exemplar_bytes(digits.image_shape)}\n")


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits - logits.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def _int8_reference(rt: Any, images: np.ndarray) -> dict[str, Any] | None:
    """What the version's int8 graph means, independent of the CPU: ONNX Runtime with graph optimizations
    off runs each QuantizeLinear/DequantizeLinear pair and the float operators between them one by one
    (exact integer rounding, float32 arithmetic), instead of fusing them into the CPU's int8 kernels."""
    import onnxruntime as ort

    from memo_edge.runtime.package import INT8_ROLE

    entry = next((f for f in rt.package.manifest.files if f.role == INT8_ROLE), None)
    if entry is None:
        return None
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(rt.package.path(entry)), options, providers=["CPUExecutionProvider"])
    logits = session.run(None, {session.get_inputs()[0].name: images})[0]
    scores = _softmax(np.asarray(logits, np.float64))
    return {"labels": [int(k) for k in scores.argmax(1)], "scores": scores.tolist()}


def _predict_runs(package: Path, images: np.ndarray, versions: list[int | None], tag: Any) -> dict[str, Any]:
    import memo_edge.runtime as runtime

    runs: dict[str, Any] = {}
    for version in versions:
        for precision in ("fp32", "int8"):
            name = f"{tag(version)}-{precision}"
            start = time.perf_counter()
            try:
                rt = runtime.load(package, backend="ort-cpu", version=version, precision=precision)
            except Exception as exc:  # noqa: BLE001 - a package without int8 is recorded, not fatal
                runs[name] = {"error": f"{type(exc).__name__}: {exc}"}
                continue
            loaded = time.perf_counter()
            labels, scores = rt.predict(images)
            done = time.perf_counter()
            runs[name] = {
                "version": rt.package.manifest.version, "backend": rt.backend.name, "precision": rt.backend.precision,
                "labels": [int(k) for k in labels], "scores": np.asarray(scores, np.float64).tolist(),
                "class_names": list(rt.class_names), "load_s": loaded - start, "predict_s": done - loaded}
            if precision == "int8":
                reference = _int8_reference(rt, images)
                if reference is not None:
                    runs[name + "-ref"] = reference
    return runs


def cmd_predict(args: argparse.Namespace) -> None:
    """Predict with the runtime API, each requested version in fp32 and int8, on ort-cpu."""
    images = np.load(args.images)["x"]
    versions: list[int | None] = [None] if args.versions == "current" else [int(v) for v in args.versions.split(",")]
    tag = (lambda v: "current") if args.versions == "current" else (lambda v: f"v{v}")
    runs = _predict_runs(Path(args.package), images, versions, tag)
    result = {"env": _environment(), "images": int(len(images)), "runs": runs,
              "torch_imported": "torch" in sys.modules}
    Path(args.out).write_text(json.dumps(result))
    for name, run in runs.items():
        if name.endswith("-ref"):
            print(f"{name}: the int8 graph operator by operator (no fused kernels)")
        else:
            print(f"{name}: " + (run["error"] if "error" in run else
                                 f"version {run['version']} {run['backend']} {run['precision']}, load {run['load_s']:.1f} s, "
                                 f"predict {len(images)} images {run['predict_s']:.2f} s"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _http(url: str, body: bytes | None = None, content_type: str | None = None, timeout: float = 120) -> tuple[int, Any]:
    request = urllib.request.Request(url, data=body, method="POST" if body is not None else "GET")
    if content_type:
        request.add_header("content-type", content_type)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


def cmd_serve(args: argparse.Namespace) -> None:
    """Start `memo-edge serve` on the loopback, wait for /ready, query /health, /info and /predict
    (every class's score), then stop it with SIGINT and record how it ended."""
    import io

    images = np.load(args.images)["x"]
    buffer = io.BytesIO()
    np.save(buffer, images)
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    log = open(args.log, "w") if args.log else subprocess.DEVNULL
    start = time.perf_counter()
    server = subprocess.Popen([args.memo_edge, "serve", args.package, "--host", "127.0.0.1", "--port", str(port),
                               "--backend", "ort-cpu"], stdout=log, stderr=subprocess.STDOUT)
    result: dict[str, Any] = {"port": port, "env": _environment()}
    try:
        ready = None
        while time.perf_counter() - start < args.timeout:
            if server.poll() is not None:
                raise SystemExit(f"memo-edge serve exited with {server.returncode} before it was ready (log: {args.log})")
            try:
                status, body = _http(base + "/ready", timeout=5)
            except OSError:
                time.sleep(1)
                continue
            if status == 200:
                ready = body
                break
            time.sleep(1)
        if ready is None:
            raise SystemExit(f"memo-edge serve not ready after {args.timeout:.0f} s (log: {args.log})")
        result["ready_s"] = time.perf_counter() - start
        result["ready"] = ready
        result["health"] = _http(base + "/health")
        status, info = _http(base + "/info")
        result["info"] = {"status": status, "body": info}
        classes = len(info["classes"]) if status == 200 and isinstance(info, dict) and "classes" in info else 100
        t0 = time.perf_counter()
        status, body = _http(f"{base}/predict?top={classes}", buffer.getvalue(), "application/x-npy")
        result["predict_s"] = time.perf_counter() - t0
        result["predict_status"] = status
        if status == 200:
            result["version"] = body["version"]
            result["labels"] = [p["top"][0]["label"] for p in body["predictions"]]
            scores = np.zeros((len(images), classes))
            for row, p in zip(scores, body["predictions"]):
                for entry in p["top"]:
                    row[entry["label"]] = entry["score"]
            result["scores"] = scores.tolist()
        else:
            result["predict_error"] = body
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGINT)
            try:
                server.wait(timeout=60)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
                result["killed"] = True
        result["exit_code"] = server.returncode
        result["total_s"] = time.perf_counter() - start
        Path(args.out).write_text(json.dumps(result))
    print(f"serve: ready after {result['ready_s']:.1f} s (version {ready.get('version')}), /predict {result['predict_status']} "
          f"in {result['predict_s']:.2f} s, stopped with exit code {result['exit_code']}")


# ---------------------------------------------------------------------------------------------- compare


def _check(checks: list[dict[str, Any]], name: str, ok: bool, detail: str, **figures: Any) -> None:
    checks.append({"check": name, "ok": bool(ok), "detail": detail, **figures})


def _compare_scores(checks: list[dict[str, Any]], name: str, ref: dict[str, Any] | None, got: dict[str, Any] | None,
                    precision: str, slack: float = 0.0) -> None:
    if ref is not None and got is not None and "error" in ref and "error" in got:
        # Both sides refused the same run: the package lacks it (export or update left int8 out).
        why = str(ref["error"]).rsplit(": ", 1)[-1]
        _check(checks, name, True, f"skipped: refused on x86 and arm64 alike ({why})", skipped=True)
        return
    if ref is None or got is None or "error" in (ref or {}) or "error" in (got or {}):
        why = "; ".join(str(r["error"]) for r in (ref, got) if r and "error" in r) or "result missing"
        _check(checks, name, False, why)
        return
    ref_labels, got_labels = np.asarray(ref["labels"]), np.asarray(got["labels"])
    ref_scores, got_scores = np.asarray(ref["scores"]), np.asarray(got["scores"])
    if ref_scores.shape != got_scores.shape:
        _check(checks, name, False, f"score shapes differ: {ref_scores.shape} vs {got_scores.shape}")
        return
    same = int(np.sum(ref_labels == got_labels))
    diff = float(np.abs(ref_scores - got_scores).max()) if ref_scores.size else 0.0
    tol = TOLERANCE[precision] + slack
    ok = same == len(ref_labels) and diff <= tol
    _check(checks, name, ok, f"{same}/{len(ref_labels)} labels equal, max |score diff| {diff:.2e} (tolerance {tol:.0e})",
           labels_equal=same, images=len(ref_labels), max_score_diff=diff, tolerance=tol)


def _read_cli(path: Path) -> dict[str, Any] | None:
    if not path.exists():
        return None
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip().startswith("{")]
    if not rows:
        return {"error": f"{path.name}: no JSON lines"}
    classes = max(len(r["top"]) for r in rows)
    scores = np.zeros((len(rows), classes))
    for row, r in zip(scores, rows):
        for entry in r["top"]:
            row[entry["label"]] = entry["score"]
    return {"labels": [r["top"][0]["label"] for r in rows], "scores": scores.tolist()}


def _load(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.exists() else None


def _text(path: Path) -> str:
    return path.read_text() if path.exists() else ""


def _rc(path: Path) -> int | None:
    return int(path.read_text().strip()) if path.exists() else None


def _figures(ref: dict[str, Any] | None, got: dict[str, Any] | None) -> tuple[int, float] | None:
    """(labels equal, max |score diff|) of two runs, None when either is missing."""
    if not ref or not got or "error" in ref or "error" in got:
        return None
    a, b = np.asarray(ref["scores"]), np.asarray(got["scores"])
    if a.shape != b.shape:
        return None
    return int(np.sum(np.asarray(ref["labels"]) == np.asarray(got["labels"]))), float(np.abs(a - b).max())


def _int8_compare(checks: list[dict[str, Any]], name: str, x86_kernels: dict[str, Any] | None,
                  arm: dict[str, Any] | None, ref: dict[str, Any] | None, slack: float = 0.0) -> None:
    """arm64's int8 answers against x86's (labels identical, scores within TOLERANCE["int8"]). When they
    differ, the int8 graph's reference (_int8_reference) says which CPU is off: if arm64 keeps to it
    (labels identical, scores within REFERENCE_TOLERANCE) and x86 does not, it is x86's fault, recorded
    as a note, not an arm64 failure."""
    _compare_scores(checks, name, x86_kernels, arm, "int8", slack)
    c = checks[-1]
    arm_ref, x86_ref = _figures(ref, arm), _figures(ref, x86_kernels)
    if arm_ref is None or x86_ref is None or c.get("skipped"):
        return
    images = len(ref["labels"])
    c["detail"] += (f"; against the int8 graph's reference: arm64 {arm_ref[0]}/{images} labels, {arm_ref[1]:.2e}, "
                    f"x86 {x86_ref[0]}/{images} labels, {x86_ref[1]:.2e}")
    c.update(arm_ref_max_diff=arm_ref[1], x86_ref_max_diff=x86_ref[1], x86_ref_labels_equal=x86_ref[0])
    keeps = lambda f: f[0] == images and f[1] <= REFERENCE_TOLERANCE  # noqa: E731
    if not c["ok"] and keeps(arm_ref) and not keeps(x86_ref):
        c.update(ok=True, note=True, detail="x86's int8 kernels are off the int8 graph's reference, arm64's are not: "
                 + c["detail"])


def _int8_checks(checks: list[dict[str, Any]], label: str, x86_runs: dict[str, Any], arm_runs: dict[str, Any],
                 run: str, arm_run: str | None = None) -> None:
    """arm64's int8 answers against x86's (see _int8_compare), and the int8 graph's reference computed
    on both CPUs (float32 operators between exact (de)quantizations: equal within the fp32 tolerance)."""
    arm_run = arm_run or run
    _int8_compare(checks, label, x86_runs.get(run), arm_runs.get(arm_run), x86_runs.get(run + "-ref"))
    if x86_runs.get(run + "-ref") is not None and arm_runs.get(arm_run + "-ref") is not None:
        _compare_scores(checks, f"{label}: reference x86 = arm64", x86_runs[run + "-ref"], arm_runs[arm_run + "-ref"],
                        "fp32")


def _tally(checks: list[dict[str, Any]]) -> str:
    counts = {s: sum(_status(c) == s for c in checks) for s in ("PASS", "FAIL", "SKIP", "NOTE")}
    return ", ".join(f"{n} {word}" for word, n in (("passed", counts["PASS"]), ("failed", counts["FAIL"]),
                                                   ("skipped", counts["SKIP"]), ("notes", counts["NOTE"])) if n)


def _status(c: dict[str, Any]) -> str:
    if not c["ok"]:
        return "FAIL"
    return "SKIP" if c.get("skipped") else "NOTE" if c.get("note") else "PASS"


def cmd_compare(args: argparse.Namespace) -> None:
    x86, arm = Path(args.x86), Path(args.arm)
    checks: list[dict[str, Any]] = []
    _check(checks, "binfmt", _text(arm / "uname.txt").strip() == "aarch64",
           f"uname -m in the chroot: {_text(arm / 'uname.txt').strip() or '?'}; tiny static aarch64 ELF exit code "
           f"{_text(arm / 'tiny.rc').strip() or '?'} (42 expected)")
    checks[-1]["ok"] = checks[-1]["ok"] and _text(arm / "tiny.rc").strip() == "42"

    api_x86, api_arm = _load(x86 / "api.json"), _load(arm / "api.json")
    x86_runs = (api_x86 or {}).get("runs", {})
    wheels = _text(arm / "wheels.txt")
    non_aarch64 = [w for w in wheels.split() if w.endswith(".whl") and not (w.endswith("-none-any.whl") or "aarch64" in w)]
    torch_absent = api_arm is not None and not api_arm["env"]["torch_installed"] and not api_arm["torch_imported"]
    _check(checks, "install", _rc(arm / "install.rc") == 0 and torch_absent and not non_aarch64,
           f"pip install --only-binary=:all: memo-edge[onnx,serve] (exit {_rc(arm / 'install.rc')}); "
           f"{len(wheels.split())} wheels, non-aarch64 platform wheels: {non_aarch64 or 'none'}; "
           f"torch {'absent' if torch_absent else 'PRESENT or imported'}")

    cpu = ((api_arm or {}).get("env") or {}).get("qemu_cpu") or "?"
    arm_runs = (api_arm or {}).get("runs", {})
    for version in ("v2", "v1"):
        _compare_scores(checks, f"api {version}-fp32 ({cpu})", x86_runs.get(f"{version}-fp32"),
                        arm_runs.get(f"{version}-fp32"), "fp32")
        _int8_checks(checks, f"api {version}-int8 ({cpu})", x86_runs, arm_runs, f"{version}-int8")
    for cpu_file in sorted(arm.glob("api-*.json")):
        other_cpu = cpu_file.stem[len("api-"):]
        other = (_load(cpu_file) or {}).get("runs", {})
        for version in [v for v in ("v2", "v1") if f"{v}-fp32" in other]:
            _compare_scores(checks, f"api {version}-fp32 ({other_cpu})", x86_runs.get(f"{version}-fp32"),
                            other.get(f"{version}-fp32"), "fp32")
            _int8_checks(checks, f"api {version}-int8 ({other_cpu})", x86_runs, other, f"{version}-int8")

    # `predict --precision auto` runs the int8 graph where the version has one.
    cli_precision = "int8" if "error" not in x86_runs.get("v2-int8", {"error": ""}) else "fp32"
    if cli_precision == "int8":
        _int8_compare(checks, "cli predict v2 (auto: int8)", _read_cli(x86 / "cli.jsonl"), _read_cli(arm / "cli.jsonl"),
                      x86_runs.get("v2-int8-ref"), CLI_ROUNDING)
    else:
        _compare_scores(checks, "cli predict v2 (auto: fp32)", _read_cli(x86 / "cli.jsonl"), _read_cli(arm / "cli.jsonl"),
                        "fp32", CLI_ROUNDING)
    checks[-1]["ok"] = checks[-1]["ok"] and _rc(arm / "cli.rc") == 0

    info = _text(arm / "info.txt")
    passed = next((line for line in info.splitlines() if line.startswith("package check:")), "")
    _check(checks, "info", _rc(arm / "info.rc") == 0 and passed.startswith("package check: passed"),
           f"exit {_rc(arm / 'info.rc')}; {passed or 'no package check line'}")

    rolled = _text(arm / "rollback.txt").strip()
    after = _load(arm / "rollback-api.json") or {}
    current = after.get("runs", {}).get("current-fp32", {}).get("version")
    _check(checks, "rollback", _rc(arm / "rollback.rc") == 0 and rolled.endswith("version 1 is current") and current == 1,
           f"exit {_rc(arm / 'rollback.rc')}: '{rolled.splitlines()[-1] if rolled else ''}'; load() then opens version {current}")
    _compare_scores(checks, "after rollback fp32 = x86 v1", x86_runs.get("v1-fp32"), after.get("runs", {}).get("current-fp32"),
                    "fp32")
    _int8_checks(checks, "after rollback int8 (x86 v1)", x86_runs, after.get("runs", {}), "v1-int8", "current-int8")

    serve = _load(arm / "serve.json") or {}
    info_body = (serve.get("info") or {}).get("body") or {}
    served_precision = info_body.get("precision", "int8") if isinstance(info_body, dict) else "int8"
    served_precision = served_precision if served_precision in TOLERANCE else "int8"
    ready_ok = (serve.get("ready") or {}).get("status") == "ready" and (serve.get("ready") or {}).get("version") == 2
    _check(checks, "serve", ready_ok and serve.get("predict_status") == 200 and serve.get("version") == 2
           and serve.get("exit_code") == 0 and not serve.get("killed"),
           f"/ready {serve.get('ready')}, /predict {serve.get('predict_status')} (version {serve.get('version')}), "
           f"backend {info_body.get('backend') if isinstance(info_body, dict) else '?'} {served_precision}; "
           f"SIGINT -> exit code {serve.get('exit_code')}")
    served = serve if "labels" in serve else None
    if served_precision == "int8":
        _int8_compare(checks, "serve predict v2 (int8)", x86_runs.get("v2-int8"), served, x86_runs.get("v2-int8-ref"),
                      CLI_ROUNDING)
    else:
        _compare_scores(checks, "serve predict v2 (fp32)", x86_runs.get("v2-fp32"), served, "fp32", CLI_ROUNDING)

    failed = [c for c in checks if not c["ok"]]
    summary = {"checks": checks, "passed": not failed, "x86_env": (api_x86 or {}).get("env"),
               "arm_env": (api_arm or {}).get("env"), "serve_ready_s": serve.get("ready_s"),
               "serve_predict_s": serve.get("predict_s"), "images": (api_x86 or {}).get("images"),
               "api_timings": {side: {k: {"load_s": v.get("load_s"), "predict_s": v.get("predict_s")}
                                      for k, v in (d or {}).get("runs", {}).items() if "load_s" in v}
                               for side, d in (("x86", api_x86), ("arm64", api_arm))}}
    Path(args.out).write_text(json.dumps(summary, indent=1))
    width = max(len(c["check"]) for c in checks)
    for c in checks:
        print(f"{_status(c)}  {c['check']:<{width}}  {c['detail']}")
    print(f"arm64 check: {'PASS' if not failed else 'FAIL'} ({_tally(checks)})")
    sys.exit(1 if failed else 0)


# ---------------------------------------------------------------------------------------------- report


def cmd_report(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(REPO / "benchmarks"))
    from _report import cpu_name, write_section

    summary = json.loads(Path(args.summary).read_text())
    work = Path(args.summary).parent
    meta = json.loads((work / "meta.json").read_text())
    timings = [line.split("\t") for line in (work / "timings.tsv").read_text().splitlines() if line.strip()]
    freeze = [line for line in (work / "arm" / "freeze.txt").read_text().splitlines() if line.strip()]
    arm_env, x86_env = summary["arm_env"] or {}, summary["x86_env"] or {}
    figures = [c for c in summary["checks"] if "max_score_diff" in c]
    max_fp32 = max((c["max_score_diff"] for c in figures if "fp32" in c["check"]), default=float("nan"))
    max_int8 = max((c["max_score_diff"] for c in figures if "int8" in c["check"]), default=float("nan"))
    int8_lines = [line.strip() for name in ("export.log", "update.log") if (work / "package" / name).exists()
                  for line in (work / "package" / name).read_text().splitlines()
                  if "int8" in line and ("agreement" in line or line.startswith("Error"))]
    cpus = ", ".join(meta["cpus"]) or "none"
    lines = [
        "## arm64 (Jetson and Raspberry Pi CPUs) under QEMU: slim install, predict, info, rollback, serve (issue 20)",
        "",
        f"- when: {meta['date']}",
        f"- where: {cpu_name()} host ({meta['host_os']}, x86_64, 2 shared cores) with qemu-user-static "
        f"{meta['qemu']} (binfmt_misc handler `qemu-aarch64`, flags {meta['binfmt_flags']}) and debootstrap "
        f"{meta['debootstrap']}; a Debian {meta['suite']} arm64 root file system ({meta['rootfs_debian']}, "
        f"Python {arm_env.get('python')}: the userland of 64-bit Raspberry Pi OS) in `build/arm64-root` "
        f"(git-ignored; built {meta['rootfs_note']}); emulated CPU `{meta['cpu']}` (the ISA of a Raspberry Pi 5 "
        f"and of Jetson Orin's Cortex-A78AE: ARMv8.2 with int8 dot-product), API predictions again on `{cpus}` "
        "(Raspberry Pi 4; ARMv8.0 like Jetson Nano's Cortex-A57: no dot-product, other int8 kernels)",
        f"- command: `sudo {meta['command']}` (or as root; from the repository root; not part of `make test`). "
        "The first run builds the root file system (about 11 minutes here), later runs reuse it",
        f"- x86 side (`.venv`, Python {x86_env.get('python')}, onnxruntime "
        f"{(x86_env.get('packages') or {}).get('onnxruntime')}): train digits with resnet8 (`--classes 8 --scenario "
        "B0Inc4 --init-epochs 20 --epochs 15 --memory 200`), `export --int8`, `update` with the 2 "
        "held-back digits (version 2, parent 1), then predict "
        f"{summary['images']} test images (4 per digit) with `memo_edge.runtime.load(...).predict` (versions 2 and 1, "
        "fp32 and int8, ort-cpu) and `memo-edge predict --top 10`"
        + (f"; int8 at export and update: {'; '.join(int8_lines)}" if int8_lines else ""),
        "- arm64 side: a venv with `pip install --only-binary=:all: memo_edge-*.whl[onnx,serve]` (the wheel built "
        "from the working tree; every dependency an aarch64 or pure-Python wheel from PyPI, pinned to the x86 "
        "venv's versions so that only the CPU architecture differs), then the same predictions on a copy of the "
        "x86 package, `memo-edge info`, `memo-edge rollback` on a second copy (after which `load()` must open "
        "version 1 and give x86's version-1 answers) and `memo-edge serve --backend ort-cpu` on 127.0.0.1, queried "
        "with urllib (/ready, /health, /info, POST /predict with an .npy of the images), stopped with SIGINT. "
        "For int8 both sides also run the int8 graph operator by operator (ONNX Runtime's graph optimizations off: "
        "float32 operators between exact quantizations, the graph's reference): it must agree between the CPUs, "
        "and says which CPU's kernels are off should arm64 and x86 disagree",
        f"- tolerances: labels identical; softmax scores within {TOLERANCE['fp32']:.0e} in fp32 and "
        f"{TOLERANCE['int8']:.0e} in int8, plus 1e-6 where the CLI and the service round scores to 6 decimals "
        f"(why these: the comment on `TOLERANCE` in scripts/arm64_compare.py); against the int8 graph's reference "
        f"{REFERENCE_TOLERANCE:g} (fused int8 kernels requantize, the reference does not: `REFERENCE_TOLERANCE`)",
        f"- result: **{'PASS' if summary['passed'] else 'FAIL'}** ({_tally(summary['checks'])}); "
        f"largest score difference {max_fp32:.1e} in "
        "fp32 and " + (f"{max_int8:.1e} in int8" if max_int8 == max_int8 else "no int8 comparison"),
        "",
        "| check | result | detail |",
        "|---|---|---|",
    ]
    lines += [f"| {c['check']} | {_status(c).replace('FAIL', '**FAIL**').replace('SKIP', 'skipped').replace('NOTE', 'note')} | "
              f"{c['detail'].replace('|', chr(92) + '|')} |" for c in summary["checks"]]
    lines += ["", "| step | seconds |", "|---|---|"] + [f"| {name} | {float(s):.0f} |" for name, s in timings]
    api = summary.get("api_timings") or {}
    if api.get("x86") and api.get("arm64"):
        lines += ["", f"One `load` + `predict` of {summary['images']} images, x86 native against arm64 under QEMU "
                  f"(`{meta['cpu']}`): " + "; ".join(
                      f"{k} {api['x86'][k]['load_s'] + api['x86'][k]['predict_s']:.2f} s vs "
                      f"{api['arm64'][k]['load_s'] + api['arm64'][k]['predict_s']:.2f} s"
                      for k in api["x86"] if k in api["arm64"])
                  + f"; under QEMU `serve` answered /ready {summary.get('serve_ready_s') or float('nan'):.0f} s after it "
                  f"started and its /predict of the {summary['images']} images took "
                  f"{summary.get('serve_predict_s') or float('nan'):.1f} s."]
    lines += ["", "Installed in the chroot (`pip freeze`): " + ", ".join(f"`{line}`" for line in freeze) + ".", ""]
    notes = [
        "Notes. This is user-mode emulation (QEMU translates each aarch64 instruction on the x86 host): it shows "
        "that every dependency of the slim install plus `[onnx,serve]` has an aarch64 wheel, that the package "
        "format, SQLite catalog, rollback and service work there, and that ONNX Runtime's aarch64 kernels give the "
        "x86 answers, in float32 and in int8; its timings say nothing about a Jetson's or a Raspberry Pi's speed.",
        f"QEMU 7.2 passes the x86 host's `/proc/cpuinfo` through to aarch64 programs; with it `import onnxruntime` "
        f"exits with code {meta.get('x86_cpuinfo_import_rc')} (139 = SIGSEGV: its cpuinfo library finds no ARM "
        "processor in the file while /sys lists two). A real arm64 device has its own /proc/cpuinfo, so the script "
        "gives the chroot the file an arm64 kernel would show for the emulated CPU (MIDR fields, and the features "
        "from QEMU's AT_HWCAP); the same crash would meet anyone running ONNX Runtime in an arm64 Docker image "
        "under QEMU on x86.",
        "The int8 comparison has caught a real fault: on 2026-12-07, before commit e841d37 made export's int8 "
        "weights 7-bit (`reduce_range`), this check on this AVX2-only host found x86's int8 kernels 0.77 off the "
        "graph's reference in scores (38/40 labels) while arm64's kept to it (5e-4, 40/40): the saturation that "
        "commit removed.",
        "Not covered: the GPU side of a Jetson (CUDA, TensorRT, onnxruntime-gpu from the Jetson Zoo), JetPack 6's "
        "Ubuntu 22.04 with Python 3.10 (the chroot has Debian's 3.11), 32-bit Raspberry Pi OS (armv7l: PyPI has "
        "no onnxruntime wheels for it), and `update` on the device (PyTorch for arm64 is not installed).",
    ]
    x86_notes = [c for c in summary["checks"] if c.get("note")]
    if x86_notes:
        flags = next((line.split(":", 1)[1].split() for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("flags")), [])
        vnni = [f for f in flags if "vnni" in f] or ["no VNNI"]
        worst = max(x86_notes, key=lambda c: c.get("x86_ref_max_diff") or 0)
        notes.insert(1, "int8: on this x86 host (" + ", ".join(f for f in ("avx2", "avx512f") if f in flags) + "; "
                     f"{', '.join(vnni)}) ONNX Runtime's fused u8 x s8 int8 kernels are off the int8 graph's own "
                     f"reference: scores by up to {worst.get('x86_ref_max_diff') or float('nan'):.2f}, "
                     f"{worst.get('x86_ref_labels_equal')}/{summary['images']} labels equal (the saturation of u8 x s8 "
                     "sums that memo_edge/export/quantize.py describes for CPUs without VNNI); arm64's keep to it, so "
                     "those comparisons are notes, not failures.")
    lines += [" ".join(notes)]
    write_section(Path(args.write), "arm64_check", "\n".join(lines))
    print(f"wrote the arm64_check section of {args.write}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("--out", required=True)
    p.add_argument("--per-class", type=int, default=4)
    p.add_argument("--classes", type=int, default=8)
    p.add_argument("--per-task", type=int, default=4)
    p.add_argument("--backbone", default="resnet8")
    p.add_argument("--memory", type=int, default=80)
    p.set_defaults(fn=cmd_prepare)
    p = sub.add_parser("predict")
    p.add_argument("package")
    p.add_argument("images")
    p.add_argument("--out", required=True)
    p.add_argument("--versions", default="2,1", help="comma-separated version numbers, or 'current'")
    p.set_defaults(fn=cmd_predict)
    p = sub.add_parser("serve")
    p.add_argument("package")
    p.add_argument("images")
    p.add_argument("--out", required=True)
    p.add_argument("--memo-edge", default="memo-edge")
    p.add_argument("--log")
    p.add_argument("--timeout", type=float, default=300)
    p.set_defaults(fn=cmd_serve)
    p = sub.add_parser("compare")
    p.add_argument("x86")
    p.add_argument("arm")
    p.add_argument("--out", required=True)
    p.set_defaults(fn=cmd_compare)
    p = sub.add_parser("report")
    p.add_argument("summary")
    p.add_argument("--write", required=True)
    p.set_defaults(fn=cmd_report)
    args = parser.parse_args()
    args.fn(args)


if __name__ == "__main__":
    main()
