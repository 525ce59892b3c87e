"""Response observers: the usage an upstream reported, read from body chunks as they pass, in bounded memory."""

from __future__ import annotations

import base64
import gzip
import itertools
import json
import random
import tracemalloc
import zlib
from collections.abc import Iterable, Iterator
from typing import Any

import pytest

from gateway.usage.observers import ObservedUsage, ResponseObserver, observer_for

CHAT_MODEL = "gpt-4o-mini-2024-07-18"
OCR_MODEL = "mistral-ocr-2505-completion"
SSE = "text/event-stream; charset=utf-8"
JSON = "application/json"
CHAT_USAGE = ObservedUsage(input_tokens=19, output_tokens=7, total_tokens=26, model=CHAT_MODEL)


def openai_stream(*, newline: bytes = b"\n", with_usage: bool = True) -> bytes:
    """A chat completion stream as OpenAI sends it with stream_options.include_usage."""
    base = {
        "id": "chatcmpl-B1x7QfZ0sK2",
        "object": "chat.completion.chunk",
        "created": 1739871234,
        "model": CHAT_MODEL,
        "service_tier": "default",
        "system_fingerprint": "fp_13eed4fce1",
    }

    def choice(delta: dict[str, Any], finish_reason: str | None = None) -> list[dict[str, Any]]:
        return [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]

    chunks: list[dict[str, Any]] = [
        {**base, "choices": choice({"role": "assistant", "content": "", "refusal": None}), "usage": None}
    ]
    chunks += [
        {**base, "choices": choice({"content": word}), "usage": None}
        for word in ["Hello", "!", " How", " can", " I", " help", "?"]
    ]
    chunks.append({**base, "choices": choice({}, "stop"), "usage": None})
    if with_usage:
        usage = {
            "prompt_tokens": 19,
            "completion_tokens": 7,
            "total_tokens": 26,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": 0,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        }
        chunks.append({**base, "choices": [], "usage": usage})
    events = [b"data: " + json.dumps(chunk, separators=(",", ":")).encode() for chunk in chunks]
    if with_usage:
        events.append(b"data: [DONE]")
    return b"".join(event + newline + newline for event in events)


def openai_completion() -> bytes:
    """A non-streamed chat completion, pretty-printed as OpenAI returns it."""
    completion = {
        "id": "chatcmpl-B1x7QfZ0sK3",
        "object": "chat.completion",
        "created": 1739871235,
        "model": CHAT_MODEL,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello! How can I help?", "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": 19,
            "completion_tokens": 7,
            "total_tokens": 26,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
        },
        "service_tier": "default",
        "system_fingerprint": "fp_13eed4fce1",
    }
    return json.dumps(completion, indent=2).encode()


def ocr_page(index: int, image: str = "data:image/jpeg;base64,/9j/4AAQSkZJRg==") -> dict[str, Any]:
    return {
        "index": index,
        "markdown": f"# Page {index + 1}\n\n![img-0.jpeg](img-0.jpeg)\n\nTotal: 42.00 \u20ac",
        "images": [{"id": "img-0.jpeg", "top_left_x": 10, "top_left_y": 20, "image_base64": image}],
        "dimensions": {"dpi": 200, "height": 2200, "width": 1700},
    }


def ocr_response(**fields: Any) -> bytes:
    return json.dumps({"pages": [ocr_page(0), ocr_page(1)], "model": OCR_MODEL, **fields}).encode()


def split_at_random(data: bytes, seed: int, pieces: int = 40) -> list[bytes]:
    rng = random.Random(seed)
    cuts = sorted(rng.sample(range(1, len(data)), k=min(pieces, len(data)) - 1))
    return [data[start:end] for start, end in itertools.pairwise([0, *cuts, len(data)])]


def observe(
    chunks: Iterable[bytes],
    *,
    kind: str = "chat",
    content_type: str | None = SSE,
    encoding: str | None = None,
) -> ObservedUsage:
    observer: ResponseObserver = observer_for(kind, content_type=content_type, content_encoding=encoding)
    for chunk in chunks:
        observer.feed(chunk)
    return observer.result()


def test_a_whole_openai_stream_gives_its_tokens_and_model() -> None:
    assert observe([openai_stream()]) == CHAT_USAGE


def test_an_openai_stream_fed_one_byte_at_a_time_gives_the_same_usage() -> None:
    stream = openai_stream()

    assert observe(stream[i : i + 1] for i in range(len(stream))) == CHAT_USAGE


@pytest.mark.parametrize("seed", range(5))
def test_an_openai_stream_split_at_random_points_gives_the_same_usage(seed: int) -> None:
    assert observe(split_at_random(openai_stream(), seed)) == CHAT_USAGE


@pytest.mark.parametrize("seed", range(3))
def test_a_crlf_stream_split_at_random_points_gives_the_same_usage(seed: int) -> None:
    assert observe(split_at_random(openai_stream(newline=b"\r\n"), seed)) == CHAT_USAGE


def test_a_stream_cut_before_its_usage_chunk_has_the_model_but_no_tokens() -> None:
    assert observe(split_at_random(openai_stream(with_usage=False), 1)) == ObservedUsage(model=CHAT_MODEL)


@pytest.mark.parametrize("seed", range(3))
def test_a_gzip_stream_split_at_random_points_is_read(seed: int) -> None:
    compressed = gzip.compress(openai_stream())

    assert observe(split_at_random(compressed, seed), encoding="gzip") == CHAT_USAGE


@pytest.mark.parametrize("wbits", [zlib.MAX_WBITS, -zlib.MAX_WBITS], ids=["zlib", "raw"])
def test_a_deflate_stream_is_read_with_or_without_its_zlib_header(wbits: int) -> None:
    compressor = zlib.compressobj(wbits=wbits)
    compressed = compressor.compress(openai_stream()) + compressor.flush()

    assert observe(split_at_random(compressed, 7), encoding="Deflate") == CHAT_USAGE


def test_a_stream_compressed_twice_is_read() -> None:
    compressor = zlib.compressobj()
    deflated = compressor.compress(openai_stream()) + compressor.flush()

    assert observe([gzip.compress(deflated)], encoding="deflate, gzip") == CHAT_USAGE


def test_malformed_events_are_skipped() -> None:
    stream = b"data: {not json\n\ndata: [1, 2]\n\ndata: \xff\xfe\n\n" + openai_stream()

    assert observe(split_at_random(stream, 3)) == CHAT_USAGE


def test_a_later_usage_chunk_replaces_an_earlier_one() -> None:
    stream = (
        b'data: {"model": "m", "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}}\n\n'
        b'data: {"model": "other", "usage": {"prompt_tokens": 5, "completion_tokens": 9}}\n\n'
    )

    assert observe([stream]) == ObservedUsage(input_tokens=5, output_tokens=9, total_tokens=14, model="m")


def test_an_oversized_event_is_dropped_and_later_events_still_count() -> None:
    huge = b'data: {"model": "first", "pad": "' + b"x" * (2 * 1024 * 1024) + b'"}\n\n'

    assert observe([huge[:1000], huge[1000:], openai_stream()]) == CHAT_USAGE


@pytest.mark.parametrize("seed", range(3))
def test_a_non_streamed_completion_split_at_random_points_gives_its_usage(seed: int) -> None:
    assert observe(split_at_random(openai_completion(), seed), content_type=JSON) == CHAT_USAGE


def test_input_and_output_token_names_are_read_and_summed_when_no_total_is_given() -> None:
    body = b'{"model": "claude", "usage": {"input_tokens": 10, "output_tokens": 4}}'

    expected = ObservedUsage(input_tokens=10, output_tokens=4, total_tokens=14, model="claude")
    assert observe([body], content_type=JSON) == expected


def test_an_ocr_response_gives_its_pages_processed() -> None:
    body = ocr_response(usage_info={"pages_processed": 3, "doc_size_bytes": 52811})

    expected = ObservedUsage(ocr_pages=3, model=OCR_MODEL)
    assert observe(split_at_random(body, 2), kind="ocr", content_type=JSON) == expected


def test_an_ocr_response_without_usage_info_counts_its_pages() -> None:
    assert observe([ocr_response()], kind="ocr", content_type=JSON) == ObservedUsage(
        ocr_pages=2, model=OCR_MODEL
    )


def test_an_ocr_response_without_usage_info_or_pages_has_no_page_count() -> None:
    body = json.dumps({"model": OCR_MODEL, "document_annotation": None}).encode()

    assert observe([body], kind="ocr", content_type=JSON) == ObservedUsage(model=OCR_MODEL)


def test_only_the_items_of_a_top_level_pages_array_are_counted() -> None:
    nested = b'{"document": {"pages": [1, 2, 3]}, "pages": [{"pages": [1]}, [], "x"], "usage_info": {}}'
    not_an_array = b'{"pages": {"item": 1}}'

    assert observe([nested], kind="ocr", content_type=JSON).ocr_pages == 3
    assert observe([not_an_array], kind="ocr", content_type=JSON).ocr_pages is None


def test_escaped_quotes_and_backslashes_in_long_strings_do_not_confuse_the_reader() -> None:
    tricky = 'a \\" b \\\\" c' * 300  # escaped quotes, and backslashes just before a closing-looking quote
    body = json.dumps({"text": tricky, "short": 'x"\\', "model": "after-the-strings", "pages": [1]}).encode()

    seen = observe((body[i : i + 1] for i in range(len(body))), kind="ocr", content_type=JSON)

    assert seen == ObservedUsage(ocr_pages=1, model="after-the-strings")


def lazy_ocr_response(*, pages: int, image_chunks: int, block: bytes) -> Iterator[bytes]:
    """An OCR response with one large base64 image per page, made chunk by chunk as it is consumed."""
    yield b'{"pages": ['
    for index in range(pages):
        yield b"," if index else b""
        yield (
            b'{"index": %d, "markdown": "![img-0.jpeg](img-0.jpeg)", "images": [{"id": "img-0.jpeg", ' % index
        )
        yield b'"image_base64": "data:image/jpeg;base64,'
        for _ in range(image_chunks):
            yield block
        yield b'"}], "dimensions": {"dpi": 200, "height": 2200, "width": 1700}}'
    yield b'], "model": "%s", "usage_info": {"pages_processed": %d}}' % (OCR_MODEL.encode(), pages)


def test_a_50_mb_ocr_response_is_observed_in_bounded_memory() -> None:
    block = base64.b64encode(random.Random(0).randbytes(48 * 1024))  # 64 KiB of base64
    observer = observer_for("ocr", content_type=JSON, content_encoding=None)

    tracemalloc.start()
    try:
        for chunk in lazy_ocr_response(pages=5, image_chunks=160, block=block):  # 5 x 10 MiB
            observer.feed(chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert observer.result() == ObservedUsage(ocr_pages=5, model=OCR_MODEL)
    assert peak < 5 * 1024 * 1024


def test_a_highly_compressed_body_is_inflated_in_bounded_steps() -> None:
    compressor = zlib.compressobj(wbits=16 + zlib.MAX_WBITS)
    parts = [compressor.compress(b'{"model": "bomb", "pages": [{"image_base64": "')]
    parts += [compressor.compress(b"A" * (1024 * 1024)) for _ in range(64)]
    parts += [compressor.compress(b'"}]}'), compressor.flush()]
    compressed = b"".join(parts)  # 64 MiB that fits in well under 1 MiB
    observer = observer_for("ocr", content_type=JSON, content_encoding="gzip")

    tracemalloc.start()
    try:
        observer.feed(compressed)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert observer.result() == ObservedUsage(ocr_pages=1, model="bomb")
    assert peak < 5 * 1024 * 1024


def test_invalid_json_stops_observing_and_keeps_what_was_seen() -> None:
    body = b'{"model": "seen", "pages": [1, 2], oops, "usage_info": {"pages_processed": 9}}'

    seen = observe(split_at_random(body, 4), kind="ocr", content_type=JSON)

    assert seen == ObservedUsage(ocr_pages=2, model="seen")


def test_a_corrupt_gzip_stream_stops_observing_and_keeps_what_was_seen() -> None:
    compressed = bytearray(gzip.compress(openai_stream()))
    cut = len(compressed) * 3 // 4  # past the first events, before the usage chunk
    compressed[cut:] = b"\xff" * (len(compressed) - cut)  # zlib: "invalid distance too far back"

    seen = observe(split_at_random(bytes(compressed), 5), encoding="gzip")

    assert seen == ObservedUsage(model=CHAT_MODEL)


@pytest.mark.parametrize("encoding", ["br", "zstd", "compress", "gzip, br", "snappy"])
def test_encodings_we_do_not_undo_are_not_observed(encoding: str) -> None:
    assert observe([openai_stream()], encoding=encoding) == ObservedUsage()


def test_identity_encoding_is_read_as_plain() -> None:
    assert observe([openai_stream()], encoding="identity") == CHAT_USAGE


@pytest.mark.parametrize(
    ("kind", "content_type"),
    [("chroma", JSON), ("chat", "text/plain"), ("chat", None), ("ocr", "application/octet-stream")],
)
def test_other_kinds_and_content_types_are_not_observed(kind: str, content_type: str | None) -> None:
    assert observe([openai_completion()], kind=kind, content_type=content_type) == ObservedUsage()


def test_the_media_type_is_matched_without_its_case_or_parameters() -> None:
    assert observe([openai_completion()], content_type="Application/JSON; charset=UTF-8") == CHAT_USAGE


@pytest.mark.parametrize("encoding", [None, "gzip", "deflate"])
@pytest.mark.parametrize("content_type", [SSE, JSON])
def test_random_bytes_never_make_feed_raise(content_type: str, encoding: str | None) -> None:
    rng = random.Random(11)
    chunks = [rng.randbytes(rng.randrange(1, 300)) for _ in range(50)]

    assert observe(chunks, content_type=content_type, encoding=encoding).input_tokens is None
