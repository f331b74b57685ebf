/*
 * auth.h - bearer tokens: who may call what (DESIGN.md "HTTP API (v1)").
 *
 * A token names a principal and a role, read < write < admin. Tokens come from one source, in
 * this order: --tokens-file FILE, the environment variable STOCKD_TOKENS, <data-dir>/tokens,
 * else a generated admin token written to <data-dir>/admin.token (mode 0600) whose hash is
 * remembered in <data-dir>/tokens. Only SHA-256 hashes are kept in memory, and a presented
 * token is compared with every configured hash in constant time.
 *
 * This file does not know routes: routes.c decides which role a route needs and calls
 * auth_check. The table is filled by main before the I/O threads start and never changes
 * after, so the threads read it without a lock (STYLE 4). Read routes.h next.
 */
#ifndef STOCKD_AUTH_H
#define STOCKD_AUTH_H

#include <stdbool.h>
#include <stddef.h>

#include "base/svc_limits.h"

/* The principal of requests without a token (public routes, --anonymous-role). Reserved: no
 * token may name it, so token holders never share idempotency keys with anonymous clients. */
#define AUTH_ANONYMOUS_PRINCIPAL "public"

/* SHA-256 digest bytes. */
#define AUTH_HASH_BYTES 32

/* Roles in increasing strength: a token satisfies every role up to its own. */
enum auth_role {
    AUTH_ROLE_NONE = 0, /* a public route: no token needed */
    AUTH_ROLE_READ,     /* GET */
    AUTH_ROLE_WRITE,    /* commands */
    AUTH_ROLE_ADMIN,    /* admin and ops */
};

struct auth_token {
    char principal[AUTH_PRINCIPAL_BYTES_MAX + 1]; /* [A-Za-z0-9._-], NUL-terminated */
    enum auth_role role;                          /* READ..ADMIN, never NONE */
    unsigned char hash[AUTH_HASH_BYTES];          /* SHA-256 of the plaintext token */
};

/* The configured tokens; filled at startup, immutable afterwards. */
struct auth {
    struct auth_token tokens[AUTH_TOKENS_MAX];
    size_t token_count;
};

/* Where auth_configure found its tokens, for the startup log. */
enum auth_source {
    AUTH_SOURCE_FILE,      /* --tokens-file */
    AUTH_SOURCE_ENV,       /* STOCKD_TOKENS */
    AUTH_SOURCE_DATA_DIR,  /* <data-dir>/tokens */
    AUTH_SOURCE_GENERATED, /* a new admin token in <data-dir>/admin.token */
};

/* Empties a. */
void auth_init(struct auth *a);

/* Parses "read", "write" or "admin" (length bytes). Returns the role or AUTH_ROLE_NONE. */
enum auth_role auth_role_parse(const char *text, size_t length);

/* The role's name ("public" for AUTH_ROLE_NONE). */
const char *auth_role_name(enum auth_role role);

/* Adds one token. secret is the plaintext token, or "sha256:" and 64 hex digits of its hash.
 * Returns 0, SVC_EVALIDATION for a bad principal (or the reserved AUTH_ANONYMOUS_PRINCIPAL)
 * or secret, or SVC_ECAPACITY when full. */
int auth_add(struct auth *a, const char *principal, size_t principal_length, enum auth_role role,
             const char *secret, size_t secret_length);

/* Parses one line of a tokens file: "<principal> <role> <secret>", blank, or a "#" comment.
 * Returns 1 added, 0 nothing on the line, or a negative svc_err. */
int auth_parse_line(struct auth *a, const char *line, size_t length);

/* Parses STOCKD_TOKENS: "principal:role:secret" entries separated by commas. 0 or svc_err. */
int auth_parse_env(struct auth *a, const char *value);

/* Loads a tokens file. 0, -errno when it cannot be read (-ENOENT when absent), or the
 * svc_err of the first bad line with *line_number_out set to it. */
int auth_load_file(struct auth *a, const char *path, int *line_number_out);

/* Fills a from the first source that exists (see the top of this file). When it generates a
 * token, token_path_out (size bytes) gets the path of admin.token. Returns the source, or a
 * negative value (-errno or svc_err) with a logged reason; main exits on failure. */
int auth_configure(struct auth *a, const char *tokens_file, const char *data_dir,
                   char *token_path_out, size_t size);

/* One thread's SHA-256 state for auth_check (each I/O thread owns one): a check then
 * allocates nothing. NULL when out of memory. */
struct auth_hasher;
struct auth_hasher *auth_hasher_new(void);
void auth_hasher_free(struct auth_hasher *h);

/* Checks a presented token (the bytes after "Bearer ") with the calling thread's hasher.
 * Returns the matching entry or NULL. Hashes once and compares with every entry, without an
 * early exit. Thread-safe: reads a only. */
const struct auth_token *auth_check(const struct auth *a, struct auth_hasher *h, const char *token,
                                    size_t length);

#endif
