"""``--attention-backend sm12x``: SGLang's ``AttentionBackend`` over this project's kernels.

Per batch, ``init_forward_metadata`` turns SGLang's ``req_to_token`` table into the slot lists the
kernels read (token slots with page size 1, page ids otherwise), and the batch's first layer plans
the launch (``plan_decode_batch`` / ``plan_extend_batch``: configuration, split workspace) -- once,
shared by every layer. Per layer, the forward writes the new K/V into the pool with the fused append
kernel (bf16/fp16 copy, FP8 E4M3, or NVFP4 quantization), then runs the plan:

    decode  (one new token per request)   decode_attention: split-KV + reduce over the pool
    extend  (chunked prefill, radix hits,  extend_attention: causal over [cached prefix | new chunk];
             mixed prefill + decode)        the prefix is read from the pool, the chunk from k/v

CUDA graphs (decode): ``init_cuda_graph_state`` allocates max-size index buffers and the split
workspace once; ``init_forward_metadata_out_graph`` refills them before capture and before every
replay. The kernels derive split counts on the device, so nothing in the graph depends on lengths.
"""
from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from typing import Optional

import torch

from sglang.srt.layers.attention.base_attn_backend import AttentionBackend

from sgl_kernel_sm12x import planner
from sgl_kernel_sm12x.attention.decode import plan_decode_batch
from sgl_kernel_sm12x.attention.extend import plan_extend_batch
from sgl_kernel_sm12x.attention.kv_tile import check_sinks, check_slot_flag, offsets_fit
from sgl_kernel_sm12x.attention.indices import build_kv_indices
from sgl_kernel_sm12x.kv_append import NVFP4_SCALES, append_kv

logger = logging.getLogger(__name__)
_Q_DTYPES = {torch.bfloat16: "bf16", torch.float16: "fp16"}

# Fault injection for end-to-end checks that must be able to fail: "drop_prefix" makes extend
# ignore the cached prefix (as a backend with broken prefix indexing would). Never set in serving.
_FAULT = os.environ.get("SGLANG_SM12X_FAULT", "")
# NVFP4 block-scale rule of the append kernel: "max" (amax / 6, as SGLang quantizes) or "mse"
# (least squared error of three scale codes; the same format, readable by any NVFP4 reader)
NVFP4_SCALES_ENV = "SGLANG_SM12X_NVFP4_SCALES"
# Debug aid: read the kernels' out-of-pool flag after every eager attention call (one device sync
# each) and raise naming kv_indices. SGLang builds the index lists from req_to_token itself, so the
# serving path does not check; the kernels never read outside the pool either way.
CHECK_SLOTS_ENV = "SGLANG_SM12X_CHECK_SLOTS"
PLAN_ARCH_ENV = "SGLANG_SM12X_PLAN_ARCH"


@dataclass
class Sm12xMetadata:
    """What one batch's layers share. ``kv_indptr``/``kv_indices`` list the cached tokens the
    kernels read from the pool: the whole sequence in decode, the prefix in extend.

        extend, request i:  |<-- prefix_lens[i] (pool) -->|<-- extend_lens[i] (q, k, v) -->|
        decode, request i:  |<------------ seq_lens[i] (pool, new token included) -------->|
    """
    decode: bool
    kv_indptr: torch.Tensor
    kv_indices: torch.Tensor
    seq_lens: Optional[torch.Tensor] = None          # decode
    in_graph: bool = False                           # decode, built in the CUDA-graph buffers
    qo_indptr: Optional[torch.Tensor] = None         # extend
    prefix_lens: Optional[torch.Tensor] = None       # extend
    max_extend_len: int = 0                          # extend
    max_prefix_len: Optional[int] = None             # extend, when the host knows it exactly
    window: Optional["WindowLists"] = None           # sliding-window layers' lists (models with a window)
    local: Optional["WindowLists"] = None            # chunked local layers' lists (Llama-4)
    swa_loc: Optional[torch.Tensor] = None           # the batch's write slots in a hybrid pool's window sub-pool
    plans: dict = field(default_factory=dict)        # (q heads, kv heads, head_dim, q dtype, window) -> plan


@dataclass
class WindowLists:
    """The tokens a sliding-window layer reads: each request's last ``window + 1`` (decode) or the
    ``window`` before its chunk (extend), from a page boundary, in the window sub-pool's slots when
    the pool is SGLang's hybrid ``SWAKVPool``. The kernels' masks are relative to the list, so
    dropping whole pages in front changes nothing but the bytes read (and never reaches the tokens a
    hybrid pool has evicted)."""
    kv_indptr: torch.Tensor
    kv_indices: torch.Tensor
    lens: torch.Tensor                               # decode: tokens listed; extend: prefix tokens listed
    max_prefix_len: Optional[int] = None             # extend
    qo_indptr: Optional[torch.Tensor] = None         # extend, chunked local layers: the virtual requests'
    max_extend_len: Optional[int] = None             # query rows (see Sm12xAttnBackend._local_lists)


def kv_dtype_name(kv_cache_dtype, pool) -> str:
    """SGLang's pool dtype -> the kernels' ``kv_dtype``; raises for formats the kernels lack."""
    qm = getattr(sub_pools(pool)[0], "quant_method", None)
    if getattr(qm, "name", None) == "nvfp4":
        return "nvfp4"
    if getattr(qm, "name", None) not in (None, "unquantized"):
        raise ValueError(f"--attention-backend sm12x: KV cache method {qm.name!r} is not supported; "
                         "supported --kv-cache-dtype: auto, bf16, fp8_e4m3, nvfp4")
    names = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float8_e4m3fn: "fp8_e4m3"}
    if kv_cache_dtype not in names:
        raise ValueError(f"--attention-backend sm12x: KV cache dtype {kv_cache_dtype} is not supported; "
                         "supported --kv-cache-dtype: auto (bf16/fp16 models), bf16, fp8_e4m3, nvfp4")
    return names[kv_cache_dtype]


def swa_pool(pool):
    """SGLang's hybrid sliding-window pool (full-attention and window sub-pools, a full-to-window
    slot table), or None for a plain pool."""
    if all(hasattr(pool, a) for a in ("layers_mapping", "full_kv_pool", "swa_kv_pool", "translate_loc_from_full_to_swa")):
        return pool
    return None


def linear_pool(pool):
    """SGLang's hybrid linear-attention pool (Qwen3-Next's Gated DeltaNet, Nemotron-H's Mamba-2):
    the full-attention layers' K/V in a dense MHA sub-pool, addressed by the model's layer ids
    through the pool's own API; None for any other pool."""
    if swa_pool(pool) is None and all(hasattr(pool, a) for a in ("full_kv_pool", "full_attention_layer_id_mapping",
                                                                  "get_key_buffer", "get_value_buffer")):
        return pool
    return None


def sub_pools(pool) -> list:
    """The MHA pools that hold K/V: the pool itself, a sliding-window pool's two, or a hybrid
    linear-attention pool's full-attention one."""
    sp = swa_pool(pool)
    if sp is not None:
        return [sp.full_kv_pool, sp.swa_kv_pool]
    lp = linear_pool(pool)
    return [pool] if lp is None else [lp.full_kv_pool]


def check_runner(model_runner, pool) -> None:
    """What this backend cannot serve, refused at start-up with the reason (not mid-request)."""
    kind = type(pool).__name__
    if not all(hasattr(p, a) for p in sub_pools(pool) for a in ("k_buffer", "v_buffer")):
        inner = "" if linear_pool(pool) is None else f" whose full-attention pool is {type(pool.full_kv_pool).__name__}"
        raise ValueError(f"--attention-backend sm12x needs SGLang's MHA token-to-KV pool, its sliding-window pool "
                         f"(SWAKVPool) or its hybrid linear-attention pool (HybridLinearKVPool) over MHA pools; "
                         f"this model uses {kind}{inner}")
    alloc = getattr(model_runner, "token_to_kv_pool_allocator", None)
    translator = getattr(model_runner, "kv_index_translator", None)
    if hasattr(alloc, "translate_kv_loc") or getattr(translator, "is_translating", False):
        raise ValueError(f"--attention-backend sm12x reads req_to_token's slots directly; this server's KV "
                         f"allocator ({type(alloc).__name__}) hands out virtual ids (unified memory pools): "
                         "start without the unified-memory option")
    spec = getattr(model_runner, "spec_algorithm", None)
    if spec is not None and hasattr(spec, "is_none") and not spec.is_none():
        raise ValueError("--attention-backend sm12x does not support speculative decoding yet "
                         "(remove --speculative-algorithm, or choose another attention backend)")
    cfg = getattr(model_runner, "model_config", None)
    d = getattr(cfg, "head_dim", None)
    if d and d not in planner.HEAD_DIMS:
        raise ValueError(f"--attention-backend sm12x supports head_dim {list(planner.HEAD_DIMS)}; this model "
                         f"has head_dim {d}")
    v = getattr(cfg, "v_head_dim", None)
    if d and isinstance(v, int) and v not in (0, d):
        raise ValueError(f"--attention-backend sm12x needs equal q/k and v head dims; this model has {d} and {v}")


def check_shapes(model_runner, arch: int, kv_dtype: str, page_size: int) -> None:
    """Run every plan-time refusal a forward could meet (GQA ratio, head_dim, KV format, page size)
    now, at start-up, so a model the kernels cannot serve stops the server before its first request."""
    cfg = getattr(model_runner, "model_config", None)
    d = getattr(cfg, "head_dim", None)
    heads = getattr(cfg, "num_attention_heads", None)
    if not d or not heads or not hasattr(cfg, "get_num_kv_heads"):
        return
    tp = int(getattr(model_runner, "tp_size", 1) or 1)
    hq, hkv = max(1, heads // tp), max(1, int(cfg.get_num_kv_heads(tp)))
    if hq % hkv:
        raise ValueError(f"--attention-backend sm12x: {hq} query heads per GPU are not a multiple of {hkv} KV heads")
    dtype = getattr(model_runner, "dtype", torch.bfloat16)
    q_dtype = "fp16" if dtype == torch.float16 else "bf16"
    try:
        for plan in (planner.plan_decode, planner.plan_extend):
            plan(arch, head_dim=d, kv_dtype=kv_dtype, q_dtype=q_dtype, group=hq // hkv, page_size=page_size)
    except ValueError as e:
        raise ValueError(f"--attention-backend sm12x cannot serve this model ({hq} query / {hkv} KV heads per GPU, "
                         f"head_dim {d}, --kv-cache-dtype {kv_dtype}): {e}") from None


def _sinks(sinks, q_heads: int, device, cache: Optional[dict] = None):
    """A layer's attention sinks (gpt-oss: one logit a query head of this rank), checked, as the
    float32 the kernels read (gpt-oss keeps them in bf16 for most backends). The float32 copy is
    kept per parameter and version (an in-place weight update makes a new one); inside a CUDA-graph
    capture the conversion is recorded into the graph instead of cached (a captured copy holds
    nothing until the graph replays)."""
    if sinks is None:
        return None
    check_sinks(sinks, q_heads, device)
    if sinks.dtype == torch.float32:
        return sinks
    key = (sinks.data_ptr(), sinks._version, sinks.dtype)
    if cache is not None and key in cache:
        return cache[key]
    out = sinks.float()
    if cache is not None and not (out.is_cuda and torch.cuda.is_current_stream_capturing()):
        cache[key] = out
    return out


def _refuse_kwargs(where: str, kwargs: dict):
    """Attention keyword arguments this backend does not implement (``k_rope``, ``return_lse``,
    ...) are refused by name: dropping one would compute something else. Those
    passed as None (a model's way of saying "none") are accepted."""
    given = sorted(k for k, v in kwargs.items() if v is not None and v is not False)
    if given:
        raise NotImplementedError(f"--attention-backend sm12x {where}: attention keyword argument(s) {given} "
                                  "are not supported by this backend (they would be ignored, giving other "
                                  "results); use another --attention-backend for this model")


def plan_arch(device) -> int:
    """The arch every launch is planned for: the device's own, or, as a testing aid, the one named
    by SGLANG_SM12X_PLAN_ARCH (e.g. 120 on a Hopper card to run the SM120 path). An arch whose
    tensor cores are ``mma.sync`` needs DISABLE_MMA_V3=1 on a Hopper card, or Triton would still
    emit warpgroup MMA with the other arch's tiles."""
    want = os.environ.get(PLAN_ARCH_ENV, "").strip()
    if not want:
        return planner.launch_arch(device)
    try:
        arch = planner.arch_limits(int(want)).cc
    except ValueError as e:
        raise ValueError(f"{PLAN_ARCH_ENV}={want!r}: {e}") from None
    native = planner.launch_arch(device)
    if native == 90 and arch != 90 and os.environ.get("DISABLE_MMA_V3") != "1":
        raise ValueError(f"{PLAN_ARCH_ENV}={arch} on an sm_90 device needs DISABLE_MMA_V3=1 in the server's "
                         f"environment (Triton emits warpgroup MMA otherwise, which an sm_{arch} card lacks)")
    return arch


class Sm12xAttnBackend(AttentionBackend):
    """Attention for MHA/GQA models on SM120/121 (and SM80-SM100) with bf16/fp16, FP8 or NVFP4 KV."""

    def __init__(self, model_runner):
        super().__init__()
        self.device = torch.device(model_runner.device)
        self.req_to_token = model_runner.req_to_token_pool.req_to_token
        self.pool = model_runner.token_to_kv_pool
        self.token_to_kv_pool = self.pool            # read by SGLang model code (fused KV-write checks)
        self.req_to_token_pool = model_runner.req_to_token_pool
        self.page_size = int(getattr(model_runner, "page_size", 1) or 1)
        if self.page_size not in planner.PAGE_SIZES:
            raise ValueError(f"--page-size {self.page_size} is not supported by --attention-backend sm12x; "
                             f"supported: {list(planner.PAGE_SIZES)}")
        check_runner(model_runner, self.pool)
        self.kv_dtype = kv_dtype_name(model_runner.kv_cache_dtype, self.pool)
        self.nvfp4_scales = os.environ.get(NVFP4_SCALES_ENV, "max") or "max"
        if self.nvfp4_scales not in NVFP4_SCALES:
            raise ValueError(f"{NVFP4_SCALES_ENV}={self.nvfp4_scales!r} is not supported; supported: "
                             f"{list(NVFP4_SCALES)}")
        self.check_slots = os.environ.get(CHECK_SLOTS_ENV, "0") not in ("", "0")
        self.kv_cache_dtype = model_runner.kv_cache_dtype
        self.data_type = model_runner.dtype if hasattr(model_runner, "dtype") else None
        cfg = model_runner.model_config
        self.max_context_len = int(cfg.context_len)
        self.sliding_window_size = getattr(model_runner, "sliding_window_size", None)
        self.swa = swa_pool(self.pool)
        self.linear = linear_pool(self.pool)     # Gated DeltaNet / Mamba-2 hybrids: full-attention layers only
        # window layers read lists cut to this many keys before each query (SGLang's window_left)
        w = self.sliding_window_size
        # chunked local attention (Llama-4): layers with use_irope see only their query's chunk
        c = getattr(model_runner, "attention_chunk_size", None)
        self.chunk = int(c) if c else 0
        if self.chunk and self.chunk % self.page_size:
            raise ValueError(f"--attention-backend sm12x: attention chunk size {self.chunk} is not a multiple of "
                             f"--page-size {self.page_size}")
        # SGLang reports the chunk as the sliding window of such models; no layer has that window
        self.window = int(w) if w is not None and w >= 0 and not (self.chunk and w == self.chunk) else -1
        if self.swa is not None and self.window < 0 and not self.chunk:
            raise ValueError("--attention-backend sm12x: a sliding-window KV pool (SWAKVPool) without a model "
                             "sliding window size")
        self.arch = plan_arch(self.device)
        check_shapes(model_runner, self.arch, self.kv_dtype, self.page_size)
        self.num_sms = planner.device_sms(self.device) if self.device.type == "cuda" else None
        self._cg = None
        self._off32 = None
        self._sinks32 = {}                       # float32 copies of bf16 / fp16 attention sinks
        self.forward_metadata: Optional[Sm12xMetadata] = None
        if self.kv_dtype == "nvfp4" and any(getattr(p.quant_method, "use_trtllm_gen_native_scale_layout", False)
                                            for p in sub_pools(self.pool)):
            raise ValueError("--attention-backend sm12x reads the linear NVFP4 scale layout, but the pool was "
                             "built with the TRT-LLM native layout; the plugin's registration did not run "
                             "before the pool was created (is the sglang_sm12x plugin loaded?)")

    # ------------------------------------------------------------------------------------------
    # metadata
    # ------------------------------------------------------------------------------------------
    def get_cuda_graph_seq_len_fill_value(self):
        return 1

    def init_forward_metadata(self, forward_batch):
        """Eager path (no CUDA graph): exact-size buffers for this batch."""
        fb = forward_batch
        mode = fb.forward_mode
        if mode.is_idle():
            self.forward_metadata = None
            return
        if mode.is_target_verify():
            raise NotImplementedError("--attention-backend sm12x does not support speculative decoding yet")
        bs = fb.batch_size
        if mode.is_decode():
            total = fb.seq_lens_sum if fb.seq_lens_sum is not None else None
            if total is not None and self.page_size > 1:
                total = total // self.page_size + bs
            kv_indptr, kv_indices = build_kv_indices(
                self.req_to_token, fb.req_pool_indices, fb.seq_lens, page_size=self.page_size, total=total)
            self.forward_metadata = Sm12xMetadata(True, kv_indptr, kv_indices, seq_lens=fb.seq_lens.to(torch.int32),
                                                  window=self._window_lists(fb.req_pool_indices, fb.seq_lens, True),
                                                  local=self._local_decode_lists(fb.req_pool_indices, fb.seq_lens))
            return
        prefix = fb.extend_prefix_lens
        if _FAULT == "drop_prefix":
            prefix = torch.zeros_like(prefix)
        max_prefix = None
        if fb.extend_prefix_lens_cpu is not None and not _FAULT:
            psum = sum(fb.extend_prefix_lens_cpu)
            total = psum if self.page_size == 1 else psum // self.page_size + bs
            max_prefix = int(max(fb.extend_prefix_lens_cpu, default=0))
        else:
            total = None
        kv_indptr, kv_indices = build_kv_indices(
            self.req_to_token, fb.req_pool_indices, prefix, page_size=self.page_size, total=total)
        qo_indptr = torch.zeros(bs + 1, dtype=torch.int32, device=self.device)
        torch.cumsum(fb.extend_seq_lens.to(torch.int32), 0, out=qo_indptr[1:])
        if fb.extend_seq_lens_cpu is not None:
            max_ext = max(fb.extend_seq_lens_cpu) if len(fb.extend_seq_lens_cpu) else 0
        else:
            max_ext = int(fb.extend_seq_lens.max().item())
        self.forward_metadata = Sm12xMetadata(False, kv_indptr, kv_indices, qo_indptr=qo_indptr,
                                              prefix_lens=prefix.to(torch.int32), max_extend_len=int(max_ext),
                                              max_prefix_len=max_prefix,
                                              window=self._window_lists(fb.req_pool_indices, prefix, False,
                                                                        fb.extend_prefix_lens_cpu if not _FAULT
                                                                        else None),
                                              local=self._local_extend_lists(fb, prefix))

    def _mapping(self):
        """A hybrid pool's full-to-window slot table (its window layers' slots), or None."""
        if self.swa is None:
            return None
        if self.swa.full_to_swa_index_mapping is None:
            raise RuntimeError("sm12x: the sliding-window pool has no full-to-window slot table yet")
        return self.swa.full_to_swa_index_mapping

    def _local_units(self) -> int:
        return self.chunk if self.page_size == 1 else self.chunk // self.page_size + 1

    def _local_decode_lists(self, rows, seq_lens, bufs=None) -> Optional[WindowLists]:
        """Chunked local layers in decode: each sequence's tokens from the start of its last
        token's chunk (a multiple of the page size)."""
        if not self.chunk:
            return None
        lens = seq_lens.to(torch.int32)
        start = torch.clamp(lens - 1, min=0) // self.chunk * self.chunk
        return self._lists_from(rows, lens, start, self._local_units(), bufs)

    def _lists_from(self, rows, lens, start, units: int, bufs=None, max_prefix=None) -> WindowLists:
        """Each sequence's tokens from ``start`` to ``lens`` as lists (a hybrid pool's window slots
        where it has them); with ``bufs`` (indptr, indices, lens) the CUDA-graph buffers, whose
        fixed addresses the captured graphs read, else exact-size ones of ``units`` a row."""
        sub = lens - start
        if bufs:
            bufs[2][: sub.shape[0]].copy_(sub)
            sub = bufs[2][: sub.shape[0]]
        kw = dict(kv_indptr=bufs[0], kv_indices=bufs[1]) if bufs else dict(total=rows.shape[0] * units)
        indptr, indices = build_kv_indices(self.req_to_token, rows, sub, page_size=self.page_size, start=start,
                                           mapping=self._mapping(), **kw)
        return WindowLists(indptr, indices, sub, max_prefix)

    def _local_extend_lists(self, fb, prefix) -> Optional[WindowLists]:
        """Chunked local layers in extend: each request's new tokens split where they cross a chunk
        boundary into virtual requests (the rows stay where they are); a virtual request's prefix is
        its chunk's tokens before it, read from the pool (this batch's tokens are written before
        attention runs), so plain causal attention over it is the chunked local mask."""
        if not self.chunk:
            return None
        pre = fb.extend_prefix_lens_cpu if fb.extend_prefix_lens_cpu is not None and not _FAULT else prefix.tolist()
        ext = fb.extend_seq_lens_cpu if fb.extend_seq_lens_cpu is not None else fb.extend_seq_lens.tolist()
        rows_all = fb.req_pool_indices.tolist()
        C = self.chunk
        qo, rows, starts, lens = [0], [], [], []
        for r, p, e in zip(rows_all, pre, ext):
            a, end = int(p), int(p) + int(e)
            while a < end:
                cs = a // C * C
                b = min(end, cs + C)
                rows.append(r)
                starts.append(cs)
                lens.append(a - cs)
                qo.append(qo[-1] + b - a)
                a = b
        if not rows:            # nothing to attend (empty chunks): one empty virtual request
            rows, starts, lens, qo = [rows_all[0] if rows_all else 0], [0], [0], [0, 0]
        dev = self.device
        t = lambda v: torch.tensor(v, dtype=torch.int32, device=dev)  # noqa: E731
        rows_t, lens_t = t(rows), t(lens)
        units = sum(-(-L // self.page_size) for L in lens)
        indptr, indices = build_kv_indices(self.req_to_token, rows_t, lens_t, page_size=self.page_size,
                                           start=t(starts), mapping=self._mapping(), total=units)
        return WindowLists(indptr, indices, lens_t, max_prefix_len=max(lens), qo_indptr=t(qo),
                           max_extend_len=max(b - a for a, b in zip(qo, qo[1:])))

    def _window_units(self, decode: bool) -> int:
        """Most list entries a request's window takes (tokens, or pages with a page in front)."""
        keys = self.window + 1 if decode else self.window
        return keys if self.page_size == 1 else math.ceil(keys / self.page_size) + 1

    def _window_lists(self, rows, lens, decode: bool, lens_cpu=None, bufs=None) -> Optional[WindowLists]:
        """The window layers' lists (None for models without a window): the last ``window + 1``
        tokens of each sequence in decode, the ``window`` tokens before each chunk in extend, from
        the page they start in; a hybrid pool's window slots in place of the full pool's."""
        if self.window < 0:
            return None
        keep = self.window + 1 if decode else self.window
        lens = lens.to(torch.int32)
        first = torch.clamp(lens - keep, min=0)
        start = first if self.page_size == 1 else first // self.page_size * self.page_size
        max_prefix = None
        if lens_cpu is not None:
            p = self.page_size
            max_prefix = max((L - (max(0, L - keep) // p * p) for L in lens_cpu), default=0)
        return self._lists_from(rows, lens, start, self._window_units(decode), bufs, max_prefix)

    def init_cuda_graph_state(self, max_bs: int, max_num_tokens: int):
        """Max-size buffers for decode graphs; every captured batch size views into them."""
        units = self.max_context_len if self.page_size == 1 else math.ceil(self.max_context_len / self.page_size) + 1
        self._cg = dict(
            kv_indptr=torch.zeros(max_bs + 1, dtype=torch.int32, device=self.device),
            kv_indices=torch.zeros(max_bs * units, dtype=torch.int32, device=self.device),
            seq_lens=torch.ones(max_bs, dtype=torch.int32, device=self.device),
            ws_o=None, ws_lse=None, max_bs=max_bs,
        )
        if self.window >= 0:
            self._cg.update(w_indptr=torch.zeros(max_bs + 1, dtype=torch.int32, device=self.device),
                            w_indices=torch.zeros(max_bs * self._window_units(True), dtype=torch.int32,
                                                  device=self.device),
                            w_lens=torch.ones(max_bs, dtype=torch.int32, device=self.device))
        if self.chunk:
            self._cg.update(l_indptr=torch.zeros(max_bs + 1, dtype=torch.int32, device=self.device),
                            l_indices=torch.zeros(max_bs * self._local_units(), dtype=torch.int32, device=self.device),
                            l_lens=torch.ones(max_bs, dtype=torch.int32, device=self.device))

    def _graph_workspace(self, bs, hq, d, max_splits, plan_kw):
        """Views of one split-stage buffer shared by every captured batch size, sized once for the
        largest ``batch * max_splits`` the planner picks at any of them (captured graphs keep
        their buffer addresses, so it is never reallocated after the first capture)."""
        cg = self._cg
        need = bs * hq * max_splits * d
        if cg["ws_o"] is None or cg["ws_o"].numel() < need:
            rows = max(bs * max_splits, planner.decode_max_splits(self.arch, max_batch=cg["max_bs"], **plan_kw))
            cg["ws_o"] = torch.empty(rows * hq * d, dtype=torch.float32, device=self.device)
            cg["ws_lse"] = torch.empty(rows * hq, dtype=torch.float32, device=self.device)
        return (cg["ws_o"][:need].view(bs, hq, max_splits, d),
                cg["ws_lse"][: bs * hq * max_splits].view(bs, hq, max_splits))

    def init_forward_metadata_out_graph(self, forward_batch, in_capture: bool = False):
        """Before capture and before every replay: refill the fixed buffers (decode only)."""
        fb = forward_batch
        if not fb.forward_mode.is_decode_or_idle():
            raise NotImplementedError("--attention-backend sm12x captures CUDA graphs for decode only")
        if self._cg is None:
            raise RuntimeError("init_cuda_graph_state must run before graph capture")
        bs = fb.batch_size
        cg = self._cg
        seq_lens = cg["seq_lens"][:bs]
        seq_lens.copy_(fb.seq_lens[:bs])
        kv_indptr, kv_indices = build_kv_indices(
            self.req_to_token, fb.req_pool_indices[:bs], seq_lens, page_size=self.page_size,
            kv_indptr=cg["kv_indptr"], kv_indices=cg["kv_indices"])
        window = None
        if self.window >= 0:
            window = self._window_lists(fb.req_pool_indices[:bs], seq_lens, True,
                                        bufs=(cg["w_indptr"], cg["w_indices"], cg["w_lens"]))
        local = None
        if self.chunk:
            local = self._local_decode_lists(fb.req_pool_indices[:bs], seq_lens,
                                             bufs=(cg["l_indptr"], cg["l_indices"], cg["l_lens"]))
        self.forward_metadata = Sm12xMetadata(True, kv_indptr, kv_indices, seq_lens=seq_lens, in_graph=True,
                                              window=window, local=local)

    def init_forward_metadata_in_graph(self, forward_batch):
        return None

    # ------------------------------------------------------------------------------------------
    # forward
    # ------------------------------------------------------------------------------------------
    def _layer_slot(self, layer):
        """(the MHA pool holding the layer, its index there, is it a hybrid pool's window sub-pool)."""
        lid = layer.layer_id
        if self.swa is not None:
            local, is_swa = self.swa.layers_mapping[lid]
            return (self.swa.swa_kv_pool if is_swa else self.swa.full_kv_pool), local, bool(is_swa)
        if self.linear is not None:
            ids = self.linear.full_attention_layer_id_mapping
            if lid not in ids:
                raise ValueError(f"sm12x: layer {lid} is not a full-attention layer of the hybrid pool (its "
                                 f"full-attention layers: {sorted(ids)}); linear-attention layers are not ours")
            sub = self.linear.full_kv_pool
            return sub, ids[lid] - getattr(sub, "start_layer", 0), False
        return self.pool, lid - getattr(self.pool, "start_layer", 0), False

    def _layer_pool(self, layer):
        """(k_cache, v_cache, k_scale_cache, v_scale_cache, k_scale, v_scale) of one layer."""
        lid = layer.layer_id
        sub, local, _ = self._layer_slot(layer)
        if self.linear is not None:             # the hybrid pool's own API (model layer ids, its waits)
            if self.kv_dtype == "nvfp4":
                kc, vc, ksc, vsc = self.linear.get_raw_kv_buffer(lid)
            else:
                kc, vc = self.linear.get_key_buffer(lid), self.linear.get_value_buffer(lid)
        else:
            kc, vc = sub.k_buffer[local], sub.v_buffer[local]
            if self.kv_dtype == "nvfp4":
                ksc, vsc = sub.k_scale_buffer[local], sub.v_scale_buffer[local]
        if self.kv_dtype == "nvfp4":
            qm = sub.quant_method               # per-tensor scales by the model's layer id
            ks = qm.k_scales_float[lid] if lid < len(qm.k_scales_float) else 1.0
            vs = qm.v_scales_float[lid] if lid < len(qm.v_scales_float) else 1.0
            return kc, vc, ksc, vsc, float(ks), float(vs)
        if self.kv_dtype == "fp8_e4m3":
            ks = getattr(layer, "k_scale_float", None)
            vs = getattr(layer, "v_scale_float", None)
            return kc, vc, None, None, float(1.0 if ks is None else ks), float(1.0 if vs is None else vs)
        return kc, vc, None, None, 1.0, 1.0

    def _write_kv(self, layer, forward_batch, k, v, pool, in_window_pool: bool):
        kc, vc, ksc, vsc, k_scale, v_scale = pool
        loc = forward_batch.out_cache_loc
        if not isinstance(loc, torch.Tensor):       # 0.5.23 KVWriteLoc
            loc = loc.loc
        if in_window_pool:                          # the same tokens' slots in the window sub-pool
            md = self.forward_metadata
            if md.swa_loc is None:
                md.swa_loc = self.swa.translate_loc_from_full_to_swa(loc)
            loc = md.swa_loc
        append_kv(k, v, loc, kc, vc, kv_dtype=self.kv_dtype, k_scale_cache=ksc, v_scale_cache=vsc,
                  k_scale=k_scale, v_scale=v_scale, check_slots=False, nvfp4_scales=self.nvfp4_scales, arch=self.arch)

    def _layer_lists(self, md, layer, in_window_pool: bool) -> Optional[WindowLists]:
        """The lists of a sliding-window or chunked local layer, None for a full-attention one."""
        w = self._window(layer)
        if self.chunk and getattr(layer, "use_irope", False):
            if self.swa is not None and not in_window_pool:
                raise ValueError(f"sm12x: chunked local layer {layer.layer_id} is not in the window sub-pool")
            return md.local
        if w < 0 and not in_window_pool:
            return None
        if md.window is None or w < 0 or w > self.window:
            raise ValueError(f"sm12x: layer {layer.layer_id} has sliding window {w}, but the backend lists "
                             f"{self.window} keys (the model's sliding_window_size) for window layers")
        return md.window

    @staticmethod
    def _heads(layer, q, k, v):
        hq, hkv, d = layer.tp_q_head_num, layer.tp_k_head_num, layer.qk_head_dim
        if layer.v_head_dim != d:
            raise ValueError(f"--attention-backend sm12x needs equal q/k and v head dims, got {d} and "
                             f"{layer.v_head_dim}")
        q3 = q.reshape(-1, hq, d)
        k3 = k.reshape(-1, hkv, d) if k is not None else None
        v3 = v.reshape(-1, hkv, d) if v is not None else None
        return q3, k3, v3, hq, hkv, d

    def _window(self, layer):
        w = getattr(layer, "sliding_window_size", -1)
        return -1 if w is None or w < 0 else int(w)

    def _metadata(self, decode: bool):
        """This batch's metadata, planned for the phase that is running (a mismatch would read the
        wrong index lists: refuse it rather than attend over the wrong tokens)."""
        md = self.forward_metadata
        if md is None or md.decode != decode:
            have = "none" if md is None else ("decode" if md.decode else "extend")
            raise RuntimeError(f"sm12x: forward_{'decode' if decode else 'extend'} called with {have} metadata; "
                               "init_forward_metadata must run for this batch first")
        return md

    def _offsets32(self) -> bool:
        """Every pool tensor spans under 2^31 bytes (the sm_90 Gluon extend kernels' offsets)."""
        if self._off32 is None:
            ts = []
            for p in sub_pools(self.pool):
                ts += [p.k_buffer[0], p.v_buffer[0]] + ([p.k_scale_buffer[0], p.v_scale_buffer[0]]
                                                        if self.kv_dtype == "nvfp4" else [])
            self._off32 = offsets_fit(*ts)
        return self._off32

    def _check_ids(self, kv_indptr, kv_indices, plan, kc):
        """Debug mode (SGLANG_SM12X_CHECK_SLOTS=1): the batch's index check read back, one sync."""
        check_slot_flag(plan.flag, kv_indptr, kv_indices, kc.shape[0], self.page_size)

    def forward_extend(self, q, k, v, layer, forward_batch, save_kv_cache=True, sinks=None, **kwargs):
        _refuse_kwargs("forward_extend", kwargs)
        q3, k3, v3, hq, hkv, d = self._heads(layer, q, k, v)
        if q3.shape[0] == 0:
            return q3.new_empty((0, hq * d))
        md = self._metadata(decode=False)
        if getattr(layer, "is_cross_attention", False):
            raise NotImplementedError("--attention-backend sm12x does not support cross attention")
        in_window_pool = self._layer_slot(layer)[2]
        pool = self._layer_pool(layer)
        if save_kv_cache and k3 is not None:
            self._write_kv(layer, forward_batch, k3, v3, pool, in_window_pool)
        kc, vc, ksc, vsc, k_scale, v_scale = pool
        window = self._window(layer)
        wl = self._layer_lists(md, layer, in_window_pool)
        qo_indptr, max_ext = md.qo_indptr, md.max_extend_len
        if wl is None:
            indptr, indices, prefix_lens, max_prefix = md.kv_indptr, md.kv_indices, md.prefix_lens, md.max_prefix_len
        else:
            indptr, indices, prefix_lens, max_prefix = wl.kv_indptr, wl.kv_indices, wl.lens, wl.max_prefix_len
            if wl.qo_indptr is not None:        # chunked local: virtual requests
                qo_indptr, max_ext = wl.qo_indptr, wl.max_extend_len
        key = (hq, hkv, d, q3.dtype, None if wl is None else id(wl))
        plan = md.plans.get(key)
        if plan is None:            # the batch's first layer of this kind plans for all of them
            plan = md.plans[key] = plan_extend_batch(
                qo_indptr, indptr, indices, prefix_lens, q_heads=hq, kv_heads=hkv, head_dim=d,
                kv_dtype=self.kv_dtype, q_dtype=_Q_DTYPES[q3.dtype], page_size=self.page_size,
                max_extend_len=max_ext, max_prefix_len=max_prefix, offsets_32bit=self._offsets32(),
                window=window >= 0, arch=self.arch, num_slots=kc.shape[0] if self.check_slots else None)
            if self.check_slots:
                self._check_ids(indptr, indices, plan, kc)
        out = torch.empty(q3.shape[0], hq, d, dtype=q3.dtype, device=q3.device)
        plan.run(q3, k3.to(q3.dtype), v3.to(q3.dtype), kc, vc, k_scale_cache=ksc, v_scale_cache=vsc, k_scale=k_scale,
                 v_scale=v_scale, sm_scale=layer.scaling, logit_cap=float(getattr(layer, "logit_cap", 0.0) or 0.0),
                 window_left=window, out=out, sinks=_sinks(sinks, hq, q3.device, self._sinks32))
        return out.view(-1, hq * d)

    def forward_decode(self, q, k, v, layer, forward_batch, save_kv_cache=True, sinks=None, **kwargs):
        _refuse_kwargs("forward_decode", kwargs)
        q3, k3, v3, hq, hkv, d = self._heads(layer, q, k, v)
        if q3.shape[0] == 0:
            return q3.new_empty((0, hq * d))
        md = self._metadata(decode=True)
        in_window_pool = self._layer_slot(layer)[2]
        pool = self._layer_pool(layer)
        if save_kv_cache and k3 is not None:
            self._write_kv(layer, forward_batch, k3, v3, pool, in_window_pool)
        kc, vc, ksc, vsc, k_scale, v_scale = pool
        bs = q3.shape[0]
        q3 = q3 if q3.dtype in _Q_DTYPES else q3.to(self.data_type or torch.bfloat16)
        wl = self._layer_lists(md, layer, in_window_pool)
        indptr, indices, lens = (md.kv_indptr, md.kv_indices, md.seq_lens) if wl is None else \
            (wl.kv_indptr, wl.kv_indices, wl.lens)
        key = (hq, hkv, d, q3.dtype, None if wl is None else id(wl))
        plan = md.plans.get(key)
        if plan is None:            # the batch's first layer plans for all of them
            ws = None
            q_dtype = _Q_DTYPES[q3.dtype]
            if md.in_graph:
                plan_kw = dict(head_dim=d, kv_dtype=self.kv_dtype, q_dtype=q_dtype, group=hq // hkv,
                               page_size=self.page_size, kv_heads=hkv, num_sms=self.num_sms)
                cfg = planner.plan_decode(self.arch, batch=bs, **plan_kw)
                ws = self._graph_workspace(bs, hq, d, cfg.max_splits, plan_kw)
            check = self.check_slots and not md.in_graph
            plan = md.plans[key] = plan_decode_batch(
                indptr, indices, lens[:bs], q_heads=hq, kv_heads=hkv, head_dim=d,
                kv_dtype=self.kv_dtype, q_dtype=q_dtype, page_size=self.page_size, arch=self.arch, workspace=ws,
                num_slots=kc.shape[0] if check else None)
            if check:
                self._check_ids(indptr, indices, plan, kc)
        out = torch.empty_like(q3)
        plan.run(q3, kc, vc, k_scale_cache=ksc, v_scale_cache=vsc, k_scale=k_scale, v_scale=v_scale,
                 sm_scale=layer.scaling, logit_cap=float(getattr(layer, "logit_cap", 0.0) or 0.0),
                 window_left=self._window(layer), out=out, sinks=_sinks(sinks, hq, q3.device, self._sinks32))
        return out.view(bs, hq * d)
