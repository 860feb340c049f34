"""The table of the exemplar-codec experiment (benchmarks/codec_experiment.sh), for docs/experiments.md.

Reads the runs the experiment's `memo-edge compare` commands wrote under --runs (main/: every
method x codec at one total byte budget; mix/: codec-matched training), finished ones only, and per arm:
exemplars stored and their bytes, average and last accuracy, the time spent encoding and decoding new
task images (recorded by the runs), and the decode time of one pass over the final exemplar memory,
measured here by loading that task's exemplars.npz (the cost an epoch pays if exemplars are kept
encoded in memory and decoded as they are read; the trainer decodes once per task instead). Then the
issue's claim, checked per method and quality: at the same bytes, jpeg:Q stores >= 3x the exemplars of
raw and reaches a higher last accuracy.

    .venv/bin/python benchmarks/codec_table.py --runs runs/codecs [--write docs/experiments.md]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import time
from pathlib import Path

import PIL

from memo_edge.memory import ExemplarSet

from _report import cpu_name, load_average, write_section  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

COMMAND = "bash benchmarks/codec_experiment.sh   # ends with: .venv/bin/python benchmarks/codec_table.py --runs runs/codecs --write docs/experiments.md"


def decode_seconds(run_dir: Path, repeats: int = 3) -> float:
    """Best of ``repeats`` loads (and decodes) of the last task's exemplar file."""
    last = sorted(run_dir.glob("task-[0-9][0-9]"))[-1] / "exemplars.npz"
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        ExemplarSet.load(last)
        best = min(best, time.perf_counter() - start)
    return best


def arms(runs: Path) -> list[dict]:
    """Every finished run under ``runs/main`` and ``runs/mix`` (read from its results.json, so a partly
    finished experiment gives the rows it has)."""
    out = []
    for group in ("main", "mix"):
        for results_file in sorted((runs / group).glob("*/results.json")):
            results = json.loads(results_file.read_text())
            if not results.get("complete"):
                continue
            config, last, summary = results["config"], results["tasks"][-1], results["summary"]
            out.append({
                "group": group, "method": config["method"], "codec": config.get("exemplar_codec", "raw"),
                "codec_mix": config.get("codec_mix", 0.0), "config": config, "memory": int(config["memory"]),
                "exemplars": last["exemplars"], "exemplar_bytes": last["exemplar_bytes"],
                "average_accuracy": summary["average_incremental_accuracy"], "last_accuracy": summary["last_accuracy"],
                "accuracy_curve": summary["accuracy_curve"],
                "codec_seconds": sum(t.get("codec_seconds", 0.0) for t in results["tasks"]),
                "decode_s": decode_seconds(results_file.parent),
            })
    order = {"raw": 0, "png": 1}
    out.sort(key=lambda r: (r["group"], r["method"], order.get(r["codec"], 2), r["codec"]))
    return out


def report(rows: list[dict], budget_bytes: int) -> str:
    first = rows[0]["config"]
    lines = [
        "### Measured: CIFAR-100, one total byte budget",
        "",
        f"- when: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC (table written; the runs finished before)",
        f"- where: {cpu_name()}, 2 cores, CPU only; Python {platform.python_version()}, Pillow {PIL.__version__}; "
        f"1-minute load average {load_average()} when the decode times were taken",
        f"- what: `memo-edge compare` on real CIFAR-100 (npz copy), the first {first['classes']} classes of the "
        f"seed-{first['seed']} order, {first['scenario']} ({len(rows[0]['accuracy_curve'])} tasks), {first['backbone']}, "
        f"{first['init_epochs']} epochs a task, {first['schedule']} schedule, batch {first['batch_size']}, "
        f"{first['precision']} autocast; every arm has the same total bytes "
        f"({budget_bytes:,} B = DER's 3 backbones + 600 raw exemplars, the memory-aligned budget of this "
        "scenario: `memo-edge budget --classes 30 --base-exemplars 600`); its exemplars get what its model leaves.",
        "- columns: *exemplar bytes* the method's exemplar memory (raw exemplars it holds); *stored* exemplars after "
        "the last task and their bytes; *codec s* encoding + decoding the new tasks' images, all tasks; *decode ms/pass* "
        "one decode of the final exemplar memory (what an epoch costs if exemplars stay encoded in memory; the "
        "trainer decodes once per task)",
        f"- command: `{COMMAND}`",
        "",
        "| method | codec | codec mix | exemplar memory (raw) | stored | stored KiB | x raw | average acc. | last acc. | "
        "codec s | decode ms/pass |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    raw = {r["method"]: r for r in rows if r["codec"] == "raw" and r["group"] == "main"}
    for r in rows:
        base = raw.get(r["method"])
        ratio = f"{r['exemplars'] / base['exemplars']:.2f}" if base else "n/a"
        lines.append(f"| {r['method']} | {r['codec']} | {r['codec_mix']:g} | {r['memory']} | {r['exemplars']} | "
                     f"{r['exemplar_bytes'] / 1024:.0f} | {ratio} | {r['average_accuracy']:.2f} | "
                     f"{r['last_accuracy']:.2f} | {r['codec_seconds']:.1f} | {1000 * r['decode_s']:.1f} |")
    lines += ["", "The claim (at the same bytes, jpeg:Q stores >= 3x the exemplars of raw and a higher last accuracy):"]
    for r in rows:
        base = raw.get(r["method"])
        if not r["codec"].startswith("jpeg") or r["group"] != "main" or base is None:
            continue
        more = r["exemplars"] / base["exemplars"]
        lines.append(f"- {r['method']} {r['codec']}: {more:.2f}x the exemplars ({'>= 3x' if more >= 3 else 'NOT >= 3x'}), "
                     f"last accuracy {r['last_accuracy']:.2f} vs raw {base['last_accuracy']:.2f} "
                     f"({'higher' if r['last_accuracy'] > base['last_accuracy'] else 'NOT higher'}; "
                     f"{r['last_accuracy'] - base['last_accuracy']:+.2f} pp)")
    plain = {(r["method"], r["codec"]): r for r in rows if r["group"] == "main"}
    for r in rows:
        if r["group"] == "mix" and (r["method"], r["codec"]) in plain:
            p = plain[(r["method"], r["codec"])]
            lines.append(f"- codec-matched training, {r['method']} {r['codec']} with --codec-mix {r['codec_mix']:g}: "
                         f"average {r['average_accuracy']:.2f} vs {p['average_accuracy']:.2f}, last "
                         f"{r['last_accuracy']:.2f} vs {p['last_accuracy']:.2f} ({r['last_accuracy'] - p['last_accuracy']:+.2f} pp)")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=Path("runs/codecs"))
    parser.add_argument("--write", type=Path, help="Markdown file to put the section into (docs/experiments.md).")
    parser.add_argument("--budget-bytes", type=int, default=7_405_248, help="The experiment's total budget (for the text).")
    args = parser.parse_args()
    rows = arms(args.runs)
    if not rows:
        raise SystemExit(f"no comparison.json under {args.runs}/main or {args.runs}/mix")
    text = report(rows, args.budget_bytes)
    print(text)
    if args.write:
        write_section(args.write, "codec_experiment", text)


if __name__ == "__main__":
    main()
