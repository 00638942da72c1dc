"""Ahead-of-time budget check: compile every configuration the planner can choose, for each arch,
without a GPU, and compare shared memory / registers / spills against the arch's exact limits.

Triton reports shared memory as ``compiled.metadata.shared`` (the dynamic shared memory the launch
asks for); overflow is only caught at kernel load on the card, so the comparison happens here.
Arguments are marked ``tt.divisibility=16`` the way the JIT marks aligned pointers and strides, or
Triton would skip vectorisation / cp.async pipelining and under-report shared memory.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass

from . import planner

# kernel family -> (module, jit function name). Every kernel of the package joins this table.
KERNELS = {
    "kv_append": ("sgl_kernel_sm12x.kv_append", "kv_append_kernel"),
    "check_kv_indices": ("sgl_kernel_sm12x.attention.kv_tile", "check_kv_indices_kernel"),
    "decode": ("sgl_kernel_sm12x.attention.decode", "decode_split_kernel"),
    "decode_reduce": ("sgl_kernel_sm12x.attention.decode", "decode_reduce_kernel"),
    "decode_nvfp4": ("sgl_kernel_sm12x.attention.decode_nvfp4", "decode_split_nvfp4_kernel"),
    "extend": ("sgl_kernel_sm12x.attention.extend", "extend_kernel"),
    "extend_wgmma": ("sgl_kernel_sm12x.attention.extend_wgmma", "extend_wgmma_kernel"),
    "extend_wgmma_ws": ("sgl_kernel_sm12x.attention.extend_wgmma", "extend_wgmma_ws_kernel"),
    "extend_mma": ("sgl_kernel_sm12x.attention.extend_mma", "extend_mma_kernel"),
    "moe": ("sgl_kernel_sm12x.moe.fused_moe", "moe_gemm_kernel"),
    "moe_silu_mul": ("sgl_kernel_sm12x.moe.fused_moe", "silu_mul_kernel"),
    "moe_align": ("sgl_kernel_sm12x.moe.fused_moe", "moe_align_kernel"),
    "moe_align_count": ("sgl_kernel_sm12x.moe.fused_moe", "moe_align_count_kernel"),
    "moe_align_offsets": ("sgl_kernel_sm12x.moe.fused_moe", "moe_align_offsets_kernel"),
    "moe_align_scatter": ("sgl_kernel_sm12x.moe.fused_moe", "moe_align_scatter_kernel"),
    "moe_quant": ("sgl_kernel_sm12x.moe.fused_moe", "quant_fp8_kernel"),
    "moe_sum": ("sgl_kernel_sm12x.moe.fused_moe", "moe_sum_kernel"),
}
# families whose cases come from a function other than the module's ``aot_cases``
CASES = {"check_kv_indices": "aot_cases_check", "decode_reduce": "aot_cases_reduce", "extend_wgmma_ws": "aot_cases_ws", "moe_silu_mul": "aot_cases_silu", "moe_align": "aot_cases_align",
         "moe_align_count": "aot_cases_align_count", "moe_align_offsets": "aot_cases_align_offsets",
         "moe_align_scatter": "aot_cases_align_scatter",
         "moe_quant": "aot_cases_quant", "moe_sum": "aot_cases_sum"}


@dataclass
class BudgetRow:
    kernel: str
    arch: int
    config: dict
    shared: int | None
    limit: int
    regs: int | None
    spill: int | None       # register spill stores per thread, bytes (ptxas -v of the cubin Triton builds)
    mma: str
    fits: bool
    error: str | None = None
    stack: int | None = None  # stack frame per thread, bytes (call frames of IEEE-division slow paths)


def _kernel(name):
    import importlib
    mod_name, fn_name = KERNELS[name]
    mod = importlib.import_module(mod_name)
    return mod, getattr(mod, fn_name)


def _parse_ptxas_log(log: str):
    """``(registers, spill store bytes, stack frame bytes)`` from ``ptxas -v`` output, or None."""
    regs = re.findall(r"Used (\d+) registers", log)
    if not regs:
        return None
    spill = sum(int(x) for x in re.findall(r"(\d+) bytes spill stores", log))
    stack = sum(int(x) for x in re.findall(r"(\d+) bytes stack frame", log))
    return max(int(r) for r in regs), spill, stack


def _usage_key(asm: dict, arch: int) -> str:
    import triton
    return hashlib.sha256(f"sm12x-ptxas-v2|{arch}|{triton.__version__}|".encode() + asm["ptx"].encode()).hexdigest()


def _compile_with_usage(src, arch: int, opts: dict):
    """Compile ``src`` for ``arch`` and return ``(kernel, (registers, spills, stack))`` as read from
    the ``ptxas -v`` log of the cubin Triton builds (Triton runs ptxas with ``-v`` and prints the log
    under ``knobs.nvidia.dump_ptxas_log``). The parse is kept in Triton's file cache under a key of
    the PTX, so a warm run (a Triton cache hit runs no ptxas) costs what Triton's cache hits cost;
    a hit without a kept parse is compiled once more."""
    import contextlib
    import io

    import triton
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.runtime.cache import get_cache_manager
    target = GPUTarget("cuda", arch, 32)
    for force in (False, True):
        buf = io.StringIO()
        with knobs.nvidia.scope(), knobs.compilation.scope(), contextlib.redirect_stdout(buf):
            knobs.nvidia.dump_ptxas_log = True
            knobs.compilation.always_compile = force
            k = triton.compile(src, target=target, options=dict(opts))
        cache = get_cache_manager(_usage_key(k.asm, arch))
        usage = _parse_ptxas_log(buf.getvalue())
        if usage is not None:
            cache.put(json.dumps(usage), "ptxas-usage.json", binary=False)
            return k, usage
        hit = cache.get_file("ptxas-usage.json")
        if hit:
            with open(hit) as f:
                return k, tuple(json.load(f))
    raise RuntimeError("ptxas printed no resource usage")


def _mma_family(ptx: str) -> str:
    """The tensor-core instructions of a PTX: shape, and the block-scaled kind where one is named
    (``mma.sync.m16n8k64.kind::mxf4nvf4.block_scale``: SM120's NVFP4 MMA)."""
    found = sorted(set(re.findall(r"\b(mma\.sync\.aligned\.m\d+n\d+k\d+(?:\.row\.col)?(?:\.kind::\w+)?"
                                  r"(?:\.block_scale)?|wgmma\.mma_async|tcgen05\.mma)", ptx)))
    return ",".join(m.replace(".aligned", "").replace(".row.col", "") for m in found) or "-"


def compile_one(kernel: str, arch: int, label: dict, sig: dict, cx: dict, opts: dict) -> BudgetRow:
    from triton.compiler import ASTSource
    _, fn = _kernel(kernel)
    full = {a: sig.get(a, "constexpr") for a in fn.arg_names}
    missing = [a for a in fn.arg_names if full[a] == "constexpr" and a not in cx]
    if missing:
        raise ValueError(f"{kernel}: AOT signature lacks arguments {missing}")
    attrs = {(fn.arg_names.index(n),): [["tt.divisibility", 16]]
             for n, t in full.items() if t != "constexpr" and (t.startswith("*") or t in ("i32", "i64"))}
    limit = planner.arch_limits(arch).smem_per_block
    if type(fn).__name__.startswith("Gluon"):     # explicit-layout kernels (triton.experimental.gluon)
        from triton.experimental.gluon._runtime import GluonASTSource as ASTSource
    try:
        k, (regs, spill, stack) = _compile_with_usage(ASTSource(fn=fn, signature=full, constexprs=cx, attrs=attrs),
                                                      arch, opts)
    except Exception as e:  # reported as a failing row, never swallowed
        msg = (str(e).strip().splitlines() or [""])[-1][:200]
        return BudgetRow(kernel, arch, label, None, limit, None, None, "-", False, f"{type(e).__name__}: {msg}")
    shared = int(k.metadata.shared)
    return BudgetRow(kernel, arch, label, shared, limit, regs, spill, _mma_family(k.asm["ptx"]),
                     shared <= limit and spill == 0 and regs <= planner.arch_limits(arch).regs_per_thread,
                     stack=stack)


def _job(args):
    return compile_one(*args)


def cases(kernels, archs):
    for name in kernels:
        mod, _ = _kernel(name)
        fn = getattr(mod, CASES.get(name, "aot_cases"))
        for arch in archs:
            for label, sig, cx, opts in fn(arch):
                yield (name, arch, label, sig, cx, opts)


def run_budget(kernels=None, archs=planner.SM12X, jobs=None) -> list[BudgetRow]:
    kernels = list(kernels or KERNELS)
    for k in kernels:
        if k not in KERNELS:
            raise ValueError(f"kernel={k!r} is not known; known kernels: {sorted(KERNELS)}")
    for a in archs:
        planner.arch_limits(a)
    todo = list(cases(kernels, archs))
    jobs = jobs or min(len(todo), os.cpu_count() or 1) or 1
    if jobs == 1:
        return [_job(t) for t in todo]
    with ProcessPoolExecutor(max_workers=jobs) as ex:
        return list(ex.map(_job, todo, chunksize=1))


def format_table(rows: list[BudgetRow]) -> str:
    out = [f"{'kernel':<14} {'arch':<7} {'shared':>8} {'limit':>8} {'regs':>5} {'spill':>6} {'stack':>6} "
           f"{'mma':<24} {'fits':<5} config"]
    for r in rows:
        cfg = " ".join(f"{k}={v}" for k, v in r.config.items())
        out.append(f"{r.kernel:<14} sm_{r.arch:<4} {r.shared if r.shared is not None else 'ERR':>8} {r.limit:>8} "
                   f"{r.regs if r.regs is not None else '-':>5} {r.spill if r.spill is not None else '-':>6} "
                   f"{r.stack if r.stack is not None else '-':>6} "
                   f"{r.mma:<24} {'yes' if r.fits else 'NO':<5} {cfg}" + (f"  [{r.error}]" if r.error else ""))
    n_bad = sum(not r.fits for r in rows)
    out.append(f"{len(rows)} configurations, {len(rows) - n_bad} fit, {n_bad} do not")
    return "\n".join(out)


def main(argv=None) -> int:
    import argparse
    ap = argparse.ArgumentParser(prog="sm12x budget", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="120,121", help="comma-separated compute capabilities (default 120,121)")
    ap.add_argument("--kernel", action="append", help=f"kernel family (repeatable): {sorted(KERNELS)}")
    ap.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    ap.add_argument("--jobs", type=int, default=None, help="parallel compile processes")
    a = ap.parse_args(argv)
    try:
        archs = [int(x) for x in a.arch.split(",") if x.strip()]
        rows = run_budget(a.kernel, archs, a.jobs)
    except ValueError as e:
        print(f"sm12x budget: {e}", file=sys.stderr)
        return 2
    if a.json:
        print(json.dumps([asdict(r) for r in rows], indent=1))
    else:
        print(format_table(rows))
    return 0 if all(r.fits for r in rows) else 1
