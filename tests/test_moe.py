"""Fused MoE against a float32 torch reference: every dtype (bf16, fp16, fp8 per-tensor, fp8 block)
on the Qwen3-30B-A3B, Mixtral and gpt-oss expert counts / top-k (hidden sizes reduced under the
interpreter, the real ones on the GPU), odd token counts, and the alignment and planner contracts."""
import pytest
import torch

from conftest import HAS_CUDA
from sgl_kernel_sm12x import nvfp4, planner
from sgl_kernel_sm12x.moe.fused_moe import moe_align, moe_align_torch, moe_gemm, fused_moe

DEV = "cuda" if HAS_CUDA else "cpu"
# name: (E, top_k, hidden, intermediate) -- real shapes; the interpreter uses SMALL
REAL = planner.MOE_SHAPES
SMALL = {"qwen3-30b-a3b": (128, 8, 128, 128), "mixtral": (8, 2, 128, 256), "gpt-oss": (32, 4, 256, 128)}
FP8_MAX = 448.0


def _q_tensor(w):
    """fp8 e4m3 weights with one scale per expert (reference quantizer, written out here)."""
    s = w.float().abs().amax(dim=(1, 2)) / FP8_MAX
    q = (w.float() / s[:, None, None]).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    return q, s


def _q_block(w, gn=128, gk=128):
    e, n, k = w.shape
    nb, kb = -(-n // gn), -(-k // gk)
    wp = torch.zeros(e, nb * gn, kb * gk, device=w.device)
    wp[:, :n, :k] = w.float()
    blocks = wp.view(e, nb, gn, kb, gk)
    s = (blocks.abs().amax(dim=(2, 4)) / FP8_MAX).clamp_min(1e-12)
    q = (blocks / s[:, :, None, :, None]).clamp(-FP8_MAX, FP8_MAX).view(e, nb * gn, kb * gk)[:, :n, :k]
    return q.to(torch.float8_e4m3fn), s


def _deq_tensor(q, s):
    return q.float() * s[:, None, None]


def _deq_block(q, s, gn=128, gk=128):
    e, n, k = q.shape
    sf = s.repeat_interleave(gn, 1)[:, :n].repeat_interleave(gk, 2)[:, :, :k]
    return q.float() * sf


def _act_q(x, gk=None):
    """What the kernel's activations are after dynamic fp8 quantization: one scale per row (``gk``
    None) or per row and ``gk``-wide column group."""
    xf = x.float()
    t, k = xf.shape
    gk = gk or k
    g = xf.view(t, k // gk, gk)
    s = (g.abs().amax(-1, keepdim=True) / FP8_MAX).clamp_min(1e-12)
    return ((g / s).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn).float() * s).view(t, k)


def _ulp(v, act_dtype):
    """One code of ``act_dtype`` (bf16 / fp16) at the magnitude of ``v`` (fp32 tensor)."""
    mant, tiny = (7, -126) if act_dtype == torch.bfloat16 else (10, -14)
    return torch.exp2(torch.floor(torch.log2(v.abs().clamp_min(2.0 ** tiny))) - mant)


def reference(x, w1, w2, tw, ti, act_dtype, act_q=None, bound=False):
    """fp32 math on the (dequantized) weights, on whatever device they are; the intermediate rounded
    to the activation dtype as the kernel stores it, and (fp8) quantized per row (or per row and
    128-group), as the kernel does. Pairs are gathered per expert (one matmul each).

    ``bound`` (16-bit, no ``act_q``): also return, per output element, how far a correct kernel can
    land from this: its gate / up and activated intermediates are fp32 sums rounded to
    ``act_dtype`` like these but summed in another order, so each may sit one code apart (silu' <=
    1.1); that carried through the down projection and the routing weights, plus the rounding of
    each pair's output and of the result."""
    assert not (bound and act_q), "the rounding bound covers 16-bit intermediates only"
    x = x.float()
    xa = act_q(x) if act_q else x
    t, k = ti.shape
    inter = w2.shape[2]
    experts = ti.flatten().to(x.device)
    token = torch.arange(t, device=x.device).repeat_interleave(k)
    acts = torch.empty(t * k, inter, device=x.device)
    dacts = torch.empty(t * k, inter, device=x.device) if bound else None
    for e in experts.unique().tolist():
        sel = (experts == e).nonzero().flatten()
        g = (xa[token[sel]] @ w1[e].float().T).to(act_dtype).float()
        gate, up = g[:, :inter], g[:, inter:]
        h = torch.nn.functional.silu(gate)
        acts[sel] = (h * up).to(act_dtype).float()
        if bound:
            dacts[sel] = 1.1 * _ulp(gate, act_dtype) * up.abs() + h.abs() * _ulp(up, act_dtype) \
                + _ulp(h * up, act_dtype)
    a = act_q(acts) if act_q else acts
    out = torch.zeros(t, w2.shape[1], device=x.device)
    err = torch.zeros(t, w2.shape[1], device=x.device) if bound else None
    weights = tw.flatten().float().to(x.device)
    for e in experts.unique().tolist():
        sel = (experts == e).nonzero().flatten()
        pair = a[sel] @ w2[e].float().T
        out.index_add_(0, token[sel], pair * weights[sel, None])
        if bound:
            err.index_add_(0, token[sel], (dacts[sel] @ w2[e].float().abs().T + _ulp(pair, act_dtype))
                           * weights[sel, None])
    if bound:
        return out.cpu(), (err + _ulp(out, act_dtype)).cpu()
    return out.cpu()


def _inputs(shape, tokens, act_dtype, dev="cpu"):
    e, k, h, i = shape
    x = torch.randn(tokens, h, device=dev).to(act_dtype)
    w1 = (torch.randn(e, 2 * i, h, device=dev) / h ** 0.5).to(act_dtype)
    w2 = (torch.randn(e, h, i, device=dev) / i ** 0.5).to(act_dtype)
    logits = torch.randn(tokens, e, device=dev)
    tw, ti = torch.topk(logits.softmax(-1), k)
    return x, w1, w2, tw, ti


def _check(out, ref, what, tol):
    out = out.float().cpu()
    assert not out.isnan().any(), f"{what}: NaN in output"
    err = (out - ref).abs().max().item()
    scale = ref.abs().max().item()
    assert err <= tol * max(scale, 1e-3), f"{what}: max err {err:.4g} vs output scale {scale:.4g} (tol {tol})"


CASES = [("bf16", torch.bfloat16), ("fp16", torch.float16), ("fp8_w8a8", torch.bfloat16),
         ("fp8_w8a8_block", torch.bfloat16), ("nvfp4_w4a16", torch.bfloat16), ("nvfp4_w4a16", torch.float16)]


def _run(name, shape, dtype, act_dtype, tokens, dev):
    if dtype == "fp8_w8a8_block" and (shape[2] % 128 or shape[3] % 128):
        pytest.skip(f"{name}: hidden/intermediate {shape[2:]} are not multiples of the 128 quantization group")
    x, w1, w2, tw, ti = _inputs(shape, tokens, act_dtype, dev)
    kw = {}
    if dtype == "bf16" or dtype == "fp16":
        r1, r2, act_q = w1.float(), w2.float(), None
        a1, a2 = w1, w2
    elif dtype == "nvfp4_w4a16":     # ModelOpt NVFP4 weights; the reference uses their exact values
        # gate and up quantized apart, as ModelOpt stores w1 and w3 (their weight_scale_2 differ:
        # up is scaled 3x), w13's per-expert scales then (E, 2)
        inter = w1.shape[1] // 2
        (pg, sg, gg), (pu, su, gu) = nvfp4.quantize_weight(w1[:, :inter]), nvfp4.quantize_weight(3 * w1[:, inter:])
        a1, s1, g1 = torch.cat([pg, pu], 1), torch.cat([sg, su], 1), torch.stack([gg, gu], 1)
        r1 = torch.cat([nvfp4.dequantize_weight(pg, sg, gg), nvfp4.dequantize_weight(pu, su, gu)], 1)
        a2, s2, g2 = nvfp4.quantize_weight(w2)
        r2 = nvfp4.dequantize_weight(a2, s2, g2)
        kw = dict(w1_scale=s1.to(dev), w2_scale=s2.to(dev), w1_global=g1.to(dev), w2_global=g2.to(dev))
        act_q = None
    elif dtype == "fp8_w8a8":
        (a1, s1), (a2, s2) = _q_tensor(w1), _q_tensor(w2)
        r1, r2 = _deq_tensor(a1, s1), _deq_tensor(a2, s2)
        kw = dict(w1_scale=s1.to(dev), w2_scale=s2.to(dev))
        act_q = _act_q
    else:
        (a1, s1), (a2, s2) = _q_block(w1), _q_block(w2)
        r1, r2 = _deq_block(a1, s1), _deq_block(a2, s2)
        kw = dict(w1_scale=s1.to(dev), w2_scale=s2.to(dev), block_shape=[128, 128])
        act_q = lambda t: _act_q(t, 128)  # noqa: E731
    out = fused_moe(x.to(dev), a1.to(dev), a2.to(dev), tw.to(dev), ti.to(dev), dtype=dtype, **kw)
    assert out.shape == x.shape and out.dtype == x.dtype
    # the intermediate is rounded (bf16, and fp8 for w8a8) after an fp32 sum whose order differs from
    # the reference's, so a value on a rounding boundary can land one code apart: 16-bit weights are
    # checked element by element against the reach of that (reference(..., bound=True)); fp8 codes
    # are ~6% apart, checked against a fraction of the output's scale (measured worst over 12 seeds:
    # 0.051)
    if dtype in ("bf16", "fp16", "nvfp4_w4a16"):
        ref, bound = reference(x, r1, r2, tw, ti, act_dtype, bound=True)
        got = out.float().cpu()
        assert not got.isnan().any(), f"{name} {dtype} tokens={tokens}: NaN in output"
        err = (got - ref).abs()
        assert (err <= bound).all(), \
            f"{name} {dtype} tokens={tokens}: max err / rounding bound {(err / bound).max():.3g}"
    else:
        ref = reference(x, r1, r2, tw, ti, act_dtype, act_q)
        _check(out, ref, f"{name} {dtype} tokens={tokens}", 0.1)


@pytest.mark.parametrize("name", list(SMALL))
@pytest.mark.parametrize("dtype,act_dtype", CASES)
@pytest.mark.parametrize("tokens", [1, 7])
def test_fused_moe_matches_reference(name, dtype, act_dtype, tokens, device):
    _run(name, SMALL[name], dtype, act_dtype, tokens, device)


@pytest.mark.gpu
@pytest.mark.parametrize("name", list(REAL))
@pytest.mark.parametrize("dtype,act_dtype", CASES)
@pytest.mark.parametrize("tokens", [1, 77, 1024])
def test_gpu_fused_moe_real_shapes(name, dtype, act_dtype, tokens):
    _run(name, REAL[name], dtype, act_dtype, tokens, "cuda")


@pytest.mark.parametrize("block_m", [16, 64])
def test_align_lists_every_pair_once_in_expert_blocks(block_m, device):
    e, k, t = 8, 2, 37
    ti = torch.stack([torch.randperm(e)[:k] for _ in range(t)]).to(device)
    ids, experts, n_pad = moe_align(ti, e, block_m)
    ids, experts, n_pad = ids.cpu(), experts.cpu(), int(n_pad.item())
    pairs = t * k
    real = ids[:n_pad]
    assert sorted(real[real < pairs].tolist()) == list(range(pairs))
    assert (ids[n_pad:] == pairs).all()
    flat = ti.flatten().cpu()
    for b in range(n_pad // block_m):
        rows = real[b * block_m:(b + 1) * block_m]
        rows = rows[rows < pairs]
        assert (flat[rows.long()] == experts[b]).all(), f"block {b} mixes experts"


def test_gemm_writes_every_valid_row_and_nothing_else(device):
    """Poisoned output: each routed pair's row is written, the poison row past them stays."""
    e, k, t, n, kk = 4, 2, 5, 48, 32
    ti = torch.stack([torch.randperm(e)[:k] for _ in range(t)]).to(device)
    a = torch.randn(t, kk, dtype=torch.bfloat16, device=device)
    w = torch.randn(e, n, kk, dtype=torch.bfloat16, device=device)
    out = torch.full((t * k + 1, n), float("nan"), dtype=torch.bfloat16, device=device)
    cfg = planner.plan_moe(120, dtype="bf16", num_experts=e, n=n, k=kk, tokens=t, top_k=k)
    ids, experts, n_pad = moe_align(ti, e, cfg.block_m)
    moe_gemm(a, w, out[: t * k], ids, experts, n_pad, top_k=k, cfg=cfg, dtype="bf16")
    got = out.float().cpu()
    assert not got[: t * k].isnan().any()
    assert got[t * k].isnan().all(), "a row past the pairs was written"
    want = torch.stack([a[i // k].float() @ w[ti.flatten()[i]].float().T for i in range(t * k)]).cpu()
    assert torch.allclose(got[: t * k], want, atol=0.05, rtol=0.02)


@pytest.mark.parametrize("kw,name", [
    (dict(dtype="int4"), "dtype"),
    (dict(dtype="fp8_w8a8"), "w1"),
    (dict(dtype="fp8_w8a8_block"), "w1"),
])
def test_bad_arguments_name_the_argument(kw, name, device):
    x, w1, w2, tw, ti = _inputs((4, 2, 64, 32), 3, torch.bfloat16)
    with pytest.raises(ValueError, match=name):
        fused_moe(x.to(device), w1.to(device), w2.to(device), tw.to(device), ti.to(device), **kw)


def test_plan_moe_rejects_fp8_before_sm89_and_fits_everywhere():
    with pytest.raises(ValueError, match="sm_89"):
        planner.plan_moe(86, dtype="fp8_w8a8", num_experts=8, n=64, k=64, tokens=1, top_k=2)
    with pytest.raises(ValueError, match="nvfp4_w4a4.*sm_120"):
        planner.plan_moe(90, dtype="nvfp4_w4a4", num_experts=8, n=64, k=64, tokens=1, top_k=2)
    for arch in planner.ARCH_LIMITS:
        for inp in planner.moe_domain(arch):
            if inp["dtype"].startswith("fp8") and arch < 89:
                continue
            cfg = planner.plan_moe(arch, **inp)
            assert planner.moe_gemm_smem(cfg, inp["dtype"]) <= planner.arch_limits(arch).smem_per_block
            if inp["dtype"] == "fp8_w8a8_block":
                assert 128 % cfg.block_k == 0, "one block scale per K step"


@pytest.mark.parametrize("rows,inter", [(1, 96), (7, 1100)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_silu_mul_matches_torch(rows, inter, dtype, device):
    from sgl_kernel_sm12x.moe.fused_moe import silu_mul

    x = torch.randn(rows, 2 * inter, dtype=dtype, device=device) * 3
    got = silu_mul(x).float().cpu()
    g, u = x.float().cpu().split(inter, 1)
    want = (torch.nn.functional.silu(g) * u).to(dtype).float()
    assert got.shape == want.shape
    assert torch.allclose(got, want, atol=1e-2, rtol=2 ** -6), (got - want).abs().max()


@pytest.mark.parametrize("group", [None, 128, 64])
@pytest.mark.parametrize("silu", [False, True])
@pytest.mark.parametrize("rows,k", [(1, 256), (5, 384), (2, 4224)])
def test_quant_fp8_matches_the_reference_quantizer(rows, k, group, silu, device):
    """Codes and scales of the fused activation quantizer against torch: per row or per 64/128-group,
    plain or silu(gate) * up; a row holding Inf stays visible (NaN codes) without touching others.
    4,224 = 33 groups of 128: two programs a row, the second holding one group."""
    from sgl_kernel_sm12x.moe.fused_moe import quant_fp8

    x = (torch.randn(rows, 2 * k if silu else k) * 5).to(torch.bfloat16)
    if rows > 1:
        x[1, 3] = float("inf")
    q, sc = quant_fp8(x.to(device), group, silu=silu)
    assert q.shape == (rows, k) and sc.shape == (rows, k // (group or k)) and q.dtype == torch.uint8
    xf = x.float()
    y = (torch.nn.functional.silu(xf[:, :k]) * xf[:, k:]).to(torch.bfloat16).float() if silu else xf
    g = group or k
    want_s = (y.view(rows, k // g, g).abs().amax(-1) / FP8_MAX).clamp_min(1e-12)
    want = (y.view(rows, k // g, g) / want_s[..., None]).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    got = q.cpu().view(torch.float8_e4m3fn).float().view(rows, k // g, g)
    ok = [r for r in range(rows) if r != 1] if rows > 1 else [0]
    # silu: the kernel's exp and the bf16 rounding after it may put the group's largest value one
    # bf16 step apart from torch's
    assert torch.allclose(sc.cpu()[ok], want_s[ok], rtol=1e-2 if silu else 1e-6)
    # one fp8 code apart at most where the division rounds differently
    diff = (got[ok] - want.float()[ok]).abs()
    assert (diff <= want.float()[ok].abs() * 0.125 + (0.02 if silu else 1e-6)).all(), diff.max()
    if rows > 1:
        assert got[1].isnan().any(), "the Inf row must stay visible"


@pytest.mark.parametrize("t,k,h", [(1, 8, 64), (5, 2, 1100)])
def test_moe_sum_matches_torch(t, k, h, device):
    from sgl_kernel_sm12x.moe.fused_moe import moe_sum

    x = torch.randn(t, k, h).to(torch.bfloat16)
    out = torch.full((t, h), float("nan"), dtype=torch.bfloat16, device=device)
    got = moe_sum(x.to(device), out).float().cpu()
    want = x.float().sum(1).to(torch.bfloat16).float()
    assert torch.allclose(got, want, atol=1e-2, rtol=2 ** -7), (got - want).abs().max()


@pytest.mark.parametrize("e,k,t,block_m", [(128, 8, 1, 16), (8, 2, 37, 64), (32, 4, 300, 32), (256, 8, 5, 16)])
def test_align_kernel_equals_the_torch_path(e, k, t, block_m, device):
    ti = torch.stack([torch.randperm(e)[:k] for _ in range(t)]).to(device)
    a = moe_align(ti, e, block_m)
    b = moe_align_torch(ti, e, block_m)
    assert int(a[2].item()) == int(b[2].item())
    n_pad = int(b[2].item())
    assert torch.equal(a[0].cpu()[:n_pad], b[0].cpu()[:n_pad])
    assert torch.equal(a[1].cpu()[: n_pad // block_m], b[1].cpu()[: n_pad // block_m])


@pytest.mark.gpu
@pytest.mark.parametrize("tokens", [1, 64])
def test_gpu_fused_moe_cuda_graph_replay(tokens):
    """Captured once, replayed with new hidden states and routing: equals the eager call."""
    e, k, h, i = planner.MOE_SHAPES["qwen3-30b-a3b"]
    x, w1, w2, tw, ti = (t.cuda() for t in _inputs((e, k, h, i), tokens, torch.bfloat16))
    fused_moe(x, w1, w2, tw, ti)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        out = fused_moe(x, w1, w2, tw, ti)
    for _ in range(3):
        x2, _, _, tw2, ti2 = (t.cuda() for t in _inputs((e, k, h, i), tokens, torch.bfloat16))
        x.copy_(x2), tw.copy_(tw2), ti.copy_(ti2)
        g.replay()
        want = fused_moe(x, w1, w2, tw, ti)
        torch.cuda.synchronize()
        assert torch.equal(out, want)


def test_oversized_user_tile_is_fitted_with_a_warning(device, caplog):
    big = planner.MoeConfig(128, 256, 256, 8, 8, 5)       # 4 x (128*256 + 256*256) * 2 B = 786,432 B
    fitted, reason = planner.fit_moe_config(120, big, "bf16")
    assert fitted.block_m == 128 and planner.moe_gemm_smem(fitted, "bf16") <= 101376
    assert "786,432" in reason and "using" in reason
    assert planner.fit_moe_config(120, fitted, "bf16") == (fitted, None)
    x, w1, w2, tw, ti = _inputs((8, 2, 64, 32), 3, torch.bfloat16)
    with caplog.at_level("WARNING"):
        out = fused_moe(x.to(device), w1.to(device), w2.to(device), tw.to(device), ti.to(device),
                        arch=120, config=(big, big))
    assert "786,432" in caplog.text
    ref = reference(x, w1.float(), w2.float(), tw, ti, torch.bfloat16)
    assert (out.float().cpu() - ref).abs().max() <= 0.04 * ref.abs().max()


def test_benchmark_rows_have_the_documented_fields(device):
    """``benchmark/moe.py``'s measurement loop, with a stand-in timer: rows carry provider, dtype,
    shape, tokens and a p50 ``ms`` (the timer's percentile tuple unpacked), and a provider that
    cannot run records its error instead of stopping the sweep."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("bench_moe", Path(__file__).resolve().parents[1] / "benchmark" / "moe.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    ran = []

    def timer(fn, graph=False):
        ran.append(fn())
        return (0.5, 1.0, 2.0)

    rows = bench.measure(["s"], ["bf16"], [3], device, timer, table={"s": (4, 2, 64, 32)}, copy_gbps=1000.0)
    ours = [r for r in rows if r["provider"] == "sm12x"]
    assert len(ours) == 1 and ours[0]["ms"] == 1.0 and ours[0]["ms_p20_p80"] == [0.5, 2.0]
    (floor,) = [r for r in rows if r["provider"] == "copy"]
    # 3 tokens x top-2 of 4 experts touch 2..4 experts of (2*32*64 + 64*32) bf16 weights, + input and output
    per_expert = 3 * 32 * 64 * 2
    assert 2 * per_expert + 2 * 3 * 64 * 2 <= floor["ms"] * 1e9 <= 4 * per_expert + 2 * 3 * 64 * 2
    assert ours[0]["fraction_of_copy"] == pytest.approx(floor["ms"] / 1.0)
    assert ours[0]["tflops"] == pytest.approx(2 * 3 * 2 * 3 * 64 * 32 / 1.0 / 1e9)
    theirs = [r for r in rows if r["provider"] == "sglang_triton"]
    assert len(theirs) == 1 and ("ms" in theirs[0] or "error" in theirs[0])
    if "ms" in theirs[0]:                    # on a GPU both ran: the same MoE
        assert (ran[0].float() - ran[1].float()).abs().max() <= 0.03 * ran[1].float().abs().max()


def test_tune_neighbourhood_has_every_single_step_and_fits():
    """The sweep's local search: each dimension one step away (warp count included), the paired
    wider-tile + other-warp-count moves, nothing over the shared-memory limit."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmark"))
    import tune_moe

    plan = planner.MoeConfig(64, 64, 64, 8, 4, 4)
    got = tune_moe.neighbours(plan, "bf16", 101376)
    assert got[0] == plan and len(set(got)) == len(got)
    assert planner.MoeConfig(64, 64, 64, 8, 8, 4) in got                     # the other warp count
    assert planner.MoeConfig(64, 128, 64, 8, 8, 4) in got                    # wider N with 8 warps
    assert {c.block_m for c in got} >= {32, 64, 128} and {c.num_stages for c in got} >= {3, 4, 5}
    assert all(planner.moe_gemm_smem(c, "bf16") <= 101376 for c in got)


def test_tune_sweeps_refuse_configurations_that_compute_something_else():
    """Both sweeps check a candidate's output against the planned configuration's before timing it:
    equal -> 0, a wrong result or a NaN -> beyond any tolerance."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmark"))
    import tune_attention
    import tune_moe
    from _harness import max_diff

    assert tune_attention.max_diff is max_diff and tune_moe.max_diff is max_diff
    ref = torch.randn(64, 32)
    assert max_diff(ref.clone(), ref, relative=True) == 0.0
    bad = ref.clone()
    bad[3, 4] += 0.5 * ref.abs().max()
    assert max_diff(bad, ref, relative=True) > 0.4
    nan = ref.clone()
    nan[0, 0] = float("nan")
    assert max_diff(nan, ref, relative=True) == float("inf")
    anchor = ref.to(torch.bfloat16)
    assert max_diff(ref.to(torch.bfloat16), anchor) == 0.0
    assert max_diff(bad.to(torch.bfloat16), anchor) > 0.1
    assert max_diff(nan, anchor) == float("inf")


@pytest.mark.parametrize("e,k,t,block_m", [(128, 8, 1, 16), (8, 2, 37, 64), (32, 4, 300, 32), (256, 8, 70, 16),
                                           (8, 2, 129, 128), (1000, 1, 300, 16)])
def test_many_program_align_equals_the_torch_path(e, k, t, block_m, device):
    """The three-stage alignment (count / offsets / scatter over 256-pair chunks): the same lists as a
    stable sort, chunk boundaries (256, 512 pairs) and a partial last chunk included; poisoned buffers
    would show in the padding and block tails."""
    from sgl_kernel_sm12x.moe.fused_moe import moe_align_multi
    ti = torch.stack([torch.randperm(e)[:k] for _ in range(t)]).to(device)
    a = moe_align_multi(ti, e, block_m)
    b = moe_align_torch(ti, e, block_m)
    assert int(a[2].item()) == int(b[2].item())
    n_pad = int(b[2].item())
    assert torch.equal(a[0].cpu(), b[0].cpu()), "sorted ids (padding included) differ"
    assert torch.equal(a[1].cpu()[: n_pad // block_m], b[1].cpu()[: n_pad // block_m])


# ------------------------------------------------------------------------------------------------
# NVFP4 weights (ModelOpt's layout): the quantizer, the dense linear, refusals
# ------------------------------------------------------------------------------------------------

def _modelopt_nvfp4(w):
    """ModelOpt's NVFP4 weight recipe, written out independently of the project's quantizer:
    per-tensor scale amax / (6 * 448), block scales amax_16 / (6 * scale_2) cast to e4m3 by torch,
    values w / (scale * scale_2) rounded to the nearest E2M1 magnitude (ties to the even code),
    two codes a byte, the even element in the low nibble."""
    mags = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])
    out, k = w.shape
    x = w.float().reshape(out, k // 16, 16)
    s2 = x.abs().amax() / (6.0 * 448.0)
    s2 = torch.where(s2 > 0, s2, torch.ones_like(s2))          # an all-zero tensor: no 0 / 0
    scale = (x.abs().amax(-1) / (6.0 * s2)).to(torch.float8_e4m3fn)
    sv = scale.float()
    q = torch.where(sv[..., None] > 0, x / (sv[..., None] * s2), torch.zeros_like(x))
    d = (q.abs()[..., None] - mags).abs()
    best = d.min(-1, keepdim=True).values
    ties = (d == best)
    # among tied magnitudes the even code (E2M1 codes 0..7 index mags)
    idx = torch.where(ties.sum(-1) > 1, torch.where(ties, torch.arange(8) % 2 == 0, False).float().argmax(-1),
                      d.argmin(-1))
    code = (idx | ((q < 0) | ((q == 0) & (torch.signbit(q)))).to(torch.int64) << 3).reshape(out, k).to(torch.uint8)
    return code[:, 0::2] | (code[:, 1::2] << 4), scale, s2


@pytest.mark.parametrize("shape", [(7, 64), (32, 48), (1, 16)])
def test_weight_quantizer_is_bit_exact_with_modelopts_layout(shape):
    torch.manual_seed(shape[0])
    w = torch.randn(*shape) * torch.rand(shape[0], 1) * 3
    w[0, :16] = 0                                   # an all-zero block
    w[-1, -1] = 0.5 * w.abs().max()                 # values on E2M1 ties appear after scaling
    data, scale, s2 = nvfp4.quantize_weight(w)
    want_d, want_s, want_s2 = _modelopt_nvfp4(w)
    assert data.dtype == torch.uint8 and data.shape == (shape[0], shape[1] // 2)
    assert scale.dtype == torch.float8_e4m3fn and scale.shape == (shape[0], shape[1] // 16)
    assert torch.equal(scale.view(torch.uint8), want_s.view(torch.uint8))
    assert torch.equal(data, want_d) and torch.equal(s2, want_s2)
    back = nvfp4.dequantize_weight(data, scale, s2)
    assert (back - w).abs().max() <= 1.0 * nvfp4.e4m3_decode(scale).max() * s2 + 1e-6   # half the widest step (4 -> 6)
    with pytest.raises(ValueError, match="NaN or Inf"):
        nvfp4.quantize_weight(torch.full((2, 16), float("nan")))


@pytest.mark.parametrize("tokens", [1, 5, 70])
@pytest.mark.parametrize("n,k", [(48, 64), (130, 96)])
@pytest.mark.parametrize("act_dtype", [torch.bfloat16, torch.float16])
def test_nvfp4_linear_matches_reference(tokens, n, k, act_dtype, device):
    """The dense NVFP4 linear (the one-expert case of the grouped GEMM): ``x @ dequant(W)^T``
    against float32 over the dequantized weight; odd sizes (N not a multiple of the tile, K not a
    multiple of BLOCK_K); the output poisoned before launch shows unwritten elements."""
    from sgl_kernel_sm12x.moe.fused_moe import nvfp4_linear

    x = torch.randn(tokens, k).to(act_dtype)
    w = torch.randn(n, k) / k ** 0.5
    data, scale, s2 = nvfp4.quantize_weight(w)
    ref = x.float() @ nvfp4.dequantize_weight(data, scale, s2).T
    out = nvfp4_linear(x.to(device), data.to(device), scale.to(device), s2.to(device))
    assert out.shape == (tokens, n) and out.dtype == act_dtype
    got = out.float().cpu()
    tol = 2 ** -7 if act_dtype == torch.bfloat16 else 2 ** -10
    assert ((got - ref).abs() <= tol * ref.abs() + 1e-3).all(), (got - ref).abs().max()


def test_nvfp4_bad_arguments_name_the_argument(device):
    from sgl_kernel_sm12x.moe.fused_moe import nvfp4_linear

    x = torch.randn(3, 64).to(torch.bfloat16).to(device)
    data, scale, s2 = nvfp4.quantize_weight(torch.randn(32, 64))
    with pytest.raises(ValueError, match="weight_scale"):
        nvfp4_linear(x, data.to(device), scale[:, :2].to(device), s2)
    with pytest.raises(ValueError, match="^x: .*multiple of 16"):
        nvfp4_linear(torch.randn(3, 40).to(torch.bfloat16).to(device), data.to(device), scale.to(device), s2)
    with pytest.raises(ValueError, match="^weight: .*packed E2M1"):
        nvfp4_linear(x, data.to(torch.int8).to(device), scale.to(device), s2)
    e = 4
    x2, w1, w2, tw, ti = _inputs((e, 2, 64, 32), 3, torch.bfloat16, device)
    (a1, s1, g1), (a2, s2_, g2) = nvfp4.quantize_weight(w1.cpu()), nvfp4.quantize_weight(w2.cpu())
    with pytest.raises(ValueError, match="w2_global"):
        fused_moe(x2, a1.to(device), a2.to(device), tw, ti, dtype="nvfp4_w4a16", w1_scale=s1.to(device),
                  w2_scale=s2_.to(device), w1_global=g1.to(device), w2_global=g2[:2].to(device))
    with pytest.raises(ValueError, match="^dtype: 'nvfp5'"):
        fused_moe(x2, w1, w2, tw, ti, dtype="nvfp5")



@pytest.mark.parametrize("name", ["qwen3-30b-a3b", "gpt-oss"])
@pytest.mark.parametrize("tokens", [1, 7])
def test_fused_moe_w4a4_matches_reference(name, tokens, device):
    """NVFP4 weights x NVFP4 activations (ModelOpt's W4A4 recipe): the activations quantized per 16
    by the NVFP4 append kernel's rules with a global scale, the GEMMs against float32 over the
    dequantized weights and the (reference-)quantized activations. Under the interpreter both
    operands are decoded in software; on sm_120 the block-scaled FP4 MMA runs it."""
    if device == "cuda" and planner.current_arch(torch.device("cuda")) not in (120, 121):
        pytest.skip("the block-scaled FP4 mma.sync is sm_120 / sm_121's")
    e, k, h, i = SMALL[name]
    x, w1, w2, tw, ti = _inputs((e, k, h, i), tokens, torch.bfloat16, device)
    (a1, s1, g1), (a2, s2, g2) = nvfp4.quantize_weight(w1.cpu()), nvfp4.quantize_weight(w2.cpu())
    r1, r2 = nvfp4.dequantize_weight(a1, s1, g1), nvfp4.dequantize_weight(a2, s2, g2)
    ga, gb = 0.01, 0.002

    def act_q(t, g):
        d, sc = nvfp4.quantize_nvfp4(t, g)
        return nvfp4.dequantize_nvfp4(d, sc, g)

    globals_ = iter((ga, gb))         # reference() quantizes the input, then the intermediate
    out = fused_moe(x, a1.to(device), a2.to(device), tw, ti, dtype="nvfp4_w4a4", w1_scale=s1.to(device),
                    w2_scale=s2.to(device), w1_global=g1.to(device), w2_global=g2.to(device), a1_global=ga,
                    a2_global=gb, arch=120)
    ref = reference(x.cpu(), r1, r2, tw.cpu(), ti.cpu(), torch.bfloat16, act_q=lambda t: act_q(t, next(globals_)))
    # the intermediate's NVFP4 codes can round apart from the reference's (its bf16 sum order
    # differs by an ulp, and a code near a rounding boundary then moves a whole E2M1 step, up to
    # a third of the value): a few such elements move single outputs, so the check is on the whole
    # output's relative error (measured 0.04-0.105 over 10 seeds: 4-bit intermediates that round
    # apart; the GEMMs themselves are checked exactly below)
    got = out.float().cpu()
    assert not got.isnan().any()
    rel = ((got - ref).norm() / ref.norm()).item()
    assert rel < 0.2, f"{name} w4a4 tokens={tokens}: relative error {rel:.3g}"


@pytest.mark.parametrize("tokens,n,k", [(1, 64, 128), (7, 96, 192)])
def test_w4a4_gemm_matches_reference(tokens, n, k, device):
    """One W4A4 grouped GEMM against float32 over the same NVFP4 activations and weights: the
    only differences are the fp32 summation order (the fused MoE above also rounds its 4-bit
    intermediate apart)."""
    from sgl_kernel_sm12x.moe.fused_moe import moe_align, moe_gemm, quant_nvfp4_rows

    e, top_k = 4, 2
    x = torch.randn(tokens, k).to(torch.bfloat16)
    w = torch.randn(e, n, k) / k ** 0.5
    wq, ws, wg = nvfp4.quantize_weight(w)
    ti = torch.stack([torch.randperm(e)[:top_k] for _ in range(tokens)]).to(torch.int32)
    cfg = planner.plan_moe(120, dtype="nvfp4_w4a4", num_experts=e, n=n, k=k, tokens=tokens, top_k=top_k)
    aq, as_, ag = quant_nvfp4_rows(x.to(device), 0.01)
    ids, experts, npad = moe_align(ti.to(device), e, cfg.block_m)
    out = torch.full((tokens * top_k, n), float("nan"), dtype=torch.bfloat16, device=device)
    moe_gemm(aq, wq.to(device), out, ids, experts, npad, top_k=top_k, cfg=cfg, dtype="nvfp4_w4a4",
             a_scale=as_, w_scale=ws.to(device), w_global=wg.to(device), a_global=ag)
    xa = nvfp4.dequantize_nvfp4(aq.cpu(), as_.cpu(), 0.01)
    wd = nvfp4.dequantize_weight(wq, ws, wg)
    ref = torch.stack([xa[t] @ wd[int(ti[t, j])].T for t in range(tokens) for j in range(top_k)])
    got = out.float().cpu()
    assert not got.isnan().any(), "unwritten output rows"
    assert ((got - ref).abs() <= 2 ** -7 * ref.abs() + 1e-3 * ref.abs().max()).all(), (got - ref).abs().max()


def test_quant_nvfp4_rows_is_the_reference_quantizer(device):
    from sgl_kernel_sm12x.moe.fused_moe import quant_nvfp4_rows

    x = (torch.randn(5, 192) * 3).to(torch.bfloat16)
    q, s, g = quant_nvfp4_rows(x.to(device), 0.02)
    want_q, want_s = nvfp4.quantize_nvfp4(x.float(), 0.02)
    assert torch.equal(q.cpu(), want_q) and torch.equal(s.cpu(), want_s.view(torch.uint8))
    q2, s2, g2 = quant_nvfp4_rows(x.to(device))
    assert torch.allclose(g2.cpu(), x.float().abs().max() / (6 * 448))
    with pytest.raises(ValueError, match="multiple of 64"):
        quant_nvfp4_rows(torch.zeros(2, 48, dtype=torch.bfloat16, device=device))
