"""Planner: arch table, supported domains, and the AOT guarantee (budget compiles the planner's image)."""
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
    (dict(head_dim=96, kv_dtype="nvfp4"), "head_dim=96"),
    (dict(head_dim=128, kv_dtype="int8"), "kv_dtype='int8'"),
    (dict(head_dim=128, kv_dtype="nvfp4", act_dtype="fp32"), "act_dtype"),
])
def test_plan_rejects_unsupported_with_supported_list(kw, name):
    with pytest.raises(ValueError, match="supported") as e:
        planner.plan_kv_append(120, **kw)
    assert name in str(e.value)


def test_kv_dtype_aliases_follow_sglang_names():
    assert planner.normalize_kv_dtype("auto", "bf16") == "bf16"
    assert planner.normalize_kv_dtype("auto", "fp16") == "fp16"
    assert planner.normalize_kv_dtype("fp8_e4m3") == "fp8_e4m3"
    assert planner.normalize_kv_dtype("nvfp4") == "nvfp4"
    with pytest.raises(ValueError, match="kv_dtype"):
        planner.normalize_kv_dtype("fp4_mx_block16")


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
