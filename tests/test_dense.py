"""Dense evaluation against an oracle built from plain F.max_pool2d, F.unfold and the
model's own nn.Linear layers; offsets against dilated; the Table 5 map sizes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from overfeat_kernels import dense, models
from overfeat_kernels.nn import Conv3x3


def small_init(model: nn.Module) -> nn.Module:
    """Weights that keep activations O(1) through the net, so comparisons are meaningful."""
    torch.manual_seed(0)
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d, Conv3x3)):
            nn.init.kaiming_normal_(m.weight)
            nn.init.normal_(m.bias, 0, 0.1)
    return model.eval()


def oracle(model, images, fine):
    """The classifier (its nn.Linear layers as they are) slid over the last pooled map:
    at stride k (coarse) or 1 (fine, windows dilated by k)."""
    spec = model.dense_spec
    k, s = spec.pool_kernel, spec.fc_kernel
    pre = model.features[:-1](images)
    pooled = F.max_pool2d(pre, k, stride=1 if fine else k)
    dil = k if fine else 1
    h = pooled.shape[-2] - dil * (s - 1)
    w = pooled.shape[-1] - dil * (s - 1)
    cols = F.unfold(pooled, s, dilation=dil)  # [N, C*s*s, h*w], channel-major like flatten
    scores = model.classifier(cols.transpose(1, 2))  # [N, h*w, classes]
    return scores.transpose(1, 2).reshape(images.shape[0], -1, h, w)


CASES = [("vgg", 240, 256), ("fast", 247, 263), ("accurate", 245, 281)]


def build(kind):
    model = models.vgg16(num_classes=11) if kind == "vgg" else models.overfeat(kind, 11)
    return small_init(model)


@pytest.mark.parametrize("kind,h,w", CASES)
@torch.no_grad()
def test_maps_equal_oracle(kind, h, w):
    model = build(kind)
    x = torch.randn(2, 3, h, w)
    coarse = dense.score_map(model, x, fine_stride=False)
    torch.testing.assert_close(coarse, oracle(model, x, fine=False), rtol=1e-4, atol=1e-4)
    fine_oracle = oracle(model, x, fine=True)
    dilated = dense.score_map(model, x, method="dilated")
    torch.testing.assert_close(dilated, fine_oracle, rtol=1e-4, atol=1e-4)
    offsets = dense.score_map(model, x, method="offsets")
    k = model.dense_spec.pool_kernel
    assert offsets.shape[-2] >= k and offsets.shape[-1] >= k
    # The offsets map is the dilated map's top-left block (SPEC, "The identity").
    torch.testing.assert_close(offsets, dilated[:, :, : offsets.shape[-2], : offsets.shape[-1]],
                               rtol=1e-4, atol=1e-4)  # fmt: skip
    # Fine stride is k times finer: every k-th fine position is a coarse one.
    h, w = -(-offsets.shape[-2] // k), -(-offsets.shape[-1] // k)
    torch.testing.assert_close(offsets[:, :, ::k, ::k], coarse[:, :, :h, :w], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind", ["vgg", "fast", "accurate"])
@torch.no_grad()
def test_coarse_map_at_input_size_is_the_model_output(kind):
    model = build(kind)
    size = model.dense_spec.input_size
    x = torch.randn(2, 3, size, size)
    out = dense.score_map(model, x, fine_stride=False)
    assert out.shape == (2, 11, 1, 1)
    torch.testing.assert_close(out[:, :, 0, 0], model(x), rtol=1e-4, atol=1e-4)


# OverFeat accurate at the six Table 5 scales: the layer-5 map before pooling and the
# fine-stride classifier map. (Derived from the Table 3 architecture; the first and last
# layer-5 sizes, 17x17 and 35x44, are the paper's.)
TABLE5 = [((245, 245), (17, 17), (3, 3)), ((281, 317), (20, 23), (6, 9)),
          ((317, 389), (23, 29), (9, 15)), ((389, 461), (29, 35), (15, 21)),
          ((425, 497), (32, 38), (18, 24)), ((461, 569), (35, 44), (21, 30))]  # fmt: skip


@pytest.mark.parametrize("size,layer5,fine", TABLE5)
def test_table5_map_sizes(size, layer5, fine):
    model = models.overfeat("accurate").to("meta").eval()  # shapes only: no arithmetic
    x = torch.empty(1, 3, *size, device="meta")
    assert tuple(model.features[:-1](x).shape[-2:]) == layer5
    assert tuple(dense.score_map(model, x).shape) == (1, 1000, *fine)
    coarse = dense.score_map(model, x, fine_stride=False).shape[-2:]
    assert tuple(coarse) == tuple(s // 3 - 4 for s in layer5)  # 3x3 pool, then 5x5 fc6


def test_errors():
    model = models.overfeat("accurate").to("meta")
    with pytest.raises(ValueError, match="smaller than the model's input size 221x221"):
        dense.score_map(model, torch.empty(1, 3, 200, 300, device="meta"))
    with pytest.raises(ValueError, match="method='dilated'"):
        dense.score_map(model, torch.empty(1, 3, 221, 221, device="meta"))
    assert dense.score_map(model, torch.empty(1, 3, 221, 221, device="meta"),
                           method="dilated").shape[-2:] == (1, 1)  # fmt: skip
    with pytest.raises(ValueError, match="method must be"):
        dense.score_map(model, torch.empty(1, 3, 245, 245, device="meta"), method="x")
    with pytest.raises(ValueError, match=r"\[N, 3, H, W\]"):
        dense.score_map(model, torch.empty(1, 1, 245, 245, device="meta"))
    with pytest.raises(TypeError, match="dense_spec"):
        dense.score_map(nn.Conv2d(3, 3, 1), torch.empty(1, 3, 245, 245))


def test_errors_model_and_images_must_match():
    model = models.overfeat("fast", num_classes=5).to("meta")
    with pytest.raises(TypeError, match=r"images are torch.float64 but the model's parameters"):
        dense.score_map(model, torch.empty(1, 3, 231, 231, dtype=torch.float64, device="meta"))
    with pytest.raises(ValueError, match="images are on cpu but the model is on meta"):
        dense.classify(model, torch.empty(1, 3, 231, 231), scales=[231])
    # Under autocast both are cast: bfloat16 images meet a float32 model.
    model = small_init(models.overfeat("fast", num_classes=5))
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():
        scores = dense.score_map(model, torch.randn(1, 3, 247, 247, dtype=torch.bfloat16))
    assert scores.shape[:2] == (1, 5) and scores.dtype == torch.bfloat16


@pytest.mark.parametrize("scales", [[], [0], (-1,), "x", 231, [231.5], [(231, 0)], [True]])
def test_classify_bad_scales(scales):
    model = models.overfeat("fast", num_classes=5).to("meta")
    with pytest.raises(ValueError, match="scales must be a non-empty list"):
        dense.classify(model, torch.empty(1, 3, 231, 231, device="meta"), scales=scales)


@pytest.mark.parametrize("flip", [True, False])
def test_classify_empty_batch(flip):
    model = small_init(models.overfeat("fast", num_classes=5))
    scores = dense.classify(model, torch.empty(0, 3, 240, 250), scales=[231], flip=flip)
    assert scores.shape == (0, 5)


def test_topk_checks_k():
    scores = torch.randn(2, 5)
    for k in (6, -1):
        with pytest.raises(ValueError, match="k must be from 0 to the number of classes 5"):
            dense.topk(scores, k)
    assert dense.topk(scores, 0)[0].shape == (2, 0)
    with pytest.raises(TypeError, match="k must be an int"):
        dense.topk(scores, 2.0)
    values, idx = dense.topk(scores, 5)
    expect = scores.sort(dim=-1, descending=True)
    assert torch.equal(values, expect.values) and torch.equal(idx, expect.indices)


@torch.no_grad()
def test_classify_overfeat_protocol():
    model = build("accurate")
    x = torch.randn(2, 3, 250, 250)
    scores = dense.classify(model, x, scales=[(245, 245), (257, 269)])
    expect = 0
    for size in [(245, 245), (257, 269)]:
        xs = F.interpolate(x, size=size, mode="bilinear", antialias=True)
        for img in (xs, xs.flip(-1)):
            expect = expect + dense.score_map(model, img).amax(dim=(-2, -1))
    torch.testing.assert_close(scores, expect / 4, rtol=1e-4, atol=1e-4)
    values, idx = dense.topk(scores, 3)
    assert idx.shape == (2, 3) and (values[:, :-1] >= values[:, 1:]).all()


@torch.no_grad()
def test_classify_vgg_protocol():
    model = build("vgg")
    x = torch.randn(1, 3, 230, 260)
    scores = dense.classify(model, x, scales=[224, 240])
    assert scores.shape == (1, 11)
    torch.testing.assert_close(scores.sum(), torch.tensor(1.0))  # a mean of softmaxes
