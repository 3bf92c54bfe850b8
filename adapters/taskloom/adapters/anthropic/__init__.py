"""An executor for Anthropic's Messages API.

In code::

    from taskloom.adapters.anthropic import AnthropicExecutor
    from taskloom.contracts import Secret

    async with AnthropicExecutor(model="claude-sonnet-4-5", api_key=Secret(key)) as executor:
        result = await executor.complete(request)

In ``taskloom.toml`` (the key is a reference to the secret store; a literal
string is refused)::

    [executors.claude]
    type = "anthropic"
    model = "claude-sonnet-4-5"
    api_key = { secret = "anthropic_api_key" }
    # optional: base_url = "https://api.anthropic.com", default_max_tokens = 1024,
    # anthropic_version = "2023-06-01", read_timeout_s = 60, total_timeout_s = 120,
    # structured_output = "native"

System messages become the top-level ``system`` field; ``max_tokens`` defaults
to ``default_max_tokens`` because the API requires it; a JSON response format
with a schema uses the API's structured outputs when ``structured_output`` says
the server has them (``"native"``: ``output_config.format``; ``"beta"``:
``output_format`` and its beta header), else a system instruction (the default
``"prompt"``, and always for JSON without a schema); ``temperature`` and
``top_p`` are never sent together; ``seed`` is not sent. A ``refusal`` stop
reason is ``Refused``. Errors map as for the OpenAI executor, with 529
(overloaded) retryable, ``Retry-After`` and ``anthropic-ratelimit-*-reset``
honoured.
"""

from __future__ import annotations

from taskloom.adapters.anthropic._executor import AnthropicExecutor, from_config

__all__ = ["AnthropicExecutor", "from_config"]
