"""Run a Hugging Face causal LM with its attention served by this project's kernels over a paged KV
pool in bf16, fp8_e4m3 or nvfp4 -- prefill through ``extend_attention``, then token-by-token decode
through ``decode_attention``, new K/V always written by the fused append kernel -- and compare the
next-token distributions of the formats (perplexity, KL from bf16, top-1 agreement).

The attention function is registered with transformers' ``AttentionInterface`` as ``sm12x_kv``; the
model runs with ``use_cache=False`` and this module keeps the cache (one pool per layer).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from sgl_kernel_sm12x.attention.decode import decode_attention
from sgl_kernel_sm12x.attention.extend import extend_attention
from sgl_kernel_sm12x.kv_append import append_kv

FORMATS = ("bf16", "fp8_e4m3", "nvfp4", "fp8k_nvfp4v")     # fp8k_nvfp4v: K fp8_e4m3, V nvfp4
_PARTS = {"fp8k_nvfp4v": ("fp8_e4m3", "nvfp4")}


def parts(kv_dtype):
    """(K format, V format) of a pool format."""
    return _PARTS.get(kv_dtype, (kv_dtype, kv_dtype))


@dataclass
class KVSession:
    """Cache of one sequence: per layer a pool of ``slots`` tokens in ``kv_dtype``. The per-tensor
    scales are ``k_scale`` / ``v_scale`` for every layer unless ``layer_scales`` maps a layer index to
    its own ``(k_scale, v_scale)`` (calibrated, as a checkpoint's per-layer KV scales are)."""
    kv_dtype: str
    slots: int
    k_scale: float = 1.0
    v_scale: float = 1.0
    pools: dict = field(default_factory=dict)
    length: int = 0            # tokens cached so far (same for every layer once a step finishes)
    layer_scales: dict | None = None
    record: dict | None = None     # when a dict: per-layer running amax of K and V (calibration)
    nvfp4_scales: str = "max"      # append_kv's NVFP4 block-scale rule: "max" or "mse"

    def scales(self, layer):
        if self.layer_scales and layer in self.layer_scales:
            return self.layer_scales[layer]
        return self.k_scale, self.v_scale

    def pool(self, layer, heads, d, device):
        if layer not in self.pools:
            p = {}
            for name, fmt in zip("kv", parts(self.kv_dtype)):
                w = d // 2 if fmt == "nvfp4" else d
                dt = torch.bfloat16 if fmt == "bf16" else torch.uint8
                p[name] = torch.zeros(self.slots, heads, w, dtype=dt, device=device)
                p[name + "s"] = (torch.zeros(self.slots, heads, d // 16, dtype=torch.uint8, device=device)
                                 if fmt == "nvfp4" else None)
            self.pools[layer] = p
        return self.pools[layer]


_ACTIVE: list[KVSession] = []


def sm12x_attention(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """transformers attention interface: q (1, H, S, D), k/v (1, Hkv, S, D) of the new tokens only."""
    s = _ACTIVE[-1]
    b, hq, n, d = query.shape
    if b != 1:
        raise ValueError("sm12x_kv evaluates one sequence at a time")
    hkv = key.shape[1]
    dev = query.device
    p = s.pool(module.layer_idx, hkv, d, dev)
    q = query[0].transpose(0, 1).contiguous().to(torch.bfloat16)           # (S, H, D)
    k = key[0].transpose(0, 1).contiguous().to(torch.bfloat16)
    v = value[0].transpose(0, 1).contiguous().to(torch.bfloat16)
    start = s.length
    loc = torch.arange(start, start + n, device=dev, dtype=torch.int32)
    if s.record is not None:
        ka, va = s.record.get(module.layer_idx, (0.0, 0.0))
        s.record[module.layer_idx] = (max(ka, k.abs().max().item()), max(va, v.abs().max().item()))
    ks, vs = s.scales(module.layer_idx)
    kw = dict(kv_dtype=s.kv_dtype, k_scale_cache=p["ks"], v_scale_cache=p["vs"], k_scale=ks, v_scale=vs)
    append_kv(k, v, loc, p["k"], p["v"], nvfp4_scales=s.nvfp4_scales, **kw)
    if n == 1 and start > 0:       # decode: everything, the new token included, from the pool
        idx = torch.arange(0, start + 1, device=dev, dtype=torch.int32)
        out = decode_attention(q, p["k"], p["v"], torch.tensor([0, start + 1], dtype=torch.int32, device=dev), idx,
                               torch.tensor([start + 1], dtype=torch.int32, device=dev), sm_scale=scaling, **kw)
    else:                          # prefill chunk: cached prefix from the pool + the chunk's own K/V
        idx = torch.arange(0, max(start, 1), device=dev, dtype=torch.int32)
        out = extend_attention(q, k, v, p["k"], p["v"], torch.tensor([0, n], dtype=torch.int32, device=dev),
                               torch.tensor([0, start], dtype=torch.int32, device=dev), idx,
                               torch.tensor([start], dtype=torch.int32, device=dev), max_extend_len=n,
                               sm_scale=scaling, **kw)
    return out.to(query.dtype).unsqueeze(0), None     # (1, S, H, D), as transformers expects


def register():
    from transformers import AttentionInterface

    AttentionInterface.register("sm12x_kv", sm12x_attention)


@torch.no_grad()
def run_sequence(model, ids: torch.Tensor, kv_dtype: str, prefill: int, chunk: int | None = None, k_scale=1.0,
                 v_scale=1.0, layer_scales=None, record=None, nvfp4_scales="max"):
    """Logits (len(ids), vocab) in fp32: ``ids[:prefill]`` prefilled in chunks of ``chunk`` tokens
    (one chunk when None; a later chunk reads the earlier ones from the pool, as a server's chunked
    prefill does), the rest decoded one token at a time (teacher forcing), attention over a
    ``kv_dtype`` pool. Positions of the first chunk read no cached K/V: only later positions can
    differ between formats (``first_cached_position``)."""
    register()
    model.config._attn_implementation = "sm12x_kv"
    dev = next(model.parameters()).device
    sess = KVSession(kv_dtype, slots=len(ids) + 16, k_scale=k_scale, v_scale=v_scale, layer_scales=layer_scales,
                     record=record, nvfp4_scales=nvfp4_scales)
    _ACTIVE.append(sess)
    step = chunk or max(prefill, 1)
    chunks = [ids[i:min(i + step, prefill)] for i in range(0, prefill, step)]
    try:
        outs = []
        pos = 0
        for piece in chunks + [ids[i:i + 1] for i in range(prefill, len(ids))]:
            n = len(piece)
            o = model(input_ids=piece[None].to(dev), position_ids=torch.arange(pos, pos + n, device=dev)[None],
                      use_cache=False)
            outs.append(o.logits[0].float())
            pos += n
            sess.length = pos
        return torch.cat(outs)
    finally:
        _ACTIVE.pop()


def first_cached_position(prefill: int, chunk: int | None) -> int:
    """The first position whose attention reads K/V back from the pool (where formats can differ)."""
    return min(chunk or prefill, prefill) if prefill > 0 else 1


AMAX = {"fp8_e4m3": 448.0, "nvfp4": 448.0 * 6.0}      # largest |value| a unit per-tensor scale represents


def calibrate(model, windows, prefill: int, chunk: int | None = None) -> dict:
    """Per-layer amax of K and V over bf16 runs of ``windows``: {layer: (k_amax, v_amax)}."""
    record: dict = {}
    for ids in windows:
        run_sequence(model, ids, "bf16", prefill, chunk, record=record)
    return record


def layer_scales(amax: dict, kv_dtype: str) -> dict:
    """Per-tensor scales per layer that map each layer's K / V amax onto its format's largest value."""
    kf, vf = parts(kv_dtype)
    return {layer: (ka / AMAX[kf] if kf in AMAX and ka > 0 else 1.0, va / AMAX[vf] if vf in AMAX and va > 0 else 1.0)
            for layer, (ka, va) in amax.items()}


def compare(logits: dict, ids: torch.Tensor, ref: str = "bf16", start: int = 0, end: int | None = None) -> list[dict]:
    """Per format: perplexity, mean KL(ref || format) and top-1 agreement with ``ref`` of the
    next-token distributions at positions ``start .. end-1`` (``end`` defaults to the last position
    that has a next token)."""
    end = len(ids) - 1 if end is None else min(end, len(ids) - 1)
    tgt = ids[start + 1:end + 1].to(logits[ref].device)
    rows = []
    lp_ref = torch.log_softmax(logits[ref][start:end], -1)
    for fmt, lg in logits.items():
        lp = torch.log_softmax(lg[start:end], -1)
        nll = -lp.gather(1, tgt[:, None]).mean().item()
        kl = (lp_ref.exp() * (lp_ref - lp)).sum(-1).mean().item()
        top1 = (lp.argmax(-1) == lp_ref.argmax(-1)).float().mean().item()
        rows.append(dict(format=fmt, perplexity=math.exp(nll), kl=max(kl, 0.0), top1_agreement=top1,
                         tokens=int(tgt.numel())))
    return rows


def stress(device, tokens=512, heads=8, d=128, group=4, outlier_channels=4, factor=50.0, seed=0):
    """Attention-output error per KV format when K has a few per-channel outliers (20-100x, as
    measured in trained LLMs) and V does not: relative L2 of the decode output vs fp32 attention on
    the original K/V. FP8 and NVFP4 global scales are set from the tensor's amax, as a calibrated
    checkpoint would have them."""
    g = torch.Generator().manual_seed(seed)
    k = torch.randn(tokens, heads, d, generator=g)
    ch = torch.randperm(d, generator=g)[:outlier_channels]
    k[:, :, ch] *= factor
    v = torch.randn(tokens, heads, d, generator=g)
    q = torch.randn(1, heads * group, d, generator=g)
    kk = k.repeat_interleave(group, 1)
    vv = v.repeat_interleave(group, 1)
    s = torch.einsum("hd,nhd->hn", q[0], kk) / math.sqrt(d)
    ref = torch.einsum("hn,nhd->hd", torch.softmax(s, -1), vv)
    rows = []
    for fmt, rule in [(f, "max") for f in FORMATS] + [(f, "mse") for f in FORMATS if "nvfp4" in f]:
        kf, vf = parts(fmt)
        ks = k.abs().max().item() / AMAX[kf] if kf in AMAX else 1.0
        vs = v.abs().max().item() / AMAX[vf] if vf in AMAX else 1.0
        sess = KVSession(fmt, tokens, ks, vs)
        p = sess.pool(0, heads, d, device)
        kw = dict(kv_dtype=fmt, k_scale_cache=p["ks"], v_scale_cache=p["vs"], k_scale=ks, v_scale=vs)
        loc = torch.arange(tokens, dtype=torch.int32, device=device)
        append_kv(k.to(device, torch.bfloat16), v.to(device, torch.bfloat16), loc, p["k"], p["v"],
                  nvfp4_scales=rule, **kw)
        out = decode_attention(q.to(device, torch.bfloat16), p["k"], p["v"],
                               torch.tensor([0, tokens], dtype=torch.int32, device=device), loc,
                               torch.tensor([tokens], dtype=torch.int32, device=device), **kw)
        err = ((out[0].float().cpu() - ref).norm() / ref.norm()).item()
        rows.append(dict(format=fmt if rule == "max" else f"{fmt} (mse scales)", outlier_channels=outlier_channels, outlier_factor=factor,
                         rel_l2_error=err))
    return rows
