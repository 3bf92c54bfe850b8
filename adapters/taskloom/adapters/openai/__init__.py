"""An executor for OpenAI and every OpenAI-compatible chat-completions server.

OpenAI, vLLM, Ollama, llama.cpp, LM Studio and the hosted gateways all speak
``POST {base_url}/chat/completions``. In code::

    from taskloom.adapters.openai import OpenAIExecutor
    from taskloom.contracts import Secret

    async with OpenAIExecutor(
        base_url="https://api.openai.com/v1", model="gpt-4o-mini", api_key=Secret(key)
    ) as executor:
        result = await executor.complete(request)

In ``taskloom.toml`` the key is a reference to the secret store, never the key
itself (a literal string is refused)::

    [executors.openai]
    type = "openai"
    base_url = "https://api.openai.com/v1"
    model = "gpt-4o-mini"
    api_key = { secret = "openai_api_key" }
    # optional: headers = { "OpenAI-Organization" = "org-..." }
    # connect_timeout_s = 5, read_timeout_s = 60, total_timeout_s = 120, max_connections = 100
    # max_tokens_field = "max_tokens"   # for older compatible servers

and ``taskloom secrets set openai_api_key`` stores the key. ``from_config``
builds the executor from such a table. Failures are taskloom's typed errors:
429 is ``RateLimited`` (with ``retry_after`` from ``Retry-After``,
``retry-after-ms`` or ``x-ratelimit-reset-*``), 429 ``insufficient_quota`` the
permanent ``QuotaExceeded``; 408/409/5xx, resets and timeouts are retryable
(with the ``Retry-After`` they carry); ``x-should-retry: false`` makes any of
them the permanent ``RetryForbidden``; 400/404/413/422 are ``InvalidRequest``
(``context_length_exceeded`` set when the prompt is too long); 401/403 are
``AuthenticationFailed``; a refusal is ``Refused``; a reply that is not the
protocol's JSON, or a stream cut off before its finish reason, is
``MalformedResponse``. ``max_tokens_field`` (default ``"max_completion_tokens"``)
names the field ``max_tokens`` is sent as.
"""

from __future__ import annotations

from taskloom.adapters.openai._executor import OpenAIExecutor, from_config

__all__ = ["OpenAIExecutor", "from_config"]
