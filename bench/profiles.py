"""Where the samples of a py-spy collapsed-stack profile go: the heaviest frames by self and by total share,
and the share of each top-level package (what `bench.gateway --profile DIR` writes, one file per process).

    uv run python -m bench.profiles DIR [--top 25]
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

# "function (path/to/module.py:123)": the file is what names the library
_FRAME = re.compile(r"^(?P<function>.*) \((?P<file>[^:]*)(?::\d+)?\)$")


def _package(file: str) -> str:
    if "site-packages/" in file:
        return file.split("site-packages/", 1)[1].split("/", 1)[0]
    if "/lumiku_" in file:
        return "lumiku_" + file.split("/lumiku_", 1)[1].split("/", 1)[0]
    return "python" if "/lib/python3" in file else file.rsplit("/", 1)[-1]


def _name(frame: str) -> str:
    match = _FRAME.match(frame)
    return f"{match['function']} ({match['file'].rsplit('/', 1)[-1]})" if match else frame


def summarise(path: Path, top: int) -> str:
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    packages: Counter[str] = Counter()
    samples = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n, frames = int(count), stack.split(";")
        samples += n
        own[_name(frames[-1])] += n
        for name in {_name(f) for f in frames}:
            total[name] += n
        leaf = _FRAME.match(frames[-1])
        packages[_package(leaf["file"]) if leaf else "?"] += n
    if not samples:
        return f"{path.name}: no samples"

    def block(title: str, counter: Counter[str]) -> list[str]:
        return [title] + [f"  {100 * n / samples:5.1f} %  {name}" for name, n in counter.most_common(top)]

    lines = [f"== {path.name}: {samples} samples"]
    lines += block("by package (leaf frame):", packages)
    lines += block("self:", own)
    lines += block("total:", total)
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.profiles", description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    for path in sorted(args.directory.glob("*.txt")):
        print(summarise(path, args.top), end="\n\n")


if __name__ == "__main__":
    main()
