"""Tiles for SGLang's own Triton kernels on small-shared-memory arches: the vision encoders'
``context_attention_fwd`` and the fused-MoE configs. Used by the version-keyed patches
(``patches/sglang-<version>/``) and the plugin's MoE config clamp; the limits come from the kernel
package's per-arch table."""
from __future__ import annotations

from sgl_kernel_sm12x.planner import arch_limits, moe_tile_str


def plan_context_attention(arch: int, head_dim: int, elem_bytes: int) -> tuple[int, int]:
    """``(BLOCK, num_warps)`` for SGLang's ``prefill_attention.context_attention_fwd`` (vision
    encoders), on arches with 101,376 B of shared memory (sm_86/89/120/121).

    SGLang picks BLOCK 128 on every arch after Ampere and 4 warps up to head_dim 64, 8 above; AOT
    compiled for sm_120 (Triton 3.8) that spills at every head_dim (88-940 B per thread, 255
    registers) and needs 131,072 B for fp32 inputs at head_dim 80-128 (327,680 B at 256). Rules
    below, from the sweep in ``benchmark/results/aot-sglang-sm120-sm121.json``; each
    keeps registers <= ~210 so the choice survives compiler drift:

    * 16-bit inputs: head_dim <= 64 -> 128 x 8 warps (32 KB, 182 regs); <= 128 -> 64 x 8 (40 KB,
      184 regs); 256 -> 32 x 4 (34 KB, 205 regs; 64 x 8 fits at 248 regs, too close to 255).
    * fp32 inputs: head_dim <= 32 -> 128 x 8; <= 64 -> 64 x 8 (32 KB); above -> 32 x 8 (36-68 KB).
    """
    lim = arch_limits(arch)
    d = 1 << max(int(head_dim) - 1, 0).bit_length()       # BLOCK_DMODEL = next power of two
    if elem_bytes not in (2, 4):
        raise ValueError(f"elem_bytes: {elem_bytes} is not supported; supported: [2, 4]")
    if lim.smem_per_block > 101376:                        # big-smem arches keep SGLang's choice
        return 128, (4 if head_dim <= 64 else 8)
    if elem_bytes == 2:
        if d <= 64:
            return 128, 8
        if d <= 128:
            return 64, 8
        return 32, 4
    if d <= 32:
        return 128, 8
    if d <= 64:
        return 64, 8
    return 32, 8


MOE_DTYPE_BYTES = {None: (2, 2), "bf16": (2, 2), "fp16": (2, 2), "fp8_w8a8": (1, 1), "int8_w8a8": (1, 1),
                   "int8_w8a16": (2, 1)}


def moe_smem_bytes(cfg: dict, dtype=None) -> int:
    """Shared memory of SGLang's ``fused_moe_kernel`` main loop: ``num_stages - 1`` buffered A and B
    tiles (Triton's software pipeline), the floor Triton allocates for a K loop.

    ``128 x 256 x 128`` fp8 at 4 stages -> 3 x (128*128 + 128*256) = 147,456 B, as AOT compiled.
    """
    a, b = MOE_DTYPE_BYTES.get(dtype, (2, 2))
    bm, bn, bk = cfg["BLOCK_SIZE_M"], cfg["BLOCK_SIZE_N"], cfg["BLOCK_SIZE_K"]
    stages = int(cfg.get("num_stages", 3))
    return max(stages - 1, 1) * (bm * bk * a + bk * bn * b)


def clamp_moe_config(arch: int, cfg: dict, dtype=None, block_shape=None, margin: int = 0):
    """A fused-MoE config that fits ``arch``: returns ``(config, reason)``; ``reason`` is None when
    ``cfg`` already fits. BLOCK_SIZE_M never changes (the up and down kernels share one token
    sort); stages go down first (to 2), then BLOCK_SIZE_N (block-quantized weights keep their
    group multiple), then BLOCK_SIZE_K (not below 16, or the quantization group for block fp8).
    The byte model equals Triton's allocation (AOT, sm_120, Triton 3.8) on every sampled config;
    ``margin`` can hold back more.
    """
    limit = arch_limits(arch).smem_per_block - margin
    out = dict(cfg)
    if moe_smem_bytes(out, dtype) <= limit:
        return out, None
    out.setdefault("num_stages", 3)
    min_n = 16
    min_k = 16
    if block_shape:
        min_k = max(min_k, min(int(block_shape[1]), out["BLOCK_SIZE_K"]))
    while moe_smem_bytes(out, dtype) > limit:
        if out["num_stages"] > 2:
            out["num_stages"] -= 1
        elif out["BLOCK_SIZE_N"] > min_n:
            out["BLOCK_SIZE_N"] //= 2
        elif out["BLOCK_SIZE_K"] > min_k:
            out["BLOCK_SIZE_K"] //= 2
        else:
            raise ValueError(f"fused-MoE config {cfg} cannot be clamped under {limit} B on sm_{arch}")
    reason = (f"fused-MoE config {moe_tile_str(cfg)} needs {moe_smem_bytes(cfg, dtype):,} B of shared memory, over "
              f"sm_{arch}'s {arch_limits(arch).smem_per_block:,} B; using {moe_tile_str(out)} "
              f"({moe_smem_bytes(out, dtype):,} B)")
    return out, reason
