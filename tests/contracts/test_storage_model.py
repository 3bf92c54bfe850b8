"""StorageModel, the suite's plain model, means what the StorageAdapter contract says."""

from __future__ import annotations

import pytest

from taskloom.contracts import Append, Check, ConflictError, Delete, Put
from taskloom.contracts.testing import StorageModel


def test_model_versions_and_deletes() -> None:
    """Versions count writes from 1, restart after delete, and if_version guards writes."""
    model = StorageModel()
    assert model.put("ns", "k", b"1", now=1.0).version == 1
    assert model.put("ns", "k", b"2", if_version=1, now=2.0).version == 2
    with pytest.raises(ConflictError):
        model.put("ns", "k", b"x", if_version=0, now=3.0)
    assert model.delete("ns", "k", now=4.0) is True
    assert model.delete("ns", "k", now=5.0) is False
    assert model.put("ns", "k", b"3", now=6.0).version == 1


def test_model_expiry_follows_the_given_time() -> None:
    """A record is live before expires_at and missing from then on."""
    model = StorageModel()
    record = model.put("ns", "k", b"v", ttl=10.0, now=100.0)
    assert record.expires_at == 110.0
    assert model.get("ns", "k", now=109.0) == record
    assert model.get("ns", "k", now=110.0) is None
    assert model.scan("ns", now=110.0) == []
    assert model.version("ns", "k", now=110.0) == 0


def test_model_scan_orders_filters_and_limits() -> None:
    """scan sorts by code point and applies prefix, start_after and limit."""
    model = StorageModel()
    for key in ("b", "a", "ab", "\U0001f600", "\uffff"):
        model.put("ns", key, b"", now=1.0)
    keys = [r.key for r in model.scan("ns", now=1.0)]
    assert keys == ["a", "ab", "b", "\uffff", "\U0001f600"]
    assert [r.key for r in model.scan("ns", prefix="a", now=1.0)] == ["a", "ab"]
    assert [r.key for r in model.scan("ns", start_after="ab", limit=2, now=1.0)] == ["b", "\uffff"]


def test_model_commit_is_all_or_nothing() -> None:
    """A failing Check rolls back the records and streams the batch touched."""
    model = StorageModel()
    model.put("ns", "k", b"v", now=1.0)
    with pytest.raises(ConflictError):
        model.commit(
            [
                Put(namespace="ns", key="k", value=b"w"),
                Delete(namespace="ns", key="k"),
                Append(stream="s", payload=b"p"),
                Check(namespace="ns", key="k", version=1),
            ],
            now=2.0,
        )
    record = model.get("ns", "k", now=3.0)
    assert record is not None and record.value == b"v"
    assert model.read("s") == []
    result = model.commit(
        [Check(namespace="ns", key="k", version=1), Append(stream="s", payload=b"p")], now=4.0
    )
    assert [e.seq for e in result.entries] == [1]
