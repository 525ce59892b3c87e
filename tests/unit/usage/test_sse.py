"""The event-stream parser: each event's data, whatever the line endings and however the bytes are split."""

from __future__ import annotations

import pytest

from gateway.usage.sse import EventStreamParser


def parse(*chunks: bytes, max_event_bytes: int = 1024) -> list[bytes]:
    parser = EventStreamParser(max_event_bytes=max_event_bytes)
    return [event for chunk in chunks for event in parser.feed(chunk)]


def one_byte_at_a_time(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


STREAM = (
    b': hello\n\ndata: {"a": 1}\n\nevent: x\nid: 7\nretry: 10\ndata: two\ndata: lines\n\ndata: [DONE]\n\n'
)
EVENTS = [b'{"a": 1}', b"two\nlines", b"[DONE]"]


def test_events_come_out_in_order_with_other_fields_and_comments_ignored() -> None:
    assert parse(STREAM) == EVENTS


def test_events_split_at_every_byte_come_out_the_same() -> None:
    assert parse(*one_byte_at_a_time(STREAM)) == EVENTS


@pytest.mark.parametrize("newline", [b"\r\n", b"\r"], ids=["crlf", "cr"])
def test_crlf_and_cr_line_endings_give_the_same_events(newline: bytes) -> None:
    stream = STREAM.replace(b"\n", newline)

    assert parse(stream) == EVENTS
    assert parse(*one_byte_at_a_time(stream)) == EVENTS


def test_a_crlf_split_between_its_two_bytes_is_one_line_end() -> None:
    assert parse(b"data: a\r", b"\ndata: b\r", b"\n\r", b"\n") == [b"a\nb"]


def test_only_one_leading_space_is_removed_from_a_value() -> None:
    assert parse(b"data:x\n\ndata:  y\n\n") == [b"x", b" y"]


def test_an_empty_data_line_still_makes_an_event() -> None:
    assert parse(b"data:\n\ndata\n\n") == [b"", b""]


def test_a_block_without_data_makes_no_event() -> None:
    assert parse(b"event: ping\n\n: comment\n\n") == []


def test_an_event_cut_before_its_blank_line_is_not_returned() -> None:
    assert parse(b"data: whole\n\ndata: cut") == [b"whole"]


def test_a_leading_byte_order_mark_is_ignored() -> None:
    assert parse(b"\xef\xbb", b"\xbfdata: x\n\n") == [b"x"]


def test_an_oversized_event_is_dropped_and_the_next_one_kept() -> None:
    big = b"data: " + b"x" * 2000 + b"\n\n"

    assert parse(big + b"data: next\n\n") == [b"next"]
    assert parse(*[big[i : i + 7] for i in range(0, len(big), 7)], b"data: next\n\n") == [b"next"]


def test_an_event_over_the_limit_across_many_data_lines_is_dropped() -> None:
    many = b"data: " + b"y" * 100 + b"\n"

    assert parse(many * 20 + b"\ndata: next\n\n") == [b"next"]
