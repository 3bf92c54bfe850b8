"""taskloom's security layer: keys, signed plugin manifests, trust, redaction, audit."""

from __future__ import annotations

__all__: list[str] = []
