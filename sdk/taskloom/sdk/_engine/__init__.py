"""Running a prepared plan: the Engine, its steps, calls, retries, limits and events.

``engine.Engine`` composes storage, executors, secrets and plugins; ``run`` drives one
run from its plan, ``steps`` and ``leaf`` execute step kinds, ``calls`` makes one LLM
call with its limits, ``retry`` and ``ratelimit`` pace them, ``window`` bounds pending
checkpoints, ``lease`` renews the run lease, ``bus`` fans events out to subscribers,
``handle`` is what a caller holds, ``waiting`` pauses a run at input and approval
steps and checks the values ``Engine.provide`` gives them. May import ``_pipeline``,
``_runs``, ``_config``, ``_registry`` and the lower portions; never ``_cli``.
"""
