"""SM12x kernels for SGLang: NVFP4/FP8 KV cache, paged attention and MoE within a 99 KB shared-memory
budget. This package never imports sglang; the plugin lives in ``sglang_sm12x``."""

__version__ = "0.1.0"
