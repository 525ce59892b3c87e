"""The C2SP checkpoint (c2sp.org/tlog-checkpoint): a tree head as the text body of a signed note.

```
{origin}\\n{tree size, decimal}\\n{base64 of the root hash}\\n
```
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass

from gateway.transparency.hashing import HASH_SIZE

DECIMAL = re.compile(r"0|[1-9][0-9]{0,19}")


class CheckpointError(ValueError):
    """Text that is not a well-formed checkpoint."""


def is_valid_origin(origin: str) -> bool:
    """An origin doubles as the signed note's key name: non-empty, no spaces and no `+`."""
    return bool(origin) and "+" not in origin and not any(c.isspace() for c in origin)


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A log's claim that its tree of `tree_size` leaves has the root `root_hash`."""

    origin: str
    tree_size: int
    root_hash: bytes

    def body(self) -> str:
        """The checkpoint text, the part of the note that is signed (its final newline included)."""
        root = base64.b64encode(self.root_hash).decode()
        return f"{self.origin}\n{self.tree_size}\n{root}\n"


def parse_checkpoint(body: str) -> Checkpoint:
    """The checkpoint in a note's text (extension lines after the root are allowed and ignored).

    Raises CheckpointError when a line is missing or malformed.
    """
    if not body.endswith("\n"):
        raise CheckpointError("a checkpoint ends with a newline")
    lines = body[:-1].split("\n")
    if len(lines) < 3:
        raise CheckpointError("a checkpoint has an origin, a size and a root hash line")
    origin, size, root = lines[:3]
    if not is_valid_origin(origin):
        raise CheckpointError("the origin line is empty or has spaces")
    if not DECIMAL.fullmatch(size):
        raise CheckpointError("the size line is not a decimal number")
    try:
        root_hash = base64.b64decode(root, validate=True)
    except binascii.Error:
        raise CheckpointError("the root hash line is not base64") from None
    if base64.b64encode(root_hash).decode() != root:
        raise CheckpointError("the root hash line is not canonical base64")
    if len(root_hash) != HASH_SIZE:
        raise CheckpointError(f"the root hash is not {HASH_SIZE} bytes")
    return Checkpoint(origin, int(size), root_hash)
