# Issue 25's device check, for a session lent a GPU (the `run` tool; one script, about 10 minutes of device time).
# Run from the repository root there; $OUT is the tool's output folder.
#
# Prepared here first (ignored by git: `echo /.whl/ >> .git/info/exclude; echo /.gpu/ >> .git/info/exclude`):
#   .whl/            our pinned transformers 4.57.6 and peft 0.21.2 as wheels (the image has torch and
#                    transformers 5.x; ../.library/device/README.md says how to download wheels for it)
#   .gpu/tokenizer/  MiniLM's tokenizer, saved (`AutoTokenizer.from_pretrained(resolve_model_path("minilm"))
#                    .save_pretrained(".gpu/tokenizer")`): the packaged model is too large to travel
#   .gpu/tiny-bert/  the tests' tiny random BERT (`cp -r /tmp/legendfl-tiny-bert-6x32-$(id -u) .gpu/tiny-bert`
#                    after any test run here)
# and the call names `carry: [".whl", ".gpu"]`.
#
# What it shows: (1) a batched step never makes the host wait for the GPU (the sync-debug test, with the
# equivalence tests on the GPU's machine); (2) the batched engine's round against the sequential engine's at 80
# devices, MiniLM's shapes and 12 x 768, random weights (timing does not depend on weight values).
set -x
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c "import torch, transformers, peft; print(torch.__version__, transformers.__version__, peft.__version__, torch.cuda.get_device_name(0))"
cp -r .gpu/tiny-bert "/tmp/legendfl-tiny-bert-6x32-$(id -u)"
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_batched_engine.py -k "never_waits or counter_based or one_adamw" 2>&1 | tail -15
B="python3 benchmarks/batched_engine.py --device cuda --tokenizer .gpu/tokenizer --rounds 1"
timeout 200 $B --devices 80 --random-weights minilm-shape --engines batched sequential --json "$OUT/minilm80.json" 2>&1 | grep -v -i warn
timeout 200 $B --devices 80 --random-weights mpnet-shape --engines batched sequential --json "$OUT/mpnet80.json" 2>&1 | grep -v -i warn
ls -la "$OUT"
