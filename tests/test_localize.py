"""The regression head: shapes, per-class selection, the overlap rule, and the geometry
of boxes read off the fine-stride maps."""

from __future__ import annotations

import torch
from torch import nn

from overfeat_kernels import demo, localize
from overfeat_kernels.dense import dense_maps


def test_per_class_selection_vectors_and_maps():
    reg = localize.BoxRegressor(8, hidden=(5,), num_classes=3)
    out = torch.arange(24.0).view(2, 12)  # 2 items x (3 classes x 4 edges)
    sel = reg.select(out, torch.tensor([2, 0]))
    assert torch.equal(sel, torch.tensor([[8.0, 9, 10, 11], [12, 13, 14, 15]]))
    maps = torch.arange(12.0 * 2).view(1, 12, 1, 2)
    labels = torch.tensor([[[1, 2]]])
    sel = reg.select(maps, labels)
    assert sel.shape == (1, 4, 1, 2)
    assert torch.equal(sel[0, :, 0, 0], maps[0, 4:8, 0, 0])
    assert torch.equal(sel[0, :, 0, 1], maps[0, 8:12, 0, 1])
    shared = localize.BoxRegressor(8, hidden=(5,))
    assert torch.equal(shared.select(out, None), out)


def test_overlap_fraction():
    window = (0.0, 0.0, 1.0, 1.0)
    assert localize.overlap_fraction((0.25, 0.25, 0.75, 0.75), window) == 1.0
    assert localize.overlap_fraction((0.5, 0.0, 1.5, 1.0), window) == 0.5
    assert localize.overlap_fraction((2.0, 2.0, 3.0, 3.0), window) == 0.0


def test_boxes_placed_at_their_windows():
    """A regressor that always answers 'the whole window' must give, for fine-map position
    (i, j), the box of the window at (stride * j, stride * i), divided by the scale."""
    net = demo.DigitNet().eval()
    reg = localize.BoxRegressor.for_model(net, hidden=(4,))
    last = reg.head[-1]
    with torch.no_grad():
        for m in reg.head:
            if isinstance(m, nn.Linear):
                m.weight.zero_()
                m.bias.zero_()
        last.bias.copy_(torch.tensor([0.0, 0.0, 1.0, 1.0]))
    img = torch.rand(1, 3, 48, 56)
    dets = localize.detections_from_maps(net, reg, img, scale=0.5, min_confidence=0.0)
    spec = net.dense_spec
    stride = spec.stride // spec.pool_kernel
    (scores,) = dense_maps(net, img)
    h, w = scores.shape[-2:]
    assert len(dets) == h * w
    origins = {(d.box[0] * 0.5, d.box[1] * 0.5) for d in dets}
    assert all(d.box[2] - d.box[0] == spec.input_size / 0.5 for d in dets)
    assert origins == {(stride * j, stride * i) for i in range(h) for j in range(w)}


def test_train_regressor_lowers_loss_and_freezes_trunk():
    torch.manual_seed(0)
    net = demo.DigitNet()
    before = [p.clone() for p in net.parameters()]
    reg = localize.BoxRegressor.for_model(net, hidden=(32,))
    train, _ = demo.load_glyphs()
    import random

    rng = random.Random(0)
    batches = [demo.make_windows(train, 64, rng, background=0.0, max_shift=8)
               for _ in range(60)]  # fmt: skip
    losses = localize.train_regressor(net, reg, ((x, b, y) for x, y, b in batches), lr=3e-3)
    assert sum(losses[-10:]) / 10 < sum(losses[:10]) / 10 / 3
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters(), strict=True))
