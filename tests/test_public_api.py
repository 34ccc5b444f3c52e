"""The public API is `qworker.__all__`: sorted, and exactly the public names the package defines."""

from __future__ import annotations

import types

import qworker


def test_all_is_sorted() -> None:
    assert list(qworker.__all__) == sorted(qworker.__all__)


def test_all_has_no_duplicates() -> None:
    assert len(set(qworker.__all__)) == len(qworker.__all__)


def test_all_equals_the_public_names_minus_submodules() -> None:
    for name in qworker.__all__:  # the names load on first use
        getattr(qworker, name)
    public = {
        name
        for name, value in vars(qworker).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }

    assert set(qworker.__all__) == public


def test_every_exported_name_is_defined_in_a_qworker_module() -> None:
    for name in qworker.__all__:
        value = getattr(qworker, name)
        assert getattr(value, "__module__", "").startswith("qworker."), name
