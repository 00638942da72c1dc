"""KV-cache formats, named once: what the planner, the launchers and the kernels switch on.

A pool stores K and V each in one :class:`KVFormat`; a ``kv_dtype`` name (SGLang's spelling where
SGLang has one) picks the pair. Inside the kernels the formats are the constexprs ``FMT_PLAIN``,
``FMT_FP8`` and ``FMT_NVFP4`` (``attention/kv_tile.py``), compared with the ``K_MODE`` / ``V_MODE``
/ ``KV_MODE`` constexprs the launchers pass as ``int(fmt)``. The NVFP4 byte layout is stated in
:mod:`sgl_kernel_sm12x.nvfp4`.
"""
from __future__ import annotations

import enum
from types import MappingProxyType


class KVFormat(enum.IntEnum):
    PLAIN = 0   # bf16 / fp16 as stored: the activations' dtype
    FP8 = 1     # fp8_e4m3, one fp32 scale per tensor
    NVFP4 = 2   # e2m1 codes, one ue4m3 scale per 16 values, one fp32 scale per tensor


# kv_dtype -> (K format, V format). fp8k_nvfp4v keeps K in fp8 (its outlier channels are what NVFP4
# handles worst) and V in nvfp4; SGLang's pools cannot hold it, the kernels can.
KV_DTYPES = MappingProxyType({
    "bf16": (KVFormat.PLAIN, KVFormat.PLAIN),
    "fp16": (KVFormat.PLAIN, KVFormat.PLAIN),
    "fp8_e4m3": (KVFormat.FP8, KVFormat.FP8),
    "nvfp4": (KVFormat.NVFP4, KVFormat.NVFP4),
    "fp8k_nvfp4v": (KVFormat.FP8, KVFormat.NVFP4),
})
POOL_KV_DTYPES = tuple(n for n, (k, v) in KV_DTYPES.items() if k == v)    # one format for K and V
ACT_DTYPES = ("bf16", "fp16")                                             # activations (q, new k / v)
FP8_K = tuple(n for n, (k, _) in KV_DTYPES.items() if k == KVFormat.FP8)      # K stored as fp8_e4m3
FP4_V = tuple(n for n, (_, v) in KV_DTYPES.items() if v == KVFormat.NVFP4)    # V stored as nvfp4


def kv_formats(kv_dtype: str) -> tuple[KVFormat, KVFormat]:
    """``(K format, V format)`` of a ``kv_dtype`` name; ``ValueError`` naming the supported ones."""
    try:
        return KV_DTYPES[kv_dtype]
    except (KeyError, TypeError):
        raise ValueError(f"kv_dtype: {kv_dtype!r} is not supported; supported: {list(KV_DTYPES)}") from None
