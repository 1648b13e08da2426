"""Arrays of other libraries through DLPack: NumPy on the CPU here (CuPy in test_cuda)."""

from __future__ import annotations

import numpy as np
import torch

import overfeat_kernels as ok
from overfeat_kernels import reference


def test_numpy_arrays_in_numpy_arrays_out():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 9, 10), dtype=np.float32)
    w = rng.standard_normal((4, 3, 3, 3), dtype=np.float32)
    out = ok.conv3x3(x, w, None, 1, True)
    assert isinstance(out, np.ndarray) and out.shape == (2, 4, 9, 10)
    ref = reference.conv3x3(torch.from_numpy(x), torch.from_numpy(w), None, 1, True)
    np.testing.assert_allclose(out, ref.numpy(), rtol=1e-5, atol=1e-5)

    pooled = ok.offset_max_pool2d(x, 2)
    assert isinstance(pooled, np.ndarray)
    np.testing.assert_array_equal(pooled, reference.offset_max_pool2d(torch.from_numpy(x), 2))
    back = ok.deinterleave(ok.interleave(pooled, 2), 2)
    assert isinstance(back, np.ndarray)
    np.testing.assert_array_equal(back, pooled)


def test_torch_input_with_numpy_weight_returns_torch():
    x = torch.randn(1, 2, 5, 5)
    w = np.random.default_rng(1).standard_normal((3, 2, 3, 3), dtype=np.float32)
    out = ok.conv3x3(x, w)
    assert isinstance(out, torch.Tensor)
    torch.testing.assert_close(out, reference.conv3x3(x, torch.from_numpy(w)))
