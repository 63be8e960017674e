"""The ``mmchat`` command line (placeholder until the CLI lands)."""

import sys


def main(argv: list[str] | None = None) -> int:
    from mmchat import __version__

    print(f"mmchat {__version__}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
