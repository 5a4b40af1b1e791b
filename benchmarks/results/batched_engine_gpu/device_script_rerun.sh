python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
B="python3 benchmarks/batched_engine.py --device cuda --tokenizer .gpu/tokenizer --rounds 1 --random-weights mpnet-shape"
$B --devices 80 --engines batched --json $OUT/mpnet80_batched.json 2>&1 | grep '^{'
$B --devices 10 --engines sequential --json $OUT/mpnet10_sequential.json 2>&1 | grep '^{'
