"""Generative tasks on a decoder: answer-only training data and the scoring of GSM-8K and MMLU.

Prompt formats (``data/generative_tasks.py``, the same for training and evaluation):

- GSM-8K: ``"Question: {question}\\nAnswer:"`` followed by ``" {worked answer ending in #### number}"``;
- MMLU: ``"{question}\\nA. {a}\\nB. {b}\\nC. {c}\\nD. {d}\\nAnswer:"`` followed by ``" {letter}"``.

Training uses the causal-LM loss on the answer tokens only: the prompt's tokens (and padding) get label
-100, which the loss ignores. Scoring: GSM-8K by the final number of a greedy generation compared exactly
with the reference's number after ``####`` (:func:`final_number`); MMLU by comparing the model's next-token
log-likelihood of the four answer letters after the prompt (:func:`mmlu_choice`), no generation; a prompted task
(``choice``) by the log-likelihood of each answer's whole token sequence after the prompt (:func:`answer_scores`),
and, reported next to it as ``exact_match``, by a greedy generation of a few tokens compared with the answer.
"""
from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

import numpy as np
import torch

from ..data.generative_tasks import LETTERS, gsm8k_prompt, mmlu_prompt  # noqa: F401  (the prompt formats)
from .tokenized import right_padded

IGNORE = -100  # label of tokens outside the loss


_NUMBER = re.compile(r"-?\$?\s?\d[\d,]*(?:\.\d+)?")


def final_number(text: str) -> str | None:
    """The final answer's number in canonical form: after the last ``####`` when there is one, else the last
    number of the text; ``$`` and thousands commas dropped; ``18.00`` -> ``18``, ``-3.50`` -> ``-3.5``."""
    part = text.rsplit("####", 1)[1] if "####" in text else text
    found = _NUMBER.findall(part)
    if not found:
        return None
    raw = found[0] if "####" in text else found[-1]
    raw = raw.replace("$", "").replace(",", "").replace(" ", "")
    try:
        value = Decimal(raw)
    except InvalidOperation:
        return None
    if value == value.to_integral_value():
        return str(int(value))
    return format(value.normalize(), "f")


def gsm8k_correct(generated: str, reference: str) -> bool:
    got, want = final_number(generated), final_number(reference)
    return got is not None and got == want


def letter_token_ids(tokenizer) -> list[int]:
    """The token that follows ``"Answer:"`` for each letter (``" A"``, ...: the last token of its encoding)."""
    return [tokenizer(f" {l}", add_special_tokens=False)["input_ids"][-1] for l in LETTERS]


def mmlu_choice(next_token_logits: torch.Tensor, letter_ids: list[int]) -> int:
    """Index (0-3) of the letter with the highest log-likelihood as the next token."""
    return int(torch.log_softmax(next_token_logits.float(), dim=-1)[letter_ids].argmax())


class CausalLMData:
    """Prompt/answer pairs tokenised for a decoder: ``batch`` gives right-padded ids, attention mask and labels
    that are the ids on answer tokens and -100 on prompt and padding (the interface of ``TokenizedData``)."""

    def __init__(self, tokenizer, examples: list[tuple[str, str]], max_length: int = 256,
                 classes: list[int] | None = None) -> None:
        # each example's class where the task has one (a prompted task's label, MMLU's answer letter): what a
        # device reports of its label mix (MergeSFL); never read by training
        self.classes = np.asarray(classes, dtype=np.int64) if classes is not None else None
        self.input_ids: list[list[int]] = []
        self.answer_start: list[int] = []
        eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
        for prompt, answer in examples:
            p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
            a = tokenizer(answer, add_special_tokens=False)["input_ids"] + eos
            a = a[:max_length]
            p = p[max(0, len(p) + len(a) - max_length):]  # keep the answer; cut the prompt from the left
            self.input_ids.append(p + a)
            self.answer_start.append(len(p))
        self.lengths = np.asarray([len(x) for x in self.input_ids])
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    def __len__(self) -> int:
        return len(self.input_ids)

    def batch(self, indices) -> dict[str, torch.Tensor]:
        ids, mask = right_padded(self.input_ids, indices, self.pad_id)
        labels = torch.full_like(ids, IGNORE)
        for row, i in enumerate(indices):
            start, n = self.answer_start[i], len(self.input_ids[i])
            labels[row, start:n] = ids[row, start:n]
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def answer_scores(logits: torch.Tensor, input_ids: torch.Tensor, spans: list[tuple[int, int]]) -> torch.Tensor:
    """Log-likelihood of each sequence's answer tokens ``input_ids[i, start:stop]`` given what precedes them (the
    logits at position t predict token t + 1): one score per sequence."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return torch.stack([logp[i, start - 1:stop - 1].gather(-1, input_ids[i, start:stop, None]).sum()
                        for i, (start, stop) in enumerate(spans)])


def _choices(model, prompts: list[list[int]], answers: list[list[int]], pad: int, device) -> torch.Tensor:
    """(prompts x answers) log-likelihoods of every answer (token ids) after every prompt, in one right-padded batch."""
    rows = [(p, a) for p in prompts for a in answers]
    ids, mask = right_padded([p + a for p, a in rows], range(len(rows)), pad)
    logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
    spans = [(len(p), len(p) + len(a)) for p, a in rows]
    return answer_scores(logits, ids.to(device), spans).view(len(prompts), len(answers)).cpu()


def _eos_ids(model, tokenizer) -> set[int]:
    """The tokens that end a greedy generation (the generation config's, as ``generate`` stops on them)."""
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    eos = tokenizer.eos_token_id if eos is None else eos
    return set(eos if isinstance(eos, (list, tuple)) else [] if eos is None else [eos])


def _one_token_answers(model, tokenizer, ids: torch.Tensor, mask: torch.Tensor, answer_ids: list[int],
                       labels: list[int], answer_text: list[str]) -> tuple[int, int, float, int]:
    """Choice, exact match and answer loss of one left-padded batch when every answer is one token, from one
    forward over the prompts and one step of one token, instead of a forward for the choice, ``generate``'s own,
    and a teacher-forced forward for the loss.

    The prompt's last logits give the choice (the likeliest answer token), the greedy first token and the
    answer token's loss. One step after the prompt, on two rows per example (the KV cache repeated), gives the
    greedy second token (after the greedy first) and the loss of the end-of-sequence token (after the right
    answer), as the teacher-forced loss counts it. Positions follow the attention mask, as in ``generate``.
    Returns (right choices, exact matches, summed answer-token loss, answer tokens)."""
    device = ids.device
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1)
    logp = torch.log_softmax(out.logits[:, -1].float(), dim=-1)
    gold = torch.tensor([answer_ids[y] for y in labels], device=device)
    choice = logp[:, answer_ids].argmax(-1).cpu()
    first = logp.argmax(-1)
    rows = torch.arange(len(labels), device=device)
    loss, count = float(-logp[rows, gold].sum()), len(labels)
    cache = out.past_key_values
    cache.batch_repeat_interleave(2)
    step = torch.stack([first, gold], dim=1).reshape(-1, 1)
    step_mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1).repeat_interleave(2, dim=0)
    step_positions = mask.sum(-1, keepdim=True).repeat_interleave(2, dim=0)
    logp2 = torch.log_softmax(model(input_ids=step, attention_mask=step_mask, position_ids=step_positions,
                                    past_key_values=cache, use_cache=True).logits[:, -1].float(), dim=-1)
    if tokenizer.eos_token_id is not None:  # the teacher-forced answer ends with it (CausalLMData)
        loss -= float(logp2[1::2, tokenizer.eos_token_id].sum())
        count += len(labels)
    stops, pad = _eos_ids(model, tokenizer), tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    second = logp2[0::2].argmax(-1).tolist()
    generated = [[a, pad if a in stops else b] for a, b in zip(first.tolist(), second)]  # generate pads a finished row
    texts = tokenizer.batch_decode(generated, skip_special_tokens=True)
    correct = sum(int(int(c) == y) for c, y in zip(choice, labels))
    exact = sum(int(t.strip() == a.strip()) for t, a in zip(texts, answer_text))
    return correct, exact, loss, count


@torch.no_grad()
def evaluate_generative(model: torch.nn.Module, tokenizer, examples: list[tuple[str, str, int]], scoring: str,
                        batch_size: int = 16, max_new_tokens: int = 256, answers: tuple[str, ...] = ()) -> dict[str, float]:
    """Accuracy on ``(prompt, answer, label)`` examples: ``letter`` compares the next-token likelihood of the
    four answer letters after each prompt with the label (MMLU); ``number`` generates greedily up to
    ``max_new_tokens`` and compares the final number with the answer's (GSM-8K); ``exact`` compares the
    whole generated response with the answer (whitespace-stripped; a user's instruction data); ``choice``
    takes the likeliest of ``answers`` (a prompted task) and adds ``exact_match``: greedy generation of at most
    as many tokens as the longest answer, plus one, compared with the answer."""
    if scoring not in ("letter", "number", "exact", "choice"):
        raise ValueError(f"scoring must be one of ['letter', 'number', 'exact', 'choice'], got {scoring!r}")
    if scoring == "choice" and not answers:
        raise ValueError("scoring 'choice' needs the task's answers")
    model.eval()
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    letters = letter_token_ids(tokenizer) if scoring == "letter" else []
    answer_ids = [tokenizer(a, add_special_tokens=False)["input_ids"] for a in answers]
    if scoring == "choice":
        max_new_tokens = 1 + max(len(a) for a in answer_ids)
    # one-token answers (the shipped prompted tasks): one forward and one step per batch give all three numbers
    one_pass = scoring == "choice" and all(len(a) == 1 for a in answer_ids)
    correct = exact = count = 0
    loss = 0.0
    for start in range(0, len(examples), batch_size):
        chunk = examples[start:start + batch_size]
        prompts = [tokenizer(p, add_special_tokens=False)["input_ids"] for p, _, _ in chunk]
        width = max(len(p) for p in prompts)
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, p in enumerate(prompts):  # left padding: every prompt ends at the last position
            ids[row, width - len(p):] = torch.tensor(p)
            mask[row, width - len(p):] = 1
        ids, mask = ids.to(device), mask.to(device)
        if one_pass:
            got = _one_token_answers(model, tokenizer, ids, mask, [a[0] for a in answer_ids], [y for _, _, y in chunk],
                                     [a for _, a, _ in chunk])
            correct, exact, loss, count = correct + got[0], exact + got[1], loss + got[2], count + got[3]
            continue
        if letters:
            logits = model(input_ids=ids, attention_mask=mask).logits[:, -1]
            correct += sum(int(mmlu_choice(logits[row], letters) == label) for row, (_, _, label) in enumerate(chunk))
        elif scoring == "choice":
            scores = _choices(model, prompts, answer_ids, pad, device)
            correct += sum(int(int(scores[row].argmax()) == label) for row, (_, _, label) in enumerate(chunk))
        if scoring != "letter":
            out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=pad)
            texts = tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)
            if scoring == "number":
                correct += sum(int(gsm8k_correct(text, answer)) for text, (_, answer, _) in zip(texts, chunk))
            else:  # exact match of the generated response
                exact += sum(int(text.strip() == answer.strip()) for text, (_, answer, _) in zip(texts, chunk))
    n = len(examples)
    if scoring == "exact":
        return {"accuracy": exact / n if n else 0.0}
    out = {"accuracy": correct / n if n else 0.0}
    if scoring == "choice":
        out["exact_match"] = exact / n if n else 0.0
    if one_pass:
        out["loss"] = loss / count if count else float("nan")
    return out


class GenerativeSplit:
    """An evaluation split of a generative task: its examples, how they are scored, and the same examples
    tokenised for the teacher-forced answer loss."""

    def __init__(self, tokenizer, examples: list[tuple[str, str, int]], scoring: str, max_length: int,
                 max_new_tokens: int = 256, answers: tuple[str, ...] = ()) -> None:
        self.examples, self.scoring, self.max_new_tokens = list(examples), scoring, max_new_tokens
        self.answers = tuple(answers)  # "choice": the answer of each label, as the model sees it (" positive")
        self.teacher = CausalLMData(tokenizer, [(p, a) for p, a, _ in examples], max_length)

    def __len__(self) -> int:
        return len(self.examples)


@torch.no_grad()
def evaluate_split(model: torch.nn.Module, tokenizer, split: GenerativeSplit, batch_size: int = 16) -> dict[str, float]:
    """Accuracy (the task's scoring) and the mean answer-token loss (teacher-forced) on ``split``."""
    out = evaluate_generative(model, tokenizer, split.examples, split.scoring, batch_size, split.max_new_tokens,
                              split.answers)
    if "loss" in out:  # one-token answers: computed in the same pass, after the same whole prompt
        return out
    device = next(model.parameters()).device
    total = count = 0.0
    for start in range(0, len(split), batch_size):
        batch = {k: v.to(device) for k, v in split.teacher.batch(list(range(start, min(len(split), start + batch_size)))).items()}
        tokens = float((batch["labels"][:, 1:] != IGNORE).sum())
        total += float(model(**batch).loss) * tokens
        count += tokens
    out["loss"] = total / count if count else float("nan")
    return out
