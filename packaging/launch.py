"""Entry point of the frozen app bundle: the same ``mmchat`` command as the console script."""

import multiprocessing
import sys

from mmchat.cli import main

if __name__ == "__main__":
    multiprocessing.freeze_support()
    sys.exit(main())
