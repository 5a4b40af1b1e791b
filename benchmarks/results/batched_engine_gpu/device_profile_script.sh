python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src:$PWD/benchmarks PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
python3 -c "from pathlib import Path; from batched_engine import random_model; random_model('minilm-shape', Path('/tmp/m'), '.gpu/tokenizer')" 2>&1 | grep -v -i warn
timeout 150 python3 -m cProfile -o $OUT/batched.prof -m legendfl --quiet run --config configs/default.toml --model /tmp/m --num-devices 80 --rounds 1 --max-local-steps 5 --eval-every 1000 --max-dev-examples 64 --engine batched --device cuda --out-dir /tmp/r --overwrite 2>&1 | grep -v -i warn | tail -3
grep -h wall_s /tmp/r/rounds.jsonl | python3 -c "import json,sys; r=json.loads(sys.stdin.read()); print('round wall', r['wall_s'])"
python3 -c "
import pstats; s=pstats.Stats('$OUT/batched.prof'); s.sort_stats('tottime').print_stats(30); s.sort_stats('cumulative').print_stats('legendfl', 40)" > $OUT/prof.txt 2>&1
head -c 9000 $OUT/prof.txt
