"""Near-duplicate thresholds on CIFAR-10 with the evaluation's hash model: Hamming distance and
cosine between an image and its re-encoded copy (JPEG q75/q90, a 1-pixel shift) vs its nearest
other image."""
import io
import sys

import numpy as np
from PIL import Image

from hashing.codes import pack_activations
from hashing.inference import embed
from hashing.net import load_checkpoint
from hashing.search import hamming_distances

# Usage: python benchmarks/near_duplicates.py CIFAR10_TRAIN_IMAGES.npy HASH_CHECKPOINT.pt
# (the decoded-split cache, uint8 (50000, 32, 32, 3), and a hash model's best.pt)
train_images = np.load(sys.argv[1], mmap_mode="r")
rng = np.random.default_rng(0)
pick = rng.choice(len(train_images), 1000, replace=False)
base = np.asarray(train_images[np.sort(pick)])
net = load_checkpoint(sys.argv[2]).net.eval()
def codes_of(images):
    e, a = embed(net, images, mirror=True)
    e = e / np.linalg.norm(e, axis=1, keepdims=True)
    return e, pack_activations(a)
def jpeg(img, q):
    out = io.BytesIO()
    Image.fromarray(img).save(out, format="JPEG", quality=q)
    return np.array(Image.open(out))
e0, c0 = codes_of(base)
for name, images in [("jpeg90", np.stack([jpeg(i, 90) for i in base])), ("jpeg75", np.stack([jpeg(i, 75) for i in base])),
                     ("shift1", np.roll(base, 1, axis=2))]:
    e, c = codes_of(images)
    cos = np.einsum("nd,nd->n", e0, e)
    ham = np.array([hamming_distances(c0[i:i+1], c[i:i+1])[0, 0] for i in range(len(c))])
    print(f"{name}: cosine p1 {np.percentile(cos, 1):.4f} p5 {np.percentile(cos, 5):.4f} median {np.median(cos):.4f}; hamming median {np.median(ham)} p95 {np.percentile(ham, 95)} max {ham.max()}")
# nearest other image among 10,000 more
others = np.asarray(train_images[np.sort(rng.choice(len(train_images), 10000, replace=False))])
eo, co = codes_of(others)
sims = e0 @ eo.T
h = hamming_distances(co, c0).astype(int)
both = [(sims[i][h[i] <= 2].max() if (h[i] <= 2).any() else -1) for i in range(len(e0))]
print("nearest other: cosine max median", np.median(sims.max(1)), "p99", np.percentile(sims.max(1), 99))
print("nearest other with hamming<=2: cosine p50/p99/max", np.percentile(both, 50), np.percentile(both, 99), np.max(both))
for t in (0.99, 0.995, 0.9995):
    print(f"threshold cos>={t} & ham<=2: distinct pairs flagged per image", float(np.mean([(s >= t)[hh <= 2].sum() for s, hh in zip(sims, h)])))
