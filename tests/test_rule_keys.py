"""The compiled key readers of the classification caches read what they name, nothing else."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from sidecar.rules.keys import key_reader

names = st.text(min_size=1, max_size=12)
maps = st.dictionaries(names, st.text(max_size=8), max_size=6)


@given(st.lists(names, max_size=5), st.lists(names, max_size=3), maps, maps)
def test_a_reader_returns_the_values_of_its_keys_in_order(
    label_keys: list[str],
    annotation_keys: list[str],
    labels: dict[str, str],
    annotations: dict[str, str],
) -> None:
    read = key_reader(label_keys, annotation_keys)
    assert read(labels, annotations) == (
        *map(labels.get, label_keys),
        *map(annotations.get, annotation_keys),
    )


def test_names_that_look_like_code_stay_names() -> None:
    hostile = "'), __import__('os').system('false'), ('"
    read = key_reader([hostile, "a\nb", "\\"], ['"'])
    assert read({hostile: "x", "a\nb": "y"}, {'"': "z"}) == ("x", "y", None, "z")
    assert key_reader([], [])({}, {}) == ()
    assert key_reader(["only"], [])({"only": "v"}, {}) == ("v",)
