"""`python -m medmamba.kernels build`: compile the CPU kernels ahead of time (Docker image build, CI).

Builds the selective scan and the fused ops around it (causal conv1d, route gathers: kernels/fused.py) for
every instruction-set level this CPU runs (AVX-512, AVX2, generic), so that an image built on one host loads
the best library another host can run.
"""

from __future__ import annotations

import sys


def main(argv: list[str]) -> int:
    if argv[:1] != ["build"]:
        print("usage: python -m medmamba.kernels build [-v]", file=sys.stderr)
        return 2
    from .cpu import SCAN, build_extension, build_library, isa_levels, kernel_dir
    from .fused import FUSED

    verbose = "-v" in argv
    for level in isa_levels():
        lib = build_extension(verbose=verbose, level=level)
        build_library(FUSED, verbose=verbose, level=level)
        print(f"compiled CPU kernels ready ({level}): {lib.parent.name} (scan), "
              f"{kernel_dir(FUSED, level).name} (fused ops), in {kernel_dir(SCAN, level).parent}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
