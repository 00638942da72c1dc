"""SGLang's own Triton kernels of a hybrid model's forward, compiled for sm_120 / sm_121 at the
choices SGLang makes on those cards, with shared memory, registers and spills.

Qwen3-Next (Gated DeltaNet layers: gating, causal conv1d, the chunked delta rule in prefill and the
recurrent update in decode; a 512-expert top-10 MoE) and Nemotron-H (Mamba-2 layers: causal conv1d
and the SSD chunk scan in prefill, the selective state update in decode). No GPU is needed:

1. SGLang's kernel modules are imported as an SM120 card makes them choose (its shared memory,
   101,376 B, and compute capability 12.x read by ``fla.utils``; the MoE config SGLang's
   ``get_config`` picks for the card's name);
2. each op is called on CPU tensors with the model's per-GPU dimensions; every launch is recorded
   at ``JITFunction.run`` (kernel, argument types, constexprs, warps, stages) instead of run, and an
   autotuned kernel records every config of its list (its autotuner may time any of them on the
   card, whatever a shape's pruning keeps);
3. each recorded launch is compiled for ``sm_120`` / ``sm_121`` (Triton's own ptxas log: shared
   memory, registers, spills) -- stage ``sglang``; then with this project's fix where one applies
   -- stage ``fixed`` (one row per kernel even where nothing changed).

    python benchmark/aot_sglang_hybrid.py --out benchmark/results/aot-sglang-hybrid-sm120-sm121.json
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SM120_SMEM = 101376
SM120_SMS = 170                 # RTX 5090

# Qwen3-Next-80B-A3B per GPU at TP 1 (its config.json) and Nemotron-Nano-9B-v2's Mamba-2 layers
QWEN3_NEXT = dict(hidden=2048, linear_k_heads=16, linear_v_heads=32, linear_k_dim=128, linear_v_dim=128, conv=4,
                  experts=512, top_k=10, moe_inter=512)
NEMOTRON_H = dict(hidden=4480, mamba_heads=128, mamba_head_dim=80, n_groups=8, d_state=128, conv=4, chunk=128)


# ------------------------------------------------------------------------------------------------
# recording launches
# ------------------------------------------------------------------------------------------------

_TORCH_TYPES = None


def _tensor_type(t) -> str:
    import torch
    global _TORCH_TYPES
    if _TORCH_TYPES is None:
        _TORCH_TYPES = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32", torch.float64: "fp64",
                        torch.int8: "i8", torch.int16: "i16", torch.int32: "i32", torch.int64: "i64",
                        torch.uint8: "u8", torch.bool: "i1", torch.float8_e4m3fn: "fp8e4nv",
                        torch.float8_e5m2: "fp8e5"}
    return "*" + _TORCH_TYPES[t.dtype]


class Recorder:
    """Patches ``JITFunction.run`` (launch recorded, nothing compiled or run) and the autotuner
    (every config recorded, the first one launched, so the host code goes on)."""

    def __init__(self):
        self.launches = []
        self.model = None

    @contextlib.contextmanager
    def active(self):
        from triton.runtime.autotuner import Autotuner
        from triton.runtime.jit import JITFunction

        rec = self
        orig_run, orig_at = JITFunction.run, Autotuner.run

        def run(jit, *args, grid, warmup, **kwargs):
            rec._record(jit, args, kwargs, configs=kwargs.pop("__sm12x_configs", None))

        def at_run(tuner, *args, **kwargs):
            tuner.nargs = dict(zip(tuner.arg_names, args))
            pruned = tuner.prune_configs(kwargs)
            tuner.best_config = pruned[0]
            # every config of the list, not only those this shape's pruning keeps: a longer
            # sequence keeps wider tiles, and the table must hold for any shape
            return tuner.fn.run(*args, **kwargs, **pruned[0].all_kwargs(),
                                __sm12x_configs=[dict(c.all_kwargs()) for c in tuner.configs])

        JITFunction.run, Autotuner.run = run, at_run
        try:
            yield self
        finally:
            JITFunction.run, Autotuner.run = orig_run, orig_at

    def _record(self, jit, args, kwargs, configs):
        bound = dict(zip(jit.arg_names, args))
        opts = {k: kwargs.pop(k) for k in ("num_warps", "num_stages", "num_ctas", "maxnreg") if k in kwargs}
        bound.update(kwargs)
        self.launches.append(dict(model=self.model, jit=jit, bound=bound, opts=opts, configs=configs))


def _signature(jit, bound, cfg_kwargs):
    """The JIT's specialisation of one launch: types of runtime arguments, constexprs, and the
    divisibility-16 attributes it would derive (pointers assumed 16-byte aligned)."""
    import torch

    sig, cx, attrs = {}, {}, {}
    values = dict(bound, **cfg_kwargs)
    for i, p in enumerate(jit.params):
        name = p.name
        v = values.get(name, p.default if p.default is not p.empty_default() else None) \
            if hasattr(p, "empty_default") else values.get(name, p.default)
        if p.is_constexpr:
            cx[name] = v
            sig[name] = "constexpr"
            continue
        nospec = getattr(p, "do_not_specialize", False)
        if isinstance(v, torch.Tensor):
            sig[name] = _tensor_type(v)
            attrs[(i,)] = [["tt.divisibility", 16]]
        elif v is None:
            sig[name] = "constexpr"
            cx[name] = None
        elif isinstance(v, bool):
            sig[name] = "i1"
        elif isinstance(v, int):
            if v == 1 and not nospec:
                sig[name] = "constexpr"
                cx[name] = 1
                continue
            sig[name] = "i32" if -2 ** 31 <= v < 2 ** 31 else "i64"
            if v % 16 == 0 and not nospec:
                attrs[(i,)] = [["tt.divisibility", 16]]
        elif isinstance(v, float):
            sig[name] = "fp32"
        else:
            import triton.language as tl
            if isinstance(v, tl.dtype):
                sig[name] = "constexpr"
                cx[name] = v
            else:
                raise TypeError(f"{jit.fn.__name__}: argument {name} of type {type(v).__name__}")
    return sig, cx, attrs


def compile_launch(jit, bound, opts, cfg_kwargs, arch):
    from triton.compiler import ASTSource

    from sgl_kernel_sm12x import planner
    from sgl_kernel_sm12x.budget import _compile_with_usage, _mma_family

    sig, cx, attrs = _signature(jit, bound, cfg_kwargs)
    o = dict(opts)
    for k in ("num_warps", "num_stages", "maxnreg", "num_ctas"):
        if k in cfg_kwargs:
            o[k] = cfg_kwargs[k]
    o.setdefault("num_warps", 4)
    o.setdefault("num_stages", 3)
    k, (regs, spill, _) = _compile_with_usage(ASTSource(fn=jit, signature=sig, constexprs=cx, attrs=attrs), arch, o)
    shared = int(k.metadata.shared)
    limit = planner.arch_limits(arch).smem_per_block
    return dict(shared=shared, limit=limit, regs=regs, spill=spill, mma=_mma_family(k.asm["ptx"]),
                fits=shared <= limit and spill == 0, num_warps=o["num_warps"], num_stages=o["num_stages"])


# ------------------------------------------------------------------------------------------------
# SGLang imported as on an SM120 card
# ------------------------------------------------------------------------------------------------

def emulate_sm120():
    """``fla.utils`` reads the card at import: SM120 is "hopper" to it (capability >= 9) with
    101,376 B of shared memory, under every named arch's threshold but Ada's."""
    import sglang.kernels.ops.attention.fla.utils as fu

    fu.is_nvidia = True
    fu.is_nvidia_hopper = True
    fu.is_tf32_supported = True
    fu.device_platform = "nvidia"
    fu.check_shared_mem = lambda arch="none", tensor_idx=0: SM120_SMEM >= fu.Backend.get_shared_memory(arch)
    fu.get_multiprocessor_count = lambda tensor_idx=0: SM120_SMS
    fu.custom_device_ctx = lambda index: contextlib.nullcontext()
    fu.get_all_max_shared_mem = lambda: [SM120_SMEM]
    import torch
    if not hasattr(torch.cpu, "device"):           # host code enters the tensors' device context
        torch.cpu.device = lambda index=None: contextlib.nullcontext()


# ------------------------------------------------------------------------------------------------
# the forwards
# ------------------------------------------------------------------------------------------------

def qwen3_next_gdn(rec, tokens=(37, 200), decode_batch=8):
    """A Gated DeltaNet layer in prefill (two requests, varlen) and decode, as SGLang's GDN backend
    calls the ops (Triton kernels; its CUDA ops are not Triton)."""
    import torch

    from sglang.kernels.ops.attention.fla.chunk import chunk_gated_delta_rule
    from sglang.kernels.ops.attention.linear.fused_gdn_gating import fused_gdn_gating
    from sglang.kernels.ops.attention.linear.fused_sigmoid_gating_recurrent import fused_sigmoid_gating_delta_rule_update
    from sglang.kernels.ops.mamba.causal_conv1d_triton import causal_conv1d_fn, causal_conv1d_update

    m = QWEN3_NEXT
    H, HV, K, V = m["linear_k_heads"], m["linear_v_heads"], m["linear_k_dim"], m["linear_v_dim"]
    conv_dim = 2 * H * K + HV * V
    T = sum(tokens)
    bf = torch.bfloat16
    rec.model = "qwen3-next"
    cu = torch.tensor([0, tokens[0], T], dtype=torch.int32)
    slots = torch.tensor([1, 2], dtype=torch.int32)
    conv_w = torch.randn(conv_dim, m["conv"], dtype=bf)
    conv_state = torch.zeros(4, conv_dim, m["conv"] - 1, dtype=bf)
    x = torch.randn(conv_dim, T, dtype=bf)
    causal_conv1d_fn(x, conv_w, None, activation="silu", conv_states=conv_state, has_initial_state=torch.tensor(
        [False, True]), cache_indices=slots, query_start_loc=cu, seq_lens_cpu=list(tokens))
    A_log, dt_bias = torch.randn(HV, dtype=torch.float32), torch.randn(HV, dtype=bf)
    a, b = torch.randn(T, HV, dtype=bf), torch.randn(T, HV, dtype=bf)
    g, beta = fused_gdn_gating(A_log, a, b, dt_bias)
    q, k = torch.randn(1, T, H, K, dtype=bf), torch.randn(1, T, H, K, dtype=bf)
    v = torch.randn(1, T, HV, V, dtype=bf)
    state = torch.zeros(4, HV, V, K, dtype=torch.float32)
    chunk_gated_delta_rule(q, k, v, g.view(1, T, HV) if g.dim() != 3 else g, beta.view(1, T, HV) if beta.dim() != 3
                           else beta, scale=K ** -0.5, initial_state=state, initial_state_indices=slots.long(),
                           cu_seqlens=cu.long(), use_qk_l2norm_in_kernel=True)
    B = decode_batch
    from sglang.kernels.ops.attention.fla.fused_recurrent import fused_recurrent_gated_delta_rule_packed_decode
    # decode: the packed path SGLang's GDN backend takes on CUDA (the conv output, gating and the
    # recurrent update in one kernel), and the unpacked one beside it
    fused_recurrent_gated_delta_rule_packed_decode(
        torch.randn(B, conv_dim, dtype=bf), torch.randn(B, HV, dtype=bf), torch.randn(B, HV, dtype=bf), A_log, dt_bias,
        K ** -0.5, state, torch.empty(B, 1, HV, V, dtype=bf), torch.arange(B, dtype=torch.int32) % 4,
        use_qk_l2norm_in_kernel=True)
    xd = torch.randn(B, conv_dim, dtype=bf)
    causal_conv1d_update(xd, conv_state, conv_w, None, activation="silu",
                         conv_state_indices=torch.arange(B, dtype=torch.int32) % 4)
    fused_sigmoid_gating_delta_rule_update(
        A_log=A_log, a=torch.randn(B, HV, dtype=bf), dt_bias=dt_bias, softplus_beta=1.0, softplus_threshold=20.0,
        q=torch.randn(1, B, H, K, dtype=bf), k=torch.randn(1, B, H, K, dtype=bf), v=torch.randn(1, B, HV, V, dtype=bf),
        b=torch.randn(B, HV, dtype=bf), initial_state_source=state, initial_state_indices=torch.arange(B) % 4,
        scale=K ** -0.5, use_qk_l2norm_in_kernel=True, cu_seqlens=torch.arange(B + 1, dtype=torch.int32))


def nemotron_h_mamba2(rec, tokens=(37, 200), decode_batch=8):
    """A Mamba-2 layer of Nemotron-H in prefill (two requests, varlen: causal conv1d, the SSD chunk
    scan) and decode (conv update, selective state update)."""
    import torch

    from sglang.kernels.ops.mamba.causal_conv1d_triton import causal_conv1d_fn, causal_conv1d_update
    from sglang.kernels.ops.mamba.triton_ops.mamba_ssm import selective_state_update
    from sglang.kernels.ops.mamba.triton_ops.ssd_combined import mamba_chunk_scan_combined

    m = NEMOTRON_H
    nh, hd, G, N = m["mamba_heads"], m["mamba_head_dim"], m["n_groups"], m["d_state"]
    conv_dim = nh * hd + 2 * G * N
    T = sum(tokens)
    bf = torch.bfloat16
    rec.model = "nemotron-h"
    cu = torch.tensor([0, tokens[0], T], dtype=torch.int32)
    slots = torch.tensor([1, 2], dtype=torch.int32)
    conv_w = torch.randn(conv_dim, m["conv"], dtype=bf)
    conv_state = torch.zeros(4, conv_dim, m["conv"] - 1, dtype=bf)
    causal_conv1d_fn(torch.randn(conv_dim, T, dtype=bf), conv_w, None, activation="silu", conv_states=conv_state,
                     has_initial_state=torch.tensor([False, True]), cache_indices=slots, query_start_loc=cu,
                     seq_lens_cpu=list(tokens))
    from sglang.kernels.ops.mamba.triton_ops.ssd_combined import _mamba_chunk_scan_combined_fwd  # noqa: F401
    chunk = m["chunk"]
    seq_idx = torch.cat([torch.full((n,), i, dtype=torch.int32) for i, n in enumerate(tokens)]).view(1, T)
    from sglang.srt.layers.attention.mamba.mamba2_metadata import Mamba2Metadata
    chunk_indices, chunk_offsets = Mamba2Metadata._query_start_loc_to_chunk_indices_offsets(cu, chunk, T)
    state = torch.zeros(4, nh, hd, N, dtype=torch.float32)
    mamba_chunk_scan_combined(torch.randn(1, T, nh, hd, dtype=bf), torch.randn(1, T, nh, dtype=bf),
                              -torch.rand(nh, dtype=torch.float32), torch.randn(1, T, G, N, dtype=bf),
                              torch.randn(1, T, G, N, dtype=bf), chunk, D=torch.randn(nh, dtype=torch.float32),
                              z=None, dt_bias=torch.randn(nh, dtype=torch.float32), initial_states=state[slots.long()],
                              seq_idx=seq_idx, chunk_indices=chunk_indices, chunk_offsets=chunk_offsets,
                              cu_seqlens=cu, dt_softplus=True, return_varlen_states=True, return_final_states=False,
                              out=torch.empty(1, T, nh, hd, dtype=bf), state_dtype=torch.float32)
    B = decode_batch
    causal_conv1d_update(torch.randn(B, conv_dim, dtype=bf), conv_state, conv_w, None, activation="silu",
                         conv_state_indices=torch.arange(B, dtype=torch.int32) % 4)
    A = -torch.rand(nh, hd, N, dtype=torch.float32)
    selective_state_update(state, torch.randn(B, nh, hd, dtype=bf), torch.randn(B, nh, hd, dtype=bf), A,
                           torch.randn(B, G, N, dtype=bf), torch.randn(B, G, N, dtype=bf),
                           D=torch.randn(nh, hd, dtype=torch.float32), dt_bias=torch.randn(nh, hd, dtype=torch.float32),
                           dt_softplus=True, state_batch_indices=torch.arange(B, dtype=torch.int32) % 4,
                           out=torch.empty(B, nh, hd, dtype=bf))


def qwen3_next_moe(rec, tokens=(1, 16, 256, 4096)):
    """Qwen3-Next's 512-expert top-10 MoE through SGLang's Triton ``fused_experts``, in place as
    its MoE layers run it, at the config its ``try_get_optimal_moe_config`` picks for an RTX 5090
    (a shipped table for that name, else its default) at each batch."""
    import torch

    import sglang.srt.layers.moe.moe_runner.triton_utils.fused_moe_triton_config as fmc
    from sglang.srt.layers.moe.moe_runner.triton_utils.fused_moe import fused_experts_impl

    m = QWEN3_NEXT
    E, k, H, I = m["experts"], m["top_k"], m["hidden"], m["moe_inter"]
    bf = torch.bfloat16
    rec.model = "qwen3-next"
    with contextlib.ExitStack() as st:
        st.enter_context(_patched(fmc, "get_device_name", lambda *a: "NVIDIA GeForce RTX 5090"))
        st.enter_context(_patched(torch.cuda, "get_device_capability", lambda *a: (12, 0)))
        from types import SimpleNamespace

        import sglang.srt.layers.moe.moe_runner.triton_utils.fused_moe as fmo
        ex = SimpleNamespace(deterministic=SimpleNamespace(enable_deterministic_inference=False),
                             moe=SimpleNamespace(enable_fused_moe_sum_all_reduce=False))
        import importlib
        mab = importlib.import_module("sglang.srt.layers.moe.moe_runner.triton_utils.moe_align_block_size")
        # the expert alignment is a CUDA op: its buffers keep their shapes (what the launches
        # depend on), their contents are not needed here
        st.enter_context(_patched(mab, "sgl_moe_align_block_size", lambda *a, **k: None))
        for mod in (fmc, fmo):                    # SGLang's server-argument namespaces, unpublished here
            if hasattr(mod, "get_exec"):
                st.enter_context(_patched(mod, "get_exec", lambda: ex))
        w1, w2 = torch.randn(E, 2 * I, H, dtype=bf), torch.randn(E, H, I, dtype=bf)
        for n in tokens:
            x = torch.randn(n, H, dtype=bf)
            topk_w = torch.rand(n, k, dtype=torch.float32)
            topk_ids = torch.stack([torch.randperm(E)[:k] for _ in range(n)]).to(torch.int32)
            # what SGLang's in-place custom op runs (the op itself is registered for CUDA only)
            fused_experts_impl(x, w1, w2, topk_w, topk_ids, inplace=True, filter_expert=False)


@contextlib.contextmanager
def _patched(obj, name, value):
    missing = object()
    old = getattr(obj, name, missing)
    setattr(obj, name, value)
    try:
        yield
    finally:
        if old is missing:
            delattr(obj, name)
        else:
            setattr(obj, name, old)


OPS = {"qwen3-next-gdn": qwen3_next_gdn, "qwen3-next-moe": qwen3_next_moe, "nemotron-h-mamba2": nemotron_h_mamba2}


def relaunch_candidates(bound, opts):
    """Launch changes to try, nearest SGLang's first: fewer stages, more warps, then halved tiles."""
    w, st = opts.get("num_warps", 4), opts.get("num_stages", 3)
    out = [{"num_stages": x} for x in range(st - 1, 0, -1)]
    out += [{"num_warps": 2 * w, "num_stages": x} for x in range(st, 0, -1)]
    tiles = [k for k, v in bound.items() if k.startswith("B") and k[1:].isupper() and isinstance(v, int) and v >= 32]
    for t in tiles:
        out += [{t: bound[t] // 2, "num_stages": x} for x in range(st, 0, -1)]
    return out


def fix_stage(rows, launches, archs):
    """One ``fixed`` row per kernel and arch, and the plugin's table (``hybrid_tiles.json``)."""
    import sglang_sm12x.hybrid_tiles as ht

    table, fixed = {}, []
    by_kernel = {}
    for r in rows:
        by_kernel.setdefault((r["kernel"], r["arch"]), []).append(r)
    first_launch = {}
    for L in launches:
        name = f"{L['jit'].fn.__module__.rsplit('.', 1)[-1]}.{L['jit'].fn.__name__}"
        first_launch.setdefault(name, L)
    for (kernel, arch), rs in sorted(by_kernel.items()):
        L = first_launch[kernel]
        full = f"{L['jit'].fn.__module__}.{L['jit'].fn.__name__}"
        base = dict(model=rs[0]["model"], kernel=kernel, arch=arch, stage="fixed", autotuned=rs[0]["autotuned"])
        if rs[0]["autotuned"]:
            kept = [r for r in rs if r.get("fits")]
            drop = [ht.config_key(r["config"]) for r in rs if not r.get("fits")]
            if drop and kept:
                table.setdefault(str(arch), {}).setdefault(full, {})["drop"] = drop
            fixed.append(dict(base, config={"autotune_configs_kept": len(kept), "of": len(rs)},
                              shared=max((r["shared"] for r in kept), default=None), limit=rs[0].get("limit"),
                              regs=max((r["regs"] for r in kept), default=None),
                              spill=max((r["spill"] for r in kept), default=None), fits=bool(kept),
                              change="dropped " + str(len(drop)) if drop else "none"))
            continue
        bad = [r for r in rs if not r.get("fits")]
        if not bad:
            worst = max(rs, key=lambda r: (r["shared"], r["regs"]))
            fixed.append(dict(base, config=worst.get("config"), shared=worst["shared"], limit=worst["limit"],
                              regs=worst["regs"], spill=worst["spill"], fits=True, change="none"))
            continue
        found = None
        for cand in relaunch_candidates(L["bound"], L["opts"]):
            try:
                res = compile_launch(L["jit"], L["bound"], L["opts"], cand, arch)
            except Exception:  # noqa: BLE001 -- a candidate that does not compile is not taken
                continue
            if res["fits"]:
                found = (cand, res)
                break
        if found is None:
            fixed.append(dict(base, config=None, shared=bad[0]["shared"], limit=bad[0]["limit"], regs=bad[0]["regs"],
                              spill=bad[0]["spill"], fits=False, change="no fitting launch found"))
            continue
        cand, res = found
        table.setdefault(str(arch), {}).setdefault(full, {})["relaunch"] = cand
        fixed.append(dict(base, config=cand, change=f"relaunched with {cand}", **res))
    return fixed, table


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=None)
    ap.add_argument("--arch", default="120,121")
    ap.add_argument("--ops", nargs="+", default=list(OPS))
    ap.add_argument("--write-fixes", default=None,
                    help="write the plugin's table (python/sglang_sm12x/hybrid_tiles.json) of dropped configs / relaunches")
    a = ap.parse_args(argv)
    archs = [int(x) for x in a.arch.split(",")]
    os.environ.pop("TRITON_INTERPRET", None)
    emulate_sm120()
    rec = Recorder()
    errors = []
    with rec.active():
        for name in a.ops:
            try:
                OPS[name](rec)
            except Exception as e:  # noqa: BLE001 -- a forward that stops is reported, the rest go on
                errors.append(f"{name}: {type(e).__name__}: {e}"[:500])
                import traceback
                traceback.print_exc()
    rows, seen = [], set()
    for arch in archs:
        for L in rec.launches:
            jit = L["jit"]
            for cfg in (L["configs"] or [{}]):
                key = (jit.fn.__module__, jit.fn.__name__, arch, json.dumps(_signature(jit, L["bound"], cfg)[:2],
                                                                            default=str, sort_keys=True),
                       json.dumps(L["opts"], sort_keys=True), json.dumps(cfg, default=str, sort_keys=True))
                if key in seen:
                    continue
                seen.add(key)
                row = dict(model=L["model"], kernel=f"{jit.fn.__module__.rsplit('.', 1)[-1]}.{jit.fn.__name__}",
                           arch=arch, stage="sglang", autotuned=L["configs"] is not None,
                           config={k: v for k, v in cfg.items()} or None)
                t0 = time.time()
                try:
                    row.update(compile_launch(jit, L["bound"], L["opts"], cfg, arch))
                except Exception as e:  # noqa: BLE001
                    row.update(error=f"{type(e).__name__}: {e}"[:300], fits=False)
                row["compile_s"] = round(time.time() - t0, 1)
                rows.append(row)
                print(json.dumps({k: row.get(k) for k in ("kernel", "arch", "config", "shared", "regs", "spill",
                                                          "fits", "error")}, default=str), flush=True)
    fixed, table = fix_stage(rows, rec.launches, archs)
    for r in fixed:
        print(json.dumps({k: r.get(k) for k in ("kernel", "arch", "stage", "config", "shared", "regs", "spill", "fits",
                                                "change")}, default=str), flush=True)
    import sglang

    out = dict(benchmark="aot_sglang_hybrid", date=time.strftime("%Y-%m-%d"), sglang=sglang.__version__,
               triton=__import__("triton").__version__, models=dict(qwen3_next=QWEN3_NEXT, nemotron_h=NEMOTRON_H),
               rows=rows + fixed, errors=errors, all_fixed_fit=all(r["fits"] for r in fixed))
    if a.out:
        Path(a.out).write_text(json.dumps(out, indent=1, default=str))
    if a.write_fixes:
        Path(a.write_fixes).write_text(json.dumps(table, indent=1, sort_keys=True) + "\n")
    return 0 if not errors and out["all_fixed_fit"] else 1


if __name__ == "__main__":
    sys.exit(main())
