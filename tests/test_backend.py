"""conv3x3's backend choice, made inside the op (csrc/conv_choice.cpp) with its Python side
in overfeat_kernels.backend: modes, the "auto" selection with an injected timer, what reaches
the kernels for every way of setting the mode and of calling the op (the simulator's launch
counters tell), capture and tracing never timing, the disk cache (round trip, corrupt and
foreign files, version change, concurrent writers); the real timing path on a GPU."""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import warnings

import pytest
import torch
import torch.nn.functional as F

import overfeat_kernels as ok
from overfeat_kernels import backend, simulator


@pytest.fixture
def unset_mode():
    """No process-wide mode: the environment or "auto" decides."""
    was = backend._set_global_mode(None)
    yield
    backend._set_global_mode(was)


@pytest.fixture
def fresh(monkeypatch, tmp_path, unset_mode):
    """No mode set, an empty cache directory, nothing remembered; "auto" also on CPU."""
    monkeypatch.delenv(backend.ENV_MODE, raising=False)
    monkeypatch.setenv(backend.ENV_CACHE, str(tmp_path))
    backend.clear_memory()
    with backend._testing(time_on_cpu=True):
        yield tmp_path
    backend.clear_memory()


class FakeTimer:
    """Runs every candidate once (so that each must work) and reports the given times:
    ``{name: ms}`` for every direction, or ``{direction: {name: ms}}``. On the CPU the
    candidates of every direction are ours and ATen's."""

    def __init__(self, times):
        self.times, self.calls = times, 0

    def __call__(self, fns):
        direction = backend.DIRECTIONS[self.calls % 3] if "forward" in self.times else None
        self.calls += 1
        assert tuple(fns) == ("ours", "cudnn")
        for fn in fns.values():
            fn()
        times = self.times[direction] if direction else self.times
        return {name: times[name] for name in fns}


def _args(layout="nchw", dtype=torch.float32, requires_grad=False):
    x = torch.randn(2, 5, 9, 11, dtype=dtype)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    w = torch.randn(7, 5, 3, 3, dtype=dtype)
    b = torch.randn(7, dtype=dtype)
    for t in (x, w, b):
        t.requires_grad_(requires_grad)
    return x, w, b


def _expected(x, w, b, padding=1, relu=True):
    out = F.conv2d(x, w, b, padding=padding)
    return F.relu(out) if relu else out


# ------------------------------------------------------------------------------- modes


def test_default_mode_is_auto(fresh):
    assert ok.get_conv_backend() == "auto"


def test_set_and_scoped_modes(fresh):
    ok.set_conv_backend("cudnn")
    assert ok.get_conv_backend() == "cudnn"
    with ok.conv_backend("ours"):
        assert ok.get_conv_backend() == "ours"
        with ok.conv_backend("auto"):
            assert ok.get_conv_backend() == "auto"
        assert ok.get_conv_backend() == "ours"
    assert ok.get_conv_backend() == "cudnn"


def test_environment_mode(fresh, monkeypatch):
    monkeypatch.setenv(backend.ENV_MODE, "cudnn")
    assert ok.get_conv_backend() == "cudnn"
    monkeypatch.setenv(backend.ENV_MODE, "fastest")
    with pytest.raises(ValueError, match=backend.ENV_MODE):
        ok.conv3x3(*_args())


@pytest.mark.parametrize("bad", ["fast", "CUDNN", None, 1])
def test_bad_modes_name_the_argument(fresh, bad):
    with pytest.raises(ValueError, match="set_conv_backend: mode must be one of"):
        ok.set_conv_backend(bad)
    with pytest.raises(ValueError, match="conv_backend: mode must be one of"), ok.conv_backend(bad):
        pass


def test_interleaved_task_scopes_leave_no_mode_behind(unset_mode):
    """asyncio tasks whose scopes interleave on one thread: when all have ended, the mode is
    the process-wide one again (the op's thread-local scope follows each task's exit)."""
    import asyncio

    async def task(mode, entered, leave):
        with ok.conv_backend(mode):
            entered.set()
            await leave.wait()

    async def main():
        a_in, b_in, a_out, b_out = (asyncio.Event() for _ in range(4))
        a = asyncio.create_task(task("cudnn", a_in, a_out))
        await a_in.wait()
        b = asyncio.create_task(task("ours", b_in, b_out))
        await b_in.wait()
        a_out.set()  # the first scope entered ends first
        await a
        b_out.set()
        await b

    backend.set_conv_backend("auto")
    asyncio.run(main())
    assert ok.get_conv_backend() == "auto"


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_cudnn_mode_computes_conv3x3(fresh, layout):
    x, w, b = _args(layout, requires_grad=True)
    w_cl = w.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
    with ok.conv_backend("cudnn"):
        out = ok.conv3x3(x, w_cl, b, 1, True)
    assert torch.equal(out, _expected(x, w_cl, b))
    # The output follows the input's memory format even when only the weight is channels_last.
    assert out.is_contiguous(
        memory_format=torch.channels_last if layout == "channels_last" else torch.contiguous_format
    )
    grads = torch.autograd.grad(out.sum(), (x, w_cl, b))
    ref = torch.autograd.grad(_expected(x, w_cl, b).sum(), (x, w_cl, b))
    for g, r in zip(grads, ref, strict=True):
        torch.testing.assert_close(g, r)


def test_cpu_auto_uses_our_kernels_without_timing(monkeypatch, tmp_path, unset_mode):
    monkeypatch.setenv(backend.ENV_CACHE, str(tmp_path))
    backend.clear_memory()
    timer = FakeTimer({"ours": 2.0, "cudnn": 1.0})
    monkeypatch.setattr(backend.tuner, "timer", timer)
    ok.conv3x3(*_args())
    assert timer.calls == 0 and not list(tmp_path.iterdir())
    assert backend._C.conv_choice_count() == 0


# ------------------------------------------------------------------------------- auto


def _remembered_algos():
    """The op's algos remembered per key, [forward, grad-input, grad-weight], in the order
    of the keys' fields (csrc/conv_choice.h): what every later call of the key runs."""
    return [list(codes) for _, codes in backend._C.conv_choice_table()]


@pytest.mark.parametrize("winner", ["ours", "cudnn"])
def test_auto_times_once_and_keeps_the_faster(fresh, monkeypatch, winner):
    loser = "cudnn" if winner == "ours" else "ours"
    timer = FakeTimer({winner: 1.0, loser: 3.0})
    monkeypatch.setattr(backend.tuner, "timer", timer)
    x, w, b = _args()
    first = ok.conv3x3(x, w, b, 1, True)
    second = ok.conv3x3(x, w, b, 1, True)
    assert timer.calls == 1  # inference: the forward alone is timed, once
    assert torch.equal(first, second)
    torch.testing.assert_close(first, _expected(x, w, b))
    assert _remembered_algos() == [[backend.ALGOS[winner], 0, 0]]
    (entry,) = ok.conv_choices().values()
    assert entry == {
        "choice": {"forward": winner},
        "times_ms": {"forward": {winner: 1.0, loser: 3.0}},
        "source": "measured",
    }


def test_auto_times_the_pooled_call_under_a_key_of_its_own(fresh, monkeypatch):
    class PoolingTimer(FakeTimer):
        """Also records the output shape of each candidate's call."""

        shapes: list

        def __call__(self, fns):
            self.shapes = [tuple(fn().shape) for fn in fns.values()]
            return super().__call__(fns)

    timer = PoolingTimer({"ours": 1.0, "cudnn": 2.0})
    monkeypatch.setattr(backend.tuner, "timer", timer)
    x, w, b = _args(dtype=torch.bfloat16)  # a dtype our tensor-core kernels take
    pooled = ok.conv3x3(x, w, b, 1, True, pool=2)
    assert timer.calls == 1 and timer.shapes == [(2, 7, 4, 5)] * 2  # both timed pooled
    torch.testing.assert_close(pooled, F.max_pool2d(ok.conv3x3(x, w, b, 1, True), 2))
    ok.conv3x3(x, w, b, 1, True)  # unpooled: a key of its own
    ok.conv3x3(x, w, b, 1, True, pool=4)  # composed after the conv: the unpooled key
    assert timer.calls == 2
    # Offset pooling: a key of its own too, both candidates timed offset-pooled.
    offsets = ok.conv3x3(x, w, b, 1, True, pool=2, pool_offsets=True)
    assert timer.calls == 3 and timer.shapes == [(8, 7, 4, 5)] * 2
    torch.testing.assert_close(offsets, ok.offset_max_pool2d(ok.conv3x3(x, w, b, 1, True), 2))
    keys = sorted(ok.conv_choices())
    assert keys[1:] == [keys[0] + "|pool2", keys[0] + "|pool2offsets"]
    fields = [f for f, _ in backend._C.conv_choice_table()]
    assert sorted(f[-2:] for f in fields) == [(0, 0), (2, 0), (2, 1)]


# A training key's times: ours wins the forward and grad-weight, cuDNN grad-input.
TRAINING_TIMES = {
    "forward": {"ours": 1.0, "cudnn": 2.0},
    "grad_input": {"ours": 2.0, "cudnn": 1.0},
    "grad_weight": {"ours": 1.0, "cudnn": 2.0},
}


def test_a_pooled_training_call_uses_the_training_key_without_the_pool(fresh, monkeypatch):
    timer = FakeTimer(TRAINING_TIMES)
    monkeypatch.setattr(backend.tuner, "timer", timer)
    x, w, b = _args(dtype=torch.bfloat16, requires_grad=True)
    out = ok.conv3x3(x, w, b, 1, True, pool=2)
    out.float().sum().backward()  # the backward finds the training key: nothing more is timed
    assert timer.calls == 3
    (key,) = ok.conv_choices()
    assert key.endswith("|train")
    ok.conv3x3(x.detach(), w.detach(), b.detach(), 1, True, pool=2)  # inference: its own key
    assert timer.calls == 4 and sorted(ok.conv_choices())[0].endswith("|infer|pool2")
    # float32: the key carries the pool only where TF32 lets our tensor-core kernels run.
    x32, w32, b32 = _args()
    for tf32, suffix in ((False, "|tf320|det0|infer"), (True, "|tf321|det0|infer|pool2")):
        monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", tf32)
        ok.conv3x3(x32, w32, b32, 1, True, pool=2)
        assert sum(k.endswith(suffix) for k in ok.conv_choices()) == 1, suffix


def test_training_chooses_each_direction_on_its_own(fresh, monkeypatch):
    times = TRAINING_TIMES
    timer = FakeTimer(times)
    monkeypatch.setattr(backend.tuner, "timer", timer)
    x, w, b = _args(requires_grad=True)
    out = ok.conv3x3(x, w, b, 1, True)
    grads = torch.autograd.grad(out.sum(), (x, w, b))
    assert timer.calls == 3 and _remembered_algos() == [[0, 4, 0]]
    (entry,) = ok.conv_choices().values()
    assert entry["choice"] == {"forward": "ours", "grad_input": "cudnn", "grad_weight": "ours"}
    assert entry["times_ms"] == times
    ref = torch.autograd.grad(_expected(x, w, b).sum(), (x, w, b))
    for g, r in zip(grads, ref, strict=True):
        torch.testing.assert_close(g, r)


@pytest.mark.sim
@pytest.mark.skipif(not simulator.available(), reason="CUDA simulator not built")
def test_the_chosen_algos_reach_the_kernels(fresh, monkeypatch):
    """In the simulator: forward on ours, grad-input on ATen's convolution, grad-weight on
    ours, as chosen; the autograd formula passes the choice to the backward op."""
    times = {
        "forward": {"ours": 1.0, "cudnn": 2.0},
        "grad_input": {"ours": 2.0, "cudnn": 1.0},
        "grad_weight": {"ours": 1.0, "cudnn": 2.0},
    }
    monkeypatch.setattr(backend.tuner, "timer", FakeTimer(times))
    x, w, b = _args(dtype=torch.bfloat16, requires_grad=True)
    with simulator.simulate_cuda():
        ok.conv3x3(x, w, b, 1, True)  # timed here (the candidates run in the simulator)
        simulator.reset_launch_counts()
        out = ok.conv3x3(x, w, b, 1, True)
        gx, gw = torch.autograd.grad(out.sum(), (x, w))
    launches = simulator.launch_counts()
    igemm = [k for k in launches if "conv3x3_igemm_kernel" in k]
    assert sum(launches[k] for k in igemm) == 1, launches  # the forward; grad-input is ATen's
    assert any("wgrad_igemm_kernel" in k for k in launches), launches
    assert not any("direct_conv3x3_kernel" in k for k in launches), launches
    # float64 reference, masked by our output's ReLU (values within rounding of 0 may fall
    # either side).
    x64, w64 = (t.detach().double().requires_grad_() for t in (x, w))
    pre = F.conv2d(x64, w64, b.detach().double(), padding=1)
    ref = torch.autograd.grad(pre, (x64, w64), (out.detach() > 0).double())
    torch.testing.assert_close(gx.double(), ref[0], rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(gw.double(), ref[1], rtol=2e-2, atol=5e-2)


def test_keys_separate_shapes_modes_and_training(fresh, monkeypatch):
    timer = FakeTimer({"ours": 1.0, "cudnn": 2.0})
    monkeypatch.setattr(backend.tuner, "timer", timer)
    ok.conv3x3(*_args())
    ok.conv3x3(*_args("channels_last"))
    ok.conv3x3(*_args(requires_grad=True))  # training: forward + backward are timed
    ok.conv3x3(*_args(), padding=0)
    with torch.no_grad():
        ok.conv3x3(*_args(requires_grad=True))  # same key as the first call
    keys = list(ok.conv_choices())
    assert timer.calls == 6 and len(keys) == 4  # the training key: three directions
    assert sum(k.endswith("|train") for k in keys) == 1
    assert any("|nhwc|" in k for k in keys) and any("|pad0|" in k for k in keys)


def test_failed_timing_warns_and_uses_ours(fresh, monkeypatch):
    def broken(fns):
        raise RuntimeError("no events here")

    monkeypatch.setattr(backend.tuner, "timer", broken)
    with pytest.warns(RuntimeWarning, match="timing the conv3x3 candidates failed"):
        out = ok.conv3x3(*_args())
    assert out.shape == (2, 7, 9, 11)
    (entry,) = ok.conv_choices().values()
    assert entry["choice"] == dict.fromkeys(backend.DIRECTIONS, "ours")
    assert entry["source"] == "fallback"
    assert not (fresh / backend.CACHE_FILE).exists()


def test_compile_fullgraph_with_each_mode(fresh, monkeypatch):
    monkeypatch.setattr(backend.tuner, "timer", FakeTimer({"ours": 1.0, "cudnn": 2.0}))
    x, w, b = _args()
    for mode in backend.MODES:
        torch._dynamo.reset()
        backend.set_conv_backend(mode)
        fn = torch.compile(lambda *a: ok.conv3x3(*a, 1, True), fullgraph=True, backend="eager")
        torch.testing.assert_close(fn(x, w, b), _expected(x, w, b))


# ------------------------------------------- what reaches the kernels, however it is set

IGEMM = "conv3x3_igemm_kernel"


def _setting(how, mode, monkeypatch):
    """A context in which `mode` is in force, set the way `how` says."""
    if how == "set_conv_backend":
        backend.set_conv_backend(mode)
        return contextlib.nullcontext()
    if how == "scope":
        return ok.conv_backend(mode)
    monkeypatch.setenv(backend.ENV_MODE, mode)
    return contextlib.nullcontext()


def _callers():
    """Ways a user reaches the op: the public function, torch.ops without algos, inside
    inference_mode, a layer, a compiled function, a compiled training step."""

    def public(x, w, b):
        return ok.conv3x3(x, w, b, 1, True)

    def raw(x, w, b):
        return torch.ops.overfeat_kernels.conv3x3(x, w, b, 1, True)

    def inference(x, w, b):
        with torch.inference_mode():
            return ok.conv3x3(x, w, b, 1, True)

    def layer(x, w, b):
        conv = ok.nn.Conv3x3(w.shape[1], w.shape[0], relu=True, dtype=w.dtype)
        with torch.no_grad():
            conv.weight.copy_(w)
            conv.bias.copy_(b)
        return conv(x)

    def compiled(x, w, b):
        torch._dynamo.reset()
        return torch.compile(public, fullgraph=True, backend="aot_eager")(x, w, b)

    return {"public": public, "raw": raw, "inference_mode": inference, "layer": layer,
            "compiled": compiled}  # fmt: skip


@pytest.mark.sim
@pytest.mark.skipif(not simulator.available(), reason="CUDA simulator not built")
@pytest.mark.parametrize("how", ["set_conv_backend", "scope", "environment"])
@pytest.mark.parametrize("caller", list(_callers()))
def test_the_mode_reaches_the_kernels(fresh, monkeypatch, how, caller):
    """In the simulator, for every way of setting the mode and of calling the op: "ours"
    launches our tensor-core kernel, "cudnn" runs PyTorch's convolution (no launch), "auto"
    runs what its timer found faster."""
    call = _callers()[caller]
    x, w, b = _args(dtype=torch.bfloat16)
    ref = _expected(x.double(), w.double(), b.double())
    expected_igemm = {"ours": True, "cudnn": False, "auto-ours": True, "auto-cudnn": False}
    for case, igemm in expected_igemm.items():
        mode, _, winner = case.partition("-")
        if winner:  # forget the other winner, in memory and on disk
            backend.clear_memory()
            (fresh / backend.CACHE_FILE).unlink(missing_ok=True)
            loser = "cudnn" if winner == "ours" else "ours"
            monkeypatch.setattr(backend.tuner, "timer", FakeTimer({winner: 1.0, loser: 2.0}))
        with simulator.simulate_cuda(), _setting(how, mode, monkeypatch):
            assert ok.get_conv_backend() == mode
            if winner:
                call(x, w, b)  # times the candidates (each runs once)
            simulator.reset_launch_counts()
            out = call(x, w, b)
            launches = simulator.launch_counts()
        assert any(IGEMM in k for k in launches) == igemm, (case, launches)
        torch.testing.assert_close(out.double(), ref, rtol=2e-2, atol=2e-2)


@pytest.mark.sim
@pytest.mark.skipif(not simulator.available(), reason="CUDA simulator not built")
def test_training_step_runs_the_mode_of_its_forward(fresh):
    """The gradients' implementations are fixed at the forward call: a backward run after
    the scope ended still runs the scope's mode."""
    x, w, b = _args(dtype=torch.bfloat16, requires_grad=True)
    with simulator.simulate_cuda():
        with ok.conv_backend("cudnn"):
            out = ok.conv3x3(x, w, b, 1, True)
        backend.set_conv_backend("ours")
        simulator.reset_launch_counts()
        out.float().sum().backward()
        launches = simulator.launch_counts()  # grad-input and grad-weight by ATen
        assert not any("conv3x3" in k or "wgrad" in k for k in launches), launches
        with ok.conv_backend("ours"):
            out = ok.conv3x3(x, w, b, 1, True)
        backend.set_conv_backend("cudnn")
        simulator.reset_launch_counts()
        out.float().sum().backward()
        launches = simulator.launch_counts()
    assert any(IGEMM in k for k in launches) and any("wgrad" in k for k in launches), launches


# ------------------------------------------------ nothing is timed while capturing or tracing


def test_capture_never_times_and_the_next_eager_call_does(fresh, monkeypatch):
    timer = FakeTimer({"ours": 2.0, "cudnn": 1.0})
    monkeypatch.setattr(backend.tuner, "timer", timer)
    x, w, b = _args()
    with backend._testing(time_on_cpu=True, pretend_capture=True):
        out = ok.conv3x3(x, w, b, 1, True)  # as inside torch.cuda.graph(...)
    assert timer.calls == 0 and backend._C.conv_tuner_calls() == 0
    assert backend._C.conv_choice_count() == 0 and ok.conv_choices() == {}
    torch.testing.assert_close(out, _expected(x, w, b))
    ok.conv3x3(x, w, b, 1, True)  # eager: timed now
    assert timer.calls == 1 and _remembered_algos() == [[4, 0, 0]]


def test_tracing_never_times(fresh, monkeypatch):
    """torch.export and make_fx trace with fake tensors: the kernels (and the choice) never
    run. The exported program runs the choice when it is called."""
    timer = FakeTimer({"ours": 2.0, "cudnn": 1.0})
    monkeypatch.setattr(backend.tuner, "timer", timer)
    x, w, b = _args()

    class Net(torch.nn.Module):
        def forward(self, x, w, b):
            return ok.conv3x3(x, w, b, 1, True)

    exported = torch.export.export(Net(), (x, w, b))
    from torch.fx.experimental.proxy_tensor import make_fx

    make_fx(Net(), tracing_mode="fake")(x, w, b)
    torch._dynamo.reset()
    torch.compile(Net(), fullgraph=True, backend="aot_eager")  # traced lazily: nothing yet
    assert timer.calls == 0 and backend._C.conv_tuner_calls() == 0
    torch.testing.assert_close(exported.module()(x, w, b), _expected(x, w, b))
    assert timer.calls == 1 and _remembered_algos() == [[4, 0, 0]]


# ------------------------------------------------------------------------------- cache


def test_choices_survive_the_process(fresh, monkeypatch):
    timer = FakeTimer({"ours": 5.0, "cudnn": 4.0})
    monkeypatch.setattr(backend.tuner, "timer", timer)
    ok.conv3x3(*_args())
    data = json.loads((fresh / backend.CACHE_FILE).read_text())
    assert data["format"] == backend.CACHE_FORMAT and len(data["entries"]) == 1
    backend.clear_memory()  # as a new process would start
    ok.conv3x3(*_args())
    assert timer.calls == 1 and _remembered_algos() == [[4, 0, 0]]
    (entry,) = ok.conv_choices().values()
    assert entry["source"] == "disk" and entry["choice"] == {"forward": "cudnn"}


def test_version_change_times_again(fresh, monkeypatch):
    timer = FakeTimer({"ours": 1.0, "cudnn": 2.0})
    monkeypatch.setattr(backend.tuner, "timer", timer)
    ok.conv3x3(*_args())
    backend.clear_memory()
    monkeypatch.setattr(backend.tuner, "_environment_keys", {})
    monkeypatch.setattr(backend.tuner, "_build_hash", "a-rebuilt-module")
    ok.conv3x3(*_args())
    assert timer.calls == 2
    assert len(backend.read_disk()) == 2  # both stacks' entries are kept


@pytest.mark.parametrize(
    "content",
    [
        "{not json",
        json.dumps([1, 2, 3]),
        json.dumps({"format": "someone-else/9", "entries": {}}),
        json.dumps({"format": "overfeat_kernels.conv_choices/99", "entries": {}}),
        json.dumps({"format": backend.CACHE_FORMAT, "entries": "nope"}),
    ],
    ids=["truncated", "a-list", "foreign-format", "newer-format", "bad-entries"],
)
def test_corrupt_or_foreign_file_is_ignored_with_a_warning(fresh, monkeypatch, content):
    (fresh / backend.CACHE_FILE).write_text(content)
    timer = FakeTimer({"ours": 1.0, "cudnn": 2.0})
    monkeypatch.setattr(backend.tuner, "timer", timer)
    with pytest.warns(RuntimeWarning, match="ignoring"):
        ok.conv3x3(*_args())
    assert timer.calls == 1
    # Rewritten as a valid file holding the new entry.
    assert len(backend.read_disk()) == 1


def test_an_older_cache_format_is_replaced_quietly(fresh, monkeypatch):
    old = {"format": "overfeat_kernels.conv_choices/1", "entries": {"k": {"choice": "ours"}}}
    (fresh / backend.CACHE_FILE).write_text(json.dumps(old))
    timer = FakeTimer({"ours": 1.0, "cudnn": 2.0})
    monkeypatch.setattr(backend.tuner, "timer", timer)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ok.conv3x3(*_args())
    assert timer.calls == 1
    data = json.loads((fresh / backend.CACHE_FILE).read_text())
    assert data["format"] == backend.CACHE_FORMAT and len(data["entries"]) == 1


def test_malformed_entries_are_dropped(fresh):
    good = {"choice": {"forward": "tc"}, "times_ms": {"forward": {"tc": 2.0, "cudnn": 3.0}}}
    fwd = {"forward": {"ours": 1.0}}
    entries = {
        "good": good,
        "bad-choice": {"choice": {"forward": "magic"}, "times_ms": {}},
        "old-style-choice": {"choice": "ours", "times_ms": {}},
        "no-forward": {"choice": {"grad_input": "ours"}, "times_ms": {}},
        "bad-direction": {"choice": {"forward": "ours", "sideways": "ours"}, "times_ms": fwd},
        "bad-times": {"choice": {"forward": "ours"}, "times_ms": {"forward": {"ours": "fast"}}},
        "nan-time": {
            "choice": {"forward": "ours"},
            "times_ms": {"forward": {"ours": float("nan")}},
        },
        "not-a-dict": 3,
    }
    path = fresh / backend.CACHE_FILE
    path.write_text(json.dumps({"format": backend.CACHE_FORMAT, "entries": entries}))
    with pytest.warns(RuntimeWarning, match="7 malformed entries"):
        assert backend.read_disk(path) == {"good": good}


def _writer(directory, index):
    for j in range(25):
        times = {"ours": float(index), "cudnn": float(j)}
        entry = {"choice": {"forward": "ours"}, "times_ms": {"forward": times}}
        backend.write_disk({f"writer{index}-key{j}": entry}, directory)


def test_concurrent_writers_lose_nothing(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(tmp_path, i)) for i in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        entries = backend.read_disk(tmp_path / backend.CACHE_FILE)
    assert len(entries) == 100
    assert not list(tmp_path.glob("*.tmp"))


def test_cache_dir_settings(monkeypatch, tmp_path):
    monkeypatch.delenv(backend.ENV_CACHE, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert backend.cache_dir() == tmp_path / "overfeat_kernels"
    monkeypatch.setenv(backend.ENV_CACHE, str(tmp_path / "elsewhere"))
    assert backend.cache_dir() == tmp_path / "elsewhere"


# ------------------------------------------------------------------------------- GPU


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")
@pytest.mark.parametrize("train", [False, True])
def test_auto_on_gpu_times_both_and_stays_exact(fresh, monkeypatch, train):
    x = torch.randn(4, 64, 28, 28, device="cuda", dtype=torch.bfloat16)
    x = x.contiguous(memory_format=torch.channels_last).requires_grad_(train)
    w = (torch.randn(128, 64, 3, 3, device="cuda", dtype=torch.bfloat16) / 24).requires_grad_(train)
    out = ok.conv3x3(x, w, None, 1, True)
    if train:
        out.sum().backward()
    (entry,) = ok.conv_choices().values()
    assert entry["source"] == "measured"
    directions = backend.DIRECTIONS if train else backend.DIRECTIONS[:1]
    assert tuple(entry["times_ms"]) == tuple(entry["choice"]) == directions
    for d in directions:
        names = backend.candidates(d, "cuda", torch.bfloat16, False)
        assert tuple(entry["times_ms"][d]) == names and entry["choice"][d] in names
        assert all(t > 0 for t in entry["times_ms"][d].values())
    ref = F.relu(F.conv2d(x.detach().double(), w.detach().double(), padding=1))
    torch.testing.assert_close(out.detach().double(), ref, rtol=2e-2, atol=2e-2)
    # Under CUDA-graph capture nothing is timed: a new shape takes our kernels.
    g = torch.cuda.CUDAGraph()
    x2 = torch.randn(1, 64, 14, 14, device="cuda", dtype=torch.bfloat16)
    with torch.no_grad():
        ok.conv3x3(x2, w.detach(), None, 1, True)  # warm-up outside capture (times the shape)
        monkeypatch.setenv(backend.ENV_CACHE, str(fresh / "other"))
        backend.clear_memory()
        with torch.cuda.graph(g):
            ok.conv3x3(x2, w.detach(), None, 1, True)
    assert ok.conv_choices() == {}
