"""The built wheel holds every file under gateway/ and migrations/ (the latter as gateway.migrations), and a
module added under gateway/ lands in it with no other change: nothing in the build lists them by hand."""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

from tests.packaging.conftest import Build
from tests.packaging.distribution import build_wheel

# Source folder -> where its files sit in the wheel.
SHIPPED = {"gateway": "gateway", "migrations": "gateway/migrations"}


def wheel_files(wheel: Path) -> set[str]:
    with zipfile.ZipFile(wheel) as archive:
        return {name for name in archive.namelist() if not name.endswith("/")}


def source_files(source: Path) -> set[str]:
    """Each file under the shipped folders, named as it should sit in the wheel; bytecode aside."""
    names = set()
    for folder, package in SHIPPED.items():
        for path in (source / folder).rglob("*"):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
                names.add(f"{package}/{path.relative_to(source / folder).as_posix()}")
    return names


def test_every_module_and_data_file_is_in_the_wheel(build: Build) -> None:
    expected = source_files(build.source)

    assert {"gateway/http1/__init__.py", "gateway/usage/prices.json"} <= expected
    assert {"gateway/migrations/env.py", "gateway/migrations/script.py.mako"} <= expected
    assert sorted(expected - wheel_files(build.wheel)) == []


def test_the_wheel_ships_nothing_else_of_the_tree(build: Build) -> None:
    """Only the two trees and the wheel's metadata: no tests, benchmarks or top-level migrations package."""
    shipped = wheel_files(build.wheel)
    metadata = {name for name in shipped if name.split("/", 1)[0].endswith(".dist-info")}

    assert sorted(shipped - metadata - source_files(build.source)) == []


def test_a_module_added_under_gateway_lands_in_the_wheel(build: Build, tmp_path: Path) -> None:
    source = shutil.copytree(build.source, tmp_path / "source")
    added = {
        "gateway/_probe.py": "PROBE = 1\n",
        # A new folder without __init__.py, with a module and a file that is not Python.
        "gateway/_probe_pkg/x.py": "X = 1\n",
        "gateway/_probe_pkg/static/probe.svg": "<svg/>\n",
        "migrations/versions/_probe_revision.py": "revision = 'probe'\n",
    }
    bytecode = [
        "gateway/__pycache__/_probe.cpython-311.pyc",
        "gateway/_probe_pkg/__pycache__/x.cpython-311.pyc",
    ]
    for name, text in added.items():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        (source / name).write_text(text)
    for name in bytecode:
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        (source / name).write_bytes(b"\0")

    shipped = wheel_files(build_wheel(source, tmp_path / "dist"))

    assert {
        "gateway/_probe.py",
        "gateway/_probe_pkg/x.py",
        "gateway/_probe_pkg/static/probe.svg",
        "gateway/migrations/versions/_probe_revision.py",
    } <= shipped
    assert not [name for name in shipped if "__pycache__" in name or name.endswith(".pyc")]
