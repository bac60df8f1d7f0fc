"""``python -m train``: train InstructPix2Pix (stage 1) or MRC (stage 2) models.

    python -m train --config train/configs/shapes_mrc.yaml
    python -m train --config train/configs/shapes_mrc.yaml --resume_from_checkpoint latest
    accelerate launch --num_processes 2 -m train --config ...      # several GPUs / processes

``python -m train --help`` lists every setting with its default; docs/training.md explains them.
"""

from __future__ import annotations

import sys

from train.config import parse_args
from train.datasets import BadDataError


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv)
    from train.loop import train

    try:
        train(cfg)
    except BadDataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
