"""Regenerate ``benchmark/README.md`` and the headline table of the top-level README from the result
JSONs named in :data:`SOURCES` -- the only place that says which run is current.

    python benchmark/make_readme.py           # rewrite both
    python benchmark/make_readme.py --check   # exit 1 if either is out of date (CI)

Numbers are read, never typed: a table that changes changes because a result file did.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
RES = HERE / "results"
README = HERE / "README.md"
TOP_README = HERE.parent / "README.md"
BEGIN, END = "<!-- headline:begin (benchmark/make_readme.py) -->", "<!-- headline:end -->"

# the current result file of each table (a superseded one is deleted; git keeps it)
SOURCES = {
    "attention": "2026-11-27-nvidia-h100-80gb-hbm3-attention-short-chunk.json",
    "append": "2026-11-26-nvidia-h100-80gb-hbm3-append.json",
    "moe": "2026-11-26-nvidia-h100-80gb-hbm3-moe.json",
    "serving": "2026-11-26-nvidia-h100-80gb-hbm3-serving.json",
    "serving_long": "2026-11-26-nvidia-h100-80gb-hbm3-serving-long.json",
    "serving_moe": "2026-11-26-nvidia-h100-80gb-hbm3-serving-moe.json",
    "e2e": "2026-11-26-nvidia-h100-80gb-hbm3-e2e.json",
    "accuracy": "2026-11-26-accuracy.json",
    "budget": "budget-sm120-sm121.json",
    "budget_sm90": "budget-sm90-wgmma.json",
    "aot_sglang": "aot-sglang-sm120-sm121.json",
    "attention_sm120": "2026-12-06-nvidia-h100-80gb-hbm3-attention-sm120-plan.json",
    "kernel_ab": "2026-12-06-nvidia-h100-80gb-hbm3-kernel-ab.json",
    "backend_host": "2026-12-05-nvidia-h100-80gb-hbm3-backend-host.json",
    "e2e_sm120": "2026-12-06-nvidia-h100-80gb-hbm3-e2e.json",
    "models": "2026-12-06-nvidia-h100-80gb-hbm3-models.json",
    "attention_models": "2026-12-06-nvidia-h100-80gb-hbm3-attention-models.json",
    "attention_models_sm120": "2026-12-06-nvidia-h100-80gb-hbm3-attention-models-sm120-plan.json",
    "aot_hybrid": "aot-sglang-hybrid-sm120-sm121.json",
}

HOW_TO = """\
## Running the benchmarks

Every script runs on a CUDA device, times this project's kernels beside their peers **in the same
run**, and writes JSON (device, versions, date) to `results/`. Medians of CUDA-event timings
(`triton.testing`), p20/p80 beside them.

| script | what it times | peers in the same run |
|---|---|---|
| `attention.py [--quick] [--head-dim ...]` | decode (GB/s of what must be read) and extend / prefill (TFLOP/s = 4·B·H·D·(C·P + C²/2)) | FlashInfer decode + ragged prefill, SGLang's Triton decode / extend, the copy ceiling |
| `kernel_ab.py --tree before=DIR --tree after=.` | one-shot decode / extend at fixed shapes, source trees alternating in separate processes | the other tree |
| `append.py` | quantize-and-append (bytes read + written) | the copy ceiling |
| `moe.py [--breakdown]` | the fused MoE as a CUDA-graph replay | SGLang's `fused_experts` with its shipped configs |
| `bench_serving.py` (= `sm12x bench-serving`) | servers per backend x KV dtype with SGLang's `bench_serving` client | SGLang's `triton` and `flashinfer` backends |
| `e2e.py` | greedy agreement, KV capacity, serving smoke checks; `--phase models`: the models of `models/shapes.json` | SGLang's `triton` / `flashinfer` |
| `attention.py --models` | model-shaped decode layers (gpt-oss window / full layer with sinks, Qwen3-14B's GQA 5) | SGLang's Triton decode on the same lists |
| `accuracy/train.py`, `accuracy/evaluate.py` | perplexity / KL / top-1 of each KV format on a trained model | bf16 KV |
| `tune_attention.py`, `tune_moe.py` | tile sweeps around the planner's choice (offline only) | the planned tile |
| `aot_sglang.py` | SGLang's own Triton kernels compiled for sm_120/121 (no GPU) | -- |
| `aot_sglang_hybrid.py` | every Triton launch of a Qwen3-Next / Nemotron-H forward at SGLang's SM120 choices, compiled for sm_120/121, and the plugin's fixes (no GPU) | -- |

`sm12x budget --arch 120,121 --json` (no GPU) is the shared-memory / register table. After a new
run, name its file in `SOURCES` of `make_readme.py` and run `python benchmark/make_readme.py`.
"""


def _load(key):
    path = RES / SOURCES[key]
    if not path.exists():
        return None
    with open(path) as f:
        return json.load(f)


def _link(key, text=None):
    return f"[{text or SOURCES[key]}](results/{SOURCES[key]})"


def _top_link(key, text):
    return f"[{text}](benchmark/results/{SOURCES[key]})"


def _f(x, nd=2):
    return "-" if x is None else f"{x:,.{nd}f}"


def _rows(d, **match):
    return [r for r in d["rows"] if all(r.get(k) == v for k, v in match.items()) and not r.get("error")
            and not r.get("skipped")]


def _one(d, **match):
    rows = _rows(d, **match)
    return rows[0] if rows else None


def sm120_tables(d):
    """The code an SM120 card runs (the sm_120 plan, mma.sync), timed on the card at hand."""
    out = [f"### The SM120 path (`attention.py --plan-arch {d['plan_arch']}`, {_link('attention_sm120')})\n",
           f"{d['device']}, {_versions(d)}; every sm12x call planned for sm_{d['plan_arch']} and run with "
           f"DISABLE_MMA_V3={d['disable_mma_v3']} (Triton emits mma.sync, as on sm_120; the Gluon kernels are "
           "mma.sync by construction); 32 q / 8 kv heads, head_dim 128, page 1. This card's clocks, memory and "
           "shared memory are not an SM120's: the ratios between providers are the result. "
           + ("SGLang's rows are missing where the run had no SGLang. " if not _rows(d, provider="sglang_triton_sm120")
              else "") + "\n",
           "Decode: time relative to FlashInfer's bf16 decode (lower is faster).\n",
           "| batch x context | sm12x bf16 | FlashInfer FA2 | sm12x fp8_e4m3 | sm12x nvfp4 | nvfp4 speed vs FlashInfer bf16 |",
           "|---|---|---|---|---|---|"]
    for b, c, h in sorted({(r["batch"], r["context"], r["heads"]) for r in _rows(d, phase="decode")},
                          key=lambda s: (s[2], s[0], s[1])):
        m = dict(phase="decode", batch=b, context=c, heads=h)
        fi = _one(d, provider="flashinfer", **m)
        if not fi:
            continue
        cells = []
        for prov, kv in (("sm12x", "bf16"), ("flashinfer_fa2", "bf16"), ("sm12x", "fp8_e4m3"), ("sm12x", "nvfp4")):
            r = _one(d, provider=prov, kv_dtype=kv, **m)
            cells.append(_f(r["ms"] / fi["ms"], 3) if r else "--")
        nv = _one(d, provider="sm12x", kv_dtype="nvfp4", **m)
        cells.append(f"{fi['ms'] / nv['ms']:.2f}x" if nv else "--")
        out.append(f"| {b} x {c}{'' if h == '32/8' else f' ({h})'} | " + " | ".join(cells) + " |")
    out += ["\nExtend (causal): sm12x bf16 TFLOP/s and speed ratios (> 1: sm12x faster; nvfp4 / fp8: speed of that "
            "pool's prefix against our bf16).\n",
            "| batch x prefix + chunk | sm12x bf16 TFLOP/s | vs FlashInfer FA2 | vs FlashInfer (its choice here) | "
            "vs SGLang Triton (SM12x tiles) | nvfp4 / bf16 | fp8 / bf16 |",
            "|---|---|---|---|---|---|---|"]
    for b, p, c in sorted({(r["batch"], r["prefix"], r["chunk"]) for r in _rows(d, phase="extend")},
                          key=lambda s: (s[1] > 0, s[0] * (s[1] + s[2]))):
        m = dict(phase="extend", batch=b, prefix=p, chunk=c)
        ours = _one(d, provider="sm12x", kv_dtype="bf16", **m)
        if not ours:
            continue
        peer = lambda prov: (lambda r: f"{r['ms'] / ours['ms']:.2f}x" if r else "--")(  # noqa: E731
            _one(d, provider=prov, kv_dtype="bf16", **m))
        fmt = lambda kv: (lambda r: f"{ours['ms'] / r['ms']:.2f}" if r else "--")(  # noqa: E731
            _one(d, provider="sm12x", kv_dtype=kv, **m))
        out.append(f"| {b} x {p} + {c} | {ours['tflops']:.0f} | {peer('flashinfer_fa2')} | {peer('flashinfer')} | "
                   f"{peer('sglang_triton_sm120')} | {fmt('nvfp4')} | {fmt('fp8_e4m3')} |")
    return out


def e2e_sm120_table(d):
    out = [f"### Servers ({_link('e2e_sm120')})\n", f"{d['device']}, SGLang {d['sglang']}, torch {d['torch']}.\n",
           "| check | value |", "|---|---|"]
    t = d.get("ttft_sm120_plan")
    if t:
        rows = {r["name"]: r for r in t["rows"]}
        for name, r in rows.items():
            out.append(f"| median TTFT, {t['requests']} x {t['input_len']:,}-token prompts, {name} | "
                       f"{r['median_ttft_ms']:.0f} ms ({r['failed']} failed) |")
        out.append(f"| TTFT ratio sm12x (sm_120 plan) / flashinfer | {t['ttft_ratio_sm12x_vs_flashinfer']:.3f} |")
    g = d.get("greedy", {}).get("sm12x_vs_triton")
    if g:
        out.append(f"| greedy generations identical to `triton` (bf16 KV, {d['greedy']['prompts']} prompts x "
                   f"{d['greedy']['steps']} steps) | {g['identical']:.3f} |")
    b = d.get("greedy_before_after", {}).get("sm12x_vs_sm12x_before")
    if b:
        out.append(f"| greedy generations identical to the previous release / largest top-1 logprob difference | "
                   f"{b['identical']:.3f} / {b['max_top1_logprob_diff']:.3g} |")
    out += [""] + [f"* {n}" for n in d.get("notes", [])]
    return out


def attention_tables(d):
    out = []
    copy = d["copy_gbps"]
    out.append(f"### Attention (`attention.py`, {_link('attention')})\n")
    out.append(f"{d['device']}, {_versions(d)}; copy ceiling {copy:,.0f} GB/s; 32 q / 8 kv heads, head_dim 128, "
               "page 1, sm_90 plan. Decode: time relative to FlashInfer's bf16 decode (lower is faster).\n")
    out.append("| batch x context | sm12x bf16 | sm12x fp8_e4m3 | sm12x nvfp4 | SGLang Triton bf16 | nvfp4 GB/s (of copy) |")
    out.append("|---|---|---|---|---|---|")
    shapes = sorted({(r["batch"], r["context"], r["heads"]) for r in _rows(d, phase="decode")},
                    key=lambda s: (s[2], s[0], s[1]))
    for b, c, h in shapes:
        fi = _one(d, phase="decode", provider="flashinfer", batch=b, context=c, heads=h)
        if not fi:
            continue
        cells = []
        for prov, kv in (("sm12x", "bf16"), ("sm12x", "fp8_e4m3"), ("sm12x", "nvfp4"), ("sglang_triton", "bf16")):
            r = _one(d, phase="decode", provider=prov, kv_dtype=kv, batch=b, context=c, heads=h)
            cells.append(_f(r["ms"] / fi["ms"], 3) if r else "--")
        nv = _one(d, phase="decode", provider="sm12x", kv_dtype="nvfp4", batch=b, context=c, heads=h)
        head = "" if h == "32/8" else f" ({h})"
        out.append(f"| {b} x {c}{head} | " + " | ".join(cells) +
                   f" | {nv['gbps']:,.0f} ({nv['gbps'] / copy:.0%}) |" if nv else " | -- |")
    out.append("\nExtend (causal, prefix from the pool, chunk from k / v): sm12x bf16 TFLOP/s and ratios.\n")
    out.append("| batch x prefix + chunk | sm12x bf16 TFLOP/s | vs SGLang Triton | vs FlashInfer | nvfp4 / bf16 | fp8 / bf16 |")
    out.append("|---|---|---|---|---|---|")
    for b, p, c in sorted({(r["batch"], r["prefix"], r["chunk"]) for r in _rows(d, phase="extend")},
                          key=lambda s: (s[1] > 0, s[0] * (s[1] + s[2]))):
        m = dict(phase="extend", batch=b, prefix=p, chunk=c)
        ours = _one(d, provider="sm12x", kv_dtype="bf16", **m)
        sg = _one(d, provider="sglang_triton", kv_dtype="bf16", **m)
        fi = _one(d, provider="flashinfer", kv_dtype="bf16", **m)
        nv = _one(d, provider="sm12x", kv_dtype="nvfp4", **m)
        f8 = _one(d, provider="sm12x", kv_dtype="fp8_e4m3", **m)
        out.append(f"| {b} x {p} + {c} | {ours['tflops']:.0f} | {sg['ms'] / ours['ms']:.2f}x | "
                   f"{fi['ms'] / ours['ms']:.2f}x | {ours['ms'] / nv['ms']:.2f} | {ours['ms'] / f8['ms']:.2f} |")
    return out


def _versions(d):
    v = d.get("versions", {})
    return ", ".join(f"{k} {v[k]}" for k in ("flashinfer", "sglang", "triton", "torch") if k in v)


def kernel_ab_table(d, key="kernel_ab", title="This release against the previous one, kernel time"):
    out = [f"### {title} (`kernel_ab.py`, {_link(key)})\n",
           f"{d['device']}, {_versions(d)}; {len(next(iter(d['rounds'].values())))} rounds, trees alternating, "
           "one-shot calls without the host-side index check. Ratio of the median times (> 1: slower).\n",
           "| call | " + " | ".join(f"{n} / {list(d['trees'])[0]}" for n in d["ratio_vs_base"]) + " |",
           "|---|" + "---|" * len(d["ratio_vs_base"])]
    keys = list(next(iter(d["ratio_vs_base"].values())))
    for k in keys:
        out.append(f"| {k} | " + " | ".join(f"{r[k]:.3f}" for r in d["ratio_vs_base"].values()) + " |")
    return out


def backend_host_table(d):
    out = [f"### Backend host time per decode step (`backend_host.py`, {_link('backend_host')})\n",
           f"{d['device']}, {_versions(d)}; batch 1, context 1k, eager (no CUDA graph): metadata plus every "
           "layer's append and attention, wall time without a sync (the GPU waits on the host). Median us "
           "over steps, per round.\n",
           "| tree | KV | " + " | ".join(f"{s} ({v[0]} layers)" for s, v in d["shapes"].items()) + " |",
           "|---|---|" + "---|" * len(d["shapes"])]
    for tree, by_kv in d["rounds"].items():
        for kv, runs in by_kv.items():
            cells = [" / ".join(f"{r[s]['median_us']:,.0f}" for r in runs) for s in d["shapes"]]
            out.append(f"| {tree} | {kv} | " + " | ".join(cells) + " |")
    return out


def append_table(d):
    out = [f"### KV append (`append.py`, {_link('append')})\n",
           f"{d['device']}; fraction of the copy ceiling ({d['copy_gbps']:,.0f} GB/s), bytes read + written, "
           "65,536 tokens x 8 heads, planned tile.\n",
           "| head_dim | bf16 copy | fp8_e4m3 | nvfp4 (one run of slots) | nvfp4 (random slots) |", "|---|---|---|---|---|"]
    for hd in (64, 128, 256):
        cells = []
        for kv, slots in (("bf16", "contiguous"), ("fp8_e4m3", "contiguous"), ("nvfp4", "contiguous"),
                          ("nvfp4", "random")):
            rs = [r for r in _rows(d, provider="sm12x", kv_dtype=kv, head_dim=hd, slots=slots)
                  if r.get("planned") and r.get("tokens") == 65536]
            cells.append(f"{rs[0]['fraction_of_copy']:.2f}" if rs else "--")
        out.append(f"| {hd} | " + " | ".join(cells) + " |")
    return out


def moe_table(d):
    out = [f"### Fused MoE (`moe.py`, {_link('moe')})\n",
           f"{d['device']}; speed ratio sm12x / SGLang `fused_experts` (> 1: faster), CUDA-graph replay of the "
           "whole MoE.\n"]
    tokens = sorted({r["tokens"] for r in _rows(d, provider="sm12x")})
    out += ["| shape | dtype | " + " | ".join(str(t) for t in tokens) + " tokens |", "|---|---|" + "---|" * len(tokens)]
    for shape in dict.fromkeys(r["shape"] for r in _rows(d, provider="sm12x")):
        for dt in dict.fromkeys(r["dtype"] for r in _rows(d, provider="sm12x", shape=shape)):
            cells = []
            for t in tokens:
                a = _one(d, provider="sm12x", shape=shape, dtype=dt, tokens=t)
                b = _one(d, provider="sglang_triton", shape=shape, dtype=dt, tokens=t)
                cells.append(f"{b['ms'] / a['ms']:.2f}" if a and b else "--")
            out.append(f"| {shape} | {dt} | " + " | ".join(cells) + " |")
    return out


def serving_tables(d, dl, dm):
    out = ["### Serving (`sm12x bench-serving`)\n",
           f"Qwen3-8B shape, dummy weights, 1,024 in / 256 out, output tok/s ({_link('serving')}):\n"]
    cons = sorted({r["concurrency"] for r in d["rows"] if r.get("input_len") == 1024})
    out += ["| backend, KV | " + " | ".join(f"conc {c}" for c in cons) + " |", "|---|" + "---|" * len(cons)]
    for be, kv in dict.fromkeys((r["backend"], r["kv_dtype"]) for r in d["rows"]):
        cells = []
        for c in cons:
            r = [x for x in d["rows"] if x["backend"] == be and x["kv_dtype"] == kv and x["concurrency"] == c
                 and x.get("input_len") == 1024 and not x.get("error")]
            cells.append(f"{r[0]['output_throughput']:,.0f}" if r else "--")
        out.append(f"| {be}, {kv} | " + " | ".join(cells) + " |")
    out += [f"\nKV-bound long context, 8,192 in / 1,024 out, concurrency 64, 0.4 of the card ({_link('serving_long')}):\n",
            "| backend, KV | KV capacity (tokens) | output tok/s | median TTFT s | median TPOT ms |", "|---|---|---|---|---|"]
    for r in dl["rows"]:
        if r.get("input_len") == 8192:
            out.append(f"| {r['backend']}, {r['kv_dtype']} | {r['kv_capacity_tokens']:,} | {r['output_throughput']:,.0f} | "
                       f"{r['median_ttft_ms'] / 1e3:.1f} | {r['median_tpot_ms']:.1f} |")
    out += [f"\nQwen3-30B-A3B attention + expert shape, output tok/s ({_link('serving_moe')}):\n"]
    cons = sorted({r["concurrency"] for r in dm["rows"]})
    out += ["| backend, KV | " + " | ".join(f"conc {c}" for c in cons) + " |", "|---|" + "---|" * len(cons)]
    for be, kv in dict.fromkeys((r["backend"], r["kv_dtype"]) for r in dm["rows"]):
        cells = []
        for c in cons:
            r = [x for x in dm["rows"] if x["backend"] == be and x["kv_dtype"] == kv and x["concurrency"] == c
                 and not x.get("error")]
            cells.append(f"{r[0]['output_throughput']:,.0f}" if r else "--")
        out.append(f"| {be}, {kv} | " + " | ".join(cells) + " |")
    return out


def accuracy_table(d):
    out = [f"### KV-format accuracy on a trained model (`accuracy/`, {_link('accuracy')})\n",
           "32.5M-parameter Qwen3 trained on the Python standard library; scored where attention reads the "
           "cache. `in_process`: this project's kernels; `end_to_end`: SGLang servers vs `triton` bf16.\n",
           "| format | path | perplexity | KL | top-1 agreement |", "|---|---|---|---|---|"]
    for r in d["rows"]:
        out.append(f"| {r['format']} | {r['path']} | {r['perplexity']:.3f} | {r['kl']:.1e} | {r['top1_agreement']:.4f} |")
    return out


def budget_table(rows, rows90, aot):
    out = [f"### Shared-memory / register budget (`sm12x budget`, {_link('budget')})\n"]
    by = {}
    for r in rows:
        by.setdefault((r["kernel"], r["arch"]), []).append(r)
    out += ["| kernel | arch | configurations | fit | max shared B | max registers | spills |", "|---|---|---|---|---|---|---|"]
    for (k, a), rs in sorted(by.items()):
        out.append(f"| {k} | sm_{a} | {len(rs)} | {sum(r['fits'] for r in rs)} | "
                   f"{max((r['shared'] or 0) for r in rs):,} | {max((r['regs'] or 0) for r in rs)} | "
                   f"{sum(bool(r['spill']) for r in rs)} |")
    if rows90:
        out.append(f"\nsm_90 warpgroup-MMA extend kernels ({_link('budget_sm90')}): "
                   + "; ".join(f"{k} {len(rs)} configurations, {sum(r['fits'] for r in rs)} fit, max "
                               f"{max(r['shared'] or 0 for r in rs):,} B / {max(r['regs'] or 0 for r in rs)} registers"
                               for k, rs in _group(rows90).items()))
    if aot:
        out.append(f"\nSGLang's own Triton kernels for sm_120/121 at SGLang's and at the patched choices: {_link('aot_sglang')}.")
    return out


def _group(rows):
    g = {}
    for r in rows:
        g.setdefault(r["kernel"], []).append(r)
    return g


def headline(att, e2e, sl, budget, sm120=None, e2e12=None):
    """The top-level README's table: ratios against the peers, each linking its file; the SM120
    path first."""
    out = [BEGIN, "| result | value | source |", "|---|---|---|"]
    if sm120:
        src = _top_link("attention_sm120", "sm120-plan")
        ext = [r for r in _rows(sm120, phase="extend", provider="sm12x", kv_dtype="bf16")]
        fa2 = [f["ms"] / r["ms"] for r in ext if (f := _one(sm120, phase="extend", provider="flashinfer_fa2",
                                                             kv_dtype="bf16", batch=r["batch"], prefix=r["prefix"],
                                                             chunk=r["chunk"]))]
        nv = [r["ms"] / n["ms"] for r in ext if r["prefix"] and (n := _one(
            sm120, phase="extend", provider="sm12x", kv_dtype="nvfp4", batch=r["batch"], prefix=r["prefix"],
            chunk=r["chunk"]))]
        dec = [r["ms"] / f["ms"] for r in _rows(sm120, phase="decode", provider="sm12x", kv_dtype="bf16")
               if (f := _one(sm120, phase="decode", provider="flashinfer", batch=r["batch"], context=r["context"],
                             heads=r["heads"]))]
        if fa2:
            out.append(f"| **SM120 path** (sm_120 plan, mma.sync; H100): bf16 extend speed vs FlashInfer FA2, "
                       f"{len(fa2)} shapes | {min(fa2):.2f}-{max(fa2):.2f}x | {src} |")
        sg = [s_["ms"] / r["ms"] for r in ext if (s_ := _one(sm120, phase="extend", provider="sglang_triton_sm120",
                                                              kv_dtype="bf16", batch=r["batch"], prefix=r["prefix"],
                                                              chunk=r["chunk"]))]
        if sg:
            out.append(f"| **SM120 path**: bf16 extend speed vs SGLang's Triton at its SM12x tiles | "
                       f"{min(sg):.2f}-{max(sg):.2f}x | {src} |")
        if nv:
            out.append(f"| **SM120 path**: extend with an nvfp4 prefix, speed vs our bf16 | "
                       f"{min(nv):.2f}-{max(nv):.2f} | {src} |")
        if dec:
            out.append(f"| **SM120 path**: bf16 decode time / FlashInfer's, {len(dec)} shapes | "
                       f"{min(dec):.2f}-{max(dec):.2f} | {src} |")
        a = _one(sm120, phase="decode", provider="sm12x", kv_dtype="nvfp4", batch=128, context=4096, heads="32/8")
        f = _one(sm120, phase="decode", provider="flashinfer", kv_dtype="bf16", batch=128, context=4096, heads="32/8")
        if a and f:
            out.append(f"| **SM120 path**: nvfp4 decode at 128 x 4k, speed vs FlashInfer bf16 | "
                       f"{f['ms'] / a['ms']:.2f}x | {src} |")
    if e2e12 and e2e12.get("ttft_sm120_plan"):
        t = e2e12["ttft_sm120_plan"]
        out.append(f"| **SM120 path** in a server: median TTFT of {t['requests']} x {t['input_len']:,}-token prompts, "
                   f"sm12x / SGLang `flashinfer` (FA3 on this H100) | {t['ttft_ratio_sm12x_vs_flashinfer']:.2f} | "
                   f"{_top_link('e2e_sm120', 'e2e')} |")
    if att:
        def ratio(phase, prov, kv, peer, peer_kv="bf16", **m):
            a, b = _one(att, phase=phase, provider=prov, kv_dtype=kv, **m), _one(att, phase=phase, provider=peer,
                                                                                 kv_dtype=peer_kv, **m)
            return a, b
        dec = [(r, _one(att, phase="decode", provider="flashinfer", batch=r["batch"], context=r["context"],
                        heads=r["heads"])) for r in _rows(att, phase="decode", provider="sm12x", kv_dtype="bf16")]
        dec = [r["ms"] / f["ms"] for r, f in dec if f]
        out.append(f"| bf16 decode time / FlashInfer's, {len(dec)} shapes (H100, sm_90 plan) | "
                   f"{min(dec):.2f}-{max(dec):.2f} | {_top_link('attention', 'attention')} |")
        a, f = ratio("decode", "sm12x", "nvfp4", "flashinfer", batch=128, context=4096, heads="32/8")
        if a and f:
            out.append(f"| nvfp4 decode at 128 x 4k: speed vs FlashInfer bf16 / fraction of the copy ceiling | "
                       f"{f['ms'] / a['ms']:.2f}x / {a['gbps'] / att['copy_gbps']:.0%} | {_top_link('attention', 'attention')} |")
        ext = _rows(att, phase="extend", provider="sm12x", kv_dtype="bf16")
        sg = [_one(att, phase="extend", provider="sglang_triton", kv_dtype="bf16", batch=r["batch"], prefix=r["prefix"],
                   chunk=r["chunk"])["ms"] / r["ms"] for r in ext]
        fi = [r["ms"] / _one(att, phase="extend", provider="flashinfer", kv_dtype="bf16", batch=r["batch"],
                             prefix=r["prefix"], chunk=r["chunk"])["ms"] for r in ext]
        nv = [r["ms"] / _one(att, phase="extend", provider="sm12x", kv_dtype="nvfp4", batch=r["batch"],
                             prefix=r["prefix"], chunk=r["chunk"])["ms"] for r in ext if r["prefix"]]
        out.append(f"| bf16 extend speed vs SGLang's Triton / vs FlashInfer's ragged prefill (sm_90 plan) | "
                   f"{min(sg):.2f}-{max(sg):.2f}x / {1 / max(fi):.2f}-{1 / min(fi):.2f}x | {_top_link('attention', 'attention')} |")
        out.append(f"| extend with an nvfp4 prefix, speed vs our bf16 | {min(nv):.2f}-{max(nv):.2f} | "
                   f"{_top_link('attention', 'attention')} |")
    if sl:
        s = {x["check"]: x for x in sl["summary"]}
        lc = s.get("best nvfp4 vs best bf16, long context")
        if lc:
            out.append(f"| serving 8k in / 1k out at 0.4 of an H100: nvfp4 KV vs best bf16 configuration, output tok/s | "
                       f"{lc['ratio']:.2f}x | {_top_link('serving_long', 'serving-long')} |")
    if e2e:
        out.append(f"| KV-pool tokens, nvfp4 vs bf16 (same memory) | {e2e['kv_capacity_ratio_nvfp4_vs_bf16']:.2f}x | "
                   f"{_top_link('e2e', 'e2e')} |")
        out.append(f"| greedy generations identical to `triton` (bf16 KV): sm12x / flashinfer / a broken sm12x | "
                   f"{e2e['greedy_agreement']:.2f} / {e2e['reference_agreement']:.2f} / {e2e['broken_run_agreement']:.2f} | "
                   f"{_top_link('e2e', 'e2e')} |")
    if e2e12 and e2e12.get("before_after_agreement") is not None:
        out.append(f"| greedy generations identical to the previous release | {e2e12['before_after_agreement']:.2f} | "
                   f"{_top_link('e2e_sm120', 'e2e')} |")
    if budget:
        bad = sum(not r["fits"] for r in budget)
        out.append(f"| configurations compiled for sm_120/121 within 101,376 B, no spills | "
                   f"{len(budget) - bad:,} of {len(budget):,} | {_top_link('budget', 'budget')} |")
    out.append(END)
    return "\n".join(out)


def models_table(d):
    out = [f"### Models end to end ({_link('models')})\n",
           f"{d['device']}, SGLang {d['sglang']}, torch {d['torch']}: checkpoints with each model's attention and "
           "MoE dimensions (layers cut, transformers' random init), greedy agreement with SGLang's first listed "
           "backend at bf16 KV (64 prompts x 64 steps), mean prompt-logprob drift from it, and 200 `bench_serving` "
           "requests at concurrency 32 at nvfp4 KV.\n",
           "| model | backend | KV | served | greedy identical | of a second upstream backend | prompt-logprob drift "
           "| failures | output tok/s | KV tokens (nvfp4 / bf16) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in d["models"]:
        ratio = r.get("kv_capacity_ratio_vs_bf16")
        out.append(f"| {r['model']} | {r['backend']} | {r['kv_dtype']} | {'yes' if r['served'] else 'no'} | "
                   f"{_f(r['greedy_identical'])} | {_f(r['ref_greedy_identical'])} | "
                   f"{_f(r['prompt_logprob_mean_abs_diff'], 3)} | {_f(r['failures'], 0)} | "
                   f"{_f(r['output_throughput'], 0)} | {_f(ratio) + 'x' if ratio else '-'} |")
    notes = [f"{r['model']} ({r['backend']}, {r['kv_dtype']}): {r.get('reference_note') or r['note'].split('; ', 1)[-1]}"
             for r in d["models"] if r.get("reference_note") or not r["served"]]
    out += [""] + [f"* {n}" for n in notes] + [f"* Not measured yet: {o}" for o in d.get("owed", [])]
    return out


def attention_models_table(d, d120):
    out = [f"### Model-shaped decode layers ({_link('attention_models')}, {_link('attention_models_sm120', 'sm_120 plan')})\n",
           f"{d['device']}, batch 64; gpt-oss: 64 / 8 heads, head_dim 64, sinks, window layer reading the backend's "
           "128-key lists of an 8k context; Qwen3-14B: 40 / 8 heads at 4k beside the 32 / 8 shape. Time in us "
           "(GB/s of what is read); SGLang's Triton decode on the same lists.\n",
           "| layer | plan | sm12x bf16 | sm12x fp8 | sm12x nvfp4 | SGLang Triton bf16 | SGLang / sm12x bf16 |",
           "|---|---|---|---|---|---|---|"]
    for plan, dd in (("device", d), ("sm_120", d120)):
        if not dd:
            continue
        rows = [r for r in dd["rows"] if r.get("phase") == "model_decode" and "ms" in r]
        for model in dict.fromkeys(r["model"] for r in rows):
            by = {(r["provider"], r["kv_dtype"]): r for r in rows if r["model"] == model}
            cell = lambda k: (f"{by[k]['ms'] * 1e3:.1f} ({by[k]['gbps']:.0f})" if k in by else "-")  # noqa: E731
            ratio = (by[("sglang_triton", "bf16")]["ms"] / by[("sm12x", "bf16")]["ms"]
                     if ("sglang_triton", "bf16") in by and ("sm12x", "bf16") in by else None)
            out.append(f"| {model} | {plan} | {cell(('sm12x', 'bf16'))} | {cell(('sm12x', 'fp8_e4m3'))} | "
                       f"{cell(('sm12x', 'nvfp4'))} | {cell(('sglang_triton', 'bf16'))} | {_f(ratio)}x |")
    return out


def aot_hybrid_table(d):
    out = [f"### Hybrid models' Triton kernels on SM120 ({_link('aot_hybrid')})\n",
           f"Every launch of a Qwen3-Next-shaped (Gated DeltaNet, 512-expert top-10 MoE) and a Nemotron-H-shaped "
           f"(Mamba-2) forward, SGLang {d['sglang']} at the choices it makes on an SM120 card (every config of an "
           "autotune list), compiled for sm_120 / sm_121; `fixed`: with the plugin's table on (configs that "
           "overflow or spill dropped from the autotune list, a spilling launch relaunched).\n",
           "| kernel | arch | SGLang's launches | fit | max shared B (fitting) | worst | fixed: change | fixed: max shared B / registers / spills |",
           "|---|---|---|---|---|---|---|---|"]
    by = {}
    for r in d["rows"]:
        by.setdefault((r["kernel"], r["arch"]), {}).setdefault(r["stage"], []).append(r)
    for (k, a), st in sorted(by.items()):
        sg, fx = st.get("sglang", []), st.get("fixed", [{}])[0]
        bad = [r for r in sg if not r["fits"]]
        worst = max(bad, key=lambda r: (r["shared"] > r["limit"], r["spill"]), default=None)
        w = "-" if worst is None else (f"{worst['shared']:,} B" if worst["shared"] > worst["limit"]
                                       else f"{worst['spill']} B spilled")
        out.append(f"| {k} | sm_{a} | {len(sg)} | {len(sg) - len(bad)} | "
                   f"{max((r['shared'] for r in sg if r['fits']), default=0):,} | {w} | {fx.get('change', '-')} | "
                   f"{fx.get('shared') or 0:,} / {fx.get('regs')} / {fx.get('spill')} |")
    return out


def render():
    d = {k: _load(k) for k in SOURCES}
    parts = ["# Benchmarks\n", "Generated by `python benchmark/make_readme.py` from the files in `results/` it names; "
             "do not edit by hand. Design notes and the reasons behind the planner's rules: `NOTES.md`.\n", HOW_TO,
             "## Current results\n"]
    for key, fn in (("attention_sm120", sm120_tables), ("attention", attention_tables),
                    ("kernel_ab", lambda x: kernel_ab_table(
                        x, "kernel_ab", "This release against the previous one and against itself without the "
                        "out-of-pool clamp, kernel time")),
                    ("e2e_sm120", e2e_sm120_table), ("models", models_table),
                    ("attention_models", lambda x: attention_models_table(x, d["attention_models_sm120"])),
                    ("backend_host", backend_host_table), ("append", append_table),
                    ("moe", moe_table), ("accuracy", accuracy_table)):
        if d[key]:
            parts += fn(d[key]) + [""]
    if d["serving"] and d["serving_long"] and d["serving_moe"]:
        parts += serving_tables(d["serving"], d["serving_long"], d["serving_moe"]) + [""]
    if d["budget"]:
        parts += budget_table(d["budget"], d["budget_sm90"], d["aot_sglang"]) + [""]
    if d["aot_hybrid"]:
        parts += aot_hybrid_table(d["aot_hybrid"]) + [""]
    missing = [SOURCES[k] for k in SOURCES if d[k] is None]
    if missing:
        parts.append("Not yet run (named in `SOURCES`, no file): " + ", ".join(f"`{m}`" for m in missing) + "\n")
    return "\n".join(parts), headline(d["attention"], d["e2e"], d["serving_long"], d["budget"], d["attention_sm120"],
                                      d["e2e_sm120"])


def _with_headline(text, table):
    a, b = text.find(BEGIN), text.find(END)
    if a < 0 or b < 0:
        raise SystemExit(f"{TOP_README} has no {BEGIN} ... {END} block")
    return text[:a] + table + text[b + len(END):]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="exit 1 if the files differ from what would be written")
    a = ap.parse_args(argv)
    bench, table = render()
    top = _with_headline(TOP_README.read_text(), table)
    if a.check:
        stale = [str(p) for p, want in ((README, bench), (TOP_README, top)) if not p.exists() or p.read_text() != want]
        if stale:
            print("out of date (run python benchmark/make_readme.py): " + ", ".join(stale), file=sys.stderr)
            return 1
        return 0
    README.write_text(bench)
    TOP_README.write_text(top)
    print(f"wrote {README} and the headline table of {TOP_README}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
