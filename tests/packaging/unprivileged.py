"""Who the installed gateway runs as: an unprivileged system user when the tests run as root (as the Dockerfile's
`USER gateway`), else the tests' own user, who is unprivileged already."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

SMOKE_USER = "gateway-smoke"


@dataclass(frozen=True)
class Account:
    name: str
    uid: int
    gid: int

    @property
    def is_other(self) -> bool:
        return self.uid != os.geteuid()

    def command(self, *argv: str) -> list[str]:
        """`argv` as run by this account: setpriv drops to it and then execs the command, so the process the
        caller starts (and signals) is the command itself."""
        if not self.is_other:
            return list(argv)
        return ["setpriv", f"--reuid={self.uid}", f"--regid={self.gid}", "--clear-groups", *argv]

    def own(self, path: Path) -> Path:
        """`path` (a folder) becomes this account's own and no one else's, as /data in the image."""
        if self.is_other:
            os.chown(path, self.uid, self.gid)
        path.chmod(0o700)
        return path


def unprivileged_account() -> Account:
    """The system user the gateway runs as, created on first use when we are root; else ourselves."""
    if os.geteuid() != 0:
        me = pwd.getpwuid(os.geteuid())
        return Account(me.pw_name, me.pw_uid, me.pw_gid)
    try:
        entry = pwd.getpwnam(SMOKE_USER)
    except KeyError:
        # Not checked: another run may have made the user meanwhile; the look-up below tells.
        options = ["--system", "--user-group", "--no-create-home", "--shell", "/usr/sbin/nologin"]
        added = subprocess.run([useradd(), *options, SMOKE_USER], capture_output=True, text=True)
        try:
            entry = pwd.getpwnam(SMOKE_USER)
        except KeyError:
            raise AssertionError(f"useradd {SMOKE_USER} failed: {added.stderr}") from None
    return Account(entry.pw_name, entry.pw_uid, entry.pw_gid)


def useradd() -> str:
    found = shutil.which("useradd") or shutil.which("useradd", path="/usr/sbin:/sbin")
    assert found, "running as root, but there is no useradd to make an unprivileged user"
    return found
