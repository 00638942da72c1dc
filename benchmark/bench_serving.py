"""Serving benchmark: backends x KV dtypes x concurrency with SGLang's own bench_serving client.
Same as ``sm12x bench-serving``; see ``python/sglang_sm12x/tools/bench_serving.py`` for the options.

    python benchmark/bench_serving.py --model MODEL_DIR [MODEL_DIR ...] [--backends sm12x triton flashinfer]
        [--kv-dtypes auto fp8_e4m3 nvfp4] [--concurrency 1 4 16 64 128] [--input-len 1024 --output-len 256]
        [--long-input-len 8192 --long-concurrency 64]
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from sglang_sm12x.tools.bench_serving import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
