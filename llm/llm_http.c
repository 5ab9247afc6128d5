/* libcurl's multi interface on libuv; see llm_http.h for the contract.
 *
 * Three rules shape this file:
 * - libcurl refuses (CURLM_RECURSIVE_API_CALL) or breaks on curl_multi_add_handle,
 *   curl_multi_remove_handle, curl_easy_cleanup and curl_easy_pause called from inside its own
 *   callbacks, and the user's callbacks run from inside curl's write and header callbacks. So
 *   every such call the user can trigger (post, cancel, resume, close) is only recorded, and one
 *   uv_idle handle (the "reaper") runs them on the next loop turn, outside any curl callback.
 * - curl's socket hook may name a file descriptor number that curl closed and opened again. A
 *   poll handle is therefore stopped and started again on every hook call, which makes libuv drop
 *   the fd from epoll and register it afresh; a new poll handle for a number that an old one
 *   still watches closes the old one first. Poll handles are closed with uv_close and freed in
 *   the close callback.
 * - Timeouts are our own per-request uv_timer: it is armed for the earliest deadline and the data
 *   path only stores the loop time of the last byte, so a stream costs no timer call per chunk;
 *   when the timer fires early because bytes came in since, it is armed again. */
#include "llm/llm_http.h"

#include <curl/curl.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define MOD "llm"

/* TCP keepalive probes find a provider connection that died silently (NAT timeout, a crashed
 * peer) while a stream waits for its next token, and keep idle pooled connections alive. */
#define KEEPALIVE_IDLE_S 30L
#define KEEPALIVE_INTVL_S 10L

struct llm_http {
    uv_loop_t *loop;
    CURLM *multi;
    uv_timer_t timer; /* curl's single timeout */
    uv_idle_t reaper; /* deferred work, see the top of the file */
    core_list_t reqs; /* live requests: queued or running, not finished or cancelled */
    core_list_t dead; /* cancelled requests waiting for the reaper */
    core_list_t adds; /* requests waiting for curl_multi_add_handle */
    core_list_t resumes;
    core_list_t socks;
    int open_handles; /* handles of this module not yet through their close callback */
    bool timeout_due; /* curl asked for curl_multi_socket_action(TIMEOUT) as soon as possible */
    bool closing;     /* llm_http_close ran */
    bool closed;      /* the multi handle is gone and the own handles are closing */
    void (*close_done)(void *ud);
    void *close_ud;
};

/* A socket curl asked us to watch (curl_multi_assign'ed to it). */
typedef struct {
    uv_poll_t poll;
    llm_http_t *h;
    curl_socket_t fd;
    int events; /* UV_READABLE | UV_WRITABLE as curl last asked */
    bool closing;
    core_list_t link; /* h->socks */
} sock_t;

struct llm_http_req {
    llm_http_t *h;
    CURL *easy;
    struct curl_slist *hdrs;
    llm_http_cb_t cb;
    void *ud;
    llm_http_timeouts_t to;
    uv_timer_t timer;
    core_list_t link;  /* h->reqs, or h->dead once cancelled */
    core_list_t qlink; /* h->adds or h->resumes */
    /* Loop times (ms) of the phases, for the deadlines. */
    uint64_t t_start, t_ready, t_last;
    /* uv_hrtime() values, for the stats. */
    uint64_t hr_start, hr_ready, hr_first;
    uint64_t bytes_in;
    size_t skip;     /* bytes curl delivers again after a pause that on_data already had */
    core_str_t head; /* header lines of the current response */
    size_t nlines;
    int http_status;
    int fail; /* a code chosen here before curl ends the transfer with an error */
    bool added, ready, got_first, headers_sent;
    bool paused, in_data, resume_asked;
    bool cancelled, finished;
};

static void on_reaper(uv_idle_t *idle);

static void reaper_kick(llm_http_t *h) {
    uv_idle_start(&h->reaper, on_reaper);
}

/* ---- handles and teardown ------------------------------------------------------------------- */

static void maybe_done(llm_http_t *h) {
    if (!h->closed || h->open_handles > 0)
        return;
    void (*done)(void *) = h->close_done;
    void *ud = h->close_ud;
    free(h);
    if (done != NULL)
        done(ud);
}

static void on_sock_closed(uv_handle_t *p) {
    sock_t *s = p->data;
    llm_http_t *h = s->h;
    core_list_remove(&s->link);
    free(s);
    h->open_handles--;
    maybe_done(h);
}

static void sock_close(sock_t *s) {
    if (s->closing)
        return;
    s->closing = true;
    uv_close((uv_handle_t *)&s->poll, on_sock_closed);
}

static void on_req_closed(uv_handle_t *t) {
    llm_http_req_t *r = t->data;
    llm_http_t *h = r->h;
    free(r);
    h->open_handles--;
    maybe_done(h);
}

/* Releases everything of r; the caller has taken r off the multi handle already. */
static void req_release(llm_http_req_t *r) {
    core_list_remove(&r->link);
    core_list_remove(&r->qlink);
    curl_easy_cleanup(r->easy);
    r->easy = NULL;
    curl_slist_free_all(r->hdrs);
    r->hdrs = NULL;
    core_str_free(&r->head);
    uv_close((uv_handle_t *)&r->timer, on_req_closed);
}

static void req_detach(llm_http_req_t *r) {
    if (r->added) {
        /* Removing an unfinished transfer makes curl close its connection instead of pooling a
         * connection with unread response bytes. */
        curl_multi_remove_handle(r->h->multi, r->easy);
        r->added = false;
    }
}

/* ---- ending a request ----------------------------------------------------------------------- */

static int map_curl_error(llm_http_req_t *r, CURLcode rc) {
    long os = 0;
    curl_easy_getinfo(r->easy, CURLINFO_OS_ERRNO, &os);
    switch (rc) {
    case CURLE_OK:
        return 0;
    case CURLE_OPERATION_TIMEDOUT:
        /* Only curl's own connect timeout (its 300 s default) can fire: we set no other. */
        return LLM_HTTP_ECONNECT_TIMEOUT;
    case CURLE_COULDNT_RESOLVE_HOST:
        return LLM_HTTP_ERESOLVE;
    case CURLE_URL_MALFORMAT:
    case CURLE_UNSUPPORTED_PROTOCOL:
        return CORE_EINVAL;
    case CURLE_OUT_OF_MEMORY:
        return CORE_ENOMEM;
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CERTPROBLEM:
    case CURLE_SSL_CIPHER:
    case CURLE_SSL_CACERT_BADFILE:
    case CURLE_SSL_ISSUER_ERROR:
    case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
    case CURLE_SSL_INVALIDCERTSTATUS:
    case CURLE_SSL_CRL_BADFILE:
        return LLM_HTTP_ETLS;
    case CURLE_WEIRD_SERVER_REPLY:
    case CURLE_BAD_CONTENT_ENCODING:
    case CURLE_HTTP2:
    case CURLE_HTTP2_STREAM:
        return CORE_EPROTO;
    case CURLE_PARTIAL_FILE:
    case CURLE_GOT_NOTHING:
        return UV_EOF;
    case CURLE_COULDNT_CONNECT:
    case CURLE_SEND_ERROR:
    case CURLE_RECV_ERROR:
        /* libuv's codes are negative errno values on Unix. */
        return os > 0 ? (int)-os : (rc == CURLE_COULDNT_CONNECT ? UV_ECONNREFUSED : UV_EIO);
    default:
        return UV_EIO;
    }
}

static uint64_t since_us(uint64_t hr_start, uint64_t hr) {
    return hr != 0 && hr > hr_start ? (hr - hr_start) / 1000u : 0;
}

/* Ends r with status and runs on_done. Only from loop context (not inside a curl callback). */
static void req_finish(llm_http_req_t *r, int status) {
    if (r->cancelled || r->finished)
        return;
    r->finished = true;
    uv_timer_stop(&r->timer);
    llm_http_stats_t st = {.http_status = r->http_status, .bytes_in = r->bytes_in};
    uint64_t now = uv_hrtime();
    st.connect_us = since_us(r->hr_start, r->hr_ready);
    st.first_byte_us = since_us(r->hr_start, r->hr_first);
    st.total_us = since_us(r->hr_start, now);
    if (r->added) {
        long connects = 0;
        curl_easy_getinfo(r->easy, CURLINFO_NUM_CONNECTS, &connects);
        st.reused = r->ready && connects == 0;
    }
    req_detach(r);
    if (status != 0)
        CORE_LOGD(MOD, "http request failed", "status=%d err=\"%s\" http=%d", status,
                  llm_http_strerror(status), r->http_status);
    r->cb.on_done(r->ud, status, &st);
    req_release(r);
}

/* Collects the transfers curl has finished. */
static void check_done(llm_http_t *h) {
    CURLMsg *m;
    int left;
    while (h->multi != NULL && (m = curl_multi_info_read(h->multi, &left)) != NULL) {
        if (m->msg != CURLMSG_DONE)
            continue;
        char *priv = NULL;
        curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, &priv);
        llm_http_req_t *r = (llm_http_req_t *)priv;
        CURLcode rc = m->data.result;
        /* A cancelled transfer is removed by the reaper; after llm_http_close the reaper reports
         * UV_ECANCELED, not the write error our callbacks caused by refusing further bytes. */
        if (r->cancelled || r->finished || h->closing)
            continue;
        int st = r->fail != 0 ? r->fail : map_curl_error(r, rc);
        if (st == 0 && !r->headers_sent)
            st = CORE_EPROTO; /* a "complete" transfer without a response */
        req_finish(r, st);
    }
}

/* ---- deadlines ------------------------------------------------------------------------------ */

static void on_req_timer(uv_timer_t *t);

/* The earliest deadline that applies now, and the code it ends the request with. */
static uint64_t next_deadline(const llm_http_req_t *r, int *code) {
    uint64_t dl = UINT64_MAX;
    *code = 0;
#define CONSIDER(cond, when, c)                                                                    \
    do {                                                                                           \
        if ((cond) && (when) < dl) {                                                               \
            dl = (when);                                                                           \
            *code = (c);                                                                           \
        }                                                                                          \
    } while (0)
    CONSIDER(!r->ready && r->to.connect_ms, r->t_start + r->to.connect_ms,
             LLM_HTTP_ECONNECT_TIMEOUT);
    CONSIDER(r->ready && !r->got_first && r->to.first_byte_ms, r->t_ready + r->to.first_byte_ms,
             LLM_HTTP_EFIRST_BYTE_TIMEOUT);
    CONSIDER(r->got_first && !r->paused && r->to.idle_ms, r->t_last + r->to.idle_ms,
             LLM_HTTP_EIDLE_TIMEOUT);
    CONSIDER(r->to.total_ms, r->t_start + r->to.total_ms, LLM_HTTP_ETOTAL_TIMEOUT);
#undef CONSIDER
    return dl;
}

static void arm(llm_http_req_t *r) {
    int code;
    uint64_t dl = next_deadline(r, &code);
    if (dl == UINT64_MAX) {
        uv_timer_stop(&r->timer);
        return;
    }
    uint64_t now = uv_now(r->h->loop);
    uv_timer_start(&r->timer, on_req_timer, dl > now ? dl - now : 0, 0);
}

static void on_req_timer(uv_timer_t *t) {
    llm_http_req_t *r = t->data;
    if (r->cancelled || r->finished || r->h->closing)
        return;
    int code;
    uint64_t dl = next_deadline(r, &code);
    if (dl <= uv_now(r->h->loop)) {
        req_finish(r, code);
        return;
    }
    arm(r); /* bytes arrived since the timer was armed: the idle deadline moved on */
}

/* ---- curl's per-transfer callbacks ---------------------------------------------------------- */

/* The connection is up (or an idle one was taken from the pool): the connect phase ends. */
static int on_curl_prereq(void *ud, char *conn_primary_ip, char *conn_local_ip,
                          int conn_primary_port, int conn_local_port) {
    (void)conn_primary_ip, (void)conn_local_ip, (void)conn_primary_port, (void)conn_local_port;
    llm_http_req_t *r = ud;
    if (r->cancelled || r->finished || r->h->closing)
        return CURL_PREREQFUNC_ABORT;
    if (!r->ready) {
        r->ready = true;
        r->t_ready = uv_now(r->h->loop);
        r->hr_ready = uv_hrtime();
        arm(r);
    }
    return CURL_PREREQFUNC_OK;
}

static void note_bytes(llm_http_req_t *r) {
    r->t_last = uv_now(r->h->loop);
    if (!r->got_first) {
        r->got_first = true;
        r->hr_first = uv_hrtime();
        arm(r); /* the first-byte deadline gives way to the idle one, which may be earlier */
    }
}

static size_t trim_len(const char *p, size_t n) {
    while (n > 0 && (p[n - 1] == '\r' || p[n - 1] == '\n' || p[n - 1] == ' ' || p[n - 1] == '\t'))
        n--;
    return n;
}

/* Hands the collected header lines to on_headers. The lines are split in place: the buffer
 * holds "line\0line\0..." with the status line first. */
static void send_headers(llm_http_req_t *r) {
    r->headers_sent = true;
    if (r->cb.on_headers == NULL)
        return;
    llm_http_header_t hv[LLM_HTTP_MAX_HEADERS];
    size_t n = 0;
    char *p = r->head.ptr, *end = p + r->head.len;
    bool first = true;
    while (p < end) {
        size_t len = strlen(p);
        char *line = p;
        p += len + 1;
        if (first) {
            first = false; /* the status line */
            continue;
        }
        char *colon = memchr(line, ':', len);
        if (colon == NULL || colon == line || n == LLM_HTTP_MAX_HEADERS)
            continue; /* obsolete line folding, or junk: not a header */
        *colon = '\0';
        char *v = colon + 1;
        while (*v == ' ' || *v == '\t')
            v++;
        hv[n++] = (llm_http_header_t){line, (size_t)(colon - line), v, strlen(v)};
    }
    r->cb.on_headers(r->ud, r->http_status, hv, n);
}

static size_t on_curl_header(char *buf, size_t size, size_t nitems, void *ud) {
    llm_http_req_t *r = ud;
    size_t len = size * nitems;
    if (r->cancelled || r->finished || r->h->closing)
        return 0; /* aborts the transfer with CURLE_WRITE_ERROR */
    note_bytes(r);
    if (r->headers_sent)
        return len; /* trailers of a chunked body */
    size_t n = trim_len(buf, len);
    if (r->head.len == 0 && r->nlines == 0) {
        /* The status line: "HTTP/1.1 200 OK". */
        int code = 0;
        const char *sp = memchr(buf, ' ', n);
        if (sp != NULL && (size_t)(sp - buf) + 4 <= n) {
            for (int i = 1; i <= 3; i++)
                code = code * 10 + (sp[i] >= '0' && sp[i] <= '9' ? sp[i] - '0' : -1000);
        }
        r->http_status = code >= 100 && code <= 999 ? code : 0;
    }
    if (n == 0) {
        /* The blank line ends a response head. */
        if (r->http_status >= 100 && r->http_status < 200) {
            r->head.len = 0; /* an interim response such as 100 Continue: the real one follows */
            r->nlines = 0;
            return len;
        }
        send_headers(r);
        core_str_free(&r->head);
        return r->cancelled || r->h->closing ? 0 : len;
    }
    if (r->head.len + n + 1 > LLM_HTTP_MAX_HEADER_BYTES || r->nlines > LLM_HTTP_MAX_HEADERS) {
        r->fail = LLM_HTTP_EHEADERS;
        return 0;
    }
    core_str_append(&r->head, buf, n);
    core_str_append(&r->head, "", 1); /* the NUL that ends the line */
    r->nlines++;
    return len;
}

static size_t on_curl_write(char *buf, size_t size, size_t nmemb, void *ud) {
    llm_http_req_t *r = ud;
    size_t len = size * nmemb;
    if (r->cancelled || r->finished || r->h->closing)
        return 0;
    size_t off = 0;
    if (r->skip > 0) {
        /* After CURL_WRITEFUNC_PAUSE curl keeps the bytes of that call and delivers them again
         * on unpause; on_data has had them already. */
        off = r->skip < len ? r->skip : len;
        r->skip -= off;
        if (off == len)
            return len;
    }
    note_bytes(r);
    if (!r->headers_sent)
        send_headers(
            r); /* not expected with HTTP/1.1, where headers always end with a blank line */
    if (r->cancelled || r->h->closing)
        return 0;
    r->bytes_in += len - off;
    if (r->cb.on_data == NULL)
        return len;
    r->in_data = true;
    int rc = r->cb.on_data(r->ud, buf + off, len - off);
    r->in_data = false;
    if (r->cancelled || r->h->closing)
        return 0;
    if (rc == LLM_HTTP_PAUSE && !r->resume_asked) {
        r->paused = true;
        r->skip = len;
        return CURL_WRITEFUNC_PAUSE;
    }
    r->resume_asked = false;
    return len;
}

/* ---- curl's multi hooks --------------------------------------------------------------------- */

static void on_poll(uv_poll_t *p, int status, int events) {
    sock_t *s = p->data;
    llm_http_t *h = s->h;
    int flags = 0;
    if (status < 0) {
        /* libuv stopped the handle (POLLERR, e.g. a refused connect). curl reads the socket
         * error itself when told about both directions. */
        flags = CURL_CSELECT_ERR | CURL_CSELECT_IN | CURL_CSELECT_OUT;
    } else {
        if (events & UV_READABLE)
            flags |= CURL_CSELECT_IN;
        if (events & UV_WRITABLE)
            flags |= CURL_CSELECT_OUT;
    }
    int running;
    curl_multi_socket_action(h->multi, s->fd, flags, &running);
    /* s lives until its close callback, so it can be looked at after curl ran. */
    if (status < 0 && !s->closing && s->events != 0)
        uv_poll_start(&s->poll, s->events, on_poll); /* curl still wants it: re-arm */
    check_done(h);
}

static sock_t *sock_new(llm_http_t *h, curl_socket_t fd) {
    sock_t *s = core_calloc(1, sizeof *s);
    int rc = uv_poll_init_socket(h->loop, &s->poll, fd);
    if (rc == UV_EEXIST) {
        /* A poll handle of ours still watches this number: curl closed that socket without
         * telling the hook, and this is a new one. Drop the stale handle. */
        for (core_list_t *it = h->socks.next; it != &h->socks; it = it->next) {
            sock_t *o = CORE_CONTAINER_OF(it, sock_t, link);
            if (o->fd == fd && !o->closing)
                sock_close(o);
        }
        rc = uv_poll_init_socket(h->loop, &s->poll, fd);
    }
    if (rc != 0) {
        CORE_LOGE(MOD, "cannot poll curl socket", "err=%s", uv_strerror(rc));
        free(s);
        return NULL;
    }
    s->poll.data = s;
    s->h = h;
    s->fd = fd;
    core_list_insert_tail(&h->socks, &s->link);
    h->open_handles++;
    return s;
}

static int on_curl_socket(CURL *e, curl_socket_t fd, int what, void *userp, void *socketp) {
    (void)e;
    llm_http_t *h = userp;
    sock_t *s = socketp;
    if (what == CURL_POLL_REMOVE) {
        /* curl forgets the assignment itself; the fd may be closed right after this. */
        if (s != NULL)
            sock_close(s);
        return 0;
    }
    if (s == NULL || s->closing) {
        s = sock_new(h, fd);
        if (s == NULL)
            return -1;
        curl_multi_assign(h->multi, fd, s);
    }
    s->events =
        ((what & CURL_POLL_IN) ? UV_READABLE : 0) | ((what & CURL_POLL_OUT) ? UV_WRITABLE : 0);
    /* Stop, then start: uv_poll_start alone changes nothing in epoll when the events are the
     * same, which would leave a reopened fd with the same number unwatched. */
    uv_poll_stop(&s->poll);
    if (s->events != 0)
        uv_poll_start(&s->poll, s->events, on_poll);
    return 0;
}

static void on_multi_timer(uv_timer_t *t) {
    llm_http_t *h = t->data;
    int running;
    curl_multi_socket_action(h->multi, CURL_SOCKET_TIMEOUT, 0, &running);
    check_done(h);
}

static int on_curl_timer(CURLM *m, long timeout_ms, void *userp) {
    (void)m;
    llm_http_t *h = userp;
    if (h->closed)
        return 0;
    if (timeout_ms < 0) {
        uv_timer_stop(&h->timer);
    } else if (timeout_ms == 0) {
        /* "As soon as possible": a 0 ms uv_timer started from a timer callback runs again in the
         * same timer phase (libuv 1.44), which can spin without ever polling sockets. The reaper
         * runs once per loop turn instead. */
        uv_timer_stop(&h->timer);
        h->timeout_due = true;
        reaper_kick(h);
    } else {
        uv_timer_start(&h->timer, on_multi_timer, (uint64_t)timeout_ms, 0);
    }
    return 0;
}

/* ---- the reaper ----------------------------------------------------------------------------- */

static void on_own_closed(uv_handle_t *p) {
    llm_http_t *h = p->data;
    h->open_handles--;
    maybe_done(h);
}

static void close_handles(llm_http_t *h) {
    /* curl closed its sockets in curl_multi_cleanup and may have told the hook; close the rest. */
    for (core_list_t *it = h->socks.next; it != &h->socks; it = it->next)
        sock_close(CORE_CONTAINER_OF(it, sock_t, link));
    uv_close((uv_handle_t *)&h->timer, on_own_closed);
    uv_close((uv_handle_t *)&h->reaper, on_own_closed);
}

static void on_reaper(uv_idle_t *idle) {
    llm_http_t *h = idle->data;
    uv_idle_stop(idle);

    if (h->closing) {
        while (!core_list_empty(&h->reqs))
            req_finish(CORE_CONTAINER_OF(h->reqs.next, llm_http_req_t, link), UV_ECANCELED);
    }
    while (!core_list_empty(&h->dead)) {
        llm_http_req_t *r = CORE_CONTAINER_OF(h->dead.next, llm_http_req_t, link);
        req_detach(r);
        req_release(r);
    }
    if (h->closing) {
        if (!h->closed) {
            h->closed = true;
            curl_multi_cleanup(h->multi);
            h->multi = NULL;
            close_handles(h);
        }
        return;
    }
    while (!core_list_empty(&h->adds)) {
        llm_http_req_t *r = CORE_CONTAINER_OF(h->adds.next, llm_http_req_t, qlink);
        core_list_remove(&r->qlink);
        CURLMcode mc = curl_multi_add_handle(h->multi, r->easy);
        if (mc != CURLM_OK) {
            req_finish(r, mc == CURLM_OUT_OF_MEMORY ? CORE_ENOMEM : UV_EIO);
            continue;
        }
        r->added = true;
    }
    while (!core_list_empty(&h->resumes)) {
        llm_http_req_t *r = CORE_CONTAINER_OF(h->resumes.next, llm_http_req_t, qlink);
        core_list_remove(&r->qlink);
        if (r->cancelled || r->finished || !r->paused)
            continue;
        r->paused = false;
        r->t_last = uv_now(h->loop);
        arm(r);
        /* Delivers what curl held back (through on_curl_write, so on_data may pause again) and
         * tells curl to watch the socket again. An error here is a cancel from inside that
         * on_data, which the dead list handles on the next turn. */
        curl_easy_pause(r->easy, CURLPAUSE_CONT);
    }
    if (h->timeout_due) {
        h->timeout_due = false;
        int running;
        curl_multi_socket_action(h->multi, CURL_SOCKET_TIMEOUT, 0, &running);
    }
    check_done(h);
    if (h->timeout_due || !core_list_empty(&h->dead) || !core_list_empty(&h->adds) ||
        !core_list_empty(&h->resumes))
        reaper_kick(h);
}

/* ---- public API ----------------------------------------------------------------------------- */

const char *llm_http_strerror(int err) {
    switch (err) {
#define LLM_HTTP_XX(name, val, msg)                                                                \
    case LLM_HTTP_##name:                                                                          \
        return msg;
        LLM_HTTP_ERRNO_MAP(LLM_HTTP_XX)
#undef LLM_HTTP_XX
    default:
        return core_strerror(err);
    }
}

llm_http_t *llm_http_new(uv_loop_t *loop) {
    static bool global_done;
    if (!global_done) {
        if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
            CORE_LOGE(MOD, "curl_global_init failed", NULL);
            return NULL;
        }
        global_done = true;
    }
    llm_http_t *h = core_calloc(1, sizeof *h);
    h->loop = loop;
    h->multi = curl_multi_init();
    if (h->multi == NULL) {
        free(h);
        return NULL;
    }
    core_list_init(&h->reqs);
    core_list_init(&h->dead);
    core_list_init(&h->adds);
    core_list_init(&h->resumes);
    core_list_init(&h->socks);
    uv_timer_init(loop, &h->timer);
    h->timer.data = h;
    uv_idle_init(loop, &h->reaper);
    h->reaper.data = h;
    h->open_handles = 2;
    curl_multi_setopt(h->multi, CURLMOPT_SOCKETFUNCTION, on_curl_socket);
    curl_multi_setopt(h->multi, CURLMOPT_SOCKETDATA, h);
    curl_multi_setopt(h->multi, CURLMOPT_TIMERFUNCTION, on_curl_timer);
    curl_multi_setopt(h->multi, CURLMOPT_TIMERDATA, h);
    return h;
}

void llm_http_close(llm_http_t *h, void (*done)(void *ud), void *ud) {
    if (h->closing)
        return;
    h->closing = true;
    h->close_done = done;
    h->close_ud = ud;
    uv_timer_stop(&h->timer);
    reaper_kick(h);
}

/* A header line must be "Name: value" without CR or LF, or curl would send it verbatim. */
static bool header_ok(const char *s) {
    const char *colon = strchr(s, ':');
    return colon != NULL && colon != s && strpbrk(s, "\r\n") == NULL;
}

#define SETOPT(e, opt, val) ok &= curl_easy_setopt((e), (opt), (val)) == CURLE_OK

int llm_http_post(llm_http_t *h, const llm_http_post_t *o, llm_http_req_t **out) {
    if (out != NULL)
        *out = NULL;
    if (h == NULL || o == NULL || o->url == NULL || o->cb.on_done == NULL ||
        (o->body == NULL && o->body_len > 0))
        return CORE_EINVAL;
    if (h->closing)
        return UV_ECANCELED;
    struct curl_slist *hdrs = NULL;
    bool has_expect = false;
    for (size_t i = 0; o->headers != NULL && o->headers[i] != NULL; i++) {
        if (!header_ok(o->headers[i])) {
            curl_slist_free_all(hdrs);
            return CORE_EINVAL;
        }
        has_expect |= strncasecmp(o->headers[i], "expect:", 7) == 0;
        struct curl_slist *n = curl_slist_append(hdrs, o->headers[i]);
        if (n == NULL)
            goto nomem;
        hdrs = n;
    }
    if (!has_expect) {
        /* Without this curl 7.88 sends "Expect: 100-continue" for bodies over 1 MiB and waits up
         * to a second for an interim answer that many servers never send. */
        struct curl_slist *n = curl_slist_append(hdrs, "Expect:");
        if (n == NULL)
            goto nomem;
        hdrs = n;
    }
    CURL *e = curl_easy_init();
    if (e == NULL)
        goto nomem;

    llm_http_req_t *r = core_calloc(1, sizeof *r);
    r->h = h;
    r->easy = e;
    r->hdrs = hdrs;
    r->cb = o->cb;
    r->ud = o->ud;
    r->to = o->timeouts;
    core_list_init(&r->link);
    core_list_init(&r->qlink);

    bool ok = true;
    SETOPT(e, CURLOPT_URL, o->url);
    SETOPT(e, CURLOPT_PROTOCOLS_STR, "http,https");
    SETOPT(e, CURLOPT_PRIVATE, r);
    /* The loop thread must never take a signal from libcurl (its alarm-based DNS timeout). */
    SETOPT(e, CURLOPT_NOSIGNAL, 1L);
    SETOPT(e, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_1_1);
    SETOPT(e, CURLOPT_TCP_KEEPALIVE, 1L);
    SETOPT(e, CURLOPT_TCP_KEEPIDLE, KEEPALIVE_IDLE_S);
    SETOPT(e, CURLOPT_TCP_KEEPINTVL, KEEPALIVE_INTVL_S);
    SETOPT(e, CURLOPT_TCP_NODELAY, 1L);
    SETOPT(e, CURLOPT_HTTPHEADER, hdrs);
    SETOPT(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)o->body_len);
    SETOPT(e, CURLOPT_COPYPOSTFIELDS, o->body != NULL ? o->body : "");
    SETOPT(e, CURLOPT_HEADERFUNCTION, on_curl_header);
    SETOPT(e, CURLOPT_HEADERDATA, r);
    SETOPT(e, CURLOPT_WRITEFUNCTION, on_curl_write);
    SETOPT(e, CURLOPT_WRITEDATA, r);
    SETOPT(e, CURLOPT_PREREQFUNCTION, on_curl_prereq);
    SETOPT(e, CURLOPT_PREREQDATA, r);
    if (!ok) {
        /* Only an allocation failure inside curl can make these fail. */
        curl_easy_cleanup(e);
        curl_slist_free_all(hdrs);
        free(r);
        return CORE_ENOMEM;
    }
    uv_timer_init(h->loop, &r->timer);
    r->timer.data = r;
    h->open_handles++;
    r->t_start = uv_now(h->loop);
    r->hr_start = uv_hrtime();
    arm(r);
    core_list_insert_tail(&h->reqs, &r->link);
    core_list_insert_tail(&h->adds, &r->qlink);
    reaper_kick(h);
    if (out != NULL)
        *out = r;
    return 0;

nomem:
    curl_slist_free_all(hdrs);
    return CORE_ENOMEM;
}

void llm_http_resume(llm_http_req_t *r) {
    if (r->cancelled || r->finished || r->h->closing)
        return;
    if (r->in_data && !r->paused) {
        r->resume_asked = true; /* on_data is about to return LLM_HTTP_PAUSE: ignore it */
        return;
    }
    if (!r->paused)
        return;
    core_list_remove(&r->qlink);
    core_list_insert_tail(&r->h->resumes, &r->qlink);
    reaper_kick(r->h);
}

void llm_http_cancel(llm_http_req_t *r) {
    if (r->cancelled || r->finished)
        return;
    r->cancelled = true;
    uv_timer_stop(&r->timer);
    core_list_remove(&r->qlink);
    core_list_remove(&r->link);
    core_list_insert_tail(&r->h->dead, &r->link);
    reaper_kick(r->h);
}
