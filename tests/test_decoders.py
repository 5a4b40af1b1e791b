"""Decoders in the same engine (tiny random Llama and GPT-2 configurations): block discovery, LoRA placement by
depth with the LM head frozen, answer-only loss, LoRA training and peft export/reload; GSM-8K number
extraction and MMLU letter scoring on hand-made cases."""
import json

import pytest
import torch
from conftest import tiny_decoder
from transformers import AutoModelForCausalLM

from legendfl.core.lora_layout import LoraLayout
from legendfl.core.training import TrainConfig
from legendfl.models.generative import (CausalLMData, final_number, gsm8k_correct, gsm8k_prompt, letter_token_ids,
                                        mmlu_choice, mmlu_prompt)
from legendfl.methods.lora import export_adapter, lora_adapter
from legendfl.methods.base import get_method
from legendfl.strategies.legend import Legend, LegendOptions

# GPT-2's Conv1D stores weights (in, out): our LoRA config says so (peft would otherwise correct it with a warning)
pytestmark = pytest.mark.filterwarnings("error:fan_in_fan_out is set to False")


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def decoder(request, tmp_path_factory, backbone):
    return request.param, tiny_decoder(request.param, tmp_path_factory.mktemp(request.param), backbone.tokenizer)


def test_blocks_linear_modules_and_a_frozen_lm_head_are_discovered(decoder):
    kind, dec = decoder
    assert dec.task_type == "causal_lm" and dec.num_layers == 4 and dec.head_names == [] and dec.spec.head == {}
    if kind == "llama":
        assert dec.block_prefix == "model.layers"
        assert {"self_attn.q_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.down_proj"} <= set(dec.linear_modules)
    else:
        assert dec.block_prefix == "transformer.h"
        assert dec.linear_modules["attn.c_attn"] == (32, 96) and "mlp.c_proj" in dec.linear_modules
    # the LM head projects every token: FLOPs count it forward and, once anything trains, in backward
    from legendfl.core.flops import batch_work, layer_forward_flops

    assert dec.spec.output_projection == len(dec.tokenizer) * 32
    head = 2.0 * 3 * 10 * dec.spec.output_projection
    frozen = batch_work(dec.spec, None, 3, 10)
    assert frozen.forward == pytest.approx(4 * layer_forward_flops(dec.spec, 30, 10) + head) and frozen.backward == 0
    top = batch_work(dec.spec, LoraLayout.top(1, [2, 2, 2, 2]), 3, 10)
    assert top.backward == pytest.approx(layer_forward_flops(dec.spec, 30, 10) + 2 * top.trainable_forward + head)


def test_lora_goes_only_on_the_top_layers_and_trains_on_answer_tokens_only(decoder):
    kind, dec = decoder
    layout = LoraLayout.top(2, [2, 3, 4, 6])
    data = CausalLMData(dec.tokenizer, [(gsm8k_prompt("What is 2 + 3?"), " 2 + 3 = 5 #### 5"),
                                        (gsm8k_prompt("Half of 10?"), " 10 / 2 = 5 #### 5")], max_length=64)
    batch = data.batch([0, 1])
    for row in range(2):
        start, n = data.answer_start[row], int(batch["attention_mask"][row].sum())
        assert (batch["labels"][row, :start] == -100).all() and (batch["labels"][row, n:] == -100).all()
        assert torch.equal(batch["labels"][row, start:n], batch["input_ids"][row, start:n])
    params = {**dec.spec.init_lora(layout, 0)}
    pattern = dec.block_prefix.split(".")[-1]
    with lora_adapter(dec, layout, params) as model:
        ranks = {int(n.split(f".{pattern}.")[1].split(".")[0]): p.shape[0] for n, p in model.named_parameters() if "lora_A" in n}
        assert ranks == {2: 4, 3: 6}  # LoRA on the last two layers only, each with its layer's rank
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        assert trainable and all("lora_" in n for n in trainable)  # LM head and embeddings stay frozen
        out = model(**batch)
        # the loss is the mean cross-entropy over answer tokens only (shifted by one: token t predicts t + 1)
        logits, labels = out.logits[:, :-1], batch["labels"][:, 1:]
        keep = labels != -100
        manual = torch.nn.functional.cross_entropy(logits[keep], labels[keep])
        assert torch.allclose(out.loss, manual, atol=1e-5)


def test_a_decoder_lora_task_trains_uploads_lora_only_and_exports_for_plain_peft(decoder, tmp_path):
    from peft import PeftModel

    kind, dec = decoder
    strategy = Legend(LegendOptions(initial_depth=2), seed=0, lora_rank=4)  # psi = 16 over 4 layers: ranks 2, 3, 5, 6
    strategy.initialize(dec.spec, [0, 1])
    task = strategy.configure_round(1, [0, 1])[0]  # depth 2, rising ranks
    data = CausalLMData(dec.tokenizer, [(mmlu_prompt(f"Pick {i}?", ["a", "b", "c", "d"]), " B") for i in range(16)], 64)
    result = get_method("lora").train(task, dec, data, list(range(16)), TrainConfig(batch_size=4, max_local_steps=3, bf16=False))
    assert set(result.params) == set(task.params) and all(".lora_" in k for k in result.params)
    assert result.work.trained_depth == 2 and result.num_steps == 3
    strategy.aggregate_round(1, [result])
    glob = strategy.evaluation_task()
    export_adapter(dec, glob.config, glob.params, str(tmp_path / "adapter"))
    reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(dec.model.name_or_path or str(tmp_path)),
                                         str(tmp_path / "adapter")).eval()
    batch = data.batch([0, 1])
    with torch.no_grad(), lora_adapter(dec, glob.config, glob.params, train_head=False) as model:
        ours = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    with torch.no_grad():
        theirs = reloaded(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    torch.testing.assert_close(theirs, ours, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("text, number", [
    ("Natalia sold 48/2 = 24 clips in May.\n#### 72", "72"), ("#### 1,234", "1234"), ("so the total is $18.00", "18"),
    ("#### -7", "-7"), ("the answer is 3.50 dollars.", "3.5"), ("#### $2,500 in total, she says", "2500"),
    ("first 12, then 15, finally 20 apples", "20"), ("no number here", None), ("#### 0.25", "0.25"),
])
def test_gsm8k_final_number_extraction(text, number):
    assert final_number(text) == number


def test_gsm8k_correctness_compares_numbers_not_strings():
    assert gsm8k_correct("She pays 5 * 3 = $15.00 in all", "5 * 3 = 15\n#### 15")
    assert not gsm8k_correct("She pays 16", "#### 15") and not gsm8k_correct("no idea", "#### 15")


def test_mmlu_scores_the_answer_letters_by_log_likelihood(backbone):
    ids = letter_token_ids(backbone.tokenizer)
    assert len(set(ids)) == 4
    logits = torch.full((len(backbone.tokenizer),), -5.0)
    logits[ids[2]] = 3.0  # C most likely among the letters
    logits[backbone.tokenizer.convert_tokens_to_ids("the")] = 9.0  # a non-letter token is ignored
    assert mmlu_choice(logits, ids) == 2
    assert mmlu_prompt("2 + 2?", ["3", "4", "5", "6"]) == "2 + 2?\nA. 3\nB. 4\nC. 5\nD. 6\nAnswer:"


def test_generative_tasks_ship_with_the_project_and_never_report_trained_questions():
    from legendfl.data.generative_tasks import load_generative_task

    gsm = load_generative_task("gsm8k")
    assert (len(gsm.train), len(gsm.dev)) == (7473, 1319) and gsm.scoring == "number"
    assert gsm.train[0][0].startswith("Question: ") and final_number(gsm.train[0][1]) == "72"
    mmlu = load_generative_task("mmlu")
    assert (len(mmlu.train), len(mmlu.dev)) == (1782, 14042) and mmlu.scoring == "letter"  # 32 repeated test questions left out
    assert not {p for p, _, _ in mmlu.train} & {p for p, _, _ in mmlu.dev}
    assert all(a in (" A", " B", " C", " D") and "ABCD"[y] == a.strip() for _, a, y in mmlu.train)
    a, b = load_generative_task("mmlu", 200, seed=1), load_generative_task("mmlu", 200, seed=1)
    assert len(a.dev) == 200 and a.dev == b.dev != load_generative_task("mmlu", 200, seed=2).dev
    with pytest.raises(ValueError, match="generative task must be one of"):
        load_generative_task("squad")


def test_generative_evaluation_scores_letters_and_generated_numbers(decoder):
    from legendfl.models.generative import evaluate_generative

    kind, dec = decoder
    examples = [(mmlu_prompt(f"Question {i}?", ["w", "x", "y", "z"]), " C", 2) for i in range(6)]
    letters = letter_token_ids(dec.tokenizer)
    expected = 0
    with torch.no_grad():
        for prompt, _, label in examples:
            ids = dec.tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
            expected += int(mmlu_choice(dec.model(input_ids=ids).logits[0, -1], letters) == label)
    got = evaluate_generative(dec.model, dec.tokenizer, examples, "letter", batch_size=4)["accuracy"]
    assert got == pytest.approx(expected / 6)  # left-padded batches score like one prompt at a time
    gen = evaluate_generative(dec.model, dec.tokenizer, [(gsm8k_prompt("1 + 1?"), " #### 2", 0)], "number", max_new_tokens=4)
    assert 0.0 <= gen["accuracy"] <= 1.0


@pytest.mark.slow
@pytest.mark.parametrize("task, strategy", [("mmlu", "legend"), ("gsm8k", "hetlora"), ("mmlu", "mergesfl")])
def test_a_decoder_runs_a_generative_task_through_the_engine(tmp_path, backbone, task, strategy):
    from legendfl.config import RunConfig
    from legendfl.metrics.summary import read_records
    from legendfl.experiments.runner import run

    tiny_decoder("llama", tmp_path / "model", backbone.tokenizer)
    cfg = RunConfig.from_sources({"task": task, "model": str(tmp_path / "model"), "strategy": strategy, "num_devices": 3,
                                  "rounds": 2, "max_local_steps": 2, "batch_size": 4, "max_examples_per_device": 12,
                                  "max_dev_examples": 8, "max_length": 96, "max_new_tokens": 6, "validation_examples": 0,
                                  "lora_rank": 4, "out_dir": str(tmp_path / "run")})
    summary = run(cfg)
    records = read_records(tmp_path / "run" / "rounds.jsonl")
    assert len(records) == 2 and all(0.0 <= r["accuracy"] <= 1.0 and r["eval_loss"] > 0 for r in records)
    first = records[0]["devices"]
    assert len(first) == 3 and all(d["tokens"] > 0 and d["upload_bytes"] > 0 for d in first.values())
    assert summary["final_accuracy"] == records[-1]["accuracy"]
    if strategy == "mergesfl":  # devices reported their answer letters in round 1: round 2 merged by them
        assert records[0]["aggregation"]["merged_kl"] is None and records[1]["aggregation"]["merged_kl"] is not None
    import json

    assert json.loads((tmp_path / "run" / "adapter" / "adapter_config.json").read_text())["task_type"] == "CAUSAL_LM"
    with pytest.raises(Exception, match="needs a decoder"):
        run(RunConfig.from_sources({"task": task, "model": "minilm", "out_dir": str(tmp_path / "enc")}))


def test_a_users_instruction_file_loads_with_its_own_field_names(tmp_path):
    from legendfl.data.generative_tasks import load_generative_task

    path = tmp_path / "mine.jsonl"
    path.write_text("".join(json.dumps({"ask": f"Say {w}.", "say": w}) + "\n" for w in ["yes", "no", "maybe"] * 10))
    task = load_generative_task("instructions", data_file=str(path), prompt_field="ask", response_field="say", seed=0)
    assert task.scoring == "exact" and (len(task.train), len(task.dev)) == (27, 3)
    assert all(p.startswith("Say ") and p == f"Say {a}." for p, a, _ in task.train + task.dev)
    with pytest.raises(ValueError, match="prompt_field 'prompt' is not a field"):
        load_generative_task("instructions", data_file=str(path))
    with pytest.raises(ValueError, match="needs data_file"):
        load_generative_task("instructions")


@pytest.mark.slow
def test_instructions_train_a_decoder_end_to_end(tmp_path, backbone):
    from legendfl.config import RunConfig
    from legendfl.metrics.summary import read_records
    from legendfl.experiments.runner import run

    tiny_decoder("gpt2", tmp_path / "model", backbone.tokenizer)
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"q": f"Repeat {w}:", "a": f" {w}"}) + "\n" for w in ["red", "blue", "green"] * 12))
    run(RunConfig.from_sources({"task": "instructions", "data_file": str(data), "prompt_field": "q", "response_field": "a",
                                "model": str(tmp_path / "model"), "strategy": "fedlora", "num_devices": 2, "rounds": 1,
                                "max_local_steps": 2, "batch_size": 4, "max_new_tokens": 3, "validation_examples": 0,
                                "out_dir": str(tmp_path / "run")}))
    rec = read_records(tmp_path / "run" / "rounds.jsonl")[0]
    assert 0.0 <= rec["accuracy"] <= 1.0 and rec["eval_loss"] > 0 and len(rec["devices"]) == 2


def test_fedadapter_trains_bottleneck_adapters_on_a_decoder_and_full_fine_tuning_warns_about_memory(decoder, caplog):
    import logging

    from legendfl.strategies.fedadapter import AdapterLayout
    from legendfl.core.strategy import DeviceTask
    from legendfl.strategies import build_strategy

    kind, dec = decoder
    strategy = build_strategy("fedadapter")
    strategy.initialize(dec.spec, [0, 1])
    params = strategy.grow({}, 2, 8, 0)
    assert sorted(params)[0] == "2.output.adapter.adapter_down.0.bias"  # one canonical location for every model
    data = CausalLMData(dec.tokenizer, [(gsm8k_prompt("What is 1 + 1?"), " 1 + 1 = 2 #### 2")] * 8, max_length=48)
    task = DeviceTask(0, 1, params, AdapterLayout(2, 8), method="adapter", lr=1e-2)
    result = get_method("adapter").train(task, dec, data, list(range(8)), TrainConfig(batch_size=4, max_local_steps=2, bf16=False))
    # adapters in the top 2 blocks: the backward enters the frozen weights of the upper block only (core/flops.py)
    assert set(result.params) == set(params) and result.work.trained_depth == 1 and result.work.trained_layers == 1
    assert all(not torch.equal(result.params[k], params[k]) for k in params if k.endswith("weight"))
    assert not any("adapters" in n for n, _ in dec.model.named_parameters())  # removed again
    with caplog.at_level(logging.WARNING):
        build_strategy("full").initialize(dec.spec, [0, 1])
    assert "full fine-tuning trains every weight" in caplog.text


def test_a_fedadapter_decoder_decodes_with_its_kv_cache_as_without(decoder):
    """AdapterHub 1.3.0's attention reads ``past_key_value`` where transformers 4.57 passes ``past_key_values``
    (adapter-hub/adapters#824): unmended, a cached step attends to itself only. With adapters in every block, the
    next-token logits after prompt + one token from the cache equal a full forward's, and ``generate`` equals
    greedy decoding by full forwards."""
    from legendfl.core.strategy import DeviceTask
    from legendfl.strategies import build_strategy
    from legendfl.strategies.fedadapter import AdapterLayout

    kind, dec = decoder
    strategy = build_strategy("fedadapter")
    strategy.initialize(dec.spec, [0])
    gen = torch.Generator().manual_seed(0)
    params = {k: v + 0.05 * torch.randn(v.shape, generator=gen) for k, v in strategy.grow({}, 4, 8, 0).items()}
    ids = torch.tensor([dec.tokenizer("Review: a long and winding film\nAnswer:", add_special_tokens=False)["input_ids"]])
    task = DeviceTask(-1, 0, params, AdapterLayout(4, 8), method="adapter")
    with get_method("adapter").inject(dec, task, TrainConfig(), train=False) as model, torch.no_grad():
        prefill = model(input_ids=ids, use_cache=True)
        token = prefill.logits[:, -1].argmax(-1, keepdim=True)
        cached = model(input_ids=token, past_key_values=prefill.past_key_values, use_cache=True).logits[0, -1]
        full = model(input_ids=torch.cat([ids, token], dim=1)).logits[0, -1]
        torch.testing.assert_close(cached, full, rtol=1e-5, atol=1e-5)
        greedy = ids
        for _ in range(3):
            greedy = torch.cat([greedy, model(input_ids=greedy).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
        generated = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=3, do_sample=False,
                                   min_new_tokens=3, pad_token_id=0)
        assert generated.tolist() == greedy.tolist()
