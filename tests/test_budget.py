"""``sm12x budget``: real AOT compilation for sm_120/sm_121 (no GPU), run in a subprocess so the
Triton interpreter used by the other tests does not apply."""
import json
import subprocess
import sys
import textwrap

import pytest

from conftest import clean_env
from sgl_kernel_sm12x import planner


def _run(args, timeout=900, **kw):
    return subprocess.run([sys.executable, "-m", "sglang_sm12x.cli", *args], capture_output=True,
                          text=True, env=clean_env(), timeout=timeout, **kw)


@pytest.fixture(scope="module")
def budget_json(tmp_path_factory):
    """The whole table, compiled once per test session: the test workers share one run through a
    file lock (two runs at once on a cold cache have lost a row's ptxas log to each other).
    Every configuration compiled and ptxas'd: seconds with Triton's cache warm, tens of minutes
    cold on two cores."""
    from filelock import FileLock
    shared = tmp_path_factory.getbasetemp().parent / "budget-120-121.json"
    with FileLock(str(shared) + ".lock"):
        if not shared.is_file():
            p = _run(["budget", "--arch", "120,121", "--json"], timeout=3600)
            bad = [r for r in json.loads(p.stdout or "[]") if not r.get("fits")]
            assert p.returncode == 0, f"rows that do not fit: {bad[:5]}\n" + p.stderr[-3000:]
            shared.write_text(p.stdout)
        return json.loads(shared.read_text())


def test_budget_json_schema_and_fit(budget_json):
    keys = {"kernel", "arch", "config", "shared", "limit", "regs", "spill", "mma", "fits"}
    assert budget_json, "no rows"
    for row in budget_json:
        assert keys <= set(row), row
        assert row["limit"] == 101_376
        assert row["fits"] and row["shared"] <= row["limit"] and row["spill"] == 0, row
        assert 0 < row["regs"] <= 255
    assert {r["arch"] for r in budget_json} == {120, 121}


def test_budget_lists_the_append_kernel(budget_json):
    rows = [r for r in budget_json if r["kernel"] == "kv_append"]
    assert {r["config"]["kv_dtype"] for r in rows} == {"bf16", "fp16", "fp8_e4m3", "nvfp4"}
    assert {r["config"]["head_dim"] for r in rows} == set(planner.HEAD_DIMS)
    # fp8k_nvfp4v appends K with the fp8 plan and V with the nvfp4 plan, one launch each
    assert {r["config"].get("part") for r in rows} == {None, "K of fp8k_nvfp4v", "V of fp8k_nvfp4v"}


def test_budget_table_and_bad_arguments():
    p = _run(["budget", "--arch", "120", "--kernel", "kv_append"])
    assert p.returncode == 0 and "kv_append" in p.stdout and "0 do not" in p.stdout
    p = _run(["budget", "--arch", "75"])
    assert p.returncode == 2 and "arch=75" in p.stderr
    p = _run(["budget", "--kernel", "nope"])
    assert p.returncode == 2 and "kernel='nope'" in p.stderr


def test_budget_flags_an_oversized_tile(tmp_path):
    """The checker must report a configuration over 101,376 B as not fitting (a test that can fail)."""
    src = textwrap.dedent('''
        import triton, triton.language as tl
        from sgl_kernel_sm12x import budget

        @triton.jit
        def big_dot(a_ptr, b_ptr, c_ptr, K, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
            rm = tl.arange(0, BM); rn = tl.arange(0, BN); rk = tl.arange(0, BK)
            acc = tl.zeros((BM, BN), dtype=tl.float32)
            for k in range(0, K, BK):
                a = tl.load(a_ptr + rm[:, None] * K + (k + rk)[None, :])
                b = tl.load(b_ptr + (k + rk)[:, None] * BN + rn[None, :])
                acc += tl.dot(a, b)
            tl.store(c_ptr + rm[:, None] * BN + rn[None, :], acc)

        budget.KERNELS["big_dot"] = (__name__, "big_dot")
        row = budget.compile_one("big_dot", 120, {}, {"a_ptr": "*bf16", "b_ptr": "*bf16", "c_ptr": "*fp32", "K": "i32"},
                                 {"BM": 128, "BN": 256, "BK": 64}, {"num_warps": 8, "num_stages": 4})
        print(row.shared, row.fits, row.mma)
    ''')
    f = tmp_path / "big.py"
    f.write_text(src)
    p = subprocess.run([sys.executable, str(f)], capture_output=True, text=True, env=clean_env(), timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    shared, fits, mma = p.stdout.split()
    assert int(shared) > 101_376 and fits == "False"
    assert mma.startswith("mma.sync"), "sm_120 has no wgmma: Triton must emit mma.sync"


def test_budget_covers_attention_with_mma_sync(budget_json):
    kernels = {r["kernel"] for r in budget_json}
    assert {"kv_append", "decode", "decode_reduce", "extend"} <= kernels
    for r in budget_json:
        if r["kernel"] in ("decode", "extend"):
            # SM120/SM121 have no wgmma / tcgen05: the tensor-core path is mma.sync
            assert r["mma"].startswith("mma.sync"), r
    kv = {r["config"]["kv_dtype"] for r in budget_json if r["kernel"] in ("decode", "extend")}
    assert kv == {"bf16", "fp16", "fp8_e4m3", "nvfp4", "fp8k_nvfp4v"}


def test_resident_program_table_matches_the_compiled_registers(budget_json):
    """The planner's one-warp NVFP4 decode occupancy (``fp4_mma_resident``, which its split count
    depends on) against the registers of the compiled configurations: within the range of
    65,536 / (32 x registers) over each head_dim x GQA class (page size and q dtype vary it)."""
    from sgl_kernel_sm12x import planner
    occ = {}
    for r in budget_json:
        if r["kernel"] == "decode_nvfp4":
            key = (r["config"]["head_dim"], r["config"]["heads_n"])
            occ.setdefault(key, set()).add(65536 // (-(-r["regs"] // 8) * 8 * 32))
    assert {d for d, _ in occ} == {64, 128, 256}
    for (d, heads_n), seen in occ.items():
        assert min(seen) <= planner.fp4_mma_resident(d, heads_n) <= max(seen), (d, heads_n, sorted(seen))
