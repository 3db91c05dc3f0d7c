"""The adapter trainer's per-row inputs: condition dropout, group references, names the base knows."""

import numpy as np

from style_components import inject
from style_components.train.adapter import (DROP_BOTH, DROP_STYLE, DROP_TEXT, condition_dropout, group_references,
                                            names_the_base_knows)
from style_components.world import UNKNOWN, NameEncoder


def test_condition_dropout_rates_and_pairing():
    n = 40_000
    names, rows = condition_dropout(["folder"] * n, range(n), np.random.default_rng(0))
    no_style = np.array([r is inject.NULL for r in rows])
    no_name = np.array([m == "" for m in names])
    for got, want in ((no_style & ~no_name, DROP_STYLE), (no_style & no_name, DROP_BOTH),
                      (~no_style & no_name, DROP_TEXT)):
        assert abs(got.mean() - want) < 0.005
    kept = ~no_style
    assert [r for r, k in zip(rows, kept) if k] == list(np.flatnonzero(kept))  # kept rows keep their index


def test_group_references_are_other_images_of_the_same_artist():
    labels = np.array([0, 0, 0, 1, 1, 2, 0, 0])
    idx = np.array([0, 3, 5, 6, 0])
    picks = group_references(labels, 3)(idx, np.random.default_rng(1))
    for i, pick in zip(idx, picks):
        assert (labels[pick] == labels[i]).all()
        assert len(set(pick)) == len(pick)
    assert len(picks[0]) == 3 and 0 not in picks[0]
    assert list(picks[1]) == [4]          # the only other image of artist 1
    assert list(picks[2]) == [5]          # alone: itself
    # drawn from the generator: another seed, other groups
    again = group_references(labels, 2)(np.zeros(50, int), np.random.default_rng(2))
    assert len({tuple(sorted(p)) for p in again}) > 1


def test_names_the_base_never_learnt_train_unconditioned():
    text = NameEncoder(["folder", "open", "printer"], dim=8)
    names, unknown = names_the_base_knows(["folder-open", "folder-music", "printer", "", "zip"], text)
    assert list(names) == ["folder-open", "", "printer", "", ""]
    assert unknown == 2                   # the already-empty name is not counted
    assert (text.tokens(list(names)) != UNKNOWN).all()   # no UNKNOWN token reaches the base
