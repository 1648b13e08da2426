"""Feature extraction at scale: `overfeat-kernels extract`.

The inputs (files, folders searched recursively, ``@list.txt`` files of paths) are sorted
and cut into shards of ``shard_size`` images. Each shard is computed, written to a
temporary folder and renamed into ``OUT/.partial/`` only when complete, so a killed run,
re-run with the same arguments, continues with the first missing shard and ends with the
same files as an uninterrupted run. At the end the shards are merged into

    OUT/<layer>.npy      one per layer, one row per usable image, memory-mappable
    OUT/index.csv        row,path,status,reason (status ok or skipped; skipped: no row)
    OUT/manifest.json    the settings that produced them

(or ``OUT/features.safetensors`` with one tensor per layer). A run whose model, layers,
weights, size or inputs differ from the first run's stops with an error naming them.

Under ``torchrun --nproc_per_node N`` rank r computes the shards r, r + N, ...: each on its
own GPU (or CPU processes with gloo), and rank 0 merges; the files are the same as a
single-process run's.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import os
import shutil
import sys
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from .. import models
from ..models import taps as layers
from ..models import weights
from . import decoding, imageio
from . import distributed as _distributed

__all__ = ["ExtractConfig", "ExtractResult", "collect_inputs", "extract"]

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Settings that must match between a run and its resumption (the rest, e.g. batch size,
# workers or device, do not change the results' meaning).
RESUME_KEYS = (
    "model",
    "weights",
    "random_init",
    "seed",
    "layers",
    "size",
    "dense",
    "pool",
    "dtype",
    "format",
    "shard_size",
    "min_size",
    "inputs_sha256",
    "num_inputs",
)
TEST_EXIT_AFTER_SHARDS = "OVERFEAT_KERNELS_TEST_EXIT_AFTER_SHARDS"  # tests: die like kill -9


@dataclass
class ExtractConfig:
    model: str
    layers: list[str]
    out: Path
    inputs: list[str]
    weights: str | None = None
    random_init: bool = False
    seed: int = 0
    batch_size: int = 32
    dtype: str = "float32"
    device: str | None = None
    workers: int = 4
    pool: str | None = None  # none | avg | max (default: none, avg with dense)
    size: int | None = None
    dense: bool = False
    format: str = "npy"
    shard_size: int = 1000
    min_size: int | None = None
    progress: bool = True
    decode: str = "auto"  # auto | gpu | cpu (see decoding.resolve)
    decode_device: str | None = None  # the batched decoder's device (default: the model's)


@dataclass
class ExtractResult:
    images: int  # inputs listed in index.csv
    ok: int
    skipped: int
    seconds: float  # the whole run, start-up included
    computed: int = 0  # images decoded and run by this process in this run
    compute_seconds: float = 0.0  # time spent on them (decoding, model, writing shards)
    outputs: list[Path] = field(default_factory=list)
    decoder: str = ""  # which decoder ran, in words
    waits: dict[str, float] = field(default_factory=dict)  # _Stages.seconds
    bound: str = ""  # the stage the main process waited on longest, in words

    @property
    def images_per_second(self) -> float:
        """Throughput of this run's extraction phase (start-up excluded)."""
        return self.computed / self.compute_seconds if self.compute_seconds > 0 else 0.0


# ---------------------------------------------------------------------------------------
# Inputs


def collect_inputs(items: Iterable[str]) -> list[str]:
    """Image files from files, folders (recursive, image extensions only) and ``@list``
    files (one path per line; blank lines and ``#`` comments ignored), sorted, unique.
    An explicitly named file is always included (a bad one is recorded as skipped)."""
    found: set[str] = set()
    for item in items:
        if item.startswith("@"):
            listing = Path(item[1:])
            if not listing.is_file():
                raise FileNotFoundError(f"input list not found: {listing}")
            lines = listing.read_text().splitlines()
            found.update(
                collect_inputs(
                    s.strip() for s in lines if s.strip() and not s.lstrip().startswith("#")
                )
            )
            continue
        path = Path(item)
        if path.is_dir():
            found.update(
                str(p)
                for p in path.rglob("*")
                if p.is_file() and p.suffix.lower() in imageio.IMAGE_EXTENSIONS
            )
        elif path.exists():
            found.add(str(path))
        else:
            raise FileNotFoundError(f"input not found: {item}")
    return sorted(found)


def _keep_list(batch):
    return batch


# ---------------------------------------------------------------------------------------
# The run


def _model(cfg: ExtractConfig, device: torch.device) -> torch.nn.Module:
    torch.manual_seed(cfg.seed)
    model = models.build_model(cfg.model)
    if cfg.weights:
        path = Path(cfg.weights)
        if hasattr(model, "variant") and path.suffix not in (".pt", ".pth", ".safetensors"):
            weights.load_overfeat_release(model, path)
        elif hasattr(model, "variant"):
            weights._load_strict(model, weights.load_state_dict_file(path), str(path))
        else:
            weights.load_vgg(model, path)
    dtype = DTYPES[cfg.dtype]
    model = model.to(device=device, dtype=dtype).eval()
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    return model


def _settings(cfg: ExtractConfig, paths: list[str]) -> dict:
    s = asdict(cfg)
    s = {k: s[k] for k in RESUME_KEYS if k in s}
    s["out"] = str(cfg.out)
    s["layers"] = list(cfg.layers)
    s["num_inputs"] = len(paths)
    s["inputs_sha256"] = hashlib.sha256("\n".join(paths).encode()).hexdigest()
    if cfg.weights:
        st = Path(cfg.weights).stat()
        s["weights"] = {"path": str(Path(cfg.weights).resolve()), "bytes": st.st_size}
    return s


def _check_resume(manifest: Path, settings: dict) -> None:
    if not manifest.exists():
        return
    old = json.loads(manifest.read_text())
    diff = [k for k in RESUME_KEYS if old.get(k) != settings.get(k)]
    if diff:
        details = "; ".join(f"{k}: first run {old.get(k)!r}, now {settings.get(k)!r}"
                            for k in diff)  # fmt: skip
        raise ValueError(
            f"{manifest.parent} holds the output of a run with other settings ({details}). "
            "Use another --out folder, or delete this one to start over."
        )


def _pooled(x: torch.Tensor, pool: str) -> torch.Tensor:
    if x.dim() <= 2 or pool == "none":
        return x
    return x.mean(dim=(-2, -1)) if pool == "avg" else x.amax(dim=(-2, -1))


def _atomic_save_npy(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.save(f, array)
    os.replace(tmp, path)


def _write_shard(partial: Path, k: int, feats: dict[str, list[np.ndarray]],
                 shapes: dict[str, tuple], rows: list[list[str]]) -> None:  # fmt: skip
    tmp = partial / f"shard_{k:06d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name, chunks in feats.items():
        arr = np.stack(chunks) if chunks else np.zeros((0, *shapes[name]), np.float32)
        np.save(tmp / f"{name}.npy", arr)
    with open(tmp / "index.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)
    os.replace(tmp, partial / f"shard_{k:06d}")  # the shard exists only when complete


def _feature_shapes(model: torch.nn.Module, cfg: ExtractConfig, size: int) -> dict[str, tuple]:
    meta = layers._on_meta(model)
    x = torch.empty(1, 3, size, size, device="meta", dtype=next(meta.parameters()).dtype)
    with torch.no_grad():
        outs = layers.forward_layers(meta, x, cfg.layers, dense=cfg.dense)
    return {n: tuple(_pooled(t, cfg.pool).shape[1:]) for n, t in outs.items()}


class _Stages:
    """Where the main process waited: for the workers (reading, and decoding on the CPU
    path), for the batched decoder, for the model (its results copied back and written
    out). The largest bounded the rate."""

    NAMES: ClassVar[dict[str, str]] = {
        "loading": "the DataLoader workers",
        "decoding": "the batched JPEG decoder",
        "model": "the model",
    }

    def __init__(self) -> None:
        self.seconds = dict.fromkeys(self.NAMES, 0.0)

    @contextlib.contextmanager
    def __call__(self, name: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - t0

    def bound(self) -> str:
        return max(self.seconds, key=self.seconds.get)


def _shard_range(k: int, shard_size: int, n: int) -> range:
    return range(k * shard_size, min(n, (k + 1) * shard_size))


def _compute(model, cfg, device, paths, todo, size, min_size, bar, decoder, stages,
             shard_done) -> None:  # fmt: skip
    """Computes the shards `todo`, calling ``shard_done(k, feats, rows)`` as each completes.
    One DataLoader for all of them (its workers start once); no batch crosses a shard's
    boundary, so a shard's files do not depend on which shards are computed with it."""
    shards = {k: _shard_range(k, cfg.shard_size, len(paths)) for k in todo}
    batches = [list(r[j : j + cfg.batch_size]) for r in shards.values()
               for j in range(0, len(r), cfg.batch_size)]  # fmt: skip
    kind = decoding.BytesImages if decoder else decoding.Images
    loader = DataLoader(kind(paths, size, cfg.dense, min_size), batch_sampler=batches,
                        num_workers=cfg.workers, collate_fn=_keep_list)  # fmt: skip
    prep = model.preprocessing
    mean = torch.tensor(prep["mean"], device=device).view(1, 3, 1, 1)
    std = torch.tensor(prep["std"], device=device).view(1, 3, 1, 1)
    dtype = DTYPES[cfg.dtype]
    feats: dict[str, list[np.ndarray]] = {n: [] for n in cfg.layers}
    rows: list[list[str]] = []

    cuda = device.type == "cuda"

    def launch(batch) -> tuple:
        """Queues the model on a batch's good images and the copies of its outputs to the
        host (asynchronous on a GPU): the outputs of each model call, in the batch's order,
        and an event marking them ready."""
        good = [t for _, t, _ in batch if t is not None]
        if decoder:
            decoder.hand_over(good)
        groups = [[t] for t in good] if cfg.dense else [good] if good else []
        outs = []
        for group in groups:
            if cuda and group[0].device.type == "cpu":  # staged in pinned memory: async copy
                x = torch.empty((len(group), *group[0].shape), dtype=group[0].dtype,
                                pin_memory=True)  # fmt: skip
                x = torch.stack(group, out=x).to(device, non_blocking=True)
            else:
                x = torch.stack(group).to(device)
            x = ((x.float() * prep["scale"] - mean) / std).to(dtype)
            if cuda:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.no_grad():
                out = layers.forward_layers(model, x, cfg.layers, dense=cfg.dense)
            outs.append({n: _pooled(t, cfg.pool).float().to("cpu", non_blocking=cuda)
                         for n, t in out.items()})  # fmt: skip
        ready = None
        if cuda:
            ready = torch.cuda.Event()
            ready.record()
        return outs, ready

    def finish(batch, launched) -> None:
        nonlocal feats, rows
        outs, ready = launched
        if ready is not None:
            ready.synchronize()
        for out in outs:
            for name, t in out.items():  # out of pinned memory: shards may be large
                feats[name].extend(t.numpy().copy() if cuda else t.numpy())
        for i, t, reason in batch:
            status = ("ok", "") if t is not None else ("skipped", reason)
            rows.append([paths[i], *status])
        bar.update(len(batch))
        k = batch[0][0] // cfg.shard_size
        if len(rows) == len(shards[k]):
            shard_done(k, feats, rows)
            feats, rows = {n: [] for n in cfg.layers}, []

    # Batch i + 1 is read, decoded and queued while the GPU runs the model on batch i; then
    # batch i's results are collected.
    loaded, pending = iter(loader), None
    while True:
        with stages("loading"):
            batch = next(loaded, None)
        if batch is not None and decoder:
            with stages("decoding"):
                batch = decoder(batch)
        for i, t, reason in batch or []:
            if t is None:
                bar.write(f"warning: skipping {paths[i]}: {reason}", file=sys.stderr)
        with stages("model"):
            queued = (batch, launch(batch)) if batch is not None else None
            if pending is not None:
                finish(*pending)
        pending = queued
        if pending is None:
            break


def extract(cfg: ExtractConfig) -> ExtractResult:
    """Runs an extraction (see the module docstring); returns counts and timing."""
    start = time.perf_counter()
    _validate(cfg)
    with _distributed.process(cfg.device) as (device, rank, world):
        return _run(cfg, device, rank, world, start)


def _validate(cfg: ExtractConfig) -> None:
    if bool(cfg.weights) == bool(cfg.random_init):
        raise ValueError("give exactly one of --weights FILE or --random-init")
    if cfg.weights and not Path(cfg.weights).is_file():
        raise FileNotFoundError(f"--weights: file not found: {cfg.weights}")
    if cfg.dtype not in DTYPES:
        raise ValueError(f"--dtype: choose from {', '.join(DTYPES)}, got {cfg.dtype!r}")
    if cfg.pool is None:
        cfg.pool = "avg" if cfg.dense else "none"
    if cfg.pool not in ("none", "avg", "max"):
        raise ValueError(f"--pool: choose from none, avg, max; got {cfg.pool!r}")
    if cfg.dense and cfg.pool == "none":
        raise ValueError("--dense gives maps of a different size per image: use --pool avg or max")
    if cfg.format not in ("npy", "safetensors"):
        raise ValueError(f"--format: choose npy or safetensors, got {cfg.format!r}")
    for name, value in (("--batch-size", cfg.batch_size), ("--shard-size", cfg.shard_size)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    if cfg.decode not in decoding.DECODERS:
        raise ValueError(f"--decode: choose from {', '.join(decoding.DECODERS)}; "
                         f"got {cfg.decode!r}")  # fmt: skip
    if cfg.workers < 0:
        raise ValueError(f"--workers must be >= 0, got {cfg.workers}")
    if not cfg.layers:
        raise ValueError("--layers: name at least one layer (see `overfeat-kernels layers MODEL`)")
    with torch.device("meta"):
        known = [t.name for t in layers.layer_taps(models.build_model(cfg.model))]
    unknown = [n for n in cfg.layers if n not in known]
    if unknown:
        raise ValueError(f"--layers: {unknown} not in {cfg.model}; its layers: {', '.join(known)}")


def _run(cfg: ExtractConfig, device, rank: int, world: int, start: float) -> ExtractResult:
    from tqdm import tqdm

    paths = collect_inputs(cfg.inputs)
    if not paths:
        raise ValueError("no input images found")
    model = _model(cfg, device)
    spec = model.dense_spec
    size = cfg.size or spec.input_size
    min_size = cfg.min_size or (spec.input_size if cfg.dense else 32)
    if cfg.dense and min_size < spec.input_size:
        raise ValueError(
            f"--min-size {min_size}: with --dense, images must be at least the model's input "
            f"size ({spec.input_size}); smaller ones are skipped, so --min-size must be >= it"
        )
    # Shapes first: an impossible layer / size combination fails before anything is written.
    shapes = _feature_shapes(model, cfg, spec.input_size if cfg.dense else size)
    out, partial = Path(cfg.out), Path(cfg.out) / ".partial"
    settings = _settings(cfg, paths)
    _check_resume(out / "manifest.json", settings)
    final = out / "manifest.json"
    if final.exists():  # already complete
        return _summary(out, start, [])
    decode_device = decoding.resolve(cfg.decode, device, cfg.decode_device)
    decoder = None
    if decode_device is None:
        decoded_by = "cpu"
    else:
        decoder = decoding.JpegBatchDecoder(decode_device, size, cfg.dense, min_size)
        decoded_by = "gpu" if decode_device.type == "cuda" else f"batched-{decode_device}"
    # Recorded, not checked (the decoders agree up to rounding): every decoder that wrote
    # shards of this output, this run's last.
    if (partial / "manifest.json").exists():
        earlier = json.loads((partial / "manifest.json").read_text()).get("decode", [])
        earlier = [earlier] if isinstance(earlier, str) else list(earlier)
        settings["decode"] = [d for d in earlier if d != decoded_by] + [decoded_by]
    else:
        settings["decode"] = [decoded_by]
    if rank == 0:
        partial.mkdir(parents=True, exist_ok=True)
        _check_resume(partial / "manifest.json", settings)
        (partial / "manifest.json").write_text(json.dumps(settings, indent=1))
    if world > 1:
        dist.barrier()
    _check_resume(partial / "manifest.json", settings)
    n_shards = -(-len(paths) // cfg.shard_size)
    mine = [k for k in range(n_shards) if k % world == rank]
    todo = [k for k in mine if not (partial / f"shard_{k:06d}").is_dir()]
    total = sum(len(_shard_range(k, cfg.shard_size, len(paths))) for k in todo)
    done_now = 0

    def shard_done(k: int, feats: dict, rows: list) -> None:
        nonlocal done_now
        _write_shard(partial, k, feats, shapes, rows)
        done_now += 1
        if os.environ.get(TEST_EXIT_AFTER_SHARDS) == str(done_now):
            os._exit(137)

    stages = _Stages()
    compute_start = time.perf_counter()
    with tqdm(total=total, unit="img", disable=not cfg.progress or rank != 0,
              desc=f"extract {cfg.model} (decode: {decoded_by})",
              dynamic_ncols=True) as bar:  # fmt: skip
        if todo:
            _compute(model, cfg, device, paths, todo, size, min_size, bar, decoder, stages,
                     shard_done)  # fmt: skip
    compute_seconds = time.perf_counter() - compute_start
    if world > 1:
        dist.barrier()
    outputs = _merge(out, partial, n_shards, cfg, shapes, settings) if rank == 0 else []
    if world > 1:
        dist.barrier()
    result = _summary(out, start, outputs)
    result.computed, result.compute_seconds = total, compute_seconds
    result.decoder = (decoder.describe() if decoder else
                      f"cpu (Pillow in {cfg.workers or 'the main process'} DataLoader workers)")
    result.waits = dict(stages.seconds)
    result.bound = _Stages.NAMES[stages.bound()] if total else ""
    return result


def _merge(out: Path, partial: Path, n_shards: int, cfg: ExtractConfig,
           shapes: dict[str, tuple], settings: dict) -> list[Path]:  # fmt: skip
    shard_dirs = [partial / f"shard_{k:06d}" for k in range(n_shards)]
    missing = [d.name for d in shard_dirs if not d.is_dir()]
    if missing:
        raise RuntimeError(f"cannot merge: shards {missing} are missing")
    counts = [np.load(d / f"{cfg.layers[0]}.npy", mmap_mode="r").shape[0] for d in shard_dirs]
    total = sum(counts)
    outputs = []
    if cfg.format == "npy":
        for name in cfg.layers:
            path = out / f"{name}.npy"
            tmp = out / f"{name}.npy.tmp"
            arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32,
                                            shape=(total, *shapes[name]))  # fmt: skip
            row = 0
            for d, n in zip(shard_dirs, counts, strict=True):
                arr[row : row + n] = np.load(d / f"{name}.npy", mmap_mode="r")
                row += n
            arr.flush()
            del arr
            os.replace(tmp, path)
            outputs.append(path)
    else:
        from safetensors.numpy import save_file

        tensors = {name: np.concatenate([np.load(d / f"{name}.npy") for d in shard_dirs])
                   for name in cfg.layers}  # fmt: skip
        tmp = out / "features.safetensors.tmp"
        save_file({k: np.ascontiguousarray(v, np.float32) for k, v in tensors.items()}, str(tmp))
        os.replace(tmp, out / "features.safetensors")
        outputs.append(out / "features.safetensors")
    tmp = out / "index.csv.tmp"
    with open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["row", "path", "status", "reason"])
        row = 0
        for d in shard_dirs:
            with open(d / "index.csv", newline="") as g:
                for path, status, reason in csv.reader(g):
                    writer.writerow([row if status == "ok" else "", path, status, reason])
                    row += status == "ok"
    os.replace(tmp, out / "index.csv")
    outputs.append(out / "index.csv")
    (out / "manifest.json.tmp").write_text(json.dumps(settings, indent=1))
    os.replace(out / "manifest.json.tmp", out / "manifest.json")  # marks the run complete
    shutil.rmtree(partial, ignore_errors=True)
    return outputs


def _summary(out: Path, start: float, outputs: list[Path]) -> ExtractResult:
    with open(out / "index.csv", newline="") as f:
        statuses = [r["status"] for r in csv.DictReader(f)]
    ok = statuses.count("ok")
    return ExtractResult(len(statuses), ok, len(statuses) - ok, time.perf_counter() - start,
                         outputs)  # fmt: skip


def main_summary(result: ExtractResult) -> str:
    """The final line: images, skipped, seconds, images/s; the decoder that ran and what
    bounded the rate."""
    rate = (f"{result.images_per_second:.1f} images/s over the {result.computed} computed now"
            if result.computed else "nothing left to compute")  # fmt: skip
    line = (f"extracted {result.ok} images, skipped {result.skipped}, in {result.seconds:.1f} s "
            f"({rate})")  # fmt: skip
    if result.computed and result.decoder:
        waits = ", ".join(f"{k} {v:.1f} s" for k, v in result.waits.items())
        line += f"; decoder: {result.decoder}; bounded by {result.bound} (waits: {waits})"
    return line


if __name__ == "__main__":  # pragma: no cover
    sys.exit("use `overfeat-kernels extract` (python -m overfeat_kernels extract)")
