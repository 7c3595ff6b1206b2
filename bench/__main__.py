"""``python -m bench search|fast|speedups|workers ...``, ``python -m bench gpu-check
[--dry-run]`` or ``python -m bench build-llama12 DIR`` (bench/RESULTS.md)."""

from __future__ import annotations

import sys


def main() -> None:
    command, argv = (sys.argv[1], sys.argv[2:]) if len(sys.argv) > 1 else ("", [])
    if command == "search":
        from .search import main as search

        search(argv)
    elif command == "workers":
        from .workers import main as workers

        workers(argv)
    elif command == "speedups":
        from .speedups import main as speedups

        speedups(argv)
    elif command == "fast":
        from .fast import main as fast

        fast(argv)
    elif command == "gpu-check":
        from .gpu_check import main as gpu_check

        gpu_check(argv)
    elif command == "build-llama12":
        from .models import build_llama12

        print(build_llama12(argv[0] if argv else "bench-llama12"))
    else:
        print(__doc__)
        sys.exit(2)


main()
