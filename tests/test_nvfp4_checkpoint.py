"""``sm12x nvfp4-checkpoint``: a bf16 checkpoint (transformers' random init of a Qwen3-MoE-shaped
model) written in ModelOpt's NVFP4 format, read back by SGLang's own config and loader classes."""
import json
import sys
from pathlib import Path

import pytest
import torch

from sgl_kernel_sm12x import nvfp4

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "python"))


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    from transformers import AutoModelForCausalLM, Qwen3MoeConfig

    from sglang_sm12x.tools.nvfp4_checkpoint import main

    base = tmp_path_factory.mktemp("nvfp4")
    src, dst = base / "bf16", base / "nvfp4"
    cfg = Qwen3MoeConfig(vocab_size=256, hidden_size=64, intermediate_size=96, moe_intermediate_size=32,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                         num_experts=8, num_experts_per_tok=2, max_position_embeddings=256, tie_word_embeddings=False)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(cfg, torch_dtype=torch.bfloat16).save_pretrained(src, safe_serialization=True)
    (src / "tokenizer_config.json").write_text("{}")
    assert main([str(src), str(dst)]) == 0
    return src, dst


def _tensors(path):
    from safetensors.torch import load_file

    out = {}
    for f in sorted(Path(path).glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def test_layout_and_values(checkpoints):
    src, dst = checkpoints
    a, b = _tensors(src), _tensors(dst)
    experts = [n for n in a if ".experts." in n and n.endswith(".weight")]
    attn = [n for n in a if ".self_attn." in n and n.endswith("_proj.weight")]
    assert experts and attn
    for name in experts + attn:
        w, base = a[name], name[: -len(".weight")]
        assert b[name].dtype == torch.uint8 and b[name].shape == (w.shape[0], w.shape[1] // 2), name
        assert b[base + ".weight_scale"].dtype == torch.float8_e4m3fn
        assert b[base + ".weight_scale"].shape == (w.shape[0], w.shape[1] // 16)
        assert b[base + ".weight_scale_2"].shape == () and b[base + ".input_scale"].dtype == torch.float32
        data, scale, s2 = nvfp4.quantize_weight(w, b[base + ".weight_scale_2"])
        assert torch.equal(b[name], data) and torch.equal(b[base + ".weight_scale"].view(torch.uint8),
                                                          scale.view(torch.uint8))
        back = nvfp4.dequantize_weight(b[name], b[base + ".weight_scale"], b[base + ".weight_scale_2"])
        rel = (back - w.float()).norm() / w.float().norm()
        assert rel < 0.15, (name, float(rel))       # NVFP4's error on Gaussian weights is about 0.1
    # the projections SGLang fuses share one weight_scale_2: the largest of their own
    for layer in range(2):
        p = f"model.layers.{layer}.self_attn."
        g = {x: b[p + x + ".weight_scale_2"] for x in ("q_proj", "k_proj", "v_proj")}
        want = max(a[p + x + ".weight"].float().abs().max() for x in g) / (6 * 448)
        assert all(torch.equal(v, want) for v in g.values()), g
        for e in range(8):
            q = f"model.layers.{layer}.mlp.experts.{e}."
            assert torch.equal(b[q + "gate_proj.weight_scale_2"], b[q + "up_proj.weight_scale_2"])
    for name in ("model.embed_tokens.weight", "lm_head.weight", "model.layers.0.mlp.gate.weight"):
        assert b[name].dtype == torch.bfloat16 and torch.equal(b[name], a[name]), name
    assert (dst / "tokenizer_config.json").exists()


def test_sglang_reads_it_as_modelopt_fp4(checkpoints):
    """SGLang's own ModelOpt FP4 config parses the written ``quantization_config`` (NVFP4, group 16,
    the kept modules skipped), and its model config detects ``modelopt_fp4`` without a flag."""
    from sglang.srt.configs.model_config import ModelConfig
    from sglang.srt.layers.quantization.modelopt_quant import ModelOptFp4Config

    _, dst = checkpoints
    q = json.loads((dst / "config.json").read_text())["quantization_config"]
    assert q["quant_method"] == "modelopt" and q["quant_algo"] == "NVFP4" and q["group_size"] == 16
    cfg = ModelOptFp4Config.from_config(q)
    assert cfg.get_name() == "modelopt_fp4" and cfg.group_size == 16
    assert "lm_head" in cfg.exclude_modules and "model.layers.0.mlp.gate" in cfg.exclude_modules
    mc = ModelConfig(model_path=str(dst))
    assert mc.quantization == "modelopt_fp4"
    nested = json.loads((dst / "hf_quant_config.json").read_text())["quantization"]
    assert nested["quant_algo"] == "NVFP4" and nested["exclude_modules"] == q["ignore"]


def test_refuses_a_quantized_source(checkpoints, capsys):
    from sglang_sm12x.tools.nvfp4_checkpoint import main

    _, dst = checkpoints
    assert main([str(dst), str(dst.parent / "again")]) == 2
    assert "src: " in capsys.readouterr().err
