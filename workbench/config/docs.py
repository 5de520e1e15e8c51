"""Texts generated from the schema: ``parameters/default.yaml`` and the README's parameter table.

Neither is edited by hand: change :mod:`workbench.config.schema`, then ``workbench notebooks --sync``
rewrites them (and the notebooks' parameters cells); ``workbench notebooks --check`` and the tests
fail while they differ.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

from workbench.config.schema import KEYS, SECTIONS, Key

GENERATED = "generated from workbench/config/schema.py by `workbench notebooks --sync`; edit the schema, not this"
README_START = "<!-- parameters:start: " + GENERATED + " table -->"
README_END = "<!-- parameters:end -->"

_YAML_HEADER = f"""\
# Embedded defaults: bundled digits data, a local artifact folder, a SQLite tracking DB.
# Runs anywhere with no services. Layer other files on top: workbench run -p parameters/default.yaml -p parameters/gpu.yaml
# Relative paths start at the project folder (the one holding this parameters/ folder).
# This file is {GENERATED} file.
"""


def yaml_scalar(value: Any) -> str:
    """``value`` as it is written in a YAML file (``''`` for an empty string, ``true``, ``0.0001``)."""
    text = yaml.safe_dump(value, default_flow_style=True, width=10**6).strip()
    return text.removesuffix("...").strip()


def _block(keys: list[Key], indent: str) -> list[str]:
    pairs = [(f"{indent}{k.name}: {yaml_scalar(k.default)}", k.help) for k in keys]
    width = max(len(pair) for pair, _ in pairs)
    return [f"{pair:<{width}}  # {help}".rstrip() if help else pair for pair, help in pairs]


def default_yaml() -> str:
    """The text of ``parameters/default.yaml``: every key at its default, with its help."""
    lines = _YAML_HEADER.splitlines()
    lines += _block([k for k in KEYS if not k.section], "")
    for name, model in SECTIONS.items():
        doc = (model.__doc__ or "").strip().splitlines()[0]
        lines += ["", f"# {doc}", f"{name}:"] if doc else ["", f"{name}:"]
        lines += _block([k for k in KEYS if k.section == name], "  ")
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def readme_table() -> str:
    """The README's parameter table, with its markers: every key, its default, range and meaning."""
    rows = [README_START, "| key | default | allowed | meaning |", "|---|---|---|---|"]
    for k in KEYS:
        default = yaml_scalar(k.default)
        rows.append(f"| `{k.key}` | `{default}` | {_cell(k.constraint)} | {_cell(k.help)} |")
    rows.append(README_END)
    return "\n".join(rows)


_TABLE = re.compile(re.escape("<!-- parameters:start") + r".*?" + re.escape(README_END), re.DOTALL)


def readme_with_table(readme: str) -> str:
    """``readme`` with the text between the parameter markers replaced by :func:`readme_table`."""
    if not _TABLE.search(readme):
        raise ValueError(f"README has no {README_END.replace('end', 'start')} ... {README_END} markers")
    return _TABLE.sub(lambda _m: readme_table(), readme, count=1)
