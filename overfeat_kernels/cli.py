"""Command line: `overfeat-kernels COMMAND` or `python -m overfeat_kernels COMMAND`."""

from __future__ import annotations

import argparse
import json
import sys

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

EPILOG = """examples:
  overfeat-kernels info                  what was built, what this machine can run
  overfeat-kernels demo                  every op vs. the reference, timed (GPU if present)
  overfeat-kernels demo --device cpu --dtype bfloat16 --size 28
"""


def _cmd_info(args: argparse.Namespace) -> int:
    from . import build_info

    print(json.dumps(build_info(), indent=2))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from . import demo

    if args.device == "cuda" and not torch.cuda.is_available():
        print("overfeat-kernels demo: --device cuda but no CUDA GPU is available", file=sys.stderr)
        return 2
    rows = demo.run(
        args.device, DTYPES[args.dtype], args.batch, args.size, args.channels, args.reps
    )
    bad = [r["op"] for r in rows if not r["agrees"]]
    if bad:
        print(f"DISAGREEMENT with the reference: {', '.join(bad)}", file=sys.stderr)
        return 1
    print("all ops agree with the reference.")
    return 0


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

    demo = sub.add_parser("demo", help="run every op and layer against the reference, timed")
    demo.add_argument(
        "--device",
        choices=["cpu", "cuda"],
        default=None,
        help="where to run (default: cuda if available, else cpu)",
    )
    demo.add_argument(
        "--dtype", choices=sorted(DTYPES), default="float32", help="data type (default: float32)"
    )
    demo.add_argument("--batch", type=int, default=2, help="batch size (default: 2)")
    demo.add_argument("--size", type=int, default=56, help="map height and width (default: 56)")
    demo.add_argument("--channels", type=int, default=64, help="channels (default: 64)")
    demo.add_argument("--reps", type=int, default=10, help="timed repetitions (default: 10)")
    demo.set_defaults(func=_cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
