"""Planner: arch table, supported domains, and the AOT guarantee (budget compiles the planner's image)."""
import itertools
import math

import pytest

from sgl_kernel_sm12x import kv_append, planner


def test_arch_limits_table():
    assert planner.arch_limits(120).smem_per_block == 101_376
    assert planner.arch_limits(121).smem_per_block == 101_376
    assert planner.arch_limits(89).smem_per_block == 101_376
    assert planner.arch_limits(86).smem_per_block == 101_376
    assert planner.arch_limits(90).smem_per_block == 232_448
    assert planner.arch_limits(100).smem_per_block == 232_448
    assert planner.arch_limits(80).smem_per_block == 166_912
    for a in planner.ARCH_LIMITS.values():
        assert a.regs_per_thread == 255


def test_unknown_arch_names_supported_list():
    with pytest.raises(ValueError, match=r"arch=75.*supported compute capabilities: \[80, 86"):
        planner.arch_limits(75)


@pytest.mark.parametrize("kw,name", [
    (dict(head_dim=80, kv_dtype="nvfp4"), "head_dim=80"),
    (dict(head_dim=128, kv_dtype="int8"), "kv_dtype='int8'"),
    (dict(head_dim=128, kv_dtype="nvfp4", act_dtype="fp32"), "act_dtype"),
])
def test_plan_rejects_unsupported_with_supported_list(kw, name):
    with pytest.raises(ValueError, match="supported") as e:
        planner.plan_kv_append(120, **kw)
    assert name in str(e.value)


@pytest.mark.parametrize("arch", sorted(planner.ARCH_LIMITS))
def test_budget_cases_cover_every_planner_choice(arch):
    """Every configuration the planner can return for this arch appears among the AOT cases."""
    compiled = {(lab["head_dim"], lab["kv_dtype"], lab["act_dtype"], lab["block_rows"], lab["num_warps"],
                 lab["num_stages"], lab["hw_fp8"]) for lab, *_ in kv_append.aot_cases(arch)}
    for inp in planner.kv_append_domain():
        cfg = planner.plan_kv_append(arch, **inp)
        key = (inp["head_dim"], inp["kv_dtype"], inp["act_dtype"], cfg.block_rows, cfg.num_warps, cfg.num_stages,
               cfg.hw_fp8)
        assert key in compiled, f"planner choice {key} for sm_{arch} is not checked by sm12x budget"


def test_append_tiles_are_powers_of_two():
    for inp in planner.kv_append_domain():
        cfg = planner.plan_kv_append(120, **inp)
        assert cfg.block_rows & (cfg.block_rows - 1) == 0


def test_decode_split_planning():
    # the Triton split stage: about two waves of programs, at most 64 splits
    tri = dict(head_dim=128, kv_dtype="nvfp4", num_sms=132, fp4_mma=False)
    assert planner.plan_decode(90, batch=1, kv_heads=1, **tri).max_splits == 64
    assert planner.plan_decode(90, batch=256, kv_heads=8, **tri).max_splits == 1
    # sm_90 16-bit pools at D128: 128-token tiles at 64-256 rows and from 1,024 (splits rounded down
    # to about two waves); elsewhere, and on every other arch, the 64-token tile
    bf = dict(head_dim=128, kv_dtype="bf16", num_sms=132, kv_heads=8)
    tiles = {b: (c.block_n, c.num_warps, c.max_splits)
             for b in (1, 8, 16, 32, 64, 128) for c in [planner.plan_decode(90, batch=b, **bf)]}
    assert tiles == {1: (64, 4, 64), 8: (128, 4, 4), 16: (128, 4, 2), 32: (128, 4, 1), 64: (128, 8, 1),
                     128: (128, 4, 1)}
    # ... on 2 stages at 64-256 rows with page size 1; 3 for paged pools (2 spill in the paged
    # one-split variant) and from 1,024 rows
    stages = {(b, p): planner.plan_decode(90, batch=b, page_size=p, **bf).num_stages
              for b in (8, 32, 128) for p in (1, 16)}
    assert stages == {(8, 1): 2, (32, 1): 2, (8, 16): 3, (32, 16): 3, (128, 1): 3, (128, 16): 3}
    # 512-1,023 rows, page size 1: 8 warps with a 128-register cap (ptxas alone spills the one-split
    # variant); paged pools keep the 64-token tile, uncapped
    caps = {(b, p): (c.block_n, c.num_warps, c.maxnreg) for b in (63, 64, 127, 128) for p in (1, 16)
            for c in [planner.plan_decode(90, batch=b, page_size=p, **bf)]}
    assert caps == {(63, 1): (64, 4, 0), (64, 1): (128, 8, 128), (127, 1): (128, 8, 128), (128, 1): (128, 4, 0),
                    (63, 16): (64, 4, 0), (64, 16): (64, 4, 0), (127, 16): (64, 4, 0), (128, 16): (128, 4, 0)}
    assert all(planner.plan_decode(a, batch=64, **bf).maxnreg == 0 for a in (80, 89, 100, 120, 121))
    for arch in (80, 89, 100, 120):
        for b in (1, 16, 128):
            assert planner.plan_decode(arch, batch=b, **bf).block_n == 64
    # the register-operand NVFP4 kernel: the power of two nearest 8 one-warp programs per SM, <= 256
    reg = dict(head_dim=128, kv_dtype="nvfp4", num_sms=132)
    assert planner.plan_decode(90, batch=1, kv_heads=1, **reg).max_splits == 256
    assert planner.plan_decode(90, batch=1, kv_heads=8, **reg).max_splits == 128
    assert planner.plan_decode(90, batch=64, kv_heads=8, **reg).max_splits == 2
    assert planner.plan_decode(90, batch=128, kv_heads=8, **reg).max_splits == 1
    # ... unless the grid overflows one wave of resident programs: with 64-token tiles (8 a
    # multiprocessor at D128) 256 x 8 heads is 1.94 waves of 1,056 and stays at 1 split; 192 x 8
    # is 1.45 waves -> 2 splits (2.9 waves)
    assert planner.plan_decode(90, batch=256, kv_heads=8, **reg).max_splits == 1
    assert planner.plan_decode(90, batch=192, kv_heads=8, **reg).max_splits == 2
    assert planner.plan_decode(90, batch=256, kv_heads=8, group=16, **reg).block_n == 32
    assert planner.plan_decode(120, batch=1, max_splits=256, head_dim=128, kv_dtype="bf16").max_splits == 256
    with pytest.raises(ValueError, match="max_splits"):
        planner.plan_decode(120, head_dim=128, kv_dtype="nvfp4", max_splits=3)
    with pytest.raises(ValueError, match="group"):
        planner.plan_decode(120, head_dim=128, kv_dtype="nvfp4", group=32)
    with pytest.raises(ValueError, match="q_dtype"):
        planner.plan_decode(120, head_dim=128, kv_dtype="bf16", q_dtype="fp16")


@pytest.mark.parametrize("sms", [46, 84, 132, 170, 188])
@pytest.mark.parametrize("d,group", [(64, 4), (128, 4), (128, 16), (256, 8)])
def test_decode_nvfp4_split_count_against_the_wave_model(sms, d, group):
    """The register-operand kernel's split count: the 8-programs-a-multiprocessor choice wherever
    the grid fits one wave of resident programs; beyond, never a modelled time worse than that
    choice's, and a split count that is a power of two within the cap."""
    per_sm = planner.fp4_mma_resident(d, 8 if group <= 8 else 16)
    for kv_heads in (1, 2, 8):
        for batch in range(1, 1025, 7):
            c = planner.plan_decode(120, head_dim=d, kv_dtype="nvfp4", group=group, batch=batch, kv_heads=kv_heads,
                                    num_sms=sms)
            assert c.fp4_mma == (not (d == 256 and group > 8))
            want = 8 * sms / (batch * kv_heads)
            base = 1 << max(0, min(8, round(math.log2(want)) if want > 1 else 0))
            s = c.max_splits
            assert s & (s - 1) == 0 and 1 <= s <= planner.MAX_SPLITS_CAP
            rows = batch * kv_heads
            if rows * base <= per_sm * sms:
                assert s == base, (batch, kv_heads)
            else:
                assert s in (base, 2 * base, 4 * base)
                t = planner._wave_cost(rows * s, per_sm, sms) / s
                assert t <= planner._wave_cost(rows * base, per_sm, sms) / base


def test_wave_cost_model():
    # one wave of 7.8 programs a multiprocessor; 12 + a tail of 3.5 costs as if 12 + 7.5 ran
    assert planner._wave_cost(1024, 12, 132) == pytest.approx(1024 / 132)
    assert planner._wave_cost(2048, 12, 132) == pytest.approx(12 + 7.5)
    assert planner._wave_cost(12 * 132 * 3, 12, 132) == 36


@pytest.mark.parametrize("arch", sorted(planner.ARCH_LIMITS))
def test_attention_budget_cases_cover_planner(arch):
    from sgl_kernel_sm12x.attention import decode, decode_nvfp4, extend, extend_mma, extend_wgmma
    dec = {(lab["head_dim"], lab["kv_dtype"], lab["q_dtype"], lab["paged"], lab["block_h"], lab["block_n"],
            lab["num_warps"], lab["num_stages"]) for lab, *_ in decode.aot_cases(arch)}
    mma = {(lab["head_dim"], lab["q_dtype"], lab["page_size"], lab["heads_n"], lab["block_n"])
           for lab, *_ in decode_nvfp4.aot_cases(arch)}
    for inp in planner.decode_domain():
        for batch in (1, 3, 16, 64, 128, 1024):      # the Triton split stage (and fallback)
            c = planner.plan_decode(arch, **inp, batch=batch, fp4_mma=False)
            assert (inp["head_dim"], inp["kv_dtype"], inp["q_dtype"], inp["page_size"] > 1, c.block_h, c.block_n,
                    c.num_warps, c.num_stages) in dec
        for batch in (1, 3, 64, 1024):
            c = planner.plan_decode(arch, **inp, batch=batch)
            if c.fp4_mma:
                assert (inp["head_dim"], inp["q_dtype"], inp["page_size"], 8 if inp["group"] <= 8 else 16,
                        c.block_n) in mma
    assert bool(mma) == (planner.arch_limits(arch).cc >= 89)
    red = {(lab["head_dim"], lab["max_splits"]) for lab, *_ in decode.aot_cases_reduce(arch)}
    for inp in planner.decode_domain():
        for batch in (1, 3, 64, 1024):
            c = planner.plan_decode(arch, **inp, batch=batch)
            assert (inp["head_dim"], c.max_splits) in red
    ext = {(lab["head_dim"], lab["kv_dtype"], lab["q_dtype"], lab["paged"], lab["block_m"], lab["block_n"],
            lab["num_warps"], lab["num_stages"], lab["prefix_stages"]) for lab, *_ in extend.aot_cases(arch)}
    wg = {(lab["head_dim"], lab["kv_dtype"], lab["q_dtype"], lab["page_size"] > 1, lab["block_m"], lab["block_n"],
           lab["pack"], lab["num_stages"])
          for lab, *_ in itertools.chain(extend_wgmma.aot_cases(arch), extend_wgmma.aot_cases_ws(arch))}
    # without a prefix phase the pool's format and page size are not compiled in
    m2 = {(lab["head_dim"], lab["kv_dtype"] if lab["prefix"] else "-", lab["q_dtype"], lab["page_size"] > 1,
           lab["prefix"], lab["block_m"], lab["block_n"], lab["pack"], lab["num_stages"])
          for lab, *_ in extend_mma.aot_cases(arch)}
    for inp in planner.decode_domain():     # extend is planned over the same inputs, with and without a prefix
        for prefix, window, gluon, short in ((True, False, True, False), (False, False, True, False),
                                             (True, True, True, False), (False, False, True, True),
                                             (True, False, False, False)):    # gluon=False: pools over 2^31 B
            c = planner.plan_extend(arch, **inp, prefix=prefix, window=window, gluon=gluon, short=short)
            if c.wgmma:
                assert (inp["head_dim"], inp["kv_dtype"], inp["q_dtype"], inp["page_size"] > 1, c.block_m, c.block_n,
                        c.pack, c.num_stages) in wg
                continue
            if c.mma2:
                assert (inp["head_dim"], inp["kv_dtype"] if prefix else "-", inp["q_dtype"],
                        inp["page_size"] > 1 and prefix, prefix, c.block_m, c.block_n, c.pack, c.num_stages) in m2, \
                    (arch, inp, c)
                continue
            assert (inp["head_dim"], inp["kv_dtype"], inp["q_dtype"], inp["page_size"] > 1, c.block_m, c.block_n,
                    c.num_warps, c.num_stages, c.prefix_stages) in ext
    assert bool(wg) == (planner.arch_limits(arch).cc == 90)
    assert bool(m2) == (planner.arch_limits(arch).cc in (80, 86, 89, 120, 121))


@pytest.mark.parametrize("arch", [80, 86, 89, 90, 100, 120, 121])
def test_extend_deep_prefix_pipeline_only_where_a_prefix_is_read(arch):
    """The prefix loop's own pipeline depth is 0 (the tile's) or 4-6 (deeper than any tile's), and
    0 whenever the host says nothing is cached (the loop never runs; its deeper pipeline only
    costs the chunk phase); a 16-bit pool's prefix-less plan compiles no prefix phase at all."""
    for inp in planner.extend_domain():
        c = planner.plan_extend(arch, **inp)
        assert c.prefix_stages == 0 or c.num_stages < c.prefix_stages <= 6, (arch, inp, c)
        if not inp["prefix"]:
            assert c.prefix_stages == 0, (arch, inp, c)
            assert c.prefix_loop == (inp["kv_dtype"] not in ("bf16", "fp16") and not c.mma2), (arch, inp, c)
        else:
            assert c.prefix_loop, (arch, inp, c)
        if not c.wgmma and not c.mma2:     # the Triton kernel's launch order (the Gluon kernels have their own)
            assert c.heavy_first == (inp["kv_dtype"] in ("bf16", "fp16")), (arch, inp, c)


@pytest.mark.parametrize("arch", [80, 86, 89, 90, 100, 120, 121])
def test_fp8k_nvfp4v_head_dim_64_extend_avoids_the_tiles_measured_wrong(arch):
    """On an H100 (Triton 3.6) fp8k_nvfp4v extend at head_dim 64 computed wrong results with 64-key
    tiles in the fp16 MMA path (64 x 64 on 4 warps, 128 x 64 on 4 or 8 warps) and right ones with
    32-key tiles: the planner must not hand out a 64-key tile for that format there, whatever the
    GQA ratio or page size."""
    for group in planner.GQA_GROUPS:
        for page in planner.PAGE_SIZES:
            cfg = planner.plan_extend(arch, head_dim=64, kv_dtype="fp8k_nvfp4v", group=group, page_size=page)
            assert cfg.block_n <= 32, (arch, group, page, cfg)


@pytest.mark.parametrize("arch", [80, 86, 89, 90, 100, 120, 121])
def test_nvfp4_extend_never_gets_16_key_tiles(arch):
    """NVFP4 extend with 16-key tiles computed wrong results on an H100 (Triton 3.6) at every
    prefix pipeline depth, 32-key tiles right: no NVFP4 configuration may use fewer than 32 keys."""
    for inp in planner.extend_domain():
        if inp["kv_dtype"] in planner.FP4_V:
            cfg = planner.plan_extend(arch, **inp)
            assert cfg.block_n >= 32, (arch, inp, cfg)


def test_extend_sm90_nvfp4_takes_the_overlapped_gluon_kernel():
    """sm_90, NVFP4 pool, head_dim 128, 4 query heads a program, a prefix to read: the Gluon kernel
    with the tile decode in its own warpgroup (warp-specialized), every page size; with a sliding
    window, without a device (the interpreter), without a prefix, at other head dims / GQA ratios /
    arches: the Triton kernel. (An NVFP4 pool's wgmma launch is always the warp-specialized kernel.)"""
    for group in (4, 8, 16):
        for page in planner.PAGE_SIZES:
            c = planner.plan_extend(90, head_dim=128, kv_dtype="nvfp4", group=group, page_size=page)
            assert c.wgmma and (c.block_m, c.block_n, c.num_warps, c.pack) == (128, 128, 8, 4)
    for kw in (dict(window=True), dict(gluon=False), dict(prefix=False)):
        assert not planner.plan_extend(90, head_dim=128, kv_dtype="nvfp4", group=4, **kw).wgmma
    for arch, d, group, kv in ((90, 64, 4, "nvfp4"), (90, 128, 2, "nvfp4"), (90, 128, 4, "fp8_e4m3"),
                               (100, 128, 4, "nvfp4"), (120, 128, 4, "nvfp4"), (89, 128, 4, "nvfp4")):
        assert not planner.plan_extend(arch, head_dim=d, kv_dtype=kv, group=group).wgmma


def test_extend_sm90_short_fresh_chunks_take_64_row_tiles():
    """sm_90, 16-bit pool, head_dim 128, nothing cached, no chunk over SHORT_CHUNK tokens: 64 x 64
    tiles on 4 warps with up to 4 query heads a program (a pack dividing the group); with a prefix,
    longer chunks, other head dims or arches: the tile of the long-chunk plan."""
    for kv in ("bf16", "fp16"):
        for group in planner.GQA_GROUPS:
            c = planner.plan_extend(90, head_dim=128, kv_dtype=kv, q_dtype=kv, group=group, prefix=False, short=True)
            assert (c.block_m, c.block_n, c.num_warps, c.num_stages) == (64, 64, 4, 3), (kv, group)
            assert c.pack <= 4 and group % c.pack == 0 and c.pack == min(group & -group, 4), (kv, group)
            assert not c.prefix_loop
        long = planner.plan_extend(90, head_dim=128, kv_dtype=kv, q_dtype=kv, group=4, prefix=False)
        assert (long.block_m, long.pack) == (128, 1)
        assert planner.plan_extend(90, head_dim=128, kv_dtype=kv, q_dtype=kv, group=4, short=True).wgmma
        for arch, d in ((90, 64), (90, 256), (100, 128), (120, 128), (121, 128), (89, 128)):
            kw = dict(head_dim=d, kv_dtype=kv, q_dtype=kv, group=4, prefix=False)
            assert planner.plan_extend(arch, **kw, short=True) == planner.plan_extend(arch, **kw), (arch, d)


def test_extend_sm90_16bit_prefix_takes_the_wgmma_kernel():
    """sm_90, 16-bit pool, head_dim 128, a prefix to read: the Gluon warpgroup-MMA kernel with two
    copy buffers and up to 4 query heads a program (every GQA ratio: the pack divides it); with a
    sliding window, without a device or with a pool over 2^31 bytes (``gluon`` False), without a
    prefix, at other head dims or arches: the Triton kernel."""
    for kv in ("bf16", "fp16"):
        for group in planner.GQA_GROUPS:
            for page in planner.PAGE_SIZES:
                c = planner.plan_extend(90, head_dim=128, kv_dtype=kv, q_dtype=kv, group=group, page_size=page)
                assert c.wgmma and (c.block_m, c.block_n, c.num_warps, c.num_stages) == (128, 128, 8, 2), (kv, group)
                assert c.pack == planner._gqa_pack(group, 128) and group % c.pack == 0 and 128 % c.pack == 0
        for kw in (dict(window=True), dict(gluon=False), dict(prefix=False)):
            assert not planner.plan_extend(90, head_dim=128, kv_dtype=kv, q_dtype=kv, group=4, **kw).wgmma
        for arch, d in ((90, 64), (90, 256), (100, 128), (120, 128), (121, 128), (89, 128)):
            assert not planner.plan_extend(arch, head_dim=d, kv_dtype=kv, q_dtype=kv, group=4).wgmma
