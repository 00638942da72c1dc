"""The SGLang plugin against the installed SGLang: discovery, argument resolution, version gate, and
the backend's forward passes on real SGLang memory pools and ForwardBatch objects (CPU tensors under
the Triton interpreter, or the GPU when there is one)."""
import inspect
import json
import math
import os
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import sglang  # noqa: E402,F401 -- the plugin tests need SGLang installed (the test extra pins it)

from attention_ref import assert_close_attn, attention_ref  # noqa: E402
from conftest import HAS_CUDA  # noqa: E402
from sgl_kernel_sm12x import nvfp4, planner  # noqa: E402

import sglang_sm12x  # noqa: E402
from sglang_sm12x import _compat, _hooks  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "python" / "sglang_sm12x" / "models" / "qwen3-tiny"
REL = _compat.check()


@pytest.fixture(scope="module", autouse=True)
def registered():
    sglang_sm12x.register()
    from sglang.srt.plugins.hook_registry import HookRegistry

    HookRegistry.apply_hooks()


# ------------------------------------------------------------------------------------------------
# discovery, version gate, argument resolution
# ------------------------------------------------------------------------------------------------

def test_entry_point_is_discovered():
    eps = {ep.name: ep for ep in entry_points(group="sglang.srt.plugins")}
    assert "sm12x" in eps, f"entry points: {sorted(eps)}"
    assert eps["sm12x"].value == "sglang_sm12x:register"
    assert eps["sm12x"].load() is sglang_sm12x.register


def test_sglang_load_plugins_registers_backend():
    code = ("from sglang.srt.plugins import load_plugins; load_plugins();"
            "from sglang.srt.layers.attention.attention_registry import ATTENTION_BACKENDS;"
            "import sglang.srt.arg_groups.choices as c;"
            "print('sm12x' in ATTENTION_BACKENDS, 'sm12x' in c.ATTENTION_BACKEND_CHOICES)")
    env = dict(os.environ, TRITON_INTERPRET=os.environ.get("TRITON_INTERPRET", "0"))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "True True", out.stdout + out.stderr[-2000:]


@pytest.mark.parametrize("v", ["0.5.20", "0.6.0", "0.5.1"])
def test_unsupported_sglang_is_refused(v):
    with pytest.raises(_compat.UnsupportedSGLang) as e:
        _compat.check(v)
    msg = str(e.value)
    assert "0.5.23" in msg and "0.5.17" in msg and v in msg and "sm12x patch" in msg


@pytest.mark.parametrize("v,rel", [("0.5.23", "0.5.23"), ("0.5.17.post1", "0.5.17"), ("0.5.23+cu130", "0.5.23")])
def test_supported_versions(v, rel):
    assert _compat.check(v) == rel


def _resolve(*args):
    from sglang.srt.server_args import prepare_server_args

    sa = prepare_server_args(["--model-path", str(TINY), "--device", "cpu", *args])
    sa.resolve_once()
    from sglang.srt.arg_groups.overrides import resolved_view

    return resolved_view(sa)


@pytest.mark.skipif(REL != "0.5.23", reason="resolution pipeline of SGLang 0.5.23")
@pytest.mark.parametrize("kv", ["nvfp4", "fp8_e4m3", "auto", "bf16"])
def test_sglang_parses_backend_and_kv_dtype(kv):
    v = _resolve("--attention-backend", "sm12x", "--kv-cache-dtype", kv)
    assert v.attention_backend == "sm12x"
    assert v.kv_cache_dtype == kv
    assert v.prefill_attention_backend in (None, "sm12x") and v.decode_attention_backend in (None, "sm12x")


@pytest.mark.skipif(REL != "0.5.23", reason="resolution pipeline of SGLang 0.5.23")
def test_other_backends_keep_sglang_nvfp4_checks():
    with pytest.raises(ValueError, match="provides neither"):
        _resolve("--attention-backend", "triton", "--kv-cache-dtype", "nvfp4")


@pytest.mark.skipif(REL != "0.5.23", reason="resolution pipeline of SGLang 0.5.23")
def test_prefill_dequant_dtype_rejected_for_sm12x():
    with pytest.raises(ValueError, match="prefill-kv-cache-dequant-dtype"):
        _resolve("--attention-backend", "sm12x", "--kv-cache-dtype", "nvfp4",
                 "--prefill-kv-cache-dequant-dtype", "fp8_e4m3")


def test_nvfp4_method_selects_native_access_no_workspace():
    from sglang.srt.layers.quantization.fp4_kv_cache_quant_method import NVFP4KVCacheMethod

    qm = NVFP4KVCacheMethod(num_layers=2, device="cpu")
    if hasattr(qm, "configure_attention_backends"):
        qm.configure_attention_backends("sm12x", "sm12x")
        assert qm.needs_dequant_workspace() is False
        assert qm.has_native_fp4_access()
        # flashinfer keeps its FP8 workspace: the registry entry added nothing for it
        other = NVFP4KVCacheMethod(num_layers=2, device="cpu")
        other.configure_attention_backends("flashinfer", "flashinfer")
        assert other.needs_dequant_workspace() is True
    _hooks.native_for_sm12x(qm)
    assert qm.dequant_workspace_dtype() is None and qm.needs_linear_scale_buffer()
    cell = qm.compute_cell_size(head_num=8, head_dim=128, num_layers=36, kv_size=1)
    bf16_cell = 8 * 128 * 2 * 2 * 36
    assert bf16_cell / cell >= 3.4, f"nvfp4 capacity {bf16_cell / cell:.3f}x bf16"


def test_check_sm12x_kv_messages():
    with pytest.raises(ValueError, match="MLA"):
        _hooks.check_sm12x_kv("nvfp4", uses_mla=True)
    with pytest.raises(ValueError, match="supported"):
        _hooks.check_sm12x_kv("fp8_e5m2", uses_mla=False)


# ------------------------------------------------------------------------------------------------
# the backend on real SGLang pools and ForwardBatch
# ------------------------------------------------------------------------------------------------

DEV = "cuda" if HAS_CUDA else "cpu"
GLOBAL = {"bf16": (1.0, 1.0), "fp8_e4m3": (0.05, 0.03), "nvfp4": (0.5, 2.0)}


def _make_pool(kv, size, page, hkv, d, layers):
    from sglang.srt.mem_cache.memory_pool import MHATokenToKVPool

    kw = {}
    if kv == "nvfp4":
        from sglang.srt.layers.quantization.fp4_kv_cache_quant_method import NVFP4KVCacheMethod

        qm = NVFP4KVCacheMethod(num_layers=layers, device=DEV)
        if hasattr(qm, "configure_attention_backends"):
            qm.configure_attention_backends("sm12x", "sm12x")
        _hooks.native_for_sm12x(qm)
        ks, vs = GLOBAL[kv]
        qm.k_scales_float = [ks] * layers
        qm.v_scales_float = [vs] * layers
        kw["quant_method"] = qm
        dtype = torch.float4_e2m1fn_x2
    else:
        dtype = {"bf16": torch.bfloat16, "fp8_e4m3": torch.float8_e4m3fn}[kv]
    pool = MHATokenToKVPool(size=size, page_size=page, dtype=dtype, head_num=hkv, head_dim=d, layer_num=layers,
                            device=DEV, enable_memory_saver=False, **kw)
    return pool, dtype


class _Runner(SimpleNamespace):
    pass


def _layer(lid, hq, hkv, d, kv):
    ks, vs = GLOBAL[kv]
    return SimpleNamespace(layer_id=lid, tp_q_head_num=hq, tp_k_head_num=hkv, qk_head_dim=d, v_head_dim=d,
                           scaling=1.0 / math.sqrt(d), logit_cap=0.0, sliding_window_size=-1,
                           is_cross_attention=False, k_scale_float=ks if kv == "fp8_e4m3" else None,
                           v_scale_float=vs if kv == "fp8_e4m3" else None)


def _dequant(pool, kv, layer, slots):
    lid = layer.layer_id
    k, v = pool.k_buffer[lid][slots].cpu(), pool.v_buffer[lid][slots].cpu()
    if kv == "nvfp4":
        ks, vs = GLOBAL[kv]
        return (nvfp4.dequantize_nvfp4(k, pool.k_scale_buffer[lid][slots].cpu(), ks),
                nvfp4.dequantize_nvfp4(v, pool.v_scale_buffer[lid][slots].cpu(), vs))
    if kv == "fp8_e4m3":
        return nvfp4.dequantize_fp8(k.view(torch.uint8), layer.k_scale_float), \
            nvfp4.dequantize_fp8(v.view(torch.uint8), layer.v_scale_float)
    return k.float(), v.float()


def _random_pages(rows, max_ctx, size, page):
    """SGLang's ReqToTokenPool with each of ``rows`` given page-aligned slots on pages drawn in
    random order (page 0, the padding slots, never used): the layout a paged allocator leaves."""
    from sglang.srt.mem_cache.memory_pool import ReqToTokenPool

    r2t = ReqToTokenPool(size=8, max_context_len=max_ctx, device=DEV, enable_memory_saver=False)
    per = max_ctx // page + 1
    perm = (torch.randperm(size // page - 2) + 1).tolist()
    for i, r in enumerate(rows.tolist()):
        pages = torch.tensor(perm[i * per:(i + 1) * per])
        r2t.req_to_token[r, :max_ctx] = (pages[:, None] * page + torch.arange(page)).flatten()[:max_ctx] \
            .to(torch.int32).to(DEV)
    return r2t


def _extend_batch(mode, rows, prefix, ext, loc):
    """SGLang's ForwardBatch of an extend over ``rows`` (prefix / new tokens per request)."""
    from sglang.srt.model_executor.forward_batch_info import ForwardBatch

    seq = [p + e for p, e in zip(prefix, ext)]
    return ForwardBatch(forward_mode=mode, batch_size=len(seq), input_ids=torch.zeros(sum(ext), dtype=torch.long,
                        device=DEV), req_pool_indices=rows, seq_lens=torch.tensor(seq, device=DEV), out_cache_loc=loc,
                        seq_lens_sum=sum(seq), seq_lens_cpu=torch.tensor(seq),
                        extend_prefix_lens=torch.tensor(prefix, device=DEV, dtype=torch.int32),
                        extend_seq_lens=torch.tensor(ext, device=DEV, dtype=torch.int32),
                        extend_prefix_lens_cpu=list(prefix), extend_seq_lens_cpu=list(ext))


def _decode_batch(rows, seq, loc):
    """SGLang's ForwardBatch of one decode step over ``rows`` (sequence lengths with the new token)."""
    from sglang.srt.model_executor.forward_batch_info import ForwardBatch, ForwardMode

    bs = len(seq)
    return ForwardBatch(forward_mode=ForwardMode.DECODE, batch_size=bs, input_ids=torch.zeros(bs, dtype=torch.long,
                        device=DEV), req_pool_indices=rows, seq_lens=torch.tensor(seq, device=DEV, dtype=torch.int32),
                        out_cache_loc=loc, seq_lens_sum=sum(seq), seq_lens_cpu=torch.tensor(seq))


@pytest.mark.parametrize("kv,d", [("bf16", 64), ("fp8_e4m3", 64), ("nvfp4", 64), ("nvfp4-mse", 64), ("bf16", 96),
                                  ("nvfp4", 96)])
@pytest.mark.parametrize("page", [1, 16])
def test_backend_extend_chunked_then_decode(kv, d, page, monkeypatch):
    from sglang.srt.model_executor.forward_batch_info import ForwardMode

    from sglang_sm12x.backend import NVFP4_SCALES_ENV, Sm12xAttnBackend

    scales = "mse" if kv.endswith("-mse") else "max"
    kv = kv.removesuffix("-mse")
    monkeypatch.setenv(NVFP4_SCALES_ENV, scales)

    hq, hkv, layers = 4, 2, 2
    first = [1, 9, 21]          # first chunk (fresh prefill); odd sizes
    second = [3, 1, 18]         # second chunk over the cached first one (chunked prefill / radix hit)
    bs = len(first)
    max_ctx = 64
    size = 512
    pool, dtype = _make_pool(kv, size, page, hkv, d, layers)
    rows = torch.tensor([5, 0, 3], device=DEV)
    r2t = _random_pages(rows, max_ctx, size, page)
    runner = _Runner(device=DEV, req_to_token_pool=r2t, token_to_kv_pool=pool, page_size=page,
                     kv_cache_dtype=dtype if kv != "nvfp4" else torch.float4_e2m1fn_x2,
                     model_config=SimpleNamespace(context_len=max_ctx), sliding_window_size=None,
                     dtype=torch.bfloat16)
    be = Sm12xAttnBackend(runner)
    assert be.kv_dtype == kv and be.nvfp4_scales == scales
    lay = [_layer(i, hq, hkv, d, kv) for i in range(layers)]

    def run_extend(prefix, ext, mode=ForwardMode.EXTEND):
        seq = [p + e for p, e in zip(prefix, ext)]
        loc = torch.cat([r2t.req_to_token[r, p:s] for r, p, s in zip(rows.tolist(), prefix, seq)]).to(torch.int64)
        fb = _extend_batch(mode, rows, prefix, ext, loc)
        be.init_forward_metadata(fb)
        # the host-side longest prefix reaches the kernel (0: fresh prefills run the 16-bit launch)
        assert be.forward_metadata.max_prefix_len == max(prefix)
        for L in lay:
            q = torch.randn(sum(ext), hq * d, dtype=torch.bfloat16)
            k = torch.randn(sum(ext), hkv * d, dtype=torch.bfloat16) * 1.5
            v = torch.randn(sum(ext), hkv * d, dtype=torch.bfloat16)
            o = torch.full((sum(ext), hq * d), float("nan"), dtype=torch.bfloat16)
            o = be.forward(q.to(DEV), k.to(DEV), v.to(DEV), L, fb)       # SGLang's dispatch by mode
            assert o.shape == (sum(ext), hq * d)
            t0 = 0
            for i, (r, p, e) in enumerate(zip(rows.tolist(), prefix, ext)):
                qi = q[t0:t0 + e].view(e, hq, d).float()
                ki = k[t0:t0 + e].view(e, hkv, d).float()
                vi = v[t0:t0 + e].view(e, hkv, d).float()
                pk, pv = _dequant(pool, kv, L, r2t.req_to_token[r, :p].long())
                ref = attention_ref(qi, torch.cat([pk, ki]), torch.cat([pv, vi]), sm_scale=L.scaling)
                assert_close_attn(o[t0:t0 + e].view(e, hq, d), ref, f"{kv} page {page} extend req {i} layer "
                                  f"{L.layer_id}", atol=2e-2, rtol=2 ** -7)
                t0 += e
        return seq

    seq = run_extend([0] * bs, first)
    # a mixed batch: request 1 extends by one token (a decode riding in the prefill batch)
    seq = run_extend(first, second, ForwardMode.MIXED)
    # decode: one token per request, read entirely from the pool
    seq = [s + 1 for s in seq]
    loc = torch.stack([r2t.req_to_token[r, s - 1] for r, s in zip(rows.tolist(), seq)]).to(torch.int64)
    fb = _decode_batch(rows, seq, loc)
    be.init_forward_metadata(fb)
    for L in lay:
        q = torch.randn(bs, hq * d, dtype=torch.bfloat16)
        k = torch.randn(bs, hkv * d, dtype=torch.bfloat16)
        v = torch.randn(bs, hkv * d, dtype=torch.bfloat16)
        o = be.forward_decode(q.to(DEV), k.to(DEV), v.to(DEV), L, fb)
        for i, (r, s) in enumerate(zip(rows.tolist(), seq)):
            pk, pv = _dequant(pool, kv, L, r2t.req_to_token[r, :s].long())
            ref = attention_ref(q[i].view(1, hq, d).float(), pk, pv, sm_scale=L.scaling)
            assert_close_attn(o[i].view(1, hq, d), ref, f"{kv} page {page} decode req {i} layer {L.layer_id}",
                              atol=2e-2, rtol=2 ** -7)
        # the new token really went through the append kernel: its dequantized K is close to k
        got_k, _ = _dequant(pool, kv, L, loc.cpu())
        err = (got_k - k.view(bs, hkv, d).float()).abs().max().item()
        assert err < {"bf16": 1e-6, "fp8_e4m3": 0.2, "nvfp4": 1.5}[kv], err
        if kv == "nvfp4":       # the chosen block-scale rule reached the append kernel
            _, want_s = nvfp4.quantize_nvfp4(k.view(bs, hkv, d), GLOBAL[kv][0], scale_rule=scales)
            got_s = pool.k_scale_buffer[L.layer_id][loc].cpu().view(torch.uint8)
            assert (got_s == want_s.view(torch.uint8)).float().mean() > 0.9
    # the decode batch's metadata never serves an extend call (it would read the wrong index lists)
    with pytest.raises(RuntimeError, match="forward_extend called with decode metadata"):
        be.forward_extend(q.to(DEV), k.to(DEV), v.to(DEV), lay[0], fb)
    assert be.forward_decode(q[:0].to(DEV), k[:0].to(DEV), v[:0].to(DEV), lay[0], fb).shape == (0, hq * d)


def test_backend_rejects_unsupported_page_size():
    from sglang_sm12x.backend import Sm12xAttnBackend

    runner = _Runner(device=DEV, req_to_token_pool=SimpleNamespace(req_to_token=torch.zeros(1, 1)),
                     token_to_kv_pool=SimpleNamespace(), page_size=32, kv_cache_dtype=torch.bfloat16,
                     model_config=SimpleNamespace(context_len=8))
    with pytest.raises(ValueError, match="page-size 32.*supported"):
        Sm12xAttnBackend(runner)


@pytest.mark.parametrize("kw,match", [
    (dict(model_config=SimpleNamespace(context_len=8, head_dim=80)), "head_dim"),
    (dict(spec_algorithm=SimpleNamespace(is_none=lambda: False)), "speculative"),
])
def test_backend_refuses_at_start_what_it_cannot_serve(kw, match):
    from sglang_sm12x.backend import Sm12xAttnBackend

    pool = SimpleNamespace(k_buffer=[], v_buffer=[])
    base = dict(device=DEV, req_to_token_pool=SimpleNamespace(req_to_token=torch.zeros(1, 1)), token_to_kv_pool=pool,
                page_size=1, kv_cache_dtype=torch.bfloat16, model_config=SimpleNamespace(context_len=8, head_dim=128))
    base.update(kw)
    with pytest.raises(ValueError, match=match):
        Sm12xAttnBackend(_Runner(**base))


class _ModelConfig(SimpleNamespace):
    def get_num_kv_heads(self, tp):
        return max(1, self.num_key_value_heads // tp)


@pytest.mark.parametrize("heads,kv_heads,d,tp,match", [
    (136, 8, 128, 1, "cannot serve this model.*group"),         # GQA 17
    (64, 2, 128, 1, "cannot serve this model.*group"),          # GQA 32
    (32, 8, 80, 1, "head_dim"),
    (68, 4, 128, 2, "cannot serve this model.*group"),          # 34 / 2 per GPU: 17
])
def test_backend_refuses_unplannable_shapes_at_start(heads, kv_heads, d, tp, match):
    """What the planners would refuse at the first forward is refused when the backend is built;
    every GQA ratio up to 16 builds (Qwen3-14B's 5, MiniMax's 6, Qwen2.5-VL's 7, ...)."""
    from sglang_sm12x.backend import Sm12xAttnBackend

    pool = SimpleNamespace(k_buffer=[], v_buffer=[])
    mc = _ModelConfig(context_len=8, head_dim=d, num_attention_heads=heads, num_key_value_heads=kv_heads)
    runner = _Runner(device=DEV, req_to_token_pool=SimpleNamespace(req_to_token=torch.zeros(1, 1)),
                     token_to_kv_pool=pool, page_size=1, kv_cache_dtype=torch.bfloat16, model_config=mc,
                     tp_size=tp, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match=match):
        Sm12xAttnBackend(runner)
    for d_ok in (64, 96, 128, 256):                            # shapes the kernels serve build
        mc.num_attention_heads, mc.head_dim = 32, d_ok
        Sm12xAttnBackend(runner)
    mc.head_dim = 128
    for q_heads in (40, 48, 56, 24):                           # GQA 5, 6, 7, 3 over 8 KV heads
        mc.num_attention_heads, mc.num_key_value_heads = q_heads * tp, 8 * tp
        Sm12xAttnBackend(runner)


def test_backend_refuses_pools_it_cannot_address_at_start():
    """A hybrid linear-attention pool (no K/V buffers of its own) and a unified allocator's virtual
    slot ids are refused when the backend is built, naming the reason."""
    from sglang_sm12x.backend import check_runner

    class HybridLinearKVPool:
        pass

    with pytest.raises(ValueError, match="HybridLinearKVPool"):
        check_runner(SimpleNamespace(model_config=None), HybridLinearKVPool())
    mha = SimpleNamespace(k_buffer=[], v_buffer=[])
    unified = SimpleNamespace(model_config=None, token_to_kv_pool_allocator=SimpleNamespace(translate_kv_loc=id))
    with pytest.raises(ValueError, match="virtual ids"):
        check_runner(unified, mha)
    with pytest.raises(ValueError, match="virtual ids"):
        check_runner(SimpleNamespace(kv_index_translator=SimpleNamespace(is_translating=True)), mha)
    check_runner(SimpleNamespace(kv_index_translator=SimpleNamespace(is_translating=False)), mha)


def test_backend_rejects_an_unknown_nvfp4_scale_rule(monkeypatch):
    from sglang_sm12x.backend import NVFP4_SCALES_ENV, Sm12xAttnBackend

    monkeypatch.setenv(NVFP4_SCALES_ENV, "best")
    pool, dtype = _make_pool("nvfp4", 64, 1, 2, 64, 1)
    runner = _Runner(device=DEV, req_to_token_pool=SimpleNamespace(req_to_token=torch.zeros(1, 8)),
                     token_to_kv_pool=pool, page_size=1, kv_cache_dtype=dtype,
                     model_config=SimpleNamespace(context_len=8), sliding_window_size=None)
    with pytest.raises(ValueError, match="SGLANG_SM12X_NVFP4_SCALES='best'.*supported"):
        Sm12xAttnBackend(runner)


def test_backend_rejects_unsupported_kv_dtype():
    from sglang_sm12x.backend import kv_dtype_name

    with pytest.raises(ValueError, match="supported --kv-cache-dtype"):
        kv_dtype_name(torch.float8_e5m2, SimpleNamespace())


@pytest.mark.parametrize("kv", ["bf16", "nvfp4"])
@pytest.mark.parametrize("arch,sms", [(90, 132), (120, 170), (121, 48)])
def test_graph_workspace_is_allocated_once_for_every_captured_batch(kv, arch, sms):
    """CUDA graphs keep the addresses they captured: the split-stage buffer is sized at the first
    capture for the largest batch x split count the planner picks at any batch size, and every
    later capture (any order of batch sizes) views into it without a reallocation."""
    from sglang_sm12x.backend import Sm12xAttnBackend

    max_bs, hq, hkv, d = 160, 32, 8, 128
    be = SimpleNamespace(_cg=dict(ws_o=None, ws_lse=None, max_bs=max_bs), arch=arch, device="cpu")
    plan_kw = dict(head_dim=d, kv_dtype=kv, q_dtype="bf16", group=hq // hkv, page_size=1, kv_heads=hkv, num_sms=sms)
    first = None
    for bs in [max_bs, 1, 2, 3, 8, 17, 64, 100, 159]:
        ms = planner.plan_decode(arch, batch=bs, **plan_kw).max_splits
        o, lse = Sm12xAttnBackend._graph_workspace(be, bs, hq, d, ms, plan_kw)
        assert o.shape == (bs, hq, ms, d) and lse.shape == (bs, hq, ms)
        first = first if first is not None else be._cg["ws_o"].data_ptr()
        assert be._cg["ws_o"].data_ptr() == first, f"reallocated at batch {bs}"
    # and not the max_bs x 64-split buffer it used to be
    assert be._cg["ws_o"].numel() < max_bs * hq * d * 64


@pytest.mark.gpu
@pytest.mark.parametrize("kv", ["bf16", "nvfp4"])
@pytest.mark.parametrize("page", [1, 64])
def test_gpu_backend_decode_cuda_graph_replay(kv, page):
    """Capture forward_decode once, replay it for other lengths: equals the eager path."""
    from sglang.srt.mem_cache.memory_pool import ReqToTokenPool
    from sglang.srt.model_executor.forward_batch_info import ForwardBatch, ForwardMode

    from sglang_sm12x.backend import Sm12xAttnBackend

    hq, hkv, d, max_ctx, bs = 32, 8, 128, 4096, 4
    size = (bs * max_ctx // page + 4) * page
    pool, dtype = _make_pool(kv, size, page, hkv, d, 1)
    r2t = ReqToTokenPool(size=bs, max_context_len=max_ctx, device="cuda", enable_memory_saver=False)
    perm = torch.randperm(size // page - 1) + 1
    for r in range(bs):
        pages = perm[r * (max_ctx // page):(r + 1) * (max_ctx // page)]
        r2t.req_to_token[r] = (pages[:, None] * page + torch.arange(page)[None, :]).flatten()[:max_ctx].int().cuda()
    runner = _Runner(device="cuda", req_to_token_pool=r2t, token_to_kv_pool=pool, page_size=page,
                     kv_cache_dtype=dtype, model_config=SimpleNamespace(context_len=max_ctx),
                     sliding_window_size=None, dtype=torch.bfloat16)
    be = Sm12xAttnBackend(runner)
    L = _layer(0, hq, hkv, d, kv)
    # fill every slot of every request through the backend's append path (one big extend-like write)
    all_loc = r2t.req_to_token[:bs].flatten().long()
    k = torch.randn(all_loc.numel(), hkv, d, device="cuda", dtype=torch.bfloat16)
    be._write_kv(L, SimpleNamespace(out_cache_loc=all_loc), k, torch.randn_like(k), be._layer_pool(L), False)
    rows = torch.arange(bs, device="cuda")
    q = torch.randn(bs, hq * d, device="cuda", dtype=torch.bfloat16)

    def batch(lens):
        seq = torch.tensor(lens, device="cuda", dtype=torch.int32)
        return ForwardBatch(forward_mode=ForwardMode.DECODE, batch_size=bs, input_ids=torch.zeros(bs, dtype=torch.long,
                            device="cuda"), req_pool_indices=rows, seq_lens=seq, out_cache_loc=all_loc[:bs],
                            seq_lens_sum=sum(lens), seq_lens_cpu=torch.tensor(lens))

    be.init_cuda_graph_state(max_bs=bs, max_num_tokens=bs)
    static = batch([1, 1, 1, 1])
    be.init_forward_metadata_out_graph(static, in_capture=True)
    be.forward_decode(q, None, None, L, static, save_kv_cache=False)      # warm-up / compile
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        out = be.forward_decode(q, None, None, L, static, save_kv_cache=False)
    for lens in ([1, 7, 300, 4096], [4096, 4095, 17, 2], [64, 128, 1000, 1]):
        static.seq_lens.copy_(torch.tensor(lens, device="cuda", dtype=torch.int32))
        be.init_forward_metadata_out_graph(static)
        g.replay()
        eager_fb = batch(lens)
        be.init_forward_metadata(eager_fb)
        want = be.forward_decode(q, None, None, L, eager_fb, save_kv_cache=False)
        torch.cuda.synchronize()
        assert torch.equal(out, want), f"{kv} page {page} lens {lens}: replay differs from eager " \
            f"(max {(out.float() - want.float()).abs().max().item()})"


# ------------------------------------------------------------------------------------------------
# the SGLang 0.5.17 hooks, on stand-ins for the 0.5.17 objects (the device runs real 0.5.17)
# ------------------------------------------------------------------------------------------------

def test_0517_kv4_gate_lets_sm12x_nvfp4_through_and_only_it():
    calls = []

    def original(self):
        calls.append(self)
        raise RuntimeError("--kv-cache-dtype=nvfp4 requires Blackwell SM100 or SM120")

    def args(backend, kv="nvfp4", mla=False):
        return SimpleNamespace(kv_cache_dtype=kv, _resolved_attention_backends=lambda: (backend, backend),
                               use_mla_backend=lambda: mla)

    assert _hooks.kv4_compatibility_0517(original, args("sm12x")) is None and not calls
    with pytest.raises(RuntimeError, match="Blackwell"):
        _hooks.kv4_compatibility_0517(original, args("triton"))
    with pytest.raises(ValueError, match="MLA"):
        _hooks.kv4_compatibility_0517(original, args("sm12x", mla=True))


def test_0517_cell_size_gives_back_the_fp8_workspace(monkeypatch):
    import sglang.srt.runtime_context as rc

    monkeypatch.setattr(rc, "get_parallel", lambda: SimpleNamespace(attn_tp_size=1))
    heads, d, layers = 8, 128, 36
    per_layer = heads * (d // 2 + d // 16) * 2          # nvfp4 data + scales, K and V, bytes
    workspace = heads * d * 2                           # what 0.5.17 adds: FP8 K and V once per token

    def original(self, kvc, num_layers):
        return per_layer * num_layers + workspace

    def kvc(backend):
        return SimpleNamespace(kv_cache_dtype_str="nvfp4", use_mla_backend=False, kv_cache_dtype=torch.uint8,
                               server_args=SimpleNamespace(get_attention_backends=lambda: (backend, backend)),
                               model_config=SimpleNamespace(get_num_kv_heads=lambda tp: heads, head_dim=d))

    assert _hooks.cell_size_0517(original, None, kvc("sm12x"), layers) == per_layer * layers
    assert _hooks.cell_size_0517(original, None, kvc("flashinfer"), layers) == per_layer * layers + workspace
    bf16 = heads * d * 2 * 2 * layers
    assert bf16 / (per_layer * layers) >= 3.55


def _small_backend(B, kb, vb):
    """A backend over a two-layer bf16 pool of 8 slots (K ``kb`` / V ``vb`` in every layer)."""
    pool = SimpleNamespace(k_buffer=[kb] * 2, v_buffer=[vb] * 2)
    runner = _Runner(device=DEV, req_to_token_pool=SimpleNamespace(req_to_token=torch.zeros(1, 8)),
                     token_to_kv_pool=pool, page_size=1, kv_cache_dtype=torch.bfloat16,
                     model_config=SimpleNamespace(context_len=8), sliding_window_size=None, dtype=torch.bfloat16)
    return B.Sm12xAttnBackend(runner)


@pytest.mark.parametrize("env", ["1", "0", None])
def test_backend_checks_slot_ids_only_in_debug_mode(env, monkeypatch):
    """SGLANG_SM12X_CHECK_SLOTS=1: the batch's first layer checks its index list against the pool
    (one sync a batch) and an out-of-pool id raises naming kv_indices; by default the kernels only
    clamp such ids into the pool (no sync) and the call returns."""
    import sglang_sm12x.backend as B

    if env is None:
        monkeypatch.delenv(B.CHECK_SLOTS_ENV, raising=False)
    else:
        monkeypatch.setenv(B.CHECK_SLOTS_ENV, env)
    be = _small_backend(B, torch.zeros(8, 1, 64, dtype=torch.bfloat16, device=DEV),
                        torch.zeros(8, 1, 64, dtype=torch.bfloat16, device=DEV))
    i32 = lambda *v: torch.tensor(v, dtype=torch.int32, device=DEV)  # noqa: E731
    lay = _layer(0, 2, 1, 64, "bf16")
    q = torch.randn(1, 128).to(torch.bfloat16).to(DEV)
    be.forward_metadata = B.Sm12xMetadata(True, i32(0, 2), i32(3, 4000), seq_lens=i32(2))
    if env == "1":
        with pytest.raises(ValueError, match=r"kv_indices: slot ids outside the pool.*\[3, 4000\]"):
            be.forward_decode(q, None, None, lay, SimpleNamespace(), save_kv_cache=False)
    else:
        out = be.forward_decode(q, None, None, lay, SimpleNamespace(), save_kv_cache=False)
        assert torch.isfinite(out.float()).all()
    be.forward_metadata = B.Sm12xMetadata(True, i32(0, 2), i32(3, 7), seq_lens=i32(2))
    assert torch.isfinite(be.forward_decode(q, None, None, lay, SimpleNamespace(), save_kv_cache=False).float()).all()


def test_plan_arch_env_is_checked(monkeypatch):
    """SGLANG_SM12X_PLAN_ARCH (a testing aid): names the arch every launch is planned for; an
    unknown arch is refused naming the variable; on an sm_90 device an mma.sync arch needs
    DISABLE_MMA_V3=1."""
    import torch
    from sgl_kernel_sm12x import planner
    from sglang_sm12x import backend as B
    cpu = torch.device("cpu")
    monkeypatch.delenv(B.PLAN_ARCH_ENV, raising=False)
    assert B.plan_arch(cpu) == planner.INTERPRETER_ARCH
    monkeypatch.setenv(B.PLAN_ARCH_ENV, "121")
    assert B.plan_arch(cpu) == 121
    monkeypatch.setenv(B.PLAN_ARCH_ENV, "77")
    with pytest.raises(ValueError, match="SGLANG_SM12X_PLAN_ARCH='77'.*supported"):
        B.plan_arch(cpu)
    monkeypatch.setattr(planner, "launch_arch", lambda device, arch=None: 90)
    monkeypatch.setenv(B.PLAN_ARCH_ENV, "120")
    monkeypatch.delenv("DISABLE_MMA_V3", raising=False)
    with pytest.raises(ValueError, match="DISABLE_MMA_V3=1"):
        B.plan_arch(cpu)
    monkeypatch.setenv("DISABLE_MMA_V3", "1")
    assert B.plan_arch(cpu) == 120
    monkeypatch.setenv(B.PLAN_ARCH_ENV, "90")
    monkeypatch.delenv("DISABLE_MMA_V3")
    assert B.plan_arch(cpu) == 90


@pytest.mark.parametrize("kw", [dict(idx_q=torch.zeros(2)), dict(k_rope=torch.zeros(1)), dict(return_lse=True)],
                         ids=lambda k: next(iter(k)))
def test_backend_refuses_unknown_attention_kwargs_by_name(kw, monkeypatch):
    """An attention keyword argument the backend does not implement (a sparse indexer's idx_q,
    MLA's k_rope, return_lse) is refused naming it, in both phases, never dropped; passed as None
    it is accepted."""
    import sglang_sm12x.backend as B

    monkeypatch.delenv(B.CHECK_SLOTS_ENV, raising=False)
    be = _small_backend(B, torch.zeros(8, 1, 64, dtype=torch.bfloat16, device=DEV),
                        torch.zeros(8, 1, 64, dtype=torch.bfloat16, device=DEV))
    i32 = lambda *v: torch.tensor(v, dtype=torch.int32, device=DEV)  # noqa: E731
    lay = _layer(0, 2, 1, 64, "bf16")
    q = torch.randn(1, 128).to(torch.bfloat16).to(DEV)
    name = next(iter(kw))
    for fwd in (be.forward_decode, be.forward_extend):
        with pytest.raises(NotImplementedError, match=rf"{fwd.__name__}.*'{name}'"):
            fwd(q, None, None, lay, SimpleNamespace(), save_kv_cache=False, **kw)
    be.forward_metadata = B.Sm12xMetadata(True, i32(0, 2), i32(3, 7), seq_lens=i32(2))
    out = be.forward_decode(q, None, None, lay, SimpleNamespace(), save_kv_cache=False, **{name: None})
    assert torch.isfinite(out.float()).all()


def test_backend_passes_attention_sinks(monkeypatch):
    """gpt-oss's ``sinks`` reach the kernels (decode: the reduce adds exp(sink) to each head's
    denominator): against the float reference; a sinks tensor of the wrong length is refused."""
    import sglang_sm12x.backend as B
    from attention_ref import attention_ref

    monkeypatch.delenv(B.CHECK_SLOTS_ENV, raising=False)
    kb = torch.randn(8, 1, 64).to(torch.bfloat16)
    vb = torch.randn(8, 1, 64).to(torch.bfloat16)
    be = _small_backend(B, kb.to(DEV), vb.to(DEV))
    i32 = lambda *v: torch.tensor(v, dtype=torch.int32, device=DEV)  # noqa: E731
    lay = _layer(0, 2, 1, 64, "bf16")
    q = torch.randn(1, 128).to(torch.bfloat16)
    sinks = torch.tensor([1.5, -2.0])
    be.forward_metadata = B.Sm12xMetadata(True, i32(0, 3), i32(3, 4, 5), seq_lens=i32(3))
    out = be.forward_decode(q.to(DEV), None, None, lay, SimpleNamespace(), save_kv_cache=False, sinks=sinks.to(DEV))
    ref = attention_ref(q.view(1, 2, 64).float(), kb[3:6].float(), vb[3:6].float(), sm_scale=lay.scaling, sinks=sinks)
    torch.testing.assert_close(out.view(1, 2, 64).float().cpu(), ref, atol=2e-2, rtol=2e-2)
    # gpt-oss keeps its sinks in bf16: read as float32 (one copy per parameter), and an in-place
    # weight update reaches the kernels (the copy follows the tensor's version)
    sb = sinks.to(torch.bfloat16).to(DEV)
    for value in (None, torch.tensor([-3.0, 4.0])):
        if value is not None:
            sb.copy_(value)
        out = be.forward_decode(q.to(DEV), None, None, lay, SimpleNamespace(), save_kv_cache=False, sinks=sb)
        ref = attention_ref(q.view(1, 2, 64).float(), kb[3:6].float(), vb[3:6].float(), sm_scale=lay.scaling,
                            sinks=sb.float().cpu())
        torch.testing.assert_close(out.view(1, 2, 64).float().cpu(), ref, atol=2e-2, rtol=2e-2)
    assert len(be._sinks32) == 2 and all(t.dtype == torch.float32 for t in be._sinks32.values())
    with pytest.raises(ValueError, match="sinks"):
        be.forward_decode(q.to(DEV), None, None, lay, SimpleNamespace(), save_kv_cache=False,
                          sinks=torch.zeros(3, device=DEV))


def test_reference_matches_sglang_triton_extend_window_sinks():
    """The float reference every sm12x kernel is tested against agrees with SGLang's own Triton
    extend kernel on gpt-oss's window semantics: ``sliding_window_size`` 127 (128 keys: q - k <=
    127) and attention sinks, across a cached prefix. (SGLang's Triton *decode* lists only
    min(seq_len, 127) keys for window layers -- one fewer than its extend, FA3 and TRT-LLM -- and
    sm12x attends to 128 in both phases.) float32 operands: the interpreter's bf16 dot is wrong."""
    from sglang.kernels.ops.attention.extend_attention import extend_attention_fwd

    torch.manual_seed(0)
    hq, hkv, d, P, E, W = 4, 1, 64, 40, 150, 127
    kb, vb = torch.randn(P + E, hkv, d, device=DEV), torch.randn(P + E, hkv, d, device=DEV)
    q = torch.randn(E, hq, d, device=DEV)
    sinks = torch.randn(hq, device=DEV) * 2
    o = torch.full((E, hq, d), float("nan"), device=DEV)
    i32 = lambda *v: torch.tensor(v, dtype=torch.int32, device=DEV)  # noqa: E731
    extend_attention_fwd(q, kb[P:].contiguous(), vb[P:].contiguous(), o, kb, vb, i32(0, E), i32(0, P),
                         torch.arange(P, dtype=torch.int64, device=DEV), None, True, None, E, 1.0, 1.0,
                         sm_scale=d ** -0.5, sliding_window_size=W, sinks=sinks)
    errs = {wl: (o.float().cpu() - attention_ref(q.cpu(), kb.cpu(), vb.cpu(), sm_scale=d ** -0.5, window_left=wl,
                                                 sinks=sinks.cpu())).abs().max().item() for wl in (W - 1, W, W + 1)}
    assert errs[W] < 5e-3 and errs[W - 1] > 5e-2 and errs[W + 1] > 5e-2, errs      # (GPU: tf32 dots)


def _swa_pool(kv, size, page, hkv, d, swa_ids, full_ids):
    """SGLang's hybrid sliding-window pool over two MHA pools (NVFP4: one quantization method)."""
    from sglang.srt.mem_cache.memory_pool import MHATokenToKVPool
    from sglang.srt.mem_cache.swa_memory_pool import SWAKVPool

    layers = len(swa_ids) + len(full_ids)
    kw = {}
    if kv == "nvfp4":
        from sglang.srt.layers.quantization.fp4_kv_cache_quant_method import NVFP4KVCacheMethod

        qm = NVFP4KVCacheMethod(num_layers=layers, device=DEV)
        if hasattr(qm, "configure_attention_backends"):
            qm.configure_attention_backends("sm12x", "sm12x")
        _hooks.native_for_sm12x(qm)
        qm.k_scales_float, qm.v_scales_float = [GLOBAL[kv][0]] * layers, [GLOBAL[kv][1]] * layers
        kw["quant_method"] = qm
        dtype = torch.float4_e2m1fn_x2
    else:
        dtype = {"bf16": torch.bfloat16, "fp8_e4m3": torch.float8_e4m3fn}[kv]
    pool = SWAKVPool(size=size, size_swa=size, page_size=page, dtype=dtype, head_num=hkv, head_dim=d,
                     swa_attention_layer_ids=swa_ids, full_attention_layer_ids=full_ids, device=DEV,
                     token_to_kv_pool_class=MHATokenToKVPool, enable_memory_saver=False, **kw)
    return pool, dtype


def _swa_dequant(sub, local, kv, layer, slots):
    k, v = sub.k_buffer[local][slots].cpu(), sub.v_buffer[local][slots].cpu()
    if kv == "nvfp4":
        ks, vs = GLOBAL[kv]
        return (nvfp4.dequantize_nvfp4(k, sub.k_scale_buffer[local][slots].cpu(), ks),
                nvfp4.dequantize_nvfp4(v, sub.v_scale_buffer[local][slots].cpu(), vs))
    if kv == "fp8_e4m3":
        return nvfp4.dequantize_fp8(k.view(torch.uint8), layer.k_scale_float), \
            nvfp4.dequantize_fp8(v.view(torch.uint8), layer.v_scale_float)
    return k.float(), v.float()


@pytest.mark.parametrize("kv", ["bf16", "fp8_e4m3", "nvfp4"])
@pytest.mark.parametrize("page", [1, 16])
def test_backend_sliding_window_pool(kv, page, monkeypatch):
    """gpt-oss's layout: SGLang's SWAKVPool with a window layer and a full-attention layer. The
    window layer writes its K/V at the window sub-pool's slots (the full-to-window table), and
    reads only its window: the pages wholly before each request's window are "evicted" between
    steps (remapped to a page of NaN), which a read outside the window would turn into NaN output.
    Fresh prefill, chunked prefill over a cached prefix, then decode -- eager and CUDA-graph
    metadata -- every output against the float reference over the dequantized sub-pools."""
    from sglang.srt.model_executor.forward_batch_info import ForwardMode

    from sglang_sm12x.backend import Sm12xAttnBackend

    monkeypatch.delenv("SGLANG_SM12X_FAULT", raising=False)
    hq, hkv, d, W = 4, 2, 64, 20
    size, max_ctx = 1024, 96
    pool, dtype = _swa_pool(kv, size, page, hkv, d, swa_ids=[0], full_ids=[1])
    n_pages = size // page
    # full slot -> window slot, page-preserving; page 0 of the window pool is the evicted tokens' (NaN)
    perm = torch.randperm(n_pages - 1) + 1
    mapping = (perm[:, None] * page + torch.arange(page)).flatten()
    mapping = torch.cat([torch.zeros(page, dtype=torch.long), mapping])[:size].clone()
    pool.register_mapping(mapping.to(DEV))
    nan_page = torch.arange(page)
    swa = pool.swa_kv_pool
    for buf in (swa.k_buffer[0], swa.v_buffer[0]):
        buf.view(torch.uint8)[nan_page] = 0xFF if kv != "bf16" else 0
        if kv == "bf16":
            buf[nan_page] = float("nan")
    if kv == "nvfp4":
        swa.k_scale_buffer[0].view(torch.uint8)[nan_page] = 0x7F       # E4M3 NaN block scales
        swa.v_scale_buffer[0].view(torch.uint8)[nan_page] = 0x7F
    rows = torch.tensor([5, 0, 3], device=DEV)
    r2t = _random_pages(rows, max_ctx, size, page)
    runner = _Runner(device=DEV, req_to_token_pool=r2t, token_to_kv_pool=pool, page_size=page,
                     kv_cache_dtype=dtype, model_config=SimpleNamespace(context_len=max_ctx),
                     sliding_window_size=W, dtype=torch.bfloat16)
    be = Sm12xAttnBackend(runner)
    assert be.swa is pool and be.kv_dtype == kv
    win = _layer(0, hq, hkv, d, kv)
    win.sliding_window_size = W
    full = _layer(1, hq, hkv, d, kv)
    bs = len(rows)

    def evict(seq, keep):
        """Remap every page wholly before each request's next window to the NaN page."""
        for r, s in zip(rows.tolist(), seq):
            first = max(0, s - keep)
            for p0 in range(0, first // page * page, page):
                slot = int(r2t.req_to_token[r, p0])
                mapping[slot:slot + page] = torch.arange(page)
        pool.register_mapping(mapping.to(DEV))

    def check(o, L, q, prefix, ext, k=None, v=None):
        """Extend: the chunk's own K/V are the kernel's inputs (k, v), the prefix comes from the
        pool; decode: everything from the pool."""
        t0 = 0
        for i, (r, p, e) in enumerate(zip(rows.tolist(), prefix, ext)):
            s = p if k is not None else p + e
            sub, local, _ = be._layer_slot(L)
            slots = r2t.req_to_token[r, :s].long().cpu()
            if L is win:                               # the keys its queries can see, in the window pool
                slots = mapping[slots[max(0, p - W):]]
            kk, vv = _swa_dequant(sub, local, kv, L, slots.to(DEV))
            if k is not None:
                kk = torch.cat([kk, k[t0:t0 + e].view(e, hkv, d).float()])
                vv = torch.cat([vv, v[t0:t0 + e].view(e, hkv, d).float()])
            ref = attention_ref(q[t0:t0 + e].view(e, hq, d).float(), kk, vv, sm_scale=L.scaling,
                                window_left=W if L is win else -1)
            assert_close_attn(o[t0:t0 + e].view(e, hq, d), ref, f"{kv} page {page} layer {L.layer_id} req {i} "
                              f"(prefix {p}, chunk {e})", atol=2e-2, rtol=2 ** -7)
            t0 += e

    def run_extend(prefix, ext, mode):
        seq = [p + e for p, e in zip(prefix, ext)]
        loc = torch.cat([r2t.req_to_token[r, p:s] for r, p, s in zip(rows.tolist(), prefix, seq)]).to(torch.int64)
        fb = _extend_batch(mode, rows, prefix, ext, loc)
        be.init_forward_metadata(fb)
        for L in (win, full):
            q = torch.randn(sum(ext), hq * d, dtype=torch.bfloat16)
            k = torch.randn(sum(ext), hkv * d, dtype=torch.bfloat16)
            v = torch.randn(sum(ext), hkv * d, dtype=torch.bfloat16)
            o = be.forward(q.to(DEV), k.to(DEV), v.to(DEV), L, fb)
            check(o, L, q, prefix, ext, k, v)
        return seq

    first = [1, 45, 33]
    seq = run_extend([0] * bs, first, ForwardMode.EXTEND)
    evict(seq, W)
    seq = run_extend(seq, [30, 1, 7], ForwardMode.MIXED)
    evict(seq, W + 1)
    # decode, eager and through the CUDA-graph buffers
    for graph in (False, True):
        seq = [s + 1 for s in seq]
        loc = torch.stack([r2t.req_to_token[r, s - 1] for r, s in zip(rows.tolist(), seq)]).to(torch.int64)
        fb = _decode_batch(rows, seq, loc)
        if graph:
            be.init_cuda_graph_state(max_bs=4, max_num_tokens=4)
            be.init_forward_metadata_out_graph(fb)
        else:
            be.init_forward_metadata(fb)
        for L in (win, full):
            q = torch.randn(bs, hq * d, dtype=torch.bfloat16)
            k = torch.randn(bs, hkv * d, dtype=torch.bfloat16)
            v = torch.randn(bs, hkv * d, dtype=torch.bfloat16)
            o = be.forward_decode(q.to(DEV), k.to(DEV), v.to(DEV), L, fb)
            check(o, L, q, [s - 1 for s in seq], [1] * bs)
        evict(seq, W + 1)
    # the window layer's new tokens went to the window sub-pool, the full layer's to the full one
    assert torch.equal(be.forward_metadata.swa_loc.cpu(), mapping[loc.cpu()])
    # a window layer wider than the lists is refused, not read short
    wide = _layer(0, hq, hkv, d, kv)
    wide.sliding_window_size = W + 5
    with pytest.raises(ValueError, match="sliding window 25"):
        be.forward_decode(q.to(DEV), k.to(DEV), v.to(DEV), wide, fb)


def _swa_kvc(kv_dtype, dtype_str, backend):
    """What SGLang's sliding-window configurators read of the KV-cache configurator (gpt-oss-20b
    per GPU: 8 KV heads, head_dim 64; window layers 0 and 2, full layers 1 and 3)."""
    from sglang.srt.configs.model_config import AttentionArch

    mc = SimpleNamespace(attention_arch=AttentionArch.MHA, get_num_kv_heads=lambda tp, *a: 8,
                         get_swa_num_kv_heads=lambda tp, *a: 8, head_dim=64, v_head_dim=64, swa_head_dim=64,
                         swa_v_head_dim=64, hf_config=SimpleNamespace(architectures=["GptOssForCausalLM"]))
    spec = SimpleNamespace(is_eagle=lambda: False, is_standalone=lambda: False, is_dflash_family=lambda: False,
                           is_none=lambda: True)
    server_args = SimpleNamespace(get_attention_backends=lambda: (backend, backend),
                                  attention_backend=backend, prefill_attention_backend=backend,
                                  decode_attention_backend=backend)
    return SimpleNamespace(kv_cache_dtype_str=dtype_str, kv_cache_dtype=kv_dtype, model_config=mc,
                           layer_info=SimpleNamespace(full_attention_layer_ids=[1, 3], swa_attention_layer_ids=[0, 2],
                                                      num_effective_layers=4),
                           sliding_window_size=127, page_size=1, pool_page_size=1, spec_algorithm=spec,
                           is_draft_worker=False, server_args=server_args, fused_entry_bytes=lambda which: None,
                           is_hybrid_swa_compress=False, draft_swa_full_capacity=False, post_capture_kv_active=False,
                           device=DEV)


def _publish_for_swa(monkeypatch):
    import sglang.srt.mem_cache.kv_cache_configurator as kc
    import sglang.srt.model_executor.pool_configurator as pc
    import sglang.srt.runtime_context as rc

    par = SimpleNamespace(attn_tp_size=1, attn_dcp_size=1)
    for mod in (pc, kc, rc):
        monkeypatch.setattr(mod, "get_parallel", lambda: par, raising=False)
    monkeypatch.setattr(pc, "get_schedule", lambda: SimpleNamespace(swa_full_tokens_ratio=0.8), raising=False)
    monkeypatch.setattr(pc, "get_memory", lambda: SimpleNamespace(enable_unified_memory=False), raising=False)
    monkeypatch.setattr(kc, "get_spec", lambda: SimpleNamespace(speculative_algorithm=None), raising=False)
    monkeypatch.setattr(kc, "get_exec", lambda: SimpleNamespace(features=SimpleNamespace(enable_memory_saver=False)),
                        raising=False)
    monkeypatch.setattr(_hooks, "_backends", lambda server_args, rel: server_args.get_attention_backends())


def test_swa_pool_sized_for_nvfp4_with_sm12x(monkeypatch):
    """SGLang sizes a sliding-window pool at one byte an element for float4 and no block scales;
    with sm12x + NVFP4 the hook recomputes the bytes a token, so the pools hold what the memory
    allows: 3.55x the bf16 tokens (2 + 2 bytes vs 0.5 + 1/16 a K and a V element). Other backends
    keep SGLang's numbers."""
    from sglang.srt.model_executor.pool_configurator import HybridSWAPoolConfigurator

    _publish_for_swa(monkeypatch)
    rel = _compat.check()
    hook = _hooks.swa_sizing_nvfp4(rel)
    orig = inspect.unwrap(HybridSWAPoolConfigurator.__init__)       # SGLang's own (the registry wrapped it)
    sizes = {}
    for name, dtype, kv, backend in (("bf16", torch.bfloat16, "auto", "sm12x"),
                                     ("nvfp4", torch.float4_e2m1fn_x2, "nvfp4", "sm12x"),
                                     ("nvfp4_other", torch.float4_e2m1fn_x2, "nvfp4", "triton")):
        cfg = HybridSWAPoolConfigurator.__new__(HybridSWAPoolConfigurator)
        hook(orig, cfg, _swa_kvc(dtype, kv, backend))
        sizes[name] = cfg.calculate_pool_sizes(10 ** 9, 1)
    full = {k: v.full_max_total_num_tokens for k, v in sizes.items()}
    assert full["nvfp4"] / full["bf16"] == pytest.approx(4 / 1.125, rel=1e-3)
    assert full["nvfp4_other"] / full["bf16"] == pytest.approx(2.0, rel=1e-3)      # SGLang's own count
    assert sizes["nvfp4"].swa_max_total_num_tokens == int(full["nvfp4"] * 0.8)


def test_swa_nvfp4_hooks_wrap_sglangs_own_steps():
    """After SGLang applies the plugin's hooks, its sliding-window pool builder and sizing are the
    wrapped ones (not only our functions, tested below, but in SGLang's classes)."""
    from sglang.srt.mem_cache.kv_cache_configurator import KVCacheConfigurator
    from sglang.srt.model_executor.pool_configurator import HybridSWAPoolConfigurator
    from sglang.srt.plugins.hook_registry import HookRegistry

    for target, owner, name in (
            ("sglang.srt.mem_cache.kv_cache_configurator.KVCacheConfigurator._build_hybrid_swa_kv_pool",
             KVCacheConfigurator, "_build_hybrid_swa_kv_pool"),
            ("sglang.srt.model_executor.pool_configurator.HybridSWAPoolConfigurator.__init__",
             HybridSWAPoolConfigurator, "__init__")):
        assert any(getattr(h, "__sm12x__", False) for _, h, _ in HookRegistry._hooks.get(target, ())), target
        assert inspect.unwrap(getattr(owner, name)) is not getattr(owner, name), target


def test_swa_pool_gets_the_nvfp4_method_with_sm12x(monkeypatch):
    """SGLang's own sliding-window pool builder, through the hook: both MHA sub-pools are built with
    the NVFP4 method (without it torch cannot allocate float4 buffers and start-up fails for every
    backend), the same instance, over the model's 4 layer ids; sm12x then serves on the pool."""
    from sglang.srt.layers.quantization.fp4_kv_cache_quant_method import NVFP4KVCacheMethod
    from sglang.srt.mem_cache.kv_cache_configurator import KVCacheConfigurator
    from sglang.srt.mem_cache.memory_pool import MHATokenToKVPool

    _publish_for_swa(monkeypatch)
    rel = _compat.check()
    hook = _hooks.swa_pool_nvfp4(rel)
    built = []

    def build_method(num_layers):
        qm = NVFP4KVCacheMethod(num_layers=num_layers, device=DEV)
        _hooks.native_for_sm12x(qm)
        built.append(num_layers)
        return qm

    kvc = _swa_kvc(torch.float4_e2m1fn_x2, "nvfp4", "sm12x")
    kvc._build_fp4_quant_method = build_method
    build = inspect.unwrap(KVCacheConfigurator._build_hybrid_swa_kv_pool)
    pool = hook(build, kvc, full_max_total_num_tokens=256,
                swa_max_total_num_tokens=128, mha_pool_class=MHATokenToKVPool)
    assert built == [4]
    full, swa = pool.full_kv_pool, pool.swa_kv_pool
    assert full.quant_method is swa.quant_method and full.quant_method.sm12x_native
    assert full.k_buffer[0].dtype == torch.uint8 and full.k_scale_buffer[0].shape[-1] == 64 // 16
    assert swa.k_buffer[0].shape[0] == 128 + 1 and full.k_buffer[0].shape[0] == 256 + 1
    assert _plugin_kv_name(pool) == "nvfp4"
    # another backend: SGLang's builder unchanged (here it fails as upstream does: no float4 fill)
    other = _swa_kvc(torch.float4_e2m1fn_x2, "nvfp4", "triton")
    other._build_fp4_quant_method = build_method
    with pytest.raises(Exception):
        hook(build, other, full_max_total_num_tokens=256,
             swa_max_total_num_tokens=128, mha_pool_class=MHATokenToKVPool)
    assert built == [4]


def _plugin_kv_name(pool):
    from sglang_sm12x.backend import kv_dtype_name

    return kv_dtype_name(torch.float4_e2m1fn_x2, pool)


# ------------------------------------------------------------------------------------------------
# hybrid linear-attention models (Qwen3-Next: Gated DeltaNet; Nemotron-H: Mamba-2)
# ------------------------------------------------------------------------------------------------

def _hybrid_linear_pool(kv, size, page, hkv, d, layers, interval, monkeypatch):
    """SGLang's ``HybridLinearKVPool`` as a Qwen3-Next-shaped model builds it: every ``interval``-th
    layer full attention (a dense MHA sub-pool), the others Gated DeltaNet layers whose state lives
    in a real ``MambaPool``. NVFP4: one quantization method over the model's layer ids, a
    different per-tensor scale per layer (a layer read with another layer's scale shows)."""
    import sglang.srt.configs.qwen3_next as qn
    from sglang.srt.mem_cache.memory_pool import HybridLinearKVPool, MambaPool

    monkeypatch.setattr(qn, "linear_attn_tp_size", lambda: 1, raising=False)
    cfg = qn.Qwen3NextConfig(hidden_size=128, num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=hkv,
                             head_dim=d, linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=32,
                             linear_value_head_dim=32, full_attention_interval=interval)
    mamba = MambaPool(size=4, spec_state_size=0, cache_params=cfg.mamba2_cache_params,
                      mamba_layer_ids=cfg.linear_layer_ids, device=DEV)
    kw, scales = {}, {i: GLOBAL[kv] for i in range(layers)}
    if kv == "nvfp4":
        from sglang.srt.layers.quantization.fp4_kv_cache_quant_method import NVFP4KVCacheMethod

        qm = NVFP4KVCacheMethod(num_layers=layers, device=DEV)
        if hasattr(qm, "configure_attention_backends"):
            qm.configure_attention_backends("sm12x", "sm12x")
        _hooks.native_for_sm12x(qm)
        scales = {i: (0.25 + 0.125 * i, 1.0 + 0.5 * i) for i in range(layers)}
        qm.k_scales_float = [scales[i][0] for i in range(layers)]
        qm.v_scales_float = [scales[i][1] for i in range(layers)]
        kw["quant_method"] = qm
        dtype = torch.float4_e2m1fn_x2
    else:
        dtype = {"bf16": torch.bfloat16, "fp8_e4m3": torch.float8_e4m3fn}[kv]
    pool = HybridLinearKVPool(size=size, dtype=dtype, page_size=page, head_num=hkv, head_dim=d,
                              full_attention_layer_ids=cfg.full_attention_layer_ids, device=DEV, mamba_pool=mamba,
                              **kw)
    return pool, dtype, cfg, scales


class _LinearStandIn:
    """The linear-attention half of SGLang's hybrid backend (its GDN kernels are not ours): records
    what reaches it."""
    needs_cpu_seq_lens = False
    extend_dummy_seqs_capped_by_req_pool = False
    supports_ragged_verify_graph = True

    def __init__(self):
        self.calls = []

    def supports_prefill_graph_extend(self):
        return False

    def init_forward_metadata(self, fb):
        self.calls.append("metadata")

    def init_cuda_graph_state(self, max_bs, max_num_tokens):
        self.calls.append("graph_state")

    def init_forward_metadata_out_graph(self, fb, in_capture=False):
        self.calls.append("graph_metadata")

    def forward_decode(self, layer=None, **kw):
        self.calls.append(("decode", layer.layer_id))
        return kw["mixed_qkv"]

    def forward_extend(self, layer=None, **kw):
        self.calls.append(("extend", layer.layer_id))
        return kw["mixed_qkv"]


@pytest.mark.parametrize("kv", ["bf16", "fp8_e4m3", "nvfp4"])
@pytest.mark.parametrize("page", [1, 16])
def test_backend_hybrid_linear_pool(kv, page, monkeypatch):
    """sm12x as the full-attention half of SGLang's ``HybridLinearAttnBackend`` over its
    ``HybridLinearKVPool`` (Qwen3-Next's layout: layers 1 and 3 of 4 full attention): the wrapper
    routes the full layers here and the linear ones to the linear backend; K/V land in the dense
    sub-pool at the index the pool maps each model layer to (read back through the pool's own
    ``get_key_buffer`` / ``get_raw_kv_buffer``), with that layer's NVFP4 scale; fresh prefill,
    chunked prefill and decode (eager and CUDA-graph metadata) against the float reference over the
    dequantized sub-pool; a linear layer reaching this backend is refused by name."""
    from sglang.srt.layers.attention.hybrid_linear_attn_backend import HybridLinearAttnBackend
    from sglang.srt.model_executor.forward_batch_info import ForwardMode

    from sglang_sm12x.backend import Sm12xAttnBackend

    hq, hkv, d, layers = 4, 2, 64, 4
    size, max_ctx = 512, 64
    pool, dtype, cfg, scales = _hybrid_linear_pool(kv, size, page, hkv, d, layers, 2, monkeypatch)
    full_ids = list(cfg.full_attention_layer_ids)
    assert full_ids == [1, 3] and pool.full_attention_layer_id_mapping == {1: 0, 3: 1}
    rows = torch.tensor([2, 0, 6], device=DEV)
    r2t = _random_pages(rows, max_ctx, size, page)
    runner = _Runner(device=DEV, req_to_token_pool=r2t, token_to_kv_pool=pool, page_size=page, kv_cache_dtype=dtype,
                     model_config=SimpleNamespace(context_len=max_ctx), sliding_window_size=None, dtype=torch.bfloat16)
    be = Sm12xAttnBackend(runner)
    assert be.linear is pool and be.swa is None and be.kv_dtype == kv
    lin = _LinearStandIn()
    hybrid = HybridLinearAttnBackend(be, lin, full_ids)
    lay = {i: _layer(i, hq, hkv, d, kv) for i in range(layers)}
    for i in range(layers):
        lay[i].k_scale_float, lay[i].v_scale_float = (scales[i] if kv == "fp8_e4m3" else (None, None))
    sub = pool.full_kv_pool

    def dequant(L, slots):
        if kv == "nvfp4":
            k, v, ksc, vsc = pool.get_raw_kv_buffer(L.layer_id)
            ks, vs = scales[L.layer_id]
            return (nvfp4.dequantize_nvfp4(k[slots].cpu(), ksc[slots].cpu().view(torch.uint8), ks),
                    nvfp4.dequantize_nvfp4(v[slots].cpu(), vsc[slots].cpu().view(torch.uint8), vs))
        k, v = pool.get_key_buffer(L.layer_id)[slots].cpu(), pool.get_value_buffer(L.layer_id)[slots].cpu()
        if kv == "fp8_e4m3":
            return (nvfp4.dequantize_fp8(k.view(torch.uint8), L.k_scale_float),
                    nvfp4.dequantize_fp8(v.view(torch.uint8), L.v_scale_float))
        return k.float(), v.float()

    def check(o, L, q, prefix, ext, k=None, v=None, what=""):
        t0 = 0
        for i, (r, p, e) in enumerate(zip(rows.tolist(), prefix, ext)):
            s = p if k is not None else p + e
            kk, vv = dequant(L, r2t.req_to_token[r, :s].long())
            if k is not None:
                kk = torch.cat([kk, k[t0:t0 + e].view(e, hkv, d).float()])
                vv = torch.cat([vv, v[t0:t0 + e].view(e, hkv, d).float()])
            ref = attention_ref(q[t0:t0 + e].view(e, hq, d).float(), kk, vv, sm_scale=L.scaling)
            assert_close_attn(o[t0:t0 + e].view(e, hq, d), ref, f"{kv} page {page} {what} layer {L.layer_id} "
                              f"req {i} (prefix {p}, chunk {e})", atol=2e-2, rtol=2 ** -7)
            t0 += e

    def forward_all(fb, n, prefix, ext, decode):
        for i in range(layers):
            L = lay[i]
            q = torch.randn(n, hq * d, dtype=torch.bfloat16)
            k = torch.randn(n, hkv * d, dtype=torch.bfloat16)
            v = torch.randn(n, hkv * d, dtype=torch.bfloat16)
            mixed = torch.randn(n, 8)
            o = hybrid.forward(q.to(DEV), k.to(DEV), v.to(DEV), L, fb, mixed_qkv=mixed, a=mixed, b=mixed)
            if i not in full_ids:
                assert o is mixed and lin.calls[-1] == ("decode" if decode else "extend", i)
                continue
            if decode:
                check(o, L, q, [s - 1 for s in prefix], [1] * n, what="decode")
            else:
                check(o, L, q, prefix, ext, k, v, what="extend")

    first, second = [1, 30, 17], [9, 1, 16]
    bs = len(first)
    for prefix, ext, mode in (([0] * bs, first, ForwardMode.EXTEND), (first, second, ForwardMode.MIXED)):
        seq = [p + e for p, e in zip(prefix, ext)]
        loc = torch.cat([r2t.req_to_token[r, p:s] for r, p, s in zip(rows.tolist(), prefix, seq)]).to(torch.int64)
        fb = _extend_batch(mode, rows, prefix, ext, loc)
        hybrid.init_forward_metadata(fb)
        forward_all(fb, sum(ext), prefix, ext, decode=False)
    for graph in (False, True):
        seq = [s + 1 for s in seq]
        loc = torch.stack([r2t.req_to_token[r, s - 1] for r, s in zip(rows.tolist(), seq)]).to(torch.int64)
        fb = _decode_batch(rows, seq, loc)
        if graph:
            hybrid.init_cuda_graph_state(max_bs=4, max_num_tokens=4)
            hybrid.init_forward_metadata_out_graph(fb)
        else:
            hybrid.init_forward_metadata(fb)
        forward_all(fb, bs, seq, [1] * bs, decode=True)
    assert "metadata" in lin.calls and "graph_metadata" in lin.calls
    # the two full layers' tokens sit in the dense sub-pool's layers 0 and 1, nowhere else
    for L, dense in ((lay[1], 0), (lay[3], 1)):
        assert torch.equal(pool.get_key_buffer(L.layer_id).view(torch.uint8), sub.k_buffer[dense].view(torch.uint8))
    assert not torch.equal(sub.k_buffer[0].view(torch.uint8)[loc], sub.k_buffer[1].view(torch.uint8)[loc])
    with pytest.raises(ValueError, match="layer 2 is not a full-attention layer"):
        be.forward_decode(torch.zeros(bs, hq * d, device=DEV, dtype=torch.bfloat16), None, None, lay[2], fb,
                          save_kv_cache=False)


def test_hybrid_gdn_allow_list_on_sm120_joined(monkeypatch):
    """SGLang's own ``attn_backend_wrapper`` on an SM120 platform, for a Qwen3-Next (hybrid GDN)
    model: with sm12x as the full-attention backend its allow-list (triton / trtllm_mha /
    flashinfer) stops start-up; through the plugin's hook it wraps sm12x in SGLang's
    ``HybridLinearAttnBackend`` and the runner's backend names are sm12x again afterwards. Another
    backend outside the list is still refused. (The GDN half is a stand-in: its kernels are SGLang's.)"""
    import sglang.srt.layers.attention.attention_registry as ar
    import sglang.srt.layers.attention.linear.gdn_backend as gdn
    import sglang.srt.layers.attention.linear.utils as lu
    import sglang.srt.utils as su
    from sglang.kernels.ops.attention.fla import utils as fla_utils
    from sglang.srt.layers.attention.hybrid_linear_attn_backend import HybridLinearAttnBackend

    import sglang_sm12x.backend as B

    if REL == "0.5.17":
        pytest.skip("the runner's backend names live in server_args on 0.5.17; covered by the 0.5.23 path here")
    import sglang.srt.configs.qwen3_next as qn

    monkeypatch.setattr(qn, "linear_attn_tp_size", lambda: 1, raising=False)
    cfg = qn.Qwen3NextConfig(hidden_size=128, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                             head_dim=64, linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=32,
                             linear_value_head_dim=32, full_attention_interval=2)
    monkeypatch.setattr(su, "is_blackwell", lambda: True)
    monkeypatch.setattr(ar, "get_platform", lambda: SimpleNamespace(is_sm120=True))
    monkeypatch.setattr(fla_utils, "check_environments", lambda: None)
    monkeypatch.setattr(gdn, "flashinfer_gdn_prefill_default", lambda runner: None)
    monkeypatch.setattr(lu, "resolve_linear_attn_backends", lambda prefill_default=None: None)
    monkeypatch.setattr(gdn, "GDNAttnBackend", lambda runner: _LinearStandIn())

    class Full(B.Sm12xAttnBackend):
        def __init__(self):          # the wrapper reads these of the full-attention backend
            self.token_to_kv_pool = self.req_to_token_pool = None
            self.max_context_len = 64

    def runner(backend):
        return SimpleNamespace(model_config=SimpleNamespace(hf_config=cfg, hf_text_config=cfg), use_mla_backend=False,
                               prefill_attention_backend_str=backend, decode_attention_backend_str=backend,
                               linear_attn_backends=None, is_draft_worker=False)

    wrapper = inspect.unwrap(ar.attn_backend_wrapper)
    r = runner("sm12x")
    with pytest.raises(AssertionError, match="Blackwell GPUs for hybrid GDN"):
        wrapper(r, Full())
    full = Full()
    out = _hooks.hybrid_wrapper(REL)(wrapper, r, full)
    assert isinstance(out, HybridLinearAttnBackend) and out.full_attn_backend is full
    assert out.full_attn_layers == [1, 3]
    assert (r.prefill_attention_backend_str, r.decode_attention_backend_str) == ("sm12x", "sm12x")
    other = runner("fa3")
    with pytest.raises(AssertionError, match="Blackwell GPUs for hybrid GDN"):
        _hooks.hybrid_wrapper(REL)(wrapper, other, SimpleNamespace(token_to_kv_pool=None))
    # SGLang's own wrapper is the hooked one after the plugin's hooks are applied
    assert ar.attn_backend_wrapper is not wrapper


def test_backend_refuses_a_hybrid_pool_over_another_pool_kind():
    from sglang_sm12x.backend import Sm12xAttnBackend

    mla = SimpleNamespace(kv_buffer=[])
    pool = SimpleNamespace(full_kv_pool=mla, full_attention_layer_id_mapping={3: 0}, get_key_buffer=None,
                           get_value_buffer=None)
    runner = _Runner(device=DEV, req_to_token_pool=SimpleNamespace(req_to_token=torch.zeros(1, 1)),
                     token_to_kv_pool=pool, page_size=1, kv_cache_dtype=torch.bfloat16,
                     model_config=SimpleNamespace(context_len=8))
    with pytest.raises(ValueError, match="HybridLinearKVPool.*full-attention pool is SimpleNamespace"):
        Sm12xAttnBackend(runner)


# ------------------------------------------------------------------------------------------------
# per-model attention-backend allow-lists (gpt-oss, Llama-4)
# ------------------------------------------------------------------------------------------------

GPT_OSS_CONFIG = {
    "architectures": ["GptOssForCausalLM"], "model_type": "gpt_oss", "hidden_size": 256, "head_dim": 64,
    "num_attention_heads": 4, "num_key_value_heads": 1, "num_hidden_layers": 2, "intermediate_size": 256,
    "num_local_experts": 4, "num_experts_per_tok": 2, "experts_per_token": 2, "sliding_window": 128,
    "layer_types": ["sliding_attention", "full_attention"], "vocab_size": 1024, "max_position_embeddings": 4096,
    "rope_theta": 150000, "rms_norm_eps": 1e-5, "torch_dtype": "bfloat16", "attention_bias": True,
    "rope_scaling": {"rope_type": "yarn", "factor": 32.0, "beta_fast": 32.0, "beta_slow": 1.0, "truncate": False,
                     "original_max_position_embeddings": 4096}}


@pytest.mark.skipif(REL != "0.5.23", reason="resolution pipeline of SGLang 0.5.23")
def test_gpt_oss_allow_list_admits_sm12x_and_no_other(tmp_path):
    """SGLang asserts a fixed backend list for gpt-oss; with the plugin, sm12x passes it (in both
    phases), while a backend that is not on the list (flashinfer) is still refused."""
    import json
    import shutil

    for f in TINY.glob("tokenizer*"):
        shutil.copy(f, tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(GPT_OSS_CONFIG))
    from sglang.srt.server_args import prepare_server_args
    from sglang.srt.arg_groups.overrides import resolved_view

    sa = prepare_server_args(["--model-path", str(tmp_path), "--device", "cpu", "--attention-backend", "sm12x"])
    sa.resolve_once()
    assert resolved_view(sa).attention_backend == "sm12x"
    sa = prepare_server_args(["--model-path", str(tmp_path), "--device", "cpu", "--attention-backend", "flashinfer"])
    with pytest.raises(AssertionError, match="GptOssForCausalLM requires one of"):
        sa.resolve_once()


def test_allow_list_hook_0517_aliases_only_for_listed_models(monkeypatch):
    """0.5.17's ServerArgs._handle_model_specific_adjustments (stand-in reading the module's
    resolved_view, as the real one does): for gpt-oss / Llama-4 with sm12x in both phases the
    backend assertion sees a listed backend; for other models or backends nothing changes, and the
    module's resolved_view is restored afterwards."""
    import sglang.srt.server_args as sa

    def view_of(backend):
        return SimpleNamespace(attention_backend=backend, prefill_attention_backend=None,
                               decode_attention_backend=None, other=7)

    current = {}
    monkeypatch.setattr(sa, "resolved_view", lambda args: view_of(current["backend"]), raising=False)
    keep = sa.resolved_view

    def original(self):
        v = sa.resolved_view(self)
        assert v.attention_backend in {"fa3", "triton"}, f"required for Llama4 model but got {v.attention_backend}"
        return v.other

    def args(backend, arch):
        current["backend"] = backend
        return SimpleNamespace(_resolved_attention_backends=lambda: (backend, backend),
                               get_model_config=lambda: SimpleNamespace(
                                   hf_config=SimpleNamespace(architectures=[arch])))

    for arch in _hooks.ALLOW_LISTED:
        assert _hooks.model_adjustments_0517(original, args("sm12x", arch)) == 7
        assert sa.resolved_view is keep
    with pytest.raises(AssertionError, match="got sm12x"):
        _hooks.model_adjustments_0517(original, args("sm12x", "Qwen3ForCausalLM"))
    with pytest.raises(AssertionError, match="got flashinfer"):
        _hooks.model_adjustments_0517(original, args("flashinfer", "GptOssForCausalLM"))
    assert sa.resolved_view is keep


@pytest.mark.parametrize("pool_kind", ["mha", "swa"])
@pytest.mark.parametrize("kv", ["bf16", "nvfp4"])
@pytest.mark.parametrize("page", [1, 16])
def test_backend_chunked_local_layers(pool_kind, kv, page, monkeypatch):
    """Llama-4's chunked local attention: a layer with use_irope sees only the keys of its query's
    own chunk of attention_chunk_size tokens. Extend batches whose new tokens cross chunk
    boundaries (split into virtual requests), a cached prefix that ends inside a chunk and on a
    boundary, then decode (eager and CUDA-graph metadata) -- on a plain pool and on a hybrid pool
    whose window sub-pool holds the local layers, pages before the current chunk evicted to NaN;
    the full-attention layer beside it sees everything. Every row against the float reference."""
    from sglang.srt.model_executor.forward_batch_info import ForwardMode

    from sglang_sm12x.backend import Sm12xAttnBackend

    monkeypatch.delenv("SGLANG_SM12X_FAULT", raising=False)
    hq, hkv, d, C = 4, 2, 64, 32
    size, max_ctx = 1024, 160
    n_pages = size // page
    mapping = None
    if pool_kind == "swa":
        pool, dtype = _swa_pool(kv, size, page, hkv, d, swa_ids=[0], full_ids=[1])
        perm = torch.randperm(n_pages - 1) + 1
        mapping = torch.cat([torch.zeros(page, dtype=torch.long),
                             (perm[:, None] * page + torch.arange(page)).flatten()])[:size].clone()
        pool.register_mapping(mapping.to(DEV))
        swa = pool.swa_kv_pool
        nan_page = torch.arange(page)
        if kv == "bf16":
            swa.k_buffer[0][nan_page] = float("nan")
            swa.v_buffer[0][nan_page] = float("nan")
        else:
            swa.k_scale_buffer[0].view(torch.uint8)[nan_page] = 0x7F
            swa.v_scale_buffer[0].view(torch.uint8)[nan_page] = 0x7F
    else:
        pool, dtype = _make_pool(kv, size, page, hkv, d, 2)
    rows = torch.tensor([5, 0, 3], device=DEV)
    r2t = _random_pages(rows, max_ctx, size, page)
    runner = _Runner(device=DEV, req_to_token_pool=r2t, token_to_kv_pool=pool, page_size=page,
                     kv_cache_dtype=dtype, model_config=SimpleNamespace(context_len=max_ctx),
                     sliding_window_size=C, attention_chunk_size=C, dtype=torch.bfloat16)
    be = Sm12xAttnBackend(runner)
    assert be.chunk == C and be.window == -1
    local = _layer(0, hq, hkv, d, kv)
    local.use_irope = True
    full = _layer(1, hq, hkv, d, kv)
    full.use_irope = False
    bs = len(rows)

    def layer_kv(L, r, n):
        """Dequantized K/V of the first n tokens of row r as layer L stores them."""
        slots = r2t.req_to_token[r, :n].long().cpu()
        if pool_kind == "swa":
            sub, local_id, in_win = be._layer_slot(L)
            slots = mapping[slots] if in_win else slots
            return _swa_dequant(sub, local_id, kv, L, slots.to(DEV))
        return _dequant(pool, kv, L, slots.to(DEV))

    def check(o, L, q, prefix, ext, k=None, v=None):
        t0 = 0
        for i, (r, p, e) in enumerate(zip(rows.tolist(), prefix, ext)):
            kk, vv = layer_kv(L, r, p if k is not None else p + e)
            if k is not None:
                kk = torch.cat([kk, k[t0:t0 + e].view(e, hkv, d).float()])
                vv = torch.cat([vv, v[t0:t0 + e].view(e, hkv, d).float()])
            for j in range(e):
                pos = p + j
                lo = pos // C * C if L is local else 0
                ref = attention_ref(q[t0 + j].view(1, hq, d).float(), kk[lo:pos + 1], vv[lo:pos + 1],
                                    sm_scale=L.scaling)
                assert_close_attn(o[t0 + j].view(1, hq, d), ref, f"{pool_kind} {kv} page {page} layer "
                                  f"{L.layer_id} req {i} position {pos} (prefix {p})", atol=2e-2, rtol=2 ** -7)
            t0 += e

    def evict(seq):
        if pool_kind != "swa":
            return
        for r, s in zip(rows.tolist(), seq):
            for p0 in range(0, max(0, s - 1) // C * C, page):
                slot = int(r2t.req_to_token[r, p0])
                mapping[slot:slot + page] = torch.arange(page)
        pool.register_mapping(mapping.to(DEV))

    def run_extend(prefix, ext, mode):
        seq = [p + e for p, e in zip(prefix, ext)]
        loc = torch.cat([r2t.req_to_token[r, p:s] for r, p, s in zip(rows.tolist(), prefix, seq)]).to(torch.int64)
        fb = _extend_batch(mode, rows, prefix, ext, loc)
        be.init_forward_metadata(fb)
        for L in (local, full):
            q = torch.randn(sum(ext), hq * d, dtype=torch.bfloat16)
            k = torch.randn(sum(ext), hkv * d, dtype=torch.bfloat16)
            v = torch.randn(sum(ext), hkv * d, dtype=torch.bfloat16)
            o = be.forward(q.to(DEV), k.to(DEV), v.to(DEV), L, fb)
            check(o, L, q, prefix, ext, k, v)
        return seq

    # fresh prefill crossing one and two chunk boundaries; then chunks over prefixes that end inside
    # a chunk (45), on a boundary (64) and one token before one (31)
    seq = run_extend([0] * bs, [45, 64, 31], ForwardMode.EXTEND)
    evict(seq)
    seq = run_extend(seq, [40, 1, 70], ForwardMode.MIXED)
    evict(seq)
    for graph in (False, True):
        seq = [s + 1 for s in seq]
        loc = torch.stack([r2t.req_to_token[r, s - 1] for r, s in zip(rows.tolist(), seq)]).to(torch.int64)
        fb = _decode_batch(rows, seq, loc)
        if graph:
            be.init_cuda_graph_state(max_bs=4, max_num_tokens=4)
            be.init_forward_metadata_out_graph(fb)
        else:
            be.init_forward_metadata(fb)
        for L in (local, full):
            q = torch.randn(bs, hq * d, dtype=torch.bfloat16)
            k = torch.randn(bs, hkv * d, dtype=torch.bfloat16)
            v = torch.randn(bs, hkv * d, dtype=torch.bfloat16)
            o = be.forward_decode(q.to(DEV), k.to(DEV), v.to(DEV), L, fb)
            check(o, L, q, [s - 1 for s in seq], [1] * bs)
        evict(seq)


# ------------------------------------------------------------------------------------------------
# SGLang's hybrid-model kernels within SM120's budget (hybrid_tiles)
# ------------------------------------------------------------------------------------------------

def test_hybrid_tiles_table_matches_the_aot_result():
    """The plugin's table is what ``benchmark/aot_sglang_hybrid.py`` proved: every dropped autotune
    config is a row that overflows or spills at that arch, every relaunch a ``fixed`` row that fits,
    and after the fixes every kernel of both forwards fits sm_120 / sm_121 without spills."""
    from sglang_sm12x import hybrid_tiles as ht

    res = json.loads((ROOT / "benchmark" / "results" / "aot-sglang-hybrid-sm120-sm121.json").read_text())
    table = ht.load_table()
    assert set(table) == {"120", "121"} and res["all_fixed_fit"] and not res["errors"]
    fixed = {(r["kernel"], r["arch"]): r for r in res["rows"] if r["stage"] == "fixed"}
    assert fixed and all(r["fits"] and r["spill"] == 0 and r["shared"] <= 101376 for r in fixed.values())
    for arch, kernels in table.items():
        for name, fix in kernels.items():
            short = ".".join(name.split(".")[-2:])
            rows = [r for r in res["rows"] if r["stage"] == "sglang" and r["kernel"] == short and r["arch"] == int(arch)]
            if "drop" in fix:
                bad = {ht.config_key(r["config"]) for r in rows if not r["fits"]}
                assert set(fix["drop"]) == bad and bad != {ht.config_key(r["config"]) for r in rows}, name
            if "relaunch" in fix:           # a kernel SGLang launches with one configuration
                assert not rows[0]["autotuned"] and not all(r["fits"] for r in rows), name
                assert fixed[(short, int(arch))]["config"] == fix["relaunch"]


def test_hybrid_tiles_applied_to_sglangs_kernels(monkeypatch):
    """On an SM12x card the table changes SGLang's own kernel objects once: the listed autotune
    configs leave the Mamba-2 chunk-scan list, the spilling GDN launch is relaunched with the
    proven stages (its launch arguments overridden, everything else passed through)."""
    import sglang.kernels.ops.attention.fla.wy_fast as wy
    import sglang.kernels.ops.mamba.triton_ops.ssd_chunk_scan as cs

    from sglang_sm12x import hybrid_tiles as ht

    monkeypatch.setattr(ht, "_applied", {})
    monkeypatch.setattr(cs._chunk_scan_fwd_kernel, "configs", list(cs._chunk_scan_fwd_kernel.configs))
    monkeypatch.setattr(wy, "recompute_w_u_fwd_kernel", wy.recompute_w_u_fwd_kernel)
    before = [ht.config_key(dict(c.all_kwargs())) for c in cs._chunk_scan_fwd_kernel.configs]
    table = ht.load_table()
    done = ht.apply(120, table)
    after = [ht.config_key(dict(c.all_kwargs())) for c in cs._chunk_scan_fwd_kernel.configs]
    drop = set(table["120"]["sglang.kernels.ops.mamba.triton_ops.ssd_chunk_scan._chunk_scan_fwd_kernel"]["drop"])
    assert after == [k for k in before if k not in drop] and len(after) < len(before)
    assert isinstance(wy.recompute_w_u_fwd_kernel, ht._Relaunch) and len(done) >= 2
    assert ht.apply(120, table) is done                                       # once a process
    seen = {}

    class Kernel:
        def __getitem__(self, grid):
            return lambda *a, **kw: seen.update(grid=grid, args=a, kw=kw)

    ht._Relaunch(Kernel(), {"num_stages": 2})[(3, 4)](1, x=2, num_stages=3, num_warps=4)
    assert seen == {"grid": (3, 4), "args": (1,), "kw": {"x": 2, "num_stages": 2, "num_warps": 4}}


def test_hybrid_tiles_entry_hooks_registered():
    from sglang.srt.plugins.hook_registry import HookRegistry

    from sglang_sm12x import hybrid_tiles as ht

    for target in ht.ENTRY_POINTS:
        assert any(getattr(h, "__sm12x__", False) for _, h, _ in HookRegistry._hooks.get(target, ())), target
