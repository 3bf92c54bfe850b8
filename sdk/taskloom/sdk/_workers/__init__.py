"""Workers: long-lived loops that claim queued and crashed runs and run them.

``worker.Worker`` wraps an ``Engine``: it claims runs from its queues (and runs
whose lease expired) through ``_queue.claim``, drives each with the engine (which
renews the lease and fences every write), gives back concurrency slots, fails
poison runs, backs off while storage is unavailable, and on shutdown stops
claiming, then finishes or puts back what it holds within a deadline. May import
``_queue``, ``_engine``, ``_runs`` and the lower rooms.
"""
