"""`python -m hamedge.train ARGS` is `hamedge train ARGS`: what torchrun starts on every rank,
e.g. `torchrun --nproc-per-node 2 -m hamedge.train --data DIR --out RUN --sync-bn`."""

from __future__ import annotations

import sys


def main() -> None:
    from hamedge.cli import run_app

    sys.exit(run_app(["train", *sys.argv[1:]]))


if __name__ == "__main__":
    main()
