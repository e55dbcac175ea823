"""Training the hash network towards class embeddings, and evaluating it (hashing.inference encodes).

Loss (Barz & Denzler, WACV 2019): 1 - <f(x), emb[y]> with f(x) and emb unit vectors, plus
`classification_weight` x cross-entropy of the classification head. A validation split carved
from the training data (seeded) picks the best epoch; every epoch also rewrites `last.pt`, which
holds what `resume` needs to continue exactly where it stopped.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from hashing.codes import ACTIVATION_THRESHOLD
from hashing.inference import EVAL_BATCH_SIZE, net_device, outputs
from hashing.net import PRECOMPUTED, HashNet, HashOutput, load_checkpoint, save_checkpoint

OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("cosine", "onecycle", "triangle")
"""triangle: airbench's linear warm-up from 0.2 x lr to lr over the first 20% of steps, then linear
decay to 0.07 x lr."""
PRECISIONS = ("auto", "fp32", "bf16")
"""Of the training forward passes; auto is bf16 where the device computes it natively (CPUs with
AMX / AVX512-BF16, recent GPUs), about twice as fast for the small CNN, else fp32."""
LAST_CHECKPOINT = "last.pt"
BEST_CHECKPOINT = "best.pt"
WHITENING_SAMPLE = 5000
"""Training images that data-dependent initialisation (the small CNN's whitening) looks at."""
AUXILIARY_LOGIT_SCALE = 1 / 9
"""airbench's output scaling, kept for its auxiliary classifier: small logits at its high learning rates."""
LOOKAHEAD_EVERY = 5
LOOKAHEAD_DECAY = 0.95**LOOKAHEAD_EVERY
"""Lookahead (Zhang et al. 2019) as airbench runs it: every 5 steps the weights move to a running
average of their past, whose memory grows with the cube of the progress (to 0.95^5 at the end),
and training ends on the average itself."""


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 30
    batch_size: int = 256
    lr: float = 1e-3
    """Peak learning rate (one-cycle) or starting one (cosine)."""
    optimizer: str = "adam"
    schedule: str = "onecycle"
    weight_decay: float = 1e-4
    momentum: float = 0.9
    classification_weight: float = 0.1
    val_fraction: float = 0.1
    seed: int = 0
    feature_noise: float = 0.0
    """Gaussian noise on cached features, as a fraction of each dimension's standard deviation."""
    precision: str = "fp32"
    label_smoothing: float = 0.0
    """Of the cross-entropy terms."""
    auxiliary_weight: float = 0.0
    """Weight of the cross-entropy of a linear classifier on the backbone features, used in training
    only: a from-scratch backbone learns from it directly, where the hash layer's bottleneck would
    attenuate the embedding loss's gradient."""
    head_lr_scale: float = 1.0
    """The learning rate of the decoder, hash layer and heads, as a multiple of `lr`."""
    bias_lr_scale: float = 1.0
    """The same for the backbone's biases and norm parameters, whose weight decay shrinks by as much."""
    lookahead: bool = False
    translate: int = 0
    """Image backbones: the largest random shift in pixels (reflected border); 0 means an eighth of the side."""

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision {self.precision!r} is unknown: use one of {', '.join(PRECISIONS)}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer {self.optimizer!r} is unknown: use one of {', '.join(OPTIMIZERS)}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule {self.schedule!r} is unknown: use one of {', '.join(SCHEDULES)}")
        if not 0 < self.val_fraction < 1:
            raise ValueError(
                f"val_fraction={self.val_fraction} must be in (0, 1): the best checkpoint is chosen on it"
            )
        if not 0 <= self.label_smoothing < 1 or min(self.auxiliary_weight, self.translate) < 0:
            raise ValueError(
                f"label_smoothing={self.label_smoothing} must be in [0, 1); auxiliary_weight="
                f"{self.auxiliary_weight} and translate={self.translate} must be >= 0"
            )
        if min(self.head_lr_scale, self.bias_lr_scale) <= 0:
            raise ValueError(f"head_lr_scale={self.head_lr_scale} and bias_lr_scale={self.bias_lr_scale} must be positive")
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError(f"epochs={self.epochs}, batch_size={self.batch_size} and lr={self.lr} must be positive")


@dataclass(frozen=True)
class EpochRecord:
    epoch: int
    train_loss: float
    val_loss: float
    val_accuracy: float
    lr: float
    seconds: float
    best: bool


@dataclass(frozen=True)
class FitResult:
    history: list[EpochRecord]
    """Every epoch so far, resumed ones included."""
    best_epoch: int
    best_val_loss: float
    best_path: Path
    last_path: Path


@dataclass(frozen=True)
class Measurement:
    loss: float
    accuracy: float
    """Nearest-class-embedding accuracy of the embeddings."""
    code_accuracy: float
    """The same, with the hash activations binarised first: what the stored codes can tell."""
    n: int


def hash_loss(
    output: HashOutput, labels: torch.Tensor, targets: torch.Tensor, classification_weight: float, label_smoothing: float = 0.0
) -> torch.Tensor:
    """Mean cosine loss towards the labels' class embeddings (+ weighted cross-entropy), in float32."""
    loss = 1.0 - (output.embedding.float() * targets[labels]).sum(dim=1).mean()
    if output.logits is not None and classification_weight:
        loss = loss + classification_weight * F.cross_entropy(output.logits.float(), labels, label_smoothing=label_smoothing)
    return loss


def nearest_class(embeddings: np.ndarray | torch.Tensor, class_embeddings: np.ndarray | torch.Tensor):
    """The class whose embedding has the largest dot product with each row of `embeddings`."""
    if isinstance(embeddings, torch.Tensor):
        return (embeddings @ torch.as_tensor(class_embeddings, dtype=embeddings.dtype, device=embeddings.device).T).argmax(1)
    return (np.asarray(embeddings) @ np.asarray(class_embeddings, dtype=np.float32).T).argmax(1)


def split_validation(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, validation indices), both sorted; the same for the same n, fraction and seed."""
    order = np.random.default_rng(seed).permutation(n)
    n_val = max(1, round(n * fraction))
    if n_val >= n:
        raise ValueError(f"a validation fraction of {fraction} leaves no training data out of {n} examples")
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def fit(
    net: HashNet,
    inputs: np.ndarray | torch.Tensor,
    labels: np.ndarray,
    class_embeddings: np.ndarray,
    config: TrainConfig,
    out_dir: str | Path,
    *,
    flipped: np.ndarray | torch.Tensor | None = None,
    class_names: list[str] | None = None,
    resume: bool = False,
    device: str | torch.device = "cpu",
    on_epoch: Callable[[EpochRecord], None] | None = None,
    progress: bool = True,
) -> FitResult:
    """Train `net` on `inputs` (cached features, or uint8 (N, H, W, 3) images for image backbones).

    `flipped`: features of the horizontally mirrored images, row for row, used as augmentation.
    Writes `out_dir/last.pt` every epoch and `out_dir/best.pt` whenever the validation loss improves.
    `resume` continues from `last.pt`; without it an existing `last.pt` is an error, not overwritten."""
    out_dir = Path(out_dir)
    last_path, best_path = out_dir / LAST_CHECKPOINT, out_dir / BEST_CHECKPOINT
    inputs, labels_t = torch.as_tensor(inputs), torch.as_tensor(np.asarray(labels), dtype=torch.long)
    _check_data(net, inputs, labels_t, class_embeddings, flipped)
    flipped = torch.as_tensor(flipped) if flipped is not None else None
    train_idx, val_idx = split_validation(len(labels_t), config.val_fraction, config.seed)
    targets = torch.as_tensor(np.asarray(class_embeddings), dtype=torch.float32, device=device)
    if not resume:
        net.prepare(inputs[torch.as_tensor(train_idx[:WHITENING_SAMPLE])])
    net.to(device)
    auxiliary = (
        torch.nn.Linear(net.config.feature_dim, net.config.n_classes, bias=False).to(device)
        if config.auxiliary_weight else None
    )
    optimizer = _optimizer(net, auxiliary, config)
    steps_per_epoch = math.ceil(len(train_idx) / config.batch_size)
    scheduler = _scheduler(optimizer, config, steps_per_epoch)
    augment = _augmenter(net, inputs, train_idx, flipped, config)

    history: list[EpochRecord] = []
    best_epoch, best_val_loss = 0, math.inf
    if resume:
        state = _resume_state(last_path, net, class_embeddings, config)
        if auxiliary is not None:
            auxiliary.load_state_dict(state["auxiliary"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        history = [EpochRecord(**record) for record in state["history"]]
        best_epoch, best_val_loss = state["best_epoch"], state["best_val_loss"]
    elif last_path.exists():
        raise FileExistsError(
            f"{last_path} exists: resume that run, train into another directory, or delete it first"
        )

    val_inputs, val_labels = inputs[torch.as_tensor(val_idx)], labels_t[torch.as_tensor(val_idx)]
    for epoch in range(len(history) + 1, config.epochs + 1):
        started = time.perf_counter()
        lr = optimizer.param_groups[0]["lr"]
        train_loss = _train_epoch(
            net, auxiliary, inputs, labels_t, train_idx, targets, optimizer, scheduler, augment, config, epoch, device, progress
        )
        val = measure(
            net, val_inputs, val_labels.numpy(), class_embeddings,
            classification_weight=config.classification_weight, device=device,
        )
        improved = val.loss < best_val_loss
        if improved:
            best_epoch, best_val_loss = epoch, val.loss
            save_checkpoint(best_path, net, class_embeddings, class_names)
        record = EpochRecord(epoch, train_loss, val.loss, val.accuracy, lr, time.perf_counter() - started, improved)
        history.append(record)
        training = {
            "epoch": epoch,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "history": [asdict(r) for r in history],
            "best_epoch": best_epoch,
            "best_val_loss": best_val_loss,
            "train_config": asdict(config),
            "auxiliary": auxiliary.state_dict() if auxiliary is not None else None,
        }
        save_checkpoint(last_path, net, class_embeddings, class_names, training)
        if on_epoch is not None:
            on_epoch(record)
    return FitResult(history, best_epoch, best_val_loss, best_path, last_path)


@torch.no_grad()
def measure(
    net: HashNet,
    inputs: np.ndarray | torch.Tensor,
    labels: np.ndarray,
    class_embeddings: np.ndarray,
    *,
    classification_weight: float = 0.1,
    batch_size: int = EVAL_BATCH_SIZE,
    device: str | torch.device | None = None,
    mirror: bool = False,
) -> Measurement:
    """Loss and nearest-class-embedding accuracy (of embeddings, and of binarised codes).

    `mirror`: average each image's hash activations with its mirror image's (image backbones)."""
    device = net_device(net) if device is None else torch.device(device)
    targets = torch.as_tensor(np.asarray(class_embeddings), dtype=torch.float32, device=device)
    labels_t = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    if len(labels_t) != len(inputs):
        raise ValueError(f"measure: {len(inputs)} inputs but {len(labels_t)} labels; pass one label per input")
    loss_sum, correct, code_correct = 0.0, 0, 0
    for start, output in outputs(net, inputs, batch_size, device, mirror):
        y = labels_t[start : start + len(output.embedding)].to(device)
        loss_sum += hash_loss(output, y, targets, classification_weight).item() * len(y)
        correct += (nearest_class(output.embedding, targets) == y).sum().item()
        codes = (output.hash > ACTIVATION_THRESHOLD).float()
        code_correct += (nearest_class(net.from_hash(codes).embedding, targets) == y).sum().item()
    n = len(labels_t)
    return Measurement(loss_sum / n, correct / n, code_correct / n, n)


# --- one epoch -----------------------------------------------------------------------------------


def _train_epoch(net, auxiliary, inputs, labels, train_idx, targets, optimizer, scheduler, augment, config, epoch, device, progress) -> float:
    net.train()
    # Shuffling, augmentation and (on CPU) dropout draw from a generator seeded by (seed, epoch), so a
    # resumed run repeats exactly the epochs an uninterrupted one would have run.
    generator = torch.Generator().manual_seed(config.seed * 1_000_003 + epoch)
    order = torch.as_tensor(train_idx)[torch.randperm(len(train_idx), generator=generator)]
    batches = order.split(config.batch_size)
    total, count = 0.0, 0
    bar = tqdm(batches, desc=f"epoch {epoch}/{config.epochs}", leave=False, disable=not progress)
    device = torch.device(device)
    bf16 = _use_bf16(config.precision, device)
    lookahead = (
        _Lookahead(net, auxiliary, (epoch - 1) * len(batches), config.epochs * len(batches))
        if config.lookahead else None
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(torch.randint(2**31, (1,), generator=generator)))
        for batch in bar:
            x = augment(inputs[batch], batch, generator).to(device, non_blocking=True)
            y = labels[batch].to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                features = net.features(x)
                output = net.head(features)
            loss = hash_loss(output, y, targets, config.classification_weight, config.label_smoothing)
            if auxiliary is not None:
                logits = auxiliary(features.float()) * AUXILIARY_LOGIT_SCALE
                loss = loss + config.auxiliary_weight * F.cross_entropy(logits, y, label_smoothing=config.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            if lookahead is not None:
                lookahead.step()
            total += loss.item() * len(batch)
            count += len(batch)
            bar.set_postfix(loss=f"{total / count:.4f}")
    if lookahead is not None:
        lookahead.sync()
    return total / count


class _Lookahead:
    """Slow weights (and batch-norm statistics) that the fast ones are pulled back to; synced at the
    end of each epoch too, so that a checkpoint holds all the state a resumed run needs."""

    def __init__(self, net: HashNet, auxiliary, step: int, total_steps: int):
        modules = [net] + ([auxiliary] if auxiliary is not None else [])
        self.tensors = [t for m in modules for t in m.state_dict().values() if t.is_floating_point()]
        self.slow = [t.detach().clone() for t in self.tensors]
        self.step_count = step
        self.total_steps = total_steps

    @torch.no_grad()
    def step(self) -> None:
        self.step_count += 1
        if self.step_count >= self.total_steps:
            self.sync(keep=1.0)
        elif self.step_count % LOOKAHEAD_EVERY == 0:
            self.sync()

    @torch.no_grad()
    def sync(self, keep: float | None = None) -> None:
        if keep is None:
            keep = LOOKAHEAD_DECAY * (self.step_count / self.total_steps) ** 3
        for slow, fast in zip(self.slow, self.tensors):
            slow.lerp_(fast, 1 - keep)
            fast.copy_(slow)


def _augmenter(net: HashNet, inputs: torch.Tensor, train_idx: np.ndarray, flipped: torch.Tensor | None, config: TrainConfig):
    """fn(batch inputs, batch indices, generator) -> augmented batch, for this net's kind of input."""
    if net.config.backbone != PRECOMPUTED:
        return lambda x, _, generator: crop_and_flip(x, generator, config.translate)
    noise_scale = None
    if config.feature_noise:
        # Scaled per dimension, so that the noise perturbs rare and common features alike.
        noise_scale = inputs[torch.as_tensor(train_idx)].float().std(dim=0) * config.feature_noise

    def augment(x: torch.Tensor, batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        x = x.float()
        if flipped is not None:
            mirror = torch.rand(len(x), generator=generator) < 0.5
            x = torch.where(mirror[:, None], flipped[batch].float(), x)
        if noise_scale is not None:
            x = x + torch.randn(x.shape, generator=generator) * noise_scale
        return x

    return augment


def crop_and_flip(images: torch.Tensor, generator: torch.Generator, shift: int = 0) -> torch.Tensor:
    """uint8 (N, H, W, 3) images shifted at random by up to `shift` pixels each way (0: H/8), the
    border filled by reflection, and mirrored at random."""
    n, h, w, _ = images.shape
    shift = shift or max(1, h // 8)
    dy = torch.randint(-shift, shift + 1, (n, 1), generator=generator)
    dx = torch.randint(-shift, shift + 1, (n, 1), generator=generator)
    mirror = torch.rand(n, 1, generator=generator) < 0.5
    columns = torch.arange(w)
    columns = _reflect(torch.where(mirror, columns.flip(0), columns) + dx, w)
    rows = _reflect(torch.arange(h) + dy, h)
    return images[torch.arange(n)[:, None, None], rows[:, :, None], columns[:, None, :]]


def _reflect(index: torch.Tensor, size: int) -> torch.Tensor:
    """Indices outside 0..size-1 mirrored back in at the border (as numpy's 'reflect' pads)."""
    index = index.abs()
    return torch.where(index > size - 1, 2 * (size - 1) - index, index)


# --- optimiser, schedule, resume -------------------------------------------------------------------


def _optimizer(net: HashNet, auxiliary, config: TrainConfig) -> torch.optim.Optimizer:
    backbone = {id(p) for p in net.backbone.parameters()}
    params = [p for p in net.parameters() if p.requires_grad]
    weights = [p for p in params if id(p) in backbone and p.ndim > 1]
    if auxiliary is not None:
        weights += list(auxiliary.parameters())
    biases = [p for p in params if id(p) in backbone and p.ndim <= 1]
    head = [p for p in params if id(p) not in backbone]
    decay, lr = config.weight_decay, config.lr
    groups = [
        dict(params=weights, lr=lr, weight_decay=decay),
        dict(params=biases, lr=lr * config.bias_lr_scale, weight_decay=decay / config.bias_lr_scale),
        dict(params=head, lr=lr * config.head_lr_scale, weight_decay=decay),
    ]
    groups = [group for group in groups if group["params"]]
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, momentum=config.momentum, nesterov=True)
    # AdamW: Adam's adaptive steps would shrink an L2 penalty's effect; decoupled decay keeps it.
    return torch.optim.AdamW(groups)


def _scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig, steps_per_epoch: int):
    total = config.epochs * steps_per_epoch
    if config.schedule == "onecycle":
        peaks = [group["lr"] for group in optimizer.param_groups]
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=peaks, total_steps=total)
    if config.schedule == "triangle":
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: float(np.interp(step, [0, int(0.2 * total), total], [0.2, 1.0, 0.07]))
        )
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)


def _resume_state(last_path: Path, net: HashNet, class_embeddings: np.ndarray, config: TrainConfig) -> dict:
    if not last_path.is_file():
        raise FileNotFoundError(f"cannot resume: {last_path} does not exist; train without resume first")
    saved = load_checkpoint(last_path, expect=net.config)
    if saved.training is None:
        raise ValueError(f"cannot resume from {last_path}: it holds no training state (a best.pt?)")
    if saved.class_embeddings.shape != np.shape(class_embeddings) or not np.allclose(
        saved.class_embeddings, np.asarray(class_embeddings, dtype=np.float32), atol=1e-5
    ):
        raise ValueError(
            f"cannot resume from {last_path}: it was trained towards other class embeddings (another "
            "hierarchy?); resume with the same hierarchy or train into another directory"
        )
    # A setting the checkpoint does not record is older than it, so it trained with the default.
    before = {f.name: f.default for f in fields(TrainConfig)} | saved.training["train_config"]
    changed = [
        f"{f.name} {before[f.name]!r} there, {getattr(config, f.name)!r} here"
        for f in fields(TrainConfig)
        if before[f.name] != getattr(config, f.name)
    ]
    if changed:
        raise ValueError(
            f"cannot resume from {last_path} with other training settings ({'; '.join(changed)}): "
            "the schedule depends on them; resume with the same settings or train into another directory"
        )
    net.load_state_dict(saved.net.state_dict())
    return saved.training


# --- helpers ---------------------------------------------------------------------------------------


def _use_bf16(precision: str, device: torch.device) -> bool:
    if precision != "auto":
        return precision == "bf16"
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def _check_data(net: HashNet, inputs: torch.Tensor, labels: torch.Tensor, class_embeddings, flipped) -> None:
    n_classes, dim = np.shape(class_embeddings)
    if (n_classes, dim) != (net.config.n_classes, net.config.embedding_dim):
        raise ValueError(
            f"class embeddings of shape {(n_classes, dim)} do not fit the network "
            f"({net.config.n_classes} classes, {net.config.embedding_dim}-d embedding); build it from them"
        )
    if len(inputs) != len(labels):
        raise ValueError(f"{len(inputs)} inputs but {len(labels)} labels; pass one label per input")
    if len(labels) and (labels.min() < 0 or labels.max() >= n_classes):
        raise ValueError(f"labels must be class ids 0..{n_classes - 1}, got {labels.min()}..{labels.max()}")
    if flipped is not None and tuple(np.shape(flipped)) != tuple(inputs.shape):
        raise ValueError(
            f"flipped features have shape {tuple(np.shape(flipped))}, the inputs {tuple(inputs.shape)}; "
            "pass the mirrored images' features row for row"
        )
    if flipped is not None and net.config.backbone != PRECOMPUTED:
        raise ValueError("flipped features only serve the precomputed backbone; image backbones mirror images themselves")
