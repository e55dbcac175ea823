"""Ingestion on a Ray cluster: `iwan predict`, `iwan images add` and `iwan hash encode` with
`--ray ADDRESS` (Settings.ray_address).

The work is a list of tasks, each a fixed slice of the image list (a predictor batch of a split,
a batch of files to add), run by a pool of actors, one per CPU of the cluster, each of which
loads its models once and is given its next task as it finishes one. The driver (this process) hands the actors the
database URL and its Settings: a worker reads neither its own environment nor its IWAN_HOME, so
the paths the settings name (IWAN_HOME's models, the image files) must be the same on every
node (one machine, or a shared file system).

Image ids never depend on the order in which tasks finish: a split's images are registered by
the driver before any task runs (ids in the data set's order) and its workers write predictions
keyed by those ids with `merge_predictions` (COPY, then INSERT ... ON CONFLICT DO NOTHING), so a
retried task or a worker that died half-way writes nothing twice. `iwan hash encode` does the
same with the hash network's codes and embeddings (`merge_codes`) and its head's predictions,
over the same slices as in one process, after the driver has deleted the model's earlier rows
of the split (an encode replaces them). Files added to a collection
are decoded and encoded by the workers, and stored by the driver in the files' order, batch
after batch, as `add_files` stores them (a rerun skips bytes the collection holds). Ray retries
the tasks of a worker that dies on other workers.

Ray is imported only here, and this module only when an address is given.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import socket
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from tqdm import tqdm

from iwan.collections import ingest
from iwan.config import STORED_PREDICTIONS, Settings
from iwan.datasets.loaders import ImageListing
from iwan.db import collections as store
from iwan.db import images as image_store
from iwan.db.predictions import PredictSummary, done_image_ids, merge_predictions, register_classes
from iwan.vision.decode import DecodePolicy
from iwan.vision.encoder import Encoded
from iwan.vision.features import CHUNK_SIZE

if TYPE_CHECKING:
    from iwan.collections.encode import EncodeSummary

RAY_MISSING = "Ray is not installed here: install the extra, pip install 'iwan[ray]' (see README \"Ingestion on Ray\")"


PROBE_TIMEOUT_S = 5.0
"""Seconds to wait for the head's port to answer before ray.init is tried."""


class ClusterError(RuntimeError):
    """The cluster could not be joined or a task failed there; the message says which and what to do."""


@dataclass(frozen=True)
class PredictorSpec:
    """How a worker loads the predictor (iwan.vision.predictors.load_predictor's arguments)."""

    name: str
    backend: str = "onnx"
    weights: str | None = None
    pretrained: bool = True
    image_size: int | None = None
    precision: str | None = None

    def load(self, settings: Settings, threads: int | None = None):
        from iwan.vision.predictors import load_predictor

        return load_predictor(self.name, weights=self.weights, backend=self.backend, pretrained=self.pretrained,
                              image_size=self.image_size, precision=self.precision, threads=threads,
                              settings=settings)


class Cluster:
    """A connection to the Ray cluster at `address` (host:port of its head, or `auto`), for the
    length of a `with` block. `workers`: the actor pool's largest size, by default one actor
    per CPU of the cluster."""

    def __init__(self, address: str, workers: int | None = None):
        self.address = address
        self.workers = workers

    def __enter__(self) -> Cluster:
        try:
            import ray
        except ImportError:
            raise ClusterError(RAY_MISSING) from None
        self._probe()
        try:
            ray.init(address=self.address, logging_level=logging.WARNING, log_to_driver=False)
        except (ConnectionError, ValueError, RuntimeError) as err:
            raise ClusterError(
                f"cannot join the Ray cluster at {self.address!r} ({err}): start it with `ray start --head`, or "
                "give its head's host:port with --ray / IWAN_RAY_ADDRESS"
            ) from None
        cpus = int(ray.cluster_resources().get("CPU", 0))
        if cpus < 1:
            ray.shutdown()
            raise ClusterError(f"the Ray cluster at {self.address!r} has no CPUs for workers: start nodes with --num-cpus")
        self.workers = min(self.workers or cpus, cpus)
        return self

    def _probe(self) -> None:
        """Fail at once where nothing listens at the address (ray.init waits minutes, then exits)."""
        host, _, port = self.address.rpartition(":")
        if self.address == "auto":
            return
        try:
            socket.create_connection((host or "127.0.0.1", int(port)), timeout=PROBE_TIMEOUT_S).close()
        except (OSError, ValueError) as err:
            raise ClusterError(
                f"cannot join the Ray cluster at {self.address!r} ({err}): start it with `ray start --head`, or "
                "give its head's host:port with --ray / IWAN_RAY_ADDRESS"
            ) from None

    def __exit__(self, *exc) -> None:
        import ray

        ray.shutdown()

    def run(self, tasks: list[Any], actor: type, arguments: dict[str, Any]) -> Iterator[Any]:
        """The results of `actor(**arguments).run(task)` for each task, in the tasks' order,
        computed by a pool of such actors (one CPU each) on the cluster. An actor that dies (its
        node lost) leaves the pool and its task goes to the others; a task that fails ends the run."""
        import ray

        if not tasks:
            return
        # Plain actors, each given its next task as it finishes one: Ray Data's streaming executor
        # (what ran them before) kept about 0.4 of a core busy in this process, on a 2-core machine
        # a third of what two workers had (bench_ingest.py). Tasks and results travel as Ray's own
        # serialisation between trusted nodes; nothing here unpickles bytes itself.
        remote: Any = ray.remote(num_cpus=1, max_restarts=0)(actor)
        actors: list[Any] = [remote.remote(**arguments) for _ in range(self.workers or 1)]
        idle, waiting = list(actors), deque(range(len(tasks)))
        running: dict[Any, tuple[int, Any]] = {}  # result ref -> (task, actor)
        finished: dict[int, Any] = {}
        given, lost = 0, None
        try:
            while given < len(tasks):
                while idle and waiting:
                    worker, task = idle.pop(), waiting.popleft()
                    running[worker.run.remote(tasks[task])] = (task, worker)
                if not running:
                    raise ClusterError(
                        f"every worker of the Ray cluster at {self.address!r} died ({lost}); what the tasks before "
                        "wrote stays: run the command again once the cause is fixed (it resumes)"
                    )
                [ready], _ = ray.wait(list(running), num_returns=1)
                task, worker = running.pop(ready)
                try:
                    finished[task] = ray.get(ready)
                    idle.append(worker)
                except (ray.exceptions.RayActorError, ray.exceptions.ObjectLostError) as err:
                    lost = err
                    waiting.appendleft(task)
                    if isinstance(err, ray.exceptions.RayActorError):
                        actors.remove(worker)
                    else:
                        idle.append(worker)
                while given in finished:
                    yield finished.pop(given)
                    given += 1
        except ray.exceptions.RayTaskError as err:
            raise ClusterError(
                f"a task failed on the Ray cluster at {self.address!r}: {err.cause}; what the tasks before it wrote "
                "stays: run the command again once the cause is fixed (it resumes)"
            ) from None
        finally:
            for worker in actors:
                ray.kill(worker)


def _threads() -> int:
    """The CPUs Ray gave this actor: its model passes use as many threads."""
    import ray
    import torch

    threads = max(1, int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1)))
    torch.set_num_threads(threads)
    return threads


# --- iwan predict --------------------------------------------------------------------------


@dataclass(frozen=True)
class _PredictTask:
    ids: np.ndarray
    paths: list[str] | None
    pixels: np.ndarray | None


class _Predicting:
    """A worker of `predict_split`: loads the predictor once, then decodes, predicts and writes
    one batch per call."""

    def __init__(self, spec: PredictorSpec, settings: Settings, database_url: str):
        from iwan.db.engine import make_engine

        self.predictor = spec.load(settings, threads=_threads())
        self.max_pixels = settings.max_image_pixels
        self.engine = make_engine(database_url, settings=settings)
        register_classes(self.engine, self.predictor.name, self.predictor.categories)

    def run(self, task: _PredictTask) -> tuple[int, int]:
        pixels = task.pixels if task.pixels is not None else _decode(cast(list[str], task.paths), self.max_pixels)
        predicted = self.predictor.predict(pixels, top=STORED_PREDICTIONS, features=True)
        with self.engine.begin() as conn:
            written = merge_predictions(conn, self.predictor.name, task.ids, predicted.indices, predicted.probabilities)
        return len(task.ids), written


def _decode(paths: list[str], max_pixels: int) -> np.ndarray:
    """Image files as `load_dataset` decodes an image folder's (one size, through the one decoder)."""
    from iwan.datasets.loaders import DatasetFormatError, load_image

    images = [load_image(path, max_pixels=max_pixels) for path in paths]
    for path, image in zip(paths, images):
        if image.shape != images[0].shape:
            raise DatasetFormatError(
                f"{path} is {image.shape[1]}x{image.shape[0]} but {paths[0]} is {images[0].shape[1]}x"
                f"{images[0].shape[0]}: a data set's images must share one size; resize them first"
            )
    return np.stack(images)


def predict_split(engine: Engine, cluster: Cluster, spec: PredictorSpec, listing: ImageListing, batch_size: int,
                  progress: bool = True, *, settings: Settings) -> PredictSummary:
    """`iwan.db.predictions.predict_split` on the cluster: the split's images are registered here
    (ids in the data set's order), the batches not done yet (the same batches, 1024-image chunks
    cut into `batch_size`, so the same passes) are predicted and written by the workers."""
    registered = image_store.register(engine, listing)
    before = done_image_ids(engine, spec.name, registered.ids)
    done = np.isin(registered.ids, before)
    tasks, sizes = [], []
    n = len(listing)
    for chunk in range(0, n, CHUNK_SIZE):
        for start in range(chunk, min(chunk + CHUNK_SIZE, n), batch_size):
            stop = min(start + batch_size, chunk + CHUNK_SIZE, n)
            if done[start:stop].all():
                continue
            paths = None if listing.paths is None else [str(p) for p in listing.paths[start:stop]]
            pixels = None if listing.images is None else listing.images[start:stop]
            tasks.append(_PredictTask(registered.ids[start:stop], paths, pixels))
            sizes.append(stop - start)
    desc = f"{spec.name} {listing.name} {listing.split} on {cluster.workers} Ray workers"
    with tqdm(total=n, initial=n - sum(sizes), desc=desc, unit="img", disable=not progress, smoothing=0.1) as bar:
        if tasks:
            arguments = {"spec": spec, "settings": settings, "database_url": _url(engine)}
            for images, _ in cluster.run(tasks, _Predicting, arguments):
                bar.update(images)
    after = done_image_ids(engine, spec.name, registered.ids)
    if len(after) < len(registered.ids):
        raise ClusterError(
            f"{len(registered.ids) - len(after)} images of {listing.name}/{listing.split} have no {spec.name} "
            "predictions after the run on the cluster: run the command again (it resumes)"
        )
    return PredictSummary(predictor=spec.name, dataset=listing.name, split=listing.split,
                          images=len(registered.ids), predicted=len(after) - len(before), skipped=len(before))


def _url(engine: Engine) -> str:
    """The database URL the workers connect to: the driver's own (the embedded server's too)."""
    return engine.url.render_as_string(hide_password=False)


# --- iwan hash encode ----------------------------------------------------------------------


@dataclass(frozen=True)
class _EncodeTask:
    ids: np.ndarray
    start: int
    """The slice's first place in the split (where its feature-cache chunk begins follows)."""
    paths: list[str] | None
    pixels: np.ndarray | None


class _Hashing:
    """A worker of `encode_split`: loads the hash network (and the predictor whose features a
    precomputed backbone eats) once, then decodes, encodes and writes one slice per call."""

    def __init__(self, checkpoint: str, backend: str, model: str, settings: Settings, database_url: str):
        from hashing.net import load_checkpoint
        from iwan.db.engine import make_engine

        threads = _threads()
        self.net = load_checkpoint(checkpoint).net
        features = self.net.config.features
        self.predictor = PredictorSpec(features, backend=backend).load(settings, threads=threads) if features else None
        self.model = model
        self.max_pixels = settings.max_image_pixels
        self.engine = make_engine(database_url, settings=settings)

    def run(self, task: _EncodeTask) -> tuple[int, int, np.ndarray]:
        from iwan.collections.encode import encode_inputs
        from iwan.db.codes import merge_codes

        pixels = task.pixels if task.pixels is not None else _decode(cast(list[str], task.paths), self.max_pixels)
        inputs = pixels if self.predictor is None else _features(self.predictor, pixels, task.start)
        encoded = encode_inputs(self.net, inputs)
        with self.engine.begin() as conn:
            written = merge_codes(conn, self.model, task.ids, encoded.embeddings, encoded.codes)
            if encoded.class_indices is not None:
                merge_predictions(conn, self.model, task.ids, encoded.class_indices, cast(np.ndarray, encoded.probabilities))
        return len(task.ids), written, np.unique(encoded.codes)


def _features(predictor, pixels: np.ndarray, start: int) -> np.ndarray:
    """A slice's features as the feature cache computes them (iwan.vision.features): predictor
    batches of DEFAULT_BATCH_SIZE counted from the chunk's start, kept as float16."""
    from iwan.config import DEFAULT_BATCH_SIZE

    stop = start + len(pixels)
    chunk = start - start % CHUNK_SIZE
    edges = [start, *(b for b in range(chunk, stop, DEFAULT_BATCH_SIZE) if b > start), stop]
    parts = [predictor.predict(pixels[a - start : b - start], top=STORED_PREDICTIONS, features=True).features
             for a, b in zip(edges, edges[1:])]
    return np.concatenate(parts).astype(np.float16).astype(np.float32)


def encode_split(engine: Engine, cluster: Cluster, checkpoint: Path, listing: ImageListing, model_name: str,
                 backend: str = "onnx", batch_size: int | None = None, progress: bool = True, *,
                 settings: Settings) -> EncodeSummary:
    """`iwan.collections.encode.encode_split` on the cluster: the split's images are registered
    here (ids in the data set's order) and the model's earlier rows of them deleted; the workers
    encode the same slices as one process does and write each by id (`merge_codes`,
    `merge_predictions`), so a retried slice writes nothing twice."""
    from hashing.inference import EVAL_BATCH_SIZE
    from hashing.net import load_checkpoint
    from iwan.collections.encode import EncodeSummary, class_names, slices
    from iwan.db.codes import images_without_codes

    loaded = load_checkpoint(checkpoint)  # a bad checkpoint fails here, before any work
    config = loaded.net.config
    registered = image_store.register(engine, listing)
    _forget(engine, model_name, registered.ids, config.classification)
    if config.classification:
        register_classes(engine, model_name, class_names(loaded.class_names, listing.class_names))
    tasks = []
    for start, stop in slices(len(listing), batch_size or EVAL_BATCH_SIZE):
        paths = None if listing.paths is None else [str(p) for p in listing.paths[start:stop]]
        pixels = None if listing.images is None else listing.images[start:stop]
        tasks.append(_EncodeTask(registered.ids[start:stop], start, paths, pixels))
    distinct: list[np.ndarray] = []
    desc = f"encode {listing.name} {listing.split} on {cluster.workers} Ray workers"
    with tqdm(total=len(listing), desc=desc, unit="img", disable=not progress, smoothing=0.1) as bar:
        arguments = {"checkpoint": str(Path(checkpoint).resolve()), "backend": backend, "model": model_name,
                     "settings": settings, "database_url": _url(engine)}
        for images, _, codes in cluster.run(tasks, _Hashing, arguments):
            distinct.append(codes)
            bar.update(images)
    missing = len(images_without_codes(engine, model_name, registered.ids))
    if config.classification:
        missing = max(missing, len(registered.ids) - len(done_image_ids(engine, model_name, registered.ids)))
    if missing:
        raise ClusterError(
            f"{missing} images of {listing.name}/{listing.split} have no {model_name} codes or predictions after the "
            "run on the cluster: run the command again"
        )
    return EncodeSummary(model=model_name, dataset=listing.name, split=listing.split, images=len(registered.ids),
                         embedding_dim=config.embedding_dim,
                         distinct_codes=len(np.unique(np.concatenate(distinct))) if distinct else 0,
                         predictions_stored=config.classification)


def _forget(engine: Engine, model: str, ids: np.ndarray, predictions: bool) -> None:
    """Delete the codes (and the head's predictions) of `model` for these images: an encode
    replaces them, as `store_codes` and `replace_predictions` do in one process."""
    from iwan.db.predictions import lock_predictions

    with engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM hash_codes WHERE model = :m AND image_id = ANY(:ids)"),
                     {"m": model, "ids": ids.tolist()})
        if predictions:
            lock_predictions(conn, model)
            conn.execute(sa.text("DELETE FROM predictions WHERE model = :m AND image_id = ANY(:ids)"),
                         {"m": model, "ids": ids.tolist()})


# --- iwan images add -----------------------------------------------------------------------


@dataclass(frozen=True)
class _Encoded:
    """What a worker hands back of a batch of files: the skipped ones with why, the decoded
    ones (without pixels; `index` their place in the batch) and their encoding."""

    skipped: list[tuple[str, str]]
    fresh: list[ingest.DecodedFile]
    encoded: Encoded | None


class _Encoding:
    """A worker of `add_paths`: loads the collection's predictor and hash model once, then
    reads, decodes and encodes one batch of files per call."""

    def __init__(self, spec: PredictorSpec, hash_model: str | None, settings: Settings, database_url: str):
        from iwan.db.engine import make_engine
        from iwan.vision.encoder import Encoder

        self.encoder = Encoder(spec.name, hash_model, backend=spec.backend, settings=settings,
                               loaded_predictor=spec.load(settings, threads=_threads()))
        self.policy = DecodePolicy(max_pixels=settings.max_image_pixels, formats=None)
        engine = make_engine(database_url, settings=settings)
        register_classes(engine, spec.name, self.encoder.categories)
        engine.dispose()

    def run(self, paths: list[str]) -> _Encoded:
        report = ingest.AddReport()
        readable, places = [], []
        for place, path in enumerate(paths):
            try:
                readable.append((path, Path(path).read_bytes()))
                places.append(place)
            except OSError as err:
                report.skipped.append((path, f"unreadable ({err.strerror or err})"))
        fresh = ingest.decode_batch(readable, self.policy, None, report)
        encoded = self.encoder.encode([cast(np.ndarray, item.pixels) for item in fresh]) if fresh else None
        light = [dataclasses.replace(item, index=places[item.index], pixels=None) for item in fresh]
        return _Encoded(report.skipped, light, encoded)


def add_paths(engine: Engine, cluster: Cluster, name: str, paths: list[Path], spec: PredictorSpec,
              label: str | None = None, progress: bool = True, *, settings: Settings) -> ingest.AddReport:
    """`iwan.collections.ingest.add_files` on the cluster, for files by path: the workers read,
    decode and encode each batch of `ingest.BATCH_SIZE` files; this process stores the batches in
    the files' order (ids ascending in that order), each in one transaction, reading each kept
    file again for its bytes (skipped when they changed meanwhile)."""
    report = ingest.AddReport()
    batches = [[str(p) for p in paths[start : start + ingest.BATCH_SIZE]]
               for start in range(0, len(paths), ingest.BATCH_SIZE)]
    with ingest.database_writes(f"adding images to {name!r}", "the batches stored before stay stored"):
        collection = store.get(engine, name)
        arguments = {"spec": spec, "hash_model": collection.hash_model, "settings": settings,
                     "database_url": _url(engine)}
        with tqdm(total=len(paths), desc=f"add to {name} on {cluster.workers} Ray workers", unit="file",
                  disable=not progress or len(paths) < 2) as bar:
            for files, result in zip(batches, cluster.run(batches, _Encoding, arguments)):
                report.skipped += result.skipped
                rows, kept = [], []
                for row, item in enumerate(result.fresh):
                    data = _read(files[item.index])
                    if data is None or hashlib.sha256(data).hexdigest() != item.sha256:
                        report.skipped.append((item.file_name, "it changed (or went) while being added"))
                        continue
                    rows.append(row)
                    kept.append((item, data))
                if kept:
                    ingest.store_batch(engine, name, collection, kept, _rows(cast(Encoded, result.encoded), rows), spec.name, label,
                                       report, settings.image_dir)
                bar.update(len(files))
    return report


def _read(path: str) -> bytes | None:
    try:
        return Path(path).read_bytes()
    except OSError:
        return None


def _rows(encoded: Encoded, rows: list[int]) -> Encoded:
    """Those rows of an encoding."""
    return Encoded(encoded.class_indices[rows], encoded.probabilities[rows],
                   None if encoded.embeddings is None else encoded.embeddings[rows],
                   None if encoded.codes is None else encoded.codes[rows])
