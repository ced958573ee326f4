"""`python -m medmamba.kernels build`: compile the CPU scan kernel ahead of time (Docker image build, CI)."""

from __future__ import annotations

import sys


def main(argv: list[str]) -> int:
    if argv[:1] != ["build"]:
        print("usage: python -m medmamba.kernels build [-v]", file=sys.stderr)
        return 2
    from .cpu import build_extension

    lib = build_extension(verbose="-v" in argv)
    print(f"compiled CPU selective-scan kernel ready: {lib}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
