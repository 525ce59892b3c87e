"""Pure parts of agents' assets: filename and content-type sanitising, the download header, quota tiers."""

from __future__ import annotations

import pytest

from gateway.agents.files import attachment_disposition
from gateway.agents.uploads import safe_content_type, safe_filename
from gateway.settings import Settings, SettingsError
from gateway.tiers import BUILT_IN_TIERS, parse_tiers


@pytest.mark.parametrize(
    ("raw", "safe"),
    [
        ("report.pdf", "report.pdf"),
        ("../../etc/passwd", "passwd"),
        ("/etc/shadow", "shadow"),
        ("C:\\Windows\\system32\\evil.dll", "evil.dll"),
        ("..\\..\\boot.ini", "boot.ini"),
        ("a\x00b\r\nc\x1b[31m.txt", "abc[31m.txt"),
        ("invoice\u202egpj.exe", "invoicegpj.exe"),  # right-to-left override
        ("..", "file"),
        (".", "file"),
        ("", "file"),
        ("dir/", "file"),
        ("  spaced  ", "spaced"),
        ("Café.txt", "Café.txt"),
        ("Cafe\u0301.txt", "Café.txt"),  # NFC
    ],
)
def test_filenames_are_neutralised(raw: str, safe: str) -> None:
    assert safe_filename(raw) == safe


def test_a_long_filename_keeps_its_extension() -> None:
    name = safe_filename("x" * 1000 + ".tar.gz")

    assert len(name) == 255 and name.endswith(".gz")


@pytest.mark.parametrize(
    ("raw", "safe"),
    [
        ("text/plain; charset=utf-8", "text/plain"),
        ("IMAGE/PNG", "image/png"),
        (None, "application/octet-stream"),
        ("text/html\r\nx-evil: 1", "application/octet-stream"),
        ("nonsense", "application/octet-stream"),
    ],
)
def test_content_types_are_plain_media_types(raw: str | None, safe: str) -> None:
    assert safe_content_type(raw) == safe


def test_the_download_header_is_an_attachment_with_an_ascii_fallback() -> None:
    header = attachment_disposition('naïve "quote"; x.txt')

    assert header.startswith("attachment; ")
    assert 'filename="na_ve _quote__ x.txt"' in header
    assert "filename*=UTF-8''na%C3%AFve%20%22quote%22%3B%20x.txt" in header
    header.encode("latin-1")


def test_the_built_in_tiers_when_none_are_configured() -> None:
    tiers = {tier.name: tier for tier in Settings.from_mapping({}).quota_tiers}

    assert tiers["free"] == BUILT_IN_TIERS[0]
    assert set(tiers["free"].limits()) == {"messages_per_day", "tokens_per_month", "storage_bytes", "files"}


def test_configured_tiers_lay_over_the_built_in_ones() -> None:
    tiers = {
        tier.name: tier
        for tier in parse_tiers('{"free": {"files": 3}, "team": {"tokens_per_month": null, "files": 50}}')
    }

    assert tiers["free"].files == 3
    assert tiers["free"].messages_per_day == BUILT_IN_TIERS[0].messages_per_day
    assert tiers["team"].tokens_per_month is None
    assert tiers["team"].storage_bytes == BUILT_IN_TIERS[0].storage_bytes
    assert "pro" in tiers


@pytest.mark.parametrize(
    "raw",
    [
        "[]",
        "not json",
        '{"free": 3}',
        '{"free": {"bytes": 1}}',
        '{"free": {"files": -1}}',
        '{"free": {"files": true}}',
    ],
)
def test_bad_tiers_stop_start_up(raw: str) -> None:
    with pytest.raises(SettingsError, match="QUOTA_TIERS"):
        Settings.from_mapping({"QUOTA_TIERS": raw})
