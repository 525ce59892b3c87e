"""The log's RFC 9162 hashing and proofs, checked against pymerkle (an independent implementation), the RFC's own
definitions written out here from its text, and the Certificate Transparency reference roots; tampered proofs,
wrong indexes and wrong sizes fail."""

from __future__ import annotations

import functools
import hashlib
import math

import pytest
from pymerkle import InclusionProof as PymerkleInclusion
from pymerkle import InmemoryTree, InvalidProof

from gateway.transparency.compact import CompactRange, root_of
from gateway.transparency.hashing import EMPTY_ROOT, leaf_hash, node_hash
from gateway.transparency.proof import (
    NodeId,
    consistency_ranges,
    inclusion_ranges,
    nodes_needed,
    perfect_subtrees,
    range_hash,
)
from gateway.transparency.verify import (
    ProofError,
    RootMismatchError,
    root_from_inclusion_proof,
    verify_consistency,
    verify_inclusion,
)

MAX_SIZE = 300
MAX_CONSISTENCY_SIZE = 64
LEAVES = [f"event {i}".encode() for i in range(MAX_SIZE)]
LEAF_HASHES = [leaf_hash(leaf) for leaf in LEAVES]

# RFC 6962's reference leaves and the roots of their first 1..8 (certificate-transparency's merkle tree tests).
CT_LEAVES = [
    b"",
    b"\x00",
    b"\x10",
    b"\x20\x21",
    b"\x30\x31",
    b"\x40\x41\x42\x43",
    bytes(range(0x50, 0x58)),
    bytes(range(0x60, 0x70)),
]
CT_ROOTS = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]


def stored_nodes(leaf_hashes: list[bytes]) -> dict[NodeId, bytes]:
    """Every node the log stores for these leaves: the leaf hashes, and the perfect nodes each append completes."""
    nodes: dict[NodeId, bytes] = {}
    tree = CompactRange()
    for index, hashed in enumerate(leaf_hashes):
        nodes[NodeId(0, index)] = hashed
        nodes.update(tree.append(hashed))
    return nodes


NODES = stored_nodes(LEAF_HASHES)


def audit_path(index: int, size: int) -> list[bytes]:
    return [range_hash(begin, end, NODES) for begin, end in inclusion_ranges(index, size)]


def consistency_path(first: int, second: int) -> list[bytes]:
    return [range_hash(begin, end, NODES) for begin, end in consistency_ranges(first, second)]


def root(size: int) -> bytes:
    return range_hash(0, size, NODES)


@functools.cache
def rfc_mth(begin: int, end: int) -> bytes:
    """MTH(D[begin:end]) as RFC 9162 section 2.1.1 defines it, recursively over the leaves."""
    n = end - begin
    if n == 1:
        return hashlib.sha256(b"\x00" + LEAVES[begin]).digest()
    k = 1 << ((n - 1).bit_length() - 1)  # the largest power of two smaller than n
    return hashlib.sha256(b"\x01" + rfc_mth(begin, begin + k) + rfc_mth(begin + k, end)).digest()


def rfc_path(m: int, begin: int, end: int) -> list[bytes]:
    """PATH(m, D[begin:end]), section 2.1.3.1."""
    n = end - begin
    if n == 1:
        return []
    k = 1 << ((n - 1).bit_length() - 1)
    if m < k:
        return [*rfc_path(m, begin, begin + k), rfc_mth(begin + k, end)]
    return [*rfc_path(m - k, begin + k, end), rfc_mth(begin, begin + k)]


def rfc_subproof(m: int, begin: int, end: int, b: bool) -> list[bytes]:
    """SUBPROOF(m, D[begin:end], b), section 2.1.4.1."""
    n = end - begin
    if m == n:
        return [] if b else [rfc_mth(begin, end)]
    k = 1 << ((n - 1).bit_length() - 1)
    if m <= k:
        return [*rfc_subproof(m, begin, begin + k, b), rfc_mth(begin + k, end)]
    return [*rfc_subproof(m - k, begin + k, end, False), rfc_mth(begin, begin + k)]


def rfc_consistency_proof(m: int, n: int) -> list[bytes]:
    """PROOF(m, D[n]) = SUBPROOF(m, D[n], true)."""
    return rfc_subproof(m, 0, n, True)


@pytest.fixture(scope="module")
def reference() -> InmemoryTree:
    tree = InmemoryTree(algorithm="sha256")  # RFC 9162 prefixes ("security") are pymerkle's default
    for leaf in LEAVES:
        tree.append_entry(leaf)
    return tree


def flipped(h: bytes, position: int) -> bytes:
    changed = bytearray(h)
    changed[position % len(h)] ^= 0x01
    return bytes(changed)


def test_hashes_carry_the_rfc_prefixes() -> None:
    assert leaf_hash(b"abc") == hashlib.sha256(b"\x00abc").digest()
    assert node_hash(b"L" * 32, b"R" * 32) == hashlib.sha256(b"\x01" + b"L" * 32 + b"R" * 32).digest()
    assert root_of([]) == EMPTY_ROOT == hashlib.sha256(b"").digest()


def test_roots_match_the_certificate_transparency_reference() -> None:
    hashes = [leaf_hash(leaf) for leaf in CT_LEAVES]
    assert [root_of(hashes[:size]).hex() for size in range(1, 9)] == CT_ROOTS


def test_every_root_from_stored_nodes_matches_pymerkle(reference: InmemoryTree) -> None:
    for size in range(1, MAX_SIZE + 1):
        assert root(size) == reference.get_root(size) == root_of(LEAF_HASHES[:size]) == rfc_mth(0, size), size


def test_every_inclusion_proof_up_to_300_leaves_matches_and_verifies_with_pymerkle(
    reference: InmemoryTree,
) -> None:
    for size in range(1, MAX_SIZE + 1):
        expected_root = reference.get_root(size)
        for index in range(size):
            path = audit_path(index, size)
            theirs = reference.prove_inclusion(index + 1, size)  # pymerkle counts leaves from 1
            # pymerkle's path is the leaf hash followed by the RFC audit path, in the same order.
            assert theirs.path == [LEAF_HASHES[index], *path], (index, size)
            assert path == rfc_path(index, 0, size)
            ours = PymerkleInclusion(
                "sha256", True, size, index + 1, theirs.rule, [LEAF_HASHES[index], *path]
            )
            ours.verify(LEAF_HASHES[index], expected_root, index=index + 1, size=size)
            verify_inclusion(index, size, LEAF_HASHES[index], path, expected_root)


def test_every_consistency_proof_up_to_64_leaves_is_the_rfc_proof_and_verifies(
    reference: InmemoryTree,
) -> None:
    for second in range(1, MAX_CONSISTENCY_SIZE + 1):
        for first in range(1, second + 1):
            path = consistency_path(first, second)
            assert path == rfc_consistency_proof(first, second), (first, second)
            verify_consistency(first, second, root(first), root(second), path)
            # pymerkle shapes its consistency proofs differently (it splits the other way when the old size
            # falls on a split point), so it checks the roots our proof is between, not the path itself.
            theirs = reference.prove_consistency(first, second)
            theirs.verify(root(first), root(second), prior_size=first, later_size=second)


def test_a_changed_byte_anywhere_in_an_inclusion_proof_fails(reference: InmemoryTree) -> None:
    for size in range(1, MAX_CONSISTENCY_SIZE + 1):
        good_root = root(size)
        for index in range(size):
            leaf, path = LEAF_HASHES[index], audit_path(index, size)
            for position in range(len(path)):
                bad = [flipped(h, position * 7) if i == position else h for i, h in enumerate(path)]
                with pytest.raises(RootMismatchError):
                    verify_inclusion(index, size, leaf, bad, good_root)
                rule = reference.prove_inclusion(index + 1, size).rule
                with pytest.raises(InvalidProof):
                    PymerkleInclusion("sha256", True, size, index + 1, rule, [leaf, *bad]).verify(
                        leaf, good_root
                    )
            with pytest.raises(RootMismatchError):
                verify_inclusion(index, size, flipped(leaf, index), path, good_root)
            with pytest.raises(RootMismatchError):
                verify_inclusion(index, size, leaf, path, flipped(good_root, size))


def test_a_wrong_index_or_tree_size_fails() -> None:
    for size in range(1, MAX_CONSISTENCY_SIZE + 1):
        for index in range(size):
            leaf, path = LEAF_HASHES[index], audit_path(index, size)
            for other in range(size):
                if other != index:
                    with pytest.raises(ProofError):
                        verify_inclusion(other, size, leaf, path, root(size))
            for other_size in {size - 2, size - 1, size + 1, size + 2, 2 * size, size + 64}:
                if index < other_size <= MAX_SIZE and other_size != size:
                    with pytest.raises(ProofError):
                        verify_inclusion(index, other_size, leaf, path, root(other_size))
            with pytest.raises(ProofError):
                verify_inclusion(size, size, leaf, path, root(size))  # past the end


def test_truncated_or_extended_inclusion_paths_fail() -> None:
    for size in (2, 3, 7, 8, 9, 100, 300):
        for index in (0, size // 2, size - 1):
            path = audit_path(index, size)
            with pytest.raises(ProofError):
                verify_inclusion(index, size, LEAF_HASHES[index], path[:-1], root(size))
            with pytest.raises(ProofError):
                verify_inclusion(index, size, LEAF_HASHES[index], [*path, path[-1]], root(size))
            with pytest.raises(ProofError):
                verify_inclusion(index, size, LEAF_HASHES[index], [*path[:-1], path[-1][:31]], root(size))


def test_tampered_consistency_proofs_fail() -> None:
    for second in range(2, MAX_CONSISTENCY_SIZE + 1):
        for first in range(1, second):
            path = consistency_path(first, second)
            for position in range(len(path)):
                bad = [flipped(h, position) if i == position else h for i, h in enumerate(path)]
                with pytest.raises(RootMismatchError):
                    verify_consistency(first, second, root(first), root(second), bad)
            with pytest.raises(RootMismatchError):
                verify_consistency(first, second, flipped(root(first), 0), root(second), path)
            with pytest.raises(RootMismatchError):
                verify_consistency(first, second, root(first), flipped(root(second), 0), path)
            with pytest.raises(ProofError):
                verify_consistency(first, second, root(first), root(second), path[:-1])
            with pytest.raises(ProofError):  # swapped roots
                verify_consistency(second, first, root(second), root(first), path)
            if first + 1 < second:
                with pytest.raises(ProofError):
                    verify_consistency(first + 1, second, root(first + 1), root(second), path)


def test_equal_sizes_need_an_empty_path_and_equal_roots() -> None:
    verify_consistency(5, 5, root(5), root(5), [])
    assert consistency_ranges(5, 5) == []
    with pytest.raises(RootMismatchError):
        verify_consistency(5, 5, root(5), root(4), [])
    with pytest.raises(ProofError):
        verify_consistency(5, 5, root(5), root(5), [root(5)])
    with pytest.raises(ProofError):
        verify_consistency(0, 5, EMPTY_ROOT, root(5), [])


def test_a_proof_reads_at_most_two_nodes_per_level() -> None:
    """An audit path has one subtree per level; only the one at the tree's right edge may be incomplete, made of
    at most log2(n) stored nodes. So a proof (and its roots) reads O(log n) nodes, never a range of leaves."""
    for size in (1, 2, 3, 5, 100, 1000, 12345, 10**6, 2**40 + 12345):
        depth = max(1, math.ceil(math.log2(size)))
        worst = max(
            len(nodes_needed([*inclusion_ranges(index, size), (0, size)]))
            for index in {0, 1, size // 3, size // 2, size - 2, size - 1}
            if 0 <= index < size
        )
        assert worst <= 2 * depth, (size, worst)
        if size > 1:
            worst = len(
                nodes_needed([*consistency_ranges(size // 3 or 1, size), (0, size // 3 or 1), (0, size)])
            )
            assert worst <= 4 * depth, (size, worst)


def test_a_range_splits_into_aligned_perfect_subtrees() -> None:
    assert perfect_subtrees(0, 7) == [NodeId(2, 0), NodeId(1, 2), NodeId(0, 6)]
    assert perfect_subtrees(8, 13) == [NodeId(2, 2), NodeId(0, 12)]
    with pytest.raises(ValueError):
        perfect_subtrees(1, 3)  # [1, 3) is no subtree of an RFC tree
    with pytest.raises(ValueError):
        inclusion_ranges(3, 3)
    with pytest.raises(ValueError):
        consistency_ranges(0, 3)


def test_root_from_an_inclusion_proof_is_the_tree_root() -> None:
    assert root_from_inclusion_proof(0, 1, LEAF_HASHES[0], []) == LEAF_HASHES[0] == root(1)
    assert root_from_inclusion_proof(9, 10, LEAF_HASHES[9], audit_path(9, 10)) == root(10)


def test_the_compact_range_round_trips_through_its_bytes() -> None:
    tree = CompactRange()
    for hashed in LEAF_HASHES[:77]:
        tree.append(hashed)
    again = CompactRange.from_bytes(77, tree.to_bytes())
    assert again.root() == root(77)
    with pytest.raises(ValueError):
        CompactRange.from_bytes(79, tree.to_bytes())  # 79 leaves make five perfect subtrees, 77 four
