"""ModelOpt NVFP4 checkpoints (``modelopt_fp4``) on this project's W4A16 kernels.

With ``--moe-runner-backend sm12x``, the layers SGLang's ``ModelOptFp4Config`` would give its own
NVFP4 methods (FlashInfer CUTLASS / TRT-LLM on Blackwell, Marlin elsewhere) get these instead:

* MoE layers: :class:`Sm12xNvFp4MoEMethod` -- SGLang's own weights and loaders
  (``w13_weight`` ``(E, 2I, H / 2)`` packed E2M1, ``w13_weight_scale`` UE4M3 a 16,
  ``w13_weight_scale_2`` per expert and half, the same for ``w2``), kept in ModelOpt's linear
  layout after loading and run by :func:`sgl_kernel_sm12x.moe.fused_moe.fused_moe` with
  ``dtype="nvfp4_w4a16"``;
* dense linear layers: :class:`Sm12xNvFp4LinearMethod` -- :func:`~sgl_kernel_sm12x.moe.fused_moe.nvfp4_linear`.

``SGLANG_SM12X_NVFP4_W4A4=1`` (SM120 / SM121 only): MoE layers quantize their activations to
NVFP4 with the checkpoint's ``input_scale`` and multiply on the block-scaled FP4 MMA (W4A4, as
ModelOpt calibrated it) instead of dequantizing the weights (W4A16, the default).

The checkpoint is detected from its ``quantization_config`` as SGLang detects it (no flag). Layers
the kernels cannot run (a non-SiLU or ungated expert MLP, expert biases, expert parallelism) stop
the server at load with the reason.
"""
from __future__ import annotations

import logging

import torch

logger = logging.getLogger(__name__)
LOG_LINE = "sm12x NVFP4 weights in use"
W4A4_ENV = "SGLANG_SM12X_NVFP4_W4A4"
_logged = set()


def _log_once(what: str) -> None:
    if what not in _logged:
        _logged.add(what)
        logger.info("%s: %s", LOG_LINE, what)


def runner_selected(rel: str) -> bool:
    """Whether this process serves with ``--moe-runner-backend sm12x``."""
    from . import moe_runner

    if rel == "0.5.17":
        return moe_runner._selected_0517
    from sglang.srt.layers.moe.utils import get_moe_runner_backend

    try:
        return getattr(get_moe_runner_backend(), "value", None) == moe_runner.BACKEND
    except Exception:       # not configured yet (no server in this process)
        return False


def w4a4_selected(device) -> bool:
    """``SGLANG_SM12X_NVFP4_W4A4=1``; refused (at load) where the block-scaled FP4 MMA is missing."""
    import os

    if os.environ.get(W4A4_ENV, "0") in ("", "0"):
        return False
    from sgl_kernel_sm12x import planner

    arch = planner.launch_arch(device)
    if arch not in (120, 121):
        raise NotImplementedError(f"{W4A4_ENV}=1 needs the block-scaled FP4 MMA of sm_120 / sm_121; this GPU "
                                  f"plans for sm_{arch} (unset it: NVFP4 weights then run W4A16)")
    return True


def _refuse(layer, runner_config) -> None:
    """What the W4A16 MoE kernel cannot run, refused when the weights are processed (at load)."""
    why = None
    if getattr(runner_config, "activation", "silu") != "silu" or not getattr(runner_config, "is_gated", True):
        why = f"activation {getattr(runner_config, 'activation', None)!r} (gated SiLU only)"
    elif any(getattr(layer, n, None) is not None for n in ("w13_bias", "w2_bias")):
        why = "expert biases"
    elif getattr(layer, "num_experts", None) not in (None, getattr(layer, "num_local_experts", None)):
        why = "expert parallelism"
    if why:
        raise NotImplementedError(f"--moe-runner-backend sm12x: NVFP4 MoE weights with {why} are not supported; "
                                  "use another --moe-runner-backend for this checkpoint")


def make_moe_method_class():
    from sglang.srt.layers.quantization.modelopt_quant import ModelOptNvFp4FusedMoEMethod as Base

    class Sm12xNvFp4MoEMethod(Base):
        """SGLang's NVFP4 MoE weights (its ``create_weights`` and loaders) on this project's kernel."""

        def __init__(self, quant_config):
            # SGLang's __init__ picks a FlashInfer / Marlin path and refuses GPUs without one; this
            # method needs neither: only what create_weights reads is set
            self.quant_config = quant_config
            self._lora_marlin = False
            self.enable_flashinfer_trtllm_moe = False
            self.use_flashinfer_trtllm_weight_layout = False
            self.moe_runner_config = None
            self.w4a4 = False

        @property
        def enable_flashinfer_cutlass_moe(self) -> bool:
            return False

        @property
        def enable_flashinfer_cutedsl_moe(self) -> bool:
            return False

        def process_weights_after_loading(self, layer) -> None:
            if getattr(layer, "inference_moe_w13_interleaved", False) and not getattr(layer, "_w13_deinterleaved",
                                                                                      False):
                from sglang.srt.layers.quantization import modelopt_quant as mq
                layer.w13_weight.data = mq.deinterleave_w13(layer.w13_weight.data, up_first=False)
                layer.w13_weight_scale.data = mq.deinterleave_w13(layer.w13_weight_scale.data, up_first=False)
                layer._w13_deinterleaved = True
            _refuse(layer, getattr(layer, "moe_runner_config", None))
            for name in ("w13_blockscale_swizzled", "w2_blockscale_swizzled"):   # CUTLASS's copies: unused
                if getattr(layer, name, None) is not None:
                    delattr(layer, name)
                    setattr(layer, name, None)
            e = layer.w13_weight.shape[0]
            # gate's and up's weight_scale_2 (or one shared): (E, 2) / (E, 1); w2's: (E,)
            layer.sm12x_w13_global = layer.w13_weight_scale_2.detach().float().reshape(e, -1).contiguous()
            layer.sm12x_w2_global = layer.w2_weight_scale_2.detach().float().reshape(e).contiguous()
            self.w4a4 = w4a4_selected(layer.w13_weight.device)
            if self.w4a4:       # the activations' global scales: one a GEMM (SGLang takes the max too)
                layer.sm12x_a1_global = layer.w13_input_scale.detach().float().max().reshape(1)
                layer.sm12x_a2_global = layer.w2_input_scale.detach().float().max().reshape(1)

        def create_moe_runner(self, layer, moe_runner_config):
            self.moe_runner_config = moe_runner_config
            _refuse(layer, moe_runner_config)
            _log_once("MoE")

        def apply(self, layer, dispatch_output):
            from sglang.srt.layers.moe.token_dispatcher.standard import StandardCombineInput

            from sgl_kernel_sm12x.moe.fused_moe import fused_moe

            topk = dispatch_output.topk_output
            kw = dict(a1_global=layer.sm12x_a1_global, a2_global=layer.sm12x_a2_global) if self.w4a4 else {}
            out = fused_moe(dispatch_output.hidden_states, layer.w13_weight, layer.w2_weight, topk.topk_weights,
                            topk.topk_ids, dtype="nvfp4_w4a4" if self.w4a4 else "nvfp4_w4a16",
                            w1_scale=layer.w13_weight_scale, w2_scale=layer.w2_weight_scale,
                            w1_global=layer.sm12x_w13_global, w2_global=layer.sm12x_w2_global, **kw)
            factor = getattr(self.moe_runner_config, "routed_scaling_factor", None)
            if factor is not None and factor != 1.0:
                out = out * factor
            return StandardCombineInput(hidden_states=out)

    return Sm12xNvFp4MoEMethod


def make_linear_method_class():
    from sglang.srt.layers.quantization.modelopt_quant import ModelOptFp4LinearMethod as Base

    class Sm12xNvFp4LinearMethod(Base):
        """SGLang's NVFP4 linear weights (its ``create_weights``), kept in ModelOpt's layout and
        multiplied by :func:`nvfp4_linear` (W4A16)."""

        def __init__(self, quant_config):
            self.quant_config = quant_config
            self.quant_mode = "w4a16"       # activations stay 16-bit (SGLang's FP4 GEMM runner is not used)

        def process_weights_after_loading(self, layer) -> None:
            g = layer.weight_scale_2.detach().float()
            if g.numel() > 1 and not torch.allclose(g, g.max().expand_as(g)):
                # fused projections (qkv, gate_up) whose shards were quantized with their own
                # weight_scale_2: one kernel scale would mis-scale them
                raise NotImplementedError(
                    f"NVFP4 linear layer with per-shard weight_scale_2 {g.flatten().tolist()}: the fused shards must "
                    "share one (ModelOpt exports them so; sm12x nvfp4-checkpoint writes them so)")
            layer.sm12x_global = g.max().reshape(1)
            _log_once("linear")

        def apply(self, layer, x, bias=None):
            from sgl_kernel_sm12x.moe.fused_moe import nvfp4_linear

            shape = x.shape
            y = nvfp4_linear(x.reshape(-1, shape[-1]), layer.weight, layer.weight_scale, layer.sm12x_global)
            if bias is not None:
                y = y + bias
            return y.reshape(*shape[:-1], y.shape[-1])

    return Sm12xNvFp4LinearMethod


_classes: dict = {}


def quant_method_hook(rel: str):
    """AROUND ``ModelOptFp4Config.get_quant_method``: with the sm12x runner, serialized NVFP4 MoE and
    linear layers that are not excluded get this project's methods; everything else is SGLang's."""
    def around(original, self, layer, prefix, *args, **kwargs):
        if not getattr(self, "is_checkpoint_nvfp4_serialized", False) or not runner_selected(rel):
            return original(self, layer, prefix, *args, **kwargs)
        from sglang.srt.layers.linear import LinearBase
        from sglang.srt.layers.moe.fused_moe_triton import FusedMoE

        excluded = getattr(self, "is_layer_excluded", lambda p: False)(prefix)
        if isinstance(layer, FusedMoE) and not excluded:
            if "moe" not in _classes:
                _classes["moe"] = make_moe_method_class()
            return _classes["moe"](self)
        if isinstance(layer, LinearBase) and not excluded:
            if "linear" not in _classes:
                _classes["linear"] = make_linear_method_class()
            return _classes["linear"](self)
        return original(self, layer, prefix, *args, **kwargs)
    around.__name__ = "nvfp4_quant_method"
    return around


def register(rel: str) -> None:
    from sglang.srt.plugins.hook_registry import HookRegistry, HookType

    from ._hooks import _register_once

    _register_once(HookRegistry, HookType,
                   "sglang.srt.layers.quantization.modelopt_quant.ModelOptFp4Config.get_quant_method",
                   quant_method_hook(rel))
