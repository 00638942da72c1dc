"""Shared benchmark harness: timing, the device copy ceiling, environment record, JSON output.

Run on a CUDA device. Times are medians of CUDA-event timings (``triton.testing.do_bench``) with
p20/p80 kept beside them; bandwidth counts bytes read plus bytes written, as the copy ceiling does.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import sys

import torch

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def bench_ms(fn, warmup=25, rep=100, graph=False):
    """(p20, p50, p80) in milliseconds. ``graph=True`` replays a CUDA graph of ``fn`` so launch
    overhead stays out of the number (what a CUDA-graph server sees)."""
    import triton.testing
    if graph:
        fn()
        torch.cuda.synchronize()
        p = triton.testing.do_bench_cudagraph(fn, rep=rep, quantiles=[0.2, 0.5, 0.8])
    else:
        p = triton.testing.do_bench(fn, warmup=warmup, rep=rep, quantiles=[0.2, 0.5, 0.8])
    return tuple(p)


def max_diff(out, ref, relative=False) -> float:
    """max |out - ref| (over max |ref| when ``relative``), inf when not finite: how far a tuning
    candidate's output lies from the planned configuration's on the same inputs."""
    d = (out.float() - ref.float()).abs().max()
    if relative:
        d = d / ref.float().abs().max().clamp_min(1e-12)
    d = d.item()
    return d if d == d else float("inf")


def copy_ceiling_gbps(nbytes=1 << 30):
    """Device-to-device copy bandwidth (bytes read + written) over a buffer far larger than L2."""
    src = torch.empty(nbytes, dtype=torch.uint8, device="cuda").random_(0, 255)
    dst = torch.empty_like(src)
    _, ms, _ = bench_ms(lambda: dst.copy_(src))
    del src, dst
    return 2 * nbytes / ms / 1e6


def environment():
    import triton
    env = {
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "capability": list(torch.cuda.get_device_capability()) if torch.cuda.is_available() else None,
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "versions": {"torch": torch.__version__, "triton": triton.__version__,
                     "cuda": torch.version.cuda, "python": platform.python_version()},
    }
    try:
        import sgl_kernel_sm12x
        env["versions"]["sgl_kernel_sm12x"] = sgl_kernel_sm12x.__version__
    except ImportError:
        pass
    for mod in ("flashinfer", "sglang"):
        try:
            m = __import__(mod)
            env["versions"][mod] = getattr(m, "__version__", "?")
        except Exception:
            pass
    return env


def write_json(name: str, payload: dict, out_dir: str | None = None) -> str:
    out_dir = out_dir or os.environ.get("SM12X_RESULTS", RESULTS)
    os.makedirs(out_dir, exist_ok=True)
    dev = payload.get("device", "cpu").lower().replace(" ", "-").replace("/", "-")
    day = payload.get("date", "")[:10]
    path = os.path.join(out_dir, f"{day}-{dev}-{name}.json")
    with open(path, "w") as f:
        json.dump(payload, f, indent=1)
    print(f"wrote {path}", file=sys.stderr)
    return path
