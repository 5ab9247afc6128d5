/* store: the message writer (group commit), history reads, positions and the usage ledger
 * (contract in store.h). */
#include "store/store.h"

#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "store/store_pg.h"

#define MOD "store"

#define RETRY_MIN_MS 100
#define RETRY_MAX_MS 5000
#define PARAMS_PER_ROW 11
/* A batch also ends at cfg.batch_bytes of data and info (default 64 MiB, at most 1 GiB): each
 * column travels as one array whose length libpq takes as an int, and a batch of large
 * messages should not hold the connection (or the server's memory) for long. A single larger
 * row still goes alone. */
#define BATCH_BYTES_DEFAULT (64u << 20)
#define BATCH_BYTES_MAX (1u << 30)

typedef struct wrow {
    struct wrow *next;
    char *channel, *epoch;
    uint64_t offset;
    char *data;
    size_t data_len;
    char *info;
    size_t info_len;
    int64_t created_ms;
    char *plan; /* or NULL */
    bool reg;   /* this batch also writes the channel's chat_channels row (see registered) */
    uint64_t queued_us;
    store_done_cb cb;
    void *ud;
} wrow_t;

typedef struct batch {
    struct batch *next, *prev;
    store_t *s;
    wrow_t *rows;
    size_t n;
} batch_t;

struct store {
    uv_loop_t *loop;
    store_config_t cfg;
    pg_pool_t *primary;
    pg_pool_t *replica; /* NULL: reads go to the primary */
    wrow_t *head, *tail;
    size_t queued;    /* rows in head..tail */
    size_t backlog;   /* queued plus in flight */
    batch_t inflight; /* list head */
    uint32_t inflight_n;
    size_t isolate; /* rows still to be sent one per batch after a batch the server refused */
    uv_timer_t retry;
    uint32_t retry_ms;
    bool waiting; /* the retry timer runs: no batch is sent before it fires */
    bool corked;
    /* channel -> epoch (owned copies) of the channels whose chat_channels row holds that epoch,
     * as far as this node knows: their rows are inserted without touching chat_channels. */
    core_map_t *registered;
    core_hist_t commit_seconds;
    core_hist_t batch_rows;
    store_stats_t st;
    bool closing;
    uv_timer_t close_timer;
    int open;
    void (*done)(void *);
    void *done_ud;
};

static void flush(store_t *s);

/* ---- writer ---- */

/* Channels remembered as registered: past this many the memory is let go and each channel's next
 * batch registers it again (one chat_channels upsert per channel), so a node writing millions of
 * channels does not keep them all. */
#define REGISTERED_MAX 100000

static bool is_registered(const store_t *s, const char *channel, const char *epoch) {
    const char *e = core_map_get(s->registered, channel);
    return e && strcmp(e, epoch) == 0;
}

static void registered_free(store_t *s) {
    core_map_iter_t it = 0;
    const char *k;
    void *v;
    while (core_map_next(s->registered, &it, &k, &v))
        free(v);
    core_map_free(s->registered);
}

static void set_registered(store_t *s, const char *channel, const char *epoch) {
    if (core_map_size(s->registered) >= REGISTERED_MAX && !core_map_get(s->registered, channel)) {
        registered_free(s);
        s->registered = core_map_new();
    }
    free(core_map_put(s->registered, channel, core_strdup(epoch)));
}

static void row_free(wrow_t *r) {
    free(r->channel);
    free(r->epoch);
    free(r->data);
    free(r->info);
    free(r->plan);
    free(r);
}

/* Rows of a failed batch go back to the front, in their order: they are the oldest. */
static void rows_requeue(store_t *s, wrow_t *rows, size_t n) {
    if (!rows)
        return;
    wrow_t *last = rows;
    while (last->next)
        last = last->next;
    last->next = s->head;
    s->head = rows;
    if (!s->tail)
        s->tail = last;
    s->queued += n;
}

static void retry_fire(uv_timer_t *t) {
    store_t *s = t->data;
    s->waiting = false;
    flush(s);
}

static void retry_later(store_t *s) {
    if (s->waiting || s->closing)
        return;
    s->retry_ms = s->retry_ms ? s->retry_ms * 2 : RETRY_MIN_MS;
    if (s->retry_ms > RETRY_MAX_MS)
        s->retry_ms = RETRY_MAX_MS;
    uint32_t r;
    core_random(&r, sizeof r);
    s->waiting = true;
    uv_timer_start(&s->retry, retry_fire, s->retry_ms / 2 + r % (s->retry_ms / 2 + 1), 0);
}

static void maybe_finish_close(store_t *s);

/* Errors that may be about the rows themselves: bad data (22) or a constraint (23). Anything
 * else (the connection, the server's state, a missing table, a conflict between concurrent
 * writers) says nothing about them: the batch is sent again as it was. */
static bool sqlstate_transient(const char *st) {
    return strncmp(st, "22", 2) != 0 && strncmp(st, "23", 2) != 0;
}

static void batch_done(PGresult *res, void *ud) {
    batch_t *b = ud;
    store_t *s = b->s;
    b->prev->next = b->next;
    b->next->prev = b->prev;
    s->inflight_n--;
    wrow_t *rows = b->rows;
    size_t n = b->n;
    free(b);
    if (res && PQresultStatus(res) == PGRES_COMMAND_OK) {
        uint64_t now = core_now_us();
        s->st.batches++;
        s->st.rows_written += n;
        core_hist_observe(&s->batch_rows, (double)n);
        s->retry_ms = 0;
        s->isolate = s->isolate > n ? s->isolate - n : 0;
        s->backlog -= n;
        while (rows) {
            wrow_t *r = rows;
            rows = r->next;
            if (r->reg)
                set_registered(s, r->channel, r->epoch);
            core_hist_observe(&s->commit_seconds, (double)(now - r->queued_us) / 1e6);
            if (r->cb)
                r->cb(0, r->ud);
            row_free(r);
        }
    } else if (res && !sqlstate_transient(pg_sqlstate(res)) && n == 1) {
        /* The server refuses this row itself: keeping it would block every row behind it. */
        char msg[200];
        snprintf(msg, sizeof msg, "%s", PQresultErrorMessage(res));
        msg[strcspn(msg, "\n")] = '\0';
        CORE_LOGE(MOD, "publication not stored: the server refused it",
                  "channel=%s offset=%" PRIu64 " sqlstate=%s error=\"%s\"", rows->channel,
                  rows->offset, pg_sqlstate(res), msg);
        s->st.rejected++;
        s->backlog--;
        s->isolate = s->isolate ? s->isolate - 1 : 0;
        if (rows->cb)
            rows->cb(CORE_EINVAL, rows->ud);
        row_free(rows);
    } else {
        s->st.write_retries++;
        if (res && !sqlstate_transient(pg_sqlstate(res))) {
            /* One of these rows is refused: send them one per batch to find it. */
            s->isolate = n;
        } else {
            char msg[200] = "no connection";
            if (res)
                snprintf(msg, sizeof msg, "%s", PQresultErrorMessage(res));
            msg[strcspn(msg, "\n")] = '\0';
            CORE_LOGW(MOD, "batch not committed, will retry", "rows=%zu error=\"%s\"", n, msg);
        }
        rows_requeue(s, rows, n);
        retry_later(s);
    }
    flush(s);
    maybe_finish_close(s);
}

/* One statement text for every batch: the rows travel as eleven binary arrays (one per column)
 * that unnest turns back into rows. Postgres parses and plans the same short statement whatever
 * the batch size; the earlier form, a VALUES list of ten parameters per row, cost the server
 * about three times as much CPU per row at 500 rows (measured: 50 against 17 us/row), and
 * capped a batch at 6,500 rows by the protocol's 65,535 parameters.
 * chat_channels gets a row only from the rows marked reg: a channel's first rows in an epoch
 * (or the first this node writes since it started), so the epoch is in Postgres in the same
 * transaction as the channel's rows. Its top is not kept current per batch: concurrent batches
 * of several nodes waited on each other's row locks there until commit, and the upsert cost
 * Postgres about a third of its CPU per row. The newest offset is max("offset") of the channel's
 * rows in that epoch (store_positions); top keeps what deletions removed (retention,
 * history_remove), so offsets never go back.
 * DISTINCT ON keeps one position per channel (ON CONFLICT may touch a row once per statement),
 * ordered by channel so that concurrent writers lock positions in the same order. A position
 * moves forward only, or to another epoch. */
static const char insert_sql[] =
    "WITH r AS (SELECT * FROM unnest($1::text[], $2::text[], $3::int8[], $4::text[], "
    "$5::text[], $6::text[], $7::bytea[], $8::bytea[], $9::timestamptz[], $10::text[], "
    "$11::bool[]) AS r(channel, epoch, off, user_id, client_id, message_id, data, info, "
    "created_at, plan, reg)), "
    "ins AS (INSERT INTO chat_messages (channel, epoch, \"offset\", user_id, client_id, "
    "message_id, data, info, plan, created_at) SELECT channel, epoch, off, user_id, client_id, "
    "message_id, data, info, plan, created_at FROM r ON CONFLICT DO NOTHING) "
    "INSERT INTO chat_channels AS c (channel, epoch, top) SELECT DISTINCT ON (channel) channel, "
    "epoch, off FROM r WHERE reg ORDER BY channel, off DESC ON CONFLICT (channel) DO UPDATE SET "
    "epoch = EXCLUDED.epoch, top = EXCLUDED.top, updated_at = now() WHERE c.epoch <> "
    "EXCLUDED.epoch OR c.top < EXCLUDED.top";

/* Postgres's binary array format (array_recv): a one-dimensional array of n elements of type
 * oid, then per element its length (-1: NULL) and bytes, integers in network order. */
enum { OID_BOOL = 16, OID_BYTEA = 17, OID_INT8 = 20, OID_TEXT = 25, OID_TIMESTAMPTZ = 1184 };

/* timestamptz travels as microseconds since 2000-01-01 UTC (timestamptz_recv), so the server does
 * no arithmetic per row: to_timestamp(ms / 1000.0) cost it a numeric division and a conversion
 * to float for each one. */
#define PG_EPOCH_UNIX_MS INT64_C(946684800000)

static void put_u32(core_str_t *a, uint32_t v) {
    unsigned char b[4] = {(unsigned char)(v >> 24), (unsigned char)(v >> 16),
                          (unsigned char)(v >> 8), (unsigned char)v};
    core_str_append(a, (const char *)b, 4);
}

static void arr_begin(core_str_t *a, size_t n, uint32_t oid) {
    put_u32(a, 1);   /* dimensions */
    put_u32(a, 1);   /* may hold NULLs: the server accepts the flag either way */
    put_u32(a, oid); /* element type */
    put_u32(a, (uint32_t)n);
    put_u32(a, 1); /* lower bound */
}

static void arr_bytes(core_str_t *a, const char *p, size_t n) {
    if (!p) {
        put_u32(a, UINT32_MAX); /* -1 */
        return;
    }
    put_u32(a, (uint32_t)n);
    core_str_append(a, p, n);
}

static void arr_str(core_str_t *a, const char *z) {
    arr_bytes(a, z, z ? strlen(z) : 0);
}

static void arr_bool(core_str_t *a, bool v) {
    put_u32(a, 1);
    core_str_append(a, v ? "\1" : "\0", 1);
}

static void arr_int8(core_str_t *a, int64_t v) {
    put_u32(a, 8);
    put_u32(a, (uint32_t)((uint64_t)v >> 32));
    put_u32(a, (uint32_t)v);
}

/* The publisher's user and client from its ClientInfo, the client's message id from the data
 * (the chat schema's "client_msg_id"): columns to search by, NULL when absent. */
static void row_columns(const wrow_t *r, char **user, char **client, char **msg_id) {
    *user = *client = *msg_id = NULL;
    if (r->info) {
        json_t *o = json_loadb(r->info, r->info_len, 0, NULL);
        const char *u = json_string_value(json_object_get(o, "user"));
        const char *c = json_string_value(json_object_get(o, "client"));
        *user = u ? core_strdup(u) : NULL;
        *client = c ? core_strdup(c) : NULL;
        json_decref(o);
    }
    if (r->data_len && r->data[0] == '{') {
        json_t *o = json_loadb(r->data, r->data_len, 0, NULL);
        const char *id = json_string_value(json_object_get(o, "client_msg_id"));
        *msg_id = id ? core_strdup(id) : NULL;
        json_decref(o);
    }
}

static void send_batch(store_t *s, size_t max) {
    size_t n = 0, bytes = 0;
    wrow_t *rows = s->head, *last = NULL;
    for (wrow_t *r = rows; r && n < max; r = r->next) {
        bytes += r->data_len + r->info_len;
        if (n > 0 && bytes > s->cfg.batch_bytes)
            break;
        last = r;
        n++;
    }
    s->head = last->next;
    if (!s->head)
        s->tail = NULL;
    last->next = NULL;
    s->queued -= n;

    core_str_t col[PARAMS_PER_ROW] = {{0}};
    static const uint32_t oids[PARAMS_PER_ROW] = {OID_TEXT,        OID_TEXT, OID_INT8,  OID_TEXT,
                                                  OID_TEXT,        OID_TEXT, OID_BYTEA, OID_BYTEA,
                                                  OID_TIMESTAMPTZ, OID_TEXT, OID_BOOL};
    for (int k = 0; k < PARAMS_PER_ROW; k++)
        arr_begin(&col[k], n, oids[k]);
    for (wrow_t *r = rows; r; r = r->next) {
        char *user, *client, *msg_id;
        row_columns(r, &user, &client, &msg_id);
        arr_str(&col[0], r->channel);
        arr_str(&col[1], r->epoch);
        arr_int8(&col[2], (int64_t)r->offset);
        arr_str(&col[3], user);
        arr_str(&col[4], client);
        arr_str(&col[5], msg_id);
        arr_bytes(&col[6], r->data, r->data_len);
        arr_bytes(&col[7], r->info, r->info_len);
        arr_int8(&col[8], (r->created_ms - PG_EPOCH_UNIX_MS) * 1000);
        arr_str(&col[9], r->plan);
        r->reg = !is_registered(s, r->channel, r->epoch);
        arr_bool(&col[10], r->reg);
        free(user);
        free(client);
        free(msg_id);
    }
    const char *values[PARAMS_PER_ROW];
    int lengths[PARAMS_PER_ROW], formats[PARAMS_PER_ROW];
    for (int k = 0; k < PARAMS_PER_ROW; k++) {
        values[k] = col[k].ptr;
        lengths[k] = (int)col[k].len;
        formats[k] = 1;
    }
    batch_t *b = core_calloc(1, sizeof *b);
    b->s = s;
    b->rows = rows;
    b->n = n;
    b->next = &s->inflight;
    b->prev = s->inflight.prev;
    s->inflight.prev->next = b;
    s->inflight.prev = b;
    s->inflight_n++;
    int rc = pg_query(s->primary, insert_sql, PARAMS_PER_ROW, values, lengths, formats, false,
                      batch_done, b);
    for (int k = 0; k < PARAMS_PER_ROW; k++)
        core_str_free(&col[k]);
    if (rc != 0) {
        b->prev->next = b->next;
        b->next->prev = b->prev;
        s->inflight_n--;
        free(b);
        rows_requeue(s, rows, n);
        retry_later(s);
    }
}

/* Sends what waits, one batch per idle connection: rows that arrive while every connection is
 * committing wait and go together in the next batch, so the commit rate, not the publish rate,
 * sets the number of transactions. */
static void flush(store_t *s) {
    if (s->corked)
        return;
    while (s->head && !s->waiting && pg_pool_has_idle(s->primary) &&
           s->inflight_n < s->cfg.pool_size)
        send_batch(s, s->isolate ? 1 : s->cfg.batch_max);
    if (s->head && !s->waiting && !pg_pool_up(s->primary))
        retry_later(s);
}

int store_append(store_t *s, const store_msg_t *m, store_done_cb cb, void *ud) {
    if (s->closing)
        return CORE_EAGAIN;
    if (s->backlog >= s->cfg.backlog_max) {
        s->st.refused++;
        return CORE_ELIMIT;
    }
    wrow_t *r = core_calloc(1, sizeof *r);
    r->channel = core_strdup(m->channel);
    r->epoch = core_strdup(m->epoch);
    r->offset = m->offset;
    r->data = core_malloc(m->data_len + 1);
    memcpy(r->data, m->data, m->data_len);
    r->data[m->data_len] = '\0';
    r->data_len = m->data_len;
    if (m->info) {
        r->info = core_strndup(m->info, m->info_len);
        r->info_len = m->info_len;
    }
    r->created_ms = m->created_ms ? m->created_ms : (int64_t)core_wall_ms();
    r->plan = m->plan ? core_strdup(m->plan) : NULL;
    r->queued_us = core_now_us();
    r->cb = cb;
    r->ud = ud;
    if (s->tail)
        s->tail->next = r;
    else
        s->head = r;
    s->tail = r;
    s->queued++;
    s->backlog++;
    flush(s);
    return 0;
}

size_t store_backlog(const store_t *s) {
    return s->backlog;
}

void store_cork(store_t *s) {
    s->corked = true;
}

void store_uncork(store_t *s) {
    s->corked = false;
    flush(s);
}

bool store_full(store_t *s) {
    if (s->backlog < s->cfg.backlog_max)
        return false;
    s->st.refused++;
    return true;
}

/* ---- reads ---- */

typedef struct {
    store_t *s;
    store_read_cb cb;
    void *ud;
} readop_t;

static uint64_t be64(const char *p) {
    const unsigned char *u = (const unsigned char *)p;
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = (v << 8) | u[i];
    return v;
}

static void read_done(PGresult *res, void *ud) {
    readop_t *op = ud;
    store_t *s = op->s;
    if (!res || PQresultStatus(res) != PGRES_TUPLES_OK) {
        s->st.read_errors++;
        if (res) {
            char msg[200];
            snprintf(msg, sizeof msg, "%s", PQresultErrorMessage(res));
            msg[strcspn(msg, "\n")] = '\0';
            CORE_LOGW(MOD, "history read failed", "sqlstate=%s error=\"%s\"", pg_sqlstate(res),
                      msg);
        }
        op->cb(CORE_EAGAIN, NULL, 0, op->ud);
        free(op);
        return;
    }
    s->st.reads++;
    int n = PQntuples(res);
    clu_pub_t *pubs = n ? core_calloc((size_t)n, sizeof *pubs) : NULL;
    for (int i = 0; i < n; i++) {
        pubs[i].offset = PQgetlength(res, i, 0) == 8 ? be64(PQgetvalue(res, i, 0)) : 0;
        pubs[i].data = PQgetvalue(res, i, 1);
        pubs[i].data_len = (size_t)PQgetlength(res, i, 1);
        if (!PQgetisnull(res, i, 2)) {
            pubs[i].info = PQgetvalue(res, i, 2);
            pubs[i].info_len = (size_t)PQgetlength(res, i, 2);
        }
    }
    op->cb(0, pubs, (size_t)n, op->ud);
    free(pubs);
    free(op);
}

static pg_pool_t *read_pool(store_t *s) {
    /* A replica that is down leaves reads to the primary rather than failing them. */
    if (s->replica && pg_pool_up(s->replica))
        return s->replica;
    return s->primary;
}

int store_read(store_t *s, const char *channel, const char *epoch, bool reverse, uint64_t after,
               uint64_t before, uint32_t limit, store_read_cb cb, void *ud) {
    static const char fwd[] =
        "SELECT \"offset\", data, info FROM chat_messages WHERE channel = $1 AND epoch = $2 AND "
        "\"offset\" > $3::bigint AND \"offset\" < $4::bigint ORDER BY \"offset\" LIMIT $5::bigint";
    static const char rev[] =
        "SELECT \"offset\", data, info FROM chat_messages WHERE channel = $1 AND epoch = $2 AND "
        "\"offset\" > $3::bigint AND \"offset\" < $4::bigint ORDER BY \"offset\" DESC "
        "LIMIT $5::bigint";
    char a[24], b[24], l[16];
    snprintf(a, sizeof a, "%" PRIu64, after);
    snprintf(b, sizeof b, "%" PRIu64, before ? before : (uint64_t)INT64_MAX);
    snprintf(l, sizeof l, "%" PRIu32, limit);
    const char *values[5] = {channel, epoch, a, b, l};
    readop_t *op = core_calloc(1, sizeof *op);
    op->s = s;
    op->cb = cb;
    op->ud = ud;
    int rc =
        pg_query(read_pool(s), reverse ? rev : fwd, 5, values, NULL, NULL, true, read_done, op);
    if (rc != 0) {
        s->st.read_errors++;
        free(op);
    }
    return rc;
}

typedef struct {
    store_t *s;
    void (*row)(void *, const char *, const char *, uint64_t);
    void (*done)(void *, int);
    void *ud;
} posop_t;

static void positions_done(PGresult *res, void *ud) {
    posop_t *op = ud;
    if (!res || PQresultStatus(res) != PGRES_TUPLES_OK) {
        op->done(op->ud, CORE_EAGAIN);
        free(op);
        return;
    }
    int n = PQntuples(res);
    for (int i = 0; i < n; i++) {
        set_registered(op->s, PQgetvalue(res, i, 0), PQgetvalue(res, i, 1));
        op->row(op->ud, PQgetvalue(res, i, 0), PQgetvalue(res, i, 1),
                strtoull(PQgetvalue(res, i, 2), NULL, 10));
    }
    op->done(op->ud, 0);
    free(op);
}

int store_positions(store_t *s,
                    void (*row)(void *ud, const char *channel, const char *epoch, uint64_t top),
                    void (*done)(void *ud, int status), void *ud) {
    posop_t *op = core_calloc(1, sizeof *op);
    op->s = s;
    op->row = row;
    op->done = done;
    op->ud = ud;
    /* chat_channels.top is not moved by every batch (see insert_sql): the channel's own rows
     * tell its newest offset, one backward step of the primary key per channel. */
    static const char sql[] =
        "SELECT c.channel, c.epoch, greatest(c.top, (SELECT max(m.\"offset\") FROM chat_messages m "
        "WHERE m.channel = c.channel AND m.epoch = c.epoch)) FROM chat_channels c";
    int rc = pg_query(s->primary, sql, 0, NULL, NULL, NULL, false, positions_done, op);
    if (rc != 0)
        free(op);
    return rc;
}

/* ---- retention ---- */

/* The tail of a deleting statement whose CTE del returns (channel, epoch, offset) of the rows it
 * removed: chat_channels keeps the newest of them as the channel's position. */
#define TOP_RAISE                                                                                  \
    "up AS (UPDATE chat_channels c SET top = d.top FROM (SELECT channel, epoch, max(\"offset\") "  \
    "AS top FROM del GROUP BY channel, epoch) d WHERE c.channel = d.channel AND c.epoch = "        \
    "d.epoch AND c.top < d.top)"

typedef struct {
    void (*cb)(int, uint64_t, void *);
    void *ud;
} retop_t;

static void retention_done(PGresult *res, void *ud) {
    retop_t *op = ud;
    if (!res || PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1) {
        CORE_LOGW(MOD, "retention delete failed", "sqlstate=%s", pg_sqlstate(res));
        op->cb(CORE_EAGAIN, 0, op->ud);
    } else {
        op->cb(0, strtoull(PQgetvalue(res, 0, 0), NULL, 10), op->ud);
    }
    free(op);
}

int store_retention_delete(store_t *s, const store_retention_rule_t *rule, uint32_t batch,
                           void (*cb)(int status, uint64_t deleted, void *ud), void *ud) {
    core_str_t sql = {0};
    core_str_t except = {0};
    /* The positions of the channels whose rows go are raised to the newest deleted offset in the
     * same statement: a channel whose every row went still continues after it (insert_sql). */
    core_str_appends(&sql, "WITH del AS (DELETE FROM chat_messages WHERE ctid = ANY(ARRAY(SELECT "
                           "ctid FROM "
                           "chat_messages WHERE created_at < now() - make_interval(days => "
                           "$1::int) AND ");
    core_str_appends(&sql, rule->prefix ? "starts_with(channel, $2) AND "
                                        : "strpos(channel, ':') = 0 AND $2::text IS NULL AND ");
    if (rule->plan) {
        core_str_appends(&sql, "plan = $3");
    } else {
        core_str_appends(&sql, "(plan IS NULL OR NOT (plan = ANY($3::text[])))");
        core_str_appends(&except, "{");
        for (size_t i = 0; i < rule->nexcept; i++)
            core_str_appendf(&except, "%s\"%s\"", i ? "," : "", rule->except[i]);
        core_str_appends(&except, "}");
    }
    core_str_appends(&sql, " LIMIT $4::int)) RETURNING channel, epoch, \"offset\"), " TOP_RAISE
                           " SELECT count(*) FROM del");
    char days[16], lim[16];
    snprintf(days, sizeof days, "%" PRIu32, rule->days);
    snprintf(lim, sizeof lim, "%" PRIu32, batch);
    const char *values[4] = {days, rule->prefix, rule->plan ? rule->plan : except.ptr, lim};
    retop_t *op = core_calloc(1, sizeof *op);
    op->cb = cb;
    op->ud = ud;
    int rc = pg_query(s->primary, sql.ptr, 4, values, NULL, NULL, false, retention_done, op);
    if (rc != 0)
        free(op);
    core_str_free(&sql);
    core_str_free(&except);
    return rc;
}

/* ---- history_remove ---- */

typedef struct {
    void (*cb)(int, void *);
    void *ud;
} delop_t;

static void channel_deleted(PGresult *res, void *ud) {
    delop_t *op = ud;
    op->cb(res && PQresultStatus(res) == PGRES_TUPLES_OK ? 0 : CORE_EAGAIN, op->ud);
    free(op);
}

int store_channel_delete(store_t *s, const char *channel, void (*cb)(int status, void *ud),
                         void *ud) {
    delop_t *op = core_calloc(1, sizeof *op);
    op->cb = cb;
    op->ud = ud;
    const char *values[1] = {channel};
    static const char sql[] = "WITH del AS (DELETE FROM chat_messages WHERE channel = $1 RETURNING "
                              "channel, epoch, \"offset\"), " TOP_RAISE " SELECT count(*) FROM del";
    int rc = pg_query(s->primary, sql, 1, values, NULL, NULL, false, channel_deleted, op);
    if (rc != 0)
        free(op);
    return rc;
}

/* ---- usage ledger ---- */

static void usage_done(PGresult *res, void *ud) {
    (void)ud;
    if (!res || PQresultStatus(res) != PGRES_COMMAND_OK)
        CORE_LOGW(MOD, "usage row not stored", "sqlstate=%s", pg_sqlstate(res));
}

void store_usage(store_t *s, const char *request_id, const char *user, const char *plan,
                 const char *provider, const char *model, int64_t tokens_in, int64_t tokens_out,
                 const char *outcome) {
    char in[24], out[24];
    snprintf(in, sizeof in, "%" PRId64, tokens_in);
    snprintf(out, sizeof out, "%" PRId64, tokens_out);
    const char *values[8] = {request_id, user, plan, provider, model, in, out, outcome};
    if (pg_query(s->primary,
                 "INSERT INTO chat_llm_usage (request_id, user_id, plan, provider, model, "
                 "tokens_in, tokens_out, outcome) VALUES ($1, $2, $3, $4, $5, $6::integer, "
                 "$7::integer, $8)",
                 8, values, NULL, NULL, false, usage_done, NULL) != 0)
        CORE_LOGW(MOD, "usage row not stored", "error=%s", "no connection");
}

/* ---- lifecycle ---- */

store_t *store_new(uv_loop_t *loop, const store_config_t *cfg) {
    store_t *s = core_calloc(1, sizeof *s);
    s->loop = loop;
    s->cfg = *cfg;
    if (!s->cfg.pool_size)
        s->cfg.pool_size = 2;
    if (!s->cfg.batch_max)
        s->cfg.batch_max = 500;
    if (s->cfg.batch_max > 10000)
        s->cfg.batch_max = 10000; /* a batch is one statement and one transaction */
    if (!s->cfg.batch_bytes)
        s->cfg.batch_bytes = BATCH_BYTES_DEFAULT;
    if (s->cfg.batch_bytes > BATCH_BYTES_MAX)
        s->cfg.batch_bytes = BATCH_BYTES_MAX;
    if (!s->cfg.backlog_max)
        s->cfg.backlog_max = 100000;
    pg_pool_opts_t o = {s->cfg.pool_size, cfg->connect_timeout_ms, cfg->statement_timeout_ms};
    s->primary = pg_pool_new(loop, "primary", cfg->url, &o);
    if (cfg->read_url)
        s->replica = pg_pool_new(loop, "replica", cfg->read_url, &o);
    s->inflight.next = s->inflight.prev = &s->inflight;
    s->registered = core_map_new();
    uv_timer_init(loop, &s->retry);
    s->retry.data = s;
    uv_timer_init(loop, &s->close_timer);
    s->close_timer.data = s;
    static const double secs[] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                  0.25,  0.5,    1,     2.5,  5,     10,   30};
    core_hist_init(&s->commit_seconds, secs, sizeof secs / sizeof secs[0]);
    static const double rows[] = {1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000};
    core_hist_init(&s->batch_rows, rows, sizeof rows / sizeof rows[0]);
    return s;
}

bool store_up(const store_t *s) {
    return pg_pool_up(s->primary);
}

void store_stats(store_t *s, store_stats_t *out) {
    *out = s->st;
    out->backlog = s->backlog;
    uint64_t oldest = 0;
    if (s->inflight.next != &s->inflight)
        oldest = s->inflight.next->rows->queued_us;
    for (batch_t *b = s->inflight.next; b != &s->inflight; b = b->next)
        if (b->rows->queued_us < oldest)
            oldest = b->rows->queued_us;
    if (s->head && (!oldest || s->head->queued_us < oldest))
        oldest = s->head->queued_us;
    out->backlog_age_s = oldest ? (double)(core_now_us() - oldest) / 1e6 : 0;
    out->commit_seconds = &s->commit_seconds;
    out->batch_rows = &s->batch_rows;
    out->primary_up = pg_pool_up(s->primary);
    out->has_replica = s->replica != NULL;
    out->replica_up = s->replica && pg_pool_up(s->replica);
}

static void fail_queued_rows(store_t *s) {
    while (s->head) {
        wrow_t *r = s->head;
        s->head = r->next;
        if (r->cb)
            r->cb(CORE_EAGAIN, r->ud);
        row_free(r);
    }
    s->tail = NULL;
}

static void store_handle_closed(uv_handle_t *h) {
    store_t *s = h->data;
    if (--s->open == 0) {
        /* Batches that were in flight came back when the pools closed. */
        fail_queued_rows(s);
        void (*done)(void *) = s->done;
        void *ud = s->done_ud;
        registered_free(s);
        free(s);
        if (done)
            done(ud);
    }
}

static void pool_closed(void *ud) {
    store_handle_closed((uv_handle_t *)&((store_t *)ud)->retry);
}

static void close_now(store_t *s) {
    if (s->open)
        return; /* already closing its handles */
    uv_timer_stop(&s->retry);
    if (s->backlog)
        CORE_LOGW(MOD, "closing with publications not stored", "rows=%zu", s->backlog);
    fail_queued_rows(s);
    s->open = 2 + 1 + (s->replica ? 1 : 0);
    uv_close((uv_handle_t *)&s->retry, store_handle_closed);
    uv_close((uv_handle_t *)&s->close_timer, store_handle_closed);
    /* In-flight batches fail through their callbacks while the pools close. */
    pg_pool_close(s->primary, pool_closed, s);
    if (s->replica)
        pg_pool_close(s->replica, pool_closed, s);
}

static void maybe_finish_close(store_t *s) {
    if (s->closing && s->backlog == 0)
        close_now(s);
}

static void close_timeout(uv_timer_t *t) {
    close_now(t->data);
}

void store_close(store_t *s, uint32_t wait_ms, void (*done)(void *ud), void *ud) {
    s->done = done;
    s->done_ud = ud;
    s->closing = true;
    if (s->backlog == 0 || wait_ms == 0 || !pg_pool_up(s->primary)) {
        close_now(s);
        return;
    }
    uv_timer_start(&s->close_timer, close_timeout, wait_ms, 0);
}
