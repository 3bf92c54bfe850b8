"""Configuration: ``taskloom.toml`` parsed once, and the engine parts built from it.

``toml`` reads and checks the file (storage, engine, executors, secrets, plugins, keys)
into typed settings; ``build`` turns those settings into storage, an executor registry
and a secret store for ``Engine.from_config`` and the CLI alike. May import
``_registry`` and the lower portions.
"""
