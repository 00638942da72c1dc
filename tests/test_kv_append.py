"""Fused quantize-and-append kernel: bit-exact against the torch references.

Runs under the Triton interpreter on CPU (small sizes) and on a GPU when one is present (16k tokens).
"""
import pytest
import torch

from conftest import HAS_CUDA, assert_bytes_equal
from sgl_kernel_sm12x import nvfp4, planner
from sgl_kernel_sm12x.kv_append import append_kv

POISON = 0xA5
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def _pool(slots, heads, width, dtype, device):
    if dtype in (torch.bfloat16, torch.float16):
        return torch.full((slots, heads, width), float("nan"), dtype=dtype, device=device)
    return torch.full((slots, heads, width), POISON, dtype=torch.uint8, device=device)


def _kv(tokens, heads, head_dim, dtype, device, strided):
    if strided:  # K and V as views of a fused qkv projection, like SGLang's attention layers
        qkv = torch.randn(tokens, (2 + 2) * heads * head_dim, device=device) * 4
        qkv = qkv.to(dtype)
        k = qkv[:, 2 * heads * head_dim:3 * heads * head_dim].view(tokens, heads, head_dim)
        v = qkv[:, 3 * heads * head_dim:].view(tokens, heads, head_dim)
        return k, v
    scale = torch.exp2(torch.randint(-6, 6, (tokens, heads, 1), device=device).float())
    k = (torch.randn(tokens, heads, head_dim, device=device) * scale).to(dtype)
    v = torch.randn(tokens, heads, head_dim, device=device).to(dtype)
    return k, v


def _check_untouched(pool, loc, fill_nan):
    mask = torch.ones(pool.shape[0], dtype=torch.bool, device=pool.device)
    mask[loc.long()] = False
    rest = pool[mask]
    if fill_nan:
        assert rest.isnan().all(), "append wrote outside out_loc"
    else:
        assert (rest == POISON).all(), "append wrote outside out_loc"


def run_case(kv_dtype, act, head_dim, heads, tokens, device, strided=False, g=(1.0, 1.0)):
    dtype = DTYPES[act]
    k, v = _kv(tokens, heads, head_dim, dtype, device, strided)
    slots = tokens + 7 + tokens // 3
    loc = torch.randperm(slots, device=device)[:tokens]
    if tokens % 2:
        loc = loc.to(torch.int32)
    if kv_dtype == "nvfp4":
        kc, vc = (_pool(slots, heads, head_dim // 2, torch.uint8, device) for _ in range(2))
        ks, vs = (_pool(slots, heads, head_dim // 16, torch.uint8, device) for _ in range(2))
        append_kv(k, v, loc, kc, vc, kv_dtype="nvfp4", k_scale_cache=ks, v_scale_cache=vs,
                  k_scale=g[0], v_scale=g[1])
        for name, src, c, s, gg in (("K", k, kc, ks, g[0]), ("V", v, vc, vs, g[1])):
            rd, rs = nvfp4.quantize_nvfp4(src.cpu(), gg)
            assert_bytes_equal(c[loc.long()], rd, f"{name} data")
            assert_bytes_equal(s[loc.long()], rs, f"{name} scales")
            _check_untouched(c, loc, False)
            _check_untouched(s, loc, False)
    elif kv_dtype == "fp8_e4m3":
        kc, vc = (_pool(slots, heads, head_dim, torch.uint8, device) for _ in range(2))
        append_kv(k, v, loc, kc, vc, kv_dtype="fp8_e4m3", k_scale=g[0], v_scale=g[1])
        for name, src, c, gg in (("K", k, kc, g[0]), ("V", v, vc, g[1])):
            assert_bytes_equal(c[loc.long()], nvfp4.quantize_fp8(src.cpu(), gg), f"{name} fp8")
            _check_untouched(c, loc, False)
    else:
        pdt = DTYPES[kv_dtype]
        kc, vc = (_pool(slots, heads, head_dim, pdt, device) for _ in range(2))
        append_kv(k, v, loc, kc, vc, kv_dtype=kv_dtype)
        for name, src, c in (("K", k, kc), ("V", v, vc)):
            assert_bytes_equal(c[loc.long()], src.to(pdt), f"{name} {kv_dtype}")
            _check_untouched(c, loc, True)


SHAPES = [(1, 1), (3, 17), (8, 64), (16, 5)]   # (heads, tokens)


@pytest.mark.parametrize("head_dim", planner.HEAD_DIMS)
@pytest.mark.parametrize("act", ["bf16", "fp16"])
@pytest.mark.parametrize("heads,tokens", SHAPES)
def test_nvfp4_bit_exact(head_dim, act, heads, tokens, device):
    run_case("nvfp4", act, head_dim, heads, tokens, device, g=(1.0, 1.0))


@pytest.mark.parametrize("head_dim", planner.HEAD_DIMS)
@pytest.mark.parametrize("act", ["bf16", "fp16"])
def test_nvfp4_bit_exact_513_tokens_global_scales(head_dim, act, device):
    run_case("nvfp4", act, head_dim, 2, 513, device, g=(0.37, 2.5))


@pytest.mark.parametrize("head_dim", planner.HEAD_DIMS)
@pytest.mark.parametrize("act", ["bf16", "fp16"])
@pytest.mark.parametrize("heads,tokens", [(1, 1), (4, 33), (16, 9)])
def test_fp8_bit_exact(head_dim, act, heads, tokens, device):
    run_case("fp8_e4m3", act, head_dim, heads, tokens, device, g=(0.05, 1.7))


@pytest.mark.parametrize("act", ["bf16", "fp16"])
@pytest.mark.parametrize("head_dim", planner.HEAD_DIMS)
def test_plain_copy_exact(act, head_dim, device):
    run_case(act, act, head_dim, 3, 21, device)


@pytest.mark.skipif(not HAS_CUDA, reason="the interpreter truncates fp16->bf16 casts; checked on GPU")
def test_plain_copy_casts(device):
    run_case("bf16", "fp16", 128, 4, 100, device)


@pytest.mark.parametrize("kv_dtype", ["nvfp4", "fp8_e4m3", "bf16"])
def test_strided_qkv_views(kv_dtype, device):
    run_case(kv_dtype, "bf16", 128, 4, 19, device, strided=True)


def test_global_scale_as_device_tensor(device):
    k = torch.randn(5, 2, 64, device=device, dtype=torch.bfloat16)
    loc = torch.arange(5, device=device)
    kc, vc = (torch.zeros(8, 2, 32, dtype=torch.uint8, device=device) for _ in range(2))
    ks, vs = (torch.zeros(8, 2, 4, dtype=torch.uint8, device=device) for _ in range(2))
    g = torch.tensor([0.3], device=device)
    append_kv(k, k, loc, kc, vc, kv_dtype="nvfp4", k_scale_cache=ks, v_scale_cache=vs, k_scale=g, v_scale=g[0])
    rd, rs = nvfp4.quantize_nvfp4(k.cpu(), 0.3)
    assert_bytes_equal(kc[:5], rd, "data")
    assert_bytes_equal(vs[:5], rs, "scales")


@pytest.mark.parametrize("scales", ["max", "mse"])
def test_non_finite_block_marks_only_its_scale(scales, device):
    k = torch.randn(6, 2, 128, device=device, dtype=torch.bfloat16)
    v = k.clone()
    k[2, 1, 40] = float("nan")
    v[4, 0, 127] = float("inf")
    loc = torch.arange(6, device=device)
    kc, vc = (torch.zeros(6, 2, 64, dtype=torch.uint8, device=device) for _ in range(2))
    ks, vs = (torch.zeros(6, 2, 8, dtype=torch.uint8, device=device) for _ in range(2))
    append_kv(k, v, loc, kc, vc, kv_dtype="nvfp4", k_scale_cache=ks, v_scale_cache=vs, nvfp4_scales=scales)
    kd = nvfp4.dequantize_nvfp4(kc.cpu(), ks.cpu())
    vd = nvfp4.dequantize_nvfp4(vc.cpu(), vs.cpu())
    assert ks[2, 1, 2].item() == 0x7F and vs[4, 0, 7].item() == 0x7F
    assert kd[2, 1, 32:48].isnan().all() and vd[4, 0, 112:128].isnan().all()
    assert kd.isnan().sum() == 16 and vd.isnan().sum() == 16, "NaN must not leak into other blocks"


# ---------------------------------------------------------------------------------------------- errors

def _args(device, **over):
    k = torch.randn(4, 2, 64, device=device, dtype=torch.bfloat16)
    a = dict(k=k, v=k.clone(), out_loc=torch.arange(4, device=device),
             k_cache=torch.zeros(8, 2, 32, dtype=torch.uint8, device=device),
             v_cache=torch.zeros(8, 2, 32, dtype=torch.uint8, device=device),
             kv_dtype="nvfp4",
             k_scale_cache=torch.zeros(8, 2, 4, dtype=torch.uint8, device=device),
             v_scale_cache=torch.zeros(8, 2, 4, dtype=torch.uint8, device=device))
    a.update(over)
    return a


@pytest.mark.parametrize("over,name", [
    (dict(kv_dtype="int4"), "kv_dtype"),
    (dict(k=torch.randn(4, 2, 64)), "k"),                                   # fp32 activations
    (dict(v=torch.randn(4, 2, 64).bfloat16()[:3]), "v"),                     # shape mismatch
    (dict(k=torch.randn(4, 2, 80).bfloat16(), v=torch.randn(4, 2, 80).bfloat16()), "k"),  # head_dim 80
    (dict(k=torch.randn(4, 2, 72).bfloat16(), v=torch.randn(4, 2, 72).bfloat16()), "multiple of 16"),
    (dict(k=torch.randn(4, 64, 2).bfloat16().transpose(1, 2)), "k"),         # non-contiguous head_dim
    (dict(out_loc=torch.tensor([0, 1, 2, 8])), "out_loc"),                 # slot out of range
    (dict(out_loc=torch.tensor([0, 1, -1, 3])), "out_loc"),                # negative slot
    (dict(out_loc=torch.arange(4).float()), "out_loc"),                    # float slot ids
    (dict(out_loc=torch.arange(3)), "out_loc"),                            # wrong length
    (dict(k_cache=torch.zeros(8, 2, 64, dtype=torch.uint8)), "k_cache"),   # fp8-shaped pool
    (dict(k_cache=torch.zeros(8, 2, 32, dtype=torch.bfloat16)), "k_cache"),
    (dict(v_cache=lambda dev: torch.zeros(8, 2, 64, dtype=torch.uint8, device=dev)[:, :, ::2]), "v_cache"),
    (dict(k_scale_cache=None), "k_scale_cache"),
    (dict(v_scale_cache=torch.zeros(8, 2, 8, dtype=torch.uint8)), "v_scale_cache"),
    (dict(k_scale=torch.ones(2)), "k_scale"),
])
def test_bad_input_names_the_argument(over, name, device):
    a = _args(device)
    for key, val in over.items():
        if callable(val):
            val = val(device)
        a[key] = val.to(device) if isinstance(val, torch.Tensor) else val
    with pytest.raises(ValueError, match=name):
        append_kv(a.pop("k"), a.pop("v"), a.pop("out_loc"), a.pop("k_cache"), a.pop("v_cache"), **a)


def test_wrong_device_is_rejected(device):
    a = _args(device)
    a["v"] = torch.empty(4, 2, 64, dtype=torch.bfloat16, device="meta")
    with pytest.raises(ValueError, match="v"):
        append_kv(a.pop("k"), a.pop("v"), a.pop("out_loc"), a.pop("k_cache"), a.pop("v_cache"), **a)


def test_unchecked_out_of_range_slots_are_not_written(device):
    a = _args(device, out_loc=torch.tensor([0, 1, 100, -5], device=device), check_slots=False)
    kc = a["k_cache"]
    append_kv(a.pop("k"), a.pop("v"), a.pop("out_loc"), a.pop("k_cache"), a.pop("v_cache"), **a)
    assert (kc[2:] == 0).all()


def test_zero_tokens_is_a_no_op(device):
    a = _args(device)
    a["k"], a["v"], a["out_loc"] = a["k"][:0], a["v"][:0], a["out_loc"][:0]
    append_kv(a.pop("k"), a.pop("v"), a.pop("out_loc"), a.pop("k_cache"), a.pop("v_cache"), **a)


# ---------------------------------------------------------------------------------------------- GPU

@pytest.mark.gpu
@pytest.mark.parametrize("kv_dtype", ["nvfp4", "fp8_e4m3"])
@pytest.mark.parametrize("head_dim", planner.HEAD_DIMS)
@pytest.mark.parametrize("act", ["bf16", "fp16"])
def test_gpu_16k_tokens_bit_exact(kv_dtype, head_dim, act):
    run_case(kv_dtype, act, head_dim, 8, 16384, "cuda", g=(0.8, 1.3))


def test_kernel_ties_and_clamp_match_reference(device):
    # scale exactly 1 (amax 6): every midpoint of the e2m1 grid, both signs, and a clamped value
    row = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 6.0,
                        -0.25, -0.75, -1.25, -1.75, -2.5, -3.5, -5.0, 6.0] * 4)
    clamp = torch.zeros(64)
    clamp[0], clamp[1] = 6.375, -6.375
    k = torch.stack((row, clamp)).reshape(2, 1, 64).to(torch.bfloat16).to(device)
    loc = torch.arange(2, device=device)
    kc, vc = (torch.zeros(2, 1, 32, dtype=torch.uint8, device=device) for _ in range(2))
    ks, vs = (torch.zeros(2, 1, 4, dtype=torch.uint8, device=device) for _ in range(2))
    append_kv(k, k, loc, kc, vc, kv_dtype="nvfp4", k_scale_cache=ks, v_scale_cache=vs)
    codes = torch.stack((kc[0, 0] & 0xF, kc[0, 0] >> 4), -1).flatten()[:16].tolist()
    assert codes == [0, 2, 2, 4, 4, 6, 6, 7, 8, 10, 10, 12, 12, 14, 14, 7]
    assert kc[1, 0, 0].item() == 0xF7
    rd, rs = nvfp4.quantize_nvfp4(k.cpu(), 1.0)
    assert_bytes_equal(kc, rd, "data")
    assert_bytes_equal(ks, rs, "scales")


def test_flagged_and_zero_blocks_store_zero_nibbles(device):
    k = (torch.randn(3, 1, 64, device=device) * 3).to(torch.bfloat16)
    k[0, 0, 5] = float("nan")
    k[1, 0, 16:32] = 0.0
    k[2, 0, 40] = float("-inf")
    loc = torch.arange(3, device=device)
    kc, vc = (torch.full((3, 1, 32), 0xA5, dtype=torch.uint8, device=device) for _ in range(2))
    ks, vs = (torch.full((3, 1, 4), 0xA5, dtype=torch.uint8, device=device) for _ in range(2))
    append_kv(k, k, loc, kc, vc, kv_dtype="nvfp4", k_scale_cache=ks, v_scale_cache=vs)
    assert (kc[0, 0, 0:8] == 0).all() and (kc[1, 0, 8:16] == 0).all() and (kc[2, 0, 16:24] == 0).all()
    assert ks[0, 0, 0].item() == 0x7F and ks[1, 0, 1].item() == 0 and ks[2, 0, 2].item() == 0x7F
    rd, rs = nvfp4.quantize_nvfp4(k.cpu(), 1.0)
    assert_bytes_equal(kc, rd, "data")
    assert_bytes_equal(ks, rs, "scales")


# ---------------------------------------------------------------------------------- nvfp4 scale search

def _sq_err(x, data, scales, g):
    d = nvfp4.dequantize_nvfp4(data, scales, g)
    return ((d - x.float()) ** 2).view(*x.shape[:-1], x.shape[-1] // 16, 16).sum(-1)


@pytest.mark.parametrize("head_dim", planner.HEAD_DIMS)
@pytest.mark.parametrize("g", [1.0, 0.37])
def test_nvfp4_mse_scales_match_the_reference_search(head_dim, g, device):
    """The kernel's scale search picks the reference's code in every block but near-ties (the two
    sum the block's squared errors in different orders), where both errors agree to 1e-5; no block
    is worse than with amax / 6, and the total error drops."""
    tokens, heads = 37, 3
    k, v = _kv(tokens, heads, head_dim, torch.bfloat16, device, False)
    v[5, 1, :16] = 0.0                                   # an all-zero block
    loc = torch.arange(tokens, device=device)
    kc, vc = (_pool(tokens, heads, head_dim // 2, torch.uint8, device) for _ in range(2))
    ks, vs = (_pool(tokens, heads, head_dim // 16, torch.uint8, device) for _ in range(2))
    append_kv(k, v, loc, kc, vc, kv_dtype="nvfp4", k_scale_cache=ks, v_scale_cache=vs, k_scale=g, v_scale=g,
              nvfp4_scales="mse")
    for src, c, s in ((k, kc, ks), (v, vc, vs)):
        x = src.cpu()
        rd, rs = nvfp4.quantize_nvfp4(x, g, scale_rule="mse")
        md, ms = nvfp4.quantize_nvfp4(x, g)
        got = _sq_err(x, c.cpu(), s.cpu(), g)
        want = _sq_err(x, rd, rs, g)
        base = _sq_err(x, md, ms, g)
        same = s.cpu().view(torch.uint8) == rs.view(torch.uint8)
        assert same.float().mean() > 0.98, f"{(~same).sum().item()} of {same.numel()} blocks differ"
        assert torch.allclose(got, want, rtol=1e-5, atol=1e-30), (got - want).abs().max()
        # the search never loses to amax / 6 (its first candidate), up to the summation order of a
        # near-tie (the search and this check add a block's squared errors differently)
        assert (want <= base * (1 + 1e-5) + 1e-30).all(), "the search lost to amax / 6"
        assert want.sum() < 0.9 * base.sum()
        # the bytes of a block follow from its scale: where the scales agree, so do the data
        blk_same = same.repeat_interleave(8, -1)
        assert torch.equal(c.cpu()[blk_same], rd[blk_same])


def test_nvfp4_scales_argument_is_checked(device):
    with pytest.raises(ValueError, match="nvfp4_scales"):
        append_kv(**_args(device), nvfp4_scales="best")


@pytest.mark.parametrize("scales", ["max", "mse"])
@pytest.mark.parametrize("g", [1.0, 1e-30])
def test_edge_blocks_match_reference(scales, g, device):
    """Scale rounding to 0 (+-6 codes, as FlashInfer stores them) and a finite block max whose
    scale overflows (saturates at 448): the kernel writes the reference's bytes."""
    k = (torch.randn(4, 1, 64, device=device) * 2).to(torch.bfloat16)
    k[0, 0, :16] = torch.tensor([1e-3, -2e-3, 0.0, -0.0] + [4e-4] * 12) * g
    k[1, 0, 16:32] = torch.tensor([3e38, -1e38] + [0.5] * 14)
    k[2, 0, 32:48] = torch.tensor([0.0, -0.0] * 8)
    loc = torch.arange(4, device=device)
    kc, vc = (torch.full((4, 1, 32), 0xA5, dtype=torch.uint8, device=device) for _ in range(2))
    ks, vs = (torch.full((4, 1, 4), 0xA5, dtype=torch.uint8, device=device) for _ in range(2))
    append_kv(k, k, loc, kc, vc, kv_dtype="nvfp4", k_scale_cache=ks, v_scale_cache=vs, k_scale=g, v_scale=g,
              nvfp4_scales=scales)
    rd, rs = nvfp4.quantize_nvfp4(k.cpu(), g, scale_rule=scales)
    assert_bytes_equal(kc, rd, "data")
    assert_bytes_equal(ks, rs, "scales")
    if scales == "max":
        assert ks[0, 0, 0].item() == 0 and kc[0, 0, 0].item() == 0xF7
    assert ks[1, 0, 1].item() != 0x7F, "a finite block must not get the NaN scale"
