"""The ``workbench`` command: run the pipeline, list and show runs, re-render reports.

A user error prints one line (``error: ...``) and exits non-zero; a traceback means a bug.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import textwrap
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from workbench.config.parameters import SCHEMA, Parameters, load, steps_problem
from workbench.config.schema import Key
from workbench.errors import ParameterError, WorkbenchError, debugging

if TYPE_CHECKING:
    from workbench.tracking.tracker import Tracker
from workbench.storage.scratch import sweep

ALL_KEYS_HINT = "every key with its default: --help-all, or `workbench params`"


def _columns() -> int:
    return min(shutil.get_terminal_size().columns, 120)


def _wrapped(text: str) -> str:
    return textwrap.fill(text, _columns())


def keys_table(keys: Sequence[Key] | None = None, columns: int | None = None) -> str:
    """Parameter keys with their help and default, each wrapped to the terminal's width under the key."""
    keys = SCHEMA if keys is None else keys
    columns = columns or _columns()
    width = min(max(len(k.key) for k in keys), 22)
    indent = " " * (width + 4)
    blocks = []
    for k in keys:
        text = f"{k.help} (default: {k.default!r})"
        first = f"  {k.key:<{width}}  "
        if len(first) > len(indent):  # a key longer than the column: its help starts on the next line
            blocks.append(first.rstrip())
            first = indent
        blocks.append(textwrap.fill(text, columns, initial_indent=first, subsequent_indent=indent))
    return "\n".join(blocks)


def _keys_help(*prefixes: str, before: str = "") -> str:
    """A command's own keys (those starting with ``prefixes``; none: no keys), then where the rest are."""
    keys = [k for prefix in prefixes for k in SCHEMA if k.key.startswith(prefix)]
    parts = [before] if before else []
    if keys:
        parts.append("parameter keys (for YAML files and --set):\n" + keys_table(keys))
    parts.append(ALL_KEYS_HINT)
    return "\n\n".join(parts)


def _run_keys_help() -> str:
    """`run --help`: the keys every run sets, then the pipeline's sections by name."""
    sections: dict[str, int] = {}
    for k in SCHEMA:
        if "." in k.key and k.section not in ("serve", "ui"):
            sections[k.section] = sections.get(k.section, 0) + 1
    listed = ", ".join(f"{name}.* ({n} keys)" for name, n in sections.items())
    own = "parameter keys (for YAML files and --set):\n" + keys_table([k for k in SCHEMA if "." not in k.key])
    return f"{own}\n\n{_wrapped(f'sections: {listed}; `workbench params SECTION` lists one')}\n\n{ALL_KEYS_HINT}"


SERVE_ROUTES = """routes:
  GET  /ping                    {"status": "ok", ...} while serving (SageMaker)
  POST /invocations             JSON, CSV or .npy rows; predictions (SageMaker)
  POST /v2/models/NAME/infer    Open Inference Protocol v2 (KServe, Triton)
  GET  /v2/health/live, /v2/health/ready, /v2/models/NAME[/ready]
  GET  /metrics                 Prometheus text"""


class _HelpAll(argparse.Action):
    """``--help-all``: the command's help, then every parameter key."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS, **kwargs: Any) -> None:
        super().__init__(option_strings, dest=dest, default=argparse.SUPPRESS, nargs=0, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> None:
        print(parser.format_usage().rstrip())
        print("\nparameter keys (for YAML files and --set):")
        print(keys_table())
        parser.exit()


def _cmd_params(args: argparse.Namespace) -> int:
    keys = [k for k in SCHEMA if not args.section or k.key == args.section or k.section == args.section]
    if not keys:
        sections = sorted({k.section for k in SCHEMA if "." in k.key})
        raise ParameterError(f"no parameter section {args.section!r}; sections: {', '.join(sections)}")
    print(keys_table(keys))
    return 0


def _positive(text: str) -> int:
    """A count of at least 1 (argparse says the option's name with the message)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


def _parameters(args: argparse.Namespace) -> Parameters:
    return load(args.params or (), args.set or ())


def _cmd_run(args: argparse.Namespace) -> int:
    from workbench.config.parameters import sagemaker_hosts
    from workbench.run.pipeline import STEPS, run_pipeline, select_steps, skip_iri_grammar, stop_on_signals
    from workbench.tracking import labels
    from workbench.tracking.labels import run_name

    if args.resume and args.steps:
        raise ParameterError("--resume continues the steps the run planned; drop --steps")
    if args.resume and args.rerun:
        raise ParameterError("--rerun starts a new run that executes those steps; drop --resume, or --rerun")
    name, tags = run_name(args.name) if args.name is not None else None, labels.tags(args.tag)
    if args.resume and (name or tags):
        raise ParameterError(
            "--name and --tag label a new run; drop them with --resume (`workbench runs tag` labels a run)"
        )
    if not args.resume:  # a new run's folder is empty: a step must not need what no step of it writes
        names = [s.name for s in select_steps(args.steps)]
        if problem := steps_problem(names, [s.name for s in STEPS]):
            raise ParameterError(f"--steps {args.steps}: {problem}")
    # a kernel watcher of nbclient's can outlive an interrupted step; asyncio would print its
    # leftover DeadKernelError at exit, after (and instead of) the one line that says what happened
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    params = _parameters(args)
    profile = Path(args.profile).resolve() if args.profile else None
    if profile and not profile.parent.is_dir():
        raise ParameterError(f"--profile {args.profile}: no folder {profile.parent} to write it in")
    hosts = sagemaker_hosts(os.environ)
    run_id = os.environ.get("TRAINING_JOB_NAME") if len(hosts) > 1 and not args.resume else None
    if run_id and os.environ.get("SM_CURRENT_HOST") != hosts[0]:
        # every host of a SageMaker job runs the same command: the first runs the pipeline, the
        # others join its train step, the run named after the job
        return _cmd_train_node(argparse.Namespace(**vars(args), run_id=run_id, wait=3600.0))
    skip_iri_grammar()
    with stop_on_signals():
        result = run_pipeline(
            params,
            resume=args.resume,
            steps=args.steps,
            run_id=run_id,
            name=name,
            tags=tags,
            reuse=args.reuse,
            rerun=args.rerun,
            profile=profile,
        )
    print(f"run {result.run_id} {result.status}")
    print(f"report {result.report}")
    return 0


def _cmd_train_node(args: argparse.Namespace) -> int:
    from workbench.run.nodes import join_training

    join_training(args.run_id, _parameters(args), args.wait, say=lambda m: print(m, file=sys.stderr, flush=True))
    print(f"run {args.run_id}: this node's training finished")
    return 0


def _tracker(args: argparse.Namespace) -> Tracker:
    from workbench.tracking.tracker import Tracker

    return Tracker(_parameters(args)["db"], create=False)  # a mistyped db is named, not created empty


def _keys(text: str | None) -> tuple[str, ...]:
    return tuple(k.strip() for k in (text or "").split(",") if k.strip())


DEFAULT_COLUMNS = ("val_accuracy", "parity_pass")


def _cmd_runs(args: argparse.Namespace) -> int:
    from workbench.tracking.labels import tags
    from workbench.tracking.queries import (
        RunQuery,
        find_runs,
        parameters_and_metrics,
        parse_condition,
        stale_metrics,
        unrecorded,
    )
    from workbench.tracking.terminal import runs_table

    chosen = _keys(args.columns)
    query = RunQuery(
        where=tuple(parse_condition(text) for text in args.where or ()),
        tags=tuple(tags(args.tag).items()),
        sort=args.sort,
        columns=chosen or DEFAULT_COLUMNS,
        limit=args.limit,
    )
    tracker = _tracker(args)
    asked = {
        **{c.key: f"--where {c}" for c in query.where},
        args.sort.removeprefix("-"): f"--sort {args.sort}",
        **{key: f"--columns {args.columns}" for key in chosen},
    }
    if missing := unrecorded(tracker, list(asked)):
        raise ParameterError(
            f"{asked[missing[0]]}: no run records {missing[0]!r}; `workbench runs show RUN` lists a run's "
            "parameters and metrics"
        )
    page = find_runs(tracker, query)
    if args.json:
        details = parameters_and_metrics(tracker, [r.id for r in page.rows])
        stale = stale_metrics(tracker, [r.id for r in page.rows])
        rows = [
            {
                "id": r.id,
                "name": r.name,
                "status": r.status,
                "launcher": r.launcher,
                "started_at": r.started_at,
                "duration_s": r.duration_s,
                "tags": r.tags,
                **details[r.id],
                "stale_metrics": stale[r.id],
            }
            for r in page.rows
        ]
        print(json.dumps(rows, indent=2))
    elif page.rows:
        print(runs_table(page, query))
    elif query.where or query.tags:
        print("no runs match; `workbench runs` without --where and --tag lists them all")
    else:
        print("no runs yet; start one with `workbench run`")
    return 0


def _cmd_runs_show(args: argparse.Namespace) -> int:
    from workbench.tracking.aliases import is_alias, resolve
    from workbench.tracking.terminal import run_text

    tracker = _tracker(args)
    run = tracker.get_run(resolve(tracker, args.run_id, "RUN_ID") if is_alias(args.run_id) else args.run_id)
    print(json.dumps(run, indent=2) if args.json else run_text(run))
    return 0


def _cmd_runs_tag(args: argparse.Namespace) -> int:
    from workbench.tracking.labels import tags

    given = tags(args.pairs)
    tracker = _tracker(args)
    for key, value in given.items():
        tracker.tag_run(args.run_id, key, value)
    print(f"run {args.run_id} tagged " + " ".join(f"{k}={v}" for k, v in given.items()))
    return 0


def _cmd_runs_note(args: argparse.Namespace) -> int:
    _tracker(args).note_run(args.run_id, args.text)
    print(f"run {args.run_id}: note {'saved' if args.text.strip() else 'cleared'}")
    return 0


def _cmd_runs_compare(args: argparse.Namespace) -> int:
    from workbench.tracking.queries import compare_runs
    from workbench.tracking.terminal import comparison_text

    seen = compare_runs(_tracker(args), args.run_ids, all_params=args.all)
    print(comparison_text(seen))
    if args.html:
        from workbench.run.compare_report import write_comparison

        print(f"\npage {write_comparison(seen, args.html)}")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from workbench.errors import StoreError
    from workbench.run.report import render_report
    from workbench.storage import open_store
    from workbench.storage.catalog import RunLayout
    from workbench.tracking.tracker import Tracker

    params = _parameters(args)
    tracker = Tracker(params["db"], create=False)
    run = tracker.get_run(args.run_id)
    # the run's own store, unless this command line names one (a store that was moved)
    uri = params["store"] if "store" in params.explicit else run["store"]
    store = open_store(uri)
    folder = RunLayout(args.run_id).root
    if not store.list(folder):
        raise StoreError(
            f"run {args.run_id}: its store {uri} holds no {folder} (moved or deleted?); "
            "if you moved it, pass the new place with --set store=..."
        )
    index = render_report(
        args.run_id, tracker, store, warn=lambda message: print(f"warning: {message}", file=sys.stderr)
    )
    print(f"report {index}")
    tracker.report_written(args.run_id)
    return 0


def _cmd_db(args: argparse.Namespace) -> int:
    from workbench.tracking.tracker import Tracker, display_url

    params = _parameters(args)
    print(f"db {display_url(params['db'])} at schema {Tracker(params['db'], check=False).upgrade()}")
    return 0


def _cmd_notebooks(args: argparse.Namespace) -> int:
    from workbench.run.notebooks import check_generated, sync_generated

    if args.sync:
        written = sync_generated()
        for path in written:
            print(f"wrote {path}")
        if not written:
            print("notebooks, parameters/default.yaml and README.md already match the schema")
        return 0
    drifts = check_generated()
    for drift in drifts:
        print(drift, file=sys.stderr)
    if drifts:
        names = ", ".join(str(d.path) for d in drifts)
        print(f"error: {names} differ from the schema; run `workbench notebooks --sync`", file=sys.stderr)
        return 1
    print("notebooks, parameters/default.yaml and README.md match the schema")
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from workbench.serve.server import serve

    params = _parameters(args)
    return serve(params.model.serve, params["store"], params["db"])


def _cmd_ui(args: argparse.Namespace) -> int:
    from workbench.ui.server import serve_ui

    params = _parameters(args)
    return serve_ui(params.model.ui, params["db"])


def _cmd_kernel(args: argparse.Namespace) -> int:
    from workbench.run.kernel import KERNEL_NAME, ensure_kernel

    print(f"kernel {KERNEL_NAME} registered in {ensure_kernel()}")
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    from workbench.tracking.aliases import models
    from workbench.tracking.terminal import models_table

    found = models(_tracker(args), args.limit)
    if args.json:
        print(json.dumps([vars(m) for m in found], indent=2))
    elif not found:
        print("no run has exported a model yet; start one with `workbench run`")
    else:
        print(models_table(found))
    return 0


def _cmd_alias_set(args: argparse.Namespace) -> int:
    from workbench.run.gate import resolve_run
    from workbench.tracking.aliases import set_alias

    tracker = _tracker(args)
    moved = set_alias(tracker, args.name, resolve_run(tracker, args.run_id, "RUN_ID"), args.reason)
    print(f"@{moved.name} -> {moved.run_id}" + (f" (was {moved.previous})" if moved.previous else ""))
    return 0


def _cmd_alias_rm(args: argparse.Namespace) -> int:
    from workbench.tracking.aliases import remove_alias

    moved = remove_alias(_tracker(args), args.name, args.reason)
    print(f"@{moved.name} removed (was {moved.previous})")
    return 0


def _cmd_models_history(args: argparse.Namespace) -> int:
    from workbench.tracking.aliases import history
    from workbench.tracking.terminal import moves_table

    moves = history(_tracker(args), args.name)
    print(json.dumps([vars(m) for m in moves], indent=2) if args.json else moves_table(moves))
    return 0


def _cmd_models_promote(args: argparse.Namespace) -> int:
    from workbench.run.gate import promote, resolve_run

    tracker = _tracker(args)
    candidate = resolve_run(tracker, args.run_id, "RUN_ID")
    outcome = promote(tracker, candidate, args.alias, args.require, args.better_than, args.metric, args.reason)
    print(outcome.line)
    return 0


def build_parser() -> argparse.ArgumentParser:
    layers = argparse.ArgumentParser(add_help=False)
    layers.add_argument(
        "-p",
        "--params",
        action="append",
        metavar="FILE",
        help="YAML parameter file; repeat to layer (default: parameters/default.yaml)",
    )
    layers.add_argument(
        "--set", action="append", metavar="KEY=VALUE", help="override one parameter, e.g. --set train.epochs=3"
    )
    layers.add_argument("--help-all", action=_HelpAll, help="show every parameter key with its help and default")

    parser = argparse.ArgumentParser(
        prog="workbench",
        description=_wrapped(
            "Run the notebook pipeline (prepare, train, export to ONNX, validate in MXNet) and inspect its runs."
        ),
        epilog=_keys_help("store", "db", "seed"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--traceback",
        action="store_true",
        help="on an error, print its cause chain as well as the one line (also: WORKBENCH_DEBUG=1)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = sub.add_parser(
        "run",
        parents=[layers],
        help="run the whole pipeline",
        epilog=_run_keys_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=_wrapped("Execute the step notebooks with papermill; prints the run id and the report path."),
    )
    run.add_argument(
        "--steps", metavar="NAMES", help="comma list of steps: prepare,train,export,validate (default) or score"
    )
    run.add_argument("--resume", metavar="RUN_ID", help="continue an unfinished run from its first unfinished step")
    run.add_argument("--name", help="what to call the run; every listing shows it")
    run.add_argument(
        "--tag", action="append", metavar="KEY=VALUE", help="label the run, e.g. --tag team=vision (repeatable)"
    )
    run.add_argument(
        "--no-reuse",
        dest="reuse",
        action="store_false",
        help="run every step, even those whose inputs, parameters and code match a finished step of an earlier run",
    )
    run.add_argument(
        "--rerun",
        metavar="STEPS",
        help="comma list of steps to run even when they could be reused, and every step after them",
    )
    run.add_argument(
        "--profile",
        metavar="FILE",
        help="write where the run's time went (setup, reuse keys, tracking, kernels, cells, report) to FILE as JSON",
    )
    run.set_defaults(func=_cmd_run)

    runs = sub.add_parser(
        "runs",
        parents=[layers],
        help="list runs (filtered, sorted, chosen columns), or show, tag, note or compare runs",
        description="List runs, newest first: id, status, start, seconds, the chosen columns, name and tags. "
        "A KEY is a parameter (train.lr), a final metric (val_accuracy, test_roc_auc) or a run field "
        "(status, name, launcher, started_at, duration_s).",
    )
    runs.add_argument(
        "--columns",
        metavar="KEYS",
        help=f"comma list of parameter and metric keys to show, e.g. train.lr,val_accuracy (default {','.join(DEFAULT_COLUMNS)})",
    )
    runs.add_argument(
        "--sort", metavar="KEY", default="-started_at", help="sort by KEY, -KEY for descending (default -started_at)"
    )
    runs.add_argument(
        "--where",
        action="append",
        metavar="COND",
        help="keep runs where KEY OP VALUE holds, OP one of = != > >= < <=, e.g. 'train.model=mlp' or "
        "'test_accuracy>0.9' (repeatable: all must hold)",
    )
    runs.add_argument("--tag", action="append", metavar="KEY=VALUE", help="keep runs with this tag (repeatable)")
    runs.add_argument("--limit", type=_positive, default=20, help="at most N runs (default 20)")
    runs.add_argument("--json", action="store_true", help="print JSON, with every parameter and metric of each run")
    runs.set_defaults(func=_cmd_runs, action=None)
    runs_sub = runs.add_subparsers(dest="action", metavar="show|tag|note|compare")
    show = runs_sub.add_parser("show", parents=[layers], help="status, parameters, metrics and artifacts of one run")
    show.add_argument("run_id")
    show.add_argument("--json", action="store_true", help="print JSON")
    show.set_defaults(func=_cmd_runs_show)
    tag = runs_sub.add_parser("tag", parents=[layers], help="set tags of a run: runs tag RUN_ID team=vision ...")
    tag.add_argument("run_id")
    tag.add_argument("pairs", nargs="+", metavar="KEY=VALUE")
    tag.set_defaults(func=_cmd_runs_tag)
    note = runs_sub.add_parser("note", parents=[layers], help='set the note of a run: runs note RUN_ID "text"')
    note.add_argument("run_id")
    note.add_argument("text", help="what the run tried and what came of it ('' clears it)")
    note.set_defaults(func=_cmd_runs_note)
    compare = runs_sub.add_parser(
        "compare",
        parents=[layers],
        help="runs side by side: parameters that differ, metrics with the best marked, step times and reuse",
    )
    compare.add_argument("run_ids", nargs="+", metavar="RUN_ID", help="two runs or more")
    compare.add_argument("--all", action="store_true", help="every parameter, not only those that differ")
    compare.add_argument(
        "--html",
        metavar="FILE",
        help="also write the comparison as one self-contained page, with learning curves and figures",
    )
    compare.set_defaults(func=_cmd_runs_compare)

    models = sub.add_parser(
        "models",
        parents=[layers],
        help="exported models and their aliases (@champion): list, alias set|rm, history, promote",
        description="Runs with an exported model, and aliases: one name (@champion) for the model that "
        "ships, moved on purpose. score.model_run, serve.model and `runs show` take @NAME.",
    )
    models.add_argument("--limit", type=_positive, default=20, help="newest N models (default 20)")
    models.add_argument("--json", action="store_true", help="print JSON")
    models.set_defaults(func=_cmd_models, action=None)
    models_sub = models.add_subparsers(dest="action", metavar="list|alias|history|promote")
    listing = models_sub.add_parser("list", parents=[layers], help="runs with an exported model: metrics, aliases")
    listing.add_argument("--limit", type=_positive, default=20, help="newest N models (default 20)")
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.set_defaults(func=_cmd_models)
    alias = models_sub.add_parser("alias", help="point an alias at a run (set) or remove it (rm)")
    alias_sub = alias.add_subparsers(dest="alias_action", required=True, metavar="set|rm")
    alias_set = alias_sub.add_parser(
        "set", parents=[layers], help="alias set NAME RUN: RUN's export finished and its parity passed"
    )
    alias_set.add_argument("name", help="the alias, e.g. champion")
    alias_set.add_argument("run_id", metavar="RUN", help="a run id, @another-alias or latest")
    alias_set.add_argument("--reason", help="why (kept in `models history`)")
    alias_set.set_defaults(func=_cmd_alias_set)
    alias_rm = alias_sub.add_parser("rm", parents=[layers], help="alias rm NAME: remove it (kept in history)")
    alias_rm.add_argument("name")
    alias_rm.add_argument("--reason", help="why (kept in `models history`)")
    alias_rm.set_defaults(func=_cmd_alias_rm)
    moves = models_sub.add_parser("history", parents=[layers], help="every move of an alias: run, who, when, why")
    moves.add_argument("name")
    moves.add_argument("--json", action="store_true", help="print JSON")
    moves.set_defaults(func=_cmd_models_history)
    gate = models_sub.add_parser(
        "promote",
        parents=[layers],
        help="move an alias to RUN only when the conditions hold (exit 1 with the figures otherwise)",
        description="Move --alias to RUN when every --require holds on RUN's recorded metrics and, with "
        "--better-than, when RUN beats that alias's model on --metric, both models scoring RUN's test split.",
    )
    gate.add_argument("run_id", metavar="RUN", help="a run id, @alias or latest")
    gate.add_argument("--alias", required=True, help="the alias to move, e.g. champion")
    gate.add_argument(
        "--require", action="append", metavar="COND", help="e.g. 'test_roc_auc>=0.80' (repeatable: all must hold)"
    )
    gate.add_argument("--better-than", metavar="ALIAS", help="beat this alias's model on the same rows")
    gate.add_argument("--metric", help="what --better-than compares, e.g. test_roc_auc or test_rmse")
    gate.add_argument("--reason", help="why (kept in `models history`)")
    gate.set_defaults(func=_cmd_models_promote)

    report = sub.add_parser("report", parents=[layers], help="re-render a run's HTML report")
    report.add_argument("run_id")
    report.set_defaults(func=_cmd_report)

    db = sub.add_parser("db", help="tracking database schema: `db upgrade` creates or upgrades it")
    db_sub = db.add_subparsers(dest="action", required=True, metavar="upgrade")
    upgrade = db_sub.add_parser(
        "upgrade", parents=[layers], help="create or upgrade the tracking DB schema (idempotent)"
    )
    upgrade.set_defaults(func=_cmd_db)

    notebooks = sub.add_parser(
        "notebooks",
        help="check (or --sync) the notebooks' parameters cells, parameters/default.yaml and the README table against the schema",
        description="Everything a parameter is written in is generated from workbench/config/schema.py: the "
        "parameters cell of each notebook, parameters/default.yaml and the README's parameter table. --check "
        "(the default) exits 1 naming each file that differs, with the difference; --sync rewrites them.",
    )
    mode = notebooks.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="exit 1 if a generated text differs (default)")
    mode.add_argument("--sync", action="store_true", help="rewrite what differs (notebook outputs are kept)")
    notebooks.set_defaults(func=_cmd_notebooks)

    node = sub.add_parser(
        "train-node",
        parents=[layers],
        help="join a run's training from another machine (train.nodes > 1)",
        description="Wait for RUN_ID's train step to start on the first node (`workbench run` there, with the "
        "same db), then run this machine's torchrun workers in it; they meet at train.rdzv_endpoint.",
    )
    node.add_argument("run_id")
    node.add_argument("--wait", type=float, default=600.0, metavar="SECONDS", help="how long to wait (default 600)")
    node.set_defaults(func=_cmd_train_node)

    serve = sub.add_parser(
        "serve",
        parents=[layers],
        help="serve a model over HTTP: SageMaker's /ping and /invocations, Open Inference Protocol v2, /metrics",
        description=_wrapped(
            "Serve the model serve.model names (latest, a run id, @NAME, a run folder, a model.tar.gz or its "
            "folder) on serve.host:serve.port until SIGTERM or Ctrl-C, batching concurrent requests."
        ),
        epilog=_keys_help("serve.", "store", "db", before=SERVE_ROUTES),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.set_defaults(func=_cmd_serve)

    ui = sub.add_parser(
        "ui",
        parents=[layers],
        help="a web page over the runs: the runs table, a run, runs compared (read-only)",
        description="Serve a read-only web app over the tracking database (db) on ui.host:ui.port until Ctrl-C: "
        "runs filtered, sorted and paged, each run's report and artifacts, runs compared, and JSON under /api/runs.",
    )
    ui.set_defaults(func=_cmd_ui)

    params = sub.add_parser(
        "params",
        help="every parameter key with its help and default (the table of README's Parameters)",
        description="Every parameter key, or one section's (params train), with its help and default.",
    )
    params.add_argument("section", nargs="?", default="", help="a section (data, train, serve, ...) or one key")
    params.set_defaults(func=_cmd_params)

    kernel = sub.add_parser("kernel", help="register the 'workbench' Jupyter kernel for this environment")
    kernel.set_defaults(func=_cmd_kernel)
    return parser


def _debugging(args: argparse.Namespace | None) -> bool:
    """``--traceback`` or ``WORKBENCH_DEBUG=1``: a user error also shows what caused it."""
    return debugging() or bool(getattr(args, "traceback", False))


def _report_error(exc: WorkbenchError, args: argparse.Namespace | None) -> None:
    """The one line; when debugging, the traceback and cause chain first, so the line stays last."""
    if _debugging(args):
        traceback.print_exception(exc, file=sys.stderr)
    print(f"error: {exc}", file=sys.stderr)


def _descending(argv: Sequence[str]) -> list[str]:
    """``--sort -KEY`` as ``--sort=-KEY``: argparse takes a value that starts with ``-`` for an option."""
    out: list[str] = []
    for item in argv:
        if out and out[-1] == "--sort" and item.startswith("-") and item != "--":
            out[-1] = f"--sort={item}"
        else:
            out.append(item)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = None
    sweep()  # scratch left by workbench processes that were killed (kill -9): their S3 copies, kernel keys
    try:
        args = build_parser().parse_args(_descending(sys.argv[1:] if argv is None else argv))  # --help writes too
        code = args.func(args)
        sys.stdout.flush()  # a reader gone early (`| head`) shows here, not in a traceback at exit
        return code
    except BrokenPipeError:
        # nobody reads the rest: send it to devnull so the flush at exit cannot fail again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, what a shell reports for a command killed by a closed pipe
    except ParameterError as exc:
        _report_error(exc, args)
        return 2
    except WorkbenchError as exc:
        _report_error(exc, args)
        return 1
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM/SIGHUP during a run (its message says which)
        print(f"error: {exc or 'interrupted'}", file=sys.stderr)
        return 128 + getattr(exc, "signum", 2)  # 130 for Ctrl-C, 143 for SIGTERM, as a shell reports them


if __name__ == "__main__":
    sys.exit(main())
