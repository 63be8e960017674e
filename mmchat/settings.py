"""The user's settings: one JSON file in the data folder, written atomically.

:class:`Settings` is a flat dataclass; :func:`load` never fails (a missing file gives the defaults,
a damaged one is moved aside with a notice, and each bad or out-of-range value falls back to its
default on its own), and :func:`save` writes a temporary file, fsyncs it and renames it over the
old one, so a crash mid-write leaves either the old settings or the new ones, never half a file.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from mmchat import paths
from mmchat.errors import MMChatError

log = logging.getLogger(__name__)

FILE_NAME = "settings.json"
THEMES = ("system", "light", "dark")
MAX_RECORDING_S = 600  # s, the longest hold-to-talk recording a user can choose

# Inclusive (low, high) bounds of numeric settings; values outside fall back to the default.
RANGES: dict[str, tuple[float, float]] = {
    "max_new_tokens": (1, 8192),
    "temperature": (0.0, 2.0),
    "top_p": (0.01, 1.0),
    "top_k": (0, 1000),
    "repetition_penalty": (0.5, 2.0),
    "seed": (0, 2**32 - 1),
    "max_recording_s": (1, MAX_RECORDING_S),
    "llm_threads": (0, 256),
}


@dataclass
class Settings:
    # Models, by registry name ("" = the registry default for the role).
    llm: str = ""
    asr: str = ""
    image_encoder: str = ""
    # Generation.
    max_new_tokens: int = 512
    temperature: float = 0.7
    top_p: float = 0.9
    top_k: int = 40
    repetition_penalty: float = 1.1
    seed: int | None = None  # None: a new random seed per reply
    llm_threads: int = 0  # CPU threads llama.cpp runs the LLM on (0 = one per physical core)
    # Chat on an OpenAI-compatible server instead ("" = the local model). Its API key is not a
    # setting: it comes from $MMCHAT_API_KEY or the system keyring (mmchat.llm.remote).
    server_url: str = ""
    server_model: str = ""  # "" = the first model the server lists
    # Fusion per modality: media reach the LLM as embedded tokens (on) or as words (off).
    fusion_image: bool = True
    fusion_audio: bool = True
    # Appearance.
    theme: str = "system"  # one of THEMES
    # Voice.
    input_device: str = ""  # microphone name ("" = the system default)
    voice_send_at_once: bool = False  # send a voice message on release instead of showing the transcript
    max_recording_s: int = 120  # s
    read_aloud: bool = False  # read every reply aloud
    # Data and privacy.
    data_dir: str = ""  # folder of the conversation database ("" = the default data folder)
    temporary_by_default: bool = False  # new chats are temporary (never stored)
    # First run.
    welcome_shown: bool = False  # the welcome was shown and closed once

    def database_path(self) -> Path:
        """Where the conversation database lives under these settings."""
        if self.data_dir:
            return Path(self.data_dir).expanduser() / paths.database_path().name
        return paths.database_path()

    def profile_path(self) -> Path:
        """Where the profile database (profiles, memories, feedback) lives: next to the conversations."""
        from mmchat.profile import FILE_NAME as PROFILE_FILE

        return self.database_path().parent / PROFILE_FILE

    def generation_config(self):
        """These settings as :class:`mmchat.llm.GenerationConfig` (imports the LLM module)."""
        from mmchat.llm import GenerationConfig

        return GenerationConfig(max_new_tokens=self.max_new_tokens, temperature=self.temperature,
                                top_p=self.top_p, top_k=self.top_k,
                                repetition_penalty=self.repetition_penalty, seed=self.seed)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Loaded:
    settings: Settings
    notice: str | None = None  # set when the file was damaged and moved aside


def settings_path() -> Path:
    return paths.data_dir() / FILE_NAME


def load(path: Path | None = None) -> Loaded:
    """The settings at ``path`` (default: the data folder's), never raising for a bad file."""
    path = path or settings_path()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return Loaded(Settings())
    except (OSError, UnicodeDecodeError) as exc:
        return Loaded(Settings(), f"The settings file {path} could not be read ({exc}); using the defaults.")
    try:
        raw = json.loads(text)
        if not isinstance(raw, dict):
            raise ValueError(f"expected a JSON object, found {type(raw).__name__}")
    except ValueError as exc:
        moved = _move_aside(path)
        return Loaded(Settings(), f"The settings file was damaged ({exc}). It was moved to {moved} "
                                  "and the defaults are used.")
    return Loaded(from_dict(raw))


def from_dict(raw: dict) -> Settings:
    """Settings from a decoded JSON object: unknown keys are ignored, bad values take their default."""
    defaults = Settings()
    values = {}
    for f in dataclasses.fields(Settings):
        if f.name in raw:
            value = _checked(f.name, raw[f.name], getattr(defaults, f.name))
            if value is not _INVALID:
                values[f.name] = value
            else:
                log.warning("ignoring invalid setting %s=%r", f.name, raw[f.name])
    return Settings(**values)


_INVALID = object()


def _checked(name: str, value, default):
    """``value`` if it suits the setting ``name`` (whose default is ``default``), else ``_INVALID``."""
    if name == "seed" and value is None:
        return None
    kind = type(default) if default is not None else int
    if kind is bool:
        return value if isinstance(value, bool) else _INVALID
    if kind is str:
        if not isinstance(value, str) or "\x00" in value:
            return _INVALID
        return value if name != "theme" or value in THEMES else _INVALID
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return _INVALID
    if kind is int:
        if isinstance(value, float) and not value.is_integer():
            return _INVALID
        value = int(value)
    value = kind(value)
    if isinstance(value, float) and not math.isfinite(value):
        return _INVALID
    low, high = RANGES.get(name, (-math.inf, math.inf))
    return value if low <= value <= high else _INVALID


def save(settings: Settings, path: Path | None = None) -> None:
    """Write ``settings`` atomically (temporary file, fsync, rename, fsync of the folder)."""
    path = path or settings_path()
    data = json.dumps(settings.to_dict(), indent=2, sort_keys=True) + "\n"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        _fsync_dir(path.parent)
    except OSError as exc:
        raise MMChatError(f"Could not save the settings to {path}: {exc.strerror or exc}.",
                          hint="Check that the data folder is writable and the disk is not full.") from exc


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # not possible on every platform (Windows)
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _move_aside(path: Path) -> Path:
    target = path.with_name(f"{path.name}.broken-{time.strftime('%Y%m%d-%H%M%S')}")
    try:
        os.replace(path, target)
    except OSError:
        return path
    log.warning("moved damaged settings %s aside to %s", path, target)
    return target
