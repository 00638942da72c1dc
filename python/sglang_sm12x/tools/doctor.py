"""``sm12x doctor``: is this machine (or container) set up to serve SGLang with sm12x?

Checks, each printed as ``ok`` / ``FAIL`` / ``skip`` with what was found:

* GPU: name, compute capability, shared memory per block, SM count (``--no-gpu`` skips it);
* image arch: ``SM12X_IMAGE_ARCH`` (set by this project's Docker images) or ``--expect-arch`` must
  match the GPU -- an sm_121 image on an sm_120 card (or on an H100) fails with both named;
* Triton >= 3.6 and its ptxas compile a kernel for the arch (``sm_120a`` / ``sm_121a``): the
  failure GB10 users hit with images whose CUDA predates sm_121;
* SGLang version supported by the plugin, the ``sglang.srt.plugins`` entry point installed;
* patch status of the installed SGLang (``sm12x patch status``).

SGLang itself is never imported. Exit code 0 when every check passes or is skipped, else 1.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict, dataclass

from ..versions import SUPPORTED, release

ARCH_NAMES = {120: "SM120 (RTX 5090 / RTX PRO 6000)", 121: "SM121 (DGX Spark / GB10)", 90: "SM90 (H100/H200)",
              100: "SM100 (B200)", 89: "SM89 (Ada)", 86: "SM86 (Ampere)", 80: "SM80 (A100)"}


@dataclass
class Check:
    name: str
    status: str          # ok | FAIL | skip
    detail: str


def _arch_name(a):
    return ARCH_NAMES.get(a, f"sm_{a}")


def gpu_info():
    """``None`` without a CUDA device, else a dict of what the device reports."""
    import torch

    if not torch.cuda.is_available():
        return None
    p = torch.cuda.get_device_properties(0)
    return dict(name=p.name, capability=p.major * 10 + p.minor, sms=p.multi_processor_count,
                smem_optin=getattr(p, "shared_memory_per_block_optin", None), count=torch.cuda.device_count())


def ptxas_compiles(arch: int) -> tuple[bool, str]:
    """AOT-compile a one-line Triton kernel for ``sm_<arch>a``: proves Triton's ptxas knows the arch."""
    try:
        import triton
        import triton.language as tl
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource

        @triton.jit
        def _probe(x_ptr):
            tl.store(x_ptr, tl.load(x_ptr) + 1.0)

        k = triton.compile(ASTSource(fn=_probe, signature={"x_ptr": "*fp32"}, constexprs={}),
                           target=GPUTarget("cuda", arch, 32))
        return bool(k.kernel), f"Triton {triton.__version__} compiled sm_{arch}a ({len(k.kernel)} B cubin)"
    except Exception as e:  # the message is the diagnosis
        return False, f"{type(e).__name__}: {str(e).strip().splitlines()[-1][:200] if str(e).strip() else ''}"


def _smem_check(info) -> Check:
    """The planner sizes every tile against a per-capability limit table; the card must agree."""
    from sgl_kernel_sm12x.planner import ARCH_LIMITS

    lim = ARCH_LIMITS.get(info["capability"])
    if lim is None:
        return Check("smem limit", "FAIL", f"{_arch_name(info['capability'])} is not in the planner's table "
                                           f"(known: {sorted(ARCH_LIMITS)}); tiles cannot be sized for it")
    got = info.get("smem_optin")
    if got is None:
        return Check("smem limit", "skip", "torch does not report shared_memory_per_block_optin")
    if got < lim.smem_per_block:
        return Check("smem limit", "FAIL", f"the GPU allows {got} B per block, the planner assumes "
                                           f"{lim.smem_per_block} B for {lim.name}: tiles could fail to load")
    return Check("smem limit", "ok", f"planner limit {lim.smem_per_block} B <= the GPU's {got} B")


def _nvfp4_decode_check(arch: int) -> Check:
    """Which NVFP4 decode split stage the planner will run here (information, never a failure)."""
    from sgl_kernel_sm12x import planner
    try:
        from sgl_kernel_sm12x.attention.decode import fp4_mma_available
        gluon = fp4_mma_available()
    except Exception:  # noqa: BLE001 -- no Triton at all: the triton line already says so
        gluon = False
    try:     # the planner's own choice (head_dim 128; 256 with GQA above 8 always takes the Triton stage)
        planned = planner.plan_decode(arch, head_dim=128, kv_dtype="nvfp4").fp4_mma
    except ValueError as e:
        return Check("nvfp4 decode", "skip", str(e)[:200])
    if not planned:
        return Check("nvfp4 decode", "ok", f"Triton split stage (sm_{arch} has no fp8 conversion for the scales)")
    if not gluon:
        return Check("nvfp4 decode", "ok", "Triton split stage (this Triton has no Gluon 3.6+, or the interpreter "
                                           "is on)")
    return Check("nvfp4 decode", "ok", f"register-operand kernel (Gluon) for sm_{arch}: tiles decoded into "
                                       "mma.sync operands")


def _nvfp4_extend_check(arch: int) -> Check:
    """Which kernel reads an NVFP4 prefix in extend here (information, never a failure)."""
    from sgl_kernel_sm12x import planner
    try:
        from sgl_kernel_sm12x.attention.extend import wgmma_available
        gluon = wgmma_available()
    except Exception:  # noqa: BLE001 -- no Triton at all: the triton line already says so
        gluon = False
    try:     # head_dim 128, 32 query / 8 KV heads: the planner's own choice
        cfg = planner.plan_extend(arch, head_dim=128, kv_dtype="nvfp4", group=4, gluon=gluon)
    except ValueError as e:
        return Check("nvfp4 extend", "skip", str(e)[:200])
    if cfg.wgmma:
        how = "a decoder warpgroup turns prefix tiles into fp16 while the MMA warpgroups run (warp-specialized)"
        return Check("nvfp4 extend", "ok", f"warpgroup-MMA kernel (Gluon) for sm_{arch}: {how} (pools under 2 GiB "
                                           "a tensor; larger ones: the Triton kernel)")
    if cfg.mma2:
        return Check("nvfp4 extend", "ok", f"mma.sync kernel (Gluon) for sm_{arch}: each prefix tile decoded once "
                                           "by the CTA into shared memory, FlashAttention-2's order")
    why = "" if arch not in (80, 86, 89, 90, 120, 121) else " (this Triton has no Gluon 3.6+, or the interpreter is on)"
    return Check("nvfp4 extend", "ok", f"Triton extend kernel, tiles dequantized in registers{why}")


def run_checks(no_gpu: bool = False, expect_arch: int | None = None, gpu=None, probe=ptxas_compiles) -> list[Check]:
    from importlib.metadata import PackageNotFoundError, entry_points, version

    out = []
    env_arch = os.environ.get("SM12X_IMAGE_ARCH")
    want = expect_arch if expect_arch is not None else (int(env_arch) if env_arch else None)
    info = gpu if gpu is not None else (None if no_gpu else gpu_info())
    if no_gpu:
        out.append(Check("gpu", "skip", "--no-gpu"))
    elif info is None:
        out.append(Check("gpu", "FAIL", "no CUDA GPU visible to this process (docker: --gpus all; "
                                        "or run `sm12x doctor --no-gpu` to check the software only)"))
    else:
        out.append(Check("gpu", "ok", f"{info['name']} x{info.get('count', 1)}: {_arch_name(info['capability'])}, "
                                      f"{info['sms']} SMs, {info['smem_optin']} B shared memory per block"))
        out.append(_smem_check(info))
    if want is None:
        out.append(Check("image arch", "skip", "not a sm12x image (SM12X_IMAGE_ARCH unset, no --expect-arch)"))
    elif info is None:
        out.append(Check("image arch", "skip" if no_gpu else "FAIL", f"built for {_arch_name(want)}; no GPU to compare"))
    elif info["capability"] != want:
        out.append(Check("image arch", "FAIL", f"this image is built for {_arch_name(want)} but the GPU is "
                                               f"{info['name']}, {_arch_name(info['capability'])}: use the "
                                               f"sm{info['capability']} image" if info["capability"] in (120, 121)
                         else f"this image is built for {_arch_name(want)} but the GPU is {info['name']}, "
                              f"{_arch_name(info['capability'])}, which it does not target"))
    else:
        out.append(Check("image arch", "ok", f"{_arch_name(want)} matches the GPU"))
    tarch = want or (info["capability"] if info else 120)
    try:
        tv = version("triton")
        major, minor = (int(x) for x in tv.split(".")[:2])
        if (major, minor) < (3, 6):
            out.append(Check("triton", "FAIL", f"Triton {tv}; >= 3.6 is needed for sm_120a/sm_121a"))
        else:
            ok, msg = probe(tarch)
            out.append(Check("triton ptxas", "ok" if ok else "FAIL", msg if ok else
                             f"Triton {tv} cannot compile for sm_{tarch}a: {msg}"))
    except PackageNotFoundError:
        out.append(Check("triton", "FAIL", "Triton is not installed"))
    out.append(_nvfp4_decode_check(tarch))
    out.append(_nvfp4_extend_check(tarch))
    try:
        sv = version("sglang")
        ok = release(sv) in SUPPORTED
        out.append(Check("sglang", "ok" if ok else "FAIL",
                         f"SGLang {sv}" + ("" if ok else f"; the plugin supports {', '.join(SUPPORTED)}")))
    except PackageNotFoundError:
        out.append(Check("sglang", "FAIL", "SGLang is not installed"))
    eps = [ep for ep in entry_points(group="sglang.srt.plugins") if ep.name == "sm12x"]
    out.append(Check("plugin", "ok" if eps else "FAIL",
                     f"entry point sm12x -> {eps[0].value}" if eps else
                     "the sglang.srt.plugins entry point `sm12x` is not installed (pip install sgl-kernel-sm12x)"))
    try:
        from .patch import PatchError, find_sglang_dir, load_series

        s = load_series(find_sglang_dir(None))
        states = ", ".join(f"{p.name.split('-', 1)[0]} {p.state}" for p in s.patches)
        bad = any(p.state == "conflicting" for p in s.patches)
        out.append(Check("patches", "FAIL" if bad else "ok", f"SGLang {s.version}: {states}"))
    except Exception as e:  # noqa: BLE001 -- PatchError or no SGLang: a report line, not a crash
        out.append(Check("patches", "skip", str(e)[:200]))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="sm12x doctor", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--no-gpu", action="store_true", help="check the software only (image builds, CI)")
    ap.add_argument("--expect-arch", type=int, choices=(120, 121), default=None,
                    help="the arch this install targets (default: $SM12X_IMAGE_ARCH)")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    checks = run_checks(no_gpu=a.no_gpu, expect_arch=a.expect_arch)
    failed = [c for c in checks if c.status == "FAIL"]
    if a.json:
        print(json.dumps([asdict(c) for c in checks], indent=1))
    else:
        for c in checks:
            print(f"  {c.status:<5} {c.name:<13} {c.detail}")
        print("sm12x doctor: " + ("all checks passed" if not failed else
                                  f"{len(failed)} check(s) failed: {', '.join(c.name for c in failed)}"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
