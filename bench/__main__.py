"""``python -m bench search|fast|speedups|workers|serve ...``, ``python -m bench gpu-check
[--dry-run]``, ``python -m bench build-llama12 DIR`` (random weights: for timings only) or
``python -m bench build-qwen12`` (trained, cached; prints its folder) (bench/RESULTS.md)."""

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
    elif command == "serve":
        from .serve import main as serve

        serve(argv)
    elif command == "gpu-check":
        from .gpu_check import main as gpu_check

        gpu_check(argv)
    elif command == "build-llama12":
        from .models import build_llama12

        print(build_llama12(argv[0] if argv else "bench-llama12"))
    elif command == "build-qwen12":
        from .trained import build_trained

        print(build_trained(log=lambda text: print(text, file=sys.stderr, flush=True)))
    else:
        print(__doc__)
        sys.exit(2)


main()
