"""A fake Mistral OCR upstream: records the request and answers a two-page result."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tests.fakes.recording import Recorder


class FakeMistral:
    def __init__(self) -> None:
        self.recorder = Recorder()
        self.app = Starlette(routes=[Route("/v1/ocr", self.ocr, methods=["POST"])])

    async def ocr(self, request: Request) -> JSONResponse:
        body = (await self.recorder.record(request)).json()
        pages = [{"index": i, "markdown": f"# page {i}", "images": [], "dimensions": None} for i in range(2)]
        return JSONResponse(
            {
                "pages": pages,
                "model": body.get("model"),
                "document_annotation": None,
                "usage_info": {"pages_processed": 2, "doc_size_bytes": 1234},
            }
        )
