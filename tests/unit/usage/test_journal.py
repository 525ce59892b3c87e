"""The usage journal on a real file system, with real processes holding (or no longer holding) their locks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from datetime import UTC, datetime
from pathlib import Path

import pytest

from gateway.usage.journal import LEGACY_SPILL_FOLDER, UsageJournal, encode, read_rows


def row(number: int) -> dict[str, object]:
    return {
        "id": f"row-{number}",
        "created_at": datetime(2026, 12, 6, 12, 0, number, tzinfo=UTC),
        "status": 200,
    }


def segments(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.jsonl"))


def test_a_seal_hands_over_what_was_appended_and_the_next_segment_takes_the_rest(tmp_path: Path) -> None:
    journal = UsageJournal(tmp_path / "journal")
    journal.open()
    journal.append(encode(row(1)))
    journal.append(encode(row(2)))
    first = journal.seal()
    journal.open()
    journal.append(encode(row(3)))

    assert [[r["id"] for r in read_rows(path)] for path in first] == [["row-1", "row-2"]]
    assert next(read_rows(first[0]))["created_at"] == row(1)["created_at"]  # a datetime again
    assert journal.seal() == [path for path in segments(tmp_path / "journal") if path not in first]
    assert journal.seal() == []  # nothing appended since: nothing to hand over
    before = journal.bytes_on_disk
    journal.delete(first[0])
    assert journal.bytes_on_disk == before - len(encode(row(1))) - len(encode(row(2)))
    journal.close()


def test_an_integer_past_64_bits_is_still_journaled(tmp_path: Path) -> None:
    journal = UsageJournal(tmp_path / "journal")
    journal.open()
    journal.append(encode({**row(1), "input_tokens": 2**70}))
    [path] = journal.seal()
    assert [r["id"] for r in read_rows(path)] == ["row-1"]
    journal.close()


def test_a_torn_last_line_is_skipped(tmp_path: Path) -> None:
    path = tmp_path / "segment.jsonl"
    whole = encode(row(1)) + encode(row(2))
    path.write_bytes(whole + encode(row(3))[:-7])  # the crash came mid-write
    assert [r["id"] for r in read_rows(path)] == ["row-1", "row-2"]


def test_a_folder_that_cannot_be_made_fails_to_open(tmp_path: Path) -> None:
    (tmp_path / "data").write_text("a file where the folder should be")  # even root cannot make a folder here
    with pytest.raises(OSError):
        UsageJournal(tmp_path / "data" / "journal").open()


# --- ownership across processes -------------------------------------------------------------------------------

WRITER = textwrap.dedent(
    """
    import sys, time
    from datetime import UTC, datetime
    from pathlib import Path
    from gateway.usage.journal import UsageJournal, encode
    journal = UsageJournal(Path(sys.argv[1]))
    journal.open()
    for number in range(3):
        journal.append(encode({"id": f"theirs-{number}", "created_at": datetime.now(UTC)}))
    print("written", flush=True)
    time.sleep(60)
    """
)


def start_writer(folder: Path) -> subprocess.Popen[str]:
    """Another process with a journal of its own in `folder`, three rows appended, alive until killed."""
    process = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(folder)], stdout=subprocess.PIPE, text=True, cwd=Path.cwd()
    )
    assert process.stdout is not None
    assert process.stdout.readline().strip() == "written"
    return process


def test_a_live_instance_keeps_its_segments_and_a_killed_one_gives_them_up(tmp_path: Path) -> None:
    folder = tmp_path / "journal"
    other = start_writer(folder)
    journal = UsageJournal(folder)
    journal.open()
    try:
        assert journal.claim_dead() == []  # its lock is held: alive
        other.send_signal(signal.SIGKILL)
        other.wait()

        claimed = journal.claim_dead()
        assert [r["id"] for path in claimed for r in read_rows(path)] == ["theirs-0", "theirs-1", "theirs-2"]
        assert all(path.name.startswith(journal.instance) for path in claimed)
        assert sorted(path.name for path in folder.glob("*.lock")) == [f"{journal.instance}.lock"]
        assert journal.bytes_on_disk == sum(path.stat().st_size for path in claimed)
        assert journal.claim_dead() == []  # claimed once
    finally:
        if other.poll() is None:
            other.kill()
        other.communicate()
        journal.close()


def test_the_same_pid_again_is_not_the_same_owner(tmp_path: Path) -> None:
    """In a container every start has the same pid: ownership goes by the lock, not the pid. A journal of this
    very process, left unclosed as by a crash, is dead once its lock is let go."""
    folder = tmp_path / "journal"
    crashed = UsageJournal(folder)
    crashed.open()
    crashed.append(encode(row(1)))
    assert crashed._lock_fd is not None
    os.close(crashed._lock_fd)  # what the kernel does when a process dies, and nothing else

    started = UsageJournal(folder)
    started.open()
    assert [r["id"] for path in started.claim_dead() for r in read_rows(path)] == ["row-1"]
    started.close()


def test_a_closed_journal_leaves_only_its_rows_not_yet_written(tmp_path: Path) -> None:
    folder = tmp_path / "journal"
    journal = UsageJournal(folder)
    journal.open()
    journal.append(encode(row(1)))
    journal.close()
    assert len(segments(folder)) == 1 and not list(folder.glob("*.lock"))

    empty = UsageJournal(folder)
    empty.open()
    claimed = empty.claim_dead()
    empty.close()
    assert [path.name for path in segments(folder)] == [
        path.name for path in claimed
    ]  # the empty one is gone


def test_the_old_spill_files_are_replayed_once(tmp_path: Path) -> None:
    spill = tmp_path / LEGACY_SPILL_FOLDER
    spill.mkdir()
    (spill / "1234.jsonl").write_bytes(encode(row(1)))
    journal = UsageJournal(tmp_path / "usage-journal")
    journal.open()
    claimed = journal.claim_dead()
    assert [r["id"] for path in claimed for r in read_rows(path)] == ["row-1"]
    assert list(spill.iterdir()) == []
    journal.close()
