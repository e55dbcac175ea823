"""Small, real inputs for the collection tests: norms over ImageNet class words, a tiny predictor
and hash network, generated images, and a replica process driven over stdin/stdout."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import usf_files
from PIL import Image

HASH_MODEL = "tiny-hash"
PREDICTOR = "efficientnet-lite0"
REPO = Path(__file__).resolve().parent.parent


def imagenet_words() -> list[str]:
    """Single-word ImageNet class names, upper-cased as the USF norms write words."""
    from iwan.tv import models

    names = models.ResNet50_Weights.IMAGENET1K_V1.meta["categories"]
    return sorted({n.upper() for n in names if n.isalpha()})


def load_norms(engine, tmp_path: Path, seed: int = 0) -> None:
    """A norm set whose cues and targets are ImageNet class words, so most predictions have a word."""
    from iwan.db.norms import load_norms as load

    rng = np.random.default_rng(seed)
    words = imagenet_words()
    lines = [usf_files.HEADER_LINE]
    pairs = set()
    for cue in words:
        for target in rng.choice(words, 3, replace=False):
            if target != cue and (cue, target) not in pairs:
                pairs.add((cue, target))
                lines.append(usf_files.row(cue=cue, target=target, fsg=f"{rng.uniform(0.01, 0.9):.3f}",
                                           bsg=f"{rng.uniform(0.01, 0.9):.3f}"))
    folder = tmp_path / "norms"
    folder.mkdir(exist_ok=True)
    load(engine, [usf_files.write(folder, *lines)])


def tiny_predictor():
    """EfficientNet-Lite0 with seeded random weights at 32 px: real code, milliseconds per image."""
    from iwan.vision.predictors import load_predictor

    return load_predictor(PREDICTOR, backend="torch", pretrained=False, image_size=32, precision="fp32")


def save_hash_model(home: Path) -> Path:
    """A random small-CNN hash network (whitened on random pixels) as IWAN_HOME/models/tiny-hash/best.pt."""
    import torch

    from hashing.net import HashConfig, HashNet, save_checkpoint

    torch.manual_seed(0)
    network = HashNet(HashConfig(backbone="small-cnn", n_classes=4, embedding_dim=4, hidden=(32,)))
    network.prepare(torch.randint(0, 256, (64, 32, 32, 3), dtype=torch.uint8))
    return save_checkpoint(home / "models" / HASH_MODEL / "best.pt", network.eval(), np.eye(4, dtype=np.float32))


def tiny_encoder(hash_model: str | None = HASH_MODEL):
    """The tiny predictor, and the hash model saved under the IWAN_HOME in force."""
    from iwan.config import settings
    from iwan.vision.encoder import Encoder

    return Encoder(PREDICTOR, hash_model, settings=settings(), loaded_predictor=tiny_predictor())



def tiny_collection(engine, tmp_path: Path, monkeypatch, name: str) -> None:
    """An empty collection `name` over the tiny predictor and hash model, with written norms, in an
    IWAN_HOME of its own (tmp_path/home, set for the test)."""
    from iwan.collections.live import create_collection

    monkeypatch.setenv("IWAN_HOME", str(tmp_path / "home"))
    save_hash_model(tmp_path / "home")
    load_norms(engine, tmp_path)
    create_collection(engine, name, PREDICTOR, hash_model=HASH_MODEL)

def png(seed: int, size: int = 32) -> bytes:
    """A distinct image: a random colour field with noise."""
    rng = np.random.default_rng(seed)
    pixels = np.clip(rng.integers(0, 256, 3) + rng.normal(0, 50, (size, size, 3)), 0, 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


REPLICA = r"""
import json, sys
import numpy as np
sys.path.insert(0, sys.argv[1])
import livedata
from iwan.db.engine import make_engine
from iwan.collections.live import LiveCollection

live = LiveCollection.open(make_engine(), sys.argv[2], follow=True, encoder=livedata.tiny_encoder())
live.wait_following()
print(json.dumps({"ready": True}), flush=True)
for line in sys.stdin:
    command = json.loads(line)
    if command["do"] == "state":
        answer = {"ids": live.image_ids.tolist(), "seq": live.seq, "following": live.following,
                  "reconnects": live.reconnects}
        if command.get("text"):
            scores, ids = live.search(live.text_queries(command["text"]).batch, 10, method="iwan")
            answer["iwan"] = ids[0].tolist()
    elif command["do"] == "add":
        files = [(f"img{s}.png", livedata.png(s)) for s in command["seeds"]]
        answer = {"added": [i for i, _ in live.add_files(files).added]}
    elif command["do"] == "remove":
        live.remove(command["ids"])
        answer = {"removed": command["ids"]}
    elif command["do"] == "pid":
        answer = {"pid": __import__("os").getpid()}
    else:
        break
    print(json.dumps(answer), flush=True)
live.close()
"""


class Replica:
    """A separate process holding a LiveCollection, driven over stdin/stdout one JSON line at a time."""

    def __init__(self, name: str, env: dict | None = None):
        self.process = subprocess.Popen(
            [sys.executable, "-c", REPLICA, str(Path(__file__).parent), name],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})}, cwd=REPO,
        )
        ready = self.process.stdout.readline()
        if not ready:
            raise RuntimeError(f"the replica did not start: {self.process.stderr.read()}")

    def ask(self, **command) -> dict:
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the replica died: {self.process.stderr.read()}")
        return json.loads(line)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.stdin.write(json.dumps({"do": "quit"}) + "\n")
            self.process.stdin.flush()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
