"""`python -m medmamba.kernels build`: compile the CPU kernels ahead of time (Docker image build, CI).

Builds the selective scan and the fused ops around it (causal conv1d, route gathers: kernels/fused.py).
"""

from __future__ import annotations

import sys


def main(argv: list[str]) -> int:
    if argv[:1] != ["build"]:
        print("usage: python -m medmamba.kernels build [-v]", file=sys.stderr)
        return 2
    from .cpu import build_extension, kernel_dir
    from .fused import load_fused

    lib = build_extension(verbose="-v" in argv)
    load_fused(verbose="-v" in argv)
    print(f"compiled CPU selective-scan kernel ready: {lib}; fused ops ready in {kernel_dir('fused_ops')}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
