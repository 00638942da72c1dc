"""SGLang plugin for sgl-kernel-sm12x (entry point group ``sglang.srt.plugins``).

``register()`` runs inside every SGLang process (``load_plugins()``) before the server arguments
are parsed. It

1. checks the installed SGLang against the supported releases (0.5.23, 0.5.17) and refuses any
   other with the supported list and the patch tool named;
2. adds ``sm12x`` to ``--attention-backend`` and registers the backend factory;
3. declares ``sm12x`` as reading NVFP4 KV natively in prefill and decode, so SGLang allocates no
   FP8 dequant workspace and keeps the linear (slot, head, D/16) scale layout;
4. lets ``--kv-cache-dtype nvfp4`` resolve with ``--attention-backend sm12x`` on SM120/121 and also
   on SM100/90/89/80. Every other backend keeps SGLang's own checks;
5. registers ``--moe-runner-backend sm12x`` (0.5.23) and, on SM120/121, clamps every config of
   SGLang's own Triton fused-MoE to the shared-memory budget;
6. with ``--moe-runner-backend sm12x``, runs ModelOpt NVFP4 checkpoints' MoE and linear layers on
   this project's W4A16 kernels (``nvfp4_weights``);
7. on SM120/121, keeps SGLang's Gated DeltaNet / Mamba-2 kernels within the budget
   (``hybrid_tiles``: autotune configs that overflow or spill dropped, a spilling launch relaunched).

This is the only package of the project that imports sglang, lazily, inside these functions.
"""
from __future__ import annotations

import logging

BACKEND = "sm12x"
__all__ = ["register", "BACKEND"]

logger = logging.getLogger(__name__)
_registered = False


def register() -> None:
    """Entry-point hook called by SGLang's ``load_plugins()`` (idempotent)."""
    global _registered
    if _registered:
        return
    from . import _compat, _hooks, moe_runner

    rel = _compat.check()
    _hooks.add_backend_choice(rel)
    _hooks.register_backend_factory()
    _hooks.register_kv_access(rel)
    _hooks.register_argument_hooks(rel)
    try:        # the attention backend must not depend on the MoE extension points
        moe_runner.register(rel)
    except Exception:  # noqa: BLE001 -- logged; --moe-runner-backend sm12x is then unavailable
        logger.exception("sglang-sm12x: MoE runner registration failed; attention backend unaffected")
    try:
        from . import nvfp4_weights
        nvfp4_weights.register(rel)
    except Exception:  # noqa: BLE001 -- logged; SGLang's own NVFP4 weight paths then apply
        logger.exception("sglang-sm12x: NVFP4 weight methods not registered")
    try:
        from . import hybrid_tiles
        hybrid_tiles.register(rel)
    except Exception:  # noqa: BLE001 -- logged; SGLang's own hybrid-kernel choices then apply
        logger.exception("sglang-sm12x: hybrid-kernel tile table not registered")
    _registered = True
    logger.info("sglang-sm12x: attention backend %r registered (SGLang %s)", BACKEND, rel)
