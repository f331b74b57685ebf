#!/usr/bin/env python3
"""Prints one line summing the meson test logs of the given build directories:
'N passed, N failed' (', N skipped' when some were), the plain closing line CI reads."""
import json
import os
import sys


def main(dirs):
    passed = failed = skipped = 0
    for d in dirs:
        path = os.path.join(d, "meson-logs", "testlog.json")
        if not os.path.exists(path):
            continue
        with open(path) as f:
            for line in f:
                line = line.strip()
                if not line:
                    continue
                result = json.loads(line).get("result", "")
                if result in ("OK", "EXPECTEDFAIL"):
                    passed += 1
                elif result == "SKIP":
                    skipped += 1
                else:
                    failed += 1
    tail = f", {skipped} skipped" if skipped else ""
    print(f"{passed} passed, {failed} failed{tail}")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
