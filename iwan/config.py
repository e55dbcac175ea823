"""Every setting of the project, in one place.

Environment variables override the defaults; nothing else reads the environment.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import platformdirs

from hashing import DEFAULT_SHORTLIST_FACTOR as DEFAULT_SHORTLIST_FACTOR
from hashing import HASH_BITS as HASH_BITS

# IWAN defaults (the original work's settings).
DEFAULT_TOP_IWK = 4
MAX_TOP_IWK = 10
DEFAULT_TOP_WWK = 4
DEFAULT_K = 20
DEFAULT_KS = (1, 5, 10, 15, 20, 100, 250)
"""The cut-offs an evaluation reports."""
STRENGTHS = ("forward", "backward", "max")
"""Which association strength ranks a cue's targets and weighs the edge (iwan.network.graph)."""
DEFAULT_STRENGTH = STRENGTHS[0]
"""Forward strength (FSG), as in the original work."""

# Retrieval methods and their fusion.
METHODS = ("iwan", "exhaustive", "hashes", "fused")
"""The in-memory methods, in the order reports show them: what a collection with a hash model
serves and what `iwan evaluate` runs unless told otherwise (any registered method may be named)."""
WORD_METHODS = ("iwan",)
"""The methods of a collection without a hash model."""
FUSED_MEMBERS = ("iwan", "hashes")
"""What `fused` fuses (the weighted rule's IWAN weight is the first's)."""
FUSION_RULES = ("rrf", "weighted")
DEFAULT_FUSION_RULE = "rrf"
"""The `fused` method's rule; `iwan evaluate` validates a weight for the weighted rule instead
(EVALUATION_FUSION_RULE)."""
EVALUATION_FUSION_RULE = "weighted"
FUSION_DEPTH_FACTOR = 2
"""Each member of a fusion is searched this many times deeper than k."""
RRF_K0 = 60
"""Reciprocal rank fusion's constant (Cormack et al. 2009)."""

# Queries of several examples (iwan.retrieval: each method's explain_examples).
NEGATIVE_DEPTH_FACTOR = 4
"""IWAN with negative examples ranks the positives' nearest this many times k (deeper while the
k-th result could still change), and the negatives' as deep."""
ROCCHIO_NEGATIVE_WEIGHT = 0.5
"""The hash methods' query embedding is the positives' mean unit embedding minus this times the
negatives' (Rocchio 1971; his gamma for non-relevant documents, raised because a negative example
here is a deliberate choice, not a skimmed result)."""

# Semantic hashes: HASH_BITS and DEFAULT_SHORTLIST_FACTOR are the hashing library's own (imported above).

# Word predictions: how many classes are stored per image (topIWK chooses among them later).
STORED_PREDICTIONS = MAX_TOP_IWK
DEFAULT_PREDICTOR = "efficientnet-lite0"
"""The ImageNet classifier whose weights ship with the project (ResNet-50's must be downloaded)."""
DEFAULT_BATCH_SIZE = 64
BACKENDS = ("torch", "onnx")
"""How a predictor runs: PyTorch, or its ONNX export under ONNX Runtime."""

# Untrusted input.
DEFAULT_CONNECT_TIMEOUT_S = 10
"""How long a connection to PostgreSQL may take before the command fails (IWAN_CONNECT_TIMEOUT)."""
DEFAULT_MAX_IMAGE_PIXELS = 40_000_000
"""Images with more pixels are refused before decoding (IWAN_MAX_IMAGE_PIXELS): a small file can
hold a huge image."""
DECODE_MIN_SIDE = 512
"""Images for the models are decoded with each side reduced by a whole factor while it stays >=
this: the models squash an image to 224 pixels or less, so nothing larger is ever needed."""
DECODE_WAIT_S = 20.0
"""How long image work waits for room in the memory budget before the server answers 503."""
DEFAULT_DECODE_MEMORY_SHARE = 32
"""The image memory budget is the machine's memory / this, from 256 MiB to 768 MiB
(IWAN_DECODE_MEMORY overrides): enough for the largest image under the pixel limit, small enough
that concurrent hostile uploads cannot exhaust the machine."""

# The HTTP service (`iwan serve`).
SERVE_HOST = "127.0.0.1"  # loopback unless told otherwise: nothing is exposed by accident
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]")
"""Host headers the service always accepts; others only when named (its --host, IWAN_ALLOWED_HOSTS)."""
SERVE_PORT = 8000
SERVE_TORCH_THREADS = 1  # per request; concurrent requests share the cores (2 cores: 14 vs 6 image queries/s at one client)
SHUTDOWN_TIMEOUT_S = 20.0
"""How long the shutdown waits for the collections (one still loading, and the snapshots of those
changed since their last one) before the server stops without them, a warning naming each. Nothing
is lost: PostgreSQL holds every change, and the next start replays those after the last snapshot.
Supervisors kill a process that takes longer than they allow (Kubernetes after 30 s, systemd after
90 s, uvicorn's 5 s for requests come first), and a killed process leaves the embedded PostgreSQL
running and its exit status unset."""
MAX_BODY_BYTES = 10 * 1024 * 1024
MAX_HEADER_BYTES = 64 * 1024
"""A request line and header block larger than this is answered 431 (it is never buffered whole)."""
MAX_HEADER_FIELDS = 100
"""A request with more header fields is answered 431 (Apache's LimitRequestFields)."""
MIN_BODY_BYTES_PER_S = 1024
"""After IWAN_BODY_TIMEOUT seconds a request body must keep arriving at this average rate, or the
connection is closed: a body sent a byte a second is cut off, a slow but honest upload is not."""
DEFAULT_HEADER_TIMEOUT_S = 30
"""Seconds a connection has, from when it is ready for a request, to complete the request's
headers (IWAN_HEADER_TIMEOUT), however they trickle in (slowloris)."""
DEFAULT_BODY_TIMEOUT_S = 30
"""Seconds a request body may take, plus a second for every MIN_BODY_BYTES_PER_S bytes received
(IWAN_BODY_TIMEOUT)."""
DEFAULT_IDLE_TIMEOUT_S = 5
"""Seconds a connection may wait without sending a byte of a request (IWAN_IDLE_TIMEOUT): a new
connection and a kept-alive one between requests."""
DEFAULT_MAX_CONNECTIONS = 128
"""Open connections `iwan serve` serves at once (IWAN_MAX_CONNECTIONS); one beyond is answered 503
and closed at once, before anything of it is read."""
MAX_SEARCH_K = 1000
MAX_SEARCH_OFFSET = 10_000
MAX_TEXT_QUERY_CHARS = 2000
MAX_EXAMPLES = 16
"""Positive examples, and negative ones, a search may give (each list)."""
MAX_LABEL_FILTERS = 64
"""Labels a search may keep or exclude (each list)."""
MAX_LABEL_CHARS = 200
DUPLICATE_MAX_HAMMING = 2
"""Near-duplicates (collapse_duplicates, `iwan images add`): codes at most this many bits apart..."""
DUPLICATE_MIN_COSINE = 0.9995
"""...and embeddings at least this cosine apart (measured on CIFAR-10: README, "Near-duplicates")."""

USF_SOURCE = "usf"
USF_FILES = ("A-B", "C", "D-F", "G-K", "L-O", "P-R", "S", "T-Z")
USF_CITATION = (
    "Nelson, D. L., McEvoy, C. L., & Schreiber, T. A. (2004). The University of South Florida "
    "free association, rhyme, and word fragment norms. Behavior Research Methods, Instruments, "
    "& Computers, 36(3), 402-407."
)

# Where the external data comes from (each overridable, for mirrors and for tests).
USF_BASE_URL = "http://w3.usf.edu/FreeAssociation/AppendixA/"
CIFAR_BASE_URL = "https://www.cs.toronto.edu/~kriz/"
WEIGHTS_BASE_URL = "https://download.pytorch.org/models/"
# Seconds to wait for a connection (and for each block of a download): short, so that an
# offline machine learns within a minute that nothing can be fetched.
DEFAULT_FETCH_TIMEOUT = 10.0


@dataclass(frozen=True)
class Settings:
    home: Path
    """Per-user state: the embedded PostgreSQL cluster, built indexes, checkpoints."""
    data_dir: Path
    """Local copies of external data sets (CIFAR, the USF norms); loaders look here first."""
    database_url: str | None
    """An external PostgreSQL; None means the embedded server under `home`."""
    usf_url: str = USF_BASE_URL
    """The folder URL of the 8 USF Appendix A files (IWAN_USF_URL)."""
    cifar_url: str = CIFAR_BASE_URL
    """The folder URL of the official CIFAR python archives (IWAN_CIFAR_URL)."""
    weights_url: str = WEIGHTS_BASE_URL
    """The folder URL of torchvision's pretrained weight files (IWAN_WEIGHTS_URL)."""
    fetch_timeout: float = DEFAULT_FETCH_TIMEOUT
    """Seconds a download waits to connect, and for each block (IWAN_FETCH_TIMEOUT)."""
    connect_timeout: int = DEFAULT_CONNECT_TIMEOUT_S
    """Seconds a database connection may take (libpq counts whole seconds, at least 2)."""
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    """Largest image (width x height) a query or an upload may have (IWAN_MAX_IMAGE_PIXELS)."""
    decode_memory: int = field(default_factory=lambda: default_decode_memory())
    """Bytes the service's concurrent image decodes and model passes may hold together
    (IWAN_DECODE_MEMORY, e.g. 512M or 1G; default from the machine's memory)."""
    api_key: str | None = field(default=None, repr=False)
    """The service's write key (IWAN_API_KEY); None refuses every write."""
    cors_origins: tuple[str, ...] = ()
    """Origins allowed to call the service from a browser (IWAN_CORS_ORIGINS, comma-separated)."""
    allowed_hosts: tuple[str, ...] = ()
    """Host names the service answers besides the loopback names and its bind address
    (IWAN_ALLOWED_HOSTS, comma-separated): the names it is reached by (DNS rebinding)."""
    header_timeout: int = DEFAULT_HEADER_TIMEOUT_S
    """Seconds a connection has to complete a request's headers (IWAN_HEADER_TIMEOUT)."""
    body_timeout: int = DEFAULT_BODY_TIMEOUT_S
    """Seconds a request body may take beyond one per MIN_BODY_BYTES_PER_S bytes (IWAN_BODY_TIMEOUT)."""
    idle_timeout: int = DEFAULT_IDLE_TIMEOUT_S
    """Seconds a connection may wait idle for a request (IWAN_IDLE_TIMEOUT)."""
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    """Connections the service serves at once (IWAN_MAX_CONNECTIONS)."""
    ray_address: str | None = None
    """The Ray cluster `iwan predict`, `iwan images add` and `iwan hash encode` run on (IWAN_RAY_ADDRESS, `--ray`);
    None runs them in this process."""

    @property
    def pgdata(self) -> Path:
        return self.home / "pgdata"

    @property
    def index_dir(self) -> Path:
        return self.home / "indexes"

    @property
    def model_dir(self) -> Path:
        return self.home / "models"

    @property
    def cache_dir(self) -> Path:
        return self.home / "cache"

    @property
    def image_dir(self) -> Path:
        """Bytes of uploaded images, each file named by its sha256."""
        return self.home / "images"

    @property
    def collection_dir(self) -> Path:
        """Saved snapshots of collections' in-memory indexes."""
        return self.home / "collections"


def settings(database_url: str | None = None) -> Settings:
    """The settings in force now; an explicit `database_url` wins over IWAN_DATABASE_URL."""
    home = Path(os.environ.get("IWAN_HOME") or platformdirs.user_data_dir("iwan")).expanduser()
    data_dir = Path(
        os.environ.get("IWAN_DATA_DIR") or Path(platformdirs.user_cache_dir("iwan")) / "data"
    ).expanduser()
    return Settings(
        home=home,
        data_dir=data_dir,
        database_url=database_url or os.environ.get("IWAN_DATABASE_URL") or None,
        usf_url=os.environ.get("IWAN_USF_URL") or USF_BASE_URL,
        cifar_url=os.environ.get("IWAN_CIFAR_URL") or CIFAR_BASE_URL,
        weights_url=os.environ.get("IWAN_WEIGHTS_URL") or WEIGHTS_BASE_URL,
        fetch_timeout=_positive_float("IWAN_FETCH_TIMEOUT", DEFAULT_FETCH_TIMEOUT),
        connect_timeout=_positive_int("IWAN_CONNECT_TIMEOUT", DEFAULT_CONNECT_TIMEOUT_S, minimum=2),
        max_image_pixels=_positive_int("IWAN_MAX_IMAGE_PIXELS", DEFAULT_MAX_IMAGE_PIXELS, minimum=1),
        decode_memory=_size("IWAN_DECODE_MEMORY") or default_decode_memory(),
        api_key=os.environ.get("IWAN_API_KEY") or None,
        cors_origins=_listed("IWAN_CORS_ORIGINS"),
        allowed_hosts=_listed("IWAN_ALLOWED_HOSTS"),
        header_timeout=_positive_int("IWAN_HEADER_TIMEOUT", DEFAULT_HEADER_TIMEOUT_S, minimum=1),
        body_timeout=_positive_int("IWAN_BODY_TIMEOUT", DEFAULT_BODY_TIMEOUT_S, minimum=1),
        idle_timeout=_positive_int("IWAN_IDLE_TIMEOUT", DEFAULT_IDLE_TIMEOUT_S, minimum=1),
        max_connections=_positive_int("IWAN_MAX_CONNECTIONS", DEFAULT_MAX_CONNECTIONS, minimum=1),
        ray_address=os.environ.get("IWAN_RAY_ADDRESS") or None,
    )


def default_decode_memory() -> int:
    """The machine's (or its container's) memory / DEFAULT_DECODE_MEMORY_SHARE, from 256 to 768 MiB."""
    return min(768 << 20, max(256 << 20, machine_memory() // DEFAULT_DECODE_MEMORY_SHARE))


def machine_memory() -> int:
    """Bytes of memory this process may use: the cgroup's limit in a container, else the machine's."""
    import psutil

    total = psutil.virtual_memory().total
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
    except OSError:
        return total
    return min(total, int(limit)) if limit.isdigit() else total


_SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def _size(variable: str) -> int | None:
    """A byte count like 512M or 1G (K, M, G are powers of 1024); None when not set."""
    raw = os.environ.get(variable, "").strip()
    if not raw:
        return None
    number, unit = raw[:-1], raw[-1].upper()
    if unit.isdigit():
        number, unit = raw, ""
    if not number.isdigit() or unit not in _SIZE_UNITS or int(number) * _SIZE_UNITS[unit] < (1 << 20):
        raise ValueError(f"{variable}={raw!r} must be a size of at least 1M, like 512M or 1G")
    return int(number) * _SIZE_UNITS[unit]


def _listed(name: str) -> tuple[str, ...]:
    """A comma-separated variable's entries, blanks dropped."""
    return tuple(item.strip() for item in os.environ.get(name, "").split(",") if item.strip())


def _positive_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise ValueError(f"{name}={raw!r} must be a positive number of seconds")
    return value


def _positive_int(variable: str, default: int, minimum: int) -> int:
    raw = os.environ.get(variable)
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = None
    if value is None or value < minimum:
        raise ValueError(f"{variable}={raw!r} must be a whole number >= {minimum} (default {default})")
    return value
