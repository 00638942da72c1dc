"""``sm12x demo``: quantize a sample KV tensor with the fused append kernel (GPU if present, the
Triton interpreter otherwise), report the error of each KV format, then the SM12x budget table."""
from __future__ import annotations

import argparse
import os
import subprocess
import sys


def _stats(name, ref, got, bytes_per_token, bf16_bytes):
    import torch
    err = (got - ref).float()
    rel = (err.norm() / ref.float().norm()).item()
    cos = torch.nn.functional.cosine_similarity(got.flatten().float(), ref.flatten().float(), dim=0).item()
    print(f"  {name:<9} rel-L2 {rel:8.4f}  max|err| {err.abs().max().item():8.4f}  cosine {cos:.5f}  "
          f"bytes/token {bytes_per_token:>5}  capacity x{bf16_bytes / bytes_per_token:.2f} vs bf16")


def _attention_demo(dev, on_gpu):
    """Decode attention read straight from bf16, FP8 and NVFP4 pools of the same K/V."""
    import math

    import torch
    from sgl_kernel_sm12x.attention.decode import decode_attention
    from sgl_kernel_sm12x.kv_append import append_kv
    batch, ctx, hkv, group, d = (4, 1024, 8, 4, 128) if on_gpu else (2, 96, 2, 4, 64)
    tokens = batch * ctx
    k = torch.randn(tokens, hkv, d, device=dev).to(torch.bfloat16)
    v = torch.randn(tokens, hkv, d, device=dev).to(torch.bfloat16)
    q = torch.randn(batch, hkv * group, d, device=dev).to(torch.bfloat16)
    loc = torch.arange(tokens, device=dev)
    indptr = torch.arange(batch + 1, dtype=torch.int32, device=dev) * ctx
    seq = torch.full((batch,), ctx, dtype=torch.int32, device=dev)
    kk = k.float().view(batch, ctx, hkv, d).repeat_interleave(group, dim=2)
    vv = v.float().view(batch, ctx, hkv, d).repeat_interleave(group, dim=2)
    p = torch.softmax(torch.einsum("bhd,bnhd->bhn", q.float(), kk) / math.sqrt(d), dim=-1)
    ref = torch.einsum("bhn,bnhd->bhd", p, vv)
    print(f"\ndecode attention, {batch} requests x {ctx} tokens, {hkv * group} q / {hkv} kv heads, head_dim {d}:")
    for kv in ("bf16", "fp8_e4m3", "nvfp4"):
        extra = {}
        if kv == "nvfp4":
            kc = torch.zeros(tokens, hkv, d // 2, dtype=torch.uint8, device=dev)
            extra = dict(k_scale_cache=torch.zeros(tokens, hkv, d // 16, dtype=torch.uint8, device=dev),
                         v_scale_cache=torch.zeros(tokens, hkv, d // 16, dtype=torch.uint8, device=dev))
        elif kv == "fp8_e4m3":
            kc = torch.zeros(tokens, hkv, d, dtype=torch.uint8, device=dev)
            extra = dict(k_scale=0.02, v_scale=0.02)
        else:
            kc = torch.zeros(tokens, hkv, d, dtype=torch.bfloat16, device=dev)
        vc = torch.zeros_like(kc)
        append_kv(k, v, loc, kc, vc, kv_dtype=kv, **extra)
        out = decode_attention(q, kc, vc, indptr, loc.to(torch.int32), seq, kv_dtype=kv, **extra)
        rel = ((out.float() - ref).norm() / ref.norm()).item()
        print(f"  {kv:<9} output rel-L2 error vs fp32 attention over the original K/V: {rel:.4f}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="sm12x demo", description=__doc__)
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--head-dim", type=int, default=128, choices=(64, 128, 256))
    ap.add_argument("--no-budget", action="store_true", help="skip the budget table")
    ap.add_argument("--kernels-only", action="store_true",
                    help="on a GPU machine, run the kernel demo instead of serving the bundled model")
    a = ap.parse_args(argv)

    import torch
    on_gpu = torch.cuda.is_available()
    if on_gpu and not a.kernels_only:
        return serve_demo()
    if not on_gpu:
        os.environ["TRITON_INTERPRET"] = "1"   # before triton is imported
    from sgl_kernel_sm12x import nvfp4
    from sgl_kernel_sm12x.kv_append import append_kv

    dev = "cuda" if on_gpu else "cpu"
    torch.manual_seed(0)
    t, h, d = a.tokens, a.heads, a.head_dim
    # K with a few outlier channels (as in trained LLMs), V plain Gaussian
    k = torch.randn(t, h, d, device=dev)
    k[..., :: d // 4] *= 20.0
    k = k.to(torch.bfloat16)
    v = torch.randn(t, h, d, device=dev, dtype=torch.bfloat16)
    slots = 2 * t
    loc = torch.randperm(slots, device=dev)[:t]
    print(f"sm12x demo: {t} tokens x {h} heads x head_dim {d}, bf16 in, device "
          f"{torch.cuda.get_device_name() if on_gpu else 'cpu (Triton interpreter)'}")
    bf16_bytes = 2 * h * d
    for name, src in (("K", k), ("V", v)):
        print(f"{name}:")
        kc = torch.zeros(slots, h, d // 2, dtype=torch.uint8, device=dev)
        sc = torch.zeros(slots, h, d // 16, dtype=torch.uint8, device=dev)
        append_kv(src, src, loc, kc, kc.clone(), kv_dtype="nvfp4", k_scale_cache=sc, v_scale_cache=sc.clone())
        deq = nvfp4.dequantize_nvfp4(kc[loc], sc[loc].view(torch.float8_e4m3fn))
        _stats("nvfp4", src, deq, nvfp4.nvfp4_bytes_per_token(h, d), bf16_bytes)
        fc = torch.zeros(slots, h, d, dtype=torch.uint8, device=dev)
        amax = src.float().abs().max().item()
        scale = amax / nvfp4.E4M3_MAX
        append_kv(src, src, loc, fc, fc.clone(), kv_dtype="fp8_e4m3", k_scale=scale, v_scale=scale)
        _stats("fp8_e4m3", src, nvfp4.dequantize_fp8(fc[loc], scale), nvfp4.fp8_bytes_per_token(h, d), bf16_bytes)
    _attention_demo(dev, on_gpu)
    if a.no_budget:
        return 0
    print("\nSM12x shared-memory budget: a few representative configurations compiled now for sm_120 "
          "(ahead of time, no GPU needed):", flush=True)
    env = {k_: v_ for k_, v_ in os.environ.items() if k_ != "TRITON_INTERPRET"}
    rc = subprocess.call([sys.executable, "-m", "sglang_sm12x.tools.demo", "--budget-sample"], env=env)
    _committed_budget_summary()
    print("every configuration the planner can choose: sm12x budget --arch 120,121   (tens of minutes cold on "
          "two cores, seconds once Triton's cache is warm)")
    return rc


# one configuration of each main kernel family (the budget's own cases, so the same compile path)
_SAMPLE = (("kv_append", dict(head_dim=128, kv_dtype="nvfp4")),
           ("decode_nvfp4", dict(head_dim=128, page_size=1, direct=False)),
           ("decode", dict(head_dim=128, kv_dtype="bf16", paged=False, direct=False)),
           ("extend", dict(head_dim=128, kv_dtype="nvfp4", paged=False)))


def budget_sample(arch: int = 120) -> int:
    """Compile :data:`_SAMPLE` for ``arch`` with progress; 1 if any does not fit."""
    from sgl_kernel_sm12x import budget
    rows = []
    for i, (kernel, want) in enumerate(_SAMPLE, 1):
        case = next(c for c in budget.cases([kernel], [arch]) if all(c[2].get(k) == v for k, v in want.items()))
        print(f"  [{i}/{len(_SAMPLE)}] {kernel} {' '.join(f'{k}={v}' for k, v in want.items())} ...", end=" ",
              flush=True)
        r = budget.compile_one(*case)
        rows.append(r)
        print(f"{r.shared:,} B shared of {r.limit:,}, {r.regs} registers, {r.spill} B spilled, {r.mma}: "
              f"{'fits' if r.fits else 'DOES NOT FIT'}" if r.shared is not None else f"ERROR {r.error}", flush=True)
    return 0 if all(r.fits for r in rows) else 1


def _committed_budget_summary() -> None:
    """The checkout's committed full table, summarised (absent from an installed wheel)."""
    import json
    from pathlib import Path
    table = Path(__file__).resolve().parents[3] / "benchmark" / "results" / "budget-sm120-sm121.json"
    if table.exists():
        rows = json.loads(table.read_text())
        bad = sum(not r["fits"] for r in rows)
        print(f"committed full table ({table.name}): {len(rows):,} configurations for sm_120 / sm_121, "
              f"{len(rows) - bad:,} fit, {bad} do not")


def serve_demo(port: int = 30177) -> int:
    """GPU machine: serve the bundled tiny dummy-weight model with ``--attention-backend sm12x
    --kv-cache-dtype nvfp4``, send one request, and compare the KV pool's token capacity with a
    bf16 pool at the same ``--mem-fraction-static``."""
    from .serving import Server, bundled_model

    model = bundled_model()
    caps = {}
    common = ("--load-format", "dummy", "--disable-cuda-graph")
    print(f"sm12x demo: serving {model.name} (dummy weights) with --attention-backend sm12x")
    try:
        with Server(model, "sm12x", *common, "--kv-cache-dtype", "nvfp4", port=port, mem_fraction=0.3) as s:
            out = s.post("/generate", {"text": "The capital of France is",
                                       "sampling_params": {"max_new_tokens": 16, "temperature": 0}})
            print(f"  nvfp4 KV: up after {s.startup_s:.0f} s; generated {out['meta_info'].get('completion_tokens')}"
                  f" tokens: {out['text']!r}")
            caps["nvfp4"] = s.kv_capacity()
        with Server(model, "sm12x", *common, "--kv-cache-dtype", "auto", port=port, mem_fraction=0.3) as s:
            caps["bf16"] = s.kv_capacity()
    except (RuntimeError, TimeoutError) as e:
        print(f"sm12x demo: the server failed: {e}")
        return 1
    if caps.get("nvfp4") and caps.get("bf16"):
        print(f"  KV pool tokens at --mem-fraction-static 0.3: nvfp4 {caps['nvfp4']:,} vs bf16 {caps['bf16']:,} "
              f"= {caps['nvfp4'] / caps['bf16']:.2f}x")
    return 0


if __name__ == "__main__":
    if sys.argv[1:] == ["--budget-sample"]:
        sys.exit(budget_sample())
    sys.exit(main())
