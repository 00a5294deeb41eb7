"""Tests for sharpen.py (to be merged into test_sharpen.py). CPU-only and offline; CUDA skips."""

import ast
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import sharpen as S

torch.set_num_threads(2)
HERE = Path(__file__).resolve().parent
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
ndimage = pytest.importorskip("scipy.ndimage")  # installed with scikit-image


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def randomize(model, std=0.05, seed=0):
    """Random weights everywhere (the U-Net's last conv starts at zero)."""
    g = gen(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return model


# ---------------------------------------------------------------------------------- vendoring


def test_imports_only_torch_numpy_pillow_and_stdlib():
    tree = ast.parse((HERE / "sharpen.py").read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            names.add(node.module.split(".")[0])
    third_party = names - set(sys.stdlib_module_names) - {"__future__"}
    assert third_party == {"torch", "numpy", "PIL"}


def test_vendorable_alone(tmp_path):
    (tmp_path / "sharpen.py").write_text((HERE / "sharpen.py").read_text())
    code = (
        "import sys, torch, sharpen\n"
        "m = sharpen.student()\n"
        "y = m(torch.rand(1, 3, 9, 11))\n"
        "assert 'kd' not in sys.modules and 'metrics' not in sys.modules\n"
        "print(sharpen.__file__, tuple(y.shape))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    r = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr
    assert str(tmp_path) in r.stdout and "(1, 3, 9, 11)" in r.stdout


# ---------------------------------------------------------------------------------- kernels


def test_gaussian_kernel_hand_values():
    k = S.gaussian_kernel(1.0, truncate=2.0, dtype=torch.float64)
    w = np.exp(-0.5 * np.arange(-2, 3) ** 2)
    np.testing.assert_allclose(k.numpy(), w / w.sum(), rtol=0, atol=1e-15)
    assert S.gaussian_kernel(1.5).shape == (13,)  # radius int(4 * 1.5 + 0.5) = 6
    assert S.gaussian_kernel(0.1).tolist() == [1.0]


@pytest.mark.parametrize(
    "make",
    [
        lambda: S.gaussian_kernel(2.3)[:, None] * S.gaussian_kernel(2.3)[None],
        lambda: S.motion_kernel(7.3, 33.0),
        lambda: S.motion_kernel(0.4, -90.0),
        lambda: S.random_motion_kernel(5, generator=gen(1)),
        lambda: S.random_motion_kernel(31, generator=gen(2)),
        lambda: S.disk_kernel(0.3),
        lambda: S.disk_kernel(3.7),
    ],
)
def test_kernels_nonnegative_normalized_odd_square(make):
    k = make()
    assert k.ndim == 2 and k.shape[0] == k.shape[1] and k.shape[0] % 2 == 1
    assert k.dtype == torch.float32 and (k >= 0).all()
    assert math.isclose(k.sum().item(), 1.0, abs_tol=1e-5)


def test_motion_kernel_horizontal_line_is_centred():
    k = S.motion_kernel(4.0, 0.0, dtype=torch.float64)
    assert k.shape == (7, 7)
    assert torch.allclose(k[3], k.sum(0)) and (k[3, 1:6] > 0).all()  # only the middle row
    assert torch.allclose(k, k.flip(1))  # symmetric about the centre


def test_disk_kernel_hand_values():
    k = S.disk_kernel(1.0, dtype=torch.float64)  # weights clamp(1.5 - d, 0, 1)
    w = np.array([[0.0, 0.5, 0.0], [0.5, 1.0, 0.5], [0.0, 0.5, 0.0]])
    w[0, 0] = w[0, 2] = w[2, 0] = w[2, 2] = 1.5 - math.sqrt(2)
    np.testing.assert_allclose(k.numpy(), w / w.sum(), atol=1e-15)


def test_random_motion_kernel_deterministic():
    a = S.random_motion_kernel(15, generator=gen(3))
    assert torch.equal(a, S.random_motion_kernel(15, generator=gen(3)))
    assert not torch.equal(a, S.random_motion_kernel(15, generator=gen(4)))


def test_kernel_device_and_dtype():
    k = S.disk_kernel(2.0, device="cpu", dtype=torch.float64)
    assert k.dtype == torch.float64 and k.device.type == "cpu"


# ---------------------------------------------------------------------------------- blurs


@pytest.mark.parametrize("sigma", [0.5, 1.5, 3.0])
@pytest.mark.parametrize("truncate", [4.0, 2.5])
def test_gaussian_blur_matches_scipy_mirror(sigma, truncate):
    x = torch.rand(2, 3, 20, 25, dtype=torch.float64, generator=gen())
    ref = ndimage.gaussian_filter(x.numpy(), (0, 0, sigma, sigma), mode="mirror", truncate=truncate)
    out = S.gaussian_blur(x, sigma, truncate=truncate)
    np.testing.assert_allclose(out.numpy(), ref, rtol=0, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(3, 16, 16), (1, 1, 9, 31), (5, 2, 24, 17)])
def test_gaussian_blur_shape_dtype_single(dtype, shape):
    x = torch.rand(shape, dtype=dtype, generator=gen())
    y = S.gaussian_blur(x, 1.5)
    assert y.shape == x.shape and y.dtype == dtype
    axes = (0,) * (x.ndim - 2) + (1.5, 1.5)
    ref = ndimage.gaussian_filter(x.double().numpy(), axes, mode="mirror")
    tol = 1e-6 if dtype == torch.float32 else 1e-12
    np.testing.assert_allclose(y.double().numpy(), ref, rtol=0, atol=tol)


def test_gaussian_blur_per_image_sigma_equals_separate_calls():
    x = torch.rand(3, 3, 24, 20, generator=gen())
    sig = torch.tensor([0.6, 1.5, 2.7])
    y = S.gaussian_blur(x, sig)
    for i in range(3):
        torch.testing.assert_close(y[i], S.gaussian_blur(x[i], sig[i].item()), rtol=0, atol=1e-6)


def test_gaussian_blur_gradcheck():
    x = torch.rand(1, 2, 6, 7, dtype=torch.float64, generator=gen(), requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: S.gaussian_blur(t, 0.8), (x,))
    k = S.disk_kernel(1.2, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda t: S.blur(t, k), (x,))


def test_blur_is_true_convolution_like_scipy():
    x = torch.rand(2, 3, 15, 13, dtype=torch.float64, generator=gen())
    k = S.random_motion_kernel(7, generator=gen(5), dtype=torch.float64)
    ref = ndimage.convolve(x.numpy(), k.numpy()[None, None], mode="mirror")
    np.testing.assert_allclose(S.blur(x, k).numpy(), ref, atol=1e-12)


def test_blur_per_image_kernels_equal_separate_calls_and_delta_is_identity():
    x = torch.rand(3, 3, 16, 18, generator=gen())
    line = S.motion_kernel(3.0, 45.0)[2:-2, 2:-2]
    ks = torch.stack([S.disk_kernel(1.0), line, torch.zeros(3, 3)])
    ks[2, 1, 1] = 1
    y = S.blur(x, ks)
    for i in range(3):
        torch.testing.assert_close(y[i], S.blur(x[i], ks[i]))
    torch.testing.assert_close(y[2], x[2])


def test_resample_blur_shape_and_constant():
    x = torch.full((2, 3, 31, 40), 0.25)
    for mode in ("bilinear", "bicubic"):
        y = S.resample_blur(x, 2.7, mode=mode)
        assert y.shape == x.shape
        torch.testing.assert_close(y, x)
    z = torch.rand(3, 32, 32, generator=gen())
    assert S.resample_blur(z, 2.0).shape == z.shape
    assert (S.resample_blur(z, 2.0) - z).abs().mean() > 0.05  # it does blur


def test_add_noise_deterministic_unclamped_statistics():
    x = torch.zeros(4, 3, 64, 64)
    a = S.add_noise(x, 0.1, generator=gen(7))
    assert torch.equal(a, S.add_noise(x, 0.1, generator=gen(7)))
    assert abs(a.std().item() - 0.1) < 0.005 and a.min() < 0  # not clamped
    assert torch.equal(S.add_noise(x, 0.0, generator=gen()), x)


def test_degrade_preset_is_paper_protocol():
    x = torch.rand(2, 3, 32, 32, generator=gen())
    assert torch.equal(S.degrade(x), S.gaussian_blur(x, 1.5))
    noisy = S.degrade(x, noise=0.02, generator=gen(1))
    expect = S.add_noise(S.gaussian_blur(x, 1.5), 0.02, generator=gen(1))
    assert torch.equal(noisy, expect)


@pytest.mark.parametrize("kind", ["motion", "mixed"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_degrade_random_kinds_deterministic(kind, dtype):
    x = torch.rand(8, 3, 40, 40, generator=gen(), dtype=dtype)
    a = S.degrade(x, kind=kind, noise=0.01, generator=gen(11))
    assert a.shape == x.shape and a.dtype == dtype and torch.isfinite(a).all()
    assert torch.equal(a, S.degrade(x, kind=kind, noise=0.01, generator=gen(11)))
    assert not torch.equal(a, S.degrade(x, kind=kind, noise=0.01, generator=gen(12)))
    assert S.degrade(x[0], kind=kind, generator=gen()).shape == x[0].shape


# ---------------------------------------------------------------------------------- dead leaves


def test_dead_leaves_shape_range_determinism():
    a = S.dead_leaves(4, 48, generator=gen(0))
    assert a.shape == (4, 3, 48, 48) and a.dtype == torch.float32
    assert a.min() >= 0 and a.max() <= 1
    assert torch.equal(a, S.dead_leaves(4, 48, generator=gen(0)))
    assert not torch.equal(a, S.dead_leaves(4, 48, generator=gen(1)))
    assert not torch.equal(a[0], a[1])
    # Many distinct leaves per image, with large uniform areas (occluding disks).
    colours = a[0].flatten(1).T.unique(dim=0)
    assert 20 < len(colours) < 48 * 48 / 4
    assert S.dead_leaves(1, 16, dtype=torch.float64).dtype == torch.float64
    half = S.dead_leaves(4, 48, contrast=0.5, generator=gen(0))
    torch.testing.assert_close(half, 0.5 + 0.5 * (a - 0.5))


# ---------------------------------------------------------------------------------- models

TINY = dict(width=4, depth=3, blocks=1)
MODELS = {
    "unet_tiny": lambda: S.unet(**TINY),
    "unet_depth1": lambda: S.unet(width=4, depth=1, blocks=0),
    "teacher": S.teacher,
    "student": S.student,
    "paper_teacher": S.paper_teacher,
    "paper_student": S.paper_student,
}


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("hw", [(17, 23), (8, 8), (1, 5)])
def test_model_output_shapes_any_size(name, hw):
    model = MODELS[name]().eval()
    with torch.no_grad():
        y = model(torch.rand(2, 3, *hw, generator=gen()))
    assert y.shape == (2, 3, *hw) and torch.isfinite(y).all()


def test_untrained_unet_is_identity():
    x = torch.rand(1, 3, 13, 10, generator=gen())
    assert torch.equal(S.unet(**TINY)(x), x)


def test_features_of_teacher_and_student_match_in_number_and_size():
    x = torch.rand(1, 3, 17, 23, generator=gen())
    t, s = S.teacher(), S.student()
    with torch.no_grad():
        yt, ft = t(x, return_features=True)
        ys, fs = s(x, return_features=True)
    assert torch.equal(yt, t(x)) and len(ft) == len(fs) == 5
    sizes = [(17, 23), (9, 12), (5, 6), (9, 12), (17, 23)]
    assert [tuple(f.shape[-2:]) for f in ft] == [tuple(f.shape[-2:]) for f in fs] == sizes
    assert [f.shape[1] for f in ft] == [32, 64, 128, 64, 32]
    assert [f.shape[1] for f in fs] == [16, 32, 64, 32, 16]


def test_paper_features():
    x = torch.rand(1, 3, 17, 23, generator=gen())
    for make in (S.paper_teacher, S.paper_student):
        y, f = make()(x, return_features=True)
        assert [tuple(t.shape[1:]) for t in f] == [(64, 17, 23), (128, 9, 12), (128, 9, 12)]
        assert y.min() >= 0 and y.max() <= 1  # sigmoid


def test_params_and_macs():
    assert S.count_params(S.teacher()) == 1_094_915
    assert S.count_params(S.student()) <= 0.25 * S.count_params(S.teacher())
    assert S.count_params(S.paper_teacher()) == 1_290_883
    assert S.count_params(S.paper_student()) == 700_547
    # head conv3x3 3->4 and tail 4->3 at 8x8: 64 * (27 * 4 + 36 * 3)
    assert S.count_macs(S.unet(width=4, depth=1, blocks=0), 8, 8) == 13824
    # conv 3->64 (64*27 per px, 4x4) + down 64->128 (128*576, 2x2) + tconv (4 in px * 64*4)
    # + conv 64->3 (3*576, 4x4)
    m = S.paper_student(blocks=0)
    assert S.count_macs(m, 4, 4) == 16 * 64 * 27 + 4 * 128 * 576 + 4 * 128 * 64 * 4 + 16 * 3 * 576
    assert not any(m._forward_hooks for m in m.modules())  # hooks removed


@pytest.mark.parametrize("name", ["unet_tiny", "paper_student"])
def test_save_load_round_trip_bit_identical(tmp_path, name):
    model = randomize(MODELS[name]())
    path = tmp_path / "m.pt"
    S.save_model(path, model)
    loaded = S.load_model(path)
    assert not loaded.training and loaded.config == model.config
    x = torch.rand(1, 3, 19, 21, generator=gen())
    with torch.no_grad():
        assert torch.equal(loaded(x), model.eval()(x))
    assert os.listdir(tmp_path) == ["m.pt"]  # no temporary file left


def test_load_model_resolves_preset_overrides(tmp_path):
    S.save_model(tmp_path / "s.pt", S.student(width=8))
    m = S.load_model(tmp_path / "s.pt")
    assert m.config == {"factory": "unet", "kwargs": {**S.student().config["kwargs"], "width": 8}}


@pytest.mark.parametrize("name", ["unet_tiny", "paper_student"])
def test_export_dynamic_height_width(name):
    from torch.export import Dim

    model = randomize(MODELS[name]()).eval()
    m = model.multiple
    dims = {"x": {0: Dim("b", max=8), 2: m * Dim("h", max=256), 3: m * Dim("w", max=256)}}
    ep = torch.export.export(model, (torch.rand(2, 3, 5 * m, 7 * m),), dynamic_shapes=dims)
    x = torch.rand(3, 3, 3 * m, 9 * m, generator=gen())
    with torch.no_grad():
        torch.testing.assert_close(ep.module()(x), model(x), rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------------- sharpen


def test_sharpen_tiled_equals_untiled():
    # depth 2, one block: receptive-field radius 12 px = (32 - 32 // 4) // 2, the unused margin.
    model = randomize(S.unet(width=4, depth=2, blocks=1), std=0.1)
    model.train()
    x = torch.rand(2, 3, 100, 130, generator=gen())
    with torch.no_grad():
        ref = model(x).clamp(0, 1)
    y = S.sharpen(model, x, tile=64, overlap=32)
    assert model.training  # mode restored
    torch.testing.assert_close(y, ref, rtol=0, atol=1e-4)
    single = S.sharpen(model, x[1], tile=64, overlap=32)
    torch.testing.assert_close(single, ref[1], rtol=0, atol=1e-4)
    torch.testing.assert_close(S.sharpen(model, x, tile=512), ref, rtol=0, atol=0)  # one tile


@pytest.mark.parametrize(
    "length,tile,overlap,align",
    [(100, 64, 32, 2), (1000, 512, 128, 4), (37, 10, 0, 1), (65, 16, 8, 8), (20, 64, 16, 4)],
)
def test_tile_weights_cover_and_sum_to_one(length, tile, overlap, align):
    total = torch.zeros(length, dtype=torch.float64)
    for s, e, w in S._tiles(length, tile, overlap, align):
        assert s % align == 0 and e - s >= min(tile, length) and (w >= 0).all()
        total[s:e] += w
    torch.testing.assert_close(total, torch.ones(length, dtype=torch.float64))


def test_sharpen_clamps_and_keeps_dtype():
    model = randomize(S.unet(**TINY), std=0.5)
    x = torch.rand(3, 20, 20, dtype=torch.float64, generator=gen())
    y = S.sharpen(model, x, tile=16, overlap=4)
    assert y.dtype == torch.float64 and y.min() >= 0 and y.max() <= 1


# ---------------------------------------------------------------------------------- image files


def _img(mode, size=(6, 4)):
    arr = np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(arr).convert(mode)


@pytest.mark.parametrize("mode", ["RGB", "L", "1", "P", "CMYK", "YCbCr"])
def test_load_image_modes(tmp_path, mode):
    im = _img(mode)
    path = tmp_path / ("x.tif" if mode in ("CMYK", "YCbCr") else "x.png")
    if mode == "YCbCr":
        path = tmp_path / "x.jpg"
    im.save(path)
    x = S.load_image(path)
    assert x.shape == (3, 4, 6) and x.dtype == torch.float32 and 0 <= x.min() <= x.max() <= 1
    if mode in ("RGB", "L", "P"):
        ref = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255
        np.testing.assert_array_equal(x.permute(1, 2, 0).numpy(), ref)


def test_load_image_alpha_composited_over_white(tmp_path):
    arr = np.zeros((2, 3, 4), dtype=np.uint8)
    arr[0, 0] = [255, 0, 0, 255]  # opaque red
    arr[0, 1] = [0, 0, 0, 0]  # transparent black -> white
    arr[0, 2] = [0, 0, 0, 128]  # half-transparent black -> grey
    Image.fromarray(arr, "RGBA").save(tmp_path / "a.png")
    x = S.load_image(tmp_path / "a.png")
    assert x[:, 0, 0].tolist() == [1.0, 0.0, 0.0] and x[:, 0, 1].tolist() == [1.0, 1.0, 1.0]
    assert abs(x[0, 0, 2].item() - 127 / 255) < 1.5 / 255
    Image.fromarray(arr, "RGBA").convert("LA").save(tmp_path / "la.png")
    assert S.load_image(tmp_path / "la.png")[:, 0, 1].tolist() == [1.0, 1.0, 1.0]
    p = Image.fromarray(arr[..., :3], "RGB").convert("P")
    p.info["transparency"] = p.getpixel((1, 0))
    p.save(tmp_path / "p.png", transparency=p.getpixel((1, 0)))
    assert S.load_image(tmp_path / "p.png")[:, 0, 1].tolist() == [1.0, 1.0, 1.0]


@pytest.mark.parametrize("mode", ["I;16", "I"])
def test_load_image_16_bit(tmp_path, mode):
    arr = np.array([[0, 32768, 65535]], dtype=np.uint16 if mode == "I;16" else np.int32)
    Image.fromarray(arr).save(tmp_path / "d.png" if mode == "I;16" else tmp_path / "d.tif")
    x = S.load_image(tmp_path / ("d.png" if mode == "I;16" else "d.tif"))
    assert x.shape == (3, 1, 3)
    np.testing.assert_allclose(x[0].numpy(), [[0, 32768 / 65535, 1]], atol=1e-7)
    assert torch.equal(x[0], x[2])


def test_load_image_exif_orientation(tmp_path):
    arr = np.zeros((4, 6, 3), dtype=np.uint8)
    arr[0, 0] = 255  # white top-left pixel
    im = Image.fromarray(arr)
    exif = im.getexif()
    exif[0x0112] = 6  # stored rotated: display needs 90 degrees clockwise
    im.save(tmp_path / "e.png", exif=exif)
    x = S.load_image(tmp_path / "e.png")
    assert x.shape == (3, 6, 4) and x[:, 0, 3].tolist() == [1.0, 1.0, 1.0]


@pytest.mark.parametrize("shape", [(3, 5, 7), (1, 5, 7), (5, 7), (3, 7)])
def test_save_image_round_trip(tmp_path, shape):
    x = torch.randint(0, 256, shape, generator=gen()).float() / 255
    S.save_image(x, tmp_path / "o.png")
    y = S.load_image(tmp_path / "o.png")
    torch.testing.assert_close(y, x.expand(3, *shape[-2:]))
    S.save_image(x, tmp_path / "o.jpg")  # JPEG from the suffix
    assert Image.open(tmp_path / "o.jpg").format == "JPEG"
    assert sorted(os.listdir(tmp_path)) == ["o.jpg", "o.png"]


# ---------------------------------------------------------------------------------- CLI


@pytest.fixture
def tiny_model_file(tmp_path):
    path = tmp_path / "m.pt"
    S.save_model(path, randomize(S.unet(width=4, depth=2, blocks=1), std=0.02))
    return path


def test_cli_subprocess_on_real_image(tmp_path, tiny_model_file):
    data = pytest.importorskip("skimage.data")
    Image.fromarray(data.astronaut()[100:140, 180:228]).save(tmp_path / "photo.png")
    (tmp_path / "broken.png").write_bytes(b"not an image")
    cmd = [sys.executable, str(HERE / "sharpen.py"), str(tmp_path / "photo.png"),
           str(tmp_path / "broken.png"), "--weights", str(tiny_model_file),
           "-o", str(tmp_path / "out"), "--tile", "32", "--overlap", "8"]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 1 and "broken.png" in r.stderr
    out = S.load_image(tmp_path / "out" / "photo_sharp.png")
    assert out.shape == (3, 40, 48)
    assert (out - S.load_image(tmp_path / "photo.png")).abs().max() > 0


def test_cli_in_process(tmp_path, tiny_model_file, capsys):
    a = torch.rand(3, 12, 14, generator=gen())
    S.save_image(a, tmp_path / "a.png")
    S.save_image(a, tmp_path / "a_sharp.png")  # output of a.png would overwrite this input
    before = (tmp_path / "a_sharp.png").read_bytes()
    rc = S.main([str(tmp_path / "a.png"), str(tmp_path / "a_sharp.png"), "--weights",
                 str(tiny_model_file)])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 1 and "would overwrite" in err
    assert (tmp_path / "a_sharp.png").read_bytes() == before
    assert (tmp_path / "a_sharp_sharp.png").exists()
    assert S.main([str(tmp_path / "a.png"), "--weights", str(tiny_model_file), "-o",
                   str(tmp_path / "o")]) == 0  # fmt: skip
    assert S.load_image(tmp_path / "o" / "a_sharp.png").shape == (3, 12, 14)


@pytest.mark.skipif(torch.cuda.is_available(), reason="tests the no-CUDA message")
def test_cli_cuda_unavailable(tmp_path, tiny_model_file, capsys):
    assert S.main(["x.png", "--weights", str(tiny_model_file), "--device", "cuda"]) == 2
    assert "CUDA is not available" in capsys.readouterr().err


def test_numpy_scalars_are_numbers():
    assert S.gaussian_kernel(np.float32(1.5), truncate=np.float64(2.0)).shape == (7,)
    assert S.random_motion_kernel(np.int64(7), generator=gen()).shape == (7, 7)


def test_cli_without_weights_and_help(tmp_path, capsys):
    assert S.main([str(tmp_path / "x.png")]) == 2
    assert "python kd.py" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        S.main(["--help"])
    assert e.value.code == 0 and "--weights" in capsys.readouterr().out
    assert S.main(["x.png", "--weights", str(tmp_path / "missing.pt")]) == 2
    assert "missing.pt" in capsys.readouterr().err


# ---------------------------------------------------------------------------------- bad inputs

X = torch.rand(2, 3, 16, 16, generator=gen())


@pytest.mark.parametrize(
    "call,error,match",
    [
        (lambda: S.gaussian_kernel(0.0), ValueError, "sigma must be finite and > 0, got 0.0"),
        (lambda: S.gaussian_kernel(-1.0), ValueError, "sigma"),
        (lambda: S.gaussian_kernel(float("nan")), ValueError, "sigma"),
        (lambda: S.gaussian_kernel("1"), TypeError, "sigma must be a number"),
        (lambda: S.gaussian_kernel(True), TypeError, "sigma must be a number"),
        (lambda: S.gaussian_kernel(1.0, truncate=0), ValueError, "truncate"),
        (lambda: S.gaussian_blur(X[0, 0], 1.0), ValueError, r"\(B, C, H, W\).*\(16, 16\)"),
        (lambda: S.gaussian_blur(X.long(), 1.0), TypeError, "floating-point.*int64"),
        (lambda: S.gaussian_blur(X.numpy(), 1.0), TypeError, "torch.Tensor"),
        (lambda: S.gaussian_blur(X[:, :, :0], 1.0), ValueError, "empty"),
        (lambda: S.gaussian_blur(X, -1.5), ValueError, "sigma"),
        (lambda: S.gaussian_blur(X, torch.ones(3)), ValueError, r"\(B,\) = \(2,\).*\(3,\)"),
        (lambda: S.gaussian_blur(X, torch.tensor(1.0)), ValueError, r"must be \(B,\).*got \(\)"),
        (lambda: S.gaussian_blur(X, torch.tensor([1.0, 0.0])), ValueError, r"> 0.*\[1.0, 0.0\]"),
        (lambda: S.gaussian_blur(X, 4.0), ValueError, "radius 16.*H=16, W=16"),
        (lambda: S.resample_blur(X, 1.0), ValueError, "scale must be finite and > 1, got 1.0"),
        (lambda: S.resample_blur(X, 0.0), ValueError, "scale"),
        (lambda: S.resample_blur(X, 2.0, mode="nearest"), ValueError, "mode"),
        (lambda: S.resample_blur(X, 40.0), ValueError, "shrinks a 16x16"),
        (lambda: S.motion_kernel(0.0, 0.0), ValueError, "length"),
        (lambda: S.motion_kernel(3.0, float("inf")), ValueError, "angle"),
        (lambda: S.random_motion_kernel(8), ValueError, "size must be odd, got 8"),
        (lambda: S.random_motion_kernel(3), ValueError, "size must be >= 5, got 3"),
        (lambda: S.random_motion_kernel(7.0), TypeError, "size must be an int"),
        (lambda: S.random_motion_kernel(7, generator=0), TypeError, "generator"),
        (lambda: S.disk_kernel(0.0), ValueError, "radius"),
        (lambda: S.blur(X, torch.ones(3)), ValueError, r"\(kh, kw\) or \(B, kh, kw\).*\(3,\)"),
        (lambda: S.blur(X, torch.ones(1, 1, 3, 3)), ValueError, "kernel must have shape"),
        (lambda: S.blur(X, torch.ones(3, 3, 3)), ValueError, "B=2"),
        (lambda: S.blur(X, torch.ones(4, 3)), ValueError, "odd, got 4x3"),
        (lambda: S.blur(X, torch.ones(33, 33)), ValueError, "too large.*16x16"),
        (lambda: S.blur(X, torch.ones(3, 3, dtype=torch.int64)), TypeError, "kernel"),
        (lambda: S.add_noise(X, -0.1), ValueError, "sigma must be finite and >= 0"),
        (lambda: S.add_noise(X.numpy(), 0.1), TypeError, "img"),
        (lambda: S.degrade(X, kind="box"), ValueError, "kind must be one of.*'box'"),
        (lambda: S.degrade(X, sigma=0.0), ValueError, "sigma"),
        (lambda: S.degrade(X, noise=-1.0), ValueError, "noise"),
        (lambda: S.degrade(X, kind="mixed", generator="seed"), TypeError, "generator"),
        (lambda: S.dead_leaves(0, 16), ValueError, "n must be >= 1, got 0"),
        (lambda: S.dead_leaves(1, 1), ValueError, "size must be >= 2"),
        (lambda: S.dead_leaves(1, 16, r_min=0.3, r_max=0.2), ValueError, "r_min < r_max"),
        (lambda: S.dead_leaves(1, 16, contrast=1.5), ValueError, r"contrast must be in \(0, 1\]"),
        (lambda: S.unet(width=0), ValueError, "width must be >= 1, got 0"),
        (lambda: S.unet(depth=1.5), TypeError, "depth must be an int"),
        (lambda: S.teacher(colour=3), TypeError, "colour"),
        (lambda: S.count_params("model"), TypeError, "nn.Module"),
        (lambda: S.count_macs(S.student(), 0, 8), ValueError, "height must be >= 1"),
        (lambda: S.count_macs("model", 8, 8), TypeError, "model must be an nn.Module, got str"),
        (lambda: S.save_model("m.pt", "model"), TypeError, "model must be an nn.Module"),
        (lambda: S.save_image(torch.full((2, 2), float("nan")), "o.png"), ValueError, "nan"),
        (lambda: S.count_macs(torch.nn.ReLU(), 8, 8), ValueError, "no Conv2d"),
        (lambda: S.sharpen(S.student(), X, tile=32, overlap=32), ValueError, "overlap must be <="),
        (lambda: S.sharpen(S.student(), X, tile=32, overlap=17), ValueError, "tile=32, overlap=17"),
        (lambda: S.sharpen(S.student(), X, tile=16, overlap=-1), ValueError, "overlap must be >="),
        (lambda: S.sharpen(S.student(), X, tile=3, overlap=0), ValueError, "model.multiple = 4"),
        (lambda: S.sharpen(S.student(), X, tile=64.0), TypeError, "tile must be an int"),
        (lambda: S.sharpen(S.student(), X[0, 0]), ValueError, r"got \(16, 16\)"),
        (lambda: S.sharpen(lambda x: x, X), TypeError, "model must be an nn.Module"),
        (lambda: S.sharpen(S.student(), X[:, :2]), ValueError, "2 channels but the model takes 3"),
        (lambda: S.save_model("m.pt", torch.nn.Conv2d(1, 1, 1)), ValueError, "model.config"),
        (lambda: S.save_image(X, "o.png"), ValueError, r"\(3, H, W\).*\(2, 3, 16, 16\)"),
        (lambda: S.save_image(torch.full((2, 2), 1.01), "o.png"), ValueError, "max 1.01"),
        (lambda: S.save_image(torch.full((3, 2, 2), -0.5), "o.png"), ValueError, "got min -0.5,"),
        (lambda: S.save_image(X[0], "o.xyz"), ValueError, "unknown image suffix '.xyz'"),
        (lambda: S.save_image(X[0].long(), "o.png"), TypeError, "floating-point"),
    ],
)
def test_bad_inputs_raise(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_bad_files_raise_naming_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.png"):
        S.load_image(tmp_path / "nope.png")
    (tmp_path / "junk.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(ValueError, match="junk.png: not a readable image"):
        S.load_image(tmp_path / "junk.png")
    Image.new("F", (2, 2)).save(tmp_path / "f.tif")
    with pytest.raises(ValueError, match="f.tif: unsupported image mode 'F'"):
        S.load_image(tmp_path / "f.tif")
    Image.fromarray(np.array([[-1, 70000]], dtype=np.int32)).save(tmp_path / "i.tif")
    with pytest.raises(ValueError, match=r"i.tif: mode I values outside \[0, 65535\]"):
        S.load_image(tmp_path / "i.tif")
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        S.load_model(tmp_path / "nope.pt")
    with pytest.raises(ValueError, match="junk.png: not a readable model file"):
        S.load_model(tmp_path / "junk.png")
    torch.save({"a": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="other.pt: not a sharpen model file"):
        S.load_model(tmp_path / "other.pt")
    torch.save({"factory": "os.system", "kwargs": {}, "state_dict": {}}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="evil.pt: unknown factory 'os.system'"):
        S.load_model(tmp_path / "evil.pt")
    good = S.unet(**TINY)
    torch.save({"factory": "unet", "kwargs": {"width": 8}, "state_dict": good.state_dict()},
               tmp_path / "mismatch.pt")  # fmt: skip
    with pytest.raises(ValueError, match="mismatch.pt: cannot rebuild unet"):
        S.load_model(tmp_path / "mismatch.pt")
    torch.save({"factory": "unet", "kwargs": {"wide": 8}, "state_dict": {}}, tmp_path / "kw.pt")
    with pytest.raises(ValueError, match="kw.pt: cannot rebuild"):
        S.load_model(tmp_path / "kw.pt")


# ---------------------------------------------------------------------------------- CUDA


@CUDA
def test_cuda_matches_cpu():
    x = torch.rand(2, 3, 24, 24, generator=gen())
    torch.testing.assert_close(S.gaussian_blur(x.cuda(), 1.5).cpu(), S.gaussian_blur(x, 1.5))
    sig = torch.tensor([0.8, 2.0])
    torch.testing.assert_close(S.gaussian_blur(x.cuda(), sig.cuda()).cpu(), S.gaussian_blur(x, sig))
    a = S.degrade(x.cuda(), kind="mixed", noise=0.01, generator=gen(3))
    assert a.device.type == "cuda"
    torch.testing.assert_close(a.cpu(), S.degrade(x, kind="mixed", noise=0.01, generator=gen(3)))
    assert S.dead_leaves(2, 32, generator=gen(), device="cuda").device.type == "cuda"
    model = randomize(S.unet(width=4, depth=2, blocks=1), std=0.1).cuda()
    y = S.sharpen(model, x, tile=16, overlap=8)
    assert y.device.type == "cpu" and y.shape == x.shape
