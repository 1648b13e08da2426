"""Models end to end on a GPU (images/s), ours against the same networks on stock PyTorch
layers (cuDNN, channels_last) and against torch.compile of those.

    python benchmarks/bench_models.py [--quick] [--out FILE.json]

- VGG-16 at 224, batch 32 and 64, bf16 and fp32 (TF32 allowed, as PyTorch's default conv);
  also ours with the max-pools run after the convs instead of in them ("unfused").
- OverFeat accurate, 6 scales x 2 flips per image (dense.classify), bf16: ms per image.
- Dense evaluation against running the network on every 221x221 crop at stride 12 over the
  six scales (OverFeat §3.5's efficiency argument, measured).
Writes JSON (default benchmarks/results/bench_models_<device>.json) and prints a table.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch
from torch import nn

import overfeat_kernels as ok
from overfeat_kernels import dense, models
from overfeat_kernels.nn import to_stock

sys.path.insert(0, str(Path(__file__).parent))
from bench_ops import bench, environment, write_results


def crop_by_crop(model: nn.Module, images: torch.Tensor, scales, stride: int = 12,
                 batch: int = 128) -> int:  # fmt: skip
    """Runs `model` on every input_size crop at `stride` of each scale; returns the count."""
    size = model.dense_spec.input_size
    count = 0
    for scale in scales:
        x = dense.maps._resize(images, scale)
        crops = x.unfold(2, size, stride).unfold(3, size, stride)  # N, 3, i, j, size, size
        crops = crops.permute(0, 2, 3, 1, 4, 5).reshape(-1, 3, size, size)
        for start in range(0, crops.shape[0], batch):
            model(crops[start : start + batch].contiguous(memory_format=torch.channels_last))
        count += crops.shape[0]
    return count


def vgg_rows(quick: bool) -> list[dict]:
    rows = []
    torch.backends.cudnn.benchmark = True
    for dtype in (torch.bfloat16,) if quick else (torch.bfloat16, torch.float32):
        ours = models.vgg16().cuda().to(dtype).eval().to(memory_format=torch.channels_last)
        stock = to_stock(ours)
        compiled = torch.compile(stock)
        # The same layers without the pools fused into the convs (a plain nn.Sequential).
        unfused = copy.copy(ours)
        unfused.features = nn.Sequential(*ours.features)
        for n in (32,) if quick else (32, 64):
            cl = torch.channels_last
            sets = [(torch.randn(n, 3, 224, 224, device="cuda", dtype=dtype).contiguous(
                memory_format=cl),) for _ in range(2)]  # fmt: skip

            def auto(x, model=ours):
                with ok.conv_backend("auto"):  # per-layer choice of ours / cuDNN
                    return model(x)

            with torch.no_grad():
                t = {
                    name: bench(m, sets, min_reps=10)
                    for name, m in (
                        ("ours", ours), ("unfused", unfused), ("auto", auto), ("stock", stock),
                        ("compiled", compiled),
                    )
                }  # fmt: skip
            row = {"model": "vgg16", "dtype": str(dtype).removeprefix("torch."), "batch": n,
                   **{f"{k}_ms": v for k, v in t.items()},
                   **{f"{k}_images_per_s": n * 1e3 / v for k, v in t.items()},
                   "ratio_vs_stock": t["stock"] / t["ours"],
                   "ratio_vs_unfused": t["unfused"] / t["ours"],
                   "auto_ratio_vs_stock": t["stock"] / t["auto"],
                   "ratio_vs_compiled": t["compiled"] / t["ours"]}  # fmt: skip
            rows.append(row)
            print(
                f"  vgg16 {row['dtype']:8} N={n:<3} ours {row['ours_images_per_s']:7.0f} img/s  "
                f"stock x{row['ratio_vs_stock']:.2f}  compiled x{row['ratio_vs_compiled']:.2f}  "
                f"unfused pools x{row['ratio_vs_unfused']:.2f}  "
                f"auto backend x{row['auto_ratio_vs_stock']:.2f} vs stock"
            )
    return rows


def overfeat_rows(quick: bool) -> list[dict]:
    dtype = torch.bfloat16
    ours = models.overfeat("accurate").cuda().to(dtype).eval()
    ours = ours.to(memory_format=torch.channels_last)
    stock = to_stock(ours)
    images = [(torch.randn(1, 3, 461, 569, device="cuda", dtype=dtype),) for _ in range(2)]
    scales = dense.OVERFEAT_SCALES[-2:] if quick else dense.OVERFEAT_SCALES
    with torch.no_grad():
        t_ours = bench(lambda x: dense.classify(ours, x, scales=scales), images, min_reps=5)
        t_stock = bench(lambda x: dense.classify(stock, x, scales=scales), images, min_reps=5)
        t_crops = bench(lambda x: crop_by_crop(ours, x, scales), images[:1], min_reps=1,
                        budget_ms=0)  # fmt: skip
        n_crops = crop_by_crop(ours, images[0][0], scales)
    row = {"model": "overfeat_accurate", "dtype": "bfloat16", "scales": len(scales),
           "flips": 2, "ours_ms_per_image": t_ours, "stock_ms_per_image": t_stock,
           "ratio_vs_stock": t_stock / t_ours, "crop_by_crop_ms": t_crops,
           "crops_per_image": n_crops, "dense_vs_crops_ratio": t_crops / (t_ours / 2)}  # fmt: skip
    print(
        f"  overfeat accurate {len(scales)} scales x 2 flips: ours {t_ours:.2f} ms/image, stock "
        f"x{row['ratio_vs_stock']:.2f}; {n_crops} crops {t_crops:.1f} ms = "
        f"x{row['dense_vs_crops_ratio']:.1f} the dense time (one flip)"
    )
    return [row]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="a subset, about a minute")
    parser.add_argument("--out", type=Path, default=None, help="JSON file to write")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_models: needs a CUDA GPU", file=sys.stderr)
        return 2
    ok.set_conv_backend("ours")  # "ours" rows: our kernels; "auto" rows choose per layer
    env = environment()
    print("bench_models on " + ", ".join(f"{k} {v}" for k, v in env.items()))
    result = {"environment": env, "quick": args.quick, "vgg16": vgg_rows(args.quick),
              "overfeat": overfeat_rows(args.quick)}  # fmt: skip
    write_results(result, "bench_models", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
