"""Paged attention benchmark: this project's decode / extend kernels against FlashInfer, SGLang's own
Triton kernels and the device copy ceiling, in one run.

    python benchmark/attention.py [--quick] [--head-dim 128 256] [--plan-arch 120]

``--plan-arch 120`` times the code an SM120 card runs: every sm12x call is planned for sm_120 (its
101,376 B of shared memory, its tiles) and the process runs with ``DISABLE_MMA_V3=1`` so Triton
emits ``mma.sync`` on Hopper as it does on sm_120 (no warpgroup MMA); FlashInfer's prefill is
timed with its FA2 kernels (``flashinfer_fa2``, what SGLang's ``flashinfer`` backend runs on
SM120) beside its default choice on this card (``flashinfer``), and SGLang's Triton extend at its
own SM12x tiles (``sglang_triton_sm120``: the module's ``CUDA_CAPABILITY`` set to ``(12, 0)``).
Both facts are recorded in every row (``plan_arch``, ``disable_mma_v3``). Hopper's clocks, shared
memory and memory system are not an SM120's: the ratios between providers are the result.

Decode GB/s counts the bytes a kernel must read: K and V of every cached token in the pool's
format (NVFP4: data + block scales), plus q and the output. Extend TFLOP/s counts
4 * B * H * D * (C * P + C^2 / 2) for B requests of prefix P and chunk C (causal).
Extend calls pass ``max_prefix_len`` as the SGLang backend does (from ``extend_prefix_lens_cpu``):
at prefix 0 a quantized pool is not read and the fp8 / nvfp4 rows run the 16-bit kernel.
All providers read the same tokens (contiguous slots per request, page size 1) and are timed as
CUDA-graph replays (decode) or plain launches (extend) by ``triton.testing``.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import traceback

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _harness import bench_ms, copy_ceiling_gbps, environment, write_json  # noqa: E402

from sgl_kernel_sm12x.attention.decode import decode_attention, decode_workspace  # noqa: E402
from sgl_kernel_sm12x.attention.extend import extend_attention  # noqa: E402

DEV = "cuda"
PLAN_ARCH = None        # --plan-arch: the arch every sm12x call is planned for (None: the device's)


def make_pool(kv_dtype, slots, hkv, d):
    """Random pool contents in each format (valid NVFP4 scales, no NaN codes)."""
    if kv_dtype == "bf16":
        return dict(k_cache=torch.randn(slots, hkv, d, device=DEV, dtype=torch.bfloat16),
                    v_cache=torch.randn(slots, hkv, d, device=DEV, dtype=torch.bfloat16))
    if kv_dtype == "fp8_e4m3":
        mk = lambda: torch.randn(slots, hkv, d, device=DEV).to(torch.float8_e4m3fn).view(torch.uint8)  # noqa
        return dict(k_cache=mk(), v_cache=mk(), k_scale=0.05, v_scale=0.05)
    mk = lambda w: torch.randint(0, 256, (slots, hkv, w), device=DEV, dtype=torch.uint8)  # noqa
    sc = lambda: torch.randint(0x28, 0x40, (slots, hkv, d // 16), device=DEV, dtype=torch.uint8)  # noqa
    if kv_dtype == "fp8k_nvfp4v":
        k8 = torch.randn(slots, hkv, d, device=DEV).to(torch.float8_e4m3fn).view(torch.uint8)
        return dict(k_cache=k8, v_cache=mk(d // 2), v_scale_cache=sc(), k_scale=0.05, v_scale=0.5)
    return dict(k_cache=mk(d // 2), v_cache=mk(d // 2), k_scale_cache=sc(), v_scale_cache=sc(),
                k_scale=0.5, v_scale=0.5)


def kv_bytes_per_token(kv_dtype, hkv, d):
    """Pool bytes one token occupies (K and V, block scales included)."""
    width = {"bf16": 2 * d, "fp8": d, "nvfp4": d // 2 + d // 16}
    k_fmt, v_fmt = {"bf16": ("bf16", "bf16"), "fp8_e4m3": ("fp8", "fp8"), "nvfp4": ("nvfp4", "nvfp4"),
                    "fp8k_nvfp4v": ("fp8", "nvfp4")}[kv_dtype]
    return (width[k_fmt] + width[v_fmt]) * hkv


def flashinfer_decode(q, pool, indptr, indices, hkv, backend="auto"):
    """FlashInfer's paged decode (tensor-core kernel, page size 1) planned over a bf16 pool of
    :func:`make_pool`, with its kernel ``backend`` (``fa2``: what SM120 runs); returns the call to
    time."""
    import flashinfer
    batch, hq, d = q.shape
    wsb = torch.empty(256 << 20, dtype=torch.uint8, device=DEV)
    w = flashinfer.BatchDecodeWithPagedKVCacheWrapper(wsb, "NHD", use_tensor_cores=True, backend=backend)
    w.plan(indptr, indices, torch.ones(batch, dtype=torch.int32, device=DEV), hq, hkv, d, 1,
           q_data_type=torch.bfloat16, kv_data_type=torch.bfloat16)
    kc = pool["k_cache"].view(-1, 1, hkv, d)
    vc = pool["v_cache"].view(-1, 1, hkv, d)
    return lambda: w.run(q, (kc, vc))


def sglang_decode(q, pool, indptr, indices, sinks=None, splits=8):
    """SGLang's Triton decode (8 KV splits, as its backend defaults) over a bf16 pool of
    :func:`make_pool`; returns the call to time."""
    from sglang.kernels.ops.attention.decode_attention import decode_attention_fwd

    batch, hq, d = q.shape
    logits = torch.empty(batch, hq, splits, d, dtype=torch.float32, device=DEV)
    lse = torch.empty(batch, hq, splits, dtype=torch.float32, device=DEV)
    nsp = torch.full((batch,), splits, dtype=torch.int32, device=DEV)
    o = torch.empty_like(q)
    return lambda: decode_attention_fwd(q, pool["k_cache"], pool["v_cache"], o, indptr, indices, logits, lse, nsp,
                                        splits, 1 / math.sqrt(d), 1.0, 1.0, sinks=sinks)


def decode_rows(shapes, hq, hkv, d, copy):
    rows = []
    max_tokens = max(b * c for b, c in shapes)
    pools = {kv: make_pool(kv, max_tokens, hkv, d) for kv in ("bf16", "fp8_e4m3", "nvfp4")}
    for batch, ctx in shapes:
        seq = torch.full((batch,), ctx, dtype=torch.int32, device=DEV)
        indptr = torch.arange(0, (batch + 1) * ctx, ctx, dtype=torch.int32, device=DEV)
        indices = torch.arange(batch * ctx, dtype=torch.int32, device=DEV)
        q = torch.randn(batch, hq, d, device=DEV, dtype=torch.bfloat16)
        qo_bytes = 2 * q.numel() * 2

        def record(provider, kv, fn):
            try:
                p20, ms, p80 = bench_ms(fn, graph=True)
            except Exception as e:  # a provider that fails is recorded, the run continues
                rows.append(dict(phase="decode", provider=provider, kv_dtype=kv, batch=batch, context=ctx,
                                 heads=f"{hq}/{hkv}", head_dim=d, error=f"{type(e).__name__}: {e}"[:300]))
                print(f"decode {provider:<13} {kv:<9} b={batch:<4} ctx={ctx:<6} ERROR {e}"[:200])
                return None
            nbytes = batch * ctx * kv_bytes_per_token(kv, hkv, d) + qo_bytes
            gbps = nbytes / ms / 1e6
            rows.append(dict(phase="decode", provider=provider, kv_dtype=kv, batch=batch, context=ctx,
                             heads=f"{hq}/{hkv}", head_dim=d, ms=ms, p20_ms=p20, p80_ms=p80, bytes=nbytes,
                             gbps=gbps, fraction_of_copy=gbps / copy))
            print(f"decode {provider:<13} {kv:<9} b={batch:<4} ctx={ctx:<6} {ms * 1e3:9.1f} us {gbps:7.0f} GB/s")
            return ms

        for kv, pool in pools.items():
            out = torch.empty_like(q)
            from sgl_kernel_sm12x import planner
            cfg = planner.plan_decode(PLAN_ARCH or planner.current_arch(), head_dim=d, kv_dtype=kv, group=hq // hkv,
                                      batch=batch, kv_heads=hkv,
                                      num_sms=torch.cuda.get_device_properties(0).multi_processor_count)
            ws = decode_workspace(batch, hq, d, cfg.max_splits, DEV)
            record("sm12x", kv, lambda: decode_attention(
                q, pool["k_cache"], pool["v_cache"], indptr, indices, seq, kv_dtype=kv,
                k_scale_cache=pool.get("k_scale_cache"), v_scale_cache=pool.get("v_scale_cache"),
                k_scale=pool.get("k_scale", 1.0), v_scale=pool.get("v_scale", 1.0), out=out, workspace=ws,
                check_slots=False, arch=PLAN_ARCH))
        bf = pools["bf16"]
        for provider, backend in (("flashinfer", "auto"), ("flashinfer_fa2", "fa2")):
            try:
                record(provider, "bf16", flashinfer_decode(q, bf, indptr, indices, hkv, backend))
            except Exception as e:
                rows.append(dict(phase="decode", provider=provider, kv_dtype="bf16", batch=batch, context=ctx,
                                 error=f"{type(e).__name__}: {e}"[:300]))
                traceback.print_exc()
        try:
            record("sglang_triton", "bf16", sglang_decode(q, bf, indptr, indices))
        except Exception as e:
            rows.append(dict(phase="decode", provider="sglang_triton", kv_dtype="bf16", batch=batch, context=ctx,
                             error=f"{type(e).__name__}: {e}"[:300]))
            traceback.print_exc()
    return rows


def flashinfer_prefill(q, qo, batch, prefix, chunk, hkv, backend="auto"):
    """FlashInfer's ragged causal prefill over prefix + chunk keys a request (bf16, contiguous K/V)
    with its kernel ``backend`` (``fa2``: what SM120 runs; ``auto``: FA3 on Hopper): a callable
    running it on ``q``."""
    import flashinfer
    hq, d = q.shape[1], q.shape[2]
    wsb = torch.empty(256 << 20, dtype=torch.uint8, device=DEV)
    w = flashinfer.BatchPrefillWithRaggedKVCacheWrapper(wsb, "NHD", backend=backend)
    L = prefix + chunk
    kk = torch.randn(batch * L, hkv, d, device=DEV, dtype=torch.bfloat16)
    vv = torch.randn_like(kk)
    kvp = torch.arange(0, (batch + 1) * L, L, dtype=torch.int32, device=DEV)
    w.plan(qo, kvp, hq, hkv, d, causal=True, q_data_type=torch.bfloat16)
    return lambda: w.run(q, kk, vv)


def extend_rows(shapes, hq, hkv, d):
    rows = []
    for batch, prefix, chunk in shapes:
        flops = 4 * batch * hq * d * (chunk * prefix + chunk * chunk / 2)
        T = batch * chunk
        q = torch.randn(T, hq, d, device=DEV, dtype=torch.bfloat16)
        k = torch.randn(T, hkv, d, device=DEV, dtype=torch.bfloat16)
        v = torch.randn_like(k)
        qo = torch.arange(0, (batch + 1) * chunk, chunk, dtype=torch.int32, device=DEV)
        kv_indptr = torch.arange(batch + 1, dtype=torch.int32, device=DEV) * prefix
        kv_indices = torch.arange(max(1, batch * prefix), dtype=torch.int32, device=DEV)
        plens = torch.full((batch,), prefix, dtype=torch.int32, device=DEV)
        label = dict(phase="extend", batch=batch, prefix=prefix, chunk=chunk, heads=f"{hq}/{hkv}", head_dim=d)

        def record(provider, kv, fn):
            try:
                p20, ms, p80 = bench_ms(fn, warmup=10, rep=50)
            except Exception as e:
                rows.append(dict(label, provider=provider, kv_dtype=kv, error=f"{type(e).__name__}: {e}"[:300]))
                print(f"extend {provider:<13} {kv:<9} {batch}x{prefix}+{chunk} ERROR {e}"[:200])
                return
            rows.append(dict(label, provider=provider, kv_dtype=kv, ms=ms, p20_ms=p20, p80_ms=p80,
                             tflops=flops / ms / 1e9))
            print(f"extend {provider:<13} {kv:<9} {batch}x{prefix}+{chunk:<6} {ms:8.3f} ms {flops / ms / 1e9:7.1f} TFLOP/s")

        for kv in ("bf16", "fp8_e4m3", "nvfp4"):
            pool = make_pool(kv, max(1, batch * prefix), hkv, d)
            record("sm12x", kv, lambda: extend_attention(
                q, k, v, pool["k_cache"], pool["v_cache"], qo, kv_indptr, kv_indices, plens, kv_dtype=kv,
                max_extend_len=chunk, max_prefix_len=prefix, k_scale_cache=pool.get("k_scale_cache"),
                v_scale_cache=pool.get("v_scale_cache"), k_scale=pool.get("k_scale", 1.0),
                v_scale=pool.get("v_scale", 1.0), check_slots=False, arch=PLAN_ARCH))
            if kv == "bf16":
                bf = pool
        for provider, backend in (("flashinfer", "auto"), ("flashinfer_fa2", "fa2")):
            try:
                record(provider, "bf16", flashinfer_prefill(q, qo, batch, prefix, chunk, hkv, backend))
            except Exception as e:
                rows.append(dict(label, provider=provider, kv_dtype="bf16", error=f"{type(e).__name__}: {e}"[:300]))
                traceback.print_exc()
        provider = "sglang_triton" if PLAN_ARCH is None or PLAN_ARCH < 120 else "sglang_triton_sm120"
        try:
            import sglang.kernels.ops.attention.extend_attention as sgl_ext
            native = sgl_ext.CUDA_CAPABILITY
            o = torch.empty_like(q)

            def run():
                # SGLang picks its tiles from the module's CUDA_CAPABILITY on every call
                sgl_ext.CUDA_CAPABILITY = (12, 0) if provider.endswith("sm120") else native
                try:
                    sgl_ext.extend_attention_fwd(q, k, v, o, bf["k_cache"], bf["v_cache"], qo, kv_indptr, kv_indices,
                                                 None, True, None, chunk, 1.0, 1.0, 1 / math.sqrt(d))
                finally:
                    sgl_ext.CUDA_CAPABILITY = native
            record(provider, "bf16", run)
        except Exception as e:
            rows.append(dict(label, provider=provider, kv_dtype="bf16", error=f"{type(e).__name__}: {e}"[:300]))
            traceback.print_exc()
    return rows


def model_rows(copy):
    """Decode layers of the models the backend serves beyond Qwen3 / Llama shapes, laid out as the
    backend runs them: gpt-oss's window layer (64 / 8 heads, head_dim 64, sinks, window 128: the
    backend lists only each request's last 128 tokens) and its full layer at batch 64 x 8k, beside
    SGLang's Triton decode on the same lists and sinks; Qwen3-14B's GQA 5 (40 / 8) beside the 32 / 8
    shape at batch 64 x 4k (GB/s of what is read)."""
    from sgl_kernel_sm12x import planner
    rows = []
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    cases = [("gpt-oss window layer", 64, 8, 64, 64, 8192, 127, True),
             ("gpt-oss full layer", 64, 8, 64, 64, 8192, -1, True),
             ("Qwen3-14B (GQA 5)", 40, 8, 128, 64, 4096, -1, False),
             ("32 / 8 reference", 32, 8, 128, 64, 4096, -1, False)]
    for name, hq, hkv, d, batch, ctx, window, has_sinks in cases:
        listed = ctx if window < 0 else min(ctx, window + 1)       # keys the lists hold per request
        pools = {kv: make_pool(kv, batch * ctx, hkv, d) for kv in ("bf16", "fp8_e4m3", "nvfp4")}
        start = ctx - listed
        indptr = torch.arange(0, (batch + 1) * listed, listed, dtype=torch.int32, device=DEV)
        indices = (torch.arange(batch, device=DEV)[:, None] * ctx + start
                   + torch.arange(listed, device=DEV)[None, :]).flatten().to(torch.int32)
        seq = torch.full((batch,), listed, dtype=torch.int32, device=DEV)
        q = torch.randn(batch, hq, d, device=DEV, dtype=torch.bfloat16)
        sinks = torch.randn(hq, device=DEV, dtype=torch.float32) if has_sinks else None

        def record(provider, kv, fn):
            base = dict(phase="model_decode", model=name, provider=provider, kv_dtype=kv, batch=batch, context=ctx,
                        keys_read=listed, heads=f"{hq}/{hkv}", head_dim=d, window_left=window, sinks=has_sinks)
            try:
                p20, ms, p80 = bench_ms(fn, graph=True)
            except Exception as e:
                rows.append(dict(base, error=f"{type(e).__name__}: {e}"[:300]))
                print(f"model {name} {provider} {kv} ERROR {e}"[:200])
                return
            nbytes = batch * listed * kv_bytes_per_token(kv, hkv, d) + 2 * q.numel() * 2
            gbps = nbytes / ms / 1e6
            rows.append(dict(base, ms=ms, p20_ms=p20, p80_ms=p80, bytes=nbytes, gbps=gbps,
                             fraction_of_copy=gbps / copy))
            print(f"model {name:<22} {provider:<13} {kv:<9} {ms * 1e3:9.1f} us {gbps:7.0f} GB/s")

        for kv, pool in pools.items():
            out = torch.empty_like(q)
            cfg = planner.plan_decode(PLAN_ARCH or planner.current_arch(), head_dim=d, kv_dtype=kv, group=hq // hkv,
                                      batch=batch, kv_heads=hkv, num_sms=sms)
            ws = decode_workspace(batch, hq, d, cfg.max_splits, DEV)
            record("sm12x", kv, lambda: decode_attention(
                q, pool["k_cache"], pool["v_cache"], indptr, indices, seq, kv_dtype=kv,
                k_scale_cache=pool.get("k_scale_cache"), v_scale_cache=pool.get("v_scale_cache"),
                k_scale=pool.get("k_scale", 1.0), v_scale=pool.get("v_scale", 1.0), out=out, workspace=ws,
                check_slots=False, arch=PLAN_ARCH, window_left=window, sinks=sinks))
        try:
            record("sglang_triton", "bf16", sglang_decode(q, pools["bf16"], indptr, indices, sinks))
        except Exception as e:
            rows.append(dict(phase="model_decode", model=name, provider="sglang_triton", kv_dtype="bf16",
                             error=f"{type(e).__name__}: {e}"[:300]))
            traceback.print_exc()
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--head-dim", type=int, nargs="+", default=[128])
    ap.add_argument("--quick", action="store_true", help="a few shapes only")
    ap.add_argument("--skip-extend", action="store_true")
    ap.add_argument("--models", action="store_true",
                    help="only the model-shaped decode layers (gpt-oss window / full layer, Qwen3-14B's GQA 5)")
    ap.add_argument("--plan-arch", type=int, default=None,
                    help="plan every sm12x call for this arch (120: the SM120 path, run under DISABLE_MMA_V3=1)")
    a = ap.parse_args()
    global PLAN_ARCH
    if a.plan_arch is not None:
        from sgl_kernel_sm12x import planner
        planner.arch_limits(a.plan_arch)                  # a clear error for an unknown arch
        if a.plan_arch != 90 and os.environ.get("DISABLE_MMA_V3") != "1":
            # Triton reads it when it compiles: set it for the whole process, before any kernel
            os.environ["DISABLE_MMA_V3"] = "1"
            os.execv(sys.executable, [sys.executable] + sys.argv)
        PLAN_ARCH = a.plan_arch
    env = environment()
    env.update(plan_arch=PLAN_ARCH, disable_mma_v3=os.environ.get("DISABLE_MMA_V3", ""))
    copy = copy_ceiling_gbps()
    print(f"{env['device']}: copy ceiling {copy:.0f} GB/s")
    rows = [dict(phase="copy", provider="copy", gbps=copy)]
    if a.models:
        rows += model_rows(copy)
        for r in rows:
            r.update(plan_arch=PLAN_ARCH or env["capability"][0] * 10 + env["capability"][1],
                     disable_mma_v3=env["disable_mma_v3"])
        name = "attention-models" if PLAN_ARCH is None else f"attention-models-sm{PLAN_ARCH}-plan"
        write_json(name, {**env, "benchmark": "attention", "copy_gbps": copy, "rows": rows})
        return
    dec = [(b, c) for b in (1, 16, 64, 128, 256) for c in (1024, 4096, 8192, 32768) if b * c <= (1 << 21)]
    if a.quick:
        dec = [(1, 8192), (128, 4096)]
    for d in a.head_dim:
        rows += decode_rows(dec, 32, 8, d, copy)
        rows += decode_rows([(1, 32768), (64, 4096)] if not a.quick else [(64, 4096)], 64, 8, d, copy)
        if not a.skip_extend:
            # prefix {0, 4k} x chunk {1k, 8k} (0 + 1k batched: 8 x 0 + 1024) with batched and split
            # forms; 4000: a prefix that ends inside a tile (the masked tail of the prefix loop)
            ext = [(1, 0, 8192), (4, 0, 2048), (1, 4096, 1024), (8, 4096, 1024), (2, 0, 4096), (1, 4096, 8192),
                   (8, 0, 1024), (1, 4000, 1024), (1, 0, 1024), (2, 2000, 3000), (16, 512, 512)]
            if a.quick:
                ext = [(1, 0, 8192), (1, 4096, 1024)]
            rows += extend_rows(ext, 32, 8, d)
    for r in rows:
        r.update(plan_arch=PLAN_ARCH or env["capability"][0] * 10 + env["capability"][1],
                 disable_mma_v3=env["disable_mma_v3"])
    name = "attention" if PLAN_ARCH is None else f"attention-sm{PLAN_ARCH}-plan"
    write_json(name, {**env, "benchmark": "attention", "copy_gbps": copy, "rows": rows})


if __name__ == "__main__":
    main()
