"""Per-arch limits and the tile planner.

Every kernel of this package takes its launch configuration from a pure function here, keyed by the
compute capability (never the device name). ``sm12x budget`` compiles, ahead of time, every
configuration these functions can return, for each arch, and checks it against :data:`ARCH_LIMITS`
with no slack. The *domain* functions enumerate each planner's full input space, so the set the
budget checker compiles is exactly the planner's image (tests assert that).
"""
from __future__ import annotations

import functools
import math

from dataclasses import asdict, dataclass, replace
from typing import Iterable

from . import formats as _formats

# --------------------------------------------------------------------------------------------------
# Arch limits
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ArchLimits:
    cc: int                 # compute capability as an int: 120 for sm_120
    name: str
    smem_per_block: int     # max dynamic shared memory per block after opt-in, bytes
    smem_per_sm: int        # shared memory per multiprocessor, bytes
    regs_per_thread: int    # architectural cap; above it the compiler spills
    regs_per_sm: int
    mma: str                # tensor-core instruction family Triton emits there


# CUDA C programming guide, "Technical specifications per compute capability".
ARCH_LIMITS: dict[int, ArchLimits] = {a.cc: a for a in (
    ArchLimits(80, "sm_80 (A100)", 166_912, 167_936, 255, 65_536, "mma.sync"),
    ArchLimits(86, "sm_86 (RTX 30xx, A10)", 101_376, 102_400, 255, 65_536, "mma.sync"),
    ArchLimits(89, "sm_89 (RTX 40xx, L4, L40)", 101_376, 102_400, 255, 65_536, "mma.sync"),
    ArchLimits(90, "sm_90 (H100, H200)", 232_448, 233_472, 255, 65_536, "wgmma"),
    ArchLimits(100, "sm_100 (B200, GB200)", 232_448, 233_472, 255, 65_536, "tcgen05"),
    ArchLimits(120, "sm_120 (RTX 5090, RTX PRO 6000)", 101_376, 102_400, 255, 65_536, "mma.sync"),
    ArchLimits(121, "sm_121 (DGX Spark GB10)", 101_376, 102_400, 255, 65_536, "mma.sync"),
)}
SM12X = (120, 121)


def arch_limits(arch: int) -> ArchLimits:
    try:
        return ARCH_LIMITS[int(arch)]
    except (KeyError, ValueError, TypeError):
        raise ValueError(f"arch={arch!r} is not supported; supported compute capabilities: "
                         f"{sorted(ARCH_LIMITS)}") from None


# CPU tensors run the kernels under the Triton interpreter; a launcher given CPU tensors and no
# ``arch=`` plans them for this arch (the product's target), never for the host's CUDA device.
INTERPRETER_ARCH = 120


def current_arch(device=None) -> int:
    """Compute capability of a CUDA device as an int (``(12, 0)`` -> 120), read once per device."""
    import torch
    if not torch.cuda.is_available():
        raise RuntimeError("no CUDA device; pass arch= explicitly")
    index = torch.device(device).index if device is not None else None
    return _device_info(torch.cuda.current_device() if index is None else index)[0]


def device_sms(device) -> int:
    """Multiprocessor count of a CUDA device, read once per device."""
    import torch
    index = torch.device(device).index
    return _device_info(torch.cuda.current_device() if index is None else index)[1]


@functools.lru_cache(maxsize=None)
def _device_info(index: int) -> tuple[int, int]:
    import torch
    p = torch.cuda.get_device_properties(index)
    return p.major * 10 + p.minor, p.multi_processor_count


def launch_arch(device, arch: int | None = None) -> int:
    """The arch a launch on ``device`` is planned for: ``arch`` when the caller names one (any
    device: the interpreter can run a plan for any arch), else the CUDA device's own, else, for CPU
    tensors, :data:`INTERPRETER_ARCH`."""
    import torch
    if arch is not None:
        return arch_limits(arch).cc
    device = torch.device(device)
    if device.type == "cuda":
        return current_arch(device)
    if device.type == "cpu":
        return INTERPRETER_ARCH
    raise ValueError(f"device {device}: the kernels run on CUDA devices, or on CPU tensors under the Triton "
                     "interpreter")


# --------------------------------------------------------------------------------------------------
# Domains shared by the kernels
# --------------------------------------------------------------------------------------------------

HEAD_DIMS = (64, 96, 128, 256)
# head_dims that are not powers of two run the Triton kernels on a tile padded to the next power
# of two (masked columns), with that width's tiles; the Gluon kernels take powers of two only
PADDED_HEAD_DIMS = {96: 128}
# the storage formats, named once (formats.py); fp8k_nvfp4v appends as one fp8 and one nvfp4 half
KV_DTYPES = tuple(_formats.KV_DTYPES)
POOL_KV_DTYPES, FP8_K, FP4_V, ACT_DTYPES = _formats.POOL_KV_DTYPES, _formats.FP8_K, _formats.FP4_V, _formats.ACT_DTYPES


def _check(name: str, value, supported: Iterable):
    supported = tuple(supported)
    if value not in supported:
        raise ValueError(f"{name}={value!r} is not supported; supported: {list(supported)}")


# --------------------------------------------------------------------------------------------------
# KV append (quantize-and-scatter)
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AppendConfig:
    block_rows: int   # tokens per program (one head per program)
    num_warps: int
    num_stages: int = 1
    hw_fp8: bool = False  # FP8 encode through cvt.rn.satfinite (sm_89+), same bits as software

    def as_dict(self):
        return asdict(self)


# Each program moves one tile of BLOCK_ROWS x head_dim elements for K and again for V.
# * copy / fp8: 4096-element tiles on 4 warps (32 elements a thread: 16-byte loads, ~40 registers).
# * nvfp4: one thread per 16-element block (block max, scale and bytes stay in its registers);
#   256 blocks (4096 elements) a program on 8 warps = one block a thread.
# The kernel holds no shared-memory buffers of its own; what Triton allocates for the reductions
# is checked by `sm12x budget`.
_APPEND_TILE = {"copy": (4096, 4), "fp8_e4m3": (4096, 4), "nvfp4": (4096, 8)}


def plan_kv_append(arch: int, head_dim: int, kv_dtype: str, act_dtype: str = "bf16") -> AppendConfig:
    arch_limits(arch)
    _check("head_dim", head_dim, HEAD_DIMS)
    _check("kv_dtype", kv_dtype, POOL_KV_DTYPES)
    _check("act_dtype", act_dtype, ACT_DTYPES)
    elems, warps = _APPEND_TILE.get(kv_dtype, _APPEND_TILE["copy"])
    # sm_80 has no FP8 conversion instruction; there the software encoder (same bits) runs
    hw_fp8 = kv_dtype == "fp8_e4m3" and arch >= 89
    width = PADDED_HEAD_DIMS.get(head_dim, head_dim)      # the kernel's tile width
    return AppendConfig(block_rows=max(1, elems // width), num_warps=warps, hw_fp8=hw_fp8)


def kv_append_domain():
    """Every input the append planner accepts (besides arch). fp8k_nvfp4v appends with the
    fp8_e4m3 (K) and nvfp4 (V) plans."""
    for head_dim in HEAD_DIMS:
        for kv_dtype in POOL_KV_DTYPES:
            for act_dtype in ACT_DTYPES:
                yield dict(head_dim=head_dim, kv_dtype=kv_dtype, act_dtype=act_dtype)


# --------------------------------------------------------------------------------------------------
# Decode attention
# --------------------------------------------------------------------------------------------------

PAGE_SIZES = (1, 16, 64)
GQA_GROUPS = tuple(range(1, 17))       # q heads per kv head: any ratio up to 16 (unused MMA rows masked)
MAX_SPLITS_CAP = 256      # split-KV programs per (request, kv head) any decode launch accepts
_TRITON_SPLITS = 64       # the most the Triton split stage is planned with


@dataclass(frozen=True)
class DecodeConfig:
    block_h: int          # query heads of one kv head, padded to the MMA's M >= 16
    block_n: int          # tokens per KV tile
    num_warps: int
    num_stages: int
    max_splits: int       # split-KV programs per (request, kv head); a power of two
    min_split_tokens: int  # a request gets at most cdiv(len, this) splits
    hw_fp8: bool = False
    prefetch: bool = False  # the raw bytes of the next tile are loaded while this one is decoded
    fp4_mma: bool = False   # nvfp4: the one-warp kernel that decodes tiles into MMA operand registers
    maxnreg: int = 0        # register cap passed to ptxas (0: none) where its own choice spills

    def as_dict(self):
        return asdict(self)


def _decode_tile(arch: int, head_dim: int, kv_dtype: str, rows: int = 1, page_size: int = 1):
    """(block_n, num_warps, num_stages, maxnreg) for the Triton split stage; ``rows`` = batch x KV
    heads. Sweeps: ``benchmark/results/*tune-attention*``, ``*-tune-decode-stages.log``.

    * bf16/fp16: 64-token tiles, 4 warps, 2 stages (at the copy ceiling on H100 / H200).
    * fp8_e4m3: 64-token tiles, 4 warps, 3 stages (128-token tiles spill 8 B on sm_90).
    * NVFP4 V (nvfp4, fp8k_nvfp4v): 2 warps and the register prefetch of the next raw tile (the
      inline-PTX decode keeps the loop pipeliner away); 64 tokens for nvfp4 from head_dim 128, else 32
      (one warp, or 128 tokens on 2 warps, spill).
    * head_dim 256 halves the token tile (registers); sm_80/86 decode UE4M3 scales in software and
      need 4 warps there (2 spill).
    * sm_90 16-bit D128: the 128-token tile (two programs a multiprocessor) at 64-256 and from 1,024
      rows; 2 stages at 64-256 rows with page size 1, 3 elsewhere (2 spill in the paged one-split
      variant); 512-1,023 rows with page size 1 take it on 8 warps, one split, registers capped at
      128 (ptxas alone spills 8 B there). Below 64 rows the 64-token tile's many splits win.
    Shared memory and registers of every configuration: `sm12x budget --kernel decode`.
    """
    if kv_dtype in FP4_V:
        block_n, warps, stages = (64 if kv_dtype == "nvfp4" and head_dim >= 128 else 32), 2, 1
    elif kv_dtype == "fp8_e4m3":
        block_n, warps, stages = 64, 4, 3
    else:
        block_n, warps, stages = 64, 4, 2
    if kv_dtype in ACT_DTYPES and head_dim == 128 and arch_limits(arch).cc == 90:
        if 512 <= rows < 1024 and page_size == 1:
            return 128, 8, 2, 128
        if 64 <= rows <= 256 or rows >= 1024:
            block_n, warps, stages = 128, 4, 2 if rows <= 256 and page_size == 1 else 3
    if head_dim == 256:
        block_n = max(16, block_n // 2)
        if kv_dtype in FP4_V and arch_limits(arch).cc < 89:
            warps = 4       # UE4M3 scales decoded in software: 2 warps spill 4 B on sm_86 (paged)
    return block_n, warps, stages, 0


def plan_decode(arch: int, *, head_dim: int, kv_dtype: str, q_dtype: str = "bf16", group: int = 1,
                page_size: int = 1, batch: int = 1, kv_heads: int = 8, max_splits: int | None = None,
                num_sms: int | None = None, fp4_mma: bool = True) -> DecodeConfig:
    """Split-stage configuration of one decode call (``fp4_mma`` False: never the register-operand
    NVFP4 kernel, for launchers that cannot run it)."""
    lim = _check_attention(arch, head_dim, kv_dtype, q_dtype, group, page_size)
    if head_dim in PADDED_HEAD_DIMS:
        return plan_decode(arch, head_dim=PADDED_HEAD_DIMS[head_dim], kv_dtype=kv_dtype, q_dtype=q_dtype,
                           group=group, page_size=page_size, batch=batch, kv_heads=kv_heads, max_splits=max_splits,
                           num_sms=num_sms, fp4_mma=False)
    if fp4_mma and kv_dtype == "nvfp4" and lim.cc >= 89 and not (head_dim == 256 and group > 8):
        return _plan_decode_fp4_mma(lim, head_dim, group, batch, kv_heads, max_splits, num_sms)
    block_n, warps, stages, maxnreg = _decode_tile(arch, head_dim, kv_dtype, batch * kv_heads, page_size)
    if max_splits is None:
        max_splits = _triton_splits(batch * kv_heads, num_sms or _TYPICAL_SMS.get(lim.cc, 128),
                                    round_down=block_n == 128)
    _check_splits(max_splits)
    return DecodeConfig(block_h=max(16, 1 << (group - 1).bit_length()), block_n=block_n, num_warps=warps,
                        num_stages=stages, max_splits=max_splits, min_split_tokens=128,
                        hw_fp8=kv_dtype in FP8_K + FP4_V and lim.cc >= 89, prefetch=kv_dtype in FP4_V,
                        maxnreg=maxnreg)


def _triton_splits(rows: int, sms: int, round_down: bool) -> int:
    """Split count of the Triton split stage: about two waves of programs, rounded up to a power of
    two -- or down for the 128-token 16-bit tile on sm_90, which runs two programs a multiprocessor
    (``*-tune-attention.log``)."""
    if round_down:
        return min(1 << max(0, (2 * sms // max(1, rows)).bit_length() - 1), _TRITON_SPLITS)
    want = max(1, -(-2 * sms // max(1, rows)))
    return min(1 << (want - 1).bit_length(), _TRITON_SPLITS)


def _check_splits(max_splits: int) -> None:
    if max_splits < 1 or max_splits & (max_splits - 1) or max_splits > MAX_SPLITS_CAP:
        raise ValueError(f"max_splits={max_splits} must be a power of two in [1, {MAX_SPLITS_CAP}]")


def _plan_decode_fp4_mma(lim, head_dim, group, batch, kv_heads, max_splits, num_sms) -> DecodeConfig:
    """NVFP4 pools on sm_89+ (hardware fp8 conversion of the UE4M3 scales): the one-warp kernel that
    decodes each tile straight into ``mma.sync`` operand registers (:mod:`.attention.decode_nvfp4`),
    tiles of :func:`fp4_mma_block_n`, the next tile's raw words prefetched into registers, splits for
    about 8 programs a multiprocessor (up to 256: the reduce reads them in chunks of 64), raised by
    :func:`_fp4_mma_wave_splits` where a grid just over a whole number of waves would leave the last
    one nearly empty. Grid (KV head, request, split): a program reads one KV head's share of a
    token's bytes, so a token's heads are read together. Not at head_dim 256 with more than 8 query
    heads a KV head (16 x 256 fp32 accumulators spill). Sweeps: ``*-tune-decode-fp4-mma*.json``,
    ``*-tune-attention.log``."""
    sms = num_sms or _TYPICAL_SMS.get(lim.cc, 128)
    heads_n = 8 if group <= 8 else 16
    block_n = fp4_mma_block_n(head_dim, heads_n)
    if max_splits is None:      # the power of two nearest (log scale) to 8 programs per multiprocessor
        want = 8 * sms / max(1, batch * kv_heads)
        max_splits = 1 << max(0, min(MAX_SPLITS_CAP.bit_length() - 1, round(math.log2(want)) if want > 1 else 0))
        max_splits = _fp4_mma_wave_splits(batch * kv_heads, max_splits, sms,
                                          fp4_mma_resident(head_dim, heads_n))
    _check_splits(max_splits)
    return DecodeConfig(block_h=max(16, 1 << (group - 1).bit_length()), block_n=block_n,
                        num_warps=1, num_stages=1, max_splits=max_splits, min_split_tokens=128, hw_fp8=True,
                        prefetch=True, fp4_mma=True)


def fp4_mma_block_n(head_dim: int, heads_n: int) -> int:
    """Token tile of the one-warp NVFP4 decode kernel: 64 where it fits without spills (head_dim 64 /
    128, up to 8 query heads a KV head), 32 at 16 heads, 16 at head_dim 256 (AOT, sm_89 .. sm_121;
    ``*-tune-attention.log``)."""
    if head_dim == 256:
        return 16
    return 64 if heads_n == 8 else 32


def fp4_mma_resident(head_dim: int, heads_n: int) -> int:
    """One-warp NVFP4 decode programs resident per multiprocessor: 65,536 registers / (32 x the
    kernel's registers, in steps of 8), from the planned configurations' AOT register counts on
    sm_89 .. sm_121 (checked by ``tests/test_budget.py``). The tile is :func:`fp4_mma_block_n`'s."""
    if head_dim == 64:
        return 12
    if head_dim == 128:
        return 8 if heads_n == 8 else 9
    return 8


def _wave_cost(programs: int, per_sm: int, sms: int) -> float:
    """Time of ``programs`` equal, memory-bound programs in units of one program's time: whole waves
    of ``per_sm`` a multiprocessor, then a partial last wave that costs at least ``5/8 per_sm``
    programs' time (too few warps to keep memory busy; calibrated on the H100)."""
    full, tail = divmod(programs, per_sm * sms)
    return full * per_sm + (max(tail / sms, per_sm * 5 / 8) if tail else 0)


def _fp4_mma_wave_splits(rows: int, splits: int, sms: int, per_sm: int) -> int:
    """``splits`` unless the grid overflows one wave of resident programs: then the split count among
    ``splits`` x {1, 2, 4} with the least modelled time (:func:`_wave_cost`), a larger one only where it
    saves more than 5%."""
    if rows * splits <= per_sm * sms:
        return splits
    best, best_t = splits, _wave_cost(rows * splits, per_sm, sms) / splits
    for s in (2 * splits, 4 * splits):
        if s > MAX_SPLITS_CAP:
            break
        t = _wave_cost(rows * s, per_sm, sms) / s
        if t < 0.95 * best_t:
            best, best_t = s, t
    return best


def decode_max_splits(arch: int, *, max_batch: int, **kw) -> int:
    """The largest ``batch * max_splits`` :func:`plan_decode` asks for at any batch up to
    ``max_batch`` (CUDA-graph workspaces are sized once for every captured batch size)."""
    return max(b * plan_decode(arch, batch=b, **kw).max_splits for b in range(1, max_batch + 1))


def _check_attention(arch, head_dim, kv_dtype, q_dtype, group, page_size) -> ArchLimits:
    """Validate the inputs shared by the decode and extend planners."""
    lim = arch_limits(arch)
    _check("head_dim", head_dim, HEAD_DIMS)
    _check("kv_dtype", kv_dtype, KV_DTYPES)
    _check("q_dtype", q_dtype, ACT_DTYPES)
    _check("group (q heads per kv head)", group, GQA_GROUPS)
    _check("page_size", page_size, PAGE_SIZES)
    if kv_dtype in ("bf16", "fp16") and kv_dtype != q_dtype:
        raise ValueError(f"kv_dtype={kv_dtype!r} with q_dtype={q_dtype!r} is not supported; "
                         f"a bf16/fp16 pool must match q's dtype")
    return lim


# used only when the caller does not pass the device's multiprocessor count
_TYPICAL_SMS = {80: 108, 86: 84, 89: 128, 90: 132, 100: 148, 120: 170, 121: 48}


def decode_domain():
    for head_dim in HEAD_DIMS:
        for kv_dtype in KV_DTYPES:
            for q_dtype in ACT_DTYPES:
                if kv_dtype in ("bf16", "fp16") and kv_dtype != q_dtype:
                    continue
                for group in GQA_GROUPS:
                    for page_size in PAGE_SIZES:
                        yield dict(head_dim=head_dim, kv_dtype=kv_dtype, q_dtype=q_dtype, group=group,
                                   page_size=page_size)


# --------------------------------------------------------------------------------------------------
# Extend / prefill attention
# --------------------------------------------------------------------------------------------------


SHORT_CHUNK = 1024     # extend: a launch whose longest chunk is at most this many tokens is "short"


@dataclass(frozen=True)
class ExtendConfig:
    block_m: int
    block_n: int
    num_warps: int
    num_stages: int
    hw_fp8: bool = False
    pack: int = 1           # query heads of one KV group sharing a program's rows (block_m // pack tokens)
    unmasked: bool = True   # tiles every row sees whole run a second, select-free loop (prefix: 16-bit pools)
    prefix_stages: int = 0  # software-pipeline stages of the prefix loop alone (0: num_stages)
    heavy_first: bool = False  # causal row blocks launched longest first within each (head, request)
    quant_prefix_unmasked: bool = False  # quantized pools: whole prefix tiles select-free as well
    diag_in_loop: bool = False  # causal diagonal tiles (16-bit pools: the prefix's partial one too) in the
    #                             whole-tile loop
    prefix_loop: bool = True    # False: compiled without the prefix phase (the host knows nothing is cached)
    wgmma: bool = False     # sm_90 with a prefix: the Gluon warpgroup-MMA kernels of extend_wgmma (16-bit pools:
    #                         prefix tiles copied, num_stages copy buffers; NVFP4: a decoder warpgroup)
    mma2: bool = False      # 16-bit pools on the mma.sync arches: the Gluon kernel of extend_mma (FlashAttention-2's
    #                         order: whole rows a warp, Q in registers, cp.async stages, num_stages buffers)

    def as_dict(self):
        return asdict(self)


@functools.lru_cache(maxsize=4096)      # called on every extend launch: the host path is part of prefill latency
def plan_extend(arch: int, *, head_dim: int, kv_dtype: str, q_dtype: str = "bf16", group: int = 1,
                page_size: int = 1, prefix: bool = True, window: bool = False, gluon: bool = True,
                short: bool = False) -> ExtendConfig:
    """Tiles of one extend launch. Registers, not shared memory, bind on sm_120 (``sm12x budget
    --kernel extend`` shows every choice); the rules and their reasons are beside them below and in
    :func:`_extend_tile`. Sweeps: ``benchmark/results/*tune-extend*``.

    GQA packing (``pack``): with a quantized pool, up to 4 query heads of a KV group share a
    program's rows, so each prefix tile is dequantized once for all of them (the dequantization
    costs about as much as the tile's MMAs); 16-bit pools pack only in sm_90's warpgroup-MMA kernel.
    ``prefix`` False: the host knows nothing is cached (no prefix phase compiled). ``short``: no
    chunk longer than :data:`SHORT_CHUNK`. ``gluon`` False: no device to run the Gluon kernels (the
    interpreter, pools over 2^31 bytes). ``window``: a sliding window (Triton kernel only).
    """
    lim = _check_attention(arch, head_dim, kv_dtype, q_dtype, group, page_size)
    if head_dim in PADDED_HEAD_DIMS:
        return plan_extend(arch, head_dim=PADDED_HEAD_DIMS[head_dim], kv_dtype=kv_dtype, q_dtype=q_dtype, group=group,
                           page_size=page_size, prefix=prefix, window=window, gluon=False, short=short)
    cfg = _extend_tile(lim, head_dim, kv_dtype, group)
    quant = kv_dtype not in ACT_DTYPES      # an fp8 / nvfp4 pool (16-bit pools hold q's dtype)
    if prefix and (lim.cc == 90
                   or lim.cc in (120, 121) and head_dim == 128 and kv_dtype in ("bf16", "fp16", "nvfp4")):
        # the slot-id load feeds the K/V addresses, so Triton's pipeliner splits the stages between
        # the two loads: at 2-3 stages no tile is in flight during the MMAs, at 5 one is
        # (``*-tune-extend-stages.log``). Not sm_100 (spills); not without a prefix (the unused
        # loop's pipeline costs the chunk phase its register allocation).
        cfg = replace(cfg, prefix_stages=5)
        if lim.cc == 90 and head_dim == 128 and kv_dtype in ("bf16", "fp16", "nvfp4"):
            # with the diagonal in the whole-tile loop, 4 (16-bit) / 6 (nvfp4) measured best of 4-8
            cfg = replace(cfg, prefix_stages=6 if kv_dtype == "nvfp4" else 4)
    # causal row blocks longest first (a short tail instead of a long one), 16-bit pools only:
    # quantized pools' fresh prefills run the 16-bit launch anyway, and the reorder spills some of
    # their tiles (AOT)
    cfg = replace(cfg, heavy_first=not quant)
    if not prefix and not quant:
        # nothing cached: compiled without the prefix phase, whose unused code had cost the chunk
        # phase its schedule (``*-tune-extend.log``); quantized kernels without it spill on sm_120
        cfg = replace(cfg, prefix_loop=False)
    if (lim.cc in (86, 89) or lim.cc == 100 and prefix) and head_dim == 128 and not quant:
        cfg = replace(cfg, unmasked=False)      # the second, select-free loop body spills there (AOT)
    if quant and not (lim.cc == 90 or lim.cc in SM12X and head_dim < 256):
        cfg = replace(cfg, unmasked=False)      # likewise with a quantized pool, outside the AOT-checked arches
    if prefix and quant and cfg.unmasked and head_dim < 256:
        # whole prefix tiles of quantized pools select-free too (no spills on sm_90/120/121 below D256)
        cfg = replace(cfg, quant_prefix_unmasked=True)
    if lim.cc == 90 and cfg.unmasked:
        # the causal diagonal as the last, masked iterations of the whole-tile loop: a loop of its
        # own filled its own pipeline for one tile. sm_120 bf16 D128 spills with it, so sm_90 only
        cfg = replace(cfg, diag_in_loop=True)
    pack = _gqa_pack(group, cfg.block_m) if quant else 1
    if prefix and gluon and not window and lim.cc == 90 and head_dim == 128 and kv_dtype == "nvfp4" and pack == 4:
        # the warp-specialized Gluon kernel: a decoder warpgroup feeds the two MMA warpgroups
        # (``*-tune-extend-warp-spec.log``); 229,444 B, no spills (``budget-sm90-wgmma.json``)
        cfg = ExtendConfig(128, 128, 8, 1, cfg.hw_fp8, wgmma=True)
    if prefix and gluon and not window and lim.cc == 90 and head_dim == 128 and kv_dtype in ACT_DTYPES:
        # 16-bit pools: the Gluon kernel, prefix tiles copied by cp.async in FlashAttention-3's order,
        # up to 4 query heads sharing each tile (dividing the group); two copy buffers a tensor
        # (three measured no clearly faster and take 224 KB: ``*-tune-extend-wgmma16.log``)
        pack = _gqa_pack(group, 128)
        cfg = ExtendConfig(128, 128, 8, 2, cfg.hw_fp8, wgmma=True)
    if gluon and not window and kv_dtype in ACT_DTYPES + ("nvfp4",) and head_dim in (64, 128) \
            and lim.cc in (80, 86, 89, 120, 121):
        # 16-bit and NVFP4 pools on the mma.sync arches: the Gluon kernel in FlashAttention-2's order
        # (16 whole rows a warp, Q in registers; NVFP4 prefix tiles decoded once by the CTA into
        # shared memory); at head_dim 128 a 64-key tile needs over 255 registers a thread (AOT:
        # 32-100 B spilled), 32 keys fit (81,920 B, no spills); up to 4 query heads share each tile
        cfg = ExtendConfig(128, 32 if head_dim == 128 else 64, 8, 3, False, prefix_loop=prefix, mma2=True)
        return replace(cfg, pack=_gqa_pack(group, cfg.block_m))
    if short and not prefix and not quant and lim.cc == 90 and head_dim == 128:
        # nothing cached and every chunk within SHORT_CHUNK: 64 x 64 tiles on 4 warps with up to 4
        # query heads a program give more programs (``*-tune-extend-short-chunk.log``)
        cfg = replace(cfg, block_m=64, block_n=64, num_warps=4, num_stages=3)
        pack = _gqa_pack(group, cfg.block_m)
    return replace(cfg, pack=pack)


def _gqa_pack(group: int, block_m: int) -> int:
    """Query heads of one KV group packed into a program's rows: 4 or 2 where that divides the
    group (6: 2; 3, 5, 7: none), with at least 16 tokens a program."""
    for pack in (4, 2):     # powers of two: they divide block_m
        if group % pack == 0 and block_m // pack >= 16:
            return pack
    return 1


def _extend_tile(lim, head_dim: int, kv_dtype: str, group: int = 1) -> ExtendConfig:
    hw_fp8 = kv_dtype in FP8_K + FP4_V and lim.cc >= 89
    fp4 = kv_dtype in FP4_V
    if lim.cc == 80 and kv_dtype == "nvfp4" and head_dim >= 128:
        # sm_80 decodes the UE4M3 block scales in software: 64 x 32 on 8 warps spills 4 B at D128
        # unless 4 heads share it (pack 4), 32 x 32 on 4 warps 36-48 B at D256 (AOT)
        if head_dim == 128 and group % 4 == 0:
            return ExtendConfig(64, 32, 8, 2, hw_fp8)
        return ExtendConfig(32, 32, 8, 2, hw_fp8)
    if kv_dtype == "fp8k_nvfp4v" and head_dim == 64:
        # 64-key tiles computed wrong results for this format on an H100 (Triton 3.6, fp16 MMA
        # path; every other format right there): 32-key tiles everywhere for it
        return ExtendConfig(128, 32, 8, 3, hw_fp8) if lim.smem_per_block >= 200_000 else \
            ExtendConfig(64, 32, 4, 2, hw_fp8)
    if lim.smem_per_block >= 200_000:
        if head_dim == 256:
            return ExtendConfig(64, 32, 8, 2 if fp4 else 3, hw_fp8)
        if kv_dtype == "nvfp4" and head_dim == 128 and group % 4 == 0 and lim.cc == 90:
            # 128 x 128 with 4 heads packed beat 128 x 64 in the H100 sweep and fits without spills
            # (2 heads: 8 B; sm_100: 40 B, AOT)
            return ExtendConfig(128, 128, 8, 3, hw_fp8)
        if fp4:
            return ExtendConfig(128, 64, 8, 3, hw_fp8)
        if kv_dtype == "fp8_e4m3":
            # with the 5-stage prefix loop 3 stages beat 2 on sm_90 (``*-tune-extend-stages.log``)
            return ExtendConfig(128, 128, 8, 3 if head_dim == 128 and lim.cc == 90 else 2, hw_fp8)
        if head_dim == 128:
            # with whole tiles unmasked, 128 x 128 on 8 warps beat 64 x 64 in the H100 sweep
            return ExtendConfig(128, 128, 8, 3, hw_fp8)
        return ExtendConfig(64, 64, 4, 3, hw_fp8)
    if lim.cc < 89 and kv_dtype == "fp8_e4m3" and head_dim == 256:
        return ExtendConfig(32, 16, 4, 2, hw_fp8)   # software FP8 decode on sm_80/86 spills at 32 x 32
    if lim.cc < 89 and kv_dtype == "fp8k_nvfp4v" and head_dim == 128:
        # software FP8 K + NVFP4 V: 64 x 32 spills 4-176 B there, 32 x 32 on 4 warps 8 B (paged)
        return ExtendConfig(32, 32, 8, 2, hw_fp8)
    if lim.cc < 90 and kv_dtype == "nvfp4" and head_dim == 256 and group % 2:
        return ExtendConfig(16, 32, 4, 2, hw_fp8)   # one head a program: 32 x 32 spills 4-12 B on sm_89
    if lim.cc < 90:
        # sm_80/86/89: 64-token tiles spill 4-64 B there (and sm_80 decodes FP8 in software), so
        # 32-token tiles; D256 32 x 32 on 4 warps (8 warps cap ptxas at 128 registers and spill).
        return {64: ExtendConfig(64, 32, 4, 2, hw_fp8), 128: ExtendConfig(64, 32, 8, 2, hw_fp8),
                256: ExtendConfig(32, 32, 4, 2, hw_fp8)}[head_dim]
    if head_dim == 64:
        # fp8 at 64 x 64 on 4 warps spills 36 B in the paged prefix loop (ptxas log of the cubin)
        return ExtendConfig(64, 64, 8 if kv_dtype == "fp8_e4m3" else 4, 2, hw_fp8)
    if head_dim == 128:
        # 3 stages keep one chunk tile in flight on sm_120/121 (2 allot one buffer: load and MMAs
        # alternate); faster in the sm_120 tiles' mma.sync proxy on the H100
        # (``*-tune-extend-sm120-tiles-mma-v2.json``). 8 warps: 4 spill (the 64 x 128 fp32
        # accumulator alone is 64 registers a thread); nvfp4 64 x 64 spills on sm_120 (AOT).
        stages = 3 if kv_dtype in ("bf16", "fp16", "nvfp4", "fp8_e4m3") and lim.cc in (120, 121) else 2
        return ExtendConfig(64, 32 if fp4 else 64, 8, stages, hw_fp8)
    if kv_dtype == "fp8k_nvfp4v":     # D256: 8 warps cap ptxas at 128 registers and spill 8-20 B (cubin log)
        return ExtendConfig(32, 32, 4, 2, hw_fp8)
    return ExtendConfig(32 if fp4 else 64, 32, 8, 2, hw_fp8)


def extend_domain():
    for head_dim in HEAD_DIMS:
        for kv_dtype in KV_DTYPES:
            for q_dtype in ACT_DTYPES:
                if kv_dtype in ("bf16", "fp16") and kv_dtype != q_dtype:
                    continue
                for page_size in (1, 16):     # the kernel specializes on paged or not; 16 stands for > 1
                    # the group matters through the GQA packing (1, 2 or 4 heads a program) alone
                    # (16-bit pools pack only in the Gluon kernels)
                    for group in (1, 2, 4):
                        for prefix in (True, False):    # False: the host knows nothing is cached
                            yield dict(head_dim=head_dim, kv_dtype=kv_dtype, q_dtype=q_dtype, group=group,
                                       page_size=page_size, prefix=prefix)
                        # no chunk longer than SHORT_CHUNK, nothing cached
                        yield dict(head_dim=head_dim, kv_dtype=kv_dtype, q_dtype=q_dtype, group=group,
                                   page_size=page_size, prefix=False, short=True)


# --------------------------------------------------------------------------------------------------
# fused MoE (this project's kernels, sgl_kernel_sm12x/moe/)
# --------------------------------------------------------------------------------------------------

MOE_DTYPES = ("bf16", "fp16", "fp8_w8a8", "fp8_w8a8_block", "nvfp4_w4a16", "nvfp4_w4a4")
MOE_TOKEN_BUCKETS = (1, 16, 64, 256, 1024, 4096, 16384)
# (E, top_k, hidden, intermediate): Qwen3-30B-A3B, Mixtral-8x7B, gpt-oss-20b-like
MOE_SHAPES = {"qwen3-30b-a3b": (128, 8, 2048, 768), "mixtral": (8, 2, 4096, 14336), "gpt-oss": (32, 4, 2880, 2880)}


@dataclass(frozen=True)
class MoeConfig:
    block_m: int
    block_n: int
    block_k: int
    group_m: int
    num_warps: int
    num_stages: int

    def as_dict(self):
        return dict(BLOCK_SIZE_M=self.block_m, BLOCK_SIZE_N=self.block_n, BLOCK_SIZE_K=self.block_k,
                    GROUP_SIZE_M=self.group_m, num_warps=self.num_warps, num_stages=self.num_stages)


def moe_gemm_smem(cfg: MoeConfig, dtype: str) -> int:
    """Shared memory of :func:`sgl_kernel_sm12x.moe.fused_moe.moe_gemm_kernel`'s pipelined main loop:
    ``num_stages - 1`` buffers of the A (BM x BK) and B (BK x BN) tiles."""
    if dtype == "nvfp4_w4a4":
        per_stage = (cfg.block_m + cfg.block_n) * (cfg.block_k // 2 + cfg.block_k // 16)
        return max(cfg.num_stages - 1, 1) * per_stage
    if dtype == "nvfp4_w4a16":
        # A in 16 bits, B as packed bytes plus a scale byte per 16; the decoded B tile takes a
        # 16-bit layout-conversion buffer for the MMA operand
        per_stage = cfg.block_m * cfg.block_k * 2 + cfg.block_n * cfg.block_k // 2 + cfg.block_n * cfg.block_k // 16
        return max(cfg.num_stages - 1, 1) * per_stage + cfg.block_n * cfg.block_k * 2
    eb = 1 if dtype.startswith("fp8") else 2
    return max(cfg.num_stages - 1, 1) * (cfg.block_m * cfg.block_k + cfg.block_k * cfg.block_n) * eb


def moe_tile_str(c: dict) -> str:
    """``BMxBNxBK wW sS`` of a MoE tile dict (the planner's and SGLang's config keys)."""
    return (f"{c['BLOCK_SIZE_M']}x{c['BLOCK_SIZE_N']}x{c['BLOCK_SIZE_K']} "
            f"w{c.get('num_warps', 4)} s{c.get('num_stages', 3)}")


def _pow2_floor(x: int) -> int:
    return 1 << (max(int(x), 1).bit_length() - 1)


def plan_moe(arch: int, *, dtype: str, num_experts: int, n: int, k: int, tokens: int, top_k: int,
             block_shape=None) -> MoeConfig:
    """Tile of one grouped GEMM of the fused MoE (``n`` outputs, ``k`` reduction) for ``tokens``
    routed ``top_k`` ways over ``num_experts``; every choice is within the arch's shared memory
    (``sm12x budget --kernel moe``). Rules from the neighbourhood sweeps of sm_120's tiles on an H100
    (``*-tune-moe.json``, ``*-tune-moe-sm90-fp8.json``):

    * BLOCK_M follows the rows per expert ``tokens * top_k / E``: 16 up to 16 rows, 32 below 64, 64
      at 64; above, 128 for 16-bit operands and 64 for per-tensor fp8; block-fp8 64 up to 512 rows.
    * BLOCK_K: 128 B of K per row (64 for 16-bit, 128 for fp8), doubled at BLOCK_M 16; block-fp8
      keeps it a divisor of the quantization group (one scale per K step).
    * BLOCK_N 64 up to 64 rows per expert, else 128; block-fp8 keeps 64 (its partial products
      double the accumulator registers); 8 warps for 128 x 128 tiles; 4 stages (3 for 16-bit
      128-row tiles), one more where the arch has >= 160 KB, fewer until the tiles fit.
    * sm_90 (wgmma, 227 KB): above 64 rows 128 x 256 x 64/128 on 8 warps (the tiles SGLang's tuned
      H100 tables use), block-fp8 64 x 128; fp8 at 16-64 rows 64-row tiles so the MMA is a
      warpgroup one.
    """
    lim = arch_limits(arch)
    _check("dtype", dtype, MOE_DTYPES)
    for name, v in (("num_experts", num_experts), ("n", n), ("k", k), ("top_k", top_k)):
        if int(v) < 1:
            raise ValueError(f"{name}: must be >= 1, got {v}")
    if tokens < 0:
        raise ValueError(f"tokens: must be >= 0, got {tokens}")
    if dtype.startswith("fp8") and arch < 89:
        raise ValueError(f"dtype: {dtype!r} needs fp8 tensor cores (sm_89+); sm_{arch} supports ['bf16', 'fp16']")
    if dtype == "fp8_w8a8_block":
        if not block_shape or len(block_shape) != 2 or block_shape[1] % 16 or block_shape[0] % 16:
            raise ValueError(f"block_shape: fp8_w8a8_block needs [group_n, group_k] multiples of 16, got {block_shape}")
    rows = max(tokens, 1) * top_k / num_experts
    if dtype == "nvfp4_w4a16":
        return _plan_moe_nvfp4(lim, arch, rows, n, k)
    if dtype == "nvfp4_w4a4":
        if arch not in (120, 121):
            raise ValueError(f"dtype: 'nvfp4_w4a4' needs the block-scaled FP4 mma.sync of sm_120 / sm_121; "
                             f"sm_{arch} supports {[d for d in MOE_DTYPES if d != 'nvfp4_w4a4']}")
        return _plan_moe_w4a4(lim, arch, rows, n, k)
    fp8 = dtype.startswith("fp8")
    if rows <= 16:
        bm = 16
    elif rows < 64:
        bm = 32
    elif rows <= 64 or dtype == "fp8_w8a8" or (dtype == "fp8_w8a8_block" and rows <= 512):
        bm = 64
    else:
        bm = 128
    bk = 128 if fp8 else 64
    if bm == 16:
        bk *= 2
    if dtype == "fp8_w8a8_block":
        bk = min(bk, _pow2_floor(block_shape[1]))
    bk = min(bk, max(16, 1 << (int(k) - 1).bit_length()))
    bn = 64 if rows <= 64 or dtype == "fp8_w8a8_block" else 128
    if fp8 and arch == 89:      # sm_89's fp8 MMA path: 64 x 128 spilled 12 B at 255 registers (AOT)
        bn = 64
    bn = min(bn, max(16, 1 << (int(n) - 1).bit_length()))
    warps = 8 if bm >= 128 and (bn >= 128 or dtype == "fp8_w8a8_block" or (fp8 and arch == 89)) else 4
    stages = 3 if bm >= 128 and not fp8 else 4
    if lim.smem_per_block >= 160_000:
        stages += 1
    if lim.mma == "wgmma" and rows > 64:
        if dtype == "fp8_w8a8_block":
            bm, bn, warps, stages = 64, 128, 4, 4
        else:
            bm, bn, warps, stages = 128, 256, 8, 4
        bn = min(bn, max(16, 1 << (int(n) - 1).bit_length()))
    elif lim.mma == "wgmma" and fp8 and rows >= 16 and (dtype == "fp8_w8a8_block" or min(n, k) >= 4096):
        # fp8 at 16-64 rows an expert: the warpgroup MMA needs 64-row tiles (16- and 32-row tiles run
        # fp8 on mma.sync); 128 x 128 where the experts are wide, at 64 rows. Per-tensor fp8 only
        # for wide experts (N and K >= 4,096, measured on Mixtral; Qwen3 / gpt-oss keep the tiles
        # below, at 0.95-1.16x of SGLang there)
        if rows >= 64 and min(n, k) >= 4096:
            bm, bn, bk, warps, stages = 128, 128, 128, 8, 3
        elif dtype == "fp8_w8a8_block":
            bm, bn, bk, warps, stages = 64, 64, 128, 4, 3
        else:
            bm, bn, bk, warps, stages = 64, 128, 256, 4, 4
        bk = min(bk, max(16, 1 << (int(k) - 1).bit_length()))
        if dtype == "fp8_w8a8_block":
            bk = min(bk, _pow2_floor(block_shape[1]))
        bn = min(bn, max(16, 1 << (int(n) - 1).bit_length()))
    group_m = 8 if bm >= 64 else 1
    if lim.mma == "wgmma" and dtype == "fp8_w8a8_block" and rows > 64:
        group_m = 32        # H100 sweep: 64 x 128 with 32-block groups the best tile at 1,024-4,096 tokens
    cfg = MoeConfig(bm, bn, bk, group_m, warps, stages)
    while moe_gemm_smem(cfg, dtype) > lim.smem_per_block and cfg.num_stages > 2:
        cfg = MoeConfig(cfg.block_m, cfg.block_n, cfg.block_k, cfg.group_m, cfg.num_warps, cfg.num_stages - 1)
    if moe_gemm_smem(cfg, dtype) > lim.smem_per_block:   # cannot happen with the tiles above; keep the guard
        raise ValueError(f"no fused-MoE tile fits sm_{arch} for dtype={dtype}")
    return cfg


def _plan_moe_nvfp4(lim, arch: int, rows: float, n: int, k: int) -> MoeConfig:
    """NVFP4 weights decoded in registers (W4A16) on the ``mma.sync`` tiles of every arch: BLOCK_M
    follows the rows per expert as for 16-bit weights (16 / 32 / 64 / 128); BLOCK_K 128 up to 32
    rows (64 packed bytes and 8 scales a weight row a step; its two halves are the even / odd
    columns), 64 above (the decoded tile is in registers); BLOCK_N 64 up to 64 rows an expert,
    else 128 (8 warps for 128 x 128); 3 stages (4 on parts with >= 160 KB), fewer until the
    tiles fit."""
    if rows <= 16:
        bm = 16
    elif rows < 64:
        bm = 32
    elif rows <= 64:
        bm = 64
    else:
        bm = 128
    # the decoded weight tile lives in registers: 64 x 128 at 64+ rows spilled 164-540 B (AOT, sm_120)
    bk = min(128 if bm <= 32 else 64, max(16, 1 << (int(k) - 1).bit_length()))
    bn = 64 if rows <= 64 else 128
    bn = min(bn, max(16, 1 << (int(n) - 1).bit_length()))
    warps = 8 if bm >= 128 and bn >= 128 else 4
    stages = 4 if lim.smem_per_block >= 160_000 else 3
    cfg = MoeConfig(bm, bn, bk, 8 if bm >= 64 else 1, warps, stages)
    while moe_gemm_smem(cfg, "nvfp4_w4a16") > lim.smem_per_block and cfg.num_stages > 2:
        cfg = MoeConfig(cfg.block_m, cfg.block_n, cfg.block_k, cfg.group_m, cfg.num_warps, cfg.num_stages - 1)
    if moe_gemm_smem(cfg, "nvfp4_w4a16") > lim.smem_per_block:
        raise ValueError(f"no nvfp4 MoE tile fits sm_{arch}")
    return cfg


def _plan_moe_w4a4(lim, arch: int, rows: float, n: int, k: int) -> MoeConfig:
    """NVFP4 x NVFP4 on SM120's block-scaled ``mma.sync`` (m16n8k64): both operands are packed
    bytes (a 128-wide K step is 64 bytes a row plus 8 scale bytes), so the tiles are the 16-bit
    ones' with BLOCK_K 128; BLOCK_N 64 up to 64 rows an expert, else 128; 4 warps, 8 for 128 x
    128; 3 stages."""
    bm = 16 if rows <= 16 else 32 if rows < 64 else 64 if rows <= 64 else 128
    bn = 64 if rows <= 64 else 128
    bn = min(bn, max(16, 1 << (int(n) - 1).bit_length()))
    bk = min(128, max(64, 1 << (int(k) - 1).bit_length()))
    cfg = MoeConfig(bm, bn, bk, 8 if bm >= 64 else 1, 8 if bm >= 128 and bn >= 128 else 4, 3)
    if moe_gemm_smem(cfg, "nvfp4_w4a4") > lim.smem_per_block:
        raise ValueError(f"no nvfp4_w4a4 MoE tile fits sm_{arch}")
    return cfg


def fit_moe_config(arch: int, cfg: MoeConfig, dtype: str):
    """A user-supplied tile for this project's MoE kernel, made to fit ``arch``: ``(config, reason)``
    with ``reason`` None when it already fits. Stages first, then BLOCK_N, then BLOCK_K; BLOCK_M is
    kept (both GEMMs share one alignment)."""
    lim = arch_limits(arch).smem_per_block
    out = cfg
    while moe_gemm_smem(out, dtype) > lim:
        if out.num_stages > 2:
            out = MoeConfig(out.block_m, out.block_n, out.block_k, out.group_m, out.num_warps, out.num_stages - 1)
        elif out.block_n > 16:
            out = MoeConfig(out.block_m, out.block_n // 2, out.block_k, out.group_m, out.num_warps, out.num_stages)
        elif out.block_k > 16:
            out = MoeConfig(out.block_m, out.block_n, out.block_k // 2, out.group_m, out.num_warps, out.num_stages)
        else:
            raise ValueError(f"config: {cfg} cannot fit sm_{arch}'s {lim} B of shared memory")
    if out == cfg:
        return cfg, None
    return out, (f"fused-MoE tile {moe_tile_str(cfg.as_dict())} needs {moe_gemm_smem(cfg, dtype):,} B of shared memory, "
                 f"over sm_{arch}'s {lim:,} B; using {moe_tile_str(out.as_dict())} ({moe_gemm_smem(out, dtype):,} B)")


def moe_domain(arch: int | None = None):
    """Every input class :func:`plan_moe` distinguishes (for ``sm12x budget`` and the tests);
    ``arch`` given: only the dtypes that arch runs."""
    for dtype in MOE_DTYPES:
        if dtype == "nvfp4_w4a4" and arch not in (120, 121):
            continue
        for name, (e, topk, hidden, inter) in MOE_SHAPES.items():
            for tokens in MOE_TOKEN_BUCKETS:
                for n, k in ((2 * inter, hidden), (hidden, inter)):      # gate_up, down
                    yield dict(dtype=dtype, num_experts=e, n=n, k=k, tokens=tokens, top_k=topk,
                               block_shape=[128, 128] if dtype == "fp8_w8a8_block" else None)
