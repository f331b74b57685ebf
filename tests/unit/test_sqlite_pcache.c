/*
 * test_sqlite_pcache.c - the page cache of store_sqlite_pcache.c: SQLite stays correct on it
 * (random-key index splits, a rolled-back transaction that grew the file, a small cache that
 * evicts), and a commit's truncate that has nothing to drop is not passed on to the built-in
 * cache. The cache is installed first, before this process uses SQLite at all.
 */
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "test_helpers.h"

#include "store/store_sqlite_internal.h"

#define PCACHE_TEST_COMMITS 200
#define PCACHE_TEST_ROWS_PER_COMMIT 50

struct fixture {
    char dir[64];
    char path[96];
    sqlite3 *db;
};

static int fixture_setup(void **state)
{
    struct fixture *f = calloc(1, sizeof *f);
    snprintf(f->dir, sizeof f->dir, "/tmp/stockd-pcache-XXXXXX");
    if (mkdtemp(f->dir) == NULL) {
        return -1;
    }
    snprintf(f->path, sizeof f->path, "%s/t.db", f->dir);
    *state = f;
    return 0;
}

static int fixture_teardown(void **state)
{
    struct fixture *f = *state;
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", f->dir);
    if (system(cmd) != 0) {
        return -1;
    }
    free(f);
    return 0;
}

static void exec_ok(sqlite3 *db, const char *sql)
{
    char *message = NULL;
    if (sqlite3_exec(db, sql, NULL, NULL, &message) != SQLITE_OK) {
        TEST_FAIL("%s: %s", sql, message);
    }
}

static int64_t select_int(sqlite3 *db, const char *sql)
{
    sqlite3_stmt *stmt = NULL;
    ASSERT_EQ_INT(sqlite3_prepare_v2(db, sql, -1, &stmt, NULL), SQLITE_OK);
    ASSERT_EQ_INT(sqlite3_step(stmt), SQLITE_ROW);
    int64_t value = sqlite3_column_int64(stmt, 0);
    sqlite3_finalize(stmt);
    return value;
}

/* Inserts rows random keys (a WITHOUT ROWID index: splits in the middle, whose new pages
 * SQLite renumbers through the parking page) with a text of fill bytes. */
static void insert_random(sqlite3 *db, int rows, unsigned *seed)
{
    sqlite3_stmt *stmt = NULL;
    ASSERT_EQ_INT(sqlite3_prepare_v2(db,
                                     "INSERT OR IGNORE INTO t (k, v) VALUES (?1, zeroblob(200))",
                                     -1, &stmt, NULL),
                  SQLITE_OK);
    for (int i = 0; i < rows; i++) {
        char key[32];
        snprintf(key, sizeof key, "k%010u", (unsigned)rand_r(seed));
        sqlite3_bind_text(stmt, 1, key, -1, SQLITE_TRANSIENT);
        ASSERT_EQ_INT(sqlite3_step(stmt), SQLITE_DONE);
        sqlite3_reset(stmt);
    }
    sqlite3_finalize(stmt);
}

static void test_commits_skip_the_idle_truncate(void **state)
{
    struct fixture *f = *state;
    ASSERT_EQ_INT(sqlite3_open(f->path, &f->db), SQLITE_OK);
    exec_ok(f->db, "PRAGMA journal_mode = WAL");
    exec_ok(f->db, "PRAGMA cache_size = -65536");
    exec_ok(f->db, "CREATE TABLE t (k TEXT PRIMARY KEY, v BLOB) WITHOUT ROWID");
    uint64_t forwarded0 = 0;
    uint64_t skipped0 = 0;
    store_sqlite_pcache_counts(&forwarded0, &skipped0);
    unsigned seed = 7;
    for (int c = 0; c < PCACHE_TEST_COMMITS; c++) {
        exec_ok(f->db, "BEGIN IMMEDIATE");
        insert_random(f->db, PCACHE_TEST_ROWS_PER_COMMIT, &seed);
        exec_ok(f->db, "COMMIT");
    }
    uint64_t forwarded = 0;
    uint64_t skipped = 0;
    store_sqlite_pcache_counts(&forwarded, &skipped);
    /* Every commit truncates once; nearly none has a page past the file to drop. */
    ASSERT_GE_INT((int64_t)(skipped - skipped0), PCACHE_TEST_COMMITS * 9 / 10);
    ASSERT_LE_INT((int64_t)(forwarded - forwarded0), PCACHE_TEST_COMMITS / 10);
    ASSERT_EQ_INT(select_int(f->db, "SELECT count(*) FROM t"),
                  select_int(f->db, "SELECT count(DISTINCT k) FROM t"));
    ASSERT_GE_INT(select_int(f->db, "SELECT count(*) FROM t"),
                  PCACHE_TEST_COMMITS * PCACHE_TEST_ROWS_PER_COMMIT * 99 / 100);
    sqlite3_close(f->db);
}

/* A transaction that grew the file and rolled back leaves pages past the file's end in the
 * cache: that truncate must reach SQLite's cache, or the next growth reads stale pages. */
static void test_rollback_drops_the_pages_past_the_end(void **state)
{
    struct fixture *f = *state;
    ASSERT_EQ_INT(sqlite3_open(f->path, &f->db), SQLITE_OK);
    exec_ok(f->db, "PRAGMA journal_mode = WAL");
    exec_ok(f->db, "PRAGMA cache_size = 64"); /* pages: a small cache that also evicts */
    exec_ok(f->db, "CREATE TABLE t (k TEXT PRIMARY KEY, v BLOB) WITHOUT ROWID");
    unsigned seed = 11;
    for (int round = 0; round < 20; round++) {
        int64_t pages = select_int(f->db, "PRAGMA page_count");
        uint64_t forwarded0 = 0;
        uint64_t skipped0 = 0;
        store_sqlite_pcache_counts(&forwarded0, &skipped0);
        exec_ok(f->db, "BEGIN IMMEDIATE");
        insert_random(f->db, 400, &seed);
        ASSERT_GT_INT(select_int(f->db, "PRAGMA page_count"), pages);
        exec_ok(f->db, "ROLLBACK");
        uint64_t forwarded = 0;
        uint64_t skipped = 0;
        store_sqlite_pcache_counts(&forwarded, &skipped);
        ASSERT_GT_INT((int64_t)(forwarded - forwarded0), 0);
        ASSERT_EQ_INT(select_int(f->db, "PRAGMA page_count"), pages);
        exec_ok(f->db, "BEGIN IMMEDIATE");
        insert_random(f->db, 100, &seed);
        exec_ok(f->db, "COMMIT");
    }
    sqlite3_stmt *stmt = NULL;
    ASSERT_EQ_INT(sqlite3_prepare_v2(f->db, "PRAGMA integrity_check", -1, &stmt, NULL), SQLITE_OK);
    ASSERT_EQ_INT(sqlite3_step(stmt), SQLITE_ROW);
    ASSERT_EQ_STR((const char *)sqlite3_column_text(stmt, 0), "ok");
    sqlite3_finalize(stmt);
    ASSERT_EQ_INT(select_int(f->db, "SELECT count(*) FROM t"), 20 * 100);
    sqlite3_close(f->db);
}

int main(void)
{
    if (!store_sqlite_pcache_install()) {
        fprintf(stderr, "the page cache was not installed\n");
        return 1;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_commits_skip_the_idle_truncate, fixture_setup,
                                        fixture_teardown),
        cmocka_unit_test_setup_teardown(test_rollback_drops_the_pages_past_the_end, fixture_setup,
                                        fixture_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
