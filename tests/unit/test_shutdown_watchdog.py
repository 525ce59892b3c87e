"""The shutdown watchdog's exit status, in a real process (it ends one with os._exit): 0 when the drain was done
and only the event loop's own end overran, 1 when the drain itself did."""

from __future__ import annotations

import subprocess
import sys

import pytest

SCRIPT = """
import threading, time
from gateway.serving.shutdown import _exit_after
drained = threading.Event()
if {drained}:
    drained.set()
_exit_after(0.2, drained=drained)
time.sleep(30)  # a shutdown that does not end
"""


@pytest.mark.parametrize(
    ("drained", "status", "line"), [(True, 0, "event loop's end"), (False, 1, "shutdown")]
)
def test_the_watchdog_ends_a_stuck_shutdown_with_the_status_of_its_drain(
    drained: bool, status: int, line: str
) -> None:
    ended = subprocess.run(
        [sys.executable, "-c", SCRIPT.format(drained=drained)], capture_output=True, text=True, timeout=20
    )

    assert ended.returncode == status, ended.stderr
    assert f"{line} still running 0.2 s after" in ended.stderr
