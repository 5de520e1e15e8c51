"""Wall time of ``workbench run`` against the same stage functions called in one process.

Both sides start a fresh interpreter, use the same parameters and write to their own scratch
store and SQLite DB; they alternate, so machine noise hits both alike. Prints each pair and the
median ratio (pipeline / in-process); the target on the defaults is 1.5 or less.

    python benchmarks/pipeline_overhead.py [--repeat 3] [--set train.epochs=10 ...]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

IN_PROCESS = """
import sys
import workbench as wb

p = wb.load_parameters(sets=sys.argv[1:]).model
run = "inprocess"
wb.prepare_data(wb.step_context("prepare", run, p.store, p.db), p.data, seed=p.seed)
wb.train_model(wb.step_context("train", run, p.store, p.db), p.train, seed=p.seed)
wb.export_onnx(wb.step_context("export", run, p.store, p.db), p.export)
validate = wb.step_context("validate", run, p.store, p.db)
parity = wb.validate_model(validate, p.validate, p.publish)
wb.evaluate_test(validate)  # as notebook 04 does, before its verdict may stop the step
parity.check()
"""


def timed(cmd: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    ratios = []
    for i in range(args.repeat):
        with tempfile.TemporaryDirectory() as tmp:

            def place(name: str) -> list[str]:
                return [f"store={tmp}/{name}", f"db=sqlite:///{tmp}/{name}.db", *args.set]

            workbench = [sys.executable, "-m", "workbench", "run"] + [f"--set={s}" for s in place("pipeline")]
            direct = [sys.executable, "-c", IN_PROCESS, *place("direct")]
            pair = (
                (timed(workbench), timed(direct)) if i % 2 == 0 else tuple(reversed((timed(direct), timed(workbench))))
            )
        ratios.append(pair[0] / pair[1])
        print(
            f"run {i + 1}: workbench run {pair[0]:.1f} s, in-process {pair[1]:.1f} s, ratio {ratios[-1]:.2f}",
            flush=True,
        )
    print(f"pipeline overhead ratio (median of {args.repeat}): {statistics.median(ratios):.2f}  (target <= 1.5)")


if __name__ == "__main__":
    main()
