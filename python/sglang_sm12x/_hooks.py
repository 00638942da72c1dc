"""The registrations ``register()`` makes, one function per extension point.

Every hook changes behaviour only when both the prefill and the decode backend resolve to
``sm12x``; for any other configuration it calls SGLang's own step unchanged.
"""
from __future__ import annotations

import contextlib
import logging

from . import BACKEND

logger = logging.getLogger(__name__)

# SGLang's --kv-cache-dtype values this backend serves (SGLang resolves "auto" to the model dtype).
KV_CACHE_DTYPES = ("auto", "bf16", "bfloat16", "fp16", "float16", "fp8_e4m3", "nvfp4")


# ------------------------------------------------------------------------------------------------
# backend name and factory
# ------------------------------------------------------------------------------------------------

def add_backend_choice(rel: str) -> None:
    if rel == "0.5.17":
        from sglang.srt.server_args import ATTENTION_BACKEND_CHOICES, add_attention_backend_choices
    else:
        from sglang.srt.arg_groups.choices import ATTENTION_BACKEND_CHOICES, add_attention_backend_choices
    if BACKEND not in ATTENTION_BACKEND_CHOICES:
        add_attention_backend_choices([BACKEND])


def create_backend(model_runner):
    """Factory SGLang calls with its ``ModelRunner``."""
    from .backend import Sm12xAttnBackend

    return Sm12xAttnBackend(model_runner)


def register_backend_factory() -> None:
    from sglang.srt.layers.attention.attention_registry import ATTENTION_BACKENDS, register_attention_backend

    if ATTENTION_BACKENDS.get(BACKEND) is not create_backend:
        register_attention_backend(BACKEND)(create_backend)


# ------------------------------------------------------------------------------------------------
# NVFP4: read natively in both phases
# ------------------------------------------------------------------------------------------------

def register_kv_access(rel: str) -> None:
    """Add ``sm12x`` NATIVE_FP4 rules for prefill and decode to SGLang's access registry, so the
    NVFP4 method selects no dequant workspace for it (0.5.23 consults the selected rules)."""
    from sglang.srt.layers.quantization import fp4_kv_cache_quant_method as m

    rules = m.KV_CACHE_ATTENTION_ACCESS_REGISTRY.get("nvfp4", ())
    if any(BACKEND in r.backend_matcher.exact for r in rules):
        return
    matcher = m.KVCacheBackendMatcher(exact=frozenset({BACKEND}))
    ours = tuple(
        m.KVCacheAttentionAccess(phase, m.KVCacheAttentionAccessKind.NATIVE_FP4, matcher,
                                 storage_dtype=_storage_dtype(rules), attention_kv_dtype=None,
                                 scale_recipe="nvfp4")
        for phase in (m.KVCacheAttentionPhase.PREFILL, m.KVCacheAttentionPhase.DECODE))
    m.KV_CACHE_ATTENTION_ACCESS_REGISTRY["nvfp4"] = tuple(rules) + ours


def _storage_dtype(rules):
    import torch

    for r in rules:
        if r.storage_dtype is not None:
            return r.storage_dtype
    return torch.uint8


def uses_sm12x(prefill: str | None, decode: str | None) -> bool:
    return prefill == BACKEND and decode == BACKEND


def _backends_0523(server_args):
    from sglang.srt.arg_groups.overrides import attention_backends_of, resolved_view

    return attention_backends_of(resolved_view(server_args))


def _backends(server_args, rel):
    if rel == "0.5.17":
        return server_args.get_attention_backends()
    return _backends_0523(server_args)


def check_sm12x_kv(kv_cache_dtype, uses_mla: bool, unified_memory: bool = False) -> None:
    """What ``sm12x`` itself requires of the KV cache; raises ValueError naming the argument."""
    if uses_mla:
        raise ValueError(f"--attention-backend {BACKEND} serves MHA/GQA models; this model uses MLA. "
                         "Choose an MLA backend (e.g. triton or flashinfer).")
    if unified_memory:
        raise ValueError(f"--attention-backend {BACKEND} does not support --enable-unified-memory.")
    if isinstance(kv_cache_dtype, str) and kv_cache_dtype not in KV_CACHE_DTYPES:
        raise ValueError(f"--kv-cache-dtype {kv_cache_dtype!r} is not supported by --attention-backend "
                         f"{BACKEND}; supported: {list(KV_CACHE_DTYPES)}")


def register_argument_hooks(rel: str) -> None:
    if rel == "0.5.17":
        _register_0517()
    else:
        _register_0523()
    _register_quant_method_hook(rel)
    _register_swa_nvfp4_hooks(rel)
    _register_hybrid_wrapper_hook(rel)


# ------------------------------------------------------------------------------------------------
# per-model attention-backend allow-lists
# ------------------------------------------------------------------------------------------------

# Architectures whose SGLang adjustments assert a fixed list of attention backends, and whose
# attention sm12x serves (sinks and sliding-window pools: gpt-oss; chunked local layers: Llama-4).
ALLOW_LISTED = ("GptOssForCausalLM", "Llama4ForCausalLM", "Llama4ForConditionalGeneration")
_BACKEND_FIELDS = ("attention_backend", "prefill_attention_backend", "decode_attention_backend")
# the listed backend whose checks sm12x passes for these models (same features: sinks, windows)
_ALIAS = "triton"


class _AliasView:
    """A read-only server-args view that reports ``sm12x`` as ``_ALIAS`` in the backend fields."""

    def __init__(self, view):
        object.__setattr__(self, "_view", view)

    def __getattr__(self, name):
        value = getattr(self._view, name)
        return _ALIAS if name in _BACKEND_FIELDS and value == BACKEND else value


@contextlib.contextmanager
def _backend_seen_as_alias(module, name="resolved_view"):
    """While the model's adjustments run, ``module.<name>(server_args)`` returns an alias view (the
    adjustments only read it; nothing else of the step depends on the backend for these models)."""
    original = getattr(module, name)
    setattr(module, name, lambda *a, **k: _AliasView(original(*a, **k)))
    try:
        yield
    finally:
        setattr(module, name, original)


def _architecture(model_config) -> str | None:
    archs = getattr(getattr(model_config, "hf_config", None), "architectures", None) or [None]
    return archs[0]


def model_adjustments_0523(server_args, previous):
    """Resolution step ``handle_model_specific_adjustments`` (0.5.23): for the allow-listed
    architectures with sm12x in both phases, SGLang's backend assertion sees sm12x as a listed
    backend; every other model and backend runs the step unchanged."""
    from sglang.srt.arg_groups import model_hook
    from sglang.srt.arg_groups.overrides import model_config_of

    if not uses_sm12x(*_backends_0523(server_args)):
        return previous(server_args)
    try:
        arch = _architecture(model_config_of(server_args))
    except Exception:           # no model config to key on (an instance connector): SGLang decides
        return previous(server_args)
    if arch not in ALLOW_LISTED:
        return previous(server_args)
    with _backend_seen_as_alias(model_hook):
        return previous(server_args)


def model_adjustments_0517(original, self, *args, **kwargs):
    """AROUND ``ServerArgs._handle_model_specific_adjustments`` (0.5.17), as
    :func:`model_adjustments_0523`."""
    import sglang.srt.server_args as sa

    if not uses_sm12x(*self._resolved_attention_backends()):
        return original(self, *args, **kwargs)
    try:
        arch = _architecture(self.get_model_config())
    except Exception:
        return original(self, *args, **kwargs)
    if arch not in ALLOW_LISTED:
        return original(self, *args, **kwargs)
    with _backend_seen_as_alias(sa):
        return original(self, *args, **kwargs)


def _register_0523() -> None:
    from sglang.srt.arg_groups import resolution_hooks
    from sglang.srt.arg_groups.overrides import resolving_view, use_mla_backend

    def kv4_compatibility(server_args, previous):
        cfg = resolving_view(server_args)
        if cfg.kv_cache_dtype == "nvfp4" and uses_sm12x(*_backends_0523(server_args)):
            check_sm12x_kv(cfg.kv_cache_dtype, use_mla_backend(server_args),
                           bool(getattr(cfg, "enable_unified_memory", False)))
            return      # native NVFP4 on SM120/121 and on SM100/90/89/80: no Blackwell-only gate
        return previous(server_args)

    def nvfp4_prefill_dequant(server_args, previous):
        cfg = resolving_view(server_args)
        if cfg.kv_cache_dtype == "nvfp4" and (cfg.prefill_attention_backend or cfg.attention_backend) == BACKEND \
                and (cfg.decode_attention_backend or cfg.attention_backend) == BACKEND:
            want = cfg.prefill_kv_cache_dequant_dtype
            if want not in ("auto", "nvfp4"):
                raise ValueError(f"--prefill-kv-cache-dequant-dtype={want} does not apply to --attention-backend "
                                 f"{BACKEND}: it reads NVFP4 natively in prefill and decode (use 'auto').")
            return      # keep sm12x for both phases; no workspace dtype to pick
        return previous(server_args)

    _add_resolution_hook(resolution_hooks, "handle_kv4_compatibility", kv4_compatibility)
    _add_resolution_hook(resolution_hooks, "handle_nvfp4_prefill_kv_dequant_dtype", nvfp4_prefill_dequant)
    _add_resolution_hook(resolution_hooks, "handle_model_specific_adjustments", model_adjustments_0523)


def _add_resolution_hook(resolution_hooks, name, fn):
    fn.__sm12x__ = True
    if any(getattr(h, "__sm12x__", False) and h.__name__ == fn.__name__ for h in resolution_hooks._HOOKS.get(name, ())):
        return
    resolution_hooks.register_resolution_hook(name)(fn)


def kv4_compatibility_0517(original, self, *args, **kwargs):
    """AROUND ``ServerArgs._handle_kv4_compatibility`` (0.5.17): sm12x + nvfp4 passes on any CUDA arch."""
    if self.kv_cache_dtype == "nvfp4" and uses_sm12x(*self._resolved_attention_backends()):
        check_sm12x_kv(self.kv_cache_dtype, self.use_mla_backend())
        return None
    return original(self, *args, **kwargs)


def cell_size_0517(original, self, kvc, num_layers, *args, **kwargs):
    """AROUND ``DefaultPoolConfigurator._compute_cell_size`` (0.5.17): that version sizes every NVFP4
    pool with one shared FP8 dequant workspace (K and V, one byte per element) per token; sm12x
    allocates none, so the pool gets that memory back."""
    size = original(self, kvc, num_layers, *args, **kwargs)
    if getattr(kvc, "kv_cache_dtype_str", None) == "nvfp4" and not kvc.use_mla_backend \
            and uses_sm12x(*kvc.server_args.get_attention_backends()):
        from sglang.srt.runtime_context import get_parallel

        n = kvc.model_config.get_num_kv_heads(get_parallel().attn_tp_size)
        size -= n * kvc.model_config.head_dim * 2 * torch_element_size(kvc.kv_cache_dtype)
    return size


def _register_0517() -> None:
    from sglang.srt.plugins.hook_registry import HookRegistry, HookType

    _register_once(HookRegistry, HookType, "sglang.srt.server_args.ServerArgs._handle_kv4_compatibility",
                   kv4_compatibility_0517)
    _register_once(HookRegistry, HookType,
                   "sglang.srt.model_executor.pool_configurator.DefaultPoolConfigurator._compute_cell_size",
                   cell_size_0517)
    _register_once(HookRegistry, HookType, "sglang.srt.server_args.ServerArgs._handle_model_specific_adjustments",
                   model_adjustments_0517)


def torch_element_size(dtype) -> int:
    import torch

    return torch._utils._element_size(dtype)


def _register_quant_method_hook(rel: str) -> None:
    """The NVFP4 method built for an sm12x server: linear scales, no FP8 dequant workspace.

    0.5.17 sizes the workspace from every registered access, 0.5.23 on SM100 would pick the
    TRT-LLM native scale layout; both are corrected on the instance SGLang builds for this server.
    """
    from sglang.srt.plugins.hook_registry import HookRegistry, HookType

    def after(result, self, *args, **kwargs):
        if result is None or getattr(result, "name", None) != "nvfp4":
            return result
        if not uses_sm12x(*_backends(self.server_args, rel)):
            return result
        native_for_sm12x(result)
        return result

    _register_once(HookRegistry, HookType,
                   "sglang.srt.mem_cache.kv_cache_configurator.KVCacheConfigurator._build_fp4_quant_method", after,
                   HookType.AFTER)


def native_for_sm12x(method) -> None:
    """Make one ``NVFP4KVCacheMethod`` instance allocate what sm12x reads and nothing else."""
    method.use_trtllm_gen_native_scale_layout = False
    method.dequant_workspace_dtype = lambda: None
    method.needs_dequant_workspace = lambda: False
    method.needs_native_fp4_scales = lambda: False
    method.needs_linear_scale_buffer = lambda: True
    method.sm12x_native = True


def _register_once(HookRegistry, HookType, target, fn, kind=None):
    kind = HookType.AROUND if kind is None else kind
    fn.__sm12x__ = True
    if any(getattr(h, "__sm12x__", False) for _, h, _ in HookRegistry._hooks.get(target, ())):
        return
    HookRegistry.register(target, fn, kind)


# ------------------------------------------------------------------------------------------------
# NVFP4 in sliding-window pools (gpt-oss, Llama-4 multimodal)
# ------------------------------------------------------------------------------------------------

def nvfp4_bytes_per_token(heads: int, dims: int) -> int:
    """NVFP4 bytes of one token of one layer: ``heads x dims`` E2M1 codes (two a byte) and one
    UE4M3 block scale per 16 of them (``dims``: K's head_dim plus V's)."""
    return heads * dims // 2 + heads * dims // 16


def _kvc_uses_sm12x(kvc, rel: str) -> bool:
    server_args = getattr(kvc, "server_args", None)
    return server_args is not None and uses_sm12x(*_backends(server_args, rel))


def swa_pool_nvfp4(rel: str):
    """AROUND ``KVCacheConfigurator._build_hybrid_swa_kv_pool``: SGLang builds a sliding-window
    pool's two MHA sub-pools without the NVFP4 quantization method (torch cannot allocate the
    float4 buffers, so ``--kv-cache-dtype nvfp4`` stops any hybrid-SWA server at start-up). With
    sm12x, both sub-pools get the method SGLang builds for plain pools (one instance over the
    model's layer ids: per-tensor scales by layer id, linear block scales, no dequant workspace)."""
    def around(original, self, *args, **kwargs):
        if getattr(self, "kv_cache_dtype_str", None) != "nvfp4" or "mha_pool_class" not in kwargs \
                or not _kvc_uses_sm12x(self, rel):
            return original(self, *args, **kwargs)
        import functools

        method = self._build_fp4_quant_method(num_layers=self.layer_info.num_effective_layers)
        if method is None:
            return original(self, *args, **kwargs)
        kwargs["mha_pool_class"] = functools.partial(kwargs["mha_pool_class"], quant_method=method)
        return original(self, *args, **kwargs)
    around.__name__ = "swa_pool_nvfp4"
    return around


def swa_sizing_nvfp4(rel: str):
    """AROUND ``HybridSWAPoolConfigurator.__init__``: its bytes a token count one byte an element
    for ``float4_e2m1fn_x2`` (two elements a byte) and no block scales; with sm12x and NVFP4 the
    full and window layers' bytes a token are recomputed from the NVFP4 layout, so the two
    sub-pools get the tokens the memory holds (about 1.8x what the element count gave)."""
    def around(original, self, kvc, *args, **kwargs):
        original(self, kvc, *args, **kwargs)
        if getattr(kvc, "kv_cache_dtype_str", None) != "nvfp4" or not _kvc_uses_sm12x(kvc, rel):
            return
        from sglang.srt.runtime_context import get_parallel

        mc, tp = kvc.model_config, get_parallel().attn_tp_size
        full = nvfp4_bytes_per_token(mc.get_num_kv_heads(tp), mc.head_dim + mc.v_head_dim)
        swa = nvfp4_bytes_per_token(mc.get_swa_num_kv_heads(tp), mc.swa_head_dim + mc.swa_v_head_dim)
        if hasattr(self, "_recompute_cell_size"):          # 0.5.23: the cell size is derived on demand
            self._full_per_token, self._swa_per_token = full, swa
            self._recompute_cell_size()
        elif full * self._swa_per_token == swa * self._full_per_token:
            # 0.5.17 derives the cell size in __init__, linear in both; one ratio scales it
            ratio = full / self._full_per_token
            self._full_per_token, self._swa_per_token = full, swa
            self._cell_size = self._cell_size * ratio
        else:
            logger.info("sglang-sm12x: sliding-window pool sized by SGLang's element count (full and window "
                        "layers differ in shape)")
    around.__name__ = "swa_sizing_nvfp4"
    return around


def _register_swa_nvfp4_hooks(rel: str) -> None:
    from sglang.srt.plugins.hook_registry import HookRegistry, HookType

    _register_once(HookRegistry, HookType,
                   "sglang.srt.mem_cache.kv_cache_configurator.KVCacheConfigurator._build_hybrid_swa_kv_pool",
                   swa_pool_nvfp4(rel))
    _register_once(HookRegistry, HookType,
                   "sglang.srt.model_executor.pool_configurator.HybridSWAPoolConfigurator.__init__",
                   swa_sizing_nvfp4(rel))


# ------------------------------------------------------------------------------------------------
# hybrid linear-attention models (Qwen3-Next, Nemotron-H): sm12x as the full-attention half
# ------------------------------------------------------------------------------------------------

def _backend_strings(runner, rel: str):
    """Where SGLang's hybrid wrapper reads the attention backend names: (object, attribute) pairs."""
    if rel == "0.5.17":
        sa = runner.server_args
        return [(sa, "attention_backend"), (sa, "prefill_attention_backend"), (sa, "decode_attention_backend")]
    return [(runner, "prefill_attention_backend_str"), (runner, "decode_attention_backend_str")]


def hybrid_wrapper(rel: str):
    """AROUND ``attention_registry.attn_backend_wrapper``: when the full-attention backend it wraps
    is sm12x, SGLang's per-platform allow-list for hybrid GDN models (on SM120: triton,
    trtllm_mha, flashinfer) reads sm12x as ``triton`` for the duration of the call -- the only
    place the wrapper reads those names; the names are restored after, and nothing else of the
    wrapper (the GDN / Mamba-2 half, the pool) depends on them. Any other backend: unchanged."""
    def around(original, runner, full_attn_backend, *args, **kwargs):
        from .backend import Sm12xAttnBackend

        if not isinstance(full_attn_backend, Sm12xAttnBackend):
            return original(runner, full_attn_backend, *args, **kwargs)
        saved = [(obj, name, getattr(obj, name, None)) for obj, name in _backend_strings(runner, rel)]
        try:
            for obj, name, value in saved:
                if value == BACKEND:
                    setattr(obj, name, _ALIAS)
            return original(runner, full_attn_backend, *args, **kwargs)
        finally:
            for obj, name, value in saved:
                setattr(obj, name, value)
    around.__name__ = "hybrid_wrapper"
    return around


def _register_hybrid_wrapper_hook(rel: str) -> None:
    from sglang.srt.plugins.hook_registry import HookRegistry, HookType

    _register_once(HookRegistry, HookType, "sglang.srt.layers.attention.attention_registry.attn_backend_wrapper",
                   hybrid_wrapper(rel))
