"""The SGLang releases this project supports, and how a version string maps to one (no sglang import).
Shared by the plugin's version gate, ``sm12x patch`` and ``sm12x doctor``."""
from __future__ import annotations

import re

SUPPORTED = ("0.5.23", "0.5.17")


def release(v: str) -> str:
    """'0.5.23.post1' / '0.5.23rc0' / '0.5.23+cu130' -> '0.5.23'."""
    return ".".join(re.match(r"\d*", part).group(0) or "0" for part in v.split("+")[0].split(".")[:3])
