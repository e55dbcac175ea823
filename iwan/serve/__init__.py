"""`iwan serve`: the HTTP retrieval service over live collections, and its web page.

`create_app(engine, collections)` builds the FastAPI application (tests build it directly);
`iwan serve` runs it under uvicorn.
"""

from iwan.serve.app import create_app

__all__ = ["create_app"]
