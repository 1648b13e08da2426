"""Command line: `overfeat-kernels COMMAND` or `python -m overfeat_kernels COMMAND`."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

EPILOG = """examples:
  overfeat-kernels info                  what was built, what this machine can run
  overfeat-kernels demo                  the main job: train, localize, detect digits -> outputs/
  overfeat-kernels selfcheck             every op vs. the reference, timed (GPU if present)
  overfeat-kernels selfcheck --device sim    the CUDA kernels, run in the CPU simulator
  overfeat-kernels layers vgg16          the extractable layers and their output shapes
  overfeat-kernels train --model overfeat-fast --data train/ --out run1/
  overfeat-kernels extract --model vgg16 --weights vgg16.pth --layers fc7,pool5 \\
      --out features/ --batch-size 64 --dtype bfloat16 photos/ @more.txt
"""

EXTRACT_EPILOG = """Outputs in --out: <layer>.npy per layer (rows in index.csv order,
memory-mappable; float32), index.csv (row,path,status,reason), manifest.json. A killed
run, re-run with the same arguments, resumes where it stopped; other arguments are
refused. Several GPUs:
  torchrun --nproc_per_node 4 -m overfeat_kernels extract ...   (same files as one process)
Exit status: 0 all images extracted, 3 finished but some inputs were skipped (see
index.csv), 2 bad arguments, 1 failure. The final line names the decoder that ran and
what bounded the rate (the workers, the GPU decoder or the model).

example:
  overfeat-kernels extract --model vgg16 --random-init --layers conv5_3,fc7 --pool avg \\
      --out out/ --device cpu images/
"""


def _cmd_info(args: argparse.Namespace) -> int:
    from ..ops import build_info

    print(json.dumps(build_info(), indent=2))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from . import demo

    demo.run(args.out, quick=args.quick, seed=args.seed)
    if torch.cuda.is_available():
        bench = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_ops.py"
        if bench.exists():
            import runpy

            print("\nGPU present: the ops benchmark against cuDNN (--quick)")
            sys.argv = [str(bench), "--quick", "--out", str(Path(args.out) / "bench_ops.json")]
            runpy.run_path(str(bench), run_name="__main__")
    return 0


def _cmd_selfcheck(args: argparse.Namespace) -> int:
    from ..ops import backend, simulator
    from . import selfcheck

    if args.device == "cuda" and not torch.cuda.is_available():
        print("overfeat-kernels selfcheck: --device cuda but no CUDA GPU is available",
              file=sys.stderr)  # fmt: skip
        return 2
    if args.device == "sim":
        if not simulator.available():
            print("overfeat-kernels selfcheck: --device sim but the CUDA simulator module was "
                  "not built (see `overfeat-kernels info`)", file=sys.stderr)  # fmt: skip
            return 2
        # The CUDA kernels on CPU tensors: correctness only; the simulator is slow, so
        # the defaults shrink and the times say nothing about a GPU.
        simulator.reset_launch_counts()
        with simulator.simulate_cuda():
            rows = selfcheck.run(
                "cpu", DTYPES[args.dtype], args.batch, args.size or 24, args.channels or 16,
                args.reps or 1,
            )  # fmt: skip
        print("\nCUDA kernels that ran in the simulator (launches):")
        for name, count in sorted(simulator.launch_counts().items()):
            print(f"  {count:5d}  {name}")
        print("(times above are of the simulator on this CPU, not of a GPU)")
    else:
        # Our kernels are what is checked: the "auto" backend could hand conv3x3 to cuDNN.
        with backend.conv_backend("ours"):
            rows = selfcheck.run(
                args.device, DTYPES[args.dtype], args.batch, args.size or 56,
                args.channels or 64, args.reps or 10,
            )  # fmt: skip
        choices = backend.conv_choices()
        if choices:
            print(f"\nconv3x3 backend choices remembered (mode {backend.get_conv_backend()!r}):")
            for key, entry in choices.items():
                print(f"  {key}  ({entry['source']})")
                for direction, pick in entry["choice"].items():
                    times = entry["times_ms"].get(direction, {})
                    timed = ", ".join(f"{name} {ms:.3f} ms" for name, ms in times.items())
                    print(f"    {direction:11} {pick:8} {timed}")
    bad = [r["op"] for r in rows if not r["agrees"]]
    if bad:
        print(f"DISAGREEMENT with the reference: {', '.join(bad)}", file=sys.stderr)
        return 1
    print("all ops agree with the reference.")
    return 0


def _cmd_layers(args: argparse.Namespace) -> int:
    from .. import models
    from ..models import taps as layers

    with torch.device("meta"):  # shapes only: no weights in memory
        model = models.build_model(args.model)
    size = args.size or model.dense_spec.input_size
    try:
        shapes = layers.layer_shapes(model, size)
    except ValueError as err:
        print(f"overfeat-kernels layers: error: {err}", file=sys.stderr)
        return 2
    print(f"{args.model}: extractable layers at {size}x{size} (shape per image)")
    for name, shape in shapes:
        print(f"  {name:10} {'x'.join(map(str, shape))}")
    return 0


def _cmd_extract(args: argparse.Namespace) -> int:
    from . import extract

    cfg = extract.ExtractConfig(
        model=args.model, layers=[s for s in args.layers.split(",") if s], out=args.out,
        inputs=args.inputs, weights=args.weights, random_init=args.random_init, seed=args.seed,
        batch_size=args.batch_size, dtype=args.dtype, device=args.device, workers=args.workers,
        pool=args.pool, size=args.size, dense=args.dense, format=args.format,
        shard_size=args.shard_size, min_size=args.min_size, progress=not args.no_progress,
        decode=args.decode,
    )  # fmt: skip
    try:
        result = extract.extract(cfg)
    except (ValueError, FileNotFoundError, KeyError) as err:
        print(f"overfeat-kernels extract: error: {err}", file=sys.stderr)
        return 2
    if int(os.environ.get("RANK", "0")) == 0:
        print(extract.main_summary(result))
    return 3 if result.skipped else 0


def _cmd_train(args: argparse.Namespace) -> int:
    from . import train

    cfg = train.TrainConfig(
        model=args.model, data=args.data, out=args.out, val=args.val, epochs=args.epochs,
        batch_size=args.batch_size, optimizer=args.optimizer, lr=args.lr,
        momentum=args.momentum, weight_decay=args.weight_decay,
        lr_steps=tuple(int(v) for v in args.lr_steps.split(",") if v), lr_gamma=args.lr_gamma,
        size=args.size, workers=args.workers, device=args.device, bf16=args.bf16,
        init_from=args.init_from, num_classes=args.num_classes, adaptation=args.adaptation,
        freeze_until=args.freeze_until, resume=args.resume, seed=args.seed,
        progress=not args.no_progress,
    )  # fmt: skip
    try:
        result = train.train(cfg)
    except (ValueError, FileNotFoundError, KeyError, TypeError) as err:
        print(f"overfeat-kernels train: error: {err}", file=sys.stderr)
        return 2
    if int(os.environ.get("RANK", "0")) == 0 and result.history:
        last = result.history[-1]
        print(f"trained {result.epochs} epochs: loss {last['loss']:.4f}, accuracy "
              f"{last['accuracy']:.4f}; checkpoint {result.checkpoint}")  # fmt: skip
    return 0


TRAIN_EPILOG = """Defaults follow OverFeat §3.1: SGD, momentum 0.6, weight decay 1e-5, learning
rate 0.05 halved at epochs 30, 50, 60, 70, 80; random crops of the model's input size from
images whose shorter side is 256/221 of it, and flips. A checkpoint is written atomically
to OUT/checkpoint.pt after every epoch; --resume continues from it.

examples:
  overfeat-kernels train --model overfeat-fast --data train/ --val val/ --out run1/
  overfeat-kernels train --model vgg16 --init-from vgg16.pth --num-classes 20 \\
      --freeze-until pool5 --optimizer adam --lr 1e-3 --epochs 10 --data voc/ --out tl/
  torchrun --nproc_per_node 4 -m overfeat_kernels train ...     (DDP)
"""


def _add_model(parser: argparse.ArgumentParser, flag: str) -> None:
    """The model argument of layers / extract / train (positional when flag has no dashes)."""
    from ..models import MODEL_NAMES

    extra = {"required": True} if flag.startswith("--") else {}
    parser.add_argument(flag, choices=list(MODEL_NAMES), metavar="MODEL",
                        help="one of: " + ", ".join(MODEL_NAMES), **extra)  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="overfeat-kernels",
        description="CUDA kernels for 3x3 convolution, OverFeat offset pooling and interleaving.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    info = sub.add_parser("info", help="print build and device information as JSON")
    info.set_defaults(func=_cmd_info)

    main_job = sub.add_parser(
        "demo", help="the main job: digits classification, localization and detection"
    )
    main_job.add_argument(
        "--out",
        type=Path,
        default=Path("outputs"),
        help="folder for the PNGs and detections.json (default: outputs)",
    )
    main_job.add_argument("--quick", action="store_true", help="shorter training (about 1.5 min)")
    main_job.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    main_job.set_defaults(func=_cmd_demo)

    check = sub.add_parser("selfcheck", help="run every op and layer against the reference, timed")
    check.add_argument(
        "--device",
        choices=["cpu", "cuda", "sim"],
        default=None,
        help="where to run: cpu, cuda, or sim (the CUDA kernels in the CPU simulator); "
        "default: cuda if available, else cpu",
    )
    check.add_argument(
        "--dtype", choices=sorted(DTYPES), default="float32", help="data type (default: float32)"
    )
    check.add_argument("--batch", type=int, default=2, help="batch size (default: 2)")
    check.add_argument(
        "--size", type=int, default=None, help="map height and width (default: 56; sim: 24)"
    )
    check.add_argument("--channels", type=int, default=None, help="channels (default: 64; sim: 16)")
    check.add_argument(
        "--reps", type=int, default=None, help="timed repetitions (default: 10; sim: 1)"
    )
    check.set_defaults(func=_cmd_selfcheck)

    lay = sub.add_parser("layers", help="list a model's extractable layers and their shapes")
    _add_model(lay, "model")
    lay.add_argument("--size", type=int, default=None, help="input size (default: the model's)")
    lay.set_defaults(func=_cmd_layers)

    ex = sub.add_parser("extract", help="extract features of image files with a model",
                        epilog=EXTRACT_EPILOG,
                        formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ex.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="image files, folders (searched recursively) or @list.txt files",
    )
    _add_model(ex, "--model")
    src = ex.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--weights",
        metavar="FILE",
        help="trained weights: torchvision/timm VGG .pth or .safetensors; OverFeat "
        "release file (net_weight_0 / net_weight_1) or state dict",
    )
    src.add_argument(
        "--random-init",
        action="store_true",
        help="random weights (seeded by --seed): for tests and timing",
    )
    ex.add_argument("--seed", type=int, default=0, help="seed of --random-init (default: 0)")
    ex.add_argument(
        "--layers",
        required=True,
        help="comma-separated layer names (see `overfeat-kernels layers MODEL`)",
    )
    ex.add_argument("--out", required=True, type=Path, help="output folder")
    ex.add_argument("--batch-size", type=int, default=32, help="images per batch (default: 32)")
    ex.add_argument(
        "--dtype",
        choices=["float32", "bfloat16", "float16"],
        default="float32",
        help="compute precision (features are saved as float32; default: float32)",
    )
    ex.add_argument(
        "--device", choices=["cpu", "cuda"], default=None, help="default: cuda if available"
    )
    ex.add_argument(
        "--workers",
        type=int,
        default=min(8, os.cpu_count() or 1),
        help="DataLoader processes reading (and with --decode cpu decoding) the images "
        "(default: min(8, CPU count))",
    )
    ex.add_argument(
        "--decode",
        choices=["auto", "gpu", "cpu"],
        default="auto",
        help="where JPEGs are decoded and resized: gpu (nvJPEG on the model's GPU through "
        "TorchCodec's batched decoder, or torchvision's; overlapped with the model; other "
        "formats and unusual JPEGs still decoded by the workers), cpu (Pillow in the "
        "workers), auto (gpu when the model runs on CUDA and a decoder works there; default)",
    )
    ex.add_argument(
        "--pool",
        choices=["none", "avg", "max"],
        default=None,
        help="pool feature maps over space (default: none; avg with --dense)",
    )
    size = ex.add_mutually_exclusive_group()
    size.add_argument(
        "--size",
        type=int,
        default=None,
        help="resize the shorter side to S and crop the centre SxS (default: the "
        "model's input size)",
    )
    size.add_argument(
        "--dense",
        action="store_true",
        help="evaluate each whole image at its own size (fc layers as "
        "convolutions), one pooled row per image",
    )
    ex.add_argument(
        "--format",
        choices=["npy", "safetensors"],
        default="npy",
        help="output format (default: npy)",
    )
    ex.add_argument(
        "--shard-size", type=int, default=1000, help="images per resumable shard (default: 1000)"
    )
    ex.add_argument(
        "--min-size",
        type=int,
        default=None,
        help="skip images with a shorter side below this (default: 32; the model's "
        "input size with --dense)",
    )
    ex.add_argument("--no-progress", action="store_true", help="no progress bar")
    ex.set_defaults(func=_cmd_extract)

    tr = sub.add_parser("train", help="train a model on an image folder (ImageFolder layout)",
                        epilog=TRAIN_EPILOG,
                        formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    _add_model(tr, "--model")
    tr.add_argument("--data", required=True, type=Path, help="training images: DATA/<class>/*")
    tr.add_argument("--val", type=Path, default=None, help="validation images, same layout")
    tr.add_argument("--out", required=True, type=Path, help="folder for checkpoint.pt")
    tr.add_argument("--epochs", type=int, default=90, help="default: 90")
    tr.add_argument("--batch-size", type=int, default=32, help="default: 32")
    tr.add_argument("--optimizer", choices=["sgd", "adam"], default="sgd", help="default: sgd")
    tr.add_argument("--lr", type=float, default=0.05, help="learning rate (default: 0.05)")
    tr.add_argument("--momentum", type=float, default=0.6, help="SGD momentum (default: 0.6)")
    tr.add_argument("--weight-decay", type=float, default=1e-5, help="default: 1e-5")
    tr.add_argument(
        "--lr-steps",
        default="30,50,60,70,80",
        help="epochs at which the learning rate is multiplied by --lr-gamma",
    )
    tr.add_argument("--lr-gamma", type=float, default=0.5, help="default: 0.5")
    tr.add_argument("--size", type=int, default=None, help="crop size (default: model input)")
    tr.add_argument(
        "--workers",
        type=int,
        default=min(8, os.cpu_count() or 1),
        help="data loading processes (default: min(8, CPU count))",
    )
    tr.add_argument(
        "--device", choices=["cpu", "cuda"], default=None, help="default: cuda if available"
    )
    tr.add_argument("--bf16", action="store_true", help="bfloat16 autocast")
    tr.add_argument(
        "--init-from",
        metavar="FILE",
        help="start from trained weights: a checkpoint of ours, torchvision / timm "
        "VGG weights or an OverFeat release file",
    )
    tr.add_argument(
        "--num-classes",
        type=int,
        default=None,
        help="classes of the new head (default: the number of class folders)",
    )
    tr.add_argument(
        "--adaptation",
        type=int,
        default=None,
        metavar="UNITS",
        help="add a hidden adaptation layer of UNITS before the new head",
    )
    tr.add_argument(
        "--freeze-until",
        metavar="LAYER",
        help="keep every layer up to LAYER fixed (see `overfeat-kernels layers`)",
    )
    tr.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    tr.add_argument("--seed", type=int, default=0, help="default: 0")
    tr.add_argument("--no-progress", action="store_true", help="no progress bar")
    tr.set_defaults(func=_cmd_train)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
