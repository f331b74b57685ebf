/*
 * test_log.c - log.c: one line per call site per interval, with the count of the lines held
 * back; every line one line. Reads what log_write writes by pointing stderr at a pipe.
 */
#include "test_helpers.h"

#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "base/log.h"

#define CAPTURE_BYTES 65536

struct capture {
    int saved_stderr;
    int pipe_fds[2];
    char text[CAPTURE_BYTES];
};

static void capture_begin(struct capture *c)
{
    ASSERT_OK(pipe(c->pipe_fds));
    ASSERT_OK(fcntl(c->pipe_fds[0], F_SETFL, O_NONBLOCK));
    c->saved_stderr = dup(STDERR_FILENO);
    ASSERT_GE_INT(c->saved_stderr, 0);
    ASSERT_GE_INT(dup2(c->pipe_fds[1], STDERR_FILENO), 0);
}

/* Restores stderr and returns the lines written meanwhile. */
static int capture_end(struct capture *c)
{
    ASSERT_GE_INT(dup2(c->saved_stderr, STDERR_FILENO), 0);
    close(c->saved_stderr);
    close(c->pipe_fds[1]);
    ssize_t n = read(c->pipe_fds[0], c->text, sizeof c->text - 1);
    close(c->pipe_fds[0]);
    c->text[n > 0 ? n : 0] = '\0';
    int lines = 0;
    for (const char *p = c->text; *p != '\0'; p++) {
        lines += *p == '\n';
    }
    return lines;
}

static void log_from_one_site(int i)
{
    log_warn("database or disk is full (%d)", i);
}

static void test_a_flood_from_one_site_is_one_line(void **state)
{
    (void)state;
    struct capture c;
    log_set_repeat_interval_ms(200);
    capture_begin(&c);
    for (int i = 0; i < 1000; i++) {
        log_from_one_site(i);
    }
    log_info("another site prints on its own");
    ASSERT_EQ_INT(capture_end(&c), 2);
    ASSERT_NOT_NULL(strstr(c.text, "database or disk is full (0)"));
    ASSERT_NOT_NULL(strstr(c.text, "another site"));
    usleep(250 * 1000); /* past the interval: the next line tells the count */
    capture_begin(&c);
    log_from_one_site(1000);
    ASSERT_EQ_INT(capture_end(&c), 1);
    ASSERT_NOT_NULL(strstr(c.text, "(1000)"));
    ASSERT_NOT_NULL(strstr(c.text, "(999 more like this in the last interval, not printed)"));
}

static void test_messages_stay_one_line(void **state)
{
    (void)state;
    struct capture c;
    log_set_repeat_interval_ms(0);
    capture_begin(&c);
    log_error("postgres: ERROR:  relation \"x\" does not exist\nLINE 1: SELECT\r\n   ^\n");
    ASSERT_EQ_INT(capture_end(&c), 1);
    ASSERT_NOT_NULL(strstr(c.text, "does not exist LINE 1: SELECT"));
    ASSERT_TRUE(c.text[strlen(c.text) - 1] == '\n');
}

static void test_no_limit_prints_every_line(void **state)
{
    (void)state;
    struct capture c;
    log_set_repeat_interval_ms(0);
    capture_begin(&c);
    for (int i = 0; i < 50; i++) {
        log_from_one_site(i);
    }
    ASSERT_EQ_INT(capture_end(&c), 50);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_a_flood_from_one_site_is_one_line),
        cmocka_unit_test(test_messages_stay_one_line),
        cmocka_unit_test(test_no_limit_prints_every_line),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
