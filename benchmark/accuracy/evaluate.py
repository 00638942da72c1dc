"""Accuracy of the KV formats on a trained checkpoint (``train.py``'s output):

* ``in_process``: held-out windows through this project's prefill + decode kernels with the cache in
  bf16, fp8_e4m3, nvfp4 and fp8k_nvfp4v (``kv_eval.run_sequence``; prefill in ``--chunk``-token
  chunks, then token-by-token decode), and again with per-layer calibrated scales: perplexity,
  mean KL from bf16, top-1 agreement with bf16, scored only where attention reads the cache (from
  the end of the first chunk on; the chunked-prefill and decode positions are also reported apart);
* ``e2e``: the same windows through SGLang servers (``--attention-backend sm12x --kv-cache-dtype
  auto|fp8_e4m3|nvfp4``, and SGLang's ``triton`` backend with bf16 as the reference), prompt
  logprobs from the API of a chunked prefill (``--chunked-prefill-size`` = ``--chunk``), scored
  from the second chunk on (KL over the reference's top-20, a lower bound);
* ``stress``: attention-output error per format with per-channel K outliers (``kv_eval.stress``).

    python benchmark/accuracy/evaluate.py --model /tmp/acc-model [--windows 8 --window 1024 --prefill 512 --chunk 128]
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


def windows(model_dir: Path, n: int, length: int, shifted: bool = False):
    """``n`` windows spread over the held-out ids; ``shifted`` ones start half a spacing later (disjoint
    from the unshifted ones while the spacing is at least twice ``length``: calibration data)."""
    held = torch.load(model_dir / "heldout_ids.pt")
    step = max((len(held) - length) // max(n, 1), 1)
    off = step // 2 if shifted else 0
    return [held[off + i * step:off + i * step + length] for i in range(n) if off + i * step + length <= len(held)]


CALIBRATED = ("fp8_e4m3", "nvfp4", "fp8k_nvfp4v")     # also run with per-layer calibrated scales
MSE = ("nvfp4", "fp8k_nvfp4v")                          # also run with the NVFP4 block-scale search


def variants(calibrated: bool):
    """name -> (kv format, calibrate per layer?, NVFP4 block-scale rule)."""
    out = {f: (f, False, "max") for f in kv_eval.FORMATS}
    out.update({f"{f} (mse scales)": (f, False, "mse") for f in MSE})
    if calibrated:
        out.update({f"{f} (calibrated scales)": (f, True, "max") for f in CALIBRATED})
        out.update({f"{f} (calibrated + mse scales)": (f, True, "mse") for f in MSE})
    return out


def _aggregate(rs, **extra):
    tok = sum(r["tokens"] for r in rs)
    nll = sum(math.log(r["perplexity"]) * r["tokens"] for r in rs) / tok
    return dict(perplexity=math.exp(nll), kl=sum(r["kl"] * r["tokens"] for r in rs) / tok,
                top1_agreement=sum(r["top1_agreement"] * r["tokens"] for r in rs) / tok, tokens=tok, **extra)


def in_process(model_dir, wins, prefill, device, chunk=None, calib_wins=(), only=None):
    """Rows per format, scored on the positions whose attention reads the cache (from the end of
    the first prefill chunk on), with the chunked-prefill and the decode positions also apart.
    Formats in ``CALIBRATED`` run again with per-layer scales from ``calib_wins``, those in ``MSE``
    with the NVFP4 block-scale search (and both). ``only``: a subset of the variant names."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.bfloat16).to(device).eval()
    first = kv_eval.first_cached_position(prefill, chunk)
    chosen = {n: v for n, v in variants(bool(calib_wins)).items() if only is None or n in only or n == "bf16"}
    amax = kv_eval.calibrate(model, calib_wins, prefill, chunk) if calib_wins else None
    runs = {n: (f, kv_eval.layer_scales(amax, f) if cal else None, rule) for n, (f, cal, rule) in chosen.items()}
    spans = {"all": (first, None), "prefill_chunks": (first, prefill), "decode": (prefill, None)}
    per = {name: {sp: [] for sp in spans} for name in runs}
    for ids in wins:
        lg = {name: kv_eval.run_sequence(model, ids, f, prefill=prefill, chunk=chunk, layer_scales=sc,
                                         nvfp4_scales=rule)
              for name, (f, sc, rule) in runs.items()}
        for sp, (a, b) in spans.items():
            if b is not None and b <= a:
                continue
            for r in kv_eval.compare(lg, ids, ref="bf16", start=a, end=b):
                per[r["format"]][sp].append(r)
    rows = []
    for name, by in per.items():
        row = dict(format=name, path="in_process", scored_positions=f"{first}..{len(wins[0]) - 2}",
                   **_aggregate(by["all"]))
        for sp in ("prefill_chunks", "decode"):
            if by[sp]:
                row[sp] = _aggregate(by[sp])
        rows.append(row)
    return rows


def _prompt_logprobs(srv, wins, top=20, first=1):
    """Per window: (logprob of each next token, top-``top`` alternatives) at positions ``first`` on."""
    out = srv.post("/generate", {"input_ids": [w.tolist() for w in wins], "return_logprob": True,
                                 "logprob_start_len": 0, "top_logprobs_num": top,
                                 "sampling_params": {"max_new_tokens": 1, "temperature": 0.0}})
    res = []
    for o in out:
        m = o["meta_info"]
        # entry j + 1 is the logprob of token j + 1 given tokens 0..j: position j's distribution
        tok_lp = [x[0] for x in m["input_token_logprobs"][1 + first:]]
        tops = [{t[1]: t[0] for t in pos} for pos in m["input_top_logprobs"][1 + first:]]
        res.append((tok_lp, tops))
    return res


def e2e(model_dir, wins, logdir, port=30123, chunk=128):
    """Prompt logprobs through SGLang servers with chunked prefill of ``chunk`` tokens, so every
    position after the first chunk reads the cached prefix in the server's KV format; scored from
    there on."""
    from sglang_sm12x.tools.serving import Server

    runs = {}
    mse = {"SGLANG_SM12X_NVFP4_SCALES": "mse"}        # sglang_sm12x.backend.NVFP4_SCALES_ENV
    for name, tag, backend, kv, env in (("reference", "reference", "triton", "auto", {}),
                                        ("bf16", "bf16", "sm12x", "auto", {}),
                                        ("fp8_e4m3", "fp8_e4m3", "sm12x", "fp8_e4m3", {}),
                                        ("nvfp4", "nvfp4", "sm12x", "nvfp4", {}),
                                        ("nvfp4 (mse scales)", "nvfp4-mse", "sm12x", "nvfp4", mse)):
        # prompt logprobs come from prefill only: no decode CUDA graphs to capture
        with Server(model_dir, backend, "--kv-cache-dtype", kv, "--disable-radix-cache", "--disable-cuda-graph",
                    "--chunked-prefill-size", str(chunk), port=port, log=Path(logdir) / f"acc-{tag}.log",
                    mem_fraction=0.4, env=env) as s:
            runs[name] = _prompt_logprobs(s, wins, first=chunk)
        got = [len(lp) for lp, _ in runs[name]]
        if got != [len(w) - 1 - chunk for w in wins]:
            raise RuntimeError(f"{name}: the server returned {got} prompt logprobs per window, expected "
                               f"{[len(w) - 1 - chunk for w in wins]} (positions {chunk} on)")
    ref = runs["reference"]
    rows = []
    for name in ("bf16", "fp8_e4m3", "nvfp4", "nvfp4 (mse scales)", "reference"):
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
                         scored_positions=f"{chunk}..{len(wins[0]) - 2}", chunked_prefill_size=chunk,
                         note="KL over the reference's top-20 (lower bound); prompt logprobs of a chunked prefill: "
                              "every scored position reads the cached prefix in the server's KV format"))
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--windows", type=int, default=8)
    ap.add_argument("--window", type=int, default=1024)
    ap.add_argument("--prefill", type=int, default=512)
    ap.add_argument("--chunk", type=int, default=128, help="prefill chunk (in-process and the servers' "
                    "--chunked-prefill-size); positions of the first chunk read no cache and are not scored")
    ap.add_argument("--calib-windows", type=int, default=4, help="windows (disjoint from the scored ones) for "
                    "per-layer calibrated scales; 0 skips the calibrated variants")
    ap.add_argument("--paths", nargs="+", default=["in_process", "e2e", "stress"])
    ap.add_argument("--out", default=str(HERE.parents[0] / "results"))
    ap.add_argument("--port", type=int, default=30123, help="e2e servers' port")
    ap.add_argument("--logdir", default=os.environ.get("OUT", "/tmp"), help="e2e server logs")
    a = ap.parse_args(argv)
    from sglang_sm12x.tools.serving import stop_on_sigterm

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
               model=str(model_dir), windows=len(wins), window=a.window, prefill=a.prefill, chunk=a.chunk)
    res.setdefault("rows", [])
    res.setdefault("stress", [])
    log = model_dir / "train_log.json"
    if log.exists():
        res["train"] = {k: v for k, v in json.loads(log.read_text()).items() if k not in ("log", "valid_log")}

    def save(path_name, rows):
        res["rows"] = [r for r in res["rows"] if r["path"] != path_name] + rows
        path.write_text(json.dumps(res, indent=1))

    if "in_process" in a.paths:
        calib = windows(model_dir, a.calib_windows, a.window, shifted=True) if a.calib_windows else []
        save("in_process", in_process(model_dir, wins, a.prefill, dev, chunk=a.chunk, calib_wins=calib))
    if "e2e" in a.paths:
        save("e2e", e2e(model_dir, wins, a.logdir, a.port, chunk=a.chunk))
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
