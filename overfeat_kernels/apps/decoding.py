"""Where extraction decodes its images: Pillow in the DataLoader workers (``cpu``), or a
batched JPEG decoder in the main process (``gpu``: nvJPEG on the model's GPU, through
TorchCodec's ``decode_jpeg`` or, without TorchCodec, torchvision's).

With the GPU decoder the workers only read file bytes, and decode with Pillow what the
batched decoder cannot take as it is (``imageio.batch_decodable``: PNG and the other
formats, CMYK / progressive / 12-bit / EXIF-rotated / truncated JPEGs); the main process
decodes a batch's JPEGs on a side CUDA stream and resizes and centre-crops them there with
the CPU path's arithmetic (``imageio.resize_center_crop``). A JPEG the batched decoder
rejects after all is decoded by Pillow in the main process; one Pillow cannot decode either
is skipped with Pillow's reason, the same reason the CPU path gives.

The same pipeline runs with the decoders' CPU versions (``decode_device="cpu"``), which is
how it is tested without a GPU.
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from . import imageio

__all__ = ["BACKENDS", "DECODERS", "BytesImages", "Images", "JpegBatchDecoder", "backend",
           "prepare", "resolve"]  # fmt: skip

DECODERS = ("auto", "gpu", "cpu")
# Pixels decoded in one call of the batched decoder (its outputs live until resized): a
# batch of huge JPEGs is decoded in several calls rather than all at once.
DECODE_CALL_PIXELS = 64 * 2**20
# A JPEG file larger than this is decoded by Pillow, which reads it as it goes (the bytes
# path would hold it all in memory).
MAX_JPEG_BYTES = 64 * 2**20


def check_size(h: int, w: int, min_size: int) -> None:
    if min(h, w) < min_size:
        raise imageio.ImageError(f"too small: {w}x{h}, needs at least {min_size}")


def prepare(pixels: np.ndarray | torch.Tensor, size: int, dense: bool,
            min_size: int) -> torch.Tensor:  # fmt: skip
    """Decoded pixels (``[H, W, 3]`` array or ``[3, H, W]`` tensor) as the model's input:
    ``[3, size, size]`` uint8 (resized, centre-cropped), or the whole image with ``dense``."""
    if isinstance(pixels, np.ndarray):
        pixels = torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1)
    check_size(pixels.shape[1], pixels.shape[2], min_size)
    return pixels if dense else imageio.resize_center_crop(pixels, size)


def _reason(err: Exception) -> str:
    return str(err) if isinstance(err, imageio.ImageError) else f"{type(err).__name__}: {err}"


class Images(Dataset):
    """The CPU decoder: decodes and resizes in DataLoader workers. Items are
    ``(i, tensor, "")`` or ``(i, None, reason)``."""

    def __init__(self, paths: Sequence[str], size: int, dense: bool, min_size: int) -> None:
        self.paths, self.size, self.dense, self.min_size = paths, size, dense, min_size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        try:
            pixels = imageio.load_rgb(self.paths[i])
            return i, prepare(pixels, self.size, self.dense, self.min_size), ""
        except Exception as err:
            return i, None, _reason(err)


class BytesImages(Images):
    """The GPU decoder's workers: items are ``(i, ("jpeg", bytes tensor, h, w), "")`` for
    the batched decoder, ``(i, ("pixels", tensor, 0, 0), "")`` for what Pillow decoded here,
    or ``(i, None, reason)``. Only JPEGs are read whole; other files go to Pillow as on the
    CPU path."""

    def _as_cpu_path(self, i: int):
        i, pixels, reason = super().__getitem__(i)
        return i, None if pixels is None else ("pixels", pixels, 0, 0), reason

    def __getitem__(self, i: int):
        try:
            with open(self.paths[i], "rb") as f:
                if f.read(3) != b"\xff\xd8\xff" or os.fstat(f.fileno()).st_size > MAX_JPEG_BYTES:
                    return self._as_cpu_path(i)  # not a JPEG, or a huge file: as on cpu
                f.seek(0)
                data = f.read()
        except Exception:
            return self._as_cpu_path(i)  # unreadable: the CPU path's reason
        try:
            header = imageio.jpeg_header(data)
            if imageio.batch_decodable(header):
                check_size(header.height, header.width, self.min_size)
                encoded = torch.frombuffer(bytearray(data), dtype=torch.uint8)
                return i, ("jpeg", encoded, header.height, header.width), ""
            pixels = imageio.decode_rgb(data)
            return i, ("pixels", prepare(pixels, self.size, self.dense, self.min_size), 0, 0), ""
        except Exception as err:
            return i, None, _reason(err)


def _torchcodec():
    from torchcodec.decoders import decode_jpeg

    return lambda datas, device: decode_jpeg(list(datas), mode="RGB", device=device)


def _torchvision():
    import warnings

    from torchvision.io import ImageReadMode, decode_jpeg

    def decode(datas, device):
        with warnings.catch_warnings():  # deprecated since 0.29 in favour of TorchCodec
            warnings.simplefilter("ignore", DeprecationWarning)
            return decode_jpeg(list(datas), mode=ImageReadMode.RGB, device=device)

    return decode


# The batched JPEG decoders, in order of preference: name -> a factory of
# decode(list of 1-D uint8 CPU tensors, device) -> list of [3, H, W] uint8 tensors on device.
BACKENDS = {"torchcodec": _torchcodec, "torchvision": _torchvision}
_PROBED: dict[str, tuple[str, object] | str] = {}


def _probe_image() -> torch.Tensor:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (16, 8), (200, 30, 90)).save(buf, format="JPEG")
    return torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8)


def backend(device: torch.device) -> tuple[str, object] | str:
    """``(name, decode)`` of the first batched JPEG decoder that works on `device`
    (TorchCodec's, then torchvision's), or a string saying why none does."""
    key = str(device)
    if key not in _PROBED:
        why = []
        for name, factory in BACKENDS.items():
            try:
                decode = factory()
                out = decode([_probe_image()], device)
                if len(out) == 1 and tuple(out[0].shape) == (3, 8, 16):
                    _PROBED[key] = (name, decode)
                    break
                why.append(f"{name}'s decoder gives wrong output on {device}")
            except ImportError:
                why.append(f"{name} is not installed")
            except Exception as err:  # no nvJPEG in this build, driver trouble, ...
                why.append(f"{name}'s decoder fails on {device}: {_reason(err)}")
        else:
            _PROBED[key] = "; ".join(why) + " (pip install torchcodec)"
    return _PROBED[key]


def resolve(decode: str, model_device: torch.device,
            decode_device: str | None = None) -> torch.device | None:  # fmt: skip
    """The device the batched decoder runs on, or None for the CPU decoder.

    ``auto``: the GPU decoder when the model runs on CUDA and the decoder works there;
    ``gpu``: that, or an error saying why not; ``cpu``: Pillow in the workers.
    ``decode_device`` runs the batched pipeline on another device (``"cpu"``: the batched
    decoder's CPU version, for testing the pipeline without a GPU)."""
    if decode not in DECODERS:
        raise ValueError(f"--decode: choose from {', '.join(DECODERS)}; got {decode!r}")
    if decode == "cpu":
        return None
    device = torch.device(decode_device) if decode_device else model_device
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    if device.type != "cuda" and not decode_device:
        reason = f"the model runs on {device.type}; the GPU decoder needs a CUDA device"
    else:
        found = backend(device)
        reason = found if isinstance(found, str) else None
    if reason is None:
        return device
    if decode == "gpu":
        raise ValueError(f"--decode gpu: {reason}; use --decode cpu")
    return None


def _pixels(item: tuple) -> int:
    return item[2] * item[3]


class JpegBatchDecoder:
    """Decodes the JPEGs of a batch from `BytesImages` on `device` (a side stream on CUDA)
    and prepares every image there; `hand_over` makes the results usable on the current
    stream."""

    def __init__(self, device: torch.device, size: int, dense: bool, min_size: int) -> None:
        self.device, self.size, self.dense, self.min_size = device, size, dense, min_size
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        found = backend(device)
        if isinstance(found, str):
            raise ValueError(f"no batched JPEG decoder on {device}: {found}")
        self.backend, self._decode = found
        # How many images each way: the batched decoder, Pillow in the workers, Pillow here
        # (JPEGs the batched decoder rejected).
        self.counts = {"batched": 0, "workers": 0, "fallback": 0}

    def describe(self) -> str:
        kind = "gpu" if self.device.type == "cuda" else "batched"
        c = self.counts
        return (f"{kind} ({self.backend}'s JPEG decoder on {self.device}) for {c['batched']} "
                f"images, Pillow for {c['workers']} in the workers and {c['fallback']} after "
                "that decoder failed")  # fmt: skip

    def __call__(self, batch: list) -> list:
        """``(i, tensor on device or None, reason)`` for every item, in order."""
        out: list = [None] * len(batch)
        jpegs = []
        ctx = torch.cuda.stream(self.stream) if self.stream else contextlib.nullcontext()
        with ctx:
            for k, (i, item, reason) in enumerate(batch):
                if item is None:
                    out[k] = (i, None, reason)
                elif item[0] == "jpeg":
                    jpegs.append(k)
                else:
                    out[k] = self._finish(i, item, None)
            # Each call's images are resized before the next call: only one call's full-size
            # images are alive at a time.
            for chunk in self._chunks([batch[k][1] for k in jpegs]):
                decoded = self._decode_call([batch[jpegs[j]][1][1] for j in chunk])
                for j, pixels in zip(chunk, decoded, strict=True):
                    i, item, _ = batch[jpegs[j]]
                    out[jpegs[j]] = self._finish(i, item, pixels)
                del decoded
        return out

    def _finish(self, i: int, item: tuple, pixels: torch.Tensor | None) -> tuple:
        """The item's model input on the device, or why there is none."""
        kind, data, h, w = item
        try:
            if kind == "pixels":
                self.counts["workers"] += 1
                return i, data.to(self.device, non_blocking=True), ""
            if pixels is None or tuple(pixels.shape) != (3, h, w):
                self.counts["fallback"] += 1  # rejected or misread: Pillow decides, as on cpu
                pixels = imageio.decode_rgb(data.numpy().tobytes())
                return i, prepare(pixels, self.size, self.dense, self.min_size).to(self.device), ""
            self.counts["batched"] += 1
            return i, prepare(pixels, self.size, self.dense, self.min_size), ""
        except Exception as err:
            return i, None, _reason(err)

    @staticmethod
    def _chunks(items: list[tuple]) -> list[list[int]]:
        """Positions of `items` in calls of at most DECODE_CALL_PIXELS (one image at least)."""
        chunks: list[list[int]] = []
        pixels = 0
        for j, item in enumerate(items):
            if not chunks or pixels + _pixels(item) > DECODE_CALL_PIXELS:
                chunks.append([])
                pixels = 0
            chunks[-1].append(j)
            pixels += _pixels(item)
        return chunks

    def _decode_all(self, items: list[tuple]) -> list[torch.Tensor | None]:
        """Decoded ``[3, H, W]`` tensors of ``("jpeg", data, h, w)`` items, None where the
        decoder failed (for measuring the decoder against Pillow)."""
        out: list[torch.Tensor | None] = []
        for chunk in self._chunks(items):
            out.extend(self._decode_call([items[j][1] for j in chunk]))
        return out

    def _decode_call(self, datas: list[torch.Tensor]) -> list[torch.Tensor | None]:
        """One batched call; a failing call is retried image by image (None: rejected)."""
        if self.stream is not None:
            # torchvision's decoder writes on a stream of its own, into memory allocated on
            # this one, without waiting for it: this stream's earlier kernels (the previous
            # call's resizes, reading blocks the allocator may hand out again) finish first.
            self.stream.synchronize()
        try:
            return list(self._decode(datas, self.device))
        except Exception as err:
            if isinstance(err, torch.cuda.OutOfMemoryError):
                torch.cuda.empty_cache()  # then one by one; Pillow for what still fails
            if len(datas) == 1:
                return [None]
            return [self._decode_call([d])[0] for d in datas]

    def hand_over(self, tensors: list[torch.Tensor]) -> None:
        """Makes `tensors` (made on the side stream) safe to use on the current stream."""
        if self.stream is None:
            return
        current = torch.cuda.current_stream(self.device)
        current.wait_stream(self.stream)
        for t in tensors:
            t.record_stream(current)
