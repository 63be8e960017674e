"""Where mmchat keeps user data and caches.

``MMCHAT_DATA_DIR`` and ``MMCHAT_CACHE_DIR`` override the platform defaults (tests use them).
Data (conversations, profile) is precious; the cache (converted models, feature caches) can be
rebuilt at any time. The defaults come from platformdirs (no vendor folder on Windows):

- Linux: data ``$XDG_DATA_HOME/mmchat`` (``~/.local/share/mmchat``), cache ``$XDG_CACHE_HOME/mmchat``
  (``~/.cache/mmchat``)
- macOS: data ``~/Library/Application Support/mmchat``, cache ``~/Library/Caches/mmchat``
- Windows: data ``%LOCALAPPDATA%\\mmchat``, cache ``%LOCALAPPDATA%\\mmchat\\Cache``
"""

import os
from pathlib import Path

import platformdirs

APP_NAME = "mmchat"


def data_dir() -> Path:
    """Directory for the database and anything else the user would miss if it were lost."""
    path = Path(os.environ.get("MMCHAT_DATA_DIR") or platformdirs.user_data_dir(APP_NAME, appauthor=False))
    path.mkdir(parents=True, exist_ok=True)
    return path


def cache_dir() -> Path:
    """Directory for rebuildable artefacts: model conversions, downloaded weights, feature caches."""
    path = Path(os.environ.get("MMCHAT_CACHE_DIR") or platformdirs.user_cache_dir(APP_NAME, appauthor=False))
    path.mkdir(parents=True, exist_ok=True)
    return path


def models_dir() -> Path:
    """Converted and downloaded model files, one sub-directory per registry name."""
    path = cache_dir() / "models"
    path.mkdir(parents=True, exist_ok=True)
    return path


def database_path() -> Path:
    return data_dir() / "mmchat.sqlite3"


def assets_dir() -> Path:
    """Shipped artefacts (fusion weights, icons): inside the package when installed, else the repo."""
    packaged = Path(__file__).resolve().parent / "assets"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parent.parent / "assets"
