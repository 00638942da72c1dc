"""Write a ModelOpt-NVFP4 checkpoint from a bf16 / fp16 Hugging Face one (``sm12x nvfp4-checkpoint``).

Every linear weight ``(out, in)`` -- attention projections, dense MLPs and each expert of a MoE --
becomes ModelOpt's NVFP4 tensors, the format SGLang's ``modelopt_fp4`` loader reads:

* ``<name>.weight``          ``(out, in // 2)`` uint8, packed E2M1 (the even element in the low nibble);
* ``<name>.weight_scale``    ``(out, in // 16)`` float8_e4m3fn, one UE4M3 a 16 along ``in``;
* ``<name>.weight_scale_2``  FP32 scalar, ``amax / (6 * 448)``, shared by the projections SGLang
  fuses (q / k / v, gate / up: the largest of theirs, as ModelOpt exports them);
* ``<name>.input_scale``     FP32 scalar, the activations' global scale (``--input-scale``; only
  W4A4 kernels use it, W4A16 ignores it).

Kept in the source precision (``ignore`` in the written config): the embeddings, ``lm_head``, MoE
routers (``*.mlp.gate`` with as many rows as experts), norms and biases, and any weight whose
``in`` is not a multiple of 16 (``--exclude`` adds name patterns). ``config.json`` gets ModelOpt's
flat ``quantization_config`` (``quant_method: modelopt``, ``quant_algo: NVFP4``, ``group_size:
16``) and ``hf_quant_config.json`` the same in ModelOpt's nested form.

    sm12x nvfp4-checkpoint /models/qwen3-30b-a3b-bf16 /models/qwen3-30b-a3b-nvfp4
"""
from __future__ import annotations

import argparse
import fnmatch
import json
import shutil
import sys
from pathlib import Path

ALWAYS_KEPT = ("*embed_tokens*", "*lm_head*", "*norm*", "*.mlp.gate.weight", "*router*", "*shared_expert_gate*",
               "*vision*", "*visual*")


def _router(name: str, t, num_experts) -> bool:
    return num_experts is not None and name.endswith(".gate.weight") and t.shape[0] == num_experts


def quantized_names(tensors: dict, config: dict, exclude=()) -> list[str]:
    """The ``.weight`` tensors that become NVFP4 (2-D, ``in`` a multiple of 16, not excluded)."""
    text = config.get("text_config", config)
    num_experts = text.get("num_experts") or text.get("num_local_experts") or text.get("n_routed_experts")
    out = []
    for name, t in tensors.items():
        if not name.endswith(".weight") or t.dim() != 2 or t.shape[1] % 16:
            continue
        if any(fnmatch.fnmatch(name, p) for p in (*ALWAYS_KEPT, *exclude)) or _router(name, t, num_experts):
            continue
        out.append(name)
    return out


# projections SGLang loads into one fused weight: they share one weight_scale_2 (the largest)
FUSED = {"q_proj": "qkv", "k_proj": "qkv", "v_proj": "qkv", "gate_proj": "gate_up", "up_proj": "gate_up",
         "w1": "w13", "w3": "w13"}


def _fusion_key(name: str):
    base = name[: -len(".weight")]
    prefix, _, leaf = base.rpartition(".")
    return (prefix, FUSED[leaf]) if leaf in FUSED else None


def shared_scales(tensors: dict, names) -> dict:
    """``weight_scale_2`` of every fused group (``amax / (6 * 448)`` over all its members)."""
    import torch
    amax = {}
    for n in names:
        key = _fusion_key(n)
        if key is not None:
            a = tensors[n].float().abs().amax()
            amax[key] = torch.maximum(amax[key], a) if key in amax else a
    return {k: v / (6.0 * 448.0) for k, v in amax.items()}


def convert(src: Path, dst: Path, exclude=(), input_scale: float = 1.0) -> dict:
    """Convert ``src`` into ``dst``; returns a summary (tensors quantized / kept, bytes before / after)."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    from sgl_kernel_sm12x import nvfp4

    src, dst = Path(src), Path(dst)
    config = json.loads((src / "config.json").read_text())
    if config.get("quantization_config"):
        raise ValueError(f"src: {src} is already quantized ({config['quantization_config'].get('quant_method')}); "
                         "convert a bf16 / fp16 checkpoint")
    shards = sorted(src.glob("*.safetensors"))
    if not shards:
        raise ValueError(f"src: no *.safetensors files in {src}")
    dst.mkdir(parents=True, exist_ok=True)
    summary = dict(quantized=0, kept=0, bytes_before=0, bytes_after=0)
    index = {}
    kept_modules = set()
    for shard in shards:
        with safe_open(shard, "pt") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        names = set(quantized_names(tensors, config, exclude))
        shared = shared_scales(tensors, names)
        out = {}
        for name, t in tensors.items():
            summary["bytes_before"] += t.numel() * t.element_size()
            if name in names:
                data, scale, s2 = nvfp4.quantize_weight(t, shared.get(_fusion_key(name)))
                base = name[: -len(".weight")]
                out[name] = data
                out[base + ".weight_scale"] = scale
                out[base + ".weight_scale_2"] = s2.reshape(()).to(torch.float32)
                out[base + ".input_scale"] = torch.tensor(float(input_scale), dtype=torch.float32)
                summary["quantized"] += 1
            else:
                out[name] = t.contiguous()
                summary["kept"] += 1
                if name.endswith(".weight") and t.dim() == 2:
                    kept_modules.add(name[: -len(".weight")])
        for k, v in out.items():
            summary["bytes_after"] += v.numel() * v.element_size()
            index[k] = shard.name
        save_file(out, str(dst / shard.name), metadata={"format": "pt"})
    ignore = sorted(kept_modules)
    qcfg = {"quant_method": "modelopt", "quant_algo": "NVFP4", "group_size": 16, "kv_cache_quant_algo": None,
            "ignore": ignore, "producer": {"name": "sgl-kernel-sm12x", "version": "nvfp4-checkpoint"}}
    config["quantization_config"] = qcfg
    (dst / "config.json").write_text(json.dumps(config, indent=2))
    (dst / "hf_quant_config.json").write_text(json.dumps(
        {"producer": qcfg["producer"], "quantization": {"quant_algo": "NVFP4", "group_size": 16,
                                                        "kv_cache_quant_algo": None, "exclude_modules": ignore}},
        indent=2))
    if len(shards) > 1:
        (dst / "model.safetensors.index.json").write_text(json.dumps(
            {"metadata": {"total_size": summary["bytes_after"]}, "weight_map": index}, indent=2))
    for f in src.iterdir():          # tokenizer, generation config, chat template
        if f.is_file() and not f.name.endswith(".safetensors") and f.name not in (
                "config.json", "model.safetensors.index.json", "hf_quant_config.json"):
            shutil.copy(f, dst / f.name)
    return summary


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="sm12x nvfp4-checkpoint", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src", type=Path, help="a bf16 / fp16 Hugging Face checkpoint folder (safetensors)")
    ap.add_argument("dst", type=Path, help="output folder")
    ap.add_argument("--exclude", action="append", default=[], help="fnmatch pattern of weights to keep (repeatable)")
    ap.add_argument("--input-scale", type=float, default=1.0,
                    help="activations' global scale written as input_scale (W4A4 only; default 1.0)")
    a = ap.parse_args(argv)
    try:
        s = convert(a.src, a.dst, a.exclude, a.input_scale)
    except ValueError as e:
        print(f"sm12x nvfp4-checkpoint: {e}", file=sys.stderr)
        return 2
    print(f"{s['quantized']} weights to NVFP4, {s['kept']} tensors kept; {s['bytes_before'] / 2**20:.1f} MiB -> "
          f"{s['bytes_after'] / 2**20:.1f} MiB in {a.dst}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
