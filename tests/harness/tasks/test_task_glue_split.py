"""GLUE loaders: the seeded dev/test division of the GLUE dev file, labels, metrics wiring."""

from __future__ import annotations

import pytest

from reft.harness.tasks import get_task
from reft.harness.tasks.glue import split_dev_indices

# GLUE dev / train row counts from MANIFEST.md
DEV_ROWS = {"sst2": 872, "cola": 1043, "mrpc": 408, "stsb": 1500, "rte": 277, "qnli": 5463}
TRAIN_ROWS = {"sst2": 67349, "cola": 8551, "mrpc": 3668, "stsb": 5749, "rte": 2490}
PAIR_TASKS = {"mrpc", "stsb", "rte", "qnli"}


@pytest.mark.needs_data
@pytest.mark.parametrize("task", sorted(DEV_ROWS))
def test_dev_test_halves_partition_the_dev_file(task: str) -> None:
    spec = get_task(task)
    dev, test = spec.load("dev", seed=3), spec.load("test", seed=3)
    dev_rows, test_rows = {e["idx"] for e in dev}, {e["idx"] for e in test}
    assert not dev_rows & test_rows
    assert dev_rows | test_rows == set(range(DEV_ROWS[task]))
    assert len(dev) == DEV_ROWS[task] // 2
    assert spec.load("dev", seed=3) == dev  # deterministic
    assert {e["idx"] for e in spec.load("dev", seed=4)} != dev_rows  # seed matters


@pytest.mark.parametrize("task", sorted(DEV_ROWS))
def test_examples_text_and_labels(task: str) -> None:
    spec = get_task(task)
    for example in spec.load("dev", seed=0) + spec.load("test", seed=0):
        if task in PAIR_TASKS:
            assert isinstance(example["text"], tuple) and len(example["text"]) == 2
        else:
            assert isinstance(example["text"], str)
        if task == "stsb":
            assert isinstance(example["label"], float) and 0.0 <= example["label"] <= 5.0
        else:
            assert example["label"] in (0, 1)
    assert spec.num_labels == (1 if task == "stsb" else 2)


@pytest.mark.needs_data
@pytest.mark.parametrize("task", sorted(TRAIN_ROWS))
def test_train_is_the_train_file(task: str) -> None:
    train = get_task(task).load("train")
    assert len(train) == TRAIN_ROWS[task]
    assert [e["idx"] for e in train[:3]] == [0, 1, 2]


def test_qnli_has_no_train_split() -> None:
    with pytest.raises(ValueError, match="QNLI's train split"):
        get_task("qnli").load("train")
    assert get_task("qnli").splits == ("dev", "test")


def test_rte_string_labels_are_mapped() -> None:
    labels = {e["label"] for e in get_task("rte").load("train", limit=50)}
    assert labels == {0, 1}


def test_split_indices_small() -> None:
    dev, test = split_dev_indices(7, seed=0)
    assert len(dev) == 3 and len(test) == 4 and sorted(dev + test) == list(range(7))
    assert split_dev_indices(7, seed=0) == (dev, test)


def test_metric_wiring() -> None:
    assert get_task("sst2").metric([1, 0, 1], [1, 1, 1]) == {"accuracy": pytest.approx(2 / 3)}
    assert set(get_task("cola").metric([1, 0], [1, 0])) == {"mcc", "accuracy"}
    mrpc = get_task("mrpc").metric([1, 1, 0, 0], [1, 0, 1, 0])
    assert mrpc == {"f1": pytest.approx(0.5), "accuracy": pytest.approx(0.5)}
    stsb = get_task("stsb").metric([0.1, 2.0, 3.5, 4.0], [0.0, 2.5, 3.0, 5.0])
    assert stsb["pearson_spearman_mean"] == pytest.approx((stsb["pearson"] + stsb["spearman"]) / 2)
    assert stsb["spearman"] == pytest.approx(1.0)
    for task in DEV_ROWS:
        spec = get_task(task)
        example = spec.load("dev", limit=2)
        labels = [e["label"] for e in example]
        assert spec.main_metric in spec.metric(labels, labels)
