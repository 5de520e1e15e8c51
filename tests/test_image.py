"""The container image: its pins install on the bases' Python, its entry point, the ECS task
definitions, and the image itself, built with buildah on a Debian bookworm base and run: the
pipeline inside it (MXNet parity PASS) and `serve` answering SageMaker's routes."""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import tarfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import botocore.session
import botocore.validate
import pandas as pd
import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version
from support.cli import FEW, run_id_of
from support.image import bookworm_base, pip_setup_options

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
TASK_NAMES = ("ecs-task-definition.json", "ecs-task-definition-gpu.json")
TASK_DEFINITIONS = [ROOT / "deploy" / name for name in TASK_NAMES]


def base_pythons() -> dict[str, str]:
    """The Dockerfile's `# BASE_PYTHONS: name=version ...` line: the python3.11 each supported base
    installs from its archive (Ubuntu 22.04's universe: 3.11.0~rc1; Debian bookworm's main: 3.11.2)."""
    [line] = [ln for ln in DOCKERFILE.read_text().splitlines() if ln.startswith("# BASE_PYTHONS:")]
    return dict(item.split("=") for item in line.split(":", 1)[1].split())


def test_the_dockerfile_builds_on_debian_with_torch_from_pypi_by_default():
    """PyPI's Linux torch wheel brings its CUDA libraries, so the default image serves a GPU on a
    plain Debian base: the base the image tests build on (bookworm) is the default's release."""
    text = DOCKERFILE.read_text()
    default = re.search(r"^ARG BASE_IMAGE=(\S+)$", text, re.MULTILINE)
    assert default and default.group(1) == "debian:bookworm-slim"
    assert re.search(r"^ARG TORCH_INDEX=https://pypi.org/simple$", text, re.MULTILINE)
    assert set(base_pythons()) == {"ubuntu22.04", "bookworm"}


def test_the_lock_installs_on_the_image_python():
    """pip refuses a pin whose Requires-Python the base's interpreter misses (soupsieve 4.x wants
    >= 3.11.5), which only a full image build would show. pip compares the release numbers of the
    running interpreter (`sys.version_info[:3]`), so 3.11.0rc1 counts as 3.11.0. The Requires-Python
    comes from the installed distribution of the same version in this environment."""
    pythons = {base: ".".join(map(str, Version(v).release)) for base, v in base_pythons().items()}
    refused, unchecked = [], []
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        req = Requirement(line)
        [pin] = req.specifier
        try:
            dist = importlib.metadata.distribution(req.name)
        except importlib.metadata.PackageNotFoundError:
            unchecked.append(f"{req.name} (not installed)")
            continue
        if Version(dist.version).public != Version(pin.version).public:
            unchecked.append(f"{req.name} (installed {dist.version}, locked {pin.version})")
            continue
        requires = SpecifierSet(dist.metadata.get("Requires-Python") or "")
        refused += [
            f"{line} needs Python {requires}; {base} has {v}" for base, v in pythons.items() if v not in requires
        ]
    assert not unchecked, f"this environment differs from requirements.lock (run make setup): {unchecked}"
    assert not refused, "\n".join(refused)


# --- the entry point -------------------------------------------------------------------------------


@pytest.fixture
def entry(tmp_path: Path):
    """Runs deploy/entrypoint.sh with a stand-in `workbench` that prints the arguments it got."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "workbench"
    fake.write_text('#!/bin/sh\nfor a in "$@"; do printf "%s\\n" "$a"; done\n')
    fake.chmod(0o755)
    model_dir = tmp_path / "opt-ml-model"

    def call(*args: str, **env: str) -> list[str]:
        environ = {"PATH": f"{bin_dir}:/usr/bin:/bin", "WORKBENCH_SAGEMAKER_MODEL_DIR": str(model_dir), **env}
        proc = subprocess.run(
            ["/bin/sh", str(ROOT / "deploy" / "entrypoint.sh"), *args],
            capture_output=True,
            text=True,
            env=environ,
            check=True,
        )
        return proc.stdout.splitlines()

    call.model_dir = model_dir
    return call


def test_the_image_runs_the_pipeline_by_default(entry):
    assert entry("run") == ["run"]  # the Dockerfile's CMD
    assert entry("run", "-p", "parameters/gpu.yaml") == ["run", "-p", "parameters/gpu.yaml"]
    assert 'CMD ["run"]' in DOCKERFILE.read_text()


def test_nightly_trains_promotes_through_the_gate_and_scores_with_the_champion(tmp_path):
    """deploy/nightly.sh through the entry point, with a stand-in `workbench` that logs each call,
    says `run r1 finished` for a run and exits as told for the promotion."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "calls"
    fake = bin_dir / "workbench"
    fake.write_text(
        f'#!/bin/sh\necho "$*" >> {log}\n'
        'if [ "$1" = run ]; then echo "run r1 finished"; fi\n'
        'if [ "$1" = models ] && [ -n "$PROMOTE_EXIT" ]; then echo "error: ${PROMOTE_SAYS:-}" >&2; exit "$PROMOTE_EXIT"; fi\n'
    )
    fake.chmod(0o755)

    def nightly(**env: str) -> subprocess.CompletedProcess:
        log.unlink(missing_ok=True)
        return subprocess.run(
            ["/bin/sh", str(ROOT / "deploy" / "entrypoint.sh"), "nightly", "-p", "prod.yaml"],
            capture_output=True,
            text=True,
            env={"PATH": f"{bin_dir}:/usr/bin:/bin", **env},
        )

    done = nightly(NIGHTLY_REQUIRE="test_roc_auc>=0.8", PUBLISH_URL="postgresql+psycopg://u@h/db")
    assert done.returncode == 0, done.stderr
    assert log.read_text().splitlines() == [
        "run -p prod.yaml",
        "models promote r1 --alias champion --better-than champion --metric test_accuracy "
        "--require test_roc_auc>=0.8 -p prod.yaml --reason nightly refresh",
        "run --steps score --set score.model_run=@champion -p prod.yaml --set publish.url=postgresql+psycopg://u@h/db",
    ]
    # the gate kept the champion: scoring goes on with it
    held = nightly(PROMOTE_EXIT="1", PROMOTE_SAYS="run r1 not promoted to @champion: test_accuracy 0.9 is not above")
    assert held.returncode == 0 and log.read_text().splitlines()[-1].startswith("run --steps score")
    assert "not promoted to @champion" in held.stderr
    for code, says in (("1", "db 'sqlite:///x.db' is unreachable"), ("2", "--metric 'x': not a score")):
        broken = nightly(PROMOTE_EXIT=code, PROMOTE_SAYS=says)  # any other error stops the chain
        assert broken.returncode == int(code) and len(log.read_text().splitlines()) == 2


def test_the_image_runs_a_dask_scheduler_or_worker(entry, tmp_path):
    """`docker run IMAGE dask worker tcp://...`: the image is a worker of an engine: dask cluster."""
    fake = tmp_path / "bin" / "dask"  # the entry fixture's bin folder, first on PATH
    fake.write_text('#!/bin/sh\necho dask "$@"\n')
    fake.chmod(0o755)
    assert entry("dask", "worker", "tcp://10.0.0.9:8786") == ["dask worker tcp://10.0.0.9:8786"]


def test_serve_binds_port_8080_on_every_interface(entry):
    assert entry("serve") == ["serve", "--set", "serve.host=0.0.0.0", "--set", "serve.port=8080"]


def test_serve_takes_the_model_sagemaker_unpacked(entry):
    entry.model_dir.mkdir()
    (entry.model_dir / "model.pth").write_bytes(b"")
    args = entry("serve", WORKBENCH_MODEL="s3://b/m.tar.gz")
    assert f"serve.model={entry.model_dir}" in args and "serve.model=s3://b/m.tar.gz" not in args


def test_serve_takes_the_model_from_the_environment_without_sagemaker(entry):
    entry.model_dir.mkdir()  # SageMaker's folder present but empty: no model there
    args = entry("serve", WORKBENCH_MODEL="s3://bucket/run/model.tar.gz")
    assert "serve.model=s3://bucket/run/model.tar.gz" in args


def test_arguments_after_serve_come_last_and_win(entry):
    args = entry("serve", "--set", "serve.model=/models/run", WORKBENCH_MODEL="s3://b/m.tar.gz")
    assert args[-2:] == ["--set", "serve.model=/models/run"]
    assert args.index("serve.model=s3://b/m.tar.gz") < args.index("serve.model=/models/run")


def test_the_entry_point_is_the_script():
    text = DOCKERFILE.read_text()
    assert 'ENTRYPOINT ["/bin/sh", "/app/deploy/entrypoint.sh"]' in text
    assert "COPY deploy/entrypoint.sh deploy/nightly.sh ./deploy/" in text
    assert "EXPOSE 8080" in text


# --- ECS ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", TASK_DEFINITIONS, ids=lambda p: p.name)
def test_the_task_definition_serves_on_8080_with_a_health_check(path: Path):
    task = json.loads(path.read_text())
    # the shapes AWS accepts: botocore's own model of RegisterTaskDefinition, offline
    shape = botocore.session.get_session().get_service_model("ecs").operation_model("RegisterTaskDefinition")
    botocore.validate.validate_parameters(task, shape.input_shape)
    [container] = task["containerDefinitions"]
    assert container["command"] == ["serve"]
    assert [(p["containerPort"], p["protocol"]) for p in container["portMappings"]] == [(8080, "tcp")]
    check = container["healthCheck"]["command"]
    # what the check calls must be in the image: the venv's interpreter, no curl
    assert check[:2] == ["CMD", "/opt/venv/bin/python"] and "http://127.0.0.1:8080/ping" in check[-1]
    env = {e["name"]: e["value"] for e in container["environment"]}
    assert {"WORKBENCH_MODEL", "AWS_REGION", "AWS_DEFAULT_REGION"} <= set(env)
    assert container["logConfiguration"]["logDriver"] == "awslogs"
    assert container["logConfiguration"]["options"]["awslogs-region"] == "${AWS_REGION}"


def test_the_gpu_task_definition_asks_for_a_gpu():
    cpu, gpu = (json.loads((ROOT / "deploy" / n).read_text()) for n in TASK_NAMES)
    [container] = gpu["containerDefinitions"]
    assert container["resourceRequirements"] == [{"type": "GPU", "value": "1"}]
    assert gpu["requiresCompatibilities"] == ["EC2"]  # Fargate has no GPUs
    assert "resourceRequirements" not in cpu["containerDefinitions"][0]


# --- the built image ---------------------------------------------------------------------------------

BASE_IMAGE_VAR = "WORKBENCH_TEST_BASE_IMAGE"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _http(method: str, url: str, body: bytes | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The project's image built by `make image` with buildah, on Debian bookworm made with
    debootstrap (`make test` installs both as root) or on ${WORKBENCH_TEST_BASE_IMAGE}, an image in
    buildah's store. The build gets this machine's pip setup (tests/support/image.py);
    WORKBENCH_TEST_TORCH_INDEX and WORKBENCH_TEST_IMAGE_BUILD_OPTS pass on to it. buildah's layer
    cache keeps the dependency layer, so a rebuild after a code change takes seconds."""
    if shutil.which("buildah") is None:
        pytest.skip("buildah is not installed (make test installs it as root): the image tests build with it")
    base = os.environ.get(BASE_IMAGE_VAR) or bookworm_base()
    options = pip_setup_options(tmp_path_factory.mktemp("pip-setup"))
    options += shlex.split(os.environ.get("WORKBENCH_TEST_IMAGE_BUILD_OPTS", ""))
    tag = "localhost/workbench-test"
    build = subprocess.run(
        [
            "make",
            "image",
            f"IMAGE={tag}",
            f"BASE_IMAGE={base}",
            f"TORCH_INDEX={os.environ.get('WORKBENCH_TEST_TORCH_INDEX', '')}",
            f"IMAGE_BUILD_OPTS={shlex.join(options)}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=3600,
        env={**os.environ, "BUILDAH_ISOLATION": "chroot"},
    )
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    return tag


class Container:
    """A container of the image, run with `buildah run` under chroot isolation (no daemon, no user
    namespaces; it shares this host's network). `buildah run` ignores ENTRYPOINT, so each command
    names the entry script, as `docker run IMAGE ...` would run it."""

    def __init__(self, image: str) -> None:
        self.name = subprocess.run(["buildah", "from", image], capture_output=True, text=True, check=True).stdout
        self.name = self.name.strip()

    def command(self, *args: str, mounts: tuple[str, ...] = (), env: tuple[str, ...] = ()) -> list[str]:
        options = [f"--volume={m}" for m in mounts] + [f"--env={e}" for e in env]
        return ["buildah", "run", "--isolation", "chroot", *options, self.name, "--", *args]

    def entry(self, *args: str, **kwargs) -> list[str]:
        return self.command("/bin/sh", "/app/deploy/entrypoint.sh", *args, **kwargs)

    def remove(self) -> None:
        subprocess.run(["buildah", "rm", self.name], capture_output=True)


@pytest.fixture(scope="module")
def image_run(image: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`docker run -v ARTIFACTS:/app/artifacts IMAGE run ...`: the whole pipeline inside the image on
    its bundled data, the export step also writing SageMaker's model.tar.gz. Its run folder."""
    artifacts = tmp_path_factory.mktemp("image-artifacts")
    artifacts.chmod(0o777)  # the image runs as uid 1000
    container = Container(image)
    try:
        sets = [f"--set={item}" for item in (*FEW, "export.sagemaker=true")]
        result = subprocess.run(
            container.entry("run", *sets, mounts=(f"{artifacts}:/app/artifacts",)),
            capture_output=True,
            text=True,
            timeout=1800,
        )
    finally:
        container.remove()
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return artifacts / "runs" / run_id_of(result.stdout)


@pytest.mark.e2e
def test_the_image_runs_the_pipeline_with_mxnet_parity(image_run: Path):
    parity = json.loads((image_run / "validate" / "parity.json").read_text())
    assert parity["verdict"] == "PASS", parity["reasons"]
    assert (image_run / "report" / "index.html").is_file()
    assert (image_run / "export" / "model.tar.gz").is_file()


@pytest.mark.e2e
@pytest.mark.parametrize("source", ["sagemaker", "run-folder"])
def test_the_image_serves(image: str, image_run: Path, source: str, tmp_path: Path):
    """`serve` inside the image answers SageMaker's /ping and /invocations: for model.tar.gz
    unpacked where SageMaker puts it (/opt/ml/model), and for a run folder named by WORKBENCH_MODEL."""
    if source == "sagemaker":
        model = tmp_path / "model"
        model.mkdir()
        with tarfile.open(image_run / "export" / "model.tar.gz") as archive:
            archive.extractall(model, filter="data")
        mounts, env = (f"{model}:/opt/ml/model:ro",), ()
    else:
        mounts, env = (f"{image_run}:/models/run:ro",), ("WORKBENCH_MODEL=/models/run",)
    port = _free_port()
    container = Container(image)
    log_path = tmp_path / "serve.log"
    log = log_path.open("w")
    server = subprocess.Popen(
        container.entry("serve", "--set", f"serve.port={port}", mounts=mounts, env=env),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 180
        while True:
            assert server.poll() is None, f"serve exited {server.returncode}: {log_path.read_text()[-3000:]}"
            try:
                status, _ = _http("GET", f"http://127.0.0.1:{port}/ping")
                if status == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, f"no answer on /ping: {log_path.read_text()[-3000:]}"
            time.sleep(1)
        # the ECS task definition's health check, run inside the container (its port made this one)
        [check] = (
            c["healthCheck"]["command"] for c in json.loads(TASK_DEFINITIONS[0].read_text())["containerDefinitions"]
        )
        check = [part.replace(":8080/", f":{port}/") for part in check[1:]]
        probe = subprocess.run(container.command(*check), capture_output=True)
        assert probe.returncode == 0, probe.stderr
        rows = pd.read_csv(ROOT / "workbench" / "data" / "digits.csv.gz").head(5)
        records = rows.drop(columns=["label"]).to_dict("records")
        status, body = _http("POST", f"http://127.0.0.1:{port}/invocations", json.dumps(records).encode())
        assert status == 200, body
        predictions = json.loads(body)["predictions"]
        assert len(predictions) == 5 and {str(p) for p in predictions} <= {str(c) for c in range(10)}
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        container.remove()
        log.close()
