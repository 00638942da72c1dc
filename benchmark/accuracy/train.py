"""Train a small Qwen3-architecture causal LM on text every machine has offline (the Python standard
library's sources), for NVFP4 / FP8 / BF16 KV accuracy checks on a model whose attention is trained.

    python benchmark/accuracy/train.py --out /tmp/acc-model [--minutes 5] [--seed 0]

Deterministic given the seed (same corpus order, data order, init). Writes a Hugging Face checkpoint
(safetensors shards <= 15 MB, tokenizer trained on the same text) that SGLang loads normally, the
held-out token ids for evaluation, and the loss curves (``loss.png``, ``train_log.json``).

The corpus is small (a few million tokens), so training stops early once the loss on held-out
validation files stops improving and keeps the best weights: a model that memorised its training
files would have flat, meaningless distributions on unseen text. Validation and evaluation use
disjoint held-out files.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import sysconfig
import time
from pathlib import Path

import torch


def corpus(held_out_every: int = 20, max_files: int | None = None):
    """(train_texts, heldout_texts): the stdlib's .py files in sorted order; a file goes to held-out
    when the hash of its relative path falls in 1/held_out_every of the space."""
    root = Path(sysconfig.get_paths()["stdlib"])
    train, held = [], []
    files = sorted(root.rglob("*.py"))
    for f in files[:max_files] if max_files else files:
        rel = str(f.relative_to(root))
        if "site-packages" in rel:
            continue
        try:
            text = f.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        h = int(hashlib.sha256(rel.encode()).hexdigest(), 16)
        (held if h % held_out_every == 0 else train).append(text)
    return train, held


def train_tokenizer(texts, vocab_size: int, out: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>",
                                   pad_token="<|endoftext|>")
    fast.save_pretrained(out)
    return fast


def model_config(vocab: int, tiny: bool = False):
    from transformers import Qwen3Config

    if tiny:   # smoke tests on CPU
        return Qwen3Config(vocab_size=vocab, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                           num_attention_heads=2, num_key_value_heads=1, head_dim=64, max_position_embeddings=2048,
                           tie_word_embeddings=False, torch_dtype="bfloat16")
    # ~33M parameters: 8 layers, GQA 8/2, head_dim 64
    return Qwen3Config(vocab_size=vocab, hidden_size=512, intermediate_size=1536, num_hidden_layers=8,
                       num_attention_heads=8, num_key_value_heads=2, head_dim=64, max_position_embeddings=4096,
                       rope_theta=10000.0, tie_word_embeddings=False, torch_dtype="bfloat16")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--minutes", type=float, default=5.0)
    ap.add_argument("--max-steps", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1.5e-3)
    ap.add_argument("--eval-every", type=int, default=100, help="steps between held-out validations")
    ap.add_argument("--patience", type=int, default=4, help="validations without improvement before stopping")
    ap.add_argument("--valid-windows", type=int, default=32)
    ap.add_argument("--tiny", action="store_true", help="a 2-layer model for smoke tests")
    ap.add_argument("--max-files", type=int, default=None, help="use only the first N source files (smoke tests)")
    a = ap.parse_args(argv)
    from transformers import AutoModelForCausalLM

    torch.manual_seed(a.seed)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    train_txt, held_txt = corpus(max_files=a.max_files)
    tok = train_tokenizer(train_txt, a.vocab, out)
    eos = tok.eos_token_id
    ids = []
    for t in train_txt:
        ids += tok(t)["input_ids"] + [eos]
    data = torch.tensor(ids, dtype=torch.long)
    # held-out files alternate between validation (early stopping) and test (evaluate.py)
    held, valid = [], []
    for j, t in enumerate(held_txt):
        (valid if j % 2 else held).extend(tok(t)["input_ids"] + [eos])
    torch.save(torch.tensor(held, dtype=torch.long), out / "heldout_ids.pt")
    vdata = torch.tensor(valid, dtype=torch.long)
    vstarts = torch.linspace(0, len(vdata) - a.seq - 1, a.valid_windows).long()
    vx = torch.stack([vdata[s:s + a.seq + 1] for s in vstarts]).to(dev)
    cfg = model_config(len(tok), a.tiny)
    model = AutoModelForCausalLM.from_config(cfg).to(dev)
    n_params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, betas=(0.9, 0.95), weight_decay=0.1)
    g = torch.Generator().manual_seed(a.seed)
    log, vlog, t0, step = [], [], time.time(), 0
    best, best_state, bad = float("inf"), None, 0
    budget = a.minutes * 60
    warm = 100

    def valid_loss():
        model.eval()
        with torch.no_grad(), torch.autocast(device_type=dev, dtype=torch.bfloat16, enabled=dev == "cuda"):
            total = sum(torch.nn.functional.cross_entropy(model(input_ids=vx[j:j + 8, :-1]).logits.float().flatten(0, 1),
                                                          vx[j:j + 8, 1:].flatten(), reduction="sum").item()
                        for j in range(0, len(vx), 8))
        model.train()
        return total / vx[:, 1:].numel()

    while time.time() - t0 < budget and (a.max_steps is None or step < a.max_steps):
        if step % a.eval_every == 0 and step > 0:
            v = valid_loss()
            vlog.append(dict(step=step, seconds=round(time.time() - t0, 1), valid_loss=v))
            print(vlog[-1], flush=True)
            if v < best:
                best, bad = v, 0
                best_state = {k: t.detach().clone() for k, t in model.state_dict().items()}
            else:
                bad += 1
                if bad >= a.patience:        # held-out loss stopped improving: the model starts to memorise
                    break
        starts = torch.randint(0, len(data) - a.seq - 1, (a.batch,), generator=g)
        x = torch.stack([data[s:s + a.seq + 1] for s in starts]).to(dev)
        frac = min((time.time() - t0) / budget, 1.0)
        lr = a.lr * min(1.0, (step + 1) / warm) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))
        for group in opt.param_groups:
            group["lr"] = lr
        with torch.autocast(device_type=dev, dtype=torch.bfloat16, enabled=dev == "cuda"):
            logits = model(input_ids=x[:, :-1]).logits
        loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), x[:, 1:].flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 20 == 0:
            log.append(dict(step=step, seconds=round(time.time() - t0, 1), loss=loss.item(), lr=lr))
            print(log[-1], flush=True)
        step += 1
    final_valid = valid_loss()
    if best_state is not None and best < final_valid:
        model.load_state_dict(best_state)
    else:
        best = final_valid
    model = model.to(torch.bfloat16)
    model.save_pretrained(out, safe_serialization=True, max_shard_size="15MB")
    (out / "train_log.json").write_text(json.dumps(dict(params=n_params, steps=step, seed=a.seed, seq=a.seq,
                                                        batch=a.batch, train_tokens=len(data),
                                                        heldout_tokens=len(held), valid_tokens=len(vdata),
                                                        best_valid_loss=best, best_valid_ppl=math.exp(best),
                                                        stopped_early=bad >= a.patience, log=log, valid_log=vlog),
                                                   indent=1))
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot([r["step"] for r in log], [r["loss"] for r in log], label="train")
        ax.plot([r["step"] for r in vlog], [r["valid_loss"] for r in vlog], "o-", label="held-out (validation)")
        ax.legend()
        ax.set(xlabel="step", ylabel="loss (nats/token)", title=f"{n_params / 1e6:.1f}M params, {step} steps, "
               f"kept valid loss {best:.3f}")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out / "loss.png", dpi=120)
    except ImportError:
        pass
    print(json.dumps(dict(params=n_params, steps=step, final_loss=log[-1]["loss"] if log else None,
                          best_valid_loss=best, best_valid_ppl=math.exp(best), train_tokens=len(data))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
