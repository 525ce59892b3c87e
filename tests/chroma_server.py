"""A real Chroma server (the `chromadb` package's `chroma run`) on a loopback port, for the tests' whole session."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from tests.serving import free_port

CHROMA = str(Path(sys.executable).parent / "chroma")
START_SECONDS = 30.0


@contextmanager
def chroma_server(data_dir: Path) -> Iterator[str]:
    """Starts `chroma run` on a free port with its data in `data_dir`; yields its base URL."""
    port = free_port()
    log = data_dir / "chroma.log"
    with log.open("w") as output:
        process = subprocess.Popen(
            [CHROMA, "run", "--path", str(data_dir / "data"), "--host", "127.0.0.1", "--port", str(port)],
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_SECONDS
        while True:
            try:
                if httpx.get(f"{url}/api/v2/heartbeat", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"chroma did not start:\n{log.read_text()}")
            time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
