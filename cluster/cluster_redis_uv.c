/* hiredis on libuv through the public ac->ev hooks; see cluster_redis_uv.h for the contract. */
#include "cluster/cluster_redis_uv.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#define MOD "cluster"

/* A socket that keeps reporting poll errors that hiredis does not turn into a failure would
 * otherwise make the loop spin; after this many in a row the context is freed. */
#define MAX_POLL_ERRORS 3

/* Adapter state, behind ac->ev.data. It outlives the context: hiredis's cleanup hook only
 * starts closing the handles, and the struct is freed when the last close callback ran. */
typedef struct {
    redisAsyncContext *ac; /* NULL once hiredis ran the cleanup hook */
    uv_poll_t poll;
    uv_timer_t timer;
    int want;         /* UV_READABLE | UV_WRITABLE, as hiredis asked through the hooks */
    int active;       /* events the poll handle is started with */
    int open_handles; /* handles not yet through their close callback */
    int poll_errors;  /* consecutive poll errors */
    bool has_timer;
    bool timer_closed;
    /* Connect helper only. */
    bool helper;
    bool reported;   /* on_connect ran */
    bool ready;      /* on_connect ran with status 0 */
    int fail_status; /* why the attempt failed, for the handshake callback to report */
    clu_redis_connect_cb on_connect;
    clu_redis_disconnect_cb on_disconnect;
    void *ud;
} rio_t;

static void on_handle_closed(uv_handle_t *h) {
    rio_t *r = h->data;
    if (--r->open_handles == 0)
        free(r);
}

static void close_timer(rio_t *r) {
    if (r->has_timer && !r->timer_closed) {
        r->timer_closed = true;
        uv_close((uv_handle_t *)&r->timer, on_handle_closed);
    }
}

static void on_poll(uv_poll_t *h, int status, int events);

/* Brings the poll handle in line with what hiredis asked for. The hooks must be idempotent and
 * are called on every read and write, so nothing is done when nothing changed. */
static void sync_poll(rio_t *r) {
    if (r->ac == NULL || r->want == r->active)
        return;
    int rc = r->want ? uv_poll_start(&r->poll, r->want, on_poll) : uv_poll_stop(&r->poll);
    if (rc != 0) {
        CORE_LOGE(MOD, "redis poll start failed", "err=%s", uv_strerror(rc));
        return;
    }
    r->active = r->want;
}

static void ev_add_read(void *p) {
    rio_t *r = p;
    r->want |= UV_READABLE;
    sync_poll(r);
}

static void ev_del_read(void *p) {
    rio_t *r = p;
    r->want &= ~UV_READABLE;
    sync_poll(r);
}

static void ev_add_write(void *p) {
    rio_t *r = p;
    r->want |= UV_WRITABLE;
    sync_poll(r);
}

static void ev_del_write(void *p) {
    rio_t *r = p;
    r->want &= ~UV_WRITABLE;
    sync_poll(r);
}

/* hiredis is freeing the context (the fd is closed right after this returns). uv_close stops
 * the poll and removes the fd from epoll before that happens. */
static void ev_cleanup(void *p) {
    rio_t *r = p;
    r->ac = NULL;
    r->want = r->active = 0;
    uv_close((uv_handle_t *)&r->poll, on_handle_closed);
    close_timer(r);
}

static void on_poll(uv_poll_t *h, int status, int events) {
    rio_t *r = h->data;
    if (status < 0) {
        /* libuv has already stopped the handle. This is where hiredis's own adapter returns and
         * a refused connect hangs forever. Deliver the error as both events instead: while
         * connecting hiredis reads SO_ERROR and calls the connect callback with an error; when
         * connected, read(2)/write(2) return the error and it disconnects. */
        r->active = 0;
        events = UV_READABLE | UV_WRITABLE;
        r->poll_errors++;
    } else {
        r->poll_errors = 0;
    }
    /* Each call may free the context; the cleanup hook then clears r->ac, and r itself lives
     * until the close callback, so checking r->ac between calls is safe. */
    if (r->ac != NULL && (events & UV_READABLE))
        redisAsyncHandleRead(r->ac);
    if (r->ac != NULL && (events & UV_WRITABLE))
        redisAsyncHandleWrite(r->ac);
    if (r->ac == NULL)
        return;
    if (r->poll_errors >= MAX_POLL_ERRORS) {
        CORE_LOGW(MOD, "redis socket keeps failing, dropping it", "errors=%d", r->poll_errors);
        r->fail_status = UV_EIO;
        redisAsyncFree(r->ac);
        return;
    }
    sync_poll(r); /* re-arm after libuv stopped the handle on an error */
}

int clu_redis_uv_attach(redisAsyncContext *ac, uv_loop_t *loop) {
    if (ac == NULL || loop == NULL || ac->err != 0 || ac->c.fd < 0 || ac->ev.data != NULL ||
        ac->ev.addRead != NULL)
        return CORE_EINVAL;
    rio_t *r = core_calloc(1, sizeof *r);
    int rc = uv_poll_init(loop, &r->poll, ac->c.fd);
    if (rc != 0) {
        free(r); /* uv_poll_init leaves nothing registered when it fails */
        return rc;
    }
    r->poll.data = r;
    r->open_handles = 1;
    r->ac = ac;
    ac->ev.data = r;
    ac->ev.addRead = ev_add_read;
    ac->ev.delRead = ev_del_read;
    ac->ev.addWrite = ev_add_write;
    ac->ev.delWrite = ev_del_write;
    ac->ev.cleanup = ev_cleanup;
    return 0;
}

int clu_redis_error(const redisAsyncContext *ac) {
    switch (ac->c.err) {
    case 0:
        return 0;
    case REDIS_ERR_EOF:
        return UV_EOF;
    case REDIS_ERR_PROTOCOL:
    case REDIS_ERR_OTHER: /* e.g. an error reply where hiredis expected none */
        return CORE_EPROTO;
    case REDIS_ERR_OOM:
        return CORE_ENOMEM;
    default: /* REDIS_ERR_IO: hiredis keeps only the text, errno is long gone */
        return UV_EIO;
    }
}

/* ---- connect helper ------------------------------------------------------------------------ */

static void report(rio_t *r, redisAsyncContext *ac, int status) {
    if (r->reported)
        return;
    r->reported = true;
    r->ready = status == 0;
    close_timer(r);
    r->on_connect(status == 0 ? ac : NULL, status, r->ud);
}

/* The handshake reply decides the attempt. It also runs with a NULL reply whenever the context
 * is freed before an answer came (connect failure, timeout, peer closed, caller freed it), so
 * every failure is reported from this one place. */
static void on_handshake(redisAsyncContext *ac, void *reply, void *priv) {
    rio_t *r = priv;
    redisReply *rep = reply;
    if (r->reported)
        return;
    if (rep == NULL) {
        int st = r->fail_status ? r->fail_status : clu_redis_error(ac);
        report(r, NULL, st ? st : UV_ECANCELED);
        return;
    }
    if (rep->type == REDIS_REPLY_ERROR) {
        /* These say the server is up but not serving yet (loading its dataset, running a long
         * script, a replica without its master): worth retrying soon, unlike NOAUTH and co. */
        static const char *const transient[] = {"LOADING", "BUSY", "MASTERDOWN"};
        int st = CORE_EPROTO;
        for (size_t i = 0; i < sizeof transient / sizeof transient[0]; i++)
            if (rep->str != NULL && strncmp(rep->str, transient[i], strlen(transient[i])) == 0)
                st = CORE_EAGAIN;
        CORE_LOGW(MOD, "redis refused the handshake", "reply=\"%.80s\"", rep->str ? rep->str : "");
        report(r, NULL, st);
        redisAsyncFree(ac); /* deferred by hiredis until this callback returns */
        return;
    }
    report(r, ac, 0);
}

static void on_hiredis_connect(const redisAsyncContext *ac, int status) {
    int e = errno; /* set by hiredis's SO_ERROR check just before this call; save it first */
    rio_t *r = ac->ev.data;
    if (status == REDIS_OK)
        return; /* TCP is up; the handshake reply reports the connection */
    /* hiredis frees the context right after this returns, which runs on_handshake with a NULL
     * reply; it reports this status. libuv's codes are negative errno values on Unix. */
    int st = ac->c.err == REDIS_ERR_IO && e > 0 ? -e : clu_redis_error(ac);
    if (r->fail_status == 0)
        r->fail_status = st ? st : UV_EIO;
}

static void on_hiredis_disconnect(const redisAsyncContext *ac, int status) {
    rio_t *r = ac->ev.data;
    if (!r->ready || r->on_disconnect == NULL)
        return; /* the caller was never told it connected */
    int st = 0;
    if (r->fail_status != 0)
        st = r->fail_status;
    else if (status != REDIS_OK)
        st = clu_redis_error(ac) ? clu_redis_error(ac) : UV_EIO;
    r->on_disconnect(st, r->ud);
}

static void on_timeout(uv_timer_t *t) {
    rio_t *r = t->data;
    if (r->reported || r->ac == NULL)
        return;
    r->fail_status = CORE_ETIMEDOUT;
    /* Not redisAsyncDisconnect: it waits for the pending handshake reply, which a silent peer
     * never sends, and before TCP connected it would free the context without any callback.
     * We are on the loop, not inside a hiredis callback, so this frees at once and runs
     * on_handshake with a NULL reply. */
    redisAsyncFree(r->ac);
}

int clu_redis_connect(uv_loop_t *loop, const clu_redis_connect_opts_t *o, redisAsyncContext **out) {
    if (out != NULL)
        *out = NULL;
    if (loop == NULL || o == NULL || out == NULL || o->on_connect == NULL || o->ip == NULL ||
        o->port <= 0 || o->port > 65535 || o->db < 0)
        return CORE_EINVAL;
    struct in_addr a;
    if (inet_pton(AF_INET, o->ip, &a) != 1)
        return CORE_EINVAL;

    errno = 0;
    redisAsyncContext *ac = redisAsyncConnect(o->ip, o->port);
    if (ac == NULL)
        return CORE_ENOMEM;
    if (ac->err != 0) {
        /* connect(2) failed at once; hiredis closed the fd, which leaves errno alone. */
        int e = errno;
        int st = ac->c.err == REDIS_ERR_IO && e > 0 ? -e : clu_redis_error(ac);
        redisAsyncFree(ac);
        return st ? st : UV_EIO;
    }
    int rc = clu_redis_uv_attach(ac, loop);
    if (rc != 0) {
        redisAsyncFree(ac);
        return rc;
    }
    rio_t *r = ac->ev.data;
    r->helper = true;
    r->on_connect = o->on_connect;
    r->on_disconnect = o->on_disconnect;
    r->ud = o->ud;
    rc = uv_timer_init(loop, &r->timer);
    if (rc != 0) {
        r->reported = true; /* nothing to report: the caller gets the error */
        redisAsyncFree(ac);
        return rc;
    }
    r->timer.data = r;
    r->has_timer = true;
    r->open_handles++;

    /* Order matters: the connect callback setter already asks for the first write event. */
    redisAsyncSetConnectCallback(ac, on_hiredis_connect);
    redisAsyncSetDisconnectCallback(ac, on_hiredis_disconnect);
    if (o->db > 0)
        rc = redisAsyncCommand(ac, on_handshake, r, "SELECT %d", o->db);
    else
        rc = redisAsyncCommand(ac, on_handshake, r, "PING");
    if (rc != REDIS_OK) {
        r->reported = true;
        redisAsyncFree(ac);
        return CORE_ENOMEM;
    }
    if (o->timeout_ms > 0)
        uv_timer_start(&r->timer, on_timeout, o->timeout_ms, 0);
    *out = ac;
    return 0;
}

/* ---- REDIS_URL ---------------------------------------------------------------------------- */

/* Reads 1..maxdigits decimal digits (no sign, no spaces) into *v if within [lo, hi]. */
static int parse_dec(const char **pp, int maxdigits, int lo, int hi, int *v) {
    const char *p = *pp;
    int n = 0, val = 0;
    while (*p >= '0' && *p <= '9') {
        if (++n > maxdigits)
            return CORE_EINVAL;
        val = val * 10 + (*p - '0');
        p++;
    }
    if (n == 0 || val < lo || val > hi)
        return CORE_EINVAL;
    *pp = p;
    *v = val;
    return 0;
}

int clu_redis_parse_url(const char *url, clu_redis_addr_t *out) {
    static const char scheme[] = "redis://";
    if (url == NULL || out == NULL || strncmp(url, scheme, sizeof scheme - 1) != 0)
        return CORE_EINVAL;
    const char *p = url + sizeof scheme - 1;
    clu_redis_addr_t a = {.port = 6379, .db = 0};

    size_t hlen = strcspn(p, ":/");
    if (hlen == 0 || hlen >= sizeof a.host)
        return CORE_EINVAL;
    memcpy(a.host, p, hlen);
    a.host[hlen] = '\0';
    /* inet_pton accepts only the dotted quad, so names, "user:pw@" prefixes and IPv6 fail. */
    struct in_addr in;
    if (inet_pton(AF_INET, a.host, &in) != 1)
        return CORE_EINVAL;
    p += hlen;

    if (*p == ':') {
        p++;
        if (parse_dec(&p, 5, 1, 65535, &a.port) != 0)
            return CORE_EINVAL;
    }
    if (*p == '/') {
        p++;
        if (*p != '\0' && parse_dec(&p, 4, 0, CLU_REDIS_MAX_DB, &a.db) != 0)
            return CORE_EINVAL;
    }
    if (*p != '\0')
        return CORE_EINVAL;
    *out = a;
    return 0;
}
