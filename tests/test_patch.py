"""``sm12x patch`` on the real SGLang 0.5.17 and 0.5.23 wheels (downloaded with ``pip download
--no-deps`` and unpacked into temporary trees), and the effect of each patch: a test per patch that
fails on the released file and passes on the patched one."""
import hashlib
import importlib.util
import json
import os
import py_compile
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from sglang_sm12x.tools import patch as P
from sgl_kernel_sm12x import planner
from sglang_sm12x import tiles

ROOT = Path(__file__).resolve().parents[1]
VERSIONS = ("0.5.23", "0.5.17")
CACHE = Path(os.environ.get("SM12X_WHEEL_CACHE", Path.home() / ".cache" / "sgl-kernel-sm12x" / "wheels"))
sys.path.insert(0, str(ROOT / "benchmark"))


def _targets(version):
    return sorted(json.loads((ROOT / "patches" / f"sglang-{version}" / "checksums.json").read_text()))


def _wheel(version) -> Path:
    CACHE.mkdir(parents=True, exist_ok=True)
    found = sorted(CACHE.glob(f"sglang-{version}-*.whl"))
    if not found:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q",
                        f"sglang=={version}", "-d", str(CACHE)], check=True, timeout=900)
        found = sorted(CACHE.glob(f"sglang-{version}-*.whl"))
    assert found, f"pip download of sglang=={version} produced no wheel in {CACHE}"
    return found[0]


@pytest.fixture(params=VERSIONS)
def tree(request, tmp_path):
    """The folder containing an unpacked ``sglang/`` (the patch targets and the version file)."""
    version = request.param
    with zipfile.ZipFile(_wheel(version)) as z:
        for name in _targets(version) + ["sglang/_version.py"]:
            z.extract(name, tmp_path)
    return version, tmp_path


def _hashes(root, version):
    return {f: hashlib.sha256((root / f).read_bytes()).hexdigest() for f in _targets(version)}


def _cli(*args):
    out = subprocess.run([sys.executable, "-m", "sglang_sm12x.cli", "patch", *args], capture_output=True,
                         text=True, timeout=300)
    return out.returncode, out.stdout + out.stderr


# ------------------------------------------------------------------------------------------------
# the tool
# ------------------------------------------------------------------------------------------------

def test_apply_status_reapply_revert(tree):
    version, root = tree
    before = _hashes(root, version)
    rc, out = _cli("status", "--sglang-dir", str(root))
    assert rc == 0 and out.count("not applied") == 3, out
    rc, out = _cli("apply", "--sglang-dir", str(root))
    assert rc == 0 and out.count("applied ") == 3, out
    after = _hashes(root, version)
    assert all(after[f] != before[f] for f in after), "every target file changes"
    for f in after:
        py_compile.compile(str(root / f), doraise=True)
    rc, out = _cli("status", "--sglang-dir", str(root))
    assert rc == 0 and out.count(" applied ") == 3 and "not applied" not in out, out
    rc, out = _cli("apply", "--sglang-dir", str(root))
    assert rc == 0 and "already applied" in out and _hashes(root, version) == after, out
    rc, out = _cli("revert", "--sglang-dir", str(root))
    assert rc == 0 and out.count("reverted") == 3, out
    assert _hashes(root, version) == before, "revert restores byte-identical files"
    assert not (root / "sglang" / P.STATE_DIR).exists()


def test_modified_target_is_refused_and_untouched(tree):
    version, root = tree
    victim = root / "sglang/kernels/ops/attention/prefill_attention.py"
    victim.write_text(victim.read_text() + "\n# local edit\n")
    before = _hashes(root, version)
    rc, out = _cli("apply", "--sglang-dir", str(root))
    assert rc == 1, out
    assert "sglang/kernels/ops/attention/prefill_attention.py" in out and "nothing was changed" in out, out
    assert _hashes(root, version) == before
    assert not (root / "sglang" / P.STATE_DIR).exists()
    rc, out = _cli("status", "--sglang-dir", str(root))
    assert "conflicting" in out and "prefill_attention.py differs" in out, out
    rc, out = _cli("check", "--sglang-dir", str(root))
    assert rc == 1, out


def test_dry_run_changes_nothing(tree):
    version, root = tree
    before = _hashes(root, version)
    rc, out = _cli("apply", "--dry-run", "--sglang-dir", str(root))
    assert rc == 0 and out.count("would apply") == 3, out
    assert _hashes(root, version) == before and not (root / "sglang" / P.STATE_DIR).exists()


def test_revert_without_backups_reverses_the_diffs(tree):
    version, root = tree
    before = _hashes(root, version)
    assert _cli("apply", "--sglang-dir", str(root))[0] == 0
    import shutil

    shutil.rmtree(root / "sglang" / P.STATE_DIR)
    rc, out = _cli("revert", "--sglang-dir", str(root))
    assert rc == 0, out
    assert _hashes(root, version) == before


def test_unknown_version_and_missing_tree_are_refused(tmp_path):
    (tmp_path / "sglang").mkdir()
    (tmp_path / "sglang" / "_version.py").write_text("__version__ = version = '0.5.20'\n")
    rc, out = _cli("apply", "--sglang-dir", str(tmp_path))
    assert rc == 2 and "no patches for SGLang 0.5.20" in out and "0.5.17, 0.5.23" in out, out
    rc, out = _cli("status", "--sglang-dir", str(tmp_path / "nowhere"))
    assert rc == 2 and "no sglang/ package" in out, out


# ------------------------------------------------------------------------------------------------
# what each patch changes (fails on the released file)
# ------------------------------------------------------------------------------------------------

def _calls_load_plugins_first(path: Path) -> bool:
    import ast

    fn = next(n for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.FunctionDef)
              and n.name == "cli_main")
    names = [n.func.attr if isinstance(n.func, ast.Attribute) else getattr(n.func, "id", "")
             for n in ast.walk(fn) if isinstance(n, ast.Call)]
    return "load_plugins" in names and names.index("load_plugins") < names.index("parse_args")


def test_patch1_benchmarks_load_plugins_before_parsing(tree):
    version, root = tree
    files = [root / "sglang/benchmark/one_batch.py", root / "sglang/benchmark/offline_throughput.py"]
    assert not any(_calls_load_plugins_first(f) for f in files)
    assert _cli("apply", "--sglang-dir", str(root))[0] == 0
    assert all(_calls_load_plugins_first(f) for f in files)


def test_patch1_one_batch_accepts_sm12x(tmp_path):
    """The patched 0.5.23 ``one_batch`` CLI lists ``sm12x`` among --attention-backend choices."""
    with zipfile.ZipFile(_wheel("0.5.23")) as z:
        for name in _targets("0.5.23") + ["sglang/_version.py"]:
            z.extract(name, tmp_path)
    f = tmp_path / "sglang/benchmark/one_batch.py"
    code = ("import importlib.util, sys; s = importlib.util.spec_from_file_location('ob', sys.argv[1]);"
            "m = importlib.util.module_from_spec(s); s.loader.exec_module(m); sys.argv = ['one_batch', '--help'];"
            "m.cli_main()")

    def choices():
        r = subprocess.run([sys.executable, "-c", code, str(f)], capture_output=True, text=True, timeout=600,
                           env=dict(os.environ, TRITON_INTERPRET="1"))
        return "sm12x" in r.stdout, r

    has, r = choices()
    assert not has, "released one_batch should not know sm12x"
    assert _cli("apply", "--sglang-dir", str(tmp_path))[0] == 0
    has, r = choices()
    assert has, r.stdout[-2000:] + r.stderr[-2000:]


def _aot(kind, *args, **kw):
    """Run ``aot_sglang.<kind>`` in a subprocess without the interpreter (real sm_120 cubins)."""
    from conftest import clean_env

    code = (f"import sys, json; sys.path[:0] = [{str(ROOT / 'benchmark')!r}, {str(ROOT)!r}]; import aot_sglang; "
            f"print(json.dumps(aot_sglang.{kind}(*{args!r}, **{kw!r})))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, env=clean_env())
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def _load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class _Recorder:
    def __init__(self):
        self.kw = None

    def __getitem__(self, grid):
        def launch(*args, **kw):
            self.kw = kw
        return launch


def _context_choice(path, head_dim, dtype):
    mod = _load(path, f"pa_{abs(hash(str(path)))}")
    mod._is_cuda, mod.CUDA_CAPABILITY = True, (12, 0)
    rec = _Recorder()
    mod._fwd_kernel = rec
    q = torch.zeros(8, 2, head_dim, dtype=dtype)
    mod.context_attention_fwd(q, q, q, q, torch.zeros(1, dtype=torch.int32), torch.full((1,), 8, dtype=torch.int32), 8)
    return rec.kw["BLOCK_M"], rec.kw["num_warps"]


@pytest.mark.parametrize("head_dim,dtype", [(64, torch.bfloat16), (128, torch.float32)])
def test_patch2_context_attention_fits_sm120(tree, head_dim, dtype):
    version, root = tree
    path = root / "sglang/kernels/ops/attention/prefill_attention.py"
    dt = {torch.bfloat16: "bf16", torch.float32: "fp32"}[dtype]
    blk, w = _context_choice(path, head_dim, dtype)
    before = _aot("context_attention", head_dim, dt, blk, w, 120)
    assert not before["fits"], f"SGLang's own choice {blk}x{w} should spill or overflow on sm_120: {before}"
    assert _cli("apply", "--sglang-dir", str(root))[0] == 0
    blk, w = _context_choice(path, head_dim, dtype)
    assert (blk, w) == tiles.plan_context_attention(120, head_dim, torch.tensor([], dtype=dtype).element_size())
    after = _aot("context_attention", head_dim, dt, blk, w, 120)
    assert after["fits"] and after["spill"] == 0 and after["shared"] <= 101376, after


def test_patch3_fused_moe_override_is_clamped_on_sm120(tree, monkeypatch, caplog):
    import aot_sglang
    from sglang.srt.layers.moe.moe_runner import triton_utils

    version, root = tree
    path = root / "sglang/srt/layers/moe/moe_runner/triton_utils/fused_moe_triton_config.py"
    override = dict(aot_sglang.FP8_OVERRIDE)
    monkeypatch.setattr(triton_utils, "get_config", lambda: dict(override))

    def pick():
        mod = _load(path, f"moecfg_{abs(hash(str(path)))}")
        if hasattr(mod, "_sm12x_arch"):
            mod._sm12x_arch = lambda: 120
        return mod.try_get_optimal_moe_config((128, 1536, 2048), (128, 2048, 768), 8, "fp8_w8a8", 4096)

    cfg = pick()
    assert tiles.moe_smem_bytes(cfg, "fp8_w8a8") == 147456, "released SGLang launches the 147,456 B override"
    assert _cli("apply", "--sglang-dir", str(root))[0] == 0
    with caplog.at_level("WARNING"):
        cfg = pick()
    assert cfg["BLOCK_SIZE_M"] == override["BLOCK_SIZE_M"]
    msg = " ".join(r.getMessage() for r in caplog.records)
    assert "128x256x128 w8 s4" in msg and "147,456" in msg and "using" in msg, msg
    aot = _aot("fused_moe", dict(cfg), "fp8_w8a8", arch=120)
    assert aot["fits"] and aot["shared"] <= 101376 and aot["spill"] == 0, (cfg, aot)


def test_clamp_never_changes_block_m_and_always_fits():
    for dt in (None, "fp8_w8a8", "int8_w8a16"):
        for bm in (16, 64, 128, 256):
            for bn in (32, 128, 256):
                for bk in (64, 128, 256):
                    for st in (2, 3, 4, 5):
                        cfg = dict(BLOCK_SIZE_M=bm, BLOCK_SIZE_N=bn, BLOCK_SIZE_K=bk, GROUP_SIZE_M=1, num_stages=st)
                        out, reason = tiles.clamp_moe_config(120, cfg, dt)
                        assert out["BLOCK_SIZE_M"] == bm
                        assert tiles.moe_smem_bytes(out, dt) <= 101376
                        assert (reason is None) == (out == cfg)


def test_revert_of_an_edited_patched_file_names_the_patched_baseline(tree):
    version, root = tree
    assert _cli("apply", "--sglang-dir", str(root))[0] == 0
    victim = root / "sglang/kernels/ops/attention/prefill_attention.py"
    victim.write_text(victim.read_text() + "\n# edited after apply\n")
    edited = _hashes(root, version)
    rc, out = _cli("revert", "--sglang-dir", str(root))
    assert rc == 1 and "nothing was changed" in out, out
    assert "released file" not in out, out
    assert "prefill_attention.py differs from the file 02-context-attention-tiles-sm12x.patch wrote" in out, out
    assert _hashes(root, version) == edited


def test_aot_sglang_hybrid_records_and_fixes_the_gdn_forward(tmp_path):
    """``benchmark/aot_sglang_hybrid.py`` on the Gated DeltaNet forward (no GPU, real sm_120
    cubins): every kernel SGLang launches is recorded and compiled, the one that spills there
    (the WY recompute at 3 stages) gets a relaunch that fits, and the table it writes is the one
    the plugin ships for that kernel."""
    from conftest import clean_env

    out, fixes = tmp_path / "aot.json", tmp_path / "fixes.json"
    r = subprocess.run([sys.executable, str(ROOT / "benchmark" / "aot_sglang_hybrid.py"), "--arch", "120", "--ops",
                        "qwen3-next-gdn", "--out", str(out), "--write-fixes", str(fixes)],
                       capture_output=True, text=True, timeout=900, env=clean_env(), cwd=ROOT)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    res = json.loads(out.read_text())
    kernels = {x["kernel"] for x in res["rows"] if x["stage"] == "sglang"}
    assert {"chunk_fwd.chunk_gated_delta_rule_fwd_kkt_solve_kernel", "wy_fast.recompute_w_u_fwd_kernel",
            "chunk_delta_h.chunk_gated_delta_rule_fwd_kernel_h_blockdim64", "chunk_o.chunk_fwd_kernel_o",
            "fused_recurrent.fused_recurrent_gated_delta_rule_packed_decode_kernel",
            "causal_conv1d_triton._causal_conv1d_fwd_kernel"} <= kernels
    assert all(x["shared"] > 0 or x["regs"] > 0 for x in res["rows"])
    # every launch that overflows or spills has a fix in the table written, and the fixed rows fit
    assert res["all_fixed_fit"]
    written = json.loads(fixes.read_text()).get("120", {})
    bad = {x["kernel"] for x in res["rows"] if x["stage"] == "sglang" and not x["fits"]}
    assert {".".join(k.split(".")[-2:]) for k in written} == bad
    name = "sglang.kernels.ops.attention.fla.wy_fast.recompute_w_u_fwd_kernel"
    if name in written:     # the shipped table holds the same fix
        shipped = json.loads((ROOT / "python" / "sglang_sm12x" / "hybrid_tiles.json").read_text())
        assert written[name] == shipped["120"][name]
