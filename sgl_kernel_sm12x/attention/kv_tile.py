"""``@triton.jit`` helpers that load one tile of the paged KV pool and dequantize it in registers.

One set of helpers serves every kernel of the package and every KV format (``KV_MODE``, one of
the constexprs below, :class:`sgl_kernel_sm12x.formats.KVFormat` inside the kernels):

* FMT_PLAIN -- bf16 / fp16 pool: loaded as is;
* FMT_FP8 -- fp8_e4m3 (per-tensor scale): e4m3 -> bf16/fp16 is exact (3 mantissa bits, exponents
  2^-9..448), by the sm_89+ conversion or in integer arithmetic elsewhere;
* FMT_NVFP4 -- nvfp4: packed codes, loaded as 32-bit words ``(tile, D // 8)`` (8 codes a word), and UE4M3
  block scales. ``e2m1 * ue4m3`` has at most
  6 significant bits and stays inside bf16/fp16 range, so the dequantized tile is exact in the
  compute dtype. The low nibbles hold the even elements and the high nibbles the odd ones, so the
  kernels keep the two halves apart (``q_even . k_lo + q_odd . k_hi``) and never interleave them.

Per-tensor scales (FP8 scale, NVFP4 global scale) are not applied here: they are folded into the
softmax scale (K) and the output (V).
"""
import triton
import triton.language as tl

from ..formats import KVFormat
from ..fp_codes import e4m3_decode

# the KV formats as the kernels' constexprs (K_MODE / V_MODE / KV_MODE take int(KVFormat))
FMT_PLAIN = tl.constexpr(int(KVFormat.PLAIN))
FMT_FP8 = tl.constexpr(int(KVFormat.FP8))
FMT_NVFP4 = tl.constexpr(int(KVFormat.NVFP4))
# the PTX tile decode returns values times this; launchers divide their per-tensor scales by it
FP4_PTX_UNIT = 2.0 ** -14


def check_sinks(sinks, q_heads: int, device) -> None:
    """``sinks``: None, or one attention-sink logit per query head -- a contiguous (q_heads,) float32 /
    bf16 / fp16 tensor on the layer's device."""
    import torch
    if sinks is None:
        return
    if not isinstance(sinks, torch.Tensor) or sinks.shape != (q_heads,) or not sinks.is_contiguous() \
            or sinks.dtype not in (torch.float32, torch.bfloat16, torch.float16) \
            or sinks.device != torch.device(device):
        got = (f"{tuple(sinks.shape)} {sinks.dtype} on {sinks.device}" if isinstance(sinks, torch.Tensor)
               else type(sinks).__name__)
        raise ValueError(f"sinks: expected a contiguous ({q_heads},) float32/bf16/fp16 tensor on {device} (one "
                         f"logit a query head), got {got}")


def offsets_fit(*tensors, limit: int = 2 ** 31) -> bool:
    """Whether every pool tensor (K / V codes, block scales) spans under ``limit`` bytes: what the
    sm_90 Gluon extend kernels' 32-bit byte offsets need (a 64-bit variant spilled there, so larger
    pools keep the Triton extend kernel; the decode kernels' row addresses are 64-bit products
    throughout). 2^31 bytes is over 4 M tokens a layer at 8 KV heads, D128."""
    return all(t.shape[0] * t.stride(0) * t.element_size() < limit for t in tensors)


def gluon_kernel_usable(module: str, interpret: bool) -> bool:
    """Whether a Gluon kernel module of this package (``module``, relative to this one) can run
    here: not the Triton interpreter (``interpret``, the caller's view of it), and a Triton whose
    Gluon API the kernels were written against (3.6 or newer; Gluon is experimental and changed
    before that), the module importing cleanly."""
    import importlib
    if interpret:
        return False
    try:
        major, minor = (int(x) for x in triton.__version__.split(".")[:2])
        importlib.import_module(module, __package__)
    except (ImportError, ValueError):
        return False
    return (major, minor) >= (3, 6)


def tile_flags(k_mode: int, v_mode: int, hw_fp8: bool, on_device: bool = True) -> dict:
    """The kernels' quantized-tile constexprs, both off under the interpreter (``on_device`` False):

    * ``FP4_PTX``: NVFP4 tiles are decoded by PTX (:func:`e2m1_words_f16`), in fp16 and times
      :data:`FP4_PTX_UNIT` (see :func:`unit_scales`);
    * ``F16_MMA``: the MMAs on quantized pool tiles run in fp16: e4m3 and e2m1 x ue4m3 are exact in
      fp16, the hardware converts e4m3x2 -> f16x2 in one instruction (to bf16 it goes through fp32),
      and the NVFP4 PTX decode produces fp16.
    """
    ptx = on_device and KVFormat.NVFP4 in (k_mode, v_mode)
    return dict(FP4_PTX=ptx, F16_MMA=ptx or (on_device and KVFormat.FP8 in (k_mode, v_mode) and hw_fp8))


def unit_scales(flags: dict, k_mode: int, v_mode: int, k_scale: float, v_scale: float) -> tuple[float, float]:
    """Per-tensor K / V scales as the kernels take them: divided by FP4_PTX_UNIT for the parts whose
    tiles the PTX decode delivers times that unit."""
    if flags["FP4_PTX"] and k_mode == KVFormat.NVFP4:
        k_scale /= FP4_PTX_UNIT
    if flags["FP4_PTX"] and v_mode == KVFormat.NVFP4:
        v_scale /= FP4_PTX_UNIT
    return k_scale, v_scale


_SLOT_FLAGS: dict = {}


def slot_flag(device):
    """The device's out-of-pool flag: one int32, zero until a kernel meets a slot id outside the
    pool (:func:`slot_ids`); :func:`check_slot_flag` reads and clears it."""
    import torch
    dev = torch.device(device)
    if dev not in _SLOT_FLAGS:
        _SLOT_FLAGS[dev] = torch.zeros(1, dtype=torch.int32, device=dev)
    return _SLOT_FLAGS[dev]


def check_slot_flag(flag, kv_indptr, kv_indices, num_slots: int, page_size: int) -> None:
    """Raise (naming ``kv_indices`` and the offending range) when ``flag`` says
    :func:`check_kv_indices` found an id outside the pool. Reads the flag: one device sync."""
    if not int(flag.item()):
        return
    used = kv_indices[: int(kv_indptr[-1].item())] if kv_indptr.numel() else kv_indices[:0]
    unit, n = ("page ids", num_slots // page_size) if page_size > 1 else ("slot ids", num_slots)
    rng = f"[{int(used.min())}, {int(used.max())}]" if used.numel() else "(none listed)"
    raise ValueError(f"kv_indices: {unit} outside the pool were listed (entries span {rng}; the pool holds {n} "
                     f"{unit.split()[0]}s, valid [0, {n})); the kernels read no row outside the pool")


def nvfp4_rows_aligned(cache) -> bool:
    """Whether every (slot, head) row of an NVFP4 pool starts on a 4-byte boundary, as the kernels'
    32-bit word loads need (SGLang's pools always do; a byte-offset view would not)."""
    return cache.data_ptr() % 4 == 0 and cache.stride(0) % 4 == 0 and cache.stride(1) % 4 == 0


@triton.jit
def split_range(seq_len, window_left, sid, max_splits, MIN_SPLIT_TOKENS: tl.constexpr, BLOCK_N: tl.constexpr,
                HAS_WINDOW: tl.constexpr):
    """``(lo, hi)``: the tokens split ``sid`` of a decode request covers. A request of ``n`` visible
    tokens (all, or the window's) uses ``min(max_splits, cdiv(n, MIN_SPLIT_TOKENS))`` splits of a
    whole number of ``BLOCK_N`` tiles each, computed on the device (CUDA-graph safe); splits past
    them are empty (``lo >= hi``). Scalar arithmetic only, shared by the Triton and Gluon split
    stages."""
    start = 0
    if HAS_WINDOW:
        start = tl.maximum(seq_len - 1 - window_left, 0)
    n_tok = seq_len - start
    n_splits = tl.minimum(tl.cdiv(n_tok, MIN_SPLIT_TOKENS), max_splits)
    per_split = tl.cdiv(tl.cdiv(n_tok, tl.maximum(n_splits, 1)), BLOCK_N) * BLOCK_N
    lo = start + sid * per_split
    return lo, tl.minimum(lo + per_split, seq_len)


@triton.jit
def tile_slots(kv_indices_ptr, base, pos, end, page_size, max_id, PAGED: tl.constexpr):
    """``(mask, slot)`` of a tile at logical positions ``pos``: which lie before ``end``, and their
    pool slots (:func:`slot_ids`)."""
    mask = pos < end
    return mask, slot_ids(kv_indices_ptr, base, pos, mask, page_size, max_id, PAGED)


@triton.jit
def slot_ids(kv_indices_ptr, base, pos, mask, page_size, max_id, PAGED: tl.constexpr):
    """Pool slots of logical positions ``pos`` of one request.

    not PAGED: ``kv_indices[base + pos]`` are token slots (SGLang's req_to_token rows).
    PAGED:     ``kv_indices[base + pos // page_size]`` are page ids; slot = page * P + pos % P.

    An id outside the pool is never read: one unsigned minimum an id clamps it to ``max_id`` (the
    pool's last slot, or page: :func:`max_id`; a negative int32 id wraps above any pool). Such ids are reported by
    :func:`check_kv_indices_kernel`, once per batch, not here: a store inside the attention loops
    changed how Triton pipelines them (AOT: fewer buffered tiles, spills on sm_120).
    """
    if PAGED:
        idx = tl.load(kv_indices_ptr + base + pos // page_size, mask=mask, other=0)
        # page * P + pos % P in 32 bits: a pool's slots fit in 32 bits (the caller's row offsets are 64-bit)
        return (tl.minimum(idx.to(tl.uint32), max_id) * page_size + (pos % page_size)).to(tl.int64)
    idx = tl.load(kv_indices_ptr + base + pos, mask=mask, other=0)
    return tl.minimum(idx.to(tl.uint32), max_id).to(tl.int64)


@triton.jit
def check_kv_indices_kernel(kv_indptr_ptr, kv_indices_ptr, batch, units, flag_ptr, BLOCK: tl.constexpr):
    """``flag_ptr[0] = 1`` if any of ``kv_indices[:kv_indptr[batch]]`` lies outside ``[0, units)``
    (slots, or pages with page size > 1): the per-batch report of what the attention kernels clamp."""
    n = tl.load(kv_indptr_ptr + batch)
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    idx = tl.load(kv_indices_ptr + offs, mask=offs < n, other=0)
    bad = (offs < n) & (idx.to(tl.uint32) >= units.to(tl.uint32))
    tl.store(flag_ptr, 1, mask=tl.max(bad.to(tl.int32), axis=0) > 0)


CHECK_BLOCK = 1024


def max_id(num_slots: int, page_size: int) -> int:
    """The largest valid entry of ``kv_indices`` for a pool of ``num_slots`` rows: a slot id
    (page size 1) or a page id; the kernels clamp every id to it."""
    return (num_slots // page_size if page_size > 1 else num_slots) - 1


def check_kv_indices(kv_indptr, kv_indices, units: int, flag) -> None:
    """Launch :func:`check_kv_indices_kernel` over the batch's index list (one launch, no sync)."""
    if kv_indices.numel():
        check_kv_indices_kernel[(triton.cdiv(kv_indices.numel(), CHECK_BLOCK),)](
            kv_indptr, kv_indices, kv_indptr.shape[0] - 1, units, flag, BLOCK=CHECK_BLOCK, num_warps=4)


def aot_cases_check(arch: int):
    """The per-batch index check, for ``sm12x budget``."""
    for it in ("*i32", "*i64"):
        sig = {"kv_indptr_ptr": "*i32", "kv_indices_ptr": it, "batch": "i32", "units": "i32", "flag_ptr": "*i32"}
        yield dict(kv_indices=it[1:], block=CHECK_BLOCK, num_warps=4), sig, dict(BLOCK=CHECK_BLOCK), \
            {"num_warps": 4, "num_stages": 1}


@triton.jit
def fp8_to(x_u8, dtype: tl.constexpr, HW_FP8: tl.constexpr):
    if HW_FP8:
        return x_u8.to(tl.float8e4nv, bitcast=True).to(dtype)
    return e4m3_decode(x_u8.to(tl.int32)).to(dtype)


@triton.jit
def load_raw(cache_ptr, scale_ptr, slot, stride_s, stride_sc_s, offs_w, mask, KV_MODE: tl.constexpr,
             DIM: tl.constexpr = 0):
    """One tile of the pool as stored, not yet decoded: ``(data, scales)``.

    ``data`` is ``(len(slot), len(offs_w))`` in the pool's dtype (uint8 for fp8) or, for nvfp4,
    whose ``offs_w`` runs over the HEAD_DIM // 2 packed bytes, ``(len(slot), len(offs_w) // 4)``
    int32 words (rows must be 4-byte aligned: the launchers check); ``scales`` the NVFP4 block
    scales ``(len(slot), len(offs_w) // 8)`` as uint8, or ``data`` again for the other formats.
    Masked rows are 0; with ``DIM`` (a head_dim that is not a power of two, the tile padded to the
    next one) so are the columns past it. Kept apart from the decode so a kernel can issue the
    loads of one tile while it decodes the previous one (register prefetch)."""
    if KV_MODE == FMT_NVFP4:
        # the packed codes as 32-bit words (4 bytes, 8 codes each): a tile carried across loop
        # iterations stays in whole registers (bytes would be split and re-packed)
        W: tl.constexpr = offs_w.shape[0] // 4
        row = (cache_ptr + slot * stride_s).to(tl.pointer_type(tl.int32))
        cw = tl.arange(0, W)
        x = tl.load(row[:, None] + cw[None, :], mask=col_mask(mask, cw, DIM // 8, DIM != 0), other=0)
    else:
        x = tl.load(cache_ptr + slot[:, None] * stride_s + offs_w[None, :], mask=col_mask(mask, offs_w, DIM, DIM != 0),
                    other=0)
    sc = x
    if KV_MODE == FMT_NVFP4:
        NB: tl.constexpr = offs_w.shape[0] // 8
        cb = tl.arange(0, NB)
        sc = tl.load(scale_ptr + slot[:, None] * stride_sc_s + cb[None, :], mask=col_mask(mask, cb, DIM // 16, DIM != 0),
                     other=0)
    return x, sc


@triton.jit
def col_mask(rows, cols, LIMIT: tl.constexpr, PAD: tl.constexpr):
    """``rows[:, None]``, and with ``PAD`` also ``cols < LIMIT`` (the columns a padded tile holds
    past a head_dim that is not a power of two)."""
    m = rows[:, None]
    if PAD:
        m = m & (cols < LIMIT)[None, :]
    return m


def dim_constexprs(head_dim: int) -> dict:
    """The Triton kernels' head-dim constexprs for ``head_dim``: ``HEAD_DIM``, the tile width (the
    next power of two), and ``DIM``, the true width where it differs (96: column masks are
    compiled), else 0 (powers of two: no masks, the kernels as they were)."""
    p = 1 << (int(head_dim) - 1).bit_length()
    return dict(HEAD_DIM=p, DIM=0 if p == head_dim else int(head_dim))


@triton.jit
def raw_cols(HEAD_DIM: tl.constexpr, KV_MODE: tl.constexpr):
    """Column offsets of one stored row for :func:`load_raw`: the HEAD_DIM // 2 packed bytes for
    nvfp4, the HEAD_DIM elements otherwise."""
    W: tl.constexpr = HEAD_DIM // 2 if KV_MODE == FMT_NVFP4 else HEAD_DIM
    return tl.arange(0, W)


@triton.jit
def decode_tile(x, dtype: tl.constexpr, KV_MODE: tl.constexpr, HW_FP8: tl.constexpr):
    """A bf16/fp16/fp8 tile as loaded by :func:`load_raw` -> ``dtype``."""
    if KV_MODE == FMT_FP8:
        return fp8_to(x, dtype, HW_FP8)
    return x.to(dtype)


@triton.jit
def _e2m1_scaled(c, s3, NB: tl.constexpr, dtype: tl.constexpr):
    """4-bit codes ``(N, D/2)`` (int32) times per-block scales ``(N, NB, 1)`` -> ``dtype``.

    The code's exponent/mantissa bits are placed into an fp16 pattern (``(c & 7) << 9``): read as
    fp16 that is exactly ``e2m1(c) * 2^-14`` for every code, subnormal 0.5 included, so one shift,
    one mask and a multiply by ``scale * 2^14`` (applied per block) dequantize it."""
    h = (((c & 7) << 9) | ((c & 8) << 12)).to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)
    n: tl.constexpr = c.shape[0]
    x = tl.reshape(h, (n, NB, 8)) * s3
    return tl.reshape(x, (n, NB * 8)).to(dtype)


@triton.jit
def nvfp4_decode(b, sc, dtype: tl.constexpr, PTX: tl.constexpr, HW_FP8: tl.constexpr):
    """Packed NVFP4 codes ``b`` as int32 words ``(n, HALF // 4)`` (4 bytes, 8 codes a word) and
    their UE4M3 block scales ``sc`` ``(n, HALF // 8)`` (as from :func:`load_raw`) -> two halves
    ``(lo, hi)``, each ``(n, HALF)``: ``lo[:, i]`` is element ``2 * i`` and ``hi[:, i]`` element
    ``2 * i + 1``.

    PTX (CUDA devices): one instruction sequence per word (:func:`e2m1_words_f16`) and packed fp16
    scale multiplies; the result is fp16 whatever ``dtype`` and **2^-14 times the value**: the
    e2m1 bit pattern read as fp16 is ``e2m1 * 2^-14``, and the caller folds 2^14 into its
    per-tensor scales (:data:`FP4_PTX_UNIT`). ``e2m1 * ue4m3 * 2^-14`` is exact in fp16: at most 6
    significant bits, magnitudes 2^-24 .. 0.164, the lowest set bit never below 2^-24 (fp16's
    smallest subnormal). HW_FP8 (sm_89+): the block scales are converted by the hardware
    (e4m3x2 -> f16x2). Otherwise (the interpreter) plain Triton arithmetic in fp32, returned in
    ``dtype`` at the true value.
    """
    n: tl.constexpr = b.shape[0]
    HALF: tl.constexpr = b.shape[1] * 4       # b: 32-bit words of 4 packed bytes (little-endian)
    NB: tl.constexpr = HALF // 8
    if PTX:
        if HW_FP8:
            s = sc.to(tl.float8e4nv, bitcast=True).to(tl.float16)   # once per block
        else:
            s = e4m3_decode(sc.to(tl.int32)).to(tl.float16)
        s3 = tl.reshape(s, (n, NB, 1))
        lo, hi = e2m1_words_f16(b)
        lo = tl.reshape(tl.reshape(lo, (n, NB, 8)) * s3, (n, HALF))
        hi = tl.reshape(tl.reshape(hi, (n, NB, 8)) * s3, (n, HALF))
        return lo, hi
    s = e4m3_decode(sc.to(tl.int32))
    s3 = tl.reshape(s * 16384.0, (n, NB, 1))
    b = _four(b & 0xFF, (b >> 8) & 0xFF, (b >> 16) & 0xFF, (b >> 24) & 0xFF)
    return _e2m1_scaled(b & 15, s3, NB, dtype), _e2m1_scaled(b >> 4, s3, NB, dtype)


@triton.jit
def tile_scores(q_a, q_b, kr, ksr, dt: tl.constexpr, ROWS: tl.constexpr, BLOCK_N: tl.constexpr,
                K_MODE: tl.constexpr, HW_FP8: tl.constexpr, DOT_FP32: tl.constexpr, FP4_PTX: tl.constexpr):
    """fp32 scores ``(ROWS, BLOCK_N)`` of a K tile as loaded by :func:`load_raw`: NVFP4 decoded as
    even / odd halves against ``q_a`` / ``q_b`` (q's even / odd columns), other formats decoded to
    ``dt`` against ``q_a`` (``q_b`` unused)."""
    if K_MODE == FMT_NVFP4:
        k_lo, k_hi = nvfp4_decode(kr, ksr, dt, FP4_PTX, HW_FP8)
        s = dot(q_a, tl.trans(k_lo), tl.zeros([ROWS, BLOCK_N], tl.float32), DOT_FP32)
        s = dot(q_b, tl.trans(k_hi), s, DOT_FP32)
    else:
        k = decode_tile(kr, dt, K_MODE, HW_FP8)
        s = dot(q_a, tl.trans(k), tl.zeros([ROWS, BLOCK_N], tl.float32), DOT_FP32)
    return s


@triton.jit
def dot(a, b, acc, DOT_FP32: tl.constexpr):
    """``acc + a @ b``; under the Triton interpreter bf16 dots are computed wrongly, so tests upcast."""
    if DOT_FP32:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc)
    return tl.dot(a, b, acc)


@triton.jit
def soft_cap(s, cap):
    """``cap * tanh(s / cap)`` written with exp2 (no tanh intrinsic needed)."""
    t = tl.exp2((2.0 * 1.4426950408889634 / cap) * tl.abs(s))
    th = 1.0 - 2.0 / (t + 1.0)
    return tl.where(s < 0, -cap * th, cap * th)


@triton.jit
def online_softmax_step(s, m_i, l_i, mask, HAS_CAP: tl.constexpr, logit_cap):
    """One tile of the online softmax on log2-domain scores ``s`` (already times log2(e)):
    returns ``(p, alpha, m_new, l_new)``. The soft cap applies to natural-log scores; rows with
    nothing visible yet keep ``m = -inf`` and contribute nothing."""
    if HAS_CAP:
        s = soft_cap(s * (1.0 / 1.4426950408889634), logit_cap) * 1.4426950408889634
    s = tl.where(mask, s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.exp2(m_i - m_use)
    p = tl.exp2(s - m_use[:, None])
    return p, alpha, m_new, l_i * alpha + tl.sum(p, 1)


@triton.jit
def softmax_step(s, scale, m_i, l_i, mask, MASKED: tl.constexpr, HAS_CAP: tl.constexpr, logit_cap):
    """:func:`online_softmax_step` on raw scores ``s`` and the log2-domain ``scale``. ``MASKED``
    False, for tiles every row sees whole (and no soft cap): no select, the row maximum is scaled
    once, and the scale folds into the exponent's subtraction (one FMA an element)."""
    if MASKED or HAS_CAP:
        p, alpha, m_new, l_new = online_softmax_step(s * scale, m_i, l_i, mask, HAS_CAP, logit_cap)
    else:
        m_new = tl.maximum(m_i, tl.max(s, 1) * scale)
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp2(m_i - m_use)
        p = tl.exp2(s * scale - m_use[:, None])
        l_new = l_i * alpha + tl.sum(p, 1)
    return p, alpha, m_new, l_new


# PTX for the codes of one 32-bit word (4 bytes, 8 codes, little-endian nibbles): two registers
# get one code a byte -- ``ze`` the low nibbles of bytes 0..3, ``zo`` the high ones -- each byte the
# high byte of an fp16 that is exactly e2m1 * 2^-14 (exponent / mantissa bits at byte bits 1..3,
# i.e. fp16 bits 9..11, sign at bit 7, i.e. fp16 bit 15; subnormal 0.5 included; the 2^14 goes
# into the caller's scales). One ``prmt`` then builds an f16x2 of any two of them, low bytes zero:
# 7 integer instructions a word plus one prmt a pair (placing each pair's nibbles with their own
# masks and shifts took 4-5 a pair).
E2M1_BYTE_REGS = ".reg .b32 za, zb, ze, zo;"


def e2m1_bytes_ptx(w: str) -> str:
    return (f"shl.b32 za, {w}, 1;\nand.b32 za, za, 0x0E0E0E0E;\nshl.b32 zb, {w}, 4;\n"
            f"and.b32 zb, zb, 0x80808080;\nor.b32 ze, za, zb;\n"
            f"shr.b32 za, {w}, 3;\nand.b32 za, za, 0x0E0E0E0E;\nand.b32 zb, {w}, 0x80808080;\n"
            f"or.b32 zo, za, zb;\n")


def f16x2_of_bytes(dst: str, src: str, lo: int, hi: int) -> str:
    """``dst`` = f16x2 whose low / high halves have byte ``lo`` / ``hi`` of ``src`` as high byte."""
    return f"prmt.b32 {dst}, {src}, 0, 0x{(hi << 12) | (4 << 8) | (lo << 4) | 4:04X};\n"


def _e2m1_word_asm() -> str:
    """Outputs: the low nibbles of bytes 0..3, then the high nibbles of bytes 0..3."""
    body = e2m1_bytes_ptx("$8")
    for k, (src, lo) in enumerate((("ze", 0), ("ze", 2), ("zo", 0), ("zo", 2))):
        body += f16x2_of_bytes("x", src, lo, lo + 1) + f"mov.b32 {{${2 * k}, ${2 * k + 1}}}, x;\n"
    return "{\n" + E2M1_BYTE_REGS + "\n.reg .b32 x;\n" + body + "}\n"


E2M1_WORD_PTX = _e2m1_word_asm()
_E2M1_WORD_ASM = tl.constexpr(E2M1_WORD_PTX)


@triton.jit
def _four(x0, x1, x2, x3):
    """Four ``(n, W)`` tensors -> ``(n, 4 W)`` with ``out[:, 4 w + k] = xk[:, w]``."""
    # join appends a minor dimension: [w, j, i] of this is x(2 j + i), at flat index 4 w + 2 j + i
    y = tl.join(tl.join(x0, x2), tl.join(x1, x3))
    return tl.reshape(y, (x0.shape[0], x0.shape[1] * 4))


@triton.jit
def e2m1_words_f16(w):
    """int32 tile ``(n, W)`` of packed codes (4 bytes a word, little-endian) -> (low-nibble,
    high-nibble) values ``(n, 4 W)`` times 2^-14, in fp16, exact: ``lo[:, i]`` is the low nibble of
    byte ``i``. The words stay whole in registers from the load to the decode (a uint8 tile
    carried across loop iterations is split into one register a byte and packed again)."""
    f = tl.inline_asm_elementwise(_E2M1_WORD_ASM, "=h,=h,=h,=h,=h,=h,=h,=h,r", [w],
                                  dtype=(tl.float16,) * 8, is_pure=True, pack=1)
    return _four(f[0], f[1], f[2], f[3]), _four(f[4], f[5], f[6], f[7])
