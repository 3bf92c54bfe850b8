"""Storing runs: run and step records, their JSON codecs, the event history, leases.

``store.RunStore`` is the one entry: it writes checkpoints, events and records through a
``StorageAdapter`` in batched commits (``batch``), keeps numbered event streams
(``events``, ``history``) and the run lease (``lease``). ``records`` holds the data
types, ``codec`` and ``text`` their JSON forms (``text`` is the fast path for the
records every step writes). May import ``taskloom.contracts``, ``taskloom.security`` and
``taskloom.sdk._pipeline``.
"""
