"""SGLang's hybrid-model Triton kernels (Gated DeltaNet, Mamba-2) kept within SM120 / SM121's
budget: 101,376 B of shared memory a block and no register spills.

``benchmark/aot_sglang_hybrid.py`` compiles every launch a Qwen3-Next- and a Nemotron-H-shaped
forward makes, at the choices SGLang makes on these cards, for ``sm_120`` and ``sm_121``, and
writes what does not fit to ``hybrid_tiles.json`` beside this file:

* ``drop``: autotune configs that overflow or spill; on an SM12x card they are removed from the
  kernel's autotune list before its first launch (the autotuner would otherwise compile and time
  them, and a spilling one can win on a short run);
* ``relaunch``: kernels SGLang launches with one fixed configuration that spills there; the
  plugin launches them with the configuration the same compile proved to fit without spills.

Nothing changes on other cards. The hooks wrap the ops' entry points
(``chunk_gated_delta_rule``, ``mamba_chunk_scan_combined``), so the table is applied once, at
the first hybrid forward of the process.
"""
from __future__ import annotations

import importlib
import json
import logging
from pathlib import Path

logger = logging.getLogger(__name__)

TABLE = Path(__file__).with_name("hybrid_tiles.json")
ENTRY_POINTS = (
    "sglang.kernels.ops.attention.fla.chunk.chunk_gated_delta_rule",
    "sglang.kernels.ops.mamba.triton_ops.ssd_combined.mamba_chunk_scan_combined",
)
_applied: dict = {}


def config_key(cfg: dict) -> str:
    """One autotune config (its kwargs with num_warps / num_stages) as a stable string."""
    keep = {k: v for k, v in cfg.items() if k not in ("num_ctas", "maxnreg", "num_buffers_warp_spec",
                                                       "num_consumer_groups", "reg_dec_producer",
                                                       "reg_inc_consumer", "pre_hook", "ir_override")
            and v is not None}
    return json.dumps(keep, sort_keys=True, default=str)


def load_table(path: Path = TABLE) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def _kernel_object(name: str):
    mod, attr = name.rsplit(".", 1)
    return importlib.import_module(mod), attr


class _Relaunch:
    """``kernel[grid](...)`` with some launch arguments replaced (constexpr tiles, warps, stages)."""

    def __init__(self, kernel, overrides: dict):
        self.kernel, self.overrides = kernel, dict(overrides)

    def __getitem__(self, grid):
        launch = self.kernel[grid]
        return lambda *args, **kwargs: launch(*args, **{**kwargs, **self.overrides})

    def __getattr__(self, name):
        return getattr(self.kernel, name)


def apply(arch: int, table: dict | None = None) -> list[str]:
    """Apply the table's fixes for ``arch`` (idempotent); returns what was changed."""
    if arch in _applied:
        return _applied[arch]
    table = load_table() if table is None else table
    done = []
    for name, fix in table.get(str(arch), {}).items():
        try:
            mod, attr = _kernel_object(name)
        except ImportError:                 # a kernel this SGLang release does not have
            continue
        kernel = getattr(mod, attr, None)
        if kernel is None:
            continue
        if fix.get("drop") and hasattr(kernel, "configs"):
            drop = set(fix["drop"])
            kept = [c for c in kernel.configs if config_key(dict(c.all_kwargs())) not in drop]
            if kept and len(kept) < len(kernel.configs):
                done.append(f"{name}: {len(kernel.configs) - len(kept)} of {len(kernel.configs)} autotune configs "
                            "dropped (overflow or spills)")
                kernel.configs = kept
        if fix.get("relaunch") and not isinstance(kernel, _Relaunch):
            setattr(mod, attr, _Relaunch(kernel, fix["relaunch"]))
            done.append(f"{name}: launched with {fix['relaunch']}")
    _applied[arch] = done
    for line in done:
        logger.info("sglang-sm12x: sm_%d: %s", arch, line)
    return done


def entry_hook(original, *args, **kwargs):
    """AROUND the hybrid ops' entry points: on an SM12x card, apply the table once."""
    from .moe_runner import sm12x_arch

    arch = sm12x_arch()
    if arch is not None:
        apply(arch)
    return original(*args, **kwargs)


def register(rel: str) -> None:
    from sglang.srt.plugins.hook_registry import HookRegistry, HookType

    from ._hooks import _register_once

    for target in ENTRY_POINTS:
        def hook(original, *args, **kwargs):
            return entry_hook(original, *args, **kwargs)
        hook.__name__ = "hybrid_tiles_" + target.rsplit(".", 1)[-1]
        _register_once(HookRegistry, HookType, target, hook)
