"""Start an SGLang server in a subprocess and talk to it over HTTP (standard library only; SGLang is
not imported here). Used by ``sm12x demo`` on a GPU machine and by ``benchmark/e2e.py``."""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

BUNDLED_MODEL = Path(__file__).resolve().parents[1] / "models" / "qwen3-tiny"


def bundled_model() -> Path:
    """The tiny Qwen3 config + 1024-token tokenizer shipped with the plugin."""
    return BUNDLED_MODEL


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(1.0)
        return s.connect_ex((host, port)) == 0


def stop_on_sigterm() -> None:
    """Make SIGTERM (``timeout``, a job scheduler) unwind like Ctrl-C, so ``with Server(...)``
    blocks stop their servers instead of leaving them running."""
    def raise_interrupt(*_):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, raise_interrupt)


class LiveServers(set):
    """Servers running in worker threads, for :func:`run_on_gpus` to stop on Ctrl-C."""

    @contextlib.contextmanager
    def holding(self, srv):
        self.add(srv)
        try:
            yield srv
        finally:
            self.discard(srv)


def visible_device(gpu: int) -> str:
    """``CUDA_VISIBLE_DEVICES`` for a server on GPU index ``gpu`` of this process's view: an index
    into the caller's own ``CUDA_VISIBLE_DEVICES`` when that is set (``--gpus 0`` under
    ``CUDA_VISIBLE_DEVICES=2`` is physical GPU 2, as torch would number it), else the index."""
    parent = os.environ.get("CUDA_VISIBLE_DEVICES")
    if parent is None or not parent.strip():
        return str(gpu)
    ids = [x.strip() for x in parent.split(",") if x.strip()]
    if not 0 <= gpu < len(ids):
        raise ValueError(f"index {gpu} is not visible; CUDA_VISIBLE_DEVICES={parent!r} "
                         f"allows indices 0..{len(ids) - 1}")
    return ids[gpu]


def gpu_list(text: str) -> list[int]:
    """argparse type of ``--gpus``: comma-separated indices, each visible to this process."""
    try:
        gpus = [int(g) for g in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated GPU indices such as 0,1,2,3, got {text!r}") \
            from None
    try:
        for g in gpus:
            visible_device(g)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return gpus


def run_on_gpus(items, gpus, work) -> None:
    """``work(item, gpu, slot, live)`` for every item, in order. With several ``gpus``, one worker
    thread per GPU takes the next item from a shared queue (``slot`` is the worker's index, for ports
    apart), so server start-ups overlap and servers never share a GPU; otherwise the items run here
    with ``gpu`` the single index given, or None. Servers a worker holds in ``live``
    (``with live.holding(server):``) are stopped here
    on Ctrl-C, which reaches the main thread only."""
    gpus = list(gpus or [])
    live = LiveServers()
    if len(gpus) <= 1:
        for item in items:
            work(item, gpus[0] if gpus else None, 0, live)
        return
    todo: queue.Queue = queue.Queue()
    for item in items:
        todo.put(item)
    stop = threading.Event()

    def worker(slot, gpu):
        while not stop.is_set():
            try:
                item = todo.get_nowait()
            except queue.Empty:
                return
            work(item, gpu, slot, live)

    threads = [threading.Thread(target=worker, args=(i, g), daemon=True) for i, g in enumerate(gpus)]
    for t in threads:
        t.start()
    try:
        while any(t.is_alive() for t in threads):
            for t in threads:
                t.join(0.5)
    except KeyboardInterrupt:
        stop.set()
        for srv in list(live):
            srv.__exit__(None, None, None)
        raise


class Server:
    """``with Server(model, backend, ...) as s: s.generate(...)`` -- the process dies with the block."""

    def __init__(self, model, backend, *args, port=30123, log=None, env=None, timeout=600, mem_fraction=0.5,
                 launcher=None, cwd=None):
        self.model, self.backend, self.args, self.port = str(model), backend, list(args), port
        self.launcher = list(launcher or [sys.executable, "-m", "sglang.launch_server"])
        self.log_path = Path(log or f"/tmp/sglang-{backend}-{port}.log")
        self.env = dict(os.environ, **(env or {}))
        self.timeout, self.mem_fraction = timeout, mem_fraction
        self.cwd = cwd                   # `python -m` puts the working folder first on sys.path
        self.proc = None
        self.startup_s = None

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self):
        if port_in_use(self.port):      # a leftover server there would answer our health checks
            raise RuntimeError(f"port {self.port} is already in use (a server left running?); refusing to start "
                               f"{self.backend} there, its health checks would reach the other process")
        cmd = [*self.launcher, "--model-path", self.model, "--attention-backend",
               self.backend, "--port", str(self.port), "--host", "127.0.0.1", "--grammar-backend", "none",
               "--sampling-backend", "pytorch", "--mem-fraction-static", str(self.mem_fraction), *self.args]
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "w")
        self._log.write(" ".join(cmd) + "\n")
        self._log.flush()
        t0 = time.time()
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=self.env,
                                     start_new_session=True, cwd=self.cwd)
        while time.time() - t0 < self.timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server ({self.backend}) exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                with urllib.request.urlopen(self.url + "/health_generate", timeout=5) as r:
                    if r.status == 200:
                        self.startup_s = time.time() - t0
                        return self
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            time.sleep(1)
        self.__exit__(None, None, None)
        raise TimeoutError(f"server ({self.backend}) not healthy after {self.timeout} s:\n{self.tail()}")

    def __exit__(self, *exc):
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(30)
            except (subprocess.TimeoutExpired, ProcessLookupError):
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait()
        if getattr(self, "_log", None):
            self._log.close()
        return False

    def tail(self, n=40):
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def post(self, path, payload, timeout=1800):
        req = urllib.request.Request(self.url + path, data=json.dumps(payload).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.loads(r.read())

    def flush_cache(self, timeout=60) -> bool:
        """Empty the radix cache (SGLang's ``/flush_cache``; refused while requests run)."""
        try:
            with urllib.request.urlopen(urllib.request.Request(self.url + "/flush_cache", data=b"",
                                                               method="POST"), timeout=timeout) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def get(self, path, timeout=60):
        with urllib.request.urlopen(self.url + path, timeout=timeout) as r:
            return json.loads(r.read())

    def generate_ids(self, input_ids, max_new_tokens, logprobs=True):
        """Greedy generation for a batch of token-id prompts -> list of (tokens, logprobs)."""
        out = self.post("/generate", {"input_ids": input_ids, "return_logprob": logprobs,
                                      "sampling_params": {"max_new_tokens": max_new_tokens, "temperature": 0.0,
                                                          "ignore_eos": True}})
        res = []
        for o in out:
            meta = o["meta_info"]
            lp = meta.get("output_token_logprobs") or []
            res.append(([t[1] for t in lp], [t[0] for t in lp]))
        return res

    def kv_capacity(self):
        """Tokens the KV pool holds (``max_total_num_tokens``), from /server_info or the log."""
        for path in ("/server_info", "/get_server_info"):
            try:
                v = _find_key(self.get(path), "max_total_num_tokens")
                if v:
                    return int(v)
            except (urllib.error.URLError, OSError, ValueError):
                pass
        m = re.findall(r"#tokens: (\d+)", self.log_path.read_text(errors="replace"))
        return int(m[-1]) if m else None


def _find_key(obj, key):
    if isinstance(obj, dict):
        if key in obj:
            return obj[key]
        for v in obj.values():
            r = _find_key(v, key)
            if r is not None:
                return r
    elif isinstance(obj, list):
        for v in obj:
            r = _find_key(v, key)
            if r is not None:
                return r
    return None
