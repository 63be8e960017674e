"""``python -m mmchat.fusion_data --out DIR --images N --speech N --seed S`` (or ``--check DIR``)."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from mmchat.errors import MMChatError
from mmchat.fusion_data.dataset import SPLITS, build_dataset
from mmchat.fusion_data.records import dataset_hash, load_samples, validate_dataset

HELDOUT_SHARE = 0.2  # default held-out size, as a share of the train counts


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m mmchat.fusion_data",
                                description="Generate procedural image and speech data for fusion training.")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--out", type=Path, help="directory to write <split>/ into")
    where.add_argument("--check", type=Path, metavar="DIR",
                       help="validate an existing dataset directory and print its hash")
    p.add_argument("--images", type=int, default=3000, help="number of images (train)")
    p.add_argument("--speech", type=int, default=1500, help="number of speech clips (train)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--split", choices=[*SPLITS, "both"], default="both")
    p.add_argument("--heldout-images", type=int, default=None,
                   help=f"held-out images with --split both (default {HELDOUT_SHARE:.0%} of --images)")
    p.add_argument("--heldout-speech", type=int, default=None,
                   help=f"held-out clips with --split both (default {HELDOUT_SHARE:.0%} of --speech)")
    return p


def _plan(args: argparse.Namespace) -> list[tuple[str, int, int]]:
    if args.split != "both":
        return [(args.split, args.images, args.speech)]
    held_images = args.heldout_images if args.heldout_images is not None else round(args.images * HELDOUT_SHARE)
    held_speech = args.heldout_speech if args.heldout_speech is not None else round(args.speech * HELDOUT_SHARE)
    return [("train", args.images, args.speech), ("heldout", held_images, held_speech)]


def _check(directory: Path) -> None:
    samples = validate_dataset(directory)
    counts = {m: sum(s.modality == m for s in samples) for m in ("image", "audio")}
    print(f"{directory}: {len(samples)} samples ({counts['image']} images, {counts['audio']} audio), "
          f"all media readable\n  sha256 {dataset_hash(directory)}")


def _build(args: argparse.Namespace) -> None:
    for split, n_images, n_speech in _plan(args):
        start = time.perf_counter()
        path = build_dataset(args.out, split=split, n_images=n_images, n_speech=n_speech,
                             seed=args.seed)
        elapsed = time.perf_counter() - start
        n = len(load_samples(path))
        size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        print(f"{split}: {n} samples in {path} ({size / 1e6:.1f} MB, {elapsed:.1f} s, "
              f"{n / max(elapsed, 1e-9):.1f} samples/s)\n  sha256 {dataset_hash(path)}")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if args.check:
            _check(args.check)
        else:
            _build(args)
    except MMChatError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
