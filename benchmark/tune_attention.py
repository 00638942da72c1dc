"""Offline sweep of decode / extend tile configurations on the device (the planner's rules are
derived from these runs; serving never autotunes). Every configuration's output is compared with
the planned configuration's on the same inputs (``max_diff_vs_plan``; rows above ``--tolerance``
are marked ``mismatch`` and printed as such): a fast tile that computes something else must not
become a rule.

    python benchmark/tune_attention.py [--kv-dtype nvfp4 fp8_e4m3 bf16]
"""
from __future__ import annotations

import argparse
import itertools
import math
import os
import sys
from dataclasses import replace

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _harness import bench_ms, environment, max_diff, write_json  # noqa: E402
from attention import DEV, flashinfer_decode, flashinfer_prefill, kv_bytes_per_token, make_pool  # noqa: E402

from sgl_kernel_sm12x import planner  # noqa: E402
from sgl_kernel_sm12x.attention.decode import decode_attention, decode_workspace  # noqa: E402
from sgl_kernel_sm12x.attention.extend import LOG2E, extend_attention  # noqa: E402


def _ws_extend(q, k, v, pool, qo, kvp, kvi, pl, cfg, chunk, group, dec_regs):
    """The warp-specialized NVFP4 extend kernel launched with this script's own override of its
    decoder warpgroup's register count (the scales computed as ``extend_attention`` does)."""
    from sgl_kernel_sm12x.attention import extend_wgmma
    from sgl_kernel_sm12x.attention.kv_tile import FP4_PTX_UNIT
    out = torch.empty_like(q)
    sm = 1.0 / math.sqrt(q.shape[2])
    ks, vs = pool["k_scale"] / FP4_PTX_UNIT, pool["v_scale"] / FP4_PTX_UNIT
    extend_wgmma.launch(q, k, v, out, pool["k_cache"], pool["v_cache"], pool["k_scale_cache"], pool["v_scale_cache"],
                        qo, kvp, kvi, pl, qk_scale_prefix=sm * ks * LOG2E,
                        qk_scale_ext=sm * LOG2E, v_scale_prefix=vs, logit_cap=0.0, group=group, page_size=1,
                        max_extend_len=chunk, cfg=cfg, dec_regs=dec_regs)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--kv-dtype", nargs="+", default=["nvfp4", "fp8_e4m3", "bf16"])
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--extend", action="store_true")
    ap.add_argument("--block-n", type=int, nargs="+", default=[32, 64, 128])
    ap.add_argument("--warps", type=int, nargs="+", default=[4, 8])
    ap.add_argument("--stages", type=int, nargs="+", default=[2, 3])
    ap.add_argument("--prefetch", type=int, nargs="+", default=[0, 1],
                    help="decode: register prefetch of the next raw pool tile off (0) / on (1)")
    ap.add_argument("--min-split-tokens", type=int, nargs="+", default=None,
                    help="decode: split lengths to sweep (default: the planner's)")
    ap.add_argument("--decode-shapes", nargs="+", default=["128x4096", "1x32768"],
                    help="decode: BATCHxCONTEXT points")
    ap.add_argument("--fp4-mma", type=int, nargs="+", default=[0],
                    help="decode, nvfp4: also sweep the one-warp kernel that decodes tiles into MMA operand "
                    "registers (1); its --block-n, --prefetch and split values are taken, warps / stages do not apply")
    ap.add_argument("--max-splits", type=int, nargs="+", default=None,
                    help="decode: split-KV programs per (request, kv head) to sweep (default: the planner's)")
    ap.add_argument("--pack", type=int, nargs="+", default=[1, 2, 4],
                    help="extend: query heads of a KV group packed into one program's rows")
    ap.add_argument("--tiles", nargs="+", default=None,
                    help="extend: BLOCK_MxBLOCK_NxWARPSxSTAGES tiles to sweep (default: a fixed list)")
    ap.add_argument("--prefix-stages", type=int, nargs="+", default=None,
                    help="extend: pipeline stages of the prefix loop alone (0: the tile's)")
    ap.add_argument("--heavy-first", type=int, nargs="+", default=None,
                    help="extend: longest causal row blocks launched first (1) or in order (0)")
    ap.add_argument("--quant-prefix-unmasked", type=int, nargs="+", default=None,
                    help="extend, quantized pools: whole prefix tiles select-free (1) or masked (0)")
    ap.add_argument("--diag-in-loop", type=int, nargs="+", default=None,
                    help="extend: the causal diagonal tiles inside the whole-tile loop (1) or a loop of their own (0)")
    ap.add_argument("--wgmma", type=int, nargs="+", default=None,
                    help="extend, nvfp4 on sm_90: the Gluon kernel overlapping the tile decode with the MMAs (1) "
                    "or the Triton kernel (0)")
    ap.add_argument("--mma2", type=int, nargs="+", default=None,
                    help="extend, 16-bit pools at head_dim 64 / 128: the Gluon mma.sync kernel of extend_mma (1) or the "
                    "Triton kernel (0); its tiles give each warp 16 whole rows (block_m = 16 x warps)")
    ap.add_argument("--dec-regs", type=int, nargs="+", default=None,
                    help="extend, nvfp4 on the sm_90 wgmma kernel: the decoder warpgroup's registers a thread "
                    "(default: the kernel's); passed to the launch as this script's own override")
    ap.add_argument("--prefix-loop", type=int, nargs="+", default=None,
                    help="extend, shapes without a prefix: compiled with (1) or without (0) the prefix phase")
    ap.add_argument("--plan-arch", type=int, default=None,
                    help="plan for this compute capability instead of the device's (e.g. 120, to time the "
                    "sm_120 tiles' code shape on another card: with DISABLE_MMA_V3=1 Hopper uses mma.sync as "
                    "sm_120 does; its shared memory and clocks are not sm_120's)")
    ap.add_argument("--extend-shapes", nargs="+", default=["1x0x8192", "1x4096x1024", "8x4096x1024"],
                    help="extend: BATCHxPREFIXxCHUNK points")
    ap.add_argument("--maxnreg", type=int, nargs="+", default=[0],
                    help="decode: register caps of the Triton split stage to sweep (0: none, ptxas chooses)")
    ap.add_argument("--flashinfer", action="store_true",
                    help="time FlashInfer's bf16 kernel on each shape in the same run (decode: paged decode; "
                    "extend: ragged causal prefill)")
    ap.add_argument("--flashinfer-backend", default="auto",
                    help="FlashInfer's kernel backend for --flashinfer (fa2: what an SM120 card runs)")
    ap.add_argument("--tolerance", type=float, default=3e-2,
                    help="largest |output - planned configuration's output| accepted")
    a = ap.parse_args()
    env = environment()
    arch = a.plan_arch or planner.current_arch()
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    d, hq, hkv = a.head_dim, 32, 8
    rows = []
    if a.extend:
        for kv in a.kv_dtype:
            for batch, prefix, chunk in (tuple(int(x) for x in sh.split("x")) for sh in a.extend_shapes):
                flops = 4 * batch * hq * d * (chunk * prefix + chunk * chunk / 2)
                T = batch * chunk
                q = torch.randn(T, hq, d, device=DEV, dtype=torch.bfloat16)
                k = torch.randn(T, hkv, d, device=DEV, dtype=torch.bfloat16)
                v = torch.randn_like(k)
                qo = torch.arange(batch + 1, dtype=torch.int32, device=DEV) * chunk
                kvp = torch.arange(batch + 1, dtype=torch.int32, device=DEV) * prefix
                kvi = torch.arange(max(1, batch * prefix), dtype=torch.int32, device=DEV)
                pl = torch.full((batch,), prefix, dtype=torch.int32, device=DEV)
                pool = make_pool(kv, max(1, batch * prefix), hkv, d)
                plan = planner.plan_extend(arch, head_dim=d, kv_dtype=kv, group=hq // hkv, prefix=prefix > 0,
                                           short=chunk <= planner.SHORT_CHUNK)
                tiles = [(plan.block_m, plan.block_n, plan.num_warps, plan.num_stages),
                         (128, 64, 8, 3), (128, 128, 8, 3), (128, 128, 8, 2), (128, 64, 4, 3),
                         (64, 64, 4, 3), (128, 32, 8, 3), (64, 128, 4, 2)]
                if a.tiles:
                    tiles = [tuple(int(x) for x in t.split("x")) for t in a.tiles]
                # the swept knobs (the plan's value where a flag is not given); every other field
                # is the plan's. A shape with a prefix always compiles the prefix phase.
                knobs = {"prefix_stages": [int(x) for x in a.prefix_stages or [plan.prefix_stages]]}
                for field, given in (("heavy_first", a.heavy_first), ("quant_prefix_unmasked", a.quant_prefix_unmasked),
                                     ("diag_in_loop", a.diag_in_loop), ("prefix_loop", a.prefix_loop),
                                     ("wgmma", a.wgmma), ("mma2", a.mma2)):
                    knobs[field] = [bool(x) for x in given] if given else [getattr(plan, field)]
                knobs["prefix_loop"] = [x or prefix > 0 for x in knobs["prefix_loop"]]
                cands = dict.fromkeys([plan] + [
                    replace(plan, block_m=bm, block_n=bn, num_warps=nw, num_stages=ns, pack=pk,
                            **dict(zip(knobs, vals)))
                    for (bm, bn, nw, ns), pk, *vals in itertools.product(tiles, a.pack, *knobs.values())
                    if (hq // hkv) % pk == 0 and bm // pk >= 8
                    and (not dict(zip(knobs, vals))["wgmma"]
                         or kv in ("nvfp4", "bf16", "fp16") and prefix > 0 and bm == 128 and nw in (4, 8))
                    and (not dict(zip(knobs, vals))["mma2"] or kv in ("bf16", "fp16") and bm == 16 * nw)])
                if a.flashinfer:
                    fi_ms = bench_ms(flashinfer_prefill(q, qo, batch, prefix, chunk, hkv, a.flashinfer_backend), warmup=5, rep=30)[1]
                    rows.append(dict(phase="extend", provider="flashinfer", kv_dtype="bf16", batch=batch,
                                     prefix=prefix, chunk=chunk, ms=fi_ms, tflops=flops / fi_ms / 1e9))
                    print(f"extend flashinfer {batch}x{prefix}+{chunk:<5} {fi_ms:7.3f} ms "
                          f"{flops / fi_ms / 1e9:6.1f} TFLOP/s")
                if plan.wgmma:      # the Triton kernel as planned where the Gluon one is not
                    cands[planner.plan_extend(arch, head_dim=d, kv_dtype=kv, group=hq // hkv, prefix=prefix > 0,
                                              gluon=False)] = None
                anchor = None           # the planned configuration's output, the first candidate's
                ws = kv == "nvfp4"          # an NVFP4 wgmma plan runs the warp-specialized kernel
                runs = [(cfg, r) for cfg in cands
                        for r in ((a.dec_regs or [None]) if cfg.wgmma and ws else [None])]
                for cfg, dec_regs in runs:
                    bm, bn, nw, ns = cfg.block_m, cfg.block_n, cfg.num_warps, cfg.num_stages
                    if dec_regs is None:
                        fn = lambda: extend_attention(  # noqa: E731
                            q, k, v, pool["k_cache"], pool["v_cache"], qo, kvp, kvi, pl, kv_dtype=kv,
                            max_extend_len=chunk, k_scale_cache=pool.get("k_scale_cache"),
                            v_scale_cache=pool.get("v_scale_cache"), k_scale=pool.get("k_scale", 1.0),
                            v_scale=pool.get("v_scale", 1.0), config=cfg, max_prefix_len=prefix, check_slots=False)
                    else:
                        fn = lambda: _ws_extend(q, k, v, pool, qo, kvp, kvi, pl, cfg, chunk, hq // hkv,  # noqa: E731
                                                dec_regs)
                    try:
                        out = fn()
                        if anchor is None:
                            anchor, diff = out, 0.0
                        else:
                            diff = max_diff(out, anchor)
                        _, ms, _ = bench_ms(fn, warmup=5, rep=30)
                    except Exception as e:
                        print(f"extend {kv} {cfg} ERROR {str(e)[:100]}")
                        continue
                    rows.append(dict(phase="extend", kv_dtype=kv, batch=batch, prefix=prefix, chunk=chunk,
                                     config=cfg.as_dict(), dec_regs=dec_regs,
                                     planned=cfg == plan, ms=ms, tflops=flops / ms / 1e9,
                                     max_diff_vs_plan=diff, mismatch=diff > a.tolerance))
                    print(f"extend {kv:<9} {batch}x{prefix}+{chunk:<5} bm={bm} bn={bn} w={nw} st={ns} pack={cfg.pack} "
                          f"ps={cfg.prefix_stages} hf={int(cfg.heavy_first)} "
                          f"qu={int(cfg.quant_prefix_unmasked)} dl={int(cfg.diag_in_loop)} pl={int(cfg.prefix_loop)} "
                          f"wg={int(cfg.wgmma)} m2={int(cfg.mma2)}{' dec_regs=%d' % dec_regs if dec_regs else ''} "
                          f"{ms:7.3f} ms {flops / ms / 1e9:6.1f} TFLOP/s{'  <- plan' if cfg == plan else ''}"
                          f"{'  MISMATCH %.3g' % diff if diff > a.tolerance else ''}")
        write_json("tune-extend", {**env, "benchmark": "tune_extend", "plan_arch": arch,
                                   "disable_mma_v3": os.environ.get("DISABLE_MMA_V3", ""), "rows": rows})
        return
    for kv in a.kv_dtype:
        for batch, ctx in (tuple(int(x) for x in sh.split("x")) for sh in a.decode_shapes):
            pool = make_pool(kv, batch * ctx, hkv, d)
            seq = torch.full((batch,), ctx, dtype=torch.int32, device=DEV)
            indptr = torch.arange(batch + 1, dtype=torch.int32, device=DEV) * ctx
            indices = torch.arange(batch * ctx, dtype=torch.int32, device=DEV)
            q = torch.randn(batch, hq, d, device=DEV, dtype=torch.bfloat16)
            out = torch.empty_like(q)
            plan = planner.plan_decode(arch, head_dim=d, kv_dtype=kv, group=hq // hkv, batch=batch, kv_heads=hkv,
                                       num_sms=sms)
            nbytes = batch * ctx * kv_bytes_per_token(kv, hkv, d)
            splits = a.min_split_tokens or [plan.min_split_tokens]
            max_splits = a.max_splits or [plan.max_splits]
            # candidates are the plan with the swept fields replaced (grid order and the rest as planned)
            cands = dict.fromkeys([plan] + [replace(plan, block_n=bn, num_warps=nw, num_stages=ns, max_splits=msp,
                                                    min_split_tokens=mst, prefetch=bool(pf), fp4_mma=False,
                                                    maxnreg=mr)
                                            for bn, nw, ns, pf, mst, msp, mr in itertools.product(
                                                a.block_n, a.warps, a.stages, a.prefetch, splits, max_splits,
                                                a.maxnreg)
                                            if 0 in a.fp4_mma or kv != "nvfp4"])
            if kv == "nvfp4":       # the Triton split stage as planned where the register-operand kernel is not
                cands[planner.plan_decode(arch, head_dim=d, kv_dtype=kv, group=hq // hkv, batch=batch, kv_heads=hkv,
                                          num_sms=sms, fp4_mma=False)] = None
            if kv == "nvfp4" and 1 in a.fp4_mma:
                cands.update(dict.fromkeys(replace(plan, block_n=bn, num_warps=1, num_stages=1, max_splits=msp,
                                                   min_split_tokens=mst, prefetch=bool(pf), fp4_mma=True,
                                                   maxnreg=0)
                                           for bn, mst, msp, pf in itertools.product(a.block_n, splits, max_splits,
                                                                                     a.prefetch)))
            if a.flashinfer and kv == "bf16":
                fi_ms = bench_ms(flashinfer_decode(q, pool, indptr, indices, hkv, a.flashinfer_backend), graph=True)[1]
                rows.append(dict(phase="decode", provider="flashinfer", kv_dtype=kv, batch=batch, context=ctx,
                                 ms=fi_ms, gbps=nbytes / fi_ms / 1e6))
                print(f"decode flashinfer b={batch:<4} ctx={ctx:<6} {fi_ms * 1e3:8.1f} us "
                      f"{nbytes / fi_ms / 1e6:7.0f} GB/s")
            anchor = None               # the planned configuration's output, the first candidate's
            for cfg in cands:
                bn, nw, ns = cfg.block_n, cfg.num_warps, cfg.num_stages
                ws = decode_workspace(batch, hq, d, cfg.max_splits, DEV)
                fn = lambda: decode_attention(  # noqa: E731
                    q, pool["k_cache"], pool["v_cache"], indptr, indices, seq, kv_dtype=kv,
                    k_scale_cache=pool.get("k_scale_cache"), v_scale_cache=pool.get("v_scale_cache"),
                    k_scale=pool.get("k_scale", 1.0), v_scale=pool.get("v_scale", 1.0), out=out, workspace=ws,
                    config=cfg, check_slots=False)
                try:
                    res = fn().clone()
                    if anchor is None:
                        anchor, diff = res, 0.0
                    else:
                        diff = max_diff(res, anchor)
                    _, ms, _ = bench_ms(fn, graph=True)
                except Exception as e:
                    print(f"{kv} b={batch} ctx={ctx} {cfg} ERROR {str(e)[:100]}")
                    continue
                rows.append(dict(phase="decode", kv_dtype=kv, batch=batch, context=ctx, config=cfg.as_dict(),
                                 planned=cfg == plan, ms=ms, gbps=nbytes / ms / 1e6, max_diff_vs_plan=diff,
                                 mismatch=diff > a.tolerance))
                print(f"decode {kv:<9} b={batch:<4} ctx={ctx:<6} bn={bn:<4} w={nw} st={ns} pf={int(cfg.prefetch)} "
                      f"split={cfg.min_split_tokens} ms={cfg.max_splits} mma={int(cfg.fp4_mma)} reg={cfg.maxnreg} "
                      f"{ms * 1e3:8.1f} us "
                      f"{nbytes / ms / 1e6:7.0f} GB/s{'  <- plan' if cfg == plan else ''}"
                      f"{'  MISMATCH %.3g' % diff if diff > a.tolerance else ''}")
    write_json("tune-attention", {**env, "benchmark": "tune_attention", "rows": rows})


if __name__ == "__main__":
    main()
