"""One decode launch per KV format, for Nsight Compute:

    ncu --section SpeedOfLight --section WarpStateStats -k regex:decode_split -c 3 \\
        python benchmark/profile_decode.py
"""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from attention import DEV, make_pool  # noqa: E402

from sgl_kernel_sm12x.attention.decode import decode_attention  # noqa: E402


def main():
    batch, ctx, hq, hkv, d = 128, 4096, 32, 8, 128
    seq = torch.full((batch,), ctx, dtype=torch.int32, device=DEV)
    indptr = torch.arange(batch + 1, dtype=torch.int32, device=DEV) * ctx
    indices = torch.arange(batch * ctx, dtype=torch.int32, device=DEV)
    q = torch.randn(batch, hq, d, device=DEV, dtype=torch.bfloat16)
    for kv in sys.argv[1:] or ["bf16", "fp8_e4m3", "nvfp4"]:
        pool = make_pool(kv, batch * ctx, hkv, d)
        for _ in range(2):
            decode_attention(q, pool["k_cache"], pool["v_cache"], indptr, indices, seq, kv_dtype=kv,
                             k_scale_cache=pool.get("k_scale_cache"), v_scale_cache=pool.get("v_scale_cache"),
                             k_scale=pool.get("k_scale", 1.0), v_scale=pool.get("v_scale", 1.0), check_slots=False)
        torch.cuda.synchronize()


if __name__ == "__main__":
    main()
