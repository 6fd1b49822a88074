"""The C kernel of the attention's bias and softmax (sam/modeling/native.py) gives torch's numbers, is used
by the ViT and TinyViT encoders, and gives way to torch's ops wherever it cannot be built or run."""

import warnings
from pathlib import Path

import pytest
import torch

import sam.modeling.native as native
from sam.build import SamConfig, TinyViTConfig, ViTConfig, build_sam
from tests.helpers.reference import rel_err

SHAPES = [(1, 512, 64, 64), (54, 196, 14, 14), (3, 7, 5, 3)]  # a global block, a windowed one, odd sizes


def torch_softmax(scores: torch.Tensor, rel_h: torch.Tensor, rel_w: torch.Tensor) -> torch.Tensor:
    s = scores.float().clone()
    s.view(*s.shape[:-1], rel_h.shape[-1], rel_w.shape[-1]).add_(rel_h[..., :, None]).add_(rel_w[..., None, :])
    return s.softmax(-1).to(scores.dtype)


def inputs(shape: tuple[int, int, int, int], dtype: torch.dtype, seed: int = 0):
    g, n, h, w = shape
    gen = torch.Generator().manual_seed(seed)
    scores = (torch.randn(g, n, h * w, generator=gen) * 4).to(dtype)
    return scores, torch.randn(g, n, h, generator=gen) * 2, torch.randn(g, n, w, generator=gen) * 2


@pytest.fixture(scope="module")
def built():
    if not native.enabled():
        pytest.fail("the kernel is meant for Linux on x86-64 with torch's OpenMP threads, where the tests run")
    lib = native.library()
    assert lib is not None, "the C kernel could not be built (is a C compiler installed?)"
    return lib


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_kernel_gives_torchs_softmax(built, shape, dtype):
    scores, rel_h, rel_w = inputs(shape, dtype)
    expected = torch_softmax(scores, rel_h, rel_w)
    out = native.rel_pos_softmax(scores, rel_h, rel_w)
    assert out is scores and out.dtype == dtype  # written over the scores
    if dtype == torch.float32:
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(out.sum(-1), torch.ones(out.shape[:-1]), rtol=0, atol=1e-5)
    else:  # the same fp32 values, rounded to bf16: at most one step of bf16 apart
        torch.testing.assert_close(out.float(), expected.float(), rtol=2**-7, atol=1e-7)
        assert (out != expected).float().mean() < 0.01


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_table_kernel_gives_torchs_softmax(built, dtype):
    gen = torch.Generator().manual_seed(2)
    scores = (torch.randn(10, 5, 49, 49, generator=gen) * 4).to(dtype)  # windows x heads x rows x keys
    bias = torch.randn(5, 49, 49, generator=gen) * 2  # heads x rows x keys, the same for every window
    expected = (scores.float() + bias).softmax(-1).to(dtype)
    out = native.table_softmax(scores, bias)
    assert out is scores
    tol = dict(rtol=1e-5, atol=1e-7) if dtype == torch.float32 else dict(rtol=2**-7, atol=1e-7)
    torch.testing.assert_close(out.float(), expected.float(), **tol)
    assert native.table_softmax(scores, bias[:4]) is None  # a bias that does not fit


def test_kernel_runs_on_the_threads_torch_uses(built):
    scores, rel_h, rel_w = inputs(SHAPES[0], torch.float32, seed=1)
    expected = torch_softmax(scores, rel_h, rel_w)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = native.rel_pos_softmax(scores.clone(), rel_h, rel_w)
    finally:
        torch.set_num_threads(threads)
    torch.testing.assert_close(one, expected, rtol=1e-5, atol=1e-7)


def test_kernel_is_not_used_where_it_cannot_run(built):
    scores, rel_h, rel_w = inputs(SHAPES[2], torch.float32)
    kept = scores.clone()
    cases = [
        (scores.transpose(0, 1), rel_h.transpose(0, 1).contiguous(), rel_w.transpose(0, 1).contiguous()),
        (scores, rel_h.bfloat16(), rel_w),  # the bias must be fp32
        (scores, rel_h[..., :-1], rel_w),  # sizes that do not match
        (scores.double(), rel_h, rel_w),
    ]
    for case in cases:
        assert native.rel_pos_softmax(*case) is None
    with torch.enable_grad():
        assert native.rel_pos_softmax(scores.clone().requires_grad_(), rel_h, rel_w) is None
    assert torch.equal(scores, kept)


def test_switched_off_or_not_built(built, monkeypatch, tmp_path):
    scores, rel_h, rel_w = inputs(SHAPES[2], torch.float32)
    monkeypatch.setattr(native, "USE", False)  # off even after it was built
    assert not native.enabled() and native.library() is None
    assert native.rel_pos_softmax(scores, rel_h, rel_w) is None

    monkeypatch.setattr(native, "USE", True)
    monkeypatch.setattr(native, "_lib", None)
    monkeypatch.setattr(native, "CACHE", tmp_path / "native")  # nothing built there yet
    monkeypatch.setattr(native, "COMPILERS", ("false",))  # a compiler that fails
    with pytest.warns(RuntimeWarning, match="torch's ops run instead"):
        assert native.library() is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said once, not at every call
        assert native.library() is None
    assert not list(tmp_path.rglob("*.so"))
    monkeypatch.setattr(native, "_lib", None)
    monkeypatch.setattr(native, "COMPILERS", ("no-such-compiler",))
    with pytest.warns(RuntimeWarning, match="no C compiler"):
        assert native.library() is None


def test_no_home_folder_means_torchs_ops(monkeypatch):
    def no_home() -> Path:
        raise RuntimeError("Could not determine home directory.")

    monkeypatch.setattr(native, "_lib", None)
    monkeypatch.setattr(native, "CACHE", None)
    monkeypatch.setattr(Path, "home", staticmethod(no_home))
    with pytest.warns(RuntimeWarning, match="home directory"):
        assert native.library() is None


def test_built_once_into_the_cache(monkeypatch, tmp_path):
    monkeypatch.setattr(native, "_lib", None)
    monkeypatch.setattr(native, "CACHE", tmp_path / "native")
    assert native.library() is not None
    built = list(tmp_path.rglob("softmax-*.so"))
    assert len(built) == 1 and not [p for p in built[0].parent.iterdir() if p not in built]  # no leftovers
    monkeypatch.setattr(native, "_lib", None)
    monkeypatch.setattr(native, "COMPILERS", ("false",))  # would fail if it compiled again
    assert native.library() is not None


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("encoder", ["vit", "tiny_vit"])
def test_encoder_same_with_and_without_the_kernel(built, monkeypatch, encoder, dtype):
    torch.manual_seed(0)
    config = ViTConfig(768, 4, 12, (1, 3)) if encoder == "vit" else TinyViTConfig()
    model = build_sam(SamConfig(config, img_size=256)).image_encoder.eval()
    model.set_precision(dtype)
    image = torch.randn(1, 3, 256, 256)
    name = "rel_pos_softmax" if encoder == "vit" else "table_softmax"
    kernel, calls = getattr(native, name), []

    def counted(scores, *bias):
        out = kernel(scores, *bias)
        calls.append((scores.shape[-1], out is not None))
        return out

    monkeypatch.setattr(native, name, counted)
    with torch.no_grad():
        with_kernel = model(image)
        monkeypatch.setattr(native, "_lib", False)
        without = model(image)
    used = {n for n, ran in calls[: len(calls) // 2] if ran}  # the first run's calls, with the kernel
    assert used == ({14 * 14, 16 * 16} if encoder == "vit" else {7 * 7, 14 * 14})  # every attention size
    assert rel_err(with_kernel, without) < (1e-5 if dtype == torch.float32 else 1e-2)


def test_the_space_installs_a_compiler():
    """A Space installs the Debian packages listed in packages.txt: gcc, so the kernel builds there."""
    packages = (Path(__file__).resolve().parents[1] / "packages.txt").read_text().split()
    assert "gcc" in packages
