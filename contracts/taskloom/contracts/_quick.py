"""Checking the fields of the records built on every step in one test instead of one
validator call per field.

A run builds a ``StepStarted`` and a ``StepSucceeded`` per step, and a storage
adapter a ``Put`` and a ``Record`` per write; with a validator per field, checking
them cost more than building them. Each such class checks all its fields in one
``__attrs_post_init__`` expression; only when that quick test fails does
:func:`explain` run the per-field validators the class keeps in a table, which
raise exactly the error they always did. A test compares the two for every such
class, field by field.

The table is the one list of the class's fields: ``covers`` runs at import, right
after each class, and refuses a table that misses a field of the class (or names
one it does not have), so a field added to the class without a check fails the
import loudly instead of slipping past the quick test. A field that may hold any
value is listed with ``None``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs


def explain(instance: Any, checks: Mapping[str, Any]) -> None:
    """Run ``checks`` (field name -> attrs validator) on ``instance``, in field order.

    Called when a quick test failed: raises the first field's validator error. If no
    validator objects (a subclass the quick test is too strict for), nothing is raised.
    """
    for field in attrs.fields(type(instance)):
        check = checks.get(field.name)
        if check is not None:
            check(instance, field, getattr(instance, field.name))


def covers(cls: type[Any], checks: Mapping[str, Any]) -> None:
    """Raise ``TypeError`` unless ``checks`` names exactly the attrs fields of ``cls``.

    Called at import after each class with a quick test (see the module docstring).
    """
    names = [field.name for field in attrs.fields(cls)]
    missing = [name for name in names if name not in checks]
    unknown = sorted(set(checks) - set(names))
    if missing or unknown:
        raise TypeError(
            f"{cls.__module__}.{cls.__name__}: its quick check table does not match its "
            f"fields (missing {missing}, unknown {unknown}); add each new field to the "
            "table (None for a field that may hold anything) and to the one-expression "
            "test in __attrs_post_init__"
        )
