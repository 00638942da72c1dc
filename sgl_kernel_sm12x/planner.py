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

HEAD_DIMS = (64, 128, 256)
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
    return AppendConfig(block_rows=max(1, elems // head_dim), num_warps=warps, hw_fp8=hw_fp8)


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
GQA_GROUPS = (1, 2, 4, 8, 16)          # q heads per kv head
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
    """(block_n, num_warps, num_stages, maxnreg) for the split stage, from the sweeps in
    benchmark/results/*tune-attention*.json (32/8 heads, D128, 128 x 4k and 1 x 32k):

    * bf16/fp16: 64-token tiles, 4 warps, 2 stages (H200 4218 GB/s; H100 3005 GB/s, the copy
      ceiling; 128-token tiles within 3%).
    * fp8_e4m3: 64-token tiles, 4 warps, 3 stages (H200 1841 GB/s vs 1335 with 2 stages; H100
      2216 GB/s). 128-token tiles measured faster on the H200 but spill 8 B at 255 registers on
      sm_90: not taken. The register prefetch of the NVFP4 formats is slower here (H100 1873 vs
      2216 GB/s): the loop pipeliner already stages these tiles through shared memory.
    * NVFP4 V (nvfp4, fp8k_nvfp4v): 2 warps, register prefetch of the next raw tile (the inline-PTX
      decode keeps the pipeliner away), stages irrelevant (1). H100, after the 32-bit-word tile
      decode: nvfp4 64-token tiles 600 us / 45.6 us (1006 / 827 GB/s) against 746 / 52.5 us for 32
      tokens on 4 warps; fp8k_nvfp4v 32-token tiles 592 / 44.7 us against 684 / 61.1 us (64 tokens
      on 2 warps: 906 us). One warp or 128-token tiles on 2 warps spill. 32 tokens at head_dim 64
      (no sweep there; keeps the programs small); 4 warps at head_dim 256 before sm_89.
    * head_dim 256 halves the token tile (registers).
    * sm_90, bf16/fp16 at head_dim 128: 128-token tiles on 4 warps, 3 stages (72 KB of shared
      memory, ~200 registers: two programs a multiprocessor) at 64-256 and from 1,024 (request,
      KV head) rows. H100, heads-inner grid, against the 64-token tile in the same runs
      (``...-tune-attention.log``, 2026-11-27): 128 x 4k 696 against 708 us, 128 x 8k 1,382 /
      1,413, 256 x 4k 1,384 / 1,407, 256 x 1k 354 / 366; at 64-256 rows with the split count
      rounded down to about two waves (:func:`_triton_splits`), measured with 2 stages: 16 x 32k
      685 / 700, 16 x 8k 177 / 181, 16 x 4k 92 / 95, 8 x 32k 348 / 354, 32 x 8k 344 / 351, 32 x 32k
      1,365 / 1,393. Stages: 2 at 64-256 rows with page size 1 -- one process on an H100 with
      FlashInfer beside it (``...-tune-decode-stages.log``, 2026-11-27), 2 against 3 stages at the
      planned split counts: 8 x 32k 346 / 354 us, 16 x 32k 691 / 701, 32 x 32k 1,367 / 1,390
      (FlashInfer 351 / 694 / 1,377); an earlier pair of sweeps had 2 stages 1.6% faster and 0.2%
      slower at 16 x 32k. 3 stages from 1,024 rows (3 / 2 stages in the same log: 128 x 4k 694 /
      698, 128 x 8k 1,380 / 1,396, 256 x 4k 1,382 / 1,380) and for paged pools: 2 stages spill 4 B
      in the paged one-split bf16 variant on sm_90 (AOT). 8 warps measured up to 1% faster from
      1,024 rows but spill 8 B in the one-split variant. Below 64 rows (batch 1 - 7) the 64-token
      tile's many splits win (1 x 8k 12.5 against 13.7 us): those keep it.
    * sm_90, the same pools, 512-1,023 rows with page size 1 (measured at 512: 64 requests x 8 KV
      heads): the 128-token tile on 8 warps, 2 stages, one split, registers capped at 128. Left to
      itself ptxas gives the one-split variant 64 registers and an 8-byte spill (96: 4 bytes; 128:
      none, AOT). H100, one process, FlashInfer timed around each configuration
      (``...-tune-decode-stages.log``), 64 x 1k / 4k / 8k / 32k: 95.9 / 352.7 / 694.6 / 2,767 us
      against 92.0 / 347.9 / 693.1 / 2,802 for the 64-token tile on 4 warps (the rule before) and
      FlashInfer 98.8 / 356.7 / 706.7 / 2,799 -- the 64-token tile was at FlashInfer's time at 32k
      (0.998 - 1.011 in the day's runs), the capped tile is 0.971 - 0.989 of it at all four, 4%
      slower than the 64-token tile at 1k. The uncapped (spilling) variant measured 94.6 / 349.2 /
      689.2 / 2,743. Paged pools (not measured here) keep the 64-token tile.
    * Splits of at least 128 tokens (``min_split_tokens``; the batch-derived ``max_splits`` caps
      them at larger batch): at batch 1 on an H100, with the planned tiles, 128 beat 256 at every
      length swept -- bf16 1k / 4k / 8k 7.5 / 9.7 / 11.8 us against 10.0 / 11.4 / 13.7, nvfp4
      11.8 / 14.1 / 16.4 against 17.6 / 18.3 / 22.9
      (``2026-11-26-nvidia-h100-80gb-hbm3-tune-decode-batch1.json``).
    Shared memory and registers per configuration are checked by `sm12x budget --kernel decode`.
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
    """Split count of the Triton split stage: enough programs for about two waves of the
    multiprocessors, rounded up to a power of two -- or down, for the 128-token 16-bit tile on
    sm_90 (two programs a multiprocessor: 16 x 8 rows on 132 SMs, 2 splits 685 us at 32k against
    728 at 4; 8 x 8 rows, 4 splits 348 against 369 at 8)."""
    if round_down:
        return min(1 << max(0, (2 * sms // max(1, rows)).bit_length() - 1), _TRITON_SPLITS)
    want = max(1, -(-2 * sms // max(1, rows)))
    return min(1 << (want - 1).bit_length(), _TRITON_SPLITS)


def _check_splits(max_splits: int) -> None:
    if max_splits < 1 or max_splits & (max_splits - 1) or max_splits > MAX_SPLITS_CAP:
        raise ValueError(f"max_splits={max_splits} must be a power of two in [1, {MAX_SPLITS_CAP}]")


def _plan_decode_fp4_mma(lim, head_dim, group, batch, kv_heads, max_splits, num_sms) -> DecodeConfig:
    """NVFP4 pools on sm_89+ (the UE4M3 scales use the hardware fp8 conversion): the one-warp
    kernel that decodes each K/V tile straight into ``mma.sync`` operand registers
    (:mod:`sgl_kernel_sm12x.attention.decode_nvfp4`), token tiles of :func:`fp4_mma_block_n`, the
    raw words of the next tile prefetched into registers, about 8 programs per multiprocessor, and
    the grid in (KV head, request, split) order. H100 sweep (32/8 heads, D128,
    ``...-tune-decode-fp4-mma.json``), against the Triton kernel as planned before in the same run:
    128 x 4k 273-279 us (595), 64 x 8k 266 (592), 16 x 4k 43 (84), 1 x 32k 28 (45), 1 x 1k 8.7
    (11.3). Splits may go to 256 here (the reduce reads them in chunks of 64): at 1 x 32k, 128
    splits 24.5 us against 28.0 at 64 and 34.8 at 256; the price at short contexts, where most of
    them are empty, is 1 x 8k 15.0 against 12.8 us at 64 (``...-tune-decode-fp4-mma-splits.json``).
    Grid order: a program reads one KV head's 72 of the 576 bytes of a token (data and scales);
    with the requests innermost, the eight heads of a token were read by programs launched
    batch-size apart, in different waves at batch 256 -- 256 x 4k 702 us (57% of the copy
    ceiling). With the heads innermost the 8 reads of a token's rows come close together: 489 us,
    and 128 x 4k 261 -> 256 us (H100, 32-token tiles, 2026-11-27). Where the grid overflows one
    wave of resident programs (:func:`fp4_mma_resident`), the split count may double or quadruple
    so that the last wave is not a few warps a multiprocessor (:func:`_fp4_mma_wave_splits`; with
    the heads-inner grid and 32-token tiles, 256 x 4k: 1 split (1.29 waves) 547 us, 2 splits 496,
    4 splits 531; with 64-token tiles (8 resident, 1.94 waves at 1 split) 473 / 490 / 523, where
    the model keeps 1). Not at head_dim 256 with more than 8 query heads a KV head: 16 x 256 fp32
    accumulators a thread spill there (AOT, sm_89 .. sm_121)."""
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
    """Token tile of the one-warp NVFP4 decode kernel: 64 where the kernel holds it without spills
    (head_dim 64 / 128 with up to 8 query heads a KV head: 160-168 / 225-246 registers on sm_89 ..
    sm_121, AOT), 32 at 16 heads (64 spills 12-72 B there), 16 at head_dim 256 (32 spills). H100,
    heads-inner grid, 64 against 32 tokens in one run (``...-tune-attention.log``, 2026-11-27):
    128 x 4k 232 / 256 us, 128 x 8k 464 / 506, 256 x 4k 473 / 496, 64 x 8k 234 / 259, 16 x 32k
    240 / 261, D64 128 x 4k 141 / 168; at batch 16 x 1k and 64 x 1k, where 32 is 1-5 us faster,
    the difference is a few microseconds."""
    if head_dim == 256:
        return 16
    return 64 if heads_n == 8 else 32


def fp4_mma_resident(head_dim: int, heads_n: int) -> int:
    """One-warp NVFP4 decode programs resident per multiprocessor (65,536 registers, sm_89 ..
    sm_121): 65,536 / (32 x the kernel's registers, in steps of 8), from the planned
    configurations' AOT register counts on sm_89 .. sm_121 (`sm12x budget`; the sm_120/121 ones
    checked by tests/test_budget.py): 64-token tiles at head_dim 64 160-168 registers and at 128
    225-246 (GQA <= 8); 32-token tiles at GQA 16 128-168 (D64) and 215-236 (D128); head_dim 256
    (16 tokens) 224-236. The tile is :func:`fp4_mma_block_n`'s."""
    if head_dim == 64:
        return 12
    if head_dim == 128:
        return 8 if heads_n == 8 else 9
    return 8


def _wave_cost(programs: int, per_sm: int, sms: int) -> float:
    """Time of ``programs`` equal, memory-bound programs in units of one program's time at full
    bandwidth: whole waves of ``per_sm`` a multiprocessor, then the last partial wave, which takes
    as long as ``5 / 8 per_sm`` programs would even when fewer run -- too few warps to keep the
    memory system busy. Calibrated on the H100 (12 resident, D128) before the heads-inner grid:
    1,024 programs (7.8 a multiprocessor, one wave) 77% of the copy ceiling, 2,048 (12 + 3.5) 54%.
    With that grid the tail costs less (256 x 4k, 32-token tiles: 1.10x the 2-split time where
    this model says 1.24x); it still picks the faster split count at the measured points."""
    full, tail = divmod(programs, per_sm * sms)
    return full * per_sm + (max(tail / sms, per_sm * 5 / 8) if tail else 0)


def _fp4_mma_wave_splits(rows: int, splits: int, sms: int, per_sm: int) -> int:
    """``splits`` unless the grid (``rows`` x ``splits`` programs) overflows one wave: then the
    split count among ``splits`` x {1, 2, 4} with the least modelled time (:func:`_wave_cost`,
    work a program ~ 1 / splits), a larger one only where it saves more than 5% -- the tail
    wave of a grid just over a whole number of waves runs with a few warps a multiprocessor
    (H100, 32-token tiles, 12 resident: 128 x 8 heads 1 split; 256 x 8 2 splits instead of 1.29
    waves)."""
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

    def as_dict(self):
        return asdict(self)


@functools.lru_cache(maxsize=4096)      # called on every extend launch: the host path is part of prefill latency
def plan_extend(arch: int, *, head_dim: int, kv_dtype: str, q_dtype: str = "bf16", group: int = 1,
                page_size: int = 1, prefix: bool = True, window: bool = False, gluon: bool = True,
                short: bool = False) -> ExtendConfig:
    """Tiles for the extend kernel, chosen from AOT compiles for sm_120 (registers are the binding
    limit there, not shared memory; ``sm12x budget --kernel extend`` shows every choice).

    GQA packing (``pack``): with a quantized cache (FP8 / NVFP4 prefix), up to 4 query heads of a KV
    group share a program's rows (at least 16 tokens a program), so each prefix tile is dequantized
    once for all of them instead of once per query head -- that dequantization costs about as much
    as the tile's MMAs. 16-bit caches keep one head a program in the Triton kernel (packed bf16 D128
    tiles spill 24 B on sm_120, AOT, and there is no dequantization to share); sm_90's
    warpgroup-MMA kernel packs them too (each copied tile shared).

    * 232 KB parts (sm_90/100), from benchmark/results/*tune-extend.json (H200, D128, 32/8 heads):
      bf16/fp16 D128 128 x 128 on 8 warps, 3 stages (H100, with whole tiles unmasked: 1.17-1.33x
      the 64 x 64 one, 323-376 TFLOP/s), other head dims 64 x 64 on 4 warps, 3 stages;
      fp8 128 x 128 on 8 warps, 3 stages at D128 on sm_90 (with the 5-stage prefix loop 272-364
      TFLOP/s at a 4k prefix, 1.05-1.10x of 2 stages), else 2; nvfp4 D128 with 4 heads packed
      128 x 128 on 8 warps, 3 stages (H100, after
      the word decode: 199-247 TFLOP/s, 0.68-0.69x of bf16 with a 4k prefix; the faster 4-warp
      128 x 64 tile spills ~1 KB), else 128 x 64 on 8 warps. D256: 64 x 32 on 8 warps.
    * 101 KB parts (sm_86/89/120/121; sm_80 uses the same):
      - D64: 64 x 64 on 4 warps (24 KB, ~180 registers); fp8k_nvfp4v 32-key tiles (see
        ``_extend_tile``).
      - D128: 64 x 64 on 8 warps (3 stages on sm_120/121 for bf16/fp16: 90.6 KB, 142 registers;
        2 stages elsewhere, 56 KB). 4 warps reach 255 registers and spill 72-104 B: the
        accumulator (64 x 128 fp32) alone is 64 registers a thread there.
      - D128 nvfp4: 64 x 32 on 8 warps (3 stages on sm_120/121) -- the even/odd halves double the
        live Q and accumulator fragments; 64-token tiles spill 24-264 B.
      - D256: 64 x 32 on 8 warps (68-86 KB); nvfp4 32 x 32 on 8 warps (58 KB, 216 registers).
      - sm_80 nvfp4 (UE4M3 scales decoded in software): D128 64 x 32 on 8 warps only with 4 heads
        packed, else 32 x 32; D256 32 x 32 on 8 warps.
    * Pipeline depth of the prefix loop (``prefix_stages``) and row-block order (``heavy_first``):
      see the comments in the body.
    * sm_90 at head_dim 128 with a prefix to read (``wgmma``): the Gluon kernel of
      :mod:`.attention.extend_wgmma` for NVFP4 pools with 4 query heads a KV group packed and for
      16-bit pools (up to 4 packed), unless ``window`` (a sliding window) or not ``gluon`` (no
      device to run it: the Triton interpreter; pools over 2^31 bytes).
    """
    lim = _check_attention(arch, head_dim, kv_dtype, q_dtype, group, page_size)
    cfg = _extend_tile(lim, head_dim, kv_dtype, group)
    quant = kv_dtype not in ACT_DTYPES      # an fp8 / nvfp4 pool (16-bit pools hold q's dtype)
    if prefix and (lim.cc == 90
                   or lim.cc in (120, 121) and head_dim == 128 and kv_dtype in ("bf16", "fp16", "nvfp4")):
        # the prefix loop's K/V addresses come from a load (the slot ids), so Triton's pipeliner
        # splits its stages between the two loads: at 2-3 stages each tile is issued one iteration
        # ahead, after the MMAs, and waited for at once (no overlap); 5 stages keep one tile in
        # flight. H100 (...-tune-extend-stages.log): bf16 4k prefix +5-8%, fp8 +4-10%; the
        # sm_120 tiles' code on the H100 with mma.sync (DISABLE_MMA_V3) +5-10%. AOT: 164-230 KB
        # on sm_90, 53-91 KB on sm_120/121, no spills (the packed NVFP4 128 x 128 tile of sm_90
        # spilled 28 B until the chunk phase stopped splitting its K/V into even / odd halves);
        # not sm_100 (bf16 D128 spills 20-56 B). ``prefix`` False (the host
        # knows nothing is cached): the prefix loop never runs and its deeper pipeline cost the
        # chunk phase 1-7% on the H100 (different register allocation), so it is left out.
        cfg = replace(cfg, prefix_stages=5)
        if lim.cc == 90 and head_dim == 128 and kv_dtype in ("bf16", "fp16", "nvfp4"):
            # once the diagonal joined the whole-tile loop (H100, ...-tune-extend.log, machine 7):
            # bf16 128 x 128 4 stages 1.02-1.04x of 5 with a 4k prefix; the packed NVFP4 tile 6
            # stages 1.01-1.02x at 4k + 1k (equal at 4k + 8k); 4-8 tried
            cfg = replace(cfg, prefix_stages=6 if kv_dtype == "nvfp4" else 4)
    # causal row blocks longest first: H100, 16-bit, no prefix, 1.02-1.06x (a long tail of short
    # blocks instead of long ones), neutral with a 4k prefix. 16-bit pools only -- quantized pools'
    # fresh prefills run the 16-bit launch anyway, and the reordering moves some of their tiles
    # into spills (AOT: sm_90 packed NVFP4 128 x 128 32 B, fp8k_nvfp4v D256 8-40 B on sm_90/120/121)
    cfg = replace(cfg, heavy_first=not quant)
    if not prefix and not quant:
        # nothing cached: the kernel is compiled without its prefix phase. H100 bf16
        # (...-tune-extend.log, machine 3): 1.07-1.14x at 1 x 0 + 8k, 2 x 0 + 4k, 4 x 0 + 2k (the
        # prefix loop's code, never run, had still cost the chunk phase its registers / schedule).
        # 16-bit pools only: the launcher runs a quantized pool's prefix-less call on the 16-bit
        # plan anyway, and the quantized kernels without the prefix phase spill 4-24 B on sm_120
        # (ptxas allocates them differently)
        cfg = replace(cfg, prefix_loop=False)
    if (lim.cc in (86, 89) or lim.cc == 100 and prefix) and head_dim == 128 and not quant:
        # the second (select-free) loop body spills 4 B at 64 x 32 on 8 warps on sm_86/89, and
        # 24-28 B at 128 x 128 with the prefix loop on sm_100 (AOT)
        cfg = replace(cfg, unmasked=False)
    if quant and not (lim.cc == 90 or lim.cc in SM12X and head_dim < 256):
        # the chunk phase's select-free loop with a quantized pool: AOT-checked on sm_90/120/121;
        # it spills 8-12 B at head_dim 256 on sm_120/121 (fp8 paged 64 x 32, fp8k_nvfp4v 32 x 32),
        # 4-88 B on sm_100 (nvfp4) and sm_86 (fp8k_nvfp4v D128 32 x 32)
        cfg = replace(cfg, unmasked=False)
    if prefix and quant and cfg.unmasked and head_dim < 256:
        # whole prefix tiles of quantized pools select-free too: H100 (...-tune-extend.log)
        # nvfp4 1.04-1.11x, fp8 1.06-1.11x at a 4k prefix; the sm_120 nvfp4 tile's code on the
        # H100 with mma.sync 1.04-1.06x (only sm_90/120/121 keep the select-free quantized loop,
        # above). AOT: no spills on sm_90/120/121 below head_dim 256 (the
        # sm_90 D256 tiles spill 12-104 B with it)
        cfg = replace(cfg, quant_prefix_unmasked=True)
    if lim.cc == 90 and cfg.unmasked:
        # the causal diagonal tiles as the last iterations of the whole-tile loop (masked by a
        # branch): a loop of their own filled its own software pipeline and waited for its one
        # tile. H100 (...-tune-extend.log): bf16 1.03-1.06x at all six attention.py shapes,
        # nvfp4 1.04-1.06x, fp8 1.02-1.05x at a 4k prefix. sm_120 bf16 D128 spills 12 B with it.
        cfg = replace(cfg, diag_in_loop=True)
    pack = _gqa_pack(group, cfg.block_m) if quant else 1
    if prefix and gluon and not window and lim.cc == 90 and head_dim == 128 and kv_dtype == "nvfp4" and pack == 4:
        # the Gluon kernel with the tile decode overlapped with the warpgroup MMAs (decode while
        # the previous tile's PV runs, slot ids two tiles ahead, whole tiles select-free): H100
        # (...-tune-extend-fp4-wgmma.log) 1 x 4k + 1k 0.274-0.287 -> 0.257-0.263 ms, 8 x 4k + 1k
        # 1.97-2.02 -> 1.84-1.88, 1 x 4000 + 1k 0.28 -> 0.26; 1 x 4k + 8k (half the work in the
        # chunk's own keys) 2.89-2.96 -> 2.99-3.02. AOT: 196 KB, 255 registers, no spills (Triton
        # 3.6 and 3.8). Warp-specialized (``warp_spec``: a fourth warpgroup decodes, the two MMA
        # warpgroups only wait for its mbarriers), same process (...-tune-extend-warp-spec.log):
        # 1 x 4k + 1k 0.226 -> 0.204-0.206 ms, 8 x 4k + 1k 1.62-1.65 -> 1.45-1.48, 1 x 4k + 8k
        # 2.72-2.76 -> 2.54-2.61, against bf16 0.202 / 1.363 / 2.344. AOT: 229,444 B, no spills
        cfg = ExtendConfig(128, 128, 8, 1, cfg.hw_fp8, wgmma=True)
    if prefix and gluon and not window and lim.cc == 90 and head_dim == 128 and kv_dtype in ACT_DTYPES:
        # 16-bit pools: the same kernel, prefix tiles copied by cp.async in FlashAttention-3's order,
        # 4 query heads a program sharing each K / V tile. H100, one process with FlashInfer
        # (...-tune-extend-wgmma16.log), against the Triton plan: 1 x 4k + 1k 0.213 -> 0.202 ms,
        # 8 x 4k + 1k 1.495 -> 1.372, 1 x 4k + 8k 2.530 -> 2.322. Two copy buffers a tensor (a copy
        # issued one tile ahead, 160 KB) rather than three (two ahead, 224 KB): three measured
        # 0.198 / 1.486 / 2.705 ms in that sweep but 0.200 / 1.396 / 2.364 in a full attention.py
        # run (two: 0.204 / 1.361 / 2.376 in the next), so no clear winner and the smaller one.
        # One head a program 0.196 / 1.401 / 2.315; 64-key tiles 1.1-1.3x slower. AOT: 160 KB,
        # 233-255 registers, no spills
        pack = min(group, 4)
        cfg = ExtendConfig(128, 128, 8, 2, cfg.hw_fp8, wgmma=True)
    if short and not prefix and not quant and lim.cc == 90 and head_dim == 128:
        # nothing cached and no chunk longer than SHORT_CHUNK tokens: 64 x 64 tiles on 4 warps with
        # up to 4 query heads a program (16 tokens), against 128 x 128 on 8 warps. H100, one
        # process with FlashInfer (...-tune-extend-short-chunk.log): 8 x 0 + 1k 0.238 -> 0.218 ms
        # (FlashInfer 0.159); at 4 x 0 + 2k the 128-row tile stays ahead (0.378 against 0.382-0.387)
        cfg = replace(cfg, block_m=64, block_n=64, num_warps=4, num_stages=3)
        pack = _gqa_pack(group, cfg.block_m)
    return replace(cfg, pack=pack)


def _gqa_pack(group: int, block_m: int) -> int:
    """Query heads of one KV group packed into a program's rows: up to 4, dividing the group, with
    at least 16 tokens a program."""
    pack = min(group, 4)
    while pack > 1 and (group % pack or block_m // pack < 16):
        pack //= 2
    return pack


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
        # measured wrong on an H100 (Triton 3.6) at 64-key tiles in the fp16 MMA path: 64 x 64 on 4
        # warps and 128 x 64 on 4 or 8 (every other format at these tiles, and this one at 32-key
        # tiles or on 8 warps at 64 x 64, right); 32-key tiles everywhere for this format
        return ExtendConfig(128, 32, 8, 3, hw_fp8) if lim.smem_per_block >= 200_000 else \
            ExtendConfig(64, 32, 4, 2, hw_fp8)
    if lim.smem_per_block >= 200_000:
        if head_dim == 256:
            return ExtendConfig(64, 32, 8, 2 if fp4 else 3, hw_fp8)
        if kv_dtype == "nvfp4" and head_dim == 128 and group % 4 == 0 and lim.cc == 90:
            # H100 sweep after the 32-bit-word tile decode: 128 x 128 (pack 4) 10-19% faster than
            # 128 x 64; 255 registers, no spills with 4 heads packed (8 B with 2; the 4-warp
            # 128 x 64, faster still, spills ~1 KB); sm_100 spills 40 B at 128 x 128 (AOT)
            return ExtendConfig(128, 128, 8, 3, hw_fp8)
        if fp4:
            return ExtendConfig(128, 64, 8, 3, hw_fp8)
        if kv_dtype == "fp8_e4m3":
            # H100, 4-warp-group tiles with the 5-stage prefix loop: 3 stages 1.05-1.10x of 2
            # (272-364 TFLOP/s at a 4k prefix, ...-tune-extend-stages.log)
            return ExtendConfig(128, 128, 8, 3 if head_dim == 128 and lim.cc == 90 else 2, hw_fp8)
        if head_dim == 128:
            # H100 sweep with whole tiles unmasked: 128 x 128 on 8 warps, 3 stages 1.17-1.33x the
            # 64 x 64 one (322-376 TFLOP/s at 8k chunk)
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
        return ExtendConfig(64, 64, 4, 2, hw_fp8)
    if head_dim == 128:
        # bf16 / fp16 / nvfp4: 3 stages keep one chunk tile in flight (2 stages allot one buffer:
        # load and MMAs alternate). On the H100 with mma.sync, the sm_120 tiles as planned for it,
        # with the 5-stage prefix loop: bf16 64 x 64 1.07-1.08x of 2 stages, nvfp4 64 x 32 (pack 4)
        # 1.05-1.10x. AOT sm_120: 90.6 KB / 142 registers, 53 KB / 240, no spills. fp8 likewise
        # 1.09-1.14x with 3 stages (...-tune-extend.log; 90 KB, 166-196 registers); nvfp4
        # at 64 x 64, faster still there, spills 96-188 B on sm_120.
        stages = 3 if kv_dtype in ("bf16", "fp16", "nvfp4", "fp8_e4m3") and lim.cc in (120, 121) else 2
        return ExtendConfig(64, 32 if fp4 else 64, 8, stages, hw_fp8)
    return ExtendConfig(32 if fp4 else 64, 32, 8, 2, hw_fp8)


def extend_domain():
    for head_dim in HEAD_DIMS:
        for kv_dtype in KV_DTYPES:
            for q_dtype in ACT_DTYPES:
                if kv_dtype in ("bf16", "fp16") and kv_dtype != q_dtype:
                    continue
                for page_size in (1, 16):     # the kernel specializes on paged or not; 16 stands for > 1
                    # the group matters through the GQA packing (1, 2 or 4 heads a program) alone
                    # (16-bit pools pack only in sm_90's warpgroup-MMA kernel)
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

MOE_DTYPES = ("bf16", "fp16", "fp8_w8a8", "fp8_w8a8_block")
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
    routed ``top_k`` ways over ``num_experts``.

    Rules, each bounded by the arch's shared memory (checked by ``sm12x budget --kernel moe``), from
    the neighbourhood sweep of sm_120's tiles timed on an H100
    (``benchmark/results/2026-11-26-nvidia-h100-80gb-hbm3-tune-moe.json``):

    * BLOCK_M follows the expected rows per expert ``tokens * top_k / E``: 16 up to 16 rows
      (decode: most of the tile would be padding otherwise), 32 below 64, 64 at 64; above that
      128 for 16-bit operands (the sweep: 128 beat 64 by 4-20% at 128-512 rows) and 64 for
      per-tensor fp8 (128 was not faster there). Block-fp8, not swept yet, keeps 64 up to 512
      rows and 128 above.
    * BLOCK_K is 64 for 16-bit and 128 for fp8 operands (128 B of K per row either way), doubled
      for BLOCK_M 16 (few rows: a longer K step per load was 3-7% faster); block-fp8 keeps
      BLOCK_K a divisor of the quantization group (128), so one scale per K step.
    * BLOCK_N 64 up to 64 rows per expert (more programs when there are few rows; at 64 rows
      64 x 64 was the sweep's best for bf16 and fp8), else 128; block-fp8
      keeps 64: its per-K-step partial product doubles the accumulator registers (64 x 128 sat at
      255 registers and 128 x 128 spilled on sm_120, AOT).
    * 4 warps, 8 for 128 x 128 tiles and block-fp8 128 x 64 (254 registers at 4 warps); stages: 4
      (3 for 16-bit 128-row tiles, the sweep's best), one more where the arch has >= 160 KB of
      shared memory, then fewer until the tiles fit.
    * wgmma archs (sm_90: 227 KB of shared memory, accumulators of warpgroup MMAs): above 64 rows per
      expert a 128 x 256 tile, 8 warps, 4 stages (BLOCK_K 64 for 16-bit, 128 for fp8: 192 / 196 KB),
      and block-fp8 64 x 128 on 4 warps (also at 1,024 rows: 10% faster than 128 x 128 on the
      Mixtral shape) -- the tiles SGLang's tuned H100 / H200 tables settle on at these row counts;
      sm_120/121 cannot hold them. fp8 at 16-64 rows (H100 sweep,
      ``2026-11-26-nvidia-h100-80gb-hbm3-tune-moe-sm90-fp8.json``): 64-row tiles, so the MMA is a
      warpgroup one (mma.sync below 64 rows) -- block 64 x 64 x 128 / 3 stages (0.78-0.98x of the
      planned tile's time on Mixtral and Qwen3), per-tensor 64 x 128 x 256 / 4 stages where N and
      K >= 4,096 (0.80x on Mixtral); at 64 rows with N and K >= 4,096 128 x 128 x 128 on 8
      warps, 3 stages (0.81x).
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


def moe_domain():
    """Every input class :func:`plan_moe` distinguishes (for ``sm12x budget`` and the tests)."""
    for dtype in MOE_DTYPES:
        for name, (e, topk, hidden, inter) in MOE_SHAPES.items():
            for tokens in MOE_TOKEN_BUCKETS:
                for n, k in ((2 * inter, hidden), (hidden, inter)):      # gate_up, down
                    yield dict(dtype=dtype, num_experts=e, n=n, k=k, tokens=tokens, top_k=topk,
                               block_shape=[128, 128] if dtype == "fp8_w8a8_block" else None)
