"""Generative tasks shipped with the project (compressed): GSM-8K and MMLU, as prompt/answer pairs.

- ``gsm8k``: grade-school math (openai/grade-school-math, MIT): 7,473 training and 1,319 test problems; the
  answer is the worked solution ending in ``#### number``. Training on ``train``, reporting on ``test``.
- ``mmlu``: multiple choice over 57 subjects (MMLU via jonny-vr/LLMCBench, MIT): dev 285, val 1,529, test
  14,042 questions. The paper samples 20,000 training questions from ``auxiliary_train``, which these files
  do not hold; here devices train on **dev + val** (1,814 questions, every subject, less those that the files
  repeat in test: 1,782 remain) and accuracy is reported on **test** only, never on a question that
  was trained on. A seeded subset of the test split is used when
  ``max_dev_examples`` is set (``legendfl.models.generative`` documents the prompts and the scoring).

- ``sst2-prompted``, ``qnli-prompted``, ``mnli-prompted``: the shipped GLUE tasks posed as instructions with
  verbalised labels (:data:`PROMPTED`; prompts chosen once, before any run): a 135M decoder learns these within a
  CPU budget, where MMLU and GSM-8K stay at chance. Training on ``train``, reporting on ``dev``. Scored
  (``choice``) by the log-likelihood of each verbalised label after the prompt (robust to formatting: the most
  likely label is the answer), and by exact match of a short greedy generation, reported next to it.

- ``instructions``: a user's own JSON/JSONL (or CSV/TSV) file of prompt/response pairs (``--data-file``;
  field names ``--prompt-field`` / ``--response-field``), trained the same way and scored by exact match of
  the greedy generation with the response (whitespace-stripped), next to the answer loss; ``--dev-file`` or a
  seeded 10% of the file is held out.

Each example is ``(prompt, answer, label)``: ``label`` is the answer letter's index for MMLU (so a Dirichlet
partition skews devices' answer distributions) and 0 otherwise.
"""
from __future__ import annotations

import csv
import gzip
import io
import json
from dataclasses import dataclass
from pathlib import Path

from ..core.seeding import rng

FILES = Path(__file__).parent / "files"
LETTERS = ("A", "B", "C", "D")


@dataclass(frozen=True)
class Prompted:
    """A shipped classification task posed as an instruction: its prompt and one answer word per label."""

    task: str  # the built-in task it reads (data/tasks.py)
    template: str  # ``{a}`` (and ``{b}`` for a pair task) filled with the example's texts
    answers: tuple[str, ...]  # per label index (GLUE's order); the answer is " " + the word, then the end of turn


PROMPTED = {
    "sst2-prompted": Prompted("sst2", "Review: {a}\nIs this review positive or negative?\nAnswer:", ("negative", "positive")),
    "qnli-prompted": Prompted("qnli", "Question: {a}\nSentence: {b}\nDoes the sentence answer the question? "
                                      "Answer yes or no.\nAnswer:", ("yes", "no")),
    "mnli-prompted": Prompted("mnli", "Premise: {a}\nHypothesis: {b}\nDoes the premise imply the hypothesis? "
                                      "Answer yes, maybe or no.\nAnswer:", ("yes", "maybe", "no")),
}
GENERATIVE_TASKS = ("gsm8k", "mmlu", *PROMPTED, "instructions")


def gsm8k_prompt(question: str) -> str:
    return f"Question: {question.strip()}\nAnswer:"


def mmlu_prompt(question: str, choices: list[str]) -> str:
    return "\n".join([question.strip()] + [f"{l}. {c.strip()}" for l, c in zip(LETTERS, choices)]) + "\nAnswer:"


@dataclass
class GenerativeTask:
    name: str
    train: list[tuple[str, str, int]]  # (prompt, answer, label)
    dev: list[tuple[str, str, int]]
    scoring: str  # "number" (GSM-8K: final number), "letter" (MMLU: answer-letter likelihood), "exact" (instructions),
    #               "choice" (a prompted task: the likeliest of its answers)
    answers: tuple[str, ...] = ()  # "choice": the answer words, by label

    @property
    def num_labels(self) -> int:
        return 4 if self.scoring == "letter" else len(self.answers) if self.scoring == "choice" else 1


def _prompted(name: str) -> GenerativeTask:
    from .tasks import load_builtin_task

    spec = PROMPTED[name]
    data = load_builtin_task(spec.task)

    def pose(examples):
        return [(spec.template.format(a=a.strip(), b=(b or "").strip()), f" {spec.answers[label]}", label)
                for a, b, label in examples]

    return GenerativeTask(name, pose(data.train), pose(data.dev), "choice", spec.answers)


def _gsm8k(split: str) -> list[tuple[str, str, int]]:
    with gzip.open(FILES / "gsm8k" / f"{split}.jsonl.gz", "rt", encoding="utf-8") as fh:
        rows = [json.loads(line) for line in fh if line.strip()]
    return [(gsm8k_prompt(r["question"]), " " + r["answer"].strip(), 0) for r in rows]


def _mmlu(split: str) -> list[tuple[str, str, int]]:
    text = gzip.decompress((FILES / "mmlu" / f"{split}.csv.gz").read_bytes()).decode("utf-8")
    out = []
    for row in csv.DictReader(io.StringIO(text)):
        letter = row["answer"].strip()
        out.append((mmlu_prompt(row["question"], [row[l] for l in LETTERS]), f" {letter}", LETTERS.index(letter)))
    return out


def _instructions(path: str, prompt_field: str, response_field: str, setting: str = "data_file") -> list[tuple[str, str, int]]:
    from .tasks import DataError, _read_rows

    rows = _read_rows(Path(path), setting)
    for field, what in ((prompt_field, "prompt_field"), (response_field, "response_field")):
        if field not in rows[0]:
            raise DataError(f"{what} {field!r} is not a field of {path}; fields present: {sorted(map(str, rows[0]))}")
    out = [(str(r[prompt_field]), str(r[response_field]), 0) for r in rows
           if r.get(prompt_field) not in (None, "") and r.get(response_field) not in (None, "")]
    if not out:
        raise DataError(f"{path} has no rows with both {prompt_field!r} and {response_field!r}")
    return out


def load_instructions(data_file: str, dev_file: str | None = None, prompt_field: str = "prompt",
                      response_field: str = "response", seed: int = 0) -> GenerativeTask:
    """A user's prompt/response file; without ``dev_file`` a seeded 10% is held out for evaluation."""
    train = _instructions(data_file, prompt_field, response_field)
    if dev_file:
        dev = _instructions(dev_file, prompt_field, response_field, "dev_file")
    else:
        order = rng(seed, "validation", 2).permutation(len(train))
        cut = max(1, round(0.1 * len(train)))
        if cut >= len(train):
            raise ValueError(f"data_file {data_file!r} has too few rows ({len(train)}) to hold out a dev split")
        dev, train = [train[i] for i in order[:cut]], [train[i] for i in order[cut:]]
    return GenerativeTask("instructions", train, dev, "exact")


def load_generative_task(name: str, max_dev_examples: int | None = None, seed: int = 0, **files) -> GenerativeTask:
    """The task's training and reported splits; ``max_dev_examples``: a seeded subset of the reported split;
    ``files``: ``load_instructions``' arguments for ``instructions``."""
    if name == "instructions":
        if not files.get("data_file"):
            raise ValueError("task 'instructions' needs data_file (a JSON/JSONL file of prompt/response pairs)")
        task = load_instructions(**files, seed=seed)
    elif name == "gsm8k":
        task = GenerativeTask("gsm8k", _gsm8k("train"), _gsm8k("test"), "number")
    elif name in PROMPTED:
        task = _prompted(name)
    elif name == "mmlu":
        test = _mmlu("test")
        reported = {prompt for prompt, _, _ in test}
        train = [ex for ex in _mmlu("dev") + _mmlu("val") if ex[0] not in reported]  # the files repeat some questions
        task = GenerativeTask("mmlu", train, test, "letter")
    else:
        raise ValueError(f"generative task must be one of {list(GENERATIVE_TASKS)}, got {name!r}")
    if max_dev_examples is not None and max_dev_examples < len(task.dev):
        keep = sorted(int(i) for i in rng(seed, "validation", 1).choice(len(task.dev), max_dev_examples, replace=False))
        task.dev = [task.dev[i] for i in keep]
    return task
