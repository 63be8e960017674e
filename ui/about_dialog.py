"""Help → About: versions, models with their licences and states, and where data lives.

The facts are :func:`mmchat.doctor.report`'s, the same as ``mmchat doctor`` prints; the report is
built in the task runner (it probes the microphone and reads model manifests), and the dialog fills
in when it arrives. "Copy details" copies :func:`mmchat.doctor.format_report` of it.
"""

from __future__ import annotations

from collections.abc import Callable

from PySide6.QtCore import QUrl, Signal
from PySide6.QtGui import QDesktopServices, QGuiApplication
from PySide6.QtWidgets import (QDialog, QDialogButtonBox, QLabel, QPushButton, QTableWidget, QTableWidgetItem,
                               QTabWidget, QVBoxLayout, QWidget)

from mmchat import __version__
from mmchat_ui.workers import Task, TaskRunner

INTRO = ("A multimodal chat that runs entirely on this computer: text, images and voice, offline. "
         "Nothing you type, show or say leaves your machine.")


def _doctor_report() -> dict:
    from mmchat import doctor

    return doctor.report()


def _table(headers: list[str], rows: list[list[str]]) -> QTableWidget:
    table = QTableWidget(len(rows), len(headers))
    table.setHorizontalHeaderLabels(headers)
    table.verticalHeader().hide()
    table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
    table.setShowGrid(False)
    table.setWordWrap(False)
    for r, row in enumerate(rows):
        for c, text in enumerate(row):
            item = QTableWidgetItem(text)
            item.setToolTip(text)
            table.setItem(r, c, item)
    table.resizeColumnsToContents()
    table.horizontalHeader().setStretchLastSection(True)
    return table


class AboutDialog(QDialog):
    loaded = Signal(dict)  # the doctor report, once shown

    def __init__(self, runner: TaskRunner, *, report: Callable[[], dict] = _doctor_report,
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("About mmchat")
        self.report: dict | None = None
        layout = QVBoxLayout(self)
        title = QLabel(f"mmchat {__version__}", objectName="chatTitle")
        intro = QLabel(INTRO)
        intro.setWordWrap(True)
        self.status = QLabel("Collecting details…", objectName="noticeLabel")
        self.tabs = QTabWidget()
        self.tabs.hide()
        for widget in (title, intro, self.status, self.tabs):
            layout.addWidget(widget)
        layout.addWidget(self._buttons())
        self.resize(900, 520)
        runner.start(Task("about-report", lambda emit, stop: report()), succeeded=self._show_report,
                     failed=lambda text: self.status.setText(f"Could not collect the details: {text}"))

    def _buttons(self) -> QDialogButtonBox:
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        self.copy_button = QPushButton("Copy details")
        self.copy_button.setEnabled(False)
        self.copy_button.clicked.connect(self.copy_details)
        self.open_button = QPushButton("Open data folder")
        self.open_button.setEnabled(False)
        self.open_button.clicked.connect(self._open_data_folder)
        buttons.addButton(self.copy_button, QDialogButtonBox.ButtonRole.ActionRole)
        buttons.addButton(self.open_button, QDialogButtonBox.ButtonRole.ActionRole)
        buttons.rejected.connect(self.reject)
        return buttons

    def _show_report(self, report: dict) -> None:
        self.report = report
        models = [[m["name"] + (" (default)" if m["default"] else ""), m["role"], m["licence"], m["state"],
                   f"{m['size_mb']} MB"] for m in report["models"]]
        versions = [["mmchat", report["mmchat"]], ["Python", report["python"]], ["platform", report["platform"]]]
        versions += [[name, version or "not installed"] for name, version in report["libraries"].items()]
        features = [[name, "yes" if f["ok"] else "no", f["reason"]] for name, f in report["features"].items()]
        image = report["images"]
        features.insert(0, ["image encoder", "yes" if image["pretrained"] else "untrained",
                            f"{image['encoder']} ({'pretrained' if image['pretrained'] else 'seeded random init'}); "
                            f"text in images: {image['ocr']}"])
        self.models_table = _table(["Model", "Role", "Licence", "State", "Size"], models)
        self.paths_table = _table(["What", "Where"], [[k, v] for k, v in report["paths"].items()])
        self.tabs.addTab(self.models_table, "Models")
        self.tabs.addTab(self.paths_table, "Data and paths")
        self.tabs.addTab(_table(["Component", "Version"], versions), "Versions")
        self.tabs.addTab(_table(["Feature", "Works", "Why"], features), "Features")
        self.status.setText("The same facts as `mmchat doctor`. Model weights: see each licence.")
        self.tabs.show()
        self.copy_button.setEnabled(True)
        self.open_button.setEnabled(True)
        self.loaded.emit(report)

    def copy_details(self) -> None:
        if self.report is not None:
            from mmchat import doctor

            QGuiApplication.clipboard().setText(doctor.format_report(self.report))

    def _open_data_folder(self) -> None:
        if self.report is not None:
            QDesktopServices.openUrl(QUrl.fromLocalFile(self.report["paths"]["data"]))

    def table_text(self, table: QTableWidget) -> list[list[str]]:
        """Every cell of ``table`` as text (for tests and accessibility checks)."""
        return [[table.item(r, c).text() for c in range(table.columnCount())] for r in range(table.rowCount())]


