"""NVFP4 decode split stage with the dequantized K/V tiles built directly in MMA operand registers.

The Triton split stage (:mod:`.decode`) dequantizes an NVFP4 tile in a load-friendly register layout
and lets the compiler move it into the ``mma.sync`` operand layout, which goes through shared
memory (store, barrier, ``ldmatrix``) for every K and V tile. This kernel is written in Gluon,
Triton's explicit-layout dialect, so that each thread loads exactly the packed words whose codes
its MMA fragments hold, decodes them in registers and feeds the tensor cores without a shared
memory round trip.

The trick that makes that possible: the order of the head_dim elements inside a dot product does
not matter. The kernel works in a permuted head_dim ``j -> perm(j)`` chosen so that a thread's
fragment elements are the codes of the 32-bit words it loads (16 contiguous bytes of one token for
K, two words of four tokens for V); q is gathered through the same permutation once per program
and the output is scattered back through it when the split is stored.

One program is one warp: one request, one KV head, one split of the tokens, all ``group`` query
heads. Per tile of ``BLOCK_N`` tokens::

    S    (16 x BLOCK_N)  = Q'(16 x D) . K'^T(D x BLOCK_N)        K'^T decoded into B fragments
    P^T  (BLOCK_N x NH)  = softmax rows of S, transposed in place (the C fragment of S is the B
                           fragment of P^T: same registers)
    O^T  (D x NH)       += V'^T(D x BLOCK_N) . P^T                V'^T decoded into A fragments

``NH`` is 8 (GQA up to 8; the padded rows 8..15 of S are dropped) or 16. The results go to the same
``(part_o, part_lse)`` buffers as the Triton split stage, reduced by the same kernel.

Needs Gluon (Triton >= 3.6) and a device with the fp8 conversion (sm_89+) for the UE4M3 scales.
"""
from __future__ import annotations

from triton.experimental import gluon
import triton.experimental.gluon.language as gl
from triton.experimental.gluon.language.nvidia.ampere import mma_v2

from .kv_tile import E2M1_BYTE_REGS, e2m1_bytes_ptx, f16x2_of_bytes, split_range

MMA = gl.constexpr(gl.NVMMADistributedLayout(version=[2, 0], warps_per_cta=[1, 1], instr_shape=[16, 8]))

def _lane_pairs(t: str, first_out: int, packed: bool = False) -> list[str]:
    """PTX of the four f16x2 pairs of register ``t`` times the scale pair ``s2``, into outputs
    ``first_out .. first_out + 7`` (16-bit halves), or ``first_out .. first_out + 3`` (``packed``:
    one b32 a pair): pair i holds the nibbles i and i + 4 (bytes i // 2 and i // 2 + 2 of ``ze`` for
    even i, of ``zo`` for odd i; see kv_tile.e2m1_bytes_ptx)."""
    out = [e2m1_bytes_ptx(t)]
    for i in range(4):
        b = i // 2
        pair = f16x2_of_bytes("x", "ze" if i % 2 == 0 else "zo", b, b + 2)
        if packed:
            out.append(pair + f"mul.rn.f16x2 ${first_out + i}, x, s2;")
        else:
            out.append(pair + f"mul.rn.f16x2 x, x, s2;\nmov.b32 {{${first_out + 2 * i}, ${first_out + 2 * i + 1}}}, x;")
    return out


def _word_asm() -> str:
    """One 32-bit word (8 codes, little-endian nibbles) and an fp16 block scale ($9) -> 8 fp16
    values: output pair (2i, 2i + 1) holds elements (i, i + 4) of the word."""
    return "{\n" + "\n".join([E2M1_BYTE_REGS, ".reg .b32 x, s2;", "mov.b32 s2, {$9, $9};"] + _lane_pairs("$8", 0)) \
        + "\n}\n"


def _pair_asm() -> str:
    """Two words of the same head_dim range, of an even and an odd token, with their fp16 block
    scales -> 16 fp16 values: output (2q, 2q + 1) is element q of the word for the (even, odd) token,
    as one b32 lane pair (the A fragment of V'^T pairs consecutive tokens)."""
    lines = [E2M1_BYTE_REGS, ".reg .b32 x, s2, ta, tb;",
             "mov.b32 s2, {$18, $19};",
             "prmt.b32 ta, $16, $17, 0x5410;",     # bytes 0,1 of even | bytes 0,1 of odd
             "prmt.b32 tb, $16, $17, 0x7632;"]     # bytes 2,3 of even | bytes 2,3 of odd
    return "{\n" + "\n".join(lines + _lane_pairs("ta", 0) + _lane_pairs("tb", 8)) + "\n}\n"


_WORD_ASM = gl.constexpr(_word_asm())
_PAIR_ASM = gl.constexpr(_pair_asm())


@gluon.jit
def _decode_words(w, s):
    """int32 words -> the 8 fp16 outputs of _WORD_ASM joined as trailing dims (k0, k1, k2): output
    k = k0 + 2 k1 + 4 k2 is element ``(k >> 1) + 4 (k & 1)`` of the word."""
    f = gl.inline_asm_elementwise(_WORD_ASM, "=h,=h,=h,=h,=h,=h,=h,=h,r,h", [w, s],
                                  dtype=(gl.float16,) * 8, is_pure=True, pack=1)
    x0 = gl.join(gl.join(f[0], f[1]), gl.join(f[2], f[3]))
    x1 = gl.join(gl.join(f[4], f[5]), gl.join(f[6], f[7]))
    return gl.join(x0, x1)


@gluon.jit
def _decode_pairs(we, wo, se, so):
    """Words of even / odd tokens -> 16 fp16 outputs joined as trailing dims (tp, q0, q1, q2):
    token parity tp, element q = q0 + 2 q1 + 4 q2 of the word."""
    f = gl.inline_asm_elementwise(_PAIR_ASM, "=h,=h,=h,=h,=h,=h,=h,=h,=h,=h,=h,=h,=h,=h,=h,=h,r,r,h,h",
                                  [we, wo, se, so], dtype=(gl.float16,) * 16, is_pure=True, pack=1)
    y0 = gl.join(gl.join(gl.join(f[0], f[1]), gl.join(f[2], f[3])),
                 gl.join(gl.join(f[4], f[5]), gl.join(f[6], f[7])))
    y1 = gl.join(gl.join(gl.join(f[8], f[9]), gl.join(f[10], f[11])),
                 gl.join(gl.join(f[12], f[13]), gl.join(f[14], f[15])))
    return gl.join(y0, y1)


@gluon.jit
def perm_k(j, R: gl.constexpr):
    """Physical head_dim element of row ``j`` of K'^T (and column ``j`` of Q'): j = r * 32 + k2 * 16
    + k1 * 8 + c * 2 + k0, word ``c * R + r``, output ``k0 + 2 k1 + 4 k2`` of _WORD_ASM."""
    k0 = j & 1
    c = (j >> 1) & 3
    k1 = (j >> 3) & 1
    k2 = (j >> 4) & 1
    r = j >> 5
    return 8 * (c * R + r) + (k1 + 2 * k2) + 4 * k0


@gluon.jit
def perm_v(m, RV: gl.constexpr):
    """Physical head_dim element of row ``m`` of V'^T (and O^T): m = (rv * 8 + q) * 8 + g, word
    ``g * RV + rv``, element ``q`` of it."""
    g = m & 7
    q = (m >> 3) & 7
    rv = m >> 6
    return 8 * (g * RV + rv) + q


@gluon.jit
def _rows(kv_indices_ptr, base, max_id, n0, hi_tok, rel, data_ptr, stride_s, scale_ptr, stride_ss,
          PAGE: gl.constexpr):
    """Pointers to the data (int32 words) and scale rows of the tokens ``n0 + rel`` of a request
    (``rel`` a tile's token offsets; those at or past ``hi_tok`` read its last token again: their
    scores are masked). An id outside the pool (slot, or page with PAGE > 1) is clamped to
    ``max_id`` by one unsigned minimum (a negative int32 id wraps above any pool): no row outside
    the pool is read (reported per batch by kv_tile.check_kv_indices). The offsets are unsigned:
    an id's address is taken from the tile's first id with no 64-bit sign extension, and a row's
    address is one 32 x 32 -> 64-bit multiply-add (IMAD.WIDE.U32), exact for any pool size."""
    rel = gl.minimum(rel, hi_tok - 1 - n0).to(gl.uint32)
    if PAGE > 1:
        pos = n0.to(gl.uint32) + rel
        idx = gl.minimum(gl.load(kv_indices_ptr + base + pos // PAGE).to(gl.uint32), max_id)
        idx = idx * PAGE + pos % PAGE
    else:
        idx = gl.minimum(gl.load(kv_indices_ptr + (base + n0) + rel).to(gl.uint32), max_id)
    drow = (data_ptr + idx.to(gl.uint64) * stride_s.to(gl.uint32).to(gl.uint64)).to(gl.pointer_type(gl.int32))
    srow = scale_ptr + idx.to(gl.uint64) * stride_ss.to(gl.uint32).to(gl.uint64)
    return drow, srow


@gluon.jit
def _f16_scales(x):
    return x.to(gl.float8e4nv, bitcast=True).to(gl.float16)


@gluon.jit
def _per_word(sb, NW: gl.constexpr, N: gl.constexpr):
    """Block scales ``(NW // 2, N)`` -> per-word ``(NW, N)`` (word w in block w // 2), registers only."""
    x = gl.permute(gl.join(sb, sb), [0, 2, 1])
    return gl.reshape(x, [NW, N])


@gluon.jit
def _load_k(kc, ksc, kv_indices_ptr, base, max_id, n0, hi_tok, stride_s, stride_ss, HEAD_DIM: gl.constexpr,
            BLOCK_N: gl.constexpr, PAGE: gl.constexpr, KWL: gl.constexpr,
            KSL: gl.constexpr):
    """K tile as stored: words ``(NW, BLOCK_N)`` in layout KWL and fp16 block scales ``(NB,
    BLOCK_N)`` in layout KSL (each thread's words lie in its blocks). Positions past ``hi_tok``
    read the last token again (their scores are masked)."""
    NW: gl.constexpr = HEAD_DIM // 8
    NB: gl.constexpr = HEAD_DIM // 16
    t = gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, KWL))
    w = gl.arange(0, NW, layout=gl.SliceLayout(1, KWL))
    drow, _s = _rows(kv_indices_ptr, base, max_id, n0, hi_tok, t, kc, stride_s, ksc, stride_ss, PAGE)
    words = gl.load(gl.expand_dims(drow, 0) + gl.expand_dims(w, 1))
    ts = gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, KSL))
    blk = gl.arange(0, NB, layout=gl.SliceLayout(1, KSL))
    _d, srow = _rows(kv_indices_ptr, base, max_id, n0, hi_tok, ts, kc, stride_s, ksc, stride_ss, PAGE)
    sc = gl.load(gl.expand_dims(srow, 0) + gl.expand_dims(blk, 1))
    return words, sc


@gluon.jit
def _load_v(vc, vsc, kv_indices_ptr, base, max_id, n0, hi_tok, stride_s, stride_ss, PARITY: gl.constexpr,
            HEAD_DIM: gl.constexpr, BLOCK_N: gl.constexpr, PAGE: gl.constexpr,
            VWL: gl.constexpr, VSL: gl.constexpr):
    """Words ``(NW, BLOCK_N // 2)`` of the even (PARITY 0) or odd tokens of a V tile in layout VWL,
    and their block scales: ``(NB, BLOCK_N // 2)`` in layout VSL, or per word in VWL at head_dim 64
    (a thread's one word there is half a block)."""
    NW: gl.constexpr = HEAD_DIM // 8
    NB: gl.constexpr = HEAD_DIM // 16
    u = gl.arange(0, BLOCK_N // 2, layout=gl.SliceLayout(0, VWL))
    w = gl.arange(0, NW, layout=gl.SliceLayout(1, VWL))
    drow, srow = _rows(kv_indices_ptr, base, max_id, n0, hi_tok, 2 * u + PARITY, vc, stride_s, vsc, stride_ss, PAGE)
    words = gl.load(gl.expand_dims(drow, 0) + gl.expand_dims(w, 1))
    if HEAD_DIM == 64:
        sc = gl.load(gl.expand_dims(srow, 0) + gl.expand_dims(w // 2, 1))
    else:
        us = gl.arange(0, BLOCK_N // 2, layout=gl.SliceLayout(0, VSL))
        blk = gl.arange(0, NB, layout=gl.SliceLayout(1, VSL))
        _d, srow = _rows(kv_indices_ptr, base, max_id, n0, hi_tok, 2 * us + PARITY, vc, stride_s, vsc, stride_ss,
                         PAGE)
        sc = gl.load(gl.expand_dims(srow, 0) + gl.expand_dims(blk, 1))
    return words, sc


@gluon.jit
def _load_tile(kc, ksc, vc, vsc, kv_indices_ptr, base, max_id, n0, hi_tok, stride_kc_s, stride_ks_s, stride_vc_s,
               stride_vs_s, HEAD_DIM: gl.constexpr, BLOCK_N: gl.constexpr, PAGE: gl.constexpr,
               KWL: gl.constexpr, VWL: gl.constexpr, KSL: gl.constexpr, VSL: gl.constexpr):
    """The raw tile at ``n0``: K words and scales, then V words and scales of its even and odd
    tokens (:func:`_load_k`, :func:`_load_v`)."""
    kw, ks = _load_k(kc, ksc, kv_indices_ptr, base, max_id, n0, hi_tok, stride_kc_s, stride_ks_s, HEAD_DIM, BLOCK_N, PAGE,
                     KWL, KSL)
    we, se = _load_v(vc, vsc, kv_indices_ptr, base, max_id, n0, hi_tok, stride_vc_s, stride_vs_s, 0, HEAD_DIM, BLOCK_N,
                     PAGE, VWL, VSL)
    wo, so = _load_v(vc, vsc, kv_indices_ptr, base, max_id, n0, hi_tok, stride_vc_s, stride_vs_s, 1, HEAD_DIM, BLOCK_N,
                     PAGE, VWL, VSL)
    return kw, ks, we, se, wo, so


@gluon.jit
def _out_ptrs(o_ptr, b, stride_o_b, stride_o_h, heads, om, RV: gl.constexpr):
    """``(HEAD_DIM, NH)`` pointers of request ``b``'s output at ``heads`` in O^T's layout, the
    head_dim order scattered back through :func:`perm_v` (the one-split DIRECT store)."""
    return o_ptr + b * stride_o_b + gl.expand_dims(heads * stride_o_h, 0) + gl.expand_dims(perm_v(om, RV), 1)


@gluon.jit
def _kt_operand(words, sc, HEAD_DIM: gl.constexpr, BLOCK_N: gl.constexpr, KB: gl.constexpr,
                KWL: gl.constexpr):
    """Decoded K'^T ``(HEAD_DIM, BLOCK_N)`` in the B-operand layout (see :func:`perm_k`)."""
    R: gl.constexpr = HEAD_DIM // 32
    s = gl.convert_layout(_per_word(_f16_scales(sc), HEAD_DIM // 8, BLOCK_N), KWL)
    x = _decode_words(words, s)                                                   # [NW, BN, k0, k1, k2]
    x = gl.reshape(x, [4, R, BLOCK_N, 2, 2, 2])                                   # [c, r, t, k0, k1, k2]
    x = gl.permute(x, [1, 5, 4, 0, 3, 2])                                         # [r, k2, k1, c, k0, t]
    x = gl.reshape(x, [HEAD_DIM, BLOCK_N])
    return gl.convert_layout(x, KB)


@gluon.jit
def _vt_operand(we, se, wo, so, HEAD_DIM: gl.constexpr, BLOCK_N: gl.constexpr, VA: gl.constexpr,
                VWL: gl.constexpr):
    """Decoded V'^T ``(HEAD_DIM, BLOCK_N)`` in the A-operand layout (see :func:`perm_v`)."""
    RV: gl.constexpr = HEAD_DIM // 64
    se = _f16_scales(se)
    so = _f16_scales(so)
    if HEAD_DIM != 64:
        se = gl.convert_layout(_per_word(se, HEAD_DIM // 8, BLOCK_N // 2), VWL)
        so = gl.convert_layout(_per_word(so, HEAD_DIM // 8, BLOCK_N // 2), VWL)
    y = _decode_pairs(we, wo, se, so)                                             # [NW, U, tp, q0, q1, q2]
    y = gl.reshape(y, [8, RV, BLOCK_N // 2, 2, 2, 2, 2])                          # [g, rv, u, tp, q0, q1, q2]
    y = gl.permute(y, [1, 6, 5, 4, 0, 2, 3])                                      # [rv, q2, q1, q0, g, u, tp]
    y = gl.reshape(y, [HEAD_DIM, BLOCK_N])
    return gl.convert_layout(y, VA)


@gluon.jit
def decode_split_nvfp4_kernel(
    q_ptr, stride_q_b, stride_q_h,
    k_cache_ptr, v_cache_ptr, stride_kc_s, stride_kc_h, stride_vc_s, stride_vc_h,
    k_scale_ptr, v_scale_ptr, stride_ks_s, stride_ks_h, stride_vs_s, stride_vs_h,
    kv_indptr_ptr, kv_indices_ptr, seq_lens_ptr,
    part_o_ptr, part_lse_ptr,
    qk_scale, logit_cap, window_left, group, max_splits,
    max_id,                                 # the pool's last slot / page: ids are clamped to it
    HEAD_DIM: gl.constexpr, BLOCK_N: gl.constexpr, NH: gl.constexpr, PAGE: gl.constexpr,
    MIN_SPLIT_TOKENS: gl.constexpr, HAS_CAP: gl.constexpr, HAS_WINDOW: gl.constexpr,
    KWL: gl.constexpr, VWL: gl.constexpr, KSL: gl.constexpr, VSL: gl.constexpr,
    PREFETCH: gl.constexpr, DIRECT: gl.constexpr = False, o_ptr=None, stride_o_b=0, stride_o_h=0, v_scale=1.0,
):
    KB: gl.constexpr = gl.DotOperandLayout(1, MMA, 2)
    QA: gl.constexpr = gl.DotOperandLayout(0, MMA, 2)
    VA: gl.constexpr = gl.DotOperandLayout(0, MMA, 2)
    PB: gl.constexpr = gl.DotOperandLayout(1, MMA, 2)
    R: gl.constexpr = HEAD_DIM // 32
    RV: gl.constexpr = HEAD_DIM // 64

    # grid (kv_heads, batch, splits): the programs reading one token's rows (a KV head each) run side by side
    kvh = gl.program_id(0)
    b = gl.program_id(1)
    n_kvh = gl.num_programs(0)
    sid = gl.program_id(2)
    seq_len = gl.load(seq_lens_ptr + b)
    base = gl.load(kv_indptr_ptr + b)
    lo_tok, hi_tok = split_range(seq_len, window_left, sid, max_splits, MIN_SPLIT_TOKENS, BLOCK_N, HAS_WINDOW)

    # the softmax state is kept per head in the column layout of O^T (NH heads)
    OL: gl.constexpr = gl.SliceLayout(0, MMA)
    offs_h_o = gl.arange(0, NH, layout=OL)
    out_row_o = (b * n_kvh * group + kvh * group + offs_h_o) * max_splits + sid
    # DIRECT (one split, no LSE wanted): the output itself is stored here, V-scaled, in q's dtype
    om = gl.arange(0, HEAD_DIM, layout=gl.SliceLayout(1, MMA))
    if lo_tok >= hi_tok:
        if DIRECT:      # an empty request's output is zeros, as the reduce writes it
            gl.store(_out_ptrs(o_ptr, b, stride_o_b, stride_o_h, kvh * group + offs_h_o, om, RV),
                     gl.zeros([HEAD_DIM, NH], o_ptr.dtype.element_ty, MMA), mask=gl.expand_dims(offs_h_o < group, 0))
        else:
            gl.store(part_lse_ptr + out_row_o, gl.full([NH], float("-inf"), gl.float32, OL), mask=offs_h_o < group)
        return

    # Q' (16 x D): q's head_dim gathered through perm_k, fp16 (clamped), rows >= group zero
    qh = gl.arange(0, 16, layout=gl.SliceLayout(1, QA))
    qj = gl.arange(0, HEAD_DIM, layout=gl.SliceLayout(0, QA))
    q_rows = q_ptr + b * stride_q_b + (kvh * group + qh) * stride_q_h
    qv = gl.load(gl.expand_dims(q_rows, 1) + gl.expand_dims(perm_k(qj, R), 0),
                 mask=gl.expand_dims(qh < group, 1), other=0.0)
    qv = gl.minimum(gl.maximum(qv.to(gl.float32), -65504.0), 65504.0).to(gl.float16)

    kc = k_cache_ptr + kvh * stride_kc_h
    vc = v_cache_ptr + kvh * stride_vc_h
    ksc = k_scale_ptr + kvh * stride_ks_h
    vsc = v_scale_ptr + kvh * stride_vs_h

    m_i = gl.full([NH], float("-inf"), gl.float32, OL)
    l_i = gl.zeros([NH], gl.float32, OL)
    acc = gl.zeros([HEAD_DIM, NH], gl.float32, MMA)

    if PREFETCH:    # the raw words and scales of tile i + 1 are in flight while tile i is computed
        kw, ks, we, se, wo, so = _load_tile(kc, ksc, vc, vsc, kv_indices_ptr, base, max_id, lo_tok, hi_tok, stride_kc_s,
                                            stride_ks_s, stride_vc_s, stride_vs_s, HEAD_DIM, BLOCK_N, PAGE,
                                            KWL, VWL, KSL, VSL)
    for n0 in range(lo_tok, hi_tok, BLOCK_N):
        if PREFETCH:
            kw_c, ks_c, we_c, se_c, wo_c, so_c = kw, ks, we, se, wo, so
            kw, ks, we, se, wo, so = _load_tile(kc, ksc, vc, vsc, kv_indices_ptr, base, max_id,
                                                gl.minimum(n0 + BLOCK_N, hi_tok - 1), hi_tok, stride_kc_s,
                                                stride_ks_s, stride_vc_s, stride_vs_s, HEAD_DIM, BLOCK_N, PAGE,
                                                KWL, VWL, KSL, VSL)
        else:
            kw_c, ks_c, we_c, se_c, wo_c, so_c = _load_tile(kc, ksc, vc, vsc, kv_indices_ptr, base, max_id, n0, hi_tok,
                                                            stride_kc_s, stride_ks_s, stride_vc_s, stride_vs_s,
                                                            HEAD_DIM, BLOCK_N, PAGE, KWL, VWL, KSL, VSL)
        kt = _kt_operand(kw_c, ks_c, HEAD_DIM, BLOCK_N, KB, KWL)
        s = mma_v2(qv, kt, gl.zeros([16, BLOCK_N], gl.float32, MMA))
        if NH == 8:   # rows 8..15 of S are padding: keep rows 0..7 (row bit 3 is a register bit)
            s, _pad = gl.split(gl.permute(gl.reshape(s, [2, 8, BLOCK_N]), [1, 2, 0]))
        s = s * qk_scale
        pos = n0 + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, s.type.layout))
        if HAS_CAP:
            t = gl.exp2((2.0 / logit_cap) * gl.abs(s))
            th = 1.0 - 2.0 / (t + 1.0)
            s = gl.where(s < 0, -logit_cap * th, logit_cap * th) * 1.4426950408889634
        s = gl.where(gl.expand_dims(pos < hi_tok, 0), s, float("-inf"))
        m_cur = gl.convert_layout(m_i, gl.SliceLayout(1, s.type.layout))
        m_new = gl.maximum(m_cur, gl.max(s, 1))
        m_use = gl.where(m_new == float("-inf"), 0.0, m_new)
        p = gl.exp2(s - gl.expand_dims(m_use, 1))
        alpha = gl.convert_layout(gl.exp2(m_cur - m_use), OL)
        l_i = l_i * alpha + gl.convert_layout(gl.sum(p, 1), OL)
        m_i = gl.convert_layout(m_new, OL)
        pt = gl.convert_layout(gl.permute(p.to(gl.float16), [1, 0]), PB)
        vt = _vt_operand(we_c, se_c, wo_c, so_c, HEAD_DIM, BLOCK_N, VA, VWL)
        acc = mma_v2(vt, pt, acc * gl.expand_dims(alpha, 0))

    l_o = l_i
    m_o = m_i
    h_ok = offs_h_o < group
    if DIRECT:
        o = acc * gl.expand_dims(v_scale / l_o, 0)
        gl.store(_out_ptrs(o_ptr, b, stride_o_b, stride_o_h, kvh * group + offs_h_o, om, RV),
                 o.to(o_ptr.dtype.element_ty), mask=gl.expand_dims(h_ok, 0))
        return
    o = acc / gl.expand_dims(l_o, 0)
    o_ptrs = part_o_ptr + gl.expand_dims(out_row_o, 0) * HEAD_DIM + gl.expand_dims(perm_v(om, RV), 1)
    gl.store(o_ptrs, o, mask=gl.expand_dims(h_ok, 0))
    gl.store(part_lse_ptr + out_row_o, m_o + gl.log2(l_o), mask=h_ok)


# --------------------------------------------------------------------------------------------------
# host side
# --------------------------------------------------------------------------------------------------

def _bits(n: int) -> int:
    return n.bit_length() - 1


def word_layouts(head_dim: int, block_n: int):
    """Register layouts (one warp) of the loaded K words ``(NW, BLOCK_N)``, V words ``(NW,
    BLOCK_N // 2)``, K block scales ``(NB, BLOCK_N)`` and V block scales ``(NB, BLOCK_N // 2)``:
    lane ``4 g + c`` holds, for K, words ``c * R .. c * R + R - 1`` (16 contiguous bytes at head_dim
    128) of tokens ``g + 8 i`` and their blocks; for V, words ``g * RV ..`` of token pairs ``c + 4 i``
    and their blocks."""
    nw = head_dim // 8
    r, rv = head_dim // 32, head_dim // 64
    tok_k = [[0, 8 << i] for i in range(_bits(block_n // 8))]
    tok_v = [[0, 4 << i] for i in range(_bits(block_n // 8))]
    lin = lambda regs, lanes, shape: gl.DistributedLinearLayout(  # noqa: E731
        reg_bases=regs, lane_bases=lanes, warp_bases=[], block_bases=[], shape=shape)
    kwl = lin([[1 << i, 0] for i in range(_bits(r))] + tok_k, [[r, 0], [2 * r, 0], [0, 1], [0, 2], [0, 4]],
              [nw, block_n])
    ksl = lin([[1 << i, 0] for i in range(_bits(r // 2))] + tok_k,
              [[r // 2, 0], [r, 0], [0, 1], [0, 2], [0, 4]], [nw // 2, block_n])
    vwl = lin([[1 << i, 0] for i in range(_bits(rv))] + tok_v, [[0, 1], [0, 2], [rv, 0], [2 * rv, 0], [4 * rv, 0]],
              [nw, block_n // 2])
    if head_dim == 64:      # unused there (per-word V scales)
        vsl = vwl
    else:
        vsl = lin([[1 << i, 0] for i in range(_bits(rv // 2))] + tok_v,
                  [[0, 1], [0, 2], [rv // 2, 0], [rv, 0], [2 * rv, 0]], [nw // 2, block_n // 2])
    return kwl, vwl, ksl, vsl


def aot_cases(arch: int):
    """Every configuration of this kernel the decode planner can choose on ``arch`` (both token
    tiles: the planner picks by batch), for ``sm12x budget``."""
    from .. import planner
    seen = set()
    for inp in planner.decode_domain():
        if inp["kv_dtype"] != "nvfp4":
            continue
        for batch in (1, 4096):
            cfg = planner.plan_decode(arch, batch=batch, **inp)
            if not cfg.fp4_mma:
                continue
            nh = 8 if inp["group"] <= 8 else 16
            key = (inp["head_dim"], inp["q_dtype"], inp["page_size"], nh, cfg.block_n)
            if key in seen:
                continue
            seen.add(key)
            kwl, vwl, ksl, vsl = word_layouts(inp["head_dim"], cfg.block_n)
            for direct in (False, True):
                yield from _aot_case(inp, cfg, nh, kwl, vwl, ksl, vsl, direct)


def _aot_case(inp, cfg, nh, kwl, vwl, ksl, vsl, direct=False):
    cx = dict(HEAD_DIM=inp["head_dim"], BLOCK_N=cfg.block_n, NH=nh, PAGE=inp["page_size"],
              MIN_SPLIT_TOKENS=cfg.min_split_tokens, HAS_CAP=False, HAS_WINDOW=False, KWL=kwl, VWL=vwl,
              KSL=ksl, VSL=vsl, PREFETCH=cfg.prefetch, DIRECT=direct)
    sig = {"q_ptr": f"*{inp['q_dtype']}", "k_cache_ptr": "*u8", "v_cache_ptr": "*u8", "k_scale_ptr": "*u8",
           "v_scale_ptr": "*u8", "kv_indptr_ptr": "*i32", "kv_indices_ptr": "*i32", "seq_lens_ptr": "*i32",
           "part_o_ptr": "*fp32", "part_lse_ptr": "*fp32", "qk_scale": "fp32", "logit_cap": "fp32",
           }
    for n in ("stride_q_b", "stride_q_h", "stride_kc_s", "stride_kc_h", "stride_vc_s", "stride_vc_h",
              "stride_ks_s", "stride_ks_h", "stride_vs_s", "stride_vs_h", "window_left", "group", "max_splits",
              "max_id"):
        sig[n] = "i32"
    sig.update(o_ptr=f"*{inp['q_dtype']}", stride_o_b="i32", stride_o_h="i32", v_scale="fp32")   # always passed
    label = dict(head_dim=inp["head_dim"], kv_dtype="nvfp4", q_dtype=inp["q_dtype"], page_size=inp["page_size"],
                 heads_n=nh, block_n=cfg.block_n, num_warps=1, prefetch=cfg.prefetch,
                 direct=direct)
    yield label, sig, cx, {"num_warps": 1, "num_stages": 1}
