/*
 * test_helpers.h - typed assertions for the cmocka unit tests, in the spirit of libuv's
 * test/task.h: every failed comparison prints both expressions and both values, with the file
 * and line, before cmocka fails the test (STYLE 17).
 *
 * Use them on the test's main thread only: cmocka fails a test by longjmp, which must not
 * happen on another thread. Worker threads record what they saw and the main thread asserts.
 *
 * This file is not a test runner (cmocka is) and holds no fixtures; those live with their
 * tests. Read test_errors.c next.
 */
#ifndef STOCKD_TEST_HELPERS_H
#define STOCKD_TEST_HELPERS_H

#include <inttypes.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include "base/errors.h"

/* The seed of the randomized test running now, or 0; failures print it so they replay. */
static uint64_t test_seed_active_ __attribute__((unused));

/* Prints "file:line: message" through cmocka and fails the current test (a longjmp out of
 * the test function). Never returns. */
__attribute__((format(printf, 3, 4), unused)) _Noreturn static void
test_fail_(const char *file, int line, const char *format, ...)
{
    va_list args;
    print_error("%s:%d: ", file, line);
    va_start(args, format);
    vprint_error(format, args);
    va_end(args);
    print_error("\n");
    if (test_seed_active_ != 0) {
        print_error("replay with TEST_SEED=%" PRIu64 "\n", test_seed_active_);
    }
    _fail(file, line);
    abort(); /* _fail longjmps back into cmocka; it is not declared noreturn */
}

#define TEST_FAIL_AT_(file, line, ...) test_fail_(file, line, __VA_ARGS__)
#define TEST_FAIL(...) TEST_FAIL_AT_(__FILE__, __LINE__, __VA_ARGS__)

/* Signed comparisons, evaluated once, as int64_t. */
#define ASSERT_CMP_INT_(a, op, b)                                                               \
    do {                                                                                        \
        int64_t test_a_ = (int64_t)(a);                                                         \
        int64_t test_b_ = (int64_t)(b);                                                         \
        if (!(test_a_ op test_b_)) {                                                            \
            TEST_FAIL("ASSERT(%s %s %s) failed: %" PRId64 " %s %" PRId64, #a, #op, #b, test_a_, \
                      #op, test_b_);                                                            \
        }                                                                                       \
    } while (0)

#define ASSERT_EQ_INT(a, b) ASSERT_CMP_INT_(a, ==, b)
#define ASSERT_NE_INT(a, b) ASSERT_CMP_INT_(a, !=, b)
#define ASSERT_LT_INT(a, b) ASSERT_CMP_INT_(a, <, b)
#define ASSERT_LE_INT(a, b) ASSERT_CMP_INT_(a, <=, b)
#define ASSERT_GT_INT(a, b) ASSERT_CMP_INT_(a, >, b)
#define ASSERT_GE_INT(a, b) ASSERT_CMP_INT_(a, >=, b)

/* Unsigned comparisons (sizes, counts, hashes), as uint64_t. */
#define ASSERT_CMP_UINT_(a, op, b)                                                              \
    do {                                                                                        \
        uint64_t test_a_ = (uint64_t)(a);                                                       \
        uint64_t test_b_ = (uint64_t)(b);                                                       \
        if (!(test_a_ op test_b_)) {                                                            \
            TEST_FAIL("ASSERT(%s %s %s) failed: %" PRIu64 " %s %" PRIu64, #a, #op, #b, test_a_, \
                      #op, test_b_);                                                            \
        }                                                                                       \
    } while (0)

#define ASSERT_EQ_UINT(a, b) ASSERT_CMP_UINT_(a, ==, b)
#define ASSERT_NE_UINT(a, b) ASSERT_CMP_UINT_(a, !=, b)
#define ASSERT_LT_UINT(a, b) ASSERT_CMP_UINT_(a, <, b)
#define ASSERT_LE_UINT(a, b) ASSERT_CMP_UINT_(a, <=, b)
#define ASSERT_GT_UINT(a, b) ASSERT_CMP_UINT_(a, >, b)
#define ASSERT_GE_UINT(a, b) ASSERT_CMP_UINT_(a, >=, b)

#define ASSERT_TRUE(x)                                 \
    do {                                               \
        if (!(x)) {                                    \
            TEST_FAIL("ASSERT(%s) failed: false", #x); \
        }                                              \
    } while (0)

#define ASSERT_FALSE(x)                                  \
    do {                                                 \
        if (x) {                                         \
            TEST_FAIL("ASSERT(!(%s)) failed: true", #x); \
        }                                                \
    } while (0)

#define ASSERT_NULL(p)                                               \
    do {                                                             \
        const void *test_p_ = (p);                                   \
        if (test_p_ != NULL) {                                       \
            TEST_FAIL("ASSERT(%s == NULL) failed: %p", #p, test_p_); \
        }                                                            \
    } while (0)

#define ASSERT_NOT_NULL(p)                              \
    do {                                                \
        if ((p) == NULL) {                              \
            TEST_FAIL("ASSERT(%s != NULL) failed", #p); \
        }                                               \
    } while (0)

/* NUL-terminated strings; NULL prints as (null) and equals only NULL. */
#define ASSERT_STR_CMP_(a, b, want_equal)                                               \
    do {                                                                                \
        const char *test_a_ = (a);                                                      \
        const char *test_b_ = (b);                                                      \
        int test_equal_ = test_a_ == test_b_;                                           \
        if (test_a_ != NULL && test_b_ != NULL) {                                       \
            test_equal_ = strcmp(test_a_, test_b_) == 0;                                \
        }                                                                               \
        if (test_equal_ != (want_equal)) {                                              \
            TEST_FAIL("ASSERT(%s %s %s) failed:\n  left:  \"%s\"\n  right: \"%s\"", #a, \
                      (want_equal) ? "==" : "!=", #b, test_a_ ? test_a_ : "(null)",     \
                      test_b_ ? test_b_ : "(null)");                                    \
        }                                                                               \
    } while (0)

#define ASSERT_EQ_STR(a, b) ASSERT_STR_CMP_(a, b, 1)
#define ASSERT_NE_STR(a, b) ASSERT_STR_CMP_(a, b, 0)

/* length bytes at a and b, printed as text with non-printable bytes escaped. */
#define ASSERT_EQ_MEM(a, b, length)                                                                \
    do {                                                                                           \
        const void *test_a_ = (a);                                                                 \
        const void *test_b_ = (b);                                                                 \
        size_t test_length_ = (length);                                                            \
        if (memcmp(test_a_, test_b_, test_length_) != 0) {                                         \
            char test_left_[256];                                                                  \
            char test_right_[256];                                                                 \
            test_escape_(test_a_, test_length_, test_left_, sizeof test_left_);                    \
            test_escape_(test_b_, test_length_, test_right_, sizeof test_right_);                  \
            TEST_FAIL("ASSERT(%s == %s, %zu bytes) failed:\n  left:  \"%s\"\n  right: \"%s\"", #a, \
                      #b, test_length_, test_left_, test_right_);                                  \
        }                                                                                          \
    } while (0)

/* Return codes: 0, or a negative svc_err / -errno, printed by name when it is an svc_err. */
#define ASSERT_OK(rc)                                                                            \
    do {                                                                                         \
        int test_rc_ = (int)(rc);                                                                \
        if (test_rc_ != 0) {                                                                     \
            TEST_FAIL("ASSERT_OK(%s) failed: %d (%s)", #rc, test_rc_, test_err_name_(test_rc_)); \
        }                                                                                        \
    } while (0)

#define ASSERT_ERR(rc, expected)                                                                 \
    do {                                                                                         \
        int test_rc_ = (int)(rc);                                                                \
        int test_expected_ = (int)(expected);                                                    \
        if (test_rc_ != test_expected_) {                                                        \
            TEST_FAIL("ASSERT(%s == %s) failed: %d (%s) != %d (%s)", #rc, #expected, test_rc_,   \
                      test_err_name_(test_rc_), test_expected_, test_err_name_(test_expected_)); \
        }                                                                                        \
    } while (0)

/* The name for an error code in failure messages. */
static inline const char *test_err_name_(int rc)
{
    if (rc == 0) {
        return "ok";
    }
    return svc_err_is_known(rc) ? svc_err_name(rc) : "errno or unknown";
}

/* Copies length bytes into out as printable text (\xNN for the rest), cut to fit out_size. */
static inline void test_escape_(const void *data, size_t length, char *out, size_t out_size)
{
    const unsigned char *bytes = data;
    size_t used = 0;
    for (size_t i = 0; i < length && used + 5 < out_size; i++) {
        if (bytes[i] >= 0x20 && bytes[i] < 0x7f && bytes[i] != '\\') {
            out[used++] = (char)bytes[i];
        } else {
            used += (size_t)snprintf(out + used, out_size - used, "\\x%02x", bytes[i]);
        }
    }
    out[used] = '\0';
}

/* A seeded PRNG for randomized tests (xorshift64*): the same seed replays the same run. */
struct test_rng {
    uint64_t state;
};

static inline void test_rng_seed(struct test_rng *rng, uint64_t seed)
{
    rng->state = seed ? seed : 0x9e3779b97f4a7c15ULL; /* xorshift must not start at 0 */
}

static inline uint64_t test_rng_next(struct test_rng *rng)
{
    rng->state ^= rng->state >> 12;
    rng->state ^= rng->state << 25;
    rng->state ^= rng->state >> 27;
    return rng->state * 2685821657736338717ULL;
}

/* Uniform in [0, bound) for bound >= 1 (the modulo bias is irrelevant at these sizes). */
static inline uint64_t test_rng_below(struct test_rng *rng, uint64_t bound)
{
    return test_rng_next(rng) % bound;
}

/* Starts a randomized test: the seed is $TEST_SEED when set (to replay a failure), else the
 * time. It is printed now and again with any failure; test_seed_end() forgets it. */
static inline uint64_t test_seed_begin(const char *test_name)
{
    const char *text = getenv("TEST_SEED");
    uint64_t seed = 0;
    if (text != NULL && text[0] != '\0') {
        seed = strtoull(text, NULL, 0);
    } else {
        struct timespec now;
        clock_gettime(CLOCK_REALTIME, &now);
        seed = ((uint64_t)now.tv_sec * 1000000007ULL) ^ (uint64_t)now.tv_nsec;
    }
    seed = seed ? seed : 1;
    print_message("%s: seed=%" PRIu64 "\n", test_name, seed);
    test_seed_active_ = seed;
    return seed;
}

static inline void test_seed_end(void)
{
    test_seed_active_ = 0;
}

#endif
