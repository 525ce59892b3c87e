"""The wheel, built once per session from a copy of the source tree, and the virtualenv it is installed in."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.packaging.distribution import INSTALLED_VENV, build_wheel, install, source_copy


@dataclass(frozen=True)
class Build:
    """A wheel and the source tree it was built from."""

    source: Path
    wheel: Path


@pytest.fixture(scope="session")
def build(tmp_path_factory: pytest.TempPathFactory) -> Build:
    root = tmp_path_factory.mktemp("build")
    source = source_copy(root / "source")
    return Build(source, build_wheel(source, root / "dist"))


@pytest.fixture(scope="session")
def installed_venv(request: pytest.FixtureRequest) -> Iterator[Path]:
    """The virtualenv the gateway is installed in from its wheel: GATEWAY_INSTALLED_VENV (set by .ci/run), else
    one made here from the session's wheel. Kept where any user can read it, for the unprivileged runs."""
    given = os.environ.get(INSTALLED_VENV)
    if given:
        assert (Path(given) / "bin" / "gateway").is_file(), f"{INSTALLED_VENV}={given}: no bin/gateway there"
        yield Path(given)
        return
    wheel: Path = request.getfixturevalue("build").wheel
    directory = Path(tempfile.mkdtemp(prefix="gateway-wheel-venv-"))
    try:
        directory.chmod(0o755)
        yield install(wheel, directory / "venv")
    finally:
        shutil.rmtree(directory)
