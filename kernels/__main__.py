"""`python -m medmamba.kernels build`: compile the CPU kernels ahead of time (Docker image build, CI).

Builds the selective scan and the fused ops around it (causal conv1d, route gathers: kernels/fused.py).
"""

from __future__ import annotations

import sys


def main(argv: list[str]) -> int:
    if argv[:1] != ["build"]:
        print("usage: python -m medmamba.kernels build", file=sys.stderr)
        return 2
    from .cpu import cache_dir, load_extension
    from .fused import load_fused

    load_extension(verbose="-v" in argv)
    load_fused(verbose="-v" in argv)
    print(f"compiled CPU selective-scan kernel and fused ops ready in {cache_dir()}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
