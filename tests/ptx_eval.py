"""A small evaluator for the straight-line PTX the NVFP4 decoders use (and/or/shl/shr/prmt on b32,
mul.rn.f16x2, mov packing), so its bit manipulations are checked on the CPU."""
from __future__ import annotations

import re

import numpy as np

M32 = 0xFFFFFFFF


def _f16(bits):
    return np.array([bits & 0xFFFF], dtype=np.uint16).view(np.float16)[0]


def _bits(x):
    return int(np.array([x], dtype=np.float16).view(np.uint16)[0])


def prmt(a: int, b: int, sel: int) -> int:
    src = (a & M32) | ((b & M32) << 32)
    out = 0
    for i in range(4):
        s = (sel >> (4 * i)) & 0xF
        byte = (src >> (8 * (s & 7))) & 0xFF
        if s & 8:
            byte = 0xFF if byte & 0x80 else 0
        out |= byte << (8 * i)
    return out


def run(asm: str, inputs: dict[int, int]) -> dict[int, int]:
    """Evaluate ``asm`` (inline-asm text with $N operands) for the operand values ``inputs``
    (32-bit for 'r', 16-bit for 'h'); returns every $N written."""
    reg: dict[str, int] = {f"${k}": v for k, v in inputs.items()}
    written: dict[int, int] = {}

    def val(tok):
        tok = tok.strip()
        if re.fullmatch(r"-?(0x[0-9A-Fa-f]+|\d+)", tok):
            return int(tok, 0) & M32
        if tok not in reg:
            raise KeyError(f"read before write: {tok}")
        return reg[tok]

    def put(name, v):
        reg[name] = v
        if name.startswith("$"):
            written[int(name[1:])] = v

    for line in asm.replace("{\n", "\n").splitlines():
        line = line.strip().rstrip(";").strip()
        if not line or line in ("{", "}") or line.startswith(".reg"):
            continue
        op, rest = line.split(None, 1)
        m = re.fullmatch(r"\{\s*(\S+),\s*(\S+)\s*\},\s*(\S+)", rest)
        if op == "mov.b32" and m:                      # unpack: {lo, hi}, x
            x = val(m.group(3))
            put(m.group(1), x & 0xFFFF)
            put(m.group(2), x >> 16)
            continue
        m = re.fullmatch(r"(\S+),\s*\{\s*(\S+),\s*(\S+)\s*\}", rest)
        if op == "mov.b32" and m:                      # pack: x, {lo, hi}
            put(m.group(1), (val(m.group(2)) & 0xFFFF) | ((val(m.group(3)) & 0xFFFF) << 16))
            continue
        args = [t.strip() for t in rest.split(",")]
        d, src = args[0], [val(t) for t in args[1:]]
        if op == "and.b32":
            put(d, src[0] & src[1])
        elif op == "or.b32":
            put(d, src[0] | src[1])
        elif op == "shl.b32":
            put(d, (src[0] << src[1]) & M32)
        elif op == "shr.b32":
            put(d, src[0] >> src[1])
        elif op == "prmt.b32":
            put(d, prmt(src[0], src[1], src[2]))
        elif op == "mul.rn.f16x2":
            lo = _bits(_f16(src[0]) * _f16(src[1]))
            hi = _bits(_f16(src[0] >> 16) * _f16(src[1] >> 16))
            put(d, lo | (hi << 16))
        else:
            raise NotImplementedError(op)
    return written
