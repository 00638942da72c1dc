"""``sm12x`` command line: ``budget``, ``demo``, ``patch``, ``doctor``, ``bench-serving``, ``nvfp4-checkpoint``."""
from __future__ import annotations

import sys


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    cmds = {"budget": "AOT shared-memory/register check of every planned kernel configuration",
            "demo": "serve the bundled model with sm12x + nvfp4 (GPU) or run the kernel demo (CPU)",
            "patch": "status|check|apply|revert the version-keyed SGLang patches",
            "doctor": "check GPU, image arch, Triton ptxas, SGLang, plugin and patches",
            "bench-serving": "serve a model per backend x KV dtype and run SGLang's bench_serving client",
            "nvfp4-checkpoint": "write a ModelOpt-NVFP4 checkpoint from a bf16 / fp16 one"}
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in cmds:
        print("usage: sm12x {" + ",".join(cmds) + "} ...\n")
        for c, h in cmds.items():
            print(f"  {c:<14} {h}")
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    cmd, rest = argv[0], argv[1:]
    if cmd == "budget":
        from sgl_kernel_sm12x.budget import main as budget_main
        return budget_main(rest)
    if cmd == "bench-serving":
        from .tools.bench_serving import main as bench_main
        return bench_main(rest)
    if cmd == "nvfp4-checkpoint":
        from .tools.nvfp4_checkpoint import main as nvfp4_main
        return nvfp4_main(rest)
    if cmd == "doctor":
        from .tools.doctor import main as doctor_main
        return doctor_main(rest)
    if cmd == "patch":
        from .tools.patch import main as patch_main
        return patch_main(rest)
    from .tools.demo import main as demo_main
    return demo_main(rest)


if __name__ == "__main__":
    sys.exit(main())
