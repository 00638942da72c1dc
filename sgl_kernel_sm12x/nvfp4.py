"""NVFP4 KV-cache format: the one place that states the layout, plus torch references.

Layout (identical to SGLang's ``NVFP4KVCacheMethod`` linear pool):

* data    ``(slots, heads, head_dim // 2)`` ``uint8``; element ``2i`` in the low nibble of byte ``i``,
  element ``2i + 1`` in the high nibble.
* scales  ``(slots, heads, head_dim // 16)`` UE4M3 (``float8_e4m3fn`` bits, sign bit 0), linear (not
  swizzled): one scale per 16 consecutive elements along ``head_dim``.
* global  one FP32 per tensor (K and V separately, per layer), SGLang's ``k_scale`` / ``v_scale``.

A value dequantizes as ``x = e2m1(code) * e4m3(scale) * global``.

Quantization rules (bit-exact in the Triton append kernel and in these references):

1. ``amax`` = max |x| over the 16-element block (inputs are upcast to FP32 exactly).
2. ``s = amax / (6 * global)`` in IEEE FP32 (``6 * global`` rounded first), encoded to UE4M3 in
   software with round-to-nearest-even, subnormals kept; a finite block saturates at 448 (code
   ``0x7E``) even where ``s`` overflows FP32, as FlashInfer's ``nvfp4_kv_quant`` does.
3. ``r = 1 / (e4m3(s) * global)`` once per block (IEEE FP32), ``q = x * r`` per element (one
   rounding), rounded to the nearest E2M1 magnitude {0, .5, 1, 1.5, 2, 3, 4, 6} with ties to the
   even code, clamped at 6. The sign bit is the sign of ``x`` (``-0`` is code 8). Multiplying by
   the block reciprocal, as hardware quantizers do, keeps the per-element cost to one multiply;
   with power-of-two scales it equals exact division. Where the scale rounds to 0 and the block
   max is not 0 (block max below about 0.0059 x global), ``r`` is +Inf as in FlashInfer: negative
   elements store 0xF, the others (zeros, whose ``0 * Inf`` its conversion saturates to +6,
   included) 0x7; all of them dequantize to 0. An all-zero block has ``r = 0`` and stores the
   zeros' signs (0x0 / 0x8).
4. A block holding NaN or +-Inf gets the NaN scale code ``0x7F``, so it dequantizes to NaN and
   stays visible; neighbouring blocks are unaffected; its nibbles are 0.

Optional scale search (``scale_rule="mse"``; the format is unchanged, readers cannot tell): the
block takes, of the scale codes {rule 2's, one code above it, ``amax / (4 * global)``}, the one
whose rule-3 quantization has the least squared error over the block (the first of the list on
ties). Every candidate keeps the block max representable (no clipping: for K, outlier channels
carry the attention logits, and a clipped one costs more than the squared error says). 6-13%
less squared error than ``amax / 6`` alone on Gaussian / Laplace data.

FP8 e4m3 KV (per-tensor scale) uses the same software encoder on ``x * (1 / scale)``, saturating
finite values at +-448 and mapping NaN/Inf to NaN.
"""
from __future__ import annotations

import torch

BLOCK_SIZE = 16
SCALE_RULES = ("max", "mse")   # block-scale rules: amax / 6, or the least-squared-error search
E2M1_MAX = 6.0
E4M3_MAX = 448.0
E4M3_NAN = 0x7F
E2M1_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0)
# Midpoints between neighbouring E2M1 magnitudes; ``>`` on even-code left ties, ``>=`` on odd ones.
E2M1_BOUNDS = (0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0)

__all__ = [
    "BLOCK_SIZE", "E2M1_MAX", "E4M3_MAX", "E2M1_VALUES",
    "e4m3_encode", "e4m3_decode", "e2m1_encode", "e2m1_decode",
    "quantize_nvfp4", "dequantize_nvfp4", "quantize_fp8", "dequantize_fp8",
    "nvfp4_bytes_per_token", "fp8_bytes_per_token", "quantize_weight", "dequantize_weight",
]


def _as_scale(scale, device) -> torch.Tensor:
    if isinstance(scale, torch.Tensor):
        if scale.numel() != 1:
            raise ValueError(f"global scale must hold one value, got shape {tuple(scale.shape)}")
        return scale.reshape(()).to(device=device, dtype=torch.float32)
    return torch.tensor(float(scale), dtype=torch.float32, device=device)


def e4m3_encode(x: torch.Tensor) -> torch.Tensor:
    """FP32 -> float8_e4m3fn bits (``uint8``), round to nearest even, finite values saturate at 448,
    NaN and +-Inf map to the NaN code. Pure integer arithmetic, no hardware conversion."""
    x = x.to(torch.float32)
    bits = x.view(torch.int32)
    sign = (bits >> 31) & 1
    a = bits & 0x7FFFFFFF
    ac = torch.minimum(a, torch.full_like(a, 0x7F800000))
    # normal range: drop 20 mantissa bits with round-to-nearest-even, rebias exponent 127 -> 7
    normal = ((ac + 0x7FFFF + ((ac >> 20) & 1)) >> 20) - (120 << 3)
    # subnormal range (|x| < 2^-6): code = rne(|x| * 2^9); adding 2^23 rounds to an integer
    mag = ac.view(torch.float32)
    sub = ((mag * 512.0) + 8388608.0).view(torch.int32) & 0xF
    code = torch.where(ac < 0x3C800000, sub, normal)
    code = torch.clamp(code, max=0x7E)
    code = torch.where(a >= 0x7F800000, torch.full_like(code, E4M3_NAN), code)
    return (code | (sign << 7)).to(torch.uint8)


def e4m3_decode(code: torch.Tensor) -> torch.Tensor:
    """float8_e4m3fn bits (``uint8`` or ``float8_e4m3fn``) -> FP32, exact."""
    if code.dtype == torch.float8_e4m3fn:
        code = code.view(torch.uint8)
    c = code.to(torch.int32)
    e = (c >> 3) & 0xF
    m = c & 7
    normal = (((e + 120) << 23) | (m << 20)).view(torch.float32)
    sub = m.to(torch.float32) * (2.0 ** -9)
    mag = torch.where(e == 0, sub, normal)
    mag = torch.where((c & 0x7F) == E4M3_NAN, torch.full_like(mag, float("nan")), mag)
    return torch.where((c & 0x80) != 0, -mag, mag)


def e2m1_encode(q: torch.Tensor) -> torch.Tensor:
    """FP32 (already divided by the scale) -> 4-bit E2M1 codes in ``uint8``; RNE, clamp at 6."""
    a = q.abs()
    b = E2M1_BOUNDS
    code = ((a > b[0]).to(torch.int32) + (a >= b[1]).to(torch.int32) + (a > b[2]).to(torch.int32)
            + (a >= b[3]).to(torch.int32) + (a > b[4]).to(torch.int32) + (a >= b[5]).to(torch.int32)
            + (a > b[6]).to(torch.int32))
    neg = (q.view(torch.int32) >> 31) & 1  # sign bit, so -0.0 keeps its sign like the kernel
    return (code | (neg << 3)).to(torch.uint8)


def e2m1_decode(code: torch.Tensor) -> torch.Tensor:
    lut = torch.tensor(E2M1_VALUES, dtype=torch.float32, device=code.device)
    return lut[(code & 0xF).long()]


def _block_codes(xf, s_code, g):
    """(e2m1 codes, dequantized blocks) of finite blocks ``xf`` (..., NB, 16) at scale codes (rule 3)."""
    denom = e4m3_decode(s_code) * g
    ok = denom > 0
    rcp = torch.where(ok, 1.0 / torch.where(ok, denom, torch.ones_like(denom)), torch.zeros_like(denom))
    codes = e2m1_encode(xf * rcp[..., None])
    zero_scale = (denom == 0) & (xf.abs().amax(dim=-1) > 0)        # r = +Inf: +-6 codes
    sat = torch.where(xf < 0, torch.full_like(codes, 0xF), torch.full_like(codes, 0x7))
    codes = torch.where(zero_scale[..., None], sat, codes)
    deq = e2m1_decode(codes) * torch.where(ok, denom, torch.zeros_like(denom))[..., None]
    return codes, deq


def quantize_nvfp4(x: torch.Tensor, global_scale=1.0, scale_rule: str = "max"):
    """Reference NVFP4 quantizer.

    Parameters
    ----------
    x : (..., head_dim) float tensor, head_dim a multiple of 16.
    global_scale : float or one-element tensor (FP32), SGLang's per-layer ``k_scale``/``v_scale``.
    scale_rule : "max" (rule 2) or "mse" (the scale search above).

    Returns
    -------
    data : (..., head_dim // 2) uint8, element 2i in the low nibble.
    scales : (..., head_dim // 16) float8_e4m3fn.
    """
    d = x.shape[-1]
    if d % BLOCK_SIZE:
        raise ValueError(f"head_dim must be a multiple of {BLOCK_SIZE}, got {d}")
    g = _as_scale(global_scale, x.device)
    xf = x.to(torch.float32).reshape(*x.shape[:-1], d // BLOCK_SIZE, BLOCK_SIZE)
    finite = torch.isfinite(xf).all(dim=-1)
    amax = torch.where(torch.isfinite(xf), xf.abs(), torch.zeros_like(xf)).amax(dim=-1)
    s = torch.clamp(amax / (g * E2M1_MAX), max=E4M3_MAX)      # finite blocks saturate (rule 2)
    s_code = e4m3_encode(s)
    if scale_rule == "mse":
        x0 = torch.where(finite[..., None], xf, torch.zeros_like(xf))
        best = torch.where(finite, s_code, torch.zeros_like(s_code))
        best_err = ((x0 - _block_codes(x0, best, g)[1]) ** 2).sum(-1)
        c4 = e4m3_encode(torch.clamp(amax / (g * 4.0), max=E4M3_MAX))
        for cand in ((best.to(torch.int32) + 1).clamp(max=0x7E).to(torch.uint8), c4):
            err = ((x0 - _block_codes(x0, cand, g)[1]) ** 2).sum(-1)
            take = err < best_err
            best = torch.where(take, cand, best)
            best_err = torch.where(take, err, best_err)
        s_code = best
    elif scale_rule not in SCALE_RULES:
        raise ValueError(f"scale_rule: {scale_rule!r} is not supported; supported: {list(SCALE_RULES)}")
    s_code = torch.where(finite, s_code, torch.full_like(s_code, E4M3_NAN))
    codes, _ = _block_codes(torch.where(finite[..., None], xf, torch.zeros_like(xf)), s_code, g)
    codes = torch.where(finite[..., None], codes, torch.zeros((), dtype=torch.uint8))
    codes = codes.reshape(*x.shape[:-1], d)
    data = codes[..., 0::2] | (codes[..., 1::2] << 4)
    return data.contiguous(), s_code.view(torch.float8_e4m3fn)


def dequantize_nvfp4(data: torch.Tensor, scales: torch.Tensor, global_scale=1.0,
                     dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Inverse of :func:`quantize_nvfp4`: ``(..., D//2)`` uint8 + ``(..., D//16)`` scales -> ``(..., D)``."""
    g = _as_scale(global_scale, data.device)
    lo = e2m1_decode(data & 0xF)
    hi = e2m1_decode(data >> 4)
    vals = torch.stack((lo, hi), dim=-1).reshape(*data.shape[:-1], data.shape[-1] * 2)
    s = e4m3_decode(scales)
    vals = vals.reshape(*vals.shape[:-1], scales.shape[-1], BLOCK_SIZE) * s[..., None] * g
    return vals.reshape(*data.shape[:-1], data.shape[-1] * 2).to(dtype)


def quantize_fp8(x: torch.Tensor, scale=1.0) -> torch.Tensor:
    """Reference FP8 e4m3 KV quantizer: ``e4m3(x * (1 / scale))`` (IEEE FP32, saturating)."""
    s = _as_scale(scale, x.device)
    return e4m3_encode(x.to(torch.float32) * (1.0 / s)).view(torch.float8_e4m3fn)


def dequantize_fp8(q: torch.Tensor, scale=1.0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    s = _as_scale(scale, q.device)
    return (e4m3_decode(q) * s).to(dtype)


def nvfp4_bytes_per_token(heads: int, head_dim: int) -> int:
    """Bytes one token occupies for K *or* V in the NVFP4 pool (data + scales)."""
    return heads * (head_dim // 2 + head_dim // BLOCK_SIZE)


def fp8_bytes_per_token(heads: int, head_dim: int) -> int:
    return heads * head_dim


# --------------------------------------------------------------------------------------------------
# NVFP4 weights (ModelOpt's checkpoint layout)
# --------------------------------------------------------------------------------------------------

def quantize_weight(w: torch.Tensor, global_scale=None):
    """A linear layer's (or one expert's) weight ``(out, in)`` in ModelOpt's NVFP4 checkpoint
    layout, computed as ModelOpt computes it:

    * ``weight_scale_2`` = ``amax(|w|) / (6 * 448)`` (FP32, per tensor), so the largest block scale
      is 448;
    * ``weight_scale`` ``(out, in // 16)`` float8_e4m3fn: each 16-block's ``amax / (6 *
      weight_scale_2)``, rounded to nearest even;
    * ``weight`` ``(out, in // 2)`` uint8: E2M1 codes of ``w / (weight_scale * weight_scale_2)``
      (a division, as ModelOpt does; the KV quantizer above multiplies by a reciprocal), nearest
      with ties to the even code, element 2i of a row in the low nibble. All-zero blocks store 0.

    A leading expert dimension ``(E, out, in)`` gets one ``weight_scale_2`` per expert, ``(E,)``.
    ``global_scale``: a given ``weight_scale_2`` instead (layers SGLang fuses -- q / k / v, gate /
    up -- share the largest of theirs, as ModelOpt exports them)."""
    if w.dim() == 3:
        parts = [quantize_weight(x, global_scale) for x in w]
        return (torch.stack([p[0] for p in parts]), torch.stack([p[1] for p in parts]),
                torch.stack([p[2] for p in parts]))
    if w.dim() != 2 or w.shape[1] % BLOCK_SIZE:
        raise ValueError(f"w: expected (out, in) with in a multiple of {BLOCK_SIZE}, got {tuple(w.shape)}")
    if not torch.isfinite(w).all():
        raise ValueError("w: NaN or Inf in the weight; NVFP4 checkpoints hold finite weights")
    out, k = w.shape
    xf = w.to(torch.float32).reshape(out, k // BLOCK_SIZE, BLOCK_SIZE)
    g = xf.abs().amax() / (E2M1_MAX * E4M3_MAX) if global_scale is None else \
        torch.as_tensor(global_scale, dtype=torch.float32, device=w.device).reshape(())
    g = torch.where(g > 0, g, torch.ones_like(g))
    s_code = e4m3_encode(xf.abs().amax(-1) / (E2M1_MAX * g))
    sv = e4m3_decode(s_code)
    q = torch.where(sv[..., None] > 0, xf / (sv[..., None] * g), torch.zeros_like(xf))
    codes = e2m1_encode(q).reshape(out, k)
    data = codes[:, 0::2] | (codes[:, 1::2] << 4)
    return data.contiguous(), s_code.view(torch.float8_e4m3fn), g


def dequantize_weight(data: torch.Tensor, scales: torch.Tensor, global_scale, dtype=torch.float32):
    """Inverse of :func:`quantize_weight` (``(E, out, in // 2)`` with ``(E,)`` globals too)."""
    if data.dim() == 3:
        return torch.stack([dequantize_weight(d, s, g, dtype) for d, s, g in zip(data, scales, global_scale)])
    return dequantize_nvfp4(data, scales, global_scale, dtype)
