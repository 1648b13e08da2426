"""Models, dense evaluation and training through the CUDA kernels (run by the simulator)
agree with the same code on the CPU kernels: everything above the ops runs unchanged on
either. (The full model suite also passes under OVERFEAT_KERNELS_SIMULATE_CUDA=1; these
are the cases small enough for every CI run.)"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from test_dense import build

from overfeat_kernels import demo, dense, models, simulator

pytestmark = [
    pytest.mark.sim,
    pytest.mark.skipif(not simulator.available(), reason="CUDA simulator not built"),
]


def kernels_that_ran() -> str:
    return " ".join(simulator.launch_counts())


@torch.no_grad()
def test_overfeat_fast_fine_stride_map_through_cuda_kernels():
    model = build("fast")
    x = torch.randn(1, 3, 247, 263)
    on_cpu = dense.score_map(model, x, method="offsets")
    simulator.reset_launch_counts()
    with simulator.simulate_cuda():
        simulated = dense.score_map(model, x, method="offsets")
    ran = kernels_that_ran()
    for kernel in ("direct_conv3x3_kernel", "offset_pool_forward_tiled_kernel",
                   "permute_nchw_tiled_kernel"):  # fmt: skip
        assert kernel in ran, ran
    torch.testing.assert_close(simulated, on_cpu, rtol=1e-4, atol=1e-4)
    # And the offsets map is the top-left block of the dilated one (SPEC's identity).
    dilated = dense.score_map(model, x, method="dilated")
    h, w = simulated.shape[-2:]
    torch.testing.assert_close(simulated, dilated[:, :, :h, :w], rtol=1e-4, atol=1e-4)


@torch.no_grad()
def test_vgg_forward_through_cuda_kernels():
    torch.manual_seed(0)
    model = models.vgg("A", batch_norm=True, num_classes=10).eval()
    x = torch.randn(1, 3, 32, 32)
    on_cpu = model(x)
    with simulator.simulate_cuda():
        simulated = model(x)
    torch.testing.assert_close(simulated, on_cpu, rtol=1e-4, atol=1e-5)


def test_training_steps_through_cuda_kernels():
    """The main job's network, two SGD steps (forward, all three conv gradients)."""
    torch.manual_seed(0)
    net = demo.DigitNet()
    twin = copy.deepcopy(net)
    x = torch.randn(8, 3, demo.WINDOW, demo.WINDOW)
    y = torch.randint(0, 11, (8,))

    def train(m):
        torch.manual_seed(1)  # the same dropout masks on both paths
        opt = torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9)
        for _ in range(2):
            opt.zero_grad()
            F.cross_entropy(m(x), y).backward()
            opt.step()
        return [p.detach() for p in m.parameters()]

    on_cpu = train(net)
    simulator.reset_launch_counts()
    with simulator.simulate_cuda():
        simulated = train(twin)
    ran = kernels_that_ran()
    for kernel in ("wgrad_partial", "bias_grad", "direct_conv3x3_kernel<float, true>"):
        assert kernel in ran, ran
    for a, b in zip(simulated, on_cpu, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
