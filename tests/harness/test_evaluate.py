"""Task-suite evaluation, the LoRA baseline, GLUE training and the eval/train CLI, on tiny random models."""

from __future__ import annotations

import json
import re
from dataclasses import replace

import pytest
import torch
from conftest import VOCAB, tiny_bert, tiny_llama
from torch import nn
from transformers.modeling_outputs import SequenceClassifierOutput

from reft import ReftConfig, get_reft_model
from reft.cli.main import main as cli_main
from reft.harness.baselines import (
    LoraForSequenceClassification,
    LoraSettings,
    causal_lm_loss,
    count_parameters,
    get_lora_model,
    load_lora,
    lora_parameters,
)
from reft.harness.classification import (
    ClassificationCollator,
    SelectOnDev,
    fit_classifier,
    make_classification_dataset,
)
from reft.harness.evaluate import evaluate_classification, evaluate_generation, write_results
from reft.harness.recipe import TrainSettings
from reft.harness.suite import run_task, subsample
from reft.harness.tasks import TaskSpec, get_task
from reft.harness.tasks.glue import glue_metric


class WordTokenizer:
    """Whitespace words → ids (pad 0, eos/sep 1, cls 2). With ``vocab`` set, ids wrap into ``3 … vocab−1``."""

    pad_token_id, eos_token_id, bos_token_id, chat_template = 0, 1, None, None
    model_input_names = ["input_ids"]

    def __init__(self, vocab: int | None = None) -> None:
        self.vocab = vocab
        self.ids: dict[str, int] = {}
        self.words: dict[int, str] = {}

    def _id(self, word: str) -> int:
        if word not in self.ids:
            n = 3 + len(self.ids)
            self.ids[word] = n if self.vocab is None else 3 + (n - 3) % (self.vocab - 3)
            self.words.setdefault(self.ids[word], word)
        return self.ids[word]

    def encode_words(self, text: str) -> list[int]:
        return [self._id(w) for w in text.split()]

    def __call__(self, text, text_pair=None, add_special_tokens=True, truncation=False, max_length=None, **_):
        a = self.encode_words(text)
        if not add_special_tokens:
            return {"input_ids": a}
        ids, types = [2] + a + [1], [0] * (len(a) + 2)
        if text_pair is not None:
            b = self.encode_words(text_pair)
            ids, types = ids + b + [1], types + [1] * (len(b) + 1)
        if truncation and max_length is not None:
            ids, types = ids[:max_length], types[:max_length]
        return {"input_ids": ids, "token_type_ids": types}

    def decode(self, ids, skip_special_tokens=True) -> str:
        return " ".join(self.words[int(i)] for i in ids if int(i) >= 3)


class AnswerStub(nn.Module):
    """A 'model' whose generate answers the i-th distinct prompt with ``answers(prompt_text)``."""

    def __init__(self, tokenizer: WordTokenizer, answer) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))
        self.tokenizer, self.answer = tokenizer, answer

    def generate(self, input_ids, attention_mask, max_new_tokens, **kwargs):
        rows = []
        for ids, mask in zip(input_ids, attention_mask):
            prompt = self.tokenizer.decode(ids[mask.bool()])
            new = self.tokenizer.encode_words(self.answer(prompt))[:max_new_tokens] + [1]
            rows.append(ids.tolist() + new)
        width = max(len(r) for r in rows)
        return torch.tensor([r + [0] * (width - len(r)) for r in rows])


# ---- generation ------------------------------------------------------------------------------------------------
def test_generation_scoring_path_with_stub_answers():
    """Correct on even examples, wrong on odd ones: accuracy 0.5 and the per-record pattern follow the scorer."""
    task = get_task("boolq")
    examples = task.load("test", limit=4)
    tok = WordTokenizer()
    questions = [" ".join(task.format(ex)[0].split()) for ex in examples]

    def answer(prompt: str) -> str:
        i = questions.index(prompt)
        gold = examples[i]["answer"]
        flip = {"true": "false", "false": "true"}
        return f"the correct answer is {gold if i % 2 == 0 else flip[gold]}"

    result = evaluate_generation(AnswerStub(tok, answer), tok, task, "test", limit=4, batch_size=3,
                                 max_new_tokens=8, progress=False)
    assert result["n"] == 4 and result["accuracy"] == 0.5 and result["correct"] == 2
    assert [r["correct"] for r in result["records"]] == [1.0, 0.0, 1.0, 0.0]
    assert [r["answer"] for r in result["records"]] == [ex["answer"] for ex in examples]
    assert result["records"][0]["prediction"] == f"the correct answer is {examples[0]['answer']}"


def test_generation_scoring_math_numbers():
    task = get_task("svamp")
    examples = task.load("test", limit=4)
    tok = WordTokenizer()
    golds = {" ".join(task.format(ex)[0].split()): ex["answer"] for ex in examples}
    stub = AnswerStub(tok, lambda p: f"first 3 + 4 = 7 . The answer is {golds[p]}")
    result = evaluate_generation(stub, tok, task, limit=4, progress=False)
    assert result["accuracy"] == 1.0 and result["max_new_tokens"] == 256


def test_generation_real_tiny_model_end_to_end(tmp_path):
    task = get_task("arc_e")
    tok = WordTokenizer(vocab=VOCAB)
    reft_model = get_reft_model(tiny_llama(), ReftConfig(layers="0;2", positions="f2+l2", rank=2)).eval()
    result = evaluate_generation(reft_model, tok, task, "test", limit=4, batch_size=2, max_new_tokens=4,
                                 progress=False)
    examples = task.load("test", limit=4)
    rescored = [task.score(r["prediction"], ex) for r, ex in zip(result["records"], examples)]
    assert result["n"] == 4 and result["accuracy"] == sum(rescored) / 4
    assert all(len(r["prediction"].split()) <= 4 for r in result["records"])
    path = write_results(tmp_path / "sub" / "res.json", result)
    assert json.loads(path.read_text())["records"][3]["prediction"] == result["records"][3]["prediction"]


def test_alpaca_eval_outputs_written_without_score(tmp_path):
    tok = WordTokenizer()
    result = evaluate_generation(AnswerStub(tok, lambda p: "an answer"), tok, "alpaca_eval", limit=2, progress=False)
    assert result["accuracy"] is None and "correct" not in result["records"][0]
    write_results(tmp_path / "ae.json", result, generator="tiny")
    rows = json.loads((tmp_path / "ae.alpaca_eval_outputs.json").read_text())
    instructions = [ex["instruction"] for ex in get_task("alpaca_eval").load("test", limit=2)]
    assert [r["instruction"] for r in rows] == instructions
    assert all(r["output"] == "an answer" and r["generator"] == "tiny" for r in rows)


def test_classification_task_refused_by_generation():
    with pytest.raises(ValueError, match="evaluate_classification"):
        evaluate_generation(None, WordTokenizer(), "sst2")


# ---- classification --------------------------------------------------------------------------------------------
class ConstantClassifier(nn.Module):
    def __init__(self, logits: list[float]) -> None:
        super().__init__()
        self.logits = nn.Parameter(torch.tensor(logits))
        self.num_labels = len(logits)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, labels=None):
        return SequenceClassifierOutput(logits=self.logits.expand(input_ids.shape[0], -1))


def test_classification_metrics_of_a_constant_predictor():
    """Always 'acceptable' on CoLA: accuracy = share of label 1, MCC = 0 (undefined → 0)."""
    examples = get_task("cola").load("test", seed=3, limit=40)
    result = evaluate_classification(ConstantClassifier([0.0, 1.0]), WordTokenizer(), "cola", "test", seed=3,
                                     limit=40, progress=False)
    share = sum(ex["label"] == 1 for ex in examples) / 40
    assert result["metrics"] == {"mcc": 0.0, "accuracy": share} and result["score"] == 0.0
    assert result["main_metric"] == "mcc" and result["n"] == 40


@pytest.mark.parametrize("task_name", ["rte", "stsb"])
def test_classification_eval_matches_one_by_one_forward(task_name):
    """Batched (length-sorted, padded) predictions = single-example forwards; metrics = the task metric on them."""
    task = get_task(task_name)
    tok = WordTokenizer(vocab=VOCAB)
    model = get_reft_model(tiny_bert(), ReftConfig(layers="all", positions="f1", rank=1), num_labels=task.num_labels)
    torch.manual_seed(1)
    for p in model.interventions.parameters():
        nn.init.normal_(p, std=0.5)
    model.eval()
    examples = task.load("dev", seed=0, limit=6)
    result = evaluate_classification(model, tok, task, "dev", seed=0, limit=6, batch_size=4, max_length=48,
                                     progress=False)
    singles = []
    with torch.no_grad():
        for row in make_classification_dataset(tok, examples, 48, with_labels=False):
            batch = {k: torch.tensor([v]) for k, v in row.items()}
            logits = model(**batch).logits[0]
            singles.append(float(logits[0]) if task.num_labels == 1 else int(logits.argmax()))
    preds = [r["prediction"] for r in result["records"]]
    assert preds == pytest.approx(singles, abs=1e-5)
    assert result["metrics"] == pytest.approx(glue_metric(task_name, preds, [ex["label"] for ex in examples]))


def test_collator_pairs_and_regression_labels():
    tok = WordTokenizer()
    rows = make_classification_dataset(tok, [{"text": ("a b", "c"), "label": 0.5}, {"text": ("d", "e f g"),
                                                                                      "label": 4.0}], 128)
    assert rows[0]["token_type_ids"] == [0, 0, 0, 0, 1, 1]
    batch = ClassificationCollator(0, regression=True)(rows)
    assert batch["labels"].dtype == torch.float32 and batch["input_ids"].shape == (2, 7)
    assert batch["attention_mask"].tolist() == [[1] * 6 + [0], [1] * 7]
    assert ClassificationCollator(0)([{"input_ids": [2, 1], "labels": 1}])["labels"].dtype == torch.long
    with pytest.raises(ValueError, match="pair"):
        make_classification_dataset(tok, [{"text": ("a", "b", "c"), "label": 0}])


def _toy_task(n_train=24, n_dev=12) -> tuple[TaskSpec, list, list]:
    def make(n, offset):
        return [{"text": ("good a b" if (i + offset) % 2 else "bad c d"), "label": (i + offset) % 2}
                for i in range(n)]

    train, dev = make(n_train, 0), make(n_dev, 1)
    spec = replace(get_task("sst2"), name="toy", load=lambda split, limit=None, seed=0: train if split == "train"
                   else dev)
    return spec, train, dev


def test_fit_classifier_selects_on_dev_each_epoch(tmp_path):
    spec, train, dev = _toy_task()
    tok = WordTokenizer(vocab=VOCAB)
    model = get_reft_model(tiny_bert(), ReftConfig(layers="all", positions="f1", rank=1), num_labels=2)
    from reft.trainer import ReftTrainer

    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    info = fit_classifier(model, tok, spec, train, dev, tmp_path, TrainSettings(epochs=3, lr=1e-2, batch_size=4,
                                                                                 max_length=16, logging_steps=1),
                          trainer_cls=ReftTrainer, progress=False)
    assert [h["epoch"] for h in info["dev_history"]] == [1.0, 2.0, 3.0]
    assert info["best_dev"] == max(h["dev"] for h in info["dev_history"]) and info["examples"] == len(train)
    final = evaluate_classification(model, tok, spec, "dev", examples=dev, progress=False)["score"]
    assert final == info["best_dev"]
    assert any(not torch.equal(before[n], p) for n, p in model.named_parameters() if p.requires_grad)
    assert not model.training


def test_select_on_dev_restores_the_best_epoch():
    model = nn.Linear(2, 1)
    scores = iter([0.3, 0.9, 0.5])
    selector = SelectOnDev(lambda m: next(scores))
    state = type("S", (), {})()
    snapshots = []
    for epoch in (1, 2, 3):
        with torch.no_grad():
            model.weight.fill_(float(epoch))
        snapshots.append(model.weight.detach().clone())
        state.epoch = float(epoch)
        selector.on_epoch_end(None, state, None, model=model)
    assert selector.best == 0.9 and selector.best_epoch == 2.0
    selector.restore_best(model)
    assert torch.equal(model.weight, snapshots[1])
    assert [h["dev"] for h in selector.history] == [0.3, 0.9, 0.5]


# ---- LoRA baseline -------------------------------------------------------------------------------------------
def test_lora_parameter_count_llama_formula():
    model = tiny_llama(layers=4, hidden=32)  # 4 heads of 8, 2 key/value heads → v_proj: 32 → 16
    peft_model = get_lora_model(model, LoraSettings(rank=4))
    r, d, d_v, layers = 4, 32, 16, 4
    assert count_parameters(peft_model) == lora_parameters(peft_model) == layers * r * ((d + d) + (d + d_v))


def test_lora_parameter_count_bert_formula_and_head():
    r, d, layers = 8, 32, 2
    classifier = LoraForSequenceClassification(get_lora_model(tiny_bert(layers), LoraSettings(rank=r)), 2)
    assert lora_parameters(classifier) == layers * 2 * r * (d + d)  # query + value, both d → d
    head = d * d + d + d * 2 + 2
    assert count_parameters(classifier) == layers * 2 * r * (d + d) + head


def test_lora_unknown_architecture_error():
    class Odd(nn.Module):
        config = type("C", (), {"model_type": "odd"})()

    with pytest.raises(ValueError, match="target_modules"):
        get_lora_model(Odd())


def test_lora_causal_loss_equals_full_logits_loss():
    peft_model = get_lora_model(tiny_llama(), LoraSettings(rank=4, dropout=0.0))
    torch.manual_seed(0)
    for n, p in peft_model.named_parameters():
        if "lora_B" in n:
            nn.init.normal_(p, std=0.1)
    ids = torch.randint(3, VOCAB, (3, 9))
    mask = torch.ones_like(ids)
    mask[2, 7:] = 0
    labels = ids.clone()
    labels[:, :5] = -100
    labels[2, 7:] = -100
    sparse = causal_lm_loss(peft_model, ids, mask, labels).loss
    full = peft_model(input_ids=ids, attention_mask=mask, labels=labels).loss
    assert torch.allclose(sparse, full, atol=1e-5)


def test_run_task_lora_and_reft_causal_end_to_end(tmp_path):
    tok = WordTokenizer(vocab=VOCAB)
    settings = TrainSettings(epochs=1, lr=1e-2, batch_size=4, max_length=200, logging_steps=1)
    for method in ("lora", "loreft"):
        result = run_task(tiny_llama(), tok, "boolq", method, tmp_path / method, settings=settings,
                          reft_config=ReftConfig(layers="1;3", positions="f2+l2", rank=2), train_limit=8,
                          eval_limit=3, max_new_tokens=3, progress=False)
        assert result["train_examples"] == 8 and result["eval"]["n"] == 3
        assert json.loads((tmp_path / method / "results.json").read_text())["method"] == method
    assert result["parameters"]["adapter"] == 2 * (2 * 32 * 2 + 2)  # 2 LoReFT layers of 2·d·r + r
    lora_dir = tmp_path / "lora" / "adapter"
    reloaded = load_lora(tiny_llama(), lora_dir)
    assert lora_parameters(reloaded) == 4 * 8 * ((32 + 32) + (32 + 16))  # 4 layers, r = 8, q: 32→32, v: 32→16


def test_run_task_glue_lora_roundtrip(tmp_path):
    tok = WordTokenizer(vocab=VOCAB)
    settings = TrainSettings(epochs=1, lr=1e-2, batch_size=8, max_length=32, logging_steps=1)
    result = run_task(tiny_bert(), tok, "mrpc", "lora", tmp_path / "m", settings=settings, train_limit=16,
                      dev_limit=8, eval_limit=8, progress=False)
    assert result["dev_examples"] == 8 and result["eval"]["n"] == 8
    assert set(result["eval"]["metrics"]) == {"f1", "accuracy"}
    again = load_lora(tiny_bert(), tmp_path / "m" / "adapter")
    rerun = evaluate_classification(again, tok, "mrpc", "test", seed=settings.seed, limit=8, max_length=32,
                                    progress=False)
    assert rerun["metrics"] == result["eval"]["metrics"]


def test_subsample_is_seeded_ordered_and_sized():
    items = [{"i": i} for i in range(50)]
    a, b = subsample(items, 10, seed=3), subsample(items, 10, seed=3)
    assert a == b and len(a) == 10 and [x["i"] for x in a] == sorted(x["i"] for x in a)
    assert subsample(items, 10, seed=4) != a and subsample(items, None) == items
    with pytest.raises(ValueError):
        subsample(items, 0)


# ---- CLI --------------------------------------------------------------------------------------------------------
def test_cli_eval_help_lists_examples(capsys):
    with pytest.raises(SystemExit) as e:
        cli_main(["eval", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "--lora" in out and "--adapter" in out and re.search(r"examples:\n\s+reft eval --task", out)


def test_cli_train_needs_exactly_one_of_data_and_task(capsys):
    with pytest.raises(SystemExit) as e:
        cli_main(["train", "--data", "x.jsonl", "--task", "boolq", "--out", "o"])
    assert e.value.code == 2 and "not allowed with argument" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        cli_main(["train", "--out", "o"])
    assert e.value.code == 2 and "one of the arguments --data --task is required" in capsys.readouterr().err


def test_cli_train_option_conflicts_are_clear_errors(capsys):
    assert cli_main(["train", "--data", "x.jsonl", "--limit", "5", "--out", "o"]) == 2
    assert "--limit only apply to --task runs" in capsys.readouterr().err
    assert cli_main(["train", "--task", "boolq", "--method", "lora", "--intervention", "direft", "--out", "o"]) == 2
    assert "contradicts" in capsys.readouterr().err
    assert cli_main(["train", "--task", "boolq", "--resume", "--out", "o"]) == 2
    assert "--data runs only" in capsys.readouterr().err


def test_cli_eval_glue_without_adapter_is_an_error(capsys):
    assert cli_main(["eval", "--task", "sst2", "--model", "minilm"]) == 2
    assert "--adapter, --lora or --probe" in capsys.readouterr().err
    assert cli_main(["eval", "--task", "boolq", "--split", "dev"]) == 2
    assert "no split 'dev'" in capsys.readouterr().err
