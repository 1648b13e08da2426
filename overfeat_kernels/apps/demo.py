"""The main job: OverFeat's whole system, small enough for 2 CPU cores and needing no
downloads. A small OverFeat-style network (our kernels) learns scikit-learn's bundled 8x8
digits, upscaled, plus a background class; a box regressor learns, on the frozen trunk,
where the digit is in a window; then digits are detected on generated canvases by dense,
multi-scale, fine-stride evaluation (offset pooling + interleave) and OverFeat's greedy
box merge.

    overfeat-kernels demo [--out outputs] [--quick]

writes a PNG per canvas (score heat map and merged boxes over the image) and
detections.json, and prints the test accuracy and the detection precision / recall at
IoU >= 0.5.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..dense import boxes as B
from ..dense import dense_maps
from ..dense.localize import BoxRegressor, detections_from_maps, train_regressor
from ..models import DenseSpec
from ..nn import Conv3x3

WINDOW = 32  # the network's input size
BACKGROUND = 10  # class index of "no digit centred here"
SIZES = range(12, 29)  # digit sizes (pixels) in training windows
CANVAS_SIZES = range(14, 37)  # digit sizes on the canvases: the largest need scale 0.75
SCALES = (1.0, 0.75)  # detection scales
STRIDE = 8  # DigitNet's subsampling (three 2x2 pools)
FINE_STRIDE = STRIDE // 2  # its fine stride: offset pooling at the last 2x2 pool


class DigitNet(nn.Module):
    """OverFeat-style: 3x3 convolutions (ours, ReLU fused) and 2x2 pools (stride 8), then a
    classifier whose first layer reads the 4x4 pooled map. Fine stride: 4 pixels."""

    def __init__(self, num_classes: int = 11) -> None:
        super().__init__()
        self.features = nn.Sequential(
            Conv3x3(3, 32, relu=True), nn.MaxPool2d(2),
            Conv3x3(32, 64, relu=True), nn.MaxPool2d(2),
            Conv3x3(64, 96, relu=True), nn.MaxPool2d(2),
        )  # fmt: skip
        self.classifier = nn.Sequential(
            nn.Linear(96 * 4 * 4, 256), nn.ReLU(True), nn.Dropout(0.2),
            nn.Linear(256, 128), nn.ReLU(True), nn.Linear(128, num_classes),
        )  # fmt: skip
        self.dense_spec = DenseSpec(input_size=WINDOW, pool_kernel=2, fc_kernel=4, stride=STRIDE)
        # Blank canvas = 0 = the convolutions' zero padding: a training window's border then
        # looks like the canvas around a window in dense evaluation (no false edge cue).
        self.preprocessing = {"scale": 1 / 255, "mean": (0.0,) * 3, "std": (1.0,) * 3}

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


# ---------------------------------------------------------------------------------------
# Data: glyphs pasted into windows and canvases (values 0..1, grey replicated to RGB).


@dataclass
class Glyphs:
    images: Tensor  # [n, 8, 8] in 0..1
    labels: Tensor  # [n]

    def scaled(self, k: int, size: int) -> Tensor:
        """Glyph k upscaled to size x size (all glyphs of a size are scaled once)."""
        cache = self.__dict__.setdefault("_cache", {})
        if size not in cache:
            cache[size] = F.interpolate(self.images[:, None], size=(size, size),
                                        mode="bilinear", align_corners=False)[:, 0]  # fmt: skip
        return cache[size][k]


def load_glyphs(seed: int = 0, test_fraction: float = 0.25) -> tuple[Glyphs, Glyphs]:
    """scikit-learn's digits, split into train and held-out test glyphs."""
    from sklearn.datasets import load_digits

    d = load_digits()
    images = torch.tensor(d.images, dtype=torch.float32) / 16.0
    labels = torch.tensor(d.target, dtype=torch.long)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    n_test = int(len(labels) * test_fraction)
    test, train = order[:n_test], order[n_test:]
    return Glyphs(images[train], labels[train]), Glyphs(images[test], labels[test])


def paste(canvas: Tensor, g: Tensor, x0: int, y0: int) -> None:
    """Draws the scaled glyph `g` with its top-left at (x0, y0) into `canvas` [H, W],
    clipped to the canvas."""
    size = g.shape[0]
    h, w = canvas.shape
    cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x0 + size, w), min(y0 + size, h)
    if cx1 > cx0 and cy1 > cy0:
        region = canvas[cy0:cy1, cx0:cx1]
        region.copy_(torch.maximum(region, g[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0]))


def _to_input(grey: Tensor) -> Tensor:
    """[N, H, W] in 0..1 -> the network's preprocessed [N, 3, H, W] (see preprocessing)."""
    return grey[:, None].expand(-1, 3, -1, -1).contiguous()


def make_windows(
    glyphs: Glyphs,
    n: int,
    rng: random.Random,
    background: float = 0.3,
    max_shift: int = 3,
    noise: float = 0.05,
) -> tuple[Tensor, Tensor, Tensor]:
    """n training windows: (inputs [n, 3, 32, 32], labels [n], boxes [n, 4] in the window's
    frame). Positives: a digit of random size roughly centred. Background: an empty window,
    or a digit far off-centre (what the detector must not fire on)."""
    gen = torch.Generator().manual_seed(rng.randrange(2**31))
    grey = torch.rand(n, WINDOW, WINDOW, generator=gen) * noise
    labels = torch.empty(n, dtype=torch.long)
    box = torch.zeros(n, 4)
    for i in range(n):
        k = rng.randrange(len(glyphs.labels))
        size = rng.choice(SIZES)
        centre = (WINDOW - size) / 2
        if rng.random() < background:
            labels[i] = BACKGROUND
            if rng.random() < 0.3:
                continue  # empty
            # off-centre: the digit's centre at least 9 px from the window's centre
            while True:
                dx, dy = rng.randint(-20, 20), rng.randint(-20, 20)
                if max(abs(dx), abs(dy)) >= 9:
                    break
        else:
            labels[i] = glyphs.labels[k]
            dx, dy = rng.randint(-max_shift, max_shift), rng.randint(-max_shift, max_shift)
        x0, y0 = round(centre + dx), round(centre + dy)
        paste(grey[i], glyphs.scaled(k, size), x0, y0)
        box[i] = torch.tensor([x0, y0, x0 + size, y0 + size]) / WINDOW
    return _to_input(grey), labels, box


@dataclass
class Canvas:
    image: Tensor  # [H, W] in 0..1
    truth: list[tuple[B.Box, int]]


def make_canvas(glyphs: Glyphs, rng: random.Random, height: int = 112, width: int = 144,
                digits: int = 4, noise: float = 0.05) -> Canvas:  # fmt: skip
    """A canvas with `digits` non-overlapping digits of random sizes and places."""
    gen = torch.Generator().manual_seed(rng.randrange(2**31))
    image = torch.rand(height, width, generator=gen) * noise
    truth: list[tuple[B.Box, int]] = []
    for _ in range(200):  # rejection sampling of free places
        if len(truth) == digits:
            break
        size = rng.choice(CANVAS_SIZES)
        x0, y0 = rng.randrange(2, width - size - 2), rng.randrange(2, height - size - 2)
        box = (float(x0), float(y0), float(x0 + size), float(y0 + size))
        grown = (box[0] - 4, box[1] - 4, box[2] + 4, box[3] + 4)
        if any(B.intersection(grown, t) > 0 for t, _ in truth):
            continue
        k = rng.randrange(len(glyphs.labels))
        paste(image, glyphs.scaled(k, size), x0, y0)
        truth.append((box, int(glyphs.labels[k])))
    return Canvas(image, truth)


# ---------------------------------------------------------------------------------------
# Training and evaluation


def train_classifier(net: DigitNet, glyphs: Glyphs, steps: int, rng: random.Random,
                     batch: int = 128, lr: float = 2e-3,
                     progress: bool = False) -> list[float]:  # fmt: skip
    """Trains `net` on random windows of `glyphs` for `steps` Adam steps; returns the loss
    per step. `progress` shows a progress bar (on stderr)."""
    from tqdm import tqdm

    opt = torch.optim.Adam(net.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=max(1, steps * 2 // 3), gamma=0.2)
    net.train()
    losses = []
    bar = tqdm(range(steps), desc="classifier", unit="step", disable=not progress,
               dynamic_ncols=True, leave=False)  # fmt: skip
    for _ in bar:
        x, y, _ = make_windows(glyphs, batch, rng)
        loss = F.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.3f}", refresh=False)
    net.eval()
    return losses


@torch.no_grad()
def test_accuracy(net: DigitNet, glyphs: Glyphs, rng: random.Random) -> float:
    """Accuracy on held-out digits, centred windows of random size (background counts as
    a mistake)."""
    x, y, _ = make_windows(glyphs, len(glyphs.labels) * 2, rng, background=0.0, max_shift=1)
    return (net(x).argmax(1) == y).float().mean().item()


def detect(net: DigitNet, regressor: BoxRegressor, canvas: Canvas, min_confidence: float = 0.6,
           merge_threshold: float = 0.6, min_score: float = 1.5) -> list[B.Detection]:  # fmt: skip
    """Dense multi-scale fine-stride detection, greedy merge, then the merged boxes whose
    accumulated confidence reaches `min_score`; where boxes of different classes overlap,
    the better-supported one is kept."""
    raw: list[B.Detection] = []
    pad = WINDOW // 2  # background margin: digits at the edge get windows centred on them
    for scale in SCALES:
        img = canvas.image[None, None]
        if scale != 1.0:
            img = F.interpolate(img, scale_factor=scale, mode="bilinear", antialias=True)
        img = F.pad(img, (pad, pad, pad, pad))
        found = detections_from_maps(
            net,
            regressor,
            _to_input(img[:, 0]),
            scale,
            background=BACKGROUND,
            min_confidence=min_confidence,
        )
        for d in found:
            shift = pad / scale
            d.box = (d.box[0] - shift, d.box[1] - shift, d.box[2] - shift, d.box[3] - shift)
            raw.append(d)
    merged = B.merge_boxes(raw, merge_threshold, per_class=False)
    merged = [d for d in merged if d.score >= min_score]
    kept: list[B.Detection] = []
    for d in merged:  # best first
        if all(B.iou(d.box, k.box) < 0.3 for k in kept):
            kept.append(d)
    return kept


def heat_map(net: DigitNet, canvas: Canvas) -> Tensor:
    """The best digit probability at each fine-stride window (scale 1), [h, w]."""
    with torch.no_grad():
        (scores,) = dense_maps(net, _to_input(canvas.image[None]))
    probs = scores.softmax(1)[0]
    return probs[:BACKGROUND].amax(0)


def render(canvas: Canvas, heat: Tensor, detections: list[B.Detection], path: Path,
           zoom: int = 4) -> None:  # fmt: skip
    """The canvas, the heat map in red (each value over its window's centre), true boxes in
    green, merged detections in yellow with their class and score."""
    from PIL import Image, ImageDraw

    h, w = canvas.image.shape
    grey = (canvas.image.clamp(0, 1) * 255).to(torch.uint8).numpy()
    rgb = np.stack([grey] * 3, axis=-1).astype(np.float32)
    # Each fine-stride value covers its stride x stride cell around its window's centre.
    stride = FINE_STRIDE
    cells = heat.repeat_interleave(stride, 0).repeat_interleave(stride, 1).numpy()
    off = (WINDOW - stride) // 2
    hh, ww = min(cells.shape[0], h - off), min(cells.shape[1], w - off)
    rgb[off : off + hh, off : off + ww, 0] = np.maximum(rgb[off : off + hh, off : off + ww, 0],
                                                        cells[:hh, :ww] * 255)  # fmt: skip
    img = Image.fromarray(rgb.astype(np.uint8)).resize((w * zoom, h * zoom), Image.NEAREST)
    draw = ImageDraw.Draw(img)
    for box, _ in canvas.truth:
        draw.rectangle([v * zoom for v in box], outline=(0, 200, 0), width=2)
    for d in detections:
        draw.rectangle([v * zoom for v in d.box], outline=(255, 220, 0), width=2)
        draw.text((d.box[0] * zoom + 3, d.box[1] * zoom + 2), f"{d.label} ({d.score:.1f})",
                  fill=(255, 220, 0))  # fmt: skip
    img.save(path)


@dataclass
class DemoResult:
    test_accuracy: float
    precision: float
    recall: float
    canvases: int
    seconds: float


def run(out: Path | str = "outputs", quick: bool = False, seed: int = 0,
        canvases: int | None = None, verbose: bool = True) -> DemoResult:  # fmt: skip
    """The whole demo; `quick` trains for fewer steps (for tests)."""
    start = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    rng = random.Random(seed)
    say = print if verbose else (lambda *a, **k: None)
    train, test = load_glyphs(seed)
    say(
        f"digits: {len(train.labels)} training glyphs, {len(test.labels)} held out "
        f"(scikit-learn), windows {WINDOW}x{WINDOW}, digit sizes {SIZES.start}-{SIZES.stop - 1}"
    )

    from tqdm import tqdm

    net = DigitNet()
    steps = 400 if quick else 1200
    losses = train_classifier(net, train, steps, rng, progress=verbose)
    acc = test_accuracy(net, test, random.Random(seed + 1))
    say(
        f"classifier: {steps} steps, loss {np.mean(losses[:20]):.3f} -> "
        f"{np.mean(losses[-20:]):.3f}; held-out test accuracy {100 * acc:.2f}%"
    )

    regressor = BoxRegressor.for_model(net, hidden=(128,))
    reg_steps = 250 if quick else 600

    def reg_batches():
        for _ in range(reg_steps):
            x, y, b = make_windows(train, 128, rng, background=0.0, max_shift=8)
            yield x, b, y

    bar = tqdm(reg_batches(), total=reg_steps, desc="box regressor", unit="step",
               disable=not verbose, dynamic_ncols=True, leave=False)  # fmt: skip
    reg_losses = train_regressor(net, regressor, bar, lr=2e-3)
    say(
        f"box regressor (trunk frozen): {reg_steps} steps, L2 loss "
        f"{np.mean(reg_losses[:20]):.4f} -> {np.mean(reg_losses[-20:]):.4f}"
    )

    n_canvas = canvases or (6 if quick else 12)
    canvas_rng = random.Random(seed + 2)
    records, all_dets, all_truth = [], [], []
    tp = n_det = n_obj = 0
    for c in tqdm(range(n_canvas), desc="detection", unit="canvas", disable=not verbose,
                  dynamic_ncols=True, leave=False):  # fmt: skip
        canvas = make_canvas(test, canvas_rng)
        dets = detect(net, regressor, canvas)
        m = B.evaluate(dets, canvas.truth)
        tp, n_det, n_obj = tp + m["true_positives"], n_det + m["detections"], n_obj + m["objects"]
        render(canvas, heat_map(net, canvas), dets, out / f"canvas_{c:02d}.png")
        records.append({"canvas": f"canvas_{c:02d}.png", "size": list(canvas.image.shape),
                        "truth": [{"box": list(b), "label": lab} for b, lab in canvas.truth],
                        "detections": [{"box": [round(v, 2) for v in d.box], "label": d.label,
                                        "score": round(d.score, 3), "merged": d.count}
                                       for d in dets], "metrics": m})  # fmt: skip
        all_dets += dets
        all_truth += canvas.truth
    precision = tp / n_det if n_det else 1.0
    recall = tp / n_obj if n_obj else 1.0
    seconds = time.perf_counter() - start
    summary = {"test_accuracy": acc, "precision": precision, "recall": recall,
               "true_positives": tp, "detections": n_det, "objects": n_obj,
               "scales": list(SCALES), "fine_stride_px": FINE_STRIDE,
               "seconds": seconds}  # fmt: skip
    (out / "detections.json").write_text(json.dumps({"summary": summary, "canvases": records},
                                                    indent=1))  # fmt: skip
    say(
        f"detection on {n_canvas} canvases ({n_obj} digits), scales {SCALES}, fine stride "
        f"{FINE_STRIDE} px: precision {precision:.3f}, recall {recall:.3f} at IoU >= 0.5"
    )
    say(f"wrote {n_canvas} PNGs and detections.json to {out}/ in {seconds:.0f} s")
    return DemoResult(acc, precision, recall, n_canvas, seconds)
