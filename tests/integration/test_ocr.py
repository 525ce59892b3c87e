"""`POST /v1/ocr` through the gateway: the `url` short form, the default model, pass-through, errors."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import UPSTREAM_MISTRAL_KEY, GatewayFactory
from tests.fakes.mistral_ocr import FakeMistral
from tests.serving import LiveServer, free_port


def ocr(gateway: LiveServer, body: object, **headers: str) -> httpx.Response:
    return httpx.post(f"{gateway.url}/v1/ocr", json=body, headers=headers)


@pytest.mark.parametrize(
    "url",
    [
        "https://example.com/scan.png",
        "https://example.com/a/photo.JPG?sig=1",
        "https://x.test/p.webp#frag",
        "https://x.test/f.tiff",
        "data:image/png;base64,iVBORw0KGgo=",
    ],
)
def test_image_url_becomes_an_image_document(
    gateway: LiveServer, fake_mistral: FakeMistral, url: str
) -> None:
    response = ocr(gateway, {"url": url})

    assert response.status_code == 200
    sent = fake_mistral.recorder.last.json()
    assert sent["document"] == {"type": "image_url", "image_url": url}
    assert "url" not in sent


@pytest.mark.parametrize(
    "url",
    [
        "https://arxiv.org/pdf/2201.04234",
        "https://example.com/report.pdf",
        "https://example.com/png/readme.txt",
    ],
)
def test_other_url_becomes_a_document_url(gateway: LiveServer, fake_mistral: FakeMistral, url: str) -> None:
    ocr(gateway, {"url": url})

    assert fake_mistral.recorder.last.json()["document"] == {"type": "document_url", "document_url": url}


def test_url_without_model_gets_the_default_model(gateway: LiveServer, fake_mistral: FakeMistral) -> None:
    response = ocr(gateway, {"url": "https://example.com/a.pdf", "include_image_base64": True})

    sent = fake_mistral.recorder.last.json()
    assert sent["model"] == "mistral-ocr-latest"
    assert sent["include_image_base64"] is True
    assert response.json()["model"] == "mistral-ocr-latest"


def test_url_with_model_keeps_it(gateway: LiveServer, fake_mistral: FakeMistral) -> None:
    ocr(gateway, {"url": "https://example.com/a.pdf", "model": "mistral-ocr-2505"})

    assert fake_mistral.recorder.last.json()["model"] == "mistral-ocr-2505"


def test_default_model_comes_from_the_settings(
    start_gateway: GatewayFactory, fake_mistral: FakeMistral
) -> None:
    with start_gateway(MISTRAL_OCR_MODEL="mistral-ocr-custom") as gateway:
        ocr(gateway, {"url": "https://example.com/a.pdf"})

    assert fake_mistral.recorder.last.json()["model"] == "mistral-ocr-custom"


def test_document_passes_through_byte_for_byte(gateway: LiveServer, fake_mistral: FakeMistral) -> None:
    body = b'{"model": "mistral-ocr-latest",  "document": {"type": "document_url", "document_url": "https://e.x/a.pdf"}}'
    response = httpx.post(f"{gateway.url}/v1/ocr", content=body)

    assert response.status_code == 200
    assert fake_mistral.recorder.last.body == body


def test_response_is_the_upstream_answer_and_the_upstream_gets_its_key(
    gateway: LiveServer, fake_mistral: FakeMistral
) -> None:
    response = ocr(gateway, {"documents": [{"type": "document_url", "document_url": "https://e.x/a.pdf"}]})

    assert response.json()["usage_info"]["pages_processed"] == 2
    assert len(response.json()["pages"]) == 2
    assert fake_mistral.recorder.last.headers["authorization"] == f"Bearer {UPSTREAM_MISTRAL_KEY}"
    assert fake_mistral.recorder.last.path == "/v1/ocr"


@pytest.mark.parametrize("body", [{}, {"model": "mistral-ocr-latest"}, {"pages": [0]}])
def test_body_without_a_document_is_400(gateway: LiveServer, fake_mistral: FakeMistral, body: object) -> None:
    response = ocr(gateway, body)

    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert fake_mistral.recorder.requests == []


@pytest.mark.parametrize("url", ["", "   ", 42, None, ["https://e.x/a.pdf"]])
def test_url_that_is_not_a_string_is_400(gateway: LiveServer, fake_mistral: FakeMistral, url: object) -> None:
    response = ocr(gateway, {"url": url})

    assert response.status_code == 400
    assert fake_mistral.recorder.requests == []


def test_bad_json_is_400_invalid_json(gateway: LiveServer) -> None:
    response = httpx.post(f"{gateway.url}/v1/ocr", content=b"url=https://e.x/a.pdf")

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_json"


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
def test_other_methods_are_405(gateway: LiveServer, method: str) -> None:
    response = httpx.request(method, f"{gateway.url}/v1/ocr")

    assert response.status_code == 405
    assert response.headers["allow"] == "POST"


def test_refused_upstream_is_502(start_gateway: GatewayFactory) -> None:
    with start_gateway(MISTRAL_BASE_URL=f"http://127.0.0.1:{free_port()}") as gateway:
        response = ocr(gateway, {"url": "https://example.com/a.pdf"})

    assert response.status_code == 502
    assert response.json()["error"]["code"] == "upstream_unavailable"
