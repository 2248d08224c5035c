"""Label budgets: parsing --labels, the README's draw convention, budget data that keeps the same layers."""

import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from pipeline.config import DataConfig
from pipeline.data.budgets import check_budgets, development, draw_budget, draw_per_class, parse_budgets
from pipeline.data.loading import load_data
from pipeline.errors import InputError
from pipeline.run import layer_store


@pytest.fixture(scope="module")
def data():
    return load_data(DataConfig(source="digits"), seed=0)


def test_labels_parse_to_distinct_ascending_counts_with_all_last():
    assert parse_budgets("100,10,all,40,10") == [10, 40, 100, None]
    assert parse_budgets(" 5 , ALL") == [5, None] and parse_budgets("all") == [None]


@pytest.mark.parametrize("text", ["10,x", "0", "-5", "10,,40", "1.5", ""])
def test_bad_labels_name_the_part_and_the_form(text):
    with pytest.raises(InputError, match=r"--labels .*is not a number of labels per class; give positive counts"):
        parse_budgets(text)


def test_a_draw_has_the_count_of_every_class_and_is_reproducible():
    y = np.repeat(np.arange(4), [30, 12, 50, 7])
    drawn = draw_per_class(y, 5, seed=3)
    assert drawn.size == 20 and np.bincount(y[drawn]).tolist() == [5, 5, 5, 5] and np.unique(drawn).size == 20
    np.testing.assert_array_equal(draw_per_class(y, 5, seed=3), drawn)
    assert not np.array_equal(draw_per_class(y, 5, seed=4), drawn)


def test_draws_follow_the_readme_convention_on_the_readme_split(data):
    """README: a stratified 80/20 split (seed 0), then one rng.choice per class in class order from its train part."""
    X, y = load_digits(return_X_y=True)
    X_dev, _, y_dev, _ = train_test_split(X.astype(np.float32), y, test_size=0.2, stratify=y, random_state=0)
    dev = development(data)
    np.testing.assert_array_equal(dev.y, y_dev)  # the development order is the README's training order
    rng = np.random.default_rng(0)
    readme = np.concatenate([rng.choice(np.flatnonzero(y_dev == c), 10, replace=False) for c in range(10)])
    drawn = draw_budget(data, 10, seed=0)
    everything = np.concatenate([data.X_train, data.X_val])
    np.testing.assert_array_equal(everything[drawn.rows], X_dev[readme])  # the same rows, in the same order
    np.testing.assert_array_equal(drawn.labels(), y_dev[readme])


def test_budget_data_keeps_the_labels_of_the_drawn_rows_only_and_the_same_layers(data):
    drawn = draw_budget(data, 7, seed=1)
    view = drawn.data
    n = view.labeled_rows("train").size + view.labeled_rows("val").size
    assert n == 70 and view.labeled_rows("val").size < 70  # some drawn rows are validation rows
    labels = np.concatenate([view.y_train[view.labeled_rows("train")], view.y_val[view.labeled_rows("val")]])
    assert np.bincount(labels).tolist() == [7] * 10
    assert (view.y_test == data.y_test).all()  # the test split keeps every label
    assert view.X_train is data.X_train and view.X_val is data.X_val
    assert layer_store.input_fingerprint(view) == layer_store.input_fingerprint(data)
    assert draw_budget(data, None, seed=5).data is data


def test_a_budget_above_the_rarest_class_is_an_input_error(data):
    counts = development(data).class_counts()
    fewest = min(counts.values())
    check_budgets(data, [fewest, None])
    with pytest.raises(InputError, match=rf"--labels {fewest + 1}: class \d has only {fewest} labeled rows outside "
                                         rf"the test split; ask for at most {fewest} a class, or all"):
        check_budgets(data, [10, fewest + 1])


def test_unlabeled_data_has_no_curve():
    with pytest.raises(InputError, match="the label-efficiency curve needs labeled data"):
        check_budgets(load_data(DataConfig(source="patches", max_samples=200)), [10])
