"""Fused MoE: this project's kernels against SGLang's own Triton ``fused_experts`` (with the configs
SGLang picks on this GPU) in the same run.

    python benchmark/moe.py [--shapes qwen3-30b-a3b mixtral gpt-oss] [--dtypes bf16 fp8_w8a8 fp8_w8a8_block nvfp4_w4a16]
                            [--tokens 1 16 64 256 1024 4096]

Rows: ``provider`` (sm12x | sglang_triton | copy), ``dtype``, ``shape``, ``tokens``, ``ms`` (CUDA-graph
replay of the whole MoE: both GEMMs, activation, routing sum) and ``tflops`` (2 * tokens * top_k * 3 * H
* I multiply-adds counted as FLOPs). ``copy`` is the memory floor of the same point: the weights of
the experts the routing touches plus the input and output, moved at the device's copy bandwidth
(measured in the same run); the kernels' rows carry ``fraction_of_copy`` = copy ms / their ms.
A provider that fails records ``error``.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys

import torch
import triton

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from _harness import bench_ms, copy_ceiling_gbps, environment, write_json  # noqa: E402

from sgl_kernel_sm12x import planner  # noqa: E402
from sgl_kernel_sm12x.moe.fused_moe import fused_moe  # noqa: E402

FP8_MAX = 448.0


def _weights(e, h, i, dtype, dev):
    w1 = (torch.randn(e, 2 * i, h, device=dev) / h ** 0.5).to(torch.bfloat16)
    w2 = (torch.randn(e, h, i, device=dev) / i ** 0.5).to(torch.bfloat16)
    if dtype == "bf16":
        return w1, w2, None, None, None, {}
    if dtype == "nvfp4_w4a16":      # ModelOpt's NVFP4 layout (per-expert weight_scale_2)
        from sgl_kernel_sm12x import nvfp4
        (p1, s1, g1), (p2, s2, g2) = nvfp4.quantize_weight(w1), nvfp4.quantize_weight(w2)
        return p1, p2, s1, s2, None, {"w1_global": g1, "w2_global": g2}
    if dtype == "fp8_w8a8":
        out = []
        for w in (w1, w2):
            s = w.float().abs().amax(dim=(1, 2)) / FP8_MAX
            out.append(((w.float() / s[:, None, None]).to(torch.float8_e4m3fn), s))
        return out[0][0], out[1][0], out[0][1], out[1][1], None, {}
    out = []
    for w in (w1, w2):
        en, n, k = w.shape
        b = w.float().view(en, n // 128, 128, k // 128, 128)
        s = b.abs().amax(dim=(2, 4)) / FP8_MAX
        out.append(((b / s[:, :, None, :, None]).view(en, n, k).to(torch.float8_e4m3fn), s))
    return out[0][0], out[1][0], out[0][1], out[1][1], [128, 128], {}


_PUBLISHED = False


def sglang_context(device: str = "cuda") -> None:
    """SGLang's fused-MoE reads process config (``get_exec()``) that a server publishes at start; a
    bare benchmark publishes ServerArgs for the bundled model once, as its own tests do."""
    global _PUBLISHED
    if _PUBLISHED:
        return
    from sglang.srt.server_args import ServerArgs, set_global_server_args_for_scheduler

    from sglang_sm12x.tools.serving import bundled_model

    set_global_server_args_for_scheduler(ServerArgs(model_path=str(bundled_model()), device=device))
    _PUBLISHED = True


def _sglang_fn(x, w1, w2, tw, ti, dtype, s1, s2, block):
    from sglang.srt.layers.moe.moe_runner.base import MoeRunnerConfig
    from sglang.srt.layers.moe.moe_runner.triton_utils.fused_moe import fused_experts
    from sglang.srt.layers.moe.topk import StandardTopKOutput

    sglang_context(x.device.type)
    e = w1.shape[0]
    # in place, as SGLang's MoE layers run it (MoeRunnerConfig's default); the out-of-place path
    # allocates from the tensor-parallel group's symmetric pool, which a bare process lacks
    cfg = MoeRunnerConfig(num_experts=e, num_local_experts=e, top_k=ti.shape[1], inplace=True)
    topk = StandardTopKOutput(tw, ti.to(torch.int32), torch.empty(0, device=x.device))
    kw = {}
    if dtype != "bf16":
        kw = dict(use_fp8_w8a8=True, w1_scale=s1, w2_scale=s2, block_shape=block)
    return lambda: fused_experts(x, w1, w2, topk, cfg, **kw)


def floor_bytes(w1, w2, s1, s2, ti, h):
    """Bytes a MoE step must move at least: the touched experts' weights (and scales), the bf16
    input and output."""
    per_expert = sum(t[0].numel() * t.element_size() for t in (w1, w2)) + \
        sum(t[0].numel() * t.element_size() for t in (s1, s2) if t is not None and t.dim() > 1)
    return int(ti.unique().numel()) * per_expert + 2 * ti.shape[0] * h * 2


def measure(shapes, dtypes, tokens, dev, bench, table=None, copy_gbps=None):
    """Rows for every shape x dtype x tokens, both providers (and the copy floor when
    ``copy_gbps`` is given); ``bench(fn, graph=True)`` returns (p20, p50, p80) ms. ``table`` maps
    shape names to (E, top_k, hidden, intermediate)."""
    table = table or planner.MOE_SHAPES
    rows = []
    for shape in shapes:
        e, k, h, i = table[shape]
        for dtype in dtypes:
            if dtype == "fp8_w8a8_block" and (h % 128 or i % 128):
                rows.append(dict(provider="sm12x", dtype=dtype, shape=shape, skipped="hidden or intermediate "
                                 "not a multiple of the 128 x 128 block"))
                continue
            w1, w2, s1, s2, block, extra = _weights(e, h, i, dtype, dev)
            for t in tokens:
                x = torch.randn(t, h, device=dev, dtype=torch.bfloat16)
                tw, ti = torch.topk(torch.randn(t, e, device=dev).softmax(-1), k)
                ti = ti.to(torch.int32)     # as SGLang's top-k hands them over (no conversion inside the timing)
                flops = 2 * t * k * 3 * h * i
                fns = {"sm12x": lambda: fused_moe(x, w1, w2, tw, ti, dtype=dtype, w1_scale=s1, w2_scale=s2,
                                                  block_shape=block, **extra)}
                if dtype != "nvfp4_w4a16":      # SGLang's NVFP4 MoE is a server path (Marlin / FlashInfer): e2e
                    try:
                        fns["sglang_triton"] = _sglang_fn(x, w1, w2, tw, ti, dtype, s1, s2, block)
                    except Exception as ex:  # noqa: BLE001
                        rows.append(dict(provider="sglang_triton", dtype=dtype, shape=shape, tokens=t,
                                         error=f"{type(ex).__name__}: {ex}"[:300]))
                floor_ms = floor_bytes(w1, w2, s1, s2, ti, h) / copy_gbps / 1e6 if copy_gbps else None
                if floor_ms is not None:
                    rows.append(dict(provider="copy", dtype=dtype, shape=shape, tokens=t, ms=floor_ms,
                                     tflops=flops / floor_ms / 1e9))
                for prov, fn in fns.items():
                    try:
                        p20, p50, p80 = bench(fn, graph=True)
                        rows.append(dict(provider=prov, dtype=dtype, shape=shape, tokens=t, ms=p50,
                                         ms_p20_p80=[p20, p80], tflops=flops / p50 / 1e9))
                        if floor_ms is not None:
                            rows[-1]["fraction_of_copy"] = floor_ms / p50
                    except Exception as ex:  # noqa: BLE001
                        rows.append(dict(provider=prov, dtype=dtype, shape=shape, tokens=t,
                                         error=f"{type(ex).__name__}: {ex}"[:300]))
                print(rows[-len(fns):], flush=True)
    return rows


def breakdown(shapes, dtypes, tokens, dev, bench):
    """Each stage of this project's MoE timed alone (CUDA-graph replay, the planned tiles): the
    alignment (single-program, many-program and torch forms), the activation quantization, both
    GEMMs, the activation between them and the top-k sum. Rows: ``provider`` ``sm12x_stage``,
    ``stage``, ``ms``."""
    from sgl_kernel_sm12x.moe import fused_moe as fm
    rows = []
    for shape in shapes:
        e, k, h, i = planner.MOE_SHAPES[shape]
        arch = planner.current_arch(torch.device(dev))
        for dtype in dtypes:
            if dtype == "nvfp4_w4a16":      # its stages are the bf16 ones with the weight decode in the GEMMs
                rows.append(dict(provider="sm12x_stage", dtype=dtype, shape=shape, skipped="no stage breakdown"))
                continue
            w1, w2, s1, s2, block, _ = _weights(e, h, i, dtype, dev)
            q = fm.QUANT[dtype]
            gk = block[1] if q == 2 else None
            for t in tokens:
                x = torch.randn(t, h, device=dev, dtype=torch.bfloat16)
                tw, ti = torch.topk(torch.randn(t, e, device=dev).softmax(-1), k)
                ti = ti.to(torch.int32)
                c1 = planner.plan_moe(arch, dtype=dtype, num_experts=e, n=2 * i, k=h, tokens=t, top_k=k,
                                      block_shape=block)
                c2 = planner.plan_moe(arch, dtype=dtype, num_experts=e, n=h, k=i, tokens=t, top_k=k, block_shape=block)
                c2 = planner.MoeConfig(c1.block_m, c2.block_n, c2.block_k, c2.group_m, c2.num_warps, c2.num_stages)
                ids, experts, npad = fm.moe_align(ti, e, c1.block_m)
                pairs = t * k
                w1b = w1.view(torch.uint8) if q else w1
                w2b = w2.view(torch.uint8) if q else w2
                a1, a1_s = fm.quant_fp8(x, gk) if q else (x, None)
                mid = torch.empty(pairs, 2 * i, dtype=x.dtype, device=dev)
                a2, a2_s = fm.quant_fp8(mid, gk, silu=True) if q else (fm.silu_mul(mid), None)
                down = torch.empty(pairs, h, dtype=x.dtype, device=dev)
                out = torch.empty_like(x)
                twf = tw.float().flatten()
                stages = {
                    "align_single": lambda: fm.moe_align_kernel[(1,)](
                        topk_ids_ptr=ti.reshape(-1), n=pairs, sorted_ids_ptr=ids, expert_ids_ptr=experts,
                        num_post_pad_ptr=npad, cap=ids.numel(), num_experts=e,
                        E_P=max(16, triton.next_power_of_2(e)), BLOCK_M=c1.block_m,
                        CHUNK=fm.align_chunk(max(16, triton.next_power_of_2(e))), num_warps=4),
                    "align_multi": lambda: fm.moe_align_multi(ti, e, c1.block_m),
                    "align_torch": lambda: fm.moe_align_torch(ti, e, c1.block_m),
                    "align_used": lambda: fm.moe_align(ti, e, c1.block_m),
                    "gemm_gate_up": lambda: fm.moe_gemm(a1, w1b, mid, ids, experts, npad, top_k=k, cfg=c1, dtype=dtype,
                                                        a_scale=a1_s, w_scale=s1, block_shape=block),
                    "activation": (lambda: fm.quant_fp8(mid, gk, silu=True)) if q else (lambda: fm.silu_mul(mid)),
                    "gemm_down": lambda: fm.moe_gemm(a2, w2b, down, ids, experts, npad, top_k=k, cfg=c2, dtype=dtype,
                                                     a_scale=a2_s, w_scale=s2, topk_weights=twf, a_per_pair=True,
                                                     block_shape=block),
                    "sum": lambda: fm.moe_sum(down.view(t, k, h), out),
                    "total": lambda: fused_moe(x, w1, w2, tw, ti, dtype=dtype, w1_scale=s1, w2_scale=s2,
                                               block_shape=block),
                }
                if q:
                    stages["quant_input"] = lambda: fm.quant_fp8(x, gk)
                for name, fn in stages.items():
                    try:
                        p20, p50, p80 = bench(fn, graph=True)
                        rows.append(dict(provider="sm12x_stage", stage=name, dtype=dtype, shape=shape, tokens=t,
                                         ms=p50, ms_p20_p80=[p20, p80], config=[list(dataclasses.astuple(c1)),
                                                                                 list(dataclasses.astuple(c2))]))
                    except Exception as ex:  # noqa: BLE001
                        rows.append(dict(provider="sm12x_stage", stage=name, dtype=dtype, shape=shape, tokens=t,
                                         error=f"{type(ex).__name__}: {ex}"[:300]))
                print(shape, dtype, t, {r["stage"]: round(r.get("ms", -1), 4) for r in rows[-len(stages):]},
                      flush=True)
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", nargs="+", default=list(planner.MOE_SHAPES))
    ap.add_argument("--dtypes", nargs="+", default=["bf16", "fp8_w8a8", "fp8_w8a8_block", "nvfp4_w4a16"])
    ap.add_argument("--tokens", nargs="+", type=int, default=[1, 16, 64, 256, 1024, 4096])
    ap.add_argument("--out", default=None)
    ap.add_argument("--breakdown", action="store_true", help="time each stage of this project's MoE alone "
                    "(file name *moe-breakdown*)")
    a = ap.parse_args(argv)
    rows, env = [], environment()
    if a.breakdown:
        rows = breakdown(a.shapes, a.dtypes, a.tokens, "cuda", bench_ms)
        print(write_json("moe-breakdown", dict(rows=rows, **env), a.out))
        return 0
    copy = copy_ceiling_gbps()
    for shape in a.shapes:          # written after every shape, so a cut-short run keeps what it measured
        rows += measure([shape], a.dtypes, a.tokens, "cuda", bench_ms, copy_gbps=copy)
        path = write_json("moe", dict(rows=rows, copy_gbps=copy, **env), a.out)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
