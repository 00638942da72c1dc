"""AOT-compile SGLang's own Triton kernels for sm_120 / sm_121 at the configurations SGLang picks, and
at the ones this project's patches pick, and report shared memory, registers and spills.

Run on a CPU machine with SGLang installed (the kernels are SGLang's, imported from it):

    python benchmark/aot_sglang.py --out benchmark/results/aot-sglang-sm120-sm121.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from sgl_kernel_sm12x import planner  # noqa: E402
from sglang_sm12x import tiles  # noqa: E402
from sgl_kernel_sm12x.budget import _compile_with_usage, _mma_family  # noqa: E402


def _compile(fn, sig, cx, opts, arch):
    from triton.compiler import ASTSource

    full = {a: sig.get(a, "constexpr") for a in fn.arg_names}
    for a in fn.arg_names:
        if full[a] == "constexpr" and a not in cx:
            p = fn.params[fn.arg_names.index(a)]
            cx[a] = p.default
    attrs = {(fn.arg_names.index(n),): [["tt.divisibility", 16]]
             for n, t in full.items() if t != "constexpr" and (t.startswith("*") or t in ("i32", "i64"))}
    k, (regs, spill, _) = _compile_with_usage(ASTSource(fn=fn, signature=full, constexprs=cx, attrs=attrs), arch,
                                              opts)
    shared = int(k.metadata.shared)
    return dict(shared=shared, regs=regs, spill=spill, mma=_mma_family(k.asm["ptx"]),
                fits=shared <= planner.arch_limits(arch).smem_per_block and spill == 0)


def context_attention(head_dim, dtype, block, warps, arch=120):
    """SGLang's ``prefill_attention._fwd_kernel`` at one launch configuration."""
    import triton
    from sglang.kernels.ops.attention.prefill_attention import _fwd_kernel as fn

    p = f"*{dtype}"
    sig = {"Q": p, "K": p, "V": p, "sm_scale": "fp32", "B_Start_Loc": "*i32", "B_Seqlen": "*i32", "Out": p}
    for n in ("stride_qbs", "stride_qh", "stride_kbs", "stride_kh", "stride_vbs", "stride_vh", "stride_obs",
              "stride_oh"):
        sig[n] = "i32"
    cx = dict(kv_group_num=1, BLOCK_M=block, BLOCK_DMODEL=triton.next_power_of_2(head_dim), BLOCK_N=block,
              IS_CAUSAL=True, Lk=head_dim)
    return _compile(fn, sig, cx, dict(num_warps=warps, num_stages=1), arch)


def fused_moe(cfg, dtype=None, top_k=8, arch=120):
    """SGLang's ``fused_moe_kernel`` at one config (``dtype`` None: bf16, or "fp8_w8a8")."""
    import triton.language as tl
    from sglang.kernels.ops.moe.fused_moe_triton_kernels import fused_moe_kernel as fn

    ab = "*fp8e4nv" if dtype == "fp8_w8a8" else "*bf16"
    sig = {"a_ptr": ab, "b_ptr": ab, "c_ptr": "*bf16", "a_scale_ptr": "*fp32", "b_scale_ptr": "*fp32",
           "topk_weights_ptr": "*fp32", "sorted_token_ids_ptr": "*i32", "expert_ids_ptr": "*i32",
           "num_tokens_post_padded_ptr": "*i32"}
    for n in ("N", "K", "EM", "num_valid_tokens", "stride_am", "stride_be", "stride_bn",
              "stride_bias_e", "stride_bias_n", "stride_cm", "stride_asm", "stride_ask", "stride_bse",
              "stride_bsk", "stride_bsn"):
        sig[n] = "i32"
    # unit strides are specialised to the constant 1 by the JIT at launch (contiguous K and N)
    cx = dict(stride_ak=1, stride_bk=1, stride_cn=1, a_desc=None, b_desc=None, bias_ptr=None, add_mask_ptr=None, group_n=0, group_k=0,
              BLOCK_SIZE_M=cfg["BLOCK_SIZE_M"], BLOCK_SIZE_N=cfg["BLOCK_SIZE_N"], BLOCK_SIZE_K=cfg["BLOCK_SIZE_K"],
              GROUP_SIZE_M=cfg.get("GROUP_SIZE_M", 1), MUL_ROUTED_WEIGHT=False, top_k=top_k,
              compute_type=tl.bfloat16, use_fp8_w8a8=dtype == "fp8_w8a8", use_int8_w8a8=False,
              use_int8_w8a16=False, per_channel_quant=False, even_Ks=True, c_sorted=False, swap_ab=False,
              FUSE_ADD_TO_OUTPUT=False, MASK_OUTPUT=False, FUSE_SUM_ALL_REDUCE=False, ROUTER_TOPK=top_k)
    cx = {k: v for k, v in cx.items() if k in fn.arg_names}
    return _compile(fn, sig, cx, dict(num_warps=cfg.get("num_warps", 4), num_stages=cfg.get("num_stages", 3)), arch)


# SGLang's choices on SM12x (0.5.17 / 0.5.23, identical in both): BLOCK 128 after Ampere, 4 warps up
# to head_dim 64 and 8 above; the fp8 default and what an override file can still ask for.
FP8_OVERRIDE = dict(BLOCK_SIZE_M=128, BLOCK_SIZE_N=256, BLOCK_SIZE_K=128, GROUP_SIZE_M=32, num_warps=8, num_stages=4)
BF16_DEFAULT = dict(BLOCK_SIZE_M=64, BLOCK_SIZE_N=64, BLOCK_SIZE_K=32, GROUP_SIZE_M=8)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=None)
    ap.add_argument("--arch", type=int, nargs="+", default=[120, 121])
    a = ap.parse_args(argv)
    import sglang
    import triton

    rows = []
    for arch in a.arch:
        for d in (64, 80, 128, 256):
            for dt, eb in (("bf16", 2), ("fp32", 4)):
                ours = tiles.plan_context_attention(arch, d, eb)
                for who, (blk, w) in (("sglang", (128, 4 if d <= 64 else 8)), ("patched", ours)):
                    rows.append(dict(kernel="context_attention_fwd", arch=arch, head_dim=d, dtype=dt, choice=who,
                                     block=blk, num_warps=w, **context_attention(d, dt, blk, w, arch)))
        for dt, cfg in (("fp8_w8a8", FP8_OVERRIDE), (None, BF16_DEFAULT)):
            clamped, _ = tiles.clamp_moe_config(arch, cfg, dt)
            for who, c in (("sglang", cfg), ("patched", clamped)):
                rows.append(dict(kernel="fused_moe_kernel", arch=arch, dtype=dt or "bf16", choice=who, config=c,
                                 model_bytes=tiles.moe_smem_bytes(c, dt), **fused_moe(c, dt, arch=arch)))
    for r in rows:
        print({k: v for k, v in r.items()})
    if a.out:
        Path(a.out).write_text(json.dumps(dict(date=time.strftime("%Y-%m-%d"), sglang=sglang.__version__,
                                               triton=triton.__version__, rows=rows), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
