"""What a capability string in a manifest may say, and what a network host grant admits.

Checked when a manifest is signed and again when it is verified, so a publisher learns
of a bad capability at once and a hand-made manifest cannot slip one past the host.

Names (``steps``, ``executors``, ``storage_namespaces``): 1 to 64 characters from
``A-Z a-z 0-9 _ . -``, not starting with ``.`` or ``-``, never holding ``..``; no ``/``,
no ``*`` and no other pattern character. Secrets: the secret-name alphabet (1 to 128
characters from ``A-Z a-z 0-9 _ . -``) under the same rules on dots.

Network hosts, the one documented pattern form::

    api.example.com              https, port 443
    api.example.com:8443         https, port 8443
    http://localhost:8080        plain http, port 8080 (http://HOST alone: port 80)
    *.example.com                https, any name *below* example.com (not example.com)

A host is a DNS name (letters, digits, hyphens; labels of at most 63 characters) or an
IPv4 address. Nothing else: no path, user, query, no ``*`` but a whole first label.
"""

from __future__ import annotations

import re
import unicodedata
from urllib.parse import urlsplit

import attrs

from taskloom.contracts import Capabilities

_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,63}")
_SECRET = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}")
_LABEL = r"(?!-)[a-z0-9-]{1,63}(?<!-)"
_HOST = re.compile(rf"(?:{_LABEL}\.)*{_LABEL}")
_IPV4 = re.compile(
    r"(?:(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\.){3}"
    r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
)
_RULE = re.compile(r"(?:(?P<scheme>https?)://)?(?P<host>[^:/]+)(?::(?P<port>[0-9]{1,5}))?")
_DEFAULT_PORTS = {"https": 443, "http": 80}

_NAME_FIELDS = ("steps", "executors", "storage_namespaces")


@attrs.frozen(kw_only=True)
class HostRule:
    """One parsed ``network_hosts`` entry: which scheme, host (or subdomains) and port."""

    scheme: str
    host: str
    port: int
    subdomains: bool  # "*.example.com": any name below ``host``, never ``host`` itself

    def admits(self, scheme: str, host: str, port: int) -> bool:
        """True if a request to ``scheme://host:port`` is within this grant."""
        if scheme != self.scheme or port != self.port:
            return False
        if self.subdomains:
            return host.endswith("." + self.host)
        return host == self.host


def _problem_with_host(host: str) -> str | None:
    if host.startswith("*."):
        host = host[2:]
        if _IPV4.fullmatch(host):
            return "a wildcard covers DNS names only, not an IP address"
    if "*" in host:
        return "'*' is allowed only as a whole first label ('*.example.com')"
    if _IPV4.fullmatch(host) or (_HOST.fullmatch(host) and len(host) <= 253):
        return None
    return "is not a DNS name (letters, digits, hyphens, dots) or an IPv4 address"


def parse_host_rule(text: str) -> HostRule:
    """Parse a ``network_hosts`` entry; ``ValueError`` says what is wrong with it."""
    if not isinstance(text, str) or not text or not text.isascii() or text != text.strip():
        raise ValueError(f"network host {text!r} must be plain ASCII text")
    match = _RULE.fullmatch(text.lower())
    if match is None:
        raise ValueError(
            f"network host {text!r} must be HOST, HOST:PORT or http(s)://HOST[:PORT] "
            "(no path, user or query)"
        )
    host = match["host"]
    problem = _problem_with_host(host)
    if problem is not None:
        raise ValueError(f"network host {text!r}: {host!r} {problem}")
    scheme = match["scheme"] or "https"
    port = int(match["port"]) if match["port"] else _DEFAULT_PORTS[scheme]
    if not 1 <= port <= 65535:
        raise ValueError(f"network host {text!r}: port {port} is not 1 to 65535")
    wildcard = host.startswith("*.")
    return HostRule(
        scheme=scheme, host=host[2:] if wildcard else host, port=port, subdomains=wildcard
    )


def capability_problems(capabilities: Capabilities) -> list[str]:
    """Every capability string that breaks the rules above, as ``field: why``."""
    problems: list[str] = []
    for field in _NAME_FIELDS:
        for name in getattr(capabilities, field):
            if not _NAME.fullmatch(name) or ".." in name:
                problems.append(
                    f"{field}: {name[:80]!r} must be 1 to 64 characters from A-Z a-z 0-9 _ . - "
                    "(no '/', '*', '..', not starting with '.' or '-')"
                )
    for name in capabilities.secrets:
        if not _SECRET.fullmatch(name) or ".." in name:
            problems.append(
                f"secrets: {name[:80]!r} must be a secret name: 1 to 128 characters from "
                "A-Z a-z 0-9 _ . - (no '..', not starting with '.' or '-')"
            )
    for entry in capabilities.network_hosts:
        try:
            parse_host_rule(entry)
        except ValueError as exc:
            problems.append(f"network_hosts: {exc}")
    return problems


def unprintable(text: str) -> str | None:
    """The first control or format character in ``text`` (terminal escapes, bidi
    overrides), or None: a publisher name must print as what it says."""
    for char in text:
        if unicodedata.category(char) in ("Cc", "Cf", "Zl", "Zp"):
            return char
    return None


def request_target(url: str) -> tuple[str, str, int]:
    """(scheme, lower-case host, port) of ``url``; ``ValueError`` if it has no host."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if scheme not in _DEFAULT_PORTS or not host:
        raise ValueError(f"{url[:120]!r} is not an http(s) URL with a host")
    port = parts.port if parts.port is not None else _DEFAULT_PORTS[scheme]
    return scheme, host, port
