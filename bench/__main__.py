"""`python -m bench` (`make bench`): runs every benchmark module that exists, one after another.

Each module exposes `main()` (parsing `sys.argv`, emptied here so defaults apply); a failing benchmark is
reported and the others still run.
"""

from __future__ import annotations

import importlib
import sys
import time
import traceback
from pathlib import Path

BENCHMARKS = ("gateway", "credits", "avatars", "usage", "generation", "metrics")


def main() -> int:
    here = Path(__file__).parent
    failed: list[str] = []
    for name in BENCHMARKS:
        if not (here / f"{name}.py").exists():
            continue
        print(f"== bench.{name}", flush=True)
        started = time.monotonic()
        try:
            sys.argv = [f"bench.{name}"]
            importlib.import_module(f"bench.{name}").main()
        except Exception:
            traceback.print_exc()
            failed.append(name)
        print(f"== bench.{name}: {time.monotonic() - started:.1f}s", flush=True)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
