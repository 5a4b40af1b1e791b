set -x
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c "import torch, transformers, peft; print(torch.__version__, transformers.__version__, peft.__version__, torch.cuda.get_device_name(0))"
B="python3 benchmarks/batched_engine.py --device cuda --tokenizer .gpu/tokenizer --rounds 1"
timeout 210 $B --devices 80 --random-weights minilm-shape --engines batched sequential --json $OUT/minilm80.json 2>&1 | grep -v -i warn
timeout 130 $B --devices 80 --random-weights mpnet-shape --engines batched --json $OUT/paper80.json -- --batch-size 4 --max-length 512 --local-epochs 1 --max-local-steps none 2>&1 | grep -v -i warn
timeout 200 $B --devices 80 --random-weights mpnet-shape --engines batched sequential --json $OUT/mpnet80.json 2>&1 | grep -v -i warn
ls -la $OUT
