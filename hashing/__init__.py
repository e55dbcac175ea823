"""Semantic hashes: hierarchy class embeddings, the 48-bit hash network, Hamming-shortlist search."""

HASH_BITS = 48
"""Bits of a code: one uint64 per image, `bit(48)` in PostgreSQL (migration 0003 reads this)."""
DEFAULT_SHORTLIST_FACTOR = 2
"""The Hamming shortlist holds factor * k candidates before the cosine re-rank."""
