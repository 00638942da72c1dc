"""Float32 torch references for paged attention and helpers that build paged pools in every format."""
import math

import torch

from sgl_kernel_sm12x import nvfp4
from sgl_kernel_sm12x.kv_append import append_kv

ACT = {"bf16": torch.bfloat16, "fp16": torch.float16}


class Pool:
    """One layer of a paged KV pool filled through the fused append kernel."""

    def __init__(self, kv_dtype, q_dtype, slots, kv_heads, head_dim, device, k_scale=1.0, v_scale=1.0):
        self.kv_dtype, self.heads, self.d, self.dev = kv_dtype, kv_heads, head_dim, device
        self.k_scale, self.v_scale = k_scale, v_scale
        # K / V storage: fp8k_nvfp4v keeps K in fp8_e4m3 and V in nvfp4
        k_fmt, v_fmt = ("fp8_e4m3", "nvfp4") if kv_dtype == "fp8k_nvfp4v" else (kv_dtype, kv_dtype)
        self.k_fmt, self.v_fmt = k_fmt, v_fmt

        def mk(fmt):
            width = head_dim // 2 if fmt == "nvfp4" else head_dim
            if fmt in ("bf16", "fp16"):
                return torch.full((slots, kv_heads, width), float("nan"), dtype=ACT[fmt], device=device)
            return torch.full((slots, kv_heads, width), 0x7F, dtype=torch.uint8, device=device)   # NaN codes

        self.k, self.v = mk(k_fmt), mk(v_fmt)
        poison_scales = lambda: torch.full((slots, kv_heads, head_dim // 16), 0x7F, dtype=torch.uint8,  # noqa
                                           device=device)
        self.ks = poison_scales() if k_fmt == "nvfp4" else None
        self.vs = poison_scales() if v_fmt == "nvfp4" else None
        self.q_dtype = ACT[q_dtype]

    def write(self, k, v, loc):
        append_kv(k.to(self.q_dtype), v.to(self.q_dtype), loc, self.k, self.v, kv_dtype=self.kv_dtype,
                  k_scale_cache=self.ks, v_scale_cache=self.vs, k_scale=self.k_scale, v_scale=self.v_scale)

    def dequant(self, loc):
        """(len(loc), heads, head_dim) float32 K and V as stored."""
        loc = loc.long()

        def deq(fmt, data, scales, gscale):
            if fmt == "nvfp4":
                return nvfp4.dequantize_nvfp4(data[loc].cpu(), scales[loc].cpu(), gscale)
            if fmt == "fp8_e4m3":
                return nvfp4.dequantize_fp8(data[loc].cpu(), gscale)
            return data[loc].cpu().float()

        return (deq(self.k_fmt, self.k, self.ks, self.k_scale), deq(self.v_fmt, self.v, self.vs, self.v_scale))


def attention_ref(q, k, v, *, causal_offset=None, sm_scale=None, logit_cap=0.0, window_left=-1, sinks=None):
    """q (m, hq, d), k/v (n, hkv, d) float32 -> (m, hq, d) float32.

    Query i sits at absolute position ``causal_offset + i`` (default n - m: the last m keys are the
    queries' own tokens) and sees keys j <= its position, and with a window only j >= pos - window_left.
    ``sinks`` (hq,): a logit per head joining every row's softmax as an extra column whose value is
    zero (gpt-oss's attention sinks).
    """
    m, hq, d = q.shape
    n, hkv, _ = k.shape
    g = hq // hkv
    sm_scale = 1.0 / math.sqrt(d) if sm_scale is None else sm_scale
    kk = k.repeat_interleave(g, dim=1).float()
    vv = v.repeat_interleave(g, dim=1).float()
    s = torch.einsum("mhd,nhd->hmn", q.float(), kk) * sm_scale
    if logit_cap > 0:
        s = logit_cap * torch.tanh(s / logit_cap)
    off = n - m if causal_offset is None else causal_offset
    qpos = torch.arange(m)[:, None] + off
    kpos = torch.arange(n)[None, :]
    vis = kpos <= qpos
    if window_left >= 0:
        vis &= kpos >= qpos - window_left
    s = s.masked_fill(~vis[None], float("-inf"))
    if sinks is not None:
        col = sinks.float().cpu().view(hq, 1, 1).expand(hq, m, 1)
        p = torch.softmax(torch.cat([s, col], dim=-1), dim=-1)[..., :-1]
    else:
        p = torch.softmax(s, dim=-1)
    p = torch.nan_to_num(p, nan=0.0) if not torch.isnan(kk).any() else p
    return torch.einsum("hmn,nhd->mhd", p, vv)


def paged_layout(seq_lens, page_size, slots_total, device, gen=None):
    """Random page allocation: returns (kv_indptr, kv_indices, per-request token slot lists)."""
    n_pages = slots_total // page_size
    perm = torch.randperm(n_pages, generator=gen)
    indptr, indices, token_slots, used = [0], [], [], 0
    for L in seq_lens:
        np_ = -(-L // page_size)
        pages = perm[used:used + np_]
        used += np_
        if page_size == 1:
            indices.append(pages)
        else:
            indices.append(pages)
        tok = (pages[:, None] * page_size + torch.arange(page_size)[None, :]).flatten()[:L]
        token_slots.append(tok)
        indptr.append(indptr[-1] + (L if page_size == 1 else np_))
    idx = torch.cat(indices) if indices else torch.zeros(0, dtype=torch.long)
    return (torch.tensor(indptr, dtype=torch.int32, device=device), idx.to(torch.int32).to(device),
            token_slots)


def assert_close_attn(out, ref, what, atol, rtol=0.0):
    out, ref = out.float().cpu(), ref.float().cpu()
    bad = ~torch.isclose(out, ref, atol=atol, rtol=rtol)
    bad |= out.isnan() != ref.isnan()
    if bad.any():
        idx = bad.nonzero()[:6].tolist()
        det = "; ".join(f"{tuple(i)} got {out[tuple(i)].item():.5f} want {ref[tuple(i)].item():.5f}" for i in idx)
        raise AssertionError(f"{what}: {int(bad.sum())}/{bad.numel()} elements off (atol {atol}); max err "
                             f"{(out - ref).abs().nan_to_num(0).max().item():.4g}; first: {det}")
