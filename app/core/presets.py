"""Per-conversation instructions and sampling, and the named presets they can come from.

A conversation's :class:`ConversationOptions` (stored as JSON with the conversation, schema 5)
say which preset it uses and, optionally, its own system prompt. Nothing set means the app's
settings, exactly as before: the defaults stay Meta's 0.6 / 0.9 / 0.01.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

DOCUMENT_ANALYST_PROMPT = (
    "You answer questions about the documents in this conversation. Use only what the documents "
    "say; quote the passage and give its page (p. 12) for every claim; when the documents do not "
    "say, answer that they do not."
)


@dataclass(frozen=True)
class Preset:
    """Named sampling (and, for some, instructions). ``system_prompt`` "" keeps the app's."""

    name: str
    temperature: float
    top_p: float
    min_p: float
    system_prompt: str = ""
    builtin: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "min_p": self.min_p,
            "system_prompt": self.system_prompt,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Preset:
        """A user-made preset from its saved form; ValueError with a sentence when it is wrong."""
        name = str(data.get("name", "")).strip()
        if not name:
            raise ValueError("A preset needs a name.")
        try:
            temperature = float(data["temperature"])
            top_p = float(data["top_p"])
            min_p = float(data["min_p"])
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"The preset “{name}” needs numbers for temperature, top-p and min-p.") from None
        if not (0.0 <= temperature <= 2.0 and 0.0 < top_p <= 1.0 and 0.0 <= min_p < 1.0):
            raise ValueError(
                f"The preset “{name}” is out of range: temperature 0–2, top-p above 0 up to 1, "
                "min-p 0 to below 1."
            )
        return cls(name, temperature, top_p, min_p, str(data.get("system_prompt", "")), builtin=False)


DEFAULT_PRESET = Preset("Default", 0.6, 0.9, 0.01)  # Meta's recommendation for Llama 4 Scout
BUILTIN_PRESETS: tuple[Preset, ...] = (
    DEFAULT_PRESET,
    Preset("Precise", 0.2, 0.9, 0.05),
    Preset("Creative", 0.9, 0.95, 0.02),
    Preset("Document analyst", 0.3, 0.9, 0.05, DOCUMENT_ANALYST_PROMPT),
)


def all_presets(user_made: Sequence[Preset] = ()) -> tuple[Preset, ...]:
    """The built-in presets, then the user's (a user preset never hides a built-in name)."""
    taken = {p.name.casefold() for p in BUILTIN_PRESETS}
    return BUILTIN_PRESETS + tuple(p for p in user_made if p.name.casefold() not in taken)


def find_preset(name: str, user_made: Sequence[Preset] = ()) -> Preset | None:
    key = name.strip().casefold()
    return next((p for p in all_presets(user_made) if p.name.casefold() == key), None)


@dataclass(frozen=True)
class ConversationOptions:
    """What one conversation uses instead of the app's settings. ``preset`` "" : the app's
    sampling; ``system_prompt`` None: the app's (or the preset's) instructions."""

    preset: str = ""
    system_prompt: str | None = None

    @property
    def is_default(self) -> bool:
        return not self.preset and self.system_prompt is None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.preset:
            out["preset"] = self.preset
        if self.system_prompt is not None:
            out["system_prompt"] = self.system_prompt
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ConversationOptions:
        prompt = data.get("system_prompt")
        return cls(str(data.get("preset") or ""), prompt if isinstance(prompt, str) else None)

    def resolve(
        self, app_prompt: str, app_sampling: tuple[float, float, float], user_made: Sequence[Preset] = ()
    ) -> tuple[str, tuple[float, float, float]]:
        """The system prompt and (temperature, top_p, min_p) this conversation uses: its own
        prompt, else its preset's, else the app's; its preset's sampling, else the app's. A preset
        that no longer exists falls back to the app's settings."""
        preset = find_preset(self.preset, user_made) if self.preset else None
        sampling = (preset.temperature, preset.top_p, preset.min_p) if preset else app_sampling
        if self.system_prompt is not None:
            prompt = self.system_prompt
        elif preset is not None and preset.system_prompt:
            prompt = preset.system_prompt
        else:
            prompt = app_prompt
        return prompt, sampling
