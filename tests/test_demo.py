"""The main job at reduced size: accuracy and detection quality, and its outputs."""

from __future__ import annotations

import json

from PIL import Image

from overfeat_kernels import demo


def test_reduced_demo_meets_the_bar(tmp_path):
    result = demo.run(tmp_path, quick=True, verbose=False)
    assert result.test_accuracy >= 0.95
    assert result.recall >= 0.8
    assert result.precision >= 0.6
    pngs = sorted(tmp_path.glob("canvas_*.png"))
    assert len(pngs) == result.canvases
    with Image.open(pngs[0]) as im:
        assert im.size[0] > 400 and im.mode == "RGB"
    report = json.loads((tmp_path / "detections.json").read_text())
    assert report["summary"]["recall"] == result.recall
    first = report["canvases"][0]
    assert first["truth"] and {"box", "label", "score", "merged"} <= set(first["detections"][0])


def test_canvas_digits_do_not_overlap():
    import random

    train, _ = demo.load_glyphs()
    canvas = demo.make_canvas(train, random.Random(0))
    assert len(canvas.truth) == 4
    from overfeat_kernels.boxes import intersection

    boxes = [b for b, _ in canvas.truth]
    assert all(intersection(a, b) == 0 for i, a in enumerate(boxes) for b in boxes[i + 1 :])


def test_training_shows_a_progress_bar(capsys):
    import random

    train, _ = demo.load_glyphs()
    net = demo.DigitNet()
    demo.train_classifier(net, train, 3, random.Random(0), batch=8, progress=True)
    err = capsys.readouterr().err
    # A bar named after the phase, with its total (how far it got before closing depends
    # on tqdm's refresh interval, i.e. on the machine's speed).
    assert "classifier:" in err and "/3 [" in err
    demo.train_classifier(net, train, 2, random.Random(0), batch=8)  # default: silent
    assert capsys.readouterr().err == ""
