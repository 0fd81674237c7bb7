#!/usr/bin/env bash
# The README's main job on a fresh machine: install, then show the network and its costs against the paper.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q -e .
mobilenet-v1 summary --alpha 1.0 --resolution 224
mobilenet-v1 paper
