#!/usr/bin/env bash
# Install SGLang + sgl-kernel-sm12x (with its SGLang plugin) into the current Python environment and
# check the result with `sm12x doctor`. Shared by Dockerfile.sm120, Dockerfile.sm121 and the tests.
#
#   PROJECT_DIR=.          source of this project (a checkout or an unpacked sdist)
#   SGLANG_VERSION=0.5.23  SGLang release (0.5.23 or 0.5.17)
#   SM12X_IMAGE_ARCH       120 | 121: the arch the install targets; doctor checks it against the GPU
#   SM12X_APPLY_PATCHES=1  apply the version-keyed SGLang patches (sm12x patch apply)
#   SM12X_DOCTOR_ARGS      extra doctor flags (--no-gpu while building an image: no GPU in `docker build`)
set -euo pipefail
PROJECT_DIR=${PROJECT_DIR:-.}
SGLANG_VERSION=${SGLANG_VERSION:-0.5.23}
PIP=${PIP:-python3 -m pip}

case "$SGLANG_VERSION" in
  0.5.23|0.5.17) ;;
  *) echo "install.sh: SGLANG_VERSION=$SGLANG_VERSION is not supported (0.5.23, 0.5.17)" >&2; exit 2 ;;
esac
if [ -n "${SM12X_IMAGE_ARCH:-}" ] && [ "$SM12X_IMAGE_ARCH" != 120 ] && [ "$SM12X_IMAGE_ARCH" != 121 ]; then
  echo "install.sh: SM12X_IMAGE_ARCH=$SM12X_IMAGE_ARCH is not supported (120, 121)" >&2; exit 2
fi

$PIP install --no-cache-dir "sglang==${SGLANG_VERSION}"
# the project and its plugin; --no-deps keeps SGLang's torch/triton pins untouched
$PIP install --no-cache-dir --no-deps "$PROJECT_DIR"
if [ "${SM12X_APPLY_PATCHES:-1}" = 1 ]; then
  sm12x patch apply
fi
# shellcheck disable=SC2086
sm12x doctor ${SM12X_DOCTOR_ARGS:-}
