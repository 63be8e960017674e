"""``python -m mmchat`` runs the ``mmchat`` command."""

import sys

from mmchat.cli import main

sys.exit(main())
