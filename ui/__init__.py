"""mmchat_ui: the PySide6 desktop app. Engine work goes through ``mmchat``; this package owns widgets and threads."""
