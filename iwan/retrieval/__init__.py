"""Retrieval: one protocol for every method (protocol), a registry that builds them by name
(registry), the methods themselves (iwan, exhaustive, hashes, fused, hashes-pg, exhaustive-pg),
fusion rules (fusion) and the store as the data they are built from (stored).

Every built-in method is registered on import, as torchvision's models are.
"""

from iwan.retrieval import exhaustive, exhaustive_pg, fused, hashes, hashes_pg, iwan
from iwan.retrieval.protocol import Batch, CorpusData, Explained, Retriever
from iwan.retrieval.registry import Corpus, get_retriever, register_retriever, retriever_names

__all__ = [
    "Batch", "Corpus", "CorpusData", "Explained", "Retriever", "exhaustive", "exhaustive_pg", "fused",
    "get_retriever", "hashes", "hashes_pg", "iwan", "register_retriever", "retriever_names",
]
