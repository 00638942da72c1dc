"""``--moe-runner-backend sm12x`` inside SGLang's own MoE runner (real MoeRunner, dispatch output and
quant info objects on CPU tensors under the interpreter), and the SM12x clamp of SGLang's Triton
fused-MoE configs."""
import logging

import pytest
import torch

import sglang_sm12x
from sglang_sm12x import _compat, moe_runner
from test_moe import _act_q, _deq_block, _inputs, _q_block, reference

REL = _compat.check()
pytestmark = pytest.mark.skipif(REL != "0.5.23", reason="the MoE runner extension API is SGLang 0.5.23's")


@pytest.fixture(scope="module", autouse=True)
def registered():
    sglang_sm12x.register()
    from sglang.srt.plugins.hook_registry import HookRegistry

    HookRegistry.apply_hooks()


def _run(x, w1, w2, tw, ti, quant_kw=None, **cfg_kw):
    from sglang.srt.layers.moe.moe_runner.base import MoeRunnerConfig
    from sglang.srt.layers.moe.moe_runner.runner import MoeRunner
    from sglang.srt.layers.moe.moe_runner.triton import TritonMoeQuantInfo
    from sglang.srt.layers.moe.token_dispatcher.standard import StandardDispatchOutput
    from sglang.srt.layers.moe.topk import StandardTopKOutput
    from sglang.srt.layers.moe.utils import resolve_moe_runner_backend

    e = w1.shape[0]
    cfg = MoeRunnerConfig(num_experts=e, num_local_experts=e, hidden_size=x.shape[1],
                          intermediate_size_per_partition=w2.shape[2], top_k=ti.shape[1], **cfg_kw)
    runner = MoeRunner(resolve_moe_runner_backend("sm12x"), cfg)
    disp = StandardDispatchOutput(x, None, StandardTopKOutput(tw, ti, torch.zeros(x.shape[0], e)))
    qi = TritonMoeQuantInfo(w13_weight=w1, w2_weight=w2, **(quant_kw or {}))
    return runner.run(disp, qi).hidden_states


def test_backend_is_registered():
    from sglang.srt.arg_groups.choices import MOE_RUNNER_BACKEND_CHOICES
    from sglang.srt.layers.moe.moe_runner import runner

    assert "sm12x" in MOE_RUNNER_BACKEND_CHOICES and "sm12x" in runner._CUSTOM_RUNNER_CORE_FACTORIES


def test_runner_bf16_matches_reference():
    """Every output element within the reach of one-code differences in the bf16 intermediates
    (the kernel sums in another order than the reference) -- a fixed fraction of the output's
    scale, tried before, failed now and then on fresh random inputs."""
    x, w1, w2, tw, ti = _inputs((8, 2, 128, 64), 5, torch.bfloat16)
    out = _run(x, w1, w2, tw, ti)
    ref, bound = reference(x, w1.float(), w2.float(), tw, ti, torch.bfloat16, bound=True)
    err = (out.float() - ref).abs()
    assert (err <= bound).all(), f"max err / bound {(err / bound).max():.3g}"


def test_runner_fp8_block_and_routed_scaling():
    x, w1, w2, tw, ti = _inputs((8, 2, 128, 128), 3, torch.bfloat16)
    (q1, s1), (q2, s2) = _q_block(w1), _q_block(w2)
    out = _run(x, q1, q2, tw, ti, dict(use_fp8_w8a8=True, w13_scale=s1, w2_scale=s2, block_shape=[128, 128]),
               routed_scaling_factor=2.5)
    ref = 2.5 * reference(x, _deq_block(q1, s1), _deq_block(q2, s2), tw, ti, torch.bfloat16,
                          lambda t: _act_q(t, 128))
    assert (out.float() - ref).abs().max() <= 0.06 * ref.abs().max()


@pytest.mark.parametrize("kw,what", [(dict(activation="gelu"), "activation"),
                                     (dict(apply_router_weight_on_input=True), "apply_router_weight_on_input")])
def test_runner_refuses_what_it_does_not_do(kw, what):
    x, w1, w2, tw, ti = _inputs((4, 2, 64, 32), 2, torch.bfloat16)
    with pytest.raises(NotImplementedError, match=what):
        _run(x, w1, w2, tw, ti, **kw)


def test_sglang_triton_config_is_clamped_on_sm12x(caplog):
    over = dict(BLOCK_SIZE_M=128, BLOCK_SIZE_N=256, BLOCK_SIZE_K=128, GROUP_SIZE_M=32, num_warps=8, num_stages=4)
    args = ((128, 1536, 2048), (128, 2048, 768), 8, "fp8_w8a8", 4096)
    with caplog.at_level(logging.WARNING):
        cfg = moe_runner.clamp_sglang_config(dict(over), args, {}, arch=120)
    assert cfg["num_stages"] < 4 and cfg["BLOCK_SIZE_M"] == 128
    assert "147,456" in caplog.text
    up, (down, max_m) = moe_runner.clamp_sglang_config((dict(over), (dict(over), 128)), args, {}, arch=121)
    assert up == down and max_m == 128 and up["num_stages"] < 4
    assert moe_runner.clamp_sglang_config(dict(over), args, {}, arch=None) == over or not torch.cuda.is_available()


def test_clamp_hook_wraps_sglang_config_selection():
    from sglang.srt.layers.moe.moe_runner.triton_utils import fused_moe_triton_config as m

    assert getattr(m.try_get_optimal_moe_config, "__wrapped__", None) is not None


# SGLang 0.5.17 has no runner registry: the flag is mapped to its Triton path and the Triton runner
# each layer builds gets this project's core. Exercised here on 0.5.23's MoeRunner, whose run() has
# the same run_from_dispatch contract; the device runs it inside real 0.5.17 (benchmark/e2e.py).

def test_0517_flag_is_recorded_and_sglang_sees_triton(monkeypatch):
    from types import SimpleNamespace

    seen = []
    original = lambda sa: seen.append((sa.moe_runner_backend, sa.speculative_moe_runner_backend,  # noqa: E731
                                       sa.moe_a2a_backend))

    class Frozen(SimpleNamespace):              # 0.5.17's resolved ServerArgs refuse assignment
        def __setattr__(self, name, value):
            if name in self.__dict__:
                raise AttributeError("server_args is read-only")
            super().__setattr__(name, value)

    # 0.5.17 resolves speculative_moe_runner_backend to --moe-runner-backend when unset
    sa = Frozen(moe_runner_backend="sm12x", speculative_moe_runner_backend="sm12x", moe_a2a_backend="none")
    moe_runner.initialize_moe_config_0517(original, sa)
    assert seen == [("triton", "triton", "none")] and sa.moe_runner_backend == "sm12x" and moe_runner._selected_0517
    seen.clear()
    moe_runner.initialize_moe_config_0517(original, Frozen(moe_runner_backend="auto",
                                                           speculative_moe_runner_backend=None,
                                                           moe_a2a_backend="none"))
    assert seen == [("auto", None, "none")] and not moe_runner._selected_0517


@pytest.mark.parametrize("selected", [True, False])
def test_0517_triton_runner_gets_the_sm12x_core(monkeypatch, selected):
    from types import SimpleNamespace

    from sglang.srt.layers.moe.moe_runner.base import MoeRunnerConfig
    from sglang.srt.layers.moe.moe_runner.runner import MoeRunner
    from sglang.srt.layers.moe.moe_runner.triton import TritonMoeQuantInfo
    from sglang.srt.layers.moe.token_dispatcher.standard import StandardDispatchOutput
    from sglang.srt.layers.moe.topk import StandardTopKOutput
    from sglang.srt.layers.moe.utils import MoeRunnerBackend

    x, w1, w2, tw, ti = _inputs((8, 2, 128, 64), 7, torch.bfloat16)
    e = w1.shape[0]
    cfg = MoeRunnerConfig(num_experts=e, num_local_experts=e, hidden_size=x.shape[1],
                          intermediate_size_per_partition=w2.shape[2], top_k=ti.shape[1])
    method = SimpleNamespace(runner=MoeRunner(MoeRunnerBackend.TRITON, cfg))
    before = method.runner.runner_core
    monkeypatch.setattr(moe_runner, "_selected_0517", selected)
    assert moe_runner.after_create_0517("result", method, None, cfg) == "result"
    core = method.runner.runner_core
    if not selected:
        assert core is before
        return
    assert type(core).__name__ == "Sm12xMoeRunnerCore" and method.runner.fused_func is None
    assert core.runner_backend == MoeRunnerBackend.TRITON
    disp = StandardDispatchOutput(x, None, StandardTopKOutput(tw, ti, torch.zeros(x.shape[0], e)))
    # 0.5.17's MoeRunner.run dispatches on hasattr(core, "run_from_dispatch") (pinned below)
    out = core.run_from_dispatch(disp, TritonMoeQuantInfo(w13_weight=w1, w2_weight=w2), cfg).hidden_states
    ref = reference(x, w1.float(), w2.float(), tw, ti, torch.bfloat16)
    assert (out.float() - ref).abs().max() <= 0.03 * ref.abs().max()


def test_0517_runner_contract_in_the_released_wheel():
    """What the 0.5.17 path relies on, read from the released 0.5.17 sources."""
    import zipfile

    from test_patch import _wheel

    with zipfile.ZipFile(_wheel("0.5.17")) as z:
        runner = z.read("sglang/srt/layers/moe/moe_runner/runner.py").decode()
        utils = z.read("sglang/srt/layers/moe/utils.py").decode()
        args = z.read("sglang/srt/server_args.py").decode()
    assert 'hasattr(self.runner_core, "run_from_dispatch")' in runner
    assert "if self.fused_func is not None" in runner
    assert "def initialize_moe_config(server_args" in utils
    assert "moe.runner_backend = MoeRunnerBackend(server_args.moe_runner_backend)" in utils
    assert "def add_moe_runner_backend_choices(choices)" in args


def test_e2e_greps_the_runner_log_line():
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("e2e", Path(__file__).resolve().parents[1] / "benchmark" / "e2e.py")
    e2e = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(e2e)
    assert e2e.MOE_RUNNER_LOG_LINE == moe_runner.LOG_LINE


# ------------------------------------------------------------------------------------------------
# ModelOpt NVFP4 checkpoints on the sm12x kernels (nvfp4_weights)
# ------------------------------------------------------------------------------------------------

def _modelopt_config():
    from sglang.srt.layers.quantization.modelopt_quant import ModelOptFp4Config

    return ModelOptFp4Config.from_config({"quant_method": "modelopt", "quant_algo": "NVFP4", "group_size": 16,
                                          "kv_cache_quant_algo": None, "ignore": ["lm_head", "model.layers.1.mlp.experts"]})


@pytest.mark.parametrize("w4a4", [False, True])
def test_nvfp4_moe_layer_through_sglangs_weights(w4a4, monkeypatch):
    """With ``--moe-runner-backend sm12x`` SGLang's ModelOpt FP4 config hands MoE layers the sm12x
    NVFP4 method: SGLang's own ``create_weights`` (its parameter names and shapes), filled as its
    loader fills them (gate and up quantized apart, each with its own weight_scale_2), then
    ``apply`` on SGLang's dispatch output against the float32 reference over the dequantized
    weights; an excluded layer and another runner keep SGLang's own method; the CUTLASS scale
    copies are freed."""
    from sglang.srt.layers.moe.fused_moe_triton import FusedMoE
    from sglang.srt.layers.moe.moe_runner.base import MoeRunnerConfig
    from sglang.srt.layers.moe.token_dispatcher.standard import StandardDispatchOutput
    from sglang.srt.layers.moe.topk import StandardTopKOutput

    from sgl_kernel_sm12x import nvfp4
    from sglang_sm12x import nvfp4_weights as nw

    cfg = _modelopt_config()
    hook = nw.quant_method_hook(REL)
    calls = []

    def original(self, layer, prefix):
        calls.append(prefix)
        return "sglang's own"

    layer = FusedMoE.__new__(FusedMoE)
    torch.nn.Module.__init__(layer)
    monkeypatch.setattr(nw, "runner_selected", lambda rel: False)
    assert hook(original, cfg, layer, "model.layers.0.mlp.experts") == "sglang's own"
    monkeypatch.setattr(nw, "runner_selected", lambda rel: True)
    assert hook(original, cfg, layer, "model.layers.1.mlp.experts") == "sglang's own"     # excluded
    method = hook(original, cfg, layer, "model.layers.0.mlp.experts")
    assert type(method).__name__ == "Sm12xNvFp4MoEMethod" and calls == ["model.layers.0.mlp.experts",
                                                                         "model.layers.1.mlp.experts"]
    e, k, h, i = 4, 2, 64, 64
    layer.num_experts = layer.num_local_experts = e
    layer.moe_runner_config = MoeRunnerConfig(num_experts=e, num_local_experts=e, top_k=k, hidden_size=h,
                                              intermediate_size_per_partition=i)
    method.create_weights(layer, num_experts=e, hidden_size=h, intermediate_size_per_partition=i,
                          params_dtype=torch.bfloat16, weight_loader=lambda *a, **kw: None)
    x, w1, w2, tw, ti = _inputs((e, k, h, i), 5, torch.bfloat16)
    (pg, sg, gg), (pu, su, gu) = nvfp4.quantize_weight(w1[:, :i]), nvfp4.quantize_weight(2 * w1[:, i:])
    (p2, s2, g2) = nvfp4.quantize_weight(w2)
    with torch.no_grad():
        layer.w13_weight.copy_(torch.cat([pg, pu], 1))
        layer.w13_weight_scale.copy_(torch.cat([sg, su], 1))
        layer.w13_weight_scale_2.copy_(torch.stack([gg, gu], 1))
        layer.w2_weight.copy_(p2)
        layer.w2_weight_scale.copy_(s2)
        layer.w2_weight_scale_2.copy_(g2)
        layer.w13_input_scale.fill_(0.01)
        layer.w2_input_scale.fill_(0.002)
    monkeypatch.setenv(nw.W4A4_ENV, "1" if w4a4 else "0")
    method.process_weights_after_loading(layer)
    method.create_moe_runner(layer, layer.moe_runner_config)
    assert layer.w13_blockscale_swizzled is None and method.w4a4 == w4a4
    disp = StandardDispatchOutput(x, None, StandardTopKOutput(tw, ti.to(torch.int32), torch.zeros(5, e)))
    out = method.apply(layer, disp).hidden_states
    r1 = torch.cat([nvfp4.dequantize_weight(pg, sg, gg), nvfp4.dequantize_weight(pu, su, gu)], 1)
    r2 = nvfp4.dequantize_weight(p2, s2, g2)
    if w4a4:        # activations quantized with the checkpoint's input scales, as ModelOpt calibrated
        def act_q(t, g):
            d, sc = nvfp4.quantize_nvfp4(t, g)
            return nvfp4.dequantize_nvfp4(d, sc, g)
        globals_ = iter((0.01, 0.002))      # reference() quantizes the input, then the intermediate
        ref = reference(x, r1, r2, tw, ti, torch.bfloat16, act_q=lambda t: act_q(t, next(globals_)))
        rel = ((out.float() - ref).norm() / ref.norm()).item()
        assert rel < 0.2, rel          # 4-bit intermediates round apart (the GEMMs: test_moe.py)
        return
    ref, bound = reference(x, r1, r2, tw, ti, torch.bfloat16, bound=True)
    assert ((out.float() - ref).abs() <= bound).all(), ((out.float() - ref).abs() / bound).max()


def test_nvfp4_moe_refuses_what_the_kernel_cannot_run():
    from sglang.srt.layers.moe.moe_runner.base import MoeRunnerConfig

    from sglang_sm12x import nvfp4_weights as nw

    layer = torch.nn.Module()
    layer.num_experts, layer.num_local_experts = 8, 4
    with pytest.raises(NotImplementedError, match="expert parallelism"):
        nw._refuse(layer, MoeRunnerConfig(num_experts=8, num_local_experts=4, top_k=2))
    layer.num_experts = 4
    with pytest.raises(NotImplementedError, match="activation 'gelu'"):
        nw._refuse(layer, MoeRunnerConfig(num_experts=4, num_local_experts=4, top_k=2, activation="gelu"))


def test_nvfp4_linear_layer_through_sglangs_weights(monkeypatch):
    """Dense ModelOpt NVFP4 layers: SGLang's ``create_weights`` for a fused qkv projection, its
    shards sharing one weight_scale_2 (as ModelOpt and ``sm12x nvfp4-checkpoint`` write them), then
    ``apply`` against x @ dequant(W)^T + bias; shards with different scales are refused at load."""
    from sglang.srt.layers.linear import LinearBase

    from sgl_kernel_sm12x import nvfp4
    from sglang_sm12x import nvfp4_weights as nw

    monkeypatch.setattr(nw, "runner_selected", lambda rel: True)
    layer = LinearBase.__new__(LinearBase)
    torch.nn.Module.__init__(layer)
    method = nw.quant_method_hook(REL)(lambda *a: None, _modelopt_config(), layer, "model.layers.0.self_attn.qkv_proj")
    assert type(method).__name__ == "Sm12xNvFp4LinearMethod"
    k, parts = 64, [32, 16, 16]
    method.create_weights(layer, input_size_per_partition=k, output_partition_sizes=parts, input_size=k,
                          output_size=sum(parts), params_dtype=torch.bfloat16, weight_loader=lambda *a, **kw: None)
    w = torch.randn(sum(parts), k) / k ** 0.5
    data, scale, g = nvfp4.quantize_weight(w)
    with torch.no_grad():
        layer.weight.copy_(data)
        layer.weight_scale.copy_(scale)
        layer.weight_scale_2.fill_(float(g))
    method.process_weights_after_loading(layer)
    x = torch.randn(2, 3, k).to(torch.bfloat16)
    bias = torch.randn(sum(parts)).to(torch.bfloat16)
    y = method.apply(layer, x, bias)
    ref = x.float() @ nvfp4.dequantize_weight(data, scale, g).T + bias.float()
    assert y.shape == (2, 3, sum(parts)) and ((y.float() - ref).abs() <= 2 ** -7 * ref.abs() + 2e-2).all()
    with torch.no_grad():
        layer.weight_scale_2[1] = 2 * float(g)
    with pytest.raises(NotImplementedError, match="per-shard weight_scale_2"):
        method.process_weights_after_loading(layer)
