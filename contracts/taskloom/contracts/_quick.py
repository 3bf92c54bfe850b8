"""Checking the fields of the records built on every step in one test instead of one
validator call per field.

A run builds a ``StepStarted`` and a ``StepSucceeded`` per step, and a storage
adapter a ``Put`` and a ``Record`` per write; with a validator per field, checking
them cost more than building them. Each such class checks all its fields in one
``__attrs_post_init__`` expression; only when that quick test fails does
:func:`explain` run the per-field validators the class keeps in a table, which
raise exactly the error they always did. A test compares the two for every such
class, field by field.
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
