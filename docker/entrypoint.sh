#!/usr/bin/env bash
# Container entry point: check the image against the GPU, then serve with the sm12x backend.
# Arguments are passed to SGLang; later flags win, so --attention-backend can still be overridden.
set -euo pipefail
if [ "${SM12X_SKIP_DOCTOR:-0}" != 1 ]; then
  sm12x doctor || { echo "sm12x doctor failed (set SM12X_SKIP_DOCTOR=1 to start anyway)" >&2; exit 1; }
fi
if [ "${1:-}" = "sglang" ] || [ "${1:-}" = "bash" ] || [ "${1:-}" = "sm12x" ] || [ "${1:-}" = "python3" ]; then
  exec "$@"
fi
exec sglang serve --host 0.0.0.0 --port "${PORT:-30000}" --attention-backend sm12x "$@"
