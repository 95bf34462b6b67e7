#!/usr/bin/env bash
# The Python wheels the GPU machine lacks for bench/gpu_check.py, into .whl/ (ignored by git), for its
# Python 3.12 on x86-64. Its image has torch, transformers 5.17, tokenizers, safetensors, sentencepiece,
# tensorboard, matplotlib, pyarrow, pandas, sacrebleu, but no DeepSpeed, datasets, pydantic, hjson or
# rouge-score (the package list in the device docs). Versions are the ones tested here (requirements.txt).
#
#   bash bench/gpu_wheels.sh            # then see bench/README.md, "GPU check", for the one command there
set -euo pipefail
cd "$(dirname "$0")/.."
dest=${WHEEL_DIR:-.whl}
py=${PYTHON:-$(dirname "$0")/../.venv/bin/python}
[[ -x $py ]] || py=python3
mkdir -p "$dest"
rm -f "$dest"/*.whl
# sdist-only projects: DeepSpeed builds as pure Python (its ops compile on first use, and nash-ds uses none on
# GPU: torch's AdamW, no offload); rouge-score is pure Python
DS_BUILD_OPS=0 "$py" -m pip wheel -q --no-deps -w "$dest" deepspeed==0.19.8 rouge-score==0.1.2
"$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$dest" \
  transformers==5.24.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 hjson==3.1.0 pydantic==2.14.4 \
  pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 nltk==3.10.4 defusedxml==0.7.1 \
  regex==2026.11.19 typing-extensions==4.16.0
ls -1 "$dest"
du -sh "$dest"
