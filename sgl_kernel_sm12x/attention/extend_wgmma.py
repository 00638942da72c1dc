"""Extend for sm_90 (warpgroup MMA) with a cached prefix, written in Gluon so the MMA waits sit
where FlashAttention-3 puts them. Per prefix tile ``j``::

    S_j = Q K_j^T                        issued asynchronously
    (copies / decode of the next tiles)  while S_j runs
    PV_{j-1} = P_{j-1} V_{j-1}           issued asynchronously
    wait for S_j; online softmax of S_j  while PV_{j-1} runs
    wait for PV_{j-1}; acc *= alpha_j

* :func:`extend_wgmma_kernel`, 16-bit pools: K_{j+NBUF-1} and V_{j+NBUF-2} are gathered by
  ``cp.async`` into ``NBUF`` buffers a tensor (the planner's ``num_stages``); Q stays in q's dtype.
* :func:`extend_wgmma_ws_kernel`, NVFP4 pools, warp-specialized: a fourth warpgroup copies each
  prefix tile's packed words into a two-stage ring, decodes K_i then V_i into the fp16 buffer the
  MMA warpgroups released and hands it over by mbarrier; the MMA warpgroups run only waits, MMAs
  and the softmax. The decode writes f16x2 words whose head_dim order is permuted inside each group
  of 8 (:func:`_phys`): Q is gathered through the same permutation and the accumulator put back in
  natural order once, after the prefix.

Both then run the chunk's own keys (:func:`_chunk_phase`), K and V copied by ``cp.async``. Whole
prefix tiles run select-free in an order rotated by the row block, the partial last one masked.
Rows are ``BLOCK_M // PACK`` query tokens times ``PACK`` query heads of one KV group. Scope (the
planner keeps the Triton kernel elsewhere): sm_90, head_dim 128, a prefix, no sliding window, pools
under 2^31 bytes a tensor. Why this order and these buffer counts: ``benchmark/NOTES.md``.
"""
from __future__ import annotations

import functools

import torch
import triton
from triton.experimental import gluon
import triton.experimental.gluon.language as gl
from triton.experimental.gluon.language.nvidia.ampere import async_copy
from triton.experimental.gluon.language.nvidia.hopper import (fence_async_shared, mbarrier, warpgroup_mma,
                                                               warpgroup_mma_init, warpgroup_mma_wait)

from .decode_nvfp4 import _lane_pairs
from .kv_tile import E2M1_BYTE_REGS, max_id as _max_id

# a CTA-wide barrier: gl.barrier on Triton 3.8, gl.thread_barrier on 3.6
_bar = gl.barrier if hasattr(gl, "barrier") else gl.thread_barrier


@gluon.jit
def _phys(j):
    """Physical head_dim element of permuted column ``j``: inside each group of 8, column
    ``2 i + h`` holds element ``i + 4 h`` (f16x2 word i of a decoded packed word pairs its
    elements i and i + 4)."""
    return (j & ~7) | ((j & 7) >> 1) | ((j & 1) << 2)


@gluon.jit
def _q_fp16_permuted(q_rows, jj, row_ok):
    """Q's rows (``q_rows``: row pointers) gathered through :func:`_phys` and saturated to fp16, the
    NVFP4 prefix MMAs' operand."""
    qv = gl.load(q_rows + gl.expand_dims(_phys(jj), 0), mask=row_ok, other=0.0)
    return gl.minimum(gl.maximum(qv.to(gl.float32), -65504.0), 65504.0).to(gl.float16)


@gluon.jit
def _prefix_acc_natural(acc, v_scale_prefix, BLOCK_M: gl.constexpr, HEAD_DIM: gl.constexpr, XL: gl.constexpr,
                        O_L: gl.constexpr):
    """The NVFP4 prefix's accumulator with V's columns back in natural order (once; the chunk's
    tiles then go to shared memory by cp.async as they are), times the pool's V scale."""
    acc = gl.convert_layout(acc * v_scale_prefix, XL)
    return gl.convert_layout(_permute8(acc, BLOCK_M, HEAD_DIM, 2, 0, 1), O_L)


@gluon.jit
def _permute8(x, ROWS: gl.constexpr, HEAD_DIM: gl.constexpr, O0: gl.constexpr, O1: gl.constexpr,
              O2: gl.constexpr):
    """Columns permuted inside each group of 8 (bits of the column index reordered), in registers:
    each thread holds 8 consecutive columns of the layouts this is used with."""
    y = gl.reshape(x, [ROWS, HEAD_DIM // 8, 2, 2, 2])
    y = gl.permute(y, [0, 1, 2 + O0, 2 + O1, 2 + O2])
    return gl.reshape(y, [ROWS, HEAD_DIM])


@gluon.jit
def _slots(kv_indices_ptr, base, max_id, n0, prefix_len, BLOCK_N: gl.constexpr, PAGE: gl.constexpr, WL: gl.constexpr):
    """Pool slots (token indices, 32-bit) of the prefix tile at ``n0`` (positions past the prefix
    read its last token again; their scores are masked). The lookup is decode_nvfp4._row_offsets'
    (kept inline there: as a shared helper it moved instructions of a measured sm_120 decode
    configuration, though the PTX was the same)."""
    pos = gl.minimum(n0 + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, WL)), prefix_len - 1)
    # an id outside the pool is clamped to max_id (one unsigned minimum; a negative int32 id wraps
    # above any pool): no row outside the pool is read (kv_tile.slot_ids)
    if PAGE > 1:
        s = gl.minimum(gl.load(kv_indices_ptr + base + pos // PAGE).to(gl.uint32), max_id)
    else:
        s = gl.minimum(gl.load(kv_indices_ptr + base + pos).to(gl.uint32), max_id)
    if PAGE > 1:
        s = s * PAGE + (pos % PAGE).to(gl.uint32)
    return s


@gluon.jit
def _load_scales(scales, slot, stride_ss, NB: gl.constexpr, SL: gl.constexpr):
    """UE4M3 block scales ``(BLOCK_N, NB)`` of the slots ``slot`` (layout SL)."""
    blk = gl.arange(0, NB, layout=gl.SliceLayout(0, SL))
    srows = gl.convert_layout(slot, gl.SliceLayout(1, SL))
    return gl.load(scales + gl.expand_dims(srows * stride_ss, 1) + gl.expand_dims(blk, 0))


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
def _gather_rows(buf, pool, slot, stride_s, jj):
    """cp.async of the pool rows ``slot`` (one KV head's, 16-bit) into ``buf``. Element offsets are
    32-bit, as :func:`_load_words`' byte offsets."""
    async_copy.async_copy_global_to_shared(buf, pool + gl.expand_dims(slot * stride_s, 1) + gl.expand_dims(jj, 0))


@gluon.jit
def _prefix_step16(slot_v, slot_k, p_prev, m_i, l_i, acc, j, n0, n_next, prefix_len, q_smem, k_smem, v_smem, s0,
                   offs_n, jj, kc, vc, stride_kc_s, stride_vc_s, kv_indices_ptr, base, max_id, qk_scale, logit_cap,
                   BLOCK_N: gl.constexpr, PAGE: gl.constexpr, HAS_CAP: gl.constexpr, MASKED: gl.constexpr,
                   NBUF: gl.constexpr, XL: gl.constexpr, P_L: gl.constexpr, ROW_O: gl.constexpr):
    """Prefix tile ``j`` (at ``n0``) of a 16-bit pool, FlashAttention-3's order: S_j issued; the
    copies of K_{j+NBUF-1} (over K_{j-1}) and V_{j+NBUF-2} (over V_{j-2}) issued as one group, with
    the slots ``slot_k`` / ``slot_v``; PV_{j-1} issued; the slots of tile j + NBUF (at ``n_next``)
    loaded; the softmax of S_j while PV_{j-1} runs. Each copy group has NBUF - 1 steps to land."""
    s_t = warpgroup_mma(q_smem, k_smem.index(j % NBUF).permute((1, 0)), s0, use_acc=False, is_async=True)
    _gather_rows(k_smem.index((j + NBUF - 1) % NBUF), kc, slot_k, stride_kc_s, jj)
    _gather_rows(v_smem.index((j + NBUF - 2) % NBUF), vc, slot_v, stride_vc_s, jj)
    async_copy.commit_group()
    acc_t = warpgroup_mma(p_prev, v_smem.index((j + NBUF - 1) % NBUF), acc, is_async=True)
    slot_n = _slots(kv_indices_ptr, base, max_id, n_next, prefix_len, BLOCK_N, PAGE, XL)
    s = warpgroup_mma_wait(1, deps=(s_t,))
    vis = gl.expand_dims(n0 + offs_n < prefix_len, 0)
    p, alpha, m_i, l_i = _softmax(s, qk_scale, m_i, l_i, vis, MASKED, HAS_CAP, logit_cap)
    acc, p_prev = warpgroup_mma_wait(0, deps=(acc_t, p_prev))
    acc = acc * gl.expand_dims(gl.convert_layout(alpha, ROW_O), 1)
    p_prev = gl.convert_layout(p.to(k_smem.dtype), P_L)
    async_copy.wait_group(NBUF - 2)
    fence_async_shared()
    _bar()
    return slot_k, slot_n, p_prev, m_i, l_i, acc


@gluon.jit
def _chunk_phase(q_ptr, stride_q_t, stride_q_h, k_ptr, v_ptr, stride_k_t, stride_k_h, stride_v_t, stride_v_h, o_ptr,
                 stride_o_t, stride_o_h, qo_indptr_ptr, group, qk_scale_ext, logit_cap, q_smem, k_bufs, v_smem, m_i,
                 l_i, acc, s0, offs_n, HEAD_DIM: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr,
                 PACK: gl.constexpr, HAS_CAP: gl.constexpr, XL: gl.constexpr, QS: gl.constexpr, KS: gl.constexpr,
                 KV16: gl.constexpr, O_L: gl.constexpr, ROW: gl.constexpr, ROW_O: gl.constexpr):
    """The chunk's own keys, causal, after the prefix phase left ``m_i`` / ``l_i`` / ``acc`` (natural
    head_dim order); then the normalized rows stored. Q and K in q's dtype and natural order: a
    16-bit pool's Q buffer is reused, an NVFP4 pool's fp16 buffers are reinterpreted."""
    BT: gl.constexpr = BLOCK_M // PACK
    dt: gl.constexpr = q_ptr.dtype.element_ty
    # q's rows again, in natural order and q's dtype (program ids, addresses, lengths and column
    # indices recomputed: keeping them live through the prefix phase cost sm_90 spills)
    mb = gl.program_id(0)
    hb = gl.program_id(1)
    b = gl.program_id(2)
    kvh = hb * PACK // group
    q0 = gl.load(qo_indptr_ptr + b)
    ext_len = gl.load(qo_indptr_ptr + b + 1) - q0
    r = gl.arange(0, BLOCK_M, layout=gl.SliceLayout(1, XL))
    jj = gl.arange(0, HEAD_DIM, layout=gl.SliceLayout(0, XL))
    tok_x = mb * BT + r // PACK
    q_rows = gl.expand_dims(q_ptr + (q0 + tok_x).to(gl.int64) * stride_q_t + (hb * PACK + r % PACK) * stride_q_h, 1)
    if KV16:        # Q already in place; the chunk's tiles take the first two buffers
        qc_smem = q_smem
        kc_smem = k_bufs
        vc_smem = v_smem
    else:
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


@gluon.jit
def extend_wgmma_kernel(
    q_ptr, stride_q_t, stride_q_h,
    k_ptr, v_ptr, stride_k_t, stride_k_h, stride_v_t, stride_v_h,
    o_ptr, stride_o_t, stride_o_h,
    k_cache_ptr, v_cache_ptr, stride_kc_s, stride_kc_h, stride_vc_s, stride_vc_h,
    k_scale_ptr, v_scale_ptr, stride_ks_s, stride_ks_h, stride_vs_s, stride_vs_h,
    qo_indptr_ptr, kv_indptr_ptr, kv_indices_ptr, prefix_lens_ptr, max_id,
    qk_scale_prefix, qk_scale_ext, v_scale_prefix, logit_cap, group,
    HEAD_DIM: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, PACK: gl.constexpr,
    PAGE: gl.constexpr, HAS_CAP: gl.constexpr, NUM_WARPS: gl.constexpr,
    XL: gl.constexpr, QS: gl.constexpr, KS: gl.constexpr, NBUF: gl.constexpr = 2,
):
    """16-bit pools: the cached prefix's K / V rows gathered by ``cp.async`` into NBUF copy buffers a
    tensor while the warpgroup MMAs run, in FlashAttention-3's order; then the chunk's own keys."""
    BT: gl.constexpr = BLOCK_M // PACK
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
    # q's dtype and natural head_dim order in both phases
    qv = gl.load(q_rows + gl.expand_dims(jj, 0), mask=row_ok, other=0.0)
    q_smem = gl.allocate_shared_memory(dt, [BLOCK_M, HEAD_DIM], QS, qv)
    k_bufs = gl.allocate_shared_memory(dt, [NBUF, BLOCK_N, HEAD_DIM], KS)
    v_smem = gl.allocate_shared_memory(dt, [NBUF, BLOCK_N, HEAD_DIM], KS)

    m_i = gl.full([BLOCK_M], float("-inf"), gl.float32, ROW)
    l_i = gl.zeros([BLOCK_M], gl.float32, ROW)
    acc = gl.zeros([BLOCK_M, HEAD_DIM], gl.float32, O_L)
    s0 = gl.zeros([BLOCK_M, BLOCK_N], gl.float32, S_L)
    offs_n = gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, S_L))

    # ---- phase 1: the cached prefix, copied from the pool ----------------------------------------------
    if prefix_len > 0:
        kc = k_cache_ptr + kvh * stride_kc_h
        vc = v_cache_ptr + kvh * stride_vc_h
        n_full = prefix_len // BLOCK_N
        n_tiles = gl.cdiv(prefix_len, BLOCK_N)
        rot = mb % gl.maximum(n_full, 1)
        # copy groups: K_0 (and with 3 buffers K_1, V_0) before tile 0; step j issues K_{j+NBUF-1}
        # and V_{j+NBUF-2}
        slot = _slots(kv_indices_ptr, base, max_id, _tile_pos(0, rot, n_full, BLOCK_N), prefix_len, BLOCK_N, PAGE, XL)
        _gather_rows(k_bufs.index(0), kc, slot, stride_kc_s, jj)
        async_copy.commit_group()
        slot_1 = _slots(kv_indices_ptr, base, max_id, _tile_pos(1, rot, n_full, BLOCK_N), prefix_len, BLOCK_N, PAGE, XL)
        if NBUF == 3:
            _gather_rows(k_bufs.index(1), kc, slot_1, stride_kc_s, jj)
            _gather_rows(v_smem.index(0), vc, slot, stride_vc_s, jj)
            async_copy.commit_group()
            slot_v = slot_1
            slot_k = _slots(kv_indices_ptr, base, max_id, _tile_pos(2, rot, n_full, BLOCK_N), prefix_len, BLOCK_N, PAGE, XL)
        else:
            slot_v = slot
            slot_k = slot_1
        async_copy.wait_group(NBUF - 2)
        fence_async_shared()
        _bar()
        # tile 0 (masked: it may be the tail), no PV yet
        n0 = _tile_pos(0, rot, n_full, BLOCK_N)
        s_t = warpgroup_mma(q_smem, k_bufs.index(0).permute((1, 0)), s0, use_acc=False, is_async=True)
        _gather_rows(k_bufs.index(NBUF - 1), kc, slot_k, stride_kc_s, jj)
        _gather_rows(v_smem.index(NBUF - 2), vc, slot_v, stride_vc_s, jj)
        async_copy.commit_group()
        slot_n = _slots(kv_indices_ptr, base, max_id, _tile_pos(NBUF, rot, n_full, BLOCK_N), prefix_len, BLOCK_N, PAGE, XL)
        s = warpgroup_mma_wait(0, deps=(s_t,))
        vis = gl.expand_dims(n0 + offs_n < prefix_len, 0)
        p, alpha, m_i, l_i = _softmax(s, qk_scale_prefix, m_i, l_i, vis, True, HAS_CAP, logit_cap)
        p_prev = gl.convert_layout(p.to(dt), P_L)
        slot_v = slot_k
        slot_k = slot_n
        async_copy.wait_group(NBUF - 2)
        fence_async_shared()
        _bar()
        for j in range(1, n_full):          # whole tiles: no select
            slot_v, slot_k, p_prev, m_i, l_i, acc = _prefix_step16(
                slot_v, slot_k, p_prev, m_i, l_i, acc, j, _tile_pos(j, rot, n_full, BLOCK_N),
                _tile_pos(j + NBUF, rot, n_full, BLOCK_N), prefix_len, q_smem, k_bufs, v_smem, s0, offs_n, jj,
                kc, vc, stride_kc_s, stride_vc_s, kv_indices_ptr, base, max_id, qk_scale_prefix, logit_cap, BLOCK_N, PAGE,
                HAS_CAP, False, NBUF, XL, P_L, ROW_O)
        if n_full > 0 and n_tiles > n_full:     # the partial tail tile, after whole ones
            slot_v, slot_k, p_prev, m_i, l_i, acc = _prefix_step16(
                slot_v, slot_k, p_prev, m_i, l_i, acc, n_full, n_full * BLOCK_N, (n_full + NBUF) * BLOCK_N,
                prefix_len, q_smem, k_bufs, v_smem, s0, offs_n, jj, kc, vc, stride_kc_s, stride_vc_s,
                kv_indices_ptr, base, max_id, qk_scale_prefix, logit_cap, BLOCK_N, PAGE, HAS_CAP, True, NBUF, XL, P_L,
                ROW_O)
        acc_t = warpgroup_mma(p_prev, v_smem.index((n_tiles - 1) % NBUF), acc, is_async=True)
        acc = warpgroup_mma_wait(0, deps=(acc_t,))
        async_copy.wait_group(0)        # the copies issued past the last tile
        _bar()     # every warpgroup's MMAs done before the buffers take the chunk's tiles

    _chunk_phase(q_ptr, stride_q_t, stride_q_h, k_ptr, v_ptr, stride_k_t, stride_k_h, stride_v_t, stride_v_h, o_ptr,
                 stride_o_t, stride_o_h, qo_indptr_ptr, group, qk_scale_ext, logit_cap, q_smem, k_bufs, v_smem, m_i,
                 l_i, acc, s0, offs_n, HEAD_DIM, BLOCK_M, BLOCK_N, PACK, HAS_CAP, XL, QS, KS, True, O_L, ROW, ROW_O)


# --------------------------------------------------------------------------------------------------
# warp-specialized variant (NVFP4): a decoder warpgroup beside the two MMA warpgroups
# --------------------------------------------------------------------------------------------------

@gluon.jit
def _copy_words(buf, cache, slot, stride_s, w):
    """cp.async of the packed words of the pool rows ``slot`` (16 bytes a thread) into ``buf``."""
    async_copy.async_copy_global_to_shared(
        buf, (cache + gl.expand_dims(slot * stride_s, 1)).to(gl.pointer_type(gl.int32)) + gl.expand_dims(w, 0))


@gluon.jit
def _hand_over(raw, sc, dst, empty, ready, ph, BLOCK_N: gl.constexpr, HEAD_DIM: gl.constexpr, WL: gl.constexpr):
    """One decoded tile handed to the MMA warpgroups: the raw words read, ``dst`` (f16x2 view of a
    buffer) written once they released it (``empty``, phase ``ph``), announced on ``ready`` after
    every decoder thread's stores."""
    w = raw.load(WL)
    mbarrier.wait(empty, ph ^ 1)
    dst.store(_decode(w, sc, BLOCK_N, HEAD_DIM, WL))
    fence_async_shared()
    _bar()
    mbarrier.arrive(ready)


@gluon.jit
def _decoder_partition(kc, vc, ksc, vsc, kv_indices_ptr, base, max_id, prefix_len, rot, stride_kc_s, stride_ks_s,
                       stride_vc_s, stride_vs_s, raw_k, raw_v, k_words, v_words, k_ready, k_empty, v_ready, v_empty,
                       BLOCK_N: gl.constexpr, HEAD_DIM: gl.constexpr, PAGE: gl.constexpr, NR: gl.constexpr,
                       WL: gl.constexpr, SL: gl.constexpr):
    """The decoder warpgroup: the packed words of prefix tile ``i + NR - 1`` copied by ``cp.async`` into
    a ring of ``NR`` raw buffers and the block scales of tile ``i + 1`` loaded while tile ``i`` is
    decoded; K_i, then V_i, decoded from the raw ring into the MMA warpgroups' f16 buffer ``i % 2``
    once they released it (``*_empty``), announced by ``*_ready``. Tiles in the MMA partition's
    order (:func:`_tile_pos`)."""
    NW: gl.constexpr = HEAD_DIM // 8
    NB: gl.constexpr = HEAD_DIM // 16
    n_full = prefix_len // BLOCK_N
    n_tiles = gl.cdiv(prefix_len, BLOCK_N)
    w = gl.arange(0, NW, layout=gl.SliceLayout(0, WL))
    if n_tiles > 0:     # nothing cached: no slot to look up (base - 1 would be read)
        for i in gl.static_range(NR - 1):
            slot = _slots(kv_indices_ptr, base, max_id, _tile_pos(i, rot, n_full, BLOCK_N), prefix_len, BLOCK_N, PAGE, WL)
            _copy_words(raw_k.index(i), kc, slot, stride_kc_s, w)
            _copy_words(raw_v.index(i), vc, slot, stride_vc_s, w)
            async_copy.commit_group()
        slot = _slots(kv_indices_ptr, base, max_id, _tile_pos(0, rot, n_full, BLOCK_N), prefix_len, BLOCK_N, PAGE, WL)
        ks = _load_scales(ksc, slot, stride_ks_s, NB, SL)
        vs = _load_scales(vsc, slot, stride_vs_s, NB, SL)
        for i in range(n_tiles):
            slot = _slots(kv_indices_ptr, base, max_id, _tile_pos(i + NR - 1, rot, n_full, BLOCK_N), prefix_len, BLOCK_N, PAGE,
                          WL)
            _copy_words(raw_k.index((i + NR - 1) % NR), kc, slot, stride_kc_s, w)
            _copy_words(raw_v.index((i + NR - 1) % NR), vc, slot, stride_vc_s, w)
            async_copy.commit_group()
            slot = _slots(kv_indices_ptr, base, max_id, _tile_pos(i + 1, rot, n_full, BLOCK_N), prefix_len, BLOCK_N, PAGE, WL)
            ks_n = _load_scales(ksc, slot, stride_ks_s, NB, SL)
            vs_n = _load_scales(vsc, slot, stride_vs_s, NB, SL)
            async_copy.wait_group(NR - 1)       # this thread's copies of tile i landed
            _bar()                              # and every decoder thread's
            buf = i % 2
            ph = (i // 2) & 1
            _hand_over(raw_k.index(i % NR), ks, k_words.index(buf), k_empty.index(buf), k_ready.index(buf), ph,
                       BLOCK_N, HEAD_DIM, WL)
            # (its barrier also: every thread's reads of raw buffer i % NR done before it is refilled)
            _hand_over(raw_v.index(i % NR), vs, v_words.index(buf), v_empty.index(buf), v_ready.index(buf), ph,
                       BLOCK_N, HEAD_DIM, WL)
            ks = ks_n
            vs = vs_n
        async_copy.wait_group(0)


@gluon.jit
def _ws_step(j, n0, prefix_len, p_prev, m_i, l_i, acc, q_smem, k_bufs, v_smem, k_ready, k_empty, v_ready, v_empty,
             s0, offs_n, qk_scale, logit_cap, HAS_CAP: gl.constexpr, MASKED: gl.constexpr, P_L: gl.constexpr,
             ROW_O: gl.constexpr):
    """Prefix tile ``j`` in the MMA warpgroups, FlashAttention-3's order with the decode elsewhere:
    S_j issued once K_j is ready, PV_{j-1} once V_{j-1} is; the softmax of S_j while PV_{j-1} runs;
    both buffers released when every MMA warpgroup is past them."""
    kb = j % 2
    vb = (j + 1) % 2
    mbarrier.wait(k_ready.index(kb), (j // 2) & 1)
    s_t = warpgroup_mma(q_smem, k_bufs.index(kb).permute((1, 0)), s0, use_acc=False, is_async=True)
    mbarrier.wait(v_ready.index(vb), ((j - 1) // 2) & 1)
    acc_t = warpgroup_mma(p_prev, v_smem.index(vb), acc, is_async=True)
    s = warpgroup_mma_wait(1, deps=(s_t,))
    vis = gl.expand_dims(n0 + offs_n < prefix_len, 0)
    p, alpha, m_i, l_i = _softmax(s, qk_scale, m_i, l_i, vis, MASKED, HAS_CAP, logit_cap)
    acc, p_prev = warpgroup_mma_wait(0, deps=(acc_t, p_prev))
    acc = acc * gl.expand_dims(gl.convert_layout(alpha, ROW_O), 1)
    p_prev = gl.convert_layout(p.to(gl.float16), P_L)
    _bar()
    mbarrier.arrive(k_empty.index(kb))
    mbarrier.arrive(v_empty.index(vb))
    return p_prev, m_i, l_i, acc


@gluon.jit
def _mma_partition(q_ptr, stride_q_t, stride_q_h, k_ptr, v_ptr, stride_k_t, stride_k_h, stride_v_t, stride_v_h,
                   o_ptr, stride_o_t, stride_o_h, qo_indptr_ptr, group, qk_scale_prefix, qk_scale_ext,
                   v_scale_prefix, logit_cap, prefix_len, rot, q_smem, k_bufs, v_smem, k_ready, k_empty, v_ready,
                   v_empty, HEAD_DIM: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, PACK: gl.constexpr,
                   HAS_CAP: gl.constexpr, NUM_WARPS: gl.constexpr, XL: gl.constexpr, QS: gl.constexpr,
                   KS: gl.constexpr):
    """The two MMA warpgroups: the prefix tiles as the decoder delivers them, then the chunk."""
    S_L: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[NUM_WARPS, 1],
                                                  instr_shape=[16, BLOCK_N, 16])
    O_L: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[NUM_WARPS, 1],
                                                  instr_shape=[16, HEAD_DIM, 16])
    P_L: gl.constexpr = gl.DotOperandLayout(0, O_L, 2)
    ROW: gl.constexpr = gl.SliceLayout(1, S_L)
    ROW_O: gl.constexpr = gl.SliceLayout(1, O_L)
    m_i = gl.full([BLOCK_M], float("-inf"), gl.float32, ROW)
    l_i = gl.zeros([BLOCK_M], gl.float32, ROW)
    acc = gl.zeros([BLOCK_M, HEAD_DIM], gl.float32, O_L)
    s0 = gl.zeros([BLOCK_M, BLOCK_N], gl.float32, S_L)
    offs_n = gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, S_L))
    if prefix_len > 0:
        n_full = prefix_len // BLOCK_N
        n_tiles = gl.cdiv(prefix_len, BLOCK_N)
        # tile 0 (masked: it may be the tail), no PV yet
        n0 = _tile_pos(0, rot, n_full, BLOCK_N)
        mbarrier.wait(k_ready.index(0), 0)
        s_t = warpgroup_mma(q_smem, k_bufs.index(0).permute((1, 0)), s0, use_acc=False, is_async=True)
        s = warpgroup_mma_wait(0, deps=(s_t,))
        vis = gl.expand_dims(n0 + offs_n < prefix_len, 0)
        p, alpha, m_i, l_i = _softmax(s, qk_scale_prefix, m_i, l_i, vis, True, HAS_CAP, logit_cap)
        p_prev = gl.convert_layout(p.to(gl.float16), P_L)
        _bar()
        mbarrier.arrive(k_empty.index(0))
        for j in range(1, n_full):          # whole tiles: no select
            p_prev, m_i, l_i, acc = _ws_step(j, _tile_pos(j, rot, n_full, BLOCK_N), prefix_len, p_prev, m_i, l_i,
                                             acc, q_smem, k_bufs, v_smem, k_ready, k_empty, v_ready, v_empty, s0,
                                             offs_n, qk_scale_prefix, logit_cap, HAS_CAP, False, P_L, ROW_O)
        if n_full > 0 and n_tiles > n_full:     # the partial tail tile, after whole ones
            p_prev, m_i, l_i, acc = _ws_step(n_full, n_full * BLOCK_N, prefix_len, p_prev, m_i, l_i, acc, q_smem,
                                             k_bufs, v_smem, k_ready, k_empty, v_ready, v_empty, s0, offs_n,
                                             qk_scale_prefix, logit_cap, HAS_CAP, True, P_L, ROW_O)
        vb = (n_tiles - 1) % 2
        mbarrier.wait(v_ready.index(vb), ((n_tiles - 1) // 2) & 1)
        acc_t = warpgroup_mma(p_prev, v_smem.index(vb), acc, is_async=True)
        acc = warpgroup_mma_wait(0, deps=(acc_t,))
        acc = _prefix_acc_natural(acc, v_scale_prefix, BLOCK_M, HEAD_DIM, XL, O_L)
        _bar()     # every warpgroup's MMAs done before the buffers take the chunk's tiles
    _chunk_phase(q_ptr, stride_q_t, stride_q_h, k_ptr, v_ptr, stride_k_t, stride_k_h, stride_v_t, stride_v_h, o_ptr,
                 stride_o_t, stride_o_h, qo_indptr_ptr, group, qk_scale_ext, logit_cap, q_smem, k_bufs, v_smem, m_i,
                 l_i, acc, s0, offs_n, HEAD_DIM, BLOCK_M, BLOCK_N, PACK, HAS_CAP, XL, QS, KS, False, O_L, ROW, ROW_O)


@gluon.jit
def extend_wgmma_ws_kernel(
    q_ptr, stride_q_t, stride_q_h,
    k_ptr, v_ptr, stride_k_t, stride_k_h, stride_v_t, stride_v_h,
    o_ptr, stride_o_t, stride_o_h,
    k_cache_ptr, v_cache_ptr, stride_kc_s, stride_kc_h, stride_vc_s, stride_vc_h,
    k_scale_ptr, v_scale_ptr, stride_ks_s, stride_ks_h, stride_vs_s, stride_vs_h,
    qo_indptr_ptr, kv_indptr_ptr, kv_indices_ptr, prefix_lens_ptr, max_id,
    qk_scale_prefix, qk_scale_ext, v_scale_prefix, logit_cap, group,
    HEAD_DIM: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, PACK: gl.constexpr,
    PAGE: gl.constexpr, HAS_CAP: gl.constexpr, NUM_WARPS: gl.constexpr,
    XL: gl.constexpr, QS: gl.constexpr, KS: gl.constexpr, KS32: gl.constexpr, RAW: gl.constexpr,
    WL4: gl.constexpr, SL4: gl.constexpr, NR: gl.constexpr, DEC_REGS: gl.constexpr,
):
    """NVFP4 pools: :func:`extend_wgmma_kernel`'s computation with the prefix decode moved to a fourth
    warpgroup (:func:`_decoder_partition`), so the MMA warpgroups' prefix loop carries no integer
    work; mbarriers hand each decoded K / V buffer over and back."""
    BT: gl.constexpr = BLOCK_M // PACK
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
    r = gl.arange(0, BLOCK_M, layout=gl.SliceLayout(1, XL))
    jj = gl.arange(0, HEAD_DIM, layout=gl.SliceLayout(0, XL))
    tok_x = mb * BT + r // PACK
    q_rows = gl.expand_dims(q_ptr + (q0 + tok_x).to(gl.int64) * stride_q_t + (hb * PACK + r % PACK) * stride_q_h, 1)
    q_smem = gl.allocate_shared_memory(gl.float16, [BLOCK_M, HEAD_DIM], QS,
                                       _q_fp16_permuted(q_rows, jj, gl.expand_dims(tok_x < ext_len, 1)))
    k_bufs = gl.allocate_shared_memory(gl.float16, [2, BLOCK_N, HEAD_DIM], KS)
    v_smem = gl.allocate_shared_memory(gl.float16, [2, BLOCK_N, HEAD_DIM], KS)
    k_words = k_bufs._reinterpret(gl.int32, [2, BLOCK_N, HEAD_DIM // 2], KS32)     # f16x2 views
    v_words = v_smem._reinterpret(gl.int32, [2, BLOCK_N, HEAD_DIM // 2], KS32)
    raw_k = gl.allocate_shared_memory(gl.int32, [NR, BLOCK_N, HEAD_DIM // 8], RAW)
    raw_v = gl.allocate_shared_memory(gl.int32, [NR, BLOCK_N, HEAD_DIM // 8], RAW)
    k_ready = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    k_empty = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    v_ready = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    v_empty = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(2):
        mbarrier.init(k_ready.index(i), count=1)
        mbarrier.init(k_empty.index(i), count=1)
        mbarrier.init(v_ready.index(i), count=1)
        mbarrier.init(v_empty.index(i), count=1)
    kc = k_cache_ptr + kvh * stride_kc_h
    vc = v_cache_ptr + kvh * stride_vc_h
    ksc = k_scale_ptr + kvh * stride_ks_h
    vsc = v_scale_ptr + kvh * stride_vs_h
    n_full = prefix_len // BLOCK_N
    rot = mb % gl.maximum(n_full, 1)
    gl.warp_specialize([
        (_mma_partition, (q_ptr, stride_q_t, stride_q_h, k_ptr, v_ptr, stride_k_t, stride_k_h, stride_v_t,
                          stride_v_h, o_ptr, stride_o_t, stride_o_h, qo_indptr_ptr, group, qk_scale_prefix,
                          qk_scale_ext, v_scale_prefix, logit_cap, prefix_len, rot, q_smem, k_bufs, v_smem, k_ready,
                          k_empty, v_ready, v_empty, HEAD_DIM, BLOCK_M, BLOCK_N, PACK, HAS_CAP, NUM_WARPS, XL, QS,
                          KS)),
        (_decoder_partition, (kc, vc, ksc, vsc, kv_indices_ptr, base, max_id, prefix_len, rot, stride_kc_s, stride_ks_s,
                              stride_vc_s, stride_vs_s, raw_k, raw_v, k_words, v_words, k_ready, k_empty, v_ready,
                              v_empty, BLOCK_N, HEAD_DIM, PAGE, NR, WL4, SL4)),
    ], [4], [DEC_REGS])



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


@functools.lru_cache(maxsize=None)
def ws_layouts(head_dim: int, block_m: int, block_n: int, num_warps: int):
    """The warp-specialized kernel's layouts: the MMA warpgroups' (:func:`layouts`), the decoder
    warpgroup's words and scales (4 warps), the raw-word ring (rows of 16-byte chunks, unswizzled:
    a warp's 16-byte accesses cover 512 contiguous bytes)."""
    base = layouts(head_dim, block_m, block_n, num_warps)
    tw = head_dim // 8 // 4
    return dict(XL=base["XL"], QS=base["QS"], KS=base["KS"], KS32=base["KS32"],
                WL4=gl.BlockedLayout([1, 4], [32 // tw, tw], [4, 1], [1, 0]),
                SL4=gl.BlockedLayout([1, 2], [32 // tw, tw], [4, 1], [1, 0]),
                RAW=gl.SwizzledSharedLayout(1, 1, 1, order=[1, 0]))


WS_RAW_STAGES = 2       # raw-word ring of the decoder warpgroup (8 KB a tensor a stage at D128; 3 need 245,828 B)
WS_DEC_REGS = 72        # the decoder warpgroup's registers a thread (setmaxnreg); the MMA warpgroups get the
#                         rest, (168 * 384 - 72 * 128) / 256 = 216. H100 (...-tune-extend-warp-spec.log): 64 and
#                         72 equal, 88 2-4% slower, 120 7-9%; 56 and below spill in the decoder (AOT: 28 B at
#                         56) and run 3-40% slower
WS_MAXNREG = 168        # 12 warps: 65,536 / 384 rounded down to a multiple of 8


def _ws_constexprs(cfg, head_dim: int, page_size: int, has_cap: bool) -> dict:
    return dict(HEAD_DIM=head_dim, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, PACK=cfg.pack, PAGE=page_size,
                HAS_CAP=has_cap, NUM_WARPS=cfg.num_warps,
                **ws_layouts(head_dim, cfg.block_m, cfg.block_n, cfg.num_warps), NR=WS_RAW_STAGES,
                DEC_REGS=WS_DEC_REGS)


def _constexprs(cfg, head_dim: int, page_size: int, has_cap: bool) -> dict:
    """The 16-bit kernel's constexprs for ``cfg`` -- the launch's and ``sm12x budget``'s compile
    alike: ``cfg.num_stages`` copy buffers a tensor (at least 2)."""
    lay = layouts(head_dim, cfg.block_m, cfg.block_n, cfg.num_warps)
    return dict(HEAD_DIM=head_dim, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, PACK=cfg.pack, PAGE=page_size,
                HAS_CAP=has_cap, NUM_WARPS=cfg.num_warps, XL=lay["XL"], QS=lay["QS"], KS=lay["KS"],
                NBUF=max(2, cfg.num_stages))


def launch(q, k, v, out, kc, vc, ks, vs, qo_indptr, kv_indptr, kv_indices, prefix_lens, *, qk_scale_prefix,
           qk_scale_ext, v_scale_prefix, logit_cap, group, page_size, max_extend_len, cfg, dec_regs=None):
    """Launch the 16-bit kernel (bf16 / fp16 pool) or the warp-specialized NVFP4 one (uint8 pool).
    ``dec_regs``: the NVFP4 decoder warpgroup's registers a thread (default :data:`WS_DEC_REGS`),
    an override for offline sweeps (``benchmark/tune_attention.py --dec-regs``) only."""
    hq, d = q.shape[1], q.shape[2]
    grid = (triton.cdiv(max_extend_len, cfg.block_m // cfg.pack), hq // cfg.pack, prefix_lens.shape[0])
    if kc.dtype in (torch.bfloat16, torch.float16):
        kernel, cx, opts = extend_wgmma_kernel, _constexprs(cfg, d, page_size, logit_cap > 0), {}
    else:
        kernel, cx, opts = extend_wgmma_ws_kernel, _ws_constexprs(cfg, d, page_size, logit_cap > 0), \
            dict(maxnreg=WS_MAXNREG)
        if dec_regs is not None:
            cx["DEC_REGS"] = dec_regs
    kernel[grid](
        q, q.stride(0), q.stride(1), k, v, k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        out, out.stride(0), out.stride(1),
        kc, vc, kc.stride(0), kc.stride(1), vc.stride(0), vc.stride(1),
        ks, vs, ks.stride(0), ks.stride(1), vs.stride(0), vs.stride(1),
        qo_indptr, kv_indptr, kv_indices, prefix_lens, _max_id(kc.shape[0], page_size),
        qk_scale_prefix, qk_scale_ext, v_scale_prefix, float(logit_cap), group,
        **cx, num_warps=cfg.num_warps, **opts)


def aot_cases_ws(arch: int):
    """Every configuration of the warp-specialized NVFP4 kernel the planner can choose on ``arch``."""
    return aot_cases(arch, nvfp4=True)


def aot_cases(arch: int, nvfp4: bool = False):
    """Every configuration of the 16-bit kernel (``nvfp4``: of :func:`extend_wgmma_ws_kernel`) the
    planner can choose on ``arch`` (sm_90 only), for ``sm12x budget``."""
    from .. import planner
    seen = set()
    for inp in planner.extend_domain():
        cfg = planner.plan_extend(arch, **inp)
        kv16 = inp["kv_dtype"] in planner.ACT_DTYPES
        if not cfg.wgmma or kv16 == nvfp4:
            continue
        q_t = f"*{inp['q_dtype']}"
        cache_t = q_t if kv16 else "*u8"
        # the kernel specializes on the page size itself (the domain's 16 stands for every size > 1)
        for page in (1,) if inp["page_size"] == 1 else planner.PAGE_SIZES[1:]:
            if nvfp4:
                cx = _ws_constexprs(cfg, inp["head_dim"], page, False)
                key = (q_t, inp["head_dim"], page, cfg.block_m, cfg.block_n, cfg.pack)
            else:
                cx = _constexprs(cfg, inp["head_dim"], page, False)
                key = (q_t, cache_t, inp["head_dim"], page, cfg.block_m, cfg.block_n, cfg.pack, cx["NBUF"])
            if key in seen:
                continue
            seen.add(key)
            sig = {"q_ptr": q_t, "k_ptr": q_t, "v_ptr": q_t, "o_ptr": q_t, "k_cache_ptr": cache_t,
                   "v_cache_ptr": cache_t, "k_scale_ptr": "*u8", "v_scale_ptr": "*u8", "qo_indptr_ptr": "*i32",
                   "kv_indptr_ptr": "*i32", "kv_indices_ptr": "*i32", "prefix_lens_ptr": "*i32",
                   "qk_scale_prefix": "fp32", "qk_scale_ext": "fp32", "v_scale_prefix": "fp32", "logit_cap": "fp32",
                   }
            for n in ("stride_q_t", "stride_q_h", "stride_k_t", "stride_k_h", "stride_v_t", "stride_v_h",
                      "stride_o_t", "stride_o_h", "stride_kc_s", "stride_kc_h", "stride_vc_s", "stride_vc_h",
                      "stride_ks_s", "stride_ks_h", "stride_vs_s", "stride_vs_h", "group", "max_id"):
                sig[n] = "i32"
            label = dict(head_dim=inp["head_dim"], kv_dtype=inp["kv_dtype"], q_dtype=inp["q_dtype"],
                         page_size=page, **cfg.as_dict())
            opts = {"num_warps": cfg.num_warps}
            if nvfp4:
                opts["maxnreg"] = WS_MAXNREG
            yield label, sig, cx, opts
