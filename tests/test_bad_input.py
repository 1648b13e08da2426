"""Every bad input of SPEC "Bad input" raises a clear Python exception naming the
argument, through the public wrappers and through the raw torch.ops (the C++ checks)."""

from __future__ import annotations

import pytest
import torch

import overfeat_kernels as ok
from overfeat_kernels import _validate as check

OPS = torch.ops.overfeat_kernels


def x4(*shape, dtype=torch.float32, device="cpu"):
    return torch.randn(*shape, dtype=dtype, device=device)


CONV_CASES = [
    # (description, args, exception, words the message must contain)
    ("3-D input", (x4(3, 8, 8), x4(4, 3, 3, 3)), ValueError, ["input", "4-D", "(3, 8, 8)"]),
    ("channel mismatch", (x4(1, 3, 8, 8), x4(4, 5, 3, 3)), ValueError, ["weight", "5", "3"]),
    (
        "5x5 weight",
        (x4(1, 3, 8, 8), x4(4, 3, 5, 5)),
        ValueError,
        ["weight", "3, 3", "(4, 3, 5, 5)"],
    ),
    (
        "dtype mismatch",
        (x4(1, 3, 8, 8), x4(4, 3, 3, 3, dtype=torch.float64)),
        TypeError,
        ["weight", "float64", "float32"],
    ),
    (
        "integer input",
        (torch.ones(1, 3, 8, 8, dtype=torch.int32), torch.ones(4, 3, 3, 3, dtype=torch.int32)),
        TypeError,
        ["input", "int32"],
    ),
    ("padding 2", (x4(1, 3, 8, 8), x4(4, 3, 3, 3), None, 2), ValueError, ["padding", "2"]),
    ("too small", (x4(1, 3, 2, 8), x4(4, 3, 3, 3), None, 0), ValueError, ["2x8", "too small"]),
    ("bias shape", (x4(1, 3, 8, 8), x4(4, 3, 3, 3), x4(5)), ValueError, ["bias", "[4]", "(5,)"]),
    (
        "bias dtype",
        (x4(1, 3, 8, 8), x4(4, 3, 3, 3), x4(4, dtype=torch.float16)),
        TypeError,
        ["bias", "float16"],
    ),
    ("zero channels", (x4(1, 0, 8, 8), x4(4, 0, 3, 3)), ValueError, ["channel"]),
]


@pytest.mark.parametrize("case", CONV_CASES, ids=[c[0] for c in CONV_CASES])
def test_conv3x3_bad_input(case):
    _, args, exc, words = case
    with pytest.raises(exc) as info:
        ok.conv3x3(*args)
    msg = str(info.value)
    assert msg.startswith("conv3x3:")
    for word in words:
        assert word in msg, (word, msg)


@pytest.mark.parametrize("case", CONV_CASES, ids=[c[0] for c in CONV_CASES])
def test_conv3x3_bad_input_raw_op(case):
    # The C++ checks stand behind direct torch.ops calls; same exception types.
    _, args, exc, _ = case
    full = [*args, *[None, 1, False][len(args) - 2 :]]  # fill in bias, padding, relu
    with pytest.raises(exc, match="conv3x3"):
        OPS.conv3x3(*full)


def test_conv3x3_bad_flags():
    with pytest.raises(TypeError, match="padding must be an int"):
        ok.conv3x3(x4(1, 3, 8, 8), x4(4, 3, 3, 3), None, 1.0)
    with pytest.raises(TypeError, match="relu must be a bool"):
        ok.conv3x3(x4(1, 3, 8, 8), x4(4, 3, 3, 3), None, 1, "yes")
    with pytest.raises(TypeError, match=r"input must be a torch\.Tensor"):
        ok.conv3x3([[1.0]], x4(4, 3, 3, 3))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")
def test_device_mismatch():
    with pytest.raises(ValueError, match="weight is on cuda"):
        ok.conv3x3(x4(1, 3, 8, 8), x4(4, 3, 3, 3, device="cuda"))


def test_device_mismatch_meta():
    # A device mismatch without a GPU: meta tensors carry a device too.
    with pytest.raises(ValueError, match="weight is on meta"):
        ok.conv3x3(x4(1, 3, 8, 8), torch.empty(4, 3, 3, 3, device="meta"))


POOL_CASES = [
    ("2-D input", (x4(8, 8), 2), ValueError, ["input", "4-D"]),
    ("kernel 0", (x4(1, 3, 8, 8), 0), ValueError, ["kernel_size", ">= 1", "0"]),
    ("kernel float", (x4(1, 3, 8, 8), 2.0), TypeError, ["kernel_size", "int"]),
    ("too small", (x4(1, 3, 4, 8), 3), ValueError, ["4x8", "kernel_size 3", "5"]),
    (
        "integer dtype",
        (torch.ones(1, 3, 8, 8, dtype=torch.int64), 2),
        TypeError,
        ["input", "int64"],
    ),
]


@pytest.mark.parametrize("case", POOL_CASES, ids=[c[0] for c in POOL_CASES])
def test_offset_pool_bad_input(case):
    _, args, exc, words = case
    with pytest.raises(exc) as info:
        ok.offset_max_pool2d(*args)
    for word in words:
        assert word in str(info.value), (word, str(info.value))


def test_offset_pool_raw_op_checks():
    with pytest.raises(ValueError, match="too small"):
        OPS.offset_max_pool2d(x4(1, 3, 4, 8), 3)
    with pytest.raises(ValueError, match="kernel_size"):
        OPS.offset_max_pool2d(x4(1, 3, 8, 8), 0)
    with pytest.raises(ValueError, match="grad_output must have shape"):
        OPS.offset_max_pool2d_backward(x4(4, 3, 2, 3), x4(1, 3, 8, 8), 2)


INTERLEAVE_CASES = [
    ("interleave batch", ok.interleave, (x4(5, 3, 4, 4), 2), ValueError, ["multiple of", "4"]),
    ("interleave 3-D", ok.interleave, (x4(4, 4, 4), 2), ValueError, ["4-D"]),
    ("deinterleave size", ok.deinterleave, (x4(1, 3, 5, 4), 2), ValueError, ["multiples", "2"]),
    ("deinterleave k", ok.deinterleave, (x4(1, 3, 4, 4), -1), ValueError, ["kernel_size"]),
    (
        "complex128",
        ok.interleave,
        (torch.zeros(4, 1, 2, 2, dtype=torch.complex128), 2),
        TypeError,
        ["complex128"],
    ),
]


@pytest.mark.parametrize("case", INTERLEAVE_CASES, ids=[c[0] for c in INTERLEAVE_CASES])
def test_interleave_bad_input(case):
    _, fn, args, exc, words = case
    with pytest.raises(exc) as info:
        fn(*args)
    for word in words:
        assert word in str(info.value), (word, str(info.value))


# Sizes derived from a huge kernel_size (k*k, N*k*k, H*k) that leave int64: only tensors
# without elements get past the other checks with such a k. Each case once through the
# public wrapper and once through the raw op (the C++ check).
HUGE_K_CASES = [
    ("interleave empty batch", "interleave", (0, 2, 7, 7), 2**40),
    ("interleave k*k wraps to 0", "interleave", (4, 0, 7, 7), 2**32),
    ("interleave k*k just past int64", "interleave", (0, 2, 7, 7), 3037000500),
    ("deinterleave N*k*k", "deinterleave", (9, 2, 0, 0), 2**31),
    ("deinterleave N*k*k wraps to 0", "deinterleave", (9, 2, 0, 0), 2**32),
    ("offset pool N*k*k", "offset_max_pool2d", (3, 0, 2**32, 2**32), 2**31),
]


@pytest.mark.parametrize("case", HUGE_K_CASES, ids=[c[0] for c in HUGE_K_CASES])
@pytest.mark.parametrize("path", ["wrapper", "raw op"])
def test_huge_kernel_size_is_an_error_not_a_crash(case, path):
    _, name, shape, k = case
    n, c, h, w = shape
    x = torch.empty(n, c, min(h, 1), min(w, 1)).expand(shape)  # stride 0: no huge strides
    fn = getattr(ok, name) if path == "wrapper" else getattr(OPS, name)
    with pytest.raises(ValueError, match=rf"kernel_size {k} is too large.*64 bits"):
        fn(x, k)


def test_kernel_size_beyond_int64():
    with pytest.raises(ValueError, match=r"kernel_size must be < 2\*\*63"):
        ok.interleave(torch.empty(0, 2, 7, 7), 2**63)


def test_huge_kernel_size_with_fitting_sizes_still_works():
    # Empty results whose sizes fit: a valid (if odd) call, not an error.
    out = ok.interleave(torch.empty(0, 2, 7, 7), 2**20)
    assert out.shape == (0, 2, 7 * 2**20, 7 * 2**20)
    assert ok.deinterleave(torch.empty(9, 2, 0, 0), 2**20).shape == (9 * 2**40, 2, 0, 0)


def test_conv3x3_backward_raw_op_checks():
    x, w = x4(1, 3, 8, 8), x4(4, 3, 3, 3)
    with pytest.raises(ValueError, match="grad_output must have shape"):
        OPS.conv3x3_backward(x4(1, 4, 7, 7), x, w, None, 1, [True, True, False])
    with pytest.raises(ValueError, match="relu_output must have shape"):
        OPS.conv3x3_backward(x4(1, 4, 8, 8), x, w, x4(1, 4, 7, 8), 1, [True, True, False])
    with pytest.raises(ValueError, match=r"algos\[1\] \(grad-weight\) must be 0, 1, 2 or 4"):
        OPS.conv3x3_backward(x4(1, 4, 8, 8), x, w, None, 1, [True, True, False], [0, 3])


@pytest.mark.parametrize(
    ("algos", "message"),
    [
        ([7, 0, 0], r"algos\[0\] \(forward\) must be 0, 1, 2, 3, 4 or 5"),
        ([0, 0], "algos must have 3 entries"),
        ([1, 0, 0], r"algos\[0\] \(forward\) = 1 \(direct\) runs on CUDA tensors only"),
    ],
)
def test_conv3x3_raw_op_algos_checks(algos, message):
    with pytest.raises(ValueError, match=message):
        OPS.conv3x3(x4(1, 3, 8, 8), x4(4, 3, 3, 3), None, 1, False, algos)


def test_large_element_counts_are_planned_not_crashing():
    # More than 2^31 elements, on the meta device: shapes propagate with 64-bit sizes.
    x = torch.empty(1, 2, 2**16, 2**15 + 1, device="meta")
    out = ok.offset_max_pool2d(x, 2)
    assert out.shape == (4, 2, 2**15 - 1, 2**14)
    assert ok.interleave(out, 2).numel() > 2**31


# One check per call: on plain tensors the C++ checks run (csrc/checks.h and the argument
# conversion of overfeat_kernels._C); while tracing and on the wrappers' general path, the
# Python checks (overfeat_kernels/ops/checks.py). The same bad input must read the same in
# both: each case through the C++ path, then through the Python checks directly, then (for
# tensors) through the fake kernels, which meta tensors reach.
def _message(fn, *args):
    try:
        fn(*args)
    except (TypeError, ValueError) as err:
        return type(err), str(err)
    raise AssertionError(f"no error for {args}")


def _to_meta(args):
    return tuple(a.to("meta") if isinstance(a, torch.Tensor) else a for a in args)


def _conv_args(args):
    return (*args, *[None, 1, False][len(args) - 2 :])  # fill in bias, padding, relu


@pytest.mark.parametrize("case", CONV_CASES, ids=[c[0] for c in CONV_CASES])
def test_conv3x3_cpp_and_python_checks_say_the_same(case):
    args = _conv_args(case[1])
    cpp = _message(ok.conv3x3, *args)
    assert cpp == _message(check.conv3x3, *args)
    assert cpp == _message(ok.conv3x3, *_to_meta(args))


CONV_FLAG_CASES = [
    ("padding float", (x4(1, 3, 8, 8), x4(4, 3, 3, 3), None, 1.0, False)),
    ("padding bool", (x4(1, 3, 8, 8), x4(4, 3, 3, 3), None, True, False)),
    ("padding huge", (x4(1, 3, 8, 8), x4(4, 3, 3, 3), None, 10**30, False)),
    ("relu str", (x4(1, 3, 8, 8), x4(4, 3, 3, 3), None, 1, "yes")),
    ("input list", ([[1.0]], x4(4, 3, 3, 3), None, 1, False)),
    ("bias str", (x4(1, 3, 8, 8), x4(4, 3, 3, 3), "b", 1, False)),
]


@pytest.mark.parametrize("case", CONV_FLAG_CASES, ids=[c[0] for c in CONV_FLAG_CASES])
def test_conv3x3_argument_conversion_says_what_python_says(case):
    _, args = case
    assert _message(ok.conv3x3, *args) == _message(check.conv3x3, *args)


KERNEL_SIZE_CASES = [
    *[(name, "offset_max_pool2d", args) for name, args, _, _ in POOL_CASES],
    *[(name, fn.__name__, args) for name, fn, args, _, _ in INTERLEAVE_CASES],
    *[
        (name, op, (torch.empty(n, c, min(h, 1), min(w, 1)).expand(n, c, h, w), k))
        for name, op, (n, c, h, w), k in HUGE_K_CASES
    ],
    ("kernel bool", "interleave", (x4(4, 3, 4, 4), True)),
    ("kernel beyond int64", "interleave", (torch.empty(0, 2, 7, 7), 2**63)),
    ("kernel below int64", "deinterleave", (x4(1, 3, 4, 4), -(2**70))),
]


@pytest.mark.parametrize("case", KERNEL_SIZE_CASES, ids=[c[0] for c in KERNEL_SIZE_CASES])
def test_kernel_size_ops_cpp_and_python_checks_say_the_same(case):
    _, name, args = case
    cpp = _message(getattr(ok, name), *args)
    assert cpp == _message(getattr(check, name), *args)
    assert cpp == _message(getattr(ok, name), *_to_meta(args))
