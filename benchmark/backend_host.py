"""Host time of the attention backend per decode step, on real SGLang pools (GPU, SGLang installed).

    python benchmark/backend_host.py --tree before=/path/to/old/checkout --tree after=. [--rounds 3]

Each tree runs in its own process (``PYTHONPATH`` = that tree and its ``python/``), alternating: an
``Sm12xAttnBackend`` over an ``MHATokenToKVPool`` of the model shape, then per step
``init_forward_metadata`` and every layer's ``forward_decode`` (K/V append + attention), eager
(no CUDA graph), batch 1 -- the path a concurrency-1 server without CUDA graphs takes per token.
A step's host time is the wall time of those calls without a device sync (small shapes: the GPU
waits on the host); the median over steps is kept, and the median over rounds compared.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from types import SimpleNamespace

SHAPES = {  # name -> (layers, q heads, kv heads, head_dim, context)
    "qwen3-tiny": (2, 4, 2, 64, 1024),
    "qwen3-8b-shape": (36, 32, 8, 128, 1024),
}


def worker(kv: str, steps: int) -> dict:
    import torch
    from sglang.srt.mem_cache.memory_pool import MHATokenToKVPool, ReqToTokenPool
    from sglang.srt.model_executor.forward_batch_info import ForwardBatch, ForwardMode

    from sglang_sm12x import _hooks
    from sglang_sm12x.backend import Sm12xAttnBackend

    dev = "cuda"
    out = {}
    for name, (layers, hq, hkv, d, ctx) in SHAPES.items():
        size = ctx + steps + 64
        kw = {}
        dtype = torch.bfloat16
        if kv == "nvfp4":
            from sglang.srt.layers.quantization.fp4_kv_cache_quant_method import NVFP4KVCacheMethod
            qm = NVFP4KVCacheMethod(num_layers=layers, device=dev)
            if hasattr(qm, "configure_attention_backends"):
                qm.configure_attention_backends("sm12x", "sm12x")
            _hooks.native_for_sm12x(qm)
            qm.k_scales_float = [1.0] * layers
            qm.v_scales_float = [1.0] * layers
            kw["quant_method"] = qm
            dtype = torch.float4_e2m1fn_x2
        pool = MHATokenToKVPool(size=size, page_size=1, dtype=dtype, head_num=hkv, head_dim=d, layer_num=layers,
                                device=dev, enable_memory_saver=False, **kw)
        r2t = ReqToTokenPool(size=2, max_context_len=size, device=dev, enable_memory_saver=False)
        r2t.req_to_token[0, :size] = torch.arange(1, size + 1, dtype=torch.int32, device=dev)
        runner = SimpleNamespace(device=dev, req_to_token_pool=r2t, token_to_kv_pool=pool, page_size=1,
                                 kv_cache_dtype=dtype, model_config=SimpleNamespace(context_len=size),
                                 sliding_window_size=None, dtype=torch.bfloat16)
        be = Sm12xAttnBackend(runner)
        lay = [SimpleNamespace(layer_id=i, tp_q_head_num=hq, tp_k_head_num=hkv, qk_head_dim=d, v_head_dim=d,
                               scaling=d ** -0.5, logit_cap=0.0, sliding_window_size=-1, is_cross_attention=False,
                               k_scale_float=None, v_scale_float=None) for i in range(layers)]
        q = torch.randn(1, hq * d, dtype=torch.bfloat16, device=dev)
        k = torch.randn(1, hkv * d, dtype=torch.bfloat16, device=dev)
        v = torch.randn_like(k)
        rows = torch.zeros(1, dtype=torch.int64, device=dev)
        times = []
        for step in range(steps):
            seq = ctx + step
            fb = ForwardBatch(forward_mode=ForwardMode.DECODE, batch_size=1,
                              input_ids=torch.zeros(1, dtype=torch.long, device=dev), req_pool_indices=rows,
                              seq_lens=torch.tensor([seq], dtype=torch.int32, device=dev),
                              out_cache_loc=torch.tensor([seq], dtype=torch.int64, device=dev), seq_lens_sum=seq,
                              seq_lens_cpu=torch.tensor([seq]))
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            be.init_forward_metadata(fb)
            for L in lay:
                be.forward_decode(q, k, v, L, fb)
            times.append(time.perf_counter() - t0)
        torch.cuda.synchronize()
        warm = sorted(times[steps // 5:])
        out[name] = dict(layers=layers, median_us=warm[len(warm) // 2] * 1e6, p20_us=warm[len(warm) // 5] * 1e6,
                         p80_us=warm[4 * len(warm) // 5] * 1e6)
    return out


def main():
    if "--worker" in sys.argv:
        kv = sys.argv[sys.argv.index("--worker") + 1]
        print("HOST_JSON " + json.dumps(worker(kv, 200)))
        return 0
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tree", action="append", required=True, help="NAME=PATH (repeatable; the first is the base)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--kv-dtype", nargs="+", default=["bf16", "nvfp4"])
    a = ap.parse_args()
    trees = [t.split("=", 1) for t in a.tree]
    here = os.path.dirname(os.path.abspath(__file__))
    runs = {n: {kv: [] for kv in a.kv_dtype} for n, _ in trees}
    for r in range(a.rounds):
        for kv in a.kv_dtype:
            for name, path in trees:
                path = os.path.abspath(path)
                env = dict(os.environ, PYTHONPATH=os.pathsep.join(
                    [path, os.path.join(path, "python"), os.environ.get("PYTHONPATH", "")]))
                p = subprocess.run([sys.executable, os.path.join(here, "backend_host.py"), "--worker", kv], env=env,
                                   capture_output=True, text=True)
                line = next((ln for ln in p.stdout.splitlines() if ln.startswith("HOST_JSON ")), None)
                if line is None:
                    print(p.stdout[-2000:], p.stderr[-4000:], file=sys.stderr)
                    raise SystemExit(f"{name} {kv} failed in round {r}")
                runs[name][kv].append(json.loads(line[10:]))
                print(f"round {r} {name} {kv}: " + ", ".join(f"{s} {v['median_us']:.0f} us"
                                                             for s, v in runs[name][kv][-1].items()), flush=True)
    sys.path.insert(0, here)
    from _harness import environment, write_json

    def med(name, kv, shape):
        xs = sorted(run[shape]["median_us"] for run in runs[name][kv])
        return xs[len(xs) // 2]

    base = trees[0][0]
    summary = {n: {kv: {s: dict(median_us=med(n, kv, s), ratio_vs_base=med(n, kv, s) / med(base, kv, s))
                        for s in SHAPES} for kv in a.kv_dtype} for n, _ in trees}
    write_json("backend-host", dict(environment(), benchmark="backend_host", trees=dict(trees), shapes=SHAPES,
                                    rounds=runs, summary=summary,
                                    note="host wall time per decode step (metadata + every layer's forward_decode), "
                                         "batch 1, eager; ratio < 1: less host time than the base tree"))
    for n, by_kv in summary.items():
        for kv, by_shape in by_kv.items():
            for s, v in by_shape.items():
                print(f"{n:<8} {kv:<6} {s:<16} {v['median_us']:8.0f} us  x{v['ratio_vs_base']:.3f} of {base}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
