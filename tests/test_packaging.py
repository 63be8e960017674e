"""Packaging: the wheel carries the package modules and assets (and no model weights), installs into
a fresh venv whose ``mmchat`` finds its assets; the app bundle finds model files when frozen and
carries a portable llama.cpp; the icon set and the freedesktop entry are complete."""

from __future__ import annotations

import ast
import configparser
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from mmchat import registry
from mmchat.errors import MMChatError

ROOT = Path(__file__).resolve().parent.parent
ICON_SIZES = (16, 22, 24, 32, 48, 64, 128, 256, 512)  # px, as scripts/render_icons.py renders them
MAX_WHEEL_FILE_BYTES = 1_000_000  # nothing in the wheel is a model weight file ...
SHIPPED_FUSION = tuple(f"mmchat/assets/fusion/qwen2.5-coder-0.5b-instruct/{encoder}/fusion.safetensors"
                       for encoder in ("efficientnet-lite0", "clip-vit-b-32"))  # ... but these
MAX_FUSION_BYTES = 16_000_000
WEIGHT_SUFFIXES = (".gguf", ".bin", ".onnx", ".pt", ".ckpt")
BUILD_TIMEOUT_S = 300


def _build_wheel(out: Path) -> Path:
    """``pip wheel . --no-deps`` into ``out``; offline when this environment has setuptools>=77."""
    setuptools_major = int(importlib.metadata.version("setuptools").split(".")[0])
    isolation = [] if setuptools_major < 77 else ["--no-build-isolation"]
    subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", "wheel", str(ROOT), "--no-deps",
                    "-q", "-w", str(out), *isolation], check=True, timeout=BUILD_TIMEOUT_S, cwd=out)
    (wheel,) = out.glob("mmchat-*.whl")
    return wheel


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    return _build_wheel(tmp_path_factory.mktemp("wheel"))


def test_wheel_holds_modules_and_assets_but_no_weights(wheel):
    with zipfile.ZipFile(wheel) as z:
        infos = z.infolist()
    names = {i.filename for i in infos}
    for module in ("mmchat/cli.py", "mmchat/registry.py", "mmchat/encoders/whisper.py",
                   "mmchat/fusion_data/dataset.py", "mmchat_ui/app.py", "mmchat_ui/about_dialog.py"):
        assert module in names
    assert "mmchat/assets/icons/mmchat.svg" in names
    assert "mmchat/assets/fusion/README.md" in names  # where a shipped fusion checkpoint goes
    for size in ICON_SIZES:
        assert f"mmchat/assets/icons/hicolor/{size}x{size}/apps/mmchat.png" in names
    assert not any(n.startswith(("tests/", "packaging/", "ui/")) for n in names)
    assert not [n for n in names if n.endswith(WEIGHT_SUFFIXES)]
    sizes = {i.filename: i.file_size for i in infos}
    for shipped in SHIPPED_FUSION:
        assert 0 < sizes.pop(shipped) < MAX_FUSION_BYTES  # the trained projectors, small, shipped
    assert "mmchat/assets/fusion/qwen2.5-coder-0.5b-instruct/efficientnet-lite0/fusion.json" in sizes
    assert max(sizes.values()) < MAX_WHEEL_FILE_BYTES
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    with zipfile.ZipFile(wheel) as z:
        assert "mmchat = mmchat.cli:main" in z.read(entry_points).decode()


@pytest.mark.slow
def test_wheel_installs_into_a_fresh_venv_and_finds_its_assets(wheel, tmp_path):
    """A throwaway venv, the wheel installed with --no-deps, the dependencies seen through this
    environment's site-packages (a .pth file); the installed ``mmchat`` runs and finds its assets."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    purelib = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                  capture_output=True, text=True, check=True).stdout.strip())
    dependencies = [p for p in sys.path if Path(p).name in ("site-packages", "dist-packages")]
    (purelib / "dependencies.pth").write_text("\n".join(dependencies) + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", "--python", str(python),
                    "install", "--no-deps", "--no-index", "-q", str(wheel)], check=True, timeout=BUILD_TIMEOUT_S)
    env = dict(os.environ, MMCHAT_DATA_DIR=str(tmp_path / "data"), PYTHONPATH="")
    help_text = subprocess.run([str(venv / "bin" / "mmchat"), "--help"], capture_output=True, text=True,
                               check=True, env=env, timeout=120, cwd=tmp_path).stdout
    assert "doctor" in help_text and "chat" in help_text
    code = ("import json, mmchat, mmchat.paths as p, mmchat.media as m, mmchat.vision.imagenet as i; "
            "print(json.dumps([mmchat.__file__, str(p.assets_dir()), [str(d) for d in m.checkpoint_dirs('x')], "
            "len(i.classes())]))")
    out = subprocess.run([str(python), "-c", code], capture_output=True, text=True, env=env, timeout=300,
                         cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    module, assets, fusion_dirs, classes = json.loads(out.stdout)
    assert classes == 1000  # ImageNet's class names are package data
    assert Path(module).is_relative_to(purelib)  # the installed copy, not this checkout
    assert Path(assets) == purelib / "mmchat" / "assets"
    assert (Path(assets) / "icons" / "hicolor" / "512x512" / "apps" / "mmchat.png").is_file()
    assert Path(fusion_dirs[1]) == purelib / "mmchat" / "assets" / "fusion" / "x"


def test_frozen_bundle_finds_model_files_in_the_bundle(tmp_path, monkeypatch):
    """In the PyInstaller bundle (sys.frozen), a model package's files sit in <bundle>/<module>/."""
    part = registry.get("smollm2-135m-instruct").parts[0]
    bundled = tmp_path / part.module / part.path
    bundled.parent.mkdir(parents=True)
    bundled.write_bytes(b"GGUF")
    monkeypatch.setattr(sys, "frozen", True, raising=False)
    monkeypatch.setattr(sys, "_MEIPASS", str(tmp_path), raising=False)
    assert part.locate() == bundled
    # A package the bundle left out falls back to an installed one, or names what to install.
    other = registry.get("whisper-base").parts[0]
    try:
        assert other.locate().is_file()
    except registry.MMChatError as exc:
        assert other.requirement in exc.hint


def test_the_bundle_gets_a_portable_llama_cpp():
    """build.sh bundles build/portable-venv, whose llama.cpp has every CPU variant and nothing native,
    installed beside libggml in llama_cpp/lib (the build itself takes 10-25 minutes: not run here)."""
    script = ROOT / "packaging" / "portable-venv.sh"
    flags = subprocess.run(["bash", "-c", f'eval "$(grep ^LLAMA_CMAKE_ARGS {script})"; echo "$LLAMA_CMAKE_ARGS"'],
                           capture_output=True, text=True, check=True).stdout.split()
    assert {"-DGGML_NATIVE=OFF", "-DGGML_BACKEND_DL=ON", "-DGGML_CPU_ALL_VARIANTS=ON", "-DGGML_OPENMP=OFF",
            "-DCMAKE_INSTALL_BINDIR=llama_cpp/lib"} == set(flags)
    assert 'python=${PYTHON:-$("$root/packaging/portable-venv.sh")}' in (ROOT / "packaging" / "build.sh").read_text()


def _spec_function(name: str, **namespace):
    """One top-level function of packaging/mmchat.spec (PyInstaller runs the spec; nothing imports it)."""
    spec = ast.parse((ROOT / "packaging" / "mmchat.spec").read_text())
    (node,) = [n for n in spec.body if isinstance(n, ast.FunctionDef) and n.name == name]
    exec(compile(ast.Module(body=[node], type_ignores=[]), "mmchat.spec", "exec"), namespace)
    return namespace[name]


def test_the_spec_bundles_the_cpu_variants_and_refuses_a_native_build(tmp_path):
    lib = tmp_path / "llama_cpp" / "lib"
    lib.mkdir(parents=True)
    native = ["libggml-base.so.0", "libggml-cpu.so.0", "libggml.so.0", "libllama.so"]
    for name in native:
        (lib / name).write_bytes(b"\x7fELF")

    def collect_dynamic_libs(package):  # PyInstaller's: (source, folder in the bundle) per library
        return [(str(f), f"{package}/lib") for f in sorted((tmp_path / package / "lib").iterdir())]

    llama_binaries = _spec_function("llama_binaries", Path=Path, collect_dynamic_libs=collect_dynamic_libs)
    with pytest.raises(SystemExit, match="portable-venv"):
        llama_binaries()
    for variant in ("x64", "haswell", "zen4"):
        (lib / f"libggml-cpu-{variant}.so").write_bytes(b"\x7fELF")
    bundled = {Path(source).name: folder for source, folder in llama_binaries()}
    assert bundled["libggml-cpu-haswell.so"] == "llama_cpp/lib" == bundled["libllama.so"]
    assert len(bundled) == len(native) + 3


class _DynamicGgml:
    """libllama of a GGML_BACKEND_DL build as ctypes shows it (``lib[name]`` is a fresh function, ggml's
    too): no backend until one is loaded from a folder, which holds ``found`` of them."""

    def __init__(self, found: int) -> None:
        self.found, self.registered, self.folders = found, 0, []

    def __getitem__(self, name: str):
        def ggml_backend_reg_count():
            return self.registered

        def ggml_backend_load_all_from_path(folder):
            self.folders.append(folder)
            self.registered += self.found

        return {f.__name__: f for f in (ggml_backend_reg_count, ggml_backend_load_all_from_path)}[name]


def test_llama_cpp_loads_its_cpu_variants_from_its_own_folder(monkeypatch):
    import llama_cpp.llama_cpp as bindings

    from mmchat.llm import gguf

    gguf.load_backends()  # this venv's native build links its CPU backend in: nothing to do
    assert bindings.llama_print_system_info().startswith(b"CPU : ")
    portable = _DynamicGgml(found=1)
    monkeypatch.setattr(bindings, "_lib", portable)
    monkeypatch.setattr(bindings, "llama_print_system_info", lambda: b"CPU : AVX2 = 1 | ")
    gguf.load_backends()
    gguf.load_backends()
    assert portable.folders == [os.fsencode(bindings._base_path)]  # once, llama_cpp/lib: not cwd, not python's
    monkeypatch.setattr(bindings, "_lib", _DynamicGgml(found=0))
    with pytest.raises(MMChatError, match="no CPU backend"):
        gguf.load_backends()


def test_icon_set_is_rendered_at_every_size():
    icons = ROOT / "assets" / "icons"
    assert (icons / "mmchat.svg").read_text().lstrip().startswith("<svg")
    for size in ICON_SIZES:
        with Image.open(icons / "hicolor" / f"{size}x{size}" / "apps" / "mmchat.png") as image:
            assert image.size == (size, size) and image.mode == "RGBA"
    with Image.open(icons / "mmchat.ico") as ico:
        assert (256, 256) in ico.info["sizes"]


def test_desktop_entry_names_the_command_and_icon():
    entry = configparser.ConfigParser(interpolation=None)
    entry.optionxform = str
    entry.read(ROOT / "packaging" / "mmchat.desktop")
    section = entry["Desktop Entry"]
    assert section["Type"] == "Application" and section["Exec"].split()[0] == "mmchat"
    assert section["Icon"] == "mmchat"  # the hicolor PNGs are named mmchat.png
    validate = shutil.which("desktop-file-validate")
    if validate is None:
        pytest.skip("desktop-file-validate is not installed (apt install desktop-file-utils)")
    result = subprocess.run([validate, str(ROOT / "packaging" / "mmchat.desktop")], capture_output=True, text=True)
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout
