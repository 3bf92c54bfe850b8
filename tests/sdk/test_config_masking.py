"""A key in a base URL's userinfo or query, or in a custom header, is masked where shown."""

from __future__ import annotations

from pathlib import Path

from taskloom.adapters.openai import OpenAIExecutor
from taskloom.contracts import MASK, mask_url
from taskloom.sdk._config.toml import read_config

KEY = "sk-live-9f8e7d6c5b4a"


def test_config_show_masks_keys_in_urls_and_custom_headers(tmp_path: Path) -> None:
    """as_dict (what 'taskloom config show' prints) holds no key, wherever it was written."""
    config = tmp_path / "taskloom.toml"
    config.write_text(
        "[executors.gw]\n"
        'type = "openai"\n'
        f'base_url = "https://team:{KEY}@gateway.example.com/v1?api_key={KEY}&region=eu"\n'
        'model = "m"\n'
        f'headers = {{ "X-Gateway-Key" = "{KEY}", "User-Agent" = "me" }}\n'
    )
    shown = read_config(config).as_dict()["executors"]["gw"]
    assert KEY not in repr(shown)
    assert shown["base_url"] == f"https://{MASK}@gateway.example.com/v1?api_key={MASK}&region=eu"
    assert shown["headers"] == {"X-Gateway-Key": MASK, "User-Agent": "me"}
    assert shown["model"] == "m"


async def test_executor_reprs_mask_keys_in_the_base_url() -> None:
    """repr of an HTTP executor (in logs and error texts) hides userinfo and key parameters."""
    executor = OpenAIExecutor(base_url=f"https://u:{KEY}@api.example.com/v1?key={KEY}", model="m")
    try:
        assert KEY not in repr(executor) and "api.example.com" in repr(executor)
    finally:
        await executor.aclose()


def test_mask_url_leaves_plain_urls_alone() -> None:
    """A URL without credentials is shown unchanged."""
    for url in ("http://localhost:8080/v1", "https://api.example.com/v1?model=x&region=eu"):
        assert mask_url(url) == url
