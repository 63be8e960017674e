"""What is installed, where data lives and what works here: ``mmchat doctor`` and Help → About.

Cheap by default: model states come from package presence and conversion manifests, not from
re-hashing gigabytes; ``mmchat models verify`` does the full sha256 check.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import platform
import sys

from mmchat import __version__, cache, download, paths, probe, registry
from mmchat.errors import MMChatError

LIBRARIES = ("torch", "transformers", "tokenizers", "safetensors", "numpy", "Pillow", "soundfile",
             "PySide6-Essentials", "sounddevice", "piper-tts", "onnxruntime", "rapidocr", "efficientnet-lite-pytorch",
             "llama-cpp-python")


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def model_state(spec: registry.ModelSpec) -> str:
    """A short phrase: "bundled, converted", "bundled, not converted yet", "fetched", "not fetched", ..."""
    if spec.bundled:
        if not spec.is_installed():
            return "missing (reinstall)"
        if spec.source_format == "gguf" and spec.role is registry.Role.LLM:
            return _gguf_state(spec)
        if spec.source_format in ("ctranslate2", "torch-state-dict"):
            converted = any(_manifest_source(d) == spec.sha256 for d in cache.cached_conversions(spec.name))
            return "bundled, converted" if converted else "bundled, converts on first use"
        return "bundled"
    fetched = download.is_fetched(spec.name)
    if spec.role is registry.Role.IMAGE and not fetched:
        return "untrained (random init)"
    return "fetched" if fetched else "not fetched"


def _gguf_state(spec: registry.ModelSpec) -> str:
    """How llama.cpp gets the GGUF (the package's file, or the parts joined once), and whether the
    torch copy that fusion training uses was made."""
    if len(spec.parts) == 1:
        state = "bundled, runs as shipped"
    else:
        joined = (paths.models_dir() / spec.name / "gguf").glob("*/" + cache.MANIFEST)
        state = "bundled, joined" if any(_manifest_source(m.parent) == spec.sha256 for m in joined) \
            else "bundled, joins on first use"
    if any(_manifest_source(d) == spec.sha256 for d in cache.cached_conversions(spec.name)):
        state += "; torch copy for training made"
    return state


def chat_runtime() -> dict:
    """What runs chat with the default LLM: the runtime, and llama.cpp's threads; and the app's chat
    server, if one is set (whether a key is at hand for it, never the key)."""
    from mmchat import settings
    from mmchat.engine import default_threads, llm_runtime
    from mmchat.llm.remote import api_key

    name = registry.default(registry.Role.LLM).name
    try:
        runtime = llm_runtime(name)
    except MMChatError as exc:
        runtime = f"invalid ({exc})"
    server = settings.load().settings.server_url.strip()
    return {"llm": name, "runtime": runtime, "threads": default_threads(),
            "llama_cpp": _version("llama-cpp-python"), "server": server or None,
            "server_key": bool(server) and api_key(server) is not None}


def _manifest_source(directory) -> str | None:
    import json

    try:
        return json.loads((directory / cache.MANIFEST).read_text()).get("source_sha256")
    except (OSError, ValueError):
        return None


def model_rows() -> list[dict]:
    """Every registry model with its state, size and, for a chat model llama.cpp runs, the RAM it needs
    (:func:`mmchat.llm.gguf.ram_need`) and whether that fits the RAM available now."""
    from mmchat.llm import gguf

    room = ram_room()
    rows = []
    for m in registry.MODELS:
        need = gguf.ram_need(m) if m.role is registry.Role.LLM else None
        rows.append({
            "name": m.name, "role": m.role.value, "default": m.default, "state": model_state(m),
            "licence": m.licence, "size_mb": round(m.size_bytes / 1e6), "size_bytes": m.size_bytes,
            "ram_need_mb": None if need is None else round(need / 1e6),
            "fits_ram": None if need is None or room is None else need <= room,
            "fetched": download.is_fetched(m.name) if m.hub_id else None,  # None: bundled, nothing to fetch
            "sha256": m.sha256,
            "source": (", ".join(p.requirement for p in m.parts) if m.bundled else f"hub:{m.hub_id}"),
            "description": m.description,
        })
    return rows


def ram_room() -> int | None:
    """Bytes of RAM a model may take: what is available now where the system says, else all of it."""
    found = probe.memory()
    if found is None:
        return None
    return found.available if found.available is not None else found.total


def verify_model(spec: registry.ModelSpec) -> tuple[bool, str]:
    """Full check: bundled parts hash to the registry sha256; cached conversions match their manifest."""
    if not spec.bundled:
        if not download.is_fetched(spec.name):
            return True, "not fetched (optional)"
        ok = download.verify_fetched(spec.name)
        return ok, f"fetched files in {download.hub_dir(spec.name)} {'match' if ok else 'DO NOT match'} their checksums"
    try:
        parts = spec.locate_parts()
    except MMChatError as exc:
        return False, str(exc)
    digest = hashlib.sha256()
    for part in parts:
        with open(part, "rb") as f:
            while chunk := f.read(cache.CHUNK_BYTES):
                digest.update(chunk)
    if digest.hexdigest() != spec.sha256:
        return False, "bundled files do not match the registry sha256 (reinstall the model packages)"
    detail = "bundled files match sha256"
    for directory in cache.cached_conversions(spec.name):
        ok = cache.verify_manifest(directory, full=True)
        detail += f"; conversion {directory.name}: {'ok' if ok else 'CORRUPT (will be rebuilt on next load)'}"
        if not ok:
            return False, detail
    return True, detail


def report() -> dict:
    mic, screen, qt, bf16 = probe.microphone(), probe.display(), probe.qt(), probe.bf16()
    return {
        "mmchat": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "libraries": {name: _version(name) for name in LIBRARIES},
        "paths": {"data": str(paths.data_dir()), "database": str(paths.database_path()),
                  "cache": str(paths.cache_dir()), "models": str(paths.models_dir()),
                  "assets": str(paths.assets_dir())},
        "models": model_rows(),
        "chat": chat_runtime(),
        "images": images(),
        "features": {
            "display": {"ok": screen.ok, "reason": screen.reason},
            "qt": {"ok": qt.ok, "reason": qt.reason},
            "microphone": {"ok": mic.ok, "reason": mic.reason},
            "bf16": {"ok": bf16.ok, "reason": bf16.reason},
        },
    }


def images() -> dict:
    """Which image encoder and OCR model a chat uses (the settings' choice, else the default), and
    whether the encoder is pretrained: a random init names nothing."""
    import json

    from mmchat import settings

    try:  # read only: settings.load would move a damaged file aside, and a diagnosis must change nothing
        chosen = json.loads(settings.settings_path().read_text(encoding="utf-8")).get("image_encoder", "")
    except (OSError, ValueError, AttributeError):
        chosen = ""
    encoder = registry.get(chosen) if chosen in {m.name for m in registry.MODELS} else registry.default(registry.Role.IMAGE)
    pretrained = encoder.bundled or download.is_fetched(encoder.name)
    ocr = registry.default(registry.Role.OCR)
    return {"encoder": encoder.name, "pretrained": pretrained, "encoder_state": model_state(encoder),
            "ocr": ocr.name, "ocr_state": model_state(ocr)}


def format_report(data: dict) -> str:
    lines = [f"mmchat {data['mmchat']} on Python {data['python']} ({data['platform']})", "", "Libraries:"]
    lines += [f"  {name:20} {version or 'not installed'}" for name, version in data["libraries"].items()]
    lines += ["", "Paths:"] + [f"  {k:9} {v}" for k, v in data["paths"].items()]
    lines += ["", "Models:"]
    lines += [f"  {m['name']:30} {m['role']:18} {m['state']}" for m in data["models"]]
    chat = data["chat"]
    lines += ["", "Chat:",
              f"  {chat['llm']} on {chat['runtime']}"
              + (f", {chat['threads']} threads (llama-cpp-python {chat['llama_cpp'] or 'NOT INSTALLED'})"
                 if chat["runtime"] == "llama.cpp" else "")]
    if chat["server"]:
        lines.append(f"  the app chats on the server {chat['server']} (Settings); API key "
                     f"{'found' if chat['server_key'] else 'none (MMCHAT_API_KEY or the system keyring)'}")
    image = data["images"]
    lines += ["", "Images:",
              f"  encoder     {image['encoder']} ({'pretrained' if image['pretrained'] else 'untrained: seeded random init'}, "
              f"{image['encoder_state']})",
              f"  text (OCR)  {image['ocr']} ({image['ocr_state']})"]
    lines += ["", "Features:"]
    for name, feature in data["features"].items():
        lines.append(f"  {name:11} {'yes' if feature['ok'] else 'no '}  {feature['reason']}")
    return "\n".join(lines)
