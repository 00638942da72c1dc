"""Offline sweep of fused-MoE tiles on the device, to derive (and check) ``planner.plan_moe``'s rules.

    python benchmark/tune_moe.py [--shapes qwen3-30b-a3b mixtral gpt-oss] [--dtypes bf16 fp8_w8a8]
                                 [--tokens 1 16 64 256 1024 4096] [--arch-limit 101376]

By default the candidates are the planner's choice and its neighbours (each of BLOCK_M/N/K halved
or doubled, the other warp count, one stage fewer or more, and BLOCK_M or BLOCK_N doubled together
with the other warp count): a local search that says whether a rule leaves speed behind.
``--full`` times the whole grid instead. Only tiles whose modelled shared
memory fits ``--arch-limit`` (101,376 B: what sm_120/121 allow, so an H100 sweep only times tiles
that would also load there) are timed, with CUDA-graph replay; rows record the best candidate and
the planner's choice with their times, written to ``benchmark/results/<date>-<device>-tune-moe.json``.
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from _harness import bench_ms, environment, max_diff, write_json  # noqa: E402
from moe import _weights  # noqa: E402

from sgl_kernel_sm12x import planner  # noqa: E402
from sgl_kernel_sm12x.moe.fused_moe import fused_moe  # noqa: E402


def neighbours(plan, dtype, limit):
    """The planner's tile and every tile one step away from it in one dimension."""
    out = [plan]
    fields = ("block_m", "block_n", "block_k", "num_warps", "num_stages")
    steps = {"block_m": (0.5, 2), "block_n": (0.5, 2), "block_k": (0.5, 2), "num_warps": (0.5, 2),
             "num_stages": (-1, 1)}
    for f in fields:
        for st in steps[f]:
            d = dataclasses.asdict(plan)
            v = d[f] + st if f == "num_stages" else int(d[f] * st)
            if (f == "num_stages" and not 2 <= v <= 6) or (f.startswith("block") and not 16 <= v <= 256) or \
                    (f == "num_warps" and v not in (4, 8)) or (f == "block_k" and dtype == "fp8_w8a8_block" and 128 % v):
                continue
            d[f] = v
            if f == "block_m":
                d["group_m"] = 8 if v >= 64 else 1
            cfg = planner.MoeConfig(d["block_m"], d["block_n"], d["block_k"], d["group_m"], d["num_warps"],
                                    d["num_stages"])
            if planner.moe_gemm_smem(cfg, dtype) <= limit and cfg not in out:
                out.append(cfg)
    # a doubled tile often needs the other warp count to stay out of spills (sm_120 block-fp8 64 x 128:
    # spills at 4 warps, fits at 8, AOT), so that pair of moves is a neighbour too
    for bm, bn in ((plan.block_m, plan.block_n * 2), (plan.block_m * 2, plan.block_n)):
        cfg = planner.MoeConfig(bm, bn, plan.block_k, 8 if bm >= 64 else 1, 12 - plan.num_warps, plan.num_stages)
        if bm <= 256 and bn <= 256 and planner.moe_gemm_smem(cfg, dtype) <= limit and cfg not in out:
            out.append(cfg)
    return out


def candidates(dtype, limit):
    for bm, bn, bk, w, st in itertools.product((16, 32, 64, 128), (32, 64, 128, 256), (32, 64, 128, 256), (4, 8),
                                               (2, 3, 4, 5)):
        if dtype == "fp8_w8a8_block" and 128 % bk:
            continue
        cfg = planner.MoeConfig(bm, bn, bk, 8 if bm >= 64 else 1, w, st)
        if planner.moe_gemm_smem(cfg, dtype) <= limit:
            yield cfg


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", nargs="+", default=list(planner.MOE_SHAPES))
    ap.add_argument("--dtypes", nargs="+", default=["bf16", "fp8_w8a8"])
    ap.add_argument("--tokens", nargs="+", type=int, default=[1, 16, 64, 256, 1024, 4096])
    ap.add_argument("--arch-limit", type=int, default=101376)
    ap.add_argument("--max-candidates", type=int, default=400)
    ap.add_argument("--plan-arch", type=int, default=120, help="whose planner choice is the centre (default sm_120)")
    ap.add_argument("--full", action="store_true", help="time the whole grid, not the planner's neighbourhood")
    ap.add_argument("--tiles", nargs="+", default=[], metavar="BM,BN,BK,W,S[,G]",
                    help="extra candidate tiles (e.g. another library's tuned choices), timed beside the others")
    ap.add_argument("--out", default=None, help="results folder (default benchmark/results)")
    ap.add_argument("--tolerance", type=float, default=2e-2,
                    help="largest max|out - planned output| / max|planned output| a candidate may show")
    a = ap.parse_args(argv)
    arch = a.plan_arch
    rows, env = [], environment()
    for shape in a.shapes:
        e, k, h, i = planner.MOE_SHAPES[shape]
        for dtype in a.dtypes:
            if dtype == "fp8_w8a8_block" and (h % 128 or i % 128):
                continue            # 128 x 128 blocks need multiples of 128 (as in benchmark/moe.py)
            w1, w2, s1, s2, block = _weights(e, h, i, dtype, "cuda")
            for t in a.tokens:
                x = torch.randn(t, h, device="cuda", dtype=torch.bfloat16)
                tw, ti = torch.topk(torch.randn(t, e, device="cuda").softmax(-1), k)
                ti = ti.to(torch.int32)     # as SGLang's top-k hands them over (no conversion inside the timing)
                plan = planner.plan_moe(arch, dtype=dtype, num_experts=e, n=2 * i, k=h, tokens=t, top_k=k,
                                        block_shape=block)
                plan_down = planner.plan_moe(arch, dtype=dtype, num_experts=e, n=h, k=i, tokens=t, top_k=k,
                                             block_shape=block)
                timed, mismatched = [], []
                ref = fused_moe(x, w1, w2, tw, ti, dtype=dtype, w1_scale=s1, w2_scale=s2, block_shape=block,
                                config=(plan, plan_down)).float()
                cands = list(candidates(dtype, a.arch_limit)) if a.full else neighbours(plan, dtype, a.arch_limit)
                for spec in a.tiles:
                    v = [int(x) for x in spec.split(",")]
                    extra = planner.MoeConfig(v[0], v[1], v[2], v[5] if len(v) > 5 else (8 if v[0] >= 64 else 1),
                                              v[3], v[4])
                    if extra not in cands and planner.moe_gemm_smem(extra, dtype) <= a.arch_limit:
                        cands.append(extra)
                for cfg in cands[: a.max_candidates]:
                    run = lambda: fused_moe(x, w1, w2, tw, ti, dtype=dtype, w1_scale=s1, w2_scale=s2,  # noqa: E731
                                            block_shape=block, config=(cfg, cfg))
                    try:
                        err = max_diff(run(), ref, relative=True)
                        if err > a.tolerance:      # computes something else: never a rule
                            mismatched.append((err, cfg))
                            print(shape, dtype, t, "MISMATCH", round(err, 4), cfg.as_dict(), flush=True)
                            continue
                        ms = bench_ms(run, rep=20, graph=True)[1]
                        timed.append((ms, cfg))
                    except Exception:  # noqa: BLE001 -- out of resources etc.: not a candidate
                        continue
                timed.sort(key=lambda x: x[0])
                plan_ms = bench_ms(lambda: fused_moe(x, w1, w2, tw, ti, dtype=dtype, w1_scale=s1, w2_scale=s2,
                                                     block_shape=block, config=(plan, plan_down)), rep=40, graph=True)[1]
                best_ms, best = timed[0] if timed else (None, None)
                rows.append(dict(shape=shape, dtype=dtype, tokens=t, planner=plan.as_dict(), planner_down=plan_down.as_dict(),
                                 planner_ms=plan_ms,
                                 best=best.as_dict() if best else None, best_ms=best_ms,
                                 top5=[(m, c.as_dict()) for m, c in timed[:5]],
                                 mismatched=[(e_, c.as_dict()) for e_, c in mismatched]))
                print(rows[-1]["shape"], dtype, t, "planner", round(plan_ms, 4), "best", best_ms, flush=True)
        # written after every shape, so a cut-short sweep keeps what it timed
        path = write_json("tune-moe", dict(rows=rows, arch_limit=a.arch_limit, mode="full" if a.full else "neighbours",
                                           plan_arch=arch, **env), a.out)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
