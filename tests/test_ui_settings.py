"""The settings dialog: theme, generation, fusion, models (with fetch progress), data folder, wipe."""

import json

import pytest
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QMessageBox

from mmchat import settings as settings_mod
from mmchat.settings import Settings
from mmchat_ui import theme
from mmchat_ui.demo import DemoEngine, DemoLLM
from mmchat_ui.settings_dialog import SettingsDialog
from ui_helpers import WAIT_MS, click, make_window, type_and_send, wait_reply  # noqa: F401

pytestmark = pytest.mark.gui


def open_dialog(qtbot, window) -> SettingsDialog:
    qtbot.keyClick(window.composer.edit, Qt.Key.Key_Comma, Qt.KeyboardModifier.ControlModifier)
    dialog = window._settings_dialog
    assert isinstance(dialog, SettingsDialog) and dialog.isVisible()
    return dialog


def test_theme_change_applies_at_once_and_is_saved(qtbot, make_window, data_dir):
    window = make_window(save_settings=True)
    assert not theme.current().dark
    dialog = open_dialog(qtbot, window)
    dialog.theme.setCurrentIndex(dialog.theme.findData("dark"))
    dialog.accept()
    assert theme.current().dark and window.settings.theme == "dark"
    assert "#1f2023" in window.styleSheet() or theme.current().window == "#1f2023"
    assert json.loads((data_dir / "settings.json").read_text())["theme"] == "dark"
    assert settings_mod.load().settings.theme == "dark"


def test_generation_parameters_reach_the_model(qtbot, make_window):
    llm = DemoLLM("ok")
    window = make_window(DemoEngine(llm))
    dialog = open_dialog(qtbot, window)
    dialog.temperature.setValue(0.2)
    dialog.max_tokens.setValue(64)
    dialog.top_k.setValue(5)
    dialog.fixed_seed.setChecked(True)
    dialog.seed.setValue(1234)
    dialog.accept()
    type_and_send(qtbot, window, "Hi")
    wait_reply(qtbot, window)
    config = llm.configs[-1]
    assert (config.temperature, config.max_new_tokens, config.top_k, config.seed) == (0.2, 64, 5, 1234)


def test_fusion_switches_rebuild_the_session(qtbot, make_window):
    window = make_window(DemoEngine(DemoLLM("ok")))
    type_and_send(qtbot, window, "one")
    wait_reply(qtbot, window)
    ref = window.controller.current
    assert ref.signature[1:] == (True, True)
    dialog = open_dialog(qtbot, window)
    dialog.fusion_image.setChecked(False)
    dialog.accept()
    type_and_send(qtbot, window, "two")
    wait_reply(qtbot, window)
    assert ref.signature[1:] == (False, True)
    assert [w.text for w in window.chat.messages()] == ["one", "ok", "two", "ok"]  # same conversation, new session


def test_model_choice_lists_the_registry_and_fetches_optional_models_with_progress(qtbot, make_window):
    fetched = []

    def fake_fetch(name, progress):
        for done in range(0, 101, 25):
            progress(done * 1_000_000, 100_000_000)
        fetched.append(name)
        return None

    engines = []

    def make_engine(settings):
        engines.append(settings.llm)
        return DemoEngine()

    window = make_window(make_engine=make_engine, fetch_model=fake_fetch)
    dialog = open_dialog(qtbot, window)
    box = dialog.model_boxes["llm"]
    names = [box.itemData(i) for i in range(box.count())]
    assert "qwen2.5-coder-0.5b-instruct" in names and "smollm2-135m-instruct" in names
    assert "smollm2-360m-instruct" in names  # optional, fetched on request
    assert box.currentData() == "qwen2.5-coder-0.5b-instruct"
    box.setCurrentIndex(box.findData("smollm2-360m-instruct"))
    assert "not fetched" in dialog.model_states["llm"].text()
    assert dialog.fetch_button.isEnabled() and "smollm2-360m-instruct" in dialog.fetch_button.text()
    progress_seen = []
    dialog.fetch_progress.valueChanged.connect(progress_seen.append)
    click(qtbot, dialog.fetch_button)
    qtbot.waitUntil(lambda: fetched == ["smollm2-360m-instruct"] and dialog._fetching is None, timeout=WAIT_MS)
    assert 1000 in progress_seen and "ready" in dialog.fetch_status.text()
    box.setCurrentIndex(box.findData("smollm2-135m-instruct"))
    dialog.accept()
    assert window.settings.llm == "smollm2-135m-instruct"
    assert engines[-1] == "smollm2-135m-instruct"  # a new engine for the new model


def test_failed_fetch_says_why(qtbot, make_window):
    from mmchat.errors import MMChatError

    def offline(name, progress):
        raise MMChatError("Could not reach the Hugging Face hub.")

    window = make_window(fetch_model=offline)
    dialog = open_dialog(qtbot, window)
    box = dialog.model_boxes["asr"]
    box.setCurrentIndex(box.findData("whisper-small"))
    click(qtbot, dialog.fetch_button)
    # "failed" and "finished" are two queued signals: the button comes back with the second.
    qtbot.waitUntil(lambda: "hub" in dialog.fetch_status.text() and dialog.fetch_button.isEnabled(), timeout=WAIT_MS)
    assert dialog.fetch_progress.isHidden()
    dialog.reject()


def test_microphone_list_and_voice_options(qtbot, make_window):
    window = make_window(input_devices=lambda: ["Built-in Microphone", "USB Headset"])
    dialog = open_dialog(qtbot, window)
    qtbot.waitUntil(lambda: dialog.device.count() == 3, timeout=WAIT_MS)
    dialog.device.setCurrentIndex(dialog.device.findData("USB Headset"))
    dialog.send_at_once.setChecked(True)
    dialog.max_recording.setValue(30)
    dialog.accept()
    s = window.settings
    assert (s.input_device, s.voice_send_at_once, s.max_recording_s) == ("USB Headset", True, 30)


def test_wipe_all_data_after_confirming(qtbot, make_window, data_dir):
    window = make_window()
    type_and_send(qtbot, window, "Secret plans")
    wait_reply(qtbot, window)
    assert window.sidebar.titles() == ["Secret plans"]
    dialog = open_dialog(qtbot, window)
    click(qtbot, dialog.wipe_button)
    confirm = dialog.confirm
    assert confirm.isVisible()
    confirm.button(QMessageBox.StandardButton.Cancel).click()
    assert window.sidebar.titles() == ["Secret plans"]  # cancelled: nothing happened
    click(qtbot, dialog.wipe_button)
    delete = [b for b in dialog.confirm.buttons() if b.text() == "Delete everything"][0]
    delete.click()
    assert window.sidebar.titles() == [] and window.chat.empty.isVisible()
    for path in data_dir.iterdir():
        if path.is_file():
            assert b"Secret plans" not in path.read_bytes(), path
    type_and_send(qtbot, window, "Fresh start")  # the app carries on with the new, empty database
    wait_reply(qtbot, window)
    assert window.sidebar.titles() == ["Fresh start"]


def test_data_folder_change_opens_the_conversations_there(qtbot, make_window, tmp_path):
    window = make_window()
    type_and_send(qtbot, window, "In the old folder")
    wait_reply(qtbot, window)
    dialog = open_dialog(qtbot, window)
    dialog.data_dir.setText(str(tmp_path / "elsewhere"))
    dialog.accept()
    assert window.sidebar.titles() == []
    type_and_send(qtbot, window, "In the new folder")
    wait_reply(qtbot, window)
    assert (tmp_path / "elsewhere" / "mmchat.sqlite3").is_file()
    assert window.sidebar.titles() == ["In the new folder"]


def test_temporary_by_default(qtbot, make_window):
    window = make_window(settings=Settings(temporary_by_default=True))
    assert window.controller.current.temporary and window.temporary_button.isChecked()
    assert window.chat.temp_banner.isVisible()


def test_a_chat_server_address_is_checked_and_rebuilds_the_engine(qtbot, make_window):
    made = []
    window = make_window(make_engine=lambda settings: made.append(settings) or DemoEngine())
    dialog = open_dialog(qtbot, window)
    dialog.server_url.setText("ftp://files.example.org")
    dialog.accept()
    assert dialog.isVisible() and "not a server address" in dialog.server_note.text()
    assert window.settings.server_url == ""
    dialog.server_url.setText("127.0.0.1:8080/v1")
    dialog.server_model.setText("qwen2.5-7b")
    dialog.accept()
    assert not dialog.isVisible()
    assert (window.settings.server_url, window.settings.server_model) == ("127.0.0.1:8080/v1", "qwen2.5-7b")
    assert made[-1].server_url == "127.0.0.1:8080/v1"  # chat goes to the server from the next turn
