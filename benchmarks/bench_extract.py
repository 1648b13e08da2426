"""What bounds feature extraction: the decoders, the model, and both together.

    python benchmarks/bench_extract.py [--images 512] [--workers W] [--out FILE.json]
                                       [--sections cpu-decode,read,batched-decode,...]

Generates photo-like JPEGs of ImageNet's typical size (500x375, quality 90; about 55 KiB
each, ImageNet's average is about twice that: real photos take longer to decode), then measures
on this machine, in images/s:
- cpu-decode: the CPU path's DataLoader alone (Pillow decode + resize + centre crop to 224
  in W worker processes; default W: all cores);
- read: the GPU path's DataLoader alone (the workers only read the files' bytes);
- batched-decode: the GPU path's decoding alone (read in the workers, the batched JPEG
  decoder (TorchCodec's or torchvision's) + resize + crop on the GPU, batch 64; on a
  CPU-only machine that decoder's CPU version in the main process, which is how the
  pipeline is tested, not how it is used);
- model (GPU): VGG-16 up to fc7 in bfloat16, channels_last, batch 64 (--batch);
- end-to-end (GPU): `overfeat-kernels extract` of VGG-16 fc7 (bf16, batch 64) on the files,
  with --decode cpu and with --decode gpu, each with the stage it waited on most;
- compare: the two decoders' pixels (whole images and 224 crops: mean and largest absolute
  difference in 0-255 units) and the fc7 features' relative error between them
  (||f_gpu - f_cpu|| / ||f_cpu||, float32 VGG-16, random weights, seed 0).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter
from torch.utils.data import DataLoader

from overfeat_kernels import models
from overfeat_kernels.apps import decoding, extract, imageio
from overfeat_kernels.models import taps as layers

SECTIONS = ("cpu-decode", "read", "batched-decode", "model", "end-to-end", "compare")


def _make_jpeg(args: tuple) -> str:
    path, seed, i, (h, w) = args
    rng = np.random.default_rng([seed, i])
    field = rng.integers(0, 256, (4, 5, 3), dtype=np.uint8)
    im = Image.fromarray(field).resize((w, h), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(im)
    for _ in range(6):
        x0, y0 = int(rng.integers(0, w - 20)), int(rng.integers(0, h - 20))
        box = (x0, y0, x0 + int(rng.integers(10, w // 2)), y0 + int(rng.integers(10, h // 2)))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=colour)
    im = im.filter(ImageFilter.GaussianBlur(0.8))
    noisy = np.asarray(im, np.float32) + rng.normal(0, 8, (h, w, 3))
    Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(path, quality=90)
    return path


def make_jpegs(folder: Path, n: int, seed: int = 0,
               size: tuple[int, int] = (375, 500)) -> list[str]:  # fmt: skip
    """`n` photo-like JPEGs (smooth colour fields, shapes with edges, sensor-like noise),
    the same for a seed whatever the number of processes making them."""
    jobs = [(str(folder / f"{i:05d}.jpg"), seed, i, size) for i in range(n)]
    if n < 64:
        return [_make_jpeg(job) for job in jobs]
    with multiprocessing.get_context("fork").Pool(os.cpu_count()) as pool:
        return pool.map(_make_jpeg, jobs, chunksize=16)


def _loader(dataset, workers: int, batch: int) -> DataLoader:
    return DataLoader(dataset, batch_size=batch, num_workers=workers,
                      collate_fn=extract._keep_list)  # fmt: skip


def _rate(batches, count) -> float:
    """Images/s over an iterable of batches (its first batch untimed: worker start-up)."""
    it = iter(batches)
    next(it)
    start = time.perf_counter()
    n = sum(count(b) for b in it)
    return n / (time.perf_counter() - start)


def cpu_decode_rate(paths: list[str], workers: int, batch: int = 64) -> float:
    dataset = decoding.Images(paths, 224, dense=False, min_size=32)
    return _rate(_loader(dataset, workers, batch), len)


def read_rate(paths: list[str], workers: int, batch: int = 64) -> float:
    dataset = decoding.BytesImages(paths, 224, dense=False, min_size=32)
    return _rate(_loader(dataset, workers, batch), len)


def batched_decode_rate(paths: list[str], workers: int, device: torch.device,
                        batch: int = 64) -> float:  # fmt: skip
    dataset = decoding.BytesImages(paths, 224, dense=False, min_size=32)
    decoder = decoding.JpegBatchDecoder(device, 224, dense=False, min_size=32)

    def decode(b) -> int:
        out = decoder(b)
        tensors = [t for _, t, _ in out if t is not None]
        decoder.hand_over(tensors)
        torch.stack(tensors).sum().item()  # waits for the decoder
        return len(out)

    return _rate(_loader(dataset, workers, batch), decode)


def model_rate(batch: int = 64, reps: int = 20) -> float:
    model = models.vgg16().cuda().to(torch.bfloat16).eval().to(memory_format=torch.channels_last)
    x = torch.randn(batch, 3, 224, 224, device="cuda", dtype=torch.bfloat16)
    x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        for _ in range(3):
            layers.forward_layers(model, x, ["fc7"])
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(reps):
            layers.forward_layers(model, x, ["fc7"])
        torch.cuda.synchronize()
    return batch * reps / (time.perf_counter() - start)


def end_to_end(paths: list[str], decode: str, workers: int, batch: int, out: Path) -> dict:
    cfg = extract.ExtractConfig(model="vgg16", layers=["fc7"], out=out, inputs=list(paths),
                                random_init=True, batch_size=batch, dtype="bfloat16",
                                device="cuda", workers=workers, shard_size=len(paths),
                                progress=False, decode=decode)  # fmt: skip
    result = extract.extract(cfg)
    return {"images_per_s": result.images_per_second, "decoder": result.decoder,
            "bound_by": result.bound, "waits_s": result.waits}  # fmt: skip


def compare_decoders(paths: list[str], device: torch.device, batch: int = 16) -> dict:
    """Pixels and fc7 features from Pillow against the batched decoder on
    `device`: the decoders' rounding differences, measured."""
    decoder = decoding.JpegBatchDecoder(device, 224, dense=False, min_size=32)
    whole_diffs, crop_diffs, cpu_crops, dev_crops = [], [], [], []
    for start in range(0, len(paths), batch):
        chunk = paths[start : start + batch]
        datas = [torch.frombuffer(bytearray(Path(p).read_bytes()), dtype=torch.uint8)
                 for p in chunk]  # fmt: skip
        decoded = decoder._decode_all([("jpeg", d, 0, 0) for d in datas])
        for path, pixels in zip(chunk, decoded, strict=True):
            ref = torch.from_numpy(imageio.load_rgb(path)).permute(2, 0, 1)
            if pixels is None or pixels.shape != ref.shape:
                raise RuntimeError(f"the batched decoder failed on {path}")
            whole_diffs.append((pixels.cpu().int() - ref.int()).abs())
            cpu_crops.append(imageio.resize_center_crop(ref, 224))
            dev_crops.append(imageio.resize_center_crop(pixels, 224).cpu())
            crop_diffs.append((dev_crops[-1].int() - cpu_crops[-1].int()).abs())
    whole = torch.cat([d.flatten() for d in whole_diffs]).float()
    crops = torch.cat([d.flatten() for d in crop_diffs]).float()
    torch.manual_seed(0)
    model = models.vgg16().to(device).eval()
    prep = model.preprocessing
    mean = torch.tensor(prep["mean"], device=device).view(1, 3, 1, 1)
    std = torch.tensor(prep["std"], device=device).view(1, 3, 1, 1)

    def fc7(crops: list[torch.Tensor]) -> torch.Tensor:
        feats = []
        for s in range(0, len(crops), batch):
            x = torch.stack(crops[s : s + batch]).to(device).float()
            with torch.no_grad():
                out = layers.forward_layers(model, (x * prep["scale"] - mean) / std, ["fc7"])
            feats.append(out["fc7"].double().cpu())
        return torch.cat(feats)

    f_cpu, f_dev = fc7(cpu_crops), fc7(dev_crops)
    rel = ((f_dev - f_cpu).norm(dim=1) / f_cpu.norm(dim=1).clamp_min(1e-30)).numpy()
    return {
        "device": str(device),
        "images": len(paths),
        "pixels_mean_abs_diff": whole.mean().item(),
        "pixels_max_abs_diff": whole.max().item(),
        "pixels_share_differing": (whole > 0).float().mean().item(),
        "crop224_mean_abs_diff": crops.mean().item(),
        "crop224_max_abs_diff": crops.max().item(),
        "fc7_relative_error_mean": float(rel.mean()),
        "fc7_relative_error_max": float(rel.max()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--batch", type=int, default=64, help="batch size (default: 64)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="DataLoader workers (default: all cores)")  # fmt: skip
    parser.add_argument("--sections", default=",".join(SECTIONS),
                        help=f"comma-separated, from {', '.join(SECTIONS)} (default: all)")
    parser.add_argument("--compare-images", type=int, default=64,
                        help="images in the compare section (default: 64)")  # fmt: skip
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    sections = [s for s in args.sections.split(",") if s]
    unknown = sorted(set(sections) - set(SECTIONS))
    if args.batch < 1 or args.images < 2 * args.batch:
        parser.error("--images must be >= 2 x --batch (each loader's first batch is untimed)")
    if unknown:
        parser.error(f"--sections: unknown {unknown}; choose from {', '.join(SECTIONS)}")
    cuda = torch.cuda.is_available()
    device = torch.device("cuda") if cuda else torch.device("cpu")
    result: dict = {
        "device": torch.cuda.get_device_name() if cuda else "none (CPU-only machine)",
        "cpus": os.cpu_count(), "workers": args.workers, "images": args.images,
        "batch": args.batch,
        "jpegs": "photo-like 500x375, quality 90 (make_jpegs)", "units": "images/s",
    }  # fmt: skip

    failed: list[str] = []

    def record(name: str, fn) -> None:
        if name not in sections:
            return
        if name in ("model", "end-to-end") and not cuda:
            result[name] = "not measured: needs a GPU"
            return
        try:
            result[name] = fn()
        except Exception as err:  # e.g. no batched JPEG decoder on this GPU: say so, go on
            result[name] = f"failed: {type(err).__name__}: {err}"
            failed.append(name)
        print(f"{name}: {json.dumps(result[name])}", flush=True)
        if args.out:  # after every section: a run cut short keeps what it measured
            args.out.write_text(json.dumps(result, indent=1))

    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "jpegs").mkdir()
        paths = make_jpegs(Path(tmp) / "jpegs", args.images)
        result["mean_file_kib"] = sum(os.path.getsize(p) for p in paths) / len(paths) / 1024
        b, w = args.batch, args.workers
        record("cpu-decode", lambda: cpu_decode_rate(paths, w, b))
        record("read", lambda: read_rate(paths, w, b))
        record("batched-decode", lambda: {
            "images_per_s": batched_decode_rate(paths, w, device, b),
            "decoder": decoding.backend(device)[0], "decoder_device": str(device)})  # fmt: skip
        record("model", lambda: {"vgg16_fc7_bf16": model_rate(b)})
        def both_decoders() -> dict:
            # A short run first: CUDA, cuDNN and the conv backends' choices warm up there.
            end_to_end(paths[: 2 * b], "gpu", w, b, Path(tmp) / "warm-up")
            return {d: end_to_end(paths, d, w, b, Path(tmp) / f"out_{d}") for d in ("cpu", "gpu")}

        record("end-to-end", both_decoders)
        record("compare", lambda: compare_decoders(paths[: args.compare_images], device))
    e2e = result.get("end-to-end")
    if isinstance(e2e, dict):
        gpu = e2e["gpu"]["images_per_s"]
        result["gpu_decode_over_cpu_decode_end_to_end"] = gpu / e2e["cpu"]["images_per_s"]
        if isinstance(result.get("model"), dict):
            result["gpu_decode_end_to_end_over_model"] = gpu / result["model"]["vgg16_fc7_bf16"]
    print(json.dumps(result, indent=1))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
