"""Paged decode / extend attention against a float32 torch reference over the dequantized cache.

Every supported KV format x head_dim x GQA ratio x page size, with random lengths that include 1,
0-length prefixes and sizes that are not multiples of the tiles. Tolerance: twice the error of a
plain torch implementation at the same activation dtype (bf16/fp16 operands, fp32 accumulation)
plus a small floor.
"""
import dataclasses
import itertools
import math

import pytest
import torch

from attention_ref import ACT, Pool, assert_close_attn, attention_ref, paged_layout
from conftest import HAS_CUDA
from sgl_kernel_sm12x import nvfp4, planner
from sgl_kernel_sm12x.attention.decode import decode_attention, decode_workspace
from sgl_kernel_sm12x.attention.extend import extend_attention

FORMATS = [("bf16", "bf16"), ("fp16", "fp16"), ("fp8_e4m3", "bf16"), ("fp8_e4m3", "fp16"),
           ("nvfp4", "bf16"), ("nvfp4", "fp16"), ("fp8k_nvfp4v", "bf16")]
SCALES = {"bf16": (1.0, 1.0), "fp16": (1.0, 1.0), "fp8_e4m3": (0.05, 0.02), "nvfp4": (0.5, 2.0),
          "fp8k_nvfp4v": (0.05, 2.0)}


def lowp_ref(q, k, v, dtype, **kw):
    """Plain attention with operands rounded to ``dtype`` (scores and sums in fp32)."""
    r = lambda t: t.to(dtype).float()  # noqa: E731
    return attention_ref(r(q), r(k), r(v), **kw).to(dtype).float()


def tolerance(out_ref, lowp, floor=2e-3):
    return 2 * (lowp - out_ref).abs().max().item() + floor


# The Triton interpreter truncates fp32 -> bf16/fp16 casts instead of rounding to nearest, so the
# output cast may be one unit in the last place off there; on the GPU rtol is 0.
if HAS_CUDA:
    RTOL = {torch.bfloat16: 0.0, torch.float16: 0.0}
else:
    RTOL = {torch.bfloat16: 2.0 ** -7, torch.float16: 2.0 ** -10}


def assert_attn(out, ref, what, atol):
    assert_close_attn(out, ref, what, atol=atol, rtol=RTOL[out.dtype])


def assert_decode_per_request(out, q, pool, tok, lens, act, what="", **kw):
    """Each request's decode output against the float reference over its dequantized cache."""
    for i, L in enumerate(lens):
        k, v = pool.dequant(tok[i])
        ref = attention_ref(q[i:i + 1].float(), k, v, **kw)
        tol = tolerance(ref, lowp_ref(q[i:i + 1].float(), k, v, act, **kw))
        assert_attn(out[i:i + 1], ref, f"request {i} (len {L}{what})", atol=tol)


# the matrices run the power-of-two ratios; the others (3, 5, 6, 7: Llama-3.2-3B, Qwen3-14B,
# MiniMax, Qwen2.5-VL) have their own tests below, every format and both phases
MATRIX_GROUPS = (1, 2, 4, 8, 16)
ODD_GROUPS = (3, 5, 6, 7)


def _fill_pool(kv_dtype, q_dtype, lens, page, hkv, d, device, slots=None):
    slots = slots or max(64, (sum(lens) // page + len(lens) + 2) * page * 2)
    kvind_ptr, kv_indices, tok = paged_layout(lens, page, slots, device)
    ks, vs = SCALES[kv_dtype]
    pool = Pool(kv_dtype, q_dtype, slots, hkv, d, device, k_scale=ks, v_scale=vs)
    originals = []
    for L, t in zip(lens, tok):
        k = torch.randn(L, hkv, d) * 1.5
        v = torch.randn(L, hkv, d)
        originals.append((k, v))
        if L:
            pool.write(k.to(device), v.to(device), t.to(device))
    return pool, kvind_ptr, kv_indices.to(device), tok, originals


def _lens(n, hi, device_big=False):
    lens = [1] + [int(x) for x in torch.randint(2, hi, (n - 1,))]
    return lens


@pytest.mark.parametrize("page", planner.PAGE_SIZES)
@pytest.mark.parametrize("group", MATRIX_GROUPS)
@pytest.mark.parametrize("d", planner.HEAD_DIMS)
@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f"{f[0]}-{f[1]}")
def test_decode_matrix(fmt, d, group, page, device):
    kv_dtype, q_dtype = fmt
    hkv = 2 if group <= 4 else 1
    lens = _lens(3, 200)
    pool, indptr, indices, tok, _ = _fill_pool(kv_dtype, q_dtype, lens, page, hkv, d, device)
    q = torch.randn(len(lens), hkv * group, d).to(ACT[q_dtype])
    out = torch.full_like(q, float("nan")).to(device)
    seq = torch.tensor(lens, dtype=torch.int32, device=device)
    decode_attention(q.to(device), pool.k, pool.v, indptr, indices, seq, kv_dtype=kv_dtype, page_size=page,
                     k_scale_cache=pool.ks, v_scale_cache=pool.vs, k_scale=pool.k_scale, v_scale=pool.v_scale,
                     max_splits=2, out=out)
    assert_decode_per_request(out, q, pool, tok, lens, ACT[q_dtype])


@pytest.mark.parametrize("page", planner.PAGE_SIZES)
@pytest.mark.parametrize("group", MATRIX_GROUPS)
@pytest.mark.parametrize("d", planner.HEAD_DIMS)
@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f"{f[0]}-{f[1]}")
def test_extend_matrix(fmt, d, group, page, device):
    kv_dtype, q_dtype = fmt
    hkv = 1 if group >= 8 else 2
    prefix = [0, int(torch.randint(1, 90, ()))]
    ext = [int(torch.randint(1, 70, ())), 1]
    _run_extend(kv_dtype, q_dtype, d, hkv, group, page, prefix, ext, device)


def _run_extend(kv_dtype, q_dtype, d, hkv, group, page, prefix, ext, device, config=None, max_prefix_len=None,
                arch=None, **kw):
    pool, indptr, indices, tok, _ = _fill_pool(kv_dtype, q_dtype, prefix, page, hkv, d, device)
    T = sum(ext)
    dt = ACT[q_dtype]
    q, k, v = torch.randn(T, hkv * group, d).to(dt), torch.randn(T, hkv, d).to(dt), torch.randn(T, hkv, d).to(dt)
    qo = torch.tensor([0] + torch.tensor(ext).cumsum(0).tolist(), dtype=torch.int32)
    out = torch.full_like(q, float("nan")).to(device)
    extend_attention(q.to(device), k.to(device), v.to(device), pool.k, pool.v, qo.to(device), indptr, indices,
                     torch.tensor(prefix, dtype=torch.int32, device=device), kv_dtype=kv_dtype,
                     max_extend_len=max(ext), page_size=page, k_scale_cache=pool.ks, v_scale_cache=pool.vs,
                     k_scale=pool.k_scale, v_scale=pool.v_scale, out=out, config=config, max_prefix_len=max_prefix_len,
                     arch=arch, **kw)
    for i, (P, E) in enumerate(zip(prefix, ext)):
        kp, vp = pool.dequant(tok[i]) if P else (torch.zeros(0, hkv, d),) * 2
        a, b = int(qo[i]), int(qo[i + 1])
        kk = torch.cat([kp, k[a:b].float()])
        vv = torch.cat([vp, v[a:b].float()])
        ref = attention_ref(q[a:b].float(), kk, vv, **kw)
        tol = tolerance(ref, lowp_ref(q[a:b].float(), kk, vv, dt, **kw))
        assert_attn(out[a:b], ref, f"request {i} (prefix {P}, chunk {E})", atol=tol)


@pytest.mark.parametrize("page", [1, 16])
@pytest.mark.parametrize("group", ODD_GROUPS)
@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f"{f[0]}-{f[1]}")
def test_odd_gqa_ratios_decode_and_extend(fmt, group, page, device):
    """GQA ratios that are not powers of two (3, 5, 6, 7), every format, both phases: the MMA rows
    past the group are masked in decode, extend packs only heads that divide the group (6: two),
    against the float reference over the dequantized cache."""
    kv_dtype, q_dtype = fmt
    d, hkv = 64, 2
    lens = [1, int(torch.randint(2, 150, ()))]
    pool, indptr, indices, tok, _ = _fill_pool(kv_dtype, q_dtype, lens, page, hkv, d, device)
    q = torch.randn(len(lens), hkv * group, d).to(ACT[q_dtype])
    out = torch.full_like(q, float("nan")).to(device)
    seq = torch.tensor(lens, dtype=torch.int32, device=device)
    decode_attention(q.to(device), pool.k, pool.v, indptr, indices, seq, kv_dtype=kv_dtype, page_size=page,
                     k_scale_cache=pool.ks, v_scale_cache=pool.vs, k_scale=pool.k_scale, v_scale=pool.v_scale,
                     max_splits=2, out=out)
    assert_decode_per_request(out, q, pool, tok, lens, ACT[q_dtype])
    _run_extend(kv_dtype, q_dtype, d, hkv, group, page, [0, int(torch.randint(1, 90, ()))],
                [int(torch.randint(1, 40, ())), 1], device)


@pytest.mark.parametrize("splits", [1, 4])
@pytest.mark.parametrize("page", [1, 16])
@pytest.mark.parametrize("fmt", [("bf16", "bf16"), ("fp8_e4m3", "fp16"), ("nvfp4", "bf16")], ids=lambda f: f[0])
def test_decode_attention_sinks(fmt, page, splits, device):
    """Attention sinks (gpt-oss): exp(sink) joins each head's softmax denominator; one split (the
    one-split store is bypassed for the reduce) and several; sinks both far below and above the
    scores; a request without tokens reads zeros; against the float reference."""
    kv_dtype, q_dtype = fmt
    d, hkv, group = 64, 2, 4
    lens = [0, 1, int(torch.randint(40, 200, ()))]
    pool, indptr, indices, tok, _ = _fill_pool(kv_dtype, q_dtype, lens, page, hkv, d, device)
    q = torch.randn(len(lens), hkv * group, d).to(ACT[q_dtype])
    sinks = torch.cat([torch.randn(hkv * group - 2) * 2, torch.tensor([-30.0, 8.0])]).to(device)
    out = torch.full_like(q, float("nan")).to(device)
    seq = torch.tensor(lens, dtype=torch.int32, device=device)
    decode_attention(q.to(device), pool.k, pool.v, indptr, indices, seq, kv_dtype=kv_dtype, page_size=page,
                     k_scale_cache=pool.ks, v_scale_cache=pool.vs, k_scale=pool.k_scale, v_scale=pool.v_scale,
                     max_splits=splits, out=out, sinks=sinks)
    assert (out[0] == 0).all()
    assert_decode_per_request(out[1:], q[1:], pool, tok[1:], lens[1:], ACT[q_dtype], sinks=sinks)


@pytest.mark.parametrize("window", [-1, 50])
@pytest.mark.parametrize("fmt", [("bf16", "bf16"), ("nvfp4", "bf16")], ids=lambda f: f[0])
def test_extend_attention_sinks(fmt, window, device):
    """Attention sinks in extend, with and without a sliding window, a cached prefix and a fresh
    prefill in one batch, paged: against the float reference."""
    kv_dtype, q_dtype = fmt
    sinks = (torch.randn(8) * 2).to(device)
    _run_extend(kv_dtype, q_dtype, 64, 2, 4, 16, [0, 130], [50, 33], device, sinks=sinks, window_left=window)


def test_sinks_are_checked():
    """A sinks tensor of the wrong shape, dtype or device is refused naming ``sinks``."""
    q = torch.zeros(2, 8, 64, dtype=torch.bfloat16)
    kc = torch.zeros(16, 2, 64, dtype=torch.bfloat16)
    i32 = lambda *v: torch.tensor(v, dtype=torch.int32)  # noqa: E731
    for bad in (torch.zeros(4), torch.zeros(8, dtype=torch.int32), torch.zeros(8, 1)):
        with pytest.raises(ValueError, match="sinks: expected a contiguous \\(8,\\)"):
            decode_attention(q, kc, kc, i32(0, 1, 2), i32(0, 1), i32(1, 1), kv_dtype="bf16", sinks=bad)
        with pytest.raises(ValueError, match="sinks"):
            extend_attention(q[0:2], kc[:2], kc[:2], kc, kc, i32(0, 2), i32(0, 0), i32(0), i32(0), max_extend_len=2,
                             kv_dtype="bf16",
                             sinks=bad)


def test_every_gqa_ratio_up_to_16_is_planned():
    """Every ratio 1..16 plans in both phases on every arch; extend's head packing divides the
    group; 17 is refused naming the argument."""
    for arch in (80, 89, 90, 120, 121):
        for group in range(1, 17):
            for kv in ("bf16", "nvfp4"):
                d = planner.plan_decode(arch, head_dim=128, kv_dtype=kv, group=group, batch=4, kv_heads=8)
                assert d.block_h >= group
                for prefix in (True, False):
                    e = planner.plan_extend(arch, head_dim=128, kv_dtype=kv, group=group, prefix=prefix)
                    assert group % e.pack == 0 and e.block_m % e.pack == 0
    with pytest.raises(ValueError, match="group"):
        planner.plan_decode(120, head_dim=128, kv_dtype="bf16", group=17)


@pytest.mark.parametrize("pack", [2, 4, 8])
@pytest.mark.parametrize("fmt", [("bf16", "bf16"), ("fp8_e4m3", "fp16"), ("nvfp4", "bf16"), ("fp8k_nvfp4v", "bf16")],
                         ids=lambda f: f"{f[0]}-{f[1]}")
def test_extend_gqa_packed_rows(fmt, pack, device):
    """Rows of one program packed as (token, head) pairs of a KV group: every query head of the
    group, chunks not a multiple of the tokens per program, prefix reads from a paged pool."""
    kv_dtype, q_dtype = fmt
    group = 8
    cfg = planner.plan_extend(120, head_dim=64, kv_dtype=kv_dtype, q_dtype=q_dtype, group=group, page_size=16)
    cfg = planner.ExtendConfig(max(cfg.block_m, pack * 4), cfg.block_n, cfg.num_warps, cfg.num_stages, cfg.hw_fp8,
                               pack=pack)
    _run_extend(kv_dtype, q_dtype, 64, 2, group, 16, [0, 37, 1], [23, 1, 9], device, config=cfg)


@pytest.mark.parametrize("kv_dtype", ["bf16", "nvfp4"])
def test_extend_gqa_packed_soft_cap_and_window(kv_dtype, device):
    cfg = planner.ExtendConfig(32, 32, 4, 2, pack=4)
    _run_extend(kv_dtype, "bf16", 64, 1, 4, 1, [0, 130], [50, 33], device, config=cfg, logit_cap=8.0, window_left=50)


@pytest.mark.parametrize("unmasked,diag_in_loop", [(True, False), (True, True), (False, False)])
@pytest.mark.parametrize("q_dtype", ["bf16", "fp16"])
def test_extend_16bit_with_and_without_the_select_free_loop(unmasked, diag_in_loop, q_dtype, device):
    """16-bit pools: whole prefix tiles and chunk keys below the diagonal in a select-free loop
    (the diagonal tiles in a loop of their own, or as that loop's last, masked iterations), or
    (``unmasked=False``, as planned on sm_86/89) every tile through the masked one; prefixes and
    chunks ending inside a tile and spanning several, a soft cap (which keeps the select)."""
    cfg = planner.ExtendConfig(32, 16, 4, 2, unmasked=unmasked, diag_in_loop=diag_in_loop)
    _run_extend(q_dtype, q_dtype, 64, 2, 2, 1, [0, 16, 45, 96], [40, 16, 20, 33], device, config=cfg)
    _run_extend(q_dtype, q_dtype, 64, 1, 2, 16, [0, 70], [50, 33], device, config=cfg, logit_cap=8.0)


@pytest.mark.parametrize("prefix_unmasked", [True, False])
@pytest.mark.parametrize("unmasked,diag_in_loop", [(True, False), (True, True), (False, False)])
@pytest.mark.parametrize("kv_dtype", ["fp8_e4m3", "nvfp4", "fp8k_nvfp4v"])
def test_extend_quantized_with_and_without_the_select_free_loops(kv_dtype, unmasked, diag_in_loop, prefix_unmasked,
                                                                 device):
    """Quantized pools: the chunk's keys below the diagonal in the select-free loop (``unmasked``,
    after the NVFP4 halves are interleaved back into one accumulator), whole prefix tiles too
    (``quant_prefix_unmasked``); prefixes and chunks ending inside a tile and spanning several,
    packed heads, a soft cap (which keeps the select)."""
    cfg = planner.ExtendConfig(32, 32, 4, 2, pack=2, unmasked=unmasked, quant_prefix_unmasked=prefix_unmasked,
                               diag_in_loop=diag_in_loop)
    _run_extend(kv_dtype, "bf16", 64, 2, 2, 1, [0, 32, 45, 96], [40, 32, 20, 33], device, config=cfg)
    _run_extend(kv_dtype, "bf16", 64, 1, 2, 16, [0, 70], [50, 33], device, config=cfg, logit_cap=8.0)


@pytest.mark.parametrize("heavy_first", [True, False])
@pytest.mark.parametrize("fmt", [("bf16", "bf16"), ("fp8_e4m3", "bf16"), ("nvfp4", "bf16")], ids=lambda f: f[0])
def test_extend_row_block_order_and_prefix_stages(fmt, heavy_first, device):
    """Row blocks launched longest first (or in order) with a deep prefix pipeline, over chunks of
    unequal length (the longest chunk sizes the grid: shorter ones leave the first / last programs
    with nothing to do) and prefixes that end inside a tile. (32-key tiles: NVFP4 at 16-key tiles
    computes wrong results on an H100 under Triton 3.6, with any pipeline depth; never planned.)"""
    kv_dtype, q_dtype = fmt
    cfg = planner.ExtendConfig(32, 32, 4, 2, pack=1, heavy_first=heavy_first, prefix_stages=5)
    _run_extend(kv_dtype, q_dtype, 64, 2, 2, 1, [0, 45, 3, 70], [70, 1, 33, 16], device, config=cfg)


def test_extend_pack_must_divide_the_group(device):
    with pytest.raises(ValueError, match="pack=4 must divide the GQA group"):
        _run_extend("bf16", "bf16", 64, 2, 2, 1, [0], [5], device, config=planner.ExtendConfig(32, 32, 4, 2, pack=4))


@pytest.mark.parametrize("kv_dtype", ["bf16", "nvfp4"])
def test_decode_soft_cap_and_window(kv_dtype, device):
    lens = [1, 150, 77]
    pool, indptr, indices, tok, _ = _fill_pool(kv_dtype, "bf16", lens, 16, 2, 64, device)
    q = torch.randn(3, 8, 64).to(torch.bfloat16) * 4
    out = decode_attention(q.to(device), pool.k, pool.v, indptr, indices,
                           torch.tensor(lens, dtype=torch.int32, device=device), kv_dtype=kv_dtype, page_size=16,
                           k_scale_cache=pool.ks, v_scale_cache=pool.vs, k_scale=pool.k_scale,
                           v_scale=pool.v_scale, logit_cap=5.0, window_left=40)
    for i, L in enumerate(lens):
        k, v = pool.dequant(tok[i])
        kw = dict(logit_cap=5.0, window_left=40)
        ref = attention_ref(q[i:i + 1].float(), k, v, **kw)
        assert_attn(out[i:i + 1], ref, f"request {i}",
                    atol=tolerance(ref, lowp_ref(q[i:i + 1].float(), k, v, torch.bfloat16, **kw)))


@pytest.mark.parametrize("kv_dtype", ["bf16", "fp8_e4m3", "nvfp4"])
def test_extend_soft_cap_and_window(kv_dtype, device):
    _run_extend(kv_dtype, "bf16", 64, 2, 2, 1, [0, 130], [90, 33], device, logit_cap=8.0, window_left=50)


def test_decode_splits_agree(device):
    """Split-KV with 1..16 splits gives the same answer (the reduce is exact up to rounding)."""
    lens = [1000, 3, 513]
    pool, indptr, indices, tok, _ = _fill_pool("nvfp4", "bf16", lens, 1, 1, 64, device)
    q = torch.randn(3, 4, 64).to(torch.bfloat16).to(device)
    seq = torch.tensor(lens, dtype=torch.int32, device=device)
    outs = [decode_attention(q, pool.k, pool.v, indptr, indices, seq, kv_dtype="nvfp4", k_scale_cache=pool.ks,
                             v_scale_cache=pool.vs, k_scale=pool.k_scale, v_scale=pool.v_scale, max_splits=s)
            for s in (1, 2, 16, 256)]
    for o in outs[1:]:
        assert_close_attn(o, outs[0], "splits", atol=2e-2)


@pytest.mark.parametrize("page", [1, 16])
@pytest.mark.parametrize("rows", [128, 1024])
@pytest.mark.parametrize("fmt", [("bf16", "bf16"), ("fp16", "fp16")], ids=lambda f: f[0])
def test_decode_sm90_wide_token_tiles(fmt, rows, page, device):
    """The 128-token tiles the planner gives 16-bit pools on sm_90 (64-256 (request, KV head) rows:
    2 splits here; from 1,024: one split, the output stored by the split stage), run here on a few
    requests: lengths inside the first tile, one past it, several tiles, none; the output poisoned
    first."""
    kv_dtype, q_dtype = fmt
    cfg = planner.plan_decode(90, head_dim=128, kv_dtype=kv_dtype, q_dtype=q_dtype, group=2, page_size=page,
                              batch=rows // 8, kv_heads=8, num_sms=132)
    assert (cfg.block_n, cfg.max_splits) == ((128, 2) if rows == 128 else (128, 1))
    lens = [1, 129, 300, 0]
    hkv = 2
    pool, indptr, indices, tok, _ = _fill_pool(kv_dtype, q_dtype, lens, page, hkv, 128, device)
    q = torch.randn(len(lens), hkv * 2, 128).to(ACT[q_dtype]).to(device)
    seq = torch.tensor(lens, dtype=torch.int32, device=device)
    out = torch.full_like(q, float("nan"))
    decode_attention(q, pool.k, pool.v, indptr, indices, seq, kv_dtype=kv_dtype, page_size=page, out=out, config=cfg)
    assert_decode_per_request(out, q, pool, tok, lens, ACT[q_dtype])


@pytest.mark.parametrize("page", [1, 16])
@pytest.mark.parametrize("prefetch", [False, True])
@pytest.mark.parametrize("fmt", [("bf16", "bf16"), ("fp8_e4m3", "bf16"), ("nvfp4", "bf16"), ("fp8k_nvfp4v", "bf16")],
                         ids=lambda f: f[0])
def test_decode_register_prefetch_on_and_off(fmt, prefetch, page, device):
    """Both loop forms of the split stage (the raw bytes of tile i + 1 and the slot ids of tile i + 2
    loaded while tile i is computed, or each tile loaded where it is used), for every format, over
    lengths that end inside a tile, span several tiles and several splits."""
    kv_dtype, q_dtype = fmt
    lens = [1, 31, 97, 700]
    hkv, group, d = 2, 4, 64
    pool, indptr, indices, tok, _ = _fill_pool(kv_dtype, q_dtype, lens, page, hkv, d, device)
    q = torch.randn(len(lens), hkv * group, d).to(ACT[q_dtype])
    seq = torch.tensor(lens, dtype=torch.int32, device=device)
    plan = planner.plan_decode(120, head_dim=d, kv_dtype=kv_dtype, q_dtype=q_dtype, group=group, page_size=page, fp4_mma=False,
                               batch=len(lens), kv_heads=hkv, max_splits=4)
    cfg = dataclasses.replace(plan, block_n=32, prefetch=prefetch)
    out = torch.full_like(q, float("nan")).to(device)
    decode_attention(q.to(device), pool.k, pool.v, indptr, indices, seq, kv_dtype=kv_dtype, page_size=page,
                     k_scale_cache=pool.ks, v_scale_cache=pool.vs, k_scale=pool.k_scale, v_scale=pool.v_scale,
                     max_splits=4, out=out, config=cfg)
    assert_decode_per_request(out, q, pool, tok, lens, ACT[q_dtype], f", prefetch {prefetch}")


def test_decode_prefetch_is_planned_for_nvfp4_values_only():
    """The register prefetch pays where the loop pipeliner cannot stage the tiles (the NVFP4 V
    formats); for bf16 / fp8 the pipeliner does better (H100 sweep): the planner says so per format."""
    for kv in planner.KV_DTYPES:
        q_dtype = kv if kv in ("bf16", "fp16") else "bf16"
        cfg = planner.plan_decode(120, head_dim=128, kv_dtype=kv, q_dtype=q_dtype, group=4, fp4_mma=False)
        assert cfg.prefetch == (kv in planner.FP4_V), kv


def test_decode_empty_and_lse(device):
    lens = [0, 5]
    pool, indptr, indices, tok, _ = _fill_pool("bf16", "bf16", lens, 1, 1, 64, device)
    q = torch.randn(2, 1, 64).to(torch.bfloat16).to(device)
    lse = torch.empty(2, 1, device=device)
    out = decode_attention(q, pool.k, pool.v, indptr, indices, torch.tensor(lens, dtype=torch.int32, device=device),
                           kv_dtype="bf16", lse=lse)
    assert (out[0] == 0).all(), "a request without tokens yields zeros"
    k, _ = pool.dequant(tok[1])
    s = (q[1].float().cpu() @ k[:, 0].T) / 8.0
    assert abs(lse[1, 0].item() - torch.logsumexp(s, -1).item()) < 2e-2


@pytest.mark.parametrize("fmt", [("bf16", "bf16"), ("fp16", "fp16"), ("fp8_e4m3", "bf16"), ("nvfp4", "fp16"),
                                 ("fp8k_nvfp4v", "bf16")], ids=lambda f: f"{f[0]}-{f[1]}")
def test_decode_one_split_stores_the_output_itself(fmt, device, monkeypatch):
    """One split and no LSE wanted: the Triton split stage normalises, applies the V scale and
    stores the output in q's dtype, and no reduce is launched; an empty request still reads zeros.
    With an LSE wanted the same call goes through the reduce and agrees."""
    kv_dtype, q_dtype = fmt
    lens = [0, 1, 97, 300]
    hkv, group, d = 2, 4, 64
    pool, indptr, indices, tok, _ = _fill_pool(kv_dtype, q_dtype, lens, 16, hkv, d, device)
    q = torch.randn(len(lens), hkv * group, d).to(ACT[q_dtype]).to(device)
    seq = torch.tensor(lens, dtype=torch.int32, device=device)
    cfg = planner.plan_decode(120, head_dim=d, kv_dtype=kv_dtype, q_dtype=q_dtype, group=group, page_size=16,
                              batch=len(lens), kv_heads=hkv, max_splits=1, fp4_mma=False)
    kw = dict(kv_dtype=kv_dtype, page_size=16, k_scale_cache=pool.ks, v_scale_cache=pool.vs, k_scale=pool.k_scale,
              v_scale=pool.v_scale, config=cfg)
    _check_one_split_store(q, pool, indptr, indices, seq, tok, lens, ACT[q_dtype], kw, monkeypatch)


def _check_one_split_store(q, pool, indptr, indices, seq, tok, lens, act, kw, monkeypatch):
    """A one-split decode call (``kw``) with an LSE wanted (through the reduce), then without one
    (no reduce may launch): request 0 has no tokens and must read zeros, the others the float
    reference, and both calls must agree."""
    from sgl_kernel_sm12x.attention import decode as dec
    with_lse = decode_attention(q, pool.k, pool.v, indptr, indices, seq,
                                lse=torch.empty(q.shape[0], q.shape[1], device=q.device), **kw)

    class NoReduce:
        def __getitem__(self, grid):
            raise AssertionError("the reduce was launched for a one-split call")
    monkeypatch.setattr(dec, "decode_reduce_kernel", NoReduce())
    out = torch.full_like(q, float("nan"))
    decode_attention(q, pool.k, pool.v, indptr, indices, seq, out=out, **kw)
    assert (out[0] == 0).all(), "a request without tokens yields zeros"
    assert_decode_per_request(out[1:], q[1:].cpu(), pool, tok[1:], lens[1:], act, ", one split")
    assert_close_attn(out, with_lse, "one split, direct vs through the reduce", atol=2e-2)


def test_nan_in_one_request_stays_there(device):
    lens = [40, 40]
    pool, indptr, indices, tok, _ = _fill_pool("nvfp4", "bf16", lens, 1, 1, 64, device)
    bad = tok[0][7].item()
    pool.ks[bad, 0, 1] = 0x7F          # NaN block scale in request 0's K
    q = torch.randn(2, 2, 64).to(torch.bfloat16).to(device)
    out = decode_attention(q, pool.k, pool.v, indptr, indices, torch.tensor(lens, dtype=torch.int32, device=device),
                           kv_dtype="nvfp4", k_scale_cache=pool.ks, v_scale_cache=pool.vs, max_splits=1)
    assert out[0].isnan().all(), "the poisoned request must show NaN"
    assert not out[1].isnan().any(), "other requests must be unaffected"


@pytest.mark.parametrize("kv_dtype,bound", [("fp8_e4m3", 0.1), ("nvfp4", 0.25)])
def test_quantization_error_against_original_kv(kv_dtype, bound, device, record_property):
    """Error of attention over the quantized cache vs over the original bf16 K/V, reported."""
    lens = [300]
    pool, indptr, indices, tok, orig = _fill_pool(kv_dtype, "bf16", lens, 16, 2, 128, device)
    q = torch.randn(1, 8, 128).to(torch.bfloat16)
    out = decode_attention(q.to(device), pool.k, pool.v, indptr, indices,
                           torch.tensor(lens, dtype=torch.int32, device=device), kv_dtype=kv_dtype, page_size=16,
                           k_scale_cache=pool.ks, v_scale_cache=pool.vs, k_scale=pool.k_scale, v_scale=pool.v_scale)
    k, v = orig[0]
    ref = attention_ref(q.float(), k.to(torch.bfloat16).float(), v.to(torch.bfloat16).float())
    rel = ((out.float().cpu() - ref).norm() / ref.norm()).item()
    record_property(f"{kv_dtype}_rel_err_vs_bf16", rel)
    print(f"{kv_dtype}: attention output rel-L2 error vs original bf16 K/V = {rel:.4f}")
    assert rel < bound


@pytest.mark.parametrize("kw,name", [
    (dict(kv_dtype="int4"), "kv_dtype"),
    (dict(page_size=8), "page_size"),
    (dict(d=80), "head_dim=80"),
    (dict(group=32), "group"),
    (dict(q_fp32=True), "q"),
])
def test_decode_rejects_unsupported(kw, name, device):
    d, group = kw.pop("d", 64), kw.pop("group", 2)
    q = torch.randn(1, group, d, device=device)
    if not kw.pop("q_fp32", False):
        q = q.to(torch.bfloat16)
    kc = torch.zeros(16, 1, d, dtype=torch.bfloat16, device=device)
    with pytest.raises(ValueError, match=name):
        decode_attention(q, kc, kc, torch.tensor([0, 1], dtype=torch.int32, device=device),
                         torch.zeros(1, dtype=torch.int32, device=device),
                         torch.ones(1, dtype=torch.int32, device=device), **{"kv_dtype": "bf16", **kw})


@pytest.mark.parametrize("op", ["decode", "extend", "append"])
def test_activation_dtype_errors_name_argument_and_supported_dtypes(op, device):
    """The three entry points word a wrong activation dtype alike: the argument, the dtype got, the
    supported dtypes."""
    from sgl_kernel_sm12x.kv_append import append_kv
    i32 = lambda *v: torch.tensor(v, dtype=torch.int32, device=device)  # noqa: E731
    x = torch.randn(3, 2, 64, dtype=torch.float32, device=device)
    kc = torch.zeros(16, 2, 64, dtype=torch.bfloat16, device=device)
    want = r"dtype torch.float32 is not supported; supported: \['torch.bfloat16', 'torch.float16'\]"
    with pytest.raises(ValueError, match=("k: " if op == "append" else "q: ") + want):
        if op == "decode":
            decode_attention(x, kc, kc, i32(0, 1, 2, 3), i32(0, 1, 2), i32(1, 1, 1), kv_dtype="bf16")
        elif op == "extend":
            extend_attention(x, x, x, kc, kc, i32(0, 3), i32(0, 0), i32(0), i32(0), kv_dtype="bf16",
                             max_extend_len=3)
        else:
            append_kv(x, x, torch.arange(3, device=device), kc, kc, kv_dtype="bf16")


def test_extend_rejects_wrong_pool(device):
    q = torch.randn(3, 2, 64, dtype=torch.bfloat16, device=device)
    kc = torch.zeros(16, 2, 64, dtype=torch.uint8, device=device)   # fp8-shaped, called as nvfp4
    i32 = lambda *v: torch.tensor(v, dtype=torch.int32, device=device)  # noqa: E731
    with pytest.raises(ValueError, match="k_cache"):
        extend_attention(q, q, q, kc, kc, i32(0, 3), i32(0, 0), i32(0), i32(0), kv_dtype="nvfp4", max_extend_len=3)


@pytest.mark.parametrize("kv_dtype", ["fp8_e4m3", "nvfp4", "fp8k_nvfp4v"])
def test_extend_without_prefix_runs_the_16_bit_launch(kv_dtype, device, monkeypatch):
    """Fresh prefills (max_prefix_len=0) never read the pool: a quantized pool's call takes the
    16-bit kernel and tile, with the same result as the quantized launch and the reference."""
    from sgl_kernel_sm12x.attention import extend as ext_mod

    lens = [1, 37, 70]
    hkv, group, d = 2, 4, 64
    pool, _, _, _, _ = _fill_pool(kv_dtype, "bf16", [4], 1, hkv, d, device)    # unread pool
    T = sum(lens)
    q = torch.randn(T, hkv * group, d).to(torch.bfloat16).to(device)
    k = (torch.randn(T, hkv, d) * 1.5).to(torch.bfloat16).to(device)
    v = torch.randn(T, hkv, d).to(torch.bfloat16).to(device)
    i32 = lambda x: torch.tensor(x, dtype=torch.int32, device=device)  # noqa: E731
    qo = i32([0] + list(itertools.accumulate(lens)))
    args = (q, k, v, pool.k, pool.v, qo, i32([0] * (len(lens) + 1)), i32([0]), i32([0] * len(lens)))
    kw = dict(kv_dtype=kv_dtype, max_extend_len=max(lens), k_scale_cache=pool.ks, v_scale_cache=pool.vs,
              k_scale=pool.k_scale, v_scale=pool.v_scale)
    seen = []
    real_plan = ext_mod.planner.plan_extend
    monkeypatch.setattr(ext_mod.planner, "plan_extend",
                        lambda *a, **k: seen.append((k["kv_dtype"], k["prefix"])) or real_plan(*a, **k))
    base = extend_attention(*args, **kw)
    fast = extend_attention(*args, **kw, max_prefix_len=0)
    # (a batch plans its no-window and sliding-window configurations alike)
    assert list(dict.fromkeys(seen)) == [(kv_dtype, True), ("bf16", False)], \
        "planned without the prefix loop's deep pipeline"
    no_prefix = real_plan(90, head_dim=128, kv_dtype="bf16", prefix=False)
    assert no_prefix.prefix_stages == 0 and not no_prefix.prefix_loop
    assert real_plan(90, head_dim=128, kv_dtype="bf16", prefix=True).prefix_loop
    t0 = 0
    for i, L in enumerate(lens):
        ref = attention_ref(q[t0:t0 + L].float().cpu(), k[t0:t0 + L].float().cpu(), v[t0:t0 + L].float().cpu())
        assert_attn(fast[t0:t0 + L], ref, f"request {i}", atol=2e-2)
        assert_attn(base[t0:t0 + L], ref, f"request {i}", atol=2e-2)
        t0 += L
    with pytest.raises(ValueError, match="max_prefix_len"):
        extend_attention(*args, **kw, max_prefix_len=-1)
    # a configuration compiled without the prefix phase is refused unless nothing is cached
    with pytest.raises(ValueError, match="prefix_loop=False"):
        extend_attention(*args, **kw, config=no_prefix)


def test_nvfp4_pool_rows_must_be_word_aligned(device):
    """The NVFP4 tiles are loaded as 32-bit words: a pool view whose rows start off a 4-byte
    boundary is refused by name at launch, in decode and in extend, not read misaligned."""
    slots, hkv, d = 16, 1, 64
    raw = torch.zeros(slots * hkv * d // 2 + 1, dtype=torch.uint8, device=device)
    bad = raw[1:].view(slots, hkv, d // 2)
    good = torch.zeros(slots, hkv, d // 2, dtype=torch.uint8, device=device)
    sc = torch.full((slots, hkv, d // 16), 0x38, dtype=torch.uint8, device=device)
    i32 = lambda *v: torch.tensor(v, dtype=torch.int32, device=device)  # noqa: E731
    q = torch.randn(1, 2, d, dtype=torch.bfloat16, device=device)
    with pytest.raises(ValueError, match="k_cache: nvfp4 rows must start on 4-byte boundaries"):
        decode_attention(q, bad, good, i32(0, 1), i32(0), i32(1), kv_dtype="nvfp4", k_scale_cache=sc,
                         v_scale_cache=sc)
    qe = torch.randn(3, 2, d, dtype=torch.bfloat16, device=device)
    ke = torch.randn(3, 1, d, dtype=torch.bfloat16, device=device)
    with pytest.raises(ValueError, match="v_cache: nvfp4 rows must start on 4-byte boundaries"):
        extend_attention(qe, ke, ke, good, bad, i32(0, 3), i32(0, 0), i32(0), i32(0), kv_dtype="nvfp4",
                         max_extend_len=3, k_scale_cache=sc, v_scale_cache=sc)
    out = decode_attention(q, good, good, i32(0, 1), i32(0), i32(1), kv_dtype="nvfp4", k_scale_cache=sc,
                           v_scale_cache=sc)
    assert out.isfinite().all()


# ---------------------------------------------------------------------------------------------- GPU

@pytest.mark.gpu
@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f"{f[0]}-{f[1]}")
@pytest.mark.parametrize("d", planner.HEAD_DIMS)
def test_gpu_decode_large(fmt, d):
    kv_dtype, q_dtype = fmt
    lens = [1, 4097, 2048, 777] + [int(x) for x in torch.randint(1, 3000, (12,))]
    pool, indptr, indices, tok, _ = _fill_pool(kv_dtype, q_dtype, lens, 16, 8, d, "cuda")
    q = torch.randn(len(lens), 32, d).to(ACT[q_dtype])
    out = decode_attention(q.cuda(), pool.k, pool.v, indptr, indices,
                           torch.tensor(lens, dtype=torch.int32, device="cuda"), kv_dtype=kv_dtype, page_size=16,
                           k_scale_cache=pool.ks, v_scale_cache=pool.vs, k_scale=pool.k_scale, v_scale=pool.v_scale)
    for i in range(len(lens)):
        k, v = pool.dequant(tok[i])
        ref = attention_ref(q[i:i + 1].float(), k, v)
        assert_close_attn(out[i:i + 1], ref, f"request {i}",
                          atol=tolerance(ref, lowp_ref(q[i:i + 1].float(), k, v, ACT[q_dtype])))


@pytest.mark.gpu
@pytest.mark.parametrize("page", [1, 16])
@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f"{f[0]}-{f[1]}")
def test_gpu_decode_large_grid(fmt, page):
    """A batch whose (request, KV head) rows reach 1,024, where the planner may change the tile
    (sm_90 16-bit pools: 128 tokens on 4 warps): lengths from 1 to past two tiles, every request
    against the reference, the output poisoned first."""
    kv_dtype, q_dtype = fmt
    lens = [1, 129, 0, 255] + [int(x) for x in torch.randint(1, 400, (126,))]
    hkv, d = 8, 128
    pool, indptr, indices, tok, _ = _fill_pool(kv_dtype, q_dtype, lens, page, hkv, d, "cuda")
    q = torch.randn(len(lens), 4 * hkv, d).to(ACT[q_dtype])
    seq = torch.tensor(lens, dtype=torch.int32, device="cuda")
    out = torch.full_like(q, float("nan")).cuda()
    decode_attention(q.cuda(), pool.k, pool.v, indptr, indices, seq, kv_dtype=kv_dtype, page_size=page,
                     k_scale_cache=pool.ks, v_scale_cache=pool.vs, k_scale=pool.k_scale, v_scale=pool.v_scale,
                     out=out)
    assert_decode_per_request(out, q, pool, tok, lens, ACT[q_dtype])


@pytest.mark.gpu
@pytest.mark.parametrize("page", [1, 16])
@pytest.mark.parametrize("fmt", FORMATS[:2], ids=lambda f: f"{f[0]}-{f[1]}")
def test_gpu_decode_512_rows(fmt, page):
    """64 requests x 8 KV heads, where the sm_90 planner takes the 128-token tile on 8 warps with a
    register cap (page size 1): lengths from 0 to past several tiles, every request against the
    reference, the output poisoned first."""
    kv_dtype, q_dtype = fmt
    lens = [1, 0, 128, 129, 1000] + [int(x) for x in torch.randint(1, 700, (59,))]
    hkv, d = 8, 128
    pool, indptr, indices, tok, _ = _fill_pool(kv_dtype, q_dtype, lens, page, hkv, d, "cuda")
    q = torch.randn(len(lens), 4 * hkv, d).to(ACT[q_dtype])
    seq = torch.tensor(lens, dtype=torch.int32, device="cuda")
    out = torch.full_like(q, float("nan")).cuda()
    decode_attention(q.cuda(), pool.k, pool.v, indptr, indices, seq, kv_dtype=kv_dtype, page_size=page, out=out)
    assert_decode_per_request(out, q, pool, tok, lens, ACT[q_dtype])


@pytest.mark.gpu
@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f"{f[0]}-{f[1]}")
@pytest.mark.parametrize("d", planner.HEAD_DIMS)
def test_gpu_extend_large(fmt, d):
    _run_extend(fmt[0], fmt[1], d, 8, 4, 16, [0, 2000, 513], [1500, 700, 1], "cuda")


@pytest.mark.parametrize("q_dtype", ["bf16", "fp16"])
def test_extend_short_fresh_chunk_plan(q_dtype, device):
    """sm_90's plan for short chunks with nothing cached (64 x 64 tiles, 4 query heads a program):
    chunks of 1 token, under the 16 tokens a program and over several tiles."""
    cfg = planner.plan_extend(90, head_dim=128, kv_dtype=q_dtype, q_dtype=q_dtype, group=4, prefix=False, short=True)
    assert (cfg.block_m, cfg.pack) == (64, 4)
    _run_extend(q_dtype, q_dtype, 128, 1, 4, 1, [0, 0, 0], [1, 13, 150], device, config=cfg, max_prefix_len=0)


@pytest.mark.gpu
@pytest.mark.parametrize("q_dtype", ["bf16", "fp16"])
@pytest.mark.parametrize("group", MATRIX_GROUPS)
def test_gpu_extend_short_fresh_chunks(group, q_dtype):
    """The planned launch (max_extend_len <= SHORT_CHUNK, nothing cached): every GQA ratio, a
    one-token chunk, a chunk of exactly SHORT_CHUNK tokens, an NVFP4 pool's fresh prefill (run on the
    16-bit path)."""
    _run_extend(q_dtype, q_dtype, 128, 2, group, 1, [0, 0, 0], [1, 333, planner.SHORT_CHUNK], "cuda",
                max_prefix_len=0)
    _run_extend("nvfp4", q_dtype, 128, 2, group, 16, [0, 0], [700, 64], "cuda", max_prefix_len=0)


@pytest.mark.gpu
@pytest.mark.parametrize("page", [1, 16])
@pytest.mark.parametrize("group", MATRIX_GROUPS + ODD_GROUPS)
@pytest.mark.parametrize("d", planner.HEAD_DIMS)
@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f"{f[0]}-{f[1]}")
def test_gpu_sm120_plan(fmt, d, group, page):
    """What an sm_120 card runs: decode and extend planned for arch 120 (run under
    DISABLE_MMA_V3=1 on a Hopper card, Triton emits mma.sync as it does on sm_120), every format x
    head_dim x GQA ratio, page sizes 1 and 16; a one-token request, lengths past several tiles, a
    cached prefix beside a fresh prefill, then attention sinks (fp32 per query head)."""
    kv_dtype, q_dtype = fmt
    hkv = 2 if group <= 8 else 1
    lens = [1, 0, int(torch.randint(300, 1500, ()))]
    pool, indptr, indices, tok, _ = _fill_pool(kv_dtype, q_dtype, lens, page, hkv, d, "cuda")
    q = torch.randn(len(lens), hkv * group, d).to(ACT[q_dtype])
    seq = torch.tensor(lens, dtype=torch.int32, device="cuda")
    sinks = (torch.randn(hkv * group) * 2).cuda()
    for kw in ({}, {"sinks": sinks}):
        out = torch.full_like(q, float("nan")).cuda()
        decode_attention(q.cuda(), pool.k, pool.v, indptr, indices, seq, kv_dtype=kv_dtype, page_size=page,
                         k_scale_cache=pool.ks, v_scale_cache=pool.vs, k_scale=pool.k_scale, v_scale=pool.v_scale,
                         out=out, arch=120, **kw)
        assert (out[1] == 0).all()
        keep = [0, 2]
        assert_decode_per_request(out[keep], q[keep], pool, [tok[i] for i in keep], [lens[i] for i in keep],
                                  ACT[q_dtype], **kw)
    prefix, ext = [0, 700, 129], [500, 1, 333]
    _run_extend(kv_dtype, q_dtype, d, hkv, group, page, prefix, ext, "cuda", arch=120)
    _run_extend(kv_dtype, q_dtype, d, hkv, group, page, prefix, ext, "cuda", arch=120, sinks=sinks)


def _sm90():
    return HAS_CUDA and torch.cuda.get_device_capability() == (9, 0)


def _sm80_plus():
    return HAS_CUDA and torch.cuda.get_device_capability() >= (8, 0)


@pytest.mark.gpu
@pytest.mark.skipif(not _sm80_plus(), reason="mma.sync Gluon kernel: sm_80 or newer")
@pytest.mark.parametrize("tile", [(128, 32, 8, 3), (128, 32, 8, 2), (64, 64, 4, 2), (128, 64, 8, 3)],
                         ids=lambda t: "x".join(map(str, t)))
@pytest.mark.parametrize("q_dtype", ["bf16", "fp16"])
@pytest.mark.parametrize("pool", ["16bit", "nvfp4"])
@pytest.mark.parametrize("page", [1, 16, 64])
@pytest.mark.parametrize("group", MATRIX_GROUPS)
@pytest.mark.parametrize("d", [64, 128])
def test_gpu_extend_mma2(d, group, page, pool, q_dtype, tile):
    """The mma.sync Gluon extend kernel (whole rows a warp, Q in registers, cp.async stages; NVFP4
    prefix tiles decoded by the CTA into shared memory) on 16-bit and NVFP4 pools: both head_dims,
    every GQA ratio with 1, 2 or 4 heads packed, page sizes, prefixes and chunks that are not
    multiples of the tiles, a request without a prefix beside ones with one, a one-token chunk;
    then with a soft cap; then nothing cached (no prefix phase)."""
    bm, bn, nw, ns = tile
    if d == 128 and bn == 64:
        pytest.skip("128 x 64 at head_dim 128 needs more than 255 registers a thread")
    kv = q_dtype if pool == "16bit" else "nvfp4"
    pack = planner._gqa_pack(group, bm)
    cfg = planner.ExtendConfig(bm, bn, nw, ns, False, pack=pack, mma2=True)
    hkv = 2 if group <= 8 else 1
    _run_extend(kv, q_dtype, d, hkv, group, page, [37, 0, 300, 129], [23, 130, 1, 200], "cuda", config=cfg,
                max_prefix_len=300)
    _run_extend(kv, q_dtype, d, hkv, group, page, [1000, 513], [300, 77], "cuda", config=cfg,
                max_prefix_len=1000, logit_cap=30.0)
    if page == 1 and pool == "16bit":
        fresh = dataclasses.replace(cfg, prefix_loop=False)
        _run_extend(kv, q_dtype, d, hkv, group, page, [0, 0, 0], [1, 700, 129], "cuda", config=fresh,
                    max_prefix_len=0)


@pytest.mark.gpu
@pytest.mark.skipif(not _sm80_plus(), reason="mma.sync Gluon kernel: sm_80 or newer")
def test_gpu_extend_mma2_nan_stays_in_its_request_and_bad_ids_are_clamped():
    """A NaN in one request's cached K stays in that request; an out-of-pool slot id is read as
    the pool's last slot (clamped), never outside the pool."""
    d, hkv, group = 128, 2, 4
    lens = [300, 200]
    pool, indptr, indices, tok, _ = _fill_pool("bf16", "bf16", lens, 1, hkv, d, "cuda")
    pool.k[int(tok[0][5])] = float("nan")
    T = 64
    q = torch.randn(2 * T, hkv * group, d, dtype=torch.bfloat16, device="cuda")
    k = torch.randn(2 * T, hkv, d, dtype=torch.bfloat16, device="cuda")
    v = torch.randn_like(k)
    qo = torch.tensor([0, T, 2 * T], dtype=torch.int32, device="cuda")
    cfg = planner.ExtendConfig(128, 32, 8, 3, False, pack=4, mma2=True)
    out = torch.full_like(q, float("nan"))
    extend_attention(q, k, v, pool.k, pool.v, qo, indptr, indices, torch.tensor(lens, dtype=torch.int32,
                     device="cuda"), kv_dtype="bf16", max_extend_len=T, out=out, config=cfg, max_prefix_len=300)
    assert torch.isnan(out[:T]).all() and torch.isfinite(out[T:]).all()
    bad = _poison_one_request(indptr, indices, 1, pool.k.shape[0])
    _finite_last_page(pool, 1, hkv, d, "cuda")
    out2 = torch.full_like(q, float("nan"))
    extend_attention(q, k, v, pool.k, pool.v, qo, indptr, bad, torch.tensor(lens, dtype=torch.int32,
                     device="cuda"), kv_dtype="bf16", max_extend_len=T, out=out2, config=cfg, max_prefix_len=300,
                     check_slots=False)
    assert torch.isfinite(out2[T:]).all()


@pytest.mark.gpu
@pytest.mark.skipif(not _sm90(), reason="warpgroup MMA kernel: sm_90 only")
@pytest.mark.parametrize("q_dtype", ["bf16", "fp16"])
@pytest.mark.parametrize("page", planner.PAGE_SIZES)
@pytest.mark.parametrize("group", MATRIX_GROUPS)
def test_gpu_extend_nvfp4_wgmma(group, page, q_dtype):
    """The sm_90 NVFP4 extend kernel that decodes prefix tiles in a warpgroup of its own while the
    MMA warpgroups run: every GQA ratio and page size, prefixes and chunks that are not multiples
    of the tiles, a request without a prefix beside ones with one, a one-token chunk."""
    pack = min(group, 4)
    cfg = planner.ExtendConfig(128, 128, 8, 1, True, pack=pack, wgmma=True)
    _run_extend("nvfp4", q_dtype, 128, 2 if group <= 8 else 1, group, page, [37, 0, 300, 129], [23, 130, 1, 200],
                "cuda", config=cfg, max_prefix_len=300)


@pytest.mark.gpu
@pytest.mark.skipif(not _sm90(), reason="warpgroup MMA kernel: sm_90 only")
@pytest.mark.parametrize("tile", [(128, 2), (128, 3), (64, 3)], ids=lambda t: f"bn{t[0]}-buf{t[1]}")
@pytest.mark.parametrize("q_dtype", ["bf16", "fp16"])
@pytest.mark.parametrize("page", [1, 16])
@pytest.mark.parametrize("group", [1, 4, 16])
def test_gpu_extend_wgmma_16bit_pool(group, page, q_dtype, tile):
    """The sm_90 warpgroup-MMA extend kernel on a 16-bit pool (prefix tiles copied by cp.async,
    2 or 3 buffers): GQA ratios with 1 and 4 heads packed, page sizes, prefixes shorter than a tile,
    a request without a prefix, a one-token chunk."""
    block_n, nbuf = tile
    cfg = planner.ExtendConfig(128, block_n, 8, nbuf, False, pack=min(group, 4), wgmma=True)
    _run_extend(q_dtype, q_dtype, 128, 2 if group <= 8 else 1, group, page, [37, 0, 300, 129], [23, 130, 1, 200],
                "cuda", config=cfg, max_prefix_len=300)
    _run_extend(q_dtype, q_dtype, 128, 2, group, page, [1000, 513], [300, 77], "cuda", config=cfg,
                max_prefix_len=1000, logit_cap=30.0)


@pytest.mark.gpu
@pytest.mark.skipif(not _sm90(), reason="warpgroup MMA kernel: sm_90 only")
@pytest.mark.parametrize("page", [1, 16])
@pytest.mark.parametrize("q_dtype", ["bf16", "fp16"])
def test_gpu_extend_nvfp4_wgmma_warp_spec(page, q_dtype):
    """The warp-specialized NVFP4 kernel (a decoder warpgroup handing tiles over by mbarrier):
    prefixes of one tile, shorter than a tile, ending inside one and spanning many (the buffer and
    barrier phases wrap), a request without a prefix, a one-token chunk, GQA 4 and 8, soft cap."""
    cfg = planner.ExtendConfig(128, 128, 8, 1, True, pack=4, wgmma=True)
    _run_extend("nvfp4", q_dtype, 128, 2, 4, page, [37, 0, 300, 129, 128], [23, 130, 1, 200, 64], "cuda",
                config=cfg, max_prefix_len=300)
    _run_extend("nvfp4", q_dtype, 128, 1, 8, page, [2000, 513, 4096], [1500, 700, 1], "cuda", config=cfg,
                max_prefix_len=4096)
    _run_extend("nvfp4", q_dtype, 128, 2, 4, page, [300, 65], [77, 129], "cuda", config=cfg, max_prefix_len=300,
                logit_cap=30.0)
    # the first request without a prefix (its slot list starts at 0: nothing before it may be read)
    _run_extend("nvfp4", q_dtype, 128, 2, 4, page, [0, 300], [50, 20], "cuda", config=cfg, max_prefix_len=300)


@pytest.mark.gpu
@pytest.mark.skipif(not _sm90(), reason="warpgroup MMA kernel: sm_90 only")
def test_gpu_extend_nvfp4_wgmma_soft_cap_and_large():
    cfg = planner.ExtendConfig(128, 128, 8, 1, True, pack=4, wgmma=True)
    _run_extend("nvfp4", "bf16", 128, 8, 4, 16, [2000, 513, 4096], [1500, 700, 1], "cuda", config=cfg,
                max_prefix_len=4096)
    _run_extend("nvfp4", "bf16", 128, 2, 8, 1, [300, 65], [77, 129], "cuda", config=cfg, max_prefix_len=300,
                logit_cap=30.0)


@pytest.mark.gpu
@pytest.mark.skipif(not _sm90(), reason="warpgroup MMA kernel: sm_90 only")
def test_gpu_extend_nvfp4_wgmma_nan_stays_in_its_request():
    """A NaN block scale in one request's cached prefix shows as NaN in all of that request's rows
    (every row reads the whole prefix) and nowhere else."""
    group, hkv, d = 4, 2, 128
    lens, ext = [300, 300], [40, 40]
    pool, indptr, indices, tok, _ = _fill_pool("nvfp4", "bf16", lens, 1, hkv, d, "cuda")
    pool.ks[tok[0][123].item(), 1, 3] = 0x7F
    q = torch.randn(sum(ext), hkv * group, d, dtype=torch.bfloat16, device="cuda")
    k = torch.randn(sum(ext), hkv, d, dtype=torch.bfloat16, device="cuda")
    v = torch.randn_like(k)
    out = torch.full_like(q, 7.0)
    cfg = planner.plan_extend(90, head_dim=d, kv_dtype="nvfp4", group=group)
    assert cfg.wgmma
    extend_attention(q, k, v, pool.k, pool.v, torch.tensor([0, 40, 80], dtype=torch.int32, device="cuda"), indptr,
                     indices, torch.tensor(lens, dtype=torch.int32, device="cuda"), kv_dtype="nvfp4",
                     max_extend_len=40, k_scale_cache=pool.ks, v_scale_cache=pool.vs, k_scale=pool.k_scale,
                     v_scale=pool.v_scale, out=out, config=cfg, max_prefix_len=300)
    assert out[:40, 4:].isnan().all(), "the poisoned KV head's query heads must show NaN"
    assert out[:40, :4].isfinite().all() and out[40:].isfinite().all(), "other heads and requests unaffected"


def test_wgmma_takes_only_pools_with_32_bit_offsets():
    """The sm_90 Gluon extend kernel's pool offsets are 32-bit: a pool tensor spanning 2^31 bytes or
    more (NVFP4 codes or scales, 16-bit K / V, any view) must send extend_attention to the Triton
    kernel."""
    from sgl_kernel_sm12x.attention.kv_tile import offsets_fit
    small = torch.empty(1024, 8, 64, dtype=torch.uint8, device="meta")
    assert offsets_fit(small, small)
    big = torch.empty(2 ** 22, 8, 64, dtype=torch.uint8, device="meta")         # exactly 2^31 bytes
    assert not offsets_fit(small, big)
    assert offsets_fit(big[: 2 ** 22 - 1])
    wide = torch.empty(2 ** 20, 8, 128, dtype=torch.float16, device="meta")     # 2^31 bytes in fp16 elements
    assert not offsets_fit(wide)


@pytest.mark.gpu
@pytest.mark.parametrize("block_n,prefetch", [(16, False), (32, True), (16, True), (64, True)])
@pytest.mark.parametrize("q_dtype", ["bf16", "fp16"])
@pytest.mark.parametrize("page", planner.PAGE_SIZES)
@pytest.mark.parametrize("group", MATRIX_GROUPS)
@pytest.mark.parametrize("d", [64, 128, 256])  # the Gluon kernel: powers of two
def test_gpu_decode_nvfp4_register_operands(d, group, page, q_dtype, block_n, prefetch):
    """The one-warp NVFP4 split stage (tiles decoded into MMA operand registers, head_dim permuted):
    every head_dim x GQA x page size x q dtype, the three token tiles, with and without the register
    prefetch, lengths that end inside a tile, span several tiles and several splits, against the
    float reference over the dequantized cache."""
    lens = [1, 15, 33, 97, 700, 2049]
    hkv = 2
    pool, indptr, indices, tok, _ = _fill_pool("nvfp4", q_dtype, lens, page, hkv, d, "cuda")
    q = torch.randn(len(lens), hkv * group, d).to(ACT[q_dtype])
    seq = torch.tensor(lens, dtype=torch.int32, device="cuda")
    plan = planner.plan_decode(planner.current_arch(), head_dim=d, kv_dtype="nvfp4", q_dtype=q_dtype, group=group,
                               page_size=page, batch=len(lens), kv_heads=hkv, max_splits=4)
    cfg = dataclasses.replace(plan, block_n=block_n, num_warps=1, num_stages=1, prefetch=prefetch, fp4_mma=True)
    out = torch.full_like(q, float("nan")).cuda()
    decode_attention(q.cuda(), pool.k, pool.v, indptr, indices, seq, kv_dtype="nvfp4", page_size=page,
                     k_scale_cache=pool.ks, v_scale_cache=pool.vs, k_scale=pool.k_scale, v_scale=pool.v_scale,
                     max_splits=4, out=out, config=cfg)
    assert_decode_per_request(out, q, pool, tok, lens, ACT[q_dtype])


@pytest.mark.gpu
@pytest.mark.parametrize("page", [1, 16])
@pytest.mark.parametrize("d,group", [(64, 4), (128, 1), (128, 8), (128, 16), (256, 4)])
def test_gpu_decode_nvfp4_register_operands_one_split_stores_the_output(d, group, page, monkeypatch):
    """One split and no LSE wanted: the one-warp NVFP4 kernel normalises, applies the global V
    scale and stores the output in q's dtype itself (no reduce launch); a request without tokens
    reads zeros; the same call with an LSE (through the reduce) agrees."""
    lens = [0, 1, 33, 700, 2049]
    hkv = 2
    pool, indptr, indices, tok, _ = _fill_pool("nvfp4", "bf16", lens, page, hkv, d, "cuda")
    q = torch.randn(len(lens), hkv * group, d, dtype=torch.bfloat16, device="cuda")
    seq = torch.tensor(lens, dtype=torch.int32, device="cuda")
    cfg = planner.plan_decode(planner.current_arch(), head_dim=d, kv_dtype="nvfp4", group=group, page_size=page,
                              batch=len(lens), kv_heads=hkv, max_splits=1)
    assert cfg.fp4_mma == (not (d == 256 and group > 8))
    kw = dict(kv_dtype="nvfp4", page_size=page, k_scale_cache=pool.ks, v_scale_cache=pool.vs, k_scale=pool.k_scale,
              v_scale=pool.v_scale, max_splits=1)
    _check_one_split_store(q, pool, indptr, indices, seq, tok, lens, torch.bfloat16, kw, monkeypatch)


@pytest.mark.gpu
@pytest.mark.parametrize("d,page", [(64, 16), (128, 1)])
def test_gpu_decode_nvfp4_rows_past_4gib(d, page):
    """Rows more than 2^32 bytes from the base of their pool tensors: each row address of the
    one-warp NVFP4 kernel is one unsigned wide multiply-add, exact for any pool."""
    hkv, group = 2, 4
    lens = [33, 700]
    pool, indptr, indices, tok, _ = _fill_pool("nvfp4", "bf16", lens, page, hkv, d, "cuda")
    row = 1 << 16
    shift = (1 << 32) // row // page + 1                     # pages moved past 4 GiB
    n = pool.k.shape[0]
    big = shift * page + n

    def spread(t, row_bytes):
        buf = torch.zeros(big, row_bytes, dtype=torch.uint8, device="cuda")
        view = buf[:, : t[0].numel() * t.element_size()].view(t.dtype).view(big, *t.shape[1:])
        view[shift * page:] = t
        return view

    k, v = spread(pool.k, row), spread(pool.v, row)
    ks, vs = spread(pool.ks, 64), spread(pool.vs, 64)
    assert k.stride(0) * (big - 1) > 2 ** 32
    q = torch.randn(len(lens), hkv * group, d, dtype=torch.bfloat16, device="cuda")
    seq = torch.tensor(lens, dtype=torch.int32, device="cuda")
    out = torch.full_like(q, float("nan"))
    decode_attention(q, k, v, indptr, indices + shift, seq, kv_dtype="nvfp4", page_size=page, k_scale_cache=ks,
                     v_scale_cache=vs, k_scale=pool.k_scale, v_scale=pool.v_scale, max_splits=2, out=out)
    assert_decode_per_request(out, q.cpu(), pool, tok, lens, torch.bfloat16)
    del k, v


@pytest.mark.gpu
@pytest.mark.parametrize("group", [4, 16])
def test_gpu_decode_nvfp4_register_operands_cap_window_nan(group):
    """Soft cap and sliding window in the one-warp NVFP4 split stage; a NaN in one request's K
    stays in that request."""
    d, hkv = 128, 2
    lens = [300, 1000]
    pool, indptr, indices, tok, _ = _fill_pool("nvfp4", "bf16", lens, 16, hkv, d, "cuda")
    q = torch.randn(len(lens), hkv * group, d).to(torch.bfloat16)
    seq = torch.tensor(lens, dtype=torch.int32, device="cuda")
    plan = planner.plan_decode(planner.current_arch(), head_dim=d, kv_dtype="nvfp4", group=group, page_size=16,
                               batch=len(lens), kv_heads=hkv, max_splits=4)
    cfg = dataclasses.replace(plan, block_n=32, num_warps=1, num_stages=1, prefetch=False, fp4_mma=True)
    kw = dict(kv_dtype="nvfp4", page_size=16, k_scale_cache=pool.ks, v_scale_cache=pool.vs, k_scale=pool.k_scale,
              v_scale=pool.v_scale, max_splits=4, config=cfg)
    out = decode_attention(q.cuda(), pool.k, pool.v, indptr, indices, seq, logit_cap=5.0, window_left=200, **kw)
    for i, L in enumerate(lens):
        k, v = pool.dequant(tok[i])
        ref = attention_ref(q[i:i + 1].float(), k, v, logit_cap=5.0, window_left=200)
        tol = tolerance(ref, lowp_ref(q[i:i + 1].float(), k, v, torch.bfloat16, logit_cap=5.0, window_left=200))
        assert_attn(out[i:i + 1], ref, f"request {i} (len {L})", atol=tol)
    pool.ks[tok[0][7]] = 0x7F        # UE4M3 NaN scale: request 0's K row 7 becomes NaN
    out = decode_attention(q.cuda(), pool.k, pool.v, indptr, indices, seq, **kw)
    assert out[0].isnan().all() and out[1].isfinite().all()


@pytest.mark.gpu
def test_gpu_decode_cuda_graph_replay():
    """Captured once at the largest batch; replays with new lengths give the reference answer."""
    d, hkv, group, B = 128, 8, 4, 8
    lens = [int(x) for x in torch.randint(1, 1500, (B,))]
    pool, indptr, indices, tok, _ = _fill_pool("nvfp4", "bf16", [1500] * B, 16, hkv, d, "cuda")
    q = torch.randn(B, hkv * group, d, dtype=torch.bfloat16, device="cuda")
    seq = torch.tensor(lens, dtype=torch.int32, device="cuda")
    out = torch.empty_like(q)
    ws = decode_workspace(B, hkv * group, d, 8, "cuda")
    run = lambda: decode_attention(q, pool.k, pool.v, indptr, indices, seq, kv_dtype="nvfp4", page_size=16,  # noqa
                                   k_scale_cache=pool.ks, v_scale_cache=pool.vs, k_scale=pool.k_scale,
                                   v_scale=pool.v_scale, max_splits=8, out=out, workspace=ws)
    run()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        run()
    for _ in range(2):
        lens = [int(x) for x in torch.randint(1, 1500, (B,))]
        seq.copy_(torch.tensor(lens, dtype=torch.int32))
        q.copy_(torch.randn_like(q))
        g.replay()
        torch.cuda.synchronize()
        for i, L in enumerate(lens):
            k, v = pool.dequant(tok[i][:L])
            ref = attention_ref(q[i:i + 1].float().cpu(), k, v)
            assert_close_attn(out[i:i + 1], ref, f"replay request {i}",
                              atol=tolerance(ref, lowp_ref(q[i:i + 1].float().cpu(), k, v, torch.bfloat16)))


def test_quantized_tile_flags_and_the_ptx_unit():
    """The launchers' shared rule: PTX NVFP4 decode and fp16 MMAs on CUDA devices only; fp16 MMAs
    for FP8 tiles only with the hardware conversion; the per-tensor scale of every PTX-decoded
    NVFP4 part divided by the unit its tiles carry, the others untouched."""
    from sgl_kernel_sm12x.attention.kv_tile import FP4_PTX_UNIT, tile_flags, unit_scales

    assert tile_flags(2, 2, True, on_device=False) == dict(FP4_PTX=False, F16_MMA=False)
    assert tile_flags(0, 0, True) == dict(FP4_PTX=False, F16_MMA=False)
    assert tile_flags(1, 1, False) == dict(FP4_PTX=False, F16_MMA=False)
    assert tile_flags(1, 1, True) == dict(FP4_PTX=False, F16_MMA=True)
    assert tile_flags(1, 2, False) == dict(FP4_PTX=True, F16_MMA=True)
    assert unit_scales(tile_flags(2, 2, True), 2, 2, 0.5, 2.0) == (0.5 / FP4_PTX_UNIT, 2.0 / FP4_PTX_UNIT)
    assert unit_scales(tile_flags(1, 2, True), 1, 2, 0.5, 2.0) == (0.5, 2.0 / FP4_PTX_UNIT)
    assert unit_scales(tile_flags(2, 2, True, on_device=False), 2, 2, 0.5, 2.0) == (0.5, 2.0)


@pytest.mark.parametrize("version,want", [("3.5.1", False), ("3.6.0", True), ("3.8.0+git1234", True), ("x", False)])
def test_register_operand_decode_needs_a_known_gluon(version, want, monkeypatch):
    """The register-operand NVFP4 split stage is written against Gluon as of Triton 3.6: older
    Tritons (and the interpreter) take the Triton split stage instead of failing at launch."""
    pytest.importorskip("triton.experimental.gluon")
    import triton

    from sgl_kernel_sm12x.attention import decode
    monkeypatch.setattr(triton, "__version__", version)
    monkeypatch.setattr(decode, "_INTERPRET", False)
    monkeypatch.setattr(decode, "_FP4_MMA", None)
    assert decode.fp4_mma_available() is want
    monkeypatch.setattr(decode, "_INTERPRET", True)
    monkeypatch.setattr(decode, "_FP4_MMA", None)
    assert decode.fp4_mma_available() is False


# ------------------------------------------------------------------------ slot ids outside the pool

def _finite_last_page(pool, page, hkv, d, device):
    """The pool's last page written (the kernels read it in an out-of-pool id's place; the test
    pool's unwritten slots hold NaN codes)."""
    n = pool.k.shape[0]
    loc = torch.arange(n - page, n, device=device)
    pool.write(torch.zeros(page, hkv, d, device=device), torch.zeros(page, hkv, d, device=device), loc)


def _poison_one_request(kv_indptr, kv_indices, req, units):
    """kv_indices with one entry of request ``req`` pointing past the pool (``units`` slots or pages)."""
    bad = kv_indices.clone()
    lo, hi = int(kv_indptr[req]), int(kv_indptr[req + 1])
    assert hi > lo
    bad[lo + (hi - lo) // 2] = units + 1000
    return bad


@pytest.mark.parametrize("page", [1, 16])
@pytest.mark.parametrize("kv_dtype", ["bf16", "fp8_e4m3", "nvfp4"])
def test_decode_out_of_pool_slots_are_masked_and_named(kv_dtype, page, device):
    """A slot (or page) id past the pool is not read (clamped to the pool's last): the one-shot call
    raises naming kv_indices and the range; without the check the other requests are exact and the
    poisoned one stays finite."""
    lens, hkv, group, d = [5, 70, 33], 2, 2, 64
    act = "bf16"
    pool, kv_indptr, kv_indices, tok, _ = _fill_pool(kv_dtype, act, lens, page, hkv, d, device)
    units = pool.k.shape[0] // page
    bad = _poison_one_request(kv_indptr, kv_indices, 1, units)
    _finite_last_page(pool, page, hkv, d, device)
    q = torch.randn(len(lens), hkv * group, d).to(ACT[act]).to(device)
    seq = torch.tensor(lens, dtype=torch.int32, device=device)
    kw = dict(kv_dtype=kv_dtype, page_size=page, k_scale_cache=pool.ks, v_scale_cache=pool.vs, k_scale=pool.k_scale,
              v_scale=pool.v_scale)
    with pytest.raises(ValueError, match=rf"kv_indices: .*outside the pool.*\b{units + 1000}\]"):
        decode_attention(q, pool.k, pool.v, kv_indptr, bad, seq, **kw)
    out = decode_attention(q, pool.k, pool.v, kv_indptr, bad, seq, check_slots=False, **kw)
    assert torch.isfinite(out[1].float()).all()
    for i in (0, 2):
        k, v = pool.dequant(tok[i])
        ref = attention_ref(q[i:i + 1].float().cpu(), k, v)
        assert_attn(out[i:i + 1].cpu(), ref, f"request {i}", atol=tolerance(ref, lowp_ref(q[i:i + 1].float().cpu(), k,
                                                                                           v, ACT[act])))
    # the flag was cleared by the raising call: a clean call passes
    decode_attention(q, pool.k, pool.v, kv_indptr, kv_indices, seq, **kw)


@pytest.mark.parametrize("page", [1, 16])
@pytest.mark.parametrize("kv_dtype", ["bf16", "nvfp4"])
def test_extend_out_of_pool_slots_are_masked_and_named(kv_dtype, page, device):
    prefix, ext, hkv, group, d = [40, 70], [9, 20], 2, 2, 64
    act = "bf16"
    pool, kv_indptr, kv_indices, tok, _ = _fill_pool(kv_dtype, act, prefix, page, hkv, d, device)
    units = pool.k.shape[0] // page
    bad = _poison_one_request(kv_indptr, kv_indices, 0, units)
    _finite_last_page(pool, page, hkv, d, device)
    T = sum(ext)
    dt = ACT[act]
    q, k, v = (torch.randn(T, h, d).to(dt).to(device) for h in (hkv * group, hkv, hkv))
    qo = torch.tensor([0, ext[0], T], dtype=torch.int32, device=device)
    kw = dict(kv_dtype=kv_dtype, max_extend_len=max(ext), page_size=page, k_scale_cache=pool.ks,
              v_scale_cache=pool.vs, k_scale=pool.k_scale, v_scale=pool.v_scale)
    pl = torch.tensor(prefix, dtype=torch.int32, device=device)
    with pytest.raises(ValueError, match=rf"kv_indices: .*outside the pool.*\b{units + 1000}\]"):
        extend_attention(q, k, v, pool.k, pool.v, qo, kv_indptr, bad, pl, **kw)
    out = extend_attention(q, k, v, pool.k, pool.v, qo, kv_indptr, bad, pl, check_slots=False, **kw)
    assert torch.isfinite(out[:ext[0]].float()).all()
    kp, vp = pool.dequant(tok[1])
    a = ext[0]
    kk, vv = torch.cat([kp, k[a:].float().cpu()]), torch.cat([vp, v[a:].float().cpu()])
    ref = attention_ref(q[a:].float().cpu(), kk, vv)
    assert_attn(out[a:].cpu(), ref, "request 1", atol=tolerance(ref, lowp_ref(q[a:].float().cpu(), kk, vv, dt)))


def test_extend_mma2_config_is_refused_where_it_cannot_run():
    """The mma.sync Gluon kernel runs 16-bit pools at head_dim 64 / 128 on a device: a config asking
    for it elsewhere (the interpreter, a quantized pool, head_dim 256, 8 warps on 64 rows) is
    refused naming ``config``."""
    from sgl_kernel_sm12x.attention.extend import plan_extend_batch
    z = torch.zeros(2, dtype=torch.int32)
    one = torch.zeros(1, dtype=torch.int32)
    kw = dict(q_heads=8, kv_heads=2, max_extend_len=16, max_prefix_len=16)
    for d, kv, cfg in ((128, "bf16", planner.ExtendConfig(128, 32, 8, 3, mma2=True)),
                       (128, "nvfp4", planner.ExtendConfig(128, 32, 8, 3, mma2=True)),
                       (256, "bf16", planner.ExtendConfig(128, 32, 8, 3, mma2=True)),
                       (128, "bf16", planner.ExtendConfig(64, 32, 8, 3, mma2=True))):
        with pytest.raises(ValueError, match="config.*mma2"):
            plan_extend_batch(z, z, one, one[:1], head_dim=d, kv_dtype=kv, config=cfg, **kw)
