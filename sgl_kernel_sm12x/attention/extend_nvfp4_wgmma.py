"""NVFP4-pool extend for sm_90 (warpgroup MMA), the prefix tiles decoded while the tensor cores run.

The Triton extend kernel (:mod:`.extend`) decodes each NVFP4 prefix tile in registers, stores it to
shared memory and runs the tile's MMAs; Triton waits for every warpgroup MMA right after issuing it
(the decoded operand lives in a buffer the compiler allocates inside the loop), so the decode never
overlaps an MMA. This kernel is the same computation written in Gluon with the waits placed by
hand. Per prefix tile ``i``::

    decode K_i, V_i -> shared memory     (PV_{i-1} still running on the tensor cores)
    S_i = Q K_i^T                        issued asynchronously, waited for with PV_{i-1}
    online softmax of S_i; acc *= alpha
    PV_i = P_i V_i                       issued asynchronously, waited for in step i + 1

(Written with V's decode between S_i's issue and its wait, ptxas scheduled it ahead of the issue
anyway; fed from shared memory so that it could not, the extra barriers cost more than the
overlap gained: H100, ``benchmark/results/*-tune-extend-fp4-wgmma.log`` run 2.)

The raw words of tile ``i + 1`` and the slot ids of tile ``i + 2`` are loaded while tile ``i`` is
computed; whole tiles run select-free, the partial last one masked; the whole tiles are visited in
an order rotated by the row block. The decode writes f16x2 words, register ``i`` of a packed word
holding its elements ``i`` and ``i + 4``, so a tile's head_dim comes out permuted inside each group
of 8 (:func:`_phys`): Q is gathered through the same permutation, and the accumulator is put back
in natural order once, after the prefix. The chunk's own keys then follow with K and V copied to
shared memory by ``cp.async`` (K two tiles ahead, V one), against Q reloaded in natural order and
q's dtype.

Rows are ``BLOCK_M // PACK`` query tokens times ``PACK`` query heads of one KV group, as in the
Triton kernel. Scope (the planner keeps the Triton kernel elsewhere): sm_90, NVFP4 K and V,
head_dim 128, 4 query heads a program, no sliding window.
"""
from __future__ import annotations

import functools

import triton
from triton.experimental import gluon
import triton.experimental.gluon.language as gl
from triton.experimental.gluon.language.nvidia.ampere import async_copy
from triton.experimental.gluon.language.nvidia.hopper import (fence_async_shared, warpgroup_mma,
                                                               warpgroup_mma_init, warpgroup_mma_wait)

from .decode_nvfp4 import _lane_pairs
from .kv_tile import E2M1_BYTE_REGS

# a CTA-wide barrier: gl.barrier on Triton 3.8, gl.thread_barrier on 3.6
_bar = gl.barrier if hasattr(gl, "barrier") else gl.thread_barrier


@gluon.jit
def _phys(j):
    """Physical head_dim element of permuted column ``j``: inside each group of 8, column
    ``2 i + h`` holds element ``i + 4 h`` (f16x2 word i of a decoded packed word pairs its
    elements i and i + 4)."""
    return (j & ~7) | ((j & 7) >> 1) | ((j & 1) << 2)


@gluon.jit
def _permute8(x, ROWS: gl.constexpr, HEAD_DIM: gl.constexpr, O0: gl.constexpr, O1: gl.constexpr,
              O2: gl.constexpr):
    """Columns permuted inside each group of 8 (bits of the column index reordered), in registers:
    each thread holds 8 consecutive columns of the layouts this is used with."""
    y = gl.reshape(x, [ROWS, HEAD_DIM // 8, 2, 2, 2])
    y = gl.permute(y, [0, 1, 2 + O0, 2 + O1, 2 + O2])
    return gl.reshape(y, [ROWS, HEAD_DIM])


@gluon.jit
def _slots(kv_indices_ptr, base, n0, prefix_len, BLOCK_N: gl.constexpr, PAGE: gl.constexpr, OFF32: gl.constexpr,
           WL: gl.constexpr):
    """Pool slots of the prefix tile at ``n0`` (positions past the prefix read its last token again;
    their scores are masked), as 32-bit (OFF32: the pool fits in 2^31 bytes) or 64-bit integers.
    The lookup is decode_nvfp4._row_offsets' (kept inline there: as a shared helper it moved
    instructions of a measured sm_120 decode configuration, though the PTX was the same)."""
    pos = gl.minimum(n0 + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, WL)), prefix_len - 1)
    if PAGE > 1:
        s = gl.load(kv_indices_ptr + base + pos // PAGE)
        s = s * PAGE + pos % PAGE
    else:
        s = gl.load(kv_indices_ptr + base + pos)
    if OFF32:
        s = s.to(gl.uint32)
    else:
        s = s.to(gl.int64)
    return s


@gluon.jit
def _load_words(cache, scales, slot, stride_s, stride_ss, NW: gl.constexpr, NB: gl.constexpr,
                WL: gl.constexpr, SL: gl.constexpr):
    """Packed words ``(BLOCK_N, NW)`` int32 (layout WL) and UE4M3 block scales ``(BLOCK_N, NB)``
    (layout SL, each thread's blocks those of its words) of the slots ``slot``."""
    w = gl.arange(0, NW, layout=gl.SliceLayout(0, WL))
    words = gl.load((cache + gl.expand_dims(slot * stride_s, 1)).to(gl.pointer_type(gl.int32))
                    + gl.expand_dims(w, 0))
    blk = gl.arange(0, NB, layout=gl.SliceLayout(0, SL))
    srows = gl.convert_layout(slot, gl.SliceLayout(1, SL))
    sc = gl.load(scales + gl.expand_dims(srows * stride_ss, 1) + gl.expand_dims(blk, 0))
    return words, sc


@gluon.jit
def _load_tile(kc, ksc, vc, vsc, slot, stride_kc_s, stride_ks_s, stride_vc_s, stride_vs_s, NW: gl.constexpr,
               NB: gl.constexpr, WL: gl.constexpr, SL: gl.constexpr):
    """K and V words and scales of the slots ``slot``."""
    kw, ks = _load_words(kc, ksc, slot, stride_kc_s, stride_ks_s, NW, NB, WL, SL)
    vw, vs = _load_words(vc, vsc, slot, stride_vc_s, stride_vs_s, NW, NB, WL, SL)
    return kw, ks, vw, vs


def _word_asm() -> str:
    """One packed word (8 codes) and an fp16 block scale ($5) -> 4 f16x2 registers: register i
    holds elements i (low half) and i + 4 (high half), times the scale (and 2^-14)."""
    lines = [E2M1_BYTE_REGS, ".reg .b32 x, s2;", "mov.b32 s2, {$5, $5};"] + _lane_pairs("$4", 0, packed=True)
    return "{\n" + "\n".join(lines) + "\n}\n"


_WORD_F16X2_ASM = gl.constexpr(_word_asm())


@gluon.jit
def _decode(words, sc, BLOCK_N: gl.constexpr, HEAD_DIM: gl.constexpr, WL: gl.constexpr):
    """Words and block scales -> ``(BLOCK_N, HEAD_DIM // 2)`` int32, each an f16x2 of decoded
    values (times 2^-14, see kv_tile.FP4_PTX_UNIT) in the permuted column order of :func:`_phys`
    -- stored through an int32 view of the fp16 tile, no repacking of 16-bit halves."""
    NW: gl.constexpr = HEAD_DIM // 8
    s = sc.to(gl.float8e4nv, bitcast=True).to(gl.float16)
    s = gl.convert_layout(gl.reshape(gl.join(s, s), [BLOCK_N, NW]), WL)
    f = gl.inline_asm_elementwise(_WORD_F16X2_ASM, "=r,=r,=r,=r,r,h", [words, s],
                                  dtype=(gl.int32,) * 4, is_pure=True, pack=1)
    x = gl.join(gl.join(f[0], f[2]), gl.join(f[1], f[3]))      # [t, w, j, i] = f[2 j + i]
    return gl.reshape(x, [BLOCK_N, HEAD_DIM // 2])


@gluon.jit
def _softmax(s, scale, m_i, l_i, vis, MASKED, HAS_CAP: gl.constexpr, logit_cap):
    """One online-softmax step on raw scores ``s`` (log2-domain ``scale``); ``vis`` applies when
    ``MASKED`` (the prefix's partial last tile, the chunk's diagonal tiles). Without a soft cap the
    scale is taken once on the row maximum and folds into the exponent's subtraction (one FMA an
    element)."""
    if HAS_CAP:
        s = s * scale
        t = gl.exp2((2.0 / logit_cap) * gl.abs(s))
        th = 1.0 - 2.0 / (t + 1.0)
        s = gl.where(s < 0, -logit_cap * th, logit_cap * th) * 1.4426950408889634
        scale = 1.0
    if MASKED:
        s = gl.where(vis, s, float("-inf"))
    m_new = gl.maximum(m_i, gl.max(s, 1) * scale)
    m_use = gl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = gl.exp2(m_i - m_use)
    p = gl.exp2(s * scale - gl.expand_dims(m_use, 1))
    return p, alpha, m_new, l_i * alpha + gl.sum(p, 1)


@gluon.jit
def _tile_pos(i, rot, n_full, BLOCK_N: gl.constexpr):
    """First position of the ``i``-th prefix tile processed: whole tiles rotated by ``rot``, then the
    tail (and past it, positions the loads clamp)."""
    return gl.where(i < n_full, (i + rot) % gl.maximum(n_full, 1), i) * BLOCK_N


@gluon.jit
def _prefix_step(kw, ks, vw, vs, slot, m_i, l_i, acc_t, i, n0, n2, prefix_len, q_smem, k_smem, v_smem, k_words, v_words,
                 s0, offs_n, kc, ksc, vc, vsc, kv_indices_ptr, base, stride_kc_s, stride_ks_s, stride_vc_s,
                 stride_vs_s, qk_scale, logit_cap, BLOCK_N: gl.constexpr, HEAD_DIM: gl.constexpr,
                 PAGE: gl.constexpr, OFF32: gl.constexpr, HAS_CAP: gl.constexpr, MASKED: gl.constexpr,
                 WL: gl.constexpr, SL: gl.constexpr, P_L: gl.constexpr, ROW_O: gl.constexpr):
    """One prefix tile: decode K and V into shared memory while the previous tile's PV MMA runs,
    S = Q K^T, the online softmax, PV issued asynchronously. Loads the next tile's words and the
    slot ids of the one after (``n2``: the position of the tile two steps on)."""
    NW: gl.constexpr = HEAD_DIM // 8
    NB: gl.constexpr = HEAD_DIM // 16
    buf = i % 2
    kw_n, ks_n, vw_n, vs_n = _load_tile(kc, ksc, vc, vsc, slot, stride_kc_s, stride_ks_s, stride_vc_s, stride_vs_s,
                                        NW, NB, WL, SL)
    slot_n = _slots(kv_indices_ptr, base, n2, prefix_len, BLOCK_N, PAGE, OFF32, WL)
    k_words.store(_decode(kw, ks, BLOCK_N, HEAD_DIM, WL))
    # V's buffer was last read by the PV MMA of two tiles back (complete)
    v_words.index(buf).store(_decode(vw, vs, BLOCK_N, HEAD_DIM, WL))
    fence_async_shared()
    _bar()
    s_t = warpgroup_mma(q_smem, k_smem.permute((1, 0)), s0, use_acc=False, is_async=True)
    s, acc = warpgroup_mma_wait(0, deps=(s_t, acc_t))
    vis = gl.expand_dims(n0 + offs_n < prefix_len, 0)
    p, alpha, m_i, l_i = _softmax(s, qk_scale, m_i, l_i, vis, MASKED, HAS_CAP, logit_cap)
    acc = acc * gl.expand_dims(gl.convert_layout(alpha, ROW_O), 1)
    acc_t = warpgroup_mma(gl.convert_layout(p.to(gl.float16), P_L), v_smem.index(buf), acc, is_async=True)
    return kw_n, ks_n, vw_n, vs_n, slot_n, m_i, l_i, acc_t


@gluon.jit
def _copy_rows(buf, rows, q0, stride_t, n0, hi, t_x, jj):
    """cp.async of the chunk's K or V rows ``n0 ..`` (rows at or past ``hi`` zero-filled)."""
    j = n0 + t_x
    async_copy.async_copy_global_to_shared(
        buf, gl.expand_dims(rows + (q0 + j).to(gl.int64) * stride_t, 1) + gl.expand_dims(jj, 0),
        mask=gl.expand_dims(j < hi, 1))


@gluon.jit
def _chunk_step(n0, hi2, q0, k_rows, v_rows, stride_k_t, stride_v_t, t_x, jj, tok_s, m_i, l_i, acc_t,
                qc_smem, kc_smem, vc_smem, s0, offs_n, qk_scale, logit_cap, BLOCK_N: gl.constexpr,
                HAS_CAP: gl.constexpr, MASKED: gl.constexpr, O_L: gl.constexpr, ROW_O: gl.constexpr):
    """One tile of the chunk's own keys (K in shared memory, V on its way by ``cp.async``): S = Q
    K^T; then, with every warpgroup past S and the previous PV and this tile's V landed, the copies
    of K two tiles on and V one tile on; the online softmax (causal select on diagonal tiles); PV
    issued asynchronously. One barrier a tile."""
    t = n0 // BLOCK_N
    s_t = warpgroup_mma(qc_smem, kc_smem.index(t % 2).permute((1, 0)), s0, use_acc=False, is_async=True)
    s, acc = warpgroup_mma_wait(0, deps=(s_t, acc_t))
    async_copy.wait_group(0)        # V_t and K_{t+1}, copied during the last step
    fence_async_shared()
    _bar()
    _copy_rows(kc_smem.index(t % 2), k_rows, q0, stride_k_t, n0 + 2 * BLOCK_N, hi2, t_x, jj)
    _copy_rows(vc_smem.index((t + 1) % 2), v_rows, q0, stride_v_t, n0 + BLOCK_N, hi2, t_x, jj)
    async_copy.commit_group()
    vis = gl.expand_dims(n0 + offs_n, 0) <= tok_s
    p, alpha, m_i, l_i = _softmax(s, qk_scale, m_i, l_i, vis, MASKED, HAS_CAP, logit_cap)
    acc = acc * gl.expand_dims(gl.convert_layout(alpha, ROW_O), 1)
    vb = vc_smem.index(t % 2)
    acc_t = warpgroup_mma(gl.convert_layout(p.to(vb.dtype), gl.DotOperandLayout(0, O_L, 2)), vb, acc,
                          is_async=True)
    return m_i, l_i, acc_t


@gluon.jit
def extend_nvfp4_wgmma_kernel(
    q_ptr, stride_q_t, stride_q_h,
    k_ptr, v_ptr, stride_k_t, stride_k_h, stride_v_t, stride_v_h,
    o_ptr, stride_o_t, stride_o_h,
    k_cache_ptr, v_cache_ptr, stride_kc_s, stride_kc_h, stride_vc_s, stride_vc_h,
    k_scale_ptr, v_scale_ptr, stride_ks_s, stride_ks_h, stride_vs_s, stride_vs_h,
    qo_indptr_ptr, kv_indptr_ptr, kv_indices_ptr, prefix_lens_ptr,
    qk_scale_prefix, qk_scale_ext, v_scale_prefix, logit_cap, group,
    HEAD_DIM: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, PACK: gl.constexpr,
    PAGE: gl.constexpr, HAS_CAP: gl.constexpr, NUM_WARPS: gl.constexpr, OFF32: gl.constexpr,
    WL: gl.constexpr, SL: gl.constexpr, XL: gl.constexpr, QS: gl.constexpr, KS: gl.constexpr,
    KS32: gl.constexpr,
):
    BT: gl.constexpr = BLOCK_M // PACK
    NW: gl.constexpr = HEAD_DIM // 8
    NB: gl.constexpr = HEAD_DIM // 16
    S_L: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[NUM_WARPS, 1],
                                                  instr_shape=[16, BLOCK_N, 16])
    O_L: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[NUM_WARPS, 1],
                                                  instr_shape=[16, HEAD_DIM, 16])
    P_L: gl.constexpr = gl.DotOperandLayout(0, O_L, 2)
    ROW: gl.constexpr = gl.SliceLayout(1, S_L)
    ROW_O: gl.constexpr = gl.SliceLayout(1, O_L)

    mb = gl.program_id(0)
    hb = gl.program_id(1)
    b = gl.program_id(2)
    q0 = gl.load(qo_indptr_ptr + b)
    ext_len = gl.load(qo_indptr_ptr + b + 1) - q0
    if mb * BT >= ext_len:
        return
    prefix_len = gl.load(prefix_lens_ptr + b)
    base = gl.load(kv_indptr_ptr + b)
    kvh = hb * PACK // group
    dt: gl.constexpr = q_ptr.dtype.element_ty

    # rows: token mb * BT + r // PACK of the chunk, query head hb * PACK + r % PACK
    r = gl.arange(0, BLOCK_M, layout=gl.SliceLayout(1, XL))
    jj = gl.arange(0, HEAD_DIM, layout=gl.SliceLayout(0, XL))
    tok_x = mb * BT + r // PACK
    row_ok = gl.expand_dims(tok_x < ext_len, 1)
    q_rows = gl.expand_dims(q_ptr + (q0 + tok_x).to(gl.int64) * stride_q_t + (hb * PACK + r % PACK) * stride_q_h, 1)
    qv = gl.load(q_rows + gl.expand_dims(_phys(jj), 0), mask=row_ok, other=0.0)
    qv = gl.minimum(gl.maximum(qv.to(gl.float32), -65504.0), 65504.0).to(gl.float16)
    q_smem = gl.allocate_shared_memory(gl.float16, [BLOCK_M, HEAD_DIM], QS, qv)
    k_bufs = gl.allocate_shared_memory(gl.float16, [2, BLOCK_N, HEAD_DIM], KS)    # the prefix phase uses one
    k_smem = k_bufs.index(0)
    v_smem = gl.allocate_shared_memory(gl.float16, [2, BLOCK_N, HEAD_DIM], KS)

    m_i = gl.full([BLOCK_M], float("-inf"), gl.float32, ROW)
    l_i = gl.zeros([BLOCK_M], gl.float32, ROW)
    acc = gl.zeros([BLOCK_M, HEAD_DIM], gl.float32, O_L)
    s0 = gl.zeros([BLOCK_M, BLOCK_N], gl.float32, S_L)
    offs_n = gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, S_L))

    # ---- phase 1: the cached prefix, decoded from the pool ------------------------------------------
    if prefix_len > 0:
        kc = k_cache_ptr + kvh * stride_kc_h
        vc = v_cache_ptr + kvh * stride_vc_h
        ksc = k_scale_ptr + kvh * stride_ks_h
        vsc = v_scale_ptr + kvh * stride_vs_h
        k_words = k_smem._reinterpret(gl.int32, [BLOCK_N, HEAD_DIM // 2], KS32)     # f16x2 views
        v_words = v_smem._reinterpret(gl.int32, [2, BLOCK_N, HEAD_DIM // 2], KS32)
        # raw words one tile ahead in registers, slot ids two (no load waits for an index load)
        # the whole tiles in an order rotated by the row block, so the programs of one KV head do
        # not all read the same tile at the same moment; the partial tail tile last
        n_full = prefix_len // BLOCK_N
        rot = mb % gl.maximum(n_full, 1)
        slot = _slots(kv_indices_ptr, base, _tile_pos(0, rot, n_full, BLOCK_N), prefix_len, BLOCK_N, PAGE, OFF32, WL)
        kw, ks, vw, vs = _load_tile(kc, ksc, vc, vsc, slot, stride_kc_s, stride_ks_s, stride_vc_s, stride_vs_s,
                                    NW, NB, WL, SL)
        slot = _slots(kv_indices_ptr, base, _tile_pos(1, rot, n_full, BLOCK_N), prefix_len, BLOCK_N, PAGE, OFF32, WL)
        acc_t = warpgroup_mma_init(acc)
        for i in range(0, n_full):          # whole tiles: no select
            kw, ks, vw, vs, slot, m_i, l_i, acc_t = _prefix_step(
                kw, ks, vw, vs, slot, m_i, l_i, acc_t, i, _tile_pos(i, rot, n_full, BLOCK_N),
                _tile_pos(i + 2, rot, n_full, BLOCK_N), prefix_len, q_smem, k_smem, v_smem, k_words, v_words,
                s0, offs_n, kc, ksc, vc, vsc, kv_indices_ptr, base, stride_kc_s, stride_ks_s, stride_vc_s,
                stride_vs_s, qk_scale_prefix, logit_cap, BLOCK_N, HEAD_DIM, PAGE, OFF32, HAS_CAP, False, WL, SL,
                P_L, ROW_O)
        if n_full * BLOCK_N < prefix_len:
            kw, ks, vw, vs, slot, m_i, l_i, acc_t = _prefix_step(
                kw, ks, vw, vs, slot, m_i, l_i, acc_t, n_full, n_full * BLOCK_N, n_full * BLOCK_N, prefix_len,
                q_smem, k_smem, v_smem, k_words, v_words, s0, offs_n, kc, ksc, vc, vsc, kv_indices_ptr, base,
                stride_kc_s, stride_ks_s, stride_vc_s, stride_vs_s, qk_scale_prefix, logit_cap, BLOCK_N, HEAD_DIM,
                PAGE, OFF32, HAS_CAP, True, WL, SL, P_L, ROW_O)
        acc = warpgroup_mma_wait(0, deps=(acc_t,))
        # V's columns back in natural order (once; the chunk's tiles then go to shared memory by
        # cp.async as they are), with the pool's V scale
        acc = gl.convert_layout(acc * v_scale_prefix, XL)
        acc = gl.convert_layout(_permute8(acc, BLOCK_M, HEAD_DIM, 2, 0, 1), O_L)
        _bar()     # every warpgroup's MMAs done before the buffers take the chunk's tiles

    # ---- phase 2: the chunk's own keys, causal (q's dtype, natural head_dim order for Q and K) ------
    # q's rows again, in natural order and q's dtype (addresses recomputed from a fresh load of
    # the request's offset: keeping them live through the prefix phase cost sm_90 spills)
    q0 = gl.load(qo_indptr_ptr + b)
    r = gl.arange(0, BLOCK_M, layout=gl.SliceLayout(1, XL))
    tok_x = mb * BT + r // PACK
    q_rows = gl.expand_dims(q_ptr + (q0 + tok_x).to(gl.int64) * stride_q_t + (hb * PACK + r % PACK) * stride_q_h, 1)
    qn = gl.load(q_rows + gl.expand_dims(jj, 0), mask=gl.expand_dims(tok_x < ext_len, 1), other=0.0)
    qc_smem = q_smem._reinterpret(dt, [BLOCK_M, HEAD_DIM], QS)
    qc_smem.store(qn)
    kc_smem = k_bufs._reinterpret(dt, [2, BLOCK_N, HEAD_DIM], KS)
    vc_smem = v_smem._reinterpret(dt, [2, BLOCK_N, HEAD_DIM], KS)
    k_rows = k_ptr + kvh * stride_k_h
    v_rows = v_ptr + kvh * stride_v_h
    t_x = gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, XL))
    hi2 = gl.minimum(ext_len, (mb + 1) * BT)
    first = mb * BT                # keys below this are visible to every row of the block
    tok_s = gl.expand_dims(mb * BT + gl.arange(0, BLOCK_M, layout=ROW) // PACK, 1)
    # K two tiles ahead, V one (its other buffer is read by the PV MMA in flight); step t copies
    # K_{t+2} and V_{t+1}
    _copy_rows(kc_smem.index(0), k_rows, q0, stride_k_t, 0, hi2, t_x, jj)
    _copy_rows(vc_smem.index(0), v_rows, q0, stride_v_t, 0, hi2, t_x, jj)
    _copy_rows(kc_smem.index(1), k_rows, q0, stride_k_t, BLOCK_N, hi2, t_x, jj)
    async_copy.commit_group()
    async_copy.wait_group(0)
    fence_async_shared()
    _bar()
    acc_t = warpgroup_mma_init(acc)
    c_full = first // BLOCK_N * BLOCK_N     # whole tiles below the diagonal: no select
    for n0 in range(0, c_full, BLOCK_N):
        m_i, l_i, acc_t = _chunk_step(n0, hi2, q0, k_rows, v_rows, stride_k_t, stride_v_t, t_x, jj, tok_s,
                                      m_i, l_i, acc_t, qc_smem, kc_smem, vc_smem, s0, offs_n, qk_scale_ext,
                                      logit_cap, BLOCK_N, HAS_CAP, False, O_L, ROW_O)
    for n0 in range(c_full, hi2, BLOCK_N):
        m_i, l_i, acc_t = _chunk_step(n0, hi2, q0, k_rows, v_rows, stride_k_t, stride_v_t, t_x, jj, tok_s,
                                      m_i, l_i, acc_t, qc_smem, kc_smem, vc_smem, s0, offs_n, qk_scale_ext,
                                      logit_cap, BLOCK_N, HAS_CAP, True, O_L, ROW_O)
    acc = warpgroup_mma_wait(0, deps=(acc_t,))
    async_copy.wait_group(0)

    inv_l = 1.0 / gl.convert_layout(l_i, ROW_O)
    o = gl.convert_layout((acc * gl.expand_dims(inv_l, 1)).to(dt), XL)
    # the row addresses recomputed, as for q
    q0 = gl.load(qo_indptr_ptr + b)
    r = gl.arange(0, BLOCK_M, layout=gl.SliceLayout(1, XL))
    tok_x = mb * BT + r // PACK
    o_rows = gl.expand_dims(o_ptr + (q0 + tok_x).to(gl.int64) * stride_o_t + (hb * PACK + r % PACK) * stride_o_h, 1)
    gl.store(o_rows + gl.expand_dims(jj, 0), o, mask=gl.expand_dims(tok_x < ext_len, 1))


# --------------------------------------------------------------------------------------------------
# host side
# --------------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def layouts(head_dim: int, block_m: int, block_n: int, num_warps: int):
    """Register and shared layouts of the kernel: packed words (4 a thread, 16 bytes), their block
    scales (the thread's 2 blocks), 16-bit tiles (8 columns a thread), the swizzled Q / K / V
    buffers."""
    nw = head_dim // 8
    tw = nw // 4                         # threads across a row's words
    wl = gl.BlockedLayout([1, 4], [32 // tw, tw], [num_warps, 1], [1, 0])
    sl = gl.BlockedLayout([1, 2], [32 // tw, tw], [num_warps, 1], [1, 0])
    tx = head_dim // 8
    xl = gl.BlockedLayout([1, 8], [32 // tx, tx], [num_warps, 1], [1, 0])
    qs = gl.NVMMASharedLayout.get_default_for([block_m, head_dim], gl.float16)
    ks = gl.NVMMASharedLayout.get_default_for([block_n, head_dim], gl.float16)
    ks32 = gl.NVMMASharedLayout(ks.swizzle_byte_width, 32, rank=2)     # the same bytes seen as f16x2 words
    return dict(WL=wl, SL=sl, XL=xl, QS=qs, KS=ks, KS32=ks32)


def launch(q, k, v, out, kc, vc, ks, vs, qo_indptr, kv_indptr, kv_indices, prefix_lens, *, qk_scale_prefix,
           qk_scale_ext, v_scale_prefix, logit_cap, group, page_size, max_extend_len, cfg):
    hq, d = q.shape[1], q.shape[2]
    grid = (triton.cdiv(max_extend_len, cfg.block_m // cfg.pack), hq // cfg.pack, prefix_lens.shape[0])
    extend_nvfp4_wgmma_kernel[grid](
        q, q.stride(0), q.stride(1), k, v, k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        out, out.stride(0), out.stride(1),
        kc, vc, kc.stride(0), kc.stride(1), vc.stride(0), vc.stride(1),
        ks, vs, ks.stride(0), ks.stride(1), vs.stride(0), vs.stride(1),
        qo_indptr, kv_indptr, kv_indices, prefix_lens,
        qk_scale_prefix, qk_scale_ext, v_scale_prefix, float(logit_cap), group,
        HEAD_DIM=d, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, PACK=cfg.pack, PAGE=page_size,
        HAS_CAP=logit_cap > 0, NUM_WARPS=cfg.num_warps,
        OFF32=all(t.shape[0] * t.stride(0) < 2 ** 31 for t in (kc, vc, ks, vs)),
        **layouts(d, cfg.block_m, cfg.block_n, cfg.num_warps), num_warps=cfg.num_warps)


def aot_cases(arch: int):
    """Every configuration of this kernel the planner can choose on ``arch`` (sm_90 only), both
    offset widths, for ``sm12x budget``."""
    from .. import planner
    seen = set()
    for inp in planner.extend_domain():
        cfg = planner.plan_extend(arch, **inp)
        if not cfg.fp4_wgmma:
            continue
        q_t = f"*{inp['q_dtype']}"
        for off32 in (True, False):
            cx = dict(HEAD_DIM=inp["head_dim"], BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, PACK=cfg.pack,
                      PAGE=inp["page_size"], HAS_CAP=False, NUM_WARPS=cfg.num_warps, OFF32=off32,
                      **layouts(inp["head_dim"], cfg.block_m, cfg.block_n, cfg.num_warps))
            key = (q_t, inp["head_dim"], inp["page_size"], cfg.block_m, cfg.block_n, cfg.pack, off32)
            if key in seen:
                continue
            seen.add(key)
            sig = {"q_ptr": q_t, "k_ptr": q_t, "v_ptr": q_t, "o_ptr": q_t, "k_cache_ptr": "*u8", "v_cache_ptr": "*u8",
                   "k_scale_ptr": "*u8", "v_scale_ptr": "*u8", "qo_indptr_ptr": "*i32", "kv_indptr_ptr": "*i32",
                   "kv_indices_ptr": "*i32", "prefix_lens_ptr": "*i32", "qk_scale_prefix": "fp32",
                   "qk_scale_ext": "fp32", "v_scale_prefix": "fp32", "logit_cap": "fp32"}
            for n in ("stride_q_t", "stride_q_h", "stride_k_t", "stride_k_h", "stride_v_t", "stride_v_h",
                      "stride_o_t", "stride_o_h", "stride_kc_s", "stride_kc_h", "stride_vc_s", "stride_vc_h",
                      "stride_ks_s", "stride_ks_h", "stride_vs_s", "stride_vs_h", "group"):
                sig[n] = "i32"
            label = dict(head_dim=inp["head_dim"], kv_dtype=inp["kv_dtype"], q_dtype=inp["q_dtype"],
                         page_size=inp["page_size"], offsets_32bit=off32, **cfg.as_dict())
            yield label, sig, cx, {"num_warps": cfg.num_warps}
