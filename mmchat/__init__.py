"""mmchat: a local multimodal chat engine (no Qt here; the desktop app lives in ``mmchat_ui``)."""

__version__ = "0.1.0"
