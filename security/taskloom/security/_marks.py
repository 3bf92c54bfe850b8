"""Rollback marks: what was accepted of each plugin, judged the same way wherever kept.

A *mark* is the highest version of a plugin accepted so far, the digest of that
version's signed payload, the key ids that signed it, the capabilities it was
granted and any capabilities approved for later versions. ``judge`` applies the
rules to a new manifest:

* a lower version is a rollback (``RollbackDetected``), the same version with
  another payload a reuse (``VersionReused``) -- unless every key that signed the
  marked version has since been revoked: then the mark is void and the plugin's
  floor resets (TUF's fast-forward recovery: a compromised key that signed version
  2**53 - 1 must not block every real release forever);
* a higher version asking for capabilities beyond those granted or approved is
  refused (``CapabilitiesNotApproved``) until someone approves them
  (``taskloom trust approve``).

``RollbackMarks`` keeps the marks in a JSON file beside the trust store (the run
database may be deleted or be ``memory``; the trust store's directory is the
application's). The file carries the SHA-256 of its own content, so a damaged or
hand-edited copy is refused, as is a missing one when the trust store exists:
both fail closed until ``taskloom trust rebaseline`` records a new floor. It also
remembers the highest trust store version seen, so an older copy of the trust store
is refused. What the digest cannot do: stop someone who can write that directory
from putting back an older, intact copy of the file -- keep the directory writable
by the application's owner only.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import attrs
import rfc8785

from taskloom.contracts import Capabilities, UsageError
from taskloom.security._errors import (
    CapabilitiesNotApproved,
    MalformedInput,
    RollbackDetected,
    RollbackMarksUnavailable,
    TrustStoreRolledBack,
    VersionReused,
)
from taskloom.security._strictjson import loads_strict

MARKS_FORMAT = "taskloom.rollback-marks/v1"
MAX_MARKS_BYTES = 8 << 20
_CAP_FIELDS = tuple(attrs.fields_dict(Capabilities))


def capability_map(capabilities: Capabilities | None) -> dict[str, list[str]]:
    """Capabilities as sorted lists per field (empty fields left out)."""
    if capabilities is None:
        return {}
    found: dict[str, list[str]] = {}
    for field in _CAP_FIELDS:
        values = getattr(capabilities, field)
        if values:  # an empty field is left out without building a set and a list for it
            found[field] = sorted(set(values))
    return found


@attrs.frozen(kw_only=True)
class Mark:
    """What was accepted of one plugin (see the module docstring)."""

    version: int
    sha256: str
    signers: tuple[str, ...] = ()
    capabilities: Mapping[str, tuple[str, ...]] | None = None
    """Granted with the marked version; None: not recorded (an older mark)."""
    approved: Mapping[str, tuple[str, ...]] = attrs.field(factory=dict)

    def to_data(self) -> dict[str, Any]:
        data: dict[str, Any] = {"version": self.version, "sha256": self.sha256}
        if self.signers:
            data["signers"] = sorted(self.signers)
        if self.capabilities is not None:
            data["capabilities"] = {k: list(v) for k, v in sorted(self.capabilities.items())}
        if self.approved:
            data["approved"] = {k: list(v) for k, v in sorted(self.approved.items())}
        return data

    @classmethod
    def from_data(cls, raw: object, what: str) -> Mark:
        """Parse ``to_data`` output; ``ValueError`` naming ``what`` if it is not one."""
        if type(raw) is not dict or not {"version", "sha256"} <= raw.keys():
            raise ValueError(f"{what} must hold version and sha256")
        if raw.keys() - {"version", "sha256", "signers", "capabilities", "approved"}:
            raise ValueError(f"{what} has unknown fields")
        version, digest = raw["version"], raw["sha256"]
        signers = raw.get("signers", [])
        if type(version) is not int or type(digest) is not str:
            raise ValueError(f"{what}: version is an integer, sha256 text")
        if type(signers) is not list or any(type(s) is not str for s in signers):
            raise ValueError(f"{what}: signers is a list of key ids")
        return cls(
            version=version,
            sha256=digest,
            signers=tuple(signers),
            capabilities=_caps(raw["capabilities"], what) if "capabilities" in raw else None,
            approved=_caps(raw.get("approved", {}), what),
        )


def _caps(raw: object, what: str) -> dict[str, tuple[str, ...]]:
    if type(raw) is not dict:
        raise ValueError(f"{what}: capabilities must be an object")
    result: dict[str, tuple[str, ...]] = {}
    for field, values in raw.items():
        if field not in _CAP_FIELDS or type(values) is not list:
            raise ValueError(f"{what}: unknown capability field {field!r}")
        if any(type(v) is not str for v in values):
            raise ValueError(f"{what}: capability values must be text")
        result[field] = tuple(values)
    return result


def new_capabilities(mark: Mark, capabilities: Capabilities | None) -> dict[str, list[str]]:
    """What ``capabilities`` asks for beyond what ``mark`` granted or approved."""
    if mark.capabilities is None or capabilities is None:
        return {}
    extra: dict[str, list[str]] = {}
    for field, wanted in capability_map(capabilities).items():
        known = set(mark.capabilities.get(field, ())) | set(mark.approved.get(field, ()))
        more = [v for v in wanted if v not in known]
        if more:
            extra[field] = more
    return extra


def void(mark: Mark | None, revoked: frozenset[str]) -> bool:
    """True if every key that signed the marked version is revoked (the floor resets)."""
    return mark is not None and bool(mark.signers) and set(mark.signers) <= revoked


def judge(
    plugin_name: str,
    mark: Mark | None,
    version: int,
    digest: str,
    *,
    revoked: frozenset[str] = frozenset(),
    capabilities: Capabilities | None = None,
) -> None:
    """Refuse ``version`` of ``plugin_name`` against ``mark`` (see the module docstring)."""
    if mark is None or void(mark, revoked):
        return
    if version < mark.version:
        raise RollbackDetected(
            f"plugin {plugin_name!r} version {version} is older than version "
            f"{mark.version} already accepted: someone may be replaying an old, vulnerable "
            "release; install the current release"
        )
    if version == mark.version and digest != mark.sha256:
        raise VersionReused(
            f"plugin {plugin_name!r} version {version} differs from the version {version} "
            "accepted before: a publisher must never reuse a version number; ask them to "
            "publish a new version"
        )
    extra = new_capabilities(mark, capabilities)
    if extra and version > mark.version:
        listed = "; ".join(f"{field}: {', '.join(values)}" for field, values in extra.items())
        raise CapabilitiesNotApproved(
            f"plugin {plugin_name!r} version {version} asks for capabilities version "
            f"{mark.version} did not have ({listed}); review them, then run "
            f"'taskloom trust approve {plugin_name}' (RollbackMarks.approve) to allow them"
        )


def next_mark(
    mark: Mark | None,
    version: int,
    digest: str,
    *,
    signers: frozenset[str] | tuple[str, ...] = (),
    capabilities: Capabilities | None = None,
    revoked: frozenset[str] = frozenset(),
) -> Mark:
    """The mark after accepting ``version`` (approvals carry over unless the floor reset)."""
    keep = mark is not None and not void(mark, revoked)
    return Mark(
        version=version,
        sha256=digest,
        signers=tuple(sorted(signers)),
        capabilities={k: tuple(v) for k, v in capability_map(capabilities).items()},
        approved=dict(mark.approved) if keep and mark is not None else {},
    )


@attrs.frozen(kw_only=True)
class _Observed:
    """What ``RollbackMarks.check`` saw (``record`` takes it back)."""

    mark: Mark | None


class RollbackMarks:
    """Rollback marks in a JSON file beside the trust store (see the module docstring).

    Usable wherever a ``RollbackGuard`` is (``check``, ``record``, ``highest``).
    ``required=True`` (the default) means the file must exist: a missing one is
    ``RollbackMarksUnavailable``, never a fresh start; ``create()`` makes the first
    one, ``rebaseline`` a new one.
    """

    def __init__(self, path: str | os.PathLike[str], *, required: bool = True) -> None:
        self._path = Path(path)
        self._required = required

    @property
    def path(self) -> Path:
        return self._path

    @staticmethod
    def beside(trust_path: str | os.PathLike[str]) -> Path:
        """Where the marks of the trust store at ``trust_path`` live."""
        trust = Path(trust_path)
        return trust.with_name(trust.stem + ".marks.json")

    # -- file ----------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        lock = self._path.with_name(self._path.name + ".lock")
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise self._unavailable(f"cannot be locked ({exc.strerror or exc})") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _unavailable(self, why: str) -> RollbackMarksUnavailable:
        return RollbackMarksUnavailable(
            f"rollback marks {self._path} {why}: without them an old signed release could "
            "load again, so no plugin is loaded. If you know why (a restore, a new machine), "
            "run 'taskloom trust rebaseline' to record the plugins installed now as the floor"
        )

    def _read(self) -> tuple[int, dict[str, Mark]]:
        try:
            with self._path.open("rb") as handle:
                data = handle.read(MAX_MARKS_BYTES + 1)
        except FileNotFoundError:
            if self._required:
                raise self._unavailable("are missing") from None
            return 0, {}
        except OSError as exc:
            raise self._unavailable(f"cannot be read ({exc.strerror or exc})") from exc
        try:
            raw = loads_strict(data, max_bytes=MAX_MARKS_BYTES, what="rollback marks")
            if type(raw) is not dict or raw.keys() != {"format", "body", "sha256"}:
                raise ValueError("not a marks file")
            body = raw["body"]
            if raw["format"] != MARKS_FORMAT or type(body) is not dict:
                raise ValueError(f"format is not {MARKS_FORMAT}")
            if hashlib.sha256(rfc8785.dumps(body)).hexdigest() != raw["sha256"]:
                raise ValueError("its content does not match its SHA-256")
            trust_version, plugins = body.get("trust_version"), body.get("plugins")
            if type(trust_version) is not int or type(plugins) is not dict:
                raise ValueError("trust_version and plugins are missing")
            marks = {name: Mark.from_data(m, f"mark of {name!r}") for name, m in plugins.items()}
        except (MalformedInput, ValueError) as exc:
            raise self._unavailable(f"are damaged ({exc})") from exc
        return trust_version, marks

    def _write(self, trust_version: int, marks: Mapping[str, Mark]) -> None:
        from taskloom.security._keys import _write_atomic

        body: dict[str, Any] = {
            "trust_version": trust_version,
            "plugins": {name: mark.to_data() for name, mark in sorted(marks.items())},
        }
        document: dict[str, Any] = {
            "format": MARKS_FORMAT,
            "body": body,
            "sha256": hashlib.sha256(rfc8785.dumps(body)).hexdigest(),
        }
        try:
            _write_atomic(self._path, bytes(rfc8785.dumps(document)), mode=0o600, overwrite=True)
        except OSError as exc:
            raise self._unavailable(f"cannot be written ({exc.strerror or exc})") from exc

    def exists(self) -> bool:
        return self._path.is_file()

    def create(self, *, trust_version: int = 0) -> None:
        """Write the first, empty marks file; refused if one exists."""
        with self._locked():
            if self._path.exists():
                raise UsageError(f"rollback marks {self._path} exist already")
            self._write(trust_version, {})

    def rebaseline(self, plugins: Mapping[str, Mark], *, trust_version: int) -> None:
        """Replace the marks with ``plugins`` as the new floor (``taskloom trust rebaseline``)."""
        with self._locked():
            self._write(trust_version, dict(plugins))

    def marks(self) -> dict[str, Mark]:
        """Every mark by plugin name."""
        return self._read()[1]

    # -- trust store versions ------------------------------------------------

    def check_trust_version(self, version: int, *, source: str = "the trust store") -> None:
        """Refuse a trust store older than one seen before; remember a newer one."""
        with self._locked():
            seen, marks = self._read()
            if version < seen:
                raise TrustStoreRolledBack(
                    f"{source} is version {version}, older than version {seen} already "
                    "trusted: an old copy (with fewer revocations) was put back; restore the "
                    "current trust store"
                )
            if version > seen:
                self._write(version, marks)

    # -- the guard -----------------------------------------------------------

    async def highest(self, plugin_name: str) -> tuple[int, str] | None:
        mark = self._read()[1].get(plugin_name)
        return None if mark is None else (mark.version, mark.sha256)

    async def check(
        self,
        plugin_name: str,
        version: int,
        digest: str,
        *,
        revoked: frozenset[str] = frozenset(),
        capabilities: Capabilities | None = None,
    ) -> _Observed:
        mark = self._read()[1].get(plugin_name)
        judge(plugin_name, mark, version, digest, revoked=revoked, capabilities=capabilities)
        return _Observed(mark=mark)

    async def record(
        self,
        plugin_name: str,
        version: int,
        digest: str,
        *,
        observed: object = None,
        signers: frozenset[str] | tuple[str, ...] = (),
        revoked: frozenset[str] = frozenset(),
        capabilities: Capabilities | None = None,
    ) -> None:
        with self._locked():
            trust_version, marks = self._read()
            mark = marks.get(plugin_name)
            judge(plugin_name, mark, version, digest, revoked=revoked, capabilities=capabilities)
            new = next_mark(
                mark,
                version,
                digest,
                signers=signers,
                capabilities=capabilities,
                revoked=revoked,
            )
            if new != mark:
                marks[plugin_name] = new
                self._write(trust_version, marks)

    def approve(self, plugin_name: str, capabilities: Capabilities) -> dict[str, list[str]]:
        """Allow later versions of ``plugin_name`` to ask for ``capabilities``; returns what
        was newly approved. Refused if the plugin was never accepted (nothing to extend)."""
        with self._locked():
            trust_version, marks = self._read()
            mark = marks.get(plugin_name)
            if mark is None:
                raise UsageError(
                    f"plugin {plugin_name!r} was never loaded here: its first version is "
                    "accepted with the capabilities it asks for; nothing to approve"
                )
            added = new_capabilities(mark, capabilities)
            if added:
                approved = {k: set(v) for k, v in mark.approved.items()}
                for field, values in added.items():
                    approved.setdefault(field, set()).update(values)
                marks[plugin_name] = attrs.evolve(
                    mark, approved={k: tuple(sorted(v)) for k, v in approved.items()}
                )
                self._write(trust_version, marks)
            return added
