"""mmchat: a local multimodal chat engine (no Qt here; the desktop app lives in ``mmchat_ui``)."""

import os

__version__ = "0.1.0"

# With OpenMP's default busy-waiting, torch's worker threads spin whenever another process (or the
# GUI thread) wants a core, and decoding collapses (measured: 0.35 vs 2.8 tokens/s on 2 busy cores).
# It must be set before torch is imported; mmchat imports torch lazily, after this.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
