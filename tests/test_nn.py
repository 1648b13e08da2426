"""The nn layers: nn.Conv2d state-dict compatibility, from_conv2d, the pooling layers."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import overfeat_kernels as ok
from overfeat_kernels.nn import Conv3x3, Deinterleave, Interleave, OffsetMaxPool2d


def test_conv3x3_state_dict_matches_conv2d(device):
    ref = nn.Conv2d(6, 10, 3, padding=1).to(device)
    ours = Conv3x3(6, 10, padding=1, device=device)
    assert set(ours.state_dict()) == {"weight", "bias"}
    ours.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(2, 6, 9, 11, device=device)
    torch.testing.assert_close(ours(x), ref(x))
    ref.load_state_dict(ours.state_dict(), strict=True)


def test_conv3x3_without_bias_and_with_relu(device):
    ours = Conv3x3(3, 4, bias=False, padding=0, relu=True, device=device)
    assert ours.bias is None and set(ours.state_dict()) == {"weight"}
    x = torch.randn(1, 3, 7, 7, device=device)
    torch.testing.assert_close(ours(x), torch.relu(nn.functional.conv2d(x, ours.weight)))


def test_init_matches_conv2d_distribution():
    torch.manual_seed(0)
    ref = nn.Conv2d(64, 64, 3)
    torch.manual_seed(0)
    ours = Conv3x3(64, 64)
    torch.testing.assert_close(ours.weight, ref.weight)
    torch.testing.assert_close(ours.bias, ref.bias)


def test_from_conv2d_shares_parameters():
    conv = nn.Conv2d(3, 5, 3, padding=1)
    layer = Conv3x3.from_conv2d(conv, relu=True)
    assert layer.weight is conv.weight and layer.bias is conv.bias
    x = torch.randn(1, 3, 6, 6)
    torch.testing.assert_close(layer(x), torch.relu(conv(x)))
    with pytest.raises(ValueError, match="stride 1"):
        Conv3x3.from_conv2d(nn.Conv2d(3, 5, 3, stride=2))


def test_layers_train_end_to_end(device):
    model = nn.Sequential(
        Conv3x3(3, 8, relu=True), OffsetMaxPool2d(2), Conv3x3(8, 4), Interleave(2)
    ).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    x = torch.randn(2, 3, 12, 12, device=device)
    target = torch.randn(2, 4, 10, 10, device=device)
    losses = []
    for _ in range(5):
        loss = (model(x) - target).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_deinterleave_layer_inverts_interleave(device):
    x = torch.randn(8, 3, 4, 5, device=device)
    assert torch.equal(Deinterleave(2)(Interleave(2)(x)), x)


@pytest.mark.parametrize("bad", [0, -2, 1.5, True])
def test_bad_kernel_size(bad):
    for cls in (OffsetMaxPool2d, Interleave, Deinterleave):
        with pytest.raises(ValueError, match="kernel_size"):
            cls(bad)


def test_conv3x3_bad_arguments():
    with pytest.raises(ValueError, match="padding"):
        Conv3x3(3, 4, padding=2)
    with pytest.raises(ValueError, match="in_channels"):
        Conv3x3(0, 4)


def test_repr():
    assert "relu=True" in repr(Conv3x3(3, 4, relu=True))
    assert "kernel_size=3" in repr(ok.nn.OffsetMaxPool2d(3))


@pytest.mark.sim
@pytest.mark.skipif(not ok.simulator.available(), reason="CUDA simulator not built")
def test_prepack_reads_the_filters_in_place():
    """After prepack() the tensor-core forward copies no filters (the simulator counts the
    operand copies of a call), with the same bits, the same Parameter object and the same
    state dict; training still updates it."""
    torch.manual_seed(0)
    layer = Conv3x3(32, 48, relu=True, dtype=torch.bfloat16)
    param = layer.weight
    x = torch.randn(2, 32, 9, 10, dtype=torch.bfloat16)
    x = x.contiguous(memory_format=torch.channels_last)

    def forward():
        ok.simulator.reset_launch_counts()
        with ok.simulator.simulate_cuda(), ok.conv_backend("ours"):
            out = layer(x)
        return out, ok.simulator.host_steps()

    before, steps = forward()
    assert steps == {"conv3x3 copy: filters": 1}
    state = {k: v.clone() for k, v in layer.state_dict().items()}
    assert ok.nn.prepack(nn.Sequential(layer)) is not None
    assert layer.weight is param and param.is_contiguous(memory_format=torch.channels_last)
    after, steps = forward()
    assert steps == {} and torch.equal(after, before)
    for k, v in layer.state_dict().items():
        assert torch.equal(v, state[k])
    ref = nn.Conv2d(32, 48, 3, padding=1, dtype=torch.bfloat16)
    ref.load_state_dict(layer.state_dict(), strict=True)  # loads into stock layers as before
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    layer(x.float().bfloat16()).float().sum().backward()
    opt.step()
    assert layer.weight is param and not torch.equal(param, state["weight"])


def test_prepack_needs_a_module():
    with pytest.raises(TypeError, match=r"prepack: module must be a torch\.nn\.Module"):
        ok.nn.prepack("vgg16")
