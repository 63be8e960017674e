"""A registry LLM's GGUF file, read without torch: where it is (the package's file, or its parts
joined once into the cache), one tensor's place in it, and opening it in llama.cpp ahead of use.

``chat --once`` opens the model in a thread (:func:`open_ahead`: the file's sha256 check and
llama.cpp's load both run without the GIL) while the main thread imports torch and the chat code;
the runtime then takes the opened model (:func:`take_opened`).
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading
from concurrent.futures import Future
from pathlib import Path

from mmchat import download, registry
from mmchat.cache import ConversionCache, Progress, join_parts
from mmchat.errors import MMChatError
from mmchat.llm import MAX_CONTEXT_TOKENS, PREFILL_CHUNK_TOKENS

log = logging.getLogger(__name__)

JOINED_VERSION = 1  # the joined-GGUF cache's layout (a byte-for-byte join of the package parts)
GGUF_NAME = "model.gguf"
KV_VALUE_BYTES = 2  # f16: llama.cpp's default KV cache type, which open_llama keeps
# llama.cpp's memory besides the file and the KV cache. Measured for the default model at n_ctx 8192
# and 512-position batches: a 302 MiB compute buffer (mostly one batch's logits over Qwen's 151 936-
# token vocabulary), 28 MiB of weights repacked for the CPU's matrix kernels, a 0.6 MiB output
# buffer; rounded up for the library itself and a bigger model's larger activations.
RUNTIME_OVERHEAD_BYTES = 512 * 2**20
REINSTALL_HINT = "Reinstall the model packages: the README's setup command does this."


def path(spec: registry.ModelSpec, *, progress: Progress | None = None) -> Path:
    """The registry model's GGUF file: the package's own file, its parts joined once into the cache, or
    the file fetched from the hub (of a split GGUF the first part: llama.cpp finds the rest beside it)."""
    if spec.source_format != "gguf":
        raise MMChatError(f"{spec.name} is not a GGUF model, which llama.cpp needs.",
                          hint="Choose a GGUF model, or the torch runtime (MMCHAT_LLM_RUNTIME=torch).")
    if not spec.bundled:
        return _fetched(spec)
    if len(spec.parts) == 1:
        return spec.verified_parts(registry.Role.LLM)[0]
    # Its own subfolder: the de-quantised torch copy's cache drops other versions beside it.
    cache = ConversionCache(f"{spec.name}/gguf", spec.sha256 or "", JOINED_VERSION)
    return cache.load_or_build(lambda out: join_parts(
        spec.locate_parts(), out / GGUF_NAME, expected_sha256=spec.sha256, desc=f"joining {spec.name}",
        progress=progress)) / GGUF_NAME


def _fetched(spec: registry.ModelSpec) -> Path:
    """The first hub file of a fetched GGUF model. Checked as every fetched model is at load (the fetch's
    manifest, each file at its size); ``mmchat models verify`` hashes them."""
    if not download.is_fetched(spec.name):
        state = "incompletely fetched or damaged" if download.hub_dir(spec.name).exists() else "not fetched yet"
        raise MMChatError(f"{spec.name} is {state} ({spec.size_bytes / 1e9:.1f} GB from {spec.hub_id}).",
                          hint=f"Fetch it with: mmchat models fetch {spec.name}")
    return download.hub_dir(spec.name) / spec.hub_files[0]


def repair_hint(spec: registry.ModelSpec) -> str:
    """What to do about a model file llama.cpp cannot load: a package's is reinstalled, a fetch redone."""
    if spec.bundled:
        return REINSTALL_HINT
    return f"Fetch it again with: mmchat models fetch {spec.name} (mmchat models verify {spec.name} checks it)"


def kv_cache_bytes(spec: registry.ModelSpec, *, tokens: int = MAX_CONTEXT_TOKENS) -> int:
    """The KV cache llama.cpp allocates for ``tokens`` positions: a key and a value vector per layer
    and KV head (``layers``, ``kv_heads`` and ``head_dim`` from the registry), f16 each."""
    shape = spec.settings
    return 2 * shape["layers"] * shape["kv_heads"] * shape["head_dim"] * KV_VALUE_BYTES * tokens


def ram_need(spec: registry.ModelSpec) -> int | None:
    """Bytes of RAM chatting with GGUF model ``spec`` needs at mmchat's context: the whole file (memory-
    mapped; every token reads all of it), the KV cache of :data:`MAX_CONTEXT_TOKENS` positions (what
    :func:`open_llama` makes, whatever the model was trained for) and :data:`RUNTIME_OVERHEAD_BYTES`.
    None for a model llama.cpp does not run (torch's memory is another sum)."""
    if spec.source_format != "gguf":
        return None
    return spec.size_bytes + kv_cache_bytes(spec) + RUNTIME_OVERHEAD_BYTES


def open_llama(file: Path, *, threads: int, n_ctx: int = MAX_CONTEXT_TOKENS,
               n_batch: int = PREFILL_CHUNK_TOKENS, hint: str = REINSTALL_HINT):
    """llama-cpp-python's ``Llama`` on ``file`` (memory-mapped), or a clear error with ``hint``."""
    try:
        from llama_cpp import Llama
    except ImportError as exc:
        raise MMChatError(f"The llama.cpp runtime does not import ({exc}).",
                          hint="Run the README's setup command again (it builds llama-cpp-python).") from None
    load_backends()
    try:
        return Llama(model_path=str(file), n_ctx=n_ctx, n_batch=n_batch, n_ubatch=n_batch, n_threads=threads,
                     n_threads_batch=threads, use_mmap=True, verbose=False)
    except (ValueError, RuntimeError, OSError) as exc:  # llama-cpp-python's "Failed to load model"
        raise MMChatError(f"llama.cpp could not load {file} ({exc}).", hint=hint) from None


_backends_lock = threading.Lock()


def load_backends() -> None:
    """Register llama.cpp's CPU backend before a model loads; a build that links it in needs nothing.

    The app bundle's portable build (packaging/portable-venv.sh: ``GGML_BACKEND_DL``, ``GGML_CPU_ALL_VARIANTS``)
    has no CPU code in libggml: one ``libggml-cpu-<variant>.so`` per instruction set lies in
    ``llama_cpp/lib``, and ggml dlopens the best one this CPU runs. llama-cpp-python 0.3.36 has no
    binding for that (abetlen/llama-cpp-python#2069), and the ``ggml_backend_load_all()`` inside its
    ``llama_backend_init`` searches only the executable's folder (python's, or the bundle's top) and
    the working directory, never the libraries' folder; so ask ggml to look there.

    Through libllama's handle: ``dlsym`` on it finds ggml's functions in the libggml that libllama
    uses. ``llama_cpp._ggml.libggml`` is another copy (loaded by the file name libggml.so, which the
    wheel holds as a copy of libggml.so.0, not a link) whose backend registry llama.cpp never reads."""
    import llama_cpp.llama_cpp as bindings  # _lib: libllama; _base_path: its folder, llama_cpp/lib

    lib = bindings._lib
    count = lib["ggml_backend_reg_count"]  # lib[name]: a fresh function pointer, not the shared attribute
    count.restype, count.argtypes = ctypes.c_size_t, []
    with _backends_lock:
        if count():
            return  # a native build, or loaded already
        # ggml reports the variant it loads at INFO; Llama(verbose=False) silences that logger anyway.
        logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)
        load_all = lib["ggml_backend_load_all_from_path"]
        load_all.restype, load_all.argtypes = None, [ctypes.c_char_p]
        load_all(os.fsencode(bindings._base_path))
        if not count():
            raise MMChatError(f"llama.cpp found no CPU backend it can run in {bindings._base_path}.",
                              hint="Reinstall mmchat: its libggml-cpu-*.so files are missing.")
        log.info("llama.cpp backends loaded from %s: %s", bindings._base_path,
                 bindings.llama_print_system_info().decode(errors="replace"))


_opened: dict[tuple[str, int], Future] = {}
_opened_lock = threading.Lock()


def open_ahead(name: str, *, threads: int) -> None:
    """Start finding, checking and opening registry model ``name`` in a daemon thread; a later
    :func:`take_opened` with the same arguments gets it (or the error it met)."""
    key = (name, threads)
    future: Future = Future()
    with _opened_lock:
        if key in _opened:
            return
        _opened[key] = future

    def run() -> None:
        try:
            spec = registry.get(name)
            file = path(spec)
            future.set_result((file, open_llama(file, threads=threads, hint=repair_hint(spec))))
        except BaseException as exc:  # handed to whoever takes it
            future.set_exception(exc)

    threading.Thread(target=run, name=f"open {name}", daemon=True).start()


def take_opened(name: str, *, threads: int):
    """(GGUF path, Llama) opened ahead for these arguments, waiting for it; None if none was."""
    with _opened_lock:
        future = _opened.pop((name, threads), None)
    return None if future is None else future.result()


# GGUF value types by number: struct format of the fixed-size ones (8 is a string, 9 an array).
_GGUF_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}


def find_tensor(path: Path, wanted: str) -> tuple[str, tuple[int, ...], int, int]:
    """(name, shape, GGML type, absolute byte offset) of one tensor in a GGUF file (v2/v3, little
    endian), read from its header. gguf's own GGUFReader builds every metadata array as numpy
    views first: 9.5 s for Qwen's vocabulary, where skipping it takes a fraction of a second."""
    import mmap
    import struct

    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
        if data[:4] != b"GGUF":
            raise MMChatError(f"{path} is not a GGUF file.")
        version, n_tensors, n_kv = struct.unpack_from("<IQQ", data, 4)
        at = 24
        alignment = 32

        def string(at: int) -> tuple[str, int]:
            (n,) = struct.unpack_from("<Q", data, at)
            return data[at + 8:at + 8 + n].decode("utf-8", "replace"), at + 8 + n

        def skip(kind: int, at: int) -> int:
            if kind in _GGUF_SCALARS:
                return at + struct.calcsize(_GGUF_SCALARS[kind])
            if kind == 8:
                (n,) = struct.unpack_from("<Q", data, at)
                return at + 8 + n
            if kind == 9:
                item, count = struct.unpack_from("<IQ", data, at)
                at += 12
                if item in _GGUF_SCALARS:
                    return at + count * struct.calcsize(_GGUF_SCALARS[item])
                for _ in range(count):
                    at = skip(item, at)
                return at
            raise MMChatError(f"{path}: unknown GGUF value type {kind} (version {version}).")

        for _ in range(n_kv):
            key, at = string(at)
            (kind,) = struct.unpack_from("<I", data, at)
            if key == "general.alignment" and kind == 4:
                (alignment,) = struct.unpack_from("<I", data, at + 4)
            at = skip(kind, at + 4)
        found = None
        for _ in range(n_tensors):
            name, at = string(at)
            (n_dims,) = struct.unpack_from("<I", data, at)
            shape = struct.unpack_from(f"<{n_dims}Q", data, at + 4)
            kind, offset = struct.unpack_from("<IQ", data, at + 4 + 8 * n_dims)
            at += 4 + 8 * n_dims + 12
            if name == wanted:
                found = (name, tuple(shape), kind, offset)
        if found is None:
            raise MMChatError(f"{path} has no tensor {wanted}.")
        start = (at + alignment - 1) // alignment * alignment  # tensor data begins aligned after the header
        return found[0], found[1], found[2], start + found[3]
