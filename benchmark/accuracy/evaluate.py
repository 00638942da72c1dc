"""Accuracy of the KV formats on a trained checkpoint (``train.py``'s output):

* ``in_process``: held-out windows through this project's prefill + decode kernels with the cache in
  bf16, fp8_e4m3 and nvfp4 (``kv_eval.run_sequence``): perplexity, mean KL from bf16, top-1
  agreement with bf16;
* ``e2e``: the same windows through SGLang servers (``--attention-backend sm12x --kv-cache-dtype
  auto|fp8_e4m3|nvfp4``, and SGLang's ``triton`` backend with bf16 as the reference), prompt
  logprobs from the API (prefill path; KL over the reference's top-20, a lower bound);
* ``stress``: attention-output error per format with per-channel K outliers (``kv_eval.stress``).

    python benchmark/accuracy/evaluate.py --model /tmp/acc-model [--windows 8 --window 1024 --prefill 512]
        [--paths in_process e2e stress] [--out benchmark/results]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parents[1])]
import kv_eval  # noqa: E402


def windows(model_dir: Path, n: int, length: int):
    held = torch.load(model_dir / "heldout_ids.pt")
    step = max((len(held) - length) // max(n, 1), 1)
    return [held[i * step:i * step + length] for i in range(n) if i * step + length <= len(held)]


def in_process(model_dir, wins, prefill, device):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.bfloat16).to(device).eval()
    per = {f: [] for f in kv_eval.FORMATS}
    for ids in wins:
        lg = {f: kv_eval.run_sequence(model, ids, f, prefill=prefill) for f in kv_eval.FORMATS}
        for r in kv_eval.compare(lg, ids):
            per[r["format"]].append(r)
    rows = []
    for f, rs in per.items():
        tok = sum(r["tokens"] for r in rs)
        nll = sum(math.log(r["perplexity"]) * r["tokens"] for r in rs) / tok
        rows.append(dict(format=f, path="in_process", perplexity=math.exp(nll),
                         kl=sum(r["kl"] * r["tokens"] for r in rs) / tok,
                         top1_agreement=sum(r["top1_agreement"] * r["tokens"] for r in rs) / tok, tokens=tok))
    return rows


def _prompt_logprobs(srv, wins, top=20):
    out = srv.post("/generate", {"input_ids": [w.tolist() for w in wins], "return_logprob": True,
                                 "logprob_start_len": 0, "top_logprobs_num": top,
                                 "sampling_params": {"max_new_tokens": 1, "temperature": 0.0}})
    res = []
    for o in out:
        m = o["meta_info"]
        tok_lp = [x[0] for x in m["input_token_logprobs"][1:]]
        tops = [{t[1]: t[0] for t in pos} for pos in m["input_top_logprobs"][1:]]
        res.append((tok_lp, tops))
    return res


def e2e(model_dir, wins, logdir, port=30123):
    from sgl_kernel_sm12x.serving import Server

    runs = {}
    for name, backend, kv in (("reference", "triton", "auto"), ("bf16", "sm12x", "auto"),
                              ("fp8_e4m3", "sm12x", "fp8_e4m3"), ("nvfp4", "sm12x", "nvfp4")):
        # prompt logprobs come from prefill only: no decode CUDA graphs to capture
        with Server(model_dir, backend, "--kv-cache-dtype", kv, "--disable-radix-cache", "--disable-cuda-graph",
                    port=port, log=Path(logdir) / f"acc-{name}.log", mem_fraction=0.4) as s:
            runs[name] = _prompt_logprobs(s, wins)
    ref = runs["reference"]
    rows = []
    for name in ("bf16", "fp8_e4m3", "nvfp4", "reference"):
        nll, n, kl, agree = 0.0, 0, 0.0, 0
        for (lp, tops), (_, rtops) in zip(runs[name], ref):
            nll -= sum(lp)
            n += len(lp)
            for t, rt in zip(tops, rtops):
                floor = min(t.values())
                kl += sum(math.exp(rl) * (rl - t.get(i, floor)) for i, rl in rt.items())
                agree += max(t, key=t.get) == max(rt, key=rt.get)
        rows.append(dict(format=name if name != "reference" else "bf16 (triton)", path="e2e",
                         perplexity=math.exp(nll / n), kl=max(kl / n, 0.0), top1_agreement=agree / n, tokens=n,
                         note="KL over the reference's top-20 (lower bound); prompt logprobs (prefill path)"))
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--windows", type=int, default=8)
    ap.add_argument("--window", type=int, default=1024)
    ap.add_argument("--prefill", type=int, default=512)
    ap.add_argument("--paths", nargs="+", default=["in_process", "e2e", "stress"])
    ap.add_argument("--out", default=str(HERE.parents[0] / "results"))
    ap.add_argument("--port", type=int, default=30123, help="e2e servers' port")
    ap.add_argument("--logdir", default=os.environ.get("OUT", "/tmp"), help="e2e server logs")
    a = ap.parse_args(argv)
    from sgl_kernel_sm12x.serving import stop_on_sigterm

    stop_on_sigterm()          # a killed run stops its servers
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    model_dir = Path(a.model)
    wins = windows(model_dir, a.windows, a.window) if {"in_process", "e2e"} & set(a.paths) else []
    Path(a.out).mkdir(parents=True, exist_ok=True)
    path = Path(a.out) / f"{time.strftime('%Y-%m-%d')}-accuracy.json"
    # merge into the day's file: rows of the paths run now replace that path's earlier rows, so the
    # in-process and end-to-end paths can run in separate calls
    res = json.loads(path.read_text()) if path.exists() else {}
    res.update(date=time.strftime("%Y-%m-%d"), device=torch.cuda.get_device_name() if dev == "cuda" else "cpu",
               model=str(model_dir), windows=len(wins), window=a.window, prefill=a.prefill)
    res.setdefault("rows", [])
    res.setdefault("stress", [])
    log = model_dir / "train_log.json"
    if log.exists():
        res["train"] = {k: v for k, v in json.loads(log.read_text()).items() if k not in ("log", "valid_log")}

    def save(path_name, rows):
        res["rows"] = [r for r in res["rows"] if r["path"] != path_name] + rows
        path.write_text(json.dumps(res, indent=1))

    if "in_process" in a.paths:
        save("in_process", in_process(model_dir, wins, a.prefill, dev))
    if "e2e" in a.paths:
        save("e2e", e2e(model_dir, wins, a.logdir, a.port))
    if "stress" in a.paths:
        res["stress"] = []
        for factor in (1.0, 20.0, 50.0, 100.0):
            res["stress"] += kv_eval.stress(dev, outlier_channels=4, factor=factor)
        path.write_text(json.dumps(res, indent=1))
    for r in res["rows"]:
        print(f"{r['path']:<10} {r['format']:<14} ppl {r['perplexity']:.3f}  KL {r['kl']:.2e}  "
              f"top-1 {r['top1_agreement']:.4f}")
    for r in res["stress"]:
        print(f"stress x{r['outlier_factor']:<5g} {r['format']:<9} rel-L2 {r['rel_l2_error']:.4f}")
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
