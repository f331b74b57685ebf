/*
 * auth.c - bearer tokens: parsing the sources, hashing, the constant-time check. See auth.h.
 *
 * Plaintext tokens live only on the stack while they are hashed; the table keeps SHA-256
 * digests. Everything here except auth_check runs once, on the main thread, before the I/O
 * threads start, so startup failures are logged and returned for main to exit on (STYLE 8).
 */
#include "http/auth.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "base/errors.h"
#include "base/log.h"
#include "base/svc_assert.h"
#include "base/text.h"

/* Random bytes of a generated admin token (hex-encoded: twice as many characters). */
#define AUTH_GENERATED_TOKEN_BYTES 32
/* The prefix of a hashed secret in a tokens file or STOCKD_TOKENS. */
#define AUTH_SHA256_PREFIX "sha256:"
#define AUTH_SHA256_PREFIX_BYTES (sizeof AUTH_SHA256_PREFIX - 1)

_Static_assert(2 * AUTH_GENERATED_TOKEN_BYTES <= AUTH_TOKEN_BYTES_MAX, "generated token fits");

void auth_init(struct auth *a)
{
    SVC_ASSERT(a != NULL);
    memset(a, 0, sizeof *a);
    SVC_ASSERT(a->token_count == 0);
}

enum auth_role auth_role_parse(const char *text, size_t length)
{
    static const char *const names[] = {"read", "write", "admin"};
    static const enum auth_role roles[] = {AUTH_ROLE_READ, AUTH_ROLE_WRITE, AUTH_ROLE_ADMIN};
    SVC_ASSERT(text != NULL);
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        if (strlen(names[i]) == length && memcmp(names[i], text, length) == 0) {
            SVC_ASSERT(roles[i] != AUTH_ROLE_NONE);
            return roles[i];
        }
    }
    return AUTH_ROLE_NONE;
}

const char *auth_role_name(enum auth_role role)
{
    switch (role) {
    case AUTH_ROLE_NONE: return "public";
    case AUTH_ROLE_READ: return "read";
    case AUTH_ROLE_WRITE: return "write";
    case AUTH_ROLE_ADMIN: return "admin";
    }
    SVC_UNREACHABLE();
}

/* libcrypto's one-shot EVP_Digest looks SHA-256 up in its provider tables (a lock) and
 * allocates a context on every call: ~0.5 us against ~0.13 us for a context kept and reused
 * with an implementation fetched once. */
struct auth_hasher {
    EVP_MD *md;      /* owned: SHA-256, fetched once */
    EVP_MD_CTX *ctx; /* owned, reused by every digest */
};

struct auth_hasher *auth_hasher_new(void)
{
    struct auth_hasher *h = calloc(1, sizeof *h);
    if (h == NULL) {
        return NULL;
    }
    h->md = EVP_MD_fetch(NULL, "SHA256", NULL);
    h->ctx = EVP_MD_CTX_new();
    if (h->md == NULL || h->ctx == NULL) {
        auth_hasher_free(h);
        return NULL;
    }
    return h;
}

void auth_hasher_free(struct auth_hasher *h)
{
    if (h != NULL) {
        EVP_MD_CTX_free(h->ctx);
        EVP_MD_free(h->md);
    }
    free(h);
}

static void auth_digest(struct auth_hasher *h, const char *data, size_t length,
                        unsigned char out[AUTH_HASH_BYTES])
{
    unsigned int out_length = 0;
    int ok = EVP_DigestInit_ex2(h->ctx, h->md, NULL) == 1 &&
             EVP_DigestUpdate(h->ctx, data, length) == 1 &&
             EVP_DigestFinal_ex(h->ctx, out, &out_length) == 1;
    SVC_ASSERT(ok); /* only fails without memory or a broken libcrypto */
    SVC_ASSERT(out_length == AUTH_HASH_BYTES);
}

/* Startup paths (filling the table): the one-shot digest, once per token. */
static void auth_sha256(const char *data, size_t length, unsigned char out[AUTH_HASH_BYTES])
{
    unsigned int out_length = 0;
    int ok = EVP_Digest(data, length, out, &out_length, EVP_sha256(), NULL);
    SVC_ASSERT(ok == 1); /* only fails without memory or a broken libcrypto */
    SVC_ASSERT(out_length == AUTH_HASH_BYTES);
}

/* Decodes exactly 2 * AUTH_HASH_BYTES hex digits. 0 or SVC_EVALIDATION. */
static int auth_hex_decode(const char *hex, size_t length, unsigned char out[AUTH_HASH_BYTES])
{
    SVC_ASSERT(hex != NULL);
    SVC_ASSERT(out != NULL);
    if (length != 2 * AUTH_HASH_BYTES) {
        return SVC_EVALIDATION;
    }
    for (size_t i = 0; i < AUTH_HASH_BYTES; i++) {
        int high = text_hex_value(hex[2 * i]);
        int low = text_hex_value(hex[2 * i + 1]);
        if (high < 0 || low < 0) {
            return SVC_EVALIDATION;
        }
        out[i] = (unsigned char)(high * 16 + low);
    }
    return 0;
}

/* Writes 2 * length lower-case hex digits and a NUL into out. */
static void auth_hex_encode(const unsigned char *bytes, size_t length, char *out)
{
    static const char digits[] = "0123456789abcdef";
    SVC_ASSERT(bytes != NULL && out != NULL);
    SVC_ASSERT(length <= AUTH_TOKEN_BYTES_MAX);
    for (size_t i = 0; i < length; i++) {
        out[2 * i] = digits[bytes[i] >> 4];
        out[2 * i + 1] = digits[bytes[i] & 15];
    }
    out[2 * length] = '\0';
}

static bool auth_principal_valid(const char *s, size_t length)
{
    SVC_ASSERT(s != NULL);
    static const char anonymous[] = AUTH_ANONYMOUS_PRINCIPAL;
    if (length == sizeof anonymous - 1 && memcmp(s, anonymous, length) == 0) {
        /* A token of that name would share the anonymous requests' idempotency keys. */
        log_error("auth: the principal \"%s\" is reserved for requests without a token", anonymous);
        return false;
    }
    return text_is_id(s, length, AUTH_PRINCIPAL_BYTES_MAX);
}

/* A plaintext token: 1..AUTH_TOKEN_BYTES_MAX printable ASCII bytes, no spaces. */
static bool auth_token_valid(const char *s, size_t length)
{
    SVC_ASSERT(s != NULL);
    if (length < 1 || length > AUTH_TOKEN_BYTES_MAX) {
        return false;
    }
    for (size_t i = 0; i < length; i++) {
        if ((unsigned char)s[i] < 0x21 || (unsigned char)s[i] > 0x7e) {
            return false;
        }
    }
    return true;
}

int auth_add(struct auth *a, const char *principal, size_t principal_length, enum auth_role role,
             const char *secret, size_t secret_length)
{
    SVC_ASSERT(a->token_count <= AUTH_TOKENS_MAX);
    if (!auth_principal_valid(principal, principal_length) || role == AUTH_ROLE_NONE) {
        return SVC_EVALIDATION;
    }
    if (a->token_count == AUTH_TOKENS_MAX) {
        return SVC_ECAPACITY;
    }
    struct auth_token *t = &a->tokens[a->token_count];
    bool hashed = secret_length >= AUTH_SHA256_PREFIX_BYTES &&
                  memcmp(secret, AUTH_SHA256_PREFIX, AUTH_SHA256_PREFIX_BYTES) == 0;
    if (hashed) {
        int rc = auth_hex_decode(secret + AUTH_SHA256_PREFIX_BYTES,
                                 secret_length - AUTH_SHA256_PREFIX_BYTES, t->hash);
        if (rc != 0) {
            return rc;
        }
    } else if (auth_token_valid(secret, secret_length)) {
        auth_sha256(secret, secret_length, t->hash);
    } else {
        return SVC_EVALIDATION;
    }
    memcpy(t->principal, principal, principal_length);
    t->principal[principal_length] = '\0';
    t->role = role;
    a->token_count++;
    SVC_ASSERT(a->token_count <= AUTH_TOKENS_MAX);
    return 0;
}

/* Finds the next field of [*cursor, end) separated by any of seps; advances *cursor past it. */
static size_t auth_next_field(const char **cursor, const char *end, const char *seps,
                              const char **field)
{
    const char *p = *cursor;
    while (p < end && strchr(seps, *p) != NULL) {
        p++;
    }
    *field = p;
    while (p < end && strchr(seps, *p) == NULL) {
        p++;
    }
    *cursor = p;
    SVC_ASSERT(p >= *field);
    return (size_t)(p - *field);
}

int auth_parse_line(struct auth *a, const char *line, size_t length)
{
    static const char spaces[] = " \t\r\n";
    SVC_ASSERT(line != NULL);
    const char *cursor = line;
    const char *end = line + length;
    const char *fields[4];
    size_t lengths[4];
    size_t count = 0;
    while (count < 4) {
        lengths[count] = auth_next_field(&cursor, end, spaces, &fields[count]);
        if (lengths[count] == 0) {
            break;
        }
        if (count == 0 && fields[0][0] == '#') {
            return 0; /* a comment */
        }
        count++;
    }
    if (count == 0) {
        return 0; /* a blank line */
    }
    if (count != 3) {
        return SVC_EVALIDATION; /* want exactly: principal role secret */
    }
    enum auth_role role = auth_role_parse(fields[1], lengths[1]);
    int rc = auth_add(a, fields[0], lengths[0], role, fields[2], lengths[2]);
    SVC_ASSERT(rc <= 0);
    return rc == 0 ? 1 : rc;
}

int auth_parse_env(struct auth *a, const char *value)
{
    SVC_ASSERT(value != NULL);
    const char *cursor = value;
    const char *end = value + strlen(value);
    while (cursor < end) {
        const char *entry = NULL;
        size_t entry_length = auth_next_field(&cursor, end, ",", &entry);
        if (entry_length == 0) {
            continue; /* trailing or doubled comma */
        }
        const char *first = memchr(entry, ':', entry_length);
        const char *second =
            first ? memchr(first + 1, ':', (size_t)(entry + entry_length - first - 1)) : NULL;
        if (second == NULL) {
            return SVC_EVALIDATION; /* want principal:role:secret */
        }
        enum auth_role role = auth_role_parse(first + 1, (size_t)(second - first - 1));
        int rc = auth_add(a, entry, (size_t)(first - entry), role, second + 1,
                          (size_t)(entry + entry_length - second - 1));
        if (rc != 0) {
            return rc;
        }
    }
    SVC_ASSERT(cursor == end);
    return 0;
}

int auth_load_file(struct auth *a, const char *path, int *line_number_out)
{
    SVC_ASSERT(path != NULL);
    *line_number_out = 0;
    FILE *f = fopen(path, "r");
    if (f == NULL) {
        return -errno;
    }
    char line[AUTH_LINE_BYTES_MAX];
    int rc = 0;
    while (rc >= 0 && fgets(line, sizeof line, f) != NULL) {
        (*line_number_out)++;
        size_t length = strlen(line);
        if (length == sizeof line - 1 && line[length - 1] != '\n') {
            rc = SVC_EVALIDATION; /* longer than any valid line */
            break;
        }
        rc = auth_parse_line(a, line, length);
    }
    if (rc >= 0 && ferror(f)) {
        rc = -EIO;
    }
    fclose(f);
    SVC_ASSERT(a->token_count <= AUTH_TOKENS_MAX);
    return rc < 0 ? rc : 0;
}

/* Writes text to path with mode 0600 through a temporary file and a rename, so that a crash
 * never leaves a half-written file. 0 or -errno. */
static int auth_write_private(const char *path, const char *text)
{
    char temporary[1024];
    int n = snprintf(temporary, sizeof temporary, "%s.tmp", path);
    SVC_ASSERT(n > 0);
    if ((size_t)n >= sizeof temporary) {
        return -ENAMETOOLONG;
    }
    int fd = open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) {
        return -errno;
    }
    size_t length = strlen(text);
    bool ok = fchmod(fd, 0600) == 0 && write(fd, text, length) == (ssize_t)length && fsync(fd) == 0;
    int err = ok ? 0 : -errno;
    close(fd);
    if (ok && rename(temporary, path) != 0) {
        err = -errno;
    }
    if (err != 0) {
        unlink(temporary);
    }
    SVC_ASSERT(err <= 0);
    return err;
}

/* Generates an admin token: the plaintext into <data_dir>/admin.token, its hash into
 * <data_dir>/tokens and into a. 0 or -errno. */
static int auth_generate_admin(struct auth *a, const char *data_dir, char *token_path, size_t size)
{
    unsigned char random_bytes[AUTH_GENERATED_TOKEN_BYTES];
    if (getrandom(random_bytes, sizeof random_bytes, 0) != (ssize_t)sizeof random_bytes) {
        return -errno;
    }
    char token[2 * AUTH_GENERATED_TOKEN_BYTES + 2];
    auth_hex_encode(random_bytes, sizeof random_bytes, token);
    OPENSSL_cleanse(random_bytes, sizeof random_bytes);
    int rc = auth_add(a, "admin", 5, AUTH_ROLE_ADMIN, token, 2 * AUTH_GENERATED_TOKEN_BYTES);
    SVC_ASSERT(rc == 0); /* a is empty and the token valid */
    char hash_hex[2 * AUTH_HASH_BYTES + 1];
    auth_hex_encode(a->tokens[a->token_count - 1].hash, AUTH_HASH_BYTES, hash_hex);
    char tokens_text[256];
    snprintf(tokens_text, sizeof tokens_text,
             "# stockd tokens: <principal> <role> <token | sha256:<hex>>, one per line.\n"
             "# Generated on first start; the plaintext is in admin.token.\n"
             "admin admin sha256:%s\n",
             hash_hex);
    char tokens_path[1024];
    snprintf(token_path, size, "%s/admin.token", data_dir);
    snprintf(tokens_path, sizeof tokens_path, "%s/tokens", data_dir);
    strcat(token, "\n");
    rc = auth_write_private(token_path, token);
    OPENSSL_cleanse(token, sizeof token);
    if (rc == 0) {
        rc = auth_write_private(tokens_path, tokens_text);
    }
    int dir_fd = rc == 0 ? open(data_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC) : -1;
    if (dir_fd >= 0) {
        fsync(dir_fd); /* both renames are durable before the path is printed */
        close(dir_fd);
    }
    SVC_ASSERT(a->token_count == 1);
    return rc;
}

int auth_configure(struct auth *a, const char *tokens_file, const char *data_dir,
                   char *token_path_out, size_t size)
{
    SVC_ASSERT(a->token_count == 0);
    SVC_ASSERT(size > 0);
    token_path_out[0] = '\0';
    const char *env = getenv("STOCKD_TOKENS");
    char path[1024];
    int line_number = 0;
    int rc = 0;
    int source = AUTH_SOURCE_FILE;
    if (tokens_file != NULL) {
        snprintf(path, sizeof path, "%s", tokens_file);
        rc = auth_load_file(a, path, &line_number);
    } else if (env != NULL && env[0] != '\0') {
        source = AUTH_SOURCE_ENV;
        snprintf(path, sizeof path, "STOCKD_TOKENS");
        rc = auth_parse_env(a, env);
    } else {
        source = AUTH_SOURCE_DATA_DIR;
        snprintf(path, sizeof path, "%s/tokens", data_dir);
        rc = auth_load_file(a, path, &line_number);
        if (rc == -ENOENT) {
            source = AUTH_SOURCE_GENERATED;
            rc = auth_generate_admin(a, data_dir, token_path_out, size);
        }
    }
    if (rc == 0 && a->token_count == 0) {
        rc = SVC_EVALIDATION; /* nobody could authenticate: surely a mistake */
    }
    if (rc != 0) {
        log_error("auth: cannot load tokens from %s (line %d): %s", path, line_number,
                  rc > -SVC_ERR_BASE ? strerror(-rc) : svc_err_name(rc));
        return rc;
    }
    log_info("auth: %zu token(s) from %s", a->token_count, path);
    return source;
}

const struct auth_token *auth_check(const struct auth *a, struct auth_hasher *h, const char *token,
                                    size_t length)
{
    SVC_ASSERT(a->token_count <= AUTH_TOKENS_MAX);
    SVC_ASSERT(h != NULL);
    if (!auth_token_valid(token, length)) {
        return NULL;
    }
    unsigned char hash[AUTH_HASH_BYTES];
    auth_digest(h, token, length, hash);
    size_t found = AUTH_TOKENS_MAX; /* none */
    for (size_t i = 0; i < a->token_count; i++) {
        /* Every entry is compared, whatever matched before, so the time does not say which. */
        size_t equal = (size_t)(CRYPTO_memcmp(hash, a->tokens[i].hash, AUTH_HASH_BYTES) == 0);
        found = equal * i + (1 - equal) * found;
    }
    if (found == AUTH_TOKENS_MAX) {
        return NULL;
    }
    SVC_ASSERT(found < a->token_count);
    return &a->tokens[found];
}
