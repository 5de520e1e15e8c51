"""Wall time of ``workbench run`` against the same stage functions called in one process.

Both sides start a fresh interpreter, use the same parameters and write to their own scratch
store and SQLite DB; they alternate, so machine noise hits both alike. Prints each pair, the
median ratio (pipeline / in-process; target 1.1 or less on the defaults) and where the
pipeline's time went: ``workbench run --profile`` records its phases, the kernels' boot and
imports, and the cells' own times (papermill writes them into each executed notebook); the
in-process side times each stage call.

    python benchmarks/pipeline_overhead.py [--repeat 5] [--set train.epochs=10 ...]
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TARGET = 1.1
STEPS = ("prepare", "train", "export", "validate")

IN_PROCESS = """
import json, sys, time
marks = {"started": time.time()}
import workbench as wb

p = wb.load_parameters(sets=sys.argv[2:]).model
run = "inprocess"
marks["loaded"] = time.time()
wb.prepare_data(wb.step_context("prepare", run, p.store, p.db), p.data, seed=p.seed)
marks["prepare"] = time.time()
wb.train_model(wb.step_context("train", run, p.store, p.db), p.train, seed=p.seed)
marks["train"] = time.time()
wb.export_onnx(wb.step_context("export", run, p.store, p.db), p.export)
marks["export"] = time.time()
validate = wb.step_context("validate", run, p.store, p.db)
parity = wb.validate_model(validate, p.validate, p.publish)
wb.evaluate_test(validate)  # as notebook 04 does, before its verdict may stop the step
parity.check()
marks["validate"] = time.time()
open(sys.argv[1], "w").write(json.dumps(marks))
"""


def timed(cmd: list[str]) -> tuple[float, float]:
    """The command's wall seconds, and when it was launched (epoch seconds)."""
    launched, started = time.time(), time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started, launched


PHASES = ("reuse key", "tracking", "kernel wait", "papermill", "cells", "slowest cell", "kernel shutdown", "store")


def pipeline_breakdown(profile: dict[str, Any], launched: float, wall: float) -> dict[str, float]:
    """Seconds by item, in order: the phases on the run's own clock, one after another; the
    kernels' boot and imports beside them (overlapping earlier steps but for what shows as
    kernel wait); the gaps from one step's last cell to the next one's first."""
    spans = profile["spans"]
    summed: dict[str, float] = defaultdict(float)
    for span in spans:
        summed[f"{span['step'] or 'run'}: {span['phase']}"] += span["end"] - span["start"]
    for step, cells in profile["cells"].items():
        summed[f"{step}: cells"] = sum(c["seconds"] for c in cells)
        summed[f"{step}: papermill"] -= summed[f"{step}: cells"]  # papermill around the cells
        summed[f"{step}: slowest cell"] = max((c["seconds"] for c in cells), default=0.0)
    out = {"start (interpreter, CLI, parameters)": spans[0]["start"] - launched}
    out |= {key: summed[key] for key in ("run: setup", "run: tracking") if key in summed}
    for step in STEPS:
        out |= {f"{step}: {phase}": summed[f"{step}: {phase}"] for phase in PHASES if f"{step}: {phase}" in summed}
        stamps = profile["kernels"].get(step, {})
        if "imports_start" in stamps:
            out[f"{step}: kernel boot (beside)"] = stamps["imports_start"] - stamps["launched"]
            out[f"{step}: kernel imports (beside)"] = stamps["imports_end"] - stamps["imports_start"]
    ran = [s for s in STEPS if profile["cells"].get(s)]
    for before, after in itertools.pairwise(ran):
        last = profile["cells"][before][-1]
        out[f"gap {before} -> {after}"] = profile["cells"][after][0]["start"] - (last["start"] + last["seconds"])
    out["run: report"] = summed["run: report"]
    out["exit (after the report)"] = launched + wall - spans[-1]["end"]
    return out


def direct_breakdown(marks: dict[str, float], launched: float, wall: float) -> dict[str, float]:
    out = {"start (interpreter, parameters)": marks["loaded"] - launched}
    previous = marks["loaded"]
    for step in STEPS:
        out[f"{step}: stage call"] = marks[step] - previous
        previous = marks[step]
    out["exit"] = launched + wall - marks["validate"]
    return out


def show(title: str, runs: list[dict[str, float]]) -> None:
    """Each item's median over the runs, in the order first seen."""
    print(title)
    keys = list(dict.fromkeys(k for run in runs for k in run))
    for key in keys:
        values = [run[key] for run in runs if key in run]
        print(f"  {key:<44} {statistics.median(values):7.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    ratios, pipeline_runs, direct_runs = [], [], []
    for i in range(args.repeat):
        with tempfile.TemporaryDirectory() as tmp:

            def place(name: str) -> list[str]:
                return [f"store={tmp}/{name}", f"db=sqlite:///{tmp}/{name}.db", *args.set]

            profile, marks = Path(tmp) / "profile.json", Path(tmp) / "marks.json"
            workbench = [sys.executable, "-m", "workbench", "run", f"--profile={profile}"]
            workbench += [f"--set={s}" for s in place("pipeline")]
            direct = [sys.executable, "-c", IN_PROCESS, str(marks), *place("direct")]
            if i % 2 == 0:
                (ours, launched), (theirs, direct_launched) = timed(workbench), timed(direct)
            else:
                (theirs, direct_launched), (ours, launched) = timed(direct), timed(workbench)
            pipeline_runs.append(pipeline_breakdown(json.loads(profile.read_text()), launched, ours))
            direct_runs.append(direct_breakdown(json.loads(marks.read_text()), direct_launched, theirs))
        ratios.append(ours / theirs)
        first = "workbench run first" if i % 2 == 0 else "in-process first"
        print(
            f"run {i + 1} ({first}): workbench run {ours:.1f} s, in-process {theirs:.1f} s, ratio {ratios[-1]:.2f}",
            flush=True,
        )
    median = statistics.median(ratios)
    verdict = "met" if median <= TARGET else "missed"
    print(f"pipeline overhead ratio (median of {args.repeat}): {median:.2f}  (target <= {TARGET}: {verdict})")
    show("workbench run, seconds (median over the runs; 'beside' overlaps earlier steps):", pipeline_runs)
    show("in-process, seconds (median over the runs; a stage call includes its imports):", direct_runs)


if __name__ == "__main__":
    main()
