"""Which subtrees a proof is made of (RFC 9162 sections 2.1.3.1 and 2.1.4.1), as leaf ranges and stored nodes.

Pure arithmetic on indexes and sizes: no hashes are read here. A range `(begin, end)` is a subtree of the RFC
tree (half-open, in leaves); a `NodeId` is a complete (perfect) subtree, the only kind the store keeps. Any RFC
subtree is a run of at most log2(n) perfect ones, so every proof is O(log n) stored nodes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from gateway.transparency.hashing import node_hash

Range = tuple[int, int]


@dataclass(frozen=True, slots=True, order=True)
class NodeId:
    """The perfect subtree of 2**level leaves starting at leaf `index * 2**level`."""

    level: int
    index: int

    @property
    def begin(self) -> int:
        return self.index << self.level

    @property
    def end(self) -> int:
        return (self.index + 1) << self.level


def split_point(size: int) -> int:
    """k, the largest power of two smaller than `size` (size >= 2): where the RFC splits a subtree."""
    if size < 2:
        raise ValueError(f"a subtree of {size} leaves has no split")
    return 1 << ((size - 1).bit_length() - 1)


def inclusion_ranges(index: int, size: int) -> list[Range]:
    """The subtrees whose hashes form PATH(index, D[0:size]), from the leaf's sibling up to the root's child.

    Precondition: 0 <= index < size. Raises ValueError otherwise.
    """
    if not 0 <= index < size:
        raise ValueError(f"leaf {index} is not in a tree of {size} leaves")
    path: list[Range] = []
    begin, end = 0, size
    while end - begin > 1:
        k = split_point(end - begin)
        if index < begin + k:
            path.append((begin + k, end))
            end = begin + k
        else:
            path.append((begin, begin + k))
            begin += k
    path.reverse()
    return path


def consistency_ranges(first: int, second: int) -> list[Range]:
    """The subtrees whose hashes form PROOF(first, D[0:second]) = SUBPROOF(first, D[0:second], true).

    Precondition: 1 <= first <= second. Empty when first == second. Raises ValueError otherwise.
    """
    if not 1 <= first <= second:
        raise ValueError(f"no consistency proof from {first} to {second} leaves")
    path: list[Range] = []
    begin, end, m, whole = 0, second, first, True
    while m != end - begin:
        k = split_point(end - begin)
        if m <= k:
            path.append((begin + k, end))
            end = begin + k
        else:
            path.append((begin, begin + k))
            begin += k
            m -= k
            whole = False  # the subtree left of the old tree's edge is no longer the old tree itself
    if not whole:
        path.append((begin, end))
    path.reverse()
    return path


def perfect_subtrees(begin: int, end: int) -> list[NodeId]:
    """The perfect subtrees that make up the RFC subtree [begin, end), left to right (largest first).

    Precondition: begin < end and [begin, end) is a subtree of some RFC tree (begin is a multiple of every power of
    two up to end - begin). Raises ValueError otherwise.
    """
    if not 0 <= begin < end:
        raise ValueError(f"empty or negative range [{begin}, {end})")
    nodes: list[NodeId] = []
    position = begin
    for level in range((end - begin).bit_length() - 1, -1, -1):
        if (end - begin) >> level & 1:
            if position % (1 << level):
                raise ValueError(f"[{begin}, {end}) is not a subtree of an RFC 9162 tree")
            nodes.append(NodeId(level, position >> level))
            position += 1 << level
    return nodes


def nodes_needed(ranges: Iterable[Range]) -> set[NodeId]:
    """Every stored node the hashes of `ranges` are computed from."""
    return {node for begin, end in ranges for node in perfect_subtrees(begin, end)}


def range_hash(begin: int, end: int, hashes: Mapping[NodeId, bytes]) -> bytes:
    """MTH(D[begin:end]) from the hashes of its perfect subtrees, folded right to left as the RFC tree nests them.

    Raises KeyError when `hashes` lacks one of them.
    """
    nodes = perfect_subtrees(begin, end)
    result = hashes[nodes[-1]]
    for node in reversed(nodes[:-1]):
        result = node_hash(hashes[node], result)
    return result
