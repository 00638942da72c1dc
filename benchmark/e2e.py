"""End-to-end checks of ``--attention-backend sm12x`` inside real SGLang servers (GPU machine).

Phases (run one or several; each merges its results into ``--out`` JSON):

  greedy   random-init checkpoint (transformers' standard init, saved as safetensors), bf16 KV:
           64 prompts sharing a long prefix x 64 greedy steps on triton, flashinfer, sm12x and a
           deliberately broken sm12x (cached prefix dropped). Reports identical-generation fractions,
           first-divergence positions and top-1 logprob differences before divergence, sm12x vs triton
           next to flashinfer vs triton.
  nvfp4    KV pool capacity nvfp4 vs bf16 at the same --mem-fraction-static, then
           sglang.bench_serving (500 requests, CUDA graphs and radix cache on) with random-ids and
           generated-shared-prefix workloads on an nvfp4 sm12x server.
  models   the models SM12x owners deploy (benchmark/models/shapes.json: real attention / MoE dims,
           layers cut, transformers' random init): SGLang's reference backend(s) and sm12x at bf16
           KV (greedy agreement, prompt-logprob drift from the reference and from transformers'
           float32 forward), sm12x at nvfp4 KV under bench_serving (200 requests at concurrency
           32), KV capacity; one row per model x backend x KV dtype.
  serve    one server per --models entry with nvfp4 sm12x and a short bench (does it serve?).
  tp2      nvfp4 sm12x at --tp-size 2 vs 1 on a random-init checkpoint: greedy tokens and logprobs.
  ttft     prefill-bound serving: --ttft-requests prompts of --ttft-input tokens (8,192), 16 output
           tokens, all at once, on SGLang's flashinfer backend and on sm12x planned for sm_120
           (SGLANG_SM12X_PLAN_ARCH=120 with DISABLE_MMA_V3=1: the SM120 code path) -- median TTFT,
           and which FlashInfer prefill kernel the server's log names.

usage: python benchmark/e2e.py --phase greedy nvfp4 --out benchmark/results/DATE-DEVICE-e2e.json
"""
from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from sglang_sm12x.tools.bench_serving import client_base  # noqa: E402
from sglang_sm12x.tools.serving import (Server, bundled_model, gpu_list, run_on_gpus, stop_on_sigterm,  # noqa: E402
                                      visible_device)

MOE_RUNNER_LOG_LINE = "sm12x MoE runner in use"     # sglang_sm12x.moe_runner.LOG_LINE (checked by a test)

ROOT = Path(__file__).resolve().parents[1]


def make_checkpoint(config_dir, out_dir, layers=None, seed=0):
    """Random-init weights (transformers' own init, not near-zero dummies) saved as safetensors."""
    import shutil

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    out = Path(out_dir)
    if (out / "model.safetensors").exists() or list(out.glob("*.safetensors")):
        return out
    out.mkdir(parents=True, exist_ok=True)
    raw = json.loads((Path(config_dir) / "config.json").read_text())
    if layers:
        raw["num_hidden_layers"] = layers
        for key in ("layer_types", "mlp_only_layers"):
            if isinstance(raw.get(key), list):
                raw[key] = raw[key][:layers]
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(raw))
    cfg = AutoConfig.from_pretrained(out)
    torch.manual_seed(seed)
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(cfg, torch_dtype=torch.bfloat16)
    model.save_pretrained(out, safe_serialization=True)
    for f in Path(config_dir).glob("tokenizer*"):
        shutil.copy(f, out / f.name)
    del model
    torch.cuda.empty_cache()
    return out


def prompts(n, prefix_len, vocab, seed=1):
    rnd = random.Random(seed)
    prefix = [rnd.randrange(3, vocab) for _ in range(prefix_len)]
    return [prefix + [rnd.randrange(3, vocab) for _ in range(rnd.randrange(8, 64))] for _ in range(n)]


def compare(a, b):
    """Greedy runs a, b: [(tokens, logprobs)] -> agreement stats."""
    same, first_div, lp_diff = 0, [], []
    for (ta, la), (tb, lb) in zip(a, b):
        n = min(len(ta), len(tb))
        d = next((i for i in range(n) if ta[i] != tb[i]), None)
        if d is None and len(ta) == len(tb):
            same += 1
            first_div.append(n)
        else:
            first_div.append(d if d is not None else n)
        upto = first_div[-1]
        lp_diff += [abs(x - y) for x, y in zip(la[:upto], lb[:upto]) if x is not None and y is not None]
    first_div.sort()
    return dict(identical=same / len(a), mean_first_divergence=sum(first_div) / len(first_div),
                median_first_divergence=first_div[len(first_div) // 2], min_first_divergence=first_div[0],
                max_top1_logprob_diff=max(lp_diff) if lp_diff else 0.0,
                mean_top1_logprob_diff=sum(lp_diff) / len(lp_diff) if lp_diff else 0.0)


def phase_greedy(args, res):
    ckpt = make_checkpoint(args.greedy_model, "/tmp/e2e-ckpt-greedy", layers=args.greedy_layers)
    vocab = json.loads((Path(args.greedy_model) / "config.json").read_text())["vocab_size"]
    # each set: its own shared prefix and prompts; set 0 is the historical one (seed 1). Several sets
    # cost little beyond the server start-ups and tighten the agreement fractions.
    sets = [prompts(args.prompts, args.prefix_len, vocab, seed=1 + i) for i in range(args.prompt_sets)]
    runs, starts = {}, {}
    # longest start-ups first (flashinfer JIT-compiles), so with several --gpus the queue balances
    plan = [("flashinfer", {}), ("triton", {}), ("sm12x", {}), ("sm12x_broken", {"SGLANG_SM12X_FAULT": "drop_prefix"})]
    if args.before_site:    # another release of this project, installed into its own folder, ahead on the path
        plan.append(("sm12x_before", {"PYTHONPATH": os.pathsep.join(
            p for p in (args.before_site, os.environ.get("PYTHONPATH", "")) if p)}))
    plan = [item for item in plan if item[0] in args.greedy_backends or (item[0] == "sm12x_before")]

    def work(item, gpu, slot, live):
        name, env = item
        backend = "sm12x" if name.startswith("sm12x") else name
        if gpu is not None:
            env = dict(env, CUDA_VISIBLE_DEVICES=visible_device(gpu))
        try:
            # the other release's server starts outside this checkout, whose packages would shadow it
            cwd = tempfile.gettempdir() if name == "sm12x_before" else None
            with Server(ckpt, backend, "--cuda-graph-max-bs", "64", port=args.port + 10 * slot, env=env,
                        log=f"{args.logdir}/greedy-{name}.log", mem_fraction=0.3, cwd=cwd) as s, live.holding(s):
                starts[name] = round(s.startup_s, 1)
                out = []
                for ps in sets:
                    s.generate_ids(ps[:1], 4)          # warm the radix cache with the shared prefix
                    out.append(s.generate_ids(ps, args.steps))
                runs[name] = out
        except Exception as e:  # noqa: BLE001 -- report and go on with the other backends
            res.setdefault("failures_detail", []).append(f"greedy {name}: {str(e)[-1500:]}")

    run_on_gpus(plan, args.gpus, work)
    g = {"model": f"{Path(args.greedy_model).name} ({args.greedy_layers or 'all'} layers, random init)",
         "prompts": args.prompts * len(sets), "prompt_sets": len(sets), "steps": args.steps,
         "shared_prefix_tokens": args.prefix_len, "startup_s": starts}
    if "triton" in runs:
        for name in ("sm12x", "flashinfer", "sm12x_broken", "sm12x_before"):
            if name in runs:
                pooled = [r for per_set in runs[name] for r in per_set]
                g[f"{name}_vs_triton"] = compare(pooled, [r for per_set in runs["triton"] for r in per_set])
                if len(sets) > 1:
                    g[f"{name}_vs_triton_per_set"] = [compare(a, b) for a, b in zip(runs[name], runs["triton"])]
    res["greedy"] = g
    if "sm12x_vs_triton" in g:
        res["greedy_agreement"] = g["sm12x_vs_triton"]["identical"]
    if "flashinfer_vs_triton" in g:
        res["reference_agreement"] = g["flashinfer_vs_triton"]["identical"]
    if "sm12x_broken_vs_triton" in g:
        res["broken_run_agreement"] = g["sm12x_broken_vs_triton"]["identical"]
    if "sm12x" in runs and "sm12x_before" in runs:
        pooled = lambda name: [r for per_set in runs[name] for r in per_set]  # noqa: E731
        g["sm12x_vs_sm12x_before"] = compare(pooled("sm12x"), pooled("sm12x_before"))
        res["before_after_agreement"] = g["sm12x_vs_sm12x_before"]["identical"]


def bench(server, model, dataset, n, extra, log):
    cmd = client_base(server.port, model, dataset, n, log + ".jsonl") + list(extra)
    t0 = time.time()
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    Path(log + ".txt").write_text(p.stdout + p.stderr)
    out = {"dataset": dataset, "num_prompts": n, "rc": p.returncode, "wall_s": round(time.time() - t0, 1)}
    for line in Path(log + ".jsonl").read_text().splitlines()[-1:] if Path(log + ".jsonl").exists() else []:
        d = json.loads(line)
        for k in ("completed", "output_throughput", "median_ttft_ms", "median_tpot_ms", "request_throughput"):
            if k in d:
                out[k] = d[k]
    out["failed"] = n - int(out.get("completed", 0))
    return out


RANDOM = ["--random-input-len", "512", "--random-output-len", "128", "--random-range-ratio", "0.5",
          "--max-concurrency", "64"]
GSP = ["--gsp-num-groups", "10", "--gsp-prompts-per-group", "50", "--gsp-system-prompt-len", "1024",
       "--gsp-question-len", "64", "--gsp-output-len", "64", "--max-concurrency", "64"]


def phase_nvfp4(args, res):
    model = args.nvfp4_model
    caps = {}
    for kv in ("auto", "nvfp4"):
        with Server(model, "sm12x", "--load-format", "dummy", "--kv-cache-dtype", kv, "--disable-cuda-graph",
                    port=args.port, log=f"{args.logdir}/cap-{kv}.log", mem_fraction=0.8) as s:
            caps[kv] = s.kv_capacity()
    res["kv_capacity_tokens"] = {"bf16": caps["auto"], "nvfp4": caps["nvfp4"], "model": Path(model).name,
                                 "mem_fraction_static": 0.8}
    if caps["auto"] and caps["nvfp4"]:
        res["kv_capacity_ratio_nvfp4_vs_bf16"] = caps["nvfp4"] / caps["auto"]
    with Server(model, "sm12x", "--load-format", "dummy", "--kv-cache-dtype", "nvfp4", port=args.port,
                log=f"{args.logdir}/bench-nvfp4.log", mem_fraction=0.8) as s:
        b = [bench(s, model, "random-ids", args.num_requests, RANDOM, f"{args.logdir}/bench-random"),
             bench(s, model, "generated-shared-prefix", args.num_requests, GSP, f"{args.logdir}/bench-gsp")]
    res["bench_serving_nvfp4"] = b
    res["failures"] = res.get("failures", 0) + sum(x["failed"] for x in b)


def phase_serve(args, res):
    out = []
    extra = args.serve_args.split()
    for model in args.models:
        log = f"{args.logdir}/serve-{Path(model).name}.log"
        try:
            with Server(model, "sm12x", "--load-format", "dummy", "--kv-cache-dtype", "nvfp4", *extra, port=args.port,
                        log=log, mem_fraction=0.8) as s:
                b = bench(s, model, "random-ids", 100, RANDOM, f"{args.logdir}/serve-{Path(model).name}")
                out.append({"model": Path(model).name, "server_args": extra, "startup_s": round(s.startup_s, 1), **b})
        except Exception as e:  # noqa: BLE001
            out.append({"model": Path(model).name, "server_args": extra, "error": str(e)[-1500:]})
        if "--moe-runner-backend" in extra and Path(log).exists():
            out[-1]["sm12x_moe_runner_in_log"] = MOE_RUNNER_LOG_LINE in Path(log).read_text(errors="replace")
    res["serve_nvfp4" if not extra else "serve_nvfp4_" + "_".join(a.lstrip("-") for a in extra)] = out
    res["failures"] = res.get("failures", 0) + sum(x.get("failed", 1) if "error" not in x else 100 for x in out)


def phase_ttft(args, res):
    """Median TTFT of long prompts: SGLang's flashinfer backend against sm12x at the sm_120 plan,
    one server at a time on the same checkpoint (dummy weights: attention's cost does not depend
    on them)."""
    model = args.ttft_model
    extra = ["--random-input-len", str(args.ttft_input), "--random-output-len", "16", "--random-range-ratio", "1.0",
             "--max-concurrency", str(args.ttft_requests)]
    out = {"model": Path(model).name, "input_len": args.ttft_input, "requests": args.ttft_requests, "rows": []}
    for name, backend, env in (("flashinfer", "flashinfer", {}),
                               ("sm12x_sm120_plan", "sm12x", {"SGLANG_SM12X_PLAN_ARCH": "120",
                                                              "DISABLE_MMA_V3": "1"})):
        log = f"{args.logdir}/ttft-{name}.log"
        try:
            with Server(model, backend, "--load-format", "dummy", "--disable-radix-cache", port=args.port, env=env,
                        log=log, mem_fraction=0.6) as s:
                b = bench(s, model, "random-ids", args.ttft_requests, extra, f"{args.logdir}/ttft-{name}")
                row = {"name": name, "backend": backend, "env": env, "startup_s": round(s.startup_s, 1), **b}
        except Exception as e:  # noqa: BLE001
            row = {"name": name, "backend": backend, "env": env, "error": str(e)[-1500:]}
        if backend == "flashinfer" and Path(log).exists():
            row["flashinfer_prefill_kernel"] = flashinfer_kernel_named(Path(log).read_text(errors="replace"))
        out["rows"].append(row)
    by = {r["name"]: r for r in out["rows"]}
    if all("median_ttft_ms" in by.get(n, {}) for n in ("flashinfer", "sm12x_sm120_plan")):
        out["ttft_ratio_sm12x_vs_flashinfer"] = by["sm12x_sm120_plan"]["median_ttft_ms"] / by["flashinfer"][
            "median_ttft_ms"]
    res["ttft_sm120_plan"] = out
    res["failures"] = res.get("failures", 0) + sum(r.get("failed", 0) if "error" not in r else args.ttft_requests
                                                   for r in out["rows"])


def flashinfer_kernel_named(log: str) -> str:
    """Which FlashInfer prefill kernel family a server log names ("fa2", "fa3", or unknown): its JIT
    builds and backend lines mention the module they load."""
    low = log.lower()
    found = [k for k in ("fa3", "fa2") if k in low]
    return ",".join(found) or "not named in the log"


MODEL_SHAPES = Path(__file__).resolve().parent / "models" / "shapes.json"
# SGLang's reference backend for each architecture on this card and a second upstream one where
# the model allows it (gpt-oss and Llama-4 keep triton only: their allow-lists exclude flashinfer)
MODEL_BACKENDS = {"GptOssForCausalLM": ("triton",), "Llama4ForCausalLM": ("triton",)}


def _prompt_logprobs(server, ids):
    """Each prompt's token logprobs (positions 1..n-1) as the server computes them."""
    out = server.post("/generate", {"input_ids": ids, "return_logprob": True, "logprob_start_len": 0,
                                    "sampling_params": {"max_new_tokens": 1, "temperature": 0.0}})
    return [[t[0] for t in o["meta_info"].get("input_token_logprobs") or [] if t[0] is not None] for o in out]


def hf_prompt_logprobs(ckpt, ids, device="cuda"):
    """Each prompt's token logprobs (positions 1..n-1) from transformers' own float32 forward of the
    checkpoint: the yardstick every backend's drift is measured against (an upstream backend can
    differ from the model's definition -- SGLang's Triton decode reads one key fewer than
    transformers on gpt-oss's window layers). None when transformers cannot load it."""
    import torch
    from transformers import AutoModelForCausalLM

    out, model = [], None
    try:
        model = AutoModelForCausalLM.from_pretrained(ckpt, torch_dtype=torch.float32).to(device).eval()
        with torch.no_grad():
            for p in ids:
                x = torch.tensor([p], device=device)
                lp = torch.log_softmax(model(x).logits[0, :-1].float(), -1)
                out.append(lp.gather(1, x[0, 1:, None])[:, 0].tolist())
    except Exception:  # noqa: BLE001 -- an architecture this transformers cannot load or run here
        out = None
    del model
    torch.cuda.empty_cache()
    return out


def _mean_abs_diff(a, b):
    d = [abs(x - y) for pa, pb in zip(a, b) for x, y in zip(pa, pb)]
    return sum(d) / len(d) if d else None


def phase_models(args, res):
    """The models SM12x owners deploy (``benchmark/models/shapes.json``: real attention and MoE
    dimensions, layers cut), transformers' random init (SGLang's dummy loader where this
    transformers lacks the architecture, noted in the row): SGLang's reference backend(s) and sm12x
    with bf16 KV -- greedy agreement against the reference, prompt-logprob drift -- then sm12x with
    nvfp4 KV under bench_serving (200 requests at concurrency 32), CUDA graphs on."""
    shapes = json.loads(MODEL_SHAPES.read_text())
    tok_dir = bundled_model()
    chosen = args.model_shapes or list(shapes)
    unknown = sorted(set(chosen) - set(shapes))
    if unknown:
        raise SystemExit(f"--model-shapes: unknown {unknown}; benchmark/models/shapes.json has {sorted(shapes)}")
    # rows of models not run this time stay (one file gathers several runs); each row is saved as
    # soon as its server stops, so a run cut short keeps what it measured
    rows = [r for r in res.get("models", []) if r["model"] not in chosen]
    res["models"] = rows
    for name in chosen:
        spec = shapes[name]
        cfg_dir = Path(tempfile.mkdtemp(prefix=f"shape-{name}-"))
        (cfg_dir / "config.json").write_text(json.dumps(spec["config"]))
        for f in Path(tok_dir).glob("tokenizer*"):
            (cfg_dir / f.name).write_bytes(f.read_bytes())
        load, note = [], spec["note"]
        try:
            ckpt = make_checkpoint(cfg_dir, f"/tmp/e2e-ckpt-{name}")
        except Exception as e:  # noqa: BLE001 -- an architecture this transformers lacks
            ckpt, load = cfg_dir, ["--load-format", "dummy"]
            note += f"; SGLang's dummy loader (transformers: {type(e).__name__}: {str(e)[:120]})"
        arch = spec["config"]["architectures"][0]
        refs = MODEL_BACKENDS.get(arch, ("triton", "flashinfer"))
        ps = prompts(args.prompts, 256, spec["config"]["vocab_size"], seed=3)
        runs, plps = {}, {}
        hf = hf_prompt_logprobs(ckpt, ps[:8]) if not load else None
        for backend, kv in [(b, "auto") for b in refs] + [("sm12x", "auto"), ("sm12x", "nvfp4")]:
            row = dict(model=name, architecture=arch, backend=backend, kv_dtype=kv, served=False, error=None,
                       note=note, greedy_identical=None, ref_greedy_identical=None,
                       prompt_logprob_mean_abs_diff=None, failures=None, output_throughput=None,
                       kv_capacity_tokens=None)
            try:
                with Server(ckpt, backend, *load, "--kv-cache-dtype", kv, "--cuda-graph-max-bs", "32",
                            port=args.port, log=f"{args.logdir}/models-{name}-{backend}-{kv}.log",
                            mem_fraction=0.5) as s:
                    row["served"] = True
                    row["kv_capacity_tokens"] = s.kv_capacity()
                    if kv == "auto":
                        runs[backend] = s.generate_ids(ps, args.steps)
                        plps[backend] = _prompt_logprobs(s, ps[:8])
                        if hf is not None:      # drift from transformers' float32 forward
                            row["hf_prompt_logprob_mean_abs_diff"] = _mean_abs_diff(plps[backend], hf)
                    else:
                        b = bench(s, str(ckpt), "random-ids", 200,
                                  ["--random-input-len", "1024", "--random-output-len", "128",
                                   "--random-range-ratio", "0.5", "--max-concurrency", "32"],
                                  f"{args.logdir}/models-{name}-bench")
                        row["failures"], row["output_throughput"] = b["failed"], b.get("output_throughput")
            except Exception as e:  # noqa: BLE001 -- the row says why, the run goes on
                row["error"] = str(e)[-600:]
            rows.append(row)
            args.save()
        ref = refs[0]
        for row in rows:
            if row["model"] != name or row["kv_dtype"] != "auto" or row["backend"] not in runs or ref not in runs:
                continue
            if row["backend"] != ref:
                row["greedy_identical"] = compare(runs[row["backend"]], runs[ref])["identical"]
                row["prompt_logprob_mean_abs_diff"] = _mean_abs_diff(plps[row["backend"]], plps[ref])
            if row["backend"] == "sm12x" and len(refs) > 1 and refs[1] in runs:
                row["ref_greedy_identical"] = compare(runs[refs[1]], runs[ref])["identical"]
        if "sm12x" in runs:
            caps = {r["kv_dtype"]: r["kv_capacity_tokens"] for r in rows
                    if r["model"] == name and r["backend"] == "sm12x" and r["kv_capacity_tokens"]}
            if "auto" in caps and "nvfp4" in caps:
                for r in rows:
                    if r["model"] == name and r["backend"] == "sm12x" and r["kv_dtype"] == "nvfp4":
                        r["kv_capacity_ratio_vs_bf16"] = caps["nvfp4"] / caps["auto"]
        args.save()
    res["failures"] = res.get("failures", 0) + sum(1 for r in rows if r["model"] in chosen and not r["served"])


def phase_tp2(args, res):
    """nvfp4 sm12x at --tp-size 2 against --tp-size 1: the same greedy tokens and logprobs."""
    ckpt = make_checkpoint(args.tp_model, "/tmp/e2e-ckpt-tp", layers=args.tp_layers)
    vocab = json.loads((Path(args.tp_model) / "config.json").read_text())["vocab_size"]
    ps = prompts(32, 512, vocab, seed=2)
    tp2 = res.setdefault("tp2", {"model": f"{Path(args.tp_model).name} ({args.tp_layers or 'all'} layers, "
                                          "random init)", "prompts": len(ps), "steps": 32})
    for backend, kv in args.tp_configs:
        runs = {}
        for tp in (1, 2):
            try:
                with Server(ckpt, backend, "--kv-cache-dtype", kv, "--tp-size", str(tp), "--cuda-graph-max-bs", "32",
                            port=args.port, log=f"{args.logdir}/tp{tp}-{backend}-{kv}.log", mem_fraction=0.5) as s:
                    runs[tp] = s.generate_ids(ps, 32)
            except Exception as e:  # noqa: BLE001
                res.setdefault("failures_detail", []).append(f"tp{tp} {backend} {kv}: {str(e)[-1500:]}")
        if 1 in runs and 2 in runs:
            tp2[f"{backend}_{kv}_tp2_vs_tp1"] = compare(runs[2], runs[1])
        elif backend == "sm12x":
            res["tp2_ok"] = False


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--phase", nargs="+", choices=["greedy", "models", "nvfp4", "serve", "tp2", "ttft"], required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--logdir", default=os.environ.get("OUT", "/tmp") + "/e2e-logs")
    ap.add_argument("--port", type=int, default=30123)
    ap.add_argument("--gpus", type=gpu_list, default=None,
                    help="greedy phase: comma-separated GPU indices; one server per GPU at a time, start-ups overlap")
    ap.add_argument("--greedy-model", default=str(bundled_model()))
    ap.add_argument("--greedy-layers", type=int, default=None)
    ap.add_argument("--greedy-backends", nargs="+", default=["flashinfer", "triton", "sm12x", "sm12x_broken"],
                    choices=["flashinfer", "triton", "sm12x", "sm12x_broken"])
    ap.add_argument("--before-site", default=None,
                    help="greedy phase: a folder holding another release of this project (pip install --target), "
                         "served as sm12x_before and compared token for token with this one")
    ap.add_argument("--prompts", type=int, default=64, help="prompts per set")
    ap.add_argument("--prompt-sets", type=int, default=1, help="sets of --prompts prompts, each with its own prefix")
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--prefix-len", type=int, default=1024)
    ap.add_argument("--nvfp4-model", default=str(bundled_model()))
    ap.add_argument("--num-requests", type=int, default=500)
    ap.add_argument("--models", nargs="*", default=[])
    ap.add_argument("--serve-args", default="", help="extra server arguments for --phase serve, one string")
    ap.add_argument("--ttft-model", default=str(bundled_model()))
    ap.add_argument("--ttft-input", type=int, default=8192)
    ap.add_argument("--ttft-requests", type=int, default=32)
    ap.add_argument("--tp-model", default=str(bundled_model()))
    ap.add_argument("--model-shapes", nargs="*", default=None,
                    help="models phase: names from benchmark/models/shapes.json (default: all)")
    ap.add_argument("--tp-layers", type=int, default=None)
    ap.add_argument("--tp-configs", nargs="+", type=lambda x: tuple(x.split(":")),
                    default=[("sm12x", "nvfp4"), ("triton", "auto")], help="backend:kv_cache_dtype pairs")
    args = ap.parse_args(argv)
    stop_on_sigterm()
    Path(args.logdir).mkdir(parents=True, exist_ok=True)
    out = Path(args.out)
    res = json.loads(out.read_text()) if out.exists() else {}
    import torch

    import sglang
    res.update(device=torch.cuda.get_device_name(), sglang=sglang.__version__, torch=torch.__version__,
               date=time.strftime("%Y-%m-%d"))
    res.setdefault("failures", 0)
    res.setdefault("tp2_ok", None)

    def save():
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(res, indent=1))
    args.save = save
    for ph in args.phase:
        t0 = time.time()
        {"greedy": phase_greedy, "models": phase_models, "nvfp4": phase_nvfp4, "serve": phase_serve, "tp2": phase_tp2,
         "ttft": phase_ttft}[ph](args, res)
        res.setdefault("phase_wall_s", {})[ph] = round(time.time() - t0, 1)
        save()
        print(json.dumps({k: v for k, v in res.items() if k != "failures_detail"}, indent=1)[:4000], flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
