"""Extraction with the batched JPEG decoder (`--decode gpu`): the whole pipeline (workers
read bytes, the main process decodes batches and resizes) run with the batched decoder's
CPU version (TorchCodec's; torchvision's too for the fallbacks), against the CPU path
(Pillow in the workers); the JPEG header reader; the fallbacks for what the batched decoder
cannot or will not decode; the decoder's choice. The GPU cases compare nvJPEG with Pillow
and the overlapped pipeline with a synchronous one, and are skipped without a GPU."""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from image_factory import make_images
from PIL import Image

from overfeat_kernels import cli
from overfeat_kernels.apps import decoding, extract, imageio

spec = importlib.util.spec_from_file_location(
    "bench_extract", Path(__file__).parents[1] / "benchmarks" / "bench_extract.py"
)
bench_extract = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench_extract)

LAYERS = ["conv3_1", "pool5", "fc7"]
gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _needs_gpu_decoder() -> None:
    found = decoding.backend(torch.device("cuda", torch.cuda.current_device()))
    if isinstance(found, str):
        pytest.skip(f"no batched JPEG decoder on this GPU: {found}")


def _jpeg(pixels: np.ndarray, **save) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", **save)
    return buf.getvalue()


def _with_sof_size(data: bytes, h: int, w: int) -> bytes:
    """The JPEG with its frame header claiming h x w (the scan data unchanged)."""
    sof = data.index(b"\xff\xc0")
    return data[: sof + 5] + h.to_bytes(2, "big") + w.to_bytes(2, "big") + data[sof + 9 :]


def _segment(marker: int, payload: bytes) -> bytes:
    return bytes([0xFF, marker]) + (len(payload) + 2).to_bytes(2, "big") + payload


def _exif(orientation: int) -> bytes:
    """An APP1 EXIF segment whose first IFD holds just the Orientation tag."""
    ifd = (b"\x00\x01" + b"\x01\x12\x00\x03\x00\x00\x00\x01"
           + orientation.to_bytes(2, "big") + b"\x00\x00" + b"\x00\x00\x00\x00")  # fmt: skip
    return _segment(0xE1, b"Exif\x00\x00" + b"MM\x00\x2a\x00\x00\x00\x08" + ifd)


def _xmp(orientation: int) -> bytes:
    packet = (b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/'
              b'1999/02/22-rdf-syntax-ns#"><rdf:Description xmlns:tiff="http://ns.adobe.com/'
              b'tiff/1.0/" tiff:Orientation="%d"/></rdf:RDF></x:xmpmeta>' % orientation)
    return _segment(0xE1, b"http://ns.adobe.com/xap/1.0/\x00" + packet)


def _insert(data: bytes, marker: bytes, segment: bytes) -> bytes:
    """`segment` inserted just before the first `marker` of a JPEG."""
    at = data.index(marker)
    return data[:at] + segment + data[at:]


def _rgb_component_ids(data: bytes) -> bytes:
    """The JPEG without its JFIF block and with components named R, G, B (libjpeg then
    reads the pixels as RGB, with no colour transform)."""
    app0 = data.index(b"\xff\xe0")
    data = data[:app0] + data[app0 + 2 + int.from_bytes(data[app0 + 2 : app0 + 4], "big") :]
    out = bytearray(data)
    sof, sos = data.index(b"\xff\xc0"), data.index(b"\xff\xda")
    for c, name in enumerate(b"RGB"):
        out[sof + 10 + 3 * c] = name
        out[sos + 5 + 2 * c] = name
    return bytes(out)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """image_factory's set (every kind the CPU path handles) plus what matters to the
    batched decoder: baseline JPEGs of odd sizes, 4:4:4 and 4:2:0, grayscale, progressive,
    a PNG named .jpg, an empty .jpg, a JPEG claiming huge dimensions."""
    root = make_images(tmp_path_factory.mktemp("images"))
    rng = np.random.default_rng(1)
    extra = root / "jpegs"
    extra.mkdir()
    for k, (h, w, sub) in enumerate([(37, 53, 0), (64, 33, 2), (50, 50, 1), (41, 97, 2)]):
        (extra / f"baseline{k}.jpg").write_bytes(
            _jpeg(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), quality=85, subsampling=sub)
        )
    (extra / "gray.jpg").write_bytes(_jpeg(rng.integers(0, 256, (45, 39), dtype=np.uint8)))
    (extra / "progressive.jpg").write_bytes(
        _jpeg(rng.integers(0, 256, (36, 44, 3), dtype=np.uint8), progressive=True)
    )
    png = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (34, 40, 3), dtype=np.uint8)).save(png, format="PNG")
    (extra / "png_named.jpg").write_bytes(png.getvalue())
    (extra / "zero.jpg").write_bytes(b"")
    small = _jpeg(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8))
    (extra / "huge.jpg").write_bytes(_with_sof_size(small, 40000, 40000))
    # Orientation where a reader stopping early would miss it: Pillow rotates all of these.
    tall = _jpeg(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8))
    (extra / "two_exif.jpg").write_bytes(_insert(tall, b"\xff\xdb", _exif(6) + _exif(1)))
    (extra / "xmp_rotated.jpg").write_bytes(_insert(tall, b"\xff\xdb", _xmp(6)))
    (extra / "exif_after_frame.jpg").write_bytes(_insert(tall, b"\xff\xc4", _exif(8)))
    (extra / "rgb_ids.jpg").write_bytes(_rgb_component_ids(tall))
    return root


EXTRA_STATUS = {"jpegs/zero.jpg": "skipped", "jpegs/huge.jpg": "skipped"}
OK_EXTRA = ("baseline0", "baseline1", "baseline2", "baseline3", "gray", "progressive",
            "png_named", "two_exif", "xmp_rotated", "exif_after_frame", "rgb_ids")  # fmt: skip


@pytest.fixture(params=["torchcodec", "torchvision"])
def only_backend(request, monkeypatch):
    """Each batched decoder in turn (the first one working is used: here only this one)."""
    monkeypatch.setattr(decoding, "BACKENDS", {request.param: decoding.BACKENDS[request.param]})
    monkeypatch.setattr(decoding, "_PROBED", {})
    return request.param


def _run(images: Path, out: Path, keep: bool = False, **kw) -> extract.ExtractResult:
    if not keep:
        shutil.rmtree(out, ignore_errors=True)
    cfg = dict(model="vgg11", layers=LAYERS, out=out, inputs=[str(images)], random_init=True,
               seed=3, batch_size=4, device="cpu", workers=2, size=32, shard_size=7,
               progress=False)  # fmt: skip
    return extract.extract(extract.ExtractConfig(**{**cfg, **kw}))


def _load(out: Path):
    with open(out / "index.csv", newline="") as f:
        index = list(csv.DictReader(f))
    return index, {n: np.load(out / f"{n}.npy") for n in LAYERS}


@pytest.fixture(scope="module")
def cpu_run(images, tmp_path_factory):
    out = tmp_path_factory.mktemp("cpu")
    return _run(images, out, decode="cpu"), out


@pytest.fixture(scope="module")
def batched_run(images, tmp_path_factory):
    out = tmp_path_factory.mktemp("batched")
    return _run(images, out, decode="gpu", decode_device="cpu"), out


def test_batched_pipeline_matches_cpu_path(cpu_run, batched_run, images):
    (res_cpu, out_cpu), (res, out) = cpu_run, batched_run
    index_cpu, feats_cpu = _load(out_cpu)
    index, feats = _load(out)
    assert index == index_cpu  # the same statuses and the same reasons, row by row
    status = {str(Path(r["path"]).relative_to(images)): r["status"] for r in index}
    assert {k: v for k, v in status.items() if k.startswith("jpegs/")} == {
        **{f"jpegs/{n}.jpg": "ok" for n in OK_EXTRA},
        **EXTRA_STATUS,
    }
    reasons = {str(Path(r["path"]).relative_to(images)): r["reason"] for r in index}
    assert "exceeds limit" in reasons["jpegs/huge.jpg"]
    assert "not an image" in reasons["jpegs/zero.jpg"]
    assert "truncated" in reasons["truncated.jpg"]
    # TorchCodec's CPU decoder and Pillow are both libjpeg-turbo: the same pixels, so the
    # same features (the GPU decoder's difference is measured by the GPU cases below).
    for name in LAYERS:
        np.testing.assert_array_equal(feats[name], feats_cpu[name], err_msg=name)
    assert res.ok == res_cpu.ok == 19 and res.skipped == res_cpu.skipped == 6
    # rgb.jpg, 4 baseline and the gray JPEG through the batched decoder; CMYK, progressive,
    # the rotated and RGB-coded ones and the non-JPEGs through Pillow in the workers.
    assert res.decoder == ("batched (torchcodec's JPEG decoder on cpu) for 6 images, Pillow "
                           "for 13 in the workers and 0 after that decoder failed")
    assert res.bound in extract._Stages.NAMES.values() and set(res.waits) == set(
        extract._Stages.NAMES
    )
    assert json.loads((out / "manifest.json").read_text())["decode"] == ["batched-cpu"]


@pytest.mark.parametrize("batch_size,workers", [(1, 0), (9, 1)])
def test_batched_pipeline_batch_size_invariance(batched_run, images, tmp_path, batch_size,
                                                workers):  # fmt: skip
    _run(images, tmp_path / "o", decode="gpu", decode_device="cpu", batch_size=batch_size,
         workers=workers)  # fmt: skip
    index_ref, ref = _load(batched_run[1])
    index, feats = _load(tmp_path / "o")
    assert index == index_ref
    for name in LAYERS:
        np.testing.assert_allclose(feats[name], ref[name], rtol=1e-4, atol=1e-5, err_msg=name)


def test_batched_pipeline_dense(tmp_path):
    folder = tmp_path / "big"
    folder.mkdir()
    rng = np.random.default_rng(2)
    (folder / "a.jpg").write_bytes(_jpeg(rng.integers(0, 256, (224, 241, 3), dtype=np.uint8)))
    (folder / "b.jpg").write_bytes(_jpeg(rng.integers(0, 256, (230, 229, 3), dtype=np.uint8)))
    (folder / "c.jpg").write_bytes(_jpeg(rng.integers(0, 256, (100, 300, 3), dtype=np.uint8)))
    outs = {}
    for decode in ("cpu", "gpu"):
        out = tmp_path / decode
        _run(folder, out, decode=decode, decode_device="cpu" if decode == "gpu" else None,
             layers=["pool5", "fc8"], dense=True, size=None, batch_size=3)  # fmt: skip
        with open(out / "index.csv", newline="") as f:
            outs[decode] = [r["status"] for r in csv.DictReader(f)], np.load(out / "fc8.npy")
    assert outs["cpu"][0] == outs["gpu"][0] == ["ok", "ok", "skipped"]  # c: below 224
    assert outs["gpu"][1].shape == (2, 1000)
    np.testing.assert_array_equal(outs["gpu"][1], outs["cpu"][1])


def test_complete_output_needs_no_decoder(batched_run, images, capsys):
    # Complete: nothing to decode, so --decode gpu on a machine without one is no error.
    out = batched_run[1]
    args = ["extract", "--model", "vgg11", "--random-init", "--seed", "3", "--layers",
            ",".join(LAYERS), "--size", "32", "--device", "cpu", "--no-progress",
            "--shard-size", "7", "--decode", "gpu", "--out", str(out), str(images)]  # fmt: skip
    assert cli.main(args) == 3
    assert "nothing left to compute" in capsys.readouterr().out


def test_killed_batched_run_resumed_with_the_cpu_decoder(cpu_run, images, tmp_path):
    """Killed after its first shard (batched decoder), resumed with --decode cpu: the same
    files as a run with one decoder, and the manifest names both."""
    out = tmp_path / "mixed"
    code = ("import sys; from pathlib import Path; from overfeat_kernels.apps import extract; "
            "extract.extract(extract.ExtractConfig(model='vgg11', layers=sys.argv[1].split(','),"
            " out=Path(sys.argv[2]), inputs=[sys.argv[3]], random_init=True, seed=3, "
            "batch_size=4, device='cpu', workers=0, size=32, shard_size=7, progress=False, "
            "decode='gpu', decode_device='cpu'))")  # fmt: skip
    env = {**os.environ, extract.TEST_EXIT_AFTER_SHARDS: "1"}
    killed = subprocess.run([sys.executable, "-c", code, ",".join(LAYERS), str(out),
                             str(images)], env=env, capture_output=True, text=True)  # fmt: skip
    assert killed.returncode == 137, killed.stderr[-2000:]
    assert (out / ".partial" / "shard_000000").is_dir() and not (out / "index.csv").exists()
    resumed = _run(images, out, decode="cpu", keep=True)
    assert resumed.computed == resumed.images - 7  # the first shard was kept
    index_cpu, feats_cpu = _load(cpu_run[1])
    index, feats = _load(out)
    assert index == index_cpu
    for name in LAYERS:
        np.testing.assert_array_equal(feats[name], feats_cpu[name], err_msg=name)
    assert json.loads((out / "manifest.json").read_text())["decode"] == ["batched-cpu", "cpu"]


# ---------------------------------------------------------------------------------------
# The header reader and what it sends to the batched decoder


def test_jpeg_header_kinds(images):
    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
    h = imageio.jpeg_header(_jpeg(rgb))
    assert (h.height, h.width, h.components, h.precision) == (40, 48, 3, 8)
    assert h.baseline and h.complete and h.orientation == 1 and imageio.batch_decodable(h)
    gray = imageio.jpeg_header((images / "jpegs" / "gray.jpg").read_bytes())
    assert gray.components == 1 and imageio.batch_decodable(gray)
    prog = imageio.jpeg_header(_jpeg(rgb, progressive=True))
    assert not prog.baseline and not imageio.batch_decodable(prog)
    cmyk = imageio.jpeg_header((images / "cmyk.jpg").read_bytes())
    assert cmyk.components == 4 and not imageio.batch_decodable(cmyk)
    rotated = imageio.jpeg_header((images / "rotated.jpg").read_bytes())
    assert rotated.orientation == 6 and not imageio.batch_decodable(rotated)
    truncated = imageio.jpeg_header((images / "truncated.jpg").read_bytes())
    assert truncated is not None and not truncated.complete
    assert not imageio.batch_decodable(truncated)
    huge = imageio.jpeg_header(_with_sof_size(_jpeg(rgb), 40000, 40000))
    assert (huge.height, huge.width) == (40000, 40000) and not imageio.batch_decodable(huge)
    jpegs = images / "jpegs"
    two = imageio.jpeg_header((jpegs / "two_exif.jpg").read_bytes())
    assert two.orientation == 6 and not imageio.batch_decodable(two)  # the first block counts
    xmp = imageio.jpeg_header((jpegs / "xmp_rotated.jpg").read_bytes())
    assert xmp.xmp_rotated and not imageio.batch_decodable(xmp)
    late = imageio.jpeg_header((jpegs / "exif_after_frame.jpg").read_bytes())
    assert late.orientation == 8 and not imageio.batch_decodable(late)
    ids = imageio.jpeg_header((jpegs / "rgb_ids.jpg").read_bytes())
    assert ids.component_ids == (82, 71, 66) and not imageio.batch_decodable(ids)
    assert imageio.jpeg_header(_jpeg(rgb)).component_ids == (1, 2, 3)
    upright = imageio.jpeg_header(_insert(_jpeg(rgb), b"\xff\xdb", _xmp(1) + _exif(1)))
    assert imageio.batch_decodable(upright)
    for not_jpeg in (b"", b"\xff\xd8", (images / "gray.png").read_bytes(), b"\xff\xd8\xff\x00"):
        assert imageio.jpeg_header(not_jpeg) is None
    # A segment length running past the end of the file: malformed, not an exception.
    assert imageio.jpeg_header(b"\xff\xd8\xff\xe0\x40\x00JFIF") is None


def test_bytes_workers_route_each_kind(images):
    paths = [str(images / n) for n in ("rgb.jpg", "rotated.jpg", "gray.png", "empty.png",
                                       "tiny.png", "jpegs/huge.jpg")]  # fmt: skip
    ds = decoding.BytesImages(paths, 32, dense=False, min_size=32)
    items = [ds[i] for i in range(len(paths))]
    assert items[0][1][0] == "jpeg" and items[0][1][2:] == (40, 48)
    assert bytes(items[0][1][1].numpy()) == Path(paths[0]).read_bytes()
    assert items[1][1][0] == "pixels" and items[1][1][1].shape == (3, 32, 32)
    assert items[2][1][0] == "pixels"
    ref = decoding.Images(paths, 32, dense=False, min_size=32)
    for k in (3, 4, 5):  # skipped with the CPU path's reasons
        assert items[k][1] is None and items[k][2] == ref[k][2] != ""
    # A JPEG too small is refused from its header, before anything is decoded.
    small = decoding.BytesImages([paths[0]], 32, dense=False, min_size=41)[0]
    assert small[1] is None and small[2] == "too small: 48x40, needs at least 41"


def test_decoder_fallbacks(images, only_backend):
    """A JPEG the batched decoder rejects is decoded by Pillow; a file Pillow cannot decode
    either is skipped with Pillow's reason; the rest of the batch is unaffected."""
    good = [images / "rgb.jpg", images / "jpegs" / "baseline0.jpg", images / "jpegs" / "gray.jpg"]
    png = (images / "jpegs" / "png_named.jpg").read_bytes()

    def item(data: bytes, h: int, w: int):
        return ("jpeg", torch.frombuffer(bytearray(data), dtype=torch.uint8), h, w)

    batch = [(0, item(good[0].read_bytes(), 40, 48), ""),
             (1, item(png, 34, 40), ""),  # a PNG the header check let through: rejected
             (2, item(b"\xff\xd8\xff garbage", 10, 10), ""),
             (3, None, "unreadable image: from the worker"),
             (4, item(good[1].read_bytes(), 37, 53), ""),
             (5, item(good[2].read_bytes(), 45, 39), "")]  # fmt: skip
    calls = []
    decoder = decoding.JpegBatchDecoder(torch.device("cpu"), 32, dense=False, min_size=32)
    real = decoder._decode
    decoder._decode = lambda datas, device: calls.append(len(datas)) or real(datas, device)
    out = decoder(batch)
    assert calls[0] == 5 and calls[1:] == [1] * 5  # the batch failed: image by image
    assert [i for i, _, _ in out] == [0, 1, 2, 3, 4, 5]
    expected = {i: decoding.prepare(imageio.load_rgb(p), 32, False, 32)
                for i, p in zip((0, 4, 5), good, strict=True)}  # fmt: skip
    expected[1] = decoding.prepare(imageio.decode_rgb(png), 32, False, 32)
    for i, t in expected.items():
        assert torch.equal(out[i][1], t), i
    assert out[2][1] is None and out[2][2].startswith("not an image")
    assert out[3] == (3, None, "unreadable image: from the worker")
    assert decoder.counts == {"batched": 3, "workers": 0, "fallback": 2}
    # A decoded size other than the header's: Pillow decides.
    wrong = [(0, item(good[0].read_bytes(), 41, 48), "")]
    assert torch.equal(decoder(wrong)[0][1], expected[0])
    assert decoder.counts["fallback"] == 3


def test_decoder_splits_calls_by_pixels(images, monkeypatch, only_backend):
    monkeypatch.setattr(decoding, "DECODE_CALL_PIXELS", 40 * 48 * 2)
    data = (images / "rgb.jpg").read_bytes()
    batch = [(i, ("jpeg", torch.frombuffer(bytearray(data), dtype=torch.uint8), 40, 48), "")
             for i in range(5)]  # fmt: skip
    decoder = decoding.JpegBatchDecoder(torch.device("cpu"), 32, dense=True, min_size=32)
    calls = []
    real = decoder._decode
    decoder._decode = lambda datas, device: calls.append(len(datas)) or real(datas, device)
    out = decoder(batch)
    assert calls == [2, 2, 1]
    ref = torch.from_numpy(imageio.load_rgb(images / "rgb.jpg")).permute(2, 0, 1)
    assert all(torch.equal(t, ref) for _, t, _ in out)  # dense: the whole image


def test_resize_center_crop_same_for_array_and_tensor():
    rng = np.random.default_rng(4)
    for h, w in ((37, 53), (64, 33), (224, 224), (20, 300)):
        a = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        t = torch.from_numpy(a).permute(2, 0, 1).contiguous()
        assert torch.equal(imageio.resize_center_crop(a, 32), imageio.resize_center_crop(t, 32))


# ---------------------------------------------------------------------------------------
# Which decoder runs


def test_resolve(monkeypatch):
    cpu = torch.device("cpu")
    assert decoding.resolve("cpu", cpu) is None
    assert decoding.resolve("auto", cpu) is None  # the model on the CPU: Pillow
    with pytest.raises(ValueError, match="--decode gpu: the model runs on cpu"):
        decoding.resolve("gpu", cpu)
    with pytest.raises(ValueError, match="--decode: choose from auto, gpu, cpu; got 'nvjpeg'"):
        decoding.resolve("nvjpeg", cpu)
    assert decoding.resolve("gpu", cpu, decode_device="cpu") == cpu
    # Without TorchCodec: torchvision's decoder.
    def missing():
        raise ImportError("No module named 'torchcodec'")

    def broken():
        return lambda datas, device: [torch.zeros(3, 1, 1, dtype=torch.uint8)]

    monkeypatch.setattr(decoding, "BACKENDS", {"torchcodec": missing,
                                               "torchvision": decoding.BACKENDS["torchvision"]})
    monkeypatch.setattr(decoding, "_PROBED", {})
    assert decoding.backend(cpu)[0] == "torchvision"
    # Neither: auto falls back to Pillow, gpu says why it cannot.
    monkeypatch.setattr(decoding, "BACKENDS", {"torchcodec": missing, "torchvision": broken})
    monkeypatch.setattr(decoding, "_PROBED", {})
    assert decoding.resolve("auto", cpu, decode_device="cpu") is None
    with pytest.raises(ValueError, match="torchcodec is not installed; torchvision's decoder "
                                         "gives wrong output on cpu"):  # fmt: skip
        decoding.resolve("gpu", cpu, decode_device="cpu")


def test_cli_decode_option(images, tmp_path, capsys):
    base = ["extract", "--model", "vgg11", "--random-init", "--layers", "fc7", "--size", "32",
            "--device", "cpu", "--no-progress", "--workers", "0"]  # fmt: skip
    assert cli.main([*base, "--decode", "gpu", "--out", str(tmp_path / "a"), str(images)]) == 2
    err = capsys.readouterr().err
    assert "--decode gpu: the model runs on cpu" in err and "use --decode cpu" in err
    assert not (tmp_path / "a").exists()  # refused before anything was written
    with pytest.raises(SystemExit):
        cli.main([*base, "--decode", "nvjpeg", "--out", str(tmp_path / "b"), str(images)])
    assert cli.main([*base, "--out", str(tmp_path / "c"), str(images / "rgb.jpg")]) == 0
    out = capsys.readouterr().out
    assert "decoder: cpu (Pillow in the main process" in out and "bounded by" in out
    with pytest.raises(SystemExit):
        cli.main(["extract", "--help"])
    assert "--decode {auto,gpu,cpu}" in capsys.readouterr().out


def test_bench_extract_on_cpu(tmp_path):
    """The benchmark's sections that run without a GPU, on a few images."""
    result = tmp_path / "r.json"
    assert bench_extract.main(["--images", "6", "--batch", "2", "--workers", "0",
                               "--compare-images", "2",
                               "--sections", "cpu-decode,read,batched-decode,compare,model",
                               "--out", str(result)]) == 0  # fmt: skip
    import json

    r = json.loads(result.read_text())
    assert r["cpu-decode"] > 0 and r["read"] > 0 and r["batched-decode"]["images_per_s"] > 0
    assert r["compare"]["pixels_max_abs_diff"] == 0  # libjpeg-turbo on both sides
    if not torch.cuda.is_available():
        assert r["model"] == "not measured: needs a GPU"


# ---------------------------------------------------------------------------------------
# On a GPU: nvJPEG against Pillow


@gpu
def test_gpu_decoder_against_pillow(tmp_path):
    """nvJPEG's pixels and fc7 features against Pillow's on photo-like JPEGs: they differ by
    the decoders' rounding (IDCT, chroma upsampling) only."""
    _needs_gpu_decoder()
    (tmp_path / "j").mkdir()
    paths = bench_extract.make_jpegs(tmp_path / "j", 12, size=(187, 250))
    r = bench_extract.compare_decoders(paths, torch.device("cuda"), batch=5)
    assert r["pixels_mean_abs_diff"] < 1.5 and r["crop224_mean_abs_diff"] < 1.5, r
    assert r["pixels_max_abs_diff"] <= 64, r
    assert r["fc7_relative_error_max"] < 0.02, r


@gpu
def test_gpu_extraction_matches_cpu_decoding(images, cpu_run, tmp_path):
    _needs_gpu_decoder()
    index_cpu, feats_cpu = _load(cpu_run[1])
    res = _run(images, tmp_path / "g", decode="gpu", device="cuda")
    assert res.decoder.startswith("gpu (") and "JPEG decoder on cuda" in res.decoder
    index, feats = _load(tmp_path / "g")
    assert index == index_cpu  # the same fallbacks and reasons through the GPU path
    for name in LAYERS:  # nvJPEG's rounding, random weights, CUDA against CPU kernels
        a, b = feats[name], feats_cpu[name]
        rel = np.linalg.norm(a - b) / np.linalg.norm(b)
        assert rel < 0.03, (name, rel)
    auto = _run(images, tmp_path / "auto", decode="auto", device="cuda", batch_size=3)
    assert auto.decoder.startswith("gpu")
    index_auto, _ = _load(tmp_path / "auto")
    assert index_auto == index_cpu


@gpu
def test_gpu_overlapped_pipeline_equals_synchronous(only_backend, tmp_path, monkeypatch):
    """Twenty batches of full-size JPEGs through the overlapped pipeline (side stream,
    decoding batch i + 1 while the model runs batch i) and again with everything on one
    stream and the device synchronised around each batch: bit-identical features."""
    _needs_gpu_decoder()
    (tmp_path / "j").mkdir()
    bench_extract.make_jpegs(tmp_path / "j", 160)
    kw = dict(layers=["pool5", "fc7"], size=64, batch_size=8, device="cuda", decode="gpu",
              shard_size=40, workers=2)  # fmt: skip
    overlapped = _run(tmp_path / "j", tmp_path / "a", **kw)
    assert overlapped.decoder.startswith(f"gpu ({only_backend}'s")
    real_init, real_call = decoding.JpegBatchDecoder.__init__, decoding.JpegBatchDecoder.__call__

    def init(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        self.stream = None

    def call(self, batch):
        torch.cuda.synchronize()
        out = real_call(self, batch)
        torch.cuda.synchronize()
        return out

    monkeypatch.setattr(decoding.JpegBatchDecoder, "__init__", init)
    monkeypatch.setattr(decoding.JpegBatchDecoder, "__call__", call)
    _run(tmp_path / "j", tmp_path / "b", **kw)
    for name in ("pool5", "fc7"):
        a, b = (np.load(tmp_path / d / f"{name}.npy") for d in "ab")
        assert a.shape[0] == 160
        np.testing.assert_array_equal(a, b, err_msg=name)
