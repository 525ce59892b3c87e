"""The soak's fake upstreams (`make soak`): the tests' fake OpenAI and Mistral OCR on one port, in a process of
their own so that they take no time from the load generator's event loop.

Each fake keeps only its last requests: the tests read them all back, a ten-minute soak would only grow on them.

Run: `python bench/soak_upstream.py --port 9101`.
"""

from __future__ import annotations

import argparse
import collections
import sys
from pathlib import Path

import uvicorn
from starlette.applications import Starlette

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.fakes.mistral_ocr import FakeMistral
from tests.fakes.openai_upstream import FakeOpenAI

KEPT_REQUESTS = 100


def app() -> Starlette:
    """Both fakes' routes (`/v1/chat/completions`, `/v1/ocr`) in one app."""
    openai, mistral = FakeOpenAI(), FakeMistral()
    for fake in (openai, mistral):
        fake.recorder.requests = collections.deque(maxlen=KEPT_REQUESTS)  # type: ignore[assignment]
    return Starlette(routes=[*openai.app.routes, *mistral.app.routes])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvicorn.run(app(), host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
