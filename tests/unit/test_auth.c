/*
 * test_auth.c - bearer tokens (auth.c): the tokens-file and STOCKD_TOKENS grammars, SHA-256
 * hashing, hashed entries, the check against every entry, the capacity bound, and the admin
 * token generated on a first start (mode 0600, remembered by hash across restarts).
 *
 * It includes auth.c to reach its statics (h2o t/00unit). The black-box side of auth (401,
 * 403, roles per route) is tests/blackbox/test_auth.py. Read test_writer.c next.
 */
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "test_helpers.h"

#include "../../src/http/auth.c"

/* SHA-256("abc"), FIPS 180-2 appendix B.1. */
#define ABC_SHA256 "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"

static const struct auth_token *check_str(const struct auth *a, const char *token)
{
    struct auth_hasher *h = auth_hasher_new();
    ASSERT_NOT_NULL(h);
    const struct auth_token *found = auth_check(a, h, token, strlen(token));
    auth_hasher_free(h);
    return found;
}

static void test_sha256_known_answer(void **state)
{
    (void)state;
    unsigned char hash[AUTH_HASH_BYTES];
    char hex[2 * AUTH_HASH_BYTES + 1];
    auth_sha256("abc", 3, hash);
    auth_hex_encode(hash, sizeof hash, hex);
    ASSERT_EQ_STR(hex, ABC_SHA256);
    struct auth_hasher *h = auth_hasher_new();
    ASSERT_NOT_NULL(h);
    for (int round = 0; round < 3; round++) { /* the reused context gives the same answer */
        memset(hash, 0, sizeof hash);
        auth_digest(h, "abc", 3, hash);
        auth_hex_encode(hash, sizeof hash, hex);
        ASSERT_EQ_STR(hex, ABC_SHA256);
    }
    auth_hasher_free(h);
    unsigned char decoded[AUTH_HASH_BYTES];
    ASSERT_OK(auth_hex_decode(ABC_SHA256, strlen(ABC_SHA256), decoded));
    ASSERT_EQ_MEM(decoded, hash, sizeof hash);
    ASSERT_ERR(auth_hex_decode(ABC_SHA256, 63, decoded), SVC_EVALIDATION);
    char bad[] = ABC_SHA256;
    bad[10] = 'z';
    ASSERT_ERR(auth_hex_decode(bad, strlen(bad), decoded), SVC_EVALIDATION);
}

static void test_roles(void **state)
{
    (void)state;
    ASSERT_EQ_INT(auth_role_parse("read", 4), AUTH_ROLE_READ);
    ASSERT_EQ_INT(auth_role_parse("write", 5), AUTH_ROLE_WRITE);
    ASSERT_EQ_INT(auth_role_parse("admin", 5), AUTH_ROLE_ADMIN);
    ASSERT_EQ_INT(auth_role_parse("adm", 3), AUTH_ROLE_NONE);
    ASSERT_EQ_INT(auth_role_parse("Admin", 5), AUTH_ROLE_NONE);
    ASSERT_LT_INT(AUTH_ROLE_READ, AUTH_ROLE_WRITE);
    ASSERT_LT_INT(AUTH_ROLE_WRITE, AUTH_ROLE_ADMIN);
    ASSERT_EQ_STR(auth_role_name(AUTH_ROLE_WRITE), "write");
}

static void test_file_lines(void **state)
{
    (void)state;
    static struct auth a;
    auth_init(&a);
    ASSERT_EQ_INT(auth_parse_line(&a, "# a comment\n", 12), 0);
    ASSERT_EQ_INT(auth_parse_line(&a, "   \t\r\n", 6), 0);
    const char *plain = "alice read s3cret-token\n";
    ASSERT_EQ_INT(auth_parse_line(&a, plain, strlen(plain)), 1);
    const char *hashed = "  bob\twrite sha256:" ABC_SHA256 "\r\n";
    ASSERT_EQ_INT(auth_parse_line(&a, hashed, strlen(hashed)), 1);
    ASSERT_EQ_UINT(a.token_count, 2);
    const char *bad[] = {
        "carol superuser tok\n",    "carol read\n",
        "carol read tok extra\n",   "car/ol read tok\n",
        "carol read sha256:abcd\n", AUTH_ANONYMOUS_PRINCIPAL " write tok\n"}; /* reserved name */
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        ASSERT_ERR(auth_parse_line(&a, bad[i], strlen(bad[i])), SVC_EVALIDATION);
    }
    ASSERT_EQ_UINT(a.token_count, 2);
    const struct auth_token *t = check_str(&a, "s3cret-token");
    ASSERT_NOT_NULL(t);
    ASSERT_EQ_STR(t->principal, "alice");
    ASSERT_EQ_INT(t->role, AUTH_ROLE_READ);
    t = check_str(&a, "abc"); /* bob's token is given only by its hash */
    ASSERT_NOT_NULL(t);
    ASSERT_EQ_STR(t->principal, "bob");
    ASSERT_EQ_INT(t->role, AUTH_ROLE_WRITE);
    ASSERT_NULL(check_str(&a, "s3cret-token2"));
    ASSERT_NULL(check_str(&a, "abd"));
    ASSERT_NULL(check_str(&a, ""));
    ASSERT_NULL(check_str(&a, "s3cret token")); /* a space is never part of a token */
}

static void test_env(void **state)
{
    (void)state;
    static struct auth a;
    auth_init(&a);
    ASSERT_OK(auth_parse_env(&a, "ci:write:tok-1,,ops:admin:sha256:" ABC_SHA256 ","));
    ASSERT_EQ_UINT(a.token_count, 2);
    ASSERT_EQ_STR(check_str(&a, "tok-1")->principal, "ci");
    ASSERT_EQ_INT(check_str(&a, "abc")->role, AUTH_ROLE_ADMIN);
    static struct auth b;
    auth_init(&b);
    ASSERT_ERR(auth_parse_env(&b, "ci:write"), SVC_EVALIDATION);
    ASSERT_ERR(auth_parse_env(&b, "ci:root:tok"), SVC_EVALIDATION);
    ASSERT_ERR(auth_parse_env(&b, ":read:tok"), SVC_EVALIDATION);
}

static void test_capacity(void **state)
{
    (void)state;
    static struct auth a;
    auth_init(&a);
    char token[32];
    for (int i = 0; i < AUTH_TOKENS_MAX; i++) {
        int n = snprintf(token, sizeof token, "token-%d", i);
        ASSERT_OK(auth_add(&a, "p", 1, AUTH_ROLE_READ, token, (size_t)n));
    }
    ASSERT_ERR(auth_add(&a, "p", 1, AUTH_ROLE_READ, "one-more", 8), SVC_ECAPACITY);
    ASSERT_EQ_UINT(a.token_count, AUTH_TOKENS_MAX);
    /* The first and the last entry are both found: the scan covers the whole table. */
    ASSERT_TRUE(check_str(&a, "token-0") == &a.tokens[0]);
    snprintf(token, sizeof token, "token-%d", AUTH_TOKENS_MAX - 1);
    ASSERT_TRUE(check_str(&a, token) == &a.tokens[AUTH_TOKENS_MAX - 1]);
}

/* Reads the first line of path without its newline into out. */
static void read_line(const char *path, char *out, size_t size)
{
    FILE *f = fopen(path, "r");
    ASSERT_NOT_NULL(f);
    ASSERT_NOT_NULL(fgets(out, (int)size, f));
    fclose(f);
    out[strcspn(out, "\n")] = '\0';
}

static void test_generated_admin_token(void **state)
{
    (void)state;
    char dir[] = "/tmp/stockd-test-auth-XXXXXX";
    ASSERT_NOT_NULL(mkdtemp(dir));
    unsetenv("STOCKD_TOKENS");
    static struct auth a;
    auth_init(&a);
    char token_path[1024];
    ASSERT_EQ_INT(auth_configure(&a, NULL, dir, token_path, sizeof token_path),
                  AUTH_SOURCE_GENERATED);
    struct stat st;
    ASSERT_OK(stat(token_path, &st));
    ASSERT_EQ_UINT(st.st_mode & 0777, 0600);
    char token[AUTH_TOKEN_BYTES_MAX + 2];
    read_line(token_path, token, sizeof token);
    ASSERT_EQ_UINT(strlen(token), 64);
    ASSERT_EQ_STR(check_str(&a, token)->principal, "admin");
    /* A restart finds <dir>/tokens: the same token, known only by its hash. */
    static struct auth b;
    auth_init(&b);
    char unused[1024];
    ASSERT_EQ_INT(auth_configure(&b, NULL, dir, unused, sizeof unused), AUTH_SOURCE_DATA_DIR);
    ASSERT_EQ_INT(check_str(&b, token)->role, AUTH_ROLE_ADMIN);
    char tokens_path[1100];
    snprintf(tokens_path, sizeof tokens_path, "%s/tokens", dir);
    FILE *f = fopen(tokens_path, "r");
    char text[1024];
    size_t length = fread(text, 1, sizeof text - 1, f);
    fclose(f);
    text[length] = '\0';
    ASSERT_NULL(strstr(text, token)); /* the plaintext is not in the tokens file */
    unlink(tokens_path);
    unlink(token_path);
    rmdir(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sha256_known_answer),
        cmocka_unit_test(test_roles),
        cmocka_unit_test(test_file_lines),
        cmocka_unit_test(test_env),
        cmocka_unit_test(test_capacity),
        cmocka_unit_test(test_generated_admin_token),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
