"""Verifying inclusion and consistency proofs, as RFC 9162 sections 2.1.3.2 and 2.1.4.2 write the algorithms.

Everything here needs only hashes and sizes, so a third party can run it without the log's database.
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence

from gateway.transparency.hashing import HASH_SIZE, node_hash


class ProofError(ValueError):
    """A proof that cannot hold whatever the hashes: bad index or sizes, wrong length, malformed hash."""


class RootMismatchError(ProofError):
    """The proof is well formed but leads to another root than the one expected."""


def root_from_inclusion_proof(index: int, size: int, leaf: bytes, path: Sequence[bytes]) -> bytes:
    """The root that `path` proves the leaf hash `leaf` at `index` to be under, in a tree of `size` leaves.

    Raises ProofError when the proof cannot be for that index and size.
    """
    if not 0 <= index < size:
        raise ProofError(f"leaf index {index} is not within a tree of {size} leaves")
    _check_hashes(leaf, *path)
    fn, sn, r = index, size - 1, leaf
    for p in path:
        if sn == 0:
            raise ProofError("the audit path is too long for this index and size")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while fn and not fn & 1:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError("the audit path is too short for this index and size")
    return r


def verify_inclusion(index: int, size: int, leaf: bytes, path: Sequence[bytes], root: bytes) -> None:
    """Checks that `leaf` is the leaf hash at `index` of the tree of `size` leaves whose root is `root`.

    Raises RootMismatchError when the path leads elsewhere, ProofError when it is malformed.
    """
    _check_hashes(root)
    if not hmac.compare_digest(root_from_inclusion_proof(index, size, leaf, path), root):
        raise RootMismatchError("the audit path does not lead to the root")


def verify_consistency(
    first: int, second: int, first_root: bytes, second_root: bytes, path: Sequence[bytes]
) -> None:
    """Checks that the tree of `second` leaves with root `second_root` extends the tree of `first` leaves with root
    `first_root`. Precondition for success: 1 <= first <= second (an empty old tree is consistent with anything,
    but RFC 9162 defines no proof for it).

    Raises RootMismatchError when the path leads to other roots, ProofError when it is malformed.
    """
    if not 1 <= first <= second:
        raise ProofError(f"no consistency proof from {first} to {second} leaves")
    _check_hashes(first_root, second_root, *path)
    if first == second:
        if path:
            raise ProofError("a proof between equal sizes is empty")
        if not hmac.compare_digest(first_root, second_root):
            raise RootMismatchError("equal sizes with different roots")
        return
    if not path:
        raise ProofError("the consistency path is empty")
    hashes = list(path)
    if first & (first - 1) == 0:  # an exact power of two: the old root is a node of the new tree, left out
        hashes.insert(0, first_root)
    fn, sn = first - 1, second - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = hashes[0]
    for c in hashes[1:]:
        if sn == 0:
            raise ProofError("the consistency path is too long for these sizes")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while fn and not fn & 1:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError("the consistency path is too short for these sizes")
    if not hmac.compare_digest(fr, first_root):
        raise RootMismatchError("the consistency path does not lead to the first root")
    if not hmac.compare_digest(sr, second_root):
        raise RootMismatchError("the consistency path does not lead to the second root")


def _check_hashes(*hashes: bytes) -> None:
    for h in hashes:
        if not isinstance(h, bytes) or len(h) != HASH_SIZE:
            raise ProofError(f"a hash must be {HASH_SIZE} bytes")
