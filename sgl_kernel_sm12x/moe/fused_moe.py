"""Fused mixture-of-experts: token alignment by expert, one grouped-GEMM kernel used for the gate-up
and the down projection, SiLU-and-mul between them, and the routed-weight sum.

Weights follow SGLang's layout: ``w1`` (E, 2 * I, H) holding [gate; up] rows, ``w2`` (E, H, I).
Formats: bf16/fp16 weights and activations; fp8 w8a8 with per-tensor weight scales (one per
expert) and dynamic activation scales per row; or with block scales (activations per row and
128-element K group, weights per [group_n, group_k] block, as DeepSeek-style checkpoints store
them). Tile configurations come from :func:`sgl_kernel_sm12x.planner.plan_moe`.

    tokens x top_k pairs --align--> sorted rows, padded per expert to BLOCK_M
    (fp8: hidden --quantize--> codes + row / group scales)
    GEMM 1: rows x w1[e]^T -> (pairs, 2I) --silu(gate) * up (fp8: and quantize, one pass)--> (pairs, I)
    GEMM 2: (pairs, I) x w2[e]^T * routed weight -> (pairs, H) --sum over top_k--> (tokens, H)
"""
from __future__ import annotations

import logging
import os

import torch
import triton
import triton.language as tl

from .. import planner
from ..attention.kv_tile import FP4_PTX_UNIT, fp8_to, nvfp4_decode
from ..fp_codes import e4m3_encode, e4m3_encode_hw

_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
QUANT = {"bf16": 0, "fp16": 0, "fp8_w8a8": 1, "fp8_w8a8_block": 2, "nvfp4_w4a16": 3, "nvfp4_w4a4": 4}
FP8_MAX = 448.0


@triton.jit
def moe_gemm_kernel(
    a_ptr, stride_am, stride_ak,                 # (rows_a, K) activations: bf16/fp16, or fp8 (HW_FP8: float8e4nv; else uint8 bits)
    b_ptr, stride_be, stride_bn, stride_bk,      # (E, N, K) weights, same formats
    c_ptr, stride_cm, stride_cn,                 # (pairs, N) output, row = token * TOP_K + slot
    a_scale_ptr, stride_asm, stride_ask,         # fp8: (rows_a, 1) per row, or (rows_a, K // GROUP_K) per group
    b_scale_ptr, stride_bse, stride_bsn, stride_bsk,  # fp8: (E,) per-tensor, or (E, N // GROUP_N, K // GROUP_K)
    topk_weights_ptr,                            # (pairs,) routed weights
    sorted_ids_ptr, expert_ids_ptr, num_post_pad_ptr,
    b_global_ptr, g_split,                       # nvfp4: (E, 2) fp32 per-expert scales (2^14 folded in on GPUs)
    N, K, num_pairs,
    TOP_K: tl.constexpr, A_PER_PAIR: tl.constexpr, MUL_ROUTED: tl.constexpr, QUANT: tl.constexpr,
    GROUP_N: tl.constexpr, GROUP_K: tl.constexpr, HW_FP8: tl.constexpr, DOT_FP32: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_SIZE_M: tl.constexpr,
    EVEN_K: tl.constexpr = False, FP4_PTX: tl.constexpr = False,
):
    """One (BLOCK_M sorted rows of one expert) x (BLOCK_N outputs) tile. Padding rows hold
    ``num_pairs`` and are neither read nor written. ``A_PER_PAIR``: A is indexed by pair (GEMM 2)
    instead of by token (GEMM 1). ``EVEN_K``: K is a multiple of BLOCK_K (no K mask).
    QUANT 1 (fp8, one scale per weight tensor and per activation row) accumulates in the MMA and
    scales once at the end; QUANT 2 (128 x 128 blocks) scales each K step's partial product."""
    pid = tl.program_id(0)
    num_post_pad = tl.load(num_post_pad_ptr)
    num_pid_m = tl.cdiv(num_post_pad, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    group = GROUP_SIZE_M * num_pid_n
    first_m = (pid // group) * GROUP_SIZE_M
    size_m = tl.minimum(num_pid_m - first_m, GROUP_SIZE_M)
    if size_m <= 0:                              # grid sized for the worst case; this tile is past the end
        return
    pid_m = first_m + (pid % group) % size_m
    pid_n = (pid % group) // size_m

    offs = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    pair = tl.load(sorted_ids_ptr + offs)
    row_mask = pair < num_pairs
    expert = tl.load(expert_ids_ptr + pid_m).to(tl.int64)
    if A_PER_PAIR:
        a_row = pair.to(tl.int64)
    else:
        a_row = (pair // TOP_K).to(tl.int64)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n < N
    offs_k = tl.arange(0, BLOCK_K)
    a_ptrs = a_ptr + a_row[:, None] * stride_am + offs_k[None, :] * stride_ak
    # columns past N read a valid row (wrapped) instead of a masked load; they are never stored
    b_ptrs = b_ptr + expert * stride_be + (offs_n % N)[None, :] * stride_bn + offs_k[:, None] * stride_bk
    # block fp8 with BLOCK_N inside one scale group: one weight scale a K step, not a vector
    B_SCALAR: tl.constexpr = QUANT == 2 and GROUP_N % BLOCK_N == 0
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    if QUANT == 3:
        # NVFP4 weights (ModelOpt): b (E, N, K / 8) int32 words of packed E2M1 (element 2i in the
        # low nibble), b_scale (E, N, K / 16) UE4M3 block scales, b_global (E,) fp32. Each K step
        # decodes a (BLOCK_N, BLOCK_K) weight tile in registers as its even / odd columns and runs
        # them against A's even / odd columns (no interleave); the per-expert scale at the end.
        HALF: tl.constexpr = BLOCK_K // 2
        offs_h = tl.arange(0, HALF)
        offs_w = tl.arange(0, BLOCK_K // 8)
        offs_s = tl.arange(0, BLOCK_K // 16)
        w_row = expert * stride_be + (offs_n % N).to(tl.int64)[:, None] * stride_bn
        s_row = expert * stride_bse + (offs_n % N).to(tl.int64)[:, None] * stride_bsn
        a_lo = a_ptr + a_row[:, None] * stride_am + (2 * offs_h)[None, :] * stride_ak
        for k0 in range(0, K, BLOCK_K):
            if EVEN_K:
                words = tl.load(b_ptr + w_row + (k0 // 8 + offs_w)[None, :])
                sc = tl.load(b_scale_ptr + s_row + (k0 // 16 + offs_s)[None, :])
                a_e = tl.load(a_lo, mask=row_mask[:, None], other=0.0)
                a_o = tl.load(a_lo + stride_ak, mask=row_mask[:, None], other=0.0)
            else:
                wm = (k0 // 8 + offs_w) < K // 8
                words = tl.load(b_ptr + w_row + (k0 // 8 + offs_w)[None, :], mask=wm[None, :], other=0)
                sc = tl.load(b_scale_ptr + s_row + (k0 // 16 + offs_s)[None, :],
                             mask=((k0 // 16 + offs_s) < K // 16)[None, :], other=0)
                hm = (k0 + 2 * offs_h) < K
                a_e = tl.load(a_lo, mask=row_mask[:, None] & hm[None, :], other=0.0)
                a_o = tl.load(a_lo + stride_ak, mask=row_mask[:, None] & hm[None, :], other=0.0)
            w_e, w_o = nvfp4_decode(words, sc, tl.float16, FP4_PTX, HW_FP8)     # exact in fp16 either way
            w_e = w_e.to(a_ptr.dtype.element_ty)
            w_o = w_o.to(a_ptr.dtype.element_ty)
            if DOT_FP32:
                acc = tl.dot(a_e.to(tl.float32), tl.trans(w_e).to(tl.float32), acc)
                acc = tl.dot(a_o.to(tl.float32), tl.trans(w_o).to(tl.float32), acc)
            else:
                acc = tl.dot(a_e, tl.trans(w_e), acc)
                acc = tl.dot(a_o, tl.trans(w_o), acc)
            a_lo += BLOCK_K * stride_ak
        # per-expert scales, two a expert: output columns >= g_split take the second (gate / up
        # halves of w13 may carry their own weight_scale_2); the PTX decode yields e2m1 * scale *
        # 2^-14 (exact in fp16), the launcher folds 2^14 into them
        g = tl.load(b_global_ptr + expert * 2 + (offs_n >= g_split).to(tl.int64))
        acc *= g[None, :]
    elif QUANT == 4:
        # NVFP4 weights and NVFP4 activations (W4A4, ModelOpt's recipe): A (rows, K / 2) packed
        # E2M1 with (rows, K / 16) UE4M3 scales (its global scale folded into b_global by the
        # launcher); B as for W4A16. On the GPU one block-scaled MMA (sm_120: mma.sync ... kind::mxf4nvf4.block_scale);
        # under the interpreter both operands decoded in software, even / odd columns.
        HALF4: tl.constexpr = BLOCK_K // 2
        offs_h4 = tl.arange(0, HALF4)
        offs_s4 = tl.arange(0, BLOCK_K // 16)
        b_col = expert * stride_be + (offs_n % N).to(tl.int64)[None, :] * stride_bn
        bs_row = expert * stride_bse + (offs_n % N).to(tl.int64)[:, None] * stride_bsn
        a_base = a_ptr + a_row[:, None] * stride_am
        as_base = a_scale_ptr + a_row[:, None] * stride_asm
        for k0 in range(0, K, BLOCK_K):
            km = (k0 // 2 + offs_h4) < K // 2
            sm = (k0 // 16 + offs_s4) < K // 16
            a = tl.load(a_base + (k0 // 2 + offs_h4)[None, :], mask=row_mask[:, None] & km[None, :], other=0)
            a_s = tl.load(as_base + (k0 // 16 + offs_s4)[None, :] * stride_ask, mask=row_mask[:, None] & sm[None, :],
                          other=0)
            b = tl.load(b_ptr + b_col + (k0 // 2 + offs_h4)[:, None], mask=km[:, None], other=0)
            b_s = tl.load(b_scale_ptr + bs_row + (k0 // 16 + offs_s4)[None, :], mask=sm[None, :], other=0)
            if DOT_FP32:
                a_e, a_o = nvfp4_decode(_words(a), a_s, tl.float32, False, False)
                b_e, b_o = nvfp4_decode(_words(tl.trans(b)), b_s, tl.float32, False, False)
                acc = tl.dot(a_e, tl.trans(b_e), acc)
                acc = tl.dot(a_o, tl.trans(b_o), acc)
            else:
                acc = tl.dot_scaled(a, a_s.to(tl.float8e4nv, bitcast=True), "e2m1", b,
                                    b_s.to(tl.float8e4nv, bitcast=True), "e2m1", acc)
        g = tl.load(b_global_ptr + expert * 2 + (offs_n >= g_split).to(tl.int64))
        acc *= g[None, :]
    else:
        for k0 in range(0, K, BLOCK_K):
            if EVEN_K:
                a = tl.load(a_ptrs, mask=row_mask[:, None], other=0.0)
                b = tl.load(b_ptrs)
            else:
                k_mask = offs_k < K - k0
                a = tl.load(a_ptrs, mask=row_mask[:, None] & k_mask[None, :], other=0.0)
                b = tl.load(b_ptrs, mask=k_mask[:, None], other=0.0)
            if QUANT == 0:
                if DOT_FP32:
                    acc = tl.dot(a.to(tl.float32), b.to(tl.float32), acc)
                else:
                    acc = tl.dot(a, b, acc)
            elif QUANT == 1:
                if HW_FP8:   # operands typed fp8 at the pointer: a bitcast here would keep B out of the wgmma's shared tile
                    acc = tl.dot(a, b, acc)
                else:
                    acc = tl.dot(fp8_to(a, tl.float32, False), fp8_to(b, tl.float32, False), acc)
            else:
                if HW_FP8:
                    part = tl.dot(a, b)
                else:
                    part = tl.dot(fp8_to(a, tl.float32, False), fp8_to(b, tl.float32, False))
                kg = k0 // GROUP_K
                a_s = tl.load(a_scale_ptr + a_row * stride_asm + kg * stride_ask, mask=row_mask, other=0.0)
                if B_SCALAR:
                    b_s1 = tl.load(b_scale_ptr + expert * stride_bse + (pid_n * BLOCK_N // GROUP_N) * stride_bsn
                                   + kg * stride_bsk)
                    acc += part * (a_s[:, None] * b_s1)
                else:
                    b_s = tl.load(b_scale_ptr + expert * stride_bse
                                  + ((offs_n % N) // GROUP_N) * stride_bsn + kg * stride_bsk)
                    acc += part * a_s[:, None] * b_s[None, :]
            a_ptrs += BLOCK_K * stride_ak
            b_ptrs += BLOCK_K * stride_bk
    if QUANT == 1:
        a_s = tl.load(a_scale_ptr + a_row * stride_asm, mask=row_mask, other=0.0)
        acc *= a_s[:, None] * tl.load(b_scale_ptr + expert * stride_bse)
    if MUL_ROUTED:
        w = tl.load(topk_weights_ptr + pair, mask=row_mask, other=0.0)
        acc *= w[:, None]
    c_ptrs = c_ptr + pair.to(tl.int64)[:, None] * stride_cm + offs_n[None, :] * stride_cn
    tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=row_mask[:, None] & n_mask[None, :])


@triton.jit
def _words(x):
    """(n, 4 W) bytes -> (n, W) little-endian int32 words (what :func:`nvfp4_decode` takes)."""
    n: tl.constexpr = x.shape[0]
    w: tl.constexpr = x.shape[1] // 4
    e02, e13 = tl.split(tl.reshape(x.to(tl.int32), (n, w, 2, 2)))
    e0, e2 = tl.split(e02)
    e1, e3 = tl.split(e13)
    return e0 | (e1 << 8) | (e2 << 16) | (e3 << 24)


@triton.jit
def _silu_mul(g, u):
    """silu(g) * u in fp32."""
    return g / (1.0 + tl.exp(-g)) * u


@triton.jit
def silu_mul_kernel(x_ptr, stride_x, out_ptr, stride_o, inter, BLOCK: tl.constexpr):
    """``out = silu(x[:, :I]) * x[:, I:]`` in fp32, stored in the output dtype (one row, BLOCK cols)."""
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    m = cols < inter
    g = tl.load(x_ptr + row * stride_x + cols, mask=m, other=0.0).to(tl.float32)
    u = tl.load(x_ptr + row * stride_x + inter + cols, mask=m, other=0.0).to(tl.float32)
    y = _silu_mul(g, u)
    tl.store(out_ptr + row * stride_o + cols, y.to(out_ptr.dtype.element_ty), mask=m)


def silu_mul(x: torch.Tensor) -> torch.Tensor:
    rows, two_i = x.shape
    inter = two_i // 2
    out = torch.empty(rows, inter, dtype=x.dtype, device=x.device)
    if rows:
        silu_mul_kernel[(rows, triton.cdiv(inter, 1024))](x_ptr=x, stride_x=x.stride(0), out_ptr=out,
                                                           stride_o=out.stride(0), inter=inter, BLOCK=1024,
                                                           num_warps=4)
    return out


def aot_cases_silu(arch: int):
    for dt in ("bf16", "fp16"):
        sig = {"x_ptr": f"*{dt}", "stride_x": "i32", "out_ptr": f"*{dt}", "stride_o": "i32", "inter": "i32"}
        yield dict(dtype=dt, block=1024, num_warps=4), sig, {"BLOCK": 1024}, {"num_warps": 4, "num_stages": 1}


@triton.jit
def quant_fp8_kernel(x_ptr, stride_x, q_ptr, stride_q, s_ptr, stride_s, k,
                     SILU: tl.constexpr, GROUP: tl.constexpr, BLOCK: tl.constexpr, GPP: tl.constexpr,
                     HW_FP8: tl.constexpr):
    """Dynamic fp8 e4m3 activations, program (row, GPP consecutive column groups of GROUP): per
    group scale = amax / 448 (at least 1e-12) stored per (row, group), codes = rne(x / scale),
    saturating. Per-row scales are one group as wide as the row. With ``SILU`` the row holds
    [gate | up] (2k wide) and the value quantized is silu(gate) * up, rounded to x's dtype first
    as the unfused path stores it -- the activation and its quantization in one pass."""
    row = tl.program_id(0).to(tl.int64)
    g = tl.program_id(1) * GPP + tl.arange(0, GPP)
    lane = tl.arange(0, BLOCK)
    cols = g[:, None] * GROUP + lane[None, :]
    m = (lane[None, :] < GROUP) & (cols < k)
    if SILU:
        gate = tl.load(x_ptr + row * stride_x + cols, mask=m, other=0.0).to(tl.float32)
        up = tl.load(x_ptr + row * stride_x + k + cols, mask=m, other=0.0).to(tl.float32)
        y = _silu_mul(gate, up).to(x_ptr.dtype.element_ty).to(tl.float32)
    else:
        y = tl.load(x_ptr + row * stride_x + cols, mask=m, other=0.0).to(tl.float32)
    scale = tl.maximum(tl.max(tl.abs(y), 1) / 448.0, 1e-12)
    v = y / scale[:, None]
    if HW_FP8:
        code = e4m3_encode_hw(v)
    else:
        code = e4m3_encode(v).to(tl.uint8)
    tl.store(q_ptr + row * stride_q + cols, code, mask=m)
    tl.store(s_ptr + row * stride_s + g, scale, mask=g * GROUP < k)


MAX_ROW = 32768     # widest row one quantization program takes (per-row scales)
GROUP_LANES = 4096  # lanes of one per-group quantization program (GPP groups of BLOCK)


def quant_fp8(x: torch.Tensor, group: int | None, silu: bool = False):
    """(rows, k) -> (fp8 codes as uint8 (rows, k), fp32 scales (rows, k // group)); ``group`` None
    means one scale per row. ``silu``: x is (rows, 2k) [gate | up] and silu(gate) * up is quantized.
    Per-group scales: one program takes ``GROUP_LANES // BLOCK`` groups of a row (one a program put
    a 1-warp program on every 128 values)."""
    rows, width = x.shape
    k = width // 2 if silu else width
    group = group or k
    if group > MAX_ROW:
        _fail("hidden", f"fp8 activations are quantized one row per program, at most {MAX_ROW} wide; got {group}")
    q = torch.empty(rows, k, dtype=torch.uint8, device=x.device)
    s = torch.empty(rows, k // group, dtype=torch.float32, device=x.device)
    if rows:
        block, gpp = _quant_tile(group, k)
        quant_fp8_kernel[(rows, triton.cdiv(k // group, gpp))](
            x_ptr=x, stride_x=x.stride(0), q_ptr=q, stride_q=q.stride(0), s_ptr=s, stride_s=s.stride(0), k=k,
            SILU=silu, GROUP=group, BLOCK=block, GPP=gpp, HW_FP8=not _INTERPRET, num_warps=_row_warps(block * gpp))
    return q, s


def _quant_tile(group: int, k: int):
    """(BLOCK lanes a group, groups a program) of :func:`quant_fp8_kernel`: as many of the row's
    groups as GROUP_LANES holds (a power of two; not more than the row has -- every lane of a
    masked group still runs the SiLU)."""
    block = triton.next_power_of_2(group)
    if group >= k:
        return block, 1
    return block, max(1, min(GROUP_LANES // block, triton.next_power_of_2(k // group)))


def _row_warps(block: int) -> int:
    """Warps for a one-row program of ``block`` lanes: about 8 elements a thread, 1 to 16 warps."""
    return max(1, min(16, block // 256))


def aot_cases_quant(arch: int):
    if arch < 89:
        return
    for dt in ("bf16", "fp16"):
        sig = {"x_ptr": f"*{dt}", "stride_x": "i32", "q_ptr": "*u8", "stride_q": "i32", "s_ptr": "*fp32",
               "stride_s": "i32", "k": "i32"}
        # resources depend on the power-of-two BLOCK and GPP alone: per row up to MAX_ROW (GPP 1),
        # per group of 16 ... 2048 (GPP a power of two up to GROUP_LANES // BLOCK)
        for block in (2 ** p for p in range(4, MAX_ROW.bit_length())):
            gpps = [1 << i for i in range(max(1, GROUP_LANES // block).bit_length())]
            for gpp in gpps:
                for silu in (False, True):
                    yield (dict(dtype=dt, group=block, groups_per_program=gpp, silu=silu,
                                num_warps=_row_warps(block * gpp)), sig,
                           {"SILU": silu, "GROUP": block, "BLOCK": block, "GPP": gpp, "HW_FP8": True},
                           {"num_warps": _row_warps(block * gpp), "num_stages": 1})


@triton.jit
def moe_sum_kernel(x_ptr, stride_xt, stride_xk, out_ptr, stride_o, h, TOP_K: tl.constexpr, BLOCK: tl.constexpr):
    """out[t] = sum over the top_k rows x[t, j] (fp32 sum, stored in out's dtype)."""
    t = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    m = cols < h
    acc = tl.zeros([BLOCK], tl.float32)
    for j in tl.static_range(TOP_K):
        acc += tl.load(x_ptr + t * stride_xt + j * stride_xk + cols, mask=m, other=0.0).to(tl.float32)
    tl.store(out_ptr + t * stride_o + cols, acc.to(out_ptr.dtype.element_ty), mask=m)


SUM_BLOCK = 1024


def moe_sum(x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """(tokens, top_k, H) -> ``out`` (tokens, H)."""
    t, k, h = x.shape
    if t:
        moe_sum_kernel[(t, triton.cdiv(h, SUM_BLOCK))](x_ptr=x, stride_xt=x.stride(0), stride_xk=x.stride(1),
                                                       out_ptr=out, stride_o=out.stride(0), h=h, TOP_K=k,
                                                       BLOCK=SUM_BLOCK, num_warps=4)
    return out


def aot_cases_sum(arch: int):
    for dt in ("bf16", "fp16"):
        sig = {"x_ptr": f"*{dt}", "stride_xt": "i32", "stride_xk": "i32", "out_ptr": f"*{dt}", "stride_o": "i32",
               "h": "i32"}
        for top_k in sorted({k for _, k, _, _ in planner.MOE_SHAPES.values()}):
            yield (dict(dtype=dt, top_k=top_k, block=SUM_BLOCK, num_warps=4), sig, {"TOP_K": top_k, "BLOCK": SUM_BLOCK},
                   {"num_warps": 4, "num_stages": 1})


# --------------------------------------------------------------------------------------------------
# launchers
# --------------------------------------------------------------------------------------------------

def _fail(name, msg):
    raise ValueError(f"{name}: {msg}")


@triton.jit
def _expert_counts(ids, offs_e):
    """How many of ``ids`` (pairs' experts, -1 for none) go to each expert ``offs_e``."""
    return tl.sum((ids[:, None] == offs_e[None, :]).to(tl.int32), 0)


@triton.jit
def _block_experts(expert_ids_ptr, ends, nblk, num_experts, BLOCK_M: tl.constexpr, LANES: tl.constexpr):
    """The expert of every BLOCK_M block of the padded list (experts' padded runs end at ``ends``;
    blocks past the last run get the last expert)."""
    lane = tl.arange(0, LANES)
    for b0 in range(0, nblk, LANES):
        b = b0 + lane
        e = tl.sum((ends[None, :] <= (b * BLOCK_M)[:, None]).to(tl.int32), 1)
        tl.store(expert_ids_ptr + b, tl.minimum(e, num_experts - 1), mask=b < nblk)


@triton.jit
def _scatter_pairs(sorted_ids_ptr, ids, i, m, cursor, offs_e, before):
    """Pairs ``i`` (experts ``ids``, valid where ``m``) to their experts' next free positions, in
    order within an expert; returns the advanced cursors."""
    onehot = ids[:, None] == offs_e[None, :]
    base = tl.sum(tl.where(onehot, cursor[None, :], 0), 1)
    rank = tl.sum(((ids[:, None] == ids[None, :]) & before).to(tl.int32), 1)
    tl.store(sorted_ids_ptr + base + rank, i.to(tl.int32), mask=m)
    return cursor + tl.sum(onehot.to(tl.int32), 0)


@triton.jit
def moe_align_kernel(topk_ids_ptr, n, sorted_ids_ptr, expert_ids_ptr, num_post_pad_ptr, cap, num_experts,
                     E_P: tl.constexpr, BLOCK_M: tl.constexpr, CHUNK: tl.constexpr, FILL: tl.constexpr = 1024):
    """One program: count pairs per expert, pad each run to BLOCK_M, list the pairs expert by expert
    (stable: by pair index within an expert) and the expert of every BLOCK_M block. For the small
    pair counts of decode and short prefill, where launch count matters more than parallelism.
    The padding fill takes FILL lanes a step (the worst-case list is ~E * BLOCK_M long even for one
    token: 1,936 entries at E = 128, BLOCK_M 16)."""
    offs_e = tl.arange(0, E_P)
    lane = tl.arange(0, CHUNK)
    counts = tl.zeros([E_P], tl.int32)
    for i0 in range(0, n, CHUNK):
        counts += _expert_counts(tl.load(topk_ids_ptr + i0 + lane, mask=i0 + lane < n, other=-1), offs_e)
    padded = (counts + BLOCK_M - 1) // BLOCK_M * BLOCK_M
    ends = tl.cumsum(padded, 0)
    tl.store(num_post_pad_ptr, tl.sum(padded, 0))
    fl = tl.arange(0, FILL)
    fill = tl.full([FILL], 0, tl.int32) + n
    for j0 in range(0, cap, FILL):
        tl.store(sorted_ids_ptr + j0 + fl, fill, mask=j0 + fl < cap)
    _block_experts(expert_ids_ptr, ends, cap // BLOCK_M, num_experts, BLOCK_M, CHUNK)
    tl.debug_barrier()                    # the padding fill lands before the pair ids
    cursor = ends - padded
    before = lane[None, :] < lane[:, None]
    for i0 in range(0, n, CHUNK):
        m = i0 + lane < n
        ids = tl.load(topk_ids_ptr + i0 + lane, mask=m, other=-1)
        cursor = _scatter_pairs(sorted_ids_ptr, ids, i0 + lane, m, cursor, offs_e, before)


@triton.jit
def moe_align_count_kernel(topk_ids_ptr, n, counts_ptr, sorted_ids_ptr, cap,
                           E_P: tl.constexpr, CHUNK: tl.constexpr, SUB: tl.constexpr, FILL: tl.constexpr = 1024):
    """Stage 1 of the many-program alignment, program p: how many of pairs [p * CHUNK, (p + 1) *
    CHUNK) go to each expert (``counts[p, :]``), and its share of ``sorted_ids`` filled with the
    padding id ``n``."""
    p = tl.program_id(0)
    offs_e = tl.arange(0, E_P)
    lane = tl.arange(0, SUB)
    counts = tl.zeros([E_P], tl.int32)
    for s0 in range(0, CHUNK, SUB):
        i = p * CHUNK + s0 + lane
        counts += _expert_counts(tl.load(topk_ids_ptr + i, mask=i < n, other=-1), offs_e)
    tl.store(counts_ptr + p * E_P + offs_e, counts)
    share = tl.cdiv(cap, tl.num_programs(0))
    fl = tl.arange(0, FILL)
    fill = tl.full([FILL], 0, tl.int32) + n
    for f0 in range(0, share, FILL):
        j = p * share + f0 + fl
        tl.store(sorted_ids_ptr + j, fill, mask=(f0 + fl < share) & (j < cap))


@triton.jit
def moe_align_offsets_kernel(counts_ptr, num_chunks, offsets_ptr, expert_ids_ptr, num_post_pad_ptr, cap,
                             num_experts, E_P: tl.constexpr, BLOCK_M: tl.constexpr, PB: tl.constexpr,
                             SUB: tl.constexpr):
    """Stage 2, one program: each chunk's first sorted position per expert (``offsets[p, e]``: the
    expert's padded start plus the pairs of earlier chunks routed to it), the padded total, and the
    expert of every BLOCK_M block."""
    offs_e = tl.arange(0, E_P)
    rows = tl.arange(0, PB)
    total = tl.zeros([E_P], tl.int32)
    for p0 in range(0, num_chunks, PB):
        pm = (p0 + rows) < num_chunks
        c = tl.load(counts_ptr + (p0 + rows)[:, None] * E_P + offs_e[None, :], mask=pm[:, None], other=0)
        tl.store(offsets_ptr + (p0 + rows)[:, None] * E_P + offs_e[None, :],
                 tl.cumsum(c, 0) - c + total[None, :], mask=pm[:, None])
        total += tl.sum(c, 0)
    padded = (total + BLOCK_M - 1) // BLOCK_M * BLOCK_M
    ends = tl.cumsum(padded, 0)
    starts = ends - padded
    tl.store(num_post_pad_ptr, tl.sum(padded, 0))
    tl.store(offsets_ptr + num_chunks * E_P + offs_e, starts)      # row num_chunks: the experts' starts
    _block_experts(expert_ids_ptr, ends, cap // BLOCK_M, num_experts, BLOCK_M, SUB)


@triton.jit
def moe_align_scatter_kernel(topk_ids_ptr, n, offsets_ptr, num_chunks, sorted_ids_ptr,
                             E_P: tl.constexpr, CHUNK: tl.constexpr, SUB: tl.constexpr):
    """Stage 3, program p: each pair of its chunk goes to its expert's next free position (pairs
    in order within an expert: the same list as a stable sort by expert)."""
    p = tl.program_id(0)
    offs_e = tl.arange(0, E_P)
    lane = tl.arange(0, SUB)
    cursor = tl.load(offsets_ptr + p * E_P + offs_e) + tl.load(offsets_ptr + num_chunks * E_P + offs_e)
    before = lane[None, :] < lane[:, None]
    for s0 in range(0, CHUNK, SUB):
        i = p * CHUNK + s0 + lane
        m = i < n
        cursor = _scatter_pairs(sorted_ids_ptr, tl.load(topk_ids_ptr + i, mask=m, other=-1), i, m, cursor, offs_e,
                                before)


ALIGN_CHUNK = 256           # pairs per program of the many-program alignment


def moe_align_multi(topk_ids: torch.Tensor, num_experts: int, block_m: int):
    """:func:`moe_align` in three launches of many programs (count, offsets, scatter): any size,
    no host sync, the same lists as :func:`moe_align_torch`."""
    flat = topk_ids.reshape(-1).to(torch.int32)
    n = flat.numel()
    dev = flat.device
    cap = ((n + num_experts * (block_m - 1)) + block_m - 1) // block_m * block_m
    e_p = max(16, triton.next_power_of_2(num_experts))
    sub = align_chunk(e_p)
    chunks = max(1, triton.cdiv(n, ALIGN_CHUNK))
    counts = torch.empty(chunks, e_p, dtype=torch.int32, device=dev)
    offsets = torch.empty(chunks + 1, e_p, dtype=torch.int32, device=dev)
    sorted_ids = torch.empty(cap, dtype=torch.int32, device=dev)
    expert_ids = torch.empty(cap // block_m, dtype=torch.int32, device=dev)
    num_post_pad = torch.empty(1, dtype=torch.int32, device=dev)
    moe_align_count_kernel[(chunks,)](topk_ids_ptr=flat, n=n, counts_ptr=counts, sorted_ids_ptr=sorted_ids, cap=cap,
                                      E_P=e_p, CHUNK=ALIGN_CHUNK, SUB=sub, num_warps=4)
    moe_align_offsets_kernel[(1,)](counts_ptr=counts, num_chunks=chunks, offsets_ptr=offsets, expert_ids_ptr=expert_ids,
                                   num_post_pad_ptr=num_post_pad, cap=cap, num_experts=num_experts, E_P=e_p,
                                   BLOCK_M=block_m, PB=max(1, 4096 // e_p), SUB=sub, num_warps=4)
    moe_align_scatter_kernel[(chunks,)](topk_ids_ptr=flat, n=n, offsets_ptr=offsets, num_chunks=chunks,
                                        sorted_ids_ptr=sorted_ids, E_P=e_p, CHUNK=ALIGN_CHUNK, SUB=sub, num_warps=4)
    return sorted_ids, expert_ids, num_post_pad


def aot_cases_align_count(arch: int):
    """Stage 1 of :func:`moe_align_multi` for every power-of-two expert count (for ``sm12x budget``)."""
    for e_p in (16, 32, 64, 128, 256, 512, 1024):
        sub = align_chunk(e_p)
        yield (dict(experts_pow2=e_p, chunk=ALIGN_CHUNK, sub=sub, num_warps=4),
               {"topk_ids_ptr": "*i32", "n": "i32", "counts_ptr": "*i32", "sorted_ids_ptr": "*i32", "cap": "i32"},
               dict(E_P=e_p, CHUNK=ALIGN_CHUNK, SUB=sub, FILL=1024), {"num_warps": 4, "num_stages": 1})


def aot_cases_align_offsets(arch: int):
    """Stage 2 of :func:`moe_align_multi`: every power-of-two expert count x BLOCK_M."""
    for e_p in (16, 32, 64, 128, 256, 512, 1024):
        for bm in (16, 32, 64, 128):
            yield (dict(experts_pow2=e_p, block_m=bm, num_warps=4),
                   {"counts_ptr": "*i32", "num_chunks": "i32", "offsets_ptr": "*i32", "expert_ids_ptr": "*i32",
                    "num_post_pad_ptr": "*i32", "cap": "i32", "num_experts": "i32"},
                   dict(E_P=e_p, BLOCK_M=bm, PB=max(1, 4096 // e_p), SUB=align_chunk(e_p)),
                   {"num_warps": 4, "num_stages": 1})


def aot_cases_align_scatter(arch: int):
    """Stage 3 of :func:`moe_align_multi` for every power-of-two expert count."""
    for e_p in (16, 32, 64, 128, 256, 512, 1024):
        sub = align_chunk(e_p)
        yield (dict(experts_pow2=e_p, chunk=ALIGN_CHUNK, sub=sub, num_warps=4),
               {"topk_ids_ptr": "*i32", "n": "i32", "offsets_ptr": "*i32", "num_chunks": "i32",
                "sorted_ids_ptr": "*i32"},
               dict(E_P=e_p, CHUNK=ALIGN_CHUNK, SUB=sub), {"num_warps": 4, "num_stages": 1})


SMALL_ALIGN_PAIRS = 256


def align_chunk(e_p: int) -> int:
    """Pairs per step of :func:`moe_align_kernel`: its (pairs x experts) masks hold 4,096 lanes
    (8,192 put E = 128 at 227 registers on sm_120)."""
    return min(64, max(8, 4096 // e_p))


def aot_cases_align(arch: int):
    for e_p in (16, 32, 64, 128, 256, 512, 1024):
        for bm in (16, 32, 64, 128):
            sig = {"topk_ids_ptr": "*i32", "n": "i32", "sorted_ids_ptr": "*i32", "expert_ids_ptr": "*i32",
                   "num_post_pad_ptr": "*i32", "cap": "i32", "num_experts": "i32"}
            cx = dict(E_P=e_p, BLOCK_M=bm, CHUNK=align_chunk(e_p), FILL=1024)
            yield dict(experts_pow2=e_p, block_m=bm, chunk=cx["CHUNK"], num_warps=4), sig, cx, \
                {"num_warps": 4, "num_stages": 1}


def moe_align(topk_ids: torch.Tensor, num_experts: int, block_m: int):
    """Sort the (token, slot) pairs by expert, each expert's run padded to ``block_m`` rows, on the
    device without a host sync (sizes are the worst case; the kernel reads the real count).
    Up to ``SMALL_ALIGN_PAIRS`` pairs one Triton program does it in one launch; above,
    :func:`moe_align_multi` (three launches of many programs); past 1,024 experts, torch ops.

    Returns ``sorted_ids`` (padding = number of pairs), ``expert_ids`` per BLOCK_M block and
    ``num_post_pad`` (1,) int32.
    """
    n = topk_ids.numel()
    if n <= SMALL_ALIGN_PAIRS and num_experts <= 1024:
        dev = topk_ids.device
        cap = ((n + num_experts * (block_m - 1)) + block_m - 1) // block_m * block_m
        sorted_ids = torch.empty(cap, dtype=torch.int32, device=dev)
        expert_ids = torch.empty(cap // block_m, dtype=torch.int32, device=dev)
        num_post_pad = torch.empty(1, dtype=torch.int32, device=dev)
        e_p = max(16, triton.next_power_of_2(num_experts))
        chunk = align_chunk(e_p)
        moe_align_kernel[(1,)](topk_ids_ptr=topk_ids.reshape(-1).to(torch.int32), n=n, sorted_ids_ptr=sorted_ids,
                               expert_ids_ptr=expert_ids, num_post_pad_ptr=num_post_pad, cap=cap,
                               num_experts=num_experts, E_P=e_p, BLOCK_M=block_m, CHUNK=chunk, num_warps=4)
        return sorted_ids, expert_ids, num_post_pad
    if num_experts <= 1024:
        return moe_align_multi(topk_ids, num_experts, block_m)
    return moe_align_torch(topk_ids, num_experts, block_m)


def moe_align_torch(topk_ids: torch.Tensor, num_experts: int, block_m: int):
    """:func:`moe_align` in torch ops (any size; stable order)."""
    flat = topk_ids.flatten().to(torch.int64)
    n = flat.numel()
    dev = flat.device
    # scatter_add, not bincount: bincount sizes its output from the data (a host sync; no CUDA graph)
    counts = torch.zeros(num_experts, dtype=torch.int64, device=dev).scatter_add_(0, flat, torch.ones_like(flat))
    padded = (counts + block_m - 1) // block_m * block_m
    ends = torch.cumsum(padded, 0)
    starts = ends - padded
    cap = ((n + num_experts * (block_m - 1)) + block_m - 1) // block_m * block_m
    order = torch.argsort(flat, stable=True)
    ex = flat[order]
    first = torch.cumsum(counts, 0) - counts
    rank = torch.arange(n, device=dev) - first[ex]
    sorted_ids = torch.full((cap,), n, dtype=torch.int32, device=dev)
    sorted_ids[starts[ex] + rank] = order.to(torch.int32)
    blocks = torch.arange(cap // block_m, device=dev) * block_m
    expert_ids = torch.searchsorted(ends, blocks, right=True).clamp_(max=num_experts - 1).to(torch.int32)
    return sorted_ids, expert_ids, ends[-1:].to(torch.int32)


def moe_gemm(a, w, out, sorted_ids, expert_ids, num_post_pad, *, top_k, cfg: planner.MoeConfig, dtype,
             a_scale=None, w_scale=None, topk_weights=None, a_per_pair=False, block_shape=None, hw_fp8=True,
             w_global=None, g_split=None, a_global=None):
    num_pairs = out.shape[0]
    e, n, k = w.shape
    q = QUANT[dtype]
    gn, gk = (block_shape or [128, 128]) if q == 2 else (1, 1)
    a_s = a_scale if a_scale is not None else out
    w_s = w_scale if w_scale is not None else out
    w_g = out
    hw = hw_fp8 and not _INTERPRET
    if q == 4:      # NVFP4 x NVFP4: bytes for both operands, activation block scales by row
        k = 2 * k
        w_s = w_scale.view(torch.uint8)
        a_s = a_scale.view(torch.uint8)
        sas, sbs = (a_s.stride(0), a_s.stride(1)), (w_s.stride(0), w_s.stride(1), 1)
        g = w_global.float().reshape(e, -1)
        g = g.expand(e, 2) if g.shape[1] == 1 else g
        w_g = (g * a_global).contiguous()           # the activations' global scale folded in
    elif q == 3:      # packed NVFP4: K is twice the bytes; words of 4 bytes; scales as bytes
        k = 2 * k
        w = w.view(torch.int32)
        w_s = w_scale.view(torch.uint8)
        sas, sbs = (0, 0), (w_s.stride(0), w_s.stride(1), 1)
        g = w_global.float().reshape(e, -1)
        if g.shape[1] == 1:                 # one scale an expert: both columns of the pair
            g = g.expand(e, 2)
        elif g.shape[1] != 2 or g_split is None:
            _fail("w_global", f"expected ({e},) or ({e}, 2) with g_split, got {tuple(w_global.shape)}")
        w_g = (g * (1.0 if _INTERPRET else 1.0 / FP4_PTX_UNIT)).contiguous()
    elif q == 2:
        sas = (a_s.stride(0), a_s.stride(1))
        sbs = (w_s.stride(0), w_s.stride(1), w_s.stride(2))
    elif q == 1:
        sas = (a_s.stride(0), 0)
        sbs = (1, 0, 0)
    else:
        sas = (0, 0)
        sbs = (0, 0, 0)
    if q in (1, 2):   # fp8 operands: typed float8_e4m3fn for the MMA path, raw bits for the software one
        a, w = (t.view(torch.float8_e4m3fn if hw else torch.uint8) for t in (a, w))
    cap = sorted_ids.shape[0]
    grid = (triton.cdiv(cap, cfg.block_m) * triton.cdiv(n, cfg.block_n),)
    moe_gemm_kernel[grid](
        a_ptr=a, stride_am=a.stride(0), stride_ak=a.stride(1),
        b_ptr=w, stride_be=w.stride(0), stride_bn=w.stride(1), stride_bk=w.stride(2),
        c_ptr=out, stride_cm=out.stride(0), stride_cn=out.stride(1),
        a_scale_ptr=a_s, stride_asm=sas[0], stride_ask=sas[1],
        b_scale_ptr=w_s, stride_bse=sbs[0], stride_bsn=sbs[1], stride_bsk=sbs[2],
        topk_weights_ptr=topk_weights if topk_weights is not None else out,
        sorted_ids_ptr=sorted_ids, expert_ids_ptr=expert_ids, num_post_pad_ptr=num_post_pad, b_global_ptr=w_g,
        g_split=n if g_split is None else int(g_split),
        N=n, K=k, num_pairs=num_pairs,
        TOP_K=top_k, A_PER_PAIR=a_per_pair, MUL_ROUTED=topk_weights is not None, QUANT=q,
        GROUP_N=gn, GROUP_K=gk, HW_FP8=hw, DOT_FP32=_INTERPRET,
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, GROUP_SIZE_M=cfg.group_m,
        EVEN_K=k % cfg.block_k == 0, FP4_PTX=q == 3 and not _INTERPRET, num_warps=cfg.num_warps,
        num_stages=cfg.num_stages,
    )
    return out


def fused_moe(
    hidden: torch.Tensor,
    w1: torch.Tensor,
    w2: torch.Tensor,
    topk_weights: torch.Tensor,
    topk_ids: torch.Tensor,
    *,
    dtype: str | None = None,
    w1_scale: torch.Tensor | None = None,
    w2_scale: torch.Tensor | None = None,
    block_shape=None,
    arch: int | None = None,
    config: tuple[planner.MoeConfig, planner.MoeConfig] | None = None,
    w1_global: torch.Tensor | None = None,
    w2_global: torch.Tensor | None = None,
    a1_global=None,
    a2_global=None,
) -> torch.Tensor:
    """Mixture-of-experts MLP: ``sum_j w_j * down_e(silu(gate_e(x)) * up_e(x))`` over each token's
    ``top_k`` experts ``e = topk_ids[t, j]`` with weights ``w_j = topk_weights[t, j]``.

    Parameters
    ----------
    hidden : (tokens, H) bf16/fp16.
    w1 : (E, 2 * I, H) [gate; up] weights; bf16/fp16 like ``hidden``, or fp8 e4m3 (float8_e4m3fn or
        uint8 bits) with ``w1_scale`` (E,) per-tensor or (E, 2I / group_n, H / group_k) block scales.
    w2 : (E, H, I), the same format, ``w2_scale`` (E,) or (E, H / group_n, I / group_k).
    topk_weights : (tokens, top_k) float; topk_ids : (tokens, top_k) int expert ids in [0, E).
    dtype : "bf16" | "fp16" | "fp8_w8a8" | "fp8_w8a8_block" | "nvfp4_w4a16" (default: from the weights).
        nvfp4_w4a16 (ModelOpt NVFP4 weights, 16-bit activations): ``w1`` (E, 2I, H / 2) and ``w2``
        (E, H, I / 2) packed E2M1 (uint8, element 2i in the low nibble), ``w1_scale`` / ``w2_scale``
        (E, rows, K / 16) UE4M3 block scales (float8_e4m3fn or uint8), ``w1_global`` /
        ``w2_global`` (E,) fp32 per-expert scales (ModelOpt's ``weight_scale_2``); dequantized
        in registers, H and I multiples of 16.
    block_shape : [group_n, group_k] for fp8_w8a8_block (default [128, 128]).
    config : (gate-up tile, down tile) override, for offline sweeps only.

    Returns (tokens, H) in ``hidden``'s dtype.
    """
    if not isinstance(hidden, torch.Tensor) or hidden.dim() != 2 or hidden.dtype not in (torch.bfloat16,
                                                                                       torch.float16):
        _fail("hidden", "expected a (tokens, hidden) bf16/fp16 tensor")
    tokens, h = hidden.shape
    if w1.dim() != 3 or w2.dim() != 3:
        _fail("w1", "w1 and w2 must be (E, 2I, H) and (E, H, I)")
    if dtype in ("nvfp4_w4a16", "nvfp4_w4a4"):
        return _fused_moe_nvfp4(hidden, w1, w2, topk_weights, topk_ids, w1_scale, w2_scale, w1_global, w2_global,
                                arch, config, dtype, a1_global, a2_global)
    e, two_i, h1 = w1.shape
    inter = two_i // 2
    if h1 != h or two_i % 2 or w2.shape != (e, h, inter):
        _fail("w2", f"shapes do not match: hidden {h}, w1 {tuple(w1.shape)}, w2 {tuple(w2.shape)} "
                    f"(expected w2 ({e}, {h}, {inter}))")
    fp8_w = w1.dtype in (torch.float8_e4m3fn, torch.uint8)
    if dtype is None:
        dtype = ("fp8_w8a8_block" if (w1_scale is not None and w1_scale.dim() == 3) else "fp8_w8a8") if fp8_w \
            else {torch.bfloat16: "bf16", torch.float16: "fp16"}[hidden.dtype]
    if dtype not in QUANT:
        _fail("dtype", f"{dtype!r} is not supported; supported: {list(QUANT)}")
    if QUANT[dtype] == 0 and (w1.dtype != hidden.dtype or w2.dtype != hidden.dtype):
        _fail("w1", f"dtype={dtype!r} needs weights in {hidden.dtype}, got {w1.dtype} / {w2.dtype}")
    if QUANT[dtype] and not fp8_w:
        _fail("w1", f"dtype={dtype!r} needs float8_e4m3fn (or uint8) weights, got {w1.dtype}")
    if QUANT[dtype] == 1 and (w1_scale is None or w2_scale is None or w1_scale.numel() != e or w2_scale.numel() != e):
        _fail("w1_scale", f"fp8_w8a8 needs per-expert weight scales of {e} values (w1_scale and w2_scale)")
    if QUANT[dtype] == 2:
        block_shape = list(block_shape or [128, 128])
        gn, gk = block_shape
        want1 = (e, -(-two_i // gn), -(-h // gk))
        want2 = (e, -(-h // gn), -(-inter // gk))
        if w1_scale is None or tuple(w1_scale.shape) != want1 or w2_scale is None or tuple(w2_scale.shape) != want2:
            _fail("w1_scale", f"fp8_w8a8_block with block_shape {block_shape} needs w1_scale {want1} and "
                              f"w2_scale {want2}")
        if h % gk or inter % gk:
            _fail("block_shape", f"group_k={gk} must divide hidden {h} and intermediate {inter}")
    if QUANT[dtype] == 1 and max(h, inter) > MAX_ROW:
        _fail("hidden", f"fp8_w8a8 quantizes activations per row, at most {MAX_ROW} wide; got hidden {h}, "
                        f"intermediate {inter} (use fp8_w8a8_block)")
    if topk_ids.shape != topk_weights.shape or topk_ids.dim() != 2 or topk_ids.shape[0] != tokens:
        _fail("topk_ids", f"topk_ids and topk_weights must both be ({tokens}, top_k)")
    top_k = topk_ids.shape[1]
    out = torch.empty_like(hidden)
    if tokens == 0:
        return out
    arch = planner.launch_arch(hidden.device, arch)
    c1, c2 = _plan_gemms(arch, dtype, e, two_i, h, inter, tokens, top_k, block_shape, config)
    sorted_ids, expert_ids, num_post_pad = moe_align(topk_ids, e, c1.block_m)
    pairs = tokens * top_k
    w1b = w1.view(torch.uint8) if fp8_w else w1
    w2b = w2.view(torch.uint8) if fp8_w else w2
    q = QUANT[dtype]
    gk = block_shape[1] if q == 2 else None
    a1, a1_s = quant_fp8(hidden, gk) if q else (hidden, None)
    inter_out = torch.empty(pairs, two_i, dtype=hidden.dtype, device=hidden.device)
    moe_gemm(a1, w1b, inter_out, sorted_ids, expert_ids, num_post_pad, top_k=top_k, cfg=c1, dtype=dtype,
             a_scale=a1_s, w_scale=w1_scale.float() if q else None, block_shape=block_shape)
    a2, a2_s = quant_fp8(inter_out, gk, silu=True) if q else (silu_mul(inter_out), None)
    down = torch.empty(pairs, h, dtype=hidden.dtype, device=hidden.device)
    moe_gemm(a2, w2b, down, sorted_ids, expert_ids, num_post_pad, top_k=top_k, cfg=c2, dtype=dtype,
             a_scale=a2_s, w_scale=w2_scale.float() if q else None, topk_weights=topk_weights.float().flatten(),
             a_per_pair=True, block_shape=block_shape)
    return moe_sum(down.view(tokens, top_k, h), out)


def _plan_gemms(arch, dtype, e, two_i, h, inter, tokens, top_k, block_shape, config):
    """(gate-up tile, down tile) of one fused MoE: planned (the down GEMM on the gate-up's BLOCK_M,
    both share one alignment), or the caller's override made to fit ``arch``."""
    if config is None:
        c1 = planner.plan_moe(arch, dtype=dtype, num_experts=e, n=two_i, k=h, tokens=tokens, top_k=top_k,
                              block_shape=block_shape)
        c2 = planner.plan_moe(arch, dtype=dtype, num_experts=e, n=h, k=inter, tokens=tokens, top_k=top_k,
                              block_shape=block_shape)
        return c1, planner.MoeConfig(c1.block_m, c2.block_n, c2.block_k, c2.group_m, c2.num_warps, c2.num_stages)
    c1, c2 = config
    if c1.block_m != c2.block_m:
        _fail("config", "both GEMMs share one alignment: block_m must match")
    fitted = []
    for c in (c1, c2):
        c, reason = planner.fit_moe_config(arch, c, dtype)
        if reason:
            logging.getLogger(__name__).warning(reason)
        fitted.append(c)
    return tuple(fitted)


def aot_cases(arch: int):
    """Every configuration the MoE planner can choose on ``arch`` (for ``sm12x budget``)."""
    seen = set()
    for inp in planner.moe_domain(arch):
        if inp["dtype"].startswith("fp8") and arch < 89:
            continue
        cfg = planner.plan_moe(arch, **inp)
        for (a_per_pair, routed), even_k in ((p, e) for p in ((False, False), (True, True)) for e in (False, True)):
            q = QUANT[inp["dtype"]]
            key = (inp["dtype"], cfg, a_per_pair, even_k)
            if key in seen:
                continue
            seen.add(key)
            act = "*fp16" if inp["dtype"] == "fp16" else "*bf16"
            op = "*fp8e4nv" if q in (1, 2) else "*u8" if q == 4 else act
            sig = {"a_ptr": op, "b_ptr": "*i32" if q == 3 else op, "c_ptr": act,
                   "a_scale_ptr": "*u8" if q == 4 else "*fp32", "b_scale_ptr": "*u8" if q in (3, 4) else "*fp32", "topk_weights_ptr": "*fp32", "sorted_ids_ptr": "*i32",
                   "expert_ids_ptr": "*i32", "num_post_pad_ptr": "*i32", "b_global_ptr": "*fp32", "g_split": "i32"}
            for nm in ("stride_am", "stride_be", "stride_bn", "stride_cm", "stride_asm", "stride_ask",
                       "stride_bse", "stride_bsn", "stride_bsk", "N", "K", "num_pairs"):
                sig[nm] = "i32"
            cx = dict(stride_ak=1, stride_bk=1, stride_cn=1, TOP_K=inp["top_k"], A_PER_PAIR=a_per_pair,
                      MUL_ROUTED=routed, QUANT=q, GROUP_N=128 if q == 2 else 1, GROUP_K=128 if q == 2 else 1,
                      HW_FP8=arch >= 89, DOT_FP32=False, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k,
                      GROUP_SIZE_M=cfg.group_m, EVEN_K=even_k, FP4_PTX=q == 3)
            label = dict(dtype=inp["dtype"], gemm="down" if a_per_pair else "gate_up", block_m=cfg.block_m,
                         block_n=cfg.block_n, block_k=cfg.block_k, num_warps=cfg.num_warps,
                         num_stages=cfg.num_stages, even_k=even_k)
            yield label, sig, cx, {"num_warps": cfg.num_warps, "num_stages": cfg.num_stages}


# --------------------------------------------------------------------------------------------------
# NVFP4 weights (ModelOpt's layout), 16-bit activations
# --------------------------------------------------------------------------------------------------

def _check_nvfp4_weight(name, w, scale, glob, e, rows, k):
    if not isinstance(w, torch.Tensor) or w.dtype != torch.uint8 or tuple(w.shape) != (e, rows, k // 2):
        got = f"{tuple(w.shape)} {w.dtype}" if isinstance(w, torch.Tensor) else type(w).__name__
        _fail(name, f"nvfp4_w4a16 needs packed E2M1 weights ({e}, {rows}, {k // 2}) uint8, got {got}")
    if w.stride(2) != 1 or (w.stride(1) * w.element_size()) % 4 or w.data_ptr() % 4:
        _fail(name, "packed rows must be contiguous and start on 4-byte boundaries")
    if not isinstance(scale, torch.Tensor) or scale.dtype not in (torch.uint8, torch.float8_e4m3fn) \
            or tuple(scale.shape) != (e, rows, k // 16) or scale.stride(2) != 1:
        _fail(name + "_scale", f"nvfp4_w4a16 needs ({e}, {rows}, {k // 16}) UE4M3 block scales "
                               "(float8_e4m3fn or uint8), contiguous along K")
    if not isinstance(glob, torch.Tensor) or glob.numel() not in (e, 2 * e) or (glob.numel() == 2 * e and name != "w1"):
        _fail(name + "_global", f"nvfp4_w4a16 needs {e} per-expert fp32 global scales (weight_scale_2)"
                                + (f", or ({e}, 2): gate's and up's" if name == "w1" else ""))


def quant_nvfp4_rows(x: torch.Tensor, global_scale=None):
    """(rows, K) 16-bit activations -> (packed E2M1 (rows, K / 2) uint8, UE4M3 scales (rows, K / 16)
    uint8, global scale (1,) fp32) by the NVFP4 append kernel's quantizer (the KV cache's rules; the
    rows viewed as 64-wide heads). ``global_scale`` None: amax / (6 * 448) on the device."""
    rows, k = x.shape
    if k % 64:
        _fail("x", f"NVFP4 activations are quantized in 64-wide groups of blocks; K={k} is not a multiple of 64")
    from ..kv_append import append_kv
    if global_scale is None:
        g = (x.abs().amax().float() / (6.0 * 448.0)).clamp_min(1e-30).reshape(1)
    else:
        g = torch.as_tensor(global_scale, dtype=torch.float32, device=x.device).reshape(1)
    q = torch.empty(rows, k // 2, dtype=torch.uint8, device=x.device)
    s = torch.empty(rows, k // 16, dtype=torch.uint8, device=x.device)
    if rows:
        x3 = x.view(rows, k // 64, 64)
        q3, s3 = q.view(rows, k // 64, 32), s.view(rows, k // 64, 4)
        loc = torch.arange(rows, dtype=torch.int64, device=x.device)
        append_kv(x3, x3, loc, q3, q3, kv_dtype="nvfp4", k_scale_cache=s3, v_scale_cache=s3, k_scale=g, v_scale=g,
                  check_slots=False, _parts=(False, True))
    return q, s, g


def _fused_moe_nvfp4(hidden, w1, w2, topk_weights, topk_ids, w1_scale, w2_scale, w1_global, w2_global, arch, config,
                     dtype="nvfp4_w4a16", a1_global=None, a2_global=None):
    tokens, h = hidden.shape
    if w1.dim() != 3 or w2.dim() != 3:
        _fail("w1", "nvfp4_w4a16 weights must be (E, 2I, H / 2) and (E, H, I / 2) packed uint8")
    e, two_i = w1.shape[0], w1.shape[1]
    inter = two_i // 2
    if h % 16 or inter % 16 or two_i % 2:
        _fail("w1", f"nvfp4_w4a16 needs hidden and intermediate sizes that are multiples of 16, got {h} / {inter}")
    _check_nvfp4_weight("w1", w1, w1_scale, w1_global, e, two_i, h)
    _check_nvfp4_weight("w2", w2, w2_scale, w2_global, e, h, inter)
    if topk_ids.shape != topk_weights.shape or topk_ids.dim() != 2 or topk_ids.shape[0] != tokens:
        _fail("topk_ids", f"topk_ids and topk_weights must both be ({tokens}, top_k)")
    top_k = topk_ids.shape[1]
    out = torch.empty_like(hidden)
    if tokens == 0:
        return out
    arch = planner.launch_arch(hidden.device, arch)
    w4a4 = dtype == "nvfp4_w4a4"
    if w4a4 and (h % 64 or inter % 64):
        _fail("w1", f"nvfp4_w4a4 needs hidden and intermediate sizes that are multiples of 64, got {h} / {inter}")
    c1, c2 = _plan_gemms(arch, dtype, e, two_i, h, inter, tokens, top_k, None, config)
    sorted_ids, expert_ids, num_post_pad = moe_align(topk_ids, e, c1.block_m)
    pairs = tokens * top_k
    hw = arch >= 89
    inter_out = torch.empty(pairs, two_i, dtype=hidden.dtype, device=hidden.device)
    a1, a1_s, a1_g = quant_nvfp4_rows(hidden, a1_global) if w4a4 else (hidden, None, None)
    moe_gemm(a1, w1, inter_out, sorted_ids, expert_ids, num_post_pad, top_k=top_k, cfg=c1, dtype=dtype,
             w_scale=w1_scale, w_global=w1_global, g_split=inter, hw_fp8=hw, a_scale=a1_s, a_global=a1_g)
    down = torch.empty(pairs, h, dtype=hidden.dtype, device=hidden.device)
    act = silu_mul(inter_out)
    a2, a2_s, a2_g = quant_nvfp4_rows(act, a2_global) if w4a4 else (act, None, None)
    moe_gemm(a2, w2, down, sorted_ids, expert_ids, num_post_pad, top_k=top_k, cfg=c2, dtype=dtype,
             w_scale=w2_scale, w_global=w2_global, topk_weights=topk_weights.float().flatten(), a_per_pair=True,
             hw_fp8=hw, a_scale=a2_s, a_global=a2_g)
    return moe_sum(down.view(tokens, top_k, h), out)


def nvfp4_linear(x: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor, weight_global,
                 *, arch: int | None = None) -> torch.Tensor:
    """``x @ dequant(weight)^T`` for a ModelOpt NVFP4 linear layer, W4A16: ``x`` (tokens, K) bf16 /
    fp16, ``weight`` (N, K / 2) packed E2M1, ``weight_scale`` (N, K / 16) UE4M3, ``weight_global``
    ModelOpt's ``weight_scale_2`` (a float or one-element tensor). The one-expert case of the MoE
    grouped GEMM (same kernel, same planner)."""
    if not isinstance(x, torch.Tensor) or x.dim() != 2 or x.dtype not in (torch.bfloat16, torch.float16):
        _fail("x", "expected a (tokens, in_features) bf16/fp16 tensor")
    tokens, k = x.shape
    if k % 16:
        _fail("x", f"nvfp4 linear layers need in_features a multiple of 16, got {k}")
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
        _fail("weight", "expected (out_features, in_features / 2) packed uint8")
    n = weight.shape[0]
    g = weight_global if isinstance(weight_global, torch.Tensor) else torch.tensor([float(weight_global)])
    g = g.reshape(1).to(device=x.device, dtype=torch.float32)
    w3, s3 = weight.unsqueeze(0), weight_scale.unsqueeze(0)
    _check_nvfp4_weight("weight", w3, s3, g, 1, n, k)
    out = torch.empty(tokens, n, dtype=x.dtype, device=x.device)
    if tokens == 0:
        return out
    arch = planner.launch_arch(x.device, arch)
    cfg = planner.plan_moe(arch, dtype="nvfp4_w4a16", num_experts=1, n=n, k=k, tokens=tokens, top_k=1)
    sorted_ids, expert_ids, num_post_pad = moe_align(torch.zeros(tokens, 1, dtype=torch.int32, device=x.device), 1,
                                                     cfg.block_m)
    return moe_gemm(x, w3, out, sorted_ids, expert_ids, num_post_pad, top_k=1, cfg=cfg, dtype="nvfp4_w4a16",
                    w_scale=s3, w_global=g, hw_fp8=arch >= 89)
