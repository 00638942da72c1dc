"""Fused quantize-and-append of new K/V rows into a paged KV pool (one launch for K and V).

Formats: plain copy (bf16/fp16 pool), FP8 e4m3 with a per-tensor scale, NVFP4 (see
:mod:`sgl_kernel_sm12x.nvfp4` for the byte layout). Bit-exact with the torch references there.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from . import planner
from .attention.kv_tile import FMT_NVFP4, FMT_PLAIN, col_mask, dim_constexprs
from .formats import KVFormat, kv_formats
from .fp_codes import e2m1_decode, e2m1_encode, e4m3_decode, e4m3_encode, e4m3_encode_hw
from .nvfp4 import BLOCK_SIZE, SCALE_RULES as NVFP4_SCALES

_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
_TORCH_ACT = {torch.bfloat16: "bf16", torch.float16: "fp16"}
_TORCH_PLAIN = {"bf16": torch.bfloat16, "fp16": torch.float16}


@triton.jit
def _append_rows(
    src_ptr, stride_src_t,                        # (tokens, HEAD_DIM) activations of one head
    dst_ptr, stride_dst_s,                        # (slots, HEAD_DIM) pool of one head
    gscale_ptr,                                   # (1,) fp32 per-tensor scale (FP8 only)
    tok, slot, mask,
    HEAD_DIM: tl.constexpr, KV_MODE: tl.constexpr, HW_FP8: tl.constexpr, DIM: tl.constexpr = 0,
):
    """Plain copy (FMT_PLAIN) or FP8 e4m3 (FMT_FP8) of whole rows (``DIM``: the true width of a
    row padded to HEAD_DIM)."""
    offs_d = tl.arange(0, HEAD_DIM)
    cm = col_mask(mask, offs_d, DIM, DIM != 0)
    x_in = tl.load(src_ptr + tok[:, None] * stride_src_t + offs_d[None, :], mask=cm, other=0.0)
    if KV_MODE == FMT_PLAIN:
        out = x_in.to(dst_ptr.dtype.element_ty)
    else:
        rcp = 1.0 / tl.load(gscale_ptr)
        if HW_FP8:
            out = e4m3_encode_hw(x_in.to(tl.float32) * rcp)
        else:
            out = e4m3_encode(x_in.to(tl.float32) * rcp).to(tl.uint8)
    tl.store(dst_ptr + slot[:, None] * stride_dst_s + offs_d[None, :], out, mask=cm)


@triton.jit
def _pack_half(x, rcp, zero_scale):
    """8 consecutive elements a lane ([L, 8] fp32) -> 4 bytes ([L, 4] int32), element 2i low nibble.
    ``zero_scale`` blocks (scale 0, block max not 0) take FlashInfer's +-6 codes (reciprocal +Inf)."""
    code = tl.where(zero_scale[:, None], tl.where(x < 0, 15, 7), e2m1_encode(x * rcp[:, None]))
    lo, hi = tl.split(tl.reshape(code, (x.shape[0], 4, 2)))
    return lo | (hi << 4)


@triton.jit
def _rcp(code, g):
    """(1 / (e4m3(code) * g), ok) per block; 0 where the denominator is 0 or not finite."""
    denom = e4m3_decode(code) * g
    ok = denom > 0
    return tl.where(ok, tl.div_rn(tl.zeros_like(denom) + 1.0, tl.where(ok, denom, 1.0)), 0.0), denom, ok


@triton.jit
def _block_sq_err(xa, xb, code, g):
    """Squared error of a 16-element block (two [L, 8] halves) quantized with scale ``code``."""
    rcp, denom, ok = _rcp(code, g)
    d = tl.where(ok, denom, 0.0)[:, None]
    ea = xa - e2m1_decode(e2m1_encode(xa * rcp[:, None])) * d
    eb = xb - e2m1_decode(e2m1_encode(xb * rcp[:, None])) * d
    return tl.sum(ea * ea, axis=1) + tl.sum(eb * eb, axis=1)


@triton.jit
def _keep_better(xa, xb, g, best, best_err, cand):
    """(code, error) of the better of ``best`` and ``cand`` per block; ``best`` on ties."""
    err = _block_sq_err(xa, xb, cand, g)
    take = err < best_err
    return tl.where(take, cand, best), tl.where(take, err, best_err)


@triton.jit
def _append_nvfp4_blocks(
    src_ptr, stride_src_t,                        # (tokens, HEAD_DIM) activations of one head
    dst_ptr, stride_dst_s,                        # (slots, HEAD_DIM // 2) packed e2m1 of one head
    sdst_ptr, stride_sdst_s,                      # (slots, HEAD_DIM // 16) UE4M3 scales of one head
    gscale_ptr,                                   # (1,) fp32 global scale
    tok, blk, slot, mask,
    MSE_SCALES: tl.constexpr = False,
):
    """One lane (thread) per 16-element block: the block max, its scale and its 8 output bytes stay
    in registers of that thread -- no cross-thread reduction, no shared memory. ``MSE_SCALES``:
    of the scale codes {amax / 6, one code above, amax / 4} keep the one with the least squared
    block error (the first on ties), see :func:`sgl_kernel_sm12x.nvfp4.quantize_nvfp4`."""
    g = tl.load(gscale_ptr)
    offs = tl.arange(0, 8)
    src = src_ptr + tok * stride_src_t + blk * 16
    xa = tl.load(src[:, None] + offs[None, :], mask=mask[:, None], other=0.0).to(tl.float32)
    xb = tl.load(src[:, None] + 8 + offs[None, :], mask=mask[:, None], other=0.0).to(tl.float32)
    # |x| as integer patterns: their max is the bit pattern of the block max, >= +Inf when the
    # block holds NaN or Inf
    ia = xa.to(tl.int32, bitcast=True) & 0x7FFFFFFF
    ib = xb.to(tl.int32, bitcast=True) & 0x7FFFFFFF
    amax_bits = tl.maximum(tl.max(ia, axis=1), tl.max(ib, axis=1))
    bad = amax_bits >= 0x7F800000
    amax = amax_bits.to(tl.float32, bitcast=True)
    s = tl.div_rn(amax, tl.zeros_like(amax) + g * 6.0)
    s = tl.where(s > 448.0, 448.0, s)       # a finite block saturates, even where s overflows FP32
    s_code = tl.where(bad, 0x7F, e4m3_encode(s))
    if MSE_SCALES:
        c4 = tl.div_rn(amax, tl.zeros_like(amax) + g * 4.0)
        c4 = e4m3_encode(tl.where(c4 > 448.0, 448.0, c4))
        xa0 = tl.where(bad[:, None], 0.0, xa)
        xb0 = tl.where(bad[:, None], 0.0, xb)
        best = tl.where(bad, 0, s_code)
        best_err = _block_sq_err(xa0, xb0, best, g)
        best, best_err = _keep_better(xa0, xb0, g, best, best_err, tl.minimum(best + 1, 0x7E))
        best, best_err = _keep_better(xa0, xb0, g, best, best_err, c4)
        s_code = tl.where(bad, 0x7F, best)
    rcp, denom, ok = _rcp(s_code, g)
    zero_scale = (denom == 0) & (amax > 0)
    pa = tl.where(bad[:, None], 0, _pack_half(xa, rcp, zero_scale))
    pb = tl.where(bad[:, None], 0, _pack_half(xb, rcp, zero_scale))
    offs4 = tl.arange(0, 4)
    dst = dst_ptr + slot * stride_dst_s + blk * 8
    tl.store(dst[:, None] + offs4[None, :], pa.to(tl.uint8), mask=mask[:, None])
    tl.store(dst[:, None] + 4 + offs4[None, :], pb.to(tl.uint8), mask=mask[:, None])
    tl.store(sdst_ptr + slot * stride_sdst_s + blk, s_code.to(tl.uint8), mask=mask)


@triton.jit
def kv_append_kernel(
    k_ptr, v_ptr,                                  # (tokens, heads, HEAD_DIM) bf16/fp16
    stride_k_t, stride_k_h, stride_v_t, stride_v_h,
    loc_ptr,                                       # (tokens,) int32/int64 slot ids
    k_cache_ptr, v_cache_ptr,                      # (slots, heads, HEAD_DIM | HEAD_DIM // 2)
    stride_kc_s, stride_kc_h, stride_vc_s, stride_vc_h,
    k_scale_cache_ptr, v_scale_cache_ptr,          # (slots, heads, HEAD_DIM // 16) uint8, NVFP4 only
    stride_ks_s, stride_ks_h, stride_vs_s, stride_vs_h,
    k_gscale_ptr, v_gscale_ptr,                    # (1,) fp32
    num_tokens, num_slots,
    HEAD_DIM: tl.constexpr, BLOCK_ROWS: tl.constexpr, KV_MODE: tl.constexpr, HW_FP8: tl.constexpr,
    DO_K: tl.constexpr = True, DO_V: tl.constexpr = True, MSE_SCALES: tl.constexpr = False,
    DIM: tl.constexpr = 0,                         # head_dim when HEAD_DIM is its padded width (96)
):
    """Grid: (heads, cdiv(tokens, BLOCK_ROWS)). Heads vary fastest so the programs writing the
    heads of one slot run together and their partial-sector writes merge in L2. A lane is a whole
    token row for copy/FP8 and one 16-element block for NVFP4."""
    head = tl.program_id(0).to(tl.int64)
    LANES_PER_ROW: tl.constexpr = HEAD_DIM // 16 if KV_MODE == FMT_NVFP4 else 1
    lane = tl.arange(0, BLOCK_ROWS * LANES_PER_ROW)
    tok = tl.program_id(1) * BLOCK_ROWS + lane // LANES_PER_ROW
    in_range = tok < num_tokens
    slot = tl.load(loc_ptr + tok, mask=in_range, other=0).to(tl.int64)
    mask = in_range & (slot >= 0) & (slot < num_slots)       # never write outside the pool
    if KV_MODE == FMT_NVFP4 and DIM != 0:                      # the padded row's blocks past DIM
        mask = mask & (lane % LANES_PER_ROW < DIM // 16)
    tok = tok.to(tl.int64)
    k_src = k_ptr + head * stride_k_h
    v_src = v_ptr + head * stride_v_h
    k_dst = k_cache_ptr + head * stride_kc_h
    v_dst = v_cache_ptr + head * stride_vc_h
    if KV_MODE == FMT_NVFP4:
        blk = lane % LANES_PER_ROW
        if DO_K:
            _append_nvfp4_blocks(k_src, stride_k_t, k_dst, stride_kc_s, k_scale_cache_ptr + head * stride_ks_h,
                                 stride_ks_s, k_gscale_ptr, tok, blk, slot, mask, MSE_SCALES)
        if DO_V:
            _append_nvfp4_blocks(v_src, stride_v_t, v_dst, stride_vc_s, v_scale_cache_ptr + head * stride_vs_h,
                                 stride_vs_s, v_gscale_ptr, tok, blk, slot, mask, MSE_SCALES)
    else:
        if DO_K:
            _append_rows(k_src, stride_k_t, k_dst, stride_kc_s, k_gscale_ptr, tok, slot, mask, HEAD_DIM, KV_MODE,
                         HW_FP8, DIM)
        if DO_V:
            _append_rows(v_src, stride_v_t, v_dst, stride_vc_s, v_gscale_ptr, tok, slot, mask, HEAD_DIM, KV_MODE,
                         HW_FP8, DIM)


# --------------------------------------------------------------------------------------------------
# launcher
# --------------------------------------------------------------------------------------------------

def _fail(name, msg):
    raise ValueError(f"{name}: {msg}")



def _check_tensor(name, t, *, ndim=None, dtypes=None, device=None, shape=None, contiguous=False):
    if not isinstance(t, torch.Tensor):
        _fail(name, f"expected a torch.Tensor, got {type(t).__name__}")
    if ndim is not None and t.dim() != ndim:
        _fail(name, f"expected {ndim} dimensions, got shape {tuple(t.shape)}")
    if dtypes is not None and t.dtype not in dtypes:
        _fail(name, f"dtype {t.dtype} is not supported; supported: {[str(d) for d in dtypes]}")
    if device is not None and t.device != device:
        _fail(name, f"is on {t.device}, expected {device} (the device of k)")
    if shape is not None and tuple(t.shape) != tuple(shape):
        _fail(name, f"expected shape {tuple(shape)}, got {tuple(t.shape)}")
    if contiguous and not t.is_contiguous():
        _fail(name, "must be contiguous")


_SCALE_CACHE: dict = {}


def _scale_tensor(name, s, device):
    """One-element fp32 device tensor for a scale; python floats are cached per (device, value) so
    the launcher allocates nothing per call (CUDA-graph friendly)."""
    if s is None:
        s = 1.0
    if isinstance(s, torch.Tensor):
        if s.numel() != 1:
            _fail(name, f"must hold one value, got shape {tuple(s.shape)}")
        if s.device != device:
            _fail(name, f"is on {s.device}, expected {device}")
        return s.reshape(1) if s.dtype == torch.float32 else s.reshape(1).to(torch.float32)
    key = (device, float(s))
    t = _SCALE_CACHE.get(key)
    if t is None:
        if len(_SCALE_CACHE) > 4096:
            _SCALE_CACHE.clear()
        t = _SCALE_CACHE[key] = torch.full((1,), float(s), dtype=torch.float32, device=device)
    return t


_U8 = (torch.uint8, torch.float8_e4m3fn)


def append_kv(
    k: torch.Tensor,
    v: torch.Tensor,
    out_loc: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    *,
    kv_dtype: str,
    k_scale_cache: torch.Tensor | None = None,
    v_scale_cache: torch.Tensor | None = None,
    k_scale=None,
    v_scale=None,
    check_slots: bool = True,
    nvfp4_scales: str = "max",
    arch: int | None = None,
    config: planner.AppendConfig | None = None,
    _parts: tuple[bool, bool] = (True, True),
) -> None:
    """Quantize new K/V rows and scatter them into one layer of the KV pool, in one launch.

    Parameters
    ----------
    k, v : (tokens, heads, head_dim) bf16/fp16. The token stride is free (a view of a fused qkv
        projection works); heads x head_dim must be dense.
    out_loc : (tokens,) int32/int64 slot ids into the pool. With ``check_slots`` (default) ids are
        range-checked on the host (one sync); the kernel never writes outside the pool either way.
    k_cache, v_cache : contiguous pool buffers of one layer:
        ``bf16``/``fp16``: (slots, heads, head_dim) of that dtype;
        ``fp8_e4m3``: (slots, heads, head_dim) uint8 or float8_e4m3fn;
        ``nvfp4``: (slots, heads, head_dim // 2) uint8.
    kv_dtype : "bf16" | "fp16" | "fp8_e4m3" | "nvfp4" (SGLang's "auto" is resolved by the caller), or
        "fp8k_nvfp4v": K as fp8_e4m3 (``k_cache`` (slots, heads, head_dim) uint8, ``k_scale`` its
        scale), V as nvfp4 (``v_cache`` / ``v_scale_cache``, ``v_scale`` its global scale).
    k_scale_cache, v_scale_cache : nvfp4 only, (slots, heads, head_dim // 16) uint8/float8_e4m3fn.
    k_scale, v_scale : per-tensor FP32 scale (float or one-element tensor on the device); the NVFP4
        global scale or the FP8 scale. Default 1.0.
    nvfp4_scales : "max" (block scale = amax / 6, SGLang's rule) or "mse" (the least-squared-error of
        three scale codes that all keep the block max representable; 6-13% lower squared error on
        Gaussian / Laplace data, same format). NVFP4 only.
    arch : compute capability used to plan the launch (default: the current device, or 120 on CPU).
    config : override of the planner's choice, for offline tuning sweeps only.
    """
    if nvfp4_scales not in NVFP4_SCALES:
        _fail("nvfp4_scales", f"{nvfp4_scales!r} is not supported; supported: {list(NVFP4_SCALES)}")
    if kv_dtype == "fp8k_nvfp4v":      # K as fp8_e4m3, V as nvfp4: one launch each
        _check_tensor("k_cache", k_cache, ndim=3, dtypes=_U8)
        _check_tensor("v_cache", v_cache, ndim=3, dtypes=(torch.uint8,))
        if k_cache.shape[0] != v_cache.shape[0]:
            _fail("v_cache", f"holds {v_cache.shape[0]} slots, k_cache {k_cache.shape[0]}")
        append_kv(k, v, out_loc, k_cache, k_cache, kv_dtype="fp8_e4m3", k_scale=k_scale, v_scale=k_scale,
                  check_slots=check_slots, arch=arch, _parts=(True, False))
        append_kv(k, v, out_loc, v_cache, v_cache, kv_dtype="nvfp4", k_scale_cache=v_scale_cache,
                  v_scale_cache=v_scale_cache, k_scale=v_scale, v_scale=v_scale, check_slots=False, arch=arch,
                  nvfp4_scales=nvfp4_scales, _parts=(False, True))
        return
    mode = kv_formats(kv_dtype)[0]        # a pool format; fp8k_nvfp4v was split into its two halves above
    _check_tensor("k", k, ndim=3, dtypes=tuple(_TORCH_ACT))
    dev = k.device
    tokens, heads, head_dim = k.shape
    _check_tensor("v", v, dtypes=(k.dtype,), device=dev, shape=k.shape)
    if head_dim % BLOCK_SIZE:
        _fail("k", f"head_dim={head_dim} must be a multiple of {BLOCK_SIZE}")
    if head_dim not in planner.HEAD_DIMS:
        _fail("k", f"head_dim={head_dim} is not supported; supported: {list(planner.HEAD_DIMS)}")
    for name, t in (("k", k), ("v", v)):
        if heads > 1 and t.stride(1) != head_dim or t.stride(2) != 1:
            _fail(name, f"heads x head_dim must be contiguous (strides {tuple(t.stride())})")
    _check_tensor("out_loc", out_loc, ndim=1, dtypes=(torch.int32, torch.int64), device=dev, shape=(tokens,))

    if mode == KVFormat.PLAIN:
        cache_dtypes, width = (_TORCH_PLAIN[kv_dtype],), head_dim
    elif mode == KVFormat.FP8:
        cache_dtypes, width = _U8, head_dim
    else:
        cache_dtypes, width = (torch.uint8,), head_dim // 2
    _check_tensor("k_cache", k_cache, ndim=3, dtypes=cache_dtypes, device=dev, contiguous=True)
    slots = k_cache.shape[0]
    _check_tensor("k_cache", k_cache, shape=(slots, heads, width))
    _check_tensor("v_cache", v_cache, dtypes=cache_dtypes, device=dev, shape=(slots, heads, width),
                  contiguous=True)
    if mode == KVFormat.NVFP4:
        sshape = (slots, heads, head_dim // BLOCK_SIZE)
        _check_tensor("k_scale_cache", k_scale_cache, dtypes=_U8, device=dev, shape=sshape, contiguous=True)
        _check_tensor("v_scale_cache", v_scale_cache, dtypes=_U8, device=dev, shape=sshape, contiguous=True)
        k_scale_cache, v_scale_cache = k_scale_cache.view(torch.uint8), v_scale_cache.view(torch.uint8)
    else:
        k_scale_cache = v_scale_cache = k_cache   # unused by the kernel at this KV_MODE
    if mode == KVFormat.FP8:
        k_cache, v_cache = k_cache.view(torch.uint8), v_cache.view(torch.uint8)
    kg = _scale_tensor("k_scale", k_scale, dev)
    vg = _scale_tensor("v_scale", v_scale, dev)
    if tokens == 0:
        return
    if check_slots:
        lo, hi = int(out_loc.min()), int(out_loc.max())
        if lo < 0 or hi >= slots:
            _fail("out_loc", f"slot ids must lie in [0, {slots}), got range [{lo}, {hi}]")

    arch = planner.launch_arch(dev, arch)
    cfg = config or planner.plan_kv_append(arch, head_dim, kv_dtype, _TORCH_ACT[k.dtype])
    grid = (heads, triton.cdiv(tokens, cfg.block_rows))
    kv_append_kernel[grid](
        k_ptr=k, v_ptr=v,
        stride_k_t=k.stride(0), stride_k_h=k.stride(1), stride_v_t=v.stride(0), stride_v_h=v.stride(1),
        loc_ptr=out_loc,
        k_cache_ptr=k_cache, v_cache_ptr=v_cache,
        stride_kc_s=k_cache.stride(0), stride_kc_h=k_cache.stride(1),
        stride_vc_s=v_cache.stride(0), stride_vc_h=v_cache.stride(1),
        k_scale_cache_ptr=k_scale_cache, v_scale_cache_ptr=v_scale_cache,
        stride_ks_s=k_scale_cache.stride(0), stride_ks_h=k_scale_cache.stride(1),
        stride_vs_s=v_scale_cache.stride(0), stride_vs_h=v_scale_cache.stride(1),
        k_gscale_ptr=kg, v_gscale_ptr=vg,
        num_tokens=tokens, num_slots=slots,
        **dim_constexprs(head_dim), BLOCK_ROWS=cfg.block_rows, KV_MODE=int(mode),
        HW_FP8=cfg.hw_fp8 and not _INTERPRET, DO_K=_parts[0], DO_V=_parts[1],
        MSE_SCALES=mode == KVFormat.NVFP4 and nvfp4_scales == "mse", num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )


def aot_cases(arch: int):
    """(label, signature, constexprs, options) for every configuration the planner can choose."""
    seen = set()
    for inp in planner.kv_append_domain():
        cfg = planner.plan_kv_append(arch, **inp)
        mode = int(kv_formats(inp["kv_dtype"])[0])
        act = inp["act_dtype"]
        key = (inp["head_dim"], mode, act, inp["kv_dtype"] if mode == KVFormat.PLAIN else "", cfg)
        if key in seen:
            continue
        seen.add(key)
        cache_t = {"bf16": "*bf16", "fp16": "*fp16"}.get(inp["kv_dtype"], "*u8")
        sig = {"k_ptr": f"*{act}", "v_ptr": f"*{act}", "loc_ptr": "*i64",
               "k_cache_ptr": cache_t, "v_cache_ptr": cache_t,
               "k_scale_cache_ptr": "*u8" if mode == KVFormat.NVFP4 else cache_t,
               "v_scale_cache_ptr": "*u8" if mode == KVFormat.NVFP4 else cache_t,
               "k_gscale_ptr": "*fp32", "v_gscale_ptr": "*fp32"}
        for n in ("stride_k_t", "stride_k_h", "stride_v_t", "stride_v_h", "stride_kc_s", "stride_kc_h",
                  "stride_vc_s", "stride_vc_h", "stride_ks_s", "stride_ks_h", "stride_vs_s", "stride_vs_h",
                  "num_tokens", "num_slots"):
            sig[n] = "i32"
        # fp8k_nvfp4v appends K alone with the fp8 plan and V alone with the nvfp4 plan
        parts = [(True, True)] + ([(True, False)] if mode == KVFormat.FP8 else [(False, True)] if mode == KVFormat.NVFP4 else [])
        for (do_k, do_v), mse in ((p, m) for p in parts for m in ((False, True) if mode == KVFormat.NVFP4 else (False,))):
            cx = {**dim_constexprs(inp["head_dim"]), "BLOCK_ROWS": cfg.block_rows, "KV_MODE": mode, "HW_FP8": cfg.hw_fp8,
                  "DO_K": do_k, "DO_V": do_v, "MSE_SCALES": mse}
            label = {"head_dim": inp["head_dim"], "kv_dtype": inp["kv_dtype"], "act_dtype": act, **cfg.as_dict()}
            if not (do_k and do_v):
                label["part"] = "K of fp8k_nvfp4v" if do_k else "V of fp8k_nvfp4v"
            if mse:
                label["nvfp4_scales"] = "mse"
            yield label, sig, cx, {"num_warps": cfg.num_warps, "num_stages": cfg.num_stages}
