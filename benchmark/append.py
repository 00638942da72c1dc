"""Append (quantize + scatter into the KV pool) bandwidth against the device copy ceiling.

    python benchmark/append.py [--tokens 65536] [--heads 8] [--head-dim 128] [--sweep]

Bytes counted per call: K and V read (tokens x heads x head_dim x 2 B each), slot ids read, and the
pool bytes written (bf16: 2 B/elem; fp8: 1 B/elem; nvfp4: 0.5 B/elem + 1 B per 16 elems).
``fraction_of_copy`` is the NVFP4 append at the largest size, slots as one contiguous run (what a
prefill chunk gets), over the copy ceiling of the same run; ``fraction_of_copy_random_slots`` is the
same with every token scattered to a random slot (partial-sector writes of the 8-byte scale rows).
Kernels are timed as CUDA-graph replays (no launch overhead), as a CUDA-graph server runs them.
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _harness import bench_ms, copy_ceiling_gbps, environment, write_json  # noqa: E402

from sgl_kernel_sm12x import planner  # noqa: E402
from sgl_kernel_sm12x.kv_append import append_kv  # noqa: E402


def _setup(kv_dtype, tokens, heads, d, slots, order):
    dev = "cuda"
    k = torch.randn(tokens, heads, d, device=dev, dtype=torch.bfloat16)
    v = torch.randn_like(k)
    if order == "random":      # worst case: every token lands on a random slot
        loc = torch.randperm(slots, device=dev)[:tokens]
    else:                      # what a prefill chunk gets from SGLang's allocator: one run of slots
        loc = torch.arange(tokens, device=dev) + (slots - tokens) // 2
    extra = {}
    if kv_dtype == "nvfp4":
        kc = torch.empty(slots, heads, d // 2, dtype=torch.uint8, device=dev)
        extra = dict(k_scale_cache=torch.empty(slots, heads, d // 16, dtype=torch.uint8, device=dev),
                     v_scale_cache=torch.empty(slots, heads, d // 16, dtype=torch.uint8, device=dev))
        out_bytes = heads * (d // 2 + d // 16)
    elif kv_dtype == "fp8_e4m3":
        kc = torch.empty(slots, heads, d, dtype=torch.uint8, device=dev)
        out_bytes = heads * d
    else:
        kc = torch.empty(slots, heads, d, dtype=torch.bfloat16, device=dev)
        out_bytes = heads * d * 2
    vc = torch.empty_like(kc)
    nbytes = tokens * (2 * heads * d * 2 + 2 * out_bytes + loc.element_size())
    return (k, v, loc, kc, vc), extra, nbytes


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, nargs="+", default=[1024, 16384, 65536])
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--head-dim", type=int, nargs="+", default=[128])
    ap.add_argument("--sweep", action="store_true", help="also time other block_rows / num_warps")
    ap.add_argument("--kv-dtype", nargs="+", default=["bf16", "fp8_e4m3", "nvfp4"])
    a = ap.parse_args()

    env = environment()
    copy = copy_ceiling_gbps()
    rows = [dict(provider="copy", kv_dtype="-", tokens=None, gbps=copy)]
    print(f"{env['device']}: copy ceiling {copy:.0f} GB/s (read + write)")
    arch = planner.current_arch()
    fractions = {}
    for d in a.head_dim:
        for kv in a.kv_dtype:
            for t, order in [(t, o) for t in a.tokens for o in ("contiguous", "random")]:
                args, extra, nbytes = _setup(kv, t, a.heads, d, 2 * t, order)
                cfgs = [None]
                if a.sweep and order == "contiguous":
                    cfgs += [planner.AppendConfig(e // d, nw) for e in (1024, 2048, 4096, 8192)
                             for nw in (2, 4, 8)]
                for cfg in cfgs:
                    fn = lambda: append_kv(*args, kv_dtype=kv, check_slots=False, config=cfg, **extra)  # noqa
                    p20, ms, p80 = bench_ms(fn, graph=True)
                    used = cfg or planner.plan_kv_append(arch, d, kv, "bf16")
                    gbps = nbytes / ms / 1e6
                    rows.append(dict(provider="sm12x", kv_dtype=kv, tokens=t, heads=a.heads, head_dim=d, slots=order,
                                     planned=cfg is None, config=used.as_dict(), ms=ms, p20_ms=p20, p80_ms=p80,
                                     bytes=nbytes, gbps=gbps, fraction_of_copy=gbps / copy))
                    print(f"D{d} {kv:<9} T={t:<6} {order[:6]} {'plan ' if cfg is None else 'sweep'} "
                          f"rows={used.block_rows:<4} warps={used.num_warps} {ms * 1e3:8.1f} us "
                          f"{gbps:7.0f} GB/s  {gbps / copy:5.2f} of copy")
                    if cfg is None and kv == "nvfp4" and t == max(a.tokens) and d == a.head_dim[0]:
                        fractions[order] = gbps / copy
    payload = {**env, "benchmark": "append", "copy_gbps": copy,
               "fraction_of_copy": fractions.get("contiguous"),
               "fraction_of_copy_random_slots": fractions.get("random"),
               "headline": f"nvfp4 append, head_dim {a.head_dim[0]}, {a.heads} heads, {max(a.tokens)} tokens, "
                           "planned config, slots as one run (prefill); random-slot scatter reported beside it",
               "rows": rows}
    write_json("append", payload)


if __name__ == "__main__":
    main()
