/* store: schema migrations, applied at start (contract in store.h).
 *
 * One transaction: take a transaction-scoped advisory lock (a session lock would break behind
 * PgBouncer in transaction mode), create the version table if needed, read the version, apply
 * what is newer, record it, commit. Nodes starting together queue on the lock; the first
 * applies, the others then read the new version and apply nothing. The second round trip first
 * checks that it still holds the lock, so a connection lost in between cannot apply migrations
 * outside it. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "store/store.h"
#include "store/store_pg.h"
#include "store_migrations.h"

#define MOD "store"
#define LOCK_KEY "72430101"
#define NMIGRATIONS (sizeof store_migrations / sizeof store_migrations[0])

typedef struct {
    uv_loop_t *loop;
    pg_pool_t *pool;
    uv_timer_t timer;
    uint64_t deadline_ms;
    int status;
    int applied;
    char error[256];
    void (*cb)(int, int, const char *, void *);
    void *ud;
} migrate_t;

static void step_begin(migrate_t *m);
static void on_timer(uv_timer_t *t) {
    step_begin(t->data);
}

int store_schema_version(void) {
    return store_migrations[NMIGRATIONS - 1].version;
}

static void timer_closed(uv_handle_t *h) {
    migrate_t *m = h->data;
    m->cb(m->status, m->applied, m->error, m->ud);
    free(m);
}

static void pool_closed(void *ud) {
    migrate_t *m = ud;
    uv_close((uv_handle_t *)&m->timer, timer_closed);
}

static void finish(migrate_t *m, int status, const PGresult *res, const char *what) {
    m->status = status;
    if (status != 0) {
        char msg[200] = "";
        if (res)
            snprintf(msg, sizeof msg, "%s", PQresultErrorMessage(res));
        msg[strcspn(msg, "\n")] = '\0';
        snprintf(m->error, sizeof m->error, "%s%s%s", what, msg[0] ? ": " : "", msg);
    }
    uv_timer_stop(&m->timer);
    pg_pool_close(m->pool, pool_closed, m);
}

static void retry_or_fail(migrate_t *m, const PGresult *res, const char *what) {
    if (core_now_ms() >= m->deadline_ms) {
        finish(m, CORE_ETIMEDOUT, res, what);
        return;
    }
    uv_timer_start(&m->timer, on_timer, 200, 0);
}

static void applied_cb(PGresult *res, void *ud) {
    migrate_t *m = ud;
    if (!res) {
        retry_or_fail(m, NULL, "migration: connection lost");
        return;
    }
    if (PQresultStatus(res) != PGRES_COMMAND_OK && PQresultStatus(res) != PGRES_TUPLES_OK) {
        /* A migration itself failed: trying again would fail the same way. */
        finish(m, CORE_EINVAL, res, "migration failed");
        return;
    }
    finish(m, 0, NULL, NULL);
}

static void version_cb(PGresult *res, void *ud) {
    migrate_t *m = ud;
    if (!res) {
        retry_or_fail(m, NULL, "migration: connection lost");
        return;
    }
    if (PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1) {
        finish(m, CORE_EINVAL, res, "reading the schema version");
        return;
    }
    int have = atoi(PQgetvalue(res, 0, 0));
    core_str_t sql = {0};
    core_str_appends(&sql, "DO $$BEGIN IF NOT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = "
                           "'advisory' AND pid = pg_backend_pid() AND objid = " LOCK_KEY
                           " AND granted) THEN RAISE EXCEPTION 'migration lock lost'; END IF; "
                           "END$$;\n");
    int applied = 0;
    for (size_t i = 0; i < NMIGRATIONS; i++) {
        if (store_migrations[i].version <= have)
            continue;
        core_str_appends(&sql, store_migrations[i].sql);
        core_str_appendf(&sql,
                         ";\nINSERT INTO chat_schema_migrations (version, name) VALUES (%d, "
                         "'%s');\n",
                         store_migrations[i].version, store_migrations[i].name);
        CORE_LOGI(MOD, "applying migration", "version=%d name=%s", store_migrations[i].version,
                  store_migrations[i].name);
        applied++;
    }
    if (have > store_schema_version())
        CORE_LOGW(MOD, "the database schema is newer than this build", "database=%d build=%d", have,
                  store_schema_version());
    core_str_appends(&sql, "COMMIT;");
    m->applied = applied;
    if (pg_query_simple(m->pool, sql.ptr, applied_cb, m) != 0)
        retry_or_fail(m, NULL, "migration: connection lost");
    core_str_free(&sql);
}

static void step_begin(migrate_t *m) {
    static const char sql[] =
        "BEGIN; SELECT pg_advisory_xact_lock(" LOCK_KEY "); "
        "CREATE TABLE IF NOT EXISTS chat_schema_migrations (version integer PRIMARY KEY, "
        "name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now()); "
        "SELECT coalesce(max(version), 0) FROM chat_schema_migrations;";
    if (pg_query_simple(m->pool, sql, version_cb, m) != 0)
        retry_or_fail(m, NULL, "cannot reach PostgreSQL");
}

void store_migrate(uv_loop_t *loop, const char *url, uint32_t timeout_ms,
                   void (*cb)(int status, int applied, const char *error, void *ud), void *ud) {
    migrate_t *m = core_calloc(1, sizeof *m);
    m->loop = loop;
    m->cb = cb;
    m->ud = ud;
    m->deadline_ms = core_now_ms() + timeout_ms;
    pg_pool_opts_t o = {1, timeout_ms < 5000 ? timeout_ms : 5000, 60000};
    m->pool = pg_pool_new(loop, "migrate", url, &o);
    uv_timer_init(loop, &m->timer);
    m->timer.data = m;
    /* The connection is being made: the first attempt waits for it like a retry. */
    uv_timer_start(&m->timer, on_timer, 50, 0);
}
