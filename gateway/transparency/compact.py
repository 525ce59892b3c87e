"""The compact range of a tree: the hashes of the perfect subtrees that make up [0, size), which is all that
appending needs. Each append reports the perfect nodes it completes, so the store can keep them."""

from __future__ import annotations

from collections.abc import Iterable

from gateway.transparency.hashing import EMPTY_ROOT, HASH_SIZE, node_hash
from gateway.transparency.proof import NodeId


class CompactRange:
    """The perfect subtrees of [0, size), left to right (largest first): one per set bit of `size`."""

    def __init__(self, size: int = 0, peaks: Iterable[bytes] = ()) -> None:
        self.size = size
        self.peaks = list(peaks)
        if len(self.peaks) != size.bit_count():
            raise ValueError(f"a tree of {size} leaves has {size.bit_count()} peaks, not {len(self.peaks)}")

    @classmethod
    def from_bytes(cls, size: int, data: bytes) -> CompactRange:
        """The range stored as the concatenation of its peaks."""
        return cls(size, [data[i : i + HASH_SIZE] for i in range(0, len(data), HASH_SIZE)])

    def to_bytes(self) -> bytes:
        return b"".join(self.peaks)

    def append(self, leaf_hash: bytes) -> list[tuple[NodeId, bytes]]:
        """Adds a leaf; returns the perfect nodes of level 1 and up that it completes, lowest first."""
        completed: list[tuple[NodeId, bytes]] = []
        merged, level = leaf_hash, 0
        while self.size >> level & 1:
            merged = node_hash(self.peaks.pop(), merged)
            level += 1
            completed.append((NodeId(level, self.size >> level), merged))
        self.peaks.append(merged)
        self.size += 1
        return completed

    def root(self) -> bytes:
        """MTH(D[0:size]): the peaks folded right to left; SHA-256 of nothing for the empty tree."""
        if not self.peaks:
            return EMPTY_ROOT
        result = self.peaks[-1]
        for peak in reversed(self.peaks[:-1]):
            result = node_hash(peak, result)
        return result


def root_of(leaf_hashes: Iterable[bytes]) -> bytes:
    """The Merkle tree hash of a list of leaf hashes, of any length."""
    compact = CompactRange()
    for leaf in leaf_hashes:
        compact.append(leaf)
    return compact.root()
