"""Settings: models (with fetch and progress for optional ones), generation, voice and fusion,
appearance, memory (ask / auto / off, the profile's memory mode), data folder and privacy (wipe
everything, with a confirmation).

The dialog edits a copy of :class:`mmchat.settings.Settings` and emits it on OK; the window applies
and saves it. Fetching runs in the window's task runner and reports progress here.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from PySide6.QtCore import QUrl, Signal
from PySide6.QtGui import QDesktopServices
from PySide6.QtWidgets import (QCheckBox, QComboBox, QDialog, QDialogButtonBox, QDoubleSpinBox, QFileDialog,
                               QFormLayout, QHBoxLayout, QLabel, QLineEdit, QMessageBox, QProgressBar,
                               QPushButton, QSpinBox, QTabWidget, QVBoxLayout, QWidget)

from mmchat import registry
from mmchat.errors import MMChatError
from mmchat.llm.remote import normalise_url
from mmchat.profile import MEMORY_MODES
from mmchat.settings import MAX_RECORDING_S, RANGES, THEMES, Settings
from mmchat_ui.services import Services
from mmchat_ui.workers import Task, TaskRunner

MEMORY_MODE_LABELS = {"ask": "Ask before remembering anything", "auto": "Remember facts automatically (with Undo)",
                      "off": "Never remember anything"}
MODEL_ROLES = (("llm", registry.Role.LLM, "Chat model"), ("asr", registry.Role.ASR, "Speech model"),
               ("image_encoder", registry.Role.IMAGE, "Image encoder"))


def model_state(spec: registry.ModelSpec) -> str:
    """A short phrase for the dialog: bundled, fetched, or how big the download is."""
    if spec.bundled:
        return "bundled" if spec.is_installed() else "missing: reinstall its package"
    from mmchat.download import is_fetched

    if is_fetched(spec.name):
        return "fetched"
    size = f"{spec.size_bytes / 1e9:.1f} GB" if spec.size_bytes >= 1e9 else f"{spec.size_bytes / 1e6:.0f} MB"
    if spec.role is registry.Role.IMAGE:
        return f"not fetched ({size}); chosen before that, a seeded random init is used (untrained)"
    return f"not fetched ({size} download)"


def _needs_fetch(spec: registry.ModelSpec) -> bool:
    if spec.bundled:
        return False
    from mmchat.download import is_fetched

    return not is_fetched(spec.name)


class SettingsDialog(QDialog):
    settings_accepted = Signal(object)  # Settings
    wipe_requested = Signal()
    train_requested = Signal()
    memory_mode_chosen = Signal(str)  # the profile's memory mode, when it was changed here

    def __init__(self, settings: Settings, *, services: Services, runner: TaskRunner, data_folder: Path,
                 memory_mode: str | None = None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Settings")
        self.original = settings
        self.services = services
        self.runner = runner
        self.default_folder = data_folder
        self.memory_mode_before = memory_mode  # None: the profile is not loaded (yet)
        self._fetching: Task | None = None
        layout = QVBoxLayout(self)
        self.tabs = QTabWidget()
        self.tabs.addTab(self._general_tab(settings), "General")
        self.tabs.addTab(self._models_tab(settings), "Models")
        self.tabs.addTab(self._generation_tab(settings), "Generation")
        self.tabs.addTab(self._voice_tab(settings), "Voice && fusion")
        self.tabs.addTab(self._privacy_tab(settings), "Data && privacy")
        layout.addWidget(self.tabs)
        self.buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
        self.buttons.accepted.connect(self.accept)
        self.buttons.rejected.connect(self.reject)
        layout.addWidget(self.buttons)
        self.resize(620, 480)

    # -- tabs ------------------------------------------------------------------------------------
    def _general_tab(self, s: Settings) -> QWidget:
        page = QWidget()
        form = QFormLayout(page)
        self.theme = QComboBox()
        for value in THEMES:
            self.theme.addItem({"system": "Follow the system", "light": "Light", "dark": "Dark"}[value], value)
        self.theme.setCurrentIndex(THEMES.index(s.theme))
        form.addRow("Theme", self.theme)
        self.read_aloud = QCheckBox("Read every reply aloud (offline piper voice)")
        self.read_aloud.setChecked(s.read_aloud)
        form.addRow("", self.read_aloud)
        self.memory_mode = QComboBox()
        for mode in MEMORY_MODES:
            self.memory_mode.addItem(MEMORY_MODE_LABELS[mode], mode)
        self.memory_mode.setCurrentIndex(max(0, self.memory_mode.findData(self.memory_mode_before)))
        self.memory_mode.setEnabled(self.memory_mode_before is not None)
        form.addRow("Memory", self.memory_mode)
        note = QLabel("Facts you mention (“I'm allergic to peanuts”) can be remembered for later chats; "
                      "text that reads like an instruction is never remembered without asking. "
                      "See and edit everything in Profile & memory (Ctrl+Shift+P)."
                      if self.memory_mode_before is not None else "Your profile is still loading.")
        note.setWordWrap(True)
        note.setObjectName("messageMeta")
        form.addRow("", note)
        return page

    def _models_tab(self, s: Settings) -> QWidget:
        page = QWidget()
        form = QFormLayout(page)
        self.model_boxes: dict[str, QComboBox] = {}
        self.model_states: dict[str, QLabel] = {}
        for field_name, role, label in MODEL_ROLES:
            box = QComboBox()
            for spec in registry.by_role(role):
                box.addItem(f"{spec.name}{'  (default)' if spec.default else ''}", spec.name)
            current = getattr(s, field_name) or registry.default(role).name
            box.setCurrentIndex(max(0, box.findData(current)))
            state = QLabel()
            state.setObjectName("messageMeta")
            state.setWordWrap(True)
            box.currentIndexChanged.connect(lambda _i, f=field_name: self._model_changed(f))
            self.model_boxes[field_name] = box
            self.model_states[field_name] = state
            form.addRow(label, box)
            form.addRow("", state)
        fetch_row = QHBoxLayout()
        self.fetch_button = QPushButton("Fetch the selected model")
        self.fetch_button.clicked.connect(self.fetch_selected)
        self.fetch_progress = QProgressBar()
        self.fetch_progress.hide()
        self.fetch_status = QLabel()
        self.fetch_status.setWordWrap(True)
        fetch_row.addWidget(self.fetch_button)
        fetch_row.addWidget(self.fetch_progress, 1)
        form.addRow(fetch_row)
        form.addRow(self.fetch_status)
        note = QLabel("Optional models are downloaded from the Hugging Face hub only when you press Fetch; "
                      "everything else works offline.")
        note.setWordWrap(True)
        note.setObjectName("messageMeta")
        form.addRow(note)
        for field_name, _role, _label in MODEL_ROLES:
            self._model_changed(field_name)
        return page

    def _generation_tab(self, s: Settings) -> QWidget:
        page = QWidget()
        form = QFormLayout(page)
        self.max_tokens = _spin(RANGES["max_new_tokens"], s.max_new_tokens)
        self.temperature = _dspin(RANGES["temperature"], s.temperature, 0.05)
        self.top_p = _dspin(RANGES["top_p"], s.top_p, 0.05)
        self.top_k = _spin(RANGES["top_k"], s.top_k)
        self.repetition = _dspin(RANGES["repetition_penalty"], s.repetition_penalty, 0.05)
        self.fixed_seed = QCheckBox("Fixed seed (the same question gives the same reply)")
        self.fixed_seed.setChecked(s.seed is not None)
        self.seed = _spin((0, 2**31 - 1), s.seed or 0)
        self.seed.setEnabled(s.seed is not None)
        self.fixed_seed.toggled.connect(self.seed.setEnabled)
        form.addRow("Longest reply (tokens)", self.max_tokens)
        form.addRow("Temperature (0 = always the likeliest word)", self.temperature)
        form.addRow("Top-p", self.top_p)
        form.addRow("Top-k (0 = off)", self.top_k)
        form.addRow("Repetition penalty", self.repetition)
        form.addRow(self.fixed_seed)
        form.addRow("Seed", self.seed)
        self.llm_threads = _spin(RANGES["llm_threads"], s.llm_threads)
        self.llm_threads.setSpecialValueText("one per core")  # shown for 0
        form.addRow("CPU threads for the language model", self.llm_threads)
        self.server_url = QLineEdit(s.server_url)
        self.server_url.setPlaceholderText("none: the model runs on this computer")
        self.server_url.setToolTip("An OpenAI-compatible server (llama.cpp, vLLM, Ollama), e.g. http://127.0.0.1:8080. "
                                   "Its API key comes from $MMCHAT_API_KEY or the system keyring "
                                   "(`mmchat server key URL`), never from this file.")
        self.server_model = QLineEdit(s.server_model)
        self.server_model.setPlaceholderText("the first model the server lists")
        self.server_note = QLabel(objectName="messageMeta", wordWrap=True)
        form.addRow("Chat server", self.server_url)
        form.addRow("", self.server_note)
        form.addRow("Server model", self.server_model)
        return page

    def _voice_tab(self, s: Settings) -> QWidget:
        page = QWidget()
        form = QFormLayout(page)
        self.device = QComboBox()
        self.device.addItem("System default", "")
        if s.input_device:
            self.device.addItem(s.input_device, s.input_device)
            self.device.setCurrentIndex(1)
        self.device_note = QLabel("Looking for microphones…")
        self.device_note.setObjectName("messageMeta")
        self.device_note.setWordWrap(True)
        self.runner.start(Task("list-microphones", lambda emit, stop: self.services.input_devices()),
                          succeeded=self._devices_listed)
        form.addRow("Microphone", self.device)
        form.addRow("", self.device_note)
        self.send_at_once = QCheckBox("Send voice messages as soon as you let go (no review)")
        self.send_at_once.setChecked(s.voice_send_at_once)
        form.addRow("", self.send_at_once)
        self.max_recording = _spin((1, MAX_RECORDING_S), s.max_recording_s)
        self.max_recording.setSuffix(" s")
        form.addRow("Longest recording", self.max_recording)
        self.fusion_image = QCheckBox("Images reach the model as fused image tokens")
        self.fusion_image.setChecked(s.fusion_image)
        self.fusion_audio = QCheckBox("Voice reaches the model as fused audio tokens (besides the transcript)")
        self.fusion_audio.setChecked(s.fusion_audio)
        form.addRow("Fusion", self.fusion_image)
        form.addRow("", self.fusion_audio)
        note = QLabel("With fusion off (or no trained fusion checkpoint), images are described in words "
                      "and voice is given by its transcript.")
        note.setWordWrap(True)
        note.setObjectName("messageMeta")
        form.addRow(note)
        self.train_button = QPushButton("Train fusion now")
        self.train_button.setToolTip("Generate training data and train the image and voice projectors for the "
                                     "chat model (tens of minutes on a laptop CPU; progress in the status bar, "
                                     "stoppable; the generated data and encoded features are kept for the next "
                                     "run). Chatting waits while it runs.")
        self.train_button.clicked.connect(self.train_requested)
        form.addRow("Training", self.train_button)
        return page

    def _privacy_tab(self, s: Settings) -> QWidget:
        page = QWidget()
        form = QFormLayout(page)
        folder_row = QHBoxLayout()
        self.data_dir = QLineEdit(s.data_dir)
        self.data_dir.setPlaceholderText(str(self.default_folder))
        browse = QPushButton("Choose…")
        browse.clicked.connect(self._choose_folder)
        open_button = QPushButton("Open")
        open_button.clicked.connect(lambda: QDesktopServices.openUrl(QUrl.fromLocalFile(
            self.data_dir.text() or str(self.default_folder))))
        folder_row.addWidget(self.data_dir, 1)
        folder_row.addWidget(browse)
        folder_row.addWidget(open_button)
        form.addRow("Conversations folder", folder_row)
        self.temporary_default = QCheckBox("Start new chats as temporary chats (never stored)")
        self.temporary_default.setChecked(s.temporary_by_default)
        form.addRow("", self.temporary_default)
        self.wipe_button = QPushButton("Delete all conversations…", objectName="danger")
        self.wipe_button.clicked.connect(self.confirm_wipe)
        form.addRow("Wipe", self.wipe_button)
        note = QLabel("A temporary chat (Ctrl+Shift+N) is kept in memory only and is gone when you leave it. "
                      "Deleting all conversations removes the database file with every message and attachment.")
        note.setWordWrap(True)
        note.setObjectName("messageMeta")
        form.addRow(note)
        return page

    # -- behaviour -------------------------------------------------------------------------------
    def _model_changed(self, field_name: str) -> None:
        spec = registry.get(self.model_boxes[field_name].currentData())
        self.model_states[field_name].setText(f"{spec.description} — {spec.licence} — {model_state(spec)}")
        self._update_fetch_button()

    def _selected_to_fetch(self) -> registry.ModelSpec | None:
        for field_name, _role, _label in MODEL_ROLES:
            spec = registry.get(self.model_boxes[field_name].currentData())
            if _needs_fetch(spec):
                return spec
        return None

    def _update_fetch_button(self) -> None:
        if not hasattr(self, "fetch_button"):
            return
        spec = self._selected_to_fetch()
        self.fetch_button.setEnabled(spec is not None and self._fetching is None)
        self.fetch_button.setText(f"Fetch {spec.name}" if spec is not None else "Selected models are ready")

    def fetch_selected(self) -> None:
        spec = self._selected_to_fetch()
        if spec is None or self._fetching is not None:
            return
        self.fetch_progress.setRange(0, 0)
        self.fetch_progress.show()
        self.fetch_status.setText(f"Fetching {spec.name}…")
        fetch = self.services.fetch_model

        def work(emit, stop):
            return fetch(spec.name, lambda done, total: emit((done, total)))

        self._fetching = self.runner.start(Task(f"fetch-{spec.name}", work), progress=self._fetch_progress,
                                           succeeded=lambda _path: self._fetched(spec.name),
                                           failed=self._fetch_failed, finished=self._fetch_finished)
        self._update_fetch_button()

    def _fetch_progress(self, value) -> None:
        done, total = value
        if total:
            self.fetch_progress.setRange(0, 1000)
            self.fetch_progress.setValue(int(1000 * done / total))
            self.fetch_status.setText(f"{done / 1e6:.0f} of {total / 1e6:.0f} MB")

    def _fetched(self, name: str) -> None:
        self.fetch_status.setText(f"{name} is ready.")
        for field_name, _role, _label in MODEL_ROLES:
            self._model_changed(field_name)

    def _fetch_failed(self, text: str) -> None:
        self.fetch_status.setText(text)

    def _fetch_finished(self) -> None:
        self._fetching = None
        self.fetch_progress.hide()
        self._update_fetch_button()

    def _devices_listed(self, names: list[str]) -> None:
        current = self.device.currentData()
        for name in names:
            if self.device.findData(name) < 0:
                self.device.addItem(name, name)
        self.device.setCurrentIndex(max(0, self.device.findData(current)))
        self.device_note.setText(f"{len(names)} microphone(s) found." if names else
                                 "No microphone found (or PortAudio is missing); voice input is off.")

    def _choose_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Conversations folder",
                                                  self.data_dir.text() or str(self.default_folder))
        if folder:
            self.data_dir.setText(folder)

    def confirm_wipe(self) -> None:
        self.confirm = QMessageBox(QMessageBox.Icon.Warning, "Delete all conversations?",
                                   "Every conversation, message, image and voice clip will be deleted from this "
                                   "computer. This cannot be undone.",
                                   QMessageBox.StandardButton.Cancel, self)
        delete = self.confirm.addButton("Delete everything", QMessageBox.ButtonRole.DestructiveRole)
        self.confirm.setDefaultButton(QMessageBox.StandardButton.Cancel)
        self.confirm.buttonClicked.connect(lambda button: button is delete and self.wipe_requested.emit())
        self.confirm.open()

    def result_settings(self) -> Settings:
        """The settings as edited (not yet applied)."""
        models = {f: self.model_boxes[f].currentData() for f, _r, _l in MODEL_ROLES}
        models = {f: ("" if name == registry.default(role).name else name)
                  for (f, role, _l), name in zip(MODEL_ROLES, models.values())}
        return replace(
            self.original, theme=self.theme.currentData(), read_aloud=self.read_aloud.isChecked(), **models,
            max_new_tokens=self.max_tokens.value(), temperature=round(self.temperature.value(), 3),
            top_p=round(self.top_p.value(), 3), top_k=self.top_k.value(),
            repetition_penalty=round(self.repetition.value(), 3),
            seed=self.seed.value() if self.fixed_seed.isChecked() else None, llm_threads=self.llm_threads.value(),
            server_url=self.server_url.text().strip(), server_model=self.server_model.text().strip(),
            input_device=self.device.currentData() or "", voice_send_at_once=self.send_at_once.isChecked(),
            max_recording_s=self.max_recording.value(), fusion_image=self.fusion_image.isChecked(),
            fusion_audio=self.fusion_audio.isChecked(), data_dir=self.data_dir.text().strip(),
            temporary_by_default=self.temporary_default.isChecked())

    def accept(self) -> None:
        try:
            if self.server_url.text().strip():
                normalise_url(self.server_url.text())
        except MMChatError as exc:  # the dialog stays open on the field to mend
            self.server_note.setText(str(exc))
            self.tabs.setCurrentWidget(self.server_url.parentWidget())
            self.server_url.setFocus()
            return
        mode = self.memory_mode.currentData()
        if self.memory_mode_before is not None and mode != self.memory_mode_before:
            self.memory_mode_chosen.emit(mode)
        self.settings_accepted.emit(self.result_settings())
        super().accept()


def _spin(bounds: tuple[float, float], value: int) -> QSpinBox:
    box = QSpinBox()
    box.setRange(int(bounds[0]), int(min(bounds[1], 2**31 - 1)))
    box.setValue(int(value))
    return box


def _dspin(bounds: tuple[float, float], value: float, step: float) -> QDoubleSpinBox:
    box = QDoubleSpinBox()
    box.setRange(bounds[0], bounds[1])
    box.setSingleStep(step)
    box.setDecimals(2)
    box.setValue(value)
    return box
