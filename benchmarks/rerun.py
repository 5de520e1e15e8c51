"""Reruns that reuse unchanged steps, against the runs they spare, side by side in one process.

1. The digits defaults: a first ``workbench run``, then the same command again with nothing
   changed (every step reused, no kernel started). Target: the second at most 0.15 of the first.
2. A mixed table (numbers with gaps, categories, a date; see prepare_large.py) of ``--rows`` rows:
   a first run, then ``train.lr`` changed with reuse (prepare reused) and the same change with
   ``--no-reuse``, alternated; prints the wall-time ratio and the seconds saved.
3. The cost of the keys when nothing is reused: the reuse decision for every step timed in this
   process against that table's full run, with the data file hashed (a new file) and remembered
   (the same file again). Target: under 2% of a full run.

    python benchmarks/rerun.py [--rows 1000000] [--repeat 3] [--epochs 1] [--set KEY=VALUE ...]

``--set`` applies to the digits runs (e.g. ``--set train.epochs=2`` for a quick look).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from prepare_large import make_mixed

ROOT = Path(__file__).resolve().parents[1]


def run(place: Path, *settings: str) -> tuple[float, str]:
    """``workbench run`` in a fresh interpreter: its wall time and what it said."""
    command = [sys.executable, "-m", "workbench", "run", f"--set=store={place}/store", f"--set=db=sqlite:///{place}/db"]
    started = time.perf_counter()
    done = subprocess.run([*command, *settings], cwd=ROOT, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    if done.returncode:
        sys.exit(f"workbench run failed:\n{done.stderr[-3000:]}")
    return seconds, done.stderr


def digits(repeat: int, settings: list[str]) -> None:
    ratios = []
    for i in range(repeat):
        with tempfile.TemporaryDirectory() as tmp:
            first, _ = run(Path(tmp), *settings)
            second, said = run(Path(tmp), *settings)
        reused = said.count(" reused from ")
        kernels = said.count(".ipynb ...")
        ratios.append(second / first)
        print(
            f"digits {i + 1}: first run {first:.1f} s, rerun {second:.2f} s, ratio {ratios[-1]:.3f} "
            f"({reused} steps reused, {kernels} kernels started)",
            flush=True,
        )
    print(
        f"rerun with nothing changed / first run (median of {repeat}): {statistics.median(ratios):.3f}  (target <= 0.15)"
    )


def mixed(rows: int, repeat: int, epochs: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        table = make_mixed(folder, rows)[1]  # the Parquet twin
        base = [
            f"--set=data.source={table}",
            "--set=data.drop=[id]",
            f"--set=train.epochs={epochs}",
            "--set=train.batch_size=1024",
            "--set=export.target=onnxruntime",
            "--set=export.opset=17",
        ]
        full, _ = run(folder, *base)
        print(f"mixed {rows:,} rows: first full run {full:.1f} s", flush=True)
        pairs = []
        for i in range(repeat):
            # each side a learning rate no run had (never the default 0.002), so neither reuses the
            # other's training: the reuse side reuses prepare only, the other runs every step
            reuse_lr, forced_lr = [f"--set=train.lr={0.003 + 0.002 * i}"], [f"--set=train.lr={0.004 + 0.002 * i}"]
            if i % 2 == 0:
                reused, said = run(folder, *base, *reuse_lr)
                forced, _ = run(folder, *base, *forced_lr, "--no-reuse")
            else:
                forced, _ = run(folder, *base, *forced_lr, "--no-reuse")
                reused, said = run(folder, *base, *reuse_lr)
            if "prepare reused from" not in said or "train runs:" not in said:  # the checkout changed: say so
                print(f"  not the comparison meant: {' | '.join(said.splitlines()[1:3])}", flush=True)
                continue
            pairs.append((reused, forced))
            print(
                f"  train.lr changed {i + 1}: prepare reused {reused:.1f} s, --no-reuse {forced:.1f} s, "
                f"ratio {reused / forced:.2f}, saved {forced - reused:.1f} s",
                flush=True,
            )
        if pairs:
            ratio = statistics.median(r / f for r, f in pairs)
            saved = statistics.median(f - r for r, f in pairs)
            print(f"train.lr changed, reuse / --no-reuse (median of {len(pairs)}): {ratio:.2f}, {saved:.1f} s saved")
        keys(folder, table, base, full)


def keys(folder: Path, table: Path, base: list[str], full: float) -> None:
    """The reuse decision of every step, in this process, against the full run's wall time."""
    from workbench.config.parameters import load
    from workbench.run.pipeline import STEPS, TRAINING, notebooks_dir
    from workbench.run.reuse import Reuse, installed_sources
    from workbench.storage import open_store
    from workbench.tracking.tracker import Tracker

    os.chdir(ROOT)
    params = load(sets=[s.removeprefix("--set=") for s in base])
    tracker = Tracker(f"sqlite:///{folder}/db")
    store = open_store(str(folder / "store"))
    for label, forget in (("a new data file (hashed)", True), ("the same file again (remembered)", False)):
        if forget:
            os.utime(table)  # a new modification time: the remembered hash no longer counts
        installed_sources.cache_clear()  # read once per process, as a run does
        run_id = tracker.create_run(store.root, params.values, params.origin)
        tracker.plan_steps(run_id, list(TRAINING))
        reuse = Reuse(tracker, store, run_id, notebooks_dir(), enabled=False)
        started = time.perf_counter()
        for step in (s for s in STEPS if s.name in TRAINING):
            reuse.record(reuse.decide(step.name, step.notebook, step.keyed(params)))
        seconds = time.perf_counter() - started
        print(f"keys of 4 steps, {label}: {seconds:.3f} s = {seconds / full:.2%} of a full run  (target < 2%)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows of the mixed table")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=1, help="train.epochs on the mixed table")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="for the digits runs")
    args = parser.parse_args()
    digits(args.repeat, [f"--set={s}" for s in args.set])
    mixed(args.rows, args.repeat, args.epochs)


if __name__ == "__main__":
    main()
