"""Per-conversation instructions and sampling, and the named presets they can come from.

A conversation's :class:`ConversationOptions` (stored as JSON with the conversation, schema 5)
say which preset it uses and, optionally, its own system prompt. Nothing set means the app's
settings, exactly as before: the defaults stay Meta's 0.6 / 0.9 / 0.01.
"""

from __future__ import annotations

import json
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


def parse_user_presets(text: str) -> tuple[Preset, ...]:
    """The user's presets from their saved JSON list (``Settings.user_presets``); a damaged entry
    is left out, never the others."""
    try:
        data = json.loads(text) if text.strip() else []
    except ValueError:
        return ()
    found: list[Preset] = []
    for entry in data if isinstance(data, list) else []:
        try:
            found.append(Preset.from_dict(entry))
        except (ValueError, AttributeError):
            continue
    return tuple(found)


def dump_user_presets(presets: Sequence[Preset]) -> str:
    return json.dumps([p.to_dict() for p in presets], ensure_ascii=False) if presets else ""


def check_preset_name(name: str, user_made: Sequence[Preset], *, renaming: str = "") -> str:
    """``name`` cleaned for a new (or renamed) user preset; ValueError with a sentence when it is
    empty, too long or taken (a built-in name, or another of the user's)."""
    clean = " ".join(name.split())
    if not clean:
        raise ValueError("A preset needs a name.")
    if len(clean) > 60:
        raise ValueError("A preset name can be at most 60 characters long.")
    taken = find_preset(clean, user_made)
    if taken is not None and taken.builtin:
        raise ValueError(f"“{taken.name}” is a built-in preset; choose another name.")
    if taken is not None and taken.name.casefold() != renaming.strip().casefold():
        raise ValueError(f"You already have a preset named “{taken.name}”.")
    return clean


@dataclass(frozen=True)
class ConversationOptions:
    """What one conversation uses instead of the app's settings. ``preset`` "" : the app's
    sampling; ``system_prompt`` None: the app's (or the preset's) instructions."""

    preset: str = ""
    system_prompt: str | None = None
    sampling: tuple[float, float, float] | None = None  # its own (temperature, top_p, min_p)

    @property
    def is_default(self) -> bool:
        return not self.preset and self.system_prompt is None and self.sampling is None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.preset:
            out["preset"] = self.preset
        if self.system_prompt is not None:
            out["system_prompt"] = self.system_prompt
        if self.sampling is not None:
            out["sampling"] = list(self.sampling)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ConversationOptions:
        prompt = data.get("system_prompt")
        sampling: tuple[float, float, float] | None = None
        raw = data.get("sampling")
        if isinstance(raw, list) and len(raw) == 3 and all(isinstance(v, (int, float)) for v in raw):
            sampling = (float(raw[0]), float(raw[1]), float(raw[2]))
        return cls(str(data.get("preset") or ""), prompt if isinstance(prompt, str) else None, sampling)

    def describe(self, user_made: Sequence[Preset] = ()) -> str:
        """What the conversation uses, in a few words: "Precise", "Creative · own instructions",
        "App settings", "Precise · own sampling"."""
        preset = find_preset(self.preset, user_made) if self.preset else None
        if self.preset and preset is None:
            base = f"{self.preset} (deleted: app settings)"
        else:
            base = preset.name if preset is not None else "App settings"
        extras = [
            label
            for label, own in (("own instructions", self.system_prompt), ("own sampling", self.sampling))
            if own is not None
        ]
        return " · ".join([base, *extras])

    def resolve(
        self, app_prompt: str, app_sampling: tuple[float, float, float], user_made: Sequence[Preset] = ()
    ) -> tuple[str, tuple[float, float, float]]:
        """The system prompt and (temperature, top_p, min_p) this conversation uses: its own
        prompt, else its preset's, else the app's; its own sampling, else its preset's, else the
        app's. A preset
        that no longer exists falls back to the app's settings."""
        preset = find_preset(self.preset, user_made) if self.preset else None
        sampling = (preset.temperature, preset.top_p, preset.min_p) if preset else app_sampling
        if self.sampling is not None:
            sampling = self.sampling
        if self.system_prompt is not None:
            prompt = self.system_prompt
        elif preset is not None and preset.system_prompt:
            prompt = preset.system_prompt
        else:
            prompt = app_prompt
        return prompt, sampling
