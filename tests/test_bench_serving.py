"""The serving benchmark's matrix, report and server lifecycle, without a GPU: fake servers and a
fake client for the matrix, a tiny HTTP process for start/stop/Ctrl-C."""
import json
import os
import socket
import sys
import time
from pathlib import Path

import pytest

from sglang_sm12x.tools import bench_serving as B
from sglang_sm12x.tools.serving import Server, visible_device


class FakeServer:
    started, stopped, events = [], [], []

    def __init__(self, model, backend, *args, **kw):
        self.key = (backend, args[args.index("--kv-cache-dtype") + 1])

    def __enter__(self):
        if self.key == ("triton", "nvfp4"):
            raise RuntimeError("ValueError: NVFP4 prefill supports an FP8 E4M3 workspace or native NVFP4, "
                               "but backend 'triton' provides neither.")
        FakeServer.started.append(self.key)
        return self

    def __exit__(self, *exc):
        FakeServer.stopped.append(self.key)
        return False

    def kv_capacity(self):
        return {"auto": 1000, "fp8_e4m3": 2000, "nvfp4": 3556}[self.key[1]]

    def flush_cache(self):
        FakeServer.events.append(("flush", self.key))
        return True


def fake_client(cmd, out_file):
    c = int(cmd[cmd.index("--max-concurrency") + 1])
    n = int(cmd[cmd.index("--num-prompts") + 1])
    il = int(cmd[cmd.index("--random-input-len") + 1]) if "--random-input-len" in cmd else 1024
    if c == 16 and "flashinfer" in str(out_file):
        raise RuntimeError("bench_serving exited 1: connection reset")
    return {"completed": n, "output_throughput": 100.0 * c, "total_throughput": 150.0 * c,
            "median_ttft_ms": 10.0 + il / 100, "median_tpot_ms": 5.0 + il / 1000, "median_itl_ms": 5.0,
            "p99_itl_ms": 9.0, "p99_ttft_ms": 30.0}


def _plan(**kw):
    return B.Plan(models=["/m/qwen3-8b-shape"], concurrency=[1, 16, 64], **kw)


def test_matrix_records_rejections_and_failures_and_stops_every_server(tmp_path):
    FakeServer.started, FakeServer.stopped = [], []
    plan = _plan()

    class Bar:
        n = 0

        def update(self, k):
            Bar.n += k

    rows = B.run_matrix(plan, tmp_path, server_cls=FakeServer, client=fake_client, progress=Bar(), log=lambda m: None)
    assert Bar.n == len(plan.configs()) * (len(plan.concurrency) + 2)
    rejected = [r for r in rows if r.get("dataset") is None]
    assert len(rejected) == 1 and rejected[0]["backend"] == "triton" and rejected[0]["kv_dtype"] == "nvfp4"
    assert "provides neither" in rejected[0]["error"]
    failed = [r for r in rows if r.get("dataset") and r.get("error")]
    assert {(r["backend"], r["concurrency"]) for r in failed} == {("flashinfer", 16)}
    assert all(r["failures"] == r["num_prompts"] for r in failed)
    assert sorted(FakeServer.started) == sorted(FakeServer.stopped), "every started server was stopped"
    ok = [r for r in rows if not r.get("error")]
    assert {r["dataset"] for r in ok} == {"random-ids", "generated-shared-prefix"}
    assert any(r["input_len"] == plan.long_input_len for r in ok)
    assert all(r["kv_capacity_tokens"] for r in ok)


def test_warmup_run_per_server_and_cache_flush_before_every_point(tmp_path):
    """One discarded client run (2 prompts, concurrency 1, short output) per server before its
    points, not reported; the radix cache emptied before each measured point; a failing warm-up
    leaves the points running; ``warmup=False`` does neither."""
    FakeServer.events = []
    calls = []

    def client(cmd, out_file):
        calls.append((str(out_file), cmd))
        FakeServer.events.append(("client", Path(out_file).name))
        if Path(out_file).name.endswith("-warmup.jsonl") and "fp8_e4m3" in str(out_file):
            raise RuntimeError("bench_serving exited 1: warm-up refused")
        return fake_client(cmd, out_file)

    plan = B.Plan(models=["/m/qwen3-8b-shape"], pairs=[("sm12x", "auto"), ("sm12x", "fp8_e4m3")],
                  concurrency=[1, 16], long_input_len=0, gsp=False)
    logs = []
    rows = B.run_matrix(plan, tmp_path, server_cls=FakeServer, client=client, log=logs.append)
    assert len(rows) == 4 and not any(r.get("error") for r in rows)
    assert not any(str(r.get("input_len")) == "16" or r.get("num_prompts") == 2 for r in rows)
    warm = [c for f, c in calls if f.endswith("-warmup.jsonl")]
    assert len(warm) == 2
    for cmd in warm:
        assert cmd[cmd.index("--num-prompts") + 1] == "2" and cmd[cmd.index("--max-concurrency") + 1] == "1"
        assert cmd[cmd.index("--random-output-len") + 1] == "16"
        assert cmd[cmd.index("--random-input-len") + 1] == str(plan.input_len)
    assert any("warm-up run failed" in m for m in logs)
    for key in (("sm12x", "auto"), ("sm12x", "fp8_e4m3")):
        kv = key[1]
        seq = [e for e in FakeServer.events if e[0] == "client" and f"-{kv}-" in e[1] or e == ("flush", key)]
        names = [e[1] if e[0] == "client" else "flush" for e in seq]
        assert names[0].endswith("-warmup.jsonl")
        assert names[1:] == ["flush", f"qwen3-8b-shape-sm12x-{kv}-random-ids-c1-i1024.jsonl",
                             "flush", f"qwen3-8b-shape-sm12x-{kv}-random-ids-c16-i1024.jsonl"]
    FakeServer.events, calls[:] = [], []
    plan.warmup = False
    B.run_matrix(plan, tmp_path, server_cls=FakeServer, client=client, log=logs.append)
    assert not FakeServer.events or all(e[0] == "client" for e in FakeServer.events)
    assert not any(f.endswith("-warmup.jsonl") for f, _ in calls) and len(calls) == 4


def test_report_json_markdown_and_plots(tmp_path):
    rows = B.run_matrix(_plan(), tmp_path / "w", server_cls=FakeServer, client=fake_client, log=lambda m: None)
    paths = B.write_report(rows, tmp_path, {"date": "2026-11-26", "device": "NVIDIA H100 80GB HBM3"}, _plan(),
                           "sm12x bench-serving --model m")
    names = [p.name for p in paths]
    assert "2026-11-26-nvidia-h100-80gb-hbm3-serving.json" in names
    data = json.loads((tmp_path / "2026-11-26-nvidia-h100-80gb-hbm3-serving.json").read_text())
    need = {"model", "backend", "kv_dtype", "concurrency", "input_len", "output_len", "output_throughput",
            "median_ttft_ms", "median_tpot_ms", "kv_capacity_tokens", "failures"}
    assert all(need <= set(r) for r in data["rows"]) and data["device"] == "NVIDIA H100 80GB HBM3"
    md = (tmp_path / "2026-11-26-nvidia-h100-80gb-hbm3-serving.md").read_text()
    assert "| sm12x | nvfp4 |" in md.replace("qwen3-8b-shape ", "") or "sm12x | nvfp4" in md
    assert "rejected / failed to start" in md
    pngs = [p for p in paths if p.suffix == ".png"]
    assert {p.name.split("serving-")[1] for p in pngs} == {"throughput.png", "capacity.png", "tpot-context.png"}
    assert all(p.stat().st_size > 5000 for p in pngs)


def test_client_command_uses_sglang_bench_serving(tmp_path):
    cmd = B.client_cmd(30000, "/m", "random-ids", 64, 16, 1024, 256, tmp_path / "o.jsonl")
    assert cmd[1:3] == ["-m", "sglang.bench_serving"] and "--random-input-len" in cmd and "--max-concurrency" in cmd
    cmd = B.client_cmd(30000, "/m", "generated-shared-prefix", 64, 16, 1024, 256, tmp_path / "o.jsonl")
    assert "--gsp-system-prompt-len" in cmd


FAKE = '''
import http.server, sys
port = int(sys.argv[sys.argv.index("--port") + 1])
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.end_headers(); self.wfile.write(b"{}")
    def do_POST(self):
        self.send_response(200 if self.path == "/flush_cache" else 404); self.end_headers()
        self.wfile.write(b"Cache flushed.")
    def log_message(self, *a):
        pass
http.server.HTTPServer(("127.0.0.1", port), H).serve_forever()
'''


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_free(port):
    """Can a new server listen there (servers set SO_REUSEADDR, as uvicorn does)?"""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def test_server_is_stopped_on_ctrl_c_and_the_port_freed(tmp_path):
    script = tmp_path / "fake_server.py"
    script.write_text(FAKE)
    port = _free_port()
    pid = None
    with pytest.raises(KeyboardInterrupt):
        with Server("/m", "sm12x", port=port, log=tmp_path / "s.log", timeout=60,
                    launcher=[sys.executable, str(script)]) as s:
            pid = s.proc.pid
            assert not _port_free(port)
            assert s.flush_cache()
            raise KeyboardInterrupt
    assert pid is not None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert not Server("/m", "sm12x", port=port).flush_cache(timeout=5), "no server there: False, no exception"
    for _ in range(50):
        if _port_free(port):
            break
        time.sleep(0.1)
    assert _port_free(port)


def test_server_that_dies_at_start_is_reported(tmp_path):
    script = tmp_path / "dies.py"
    script.write_text("import sys; print('ValueError: --kv-cache-dtype nvfp4 rejected'); sys.exit(3)")
    with pytest.raises(RuntimeError, match="rejected"):
        with Server("/m", "triton", port=_free_port(), log=tmp_path / "d.log", timeout=60,
                    launcher=[sys.executable, str(script)]):
            pass


def test_explicit_configs_and_prompt_counts(tmp_path):
    FakeServer.started, FakeServer.stopped = [], []
    plan = _plan(pairs=[("sm12x", "nvfp4"), ("triton", "auto")], prompts_per_concurrency=2, min_prompts=8,
                 gsp=False)
    assert plan.configs() == [("/m/qwen3-8b-shape", "sm12x", "nvfp4"), ("/m/qwen3-8b-shape", "triton", "auto")]
    rows = B.run_matrix(plan, tmp_path, server_cls=FakeServer, client=fake_client, log=lambda m: None)
    assert FakeServer.started == [("sm12x", "nvfp4"), ("triton", "auto")]
    assert {(r["concurrency"], r["num_prompts"]) for r in rows} == {(1, 8), (16, 32), (64, 128)}


def test_configs_argument_is_checked(capsys):
    with pytest.raises(SystemExit):
        B.main(["--model", "/m", "--configs", "sm12x"])
    assert "--configs" in capsys.readouterr().err


def test_server_refuses_a_port_someone_else_answers_on(tmp_path):
    """A leftover server on the port would pass our health check: refuse before launching."""
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen(1)
        port = other.getsockname()[1]
        launched = tmp_path / "launched"
        script = tmp_path / "s.py"
        script.write_text(f"open({str(launched)!r}, 'w').write('x')")
        with pytest.raises(RuntimeError, match=f"port {port} is already in use"):
            with Server("/m", "sm12x", port=port, log=tmp_path / "s.log", timeout=10,
                        launcher=[sys.executable, str(script)]):
                pass
        assert not launched.exists()


@pytest.mark.parametrize("parent,want", [(None, ("0", "1")), ("5,7", ("5", "7"))])
def test_configurations_run_in_parallel_one_server_per_gpu(tmp_path, monkeypatch, parent, want):
    """--gpus 0,1: two workers, each server pinned to its GPU on its own port, never two servers on
    one GPU at a time, every configuration measured once. The indices number the GPUs this process
    sees: under CUDA_VISIBLE_DEVICES=5,7 the servers get 5 and 7, not 0 and 1."""
    import threading

    if parent is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", parent)

    lock = threading.Lock()
    busy, seen, overlap = {}, [], []

    class GpuServer(FakeServer):
        def __init__(self, model, backend, *args, **kw):
            super().__init__(model, backend, *args, **kw)
            self.gpu, self.port = kw["env"]["CUDA_VISIBLE_DEVICES"], kw["port"]

        def __enter__(self):
            with lock:
                if busy.get(self.gpu):
                    overlap.append(self.gpu)
                busy[self.gpu] = True
                seen.append((self.key, self.gpu, self.port))
            time.sleep(0.05)
            try:
                return super().__enter__()
            except RuntimeError:
                busy[self.gpu] = False
                raise

        def __exit__(self, *exc):
            busy[self.gpu] = False
            return super().__exit__(*exc)

    plan = _plan(gpus=[0, 1], gsp=False)
    rows = B.run_matrix(plan, tmp_path, server_cls=GpuServer, client=fake_client, log=lambda m: None)
    assert not overlap
    assert sorted(k for k, _, _ in seen) == sorted((b, k) for _, b, k in plan.configs())
    assert {(g, p) for _, g, p in seen} <= {(want[0], plan.port), (want[1], plan.port + 10)}
    assert len({g for _, g, _ in seen}) == 2, "both GPUs were used"
    measured = [r for r in rows if r.get("dataset")]
    assert len(measured) == (len(plan.configs()) - 1) * 4 and all(r["gpu"] in (0, 1) for r in measured)


def test_ctrl_c_stops_every_parallel_server(tmp_path):
    import _thread
    import signal
    import threading

    FakeServer.started, FakeServer.stopped = [], []

    class GpuServer(FakeServer):
        pass

    def slow_client(cmd, out_file):
        time.sleep(1.5)
        return fake_client(cmd, out_file)

    plan = B.Plan(models=["/m"], pairs=[("sm12x", "auto"), ("sm12x", "nvfp4")], concurrency=[1], gpus=[0, 1],
                  gsp=False, long_input_len=0)
    # interrupt_main runs whatever SIGINT handler is installed: a module imported by an earlier test
    # in this worker may have replaced Python's default one, which raises KeyboardInterrupt
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        threading.Timer(0.5, _thread.interrupt_main).start()
        with pytest.raises(KeyboardInterrupt):
            B.run_matrix(plan, tmp_path, server_cls=GpuServer, client=slow_client, log=lambda m: None)
    finally:
        signal.signal(signal.SIGINT, old)
    assert sorted(FakeServer.started) == [("sm12x", "auto"), ("sm12x", "nvfp4")]
    assert set(FakeServer.stopped) == set(FakeServer.started), "both running servers stopped on Ctrl-C"


def test_long_point_in_a_second_server_at_its_own_memory_fraction(tmp_path):
    """--long-mem-fraction-static: each configuration serves the concurrency sweep at the main fraction
    and the long-context point in a second server at the smaller one (a KV-bound budget); rows and
    the markdown say which fraction each point ran at, and both servers are stopped."""
    seen = []

    class FracServer(FakeServer):
        def __init__(self, model, backend, *args, mem_fraction=None, **kw):
            super().__init__(model, backend, *args, **kw)
            self.frac = mem_fraction
            seen.append((self.key, mem_fraction))

        def kv_capacity(self):
            return int(super().kv_capacity() * self.frac * 10)

    FakeServer.started, FakeServer.stopped = [], []
    plan = _plan(pairs=[("sm12x", "auto"), ("sm12x", "nvfp4")], long_mem_fraction=0.4, gsp=False)
    rows = B.run_matrix(plan, tmp_path, server_cls=FracServer, client=fake_client, log=lambda m: None)
    assert seen == [(("sm12x", "auto"), 0.8), (("sm12x", "auto"), 0.4), (("sm12x", "nvfp4"), 0.8),
                    (("sm12x", "nvfp4"), 0.4)]
    assert sorted(FakeServer.started) == sorted(FakeServer.stopped)
    long = [r for r in rows if r["input_len"] == plan.long_input_len]
    assert len(long) == 2 and all(r["mem_fraction_static"] == 0.4 for r in long)
    assert {r["kv_capacity_tokens"] for r in long} == {4000, 14224}
    sweep = [r for r in rows if r["input_len"] == plan.input_len]
    assert len(sweep) == 6 and all(r["mem_fraction_static"] == 0.8 for r in sweep)
    assert "mem_fraction_static" in B.markdown(rows).splitlines()[0]
    assert "mem_fraction_static" not in B.markdown(sweep).splitlines()[0]


def test_summary_states_the_targets_as_ratios(tmp_path):
    """sm12x bf16 against the best other bf16 backend at every concurrency, and the best nvfp4
    against the best bf16 configuration at the long-context point, in the JSON and the table."""
    rows = []
    for be, kv, base in (("sm12x", "auto", 110.0), ("triton", "auto", 100.0), ("flashinfer", "auto", 120.0),
                         ("sm12x", "nvfp4", 90.0)):
        for c in (1, 16):
            rows.append(dict(model="m", backend=be, kv_dtype=kv, dataset="random-ids", concurrency=c, input_len=1024,
                             output_throughput=base * c, median_tpot_ms=5.0))
        rows.append(dict(model="m", backend=be, kv_dtype=kv, dataset="random-ids", concurrency=64, input_len=8192,
                         output_throughput=300.0 if kv == "nvfp4" else base, mem_fraction_static=0.4,
                         median_tpot_ms=9.0))
    plan = B.Plan(models=["m"], concurrency=[1, 16])
    items = B.summary(rows, plan)
    sweep = [i for i in items if i["check"].startswith("sm12x bf16")]
    assert [round(i["ratio"], 4) for i in sweep] == [round(110 / 120, 4)] * 2
    assert all(i["best_other_backend"] == "flashinfer" for i in sweep)
    (long,) = [i for i in items if "long" in i["check"]]
    assert long["ratio"] == 300.0 / 120.0 and long["ours_backend"] == "sm12x" and long["mem_fraction_static"] == 0.4
    B.write_report(rows, tmp_path, {"date": "2026-11-26", "device": "X"}, plan, "cmd")
    md = (tmp_path / "2026-11-26-x-serving.md").read_text()
    assert "| m | best nvfp4 vs best bf16, long context | 64 | 8192 | 300.0 | 120.0 (flashinfer) | 2.50 |" in md
    assert json.loads((tmp_path / "2026-11-26-x-serving.json").read_text())["summary"] == items


def test_gpu_index_outside_the_visible_devices_is_refused(monkeypatch, capsys):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    with pytest.raises(ValueError, match="CUDA_VISIBLE_DEVICES='3' allows indices 0..0"):
        visible_device(1)
    with pytest.raises(SystemExit):
        B.main(["--model", "m", "--gpus", "0,1", "--configs", "sm12x:auto"])
    assert "--gpus: index 1 is not visible" in capsys.readouterr().err


def test_long_output_len_reaches_the_long_point(tmp_path, monkeypatch):
    """--long-output-len sets the long-context point's output tokens (decode-bound at long outputs),
    and only that point's."""
    seen = {}

    def fake_run(plan, workdir, progress=None, log=None, rows=None):
        seen["points"] = B._points(plan)

    monkeypatch.setattr(B, "run_matrix", fake_run)
    monkeypatch.setattr(B, "write_report", lambda *a, **k: [])
    B.main(["--model", "m", "--configs", "sm12x:auto", "--concurrency", "4", "--no-gsp", "--long-input-len", "8192",
            "--long-output-len", "1024", "--out-dir", str(tmp_path)])
    assert seen["points"] == [("random-ids", 4, 1024, 256), ("random-ids", 64, 8192, 1024)]
