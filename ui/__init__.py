"""mmchat_ui: the PySide6 desktop app. Engine work goes through ``mmchat``; this package owns widgets and threads."""

import sys

# Measured here (PySide6 6.12.0 on CPython 3.11): every call of a Qt method that returns nothing
# (setText, setVisible, resize, ...) decrements None's reference count once, as if None were
# immortal (it is from CPython 3.12 on). After a few thousand such calls None is "deallocated" and
# the process aborts ("Fatal Python error: none_dealloc"); opening a 300-message conversation was
# enough. Until that binding bug is fixed, None gets a reference count no run can exhaust.
NONE_REFCOUNT_BALLAST = 1 << 48  # references; at one per call, ~10^14 calls


def _guard_none_refcount() -> None:
    if sys.version_info >= (3, 12):
        return  # None is immortal there
    import ctypes

    ctypes.c_ssize_t.from_address(id(None)).value += NONE_REFCOUNT_BALLAST


_guard_none_refcount()
