"""iwan: semantic image retrieval with image-word association networks and semantic hashes."""

__version__ = "0.1.0"
