"""Extend / prefill attention: each request's new tokens attend causally to its cached prefix, read
from the paged pool in any KV format, and to the chunk's own K/V (bf16/fp16 tensors).

Grid: ``(cdiv(max_extend_len, BLOCK_M // PACK), q_heads // PACK, batch)``. A program's BLOCK_M rows
are ``BLOCK_M // PACK`` query tokens times ``PACK`` query heads of one KV group (row r: token
r // PACK, head r % PACK), so each K/V tile it loads -- and dequantizes -- serves PACK heads.
Phase 1 streams the prefix tiles from the pool (dequantized in registers, NVFP4 as even/odd
halves), phase 2 the chunk's own keys up to the diagonal. One online softmax runs across both
phases.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from .. import planner
from ..formats import KVFormat, kv_formats
from .kv_tile import (check_sinks, FMT_FP8, FMT_NVFP4, FMT_PLAIN, check_kv_indices, max_id as _max_id, check_slot_flag, decode_tile, dot, gluon_kernel_usable, load_raw, col_mask, dim_constexprs,
                      nvfp4_decode, slot_flag,
                      nvfp4_rows_aligned, offsets_fit, raw_cols, softmax_step, tile_flags, tile_scores, tile_slots,
                      unit_scales)

_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
LOG2E = 1.4426950408889634


@triton.jit
def _halves(x):
    """(rows, D) -> even and odd columns (rows, D / 2) each; pairs sit in one thread's registers."""
    return tl.split(tl.reshape(x, (x.shape[0], x.shape[1] // 2, 2)))


@triton.jit
def extend_kernel(
    q_ptr, stride_q_t, stride_q_h,                       # (tokens, q_heads, HEAD_DIM)
    k_ptr, v_ptr, stride_k_t, stride_k_h, stride_v_t, stride_v_h,   # chunk K/V (tokens, kv_heads, HEAD_DIM)
    o_ptr, stride_o_t, stride_o_h,                       # (tokens, q_heads, HEAD_DIM)
    k_cache_ptr, v_cache_ptr, stride_kc_s, stride_kc_h, stride_vc_s, stride_vc_h,
    k_scale_ptr, v_scale_ptr, stride_ks_s, stride_ks_h, stride_vs_s, stride_vs_h,
    qo_indptr_ptr, kv_indptr_ptr, kv_indices_ptr, prefix_lens_ptr,
    qk_scale_prefix, qk_scale_ext, v_scale_prefix,       # log2-domain softmax scales; V scale of the pool
    logit_cap, window_left, group, page_size,
    max_id,                                              # the pool's last slot / page: ids are clamped to it
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, PAGED: tl.constexpr,
    K_MODE: tl.constexpr, V_MODE: tl.constexpr, HAS_CAP: tl.constexpr, HAS_WINDOW: tl.constexpr,
    HW_FP8: tl.constexpr, DOT_FP32: tl.constexpr, PACK: tl.constexpr = 1,
    FP4_PTX: tl.constexpr = False, F16_MMA: tl.constexpr = False,
    UNMASKED: tl.constexpr = True, PREFIX_STAGES: tl.constexpr = None, HEAVY_FIRST: tl.constexpr = False,
    QUANT_PREFIX_UNMASKED: tl.constexpr = False, DIAG_IN_LOOP: tl.constexpr = False,
    PREFIX_LOOP: tl.constexpr = True,
    sinks_ptr=None, HAS_SINKS: tl.constexpr = False,      # (q_heads,) attention-sink logits (natural log)
    DIM: tl.constexpr = 0,                               # head_dim when HEAD_DIM is its padded tile (96)
):
    BT: tl.constexpr = BLOCK_M // PACK                      # query tokens per program
    hb = tl.program_id(1)
    b = tl.program_id(2)
    q0 = tl.load(qo_indptr_ptr + b)
    ext_len = tl.load(qo_indptr_ptr + b + 1) - q0
    mb = tl.program_id(0)
    if HEAVY_FIRST:   # the last row block sees the most keys: launch it first (shorter causal tail)
        mb = tl.num_programs(0) - 1 - mb
    if mb * BT >= ext_len:
        return
    prefix_len = tl.load(prefix_lens_ptr + b)
    base = tl.load(kv_indptr_ptr + b)
    kvh = hb * PACK // group
    dt = q_ptr.dtype.element_ty

    r = tl.arange(0, BLOCK_M)
    offs_m = mb * BT + r // PACK                            # query index inside the chunk, per row
    h = hb * PACK + r % PACK                                # query head, per row
    m_mask = offs_m < ext_len
    qpos = prefix_len + offs_m                              # absolute positions
    offs_n = tl.arange(0, BLOCK_N)
    q_rows = q_ptr + (q0 + offs_m)[:, None].to(tl.int64) * stride_q_t + h[:, None] * stride_q_h
    if HAS_SINKS:   # the sink as a first key every query sees, with a zero value: exp(sink) in the denominator
        m_i = tl.load(sinks_ptr + h).to(tl.float32) * 1.4426950408889634
        l_i = tl.full([BLOCK_M], 1.0, tl.float32)
    else:
        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
    HALF: tl.constexpr = HEAD_DIM // 2
    offs_d = tl.arange(0, HEAD_DIM)
    PAD: tl.constexpr = DIM != 0
    # the prefix phase runs its MMAs in dtp: fp16 for quantized pools on CUDA devices (e4m3 and
    # e2m1 x ue4m3 are exact in fp16, q saturates at +-65504), the chunk phase in q's dtype
    dtp = dt
    if F16_MMA:
        dtp = tl.float16
    q = tl.load(q_rows + offs_d[None, :], mask=col_mask(m_mask, offs_d, DIM, PAD), other=0.0)
    if F16_MMA:
        q = tl.clamp(q.to(tl.float32), -65504.0, 65504.0).to(dtp)
    if K_MODE == FMT_NVFP4:
        q_lo, q_hi = _halves(q)
    if V_MODE == FMT_NVFP4:
        acc_lo = tl.zeros([BLOCK_M, HALF], tl.float32)
        acc_hi = tl.zeros([BLOCK_M, HALF], tl.float32)
    else:
        acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)

    # ---- phase 1: cached prefix, read from the pool --------------------------------------------
    lo = 0
    if HAS_WINDOW:   # the earliest key any query of this tile can see
        lo = tl.maximum(prefix_len + mb * BT - window_left, 0) // BLOCK_N * BLOCK_N
    kc = k_cache_ptr + kvh * stride_kc_h
    vc = v_cache_ptr + kvh * stride_vc_h
    ksc = k_scale_ptr + kvh * stride_ks_h
    vsc = v_scale_ptr + kvh * stride_vs_h
    offs_wk = raw_cols(HEAD_DIM, K_MODE)
    offs_wv = raw_cols(HEAD_DIM, V_MODE)
    # tiles [lo, p_full) are whole and every row sees them (no select); the tail and windowed
    # tiles take the masked loop, and so do quantized pools unless the configuration says
    # otherwise (a second loop body put some quantized sm_86-120 configurations 4-24 B into
    # spills, AOT)
    SPLIT: tl.constexpr = UNMASKED and not HAS_WINDOW and (K_MODE == FMT_PLAIN and V_MODE == FMT_PLAIN or QUANT_PREFIX_UNMASKED)
    p_full = lo
    if SPLIT:
        p_full = prefix_len // BLOCK_N * BLOCK_N
    # PREFIX_LOOP False: the host knows nothing is cached (no prefix loop compiled at all).
    # DIAG_IN_LOOP, 16-bit pools: the partial last tile runs as the whole-tile loop's last
    # iteration, masked behind a branch (a loop of its own fills its own software pipeline; H100,
    # 4000-token prefixes: bf16 1.04-1.07x, NVFP4 1.00-1.04x slower, so not for quantized pools)
    TAIL_IN_LOOP: tl.constexpr = SPLIT and DIAG_IN_LOOP and K_MODE == FMT_PLAIN and V_MODE == FMT_PLAIN
    for st in tl.static_range(0 if SPLIT else 1, (1 if TAIL_IN_LOOP else 2) if PREFIX_LOOP else 0):
        if st == 0:
            a0 = lo
            a1 = p_full
            if TAIL_IN_LOOP:
                a1 = prefix_len
        else:
            a0 = p_full
            a1 = prefix_len
        for n0 in tl.range(a0, a1, BLOCK_N, num_stages=PREFIX_STAGES):
            pos = n0 + offs_n
            n_mask, slot = tile_slots(kv_indices_ptr, base, pos, prefix_len, page_size, max_id, PAGED)
            kr, ksr = load_raw(kc, ksc, slot, stride_kc_s, stride_ks_s, offs_wk, n_mask, K_MODE, DIM)
            if K_MODE == FMT_NVFP4:
                s = tile_scores(q_lo, q_hi, kr, ksr, dtp, BLOCK_M, BLOCK_N, K_MODE, HW_FP8, DOT_FP32, FP4_PTX)
            else:
                s = tile_scores(q, q, kr, ksr, dtp, BLOCK_M, BLOCK_N, K_MODE, HW_FP8, DOT_FP32, FP4_PTX)
            vis = n_mask[None, :]
            if HAS_WINDOW:
                vis = vis & (pos[None, :] >= qpos[:, None] - window_left)
            if TAIL_IN_LOOP:
                if n0 >= p_full:
                    s = tl.where(vis, s, float("-inf"))
            p, alpha, m_i, l_i = softmax_step(s, qk_scale_prefix, m_i, l_i, vis, st == 1, HAS_CAP, logit_cap)
            if V_MODE == FMT_PLAIN:   # v_scale_prefix is 1 here; the multiply keeps ptxas's sm_120 allocation spill-free
                pv = (p * v_scale_prefix).to(dtp)
            else:
                pv = p.to(dtp)
            # V loaded after the scores, as the planned (pipelined) configurations were tuned
            vr, vsr = load_raw(vc, vsc, slot, stride_vc_s, stride_vs_s, offs_wv, n_mask, V_MODE, DIM)
            if V_MODE == FMT_NVFP4:
                v_lo, v_hi = nvfp4_decode(vr, vsr, dtp, FP4_PTX, HW_FP8)
                acc_lo = dot(pv, v_lo, acc_lo * alpha[:, None], DOT_FP32)
                acc_hi = dot(pv, v_hi, acc_hi * alpha[:, None], DOT_FP32)
            else:
                v = decode_tile(vr, dtp, V_MODE, HW_FP8)
                acc = dot(pv, v, acc * alpha[:, None], DOT_FP32)
    # the quantized pool's V scale, applied once to the prefix part of the accumulator (in fp32);
    # NVFP4's even / odd halves are interleaved back into one accumulator, so the chunk phase runs
    # the 16-bit code whatever the pool (splitting the chunk's own K/V into halves cost a shared-
    # memory round trip of each tile)
    if V_MODE == FMT_NVFP4:
        acc = tl.reshape(tl.join(acc_lo * v_scale_prefix, acc_hi * v_scale_prefix), (BLOCK_M, HEAD_DIM))
    elif V_MODE == FMT_FP8:
        acc = acc * v_scale_prefix
    if F16_MMA:   # the chunk's own K/V are in q's dtype
        q = tl.load(q_rows + offs_d[None, :], mask=col_mask(m_mask, offs_d, DIM, PAD), other=0.0)

    # ---- phase 2: the chunk's own keys, causal ----------------------------------------------------
    k_rows = k_ptr + kvh * stride_k_h
    v_rows = v_ptr + kvh * stride_v_h
    lo2 = 0
    if HAS_WINDOW:
        lo2 = tl.maximum(mb * BT - window_left, 0) // BLOCK_N * BLOCK_N
    hi2 = tl.minimum(ext_len, (mb + 1) * BT)
    # keys [lo2, c_full) lie below every row of this block (whole tiles, no select), the rest is
    # the diagonal; a window masks everything
    SPLIT2: tl.constexpr = UNMASKED and not HAS_WINDOW
    c_full = lo2
    if SPLIT2:
        c_full = (mb * BT) // BLOCK_N * BLOCK_N
    # DIAG_IN_LOOP: the diagonal tiles run as the whole-tile loop's last iterations, masked by a
    # branch (each loop fills its own software pipeline: a second loop waits for its first tile)
    DIAG_IN: tl.constexpr = SPLIT2 and DIAG_IN_LOOP
    for st in tl.static_range(0 if SPLIT2 else 1, 1 if DIAG_IN else 2):
        if st == 0:
            a0 = lo2
            a1 = c_full
            if DIAG_IN:
                a1 = hi2
        else:
            a0 = c_full
            a1 = hi2
        for n0 in range(a0, a1, BLOCK_N):
            j = n0 + offs_n
            n_mask = j < ext_len
            rows = (q0 + j).to(tl.int64)
            k = tl.load(k_rows + rows[:, None] * stride_k_t + offs_d[None, :], mask=col_mask(n_mask, offs_d, DIM, PAD),
                        other=0.0)
            s = dot(q, tl.trans(k), tl.zeros([BLOCK_M, BLOCK_N], tl.float32), DOT_FP32)
            vis = n_mask[None, :] & (j[None, :] <= offs_m[:, None])
            if HAS_WINDOW:
                vis = vis & (j[None, :] >= offs_m[:, None] - window_left)
            if DIAG_IN:
                if n0 >= c_full:
                    s = tl.where(vis, s, float("-inf"))
            p, alpha, m_i, l_i = softmax_step(s, qk_scale_ext, m_i, l_i, vis, st == 1, HAS_CAP, logit_cap)
            v = tl.load(v_rows + rows[:, None] * stride_v_t + offs_d[None, :], mask=col_mask(n_mask, offs_d, DIM, PAD),
                        other=0.0)
            acc = dot(p.to(dt), v, acc * alpha[:, None], DOT_FP32)

    inv_l = 1.0 / l_i
    o_rows = o_ptr + (q0 + offs_m)[:, None].to(tl.int64) * stride_o_t + h[:, None] * stride_o_h
    tl.store(o_rows + offs_d[None, :], (acc * inv_l[:, None]).to(dt), mask=col_mask(m_mask, offs_d, DIM, PAD))


# --------------------------------------------------------------------------------------------------
# launcher
# --------------------------------------------------------------------------------------------------

_ACT = {torch.bfloat16: "bf16", torch.float16: "fp16"}
_PLAIN2 = (KVFormat.PLAIN, KVFormat.PLAIN)          # a 16-bit pool
_NVFP4_2 = (KVFormat.NVFP4, KVFormat.NVFP4)


def _fail(name, msg):
    raise ValueError(f"{name}: {msg}")


def _config_constexprs(cfg: planner.ExtendConfig) -> dict:
    """The kernel constexprs a configuration sets (the launcher's and the AOT cases' one source;
    ``prefix_stages`` 0 means the tile's depth, which the kernel takes as None)."""
    return dict(BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, HW_FP8=cfg.hw_fp8, PACK=cfg.pack,
                UNMASKED=cfg.unmasked, PREFIX_STAGES=cfg.prefix_stages or None, HEAVY_FIRST=cfg.heavy_first,
                QUANT_PREFIX_UNMASKED=cfg.quant_prefix_unmasked, DIAG_IN_LOOP=cfg.diag_in_loop,
                PREFIX_LOOP=cfg.prefix_loop)


def extend_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    qo_indptr: torch.Tensor,
    kv_indptr: torch.Tensor,
    kv_indices: torch.Tensor,
    prefix_lens: torch.Tensor,
    *,
    kv_dtype: str,
    max_extend_len: int,
    page_size: int = 1,
    k_scale_cache: torch.Tensor | None = None,
    v_scale_cache: torch.Tensor | None = None,
    k_scale=1.0,
    v_scale=1.0,
    sm_scale: float | None = None,
    logit_cap: float = 0.0,
    window_left: int = -1,
    out: torch.Tensor | None = None,
    arch: int | None = None,
    config: planner.ExtendConfig | None = None,
    max_prefix_len: int | None = None,
    check_slots: bool = True,
    sinks: torch.Tensor | None = None,
) -> torch.Tensor:
    """Causal attention of each request's new tokens over its cached prefix plus themselves,
    validated, planned and run in one call (a model runs :func:`plan_extend_batch` once per batch and
    :meth:`ExtendPlan.run` per layer instead).

    Parameters
    ----------
    q : (tokens, q_heads, head_dim) bf16/fp16, the new tokens of all requests back to back.
    k, v : (tokens, kv_heads, head_dim) the same tokens' K/V (token stride free).
    k_cache, v_cache, k_scale_cache, v_scale_cache, k_scale, v_scale, page_size : the pool, as in
        :func:`sgl_kernel_sm12x.attention.decode.decode_attention`.
    qo_indptr : (batch + 1,) int32 offsets of each request's new tokens in ``q``.
    kv_indptr, kv_indices : the prefix of each request in the pool (tokens or pages).
    prefix_lens : (batch,) int32 cached tokens per request (0 for a fresh prefill).
    max_extend_len : the longest chunk in the batch (sizes the grid; the host knows it).
    max_prefix_len : the longest cached prefix in the batch, when the host knows it (SGLang's
        ``extend_prefix_lens_cpu``); it must be exact. At 0 (fresh prefills) the pool is not read,
        so a quantized pool's call runs the 16-bit kernel and tile, with the chunk's own K/V
        standing in for the pool, and the kernel is compiled without its prefix phase
        (``ExtendConfig.prefix_loop``: the unused loop's code costs the chunk phase). A
        configuration without the prefix phase is refused unless max_prefix_len is 0.
    check_slots : as in :func:`sgl_kernel_sm12x.attention.decode.decode_attention` (out-of-pool slot
        ids are never read; True checks them and raises naming ``kv_indices``: one launch, one sync).
    sinks : as in :func:`sgl_kernel_sm12x.attention.decode.decode_attention` (the Triton kernel runs
        them).
    """
    modes = kv_formats(kv_dtype)
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor) or t.dim() != 3:
            _fail(name, "expected a (tokens, heads, head_dim) tensor")
        if t.dtype not in _ACT:
            _fail(name, f"dtype {t.dtype} is not supported; supported: {[str(d) for d in _ACT]}")
        if t.stride(2) != 1:
            _fail(name, "head_dim must be contiguous")
    tokens, hq, d = q.shape
    check_sinks(sinks, hq, q.device)
    hkv = k.shape[1]
    if k.shape != (tokens, hkv, d) or v.shape != k.shape or k.dtype != q.dtype or v.dtype != q.dtype:
        _fail("k", f"k and v must be ({tokens}, kv_heads, {d}) in {q.dtype}")
    if hq % hkv:
        _fail("q", f"q_heads={hq} must be a multiple of kv_heads={hkv}")
    for name, t, mode in (("k_cache", k_cache, modes[0]), ("v_cache", v_cache, modes[1])):
        width = d // 2 if mode == KVFormat.NVFP4 else d
        want = {KVFormat.PLAIN: (q.dtype,), KVFormat.FP8: (torch.uint8, torch.float8_e4m3fn),
                KVFormat.NVFP4: (torch.uint8,)}[mode]
        if not isinstance(t, torch.Tensor) or t.dim() != 3 or t.shape[1:] != (hkv, width) or t.dtype not in want \
                or t.stride(2) != 1:
            _fail(name, f"kv_dtype={kv_dtype!r} needs (slots, {hkv}, {width}) {[str(w) for w in want]}")
        if mode == KVFormat.NVFP4 and not nvfp4_rows_aligned(t):
            _fail(name, "nvfp4 rows must start on 4-byte boundaries (data pointer and strides multiples of 4)")
    for name, t, mode in (("k_scale_cache", k_scale_cache, modes[0]), ("v_scale_cache", v_scale_cache, modes[1])):
        if mode == KVFormat.NVFP4 and (not isinstance(t, torch.Tensor) or t.shape != (k_cache.shape[0], hkv, d // 16)
                                       or t.dtype not in (torch.uint8, torch.float8_e4m3fn)):
            _fail(name, f"nvfp4 needs a (slots, {hkv}, {d // 16}) scale tensor")
    if out is None:
        out = torch.empty_like(q)
    check_slots = check_slots and not (q.is_cuda and torch.cuda.is_current_stream_capturing())
    plan = plan_extend_batch(qo_indptr, kv_indptr, kv_indices, prefix_lens, q_heads=hq, kv_heads=hkv, head_dim=d,
                             kv_dtype=kv_dtype, q_dtype=_ACT[q.dtype], page_size=page_size,
                             max_extend_len=max_extend_len, max_prefix_len=max_prefix_len,
                             offsets_32bit=offsets_fit(*(t for t in (k_cache, v_cache, k_scale_cache, v_scale_cache)
                                                         if t is not None)),
                             window=window_left >= 0, arch=arch, config=config,
                             num_slots=k_cache.shape[0] if check_slots else None)
    if tokens == 0:
        return out
    plan.run(q, k, v, k_cache, v_cache, k_scale_cache=k_scale_cache, v_scale_cache=v_scale_cache,
             k_scale=float(k_scale.item() if isinstance(k_scale, torch.Tensor) else k_scale),
             v_scale=float(v_scale.item() if isinstance(v_scale, torch.Tensor) else v_scale), sm_scale=sm_scale,
             logit_cap=logit_cap, window_left=window_left, out=out, sinks=sinks)
    if check_slots:
        check_slot_flag(plan.flag, kv_indptr, kv_indices, k_cache.shape[0], page_size)
    return out


@dataclass(frozen=True)
class ExtendPlan:
    """One batch's extend, planned once by :func:`plan_extend_batch` and run per layer by
    :meth:`run` (no validation, no planning there)."""
    cfg: planner.ExtendConfig            # no sliding window
    cfg_window: planner.ExtendConfig     # layers with a sliding window
    k_fmt: KVFormat
    v_fmt: KVFormat
    chunk_as_pool: bool                  # nothing cached: the 16-bit launch, the chunk's K/V stand in for the pool
    batch: int
    q_heads: int
    kv_heads: int
    head_dim: int
    page_size: int
    max_extend_len: int
    qo_indptr: torch.Tensor
    kv_indptr: torch.Tensor
    kv_indices: torch.Tensor
    prefix_lens: torch.Tensor
    flag: torch.Tensor                   # set by the batch's index check (num_slots given), else untouched
    flags: tuple                         # cfg's quantized-tile constexprs (kv_tile.tile_flags), as items
    flags_window: tuple                  # cfg_window's

    def run(self, q, k, v, k_cache, v_cache, *, k_scale_cache=None, v_scale_cache=None, k_scale: float = 1.0,
            v_scale: float = 1.0, sm_scale: float | None = None, logit_cap: float = 0.0, window_left: int = -1,
            out=None, sinks=None) -> torch.Tensor:
        """One layer: ``q`` (tokens, q_heads, head_dim), ``k`` / ``v`` the same tokens' K / V in q's
        dtype, that layer's pool as planned; ``sinks`` (q_heads,) attention-sink logits or None
        (the Triton kernel, planned as ``cfg_window``, takes them); writes and returns ``out``."""
        if out is None:
            out = torch.empty_like(q)
        if q.shape[0] == 0 or self.batch == 0 or self.max_extend_len <= 0:
            return out
        cfg = self.cfg_window if window_left >= 0 or sinks is not None else self.cfg
        if sinks is not None and (cfg.wgmma or cfg.mma2):
            _fail("config", "attention sinks run on the Triton extend kernel (wgmma=False, mma2=False)")
        k_fmt, v_fmt = self.k_fmt, self.v_fmt
        if self.chunk_as_pool:
            k_cache, v_cache, k_scale_cache, v_scale_cache = k, v, None, None
        if k_fmt == KVFormat.PLAIN:
            k_scale = v_scale = 1.0
        kc = k_cache.view(torch.uint8) if k_fmt == KVFormat.FP8 else k_cache
        vc = v_cache.view(torch.uint8) if v_fmt == KVFormat.FP8 else v_cache
        ks = k_scale_cache.view(torch.uint8) if k_fmt == KVFormat.NVFP4 else kc
        vs = v_scale_cache.view(torch.uint8) if v_fmt == KVFormat.NVFP4 else vc
        d, hq, hkv = self.head_dim, self.q_heads, self.kv_heads
        sm = (1.0 / math.sqrt(d)) if sm_scale is None else float(sm_scale)
        flags = dict(self.flags_window if window_left >= 0 or sinks is not None else self.flags)
        ksf, vsf = unit_scales(flags, k_fmt, v_fmt, float(k_scale), float(v_scale))
        if cfg.mma2:
            from .extend_mma import launch
            launch(q, k, v, out, kc, vc, ks, vs, self.qo_indptr, self.kv_indptr, self.kv_indices, self.prefix_lens,
                   sm_scale=sm, k_scale=float(k_scale), v_scale=float(v_scale), logit_cap=logit_cap, group=hq // hkv,
                   page_size=self.page_size, max_extend_len=self.max_extend_len, cfg=cfg, prefix=cfg.prefix_loop)
            return out
        if cfg.wgmma:
            from .extend_wgmma import launch
            launch(q, k, v, out, kc, vc, ks, vs, self.qo_indptr, self.kv_indptr, self.kv_indices, self.prefix_lens,
                   qk_scale_prefix=sm * ksf * LOG2E, qk_scale_ext=sm * LOG2E, v_scale_prefix=vsf,
                   logit_cap=logit_cap, group=hq // hkv, page_size=self.page_size,
                   max_extend_len=self.max_extend_len, cfg=cfg)
            return out
        grid = (triton.cdiv(self.max_extend_len, cfg.block_m // cfg.pack), hq // cfg.pack, self.batch)
        extend_kernel[grid](
            q_ptr=q, stride_q_t=q.stride(0), stride_q_h=q.stride(1),
            k_ptr=k, v_ptr=v, stride_k_t=k.stride(0), stride_k_h=k.stride(1), stride_v_t=v.stride(0),
            stride_v_h=v.stride(1),
            o_ptr=out, stride_o_t=out.stride(0), stride_o_h=out.stride(1),
            k_cache_ptr=kc, v_cache_ptr=vc, stride_kc_s=kc.stride(0), stride_kc_h=kc.stride(1),
            stride_vc_s=vc.stride(0), stride_vc_h=vc.stride(1),
            k_scale_ptr=ks, v_scale_ptr=vs, stride_ks_s=ks.stride(0), stride_ks_h=ks.stride(1),
            stride_vs_s=vs.stride(0), stride_vs_h=vs.stride(1),
            qo_indptr_ptr=self.qo_indptr, kv_indptr_ptr=self.kv_indptr, kv_indices_ptr=self.kv_indices,
            prefix_lens_ptr=self.prefix_lens,
            qk_scale_prefix=sm * ksf * LOG2E, qk_scale_ext=sm * LOG2E, v_scale_prefix=vsf,
            logit_cap=float(logit_cap), window_left=int(window_left), group=hq // hkv, page_size=self.page_size,
            max_id=_max_id(kc.shape[0], self.page_size), **dim_constexprs(d), PAGED=self.page_size > 1, K_MODE=int(k_fmt),
            V_MODE=int(v_fmt), HAS_CAP=logit_cap > 0, HAS_WINDOW=window_left >= 0, DOT_FP32=_INTERPRET,
            **dict(_config_constexprs(cfg), HW_FP8=cfg.hw_fp8 and not _INTERPRET), **flags,
            **({"sinks_ptr": sinks.float(), "HAS_SINKS": True} if sinks is not None else {}),
            num_warps=cfg.num_warps, num_stages=cfg.num_stages,
        )
        return out


def plan_extend_batch(qo_indptr: torch.Tensor, kv_indptr: torch.Tensor, kv_indices: torch.Tensor,
                      prefix_lens: torch.Tensor, *, q_heads: int, kv_heads: int, head_dim: int, kv_dtype: str,
                      q_dtype: str = "bf16", page_size: int = 1, max_extend_len: int,
                      max_prefix_len: int | None = None, offsets_32bit: bool = True, window: bool = False,
                      arch: int | None = None, config: planner.ExtendConfig | None = None,
                      num_slots: int | None = None) -> ExtendPlan:
    """Plan one batch's extend for every layer of a model (see :class:`ExtendPlan`).

    Parameters
    ----------
    qo_indptr : (batch + 1,) int32 offsets of each request's new tokens.
    kv_indptr, kv_indices : the prefix of each request in the pool (tokens or pages).
    prefix_lens : (batch,) int32 cached tokens per request.
    q_heads, kv_heads, head_dim, kv_dtype, q_dtype, page_size : the model's attention shape and pool.
    max_extend_len, max_prefix_len : as in :func:`extend_attention`.
    offsets_32bit : every pool tensor spans under 2^31 bytes (kv_tile.offsets_fit): what the sm_90
        Gluon kernels need; otherwise the Triton kernel runs.
    window : some layers have a sliding window (``cfg_window``, always planned, serves them; a
        ``config`` override is checked against it).
    arch, config, num_slots : as in :func:`sgl_kernel_sm12x.attention.decode.plan_decode_batch`.
    """
    modes = kv_formats(kv_dtype)
    batch = prefix_lens.shape[0] if isinstance(prefix_lens, torch.Tensor) else -1
    for name, t, n in (("qo_indptr", qo_indptr, batch + 1), ("kv_indptr", kv_indptr, batch + 1),
                       ("prefix_lens", prefix_lens, batch)):
        if not isinstance(t, torch.Tensor) or t.dim() != 1 or t.shape[0] != n or t.dtype != torch.int32:
            _fail(name, f"expected an int32 tensor of {n} entries")
    if page_size not in planner.PAGE_SIZES:
        _fail("page_size", f"{page_size} is not supported; supported: {list(planner.PAGE_SIZES)}")
    if q_heads < 1 or kv_heads < 1 or q_heads % kv_heads:
        _fail("q_heads", f"q_heads={q_heads} must be a positive multiple of kv_heads={kv_heads}")
    if max_prefix_len is not None and (not isinstance(max_prefix_len, int) or max_prefix_len < 0):
        _fail("max_prefix_len", f"must be a non-negative int or None, got {max_prefix_len!r}")
    device = prefix_lens.device
    arch = planner.launch_arch(device, arch)
    chunk_as_pool = max_prefix_len == 0 and modes != _PLAIN2 and config is None
    if chunk_as_pool:       # nothing cached: the 16-bit launch, the chunk's K/V passed where the pool goes
        kv_dtype, modes = q_dtype, _PLAIN2
    gluon = offsets_32bit and device.type == "cuda" and wgmma_available()
    kw = dict(head_dim=head_dim, kv_dtype=kv_dtype, q_dtype=q_dtype, group=q_heads // kv_heads, page_size=page_size,
              prefix=max_prefix_len != 0, gluon=gluon, short=max_extend_len <= planner.SHORT_CHUNK)
    cfg = config or planner.plan_extend(arch, window=False, **kw)
    cfg_window = config or planner.plan_extend(arch, window=True, **kw)
    group = q_heads // kv_heads
    for c in (cfg, cfg_window):
        if not c.prefix_loop and max_prefix_len != 0:
            _fail("config", "prefix_loop=False compiles no prefix phase: pass max_prefix_len=0 (nothing cached) "
                  f"with it, got max_prefix_len={max_prefix_len!r}")
        if c.pack < 1 or group % c.pack or c.block_m % c.pack or c.block_m // c.pack < 1:
            _fail("config", f"pack={c.pack} must divide the GQA group ({group}) and block_m ({c.block_m})")
    for c, win in ((cfg, False), (cfg_window, window)):
        if not c.wgmma:
            continue
        if modes not in (_NVFP4_2, _PLAIN2) or win or _INTERPRET or head_dim != 128 or not c.prefix_loop:
            _fail("config", "wgmma runs NVFP4 and 16-bit pools at head_dim 128 with a prefix phase, without a "
                  "sliding window, on the device")
        if not offsets_32bit:
            _fail("config", "wgmma takes pools whose K / V (and scale) tensors each span under 2^31 bytes; "
                  "larger pools run the Triton kernel (plan_extend(..., gluon=False))")
    for c, win in ((cfg, False), (cfg_window, window)):
        if not c.mma2:
            continue
        if c.wgmma or modes not in (_PLAIN2, _NVFP4_2) or win or head_dim not in (64, 128) or not mma2_available():
            _fail("config", "mma2 runs 16-bit and NVFP4 pools at head_dim 64 and 128, without a sliding window, "
                  "on a device (Gluon, Triton >= 3.6)")
        if c.num_warps * 16 != c.block_m:
            _fail("config", f"mma2 gives each warp 16 whole rows: block_m={c.block_m} must be 16 x num_warps "
                  f"({c.num_warps})")
    flag = slot_flag(device)
    if num_slots is not None:
        flag.zero_()
        check_kv_indices(kv_indptr, kv_indices, num_slots // page_size if page_size > 1 else num_slots, flag)
    flags = [tuple(tile_flags(modes[0], modes[1], c.hw_fp8, on_device=not _INTERPRET).items())
             for c in (cfg, cfg_window)]
    return ExtendPlan(cfg, cfg_window, modes[0], modes[1], chunk_as_pool, batch, q_heads, kv_heads, head_dim,
                      page_size, int(max_extend_len), qo_indptr, kv_indptr, kv_indices, prefix_lens, flag, *flags)


def wgmma_available() -> bool:
    """Whether the sm_90 warpgroup-MMA Gluon extend kernel (NVFP4 and 16-bit pools) can run here:
    not the interpreter, and a Triton whose Gluon API it was written against (3.6 or newer)."""
    global _WGMMA
    if _WGMMA is None:
        _WGMMA = gluon_kernel_usable(".extend_wgmma", _INTERPRET)
    return _WGMMA


_WGMMA = None


def mma2_available() -> bool:
    """Whether the mma.sync Gluon extend kernel (:mod:`.extend_mma`) can run here: not the
    interpreter, Triton 3.6 or newer."""
    global _MMA2
    if _MMA2 is None:
        _MMA2 = gluon_kernel_usable(".extend_mma", _INTERPRET)
    return _MMA2


_MMA2 = None


def aot_cases(arch: int):
    seen = set()
    # with a sliding window (or under the interpreter) sm_90's NVFP4 plan stays on this kernel
    # gluon=False: where the Gluon kernel cannot run (pools over 2^31 bytes, Triton < 3.6)
    # attention sinks run the window plan (ExtendPlan.run): its configurations with sinks too
    for inp, sinks in ((dict(i, window=w, gluon=g), sk) for i in planner.extend_domain() for w in (False, True)
                       for g in (True, False) for sk in ((False, True) if w else (False,))):
        cfg = planner.plan_extend(arch, **inp)
        if cfg.wgmma or cfg.mma2:       # another kernel (extend_wgmma / extend_mma.aot_cases)
            continue
        k_mode, v_mode = (int(f) for f in kv_formats(inp["kv_dtype"]))
        q_t = f"*{inp['q_dtype']}"
        cache_t = q_t if k_mode == KVFormat.PLAIN else "*u8"
        cx = dict(**dim_constexprs(inp["head_dim"]), PAGED=inp["page_size"] > 1, K_MODE=k_mode, V_MODE=v_mode,
                  HAS_CAP=False, HAS_WINDOW=False, DOT_FP32=False, **_config_constexprs(cfg),
                  **tile_flags(k_mode, v_mode, cfg.hw_fp8), HAS_SINKS=sinks)
        key = (q_t, cache_t, tuple(sorted(cx.items())), cfg.num_warps, cfg.num_stages)
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
                  "stride_ks_s", "stride_ks_h", "stride_vs_s", "stride_vs_h", "window_left", "group", "page_size",
                  "max_id"):
            sig[n] = "i32"
        if sinks:
            sig["sinks_ptr"] = "*fp32"
        else:
            cx["sinks_ptr"] = None
        label = dict(head_dim=inp["head_dim"], kv_dtype=inp["kv_dtype"], q_dtype=inp["q_dtype"],
                     paged=inp["page_size"] > 1, **cfg.as_dict(), **({"sinks": True} if sinks else {}))
        yield label, sig, cx, {"num_warps": cfg.num_warps, "num_stages": cfg.num_stages}