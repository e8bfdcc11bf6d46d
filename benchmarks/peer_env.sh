#!/usr/bin/env bash
# Build benchmarks/.peer-venv: the official pyreft 0.1.0 + pyvene 0.1.8 on CPU torch, for peer_pyreft.py.
#
# pyreft pins transformers==4.45.1 and pulls jupyter/wandb/ydata-profiling/gcsfs; we install it with --no-deps and
# add only what `import pyreft` and the benchmark need. transformers is the main venv's version (5.23.0) by
# default: pyreft trains and generates with it given the compute_loss shim in peer_pyreft.py. Override with
# PEER_TRANSFORMERS=4.57.1 bash benchmarks/peer_env.sh to compare. Idempotent: a stamp records the spec.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$here/.peer-venv"
transformers_version="${PEER_TRANSFORMERS:-5.23.0}"
# torch first (the pinned CPU wheel; an unpinned torch would pull the CUDA build).
spec_torch="torch==2.13.0"
spec_peers="pyreft==0.1.0 pyvene==0.1.8"
# What pyreft/pyvene import at module load (seaborn: pyvene.analyses), plus the benchmark's own needs.
spec_rest="transformers==$transformers_version datasets==5.2.0 accelerate==1.15.0 gguf==0.19.0 matplotlib==3.11.2
 numpy==2.4.6 sentencepiece==0.2.3 protobuf seaborn tqdm safetensors"
spec="$spec_torch | $spec_peers | $spec_rest"
stamp="$venv/.stamp"

if [[ -f "$stamp" && "$(cat "$stamp")" == "$spec" ]]; then
    echo "peer venv up to date: $venv"
    exit 0
fi

python3 -m venv "$venv"
pip="$venv/bin/python -m pip"
$pip install --quiet "$spec_torch"
$pip install --quiet --no-deps $spec_peers
# shellcheck disable=SC2086
$pip install --quiet $spec_rest
"$venv/bin/python" -c "import pyreft, pyvene, transformers, torch; print('pyreft ok: transformers',
transformers.__version__, 'torch', torch.__version__)"
echo "$spec" > "$stamp"
