"""Whole models under CUDA graphs (GPU only): VGG-16 and dense OverFeat captured with
torch.cuda.CUDAGraph after a warm-up that fills the conv backend's choices, and compiled
with torch.compile(mode="reduce-overhead"), give the eager results; capture never times.
(That capture and tracing never time is tested on the CPU in test_backend.py.)"""

from __future__ import annotations

import pytest
import torch

import overfeat_kernels as ok
from overfeat_kernels import backend, dense, models

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU"),
]


@pytest.fixture(params=["auto", "ours"])
def mode(request, tmp_path, monkeypatch):
    """A conv backend mode with a fresh choice cache."""
    monkeypatch.setenv(backend.ENV_CACHE, str(tmp_path))
    backend.clear_memory()
    was = backend._set_global_mode(request.param)
    yield request.param
    backend._set_global_mode(was)
    backend.clear_memory()


def _capture(fn, *static_inputs):
    """fn captured in a CUDA graph, after a warm-up on a side stream (the documented
    pattern): returns the graph and its static output."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            fn(*static_inputs)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn(*static_inputs)
    return graph, out


def _bf16_channels_last(model):
    return model.cuda().to(torch.bfloat16).eval().to(memory_format=torch.channels_last)


def _images(n, h, w):
    x = torch.randn(n, 3, h, w, device="cuda", dtype=torch.bfloat16)
    return x.contiguous(memory_format=torch.channels_last)


@torch.no_grad()
def test_vgg16_in_a_cuda_graph(mode):
    model = _bf16_channels_last(models.vgg16(num_classes=10))
    static = _images(2, 224, 224)
    model(static)  # the eager warm-up: "auto" times each layer's key here
    timed = backend._C.conv_tuner_calls()
    assert (timed > 0) == (mode == "auto")
    graph, out = _capture(model, static)
    assert backend._C.conv_tuner_calls() == timed  # nothing timed while capturing
    fresh = _images(2, 224, 224)
    static.copy_(fresh)
    graph.replay()
    torch.testing.assert_close(out, model(fresh), rtol=0, atol=0)  # same kernels, same bits


@torch.no_grad()
def test_dense_overfeat_in_a_cuda_graph(mode):
    model = _bf16_channels_last(models.overfeat("fast", num_classes=10))
    static = _images(1, 281, 317)
    eager = dense.score_map(model, static)
    graph, out = _capture(lambda x: dense.score_map(model, x), static)
    graph.replay()
    torch.testing.assert_close(out, eager, rtol=0, atol=0)


@torch.no_grad()
def test_reduce_overhead_compile_gives_the_eager_result(mode):
    model = _bf16_channels_last(models.vgg11(num_classes=10))
    x = _images(2, 224, 224)
    eager = model(x)
    torch._dynamo.reset()
    compiled = torch.compile(model, mode="reduce-overhead", fullgraph=True)
    for _ in range(3):  # warm-up runs, then the captured graph replays
        out = compiled(x).clone()
    torch.testing.assert_close(out.float(), eager.float(), rtol=2e-2, atol=2e-2)


def test_a_new_key_during_capture_runs_our_kernels_and_is_timed_later(mode):
    if mode != "auto":
        pytest.skip("only auto times")
    w = torch.randn(64, 32, 3, 3, device="cuda", dtype=torch.bfloat16)
    x = torch.randn(1, 32, 14, 14, device="cuda", dtype=torch.bfloat16)
    graph = torch.cuda.CUDAGraph()
    with torch.no_grad(), torch.cuda.graph(graph):
        out = ok.conv3x3(x, w, None, 1, True)
    graph.replay()
    assert backend._C.conv_tuner_calls() == 0 and backend._C.conv_choice_count() == 0
    ref = torch.relu(torch.nn.functional.conv2d(x.double(), w.double(), padding=1))
    torch.testing.assert_close(out.double(), ref, rtol=2e-2, atol=2e-2)
    with torch.no_grad():
        ok.conv3x3(x, w, None, 1, True)  # eager: timed now
    assert backend._C.conv_tuner_calls() == 1 and backend._C.conv_choice_count() == 1
