"""Generative tasks a small decoder learns (issue 27): the shipped GLUE tasks posed as instructions with verbalised
labels, scored by the likelihood of each answer and by exact match; the GGUF conversion cache's reuse. Tiny random
decoders (conftest.py): what is checked is arithmetic and plumbing; the real data's prompts."""
import json
import math

import pytest
import torch
from conftest import TINY_BERT, tiny_decoder
from transformers import AutoTokenizer

from legendfl.core.lora_layout import LoraLayout
from legendfl.core.strategy import DeviceTask
from legendfl.core.training import TrainConfig
from legendfl.data.generative_tasks import PROMPTED, load_generative_task
from legendfl.data.tasks import TaskData
from legendfl.methods.lora import train_lora
from legendfl.models.generative import CausalLMData, answer_scores, evaluate_generative


def test_answer_scores_sum_the_answer_tokens_log_likelihoods_on_hand_made_logits():
    # vocabulary of 3; two sequences of 4 tokens; sequence 0's answer is tokens 2-3, sequence 1's token 3 alone
    ids = torch.tensor([[0, 1, 2, 1], [0, 0, 1, 2]])
    logits = torch.zeros(2, 4, 3)
    logits[0, 1] = torch.tensor([0.0, 0.0, math.log(2.0)])  # predicts token 2: p = 2/4
    logits[0, 2] = torch.tensor([0.0, math.log(3.0), 0.0])  # predicts token 1: p = 3/5
    logits[1, 2] = torch.tensor([math.log(7.0), 0.0, 0.0])  # predicts token 2: p = 1/9
    got = answer_scores(logits, ids, [(2, 4), (3, 4)])
    assert got.tolist() == pytest.approx([math.log(0.5) + math.log(0.6), math.log(1 / 9)])


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def llama(request, tmp_path_factory):
    """A tiny random decoder: Llama (rotary positions) and GPT-2 (learned positions, which left padding shifts)."""
    tokenizer = AutoTokenizer.from_pretrained(TINY_BERT, eos_token="[SEP]")  # answers end with it, as SmolLM2's
    return tiny_decoder(request.param, tmp_path_factory.mktemp(request.param), tokenizer)


def one_at_a_time(model, tokenizer, examples, answers):
    """The three scores of a prompted task computed the plain way, one unpadded sequence at a time: the likeliest
    answer (each scored in full), ``generate``'s greedy answer of as many tokens as the longest answer plus one,
    and the teacher-forced loss of the answer tokens (and the end token, where the tokenizer has one)."""
    correct = exact = 0
    losses = []
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    answer_ids = [tokenizer(a, add_special_tokens=False)["input_ids"] for a in answers]
    for prompt, answer, label in examples:
        p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        scores = []
        with torch.no_grad():
            for a in answer_ids:
                ids = torch.tensor([p + a])
                scores.append(float(answer_scores(model(input_ids=ids).logits, ids, [(len(p), ids.shape[1])])[0]))
            out = model.generate(input_ids=torch.tensor([p]), attention_mask=torch.ones(1, len(p), dtype=torch.long),
                                 max_new_tokens=1 + max(map(len, answer_ids)), do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id)
            full = torch.tensor([p + answer_ids[label] + eos])
            logp = torch.log_softmax(model(input_ids=full).logits[0, :-1].float(), dim=-1)
        correct += int(max(range(len(answers)), key=lambda i: scores[i]) == label)
        exact += int(tokenizer.decode(out[0, len(p):], skip_special_tokens=True).strip() == answer.strip())
        losses += (-logp[len(p) - 1:].gather(-1, full[0, len(p):, None])).flatten().tolist()
    n = len(examples)
    return {"accuracy": correct / n, "exact_match": exact / n, "loss": sum(losses) / len(losses)}


def test_the_prompted_tasks_pose_real_examples_with_one_answer_per_label():
    for name, spec in PROMPTED.items():
        task = load_generative_task(name, max_dev_examples=50)
        assert task.scoring == "choice" and task.answers == spec.answers and len(task.dev) == 50
        assert {answer for _, answer, _ in task.train[:2000]} == {f" {a}" for a in spec.answers}
        for prompt, answer, label in task.train[:50]:
            assert prompt.endswith("\nAnswer:") and answer == f" {spec.answers[label]}"
    first = load_generative_task("sst2-prompted").train[0]
    assert first[0].startswith("Review: ") and "Is this review positive or negative?" in first[0]


def test_chance_accuracy_is_one_over_the_choices_and_zero_for_free_text():
    """What the comparison's targets must exceed (metrics/comparison.over_seeds): guessing one of the labels or
    answers, and nothing for a free-text answer, which guessing does not match."""
    mnli = PROMPTED["mnli-prompted"].answers
    assert TaskData("mnli-prompted", [], [], list(mnli), "choice").chance_accuracy == pytest.approx(1 / 3)
    assert TaskData("sst2", [], [], ["negative", "positive"]).chance_accuracy == 0.5
    assert TaskData("mmlu", [], [], list("ABCD"), "letter").chance_accuracy == 0.25
    assert TaskData("gsm8k", [], [], ["answer"], "number").chance_accuracy == 0.0


@pytest.mark.parametrize("answers", [(" negative", " positive"), (" not at all good", " rather good")])
def test_choice_scoring_takes_the_likeliest_answer_and_reports_exact_match(llama, answers):
    """One-token answers (the next token's distribution after the prompt, as MMLU's letters) and answers of several
    tokens (each scored in full): the accuracy is the likeliest answer's, computed here one sequence at a time."""
    assert [len(llama.tokenizer(a, add_special_tokens=False)["input_ids"]) for a in answers] in ([1, 1], [4, 2])
    prompts = ["Review: good\nAnswer:", "Review: bad\nAnswer:", "Review: a long and winding film\nAnswer:",
               "Review: fine\nAnswer:"]
    examples = [(p, answers[i % 2], i % 2) for i, p in enumerate(prompts)]
    out = evaluate_generative(llama.model, llama.tokenizer, examples, "choice", answers=answers)
    expected = one_at_a_time(llama.model, llama.tokenizer, examples, answers)
    assert out["accuracy"] == expected["accuracy"] and out["exact_match"] == expected["exact_match"]
    one_token = all(len(llama.tokenizer(a, add_special_tokens=False)["input_ids"]) == 1 for a in answers)
    assert set(out) == {"accuracy", "exact_match"} | ({"loss"} if one_token else set())  # the loss from the same pass
    if one_token:
        assert out["loss"] == pytest.approx(expected["loss"], rel=1e-5)
    with pytest.raises(ValueError, match="answers"):
        evaluate_generative(llama.model, llama.tokenizer, examples, "choice")


def test_a_decoders_training_loss_reads_the_lm_head_only_where_it_counts(llama):
    """The answer-only loss from the logits at the positions it reads (engine/answer_logits.py) equals transformers'
    own loss on every position's logits, through a peft model, with prompts of different lengths."""
    from legendfl.engine.answer_logits import answer_targets, training_loss
    from legendfl.methods.base import get_method

    pairs = [("Review: good\nAnswer:", " positive"), ("Review: a long and winding film\nAnswer:", " negative"),
             ("Review: bad, and so on and on\nAnswer:", " negative")]
    batch = CausalLMData(llama.tokenizer, pairs, max_length=64).batch([0, 1, 2])
    keep, _ = answer_targets(batch["labels"])
    assert 0 < len(keep) < batch["input_ids"].shape[1] - 3  # most positions' logits are never computed
    layout = LoraLayout.all_layers(4, llama.num_layers)
    params = {k: v + 0.1 for k, v in llama.spec.init_lora(layout, 0).items()}  # B non-zero: the LoRA acts
    task = DeviceTask(-1, 0, params, layout)
    with get_method("lora").inject(llama, task, TrainConfig(lora_dropout=0.0), train=False) as model, torch.no_grad():
        assert float(training_loss(model, batch)) == pytest.approx(float(model(**batch).loss), rel=1e-5)


def test_a_tiny_llama_learns_a_two_prompt_task(tmp_path):
    """Answer-only LoRA training on two prompts with opposite answers: the loss falls and the answers' likelihood
    ranks both prompts right afterwards. (Its weights are drawn wider than transformers' default 0.02: with a
    frozen LM head of rows that short after RMSNorm, no LoRA could move a logit by more than about 0.6.)"""
    from transformers import LlamaConfig, LlamaForCausalLM

    from legendfl.models.backbone import load_backbone

    tokenizer = AutoTokenizer.from_pretrained(TINY_BERT, eos_token="[SEP]")  # answers end with it, as SmolLM2's
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                                 initializer_range=0.3, eos_token_id=tokenizer.eos_token_id)).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    llama = load_backbone(str(tmp_path), task_type="causal_lm", seed=0)
    pairs = [("Review: a wonderful film\nIs this review positive or negative?\nAnswer:", " positive"),
             ("Review: a dreadful film\nIs this review positive or negative?\nAnswer:", " negative")]
    data = CausalLMData(llama.tokenizer, pairs * 8, max_length=64)
    layout = LoraLayout.all_layers(4, llama.num_layers)
    task = DeviceTask(0, 1, llama.spec.init_lora(layout, 0), layout, lr=1e-2)
    cfg = TrainConfig(batch_size=4, max_local_steps=40, local_epochs=20.0, max_grad_norm=None)
    result = train_lora(llama, task, data, list(range(16)), cfg)
    assert result.metrics["last_loss"] < 0.5 * result.metrics["first_loss"]
    trained = DeviceTask(-1, 0, {**task.params, **result.params}, layout)
    from legendfl.methods.base import get_method

    examples = [(p, a, int(a == " positive")) for p, a in pairs]
    answers = (" negative", " positive")
    with get_method("lora").inject(llama, trained, cfg, train=False) as model:
        out = evaluate_generative(model, llama.tokenizer, examples, "choice", answers=answers)
        expected = one_at_a_time(model, llama.tokenizer, examples, answers)
    assert out["accuracy"] == 1.0
    # the one-pass scores of a model that answers (its greedy answers match too), as generate and a teacher-forced pass
    assert out["exact_match"] == expected["exact_match"] and out["loss"] == pytest.approx(expected["loss"], rel=1e-5)
    assert out["exact_match"] > 0, expected


def test_the_gguf_conversion_is_reused_and_made_again_when_the_file_changes(tmp_path, monkeypatch):
    """The cache folder is keyed by the file's content and transformers' version: an existing conversion is reused
    without converting again, also for a copy of the file elsewhere (another installation); a changed file gets a
    new folder (and a new conversion)."""
    import transformers

    from legendfl.models import gguf_cache

    monkeypatch.setenv("LEGENDFL_CACHE", str(tmp_path / "cache"))
    gguf = tmp_path / "model" / "tiny.gguf"
    gguf.parent.mkdir()
    gguf.write_bytes(b"GGUF" + bytes(60))
    target = tmp_path / "cache" / "gguf" / f"tiny-{gguf_cache._key(gguf)}"
    target.mkdir(parents=True)
    (target / "config.json").write_text(json.dumps({"model_type": "llama"}))

    def no_conversion(*args, **kwargs):
        raise AssertionError("the file was read: the conversion was made again")

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", no_conversion)
    assert gguf_cache.plain_folder(str(gguf.parent), gguf.name) == str(target)  # reused
    copy = tmp_path / "another-venv" / "tiny.gguf"
    copy.parent.mkdir()
    copy.write_bytes(gguf.read_bytes())
    assert gguf_cache.plain_folder(str(copy.parent), copy.name) == str(target)  # the same file installed elsewhere
    gguf.write_bytes(b"GGUF" + bytes(59) + b"\x01")  # the file changed (same size)
    assert gguf_cache._key(gguf) != target.name.rsplit("-", 1)[1]
    with pytest.raises(AssertionError, match="conversion was made again"):
        gguf_cache.plain_folder(str(gguf.parent), gguf.name)


def test_the_readmes_example_file_is_a_task():
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "examples" / "prompt_response.jsonl"
    task = load_generative_task("instructions", data_file=str(path), prompt_field="q", response_field="a")
    assert (len(task.train), len(task.dev), task.scoring) == (36, 4, "exact")
    assert all(answer in (" positive", " negative") for _, answer, _ in task.train + task.dev)
