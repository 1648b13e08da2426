"""Is decoding or the model the bottleneck of feature extraction?

    python benchmarks/bench_extract.py [--images 512] [--workers W] [--out FILE.json]

Generates JPEGs of ImageNet's typical size (500x375), then measures separately:
- decoding: the extraction DataLoader alone (decode + resize + centre crop to 224, in W
  worker processes), images/s;
- the model (GPU only): VGG-16 up to fc7 in bfloat16, channels_last, batch 64, images/s.
The smaller of the two bounds the extraction rate. Timings on a CPU-only machine measure
decoding only.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

from overfeat_kernels import models
from overfeat_kernels.apps import extract
from overfeat_kernels.models import taps as layers


def decode_rate(paths: list[str], workers: int, batch: int = 64) -> float:
    dataset = extract._Images(paths, 224, dense=False, min_size=32)
    loader = DataLoader(dataset, batch_size=batch, num_workers=workers,
                        collate_fn=extract._keep_list)  # fmt: skip
    next(iter(loader))  # start the workers before timing
    start = time.perf_counter()
    n = sum(len(b) for b in loader)
    return n / (time.perf_counter() - start)


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument(
        "--workers",
        type=int,
        default=min(8, os.cpu_count() or 1),
        help="decoding workers (default: extract's default, min(8, CPUs))",
    )
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        base = rng.integers(0, 256, (375, 500, 3), dtype=np.uint8)
        paths = []
        for i in range(args.images):
            path = Path(tmp) / f"{i:05d}.jpg"
            Image.fromarray(np.roll(base, i, axis=1)).save(path, quality=90)
            paths.append(str(path))
        result = {"cpus": os.cpu_count(), "workers": args.workers, "images": args.images,
                  "decode_images_per_s": decode_rate(paths, args.workers)}  # fmt: skip
    if torch.cuda.is_available():
        result["device"] = torch.cuda.get_device_name()
        result["vgg16_fc7_bf16_images_per_s"] = model_rate()
        result["bottleneck"] = ("decoding" if result["decode_images_per_s"]
                                < result["vgg16_fc7_bf16_images_per_s"] else "gpu")  # fmt: skip
    else:
        result["device"] = "none (CPU-only machine: decoding measured only)"
    print(json.dumps(result, indent=1))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
