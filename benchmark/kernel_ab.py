"""Same-run A/B of this project's attention kernels between source trees (a change's cost).

    python benchmark/kernel_ab.py --tree before=/path/to/old/checkout --tree after=. [--rounds 3]

Each round runs every tree in its own process (``PYTHONPATH`` = that tree), alternating, on the
same GPU; each process times the one-shot ``decode_attention`` (CUDA-graph replay) and
``extend_attention`` at the shapes below for bf16, fp8_e4m3 and nvfp4 pools (slot checking off where the
tree has it: the kernels' cost, not a host sync). The JSON keeps every round's medians and the
per-shape ratio after / before of the medians over rounds.
"""
from __future__ import annotations

import argparse
import inspect
import json
import os
import subprocess
import sys

# attention.py --quick's shapes, plus 8 x 4k + 1k
DECODE = [(128, 4096, 32), (1, 8192, 32), (64, 4096, 64)]          # batch, context, query heads (8 KV heads)
EXTEND = [(1, 4096, 1024), (8, 4096, 1024), (1, 0, 8192)]          # batch, prefix, chunk (32 / 8 heads)
HQ, HKV, D = 32, 8, 128


def worker() -> dict:
    import torch

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from _harness import bench_ms

    from attention import make_pool
    from sgl_kernel_sm12x.attention.decode import decode_attention, decode_workspace
    from sgl_kernel_sm12x.attention.extend import extend_attention

    import re
    only = re.compile(os.environ.get("KERNEL_AB_ONLY", ""))
    nocheck = ({"check_slots": False} if "check_slots" in inspect.signature(decode_attention).parameters else {})
    dev = "cuda"
    rows = {}
    for kv in ("bf16", "fp8_e4m3", "nvfp4"):
        for batch, ctx, hq in DECODE:
            if not only.search(f"decode {kv} {batch}x{ctx} {hq}/{HKV}"):
                continue
            pool = make_pool(kv, batch * ctx, HKV, D)
            seq = torch.full((batch,), ctx, dtype=torch.int32, device=dev)
            indptr = torch.arange(0, (batch + 1) * ctx, ctx, dtype=torch.int32, device=dev)
            idx = torch.arange(batch * ctx, dtype=torch.int32, device=dev)
            q = torch.randn(batch, hq, D, device=dev, dtype=torch.bfloat16)
            out = torch.empty_like(q)
            ws = decode_workspace(batch, hq, D, 256, dev)
            fn = lambda: decode_attention(q, pool["k_cache"], pool["v_cache"], indptr, idx, seq, kv_dtype=kv,  # noqa
                                          k_scale_cache=pool.get("k_scale_cache"),
                                          v_scale_cache=pool.get("v_scale_cache"), k_scale=pool.get("k_scale", 1.0),
                                          v_scale=pool.get("v_scale", 1.0), out=out, **nocheck,
                                          workspace=(ws[0][:, :, :_splits(batch, kv, hq)].contiguous(),
                                                     ws[1][:, :, :_splits(batch, kv, hq)].contiguous()))
            rows[f"decode {kv} {batch}x{ctx} {hq}/{HKV}"] = bench_ms(fn, graph=True)[1]
        for batch, prefix, chunk in EXTEND:
            if not only.search(f"extend {kv} {batch}x{prefix}+{chunk}"):
                continue
            pool = make_pool(kv, max(1, batch * prefix), HKV, D)
            T = batch * chunk
            q = torch.randn(T, HQ, D, device=dev, dtype=torch.bfloat16)
            k = torch.randn(T, HKV, D, device=dev, dtype=torch.bfloat16)
            v = torch.randn_like(k)
            qo = torch.arange(0, (batch + 1) * chunk, chunk, dtype=torch.int32, device=dev)
            kvp = torch.arange(batch + 1, dtype=torch.int32, device=dev) * prefix
            kvi = torch.arange(max(1, batch * prefix), dtype=torch.int32, device=dev)
            pl = torch.full((batch,), prefix, dtype=torch.int32, device=dev)
            fn = lambda: extend_attention(q, k, v, pool["k_cache"], pool["v_cache"], qo, kvp, kvi, pl,  # noqa
                                          kv_dtype=kv, max_extend_len=chunk, max_prefix_len=prefix,
                                          k_scale_cache=pool.get("k_scale_cache"),
                                          v_scale_cache=pool.get("v_scale_cache"), k_scale=pool.get("k_scale", 1.0),
                                          v_scale=pool.get("v_scale", 1.0), **nocheck)
            rows[f"extend {kv} {batch}x{prefix}+{chunk}"] = bench_ms(fn, warmup=10, rep=100)[1]
    return rows


def _splits(batch, kv, hq):
    import torch

    from sgl_kernel_sm12x import planner
    return planner.plan_decode(planner.current_arch(), head_dim=D, kv_dtype=kv, group=hq // HKV, batch=batch,
                               kv_heads=HKV, num_sms=torch.cuda.get_device_properties(0).multi_processor_count
                               ).max_splits


def main():
    if "--worker" in sys.argv:
        print("AB_JSON " + json.dumps(worker()))
        return 0
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tree", action="append", required=True, help="NAME=PATH (repeatable; the first is the base)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--name", default="kernel-ab")
    ap.add_argument("--only", default="", help="a regular expression: time only the rows whose name it finds")
    a = ap.parse_args()
    os.environ["KERNEL_AB_ONLY"] = a.only
    trees = [t.split("=", 1) for t in a.tree]
    runs = {n: [] for n, _ in trees}
    here = os.path.dirname(os.path.abspath(__file__))
    for r in range(a.rounds):
        for name, path in trees:
            env = dict(os.environ, PYTHONPATH=os.path.abspath(path) + os.pathsep + os.environ.get("PYTHONPATH", ""))
            p = subprocess.run([sys.executable, os.path.join(here, "kernel_ab.py"), "--worker"], env=env,
                               capture_output=True, text=True)
            line = next((ln for ln in p.stdout.splitlines() if ln.startswith("AB_JSON ")), None)
            if line is None:
                print(p.stdout[-2000:], p.stderr[-4000:], file=sys.stderr)
                raise SystemExit(f"{name} failed in round {r}")
            runs[name].append(json.loads(line[8:]))
            print(f"round {r} {name}: " + ", ".join(f"{k} {v * 1e3:.1f} us" for k, v in runs[name][-1].items()))
    sys.path.insert(0, here)
    from _harness import environment, write_json

    base = trees[0][0]

    def med(name, key):
        xs = sorted(run[key] for run in runs[name])
        return xs[len(xs) // 2]

    keys = list(runs[base][0])
    ratios = {n: {k: med(n, k) / med(base, k) for k in keys} for n, _ in trees[1:]}
    env = environment()
    payload = dict(env, benchmark="kernel_ab", trees={n: p for n, p in trees}, rounds=runs,
                   median_ms={n: {k: med(n, k) for k in keys} for n, _ in trees}, ratio_vs_base=ratios,
                   note="ratio > 1: slower than the base tree; medians over rounds of do_bench medians")
    write_json(a.name, payload)
    for n, rs in ratios.items():
        for k, v in rs.items():
            print(f"{n} / {base}  {k:<28} {v:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
