"""Semantic hashes: hierarchy class embeddings, the 48-bit hash network, Hamming-shortlist search."""
