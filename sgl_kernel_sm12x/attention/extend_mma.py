"""Extend (prefill, chunked prefill, prefix hit) for the ``mma.sync`` architectures -- sm_80 to
sm_90 without warpgroup MMA, and sm_120 / sm_121 -- written in Gluon so the tile order is
FlashAttention-2's and not the compiler's:

* 128 query rows on 8 warps (64 on 4), each warp owning 16 whole rows: the row maximum and sum are
  quad shuffles, never a shared-memory exchange between warps;
* Q loaded into MMA operand registers once, kept there for every key tile;
* K and V tiles gathered by ``cp.async`` into ``NBUF`` swizzled buffers a tensor (prefix rows by
  slot id from the pool, the chunk's rows straight from k / v), one tile group in flight per
  stage, one CTA barrier a tile; operands read by ``ldmatrix``;
* the scores' accumulator is the P operand of the next MMA: converted to bf16 / fp16 in registers,
  no shared-memory round trip;
* exp2 with the softmax scale folded into the row maximum's subtraction (one FMA an element).

NVFP4 pools (KV_FP4): each prefix tile's packed words and block scales are loaded into registers
one tile ahead, decoded by the whole CTA (a thread decodes its share, two words a tensor at
head_dim 128) into a two-stage fp16 tile in shared memory, which every warp's ``ldmatrix`` reads:
eight warps share each decoded tile, where decoding into each warp's own operand registers (as the
one-warp decode kernel does) would decode every tile eight times. No global workspace. K's columns
are decoded in the order the PTX decode produces them (pairs ``i``, ``i + 4`` of a word) and Q is
gathered through the same order; V is decoded in natural order (one ``prmt`` a pair), so the
accumulator needs no fix-up before the chunk's keys.

Rows are ``BLOCK_M // PACK`` query tokens times ``PACK`` query heads of one KV group (GQA
packing: each K / V tile is read once for ``PACK`` heads). Scope: 16-bit and NVFP4 pools,
head_dim 64 and 128, no sliding window; the planner keeps the Triton kernel of :mod:`.extend` for
the rest. An id outside the pool is clamped to ``max_id`` (one unsigned minimum, as everywhere):
no row outside the pool is read.
"""
from __future__ import annotations

import functools

import torch
import triton
from triton.experimental import gluon
import triton.experimental.gluon.language as gl
from triton.experimental.gluon.language.nvidia.ampere import async_copy, mma_v2

from .decode_nvfp4 import _lane_pairs
from .extend_wgmma import _decode, _phys, _q_fp16_permuted, _softmax
from .kv_tile import E2M1_BYTE_REGS, FP4_PTX_UNIT, max_id as _max_id

# a CTA-wide barrier: gl.barrier on Triton 3.8, gl.thread_barrier on 3.6
_bar = gl.barrier if hasattr(gl, "barrier") else gl.thread_barrier


@gluon.jit
def _slot_rows(kv_indices_ptr, base, max_id, n0, prefix_len, BLOCK_N: gl.constexpr, PAGE: gl.constexpr,
               XL: gl.constexpr):
    """Pool rows (slots, unsigned 32-bit) of the prefix tile at ``n0``; positions past the prefix
    read its last token again (their scores are masked)."""
    pos = gl.minimum(n0 + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, XL)), prefix_len - 1)
    if PAGE > 1:
        s = gl.minimum(gl.load(kv_indices_ptr + base + pos // PAGE).to(gl.uint32), max_id)
        s = s * PAGE + (pos % PAGE).to(gl.uint32)
    else:
        s = gl.minimum(gl.load(kv_indices_ptr + base + pos).to(gl.uint32), max_id)
    return s


@gluon.jit
def _gather(k_buf, v_buf, kc, vc, slot, stride_kc_s, stride_vc_s, jj):
    """cp.async of the K and V rows of pool slots ``slot`` into one stage's buffers."""
    async_copy.async_copy_global_to_shared(
        k_buf, kc + gl.expand_dims(slot.to(gl.uint64) * stride_kc_s.to(gl.uint32).to(gl.uint64), 1)
        + gl.expand_dims(jj, 0))
    async_copy.async_copy_global_to_shared(
        v_buf, vc + gl.expand_dims(slot.to(gl.uint64) * stride_vc_s.to(gl.uint32).to(gl.uint64), 1)
        + gl.expand_dims(jj, 0))


@gluon.jit
def _copy_chunk(k_buf, v_buf, k_rows, v_rows, q0, stride_k_t, stride_v_t, n0, hi, t_x, jj):
    """cp.async of the chunk's own K and V rows ``n0 ..`` (rows at or past ``hi`` zero-filled)."""
    j = n0 + t_x
    ok = gl.expand_dims(j < hi, 1)
    async_copy.async_copy_global_to_shared(
        k_buf, gl.expand_dims(k_rows + (q0 + j).to(gl.int64) * stride_k_t, 1) + gl.expand_dims(jj, 0), mask=ok)
    async_copy.async_copy_global_to_shared(
        v_buf, gl.expand_dims(v_rows + (q0 + j).to(gl.int64) * stride_v_t, 1) + gl.expand_dims(jj, 0), mask=ok)


@gluon.jit
def _tile(q_op, k_buf, v_buf, m_i, l_i, acc, vis, scale, logit_cap, MASKED: gl.constexpr, HAS_CAP: gl.constexpr,
          MMA: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr):
    """One key tile from shared memory: S = Q K^T, the online softmax, O = O * alpha + P V."""
    KOP: gl.constexpr = gl.DotOperandLayout(1, MMA, 2)
    POP: gl.constexpr = gl.DotOperandLayout(0, MMA, 2)
    k_op = k_buf.permute((1, 0)).load(KOP)
    s = mma_v2(q_op, k_op, gl.zeros([BLOCK_M, BLOCK_N], gl.float32, MMA))
    p, alpha, m_i, l_i = _softmax(s, scale, m_i, l_i, vis, MASKED, HAS_CAP, logit_cap)
    p_op = gl.convert_layout(p.to(q_op.dtype), POP)
    v_op = v_buf.load(KOP)
    acc = mma_v2(p_op, v_op, acc * gl.expand_dims(alpha, 1))
    return m_i, l_i, acc


@gluon.jit
def _prefix_phase(q_op, k_bufs, v_bufs, m_i, l_i, acc, kc, vc, stride_kc_s, stride_vc_s, kv_indices_ptr, base,
                  max_id, prefix_len, qk_scale, logit_cap, jj, HAS_CAP: gl.constexpr, PAGE: gl.constexpr,
                  NBUF: gl.constexpr, MMA: gl.constexpr, XL: gl.constexpr, BLOCK_M: gl.constexpr,
                  BLOCK_N: gl.constexpr):
    """The cached prefix, gathered from the pool: tile j's K and V land while tiles j - NBUF + 1
    .. j - 1 are computed; the slot ids of the tile after the one being issued are loaded a step
    ahead. Whole tiles select-free, the partial last one masked."""
    n_tiles = gl.cdiv(prefix_len, BLOCK_N)
    n_full = prefix_len // BLOCK_N
    offs_n = gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, MMA))
    # tiles 0 .. NBUF - 2 in flight before the loop, one commit group each
    slot = _slot_rows(kv_indices_ptr, base, max_id, 0, prefix_len, BLOCK_N, PAGE, XL)
    for i in gl.static_range(NBUF - 1):
        _gather(k_bufs.index(i), v_bufs.index(i), kc, vc, slot, stride_kc_s, stride_vc_s, jj)
        async_copy.commit_group()
        slot = _slot_rows(kv_indices_ptr, base, max_id, (i + 1) * BLOCK_N, prefix_len, BLOCK_N, PAGE, XL)
    for j in range(0, n_tiles):
        async_copy.wait_group(NBUF - 2)     # this thread's copies of tile j landed
        _bar()                              # everyone's; and tile j - 1's buffers are read
        nxt = j + NBUF - 1                  # issued into the buffers tile j - 1 used
        _gather(k_bufs.index(nxt % NBUF), v_bufs.index(nxt % NBUF), kc, vc, slot, stride_kc_s, stride_vc_s, jj)
        async_copy.commit_group()
        slot = _slot_rows(kv_indices_ptr, base, max_id, (nxt + 1) * BLOCK_N, prefix_len, BLOCK_N, PAGE, XL)
        if j < n_full:
            m_i, l_i, acc = _tile(q_op, k_bufs.index(j % NBUF), v_bufs.index(j % NBUF), m_i, l_i, acc, None,
                                  qk_scale, logit_cap, False, HAS_CAP, MMA, BLOCK_M, BLOCK_N)
        else:
            vis = gl.expand_dims(j * BLOCK_N + offs_n < prefix_len, 0)
            m_i, l_i, acc = _tile(q_op, k_bufs.index(j % NBUF), v_bufs.index(j % NBUF), m_i, l_i, acc, vis,
                                  qk_scale, logit_cap, True, HAS_CAP, MMA, BLOCK_M, BLOCK_N)
    async_copy.wait_group(0)        # the copies issued past the last tile (clamped rows)
    _bar()                          # every warp done with the buffers before the chunk's tiles
    return m_i, l_i, acc


def _word_natural_asm() -> str:
    """One packed word (8 codes) and an fp16 block scale ($5) -> 4 f16x2 registers in natural
    order: register i holds elements 2 i and 2 i + 1, times the scale (and 2^-14)."""
    lines = [E2M1_BYTE_REGS, ".reg .b32 x, s2, p0, p1, p2, p3;", "mov.b32 s2, {$5, $5};"]
    lines += [ln.replace("$0", "p0").replace("$1", "p1").replace("$2", "p2").replace("$3", "p3")
              for ln in _lane_pairs("$4", 0, packed=True)]
    lines += ["prmt.b32 $0, p0, p1, 0x5410;", "prmt.b32 $1, p2, p3, 0x5410;",
              "prmt.b32 $2, p0, p1, 0x7632;", "prmt.b32 $3, p2, p3, 0x7632;"]
    return "{\n" + "\n".join(lines) + "\n}\n"


_WORD_NATURAL_ASM = gl.constexpr(_word_natural_asm())


@gluon.jit
def _decode_natural(words, sc, BLOCK_N: gl.constexpr, HEAD_DIM: gl.constexpr, WL: gl.constexpr):
    """Words and block scales -> ``(BLOCK_N, HEAD_DIM // 2)`` int32, each an f16x2 of two
    consecutive decoded values (times 2^-14), natural column order."""
    NW: gl.constexpr = HEAD_DIM // 8
    s = sc.to(gl.float8e4nv, bitcast=True).to(gl.float16)
    s = gl.convert_layout(gl.reshape(gl.join(s, s), [BLOCK_N, NW]), WL)
    f = gl.inline_asm_elementwise(_WORD_NATURAL_ASM, "=r,=r,=r,=r,r,h", [words, s],
                                  dtype=(gl.int32,) * 4, is_pure=True, pack=1)
    x = gl.join(gl.join(f[0], f[2]), gl.join(f[1], f[3]))      # [t, w, j, i] = f[2 j + i]
    return gl.reshape(x, [BLOCK_N, HEAD_DIM // 2])


@gluon.jit
def _raw_tile(kc, vc, ksc, vsc, kv_indices_ptr, base, max_id, n0, prefix_len, stride_kc_s, stride_vc_s, stride_ks_s,
              stride_vs_s, BLOCK_N: gl.constexpr, HEAD_DIM: gl.constexpr, PAGE: gl.constexpr, WL: gl.constexpr,
              SL: gl.constexpr):
    """The packed words ``(BLOCK_N, HEAD_DIM // 8)`` (layout WL) and block scales ``(BLOCK_N,
    HEAD_DIM // 16)`` (layout SL, a thread's blocks holding its words) of K and V at ``n0``."""
    NW: gl.constexpr = HEAD_DIM // 8
    NB: gl.constexpr = HEAD_DIM // 16
    slot = _slot_rows(kv_indices_ptr, base, max_id, n0, prefix_len, BLOCK_N, PAGE, WL).to(gl.uint64)
    w = gl.expand_dims(gl.arange(0, NW, layout=gl.SliceLayout(0, WL)), 0)
    kw = gl.load((kc + gl.expand_dims(slot * stride_kc_s.to(gl.uint32).to(gl.uint64), 1)).to(
        gl.pointer_type(gl.int32)) + w)
    vw = gl.load((vc + gl.expand_dims(slot * stride_vc_s.to(gl.uint32).to(gl.uint64), 1)).to(
        gl.pointer_type(gl.int32)) + w)
    ss = gl.expand_dims(gl.convert_layout(slot, gl.SliceLayout(1, SL)), 1)
    blk = gl.expand_dims(gl.arange(0, NB, layout=gl.SliceLayout(0, SL)), 0)
    ks = gl.load(ksc + ss * stride_ks_s.to(gl.uint32).to(gl.uint64) + blk)
    vs = gl.load(vsc + ss * stride_vs_s.to(gl.uint32).to(gl.uint64) + blk)
    return kw, vw, ks, vs


@gluon.jit
def _prefix_phase_fp4(q_op, k16, v16, k32, v32, m_i, l_i, acc, kc, vc, ksc, vsc, stride_kc_s, stride_vc_s,
                      stride_ks_s, stride_vs_s, kv_indices_ptr, base, max_id, prefix_len, qk_scale, logit_cap,
                      HAS_CAP: gl.constexpr, PAGE: gl.constexpr, MMA: gl.constexpr, WL: gl.constexpr,
                      SL: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, HEAD_DIM: gl.constexpr):
    """The cached prefix of an NVFP4 pool: tile j decoded by every thread into fp16 buffer j % 2
    (K in the PTX decode's column order, V natural), one barrier, then computed from there by
    every warp; tile j + 1's words and scales are loaded into registers meanwhile."""
    n_tiles = gl.cdiv(prefix_len, BLOCK_N)
    n_full = prefix_len // BLOCK_N
    offs_n = gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, MMA))
    kw, vw, ks, vs = _raw_tile(kc, vc, ksc, vsc, kv_indices_ptr, base, max_id, 0, prefix_len, stride_kc_s,
                               stride_vc_s, stride_ks_s, stride_vs_s, BLOCK_N, HEAD_DIM, PAGE, WL, SL)
    for j in range(0, n_tiles):
        buf = j % 2
        k32.index(buf).store(_decode(kw, ks, BLOCK_N, HEAD_DIM, WL))
        v32.index(buf).store(_decode_natural(vw, vs, BLOCK_N, HEAD_DIM, WL))
        kw, vw, ks, vs = _raw_tile(kc, vc, ksc, vsc, kv_indices_ptr, base, max_id, (j + 1) * BLOCK_N, prefix_len,
                                   stride_kc_s, stride_vc_s, stride_ks_s, stride_vs_s, BLOCK_N, HEAD_DIM, PAGE, WL,
                                   SL)
        _bar()      # tile j decoded by every thread; every warp past tile j - 1 (buffer j + 1's last reader)
        if j < n_full:
            m_i, l_i, acc = _tile(q_op, k16.index(buf), v16.index(buf), m_i, l_i, acc, None, qk_scale, logit_cap,
                                  False, HAS_CAP, MMA, BLOCK_M, BLOCK_N)
        else:
            vis = gl.expand_dims(j * BLOCK_N + offs_n < prefix_len, 0)
            m_i, l_i, acc = _tile(q_op, k16.index(buf), v16.index(buf), m_i, l_i, acc, vis, qk_scale, logit_cap,
                                  True, HAS_CAP, MMA, BLOCK_M, BLOCK_N)
    _bar()          # every warp done with the fp16 buffers before they take the chunk's tiles
    return m_i, l_i, acc


@gluon.jit
def extend_mma_kernel(
    q_ptr, stride_q_t, stride_q_h,
    k_ptr, v_ptr, stride_k_t, stride_k_h, stride_v_t, stride_v_h,
    o_ptr, stride_o_t, stride_o_h,
    k_cache_ptr, v_cache_ptr, stride_kc_s, stride_kc_h, stride_vc_s, stride_vc_h,
    k_scale_ptr, v_scale_ptr, stride_ks_s, stride_ks_h, stride_vs_s, stride_vs_h,
    qo_indptr_ptr, kv_indptr_ptr, kv_indices_ptr, prefix_lens_ptr, max_id,
    qk_scale_prefix, qk_scale_ext, v_scale_prefix, logit_cap, group,
    HEAD_DIM: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, PACK: gl.constexpr,
    PAGE: gl.constexpr, HAS_CAP: gl.constexpr, NUM_WARPS: gl.constexpr, NBUF: gl.constexpr,
    PREFIX: gl.constexpr, KV_FP4: gl.constexpr, XL: gl.constexpr, SMEM: gl.constexpr, WL: gl.constexpr,
    SL: gl.constexpr, SMEM32: gl.constexpr,
):
    """One program: ``BLOCK_M // PACK`` chunk tokens x ``PACK`` query heads of one request. The
    cached prefix (PREFIX: compiled in) from the pool (KV_FP4: an NVFP4 pool, else q's dtype),
    then the chunk's own keys, causal."""
    MMA: gl.constexpr = gl.NVMMADistributedLayout(version=[2, 0], warps_per_cta=[NUM_WARPS, 1],
                                                  instr_shape=[16, 8])
    QOP: gl.constexpr = gl.DotOperandLayout(0, MMA, 2)
    ROW: gl.constexpr = gl.SliceLayout(1, MMA)
    BT: gl.constexpr = BLOCK_M // PACK
    dt: gl.constexpr = q_ptr.dtype.element_ty

    mb = gl.program_id(0)
    hb = gl.program_id(1)
    b = gl.program_id(2)
    q0 = gl.load(qo_indptr_ptr + b)
    ext_len = gl.load(qo_indptr_ptr + b + 1) - q0
    if mb * BT >= ext_len:
        return
    kvh = hb * PACK // group

    # Q: token mb * BT + r // PACK, head hb * PACK + r % PACK; into operand registers once
    r = gl.arange(0, BLOCK_M, layout=gl.SliceLayout(1, XL))
    jj = gl.arange(0, HEAD_DIM, layout=gl.SliceLayout(0, XL))
    tok_x = mb * BT + r // PACK
    q_rows = gl.expand_dims(q_ptr + (q0 + tok_x).to(gl.int64) * stride_q_t + (hb * PACK + r % PACK) * stride_q_h, 1)
    qv = gl.load(q_rows + gl.expand_dims(jj, 0), mask=gl.expand_dims(tok_x < ext_len, 1), other=0.0)
    q_smem = gl.allocate_shared_memory(dt, [BLOCK_M, HEAD_DIM], SMEM, qv)
    k_bufs = gl.allocate_shared_memory(dt, [NBUF, BLOCK_N, HEAD_DIM], SMEM)
    v_bufs = gl.allocate_shared_memory(dt, [NBUF, BLOCK_N, HEAD_DIM], SMEM)
    _bar()
    q_op = q_smem.load(QOP)

    m_i = gl.full([BLOCK_M], float("-inf"), gl.float32, ROW)
    l_i = gl.zeros([BLOCK_M], gl.float32, ROW)
    acc = gl.zeros([BLOCK_M, HEAD_DIM], gl.float32, MMA)

    if PREFIX and KV_FP4:
        prefix_len = gl.load(prefix_lens_ptr + b)
        if prefix_len > 0:
            # Q gathered in the K decode's column order, saturated to fp16, through the Q buffer
            _bar()
            q_smem.store(_q_fp16_permuted(q_rows, jj, gl.expand_dims(tok_x < ext_len, 1)).to(dt, bitcast=True))
            _bar()
            q16 = q_smem._reinterpret(gl.float16, [BLOCK_M, HEAD_DIM], SMEM).load(QOP)
            m_i, l_i, acc = _prefix_phase_fp4(
                q16, k_bufs._reinterpret(gl.float16, [NBUF, BLOCK_N, HEAD_DIM], SMEM),
                v_bufs._reinterpret(gl.float16, [NBUF, BLOCK_N, HEAD_DIM], SMEM),
                k_bufs._reinterpret(gl.int32, [NBUF, BLOCK_N, HEAD_DIM // 2], SMEM32),
                v_bufs._reinterpret(gl.int32, [NBUF, BLOCK_N, HEAD_DIM // 2], SMEM32), m_i, l_i, acc,
                k_cache_ptr + kvh * stride_kc_h, v_cache_ptr + kvh * stride_vc_h, k_scale_ptr + kvh * stride_ks_h,
                v_scale_ptr + kvh * stride_vs_h, stride_kc_s, stride_vc_s, stride_ks_s, stride_vs_s, kv_indices_ptr,
                gl.load(kv_indptr_ptr + b), max_id, prefix_len, qk_scale_prefix, logit_cap, HAS_CAP, PAGE, MMA, WL,
                SL, BLOCK_M, BLOCK_N, HEAD_DIM)
            acc = acc * v_scale_prefix
            # Q again in q's dtype for the chunk's keys (loaded again: not kept live through the prefix)
            q_smem.store(gl.load(q_rows + gl.expand_dims(jj, 0), mask=gl.expand_dims(tok_x < ext_len, 1), other=0.0))
            _bar()
            q_op = q_smem.load(QOP)
    if PREFIX and not KV_FP4:
        prefix_len = gl.load(prefix_lens_ptr + b)
        if prefix_len > 0:
            m_i, l_i, acc = _prefix_phase(
                q_op, k_bufs, v_bufs, m_i, l_i, acc, k_cache_ptr + kvh * stride_kc_h, v_cache_ptr + kvh * stride_vc_h,
                stride_kc_s, stride_vc_s, kv_indices_ptr, gl.load(kv_indptr_ptr + b), max_id, prefix_len,
                qk_scale_prefix, logit_cap, jj, HAS_CAP, PAGE, NBUF, MMA, XL, BLOCK_M, BLOCK_N)

    # the chunk's own keys 0 .. hi (causal): whole tiles below the block's first row select-free
    k_rows = k_ptr + kvh * stride_k_h
    v_rows = v_ptr + kvh * stride_v_h
    t_x = gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, XL))
    hi = gl.minimum(ext_len, (mb + 1) * BT)
    n_tiles = gl.cdiv(hi, BLOCK_N)
    n_free = (mb * BT) // BLOCK_N          # tiles every row of the block sees whole
    tok_s = gl.expand_dims(mb * BT + gl.arange(0, BLOCK_M, layout=ROW) // PACK, 1)
    offs_n = gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, MMA))
    for i in gl.static_range(NBUF - 1):
        _copy_chunk(k_bufs.index(i), v_bufs.index(i), k_rows, v_rows, q0, stride_k_t, stride_v_t, i * BLOCK_N, hi,
                    t_x, jj)
        async_copy.commit_group()
    for j in range(0, n_tiles):
        async_copy.wait_group(NBUF - 2)
        _bar()
        nxt = j + NBUF - 1
        _copy_chunk(k_bufs.index(nxt % NBUF), v_bufs.index(nxt % NBUF), k_rows, v_rows, q0, stride_k_t, stride_v_t,
                    nxt * BLOCK_N, hi, t_x, jj)
        async_copy.commit_group()
        if j < n_free:
            m_i, l_i, acc = _tile(q_op, k_bufs.index(j % NBUF), v_bufs.index(j % NBUF), m_i, l_i, acc, None,
                                  qk_scale_ext, logit_cap, False, HAS_CAP, MMA, BLOCK_M, BLOCK_N)
        else:
            vis = gl.expand_dims(j * BLOCK_N + offs_n, 0) <= tok_s
            m_i, l_i, acc = _tile(q_op, k_bufs.index(j % NBUF), v_bufs.index(j % NBUF), m_i, l_i, acc, vis,
                                  qk_scale_ext, logit_cap, True, HAS_CAP, MMA, BLOCK_M, BLOCK_N)
    async_copy.wait_group(0)

    # normalized rows (a row that saw no key -- none here: the diagonal is always visible)
    o = gl.convert_layout((acc / gl.expand_dims(l_i, 1)).to(dt), XL)
    o_rows = gl.expand_dims(o_ptr + (q0 + tok_x).to(gl.int64) * stride_o_t + (hb * PACK + r % PACK) * stride_o_h, 1)
    gl.store(o_rows + gl.expand_dims(jj, 0), o, mask=gl.expand_dims(tok_x < ext_len, 1))


# --------------------------------------------------------------------------------------------------
# host side
# --------------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def layouts(head_dim: int, block_n: int, num_warps: int):
    """The register layouts of 16-bit rows (8 columns, 16 bytes, a thread: one ``cp.async`` each),
    of an NVFP4 tile's packed words (the tile's words spread over every thread, consecutive words
    of a row in one thread) and of their block scales (each thread's words' blocks); the swizzled
    shared layout ``ldmatrix`` reads without bank conflicts, and the same bytes as f16x2 words."""
    tx = head_dim // 8
    xl = gl.BlockedLayout([1, 8], [32 // tx, tx], [num_warps, 1], [1, 0])
    nw = head_dim // 8
    spt = max(2, block_n * nw // (32 * num_warps))          # words a thread (a whole block: 2)
    tw = nw // spt
    wl = gl.BlockedLayout([1, spt], [32 // tw, tw], [num_warps, 1], [1, 0])
    sl = gl.BlockedLayout([1, spt // 2], [32 // tw, tw], [num_warps, 1], [1, 0])
    smem = gl.SwizzledSharedLayout(8, 1, 8, order=[1, 0])
    smem32 = gl.SwizzledSharedLayout(4, 1, 8, order=[1, 0])
    return dict(XL=xl, WL=wl, SL=sl, SMEM=smem, SMEM32=smem32)


def constexprs(cfg, head_dim: int, page_size: int, has_cap: bool, prefix: bool, fp4: bool = False) -> dict:
    """The kernel's constexprs for ``cfg`` -- the launch's and ``sm12x budget``'s compile alike:
    ``cfg.num_stages`` copy buffers a tensor (at least 2)."""
    return dict(HEAD_DIM=head_dim, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, PACK=cfg.pack,
                PAGE=page_size if prefix else 1,           # no prefix phase: no page lookups
                HAS_CAP=has_cap, NUM_WARPS=cfg.num_warps, NBUF=max(2, cfg.num_stages), PREFIX=prefix,
                KV_FP4=fp4 and prefix, **layouts(head_dim, cfg.block_n, cfg.num_warps))


def launch(q, k, v, out, kc, vc, ks, vs, qo_indptr, kv_indptr, kv_indices, prefix_lens, *, sm_scale, k_scale,
           v_scale, logit_cap, group, page_size, max_extend_len, cfg, prefix: bool):
    """Launch over a bf16 / fp16 pool, or an NVFP4 one (``kc`` uint8 words, ``ks`` / ``vs`` the
    block scales, ``k_scale`` / ``v_scale`` the per-tensor scales). ``prefix`` False: nothing is
    cached (no prefix phase compiled)."""
    hq, d = q.shape[1], q.shape[2]
    fp4 = kc.dtype == torch.uint8
    log2e = 1.4426950408889634
    ksf, vsf = (k_scale / FP4_PTX_UNIT, v_scale / FP4_PTX_UNIT) if fp4 else (1.0, 1.0)
    if not fp4:
        ks, vs = kc, vc
    grid = (triton.cdiv(max_extend_len, cfg.block_m // cfg.pack), hq // cfg.pack, prefix_lens.shape[0])
    extend_mma_kernel[grid](
        q, q.stride(0), q.stride(1), k, v, k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        out, out.stride(0), out.stride(1),
        kc, vc, kc.stride(0), kc.stride(1), vc.stride(0), vc.stride(1),
        ks, vs, ks.stride(0), ks.stride(1), vs.stride(0), vs.stride(1),
        qo_indptr, kv_indptr, kv_indices, prefix_lens, _max_id(kc.shape[0], page_size),
        sm_scale * ksf * log2e, sm_scale * log2e, vsf, float(logit_cap), group,
        **constexprs(cfg, d, page_size, logit_cap > 0, prefix, fp4), num_warps=cfg.num_warps)


def aot_cases(arch: int):
    """Every configuration of this kernel the planner can choose on ``arch``, for ``sm12x budget``."""
    from .. import planner
    seen = set()
    for inp in planner.extend_domain():
        for prefix in (True, False):
            cfg = planner.plan_extend(arch, **dict(inp, prefix=prefix))
            if not cfg.mma2:
                continue
            q_t = f"*{inp['q_dtype']}"
            fp4 = inp["kv_dtype"] == "nvfp4"
            cache_t = "*u8" if fp4 else q_t
            for page in (1,) if inp["page_size"] == 1 else planner.PAGE_SIZES[1:]:
                if page > 1 and not prefix:
                    continue
                cx = constexprs(cfg, inp["head_dim"], page, False, prefix, fp4)
                key = (q_t, cache_t if prefix else q_t, inp["head_dim"], page, prefix, cfg.block_m, cfg.block_n,
                       cfg.pack, cx["NBUF"], cfg.num_warps)
                if key in seen:
                    continue
                seen.add(key)
                ct = cache_t if prefix else q_t
                sig = {"q_ptr": q_t, "k_ptr": q_t, "v_ptr": q_t, "o_ptr": q_t, "k_cache_ptr": ct,
                       "v_cache_ptr": ct, "k_scale_ptr": "*u8" if fp4 and prefix else ct,
                       "v_scale_ptr": "*u8" if fp4 and prefix else ct, "qo_indptr_ptr": "*i32",
                       "kv_indptr_ptr": "*i32", "kv_indices_ptr": "*i32", "prefix_lens_ptr": "*i32",
                       "qk_scale_prefix": "fp32", "qk_scale_ext": "fp32", "v_scale_prefix": "fp32",
                       "logit_cap": "fp32"}
                for n in ("stride_q_t", "stride_q_h", "stride_k_t", "stride_k_h", "stride_v_t", "stride_v_h",
                          "stride_o_t", "stride_o_h", "stride_kc_s", "stride_kc_h", "stride_vc_s", "stride_vc_h",
                          "stride_ks_s", "stride_ks_h", "stride_vs_s", "stride_vs_h", "group", "max_id"):
                    sig[n] = "i32"
                label = dict(head_dim=inp["head_dim"], kv_dtype=inp["kv_dtype"], q_dtype=inp["q_dtype"],
                             page_size=page, prefix=prefix, **cfg.as_dict())
                yield label, sig, cx, {"num_warps": cfg.num_warps, "num_stages": 1}
