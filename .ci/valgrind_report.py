"""Reads a valgrind memcheck log and fails on what linalign owns: an invalid
read, write or free, or a definite leak, with a frame in linalign's _core,
libllama or libggml. CPython and numpy report errors of their own under
valgrind (an interpreter not built for it); those are counted, not fatal."""
from __future__ import annotations

import re
import sys
from collections import Counter

OURS = re.compile(r"linalign/_core|/_core\.cpython|libllama|libggml")
FATAL = re.compile(r"Invalid (read|write|free)|Mismatched free|definitely lost|Source and destination overlap")


def blocks(text: str):
    current: list[str] = []
    for line in text.splitlines():
        body = re.sub(r"^==\d+== ?", "", line)
        if not body.strip():
            if current:
                yield current
            current = []
        else:
            current.append(body)
    if current:
        yield current


def main(path: str) -> int:
    with open(path, errors="replace") as f:
        text = f.read()
    kinds, fatal = Counter(), []
    for block in blocks(text):
        head = block[0]
        if not FATAL.search(head) and not head.startswith(("Use of", "Conditional jump")):
            continue
        ours = any(OURS.search(frame) for frame in block[1:])
        kinds[(head.split(" at ")[0][:60], "ours" if ours else "other")] += 1
        if ours and FATAL.search(head):
            fatal.append("\n".join(block))
    for (kind, whose), n in sorted(kinds.items()):
        print(f"{n:5d}  {whose:5s}  {kind}")
    if fatal:
        print(f"\n{len(fatal)} error(s) in linalign, libllama or libggml:\n")
        print("\n\n".join(fatal[:10]))
        return 1
    print("no invalid read, write or free and no definite leak in linalign, libllama or libggml")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1]))
