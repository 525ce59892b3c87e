"""The body rewrites of the proxied routes: what the gateway changes in a client's request, and nothing more."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import urlsplit

from gateway.errors import InvalidRequestError

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".gif", ".webp", ".avif", ".bmp", ".tiff", ".tif"})


def force_stream_usage(body: dict[str, Any]) -> dict[str, Any] | None:
    """On a streamed chat completion, ask for the usage chunk (`stream_options.include_usage`), keeping other options.

    The gateway needs the provider's own token counts for every stream; without them streams would be free.
    """
    if body.get("stream") is not True:
        return None
    options = body.get("stream_options")
    if options is None:
        options = {}
    elif not isinstance(options, dict):
        raise InvalidRequestError("stream_options must be an object.", param="stream_options")
    if options.get("include_usage") is True:
        return None
    return {**body, "stream_options": {**options, "include_usage": True}}


@dataclass(frozen=True, slots=True)
class OcrDocumentFromUrl:
    """Turns the gateway's short form `{"url": ...}` into a Mistral OCR document, with the default model."""

    default_model: str

    def __call__(self, body: dict[str, Any]) -> dict[str, Any] | None:
        if "document" in body or "documents" in body:
            return None
        url = body.get("url")
        if url is None:
            raise InvalidRequestError("Give one of document, documents or url.", param="document")
        if not isinstance(url, str) or not url.strip():
            raise InvalidRequestError("url must be a non-empty string.", param="url")
        rewritten = {key: value for key, value in body.items() if key != "url"}
        rewritten["document"] = ocr_document(url)
        if not rewritten.get("model"):
            rewritten["model"] = self.default_model
        return rewritten


def ocr_document(url: str) -> dict[str, str]:
    """A Mistral OCR document for `url`: an image when its path (or data URL) says it is one."""
    if is_image_url(url):
        return {"type": "image_url", "image_url": url}
    return {"type": "document_url", "document_url": url}


def is_image_url(url: str) -> bool:
    """Whether `url` points at an image, by its file extension or its data URL media type."""
    if url[:5].lower() == "data:":
        return url[5:11].lower() == "image/"
    return PurePosixPath(urlsplit(url).path).suffix.lower() in IMAGE_EXTENSIONS
