#!/usr/bin/env python3
"""The module-prefix rule of STYLE 1 and 5, which a compiler does not check: every function
defined in src/**/*.c and bench/*.c belongs to the module of its file, and

  (a) a non-static function's name starts with its module's prefix, and
  (b) a static function's name does not start with another module's prefix (no squatting).

The prefix a name carries is the longest one of the table below that it starts with, so
store_sqlite_open carries store_sqlite_ (module store_sqlite), not store_ (module store): a
non-static store_sqlite_open in store.c breaks (a), a static one breaks (b). main.c may define
only main itself and static main_* helpers. A .c file that the table does not list is a
violation too: add it to MODULES.

Function definitions are found by scanning each file with comments, string and character
literals and preprocessor lines blanked out: a "{" at brace depth 0 opens a function body when
the text before it, back to the previous top-level ";" or "}", ends with a parameter list and
has no "=" outside parentheses. That covers clang-format's layout (.clang-format: the "{" of a
function alone on the next line, the signature wrapped over several lines when long) and a
definition whose "{" shares the line. The name is the identifier before that parameter list.

Usage: tools/prefixes.py          check src/ and bench/ (scripts/run-tests.sh runs it after
                                   tools/tidy.py)
       tools/prefixes.py --self-test   check the checker on the inline snippets below
Prints each violation as path:line: message, then a summary; exits 1 on violations."""
import fnmatch
import glob
import re
import sys

# module -> (file patterns relative to the repository, prefixes). The layout we are moving to;
# files not created yet simply match nothing.
MODULES = {
    # base
    "svc_assert": (["src/base/svc_assert.c"], ["svc_assert_", "svc_testcase_"]),
    "errors": (["src/base/errors.c"], ["svc_err_"]),
    "log": (["src/base/log.c", "src/base/log_format.c"], ["log_"]),
    "clock": (["src/base/clock.c"], ["clock_"]),
    "json_out": (["src/base/json_out.c"], ["jbuf_"]),
    "json_flat": (["src/base/json_flat.c"], ["json_flat_", "jflat_"]),
    "json_view": (["src/base/json_view.c"], ["json_view_"]),
    "problem": (["src/base/problem.c"], ["problem_"]),
    "capacity": (["src/base/capacity.c"], ["capacity_"]),
    # store
    "store": (["src/store/store.c", "src/store/store_open.c"], ["store_"]),
    "schema": (["src/store/schema.c"], ["schema_"]),
    "store_sqlite": (["src/store/store_sqlite.c", "src/store/store_sqlite_reader.c",
                      "src/store/store_sqlite_pcache.c"],
                     ["store_sqlite_"]),
    "store_pg": (["src/store/store_pg.c", "src/store/store_pg_conn.c",
                  "src/store/store_pg_reader.c"], ["store_pg_"]),
    # core
    "domain": (["src/core/domain.c"], ["dom_"]),
    "reservations": (["src/core/reservations.c"], ["res_"]),
    "command": (["src/core/command.c"], ["command_"]),
    "queue": (["src/core/queue.c"], ["queue_"]),
    "events": (["src/core/events.c"], ["event_"]),
    "writer": (["src/core/writer.c"], ["writer_"]),
    "batch": (["src/core/batch.c"], ["batch_"]),
    "apply": (["src/core/apply.c", "src/core/apply_catalog.c", "src/core/apply_stock.c",
               "src/core/apply_reservations.c", "src/core/apply_orders.c"], ["apply_"]),
    "pay": (["src/pay/pay_sim.c"], ["pay_sim_", "pay_"]),
    "pay_http": (["src/pay/pay_http.c"], ["pay_http_"]),
    "pay_breaker": (["src/pay/pay_breaker.c"], ["pay_breaker_"]),
    "work": (["src/work/work.c", "src/work/work_lease.c"], ["work_"]),
    "mq": (["src/mq/mq.c"], ["mq_"]),
    "relay": (["src/relay/relay.c"], ["relay_"]),
    "intake_consume": (["src/intake/intake_consume.c"], ["intake_consume_"]),
    "intake_pub": (["src/intake/intake_pub.c"], ["intake_pub_"]),
    "reply": (["src/core/reply.c"], ["reply_"]),
    "outcome": (["src/core/outcome.c"], ["outcome_"]),
    "prefetch": (["src/core/prefetch.c"], ["prefetch_"]),
    # read
    "projector": (["src/read/projector.c", "src/read/projector_snapshot.c"], ["projector_"]),
    "follower": (["src/read/follower.c"], ["follower_"]),
    "audit": (["src/read/audit.c"], ["audit_"]),
    # load: the HTTP load generator (stockbench and POST /v1/admin/load-test)
    "loadgen": (["src/load/loadgen.c"], ["lg_"]),
    # http
    "http": (["src/http/server.c", "src/http/request.c"], ["http_"]),
    "routes": (["src/http/routes.c"], ["routes_"]),
    "waiter": (["src/http/waiter.c"], ["http_waiter_", "http_mailbox_"]),
    "bgjob": (["src/http/bgjob.c"], ["http_bgjob_"]),
    "http_metrics": (["src/http/http_metrics.c"], ["http_metrics_"]),
    "framing": (["src/http/framing.c"], ["framing_"]),
    "auth": (["src/http/auth.c"], ["auth_"]),
    "api": (["src/http/api_*.c"], ["api_"]),
    "sse_ring": (["src/http/sse_ring.c"], ["sse_ring_"]),
    # stockd-paysim, the standalone payment simulator: a program of its own
    "paysim_http": (["src/paysim/paysim_http.c"], ["paysim_http_"]),
    "paysim": (["src/paysim/paysim.c"], ["paysim_"]),
    # top: only main() itself and static main_* helpers
    "main": (["src/main.c"], ["main_"]),
    # bench/: programs of their own (the load generator's command line, seed 000's service)
    "stockbench": (["bench/stockbench.c"], ["sb_"]),
    "seedfront": (["bench/seedfront.c"], ["sf_"]),
}
MAIN_MODULE = "main"
# Programs: their file defines main() and static helpers with the module's prefix only.
PROGRAM_MODULES = (MAIN_MODULE, "paysim", "stockbench", "seedfront")


def module_of(path):
    """The module whose file patterns match path, or None."""
    for module, (patterns, _) in MODULES.items():
        if any(fnmatch.fnmatchcase(path, pattern) for pattern in patterns):
            return module
    return None


def prefix_owner(name):
    """(prefix, module) for the longest table prefix that name starts with, or (None, None)."""
    best = (None, None)
    for module, (_, prefixes) in MODULES.items():
        for prefix in prefixes:
            if name.startswith(prefix) and (best[0] is None or len(prefix) > len(best[0])):
                best = (prefix, module)
    return best


def blank_non_code(text):
    """text with comments, string and character literals and preprocessor lines replaced by
    spaces, newlines kept, so that offsets and line numbers stay those of the file."""
    out = list(text)
    i, n = 0, len(text)
    line_start = True
    while i < n:
        c = text[i]
        if line_start and c == "#":
            j = i  # a directive runs to an unescaped newline (comments inside are blanked too)
            while j < n and text[j] != "\n":
                if text[j] == "\\" and j + 1 < n and text[j + 1] == "\n":
                    j += 2
                    continue
                if text.startswith("/*", j):
                    k = text.find("*/", j + 2)
                    j = n if k < 0 else k + 2
                    continue
                j += 1
            for k in range(i, j):
                if out[k] != "\n":
                    out[k] = " "
            i = j
            continue
        if c == "\n":
            line_start = True
            i += 1
            continue
        if c in " \t":
            i += 1
            continue
        line_start = False
        if text.startswith("/*", i):
            j = text.find("*/", i + 2)
            j = n if j < 0 else j + 2
        elif text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
        elif c in "\"'":
            j = i + 1
            while j < n and text[j] != c and text[j] != "\n":
                j += 2 if text[j] == "\\" else 1
            j = min(j + 1, n)
        else:
            i += 1
            continue
        for k in range(i, j):
            if out[k] != "\n":
                out[k] = " "
        i = j
    return "".join(out)


IDENT = re.compile(r"[A-Za-z_]\w*")
NOT_NAMES = {"if", "for", "while", "switch", "return", "sizeof", "_Alignof", "defined"}


def strip_attributes(decl):
    """decl with __attribute__((...)) and __declspec(...) removed (they hold parentheses)."""
    while True:
        m = re.search(r"\b(__attribute__|__declspec)\s*\(", decl)
        if not m:
            return decl
        depth, j = 0, m.end() - 1
        while j < len(decl):
            depth += {"(": 1, ")": -1}.get(decl[j], 0)
            j += 1
            if depth == 0:
                break
        decl = decl[:m.start()] + " " * (j - m.start()) + decl[j:]


def function_head(decl):
    """(name, offset of the name in decl, is_static) when decl, the text between the previous
    top-level ";" or "}" and a top-level "{", is a function definition's head; else None."""
    decl = strip_attributes(decl)
    body = decl.rstrip()
    if not body.endswith(")"):
        return None  # struct/enum/union bodies, initialisers ("= {"), extern "C" {
    depth, j = 0, len(body) - 1
    while j >= 0:  # back to the "(" that opens the final parameter list
        depth += {")": 1, "(": -1}.get(body[j], 0)
        if depth == 0:
            break
        j -= 1
    if j < 0:
        return None
    head = body[:j].rstrip()
    m = re.search(r"([A-Za-z_]\w*)$", head)
    if not m or m.group(1) in NOT_NAMES:
        return None  # e.g. int (*f(void))(int): not our layout; say nothing rather than guess
    depth = 0
    for ch in head:  # an "=" outside parentheses makes it an initialiser, not a function
        depth += {"(": 1, ")": -1, "[": 1, "]": -1}.get(ch, 0)
        if ch == "=" and depth == 0:
            return None
    # Specifiers: the tokens after the last top-level ")" before the name (a macro call such as
    # DEFINE_X(y) on the lines before belongs to what comes before, not to this function).
    specifiers = head[:m.start()]
    cut = specifiers.rfind(")")
    tokens = IDENT.findall(specifiers[cut + 1:])
    return m.group(1), m.start(), "static" in tokens


def function_definitions(text):
    """[(line, name, is_static)] for every top-level function definition in C source text."""
    code = blank_non_code(text)
    found = []
    depth = 0
    decl_start = 0
    for i, ch in enumerate(code):
        if ch == "{":
            if depth == 0:
                head = function_head(code[decl_start:i])
                if head is not None:
                    name, offset, is_static = head
                    line = code.count("\n", 0, decl_start + offset) + 1
                    found.append((line, name, is_static))
            depth += 1
        elif ch == "}":
            depth = max(depth - 1, 0)
            if depth == 0:
                decl_start = i + 1
        elif ch == ";" and depth == 0:
            decl_start = i + 1
    return found


def check_source(path, text):
    """[(line, message)]: the prefix-rule violations of one file, given its text."""
    module = module_of(path)
    if module is None:
        return [(1, f"{path} is in no module of the prefix table: add it to tools/prefixes.py")]
    own = MODULES[module][1]
    problems = []
    for line, name, is_static in function_definitions(text):
        prefix, owner = prefix_owner(name)
        kind = "static" if is_static else "non-static"
        if module in PROGRAM_MODULES:
            ok = owner == module if is_static else name == "main"
            if not ok:
                problems.append((line, f"{kind} function {name}: {path.rsplit('/', 1)[-1]} defines only main "
                                       f"and static {own[0]}* functions"))
        elif not is_static and owner != module:
            where = f"carries {prefix} of module {owner}" if owner else "carries no module prefix"
            problems.append((line, f"non-static function {name} {where}; module {module} "
                                   f"exports only {' '.join(own)}*"))
        elif is_static and owner is not None and owner != module:
            problems.append((line, f"static function {name} squats on {prefix}, the prefix "
                                   f"of module {owner} (module {module}: {' '.join(own)}*)"))
    return problems


def check_tree():
    files = sorted(glob.glob("src/**/*.c", recursive=True) + glob.glob("bench/*.c"))
    problems = []
    functions = 0
    for path in files:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        functions += len(function_definitions(text))
        problems += [f"{path}:{line}: {message}" for line, message in check_source(path, text)]
    for p in problems:
        print(p)
    print(f"prefixes: {len(files)} files, {functions} functions, {len(problems)} problems")
    return 1 if problems else 0


# (path, source, expected [(line, start of message)]) for --self-test.
SELF_TESTS = [
    ("src/core/queue.c", """\
/* queue.c - a comment that mentions int fake_function(void) { in passing */
#include "core/queue.h"
#define QUEUE_MAX(a, b) \\
    ((a) > (b) ? (a) : (b))

struct queue_slot {
    int value;
};

static const int queue_table[] = {1, 2, 3};

int queue_push(struct queue *q,
               int value)
{
    const char *s = "}{";
    return s[0] + value;
}

static int push_helper(void)
{
    return 0;
}

int writer_submit(void)
{
    return 0;
}

static int writer_squat(void)
{
    return 0;
}

int pop(void) { return 0; }

__attribute__((unused)) static inline int
queue_long_return_type_on_its_own_line(void)
{
    return 0;
}
""", [(24, "non-static function writer_submit carries writer_"),
      (29, "static function writer_squat squats on writer_"),
      (34, "non-static function pop carries no module prefix")]),
    # Longest prefix wins: store_sqlite_* belongs to store_sqlite, store_pg_* to store_pg.
    ("src/store/store.c", """\
int store_open(void)
{
    return 0;
}

int store_sqlite_open(void)
{
    return 0;
}

static int store_pg_helper(void)
{
    return 0;
}

static int store_helper(void)
{
    return 0;
}
""", [(6, "non-static function store_sqlite_open carries store_sqlite_"),
      (11, "static function store_pg_helper squats on store_pg_")]),
    ("src/store/store_sqlite_reader.c", """\
int store_sqlite_reader_open(void)
{
    return 0;
}

static int store_helper(void)
{
    return 0;
}

static int store_sqlite_step(void)
{
    return 0;
}
""", [(6, "static function store_helper squats on store_")]),
    ("src/http/api_orders.c", """\
int api_orders_post(void)
{
    return 0;
}

static int jbuf_like(void)
{
    return 0;
}
""", [(6, "static function jbuf_like squats on jbuf_")]),
    ("src/main.c", """\
static int main_parse(void)
{
    return 0;
}

static int parse_more(void)
{
    return 0;
}

int main(void)
{
    return main_parse() + parse_more();
}
""", [(6, "static function parse_more: main.c defines only main")]),
    ("src/core/unlisted.c", "int unlisted_f(void)\n{\n    return 0;\n}\n",
     [(1, "src/core/unlisted.c is in no module of the prefix table")]),
]


def self_test():
    failures = 0
    for path, source, expected in SELF_TESTS:
        got = check_source(path, source)
        ok = len(got) == len(expected) and all(
            g_line == e_line and g_message.startswith(e_message)
            for (g_line, g_message), (e_line, e_message) in zip(got, expected))
        print(f"{'ok  ' if ok else 'FAIL'} {path}: {len(got)} violation(s)")
        for line, message in got:
            print(f"       {path}:{line}: {message}")
        if not ok:
            failures += 1
            print(f"       expected: {expected}")
    # The definitions found in the first snippet, statics included, in order.
    names = [(name, is_static) for _, name, is_static in function_definitions(SELF_TESTS[0][1])]
    want = [("queue_push", False), ("push_helper", True), ("writer_submit", False),
            ("writer_squat", True), ("pop", False),
            ("queue_long_return_type_on_its_own_line", True)]
    print(f"{'ok  ' if names == want else 'FAIL'} definitions found: {names}")
    failures += names != want
    print(f"prefixes self-test: {len(SELF_TESTS) + 1} checks, {failures} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(self_test() if sys.argv[1:] == ["--self-test"] else check_tree())
