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
