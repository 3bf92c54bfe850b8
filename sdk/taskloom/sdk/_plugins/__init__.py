"""The plugin host: discovery, verification, import from verified bytes, scoped contexts.

``host.PluginHost`` finds plugins (entry points and directories), verifies each
manifest with ``taskloom.security``, imports it through ``loader`` from the verified
bytes only, and calls ``setup`` with a ``context.PluginContext`` that offers only what
the manifest was granted. Imports ``taskloom.contracts`` and ``taskloom.security``.
"""
