"""EnvSecretStore: the name ↔ variable mapping, read-only writes, empty means unset."""

from __future__ import annotations

import pytest

from taskloom.adapters.secrets import EnvSecretStore
from taskloom.contracts import InvalidSecretName, ReadOnlySecretStore, SecretNotFound, UsageError

ENVIRON = {
    "TASKLOOM_SECRET_OPENAI_API_KEY": "sk-openai-value",
    "TASKLOOM_SECRET_A_B_C": "abc-value",
    "TASKLOOM_SECRET_BLANK": "",
    "TASKLOOM_SECRET_BAD NAME": "x",
    "OTHER_OPENAI_API_KEY": "not ours",
}


async def test_names_map_to_upper_case_variables() -> None:
    """openai_api_key reads TASKLOOM_SECRET_OPENAI_API_KEY."""
    store = EnvSecretStore(environ=ENVIRON)
    assert (await store.get("openai_api_key")).reveal() == "sk-openai-value"
    assert (await store.get("a_b_c")).reveal() == "abc-value"


async def test_spellings_that_read_one_variable_are_refused() -> None:
    """OPENAI-API-KEY, openai.api.key and OPENAI_API_KEY are not openai_api_key: refused."""
    store = EnvSecretStore(environ=ENVIRON)
    for name in ("OPENAI-API-KEY", "OPENAI_API_KEY", "openai-api-key", "openai.api_key"):
        with pytest.raises(InvalidSecretName) as info:
            await store.get(name)
        assert "'openai_api_key'" in str(info.value) and "sk-openai" not in str(info.value)


async def test_names_lists_set_variables_lower_cased() -> None:
    """names() lists the prefixed, non-empty variables whose rest is a valid name."""
    assert await EnvSecretStore(environ=ENVIRON).names() == ["a_b_c", "openai_api_key"]


async def test_an_empty_variable_counts_as_unset() -> None:
    """An empty variable (a CI secret that was not provided) raises SecretNotFound."""
    with pytest.raises(SecretNotFound, match="TASKLOOM_SECRET_BLANK") as info:
        await EnvSecretStore(environ=ENVIRON).get("blank")
    assert info.value.name == "blank"


async def test_ss9_set_and_delete_are_refused_and_change_nothing() -> None:
    """SS9: set and delete raise ReadOnlySecretStore naming the variable; nothing changes."""
    environ = dict(ENVIRON)
    store = EnvSecretStore(environ=environ)
    with pytest.raises(ReadOnlySecretStore, match="TASKLOOM_SECRET_NEW") as info:
        await store.set("new", "secret-value-here")
    assert "secret-value-here" not in str(info.value)
    with pytest.raises(ReadOnlySecretStore):
        await store.delete("openai_api_key")
    assert environ == ENVIRON


async def test_invalid_names_are_refused_before_read_only() -> None:
    """SS5 comes first: an invalid name is InvalidSecretName even on a read-only store."""
    store = EnvSecretStore(environ=ENVIRON)
    for call in (store.get("bad name"), store.set("bad name", "v"), store.delete("")):
        with pytest.raises(InvalidSecretName):
            await call


async def test_the_process_environment_is_read_at_each_call(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without a mapping the store reads os.environ live, seeing later exports."""
    store = EnvSecretStore(prefix="TLTEST_")
    with pytest.raises(SecretNotFound):
        await store.get("late")
    monkeypatch.setenv("TLTEST_LATE", "exported-later")
    assert (await store.get("late")).reveal() == "exported-later"
    assert await store.names() == ["late"]


def test_repr_names_the_prefix_only() -> None:
    """The repr shows the prefix and no value."""
    assert repr(EnvSecretStore(environ=ENVIRON)) == "EnvSecretStore(prefix='TASKLOOM_SECRET_')"


def test_the_prefix_must_be_non_empty() -> None:
    """An empty prefix would expose the whole environment: refused."""
    with pytest.raises(UsageError):
        EnvSecretStore("")


async def test_a_chain_skips_the_env_store_for_a_spelling_it_refuses() -> None:
    """In a chain, a name the env store cannot hold falls through to the next store."""
    from taskloom.adapters.secrets import ChainSecretStore
    from taskloom.contracts import Secret

    class _Holds:
        async def get(self, name: str, /) -> Secret:
            if name != "OPENAI-API-KEY":
                raise SecretNotFound(f"no {name}", name=name)
            return Secret("from-the-file")

        async def aclose(self) -> None:
            return None

    chain = ChainSecretStore([EnvSecretStore(environ=ENVIRON), _Holds()])  # type: ignore[list-item]
    assert (await chain.get("OPENAI-API-KEY")).reveal() == "from-the-file"
    assert (await chain.get("openai_api_key")).reveal() == "sk-openai-value"
