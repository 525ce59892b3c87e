"""The transparency log: an RFC 9162 Merkle tree with signed checkpoints and proofs."""
