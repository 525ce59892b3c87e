"""The body rewrites: what changes, and that an unchanged body is reported as unchanged (no re-serialising)."""

from __future__ import annotations

import pytest

from gateway.errors import InvalidRequestError
from gateway.rewrites import OcrDocumentFromUrl, force_stream_usage, is_image_url


def test_non_streamed_chat_is_left_alone() -> None:
    assert force_stream_usage({"model": "m", "stream": False}) is None
    assert force_stream_usage({"model": "m"}) is None
    assert force_stream_usage({"model": "m", "stream": "true"}) is None  # not a stream: the upstream decides


def test_stream_that_already_asks_for_usage_is_left_alone() -> None:
    assert force_stream_usage({"stream": True, "stream_options": {"include_usage": True}}) is None


def test_stream_gets_include_usage_and_keeps_the_rest() -> None:
    body = {"stream": True, "stream_options": {"include_obfuscation": False, "include_usage": False}}

    assert force_stream_usage(body) == {
        "stream": True,
        "stream_options": {"include_obfuscation": False, "include_usage": True},
    }
    assert body["stream_options"] == {"include_obfuscation": False, "include_usage": False}  # input untouched


def test_null_stream_options_become_an_object() -> None:
    assert force_stream_usage({"stream": True, "stream_options": None}) == {
        "stream": True,
        "stream_options": {"include_usage": True},
    }


@pytest.mark.parametrize("options", ["yes", 1, [True]])
def test_stream_options_must_be_an_object(options: object) -> None:
    with pytest.raises(InvalidRequestError):
        force_stream_usage({"stream": True, "stream_options": options})


def test_ocr_document_wins_over_url() -> None:
    rewrite = OcrDocumentFromUrl(default_model="d")

    assert rewrite({"document": {"type": "document_url", "document_url": "u"}, "url": "x.png"}) is None
    assert rewrite({"documents": []}) is None


def test_ocr_null_model_gets_the_default() -> None:
    assert OcrDocumentFromUrl(default_model="d")({"url": "https://e.x/a.pdf", "model": None})["model"] == "d"


@pytest.mark.parametrize(
    ("url", "image"),
    [
        ("https://e.x/a.PNG", True),
        ("https://e.x/a.avif?x=1", True),
        ("https://e.x/a.bmp", True),
        ("https://e.x/png", False),
        ("https://e.x/a.png.pdf", False),
        ("data:image/jpeg;base64,AA", True),
        ("data:application/pdf;base64,AA", False),
        ("https://e.x/", False),
    ],
)
def test_image_urls_are_told_by_extension(url: str, image: bool) -> None:
    assert is_image_url(url) is image
