"""The HTTP plumbing shared by the OpenAI-compatible and Anthropic executors.

Holds the transport (a pool of httpcore connections on asyncio sockets, size caps,
gzip limits), the SSE decoder, request settings, the map from HTTP statuses and
headers to taskloom's typed LLM errors, and reply parsing helpers. Imports only
``taskloom.contracts``; the executors in ``taskloom.adapters.openai`` and
``taskloom.adapters.anthropic`` import it, never the other way round.
"""
