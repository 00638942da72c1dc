"""The ``sm12x`` console script."""
import shutil
import subprocess
import sys

from conftest import clean_env


def _run(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "sglang_sm12x.cli", *args], capture_output=True, text=True,
                          env=clean_env(), timeout=timeout)


def test_help_and_unknown_command():
    assert _run("--help").returncode == 0
    p = _run("frobnicate")
    assert p.returncode == 2 and "usage: sm12x" in p.stdout


def test_console_script_installed():
    assert shutil.which("sm12x"), "pip install -e . must install the sm12x console script"


def test_demo_reports_every_format():
    p = _run("demo", "--kernels-only", "--no-budget", "--tokens", "16", "--heads", "2")
    assert p.returncode == 0, p.stderr[-2000:]
    for fmt in ("nvfp4", "fp8_e4m3"):
        assert fmt in p.stdout
    assert "decode attention" in p.stdout
    # the NVFP4 pool holds 3.56x the tokens of bf16 at head_dim 128
    assert "capacity x3.56 vs bf16" in p.stdout


def test_demo_budget_sample_compiles_each_family_with_progress():
    """The demo's budget part: a handful of real sm_120 compiles with a line each (the whole table
    is `sm12x budget`), so a newcomer's demo ends in minutes, not half an hour."""
    p = subprocess.run([sys.executable, "-m", "sglang_sm12x.tools.demo", "--budget-sample"], capture_output=True,
                       text=True, env=clean_env(), timeout=900)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    lines = [ln for ln in p.stdout.splitlines() if ln.strip().startswith("[")]
    assert len(lines) == 4 and all("fits" in ln and "of 101,376" in ln for ln in lines), p.stdout
