"""Build the ``kv_indptr`` / ``kv_indices`` slot lists the attention kernels read, from SGLang's
``req_to_token`` table, on the device (no host sync; CUDA-graph safe with caller-owned buffers).

``req_to_token[r, t]`` is the pool slot of token ``t`` of request row ``r``. With ``page_size`` 1
the lists hold token slots; with larger pages they hold page ids (``slot // page_size`` of each
page's first token), which is what the kernels' ``PAGED`` addressing expects.

A list may start past a request's first token (``start``: a sliding-window layer reads only its
window; the kernels' masks are relative, so a list that drops a prefix of whole pages attends the
same keys) and may pass each slot through a ``mapping`` (SGLang's full-to-sliding-window slot table
of a hybrid pool).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def build_kv_indices_kernel(
    req_to_token_ptr, stride_r,          # (rows, max_context) int32
    req_pool_indices_ptr,                # (batch,) int32/int64
    lens_ptr,                            # (batch,) tokens per request
    start_ptr,                           # (batch,) first token listed (page-aligned); HAS_START
    mapping_ptr,                         # (slots,) slot -> listed id; HAS_MAPPING
    kv_indptr_ptr,                       # (batch + 1,) int32, already filled
    kv_indices_ptr,                      # (>= kv_indptr[batch],) int32
    page_size,
    BLOCK: tl.constexpr, PAGED: tl.constexpr, HAS_START: tl.constexpr, HAS_MAPPING: tl.constexpr,
):
    b = tl.program_id(0)
    row = tl.load(req_pool_indices_ptr + b).to(tl.int64)
    n_tok = tl.load(lens_ptr + b)
    first = 0
    if HAS_START:
        first = tl.load(start_ptr + b).to(tl.int64)
    out0 = tl.load(kv_indptr_ptr + b)
    if PAGED:
        n = tl.cdiv(n_tok, page_size)
    else:
        n = n_tok
    src = req_to_token_ptr + row * stride_r + first
    for i0 in range(0, n, BLOCK):
        i = i0 + tl.arange(0, BLOCK)
        m = i < n
        if PAGED:
            slot = tl.load(src + i * page_size, mask=m, other=0)
        else:
            slot = tl.load(src + i, mask=m, other=0)
        if HAS_MAPPING:
            slot = tl.load(mapping_ptr + slot.to(tl.int64), mask=m, other=0)
        if PAGED:
            slot = slot // page_size
        tl.store(kv_indices_ptr + out0 + i, slot.to(tl.int32), mask=m)


def build_kv_indices(
    req_to_token: torch.Tensor,
    req_pool_indices: torch.Tensor,
    lens: torch.Tensor,
    *,
    page_size: int = 1,
    kv_indptr: torch.Tensor | None = None,
    kv_indices: torch.Tensor | None = None,
    total: int | None = None,
    start: torch.Tensor | None = None,
    mapping: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fill ``kv_indptr`` (batch + 1) and ``kv_indices`` for requests ``req_pool_indices`` of
    lengths ``lens``.

    Parameters
    ----------
    req_to_token : (rows, max_context) int32 slot table.
    req_pool_indices : (batch,) rows of the requests.
    lens : (batch,) tokens to list per request (the prefix for extend, the whole sequence for decode).
    page_size : 1 lists token slots; > 1 lists page ids.
    kv_indptr, kv_indices : caller-owned buffers (CUDA graphs); sliced views are returned.
    total : entries to allocate when ``kv_indices`` is not given (default: computed, one host sync).
    start : (batch,) first token to list per request (a multiple of ``page_size``); ``lens`` counts
        the tokens listed from there.
    mapping : (slots,) integer table applied to every slot before it is listed (and divided into a
        page id).
    """
    batch = req_pool_indices.shape[0]
    dev = req_to_token.device
    if req_to_token.dim() != 2 or req_to_token.stride(1) != 1:
        raise ValueError("req_to_token: expected a (rows, max_context) tensor with contiguous rows")
    if lens.shape != (batch,):
        raise ValueError(f"lens: expected ({batch},), got {tuple(lens.shape)}")
    if page_size < 1:
        raise ValueError(f"page_size: must be >= 1, got {page_size}")
    if start is not None and start.shape != (batch,):
        raise ValueError(f"start: expected ({batch},), got {tuple(start.shape)}")
    if mapping is not None and (mapping.dim() != 1 or mapping.dtype not in (torch.int32, torch.int64)):
        raise ValueError(f"mapping: expected a 1-D int32/int64 slot table, got {mapping.dtype} "
                         f"{tuple(mapping.shape)}")
    units = lens.to(torch.int32) if page_size == 1 else (lens.to(torch.int32) + page_size - 1) // page_size
    if kv_indptr is None:
        kv_indptr = torch.zeros(batch + 1, dtype=torch.int32, device=dev)
    else:
        kv_indptr = kv_indptr[: batch + 1]
        kv_indptr[:1].zero_()
    torch.cumsum(units, 0, out=kv_indptr[1:])
    if kv_indices is None:
        if total is None:
            total = int(kv_indptr[-1].item()) if batch else 0
        kv_indices = torch.empty(max(total, 1), dtype=torch.int32, device=dev)
    if batch:
        build_kv_indices_kernel[(batch,)](
            req_to_token_ptr=req_to_token, stride_r=req_to_token.stride(0),
            req_pool_indices_ptr=req_pool_indices, lens_ptr=lens,
            start_ptr=lens if start is None else start, mapping_ptr=lens if mapping is None else mapping,
            kv_indptr_ptr=kv_indptr, kv_indices_ptr=kv_indices, page_size=page_size,
            BLOCK=256, PAGED=page_size > 1, HAS_START=start is not None, HAS_MAPPING=mapping is not None,
            num_warps=4,
        )
    return kv_indptr, kv_indices
