/*
 * test_svc_assert.c - SVC_ASSERT, SVC_DEBUG_ASSERT and SVC_TESTCASE (base/svc_assert.c).
 *
 * SVC_ASSERT must abort in every build (checked in a forked child: SIGABRT and the expression
 * on stderr). SVC_DEBUG_ASSERT and SVC_TESTCASE must do what this build's SVC_DEBUG_CHECKS
 * promises: evaluate, assert and count when it is 1; evaluate nothing, and count nothing, when
 * it is 0. The tests are the same in both builds and branch on SVC_DEBUG_CHECKS, so the debug
 * (ASan, TSan) and the release runs of scripts/run-tests.sh check one promise each. This test
 * links only the base layer (tests/meson.build), which also proves that svc_assert.c needs
 * nothing above it. Read test_errors.c next.
 */
#include <pthread.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include "test_helpers.h"

#include "base/svc_assert.h"

/* How many times evaluate_true() ran: it tells whether a macro evaluated its argument. */
static int evaluations;

static bool evaluate_true(void)
{
    evaluations++;
    return true;
}

/* Referenced only from SVC_DEBUG_ASSERT, so a release build must not call it unused (clang's
 * -Wunneeded-internal-declaration would, were the check compiled out as sizeof(expr)). */
static bool only_debug_checked(int value)
{
    return value > 0;
}

#define ASSERT_CONTAINS(text, needle)                                                     \
    do {                                                                                  \
        if (strstr((text), (needle)) == NULL) {                                           \
            TEST_FAIL("ASSERT(%s contains \"%s\") failed:\n%s", #text, (needle), (text)); \
        }                                                                                 \
    } while (0)

/* ---- SVC_TESTCASE ---------------------------------------------------------------------- */

/* SVC_TESTCASE(cond) that also stores the site's line in *line_out: __LINE__ inside a macro is
 * the line of the outermost invocation, the one the site records. */
#define TESTCASE_AT(cond, line_out) \
    do {                            \
        *(line_out) = __LINE__;     \
        SVC_TESTCASE(cond);         \
    } while (0)

static int site_a_line;
static int site_b_line;

/* Two sites with the same expression text, "value == 0", and one that is never true. */
static void boundary_a(int value)
{
    TESTCASE_AT(value == 0, &site_a_line);
}

static void boundary_b(int value)
{
    TESTCASE_AT(value == 0, &site_b_line);
    SVC_TESTCASE(value < 0);
}

/* svc_testcase_report() as a string; the caller frees it. */
static char *report_text(void)
{
    char *text = NULL;
    size_t length = 0;
    FILE *out = open_memstream(&text, &length);
    ASSERT_NOT_NULL(out);
    svc_testcase_report(out);
    ASSERT_EQ_INT(fclose(out), 0);
    ASSERT_NOT_NULL(text);
    ASSERT_EQ_UINT(strlen(text), length);
    return text;
}

/* How many report lines hold expression (as " expression ", between the location and count). */
static size_t report_lines_with(const char *text, const char *expression)
{
    char needle[128];
    snprintf(needle, sizeof needle, " %s ", expression);
    size_t count = 0;
    for (const char *at = strstr(text, needle); at != NULL; at = strstr(at + 1, needle)) {
        count++;
    }
    return count;
}

static void test_testcase_counts_hits_per_site_and_by_expression(void **state)
{
    (void)state;
    ASSERT_EQ_UINT(svc_testcase_hits("value == 0"), 0); /* no site hit yet */
    boundary_a(0);
    boundary_a(1);
    boundary_a(0);
    boundary_b(0);
    boundary_b(7);
    boundary_b(0);
    boundary_b(0);
    ASSERT_GT_INT(site_a_line, 0);
    ASSERT_NE_INT(site_a_line, site_b_line);
    char *text = report_text();
    char line_a[512];
    char line_b[512];
    snprintf(line_a, sizeof line_a, "%s:%d value == 0 2\n", __FILE__, site_a_line);
    snprintf(line_b, sizeof line_b, "%s:%d value == 0 3\n", __FILE__, site_b_line);
#if SVC_DEBUG_CHECKS
    ASSERT_EQ_UINT(svc_testcase_hits("value == 0"), 5); /* both sites: 2 + 3 */
    ASSERT_CONTAINS(text, line_a);
    ASSERT_CONTAINS(text, line_b);
    ASSERT_EQ_UINT(report_lines_with(text, "value == 0"), 2);
#else
    ASSERT_EQ_UINT(svc_testcase_hits("value == 0"), 0);
    ASSERT_EQ_STR(text, ""); /* nothing is registered without debug checks */
#endif
    /* Never true: never registered, so neither counted nor listed, in any build. */
    ASSERT_EQ_UINT(svc_testcase_hits("value < 0"), 0);
    ASSERT_EQ_UINT(report_lines_with(text, "value < 0"), 0);
    /* The text must match exactly, as the preprocessor spelled it. */
    ASSERT_EQ_UINT(svc_testcase_hits("value==0"), 0);
    ASSERT_EQ_UINT(svc_testcase_hits("no such expression"), 0);
    free(text);
}

static void test_testcase_evaluates_only_with_debug_checks(void **state)
{
    (void)state;
    evaluations = 0;
    SVC_TESTCASE(evaluate_true());
    ASSERT_EQ_INT(evaluations, SVC_DEBUG_CHECKS);
    ASSERT_EQ_UINT(svc_testcase_hits("evaluate_true()"), SVC_DEBUG_CHECKS);
    SVC_TESTCASE(evaluate_true());
    ASSERT_EQ_INT(evaluations, 2 * SVC_DEBUG_CHECKS);
    ASSERT_EQ_UINT(svc_testcase_hits("evaluate_true()"), 2 * SVC_DEBUG_CHECKS); /* 2 sites */
}

enum {
    TESTCASE_THREADS = 8,
    TESTCASE_TURNS = 20000,
};

static pthread_barrier_t testcase_start;

/* Four sites that every thread reaches at once, so their first hits race to register. */
static void shared_boundaries(unsigned turn)
{
    SVC_TESTCASE(turn % 2 == 0);
    SVC_TESTCASE(turn % 3 == 0);
    SVC_TESTCASE(turn % 5 == 0);
    SVC_TESTCASE(turn % 7 == 0);
}

static void *testcase_thread_main(void *arg)
{
    (void)arg;
    pthread_barrier_wait(&testcase_start);
    for (unsigned turn = 0; turn < TESTCASE_TURNS; turn++) {
        shared_boundaries(turn);
    }
    return NULL;
}

static void test_testcase_threads_register_each_site_once(void **state)
{
    (void)state;
    pthread_t threads[TESTCASE_THREADS];
    ASSERT_EQ_INT(pthread_barrier_init(&testcase_start, NULL, TESTCASE_THREADS), 0);
    for (size_t i = 0; i < TESTCASE_THREADS; i++) {
        ASSERT_EQ_INT(pthread_create(&threads[i], NULL, testcase_thread_main, NULL), 0);
    }
    for (size_t i = 0; i < TESTCASE_THREADS; i++) {
        ASSERT_EQ_INT(pthread_join(threads[i], NULL), 0);
    }
    ASSERT_EQ_INT(pthread_barrier_destroy(&testcase_start), 0);
    const char *expressions[] = {"turn % 2 == 0", "turn % 3 == 0", "turn % 5 == 0",
                                 "turn % 7 == 0"};
    const unsigned divisors[] = {2, 3, 5, 7};
    char *text = report_text();
    for (size_t i = 0; i < 4; i++) {
        /* Multiples of k in [0, TURNS) are ceil(TURNS / k), in each thread. */
        uint64_t want = TESTCASE_THREADS * ((TESTCASE_TURNS + divisors[i] - 1) / divisors[i]);
        ASSERT_EQ_UINT(svc_testcase_hits(expressions[i]), SVC_DEBUG_CHECKS * want);
        ASSERT_EQ_UINT(report_lines_with(text, expressions[i]), SVC_DEBUG_CHECKS);
    }
    free(text);
}

/* ---- SVC_DEBUG_ASSERT ------------------------------------------------------------------ */

static void test_debug_assert_evaluates_only_with_debug_checks(void **state)
{
    (void)state;
    evaluations = 0;
    SVC_DEBUG_ASSERT(evaluate_true());
    ASSERT_EQ_INT(evaluations, SVC_DEBUG_CHECKS);
    /* Variables and functions used only by SVC_DEBUG_ASSERT: with -Werror this file would not
     * compile if the release form left them "unused" or "set but not used". */
    int checked_only = 3;
    SVC_DEBUG_ASSERT(checked_only == 3);
    int set_only;
    set_only = 4;
    SVC_DEBUG_ASSERT(only_debug_checked(set_only));
    ASSERT_EQ_INT(evaluations, SVC_DEBUG_CHECKS);
}

/* ---- SVC_ASSERT: failures abort, in a forked child ------------------------------------- */

struct child_result {
    int status;          /* from waitpid */
    char err_text[8192]; /* what the child wrote to stderr, NUL-terminated, cut to fit */
};

/* Runs body in a forked child with stderr captured; the child exits 0 if body returns. */
static void run_child(void (*body)(void), struct child_result *out)
{
    int fds[2];
    ASSERT_EQ_INT(pipe(fds), 0);
    fflush(NULL);
    pid_t pid = fork();
    ASSERT_GE_INT(pid, 0);
    if (pid == 0) {
        signal(SIGABRT, SIG_DFL);
        close(fds[0]);
        dup2(fds[1], STDERR_FILENO);
        body();
        _exit(0);
    }
    close(fds[1]);
    size_t used = 0;
    for (;;) {
        char chunk[512];
        ssize_t n = read(fds[0], chunk, sizeof chunk);
        if (n <= 0) {
            break;
        }
        size_t room = sizeof out->err_text - 1 - used; /* read on to EOF; keep what fits */
        size_t take = (size_t)n < room ? (size_t)n : room;
        memcpy(out->err_text + used, chunk, take);
        used += take;
    }
    out->err_text[used] = '\0';
    close(fds[0]);
    ASSERT_EQ_INT(waitpid(pid, &out->status, 0), pid);
}

static void fail_assert(void)
{
    volatile int one = 1;
    volatile int two = 2;
    SVC_ASSERT(one == two);
}

static void fail_unreachable(void)
{
    SVC_UNREACHABLE();
}

static void fail_debug_assert(void)
{
    volatile int one = 1;
    volatile int two = 2;
    SVC_DEBUG_ASSERT(one == two);
}

static void test_assert_passes_and_evaluates_once(void **state)
{
    (void)state;
    evaluations = 0;
    SVC_ASSERT(evaluate_true());
    ASSERT_EQ_INT(evaluations, 1); /* in every build, release included */
}

static void test_assert_failure_aborts(void **state)
{
    (void)state;
    struct child_result child;
    run_child(fail_assert, &child);
    ASSERT_TRUE(WIFSIGNALED(child.status));
    ASSERT_EQ_INT(WTERMSIG(child.status), SIGABRT);
    ASSERT_CONTAINS(child.err_text, "stockd: assertion failed: one == two (");
    ASSERT_CONTAINS(child.err_text, __FILE__);
}

static void test_unreachable_aborts(void **state)
{
    (void)state;
    struct child_result child;
    run_child(fail_unreachable, &child);
    ASSERT_TRUE(WIFSIGNALED(child.status));
    ASSERT_EQ_INT(WTERMSIG(child.status), SIGABRT);
    ASSERT_CONTAINS(child.err_text, "stockd: assertion failed: unreachable (");
}

static void test_debug_assert_failure_aborts_only_with_debug_checks(void **state)
{
    (void)state;
    struct child_result child;
    run_child(fail_debug_assert, &child);
#if SVC_DEBUG_CHECKS
    ASSERT_TRUE(WIFSIGNALED(child.status));
    ASSERT_EQ_INT(WTERMSIG(child.status), SIGABRT);
    ASSERT_CONTAINS(child.err_text, "stockd: assertion failed: one == two (");
#else
    ASSERT_TRUE(WIFEXITED(child.status));
    ASSERT_EQ_INT(WEXITSTATUS(child.status), 0);
    ASSERT_EQ_STR(child.err_text, "");
#endif
}

int main(void)
{
    print_message("SVC_DEBUG_CHECKS=%d\n", SVC_DEBUG_CHECKS);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_testcase_counts_hits_per_site_and_by_expression),
        cmocka_unit_test(test_testcase_evaluates_only_with_debug_checks),
        cmocka_unit_test(test_testcase_threads_register_each_site_once),
        cmocka_unit_test(test_debug_assert_evaluates_only_with_debug_checks),
        cmocka_unit_test(test_assert_passes_and_evaluates_once),
        cmocka_unit_test(test_assert_failure_aborts),
        cmocka_unit_test(test_unreachable_aborts),
        cmocka_unit_test(test_debug_assert_failure_aborts_only_with_debug_checks),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
