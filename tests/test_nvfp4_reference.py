"""Properties of the NVFP4 / FP8 torch references that define the KV-cache format."""
import math

import numpy as np
import pytest
import torch

from sgl_kernel_sm12x import nvfp4
from conftest import assert_bytes_equal

E2M1 = torch.tensor(nvfp4.E2M1_VALUES[:8])


def test_e4m3_encoder_matches_torch_conversion_in_range():
    x = torch.randn(1 << 18) * torch.exp2(torch.randint(-14, 9, (1 << 18,)).float())
    x = x.clamp(-448, 448)
    assert_bytes_equal(nvfp4.e4m3_encode(x), x.to(torch.float8_e4m3fn).view(torch.uint8), "e4m3 encode")


def test_e4m3_every_code_round_trips():
    codes = torch.arange(256, dtype=torch.int32).to(torch.uint8)
    vals = nvfp4.e4m3_decode(codes)
    ref = codes.view(torch.float8_e4m3fn).float()
    assert torch.equal(vals.isnan(), ref.isnan())
    finite = ~vals.isnan()
    assert torch.equal(vals[finite], ref[finite])
    assert_bytes_equal(nvfp4.e4m3_encode(vals[finite]), codes[finite], "e4m3 round trip")


def test_e4m3_saturates_and_flags_non_finite():
    x = torch.tensor([448.0, 460.0, 464.0, 470.0, 1e9, -1e30, float("inf"), float("-inf"), float("nan"), 0.0, -0.0])
    got = nvfp4.e4m3_encode(x).tolist()
    assert got == [0x7E, 0x7E, 0x7E, 0x7E, 0x7E, 0xFE, 0x7F, 0xFF, 0x7F, 0x00, 0x80]


def test_e4m3_subnormals_round_to_nearest_even():
    ulp = 2.0 ** -9
    x = torch.tensor([0.5 * ulp, 1.5 * ulp, 2.5 * ulp, 7.5 * ulp, 0.25 * ulp, 0.75 * ulp])
    assert nvfp4.e4m3_encode(x).tolist() == [0, 2, 2, 8, 0, 1]


def _blocks_with_amax_6(codes_per_block=16, blocks=64):
    codes = torch.randint(0, 16, (blocks, codes_per_block))
    codes[:, torch.randint(0, codes_per_block, (1,)).item()] = 7 | (torch.randint(0, 2, (1,)).item() << 3)
    return codes


@pytest.mark.parametrize("g", [1.0, 0.25, 3.0, 1.0 / 448])
def test_exact_values_round_trip(g):
    codes = _blocks_with_amax_6()
    s_codes = torch.randint(0x08, 0x7E, (codes.shape[0],)).to(torch.uint8)  # normal UE4M3 scales
    s = nvfp4.e4m3_decode(s_codes)
    vals = torch.tensor(nvfp4.E2M1_VALUES)[codes]
    x = (vals * s[:, None]) * g
    # x / (6 * g) must reproduce s exactly for this to be an exact round trip
    keep = (x.abs().amax(-1) / (6.0 * torch.tensor(g))) == s
    x = x[keep].reshape(1, -1, 16 * 1)
    data, scales = nvfp4.quantize_nvfp4(x.reshape(1, -1), g)
    y = nvfp4.dequantize_nvfp4(data, scales, g)
    assert torch.equal(y, x.reshape(1, -1)), "exactly representable values must round-trip"


def test_scale_is_block_amax_over_6_rounded_to_ue4m3():
    x = torch.randn(32, 8, 128) * torch.rand(32, 8, 1) * 10
    g = 0.7
    _, scales = nvfp4.quantize_nvfp4(x, g)
    amax = x.reshape(32, 8, 8, 16).abs().amax(-1)
    want = (amax / (6.0 * torch.tensor(g, dtype=torch.float32))).to(torch.float8_e4m3fn)
    assert_bytes_equal(scales, want, "block scales")


def test_e2m1_ties_go_to_even_code():
    # block amax 6 -> scale exactly 1, so q == x
    x = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 6.0,
                      -0.25, -0.75, -1.25, -1.75, -2.5, -3.5, -5.0, 6.0])
    data, scales = nvfp4.quantize_nvfp4(x, 1.0)
    assert nvfp4.e4m3_decode(scales).tolist() == [1.0]
    codes = torch.stack((data & 0xF, data >> 4), -1).flatten().tolist()
    assert codes == [0, 2, 2, 4, 4, 6, 6, 7, 8, 10, 10, 12, 12, 14, 14, 7]


def test_values_above_6_after_scale_rounding_clamp_to_6():
    # amax/6 = 1.0625 lies halfway between UE4M3 1.0 and 1.125 -> ties to even -> scale 1.0,
    # so the largest element maps to q = 6.375 and must clamp to code 7 (6.0), not wrap.
    x = torch.zeros(16)
    x[0], x[1] = 6.375, -6.375
    d, s = nvfp4.quantize_nvfp4(x, 1.0)
    assert nvfp4.e4m3_decode(s).tolist() == [1.0]
    assert d[0].item() == (0xF << 4) | 0x7
    y = nvfp4.dequantize_nvfp4(d, s, 1.0)
    assert y[0].item() == 6.0 and y[1].item() == -6.0


def test_byte_layout_low_nibble_is_even_element():
    x = torch.zeros(16)
    x[0], x[1], x[2], x[3] = 1.0, 6.0, -0.5, 3.0     # codes 2, 7, 9, 5
    data, scales = nvfp4.quantize_nvfp4(x, 1.0)
    assert data.shape == (8,) and data.dtype == torch.uint8
    assert scales.shape == (1,) and scales.dtype == torch.float8_e4m3fn
    assert data[0].item() == (7 << 4) | 2
    assert data[1].item() == (5 << 4) | 9


def test_pool_shapes_match_sglang_layout():
    x = torch.randn(5, 3, 128)
    data, scales = nvfp4.quantize_nvfp4(x, 1.0)
    assert data.shape == (5, 3, 64) and scales.shape == (5, 3, 8)
    assert nvfp4.nvfp4_bytes_per_token(3, 128) == 3 * (64 + 8)


def test_non_finite_block_is_nan_and_neighbours_unaffected():
    x = torch.randn(4, 64)
    clean_d, clean_s = nvfp4.quantize_nvfp4(x, 1.0)
    for bad in (float("nan"), float("inf"), float("-inf")):
        y = x.clone()
        y[1, 20] = bad              # block 1 of row 1
        d, s = nvfp4.quantize_nvfp4(y, 1.0)
        deq = nvfp4.dequantize_nvfp4(d, s, 1.0)
        assert deq[1, 16:32].isnan().all(), "the poisoned block must dequantize to NaN"
        mask = torch.ones_like(deq, dtype=torch.bool)
        mask[1, 16:32] = False
        assert not deq[mask].isnan().any()
        clean = nvfp4.dequantize_nvfp4(clean_d, clean_s, 1.0)
        assert torch.equal(deq[mask], clean[mask]), "other blocks must be unchanged"


def test_zero_block_quantizes_to_zero():
    x = torch.zeros(2, 32)
    x[1, 16:] = torch.randn(16)
    d, s = nvfp4.quantize_nvfp4(x, 1.0)
    assert s.view(torch.uint8)[0].tolist() == [0, 0] and s.view(torch.uint8)[1, 0].item() == 0
    assert (d[0] == 0).all()
    y = nvfp4.dequantize_nvfp4(d, s, 1.0)
    assert (y[0] == 0).all() and not y.isnan().any()


def test_error_is_within_nvfp4_expectations():
    x = torch.randn(64, 8, 128)
    d, s = nvfp4.quantize_nvfp4(x, 1.0)
    y = nvfp4.dequantize_nvfp4(d, s, 1.0)
    rel = ((y - x).norm() / x.norm()).item()
    assert 0.05 < rel < 0.12, rel
    # per element: at most half an e2m1 step of the largest magnitude (1.0 of 6) times the scale
    blk = x.reshape(-1, 16)
    bound = blk.abs().amax(-1, keepdim=True) / 6 * 1.0 * (1 + 2 ** -3) + 1e-6
    assert ((y.reshape(-1, 16) - blk).abs() <= bound).all()


def test_fp8_reference_matches_torch_in_range():
    s = 0.37
    x = (torch.randn(1000) * 30).clamp(-440 * s, 440 * s)   # inside the saturation range
    q = nvfp4.quantize_fp8(x, s)
    want = (x * (1.0 / torch.tensor(s))).clamp(-448, 448).to(torch.float8_e4m3fn)
    assert_bytes_equal(q, want, "fp8")
    y = nvfp4.dequantize_fp8(q, s)
    assert ((y - x).abs() <= x.abs() * 2 ** -4 + 2 ** -10 * s).all()
    # beyond 448 * scale finite values saturate
    assert nvfp4.dequantize_fp8(nvfp4.quantize_fp8(torch.tensor([1e6, -1e6]), s), s).tolist() == [
        pytest.approx(448 * s), pytest.approx(-448 * s)]


def test_bad_inputs():
    with pytest.raises(ValueError, match="head_dim"):
        nvfp4.quantize_nvfp4(torch.randn(3, 40), 1.0)
    with pytest.raises(ValueError, match="global scale"):
        nvfp4.quantize_nvfp4(torch.randn(3, 32), torch.ones(2))


# ------------------------------------------------------------------ FlashInfer's nvfp4_kv_quant, transcribed
# Its per-block rule (csrc/fp4_kv_quantization.cu, quantize_fp16_to_e2m1_with_scaling), written out
# element by element in float32 numpy: sf = amax / 6 / global, converted with __nv_fp8_e4m3 (round
# to nearest, saturating finite values at 448); out_scale = amax != 0 ? 1 / (sf * global) : 0 (1 / 0
# is +Inf); each x * out_scale through cvt.rn.satfinite.e2m1x2 (+-Inf -> +-6, NaN -> +6). The
# reciprocals there are approximate; here they are exact, which is what this project computes.

_E2M1_MAGS = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)


def _fi_e2m1(q):
    q = np.float32(q)
    if np.isnan(q):
        return 0x7
    sign = 8 if np.signbit(q) else 0
    a = min(abs(float(q)), 6.0)
    best = min(range(8), key=lambda c: (abs(_E2M1_MAGS[c] - a), c % 2))   # nearest, ties to the even code
    return best | sign


def _fi_e4m3_satfinite(v):
    v = np.float32(v)
    if np.isnan(v):
        return 0x7F
    v = float(np.clip(v, -448.0, 448.0))
    return torch.tensor([v], dtype=torch.float32).to(torch.float8_e4m3fn).view(torch.uint8).item()


def _flashinfer_rule(x, g):
    """x: (n, 16) float32 -> (n, 8) uint8 data, (n,) uint8 scale codes."""
    g = np.float32(g)
    data, scales = [], []
    with np.errstate(all="ignore"):
        for row in x.numpy().astype(np.float32):
            vmax = np.float32(np.max(np.abs(row)))
            code = _fi_e4m3_satfinite(vmax / (np.float32(6.0) * g))
            sf = np.float32(nvfp4.e4m3_decode(torch.tensor([code], dtype=torch.uint8)).item())
            out = np.float32(1.0) / (sf * g) if vmax != 0 else np.float32(0.0)
            nib = [_fi_e2m1(np.float32(e) * out) for e in row]
            data.append([nib[2 * i] | (nib[2 * i + 1] << 4) for i in range(8)])
            scales.append(code)
    return torch.tensor(data, dtype=torch.uint8), torch.tensor(scales, dtype=torch.uint8)


def _edge_blocks(g):
    tiny = torch.tensor([1e-3, -2e-3, 0.0, -0.0, 5e-4] + [0.0] * 11) * g       # scale rounds to 0
    huge = torch.tensor([3e38, -1e38, 0.5, -0.0] + [1.0] * 12)                  # amax / (6 g) overflows
    zero = torch.tensor([0.0, -0.0] * 8)
    return torch.stack([tiny, huge, zero, torch.randn(16), torch.randn(16) * 1e-5])


@pytest.mark.parametrize("g", [1.0, 0.37, 1e-30])
def test_edge_encodings_match_flashinfer_rule(g):
    x = torch.cat([_edge_blocks(g), torch.randn(32, 16) * 4])
    want_d, want_s = _flashinfer_rule(x, g)
    data, scales = nvfp4.quantize_nvfp4(x, g)
    assert_bytes_equal(scales.view(torch.uint8).flatten(), want_s, f"scales (g={g})")
    assert_bytes_equal(data, want_d, f"data (g={g})")


def test_zero_scale_block_stores_six_codes_and_dequantizes_to_zero():
    x = torch.tensor([[1e-3, -2e-3, 0.0, -0.0] + [4e-4] * 12])
    data, scales = nvfp4.quantize_nvfp4(x, 1.0)
    assert scales.view(torch.uint8).item() == 0
    assert data[0, :2].tolist() == [0xF7, 0x77], "FlashInfer stores +-6 codes where the scale is 0"
    assert (nvfp4.dequantize_nvfp4(data, scales, 1.0) == 0).all()


def test_huge_finite_block_saturates_scale_not_nan():
    x = torch.tensor([[3e38, -1.0] + [0.5] * 14])
    _, scales = nvfp4.quantize_nvfp4(x, 1e-30)
    assert scales.view(torch.uint8).item() == 0x7E, "a finite block saturates at 448 (code 0x7E)"
