#!/usr/bin/env python3
"""The house-style checks that a compiler does not make (STYLE 16, 25), in the spirit of
TigerBeetle's tidy.zig: lines of C at most 100 columns, functions in src/ at most 70 lines,
no TODO without an issue reference. Prints each violation and exits 1 if there are any."""
import glob
import re
import sys

LINE_COLUMNS_MAX = 100
FUNCTION_LINES_MAX = 70


def check_file(path, problems):
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    start = None
    for number, line in enumerate(lines, 1):
        if len(line) > LINE_COLUMNS_MAX:
            problems.append(f"{path}:{number}: line is {len(line)} columns (max {LINE_COLUMNS_MAX})")
        if "TODO" in line and not re.search(r"TODO\(#\d+\)", line):
            problems.append(f"{path}:{number}: TODO without an issue reference: TODO(#N)")
        if path.startswith("src/") and path.endswith(".c"):
            if line == "{" and start is None:
                start = number
            elif line == "}" and start is not None:
                length = number - start - 1
                if length > FUNCTION_LINES_MAX:
                    problems.append(f"{path}:{start}: function body is {length} lines "
                                    f"(max {FUNCTION_LINES_MAX})")
                start = None


def main():
    problems = []
    files = sorted(glob.glob("src/*.[ch]") + glob.glob("src/*/*.[ch]") + glob.glob("tests/unit/*.[ch]") +
                   glob.glob("tests/sim/*.c") + glob.glob("bench/*.c") + glob.glob("tools/*.c") +
                   glob.glob("fuzz/*.c"))
    for path in files:
        check_file(path, problems)
    for p in problems:
        print(p)
    print(f"tidy: {len(files)} files, {len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
