"""Per-conversation options and presets: resolution, validation, and the round trip through the
store (schema 5)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from app.core.presets import (
    BUILTIN_PRESETS,
    DEFAULT_PRESET,
    ConversationOptions,
    Preset,
    all_presets,
    check_preset_name,
    dump_user_presets,
    find_preset,
    parse_user_presets,
)
from app.core.store import SCHEMA_VERSION, Store

if TYPE_CHECKING:
    from pathlib import Path

APP = ("You are Scout.", (0.6, 0.9, 0.01))


def test_the_default_stays_metas_recommendation() -> None:
    assert (DEFAULT_PRESET.temperature, DEFAULT_PRESET.top_p, DEFAULT_PRESET.min_p) == (0.6, 0.9, 0.01)
    assert [p.name for p in BUILTIN_PRESETS] == ["Default", "Precise", "Creative", "Document analyst"]
    assert ConversationOptions().resolve(*APP) == APP  # nothing set: the app's settings


def test_options_resolve_own_prompt_then_the_presets_then_the_apps() -> None:
    precise = ConversationOptions(preset="Precise")
    assert precise.resolve(*APP) == ("You are Scout.", (0.2, 0.9, 0.05))
    analyst = ConversationOptions(preset="document analyst")  # names match without case
    prompt, sampling = analyst.resolve(*APP)
    assert "quote the passage" in prompt
    assert sampling == (0.3, 0.9, 0.05)
    own = ConversationOptions(preset="Document analyst", system_prompt="Answer in French.")
    assert own.resolve(*APP)[0] == "Answer in French."
    assert ConversationOptions(system_prompt="").resolve(*APP)[0] == ""  # no instructions at all
    assert ConversationOptions(preset="Gone").resolve(*APP) == APP  # a deleted preset: the app's


def test_user_made_presets_are_checked_and_never_hide_a_builtin() -> None:
    mine = Preset.from_dict({"name": "Terse", "temperature": 0.4, "top_p": 0.8, "min_p": 0.02})
    assert not mine.builtin
    assert Preset.from_dict(mine.to_dict()) == mine
    assert find_preset("terse", [mine]) == mine
    assert ConversationOptions(preset="Terse").resolve(*APP, user_made=[mine]) == (
        "You are Scout.",
        (0.4, 0.8, 0.02),
    )
    clash = Preset("Precise", 1.5, 1.0, 0.0, builtin=False)
    assert [p for p in all_presets([clash]) if p.name == "Precise"] == [BUILTIN_PRESETS[1]]
    with pytest.raises(ValueError, match="needs a name"):
        Preset.from_dict({"temperature": 1})
    with pytest.raises(ValueError, match="out of range"):
        Preset.from_dict({"name": "Hot", "temperature": 5, "top_p": 0.9, "min_p": 0.0})
    with pytest.raises(ValueError, match="needs numbers"):
        Preset.from_dict({"name": "Odd", "temperature": "warm", "top_p": 0.9, "min_p": 0.0})


def test_options_round_trip_through_the_store(tmp_path: Path) -> None:
    path = tmp_path / "chats.db"
    store = Store(path)
    assert store.user_version() == SCHEMA_VERSION  # the options column came with schema 5
    first = store.create_conversation("With options")
    other = store.create_conversation("Without")
    options = ConversationOptions(preset="Creative", system_prompt="Write like a pirate.")
    store.set_conversation_options(first.id, options.to_dict())
    store.close()
    store = Store(path)
    try:
        assert ConversationOptions.from_dict(store.conversation_options(first.id)) == options
        assert store.conversation_options(other.id) == {}
        assert ConversationOptions.from_dict(store.conversation_options(other.id)).is_default
        assert store.conversation_options(999) == {}
    finally:
        store.close()


def test_own_sampling_wins_and_is_described() -> None:
    own = ConversationOptions(preset="Precise", sampling=(1.1, 0.8, 0.0))
    assert own.resolve(*APP)[1] == (1.1, 0.8, 0.0)
    assert ConversationOptions.from_dict(own.to_dict()) == own
    assert own.describe() == "Precise · own sampling"
    assert ConversationOptions().describe() == "App settings"
    assert ConversationOptions(system_prompt="x").describe() == "App settings · own instructions"
    assert ConversationOptions(preset="Gone").describe() == "Gone (deleted: app settings)"
    assert ConversationOptions.from_dict({"sampling": ["hot", 1, 2]}).sampling is None  # damaged: ignored


def test_user_presets_round_trip_and_names_are_checked() -> None:
    mine = (Preset("Terse", 0.4, 0.9, 0.02, "Answer in one line.", builtin=False),)
    assert parse_user_presets(dump_user_presets(mine)) == mine
    assert parse_user_presets('[{"name": "Bad", "temperature": 9, "top_p": 1, "min_p": 0}]') == ()
    assert parse_user_presets("not json") == ()
    assert dump_user_presets(()) == ""
    assert check_preset_name("  My   preset ", mine) == "My preset"
    with pytest.raises(ValueError, match="built-in"):
        check_preset_name("creative", mine)
    with pytest.raises(ValueError, match="already have"):
        check_preset_name("TERSE", mine)
    assert check_preset_name("terse", mine, renaming="Terse") == "terse"
