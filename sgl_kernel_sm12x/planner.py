"""Per-arch limits and the tile planner.

Every kernel of this package takes its launch configuration from a pure function here, keyed by the
compute capability (never the device name). ``sm12x budget`` compiles, ahead of time, every
configuration these functions can return, for each arch, and checks it against :data:`ARCH_LIMITS`
with no slack. The *domain* functions enumerate each planner's full input space, so the set the
budget checker compiles is exactly the planner's image (tests assert that).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Iterable

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


def current_arch(device=None) -> int:
    """Compute capability of the current CUDA device as an int (``(12, 0)`` -> 120)."""
    import torch
    if not torch.cuda.is_available():
        raise RuntimeError("no CUDA device; pass arch= explicitly")
    major, minor = torch.cuda.get_device_capability(device)
    return major * 10 + minor


# --------------------------------------------------------------------------------------------------
# Domains shared by the kernels
# --------------------------------------------------------------------------------------------------

HEAD_DIMS = (64, 128, 256)
KV_DTYPES = ("bf16", "fp16", "fp8_e4m3", "nvfp4")     # storage formats of the KV pool
ACT_DTYPES = ("bf16", "fp16")                          # activations (q, new k/v)
# SGLang's --kv-cache-dtype names -> storage format (auto follows the model dtype)
KV_DTYPE_ALIASES = {"auto": None, "bfloat16": "bf16", "bf16": "bf16", "float16": "fp16", "fp16": "fp16",
                    "fp8_e4m3": "fp8_e4m3", "fp8": "fp8_e4m3", "nvfp4": "nvfp4"}


def _check(name: str, value, supported: Iterable):
    supported = tuple(supported)
    if value not in supported:
        raise ValueError(f"{name}={value!r} is not supported; supported: {list(supported)}")


def normalize_kv_dtype(kv_dtype: str, act_dtype: str = "bf16") -> str:
    """Map SGLang's ``--kv-cache-dtype`` spelling to a storage format of :data:`KV_DTYPES`."""
    _check("kv_dtype", kv_dtype, KV_DTYPE_ALIASES)
    return KV_DTYPE_ALIASES[kv_dtype] or act_dtype


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
    _check("kv_dtype", kv_dtype, KV_DTYPES)
    _check("act_dtype", act_dtype, ACT_DTYPES)
    elems, warps = _APPEND_TILE.get(kv_dtype, _APPEND_TILE["copy"])
    # sm_80 has no FP8 conversion instruction; there the software encoder (same bits) runs
    hw_fp8 = kv_dtype == "fp8_e4m3" and arch >= 89
    return AppendConfig(block_rows=max(1, elems // head_dim), num_warps=warps, hw_fp8=hw_fp8)


def kv_append_domain():
    """Every input the append planner accepts (besides arch)."""
    for head_dim in HEAD_DIMS:
        for kv_dtype in KV_DTYPES:
            for act_dtype in ACT_DTYPES:
                yield dict(head_dim=head_dim, kv_dtype=kv_dtype, act_dtype=act_dtype)
