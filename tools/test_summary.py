#!/usr/bin/env python3
"""Prints one line summing the meson test logs of the given build directories:
'N passed, N failed' (', N skipped' when some were), the plain closing line CI reads.
Every meson-logs/testlog*.json of a directory counts: scripts/run-tests.sh runs the release
build twice (testlog.json: unit + blackbox; testlog-pg.json: blackbox-pg, via --logbase)."""
import glob
import json
import os
import sys


def main(dirs):
    passed = failed = skipped = 0
    paths = [p for d in dirs
             for p in sorted(glob.glob(os.path.join(d, "meson-logs", "testlog*.json")))]
    for path in paths:
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
