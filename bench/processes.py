"""The benchmark's child processes: started pinned and in their own session, always stopped, measured from /proc."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _die_with_parent() -> None:
    """Runs in each child before exec: the kernel sends it SIGTERM if the harness dies, even by SIGKILL."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Children:
    """The processes this run started. `close()` ends each one's process group: SIGTERM, then SIGKILL."""

    def __init__(self, workdir: Path, taskset: str | None) -> None:
        self.workdir = workdir
        self.taskset = taskset
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.logs: dict[str, Path] = {}

    def start(
        self,
        name: str,
        argv: list[str],
        *,
        cpu: int | None,
        env: dict[str, str] | None = None,
        pipes: bool = False,
    ) -> subprocess.Popen[bytes]:
        if cpu is not None and self.taskset:
            argv = [self.taskset, "-c", str(cpu), *argv]  # taskset execs: the pid stays the program's
        log = self.workdir / f"{name}.log"
        self.logs[name] = log
        with log.open("wb") as sink:
            proc = subprocess.Popen(
                argv,
                cwd=self.workdir,  # away from the repo, so that its `.env` is not read
                env=env,
                stdin=subprocess.PIPE if pipes else subprocess.DEVNULL,
                stdout=subprocess.PIPE if pipes else sink,
                stderr=sink,
                start_new_session=True,  # Ctrl-C reaches the harness only, which then stops all in order
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )
        self.procs[name] = proc
        return proc

    def log_tail(self, name: str, lines: int = 20) -> str:
        try:
            return "\n".join(self.logs[name].read_text(errors="replace").splitlines()[-lines:])
        except (OSError, KeyError):
            return "(no log)"

    def check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise SystemExit(f"bench: {name} exited with {proc.returncode}:\n{self.log_tail(name)}")

    def stop(self, name: str) -> None:
        """End one child (SIGTERM to its group) and wait for it."""
        proc = self.procs.pop(name)
        _signal_group(proc, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            _signal_group(proc, signal.SIGKILL)
            proc.wait()

    def close(self) -> None:
        for proc in self.procs.values():
            _signal_group(proc, signal.SIGTERM)
        deadline = time.monotonic() + 5.0
        for proc in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            if proc.poll() is None:
                _signal_group(proc, signal.SIGKILL)
                proc.wait()
        self.procs.clear()


def _signal_group(proc: subprocess.Popen[bytes], signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signum)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until(
    children: Children,
    name: str,
    answered: Callable[[], str | None],
    *,
    timeout: float = 90.0,
) -> None:
    """Block until `answered()` returns None (it returns what went wrong otherwise); fail with the child's log
    if it dies or never answers."""
    proc = children.procs[name]
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"bench: {name} exited with {proc.returncode}:\n{children.log_tail(name)}")
        problem = answered()
        if problem is None:
            return
        last = problem
        time.sleep(0.1)
    raise SystemExit(f"bench: {name} did not answer in {timeout:.0f} s ({last}):\n{children.log_tail(name)}")


def http_post(url: str, body: bytes, headers: dict[str, str], *, timeout: float = 5.0) -> tuple[int, bytes]:
    """(status, body) of a POST; an HTTP error status is returned, not raised."""
    request = urllib.request.Request(url, data=body, headers={"content-type": "application/json", **headers})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def group_pids(leader: int) -> list[int]:
    """The processes of the session `leader` started (uvicorn's workers, nginx's, a supervisor's children)."""
    pids = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            fields = Path(entry.path, "stat").read_text().rpartition(")")[2].split()
            if int(fields[3]) == leader:  # the session id; the pgid would do as well
                pids.append(int(entry.name))
    return pids


def cpu_seconds(leader: int) -> float:
    """User + system CPU time of every live process in `leader`'s session, in seconds."""
    ticks = 0
    for pid in group_pids(leader):
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
            ticks += int(fields[11]) + int(fields[12])
    return ticks / CLOCK_TICKS


def memory_kib(leader: int) -> dict[str, int]:
    """VmRSS (now) and VmHWM (peak), in KiB, summed over `leader`'s session; empty where there is no /proc."""
    found: dict[str, int] = {}
    for pid in group_pids(leader) or [leader]:
        with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as status:
            for line in status:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    found[key] = found.get(key, 0) + int(value.split()[0])
    return found


PM_QOS_DEVICE = "/dev/cpu_dma_latency"


@contextlib.contextmanager
def shallow_cpu_idle(enabled: bool) -> Iterator[str]:
    """While the run lasts, ask the kernel to keep every CPU out of its deep idle states (PM QoS: 0 µs held in
    `/dev/cpu_dma_latency`, what tuned's latency-performance profile sets). In a VM a halted vCPU takes the host
    tens to hundreds of µs to wake, once per hop a lone request makes between cores; held, idle CPUs poll
    instead. It applies to every target alike; yields a sentence saying what was done."""
    if not enabled:
        yield "not held (--no-latency-qos): idle CPUs halt, and waking them adds to every hop at one client"
        return
    try:
        handle = os.open(PM_QOS_DEVICE, os.O_WRONLY)
    except OSError as exc:
        yield f"not held ({PM_QOS_DEVICE}: {exc.strerror}): idle CPUs halt, and waking them adds to every hop"
        return
    try:
        os.write(handle, struct.pack("i", 0))
        yield f"held at 0 µs ({PM_QOS_DEVICE}) for the whole run: idle CPUs poll instead of halting"
    finally:
        os.close(handle)  # the kernel drops the request when the file is closed


class DatabaseBeside:
    """Keeps the Postgres processes that serve the run's database on `cpu`, the load side's, at idle CPU priority,
    while the run lasts: deployed, the database has cores of its own; here it must share, and it shares by
    yielding to the request path.

    Postgres is the machine's own service, so the harness cannot start it pinned; left to the scheduler, its
    backends often ran on the gateway's CPU, taking the gateway's time and its caches (the gateway's own CPU per
    request measured 9% higher, and varied more from run to run). The proxies' CPU is for the proxy alone, as
    the issue asks; the database goes with the upstream, beside the load. There, at normal priority, a backend
    writing a batch of usage rows kept wrk and the upstream waiting for the CPU for up to 7 ms (`perf sched`),
    which made the gateway's one-client p99 (BENCHMARKS.md); at idle priority (`SCHED_IDLE`) any waking process
    takes the CPU from it at once. That only holds between processes of one scheduling group, and the kernel
    gives every session a group of its own (autogroup, `kernel.sched_autogroup_enabled`): the harness's children
    and Postgres each in theirs, competing as equals whatever a process's policy. So autogroups are switched off
    for the run (before any child starts) and the setting is put back after. Backends come and go with the
    gateway's connection pool, so /proc is scanned every half second for processes whose title names the
    database."""

    AUTOGROUP = Path("/proc/sys/kernel/sched_autogroup_enabled")

    def __init__(self, database: str, cpu: int | None) -> None:
        self.marker = f" {database} ".encode()
        self.cpu = cpu
        self.pinned: set[int] = set()
        self.idle: set[int] = set()
        self.refused = ""
        self._autogroup: str | None = None  # the setting found, to put back
        self._autogroup_note = "left as it was"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="database pinning", daemon=True)

    def __enter__(self) -> DatabaseBeside:
        if self.cpu is not None and hasattr(os, "sched_setaffinity") and Path("/proc").is_dir():
            self._autogroups_off()
            self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        if self._autogroup is not None:
            with contextlib.suppress(OSError):
                self.AUTOGROUP.write_text(self._autogroup)

    @property
    def summary(self) -> str:
        if self.cpu is None:
            return "not pinned (nothing is)"
        if not self.pinned:
            return f"not pinned ({self.refused or 'no process of the run database found'})"
        idle = "at idle CPU priority (SCHED_IDLE)"
        if self.idle != self.pinned:
            idle = f"{len(self.idle)} of them at idle CPU priority (SCHED_IDLE)"
        return (
            f"every process that served the run's database ({len(self.pinned)} over the run, with the CLI's) pinned "
            f"to CPU {self.cpu}, with the load, {idle}; autogroups {self._autogroup_note} (the machine's own "
            "service: its shared background processes left as they were)"
        )

    def _autogroups_off(self) -> None:
        try:
            found = self.AUTOGROUP.read_text().strip()
        except OSError:
            self._autogroup_note = "not in this kernel"
            return
        if found == "0":
            self._autogroup_note = "already off"
            return
        try:
            self.AUTOGROUP.write_text("0")
        except OSError as exc:
            self._autogroup_note = f"left on ({exc.strerror}): the idle priority then counts for little"
            return
        self._autogroup = found
        self._autogroup_note = "off for the run (kernel.sched_autogroup_enabled, put back after)"

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            self.pin_new()

    def pin_new(self) -> None:
        assert self.cpu is not None
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit() or int(entry.name) in self.pinned:
                continue
            try:
                title = Path(entry.path, "cmdline").read_bytes()
                if title.startswith(b"postgres: ") and self.marker in title.replace(b"\0", b" "):
                    pid = int(entry.name)
                    os.sched_setaffinity(pid, {self.cpu})
                    self.pinned.add(pid)
                    with contextlib.suppress(OSError):
                        os.sched_setscheduler(pid, os.SCHED_IDLE, os.sched_param(0))
                        self.idle.add(pid)
            except PermissionError as exc:
                self.refused = f"not permitted: {exc.strerror}"
            except OSError:
                continue  # gone meanwhile
