"""``sm12x patch status|check|apply|revert``: version-keyed SGLang patches, applied with GNU patch.

Each supported SGLang release has ``patches/sglang-<version>/`` with a ``series`` file (patch order),
the unified diffs, and ``checksums.json`` (SHA-256 of every target file as released and as patched).

* ``status``  each patch: applied / not applied / conflicting (naming the files that differ);
* ``check``   status, plus a ``patch --dry-run`` of what ``apply`` would do; exit 1 on a conflict;
* ``apply``   all pending patches or nothing: they are applied to copies in a staging directory,
              the results checked against ``checksums.json``, originals backed up next to the
              tree (``sglang/.sm12x-patches/``) with a manifest, then the files are replaced. A
              second ``apply`` reports "already applied" and changes nothing. A target file that
              matches neither its released nor its patched checksum is refused, named, untouched;
* ``revert``  restores the backed-up originals byte for byte (checked against ``checksums.json``).

``--sglang-dir DIR``: the folder that contains the ``sglang/`` package (site-packages, or an
unpacked wheel); default: where ``import sglang`` would load it from (SGLang is not imported).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from ..versions import release

STATE_DIR = ".sm12x-patches"


class PatchError(RuntimeError):
    pass


def patches_root() -> Path:
    """The version-keyed patch folders: the installed package data (``sglang_sm12x.patches``) or,
    in a source checkout, the repository's ``patches/``."""
    here = Path(__file__).resolve().parent
    cands = [here.parent / "patches", here.parents[2] / "patches"]
    try:
        from importlib.resources import files
        cands.insert(0, Path(str(files("sglang_sm12x.patches"))))
    except (ImportError, ModuleNotFoundError, TypeError):
        pass
    for cand in cands:
        if (cand / "README.md").exists() or any(cand.glob("sglang-*/series")):
            return cand
    raise PatchError("the patches/ folder is missing from this installation")


def available_versions() -> list[str]:
    return sorted(p.name.split("-", 1)[1] for p in patches_root().glob("sglang-*") if (p / "series").exists())


def find_sglang_dir(sglang_dir: str | None) -> Path:
    if sglang_dir:
        d = Path(sglang_dir).resolve()
        if not (d / "sglang").is_dir():
            raise PatchError(f"--sglang-dir {d}: no sglang/ package in it (give the folder that contains sglang/, "
                             "e.g. site-packages)")
        return d
    import importlib.util

    spec = importlib.util.find_spec("sglang")
    if spec is None or not spec.origin:
        raise PatchError("SGLang is not installed in this Python; pass --sglang-dir DIR")
    return Path(spec.origin).resolve().parent.parent


def sglang_version(d: Path) -> str:
    for name in ("_version.py", "version.py"):
        f = d / "sglang" / name
        if f.exists():
            m = re.search(r"__version__\s*=\s*(?:version\s*=\s*)?['\"]([^'\"]+)['\"]", f.read_text())
            if m:
                return m.group(1)
    for meta in sorted(d.glob("sglang-*.dist-info/METADATA")):
        m = re.search(r"^Version:\s*(\S+)", meta.read_text(), re.M)
        if m:
            return m.group(1)
    raise PatchError(f"cannot read the SGLang version under {d / 'sglang'}")


def _sha(p: Path) -> str | None:
    return hashlib.sha256(p.read_bytes()).hexdigest() if p.exists() else None


def _patch_files(text: str) -> list[str]:
    files = []
    for m in re.finditer(r"^\+\+\+ (\S+)", text, re.M):
        rel = m.group(1)
        rel = rel[2:] if rel.startswith("b/") else rel
        files.append(rel)
    return files


@dataclass
class Patch:
    name: str
    path: Path
    files: list[str]
    state: str = ""                      # applied | not applied | conflicting
    detail: list[str] = field(default_factory=list)


@dataclass
class Series:
    version: str
    tree: Path
    folder: Path
    patches: list[Patch]
    checksums: dict

    @property
    def state_dir(self) -> Path:
        return self.tree / "sglang" / STATE_DIR


def load_series(tree: Path) -> Series:
    v = sglang_version(tree)
    rel = release(v)
    folder = patches_root() / f"sglang-{rel}"
    if not (folder / "series").exists():
        raise PatchError(f"no patches for SGLang {v}; patches exist for: {', '.join(available_versions())}")
    checksums = json.loads((folder / "checksums.json").read_text())
    patches, seen = [], set()
    for line in (folder / "series").read_text().splitlines():
        name = line.split("#", 1)[0].strip()
        if not name:
            continue
        path = folder / name
        files = _patch_files(path.read_text())
        for f in files:
            if f in seen:
                raise PatchError(f"{folder}/series: {f} is changed by two patches (the series must touch each file once)")
            if f not in checksums:
                raise PatchError(f"{folder}/checksums.json has no entry for {f}")
            seen.add(f)
        patches.append(Patch(name, path, files))
    s = Series(rel, tree, folder, patches, checksums)
    _classify(s)
    return s


def _classify(s: Series) -> None:
    manifest_path = s.state_dir / "manifest.json"
    patched_here = json.loads(manifest_path.read_text()).get("files", {}) if manifest_path.exists() else {}
    for p in s.patches:
        states = {}
        p.detail = []
        for f in p.files:
            h = _sha(s.tree / f)
            want = s.checksums[f]
            if h == want["patched"]:
                states[f] = "patched"
            elif h == want["original"]:
                states[f] = "original"
            else:
                states[f] = "differs"
                if not h:
                    p.detail.append(f"{f} is missing")
                elif f in patched_here:     # `apply` wrote it, then it was edited
                    p.detail.append(f"{f} differs from the file {patched_here[f].get('patch', p.name)} wrote "
                                    f"(edited after `sm12x patch apply`)")
                else:
                    p.detail.append(f"{f} differs from SGLang {s.version}'s released file")
        if all(v == "patched" for v in states.values()):
            p.state = "applied"
        elif all(v == "original" for v in states.values()):
            p.state = "not applied"
        else:
            p.state = "conflicting"
            p.detail += [f"{f} is already patched" for f, v in states.items() if v == "patched"]


def _run_patch(args: list[str], cwd: Path, patch_file: Path) -> subprocess.CompletedProcess:
    exe = shutil.which("patch")
    if exe is None:
        raise PatchError("GNU patch is not installed (apt-get install patch)")
    direction = [] if "-R" in args else ["--forward"]
    return subprocess.run([exe, "-p1", "--batch", *direction, "--no-backup-if-mismatch", "-r", "-", *args,
                           "-d", str(cwd), "-i", str(patch_file)], capture_output=True, text=True)


def _stage(s: Series, pending: list[Patch], reverse: bool = False) -> Path:
    """Copy the targets of ``pending`` into a staging tree and apply (or reverse) the patches there."""
    stage = Path(tempfile.mkdtemp(prefix="sm12x-patch-"))
    for p in pending:
        for f in p.files:
            (stage / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(s.tree / f, stage / f)
    for p in (reversed(pending) if reverse else pending):
        r = _run_patch(["-R"] if reverse else [], stage, p.path)
        if r.returncode != 0:
            shutil.rmtree(stage, ignore_errors=True)
            raise PatchError(f"{p.name} does not apply cleanly:\n{(r.stdout + r.stderr).strip()}")
        key = "original" if reverse else "patched"
        for f in p.files:
            if _sha(stage / f) != s.checksums[f][key]:
                shutil.rmtree(stage, ignore_errors=True)
                raise PatchError(f"{p.name}: {f} does not match its expected {key} checksum after patching")
    return stage


def _replace(src: Path, dst: Path) -> None:
    tmp = dst.with_name(dst.name + ".sm12x-tmp")
    shutil.copy2(src, tmp)
    os.replace(tmp, dst)


def _refuse_conflicts(s: Series, out) -> bool:
    """Report every conflicting patch; True when there is one (apply and revert then change nothing)."""
    bad = [p for p in s.patches if p.state == "conflicting"]
    for p in bad:
        out(f"refusing: {p.name} conflicts: " + "; ".join(p.detail))
    if bad:
        out("nothing was changed")
    return bool(bad)


def apply(s: Series, dry_run: bool = False, out=print) -> int:
    if _refuse_conflicts(s, out):
        return 1
    pending = [p for p in s.patches if p.state == "not applied"]
    if not pending:
        out(f"already applied: all {len(s.patches)} patches for SGLang {s.version} in {s.tree}; nothing changed")
        return 0
    stage = _stage(s, pending)
    try:
        if dry_run:
            for p in pending:
                out(f"would apply {p.name}: {', '.join(p.files)}")
            return 0
        backup = s.state_dir / "backup"
        manifest_path = s.state_dir / "manifest.json"
        manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {"version": s.version,
                                                                                         "files": {}}
        for p in pending:
            for f in p.files:
                (backup / f).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(s.tree / f, backup / f)
                manifest["files"][f] = {"patch": p.name, **s.checksums[f]}
        s.state_dir.mkdir(parents=True, exist_ok=True)
        manifest_path.write_text(json.dumps(manifest, indent=1))
        done = []
        try:
            for p in pending:
                for f in p.files:
                    _replace(stage / f, s.tree / f)
                    done.append(f)
        except OSError as e:                       # put back what was already replaced
            for f in done:
                _replace(backup / f, s.tree / f)
            raise PatchError(f"could not write {s.tree}: {e}; restored the originals") from e
        for p in pending:
            out(f"applied {p.name}: {', '.join(p.files)}")
        return 0
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def revert(s: Series, dry_run: bool = False, out=print) -> int:
    if _refuse_conflicts(s, out):
        return 1
    applied = [p for p in s.patches if p.state == "applied"]
    if not applied:
        out(f"nothing to revert: no patch for SGLang {s.version} is applied in {s.tree}")
        return 0
    backup = s.state_dir / "backup"
    sources = {}
    stage = None
    for p in applied:
        for f in p.files:
            if _sha(backup / f) == s.checksums[f]["original"]:
                sources[f] = backup / f
    missing = [p for p in applied if any(f not in sources for f in p.files)]
    if missing:                                   # no usable backup: reverse the diff instead
        stage = _stage(s, missing, reverse=True)
        for p in missing:
            for f in p.files:
                sources[f] = stage / f
    try:
        if dry_run:
            for p in applied:
                out(f"would revert {p.name}: {', '.join(p.files)}")
            return 0
        for p in applied:
            for f in p.files:
                _replace(sources[f], s.tree / f)
            out(f"reverted {p.name}: {', '.join(p.files)}")
        shutil.rmtree(s.state_dir, ignore_errors=True)
        return 0
    finally:
        if stage is not None:
            shutil.rmtree(stage, ignore_errors=True)


def status(s: Series, out=print) -> int:
    out(f"SGLang {s.version} at {s.tree} -- patches {s.folder}")
    for p in s.patches:
        line = f"  {p.state:<12} {p.name}"
        if p.detail:
            line += "  (" + "; ".join(p.detail) + ")"
        out(line)
    return 0


def check(s: Series, out=print) -> int:
    status(s, out)
    if any(p.state == "conflicting" for p in s.patches):
        out("check: conflicts; apply would refuse")
        return 1
    pending = [p for p in s.patches if p.state == "not applied"]
    if pending:
        shutil.rmtree(_stage(s, pending), ignore_errors=True)
        out(f"check: {len(pending)} patch(es) apply cleanly")
    else:
        out("check: all patches applied")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="sm12x patch", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("action", choices=["status", "check", "apply", "revert"])
    ap.add_argument("--sglang-dir", default=None, help="folder containing the sglang/ package")
    ap.add_argument("--dry-run", action="store_true", help="say what apply/revert would do; change nothing")
    a = ap.parse_args(argv)
    try:
        s = load_series(find_sglang_dir(a.sglang_dir))
        if a.action == "status":
            return status(s)
        if a.action == "check":
            return check(s)
        return (apply if a.action == "apply" else revert)(s, dry_run=a.dry_run)
    except PatchError as e:
        print(f"sm12x patch: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
