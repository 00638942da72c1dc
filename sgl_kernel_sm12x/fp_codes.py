"""``@triton.jit`` helpers for the FP8 e4m3 and FP4 e2m1 codes used by the KV cache.

Encoding is done with integer arithmetic (no hardware ``cvt``), so the same bits come out on
sm_80 .. sm_121 and under the Triton interpreter; the torch references in
:mod:`sgl_kernel_sm12x.nvfp4` follow the same steps and the tests compare bytes.
"""
import triton
import triton.language as tl


@triton.jit
def e4m3_encode(x):
    """fp32 tensor -> int32 tensor of float8_e4m3fn codes (RNE, saturate at 448, NaN/Inf -> 0x7F).

    Normal range: drop 20 mantissa bits with round-to-nearest-even and rebias (127 -> 7); below
    2^-6 the code is rne(|x| * 2^9), obtained by adding 2^23. Integer adds wrap for NaN patterns,
    whose result the last select replaces.
    """
    bits = x.to(tl.int32, bitcast=True)
    a = bits & 0x7FFFFFFF
    normal = ((a + 0x7FFFF + ((a >> 20) & 1)) >> 20) - (120 << 3)
    sub = ((a.to(tl.float32, bitcast=True) * 512.0) + 8388608.0).to(tl.int32, bitcast=True) & 0xF
    code = tl.minimum(tl.where(a < 0x3C800000, sub, normal), 0x7E)
    code = tl.where(a >= 0x7F800000, 0x7F, code)
    return code | ((bits >> 24) & 0x80)


@triton.jit
def e4m3_decode(code):
    """int32 codes (0..255) of float8_e4m3fn -> fp32, exact, in integer arithmetic."""
    e = (code >> 3) & 0xF
    m = code & 7
    normal = (((e + 120) << 23) | (m << 20)).to(tl.float32, bitcast=True)
    sub = m.to(tl.float32) * 0.001953125
    mag = tl.where(e == 0, sub, normal)
    mag = tl.where((code & 0x7F) == 0x7F, float("nan"), mag)
    return tl.where((code & 0x80) != 0, -mag, mag)


@triton.jit
def e2m1_encode(q):
    """fp32 tensor (already scaled) -> int32 4-bit e2m1 codes, RNE with ties to even, clamp at 6.

    Bit arithmetic on the fp32 pattern: for |q| >= 1 drop 22 mantissa bits with round-to-nearest-even
    and rebias the exponent (127 -> 1); below 1 the code is rne(2|q|) (0, 1 or 2), obtained by adding
    2^23. Codes above 7 (|q| >= 7) clamp to 7. NaN gives an unspecified code: callers zero the
    nibbles of flagged blocks.
    """
    bits = q.to(tl.int32, bitcast=True)
    a = bits & 0x7FFFFFFF
    normal = ((a + 0x1FFFFF + ((a >> 22) & 1)) >> 22) - 252
    small = ((tl.abs(q) * 2.0) + 8388608.0).to(tl.int32, bitcast=True) & 3
    # below 1.0 `normal` is < `small` (negative under 0.5, one short in [0.5, 1)); from 1.0 up,
    # `small` (rne(2|q|) mod 4) is <= 3 while `normal` >= 2 and exceeds it where they differ
    code = tl.minimum(tl.maximum(small, normal), 7)
    return code | ((bits >> 28) & 8)


@triton.jit
def e2m1_decode(code):
    """int32 4-bit e2m1 codes -> fp32 values, without a lookup table.

    Magnitude codes 0..7 are {0, .5, 1, 1.5, 2, 3, 4, 6}: exponent field e = c >> 1, mantissa c & 1;
    e == 0 is the subnormal 0 / 0.5, otherwise (1 + m/2) * 2^(e-1).
    """
    c = code & 7
    e = c >> 1
    m = c & 1
    normal = ((e + 126) << 23 | (m << 22)).to(tl.float32, bitcast=True)
    mag = tl.where(e == 0, m.to(tl.float32) * 0.5, normal)
    return tl.where((code & 8) != 0, -mag, mag)


@triton.jit
def e4m3_encode_hw(x):
    """Same codes as :func:`e4m3_encode` through the sm_89+ conversion (``cvt.rn.satfinite``),
    which rounds to nearest even and saturates finite values; +-Inf is mapped to NaN first, as
    the software encoder does."""
    x = tl.where(tl.abs(x) == float("inf"), float("nan"), x)
    return x.to(tl.float8e4nv).to(tl.uint8, bitcast=True)
