"""What the image tests need around buildah: a Debian bookworm base made with debootstrap (kept in
buildah's store, so it is made once per machine) and this machine's pip setup handed to the build.

pip inside the build sees nothing of the host: where the host reaches the package registries only
through its pip setup (a config file naming a CA bundle, local wheel folders, file:// indexes,
constraint files), the build must get the same. `pip_setup_options` reads the setup pip actually uses
here (`pip config list`: files and PIP_* variables), writes it into one config file, and mounts it as
the build's /etc/pip.conf together with every local file and folder it names, read-only. Paths that
do not exist are left out, so a machine with no special setup builds with none.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from urllib.parse import urlparse

BASE_TAG = "localhost/workbench-base:bookworm"
DEBIAN_MIRROR = "http://deb.debian.org/debian"

# pip options whose values name local files or folders (several, separated by spaces, for some)
_PATH_OPTIONS = {"cert", "client-cert", "find-links", "index-url", "extra-index-url", "constraint"}
# where the build sees the files among them
_MOUNT_ROOT = "/tmp/workbench-pip-setup"
_PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy")


def pip_config() -> dict[str, str]:
    """pip's effective options here."""
    listed = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True, check=False
    ).stdout
    options: dict[str, str] = {}
    # listed by name; the PIP_* variables (scope `:env:`) override the files
    for line in sorted(listed.splitlines(), key=lambda ln: ln.startswith(":env:")):
        name, sep, value = line.partition("=")
        if not sep:
            continue
        key = name.rsplit(".", 1)[-1]
        try:
            options[key] = str(ast.literal_eval(value))
        except (SyntaxError, ValueError):
            options[key] = value
    return options


def _local_path(token: str) -> Path | None:
    if token.startswith("file:"):
        return Path(urlparse(token).path)
    if "://" in token:
        return None
    return Path(token)


def pip_setup_options(workdir: Path) -> list[str]:
    """buildah options that give the build this machine's pip setup (see the module's docstring)."""
    mounts: dict[Path, Path] = {}
    lines = ["[global]"]
    for key, value in pip_config().items():
        kept = []
        for token in value.split():
            path = _local_path(token)
            if path is None:
                kept.append(token)
                continue
            if not path.exists():
                continue
            path = path.resolve()
            if path.is_file():
                # not at its own path, which a package may rewrite (ca-certificates rewrites
                # /etc/ssl/certs/ca-certificates.crt) and a read-only mount would break
                inside = mounts.setdefault(path, Path(_MOUNT_ROOT) / f"{len(mounts)}-{path.name}")
                kept.append(str(inside))
                continue
            # a folder keeps its path; an index's pages link to files beside it (../../files/...)
            folder = path.parent if key.endswith("index-url") and path.parent != path.parent.parent else path
            mounts.setdefault(folder, folder)
            kept.append(token)
        if kept or key not in _PATH_OPTIONS:
            lines.append(f"{key} = {' '.join(kept) if kept else value}")
    conf = workdir / "pip.conf"
    conf.write_text("\n".join(lines) + "\n")
    options = ["--volume", f"{conf}:/etc/pip.conf:ro"]
    for path, inside in mounts.items():
        options += ["--volume", f"{path}:{inside}:ro"]
    for name in _PROXY_VARIABLES:  # buildah passes these build arguments to RUN, as docker does
        if os.environ.get(name):
            options += ["--build-arg", f"{name}={os.environ[name]}"]
    return options


def has_image(name: str) -> bool:
    return subprocess.run(["buildah", "inspect", "--type", "image", name], capture_output=True).returncode == 0


def bookworm_base() -> str:
    """A Debian bookworm minbase image in buildah's store, made with debootstrap the first time (about
    two minutes) and reused after: the image tests build on it, as Debian's archive is reachable where
    no container registry is."""
    if has_image(BASE_TAG):
        return BASE_TAG
    if shutil.which("debootstrap") is None:
        raise RuntimeError("the image tests make their base with debootstrap: install the debootstrap package")
    container = subprocess.run(
        ["buildah", "from", "scratch"], capture_output=True, text=True, check=True
    ).stdout.strip()
    try:
        root = subprocess.run(["buildah", "mount", container], capture_output=True, text=True, check=True)
        with tempfile.TemporaryDirectory() as cache:  # debootstrap's downloads stay out of the image
            subprocess.run(
                [
                    "debootstrap",
                    "--variant=minbase",
                    "--include=ca-certificates",
                    f"--cache-dir={cache}",
                    *("bookworm", root.stdout.strip(), DEBIAN_MIRROR),
                ],
                capture_output=True,
                text=True,
                check=True,
            )
        subprocess.run(["buildah", "umount", container], capture_output=True, check=True)
        subprocess.run(["buildah", "commit", "--rm", container, BASE_TAG], capture_output=True, check=True)
    except BaseException:
        subprocess.run(["buildah", "rm", container], capture_output=True)
        raise
    return BASE_TAG
