/* store_pg: the PostgreSQL connection pool on the loop (contract in store_pg.h). */
#include "store/store_pg.h"

#include <stdlib.h>
#include <string.h>

#include "core/core.h"

#define MOD "store"

#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 5000

typedef enum { C_DOWN, C_CONNECTING, C_IDLE, C_BUSY } cstate_t;

typedef struct pgq {
    struct pgq *next;
    char *sql;
    int nparams;
    char **values;
    int *lengths;
    int *formats;
    bool simple;
    bool binary;
    pg_result_cb cb;
    void *ud;
} pgq_t;

typedef struct {
    pg_pool_t *pool;
    cstate_t state;
    PGconn *pg;
    uv_poll_t *poll; /* one per socket: libpq may swap the socket under the same fd number */
    int poll_events;
    uv_timer_t timer; /* connect timeout, statement timeout or reconnect, by state */
    uint32_t backoff_ms;
    pgq_t *cur;
    PGresult *res;
} pgconn_t;

struct pg_pool {
    uv_loop_t *loop;
    char *name;
    char *conninfo;
    pg_pool_opts_t o;
    pgconn_t *conns;
    pgq_t *head, *tail;
    uv_idle_t kick; /* dispatches queued queries from the loop, never inside pg_query */
    pg_pool_stats_t st;
    bool closing;
    int open; /* handles whose close callback has not run */
    void (*done)(void *);
    void *done_ud;
};

static void dispatch(pg_pool_t *p);
static void conn_connect(pgconn_t *c);
static void on_timer(uv_timer_t *t);

const char *pg_sqlstate(const PGresult *res) {
    const char *s = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
    return s ? s : "";
}

/* libpq's messages end in a newline and may span lines; logs want the first line only. */
static void first_line(const char *msg, char *out, size_t n) {
    size_t i = 0;
    for (; msg && msg[i] && msg[i] != '\n' && i + 1 < n; i++)
        out[i] = msg[i] == '"' ? '\'' : msg[i];
    out[i] = '\0';
}

static void q_free(pgq_t *q) {
    for (int i = 0; i < q->nparams; i++)
        free(q->values[i]);
    free(q->values);
    free(q->lengths);
    free(q->formats);
    free(q->sql);
    free(q);
}

static void q_answer(pg_pool_t *p, pgq_t *q, PGresult *res) {
    if (!res)
        p->st.failures++;
    else if (PQresultStatus(res) == PGRES_FATAL_ERROR)
        p->st.errors++;
    q->cb(res, q->ud);
    PQclear(res);
    q_free(q);
}

static void pool_maybe_done(pg_pool_t *p) {
    if (p->closing && p->open == 0) {
        void (*done)(void *) = p->done;
        void *ud = p->done_ud;
        free(p->conns);
        free(p->name);
        free(p->conninfo);
        free(p);
        if (done)
            done(ud);
    }
}

static void handle_closed(uv_handle_t *h) {
    pg_pool_t *p = h->type == UV_IDLE ? h->data : ((pgconn_t *)h->data)->pool;
    if (h->type == UV_POLL)
        free(h);
    p->open--;
    pool_maybe_done(p);
}

static void poll_close(pgconn_t *c) {
    if (c->poll) {
        c->pool->open++;
        uv_close((uv_handle_t *)c->poll, handle_closed);
        c->poll = NULL;
    }
}

static void on_poll(uv_poll_t *h, int status, int events);

/* Watches the connection's current socket. A fresh handle each time the socket may have changed
 * (every connect step): a socket closed and reopened under the same number would otherwise
 * stay silently unwatched by epoll. */
static void poll_watch(pgconn_t *c, int events, bool fresh) {
    int fd = PQsocket(c->pg);
    if (fresh || !c->poll) {
        poll_close(c);
        c->poll = core_malloc(sizeof *c->poll);
        uv_poll_init(c->pool->loop, c->poll, fd);
        c->poll->data = c;
        c->poll_events = 0;
    }
    if (events != c->poll_events) {
        uv_poll_start(c->poll, events, on_poll);
        c->poll_events = events;
    }
}

static bool pool_any_up(const pg_pool_t *p) {
    for (uint32_t i = 0; i < p->o.size; i++)
        if (p->conns[i].state == C_IDLE || p->conns[i].state == C_BUSY)
            return true;
    return false;
}

static void fail_queued(pg_pool_t *p) {
    while (p->head) {
        pgq_t *q = p->head;
        p->head = q->next;
        if (!p->head)
            p->tail = NULL;
        p->st.queued--;
        q_answer(p, q, NULL);
    }
}

/* The connection is unusable: its query (if any) fails as temporary, and it reconnects after
 * a jittered backoff. */
static void conn_drop(pgconn_t *c, const char *why) {
    pg_pool_t *p = c->pool;
    bool was_up = c->state == C_IDLE || c->state == C_BUSY;
    if (c->pg && !p->closing) {
        char msg[160];
        first_line(PQerrorMessage(c->pg), msg, sizeof msg);
        CORE_LOGW(MOD, "postgres connection lost", "pool=%s why=%s error=\"%s\"", p->name, why,
                  msg);
    }
    poll_close(c);
    if (c->pg)
        PQfinish(c->pg);
    c->pg = NULL;
    if (was_up) {
        p->st.disconnects++;
        p->st.up--;
    }
    pgq_t *q = c->cur;
    PGresult *res = c->res;
    c->cur = NULL;
    c->res = NULL;
    PQclear(res);
    c->state = C_DOWN;
    uv_timer_stop(&c->timer);
    if (!p->closing) {
        uint32_t b = c->backoff_ms ? c->backoff_ms * 2 : BACKOFF_MIN_MS;
        c->backoff_ms = b > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : b;
        uint32_t r;
        core_random(&r, sizeof r);
        uv_timer_start(&c->timer, on_timer, c->backoff_ms / 2 + r % (c->backoff_ms / 2 + 1), 0);
    }
    if (q)
        q_answer(p, q, NULL);
    if (!pool_any_up(p))
        fail_queued(p);
}

static void on_timer(uv_timer_t *t) {
    pgconn_t *c = t->data;
    if (c->state == C_DOWN)
        conn_connect(c);
    else if (c->state == C_CONNECTING)
        conn_drop(c, "connect timeout");
    else if (c->state == C_BUSY)
        /* A cancel request would need a blocking connection of its own: the server notices the
         * dropped client at its next write and the query ends there. */
        conn_drop(c, "statement timeout");
}

static void connected(pgconn_t *c) {
    pg_pool_t *p = c->pool;
    uv_timer_stop(&c->timer);
    if (PQsetnonblocking(c->pg, 1) != 0) {
        conn_drop(c, "setnonblocking");
        return;
    }
    c->state = C_IDLE;
    c->backoff_ms = 0;
    p->st.connects++;
    p->st.up++;
    CORE_LOGI(MOD, "postgres connected", "pool=%s server_version=%d", p->name,
              PQserverVersion(c->pg));
    poll_watch(c, UV_READABLE, false);
    dispatch(p);
}

static void connect_step(pgconn_t *c, PostgresPollingStatusType st) {
    switch (st) {
    case PGRES_POLLING_OK:
        connected(c);
        break;
    case PGRES_POLLING_READING:
        poll_watch(c, UV_READABLE, true);
        break;
    case PGRES_POLLING_WRITING:
        poll_watch(c, UV_WRITABLE, true);
        break;
    default:
        conn_drop(c, "connect failed");
        break;
    }
}

/* Server notices (e.g. "already exists, skipping") would go to stderr unformatted. */
static void on_notice(void *arg, const char *msg) {
    (void)arg;
    char line[200];
    first_line(msg, line, sizeof line);
    CORE_LOGD(MOD, "postgres notice", "text=\"%s\"", line);
}

static void conn_connect(pgconn_t *c) {
    pg_pool_t *p = c->pool;
    if (p->closing)
        return;
    c->pg = PQconnectStart(p->conninfo);
    if (c->pg)
        PQsetNoticeProcessor(c->pg, on_notice, NULL);
    if (!c->pg || PQstatus(c->pg) == CONNECTION_BAD || PQsocket(c->pg) < 0) {
        conn_drop(c, "connect failed");
        return;
    }
    c->state = C_CONNECTING;
    /* libpq does not apply connect_timeout with PQconnectPoll: this timer does. */
    uv_timer_start(&c->timer, on_timer, p->o.connect_timeout_ms, 0);
    connect_step(c, PGRES_POLLING_WRITING);
}

static void query_done(pgconn_t *c) {
    pg_pool_t *p = c->pool;
    uv_timer_stop(&c->timer);
    pgq_t *q = c->cur;
    PGresult *res = c->res;
    c->cur = NULL;
    c->res = NULL;
    c->state = C_IDLE;
    poll_watch(c, UV_READABLE, false);
    q_answer(p, q, res);
    if (!p->closing)
        dispatch(p);
}

/* Reads what the socket holds; collects the query's results until libpq has no more. The
 * first error wins over later results: a multi-statement query failed if any part did. */
static void conn_read(pgconn_t *c) {
    if (!PQconsumeInput(c->pg)) {
        conn_drop(c, "read failed");
        return;
    }
    PGnotify *nt;
    while ((nt = PQnotifies(c->pg)) != NULL)
        PQfreemem(nt);
    while (c->state == C_BUSY && !PQisBusy(c->pg)) {
        PGresult *r = PQgetResult(c->pg);
        if (!r) {
            query_done(c);
            return;
        }
        if (c->res && PQresultStatus(c->res) == PGRES_FATAL_ERROR) {
            PQclear(r);
        } else {
            PQclear(c->res);
            c->res = r;
        }
    }
}

static void conn_flush(pgconn_t *c) {
    int r = PQflush(c->pg);
    if (r < 0)
        conn_drop(c, "write failed");
    else
        poll_watch(c, r == 1 ? UV_READABLE | UV_WRITABLE : UV_READABLE, false);
}

static void on_poll(uv_poll_t *h, int status, int events) {
    pgconn_t *c = h->data;
    if (status < 0 && c->state != C_CONNECTING) {
        conn_drop(c, "socket error");
        return;
    }
    switch (c->state) {
    case C_CONNECTING:
        /* libuv reports a refused connect as an error; libpq reads the reason itself. */
        connect_step(c, PQconnectPoll(c->pg));
        break;
    case C_BUSY:
        if (events & UV_WRITABLE) {
            conn_flush(c);
            if (c->state != C_BUSY)
                return;
        }
        if (events & UV_READABLE)
            conn_read(c);
        break;
    case C_IDLE:
        /* Nothing asked: the server is closing the connection (or sent a notice). */
        if (!PQconsumeInput(c->pg))
            conn_drop(c, "closed by server");
        else if (PQstatus(c->pg) == CONNECTION_BAD)
            conn_drop(c, "closed by server");
        break;
    default:
        break;
    }
}

static void conn_send(pgconn_t *c, pgq_t *q) {
    pg_pool_t *p = c->pool;
    int ok = q->simple ? PQsendQuery(c->pg, q->sql)
                       : PQsendQueryParams(c->pg, q->sql, q->nparams, NULL,
                                           (const char *const *)q->values, q->lengths, q->formats,
                                           q->binary ? 1 : 0);
    p->st.queries++;
    c->cur = q;
    c->state = C_BUSY;
    if (!ok) {
        conn_drop(c, "send failed");
        return;
    }
    uv_timer_start(&c->timer, on_timer, p->o.statement_timeout_ms, 0);
    conn_flush(c);
}

static void dispatch(pg_pool_t *p) {
    for (uint32_t i = 0; i < p->o.size && p->head && !p->closing; i++) {
        pgconn_t *c = &p->conns[i];
        if (c->state != C_IDLE)
            continue;
        pgq_t *q = p->head;
        p->head = q->next;
        if (!p->head)
            p->tail = NULL;
        p->st.queued--;
        q->next = NULL;
        conn_send(c, q);
    }
}

/* One shot: queries that find every connection busy are sent when one finishes (query_done)
 * or comes up (connected), not by spinning here. */
static void on_kick(uv_idle_t *h) {
    pg_pool_t *p = h->data;
    uv_idle_stop(h);
    dispatch(p);
    if (!p->closing && p->head && !pool_any_up(p))
        fail_queued(p);
}

pg_pool_t *pg_pool_new(uv_loop_t *loop, const char *name, const char *conninfo,
                       const pg_pool_opts_t *opts) {
    pg_pool_t *p = core_calloc(1, sizeof *p);
    p->loop = loop;
    p->name = core_strdup(name);
    p->conninfo = core_strdup(conninfo);
    p->o = *opts;
    if (p->o.size == 0)
        p->o.size = 1;
    if (p->o.connect_timeout_ms == 0)
        p->o.connect_timeout_ms = 5000;
    if (p->o.statement_timeout_ms == 0)
        p->o.statement_timeout_ms = 10000;
    p->conns = core_calloc(p->o.size, sizeof *p->conns);
    uv_idle_init(loop, &p->kick);
    p->kick.data = p;
    for (uint32_t i = 0; i < p->o.size; i++) {
        pgconn_t *c = &p->conns[i];
        c->pool = p;
        uv_timer_init(loop, &c->timer);
        c->timer.data = c;
        conn_connect(c);
    }
    return p;
}

static int enqueue(pg_pool_t *p, pgq_t *q) {
    if (p->closing || !pool_any_up(p)) {
        q_free(q);
        return CORE_EAGAIN;
    }
    if (p->tail)
        p->tail->next = q;
    else
        p->head = q;
    p->tail = q;
    p->st.queued++;
    uv_idle_start(&p->kick, on_kick);
    return 0;
}

int pg_query(pg_pool_t *p, const char *sql, int nparams, const char *const *values,
             const int *lengths, const int *formats, bool result_binary, pg_result_cb cb,
             void *ud) {
    pgq_t *q = core_calloc(1, sizeof *q);
    q->sql = core_strdup(sql);
    q->nparams = nparams;
    q->binary = result_binary;
    q->cb = cb;
    q->ud = ud;
    if (nparams > 0) {
        q->values = core_calloc((size_t)nparams, sizeof *q->values);
        q->lengths = core_calloc((size_t)nparams, sizeof *q->lengths);
        q->formats = core_calloc((size_t)nparams, sizeof *q->formats);
        for (int i = 0; i < nparams; i++) {
            bool bin = formats && formats[i] == 1;
            q->formats[i] = bin ? 1 : 0;
            if (!values[i])
                continue;
            size_t len = bin ? (size_t)lengths[i] : strlen(values[i]);
            q->values[i] = core_malloc(len + 1);
            memcpy(q->values[i], values[i], len);
            q->values[i][len] = '\0';
            q->lengths[i] = (int)len;
        }
    }
    return enqueue(p, q);
}

int pg_query_simple(pg_pool_t *p, const char *sql, pg_result_cb cb, void *ud) {
    pgq_t *q = core_calloc(1, sizeof *q);
    q->sql = core_strdup(sql);
    q->simple = true;
    q->cb = cb;
    q->ud = ud;
    return enqueue(p, q);
}

bool pg_pool_up(const pg_pool_t *p) {
    return pool_any_up(p);
}

bool pg_pool_has_idle(const pg_pool_t *p) {
    for (uint32_t i = 0; i < p->o.size; i++)
        if (p->conns[i].state == C_IDLE)
            return true;
    return false;
}

void pg_pool_stats(const pg_pool_t *p, pg_pool_stats_t *out) {
    *out = p->st;
}

void pg_pool_close(pg_pool_t *p, void (*done)(void *ud), void *ud) {
    p->closing = true;
    p->done = done;
    p->done_ud = ud;
    fail_queued(p);
    for (uint32_t i = 0; i < p->o.size; i++) {
        pgconn_t *c = &p->conns[i];
        if (c->state != C_DOWN)
            conn_drop(c, "closing");
        p->open++;
        uv_close((uv_handle_t *)&c->timer, handle_closed);
    }
    p->open++;
    uv_close((uv_handle_t *)&p->kick, handle_closed);
}
