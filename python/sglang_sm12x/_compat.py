"""Which SGLang is installed, and where the plugin reaches into it for that version.

Supported: 0.5.23 (resolution-hook pipeline, backend-selected KV accesses) and 0.5.17 (the gate is
the method ``ServerArgs._handle_kv4_compatibility``; the NVFP4 method sizes its FP8 dequant
workspace from every registered access, not only the selected ones). Anything else is refused at
plugin load with the supported list and the patch tool named.
"""
from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from .versions import SUPPORTED, release  # noqa: F401 -- one definition


class UnsupportedSGLang(RuntimeError):
    pass


def sglang_version() -> str:
    try:
        return version("sglang")
    except PackageNotFoundError:  # a source checkout on sys.path
        import sglang

        return getattr(sglang, "__version__", "unknown")


def check(v: str | None = None) -> str:
    """Return the supported release matching the installed SGLang, or raise with what to do."""
    v = sglang_version() if v is None else v
    rel = release(v)
    if rel not in SUPPORTED:
        raise UnsupportedSGLang(
            f"sglang-sm12x supports SGLang {', '.join(SUPPORTED)}; found {v}. Install one of those "
            f"(pip install 'sglang=={SUPPORTED[0]}'). The version-keyed SGLang patches are managed with "
            f"`sm12x patch status|apply|revert`; they exist only for the supported versions.")
    return rel
