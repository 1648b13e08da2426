"""Training our models on an image folder: `overfeat-kernels train` and `train(cfg)`.

The data folder has torchvision's ImageFolder layout (``DATA/<class>/<image>``). Training
follows OverFeat §3.1 by default: images resized so that their shorter side is 256/221 of
the crop, random crops of the model's input size and horizontal flips; SGD with momentum
0.6, weight decay 1e-5, a learning rate halved at epochs 30, 50, 60, 70, 80 (or Adam).
bfloat16 autocast on request. Every epoch ends with a checkpoint (model, optimizer,
scheduler, epoch, RNG state) written atomically to ``OUT/checkpoint.pt``; ``resume=True``
continues from it and reproduces the run that was not interrupted. Under ``torchrun`` the
model is wrapped in DistributedDataParallel (gloo on the CPU, nccl on GPUs).

Transfer (Oquab et al. 2014): ``init_from`` loads a trained model (a checkpoint of ours, or
torchvision / timm / OverFeat weights), ``num_classes`` replaces its last layer by new
adaptation layers for another class count (``adaptation`` hidden units adds one more), and
``freeze_until`` keeps every layer up to the named one fixed.
"""

from __future__ import annotations

import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from .. import models
from ..models import taps as layers
from ..models import weights
from . import distributed as _distributed
from . import imageio

__all__ = ["TrainConfig", "TrainResult", "freeze_until", "replace_head", "train"]


@dataclass
class TrainConfig:
    model: str
    data: Path
    out: Path
    val: Path | None = None
    epochs: int = 90
    batch_size: int = 32
    optimizer: str = "sgd"  # sgd | adam
    lr: float = 0.05
    momentum: float = 0.6
    weight_decay: float = 1e-5
    lr_steps: tuple[int, ...] = (30, 50, 60, 70, 80)
    lr_gamma: float = 0.5
    size: int | None = None  # crop size (default: the model's input size)
    workers: int = 4
    device: str | None = None
    bf16: bool = False
    init_from: str | None = None
    num_classes: int | None = None  # default: the number of class folders
    adaptation: int | None = None  # hidden units of an extra adaptation layer
    freeze_until: str | None = None
    resume: bool = False
    seed: int = 0
    progress: bool = True


@dataclass
class TrainResult:
    epochs: int
    history: list[dict] = field(default_factory=list)  # per epoch: loss, accuracy, ...
    checkpoint: Path | None = None


# ---------------------------------------------------------------------------------------
# Data


def class_folders(root: Path) -> list[str]:
    """The class names of an ImageFolder-layout folder (its subfolders, sorted)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"data folder not found: {root}")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not classes:
        raise ValueError(f"{root}: no class folders (expected {root}/<class>/<image>)")
    return classes


class ImageFolderData(Dataset):
    """``root/<class>/<image>``; decoding and augmentation in workers, seeded per
    (seed, epoch, index) so that a resumed run sees exactly the same crops and flips."""

    def __init__(self, root: Path, size: int, train: bool, seed: int = 0,
                 classes: list[str] | None = None) -> None:  # fmt: skip
        root = Path(root)
        self.classes = classes or class_folders(root)
        self.samples = [
            (str(p), c)
            for c, name in enumerate(self.classes)
            for p in sorted((root / name).rglob("*"))
            if p.is_file() and p.suffix.lower() in imageio.IMAGE_EXTENSIONS
        ]
        if not self.samples:
            raise ValueError(f"{root}: no images in the class folders")
        self.size, self.train, self.seed, self.epoch = size, train, seed, 0
        self.resize = round(size * 256 / 221)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        path, label = self.samples[i]
        pixels = imageio.load_rgb(path)
        if not self.train:
            return imageio.resize_center_crop(pixels, self.size), label
        rng = random.Random(hash((self.seed, self.epoch, i)))
        x = imageio.resize_center_crop(pixels, self.resize)  # shorter side, square
        top = rng.randrange(self.resize - self.size + 1)
        left = rng.randrange(self.resize - self.size + 1)
        x = x[:, top : top + self.size, left : left + self.size]
        if rng.random() < 0.5:
            x = x.flip(-1)
        return x.contiguous(), label


# ---------------------------------------------------------------------------------------
# Model surgery for transfer


def replace_head(model: nn.Module, num_classes: int, adaptation: int | None = None) -> None:
    """Replaces the last Linear of model.classifier by new layers for `num_classes`
    (with one hidden adaptation layer of `adaptation` units if given). The classifier stays
    a flat Sequential, so dense evaluation and layer names keep working."""
    last = model.classifier[-1]
    if not isinstance(last, nn.Linear):
        raise TypeError("replace_head: the classifier must end with an nn.Linear")
    new: list[nn.Module] = []
    width = last.in_features
    if adaptation:
        new += [nn.Linear(width, adaptation), nn.ReLU(True), nn.Dropout(0.5)]
        width = adaptation
    new.append(nn.Linear(width, num_classes))
    model.classifier = nn.Sequential(*list(model.classifier)[:-1], *new)


def freeze_until(model: nn.Module, layer: str) -> list[str]:
    """Freezes every parameter up to and including the named layer (see `layers`);
    returns the names of the frozen parameters."""
    taps = {t.name: t for t in layers.layer_taps(model)}
    if layer not in taps:
        raise ValueError(f"--freeze-until: unknown layer {layer!r}; layers: {', '.join(taps)}")
    tap = taps[layer]
    frozen_modules = list(model.features)[: tap.index + 1] if tap.part == "features" else [
        *model.features, *list(model.classifier)[: tap.index + 1]]  # fmt: skip
    names = []
    ids = {id(p) for m in frozen_modules for p in m.parameters()}
    for name, p in model.named_parameters():
        if id(p) in ids:
            p.requires_grad_(False)
            names.append(name)
    return names


def _read_init(path: str) -> tuple[dict | None, int]:
    """(state dict, class count) of an --init-from file; (None, 1000) for an OverFeat
    release file, which is loaded straight into the model."""
    p = Path(path)
    if p.suffix == ".safetensors":
        return weights.load_state_dict_file(p), 1000
    if p.suffix not in (".pt", ".pth"):
        return None, 1000
    state = weights._torch_load(p)
    if isinstance(state, dict) and isinstance(state.get("model"), dict) and "classes" in state:
        return state["model"], len(state["classes"])  # a checkpoint of ours
    return state, 1000


def _build(cfg: TrainConfig, num_classes: int) -> nn.Module:
    torch.manual_seed(cfg.seed)
    source_classes = num_classes
    if cfg.init_from:
        state, source_classes = _read_init(cfg.init_from)
        model = models.build_model(cfg.model, num_classes=source_classes)
        if state is None:
            weights.load_overfeat_release(model, cfg.init_from)
        elif isinstance(model, models.VGG):
            weights.load_vgg(model, state)
        else:
            weights._load_strict(model, state, cfg.init_from)
    else:
        model = models.build_model(cfg.model, num_classes=num_classes)
    if source_classes != num_classes or cfg.adaptation:
        replace_head(model, num_classes, cfg.adaptation)
    if cfg.freeze_until:
        freeze_until(model, cfg.freeze_until)
    return model


# ---------------------------------------------------------------------------------------
# The loop


def _atomic_save(obj: object, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _to_input(x: torch.Tensor, model: nn.Module, device: torch.device) -> torch.Tensor:
    prep = model.preprocessing
    mean = torch.tensor(prep["mean"], device=device).view(1, 3, 1, 1)
    std = torch.tensor(prep["std"], device=device).view(1, 3, 1, 1)
    return (x.to(device, non_blocking=True).float() * prep["scale"] - mean) / std


def train(cfg: TrainConfig) -> TrainResult:
    """Trains as configured (see the module docstring); returns the per-epoch history."""
    with _distributed.process(cfg.device) as (device, rank, world):
        return _train(cfg, device, rank, world)


def _validate(cfg: TrainConfig) -> None:
    if cfg.optimizer not in ("sgd", "adam"):
        raise ValueError(f"--optimizer: sgd or adam, got {cfg.optimizer!r}")
    for name in ("epochs", "batch_size"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1")
    if cfg.lr <= 0:
        raise ValueError(f"--lr must be > 0, got {cfg.lr}")
    if cfg.init_from and not Path(cfg.init_from).is_file():
        raise FileNotFoundError(f"--init-from: file not found: {cfg.init_from}")


def _train(cfg: TrainConfig, device: torch.device, rank: int, world: int) -> TrainResult:
    from tqdm import tqdm

    _validate(cfg)
    out = Path(cfg.out)
    ckpt_path = out / "checkpoint.pt"
    ckpt = None
    if cfg.resume:
        if not ckpt_path.is_file():
            raise FileNotFoundError(f"--resume: no checkpoint at {ckpt_path}")
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    classes = ckpt["classes"] if ckpt else class_folders(cfg.data)
    model = _build(cfg, cfg.num_classes or len(classes))
    size = cfg.size or model.dense_spec.input_size
    train_data = ImageFolderData(cfg.data, size, True, cfg.seed, classes)
    val_data = ImageFolderData(cfg.val, size, False, classes=train_data.classes) if cfg.val \
        else None  # fmt: skip
    model = model.to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum,
                              weight_decay=cfg.weight_decay)  # fmt: skip
    else:
        opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, list(cfg.lr_steps), cfg.lr_gamma)
    start_epoch, history = 0, []
    if ckpt:
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        start_epoch, history = ckpt["epoch"] + 1, ckpt["history"]
        torch.set_rng_state(ckpt["rng"])
    net = model
    if world > 1:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    sampler = torch.utils.data.DistributedSampler(train_data, world, rank, shuffle=True,
                                                  seed=cfg.seed)  # fmt: skip
    loader = DataLoader(train_data, batch_size=cfg.batch_size, sampler=sampler,
                        num_workers=cfg.workers, pin_memory=device.type == "cuda",
                        drop_last=False)  # fmt: skip
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
    for epoch in range(start_epoch, cfg.epochs):
        sampler.set_epoch(epoch)
        train_data.epoch = epoch
        net.train()
        total, correct, loss_sum = 0, 0, 0.0
        start = time.perf_counter()
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="batch",
                   disable=not cfg.progress or rank != 0, dynamic_ncols=True)  # fmt: skip
        for x, y in bar:
            x, y = _to_input(x, model, device), y.to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.bf16):
                logits = net(x)
                loss = F.cross_entropy(logits.float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += len(y)
            correct += (logits.argmax(1) == y).sum().item()
            loss_sum += loss.item() * len(y)
            bar.set_postfix(loss=f"{loss_sum / total:.3f}", acc=f"{correct / total:.3f}")
        sched.step()
        record = {
            "epoch": epoch + 1, "loss": loss_sum / total, "accuracy": correct / total,
            "lr": opt.param_groups[0]["lr"], "seconds": time.perf_counter() - start,
        }  # fmt: skip
        if val_data is not None:
            record["val_accuracy"] = evaluate(model, val_data, device, cfg)
        history.append(record)
        if rank == 0:
            _atomic_save({"model": model.state_dict(), "optimizer": opt.state_dict(),
                          "scheduler": sched.state_dict(), "epoch": epoch, "history": history,
                          "classes": train_data.classes, "rng": torch.get_rng_state(),
                          "config": {k: str(v) for k, v in asdict(cfg).items()}},
                         ckpt_path)  # fmt: skip
            msg = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                            for k, v in record.items())  # fmt: skip
            if cfg.progress:
                print(msg)
        if world > 1:
            dist.barrier()
    return TrainResult(cfg.epochs, history, ckpt_path)


@torch.no_grad()
def evaluate(model: nn.Module, data: Dataset, device: torch.device, cfg: TrainConfig) -> float:
    """Top-1 accuracy on centre crops."""
    model.eval()
    loader = DataLoader(data, batch_size=cfg.batch_size, num_workers=cfg.workers)
    correct = total = 0
    for x, y in loader:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.bf16):
            pred = model(_to_input(x, model, device)).argmax(1).cpu()
        correct += (pred == y).sum().item()
        total += len(y)
    return correct / max(total, 1)
