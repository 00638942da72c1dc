"""Paged decode attention: split-KV stage + reduce, reading bf16/fp16, fp8_e4m3 or nvfp4 KV in place.

Grid of the split stage: ``(batch, kv_heads, MAX_SPLITS)``. One program serves all ``GROUP`` query
heads of one KV head (GQA packed into the M dimension of the MMA, padded to ``BLOCK_H`` >= 16) over
one contiguous range of the request's tokens. The number of splits a request uses is computed on
the device from its length (``min(MAX_SPLITS, cdiv(len, MIN_SPLIT_TOKENS))``), so the grid depends
only on the batch size: no host synchronisation, CUDA-graph safe.
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
from .kv_tile import (check_sinks, FMT_NVFP4, check_kv_indices, max_id as _max_id, check_slot_flag, decode_tile, slot_flag, dot, gluon_kernel_usable, load_raw, col_mask, dim_constexprs, nvfp4_decode, nvfp4_rows_aligned,
                      offsets_fit, online_softmax_step, split_range, tile_flags, tile_scores, tile_slots, unit_scales)

_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
LOG2E = 1.4426950408889634


@triton.jit
def _attend_tile(q_a, q_b, kr, ksr, vr, vsr, n_mask, m_i, l_i, acc_a, acc_b, qk_scale, logit_cap,
                 dt: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_N: tl.constexpr, K_MODE: tl.constexpr,
                 V_MODE: tl.constexpr, HAS_CAP: tl.constexpr, HW_FP8: tl.constexpr, DOT_FP32: tl.constexpr,
                 FP4_PTX: tl.constexpr):
    """One KV tile, given as loaded by :func:`load_raw`: decode K, scores, online softmax, decode V,
    accumulate. Returns the new ``(m_i, l_i, acc_a, acc_b)``."""
    s = tile_scores(q_a, q_b, kr, ksr, dt, BLOCK_H, BLOCK_N, K_MODE, HW_FP8, DOT_FP32, FP4_PTX)
    p, alpha, m_i, l_i = online_softmax_step(s * qk_scale, m_i, l_i, n_mask[None, :], HAS_CAP, logit_cap)
    if V_MODE == FMT_NVFP4:
        v_lo, v_hi = nvfp4_decode(vr, vsr, dt, FP4_PTX, HW_FP8)
        acc_a = dot(p.to(dt), v_lo, acc_a * alpha[:, None], DOT_FP32)
        acc_b = dot(p.to(dt), v_hi, acc_b * alpha[:, None], DOT_FP32)
    else:
        v = decode_tile(vr, dt, V_MODE, HW_FP8)
        acc_a = dot(p.to(dt), v, acc_a * alpha[:, None], DOT_FP32)
    return m_i, l_i, acc_a, acc_b


@triton.jit
def _out_rows(o_ptr, b, stride_o_b, stride_o_h, q_head):
    """Row pointers of request ``b``'s output at heads ``q_head`` (the one-split DIRECT store)."""
    return o_ptr + b * stride_o_b + q_head[:, None] * stride_o_h


@triton.jit
def decode_split_kernel(
    q_ptr, stride_q_b, stride_q_h,                         # (batch, q_heads, HEAD_DIM)
    k_cache_ptr, v_cache_ptr,                              # (slots, kv_heads, HEAD_DIM | HEAD_DIM // 2)
    stride_kc_s, stride_kc_h, stride_vc_s, stride_vc_h,
    k_scale_ptr, v_scale_ptr,                              # (slots, kv_heads, HEAD_DIM // 16) nvfp4 only
    stride_ks_s, stride_ks_h, stride_vs_s, stride_vs_h,
    kv_indptr_ptr, kv_indices_ptr, seq_lens_ptr,           # (batch + 1,), (n,), (batch,)
    part_o_ptr, part_lse_ptr,                              # (batch, q_heads, MAX_SPLITS, HEAD_DIM), (.., MAX_SPLITS)
    qk_scale,                                              # sm_scale * k_scale * log2(e)
    logit_cap, window_left, group, page_size, max_splits,
    max_id,                                                # the pool's last slot / page: ids are clamped to it
    BLOCK_H: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, PAGED: tl.constexpr,
    K_MODE: tl.constexpr, V_MODE: tl.constexpr, MIN_SPLIT_TOKENS: tl.constexpr,
    HAS_CAP: tl.constexpr, HAS_WINDOW: tl.constexpr, HW_FP8: tl.constexpr, DOT_FP32: tl.constexpr,
    FP4_PTX: tl.constexpr, F16_MMA: tl.constexpr, PREFETCH: tl.constexpr = False,
    DIRECT: tl.constexpr = False, o_ptr=None, stride_o_b=0, stride_o_h=0, v_scale=1.0,
    DIM: tl.constexpr = 0,                                 # head_dim when HEAD_DIM is its padded tile (96)
):
    # grid (kv_heads, batch, splits): the programs reading one token's rows (a KV head each) run side by side
    kvh = tl.program_id(0)
    b = tl.program_id(1)
    n_kvh = tl.num_programs(0)
    sid = tl.program_id(2)
    seq_len = tl.load(seq_lens_ptr + b)
    base = tl.load(kv_indptr_ptr + b)
    lo_tok, hi_tok = split_range(seq_len, window_left, sid, max_splits, MIN_SPLIT_TOKENS, BLOCK_N, HAS_WINDOW)

    offs_h = tl.arange(0, BLOCK_H)
    h_mask = offs_h < group
    q_head = kvh * group + offs_h
    dt = q_ptr.dtype.element_ty
    out_row = (b * n_kvh * group + q_head) * max_splits + sid
    offs_d = tl.arange(0, HEAD_DIM)
    PAD: tl.constexpr = DIM != 0
    DM: tl.constexpr = DIM if PAD else HEAD_DIM
    # DIRECT (one split, no LSE wanted): the program's result is the output -- normalised, V-scaled
    # and stored in q's dtype here, no reduce launch
    if lo_tok >= hi_tok:      # this split has no tokens: mark it empty for the reduce
        if DIRECT:            # (an empty request's output is zeros, as the reduce writes it)
            tl.store(_out_rows(o_ptr, b, stride_o_b, stride_o_h, q_head) + offs_d[None, :],
                     tl.zeros([BLOCK_H, HEAD_DIM], o_ptr.dtype.element_ty), mask=col_mask(h_mask, offs_d, DM, PAD))
        else:
            tl.store(part_lse_ptr + out_row, tl.full([BLOCK_H], float("-inf"), tl.float32), mask=h_mask)
        return

    q_row = q_ptr + b * stride_q_b + q_head[:, None] * stride_q_h
    m_i = tl.full([BLOCK_H], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_H], tl.float32)
    offs_n = tl.arange(0, BLOCK_N)
    HALF: tl.constexpr = HEAD_DIM // 2
    offs_p = tl.arange(0, HALF)
    if F16_MMA:   # fp16 MMAs on the exact fp16 dequantized FP8/NVFP4 tiles; q saturates at +-65504
        dt = tl.float16
    # q_a / q_b: even / odd elements of q for an NVFP4 K (q_b unused otherwise); acc_a / acc_b the
    # accumulators of the even / odd output elements for an NVFP4 V (acc_b unused otherwise)
    if K_MODE == FMT_NVFP4:
        q_a = tl.load(q_row + 2 * offs_p[None, :], mask=col_mask(h_mask, 2 * offs_p, DM, PAD), other=0.0)
        q_b = tl.load(q_row + 2 * offs_p[None, :] + 1, mask=col_mask(h_mask, 2 * offs_p, DM, PAD), other=0.0)
        if F16_MMA:
            q_a = tl.clamp(q_a.to(tl.float32), -65504.0, 65504.0).to(dt)
            q_b = tl.clamp(q_b.to(tl.float32), -65504.0, 65504.0).to(dt)
    else:
        q_a = tl.load(q_row + offs_d[None, :], mask=col_mask(h_mask, offs_d, DM, PAD), other=0.0)
        if F16_MMA:
            q_a = tl.clamp(q_a.to(tl.float32), -65504.0, 65504.0).to(dt)
        q_b = q_a
    if V_MODE == FMT_NVFP4:
        acc_a = tl.zeros([BLOCK_H, HALF], tl.float32)
        acc_b = tl.zeros([BLOCK_H, HALF], tl.float32)
    else:
        acc_a = tl.zeros([BLOCK_H, HEAD_DIM], tl.float32)
        acc_b = tl.zeros([BLOCK_H, 1], tl.float32)

    kc = k_cache_ptr + kvh * stride_kc_h
    vc = v_cache_ptr + kvh * stride_vc_h
    ksc = k_scale_ptr + kvh * stride_ks_h
    vsc = v_scale_ptr + kvh * stride_vs_h
    offs_wk = offs_d
    if K_MODE == FMT_NVFP4:
        offs_wk = offs_p
    offs_wv = offs_d
    if V_MODE == FMT_NVFP4:
        offs_wv = offs_p
    if PREFETCH:
        # register prefetch: the undecoded bytes of tile i + 1 and the slot ids of tile i + 2 are
        # in flight while tile i is decoded and multiplied (the quantized tiles go through inline
        # PTX, which the loop pipeliner does not stage through shared memory)
        pos = lo_tok + offs_n
        n_mask, slot = tile_slots(kv_indices_ptr, base, pos, hi_tok, page_size, max_id, PAGED)
        kr, ksr = load_raw(kc, ksc, slot, stride_kc_s, stride_ks_s, offs_wk, n_mask, K_MODE, DIM)
        vr, vsr = load_raw(vc, vsc, slot, stride_vc_s, stride_vs_s, offs_wv, n_mask, V_MODE, DIM)
        pos_nx = pos + BLOCK_N
        mask_nx, slot_nx = tile_slots(kv_indices_ptr, base, pos_nx, hi_tok, page_size, max_id, PAGED)
        for n0 in range(lo_tok, hi_tok, BLOCK_N):
            kr_nx, ksr_nx = load_raw(kc, ksc, slot_nx, stride_kc_s, stride_ks_s, offs_wk, mask_nx, K_MODE, DIM)
            vr_nx, vsr_nx = load_raw(vc, vsc, slot_nx, stride_vc_s, stride_vs_s, offs_wv, mask_nx, V_MODE, DIM)
            pos_nx2 = pos_nx + BLOCK_N
            mask_nx2, slot_nx2 = tile_slots(kv_indices_ptr, base, pos_nx2, hi_tok, page_size, max_id,
                                            PAGED)
            m_i, l_i, acc_a, acc_b = _attend_tile(q_a, q_b, kr, ksr, vr, vsr, n_mask, m_i, l_i, acc_a, acc_b,
                                                  qk_scale, logit_cap, dt, BLOCK_H, BLOCK_N, K_MODE, V_MODE,
                                                  HAS_CAP, HW_FP8, DOT_FP32, FP4_PTX)
            kr, ksr, vr, vsr, n_mask = kr_nx, ksr_nx, vr_nx, vsr_nx, mask_nx
            pos_nx, mask_nx, slot_nx = pos_nx2, mask_nx2, slot_nx2
    else:
        for n0 in tl.range(lo_tok, hi_tok, BLOCK_N):
            pos = n0 + offs_n
            n_mask, slot = tile_slots(kv_indices_ptr, base, pos, hi_tok, page_size, max_id, PAGED)
            kr, ksr = load_raw(kc, ksc, slot, stride_kc_s, stride_ks_s, offs_wk, n_mask, K_MODE, DIM)
            vr, vsr = load_raw(vc, vsc, slot, stride_vc_s, stride_vs_s, offs_wv, n_mask, V_MODE, DIM)
            m_i, l_i, acc_a, acc_b = _attend_tile(q_a, q_b, kr, ksr, vr, vsr, n_mask, m_i, l_i, acc_a, acc_b,
                                                  qk_scale, logit_cap, dt, BLOCK_H, BLOCK_N, K_MODE, V_MODE,
                                                  HAS_CAP, HW_FP8, DOT_FP32, FP4_PTX)

    o_row = part_o_ptr + out_row[:, None] * DM
    inv_l = 1.0 / l_i
    ev = col_mask(h_mask, 2 * offs_p, DM, PAD)          # NVFP4 V: even / odd output columns
    od_ = col_mask(h_mask, 2 * offs_p + 1, DM, PAD)
    full = col_mask(h_mask, offs_d, DM, PAD)
    if DIRECT:
        od = o_ptr.dtype.element_ty
        o_rows = _out_rows(o_ptr, b, stride_o_b, stride_o_h, q_head)
        if V_MODE == FMT_NVFP4:
            tl.store(o_rows + 2 * offs_p[None, :], (acc_a * (inv_l * v_scale)[:, None]).to(od), mask=ev)
            tl.store(o_rows + 2 * offs_p[None, :] + 1, (acc_b * (inv_l * v_scale)[:, None]).to(od), mask=od_)
        else:
            tl.store(o_rows + offs_d[None, :], (acc_a * (inv_l * v_scale)[:, None]).to(od), mask=full)
        return
    if V_MODE == FMT_NVFP4:
        tl.store(o_row + 2 * offs_p[None, :], acc_a * inv_l[:, None], mask=ev)
        tl.store(o_row + 2 * offs_p[None, :] + 1, acc_b * inv_l[:, None], mask=od_)
    else:
        tl.store(o_row + offs_d[None, :], acc_a * inv_l[:, None], mask=full)
    tl.store(part_lse_ptr + out_row, m_i + tl.log2(l_i), mask=h_mask)


@triton.jit
def decode_reduce_kernel(
    part_o_ptr, part_lse_ptr,                  # (batch, q_heads, MAX_SPLITS, HEAD_DIM), (batch, q_heads, MAX_SPLITS)
    o_ptr, stride_o_b, stride_o_h,             # (batch, q_heads, HEAD_DIM)
    lse_ptr,                                   # (batch, q_heads) natural-log LSE, or unused
    v_scale,
    HEAD_DIM: tl.constexpr, MAX_SPLITS: tl.constexpr, WRITE_LSE: tl.constexpr,
    sinks_ptr=None, HAS_SINKS: tl.constexpr = False,   # (q_heads,) attention-sink logits (natural log)
    DIM: tl.constexpr = 0,                             # head_dim when HEAD_DIM is its padded tile (96)
):
    """Merge the splits of one (request, q head); splits are read in chunks of at most 64. An
    attention sink adds ``exp(sink)`` to the softmax denominator (a key every query sees whose
    value is zero)."""
    b = tl.program_id(0)
    h = tl.program_id(1)
    row = b * tl.num_programs(1) + h
    CH: tl.constexpr = MAX_SPLITS if MAX_SPLITS < 64 else 64
    offs_s = tl.arange(0, CH)
    offs_d = tl.arange(0, HEAD_DIM)
    PAD: tl.constexpr = DIM != 0
    DM: tl.constexpr = DIM if PAD else HEAD_DIM
    m = tl.max(tl.load(part_lse_ptr + row * MAX_SPLITS + offs_s), 0)
    for c in tl.static_range(CH, MAX_SPLITS, CH):
        m = tl.maximum(m, tl.max(tl.load(part_lse_ptr + row * MAX_SPLITS + c + offs_s), 0))
    if HAS_SINKS:
        sink = tl.load(sinks_ptr + h).to(tl.float32) * 1.4426950408889634
        m = tl.maximum(m, sink)
    m_safe = tl.where(m == float("-inf"), 0.0, m)
    acc = tl.zeros([HEAD_DIM], tl.float32)
    den = 0.0
    for c in tl.static_range(0, MAX_SPLITS, CH):
        lse = tl.load(part_lse_ptr + row * MAX_SPLITS + c + offs_s)
        w = tl.exp2(lse - m_safe)             # empty splits (-inf) weigh 0
        valid = lse > float("-inf")
        po = tl.load(part_o_ptr + (row * MAX_SPLITS + c + offs_s)[:, None] * DM + offs_d[None, :],
                     mask=col_mask(valid, offs_d, DM, PAD), other=0.0)
        den += tl.sum(w, 0)
        acc += tl.sum(po * w[:, None], 0)
    if HAS_SINKS:
        den += tl.exp2(sink - m_safe)
    o = acc / tl.where(den > 0, den, 1.0) * v_scale
    if PAD:
        tl.store(o_ptr + b * stride_o_b + h * stride_o_h + offs_d, o.to(o_ptr.dtype.element_ty), mask=offs_d < DM)
    else:
        tl.store(o_ptr + b * stride_o_b + h * stride_o_h + offs_d, o.to(o_ptr.dtype.element_ty))
    if WRITE_LSE:
        tl.store(lse_ptr + row, (m + tl.log2(den)) / 1.4426950408889634)


# --------------------------------------------------------------------------------------------------
# launcher
# --------------------------------------------------------------------------------------------------

def _fail(name, msg):
    raise ValueError(f"{name}: {msg}")



def _scalar(x, name):
    if isinstance(x, torch.Tensor):
        if x.numel() != 1:
            _fail(name, f"must hold one value, got shape {tuple(x.shape)}")
        return float(x.item())
    return float(1.0 if x is None else x)


@dataclass(frozen=True)
class DecodePlan:
    """One batch's decode, planned once by :func:`plan_decode_batch` (arguments checked, launch
    configuration chosen, split workspace sized, device properties read) and run once per layer by
    :meth:`run`, which neither validates nor plans. The index tensors are the caller's: in CUDA-graph
    mode, fixed buffers refilled before each replay."""
    cfg: planner.DecodeConfig
    k_fmt: KVFormat
    v_fmt: KVFormat
    batch: int
    q_heads: int
    kv_heads: int
    head_dim: int
    page_size: int
    kv_indptr: torch.Tensor
    kv_indices: torch.Tensor
    seq_lens: torch.Tensor
    workspace: tuple
    flag: torch.Tensor        # set by the batch's index check (check_slots), else untouched
    flags: tuple              # the quantized-tile constexprs (kv_tile.tile_flags), as items

    def run(self, q, k_cache, v_cache, *, k_scale_cache=None, v_scale_cache=None, k_scale: float = 1.0,
            v_scale: float = 1.0, sm_scale: float | None = None, logit_cap: float = 0.0, window_left: int = -1,
            out=None, lse=None, sinks=None) -> torch.Tensor:
        """One layer: ``q`` (batch, q_heads, head_dim), that layer's pool (as planned), per-tensor
        scales as floats; ``sinks`` (q_heads,) attention-sink logits or None; writes and returns
        ``out``."""
        cfg, d, hkv = self.cfg, self.head_dim, self.kv_heads
        if out is None:
            out = torch.empty_like(q)
        if self.batch == 0:
            return out
        k_fmt, v_fmt = self.k_fmt, self.v_fmt
        kc = k_cache.view(torch.uint8) if k_fmt == KVFormat.FP8 else k_cache
        vc = v_cache.view(torch.uint8) if v_fmt == KVFormat.FP8 else v_cache
        ks = k_scale_cache.view(torch.uint8) if k_fmt == KVFormat.NVFP4 else kc
        vs = v_scale_cache.view(torch.uint8) if v_fmt == KVFormat.NVFP4 else vc
        sm = (1.0 / math.sqrt(d)) if sm_scale is None else float(sm_scale)
        if k_fmt == KVFormat.PLAIN:      # per-tensor scales belong to quantized pools only
            k_scale = v_scale = 1.0
        flags = dict(self.flags)
        k_scale, v_scale = unit_scales(flags, k_fmt, v_fmt, float(k_scale), float(v_scale))
        qk_scale = sm * k_scale * LOG2E
        part_o, part_lse = self.workspace
        write_lse = lse is not None
        direct = cfg.max_splits == 1 and not write_lse and sinks is None     # sinks: through the reduce
        hq = self.q_heads
        if cfg.fp4_mma:
            _launch_fp4_mma(cfg, q, kc, vc, ks, vs, self.kv_indptr, self.kv_indices, self.seq_lens, part_o, part_lse,
                            qk_scale, logit_cap, window_left, hq // hkv, self.page_size, out, direct, v_scale)
        else:
            decode_split_kernel[split_grid(cfg, self.batch, hkv)](
                q_ptr=q, stride_q_b=q.stride(0), stride_q_h=q.stride(1),
                k_cache_ptr=kc, v_cache_ptr=vc,
                stride_kc_s=kc.stride(0), stride_kc_h=kc.stride(1), stride_vc_s=vc.stride(0), stride_vc_h=vc.stride(1),
                k_scale_ptr=ks, v_scale_ptr=vs,
                stride_ks_s=ks.stride(0), stride_ks_h=ks.stride(1), stride_vs_s=vs.stride(0), stride_vs_h=vs.stride(1),
                kv_indptr_ptr=self.kv_indptr, kv_indices_ptr=self.kv_indices, seq_lens_ptr=self.seq_lens,
                part_o_ptr=part_o, part_lse_ptr=part_lse,
                qk_scale=qk_scale, logit_cap=float(logit_cap), window_left=int(window_left),
                group=hq // hkv, page_size=self.page_size, max_splits=cfg.max_splits,
                max_id=_max_id(kc.shape[0], self.page_size),
                BLOCK_H=cfg.block_h, BLOCK_N=cfg.block_n, PAGED=self.page_size > 1, **dim_constexprs(d),
                K_MODE=int(k_fmt), V_MODE=int(v_fmt), MIN_SPLIT_TOKENS=cfg.min_split_tokens,
                HAS_CAP=logit_cap > 0, HAS_WINDOW=window_left >= 0, HW_FP8=cfg.hw_fp8 and not _INTERPRET,
                DOT_FP32=_INTERPRET, PREFETCH=cfg.prefetch, DIRECT=direct,
                o_ptr=out, stride_o_b=out.stride(0), stride_o_h=out.stride(1), v_scale=v_scale,
                **flags, num_warps=cfg.num_warps, num_stages=cfg.num_stages,
                **({"maxnreg": cfg.maxnreg} if cfg.maxnreg else {}),
            )
        if not direct:
            decode_reduce_kernel[(self.batch, hq)](
                part_o_ptr=part_o, part_lse_ptr=part_lse, o_ptr=out, stride_o_b=out.stride(0),
                stride_o_h=out.stride(1), lse_ptr=lse if write_lse else part_lse, v_scale=v_scale,
                MAX_SPLITS=cfg.max_splits, WRITE_LSE=write_lse, num_warps=4, **dim_constexprs(d),
                **({"sinks_ptr": sinks.float(), "HAS_SINKS": True} if sinks is not None else {}),
            )
        return out


def plan_decode_batch(kv_indptr: torch.Tensor, kv_indices: torch.Tensor, seq_lens: torch.Tensor, *, q_heads: int,
                      kv_heads: int, head_dim: int, kv_dtype: str, q_dtype: str = "bf16", page_size: int = 1,
                      arch: int | None = None, max_splits: int | None = None, workspace=None,
                      config: planner.DecodeConfig | None = None, num_slots: int | None = None) -> DecodePlan:
    """Plan one batch's decode for every layer of a model (see :class:`DecodePlan`).

    Parameters
    ----------
    kv_indptr : (batch + 1,) int32 offsets into ``kv_indices`` (tokens for page_size 1, pages otherwise).
    kv_indices : token slots (page_size 1) or page ids, int32/int64, on the device the layers run on.
    seq_lens : (batch,) int32 tokens per request (may be 0).
    q_heads, kv_heads, head_dim, kv_dtype, q_dtype, page_size : the model's attention shape and pool.
    arch : plan for this compute capability (default: the device's; CPU tensors: planner.INTERPRETER_ARCH).
    max_splits : split-KV parallelism (default: the planner's choice for this batch).
    workspace : preallocated ``(part_o, part_lse)`` for CUDA graphs (:func:`decode_workspace`).
    config : override of the planner's choice, for offline tuning sweeps only.
    num_slots : the pool's rows: given, one kernel checks the batch's ids against it and sets
        ``plan.flag`` where one lies outside (the attention kernels clamp such ids into the pool, and
        report nothing themselves); read it with ``kv_tile.check_slot_flag`` (one sync).
    """
    fmts = kv_formats(kv_dtype)
    planner._check("q_dtype", q_dtype, planner.ACT_DTYPES)
    if q_heads < 1 or kv_heads < 1 or q_heads % kv_heads:
        _fail("q_heads", f"q_heads={q_heads} must be a positive multiple of kv_heads={kv_heads}")
    batch = seq_lens.shape[0] if isinstance(seq_lens, torch.Tensor) else -1
    for name, t, n in (("kv_indptr", kv_indptr, batch + 1), ("seq_lens", seq_lens, batch)):
        if not isinstance(t, torch.Tensor) or t.dim() != 1 or t.shape[0] != n or t.dtype != torch.int32:
            _fail(name, f"expected an int32 tensor of {n} entries")
    if not isinstance(kv_indices, torch.Tensor) or kv_indices.dim() != 1 or \
            kv_indices.dtype not in (torch.int32, torch.int64):
        _fail("kv_indices", "expected a 1-D int32/int64 tensor")
    if page_size not in planner.PAGE_SIZES:
        _fail("page_size", f"{page_size} is not supported; supported: {list(planner.PAGE_SIZES)}")
    device = seq_lens.device
    arch = planner.launch_arch(device, arch)
    sms = planner.device_sms(device) if device.type == "cuda" else None
    plan = dict(arch=arch, head_dim=head_dim, kv_dtype=kv_dtype, q_dtype=q_dtype, group=q_heads // kv_heads,
                page_size=page_size, batch=batch, kv_heads=kv_heads, max_splits=max_splits, num_sms=sms)
    cfg = config or planner.plan_decode(**plan)
    if cfg.fp4_mma and head_dim in planner.PADDED_HEAD_DIMS:
        _fail("config", f"the one-warp NVFP4 kernel (fp4_mma) needs a power-of-two head_dim, got {head_dim}")
    if cfg.fp4_mma and (not fp4_mma_available() or fmts != (KVFormat.NVFP4, KVFormat.NVFP4)):
        # the interpreter, or a Triton without Gluon: the Triton split stage, same split count
        cfg = planner.plan_decode(**dict(plan, max_splits=cfg.max_splits), fp4_mma=False)
    if workspace is None:
        workspace = decode_workspace(batch, q_heads, head_dim, cfg.max_splits, device)
    part_o = workspace[0]
    if part_o.shape[0] < batch or part_o.shape[2] != cfg.max_splits:
        _fail("workspace", f"needs at least ({batch}, {q_heads}, {cfg.max_splits}, {head_dim}) for this batch")
    flags = tile_flags(fmts[0], fmts[1], cfg.hw_fp8, on_device=not _INTERPRET)
    flag = slot_flag(device)
    if num_slots is not None:
        flag.zero_()
        check_kv_indices(kv_indptr, kv_indices, num_slots // page_size if page_size > 1 else num_slots, flag)
    return DecodePlan(cfg, fmts[0], fmts[1], batch, q_heads, kv_heads, head_dim, page_size, kv_indptr, kv_indices,
                      seq_lens, tuple(workspace), flag, tuple(flags.items()))


def decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    kv_indptr: torch.Tensor,
    kv_indices: torch.Tensor,
    seq_lens: torch.Tensor,
    *,
    kv_dtype: str,
    page_size: int = 1,
    k_scale_cache: torch.Tensor | None = None,
    v_scale_cache: torch.Tensor | None = None,
    k_scale=1.0,
    v_scale=1.0,
    sm_scale: float | None = None,
    logit_cap: float = 0.0,
    window_left: int = -1,
    max_splits: int | None = None,
    out: torch.Tensor | None = None,
    lse: torch.Tensor | None = None,
    workspace: tuple[torch.Tensor, torch.Tensor] | None = None,
    arch: int | None = None,
    config: planner.DecodeConfig | None = None,
    check_slots: bool = True,
    sinks: torch.Tensor | None = None,
) -> torch.Tensor:
    """One decode step of paged attention, validated, planned and run in one call (a model runs
    :func:`plan_decode_batch` once per batch and :meth:`DecodePlan.run` per layer instead).

    Parameters
    ----------
    q : (batch, q_heads, head_dim) bf16/fp16.
    k_cache, v_cache : one layer of the pool; (slots, kv_heads, head_dim) bf16/fp16/fp8 (uint8 or
        float8_e4m3fn) or (slots, kv_heads, head_dim // 2) uint8 for nvfp4. ``kv_dtype="fp8k_nvfp4v"``
        keeps K in fp8_e4m3 and V in nvfp4 (K carries the outlier channels that cost NVFP4 most).
    kv_indptr, kv_indices, seq_lens, page_size, max_splits, workspace, arch, config :
        as in :func:`plan_decode_batch`.
    k_scale_cache, v_scale_cache : nvfp4 block scales (slots, kv_heads, head_dim // 16), for the
        parts held in nvfp4.
    k_scale, v_scale : per-tensor scales (FP8 scale / NVFP4 global scale); floats (read once).
    sm_scale : softmax scale, default 1/sqrt(head_dim). ``logit_cap`` > 0 applies cap*tanh(s/cap).
    window_left : sliding window; keys with ``pos >= seq_len - 1 - window_left`` are visible (-1: off).
    check_slots : a slot (or page) id outside the pool is never read (the kernels clamp it to the
        pool's last one); True also checks the ids on the device and reads the result after the
        launch (one more launch and one sync; skipped inside CUDA-graph capture), raising
        ``ValueError`` naming ``kv_indices`` and the offending range.
    sinks : (q_heads,) attention-sink logits (gpt-oss): ``exp(sink)`` joins each head's softmax
        denominator, as a key every query sees with a zero value. None: no sink.

    Returns ``out`` (batch, q_heads, head_dim) in q's dtype.
    """
    check_sinks(sinks, q.shape[1] if isinstance(q, torch.Tensor) and q.dim() == 3 else -1,
                q.device if isinstance(q, torch.Tensor) else "cpu")
    _check_decode_layer(q, k_cache, v_cache, kv_dtype=kv_dtype, k_scale_cache=k_scale_cache,
                        v_scale_cache=v_scale_cache, out=out)
    batch, hq, d = q.shape
    check_slots = check_slots and not (q.is_cuda and torch.cuda.is_current_stream_capturing())
    plan = plan_decode_batch(kv_indptr, kv_indices, seq_lens, q_heads=hq, kv_heads=k_cache.shape[1], head_dim=d,
                             kv_dtype=kv_dtype, q_dtype=_ACT[q.dtype], page_size=page_size, arch=arch,
                             max_splits=max_splits, workspace=workspace, config=config,
                             num_slots=k_cache.shape[0] if check_slots else None)
    if plan.batch != batch:
        _fail("seq_lens", f"holds {plan.batch} requests, q holds {batch}")
    out = plan.run(q, k_cache, v_cache, k_scale_cache=k_scale_cache, v_scale_cache=v_scale_cache,
                   k_scale=_scalar(k_scale, "k_scale"), v_scale=_scalar(v_scale, "v_scale"), sm_scale=sm_scale,
                   logit_cap=logit_cap, window_left=window_left, out=out, lse=lse, sinks=sinks)
    if check_slots:
        check_slot_flag(plan.flag, kv_indptr, kv_indices, k_cache.shape[0], page_size)
    return out


def fp4_mma_available() -> bool:
    """Whether the register-operand NVFP4 split stage can run here: a CUDA device (not the
    interpreter) and a Triton whose Gluon API it was written against (3.6 or newer; Gluon is
    experimental and changed before that)."""
    global _FP4_MMA
    if _FP4_MMA is None:
        _FP4_MMA = gluon_kernel_usable(".decode_nvfp4", _INTERPRET)
    return _FP4_MMA


_FP4_MMA = None


def _launch_fp4_mma(cfg, q, kc, vc, ks, vs, kv_indptr, kv_indices, seq_lens, part_o, part_lse, qk_scale,
                    logit_cap, window_left, group, page_size, out, direct, v_scale):
    """The NVFP4 split stage of :mod:`.decode_nvfp4` (one warp a program); ``direct`` (one split,
    no LSE): it stores the output itself."""
    from .decode_nvfp4 import decode_split_nvfp4_kernel, word_layouts
    batch, _, d = q.shape
    kwl, vwl, ksl, vsl = word_layouts(d, cfg.block_n)
    decode_split_nvfp4_kernel[split_grid(cfg, batch, kc.shape[1])](
        q, q.stride(0), q.stride(1),
        kc, vc, kc.stride(0), kc.stride(1), vc.stride(0), vc.stride(1),
        ks, vs, ks.stride(0), ks.stride(1), vs.stride(0), vs.stride(1),
        kv_indptr, kv_indices, seq_lens, part_o, part_lse,
        qk_scale, float(logit_cap), int(window_left), group, cfg.max_splits, _max_id(kc.shape[0], page_size),
        HEAD_DIM=d, BLOCK_N=cfg.block_n, NH=8 if group <= 8 else 16, PAGE=page_size,
        MIN_SPLIT_TOKENS=cfg.min_split_tokens, HAS_CAP=logit_cap > 0, HAS_WINDOW=window_left >= 0,
        KWL=kwl, VWL=vwl, KSL=ksl, VSL=vsl, PREFETCH=cfg.prefetch, DIRECT=direct,
        o_ptr=out, stride_o_b=out.stride(0), stride_o_h=out.stride(1), v_scale=float(v_scale),
        num_warps=1)


def split_grid(cfg: planner.DecodeConfig, batch: int, kv_heads: int) -> tuple[int, int, int]:
    """Launch grid of either split stage: ``(kv_heads, batch, splits)`` -- the programs that read one
    token's rows, one KV head each, launch side by side."""
    return kv_heads, batch, cfg.max_splits


def decode_workspace(batch: int, q_heads: int, head_dim: int, max_splits: int, device):
    """Split-stage buffers; allocate once at the largest batch for CUDA-graph capture."""
    return (torch.empty(batch, q_heads, max_splits, head_dim, dtype=torch.float32, device=device),
            torch.empty(batch, q_heads, max_splits, dtype=torch.float32, device=device))


_ACT = {torch.bfloat16: "bf16", torch.float16: "fp16"}
_CACHE_DTYPES = {KVFormat.PLAIN: (torch.bfloat16, torch.float16), KVFormat.FP8: (torch.uint8, torch.float8_e4m3fn),
                 KVFormat.NVFP4: (torch.uint8,)}


def _check_decode_layer(q, k_cache, v_cache, *, kv_dtype, k_scale_cache, v_scale_cache, out):
    """Validate one layer's tensors of :func:`decode_attention` (the batch's are
    :func:`plan_decode_batch`'s)."""
    modes = kv_formats(kv_dtype)
    if not isinstance(q, torch.Tensor) or q.dim() != 3:
        _fail("q", "expected a (batch, q_heads, head_dim) tensor")
    if q.dtype not in _ACT:
        _fail("q", f"dtype {q.dtype} is not supported; supported: {[str(d) for d in _ACT]}")
    if q.stride(2) != 1:
        _fail("q", "head_dim must be contiguous")
    batch, hq, d = q.shape
    if not isinstance(k_cache, torch.Tensor) or k_cache.dim() != 3:
        _fail("k_cache", "expected a (slots, kv_heads, width) tensor")
    hkv = k_cache.shape[1]
    if hq % hkv:
        _fail("q", f"q_heads={hq} must be a multiple of kv_heads={hkv}")
    for name, t, mode in (("k_cache", k_cache, modes[0]), ("v_cache", v_cache, modes[1])):
        width = d // 2 if mode == KVFormat.NVFP4 else d
        want = _CACHE_DTYPES[mode]
        if not isinstance(t, torch.Tensor) or t.dtype not in want:
            _fail(name, f"dtype {getattr(t, 'dtype', None)} does not hold kv_dtype={kv_dtype!r}; "
                        f"expected {[str(w) for w in want]}")
        if t.dim() != 3 or t.shape[1:] != (hkv, width) or t.stride(2) != 1:
            _fail(name, f"expected (slots, {hkv}, {width}) with contiguous last dim, got {tuple(t.shape)}")
        if mode == KVFormat.NVFP4 and not nvfp4_rows_aligned(t):
            _fail(name, "nvfp4 rows must start on 4-byte boundaries (data pointer and strides multiples of 4)")
        if t.device != q.device:
            _fail(name, f"is on {t.device}, q is on {q.device}")
    if modes[0] == KVFormat.PLAIN and k_cache.dtype != q.dtype:
        _fail("k_cache", f"bf16/fp16 pools must match q's dtype {q.dtype}")
    for name, t, mode in (("k_scale_cache", k_scale_cache, modes[0]), ("v_scale_cache", v_scale_cache, modes[1])):
        if mode == KVFormat.NVFP4 and (not isinstance(t, torch.Tensor) or t.shape != (k_cache.shape[0], hkv, d // 16)
                                       or t.dtype not in (torch.uint8, torch.float8_e4m3fn) or t.stride(2) != 1):
            _fail(name, f"nvfp4 needs a (slots, {hkv}, {d // 16}) uint8/float8_e4m3fn scale tensor")
    if out is not None and (out.shape != q.shape or out.dtype != q.dtype):
        _fail("out", f"expected {tuple(q.shape)} {q.dtype}, got {tuple(out.shape)} {out.dtype}")


def aot_cases(arch: int):
    """Every configuration of this split stage the decode planner can choose on ``arch`` (for
    ``sm12x budget``), including those it runs where the register-operand NVFP4 kernel cannot."""
    seen = set()
    for inp, batch in ((inp, batch) for inp in planner.decode_domain() for batch in (1, 16, 64, 4096)):
        cfg = planner.plan_decode(arch, **inp, batch=batch, fp4_mma=False)   # the tile may depend on the grid
        k_mode, v_mode = (int(f) for f in kv_formats(inp["kv_dtype"]))
        q_t = f"*{inp['q_dtype']}"
        cache_t = q_t if k_mode == KVFormat.PLAIN else "*u8"
        cx = dict(BLOCK_H=cfg.block_h, **dim_constexprs(inp["head_dim"]), BLOCK_N=cfg.block_n, PAGED=inp["page_size"] > 1,
                  K_MODE=int(k_mode), V_MODE=int(v_mode), MIN_SPLIT_TOKENS=cfg.min_split_tokens, HAS_CAP=False,
                  HAS_WINDOW=False, HW_FP8=cfg.hw_fp8, DOT_FP32=False, PREFETCH=cfg.prefetch,
                  **tile_flags(k_mode, v_mode, cfg.hw_fp8))
        for direct in (False, True):    # one split and no LSE: the output stored by the split stage
            key = (q_t, cache_t, tuple(sorted(cx.items())), cfg.num_warps, cfg.num_stages, cfg.maxnreg, direct)
            if key in seen:
                continue
            seen.add(key)
            sig = {"q_ptr": q_t, "k_cache_ptr": cache_t, "v_cache_ptr": cache_t, "k_scale_ptr": "*u8",
                   "v_scale_ptr": "*u8", "kv_indptr_ptr": "*i32", "kv_indices_ptr": "*i32",
                   "seq_lens_ptr": "*i32", "part_o_ptr": "*fp32", "part_lse_ptr": "*fp32",
                   "qk_scale": "fp32", "logit_cap": "fp32"}
            for n in ("stride_q_b", "stride_q_h", "stride_kc_s", "stride_kc_h", "stride_vc_s", "stride_vc_h",
                      "stride_ks_s", "stride_ks_h", "stride_vs_s", "stride_vs_h", "window_left", "group",
                      "page_size", "max_splits", "max_id"):
                sig[n] = "i32"
            sig.update(o_ptr=q_t, stride_o_b="i32", stride_o_h="i32", v_scale="fp32")    # always passed
            label = dict(head_dim=inp["head_dim"], kv_dtype=inp["kv_dtype"], q_dtype=inp["q_dtype"],
                         paged=inp["page_size"] > 1, block_h=cfg.block_h, block_n=cfg.block_n,
                         num_warps=cfg.num_warps, num_stages=cfg.num_stages, hw_fp8=cfg.hw_fp8,
                         prefetch=cfg.prefetch, direct=direct)
            opts = {"num_warps": cfg.num_warps, "num_stages": cfg.num_stages}
            if cfg.maxnreg:
                label["maxnreg"] = opts["maxnreg"] = cfg.maxnreg
            yield label, sig, dict(cx, DIRECT=direct), opts


def aot_cases_reduce(arch: int):
    """The reduce kernel at every head_dim and split count the planner can choose."""
    splits = sorted({1 << i for i in range(planner.MAX_SPLITS_CAP.bit_length())})
    for d in planner.HEAD_DIMS:
        for ms in splits:
            for q_dtype in planner.ACT_DTYPES:
                for sinks in (False, True):     # attention sinks (gpt-oss): one logit a head
                    sig = {"part_o_ptr": "*fp32", "part_lse_ptr": "*fp32", "o_ptr": f"*{q_dtype}",
                           "lse_ptr": "*fp32", "stride_o_b": "i32", "stride_o_h": "i32", "v_scale": "fp32"}
                    cx = dict(**dim_constexprs(d), MAX_SPLITS=ms, WRITE_LSE=True, HAS_SINKS=sinks)
                    if sinks:
                        sig["sinks_ptr"] = "*fp32"
                    else:
                        cx["sinks_ptr"] = None
                    yield (dict(head_dim=d, max_splits=ms, q_dtype=q_dtype, num_warps=4, sinks=sinks), sig, cx,
                           {"num_warps": 4, "num_stages": 1})
