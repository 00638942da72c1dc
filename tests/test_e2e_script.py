"""``benchmark/e2e.py``'s greedy comparison, with stand-in servers (the real one runs on the device):
every backend sees the same prompt sets, the statistics pool the sets, and a run that drops the
cached prefix is told apart from two correct backends that split on near-ties."""
import importlib.util
import json
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _e2e():
    spec = importlib.util.spec_from_file_location("e2e_script", ROOT / "benchmark" / "e2e.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("gpus", [None, [0, 1]])
def test_greedy_phase_pools_prompt_sets_and_catches_a_broken_run(tmp_path, monkeypatch, gpus):
    e2e = _e2e()
    seen, placed, lock = {}, {}, threading.Lock()

    class FakeServer:
        def __init__(self, ckpt, backend, *args, env=None, port=None, **kw):
            env = env or {}
            self.name = ("sm12x_broken" if env.get("SGLANG_SM12X_FAULT") else
                         "sm12x_before" if env.get("PYTHONPATH", "").startswith("/before") else backend)
            self.startup_s = 1.0
            with lock:
                placed[self.name] = ((env or {}).get("CUDA_VISIBLE_DEVICES"), port)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def generate_ids(self, ps, steps):
            with lock:
                seen.setdefault(self.name, []).append(len(ps))
            out = []
            for p in ps:
                toks = [(sum(p) + i) % 97 for i in range(steps)]
                if self.name == "sm12x_broken":
                    toks = [(t + 1) % 97 for t in toks]          # wrong from the first token
                elif self.name == "flashinfer" and p[-1] % 4 == 0:
                    toks[steps // 2] = -1                        # a near-tie split half way
                out.append((toks, [-0.1] * steps))
            return out

    monkeypatch.setattr(e2e, "Server", FakeServer)
    monkeypatch.setattr(e2e, "make_checkpoint", lambda model, out, layers=None: model)
    model = ROOT / "python" / "sglang_sm12x" / "models" / "qwen3-tiny"
    args = SimpleNamespace(greedy_model=str(model), greedy_layers=None, prompts=8, prompt_sets=3, prefix_len=16,
                           steps=6, port=30000, logdir=str(tmp_path), gpus=gpus, before_site=None,
                           greedy_backends=["flashinfer", "triton", "sm12x", "sm12x_broken"])
    res = {}
    e2e.phase_greedy(args, res)
    g = res["greedy"]
    assert g["prompts"] == 24 and g["prompt_sets"] == 3
    assert all(v == [1, 8, 1, 8, 1, 8] for v in seen.values()), seen      # warm-up + set, three times
    assert res["greedy_agreement"] == 1.0 and res["broken_run_agreement"] == 0.0
    assert 0.0 < res["reference_agreement"] < 1.0
    assert len(g["flashinfer_vs_triton_per_set"]) == 3
    assert g["sm12x_broken_vs_triton"]["mean_first_divergence"] == 0.0
    assert set(placed) == {"triton", "flashinfer", "sm12x", "sm12x_broken"}
    if gpus is None:
        assert all(p == (None, 30000) for p in placed.values()), placed
    else:           # each server on one of the GPUs, on its worker's own port
        assert all((g, port) in {("0", 30000), ("1", 30010)} for g, port in placed.values()), placed
    json.dumps(res)
    # another release beside this one (its own install folder first on the path), fewer backends
    placed.clear()
    args.before_site, args.greedy_backends = "/before/site", ["triton", "sm12x"]
    res = {}
    e2e.phase_greedy(args, res)
    assert set(placed) == {"triton", "sm12x", "sm12x_before"}
    assert res["before_after_agreement"] == 1.0 and res["greedy_agreement"] == 1.0


def test_ttft_phase_compares_flashinfer_with_the_sm120_plan(tmp_path, monkeypatch):
    """The ttft phase: one server a backend, sm12x under SGLANG_SM12X_PLAN_ARCH=120 and
    DISABLE_MMA_V3=1; the ratio of median TTFTs and the FlashInfer kernel named in its log."""
    e2e = _e2e()
    started = []

    class FakeServer:
        def __init__(self, model, backend, *args, env=None, log=None, **kw):
            started.append((backend, dict(env or {}), args))
            self.startup_s = 1.0
            if backend == "flashinfer":
                Path(log).write_text("... flashinfer: building batch_prefill_fa2 module ...")

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(e2e, "Server", FakeServer)
    monkeypatch.setattr(e2e, "bench", lambda s, model, ds, n, extra, log: {
        "completed": n, "failed": 0, "median_ttft_ms": 100.0 if "flashinfer" in log else 90.0})
    args = SimpleNamespace(ttft_model="m", ttft_input=8192, ttft_requests=32, port=30000, logdir=str(tmp_path))
    res = {}
    e2e.phase_ttft(args, res)
    t = res["ttft_sm120_plan"]
    assert [b for b, _, _ in started] == ["flashinfer", "sm12x"]
    assert started[1][1] == {"SGLANG_SM12X_PLAN_ARCH": "120", "DISABLE_MMA_V3": "1"}
    assert t["ttft_ratio_sm12x_vs_flashinfer"] == 0.9 and res["failures"] == 0
    assert t["rows"][0]["flashinfer_prefill_kernel"] == "fa2"


def test_models_phase_rows(tmp_path, monkeypatch):
    """``--phase models`` with stand-in servers: one row per model x backend x KV dtype with the
    issue's fields; gpt-oss compared with triton alone (its allow-list), others also with
    flashinfer; a server that fails to start is a row with served False and its error, not an abort;
    the nvfp4 row carries bench_serving's failures and the KV capacity ratio."""
    e2e = _e2e()

    class FakeServer:
        def __init__(self, ckpt, backend, *args, port=None, log=None, **kw):
            self.backend, self.kv = backend, args[args.index("--kv-cache-dtype") + 1]
            self.model = Path(str(ckpt)).name
            self.port = port

        def __enter__(self):
            if "minimax" in self.model and self.backend == "flashinfer":
                raise RuntimeError("server (flashinfer) exited with 1")
            return self

        def __exit__(self, *exc):
            return False

        def kv_capacity(self):
            return 35000 if self.kv == "nvfp4" else 10000

        def generate_ids(self, ps, steps):
            return [([(sum(p) + i) % 97 for i in range(steps)], [-0.1] * steps) for p in ps]

        def post(self, path, payload):
            return [{"meta_info": {"input_token_logprobs": [[None, 1, None]] + [[-1.0, 2, None]] * 5}}
                    for _ in payload["input_ids"]]

    monkeypatch.setattr(e2e, "Server", FakeServer)
    monkeypatch.setattr(e2e, "make_checkpoint", lambda model, out, layers=None: Path(out))
    # transformers' float32 forward as the yardstick: the stand-ins' -1.0 logprobs are 0.25 off
    monkeypatch.setattr(e2e, "hf_prompt_logprobs", lambda ckpt, ids: [[-1.25] * 5 for _ in ids])
    monkeypatch.setattr(e2e, "bench", lambda s, model, dataset, n, extra, log: {"failed": 0, "output_throughput": 1.0})
    names = ["gpt-oss-20b-shape", "minimax-m2-shape"]
    saved = []
    kept = {"model": "qwen3-14b-shape", "backend": "sm12x", "kv_dtype": "auto", "served": True}
    replaced = {"model": "gpt-oss-20b-shape", "backend": "sm12x", "kv_dtype": "auto", "served": False}
    res = {"models": [kept, replaced]}
    args = SimpleNamespace(model_shapes=names, prompts=4, steps=5, port=30000, logdir=str(tmp_path),
                           save=lambda: saved.append(len(res["models"])))
    e2e.phase_models(args, res)
    # an earlier run's rows of other models stay, this run's models are measured afresh, and the
    # file is written after every server (a run cut short keeps its rows)
    assert res["models"][0] is kept and replaced not in res["models"]
    assert saved[:3] == [2, 3, 4]
    rows = res["models"][1:]
    keys = {"model", "backend", "kv_dtype", "served", "error", "greedy_identical", "ref_greedy_identical",
            "prompt_logprob_mean_abs_diff", "failures", "output_throughput", "kv_capacity_tokens"}
    assert all(keys <= set(r) for r in rows)
    combos = [(r["model"], r["backend"], r["kv_dtype"]) for r in rows]
    assert combos == [("gpt-oss-20b-shape", "triton", "auto"), ("gpt-oss-20b-shape", "sm12x", "auto"),
                      ("gpt-oss-20b-shape", "sm12x", "nvfp4"), ("minimax-m2-shape", "triton", "auto"),
                      ("minimax-m2-shape", "flashinfer", "auto"), ("minimax-m2-shape", "sm12x", "auto"),
                      ("minimax-m2-shape", "sm12x", "nvfp4")]
    by = {c: r for c, r in zip(combos, rows)}
    assert by[("gpt-oss-20b-shape", "sm12x", "auto")]["greedy_identical"] == 1.0
    assert by[("gpt-oss-20b-shape", "sm12x", "auto")]["prompt_logprob_mean_abs_diff"] == 0.0
    assert by[("gpt-oss-20b-shape", "sm12x", "auto")]["hf_prompt_logprob_mean_abs_diff"] == 0.25
    assert by[("gpt-oss-20b-shape", "triton", "auto")]["hf_prompt_logprob_mean_abs_diff"] == 0.25
    fail = by[("minimax-m2-shape", "flashinfer", "auto")]
    assert not fail["served"] and "exited" in fail["error"]
    nv = by[("minimax-m2-shape", "sm12x", "nvfp4")]
    assert nv["failures"] == 0 and nv["kv_capacity_ratio_vs_bf16"] == 3.5
    assert res["failures"] == 1
    json.dumps(res)
    with pytest.raises(SystemExit, match="unknown.*nope"):
        e2e.phase_models(SimpleNamespace(model_shapes=["nope"]), {})
