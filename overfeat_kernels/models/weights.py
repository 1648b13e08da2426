"""Loading trained weights, and each model's input preprocessing.

Formats:
- torchvision VGG state dicts (plain and BN): our VGG has torchvision's parameter names.
- timm VGG state dicts: `pre_logits.fc1` / `pre_logits.fc2` (convolutions there) and
  `head.fc` are converted to `classifier.0` / `.3` / `.6`.
- The original OverFeat release, `net_weight_0` (fast) and `net_weight_1` (accurate): one
  raw file of little-endian float32 numbers, the layers in network order, for each layer its
  weight then its bias, each tensor in row-major order of its PyTorch shape: convolutions
  ``[out, in, kh, kw]``, the first fully-connected layer ``[out, in * s * s]`` (the input
  flattened channel-major, as torch.flatten does), the others ``[out, in]``. The file must
  hold exactly the model's parameter count (145,920,872 numbers for fast, 144,656,488 for
  accurate); any other size is rejected with both sizes named.

Files are read with ``torch.load(weights_only=True)`` or safetensors: never unpickled code.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

__all__ = [
    "load_overfeat_release",
    "load_state_dict_file",
    "load_vgg",
    "preprocess",
    "save_overfeat_release",
    "timm_vgg_to_torchvision",
]

PathLike = str | os.PathLike


def _unreadable(path: Path, kind: str, error: BaseException) -> ValueError:
    first = (str(error).splitlines() or [type(error).__name__])[0]
    return ValueError(f"{path}: cannot be read as {kind} of weights: {first}")


def _torch_load(path: Path) -> object:
    """torch.load(weights_only=True) on the CPU; an unreadable file is a ValueError naming it."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, EOFError, RuntimeError, pickle.UnpicklingError) as e:
        raise _unreadable(path, "a torch.save file", e) from e


def load_state_dict_file(path: PathLike) -> dict[str, Tensor]:
    """A state dict from a .safetensors file or a torch.save file (weights_only=True)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (OSError, SafetensorError) as e:
            raise _unreadable(path, "a .safetensors file", e) from e
    state = _torch_load(path)
    if isinstance(state, Mapping) and "state_dict" in state and isinstance(
            state["state_dict"], Mapping):  # fmt: skip
        state = state["state_dict"]  # a training checkpoint
    if not isinstance(state, Mapping):
        raise ValueError(f"{path}: expected a state dict, got {type(state).__name__}")
    return dict(state)


def timm_vgg_to_torchvision(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """timm's VGG layout (`pre_logits.fc1`, `pre_logits.fc2`, `head.fc`) to torchvision's."""
    renames = {"pre_logits.fc1.": "classifier.0.", "pre_logits.fc2.": "classifier.3.",
               "head.fc.": "classifier.6."}  # fmt: skip
    out = {}
    for key, value in state.items():
        for old, new in renames.items():
            if key.startswith(old):
                key = new + key[len(old) :]
                if key.endswith("weight"):  # timm keeps fc1 / fc2 as convolutions
                    value = value.reshape(value.shape[0], -1)
                break
        out[key] = value
    return out


def _load_strict(model: nn.Module, state: Mapping[str, Tensor], source: str) -> None:
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise KeyError(
            f"{source} does not match {type(model).__name__}: missing keys {missing or 'none'}; "
            f"unexpected keys {unexpected or 'none'}"
        )
    wrong = [f"{k}: expected {tuple(own[k].shape)}, got {tuple(state[k].shape)}"
             for k in own if own[k].shape != state[k].shape]  # fmt: skip
    if wrong:
        raise ValueError(f"{source}: shape mismatch for " + "; ".join(wrong))
    model.load_state_dict(state, strict=True)


def load_vgg(model: nn.Module, source: PathLike | Mapping[str, Tensor]) -> nn.Module:
    """Loads torchvision- or timm-format VGG weights (a state dict or a file) into `model`.

    Raises KeyError naming the missing and unexpected keys, ValueError on shape mismatch.
    """
    state = source if isinstance(source, Mapping) else load_state_dict_file(source)
    if any(k.startswith(("pre_logits.", "head.")) for k in state):
        state = timm_vgg_to_torchvision(state)
    _load_strict(model, state, str(source) if not isinstance(source, Mapping) else "state dict")
    return model


def _parameters_in_file_order(model: nn.Module) -> list[nn.Parameter]:
    # Network order: every layer's weight then its bias (named_parameters order).
    return [p for _, p in model.named_parameters()]


def load_overfeat_release(model: nn.Module, path: PathLike) -> nn.Module:
    """Loads an OverFeat release weight file (``net_weight_0`` / ``net_weight_1``, layout in
    the module docstring) into an OverFeat model of the same variant."""
    params = _parameters_in_file_order(model)
    expected = sum(p.numel() for p in params)
    size = Path(path).stat().st_size
    if size != 4 * expected:
        raise ValueError(
            f"{path}: {size} bytes, but OverFeat {getattr(model, 'variant', '?')} needs "
            f"{4 * expected} ({expected} float32 numbers); is it the other variant's file?"
        )
    data = np.fromfile(path, dtype="<f4")
    offset = 0
    with torch.no_grad():
        for p in params:
            chunk = torch.from_numpy(data[offset : offset + p.numel()].copy())
            p.copy_(chunk.view(p.shape))
            offset += p.numel()
    return model


def save_overfeat_release(model: nn.Module, path: PathLike) -> None:
    """Writes `model`'s parameters in the OverFeat release layout (the inverse of loading)."""
    with open(path, "wb") as f:
        for p in _parameters_in_file_order(model):
            f.write(
                p.detach().to("cpu", torch.float32).contiguous().numpy().astype("<f4").tobytes()
            )


def preprocess(model: nn.Module, images: Tensor) -> Tensor:
    """Pixels (uint8, or float in 0..255) ``[N, 3, H, W]`` to the model's input.

    VGG: x / 255 normalised by torchvision's ImageNet mean and std. OverFeat: 0-255, then
    (x - 118.380948) / 61.896913.
    """
    cfg = getattr(model, "preprocessing", None)
    if cfg is None:
        raise TypeError(f"preprocess: {type(model).__name__} has no preprocessing settings")
    if not isinstance(images, Tensor) or images.dim() != 4 or images.shape[1] != 3:
        raise ValueError("preprocess: images must be a [N, 3, H, W] tensor of RGB pixels")
    x = images.float() * cfg["scale"]
    mean = torch.tensor(cfg["mean"], device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(cfg["std"], device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std
