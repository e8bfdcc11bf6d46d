"""The paper's GLUE protocol in the classification path: length-grouped batches, warm-up ratio and linear schedule,
the frozen base's dropout on/off, the per-task settings (CLI --paper-hparams) and the probe baseline."""

from __future__ import annotations

import json
from collections import Counter

import pytest
import torch
from conftest import VOCAB, tiny_bert
from test_evaluate import WordTokenizer
from torch import nn

from reft import ReftConfig, get_reft_model
from reft.cli import train as train_cmd
from reft.cli.main import build_parser
from reft.cli.main import main as cli_main
from reft.harness.baselines import (
    LoraForSequenceClassification,
    LoraSettings,
    ProbeForSequenceClassification,
    get_lora_model,
)
from reft.harness.classification import (
    BASE_DROPOUT,
    ClassificationCollator,
    base_dropout,
    fit_classifier,
    make_classification_dataset,
)
from reft.harness.evaluate import evaluate_classification
from reft.harness.recipe import TrainSettings, training_arguments
from reft.harness.runs import RunFolderError
from reft.harness.suite import paper_glue_setup, run_task, subsample
from reft.harness.tasks import get_task
from reft.harness.tasks.glue import PAPER_GLUE, PAPER_GLUE_SHARED
from reft.trainer import ReftTrainer


@pytest.fixture(autouse=True)
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _sst2_rows(n: int = 400):
    """``n`` SST-2 training sentences (real lengths: 1–50 words) tokenised by words onto the tiny vocabulary."""
    tok = WordTokenizer(vocab=VOCAB)
    return tok, make_classification_dataset(tok, subsample(get_task("sst2").load("train"), n, seed=0), 128)


def _one_epoch(rows, tok, tmp_path, group_by_length: bool):
    """The batches `Trainer` builds for one epoch: (token slots = width × rows, Counter of the examples)."""
    model = get_reft_model(tiny_bert(), ReftConfig(layers="all", positions="f1", rank=1), num_labels=2)
    settings = TrainSettings(epochs=1, batch_size=32, seed=3, max_length=128, group_by_length=group_by_length)
    trainer = ReftTrainer(model=model, args=training_arguments(settings, tmp_path, progress=False,
                                                               save_strategy="no"),
                          train_dataset=rows, data_collator=ClassificationCollator(tok.pad_token_id))
    slots, seen = 0, Counter()
    for batch in trainer.get_train_dataloader():
        slots += batch["input_ids"].numel()
        for ids, mask, label in zip(batch["input_ids"], batch["attention_mask"], batch["labels"]):
            seen[(tuple(ids[mask.bool()].tolist()), int(label))] += 1
    return slots, seen


def test_length_grouped_batches_pad_less_and_keep_every_example(tmp_path):
    """transformers' LengthGroupedSampler (group_by_length): the same examples each epoch, far fewer pad tokens."""
    tok, rows = _sst2_rows()
    everything = Counter((tuple(r["input_ids"]), r["labels"]) for r in rows)
    random_slots, random_seen = _one_epoch(rows, tok, tmp_path / "r", group_by_length=False)
    grouped_slots, grouped_seen = _one_epoch(rows, tok, tmp_path / "g", group_by_length=True)
    real = sum(len(r["input_ids"]) for r in rows)
    assert random_seen == grouped_seen == everything  # every example once per epoch, either way
    assert real <= grouped_slots < 0.75 * random_slots


def test_fit_classifier_reports_the_padding_it_ran(tmp_path):
    """(transformers sorts mega-batches of min(n // (4·batch), 50) batches: with fewer than 8 batches, nothing.)"""
    tok, rows = _sst2_rows(256)
    examples = subsample(get_task("sst2").load("train"), 256, seed=0)
    spec = get_task("sst2")
    out = {}
    for grouped in (False, True):
        model = get_reft_model(tiny_bert(), ReftConfig(layers="all", positions="f1", rank=1), num_labels=2)
        settings = TrainSettings(epochs=1, lr=1e-2, batch_size=8, max_length=128, seed=0, group_by_length=grouped,
                                 logging_steps=8)
        out[grouped] = fit_classifier(model, tok, spec, examples, None, tmp_path / str(grouped), settings,
                                      trainer_cls=ReftTrainer, progress=False)
    assert out[True]["tokens_per_epoch"] == out[False]["tokens_per_epoch"] == sum(len(r["input_ids"]) for r in rows)
    assert out[True]["tokens_per_epoch"] <= out[True]["padded_tokens_per_epoch"] < out[False][
        "padded_tokens_per_epoch"]
    assert out[True]["steps"] == out[False]["steps"] == 32


def test_warmup_ratio_then_linear_decay_and_no_weight_decay(tmp_path):
    """warmup=0.1 (a ratio, < 1): lr rises linearly over the first 10% of the steps, then falls linearly to 0."""
    model = get_reft_model(tiny_bert(), ReftConfig(layers="all", positions="f1", rank=1), num_labels=2)
    settings = TrainSettings(epochs=1, lr=1e-3, warmup=0.1, weight_decay=0.0, scheduler="linear")
    args = training_arguments(settings, tmp_path, progress=False, save_strategy="no")
    trainer = ReftTrainer(model=model, args=args, train_dataset=[{"input_ids": [2, 5, 1], "labels": 0}],
                          data_collator=ClassificationCollator(0))
    trainer.create_optimizer_and_scheduler(num_training_steps=200)
    assert args.get_warmup_steps(200) == 20
    lrs = []
    for _ in range(201):
        lrs.append(trainer.lr_scheduler.get_last_lr()[0])
        trainer.optimizer.step()
        trainer.lr_scheduler.step()
    assert lrs[0] == 0 and lrs[10] == pytest.approx(5e-4) and lrs[20] == pytest.approx(1e-3)
    assert lrs[110] == pytest.approx(5e-4) and lrs[200] == pytest.approx(0.0, abs=1e-12)
    assert all(g["weight_decay"] == 0.0 for g in trainer.optimizer.param_groups)


# ---- the frozen base's dropout -----------------------------------------------------------------------------------
def _train_mode_logits(model, ids):
    model.train()
    return [model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits for _ in range(2)]


def test_base_dropout_off_makes_the_base_deterministic_and_keeps_the_head_and_edit_dropout():
    model = get_reft_model(tiny_bert(), ReftConfig(layers="all", positions="f1", rank=1, dropout=0.3),
                           num_labels=2)
    ids = torch.randint(3, VOCAB, (4, 9), generator=torch.Generator().manual_seed(0))
    base_ps = [m.p for m in model.model.modules() if isinstance(m, nn.Dropout)]
    assert base_ps and all(p > 0 for p in base_ps)  # BERT's hidden and attention dropout (0.1)
    model.head.dropout.p = 0.0
    for iv in model.interventions.values():
        iv.dropout.p = 0.0
    a, b = _train_mode_logits(model, ids)
    assert not torch.equal(a, b)  # on: the base's dropout makes two forwards differ
    with base_dropout(model, False) as switched:
        assert switched == len(base_ps)
        a, b = _train_mode_logits(model, ids)
        assert torch.equal(a, b)
        model.head.dropout.p = 0.5  # the head is not part of the base: its dropout still acts
        a, b = _train_mode_logits(model, ids)
        assert not torch.equal(a, b)
        model.head.dropout.p = 0.0
        next(iter(model.interventions.values())).dropout.p = 0.5  # nor are the interventions
        a, b = _train_mode_logits(model, ids)
        assert not torch.equal(a, b)
    assert [m.p for m in model.model.modules() if isinstance(m, nn.Dropout)] == base_ps  # restored
    with base_dropout(model, True) as switched:
        assert switched == 0


def test_base_dropout_off_keeps_lora_dropout():
    classifier = LoraForSequenceClassification(get_lora_model(tiny_bert(), LoraSettings(rank=2, dropout=0.2)), 2)
    with base_dropout(classifier, False) as switched:
        lora = [m.p for n, m in classifier.model.named_modules() if isinstance(m, nn.Dropout) and "lora_" in n]
        others = [m.p for n, m in classifier.model.named_modules() if isinstance(m, nn.Dropout) and "lora_" not in n]
        assert lora and set(lora) == {0.2} and set(others) == {0.0} and switched == len(others)
    with pytest.raises(ValueError, match="base model"):
        with base_dropout(nn.Linear(2, 2), False):
            pass


def test_run_task_records_base_dropout_and_refuses_another_runs_folder(tmp_path):
    tok = WordTokenizer(vocab=VOCAB)
    settings = TrainSettings(epochs=1, lr=1e-2, batch_size=8, max_length=32, group_by_length=True)
    result = run_task(tiny_bert(), tok, "rte", "loreft", tmp_path / "on", settings=settings,
                      reft_config=ReftConfig(layers="all", positions="f3", rank=1), train_limit=16, dev_limit=8,
                      eval_limit=8, progress=False, base_dropout=True)
    assert result["base_dropout"] is True and result["train"]["base_dropout"] is True
    assert json.loads((tmp_path / "on" / "reft_run.json").read_text())["base_dropout"] is True
    with pytest.raises(RunFolderError, match="base_dropout"):  # the same folder for the other choice: another run
        run_task(tiny_bert(), tok, "rte", "loreft", tmp_path / "on", settings=settings,
                 reft_config=ReftConfig(layers="all", positions="f3", rank=1), train_limit=16, dev_limit=8,
                 evaluate=False, progress=False, base_dropout=False)
    default = run_task(tiny_bert(), tok, "rte", "loreft", tmp_path / "default", settings=settings,
                       reft_config=ReftConfig(layers="all", positions="f3", rank=1), train_limit=16, dev_limit=8,
                       evaluate=False, progress=False)
    assert default["base_dropout"] is BASE_DROPOUT


def test_cli_and_harness_agree_on_the_base_dropout_default():
    assert (train_cmd.BASE_DROPOUT_DEFAULT == "on") is BASE_DROPOUT is False


# ---- the paper's per-task settings -------------------------------------------------------------------------------
def test_paper_table_covers_the_tasks_with_train_data_and_qnli():
    assert set(PAPER_GLUE) == {"sst2", "mrpc", "cola", "rte", "stsb", "qnli"}
    assert PAPER_GLUE["cola"].warmup_ratio == 5e-3 and PAPER_GLUE["cola"].dropout == 0.2
    assert {hp.positions for t, hp in PAPER_GLUE.items() if t != "qnli"} == {"f3"} and PAPER_GLUE["qnli"].positions \
        == "f11"


@pytest.mark.parametrize("method", ["loreft", "direft", "lora", "probe"])
def test_paper_glue_setup(method):
    settings, config, lora = paper_glue_setup("sst2", method, seed=43, epochs=12)
    assert (settings.lr, settings.warmup, settings.batch_size, settings.weight_decay) == (6e-4, 0.1, 32, 0.0)
    assert settings.group_by_length and settings.scheduler == "linear" and settings.max_length == 256
    assert settings.seed == 43 and settings.epochs == 12
    if method in ("loreft", "direft"):
        assert (config.positions, config.rank, config.tied, config.dropout) == ("f3", 1, False, 0.1)
        assert config.position_rule == "half"  # pyreft's ⌊n/2⌋ rule, as the paper's runs edited
        # R held as pyreft holds it; DiReFT has no R
        assert config.rotation == ("householder" if method == "loreft" else "qr")
        assert config.intervention == method and config.layers == "all" and lora is None
    elif method == "lora":
        assert config is None and (lora.rank, lora.alpha, lora.dropout) == (8, 16, 0.1)
    else:
        assert config is None and lora is None
    assert paper_glue_setup("mrpc", method, lr=1e-3)[0].lr == 1e-3
    with pytest.raises(ValueError, match="no paper settings"):
        paper_glue_setup("boolq", method)


def _parsed(argv):
    args = build_parser().parse_args(["train", *argv])
    train_cmd._check_args(args)
    method = args.method or args.intervention or "loreft"
    train_cmd._fill_defaults(args, method)
    return args


def test_cli_paper_hparams_fill_what_is_not_given():
    args = _parsed(["--task", "cola", "--model", "minilm", "--paper-hparams", "--out", "o"])
    hp = PAPER_GLUE["cola"]
    assert (args.lr, args.dropout, args.warmup_ratio, args.positions) == (hp.lr, hp.dropout, hp.warmup_ratio, "f3")
    assert (args.rank, args.layers, args.tied, args.batch_size, args.max_length, args.weight_decay) == (
        PAPER_GLUE_SHARED["rank"], "all", False, 32, 256, 0.0)
    assert args.group_by_length is True and args.base_dropout == train_cmd.BASE_DROPOUT_DEFAULT and args.epochs == 10
    assert (args.position_rule, args.rotation) == ("half", "householder")
    config = train_cmd._reft_config(args, "loreft", ReftConfig, glue=True)
    assert (config.position_rule, config.rotation) == ("half", "householder")
    given = _parsed(["--task", "cola", "--model", "minilm", "--paper-hparams", "--lr", "1e-3", "--positions", "f1",
                     "--batch-size", "8", "--warmup-ratio", "0", "--no-group-by-length", "--base-dropout", "on",
                     "--position-rule", "split", "--rotation", "qr", "--out", "o"])
    assert (given.lr, given.positions, given.batch_size, given.warmup_ratio) == (1e-3, "f1", 8, 0.0)
    assert given.group_by_length is False and given.base_dropout == "on" and given.dropout == hp.dropout
    assert (given.position_rule, given.rotation) == ("split", "qr")
    lora = _parsed(["--task", "cola", "--model", "minilm", "--paper-hparams", "--method", "lora", "--out", "o"])
    assert lora.lora_dropout == hp.dropout
    plain = _parsed(["--task", "cola", "--model", "minilm", "--out", "o"])
    assert (plain.rank, plain.batch_size, plain.warmup_ratio, plain.dropout, plain.tied, plain.epochs) == (
        4, 8, 0.0, 0.0, True, 3.0)
    assert (plain.position_rule, plain.rotation) == ("split", "qr")
    assert plain.group_by_length is True  # GLUE tasks batch by length
    data = _parsed(["--data", "x.jsonl", "--out", "o"])
    assert data.group_by_length is False and data.max_length == 512


def test_cli_glue_flags_are_refused_where_they_do_not_apply(capsys):
    assert cli_main(["train", "--data", "x.jsonl", "--paper-hparams", "--out", "o"]) == 2
    assert "--paper-hparams only apply to --task runs" in capsys.readouterr().err
    assert cli_main(["train", "--data", "x.jsonl", "--base-dropout", "off", "--out", "o"]) == 2
    assert "--base-dropout only apply" in capsys.readouterr().err
    assert cli_main(["train", "--task", "boolq", "--paper-hparams", "--out", "o"]) == 2
    assert "not a GLUE task" in capsys.readouterr().err
    assert cli_main(["train", "--task", "boolq", "--base-dropout", "off", "--out", "o"]) == 2
    assert "GLUE (classification) tasks only" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli_main(["train", "--task", "sst2", "--warmup-ratio", "1.5", "--out", "o"])
    assert "--warmup-ratio" in capsys.readouterr().err


def _bert_tokenizer():
    """A saveable fast tokenizer with BERT's pair template: [CLS] a [SEP] b [SEP], token types 0/1, one id per byte."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[SEP]", "[CLS]", "[UNK]"]
    vocab = {t: i for i, t in enumerate([*specials, *sorted(pre_tokenizers.ByteLevel.alphabet())])}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
                                                        special_tokens=[("[CLS]", 2), ("[SEP]", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="[PAD]", sep_token="[SEP]", cls_token="[CLS]",
                                   unk_token="[UNK]", model_input_names=["input_ids", "token_type_ids",
                                                                         "attention_mask"])


def test_cli_glue_paper_hparams_end_to_end(tmp_path, capsys):
    """``reft train --task mrpc --paper-hparams`` on a tiny saved BERT: the paper's settings reach the run."""
    from transformers import BertConfig, BertModel

    tok = _bert_tokenizer()
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=300, pad_token_id=0),
              add_pooling_layer=False).save_pretrained(tmp_path / "bert")
    tok.save_pretrained(tmp_path / "bert")
    out = tmp_path / "run"
    code = cli_main(["train", "--task", "mrpc", "--model", str(tmp_path / "bert"), "--paper-hparams", "--epochs", "1",
                     "--limit", "12", "--eval-limit", "6", "--max-length", "64", "--base-dropout", "on",
                     "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    result = json.loads((out / "results.json").read_text())
    hp = PAPER_GLUE["mrpc"]
    assert result["settings"]["lr"] == hp.lr and result["settings"]["warmup"] == hp.warmup_ratio
    assert result["settings"]["batch_size"] == 32 and result["settings"]["group_by_length"] is True
    assert result["config"]["positions"] == "f3" and result["config"]["rank"] == 1
    assert result["config"]["dropout"] == hp.dropout and result["base_dropout"] is True
    assert result["train"]["steps"] == 1 and result["eval"]["n"] == 6


# ---- the probe ---------------------------------------------------------------------------------------------------
def test_cli_eval_scores_a_probe_folder_as_training_did(tmp_path, capsys):
    """'reft eval --probe' loads what 'reft train --method probe' saved and scores the same test half the same."""
    from transformers import BertConfig, BertModel

    tok = _bert_tokenizer()
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=300, pad_token_id=0),
              add_pooling_layer=False).save_pretrained(tmp_path / "bert")
    tok.save_pretrained(tmp_path / "bert")
    bert, out = str(tmp_path / "bert"), tmp_path / "run"
    assert cli_main(["train", "--task", "mrpc", "--model", bert, "--method", "probe", "--epochs", "1", "--limit", "12",
                     "--eval-limit", "6", "--max-length", "64", "--out", str(out)]) == 0, capsys.readouterr().err
    trained = json.loads((out / "results.json").read_text())["eval"]["metrics"]
    scored = tmp_path / "eval.json"
    assert cli_main(["eval", "--task", "mrpc", "--model", bert, "--probe", str(out / "adapter"), "--limit", "6",
                     "--max-length", "64", "--out", str(scored)]) == 0, capsys.readouterr().err
    result = json.loads(scored.read_text())
    assert result["metrics"] == trained and result["probe"] == str(out / "adapter")
    assert cli_main(["eval", "--task", "boolq", "--model", bert, "--probe", str(out / "adapter")]) == 2
    assert "--probe is a classification head: boolq is a generation task" in capsys.readouterr().err


def test_probe_trains_the_head_only_and_reloads(tmp_path):
    tok = WordTokenizer(vocab=VOCAB)
    encoder = tiny_bert()
    before = {n: p.detach().clone() for n, p in encoder.named_parameters()}
    settings = TrainSettings(epochs=2, lr=1e-2, batch_size=8, max_length=32, group_by_length=True)
    result = run_task(encoder, tok, "mrpc", "probe", tmp_path / "p", settings=settings, train_limit=16, dev_limit=8,
                      eval_limit=8, progress=False)
    d = 32
    assert result["parameters"]["adapter"] == 0 and result["parameters"]["trainable"] == d * d + d + 2 * d + 2
    assert all(torch.equal(before[n], p) for n, p in encoder.named_parameters())  # the encoder never moved
    again = ProbeForSequenceClassification.from_pretrained(tiny_bert(), tmp_path / "p" / "adapter")
    rerun = evaluate_classification(again, tok, "mrpc", "test", seed=settings.seed, limit=8, max_length=32,
                                    progress=False)
    assert rerun["metrics"] == result["eval"]["metrics"]
    with pytest.raises(ValueError, match="classification baseline"):
        run_task(tiny_bert(), tok, "boolq", "probe", tmp_path / "b", settings=settings, train_limit=4,
                 progress=False)


def _padded(rows: list[list[int]], width: int) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.tensor([r + [0] * (width - len(r)) for r in rows])
    return ids, (ids != 0).long()


def test_probe_feature_cache_skips_the_encoder_and_equals_recomputing():
    """With the frozen encoder deterministic (dropout off), a row's h_CLS is computed once: later batches holding
    the same rows (in another order and padding width) run the head alone and give the recomputed logits up to
    fp32 rounding (the encoder's padded batch differs); with the encoder's dropout active nothing is cached."""
    torch.manual_seed(0)
    rows = [torch.randint(1, VOCAB, (n,)).tolist() for n in (5, 9, 3, 7)]
    probe = ProbeForSequenceClassification(tiny_bert(), 2, head_dropout=0.0)
    calls = []  # the encoder's h_CLS per call
    probe.model.register_forward_hook(lambda _m, _a, out: calls.append(out.last_hidden_state[:, 0].detach()))
    probe.train()
    with base_dropout(probe, active=False):
        ids, mask = _padded(rows, 9)
        first = probe(input_ids=ids, attention_mask=mask).logits
        assert len(calls) == 1 and len(probe.feature_cache) == 4
        order = [2, 0, 3, 1]
        ids2, mask2 = _padded([rows[i] for i in order], 12)
        cached = probe(input_ids=ids2, attention_mask=mask2).logits
        assert len(calls) == 1  # the encoder did not run
        stored = probe._features(ids2, mask2, None)
        assert len(calls) == 1
        torch.testing.assert_close(stored, calls[0][order], rtol=0, atol=0)  # the stored rows themselves
        # the head on a permuted batch: exact up to rounding (a BLAS kernel may block rows differently)
        torch.testing.assert_close(cached, first[order], rtol=1e-6, atol=1e-6)
        probe.feature_cache = None
        recomputed = probe(input_ids=ids2, attention_mask=mask2).logits
        assert len(calls) == 2
        torch.testing.assert_close(cached, recomputed, rtol=1e-5, atol=1e-6)  # fp32 rounding of another batch shape
    probe.feature_cache = {}
    probe(input_ids=ids, attention_mask=mask)  # dropout active (p = 0.1, train mode): random features
    assert len(calls) == 3 and probe.feature_cache == {}
