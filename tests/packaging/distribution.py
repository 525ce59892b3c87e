"""The wheel as pip builds it from the source tree, and a fresh virtualenv with it installed (not editable).

`python -m tests.packaging.distribution DIR` builds into DIR/dist and installs into DIR/venv: `.ci/run` does
so before the suite and names DIR/venv in GATEWAY_INSTALLED_VENV; without it, the tests build their own.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
INSTALLED_VENV = "GATEWAY_INSTALLED_VENV"
BUILD_SECONDS = 300
INSTALL_SECONDS = 900


class BuildFailed(RuntimeError):
    """pip could not build the wheel or install it; the message carries pip's output."""


def source_copy(destination: Path, source: Path = REPO) -> Path:
    """The tree as git sees it (tracked files and new ones not ignored), copied to `destination`.

    Building from a copy keeps stale build/ output of an earlier build (which setuptools would put in the wheel)
    and the checkout's caches out of the result, and leaves the checkout as it was.
    """
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=source,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        origin = source / name
        if origin.is_file():  # a tracked file deleted from the work tree is listed too
            target = destination / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(origin, target)
    return destination


def build_wheel(source: Path, output: Path) -> Path:
    """`pip wheel` on `source`, in pip's isolated build environment (setuptools from the package index)."""
    _pip(sys.executable, "wheel", "--no-deps", "--wheel-dir", str(output), str(source), timeout=BUILD_SECONDS)
    [wheel] = output.glob("gateway-*.whl")
    return wheel


def install(wheel: Path, venv: Path) -> Path:
    """A fresh virtualenv at `venv` with `wheel` and its dependencies installed; returns `venv`."""
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=BUILD_SECONDS)
    _pip(str(venv / "bin" / "python"), "install", str(wheel), timeout=INSTALL_SECONDS)
    return venv


def _pip(python: str, *args: str, timeout: float) -> None:
    result = subprocess.run(
        [python, "-m", "pip", "--quiet", "--disable-pip-version-check", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if result.returncode != 0:
        raise BuildFailed(f"pip {' '.join(args)} failed:\n{result.stdout}{result.stderr}")


def main(argv: list[str]) -> int:
    [directory] = [Path(arg).resolve() for arg in argv]
    wheel = build_wheel(source_copy(directory / "source"), directory / "dist")
    shutil.rmtree(directory / "source")
    install(wheel, directory / "venv")
    print(f"{INSTALLED_VENV}={directory / 'venv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
