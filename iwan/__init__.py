"""iwan: semantic image retrieval with image-word association networks and semantic hashes.

The public API, importable from `iwan` itself (each name is imported when first used, so that
`iwan --help` stays fast):

    import iwan

    engine = iwan.make_engine()                       # IWAN_DATABASE_URL, else the embedded server
    with iwan.LiveCollection.open(engine, "cifar10") as live:
        result = iwan.search(live, iwan.SearchRequest(text="cat:0.8,dog:0.2", k=5))
    print(result.as_dict())                           # the document `iwan serve` answers
"""

from importlib import import_module

__version__ = "0.1.0"

_PUBLIC = {
    "make_engine": "iwan.db",
    "DatabaseError": "iwan.db",
    "Settings": "iwan.config",
    "settings": "iwan.config",
    "LiveCollection": "iwan.collections.live",
    "create_collection": "iwan.collections.live",
    "drop_collection": "iwan.collections.live",
    "list_collections": "iwan.collections.live",
    "SearchRequest": "iwan.collections.pipeline",
    "SearchResult": "iwan.collections.pipeline",
    "search": "iwan.collections.pipeline",
    "Batch": "iwan.retrieval",
    "Corpus": "iwan.retrieval",
    "Explained": "iwan.retrieval",
    "Retriever": "iwan.retrieval",
    "get_retriever": "iwan.retrieval",
    "register_retriever": "iwan.retrieval",
    "retriever_names": "iwan.retrieval",
    "DecodePolicy": "iwan.vision.decode",
    "ImageRefused": "iwan.vision.decode",
    "decode_image": "iwan.vision.decode",
    "create_app": "iwan.serve",
}

__all__ = ["__version__", *sorted(_PUBLIC)]


def __getattr__(name: str):
    if name in _PUBLIC:
        value = getattr(import_module(_PUBLIC[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'iwan' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))
