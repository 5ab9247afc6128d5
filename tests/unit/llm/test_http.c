/* Unit tests for llm/llm_http.c against the small HTTP/1.1 server of http_server.c, which runs on
 * the same loop on a loopback port. Covered: streamed chunked responses, what is sent, pause and
 * resume with TCP backpressure, cancel (from outside, inside on_data, inside on_headers, of
 * another request), refused connects, the first-byte, idle and total timeouts, a reset, oversized
 * headers, 200 concurrent requests, closing with requests in flight, keep-alive reuse. Every test
 * runs its own loop, is bounded by a watchdog and ends with uv_loop_close() == 0. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "llm/llm_http.h"
#include "tests/unit/llm/http_server.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* ---- fixture -------------------------------------------------------------------------------- */

typedef struct fx fx_t;

/* What one request saw, and what it should do. */
typedef struct rec {
    fx_t *f;
    llm_http_req_t *req;
    int headers_calls, http_status;
    char ctype[64], xtest[32];
    bool te_chunked, data_before_headers;
    int data_calls;
    size_t bytes;
    char body[8192];
    bool body_bad; /* /big: a byte out of pattern */
    int done_calls, done_status;
    llm_http_stats_t st;
    uint64_t t_post, t_last_data, t_done; /* uv_hrtime */
    bool cancelled;
    int after_cancel; /* callbacks that ran after llm_http_cancel */
    /* Behaviour. */
    bool cancel_in_headers;
    int cancel_in_data_at;    /* cancel inside the n-th on_data */
    int cancel_later_at;      /* cancel from a loop timer after the n-th on_data */
    struct rec *cancel_other; /* cancel this one inside on_data once it had data */
    size_t pause_at;          /* return LLM_HTTP_PAUSE once bytes >= pause_at */
    bool paused_now;
    int data_while_paused;
    void (*after_done)(struct rec *r);
} rec_t;

struct fx {
    uv_loop_t loop;
    uv_timer_t watchdog, aux;
    bool stuck;
    llm_http_t *h;
    ths_t *srv;
    bool h_closed, shut;
    int dones;
    int want_dones;       /* shut down when this many requests finished */
    int want_peer_closes; /* ... or when the server saw this many client closes */
    rec_t *pending_cancel;
    /* pause test */
    rec_t *paused;
    uint64_t last_written;
    int stable_ticks;
    uint64_t written_at_stall;
    /* The server's counters, taken when it is closed (it is freed after that). */
    unsigned accepted, peer_closed, requests;
};

static void fx_snap(fx_t *f) {
    f->accepted = ths_accepted(f->srv);
    f->peer_closed = ths_peer_closed(f->srv);
    f->requests = ths_requests(f->srv);
}

static void on_watchdog(uv_timer_t *t) {
    fx_t *f = t->data;
    f->stuck = true;
    uv_stop(&f->loop);
}

static void on_h_closed(void *ud) {
    fx_t *f = ud;
    f->h_closed = true;
}

/* Closes the client and the server; the loop then runs dry. */
static void fx_shutdown(fx_t *f) {
    if (f->shut)
        return;
    f->shut = true;
    llm_http_close(f->h, on_h_closed, f);
    fx_snap(f);
    ths_close(f->srv);
    if (!uv_is_closing((uv_handle_t *)&f->aux))
        uv_close((uv_handle_t *)&f->aux, NULL);
}

static void on_peer_closed(void *ud) {
    fx_t *f = ud;
    if (f->want_peer_closes > 0 && ths_peer_closed(f->srv) >= (unsigned)f->want_peer_closes)
        fx_shutdown(f);
}

static void fx_init(fx_t *f) {
    memset(f, 0, sizeof *f);
    assert_int_equal(uv_loop_init(&f->loop), 0);
    /* Unreferenced: it does not keep the loop alive, but stops a loop the code under test left
     * hanging, so a bug fails the test instead of hanging it. */
    uv_timer_init(&f->loop, &f->watchdog);
    f->watchdog.data = f;
    uv_timer_start(&f->watchdog, on_watchdog, 15000, 0);
    uv_unref((uv_handle_t *)&f->watchdog);
    uv_timer_init(&f->loop, &f->aux);
    f->aux.data = f;
    f->h = llm_http_new(&f->loop);
    assert_non_null(f->h);
    f->srv = ths_start(&f->loop);
    assert_non_null(f->srv);
    ths_on_peer_closed(f->srv, on_peer_closed, f);
}

static void fx_run_and_close(fx_t *f) {
    uv_run(&f->loop, UV_RUN_DEFAULT);
    assert_false(f->stuck);
    assert_true(f->h_closed);
    uv_close((uv_handle_t *)&f->watchdog, NULL);
    uv_run(&f->loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&f->loop), 0);
}

static uint64_t ms_between(uint64_t a, uint64_t b) {
    return (b - a) / 1000000u;
}

/* ---- recording callbacks -------------------------------------------------------------------- */

static void copy_value(char *dst, size_t cap, const llm_http_header_t *h) {
    size_t n = h->value_len < cap - 1 ? h->value_len : cap - 1;
    memcpy(dst, h->value, n);
    dst[n] = '\0';
}

static void rec_headers(void *ud, int status, const llm_http_header_t *h, size_t n) {
    rec_t *r = ud;
    if (r->cancelled) {
        r->after_cancel++;
        return;
    }
    r->headers_calls++;
    r->http_status = status;
    for (size_t i = 0; i < n; i++) {
        assert_int_equal(strlen(h[i].name), h[i].name_len);
        assert_int_equal(strlen(h[i].value), h[i].value_len);
        if (strcasecmp(h[i].name, "content-type") == 0)
            copy_value(r->ctype, sizeof r->ctype, &h[i]);
        else if (strcasecmp(h[i].name, "x-test") == 0)
            copy_value(r->xtest, sizeof r->xtest, &h[i]);
        else if (strcasecmp(h[i].name, "transfer-encoding") == 0)
            r->te_chunked = strcmp(h[i].value, "chunked") == 0;
    }
    if (r->cancel_in_headers) {
        llm_http_cancel(r->req);
        r->cancelled = true;
    }
}

static void on_aux_cancel(uv_timer_t *t) {
    fx_t *f = t->data;
    rec_t *r = f->pending_cancel;
    llm_http_cancel(r->req);
    r->cancelled = true;
}

static int rec_data(void *ud, const char *buf, size_t len) {
    rec_t *r = ud;
    if (r->cancelled) {
        r->after_cancel++;
        return 0;
    }
    if (r->paused_now)
        r->data_while_paused++;
    if (r->headers_calls == 0)
        r->data_before_headers = true;
    for (size_t i = 0; i < len; i++) /* /big's pattern, checked only where it is used */
        if ((unsigned char)buf[i] != (unsigned char)((r->bytes + i) % 251))
            r->body_bad = true;
    if (r->bytes < sizeof r->body) {
        size_t n = len < sizeof r->body - r->bytes ? len : sizeof r->body - r->bytes;
        memcpy(r->body + r->bytes, buf, n);
    }
    r->bytes += len;
    r->data_calls++;
    r->t_last_data = uv_hrtime();
    if (r->cancel_other != NULL && !r->cancel_other->cancelled && r->cancel_other->data_calls > 0) {
        llm_http_cancel(r->cancel_other->req);
        r->cancel_other->cancelled = true;
    }
    if (r->data_calls == r->cancel_in_data_at) {
        llm_http_cancel(r->req);
        r->cancelled = true;
        return 0;
    }
    if (r->data_calls == r->cancel_later_at) {
        r->f->pending_cancel = r;
        uv_timer_start(&r->f->aux, on_aux_cancel, 0, 0);
    }
    if (r->pause_at > 0 && r->bytes >= r->pause_at && r->f->paused == NULL) {
        r->f->paused = r;
        r->paused_now = true;
        return LLM_HTTP_PAUSE;
    }
    return 0;
}

static void rec_done(void *ud, int status, const llm_http_stats_t *st) {
    rec_t *r = ud;
    if (r->cancelled) {
        r->after_cancel++;
        return;
    }
    r->done_calls++;
    r->done_status = status;
    r->st = *st;
    r->t_done = uv_hrtime();
    r->f->dones++;
    if (r->after_done != NULL)
        r->after_done(r);
    if (r->f->want_dones > 0 && r->f->dones >= r->f->want_dones)
        fx_shutdown(r->f);
}

static void rec_init(rec_t *r, fx_t *f) {
    memset(r, 0, sizeof *r);
    r->f = f;
    r->done_status = 1;
}

static int post(fx_t *f, rec_t *r, const char *path, llm_http_timeouts_t to) {
    char url[128];
    snprintf(url, sizeof url, "http://127.0.0.1:%d%s", ths_port(f->srv), path);
    llm_http_post_t o = {.url = url,
                         .body = "{}",
                         .body_len = 2,
                         .timeouts = to,
                         .cb = {rec_headers, rec_data, rec_done},
                         .ud = r};
    r->t_post = uv_hrtime();
    return llm_http_post(f->h, &o, &r->req);
}

static const llm_http_timeouts_t no_timeouts = {0, 0, 0, 0};
static const llm_http_timeouts_t safe_timeouts = {2000, 5000, 5000, 10000};

/* ---- a streamed response -------------------------------------------------------------------- */

static void test_stream(void **state) {
    (void)state;
    fx_t f;
    fx_init(&f);
    f.want_dones = 1;
    rec_t r;
    rec_init(&r, &f);
    char url[128];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/stream/20", ths_port(f.srv));
    const char *hdrs[] = {"Authorization: Bearer sk-test-secret", "Content-Type: application/json",
                          NULL};
    llm_http_post_t o = {.url = url,
                         .headers = hdrs,
                         .body = "{\"q\":1}",
                         .body_len = 7,
                         .timeouts = safe_timeouts,
                         .cb = {rec_headers, rec_data, rec_done},
                         .ud = &r};
    r.t_post = uv_hrtime();
    assert_int_equal(llm_http_post(f.h, &o, &r.req), 0);
    assert_non_null(r.req);
    /* Header injection is refused, and so is a request without on_done. */
    const char *bad[] = {"X-A: 1\r\nX-Injected: 2", NULL};
    o.headers = bad;
    assert_int_equal(llm_http_post(f.h, &o, NULL), CORE_EINVAL);
    o.headers = hdrs;
    o.cb.on_done = NULL;
    assert_int_equal(llm_http_post(f.h, &o, NULL), CORE_EINVAL);
    /* Never a callback from inside the call. */
    assert_int_equal(r.headers_calls + r.data_calls + r.done_calls, 0);
    fx_run_and_close(&f);

    assert_int_equal(r.headers_calls, 1);
    assert_false(r.data_before_headers);
    assert_int_equal(r.http_status, 200);
    assert_string_equal(r.ctype, "text/event-stream");
    assert_string_equal(r.xtest, "stream");
    assert_true(r.te_chunked);
    char want[512] = "";
    for (int i = 0; i < 20; i++)
        snprintf(want + strlen(want), sizeof want - strlen(want), "data: %d\n\n", i);
    assert_int_equal(r.bytes, strlen(want));
    assert_memory_equal(r.body, want, strlen(want));
    assert_true(r.data_calls > 1); /* streamed, not buffered to the end */
    assert_int_equal(r.done_calls, 1);
    assert_int_equal(r.done_status, 0);
    assert_int_equal(r.st.http_status, 200);
    assert_int_equal(r.st.bytes_in, strlen(want));
    assert_false(r.st.reused);
    assert_true(r.st.connect_us > 0);
    assert_true(r.st.first_byte_us >= r.st.connect_us);
    assert_true(r.st.total_us >= r.st.first_byte_us);
}

/* ---- what goes on the wire ------------------------------------------------------------------ */

static char sent_head[4096], sent_body[64];

static void keep_sent(rec_t *r) {
    size_t n;
    snprintf(sent_head, sizeof sent_head, "%s", ths_last_head(r->f->srv));
    const char *b = ths_last_body(r->f->srv, &n);
    snprintf(sent_body, sizeof sent_body, "%.*s", (int)n, b);
}

static void test_sent(void **state) {
    (void)state;
    fx_t f;
    fx_init(&f);
    f.want_dones = 1;
    rec_t r;
    rec_init(&r, &f);
    r.after_done = keep_sent;
    char url[128];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/echo", ths_port(f.srv));
    const char *hdrs[] = {"Authorization: Bearer sk-test-secret", "Content-Type: application/json",
                          NULL};
    /* A body over 1 MiB would make curl wait for "100 Continue" if Expect were not removed. */
    size_t big = 1100 * 1024;
    char *body = malloc(big);
    memset(body, 'x', big);
    memcpy(body, "{\"q\":1}", 7);
    llm_http_post_t o = {.url = url,
                         .headers = hdrs,
                         .body = body,
                         .body_len = big,
                         .timeouts = safe_timeouts,
                         .cb = {rec_headers, rec_data, rec_done},
                         .ud = &r};
    assert_int_equal(llm_http_post(f.h, &o, &r.req), 0);
    free(body); /* copied by llm_http_post */
    fx_run_and_close(&f);
    assert_int_equal(r.done_status, 0);
    assert_int_equal(r.bytes, big);
    assert_memory_equal(r.body, "{\"q\":1}xxx", 10);
    assert_true(strncmp(sent_head, "POST /echo HTTP/1.1\r\n", 21) == 0);
    assert_non_null(strstr(sent_head, "\r\nAuthorization: Bearer sk-test-secret\r\n"));
    assert_non_null(strstr(sent_head, "\r\nContent-Type: application/json\r\n"));
    assert_non_null(strcasestr(sent_head, "\r\nContent-Length: 1126400\r\n"));
    assert_null(strcasestr(sent_head, "\r\nExpect:"));
    assert_true(strncmp(sent_body, "{\"q\":1}xxx", 10) == 0);
}

/* ---- keep-alive reuse ----------------------------------------------------------------------- */

static rec_t reuse_recs[3];

static void reuse_next(rec_t *r) {
    int i = (int)(r - reuse_recs);
    if (i + 1 < 3)
        assert_int_equal(post(r->f, &reuse_recs[i + 1], "/fixed", safe_timeouts), 0);
}

static void test_reuse(void **state) {
    (void)state;
    fx_t f;
    fx_init(&f);
    f.want_dones = 3;
    for (int i = 0; i < 3; i++) {
        rec_init(&reuse_recs[i], &f);
        reuse_recs[i].after_done = reuse_next;
    }
    assert_int_equal(post(&f, &reuse_recs[0], "/fixed", safe_timeouts), 0);
    fx_run_and_close(&f);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(reuse_recs[i].done_status, 0);
        assert_int_equal(reuse_recs[i].bytes, 5);
        assert_memory_equal(reuse_recs[i].body, "hello", 5);
        assert_string_equal(reuse_recs[i].xtest, "fixed");
        assert_int_equal(reuse_recs[i].st.reused, i > 0);
    }
    assert_int_equal(f.accepted, 1);
    assert_int_equal(f.requests, 3);
}

/* ---- pause and resume ----------------------------------------------------------------------- */

#define BIG_TOTAL (8u * 1024 * 1024)

/* Resumes once the server's completed writes stopped growing for 250 ms: the kernel buffers are
 * full because curl stopped reading. Longer than the 100 ms idle timeout of the request, which
 * must not fire while paused. */
static void on_stall_check(uv_timer_t *t) {
    fx_t *f = t->data;
    uint64_t w = ths_written(f->srv);
    if (w != f->last_written) {
        f->last_written = w;
        f->stable_ticks = 0;
        return;
    }
    if (++f->stable_ticks < 10)
        return;
    uv_timer_stop(t);
    rec_t *r = f->paused;
    f->written_at_stall = w;
    assert_int_equal(r->data_while_paused, 0);
    r->paused_now = false;
    llm_http_resume(r->req);
}

static void test_pause_resume(void **state) {
    (void)state;
    fx_t f;
    fx_init(&f);
    f.want_dones = 1;
    rec_t r;
    rec_init(&r, &f);
    r.pause_at = 256 * 1024;
    llm_http_timeouts_t to = {2000, 2000, 100, 10000};
    char path[64];
    snprintf(path, sizeof path, "/big/%u", BIG_TOTAL);
    assert_int_equal(post(&f, &r, path, to), 0);
    uv_timer_start(&f.aux, on_stall_check, 25, 25);
    fx_run_and_close(&f);
    assert_non_null(f.paused);
    assert_true(f.written_at_stall > 0);
    assert_true(f.written_at_stall < BIG_TOTAL / 2); /* the server was held back */
    assert_int_equal(r.data_while_paused, 0);
    assert_int_equal(r.done_status, 0);
    assert_int_equal(r.bytes, BIG_TOTAL);
    assert_int_equal(r.st.bytes_in, BIG_TOTAL);
    assert_false(r.body_bad); /* in order, nothing lost or repeated around the pause */
}

/* ---- cancel --------------------------------------------------------------------------------- */

static void check_cancelled(fx_t *f, rec_t *r) {
    (void)f;
    assert_true(r->cancelled);
    assert_int_equal(r->after_cancel, 0);
    assert_int_equal(r->done_calls, 0);
}

static void test_cancel_later(void **state) {
    (void)state;
    fx_t f;
    fx_init(&f);
    f.want_peer_closes = 1;
    rec_t r;
    rec_init(&r, &f);
    r.cancel_later_at = 3;
    assert_int_equal(post(&f, &r, "/drip", safe_timeouts), 0);
    fx_run_and_close(&f);
    check_cancelled(&f, &r);
    assert_true(r.data_calls >= 3);
}

static void test_cancel_in_data(void **state) {
    (void)state;
    fx_t f;
    fx_init(&f);
    f.want_peer_closes = 1;
    rec_t r;
    rec_init(&r, &f);
    r.cancel_in_data_at = 3;
    assert_int_equal(post(&f, &r, "/drip", safe_timeouts), 0);
    fx_run_and_close(&f);
    check_cancelled(&f, &r);
    assert_int_equal(r.data_calls, 3);
}

static void test_cancel_in_headers(void **state) {
    (void)state;
    fx_t f;
    fx_init(&f);
    f.want_peer_closes = 1;
    rec_t r;
    rec_init(&r, &f);
    r.cancel_in_headers = true;
    assert_int_equal(post(&f, &r, "/drip", safe_timeouts), 0);
    fx_run_and_close(&f);
    check_cancelled(&f, &r);
    assert_int_equal(r.headers_calls, 1);
    assert_int_equal(r.data_calls, 0);
}

/* One request cancels another from inside its on_data: nothing reaches the cancelled one after
 * that, and both connections close. */
static void test_cancel_other(void **state) {
    (void)state;
    fx_t f;
    fx_init(&f);
    f.want_peer_closes = 2;
    rec_t a, b;
    rec_init(&a, &f);
    rec_init(&b, &f);
    /* Two streams at full speed, each cancelling the other once both had data; the survivor
     * cancels itself later. */
    a.cancel_other = &b;
    b.cancel_other = &a;
    a.cancel_in_data_at = b.cancel_in_data_at = 40;
    char path[64];
    snprintf(path, sizeof path, "/big/%u", 64u * 1024 * 1024);
    assert_int_equal(post(&f, &a, path, safe_timeouts), 0);
    assert_int_equal(post(&f, &b, path, safe_timeouts), 0);
    fx_run_and_close(&f);
    check_cancelled(&f, &a);
    check_cancelled(&f, &b);
    assert_true(a.data_calls >= 1 && b.data_calls >= 1);
}

/* ---- failures and timeouts ------------------------------------------------------------------ */

static int free_port(void) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof sa;
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&sa, &len), 0);
    close(fd);
    return ntohs(sa.sin_port);
}

static void test_refused(void **state) {
    (void)state;
    fx_t f;
    fx_init(&f);
    f.want_dones = 1;
    rec_t r;
    rec_init(&r, &f);
    char url[128];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/x", free_port());
    llm_http_post_t o = {
        .url = url, .timeouts = safe_timeouts, .cb = {rec_headers, rec_data, rec_done}, .ud = &r};
    r.t_post = uv_hrtime();
    assert_int_equal(llm_http_post(f.h, &o, &r.req), 0);
    fx_run_and_close(&f);
    assert_int_equal(r.done_calls, 1);
    assert_int_equal(r.done_status, UV_ECONNREFUSED);
    assert_int_equal(r.headers_calls, 0);
    assert_int_equal(r.st.http_status, 0);
    assert_true(ms_between(r.t_post, r.t_done) < 1000);
}

static void test_first_byte_timeout(void **state) {
    (void)state;
    fx_t f;
    fx_init(&f);
    f.want_peer_closes = 1;
    rec_t r;
    rec_init(&r, &f);
    /* The idle limit is shorter but does not apply before the first byte. */
    llm_http_timeouts_t to = {2000, 150, 50, 5000};
    assert_int_equal(post(&f, &r, "/hang", to), 0);
    fx_run_and_close(&f);
    assert_int_equal(r.done_calls, 1);
    assert_int_equal(r.done_status, LLM_HTTP_EFIRST_BYTE_TIMEOUT);
    assert_int_equal(r.headers_calls, 0);
    uint64_t ms = ms_between(r.t_post, r.t_done);
    assert_true(ms >= 149 && ms < 1000);
    assert_int_equal(f.requests, 1);
}

static void test_idle_timeout(void **state) {
    (void)state;
    fx_t f;
    fx_init(&f);
    f.want_peer_closes = 1;
    rec_t r;
    rec_init(&r, &f);
    llm_http_timeouts_t to = {2000, 2000, 150, 5000};
    assert_int_equal(post(&f, &r, "/stall", to), 0);
    fx_run_and_close(&f);
    assert_int_equal(r.done_calls, 1);
    assert_int_equal(r.done_status, LLM_HTTP_EIDLE_TIMEOUT);
    assert_int_equal(r.headers_calls, 1);
    assert_int_equal(r.data_calls, 1);
    uint64_t ms = ms_between(r.t_last_data, r.t_done);
    assert_true(ms >= 149 && ms < 1000);
    assert_int_equal(r.st.http_status, 200);
}

static void test_total_timeout(void **state) {
    (void)state;
    fx_t f;
    fx_init(&f);
    f.want_peer_closes = 1;
    rec_t r;
    rec_init(&r, &f);
    llm_http_timeouts_t to = {2000, 2000, 200, 300};
    assert_int_equal(post(&f, &r, "/drip", to), 0);
    fx_run_and_close(&f);
    assert_int_equal(r.done_calls, 1);
    assert_int_equal(r.done_status, LLM_HTTP_ETOTAL_TIMEOUT);
    assert_true(r.data_calls >= 5); /* the drip never left a 200 ms gap */
    uint64_t ms = ms_between(r.t_post, r.t_done);
    /* Deadlines run on the loop's clock, which libuv truncates to whole milliseconds. */
    assert_true(ms >= 299 && ms < 1500);
}

static void test_reset(void **state) {
    (void)state;
    fx_t f;
    fx_init(&f);
    f.want_dones = 1;
    rec_t r;
    rec_init(&r, &f);
    assert_int_equal(post(&f, &r, "/reset", safe_timeouts), 0);
    fx_run_and_close(&f);
    assert_int_equal(r.done_calls, 1);
    assert_int_equal(r.done_status, UV_ECONNRESET);
}

static void test_headers_too_big(void **state) {
    (void)state;
    fx_t f;
    fx_init(&f);
    f.want_dones = 1;
    rec_t r;
    rec_init(&r, &f);
    assert_int_equal(post(&f, &r, "/bighead", safe_timeouts), 0);
    fx_run_and_close(&f);
    assert_int_equal(r.done_calls, 1);
    assert_int_equal(r.done_status, LLM_HTTP_EHEADERS);
    assert_int_equal(r.headers_calls, 0);
}

static void test_error_status(void **state) {
    (void)state;
    fx_t f;
    fx_init(&f);
    f.want_dones = 1;
    rec_t r;
    rec_init(&r, &f);
    assert_int_equal(post(&f, &r, "/status/503", no_timeouts), 0);
    fx_run_and_close(&f);
    assert_int_equal(r.done_status, 0); /* the transfer completed; the status says the rest */
    assert_int_equal(r.http_status, 503);
    assert_int_equal(r.st.http_status, 503);
    assert_memory_equal(r.body, "busy", 4);
}

/* ---- many at once --------------------------------------------------------------------------- */

#define MANY 200

static void test_concurrent(void **state) {
    (void)state;
    fx_t f;
    fx_init(&f);
    f.want_dones = MANY;
    rec_t *recs = calloc(MANY, sizeof *recs);
    for (int i = 0; i < MANY; i++) {
        rec_init(&recs[i], &f);
        assert_int_equal(post(&f, &recs[i], "/stream/3", safe_timeouts), 0);
    }
    fx_run_and_close(&f);
    const char *want = "data: 0\n\ndata: 1\n\ndata: 2\n\n";
    for (int i = 0; i < MANY; i++) {
        assert_int_equal(recs[i].done_calls, 1);
        assert_int_equal(recs[i].done_status, 0);
        assert_int_equal(recs[i].bytes, strlen(want));
        assert_memory_equal(recs[i].body, want, strlen(want));
    }
    free(recs);
}

/* ---- closing with requests in flight -------------------------------------------------------- */

static int close_posts_after;

static void close_try_post(rec_t *r) {
    close_posts_after = post(r->f, &(rec_t){0}, "/fixed", safe_timeouts);
}

static int close_data(void *ud, const char *buf, size_t len) {
    rec_t *r = ud;
    fx_t *f = r->f;
    if (f->shut) {
        r->after_cancel++; /* nothing may be delivered after llm_http_close */
        return 0;
    }
    return rec_data(ud, buf, len);
}

static rec_t close_recs[3];

static int close_data_trigger(void *ud, const char *buf, size_t len) {
    int rc = close_data(ud, buf, len);
    rec_t *r = ud;
    bool all = true;
    for (int i = 0; i < 3; i++)
        all &= close_recs[i].data_calls > 0;
    if (all && !r->f->shut) {
        /* From inside a curl write callback. */
        r->f->shut = true;
        llm_http_close(r->f->h, on_h_closed, r->f);
    }
    return rc;
}

static void close_on_peer(void *ud) {
    fx_t *f = ud;
    if (ths_peer_closed(f->srv) == 3) {
        fx_snap(f);
        ths_close(f->srv);
        uv_close((uv_handle_t *)&f->aux, NULL);
    }
}

static void test_close_in_flight(void **state) {
    (void)state;
    fx_t f;
    fx_init(&f);
    ths_on_peer_closed(f.srv, close_on_peer, &f);
    for (int i = 0; i < 3; i++) {
        rec_init(&close_recs[i], &f);
        close_recs[i].after_done = close_try_post;
        char url[128];
        snprintf(url, sizeof url, "http://127.0.0.1:%d/drip", ths_port(f.srv));
        llm_http_post_t o = {.url = url,
                             .timeouts = safe_timeouts,
                             .cb = {rec_headers, close_data_trigger, rec_done},
                             .ud = &close_recs[i]};
        assert_int_equal(llm_http_post(f.h, &o, &close_recs[i].req), 0);
    }
    close_posts_after = 1;
    fx_run_and_close(&f);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(close_recs[i].done_calls, 1);
        assert_int_equal(close_recs[i].done_status, UV_ECANCELED);
        assert_int_equal(close_recs[i].after_cancel, 0);
    }
    assert_int_equal(close_posts_after, UV_ECANCELED);
    assert_int_equal(f.peer_closed, 3);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_stream),
        cmocka_unit_test(test_sent),
        cmocka_unit_test(test_reuse),
        cmocka_unit_test(test_pause_resume),
        cmocka_unit_test(test_cancel_later),
        cmocka_unit_test(test_cancel_in_data),
        cmocka_unit_test(test_cancel_in_headers),
        cmocka_unit_test(test_cancel_other),
        cmocka_unit_test(test_refused),
        cmocka_unit_test(test_first_byte_timeout),
        cmocka_unit_test(test_idle_timeout),
        cmocka_unit_test(test_total_timeout),
        cmocka_unit_test(test_reset),
        cmocka_unit_test(test_headers_too_big),
        cmocka_unit_test(test_error_status),
        cmocka_unit_test(test_concurrent),
        cmocka_unit_test(test_close_in_flight),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
