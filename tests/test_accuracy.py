"""The accuracy harness on CPU: the bf16 path through this project's kernels reproduces the model's
own attention, the metrics behave, and the training script produces a checkpoint SGLang-style
loaders read (safetensors shards <= 15 MB, tokenizer, held-out ids, loss curve)."""
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmark" / "accuracy"))
import kv_eval  # noqa: E402

from sgl_kernel_sm12x.attention.decode import decode_attention  # noqa: E402
from sgl_kernel_sm12x.kv_append import append_kv  # noqa: E402


def _tiny(vocab=256):
    from transformers import AutoModelForCausalLM, Qwen3Config

    cfg = Qwen3Config(vocab_size=vocab, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, head_dim=64, max_position_embeddings=256)
    return AutoModelForCausalLM.from_config(cfg).eval()


def _eager_logits(model, ids, device):
    """The model's own (eager) attention over the whole sequence: the reference logits."""
    with torch.no_grad():
        model.config._attn_implementation = "eager"
        return model(input_ids=ids[None].to(device)).logits[0].float().cpu()


def test_bf16_kernel_path_matches_the_models_own_attention(device):
    model = _tiny().to(device)
    ids = torch.randint(0, 256, (21,))
    ref = _eager_logits(model, ids, device)
    got = kv_eval.run_sequence(model, ids, "bf16", prefill=13).cpu()
    assert got.shape == ref.shape
    err = (got - ref).abs().max().item()
    assert err < 0.02 * ref.abs().max().item(), f"prefill + decode through the kernels differ by {err}"
    # the whole sequence as one prefill chunk agrees as well
    whole = kv_eval.run_sequence(model, ids, "bf16", prefill=len(ids))
    assert (whole.cpu() - ref).abs().max().item() < 0.02 * ref.abs().max().item()


def test_chunked_prefill_matches_the_models_own_attention(device):
    model = _tiny().to(device)
    ids = torch.randint(0, 256, (19,))
    ref = _eager_logits(model, ids, device)
    got = kv_eval.run_sequence(model, ids, "bf16", prefill=11, chunk=4).cpu()     # chunks 4 + 4 + 3, then decode
    assert (got - ref).abs().max().item() < 0.02 * ref.abs().max().item()


def test_only_positions_that_read_the_cache_can_differ(device):
    """The first prefill chunk reads no cached K/V, so every format gives the same logits there; the
    scored span starts after it, and chunked-prefill positions do read the quantized prefix."""
    model = _tiny().to(device)
    ids = torch.randint(0, 256, (16,))
    first = kv_eval.first_cached_position(prefill=10, chunk=5)
    assert first == 5 and kv_eval.first_cached_position(10, None) == 10
    lg = {f: kv_eval.run_sequence(model, ids, f, prefill=10, chunk=5) for f in ("bf16", "nvfp4")}
    assert torch.equal(lg["bf16"][:first], lg["nvfp4"][:first])
    assert not torch.allclose(lg["bf16"][first:10], lg["nvfp4"][first:10])          # second chunk: FP4 prefix
    head = {r["format"]: r for r in kv_eval.compare(lg, ids, start=0, end=first)}
    assert head["nvfp4"]["kl"] == 0.0 and head["nvfp4"]["top1_agreement"] == 1.0
    rest = {r["format"]: r for r in kv_eval.compare(lg, ids, start=first)}
    assert rest["nvfp4"]["kl"] > 0 and rest["nvfp4"]["tokens"] == len(ids) - 1 - first


def test_calibrated_scales_rescue_small_values(device):
    """A unit per-tensor scale puts the UE4M3 block scales of small-magnitude K/V into the subnormal
    range (coarse) or below it (zero); per-layer scales from the tensor's amax keep them normal."""
    g = torch.Generator().manual_seed(1)
    tokens, heads, d = 32, 2, 64
    k = torch.randn(tokens, heads, d, generator=g) * 2e-3
    v = torch.randn(tokens, heads, d, generator=g) * 2e-3
    q = torch.randn(1, heads, d, generator=g) * 300
    s = torch.einsum("hd,nhd->hn", q[0], k) / d ** 0.5
    ref = torch.einsum("hn,nhd->hd", torch.softmax(s, -1), v)
    amax = {0: (k.abs().max().item(), v.abs().max().item())}
    err = {}
    for name, scales in (("unit", (1.0, 1.0)), ("calibrated", kv_eval.layer_scales(amax, "nvfp4")[0])):
        sess = kv_eval.KVSession("nvfp4", tokens, layer_scales={0: scales})
        p = sess.pool(0, heads, d, device)
        ks, vs = sess.scales(0)
        kw = dict(kv_dtype="nvfp4", k_scale_cache=p["ks"], v_scale_cache=p["vs"], k_scale=ks, v_scale=vs)
        loc = torch.arange(tokens, dtype=torch.int32, device=device)
        append_kv(k.to(device, torch.bfloat16), v.to(device, torch.bfloat16), loc, p["k"], p["v"], **kw)
        out = decode_attention(q.to(device, torch.bfloat16), p["k"], p["v"],
                               torch.tensor([0, tokens], dtype=torch.int32, device=device), loc,
                               torch.tensor([tokens], dtype=torch.int32, device=device), **kw)
        err[name] = ((out[0].float().cpu() - ref).norm() / ref.norm()).item()
    assert err["calibrated"] < 0.2 and err["calibrated"] * 3 < err["unit"], err


def test_calibrate_records_per_layer_amax(device):
    model = _tiny().to(device)
    ids = torch.randint(0, 256, (12,))
    amax = kv_eval.calibrate(model, [ids], prefill=8, chunk=4)
    assert sorted(amax) == [0, 1] and all(ka > 0 and va > 0 for ka, va in amax.values())
    sc = kv_eval.layer_scales(amax, "fp8k_nvfp4v")
    assert sc[0] == (amax[0][0] / 448.0, amax[0][1] / (448.0 * 6))


def _evaluate_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("evaluate", ROOT / "benchmark" / "accuracy" / "evaluate.py")
    ev = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ev)
    return ev


def test_in_process_rows_score_cache_reading_positions(device, tmp_path):
    ev = _evaluate_module()
    _tiny().save_pretrained(tmp_path, safe_serialization=True)
    wins = [torch.randint(0, 256, (16,))]
    names = set(ev.variants(True))
    assert {"nvfp4 (mse scales)", "nvfp4 (calibrated scales)", "fp8k_nvfp4v (calibrated + mse scales)"} <= names
    only = ["nvfp4", "nvfp4 (calibrated scales)", "nvfp4 (mse scales)", "fp8k_nvfp4v (calibrated + mse scales)"]
    rows = {r["format"]: r for r in ev.in_process(tmp_path, wins, prefill=8, device=device, chunk=4,
                                                  calib_wins=[torch.randint(0, 256, (16,))], only=only)}
    assert set(rows) == set(only) | {"bf16"}
    b = rows["bf16"]
    assert b["kl"] == 0.0 and b["top1_agreement"] == 1.0 and b["scored_positions"] == "4..14"
    assert b["tokens"] == 11 and b["prefill_chunks"]["tokens"] == 4 and b["decode"]["tokens"] == 7
    for f, r in rows.items():
        assert math.isfinite(r["perplexity"]) and r["kl"] >= 0, (f, r)
    assert rows["nvfp4"]["kl"] > 0 and rows["nvfp4 (calibrated scales)"]["kl"] > 0
    assert rows["nvfp4 (mse scales)"]["kl"] > 0


def test_metrics_of_identical_and_quantized_runs(device):
    model = _tiny().to(device)
    ids = torch.randint(0, 256, (17,))
    lg = {f: kv_eval.run_sequence(model, ids, f, prefill=9) for f in kv_eval.FORMATS}
    rows = {r["format"]: r for r in kv_eval.compare(lg, ids)}
    assert rows["bf16"]["kl"] == 0.0 and rows["bf16"]["top1_agreement"] == 1.0
    assert 0 < rows["nvfp4"]["kl"] and rows["fp8_e4m3"]["kl"] <= rows["nvfp4"]["kl"] * 10
    assert all(r["perplexity"] > 1 for r in rows.values())


def test_stress_orders_the_formats(device):
    rows = {r["format"]: r for r in kv_eval.stress(device, tokens=64, heads=2, d=64, group=2, factor=50.0)}
    err = {f: r["rel_l2_error"] for f, r in rows.items()}
    assert err["bf16"] < err["fp8_e4m3"] < err["nvfp4"]
    # K outliers are what NVFP4 handles worst: FP8 K with NVFP4 V recovers most of the gap
    assert err["fp8k_nvfp4v"] < err["nvfp4"]
    # the block-scale search variants are reported (it lowers the K / V reconstruction error, which
    # tests/test_kv_append.py checks; the attention output of one small draw can go either way)
    assert err["nvfp4 (mse scales)"] < 1.0 and err["fp8k_nvfp4v (mse scales)"] < 1.0


def test_train_script_smoke(tmp_path):
    out = tmp_path / "m"
    r = subprocess.run([sys.executable, str(ROOT / "benchmark" / "accuracy" / "train.py"), "--out", str(out),
                        "--tiny", "--max-steps", "3", "--vocab", "512", "--seq", "64", "--batch", "2",
                        "--max-files", "40", "--minutes", "2", "--eval-every", "1", "--valid-windows", "4"], capture_output=True, text=True, timeout=900,
                       env={k: v for k, v in __import__("os").environ.items() if k != "TRITON_INTERPRET"})
    assert r.returncode == 0, r.stderr[-3000:]
    shards = list(out.glob("*.safetensors"))
    assert shards and all(s.stat().st_size <= 15 * 1024 * 1024 for s in shards)
    assert (out / "tokenizer.json").exists() and (out / "heldout_ids.pt").exists()
    log = json.loads((out / "train_log.json").read_text())
    assert log["steps"] <= 3 and log["log"][0]["loss"] > 0
    # early stopping keeps the weights with the lowest held-out validation loss
    assert log["valid_log"] and log["best_valid_loss"] <= min(v["valid_loss"] for v in log["valid_log"]) + 1e-9
    from transformers import AutoModelForCausalLM, AutoTokenizer

    AutoModelForCausalLM.from_pretrained(out)
    assert len(AutoTokenizer.from_pretrained(out)) == 512


def test_evaluate_merges_paths_run_in_separate_calls(tmp_path, monkeypatch):
    """evaluate.py writes after each path and merges into the day's file, so the in-process and
    end-to-end paths can run in separate (time-limited) calls without losing each other's rows."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("evaluate", ROOT / "benchmark" / "accuracy" / "evaluate.py")
    ev = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ev)
    model = tmp_path / "m"
    model.mkdir()
    torch.save(torch.arange(4000), model / "heldout_ids.pt")
    row = lambda f, p: dict(format=f, path=p, perplexity=2.0, kl=0.0, top1_agreement=1.0, tokens=1)  # noqa: E731
    monkeypatch.setattr(ev, "in_process", lambda *a, **k: [row("bf16", "in_process"), row("nvfp4", "in_process")])
    monkeypatch.setattr(ev, "e2e", lambda *a, **k: [row("nvfp4", "e2e")])
    import sglang_sm12x.tools.serving as serving

    monkeypatch.setattr(serving, "stop_on_sigterm", lambda: None)     # leave the test process's signals alone
    out = tmp_path / "out"
    ev.main(["--model", str(model), "--paths", "in_process", "--out", str(out), "--windows", "2", "--window", "64"])
    ev.main(["--model", str(model), "--paths", "e2e", "--out", str(out), "--windows", "2", "--window", "64"])
    ev.main(["--model", str(model), "--paths", "e2e", "--out", str(out), "--windows", "2", "--window", "64"])
    res = json.loads(next(out.glob("*-accuracy.json")).read_text())
    assert sorted((r["path"], r["format"]) for r in res["rows"]) == [("e2e", "nvfp4"), ("in_process", "bf16"),
                                                                     ("in_process", "nvfp4")]


def test_e2e_path_chunks_the_prefill_and_scores_cache_reading_positions(tmp_path, monkeypatch):
    """Stand-in servers: every server runs a chunked prefill of --chunk tokens, the nvfp4 block-scale
    search is switched on through the backend's environment variable, and only positions from the
    second chunk on are scored (the prompt logprobs are sliced, not re-indexed)."""
    ev = _evaluate_module()
    import sglang_sm12x.tools.serving as serving

    started = []

    class FakeServer:
        def __init__(self, model, backend, *args, env=None, **kw):
            started.append((backend, args, dict(env or {})))
            self.bad = (env or {}).get("SGLANG_SM12X_NVFP4_SCALES") == "mse"

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def post(self, path, payload):
            out = []
            for ids in payload["input_ids"]:
                n = len(ids)
                # position j's top-1 is token j+1 except, for the stand-in "mse" server, position 3
                tok = [[None]] + [[-0.5 - j * 1e-3] for j in range(n - 1)]
                top = [None] + [[[-0.1, 7 if (self.bad and j == 3) else 1], [-3.0, 2]] for j in range(n - 1)]
                out.append({"meta_info": {"input_token_logprobs": tok, "input_top_logprobs": top}})
            return out

    monkeypatch.setattr(serving, "Server", FakeServer)
    wins = [torch.arange(12), torch.arange(12)]
    rows = {r["format"]: r for r in ev.e2e(tmp_path, wins, str(tmp_path), port=1, chunk=4)}
    assert all("--chunked-prefill-size" in a and a[a.index("--chunked-prefill-size") + 1] == "4"
               for _, a, _ in started)
    assert [e for _, _, e in started].count({"SGLANG_SM12X_NVFP4_SCALES": "mse"}) == 1
    assert rows["nvfp4"]["tokens"] == 2 * (12 - 1 - 4) and rows["nvfp4"]["scored_positions"] == "4..10"
    assert rows["nvfp4"]["top1_agreement"] == 1.0
    # position 3 lies in the first chunk: its disagreement is not scored
    assert rows["nvfp4 (mse scales)"]["top1_agreement"] == 1.0
    lp = rows["bf16"]["perplexity"]
    assert abs(math.log(lp) - sum(0.5 + j * 1e-3 for j in range(4, 11)) / 7) < 1e-9
