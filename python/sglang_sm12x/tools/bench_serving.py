"""``sm12x bench-serving`` (also ``benchmark/bench_serving.py``): serve a model with each attention
backend x KV dtype in turn and measure it with SGLang's own ``sglang.bench_serving`` client.

For every (model, backend, kv dtype) one server is started (``sglang.launch_server``), waited on
(``/health_generate``), its KV pool capacity read, then the client runs the ``random-ids`` dataset
(no download) at each concurrency, a long-context point, and optionally ``generated-shared-prefix``
(radix cache). A configuration SGLang rejects or that fails to start is recorded with its error and
the run goes on; every server is stopped on success, failure and Ctrl-C.

Outputs in ``--out-dir``: ``<date>-<device>-serving.json`` (``rows``), ``...-serving.md`` (table) and
PNG plots: output tok/s vs concurrency, KV capacity per dtype, TPOT vs context length.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from .serving import Server, gpu_list, run_on_gpus, stop_on_sigterm, visible_device

ROW_KEYS = ("model", "backend", "kv_dtype", "dataset", "concurrency", "input_len", "output_len", "num_prompts",
            "output_throughput", "total_throughput", "median_ttft_ms", "median_tpot_ms", "median_itl_ms",
            "p99_itl_ms", "p99_ttft_ms", "kv_capacity_tokens", "mem_fraction_static", "failures", "error", "gpu")


@dataclass
class Plan:
    models: list
    backends: list = field(default_factory=lambda: ["sm12x", "triton", "flashinfer"])
    kv_dtypes: list = field(default_factory=lambda: ["auto", "fp8_e4m3", "nvfp4"])
    concurrency: list = field(default_factory=lambda: [1, 4, 16, 64, 128])
    input_len: int = 1024
    output_len: int = 256
    long_input_len: int = 8192
    long_concurrency: int = 64
    long_output_len: int = 128
    gsp: bool = True
    load_format: str = "dummy"
    mem_fraction: float = 0.8
    server_args: list = field(default_factory=list)
    port: int = 30124
    startup_timeout: int = 900
    pairs: list | None = None          # explicit (backend, kv_dtype) pairs instead of the cross product
    gpus: list | None = None           # several: one server per GPU at a time, configurations in parallel
    prompts_per_concurrency: int = 4
    min_prompts: int = 32
    # the long-context point in a second server per configuration at this --mem-fraction-static
    # (e.g. a 32 GB card's memory on a larger GPU, so the point is KV-bound for bf16); None: same server
    long_mem_fraction: float | None = None
    # before the first point, a discarded client run (2 prompts at concurrency 1, 16 output tokens):
    # the server's first fresh prefill and first prefix-hit extend compile their kernels there
    # instead of inside the concurrency-1 point (H100, MoE shape: a 9.4 s first request took
    # flashinfer's concurrency-1 throughput from ~400 to 136 tok/s); the radix cache is flushed
    # before every point, so no point starts with another's prompts cached
    warmup: bool = True

    def prompts(self, c):
        return max(self.prompts_per_concurrency * c, self.min_prompts)

    def configs(self):
        if self.pairs:
            return [(m, b, k) for m in self.models for b, k in self.pairs]
        return [(m, b, k) for m in self.models for b in self.backends for k in self.kv_dtypes]


def client_base(port, model, dataset, num_prompts, out_file):
    """SGLang's own ``sglang.bench_serving`` client against a local server (dataset arguments follow)."""
    return [sys.executable, "-m", "sglang.bench_serving", "--backend", "sglang", "--host", "127.0.0.1", "--port",
            str(port), "--tokenizer", str(model), "--model", str(model), "--num-prompts", str(num_prompts),
            "--output-file", str(out_file), "--dataset-name", dataset]


def client_cmd(port, model, dataset, num_prompts, concurrency, input_len, output_len, out_file):
    cmd = client_base(port, model, dataset, num_prompts, out_file) + ["--max-concurrency", str(concurrency)]
    if dataset == "random-ids":
        cmd += ["--random-input-len", str(input_len), "--random-output-len", str(output_len),
                "--random-range-ratio", "1.0"]
    else:   # generated-shared-prefix: 16 groups sharing a system prompt of input_len tokens
        cmd += ["--gsp-num-groups", "16", "--gsp-prompts-per-group", str(max(num_prompts // 16, 1)),
                "--gsp-system-prompt-len", str(input_len), "--gsp-question-len", "128",
                "--gsp-output-len", str(output_len)]
    return cmd


def run_client(cmd, out_file, timeout=3600):
    """Run SGLang's client; return its last JSON result line (dict) or raise with its output tail."""
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    out = Path(out_file)
    if p.returncode != 0 or not out.exists() or not out.read_text().strip():
        raise RuntimeError(f"bench_serving exited {p.returncode}: {(p.stdout + p.stderr)[-1500:]}")
    return json.loads(out.read_text().strip().splitlines()[-1])


def _row(base, res, num_prompts):
    r = dict(base)
    r.update(output_throughput=res.get("output_throughput"),
             total_throughput=res.get("total_throughput", res.get("total_token_throughput")),
             median_ttft_ms=res.get("median_ttft_ms"), median_tpot_ms=res.get("median_tpot_ms"),
             median_itl_ms=res.get("median_itl_ms"), p99_itl_ms=res.get("p99_itl_ms"),
             p99_ttft_ms=res.get("p99_ttft_ms"), num_prompts=num_prompts,
             failures=num_prompts - int(res.get("completed", 0)))
    return r


def _points(plan: Plan, phase: str | None = None):
    """Measurement points ``(dataset, concurrency, input_len, output_len)``: the concurrency sweep,
    the long-context point, the shared-prefix run. With ``plan.long_mem_fraction`` the long point
    belongs to its own server: ``phase`` "main" / "long" select the two servers' points."""
    sweep = [("random-ids", c, plan.input_len, plan.output_len) for c in plan.concurrency]
    long = [("random-ids", plan.long_concurrency, plan.long_input_len, plan.long_output_len)] \
        if plan.long_input_len else []
    gsp = [("generated-shared-prefix", max(plan.concurrency), plan.input_len, plan.output_len)] if plan.gsp else []
    if plan.long_mem_fraction and phase:
        return sweep + gsp if phase == "main" else long
    return [] if phase == "long" else sweep + long + gsp


def _run_config(plan, model, backend, kv, workdir, server_cls, client, progress, log, rows, gpu=None, port=None,
                live=None):
    """One server (on ``gpu`` when given) and every measurement point against it; with
    ``plan.long_mem_fraction`` the long-context point gets a second server at that fraction."""
    for phase, frac in (("main", plan.mem_fraction), ("long", plan.long_mem_fraction)):
        points = _points(plan, phase)
        if points:
            _serve_points(plan, model, backend, kv, workdir, server_cls, client, progress, log, rows, points, frac,
                          gpu=gpu, port=port, live=live, tag="" if phase == "main" else f"-mem{frac}")


def _serve_points(plan, model, backend, kv, workdir, server_cls, client, progress, log, rows, points, mem_fraction,
                  gpu=None, port=None, live=None, tag=""):
    port = plan.port if port is None else port
    name = f"{Path(model).name}-{backend}-{kv}{tag}"
    base = dict(model=Path(model).name, backend=backend, kv_dtype=kv, mem_fraction_static=mem_fraction)
    if gpu is not None:
        base["gpu"] = gpu
    args = ["--kv-cache-dtype", kv, *plan.server_args]
    if plan.load_format:
        args += ["--load-format", plan.load_format]
    kw = dict(port=port, log=workdir / f"server-{name}.log", timeout=plan.startup_timeout,
              mem_fraction=mem_fraction)
    if gpu is not None:
        kw["env"] = {"CUDA_VISIBLE_DEVICES": visible_device(gpu)}
    try:
        with server_cls(model, backend, *args, **kw) as srv, \
                (live.holding(srv) if live is not None else contextlib.nullcontext()):
            cap = srv.kv_capacity()
            if plan.warmup and points:
                dataset, _, il, ol = points[0]
                wfile = workdir / f"{name}-warmup.jsonl"
                try:
                    client(client_cmd(port, model, dataset, 2, 1, il, min(ol, 16), wfile), wfile)
                except (RuntimeError, subprocess.TimeoutExpired) as e:
                    log(f"{name}: warm-up run failed (the points still run): {str(e)[-200:]}")
            for dataset, c, il, ol in points:
                n = plan.prompts(c)
                if plan.warmup:
                    srv.flush_cache()
                out_file = workdir / f"{name}-{dataset}-c{c}-i{il}.jsonl"
                out_file.unlink(missing_ok=True)
                row = dict(base, dataset=dataset, concurrency=c, input_len=il, output_len=ol,
                           kv_capacity_tokens=cap)
                try:
                    res = client(client_cmd(port, model, dataset, n, c, il, ol, out_file), out_file)
                    rows.append(_row(row, res, n))
                except (RuntimeError, subprocess.TimeoutExpired) as e:
                    rows.append(dict(row, num_prompts=n, failures=n, error=str(e)[-800:]))
                if progress:
                    progress.update(1)
                log(_fmt(rows[-1]))
    except (RuntimeError, TimeoutError) as e:       # rejected by SGLang or failed to start
        msg = str(e).strip().splitlines()
        err = next((ln for ln in reversed(msg) if "Error" in ln or "error" in ln), msg[-1] if msg else "")
        rows.append(dict(base, dataset=None, concurrency=None, input_len=None, output_len=None,
                         failures=None, error=f"server did not start: {err[-400:]}"))
        if progress:
            progress.update(len(points))
        log(f"{name}: {rows[-1]['error']}")


def run_matrix(plan: Plan, workdir: Path, server_cls=Server, client=run_client, progress=None, log=print,
               rows=None):
    """Every configuration of ``plan``; appends to and returns ``rows`` (kept on Ctrl-C).
    With ``plan.gpus`` listing several GPUs, one worker per GPU takes the next configuration from a
    shared queue (its own port, ``CUDA_VISIBLE_DEVICES``), so servers never share a GPU; rows record
    the GPU. ``server_cls`` / ``client`` are injectable for tests."""
    rows = [] if rows is None else rows
    workdir.mkdir(parents=True, exist_ok=True)

    def work(config, gpu, slot, live):
        model, backend, kv = config
        _run_config(plan, model, backend, kv, workdir, server_cls, client, progress, log, rows, gpu=gpu,
                    port=plan.port + 10 * slot, live=live)

    run_on_gpus(plan.configs(), plan.gpus, work)
    return rows


def _fmt(r):
    if r.get("error"):
        return f"{r['model']} {r['backend']} {r['kv_dtype']} c={r.get('concurrency')}: ERROR {r['error'][:120]}"
    return (f"{r['model']} {r['backend']} {r['kv_dtype']} {r['dataset']} c={r['concurrency']} in={r['input_len']}: "
            f"{r['output_throughput']:.0f} tok/s, TPOT {r['median_tpot_ms']:.1f} ms, TTFT {r['median_ttft_ms']:.0f} ms")


def markdown(rows) -> str:
    cols = ["model", "backend", "kv_dtype", "dataset", "concurrency", "input_len", "output_throughput",
            "median_ttft_ms", "median_tpot_ms", "kv_capacity_tokens", "failures"]
    if len({r.get("mem_fraction_static") for r in rows if r.get("dataset")}) > 1:
        cols.insert(-2, "mem_fraction_static")
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        if r.get("error") and r.get("dataset") is None:
            out.append(f"| {r['model']} | {r['backend']} | {r['kv_dtype']} | rejected / failed to start: "
                       f"{r['error'][:100].replace('|', '/')} |" + " |" * (len(cols) - 4))
            continue
        cells = []
        for c in cols:
            v = r.get(c)
            cells.append(f"{v:,.1f}" if isinstance(v, float) else ("" if v is None else str(v)))
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def _save(plt, fig, prefix: Path, name: str) -> Path:
    fig.tight_layout()
    p = prefix.with_name(f"{prefix.name}-{name}.png")
    fig.savefig(p, dpi=120)
    plt.close(fig)
    return p


def plots(rows, prefix: Path) -> list[Path]:
    """PNG plots next to ``prefix``: throughput vs concurrency, KV capacity, TPOT vs context."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rows if not r.get("error") and r.get("dataset") == "random-ids"]
    paths = []
    models = sorted({r["model"] for r in ok})
    if not models:
        return paths
    main_in = min((r["input_len"] for r in ok), default=None)
    fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4.5), squeeze=False)
    for ax, m in zip(axes[0], models):
        for key in sorted({(r["backend"], r["kv_dtype"]) for r in ok if r["model"] == m}):
            pts = sorted((r["concurrency"], r["output_throughput"]) for r in ok
                         if r["model"] == m and (r["backend"], r["kv_dtype"]) == key and r["input_len"] == main_in)
            if pts:
                ax.plot(*zip(*pts), marker="o", label=f"{key[0]} / {key[1]}")
        ax.set(xscale="log", xlabel="max concurrency", ylabel="output tok/s", title=f"{m}, {main_in} in")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    paths.append(_save(plt, fig, prefix, "throughput"))

    caps = {}
    main_frac = max((r.get("mem_fraction_static") or 0 for r in rows), default=0)
    for r in rows:
        if r.get("kv_capacity_tokens") and (r.get("mem_fraction_static") or 0) == main_frac:
            caps[(r["model"], r["kv_dtype"])] = max(caps.get((r["model"], r["kv_dtype"]), 0), r["kv_capacity_tokens"])
    if caps:
        fig, ax = plt.subplots(figsize=(6, 4))
        labels = [f"{m}\n{k}" for m, k in caps]
        ax.bar(range(len(caps)), list(caps.values()), color="tab:blue")
        ax.set_xticks(range(len(caps)), labels, fontsize=8)
        ax.set(ylabel="KV pool tokens", title="KV capacity per dtype (same --mem-fraction-static)")
        paths.append(_save(plt, fig, prefix, "capacity"))

    lc = max((r["concurrency"] for r in ok if r["input_len"] != main_in), default=None)
    if lc is not None:
        fig, ax = plt.subplots(figsize=(6, 4))
        for key in sorted({(r["model"], r["backend"], r["kv_dtype"]) for r in ok}):
            pts = sorted((r["input_len"], r["median_tpot_ms"]) for r in ok
                         if (r["model"], r["backend"], r["kv_dtype"]) == key and r["concurrency"] == lc)
            if len(pts) > 1:
                ax.plot(*zip(*pts), marker="o", label=" / ".join(key))
        ax.set(xscale="log", xlabel="input tokens", ylabel="median TPOT (ms)", title=f"TPOT vs context, concurrency {lc}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        paths.append(_save(plt, fig, prefix, "tpot-context"))
    return paths


def summary(rows, plan: Plan) -> list[dict]:
    """The comparisons the report is read for, per model: at every concurrency of the sweep, sm12x
    with bf16 KV against the best of the other backends with bf16 KV; at the long-context point, the
    best nvfp4 configuration against the best bf16 one. Ratios of output tok/s (> 1: ahead)."""
    ok = [r for r in rows if not r.get("error") and r.get("dataset") == "random-ids" and r.get("output_throughput")]
    out = []
    for m in sorted({r["model"] for r in ok}):
        at = [r for r in ok if r["model"] == m]
        for c in plan.concurrency:
            pts = [r for r in at if r["concurrency"] == c and r["input_len"] == plan.input_len and r["kv_dtype"] == "auto"]
            ours = [r["output_throughput"] for r in pts if r["backend"] == "sm12x"]
            other = {r["backend"]: r["output_throughput"] for r in pts if r["backend"] != "sm12x"}
            if ours and other:
                best = max(other, key=other.get)
                out.append(dict(model=m, check="sm12x bf16 vs best other bf16", concurrency=c, input_len=plan.input_len,
                                ours=ours[0], best_other=other[best], best_other_backend=best,
                                ratio=ours[0] / other[best]))
        if plan.long_input_len:
            lp = [r for r in at if r["input_len"] == plan.long_input_len and r["concurrency"] == plan.long_concurrency]
            fp4 = [r for r in lp if r["kv_dtype"] == "nvfp4"]
            bf = [r for r in lp if r["kv_dtype"] == "auto"]
            if fp4 and bf:
                a = max(fp4, key=lambda r: r["output_throughput"])
                b = max(bf, key=lambda r: r["output_throughput"])
                out.append(dict(model=m, check="best nvfp4 vs best bf16, long context",
                                concurrency=plan.long_concurrency, input_len=plan.long_input_len,
                                ours=a["output_throughput"], ours_backend=a["backend"], best_other=b["output_throughput"],
                                best_other_backend=b["backend"], mem_fraction_static=a.get("mem_fraction_static"),
                                ratio=a["output_throughput"] / b["output_throughput"]))
    return out


def _summary_md(items) -> str:
    if not items:
        return ""
    lines = ["| model | check | concurrency | input | ours | best other | ratio |", "|---|---|---|---|---|---|---|"]
    for it in items:
        lines.append(f"| {it['model']} | {it['check']} | {it['concurrency']} | {it['input_len']} | {it['ours']:,.1f} | "
                     f"{it['best_other']:,.1f} ({it['best_other_backend']}) | {it['ratio']:.2f} |")
    return "\n".join(lines) + "\n\n"


def write_report(rows, out_dir: Path, env: dict, plan: Plan, cmdline: str):
    out_dir.mkdir(parents=True, exist_ok=True)
    dev = env.get("device", "cpu").lower().replace(" ", "-").replace("/", "-")
    prefix = out_dir / f"{env.get('date', time.strftime('%Y-%m-%d'))[:10]}-{dev}-serving"
    items = summary(rows, plan)
    payload = dict(env, command=cmdline, plan={k: v for k, v in vars(plan).items()}, summary=items,
                   rows=[{k: r.get(k) for k in ROW_KEYS} for r in rows])
    prefix.with_suffix(".json").write_text(json.dumps(payload, indent=1, default=str))
    prefix.with_suffix(".md").write_text(f"Command: `{cmdline}`\n\n" + _summary_md(items) + markdown(rows))
    return [prefix.with_suffix(".json"), prefix.with_suffix(".md"), *plots(rows, prefix)]


def _environment():
    env = {"date": time.strftime("%Y-%m-%d"), "device": "cpu"}
    try:
        import torch

        if torch.cuda.is_available():
            env["device"] = torch.cuda.get_device_name()
    except ImportError:
        pass
    from importlib.metadata import PackageNotFoundError, version

    env["versions"] = {}
    for pkg in ("sglang", "torch", "triton", "flashinfer-python", "sgl-kernel-sm12x"):
        try:
            env["versions"][pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return env


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="sm12x bench-serving", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", nargs="+", required=True, help="model path(s) (a config dir works with dummy weights)")
    ap.add_argument("--backends", nargs="+", default=["sm12x", "triton", "flashinfer"])
    ap.add_argument("--kv-dtypes", nargs="+", default=["auto", "fp8_e4m3", "nvfp4"])
    ap.add_argument("--configs", nargs="+", default=None, metavar="BACKEND:KV_DTYPE",
                    help="explicit configurations instead of --backends x --kv-dtypes, e.g. sm12x:nvfp4 triton:auto")
    ap.add_argument("--concurrency", nargs="+", type=int, default=[1, 4, 16, 64, 128])
    ap.add_argument("--gpus", type=gpu_list, default=None,
                    help="comma-separated GPU indices; with several, configurations run in "
                    "parallel, one server per GPU (ports --port, --port+10, ...)")
    ap.add_argument("--prompts-per-concurrency", type=int, default=4, help="prompts per point = max(this x concurrency, --min-prompts)")
    ap.add_argument("--min-prompts", type=int, default=32)
    ap.add_argument("--input-len", type=int, default=1024)
    ap.add_argument("--output-len", type=int, default=256)
    ap.add_argument("--long-input-len", type=int, default=8192, help="0 disables the long-context point")
    ap.add_argument("--long-concurrency", type=int, default=64)
    ap.add_argument("--long-output-len", type=int, default=128,
                    help="output tokens of the long-context point (longer outputs make it decode-, i.e. "
                    "KV-bound rather than prefill-bound)")
    ap.add_argument("--long-mem-fraction-static", type=float, default=None,
                    help="run the long-context point in a second server at this fraction (e.g. 0.4 of an 80 GB "
                    "card = a 32 GB card's memory, where bf16 KV runs out); default: the same server")
    ap.add_argument("--no-gsp", action="store_true", help="skip the generated-shared-prefix run")
    ap.add_argument("--load-format", default="dummy", help="'' to load real weights")
    ap.add_argument("--mem-fraction-static", type=float, default=0.8)
    ap.add_argument("--server-args", default="", help="extra server flags, one string")
    ap.add_argument("--out-dir", default="benchmark/results")
    ap.add_argument("--port", type=int, default=30124)
    ap.add_argument("--no-warmup", action="store_true",
                    help="skip the discarded warm-up run per server and the radix-cache flush before each point")
    a = ap.parse_args(argv)
    pairs = None
    if a.configs:
        try:
            pairs = [tuple(c.split(":")) for c in a.configs]
            assert all(len(p) == 2 and all(p) for p in pairs)
        except AssertionError:
            ap.error(f"--configs: expected BACKEND:KV_DTYPE pairs such as sm12x:nvfp4, got {a.configs}")
    plan = Plan(pairs=pairs, gpus=a.gpus, prompts_per_concurrency=a.prompts_per_concurrency, min_prompts=a.min_prompts, models=a.model, backends=a.backends, kv_dtypes=a.kv_dtypes, concurrency=a.concurrency,
                input_len=a.input_len, output_len=a.output_len, long_input_len=a.long_input_len,
                long_output_len=a.long_output_len, long_concurrency=a.long_concurrency, long_mem_fraction=a.long_mem_fraction_static,
                gsp=not a.no_gsp, load_format=a.load_format, warmup=not a.no_warmup,
                mem_fraction=a.mem_fraction_static, server_args=a.server_args.split(), port=a.port)
    # SIGTERM behaves like Ctrl-C: the `with Server(...)` blocks stop their servers
    stop_on_sigterm()
    n_points = len(_points(plan))
    workdir = Path(a.out_dir) / "serving-logs"
    try:
        from tqdm import tqdm

        bar = tqdm(total=len(plan.configs()) * n_points, desc="bench-serving", unit="run")
        log = bar.write
    except ImportError:
        bar, log = None, print
    rows = []
    try:
        run_matrix(plan, workdir, progress=bar, log=log, rows=rows)
    except KeyboardInterrupt:
        print("interrupted: servers stopped; writing what was measured", file=sys.stderr)
    finally:
        if bar is not None:
            bar.close()
    env = _environment()
    given = list(sys.argv[1:] if argv is None else argv)
    if given[:1] == ["bench-serving"]:          # reached through `python -m sglang_sm12x.cli bench-serving`
        given = given[1:]
    for p in write_report(rows, Path(a.out_dir), env, plan, shlex.join(["sm12x", "bench-serving", *given])):
        print(p)
    return 0 if rows and not all(r.get("error") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
