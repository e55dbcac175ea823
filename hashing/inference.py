"""Running a trained hash network: the embeddings and hash activations of inputs, batch by batch.

What query-time code needs (no optimiser, no training loop): import this, not hashing.train.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch
from tqdm import tqdm

from hashing.net import HashNet, HashOutput

EVAL_BATCH_SIZE = 1024


@torch.no_grad()
def embed(
    net: HashNet,
    inputs: np.ndarray | torch.Tensor,
    *,
    batch_size: int = EVAL_BATCH_SIZE,
    device: str | torch.device | None = None,
    progress: bool = False,
    mirror: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """(embeddings float32 (N, embedding_dim), hash activations float32 (N, bits)) of `inputs`
    (what the net takes: uint8 (N, H, W, 3) images, or cached features for a precomputed backbone).

    Binarise the activations with hashing.codes.pack_activations for the stored 48-bit codes.
    `mirror`: average each image's hash activations with its mirror image's (image backbones).
    `device`: where to run; default the net's."""
    device = net_device(net) if device is None else torch.device(device)
    embeddings = np.empty((len(inputs), net.config.embedding_dim), dtype=np.float32)
    hashes = np.empty((len(inputs), net.config.bits), dtype=np.float32)
    batches = outputs(net, inputs, batch_size, device, mirror)
    for start, output in tqdm(batches, total=math.ceil(len(inputs) / batch_size), desc="encode", disable=not progress):
        embeddings[start : start + len(output.embedding)] = output.embedding.float().cpu().numpy()
        hashes[start : start + len(output.hash)] = output.hash.float().cpu().numpy()
    return embeddings, hashes


def outputs(
    net: HashNet, inputs, batch_size: int, device: torch.device, mirror: bool = False
) -> Iterator[tuple[int, HashOutput]]:
    """(start index, network output) per batch, in eval mode; call it under torch.no_grad()."""
    net.eval()
    forward = net.forward_mirrored if mirror else net
    inputs = torch.as_tensor(inputs)
    for start in range(0, len(inputs), batch_size):
        yield start, forward(inputs[start : start + batch_size].to(device, non_blocking=True))


def net_device(net: HashNet) -> torch.device:
    """The device the net's parameters are on."""
    return next(net.parameters()).device
