"""``--moe-runner-backend sm12x``: SGLang's MoE runner over this project's fused-MoE kernels, and
the SM12x shared-memory clamp of SGLang's own Triton MoE configs.

SGLang 0.5.23 lets an extension register a runner core (``register_moe_runner_core``); the
unquantized and FP8 MoE methods build their runner for the Triton backend, so the plugin swaps in
``sm12x`` after ``create_moe_runner`` when that backend is selected. SGLang 0.5.17 has no runner
registry: the flag is added to the parser's choices, SGLang configures its Triton MoE path, and the
Triton runner each layer builds gets this project's core. Their quant info
(``TritonMoeQuantInfo``: w13/w2 weights, fp8 flags, scales, block shape) is what the core reads.

Independently of the flag, on SM120/121 every config SGLang's Triton fused-MoE picks (default,
tuned file or override) passes through :func:`sglang_sm12x.tiles.clamp_moe_config`, so MoE
models stop overflowing the 101,376 B of shared memory there without flags.
"""
from __future__ import annotations

import logging

import torch

from ._hooks import _register_once

BACKEND = "sm12x"
LOG_LINE = "sm12x MoE runner in use"     # logged once per process when a layer gets the sm12x runner
logger = logging.getLogger(__name__)
_logged = False


def _log_in_use(dtype_note: str) -> None:
    global _logged
    if not _logged:
        _logged = True
        logger.info("%s (%s): SGLang's MoE layers run this project's fused-MoE kernels", LOG_LINE, dtype_note)


def supported(quant_info, runner_config) -> str | None:
    """Why the sm12x runner cannot serve this layer, or None."""
    if getattr(runner_config, "activation", "silu") != "silu" or not getattr(runner_config, "is_gated", True):
        return f"activation {runner_config.activation!r} (gated SiLU only)"
    if getattr(runner_config, "apply_router_weight_on_input", False):
        return "apply_router_weight_on_input"
    if getattr(runner_config, "no_combine", False):
        return "no_combine"
    for flag in ("use_int8_w8a8", "use_int8_w8a16", "use_int4_w4a16", "use_mxfp8", "per_channel_quant",
                 "fuse_swiglu_interleaved"):
        if getattr(quant_info, flag, False):
            return flag
    if getattr(quant_info, "b13", None) is not None or getattr(quant_info, "b2", None) is not None:
        return "expert biases"
    ne, nl = getattr(runner_config, "num_experts", None), getattr(runner_config, "num_local_experts", None)
    if ne is not None and nl is not None and ne != nl:
        return "expert parallelism"
    for name in ("gemm1_alpha", "gemm1_clamp_limit", "swiglu_limit"):
        if getattr(runner_config, name, None) is not None:
            return name
    return None


def make_core_class(rel: str = "0.5.23"):
    """The runner core. 0.5.23: a registered ``DispatchMoeRunnerCore``. 0.5.17 has no registry, but its
    ``MoeRunner.run`` hands the dispatch output to any core with ``run_from_dispatch``; there the core
    is placed inside a Triton ``MoeRunner`` (see :func:`_register_runner_0517`)."""
    from sglang.srt.layers.moe.token_dispatcher.standard import StandardCombineInput

    from sgl_kernel_sm12x.moe.fused_moe import fused_moe

    if rel == "0.5.17":
        from sglang.srt.layers.moe.moe_runner.base import MoeRunnerCore as Base
        from sglang.srt.layers.moe.utils import MoeRunnerBackend

        def backend_value():
            return MoeRunnerBackend.TRITON
    else:
        from sglang.srt.layers.moe.moe_runner.base import DispatchMoeRunnerCore as Base
        from sglang.srt.layers.moe.utils import resolve_moe_runner_backend

        def backend_value():
            return resolve_moe_runner_backend(BACKEND)

    class Sm12xMoeRunnerCore(Base):
        @property
        def runner_backend(self):
            return backend_value()

        def run(self, runner_input, quant_info, running_state, hooks=None):   # 0.5.17's abstract method
            raise NotImplementedError("the sm12x MoE runner consumes the dispatch output (run_from_dispatch)")

        def run_from_dispatch(self, dispatch_output, quant_info, runner_config, hooks=None):
            why = supported(quant_info, runner_config)
            if why is not None:
                raise NotImplementedError(f"--moe-runner-backend {BACKEND} does not support {why}; "
                                          "use --moe-runner-backend triton for this model")
            if hooks is not None:
                raise NotImplementedError(f"--moe-runner-backend {BACKEND} does not support LoRA")
            x = dispatch_output.hidden_states
            topk = dispatch_output.topk_output
            dtype, w1s, w2s, block = None, None, None, None
            if getattr(quant_info, "use_fp8_w8a8", False):
                block = quant_info.block_shape
                dtype = "fp8_w8a8_block" if block else "fp8_w8a8"
                w1s, w2s = quant_info.w13_scale, quant_info.w2_scale
                if dtype == "fp8_w8a8":
                    e = quant_info.w13_weight.shape[0]
                    if w1s.numel() != e:        # per-shard (gate, up) scales: one per expert is needed
                        w1s = w1s.reshape(e, -1).amax(dim=1)
            out = fused_moe(x, quant_info.w13_weight, quant_info.w2_weight, topk.topk_weights, topk.topk_ids,
                            dtype=dtype, w1_scale=w1s, w2_scale=w2s, block_shape=block)
            factor = getattr(runner_config, "routed_scaling_factor", None)
            if factor is not None and factor != 1.0:
                out = out * factor
            return StandardCombineInput(hidden_states=out)

    return Sm12xMoeRunnerCore


# the MoE methods whose create_moe_runner builds SGLang's Triton runner (both versions)
_RUNNER_TARGETS = ("sglang.srt.layers.quantization.unquant.UnquantizedFusedMoEMethod.create_moe_runner",
                   "sglang.srt.layers.quantization.fp8.Fp8MoEMethod.create_moe_runner")


def register(rel: str) -> None:
    """Register the runner (SGLang 0.5.23 has the extension API; 0.5.17 does not) and the clamp."""
    if rel == "0.5.23":
        _register_runner()
    else:
        _register_runner_0517()
    _register_clamp_hook()


def _register_runner() -> None:
    from sglang.srt.arg_groups.choices import MOE_RUNNER_BACKEND_CHOICES, add_moe_runner_backend_choices
    from sglang.srt.layers.moe.moe_runner import runner as runner_mod
    from sglang.srt.plugins.hook_registry import HookRegistry, HookType

    if BACKEND not in MOE_RUNNER_BACKEND_CHOICES:
        add_moe_runner_backend_choices([BACKEND])
    if BACKEND not in runner_mod._CUSTOM_RUNNER_CORE_FACTORIES:
        core = make_core_class()
        runner_mod.register_moe_runner_core(BACKEND, core)

    def after_create(result, self, layer, moe_runner_config, *args, **kwargs):
        from sglang.srt.layers.moe.moe_runner.runner import MoeRunner
        from sglang.srt.layers.moe.utils import get_moe_runner_backend, resolve_moe_runner_backend

        if getattr(get_moe_runner_backend(), "value", None) == BACKEND:
            self.runner = MoeRunner(resolve_moe_runner_backend(BACKEND), moe_runner_config)
            _log_in_use(type(self).__name__)
        return result

    for target in _RUNNER_TARGETS:
        _register_once(HookRegistry, HookType, target, after_create, HookType.AFTER)


# 0.5.17: ``--moe-runner-backend sm12x`` is accepted by the parser; SGLang's own MoE flags see
# ``triton`` (its enum is closed), and this process remembers that the layers' runners are ours.
_selected_0517 = False


def initialize_moe_config_0517(original, server_args, *args, **kwargs):
    """Around ``initialize_moe_config`` (each scheduler process): record ``sm12x`` and let SGLang
    configure its Triton MoE path, which the runner hook below then swaps for ours."""
    global _selected_0517
    if getattr(server_args, "moe_runner_backend", None) != BACKEND:
        _selected_0517 = False
        return original(server_args, *args, **kwargs)
    _selected_0517 = True
    return original(_TritonView(server_args), *args, **kwargs)


class _TritonView:
    """Read-only view of resolved ServerArgs (0.5.17 refuses assignment after resolution) that
    reports ``triton`` where the MoE runner flags say ``sm12x``; ``initialize_moe_config`` only
    reads attributes."""

    def __init__(self, server_args):
        object.__setattr__(self, "_args", server_args)

    def __getattr__(self, name):
        value = getattr(self._args, name)
        # 0.5.17 copies --moe-runner-backend into speculative_moe_runner_backend when unset
        if name in ("moe_runner_backend", "speculative_moe_runner_backend") and value == BACKEND:
            return "triton"
        return value

    def __setattr__(self, name, value):
        raise AttributeError(f"read-only view of ServerArgs: cannot set {name}")


def after_create_0517(result, self, layer, moe_runner_config, *args, **kwargs):
    """After ``create_moe_runner``: the Triton runner SGLang built gets this project's core."""
    runner = getattr(self, "runner", None)
    if not _selected_0517 or runner is None or not runner.runner_backend.is_triton():
        return result
    runner.runner_core = make_core_class("0.5.17")(moe_runner_config)
    runner.fused_func = None            # MoeRunner.run prefers a fused func over the core
    _log_in_use(type(self).__name__)
    return result


def _register_runner_0517() -> None:
    from sglang.srt.plugins.hook_registry import HookRegistry, HookType
    from sglang.srt.server_args import MOE_RUNNER_BACKEND_CHOICES, add_moe_runner_backend_choices

    if BACKEND not in MOE_RUNNER_BACKEND_CHOICES:
        add_moe_runner_backend_choices([BACKEND])
    _register_once(HookRegistry, HookType, "sglang.srt.layers.moe.utils.initialize_moe_config",
                   initialize_moe_config_0517)
    for target in _RUNNER_TARGETS:
        _register_once(HookRegistry, HookType, target, after_create_0517, HookType.AFTER)


def sm12x_arch() -> int | None:
    if not torch.cuda.is_available():
        return None
    major, minor = torch.cuda.get_device_capability()
    return major * 10 + minor if major == 12 else None


def clamp_sglang_config(result, args, kwargs, arch=None):
    """Clamp what ``try_get_optimal_moe_config`` returned (a config, or (config, (down, max_m)))."""
    from .tiles import clamp_moe_config

    arch = sm12x_arch() if arch is None else arch
    if arch is None:
        return result
    names = ("w1_shape", "w2_shape", "top_k", "dtype", "M", "is_marlin", "block_shape")
    bound = dict(zip(names, args))
    bound.update(kwargs)
    dtype, block = bound.get("dtype"), bound.get("block_shape")

    def one(cfg):
        if cfg is None:
            return None
        out, reason = clamp_moe_config(arch, cfg, dtype, block)
        if reason:
            logger.warning(reason)
        return out

    if isinstance(result, tuple):
        cfg, (down, max_m) = result
        return one(cfg), (one(down), max_m)
    return one(result)


def _register_clamp_hook() -> None:
    from sglang.srt.plugins.hook_registry import HookRegistry, HookType

    target = "sglang.srt.layers.moe.moe_runner.triton_utils.fused_moe_triton_config.try_get_optimal_moe_config"

    def around(original, *args, **kwargs):
        return clamp_sglang_config(original(*args, **kwargs), args, kwargs)

    _register_once(HookRegistry, HookType, target, around)
