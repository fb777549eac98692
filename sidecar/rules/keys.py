"""What the rules read of an alert, as one tuple: the key of the classification caches.

Every alert of every new notification is classified and asked for escalation
rules, both answered from caches keyed on the values the rules read. Building
that key is most of what a cached answer costs, so the reader is compiled once
per rule set with each lookup written out: ``(*map(labels.get, keys), ...)``
took twice as long, and four times as long for a single key.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

#: (labels, annotations) -> the values of the keys read, in order, None where absent.
KeyReader = Callable[[Mapping[str, str], Mapping[str, str]], tuple[str | None, ...]]


def key_reader(label_keys: Sequence[str], annotation_keys: Sequence[str]) -> KeyReader:
    """A function returning the values of ``label_keys`` then ``annotation_keys``."""
    # repr() writes any name as a string literal, so nothing of a rules file can
    # become code here.
    values = [f"l({k!r})," for k in label_keys] + [f"a({k!r})," for k in annotation_keys]
    source = (
        "def read(labels, annotations):\n"
        "    l = labels.get\n"
        "    a = annotations.get\n"
        f"    return ({' '.join(values)})\n"
    )
    namespace: dict[str, KeyReader] = {}
    exec(source, namespace)  # noqa: S102 (string literals only, see above)
    return namespace["read"]
