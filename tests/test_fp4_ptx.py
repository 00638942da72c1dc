"""The NVFP4 decode PTX (Triton split / extend stages and the register-operand decode kernel),
evaluated on the CPU: every code of random words, with random block scales, against the e2m1
table, and the output order each caller's layout relies on."""
import random

import numpy as np
import pytest

from ptx_eval import prmt, run

E2M1 = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]
UNIT = 2.0 ** -14


def _code(w, n):
    return (w >> (4 * n)) & 0xF


def _f16_bits(x):
    return int(np.array([x], dtype=np.float16).view(np.uint16)[0])


def _want(code, scale=1.0):
    """fp16 bits of e2m1(code) * 2^-14 * scale (exact in fp16 for UE4M3 scales)."""
    v = E2M1[code & 7] * UNIT * scale
    return _f16_bits(-v if code & 8 else v)


def _words(n, seed):
    rng = random.Random(seed)
    # every byte value in every position, then random words
    ws = [b * 0x01010101 for b in range(256)] + [rng.getrandbits(32) for _ in range(n)]
    return ws


def _scale(rng):
    """A UE4M3 block scale as fp16 (normal and subnormal e4m3 values), bits."""
    e, m = rng.randrange(0, 16), rng.randrange(0, 8)
    v = (m / 8) * 2.0 ** -6 if e == 0 else (1 + m / 8) * 2.0 ** (e - 7)
    return _f16_bits(min(v, 448.0)), min(v, 448.0)


def test_prmt_model_matches_the_isa_examples():
    # PTX ISA: default mode, selector nibbles index bytes of {b, a}; bit 3 replicates the msb
    assert prmt(0x33221100, 0x77665544, 0x3210) == 0x33221100
    assert prmt(0x33221100, 0x77665544, 0x7654) == 0x77665544
    assert prmt(0x000000F0, 0, 0x4448) == 0x000000FF
    assert prmt(0x00000070, 0, 0x4448) == 0
    assert prmt(0x0000F000, 0, 0x0001) == 0x000000F0


def test_extend_word_ptx_all_codes():
    from sgl_kernel_sm12x.attention.kv_tile import E2M1_WORD_PTX
    for w in _words(3000, 1):
        out = run(E2M1_WORD_PTX, {8: w})
        assert sorted(out) == list(range(8))
        for k in range(4):      # low nibble of byte k, then high nibble of byte k
            assert out[k] == _want(_code(w, 2 * k)), (hex(w), k)
            assert out[4 + k] == _want(_code(w, 2 * k + 1)), (hex(w), k)


def test_register_operand_word_ptx_all_codes():
    gl = pytest.importorskip("triton.experimental.gluon")  # noqa: F841
    from sgl_kernel_sm12x.attention import decode_nvfp4 as D
    rng = random.Random(2)
    asm = D._word_asm()
    for w in _words(3000, 3):
        sb, s = _scale(rng)
        out = run(asm, {8: w, 9: sb})
        for i in range(4):      # output pair (2i, 2i + 1) = elements (i, i + 4) of the word
            assert out[2 * i] == _want(_code(w, i), s), (hex(w), i, s)
            assert out[2 * i + 1] == _want(_code(w, i + 4), s), (hex(w), i, s)


def test_register_operand_pair_ptx_all_codes():
    pytest.importorskip("triton.experimental.gluon")
    from sgl_kernel_sm12x.attention import decode_nvfp4 as D
    rng = random.Random(4)
    asm = D._pair_asm()
    ws = _words(2000, 5)
    for we in ws:
        wo = rng.getrandbits(32)
        (sbe, se), (sbo, so) = _scale(rng), _scale(rng)
        out = run(asm, {16: we, 17: wo, 18: sbe, 19: sbo})
        for q in range(8):      # (2q, 2q + 1) = element q of the even / the odd token's word
            assert out[2 * q] == _want(_code(we, q), se), (hex(we), q)
            assert out[2 * q + 1] == _want(_code(wo, q), so), (hex(wo), q)
