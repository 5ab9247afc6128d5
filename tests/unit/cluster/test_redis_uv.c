/* Unit tests for cluster/cluster_redis_uv.c against a real redis-server on a loopback port
 * started by the test. Covered: a command round trip through the adapter, a refused connect
 * (which hangs forever with hiredis 0.14.1's own libuv adapter), connect timeouts, the
 * disconnect callback, cancelling, and REDIS_URL parsing. Every test runs its own loop and ends
 * with uv_loop_close() == 0. redis-server missing from PATH fails the suite with a message. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "cluster/cluster_redis_uv.h"
#include "tests/unit/redis_server.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static int redis_port;

static int start_redis(void **state) {
    (void)state;
    if (trs_start("test_redis_uv") != 0)
        return -1;
    redis_port = trs_port();
    return 0;
}

static int stop_redis(void **state) {
    (void)state;
    trs_stop();
    return 0;
}

/* ---- fixture: a loop with a watchdog, and what the callbacks saw --------------------------- */

typedef struct {
    uv_loop_t loop;
    uv_timer_t watchdog;
    bool stuck;
    int connects;
    int connect_status;
    bool connect_ac_null;
    int disconnects;
    int disconnect_status;
    char got[64];
    uint64_t t0, t_connect;
} fx_t;

static void on_watchdog(uv_timer_t *t) {
    fx_t *f = t->data;
    f->stuck = true;
    uv_stop(&f->loop);
}

static void fx_init(fx_t *f) {
    memset(f, 0, sizeof *f);
    f->connect_status = 1;
    f->disconnect_status = 1;
    assert_int_equal(uv_loop_init(&f->loop), 0);
    /* Unreferenced: it does not keep the loop alive, but stops a loop the code under test left
     * hanging, so a bug fails the test instead of hanging it. */
    uv_timer_init(&f->loop, &f->watchdog);
    f->watchdog.data = f;
    uv_timer_start(&f->watchdog, on_watchdog, 10000, 0);
    uv_unref((uv_handle_t *)&f->watchdog);
    f->t0 = uv_hrtime();
}

static void fx_run_and_close(fx_t *f) {
    uv_run(&f->loop, UV_RUN_DEFAULT);
    assert_false(f->stuck);
    uv_close((uv_handle_t *)&f->watchdog, NULL);
    uv_run(&f->loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&f->loop), 0);
}

static void on_connect_record(redisAsyncContext *ac, int status, void *ud) {
    fx_t *f = ud;
    f->connects++;
    f->connect_status = status;
    f->connect_ac_null = ac == NULL;
    f->t_connect = uv_hrtime();
}

static void on_disconnect_record(int status, void *ud) {
    fx_t *f = ud;
    f->disconnects++;
    f->disconnect_status = status;
}

static clu_redis_connect_opts_t opts_for(fx_t *f, int port, uint64_t timeout_ms) {
    return (clu_redis_connect_opts_t){.ip = "127.0.0.1",
                                      .port = port,
                                      .timeout_ms = timeout_ms,
                                      .on_connect = on_connect_record,
                                      .on_disconnect = on_disconnect_record,
                                      .ud = f};
}

static uint64_t elapsed_ms(const fx_t *f) {
    return (f->t_connect - f->t0) / 1000000u;
}

/* ---- SET/GET round trip --------------------------------------------------------------------- */

static void on_get(redisAsyncContext *ac, void *reply, void *priv) {
    fx_t *f = priv;
    redisReply *r = reply;
    assert_non_null(r);
    assert_int_equal(r->type, REDIS_REPLY_STRING);
    assert_true(r->len < sizeof f->got);
    memcpy(f->got, r->str, r->len); /* binary-safe: the value holds a NUL */
    redisAsyncDisconnect(ac);       /* clean: no reply pending after this one */
}

static void on_set(redisAsyncContext *ac, void *reply, void *priv) {
    redisReply *r = reply;
    assert_non_null(r);
    assert_int_equal(r->type, REDIS_REPLY_STATUS);
    assert_int_equal(redisAsyncCommand(ac, on_get, priv, "GET %s", "clu:test"), REDIS_OK);
}

static void on_connect_set(redisAsyncContext *ac, int status, void *ud) {
    on_connect_record(ac, status, ud);
    if (status == 0)
        assert_int_equal(
            redisAsyncCommand(ac, on_set, ud, "SET %s %b", "clu:test", "v\0x", (size_t)3),
            REDIS_OK);
}

static void test_set_get(void **state) {
    (void)state;
    fx_t f;
    fx_init(&f);
    clu_redis_connect_opts_t o = opts_for(&f, redis_port, 2000);
    o.on_connect = on_connect_set;
    o.db = 1; /* the handshake is SELECT 1 */
    redisAsyncContext *ac = NULL;
    assert_int_equal(clu_redis_connect(&f.loop, &o, &ac), 0);
    assert_non_null(ac);
    assert_int_equal(f.connects, 0); /* never from inside the call */
    fx_run_and_close(&f);
    assert_int_equal(f.connects, 1);
    assert_int_equal(f.connect_status, 0);
    assert_memory_equal(f.got, "v\0x", 3);
    assert_int_equal(f.disconnects, 1);
    assert_int_equal(f.disconnect_status, 0);
}

/* ---- the server closes the connection ------------------------------------------------------- */

static void on_quit(redisAsyncContext *ac, void *reply, void *priv) {
    (void)ac, (void)reply, (void)priv;
}

static void on_connect_quit(redisAsyncContext *ac, int status, void *ud) {
    on_connect_record(ac, status, ud);
    if (status == 0)
        redisAsyncCommand(ac, on_quit, NULL, "QUIT");
}

static void test_server_closes(void **state) {
    (void)state;
    fx_t f;
    fx_init(&f);
    clu_redis_connect_opts_t o = opts_for(&f, redis_port, 2000);
    o.on_connect = on_connect_quit;
    redisAsyncContext *ac = NULL;
    assert_int_equal(clu_redis_connect(&f.loop, &o, &ac), 0);
    fx_run_and_close(&f);
    assert_int_equal(f.connect_status, 0);
    assert_int_equal(f.disconnects, 1);
    assert_int_equal(f.disconnect_status, UV_EOF);
}

/* ---- refused connect ------------------------------------------------------------------------ */

static void test_refused(void **state) {
    (void)state;
    fx_t f;
    fx_init(&f);
    /* The timeout is a backstop: with hiredis's own adapter this attempt never calls back, so
     * the test would see CORE_ETIMEDOUT after 5 s instead of a refusal at once. */
    clu_redis_connect_opts_t o = opts_for(&f, trs_free_port(), 5000);
    redisAsyncContext *ac = NULL;
    int rc = clu_redis_connect(&f.loop, &o, &ac);
    if (rc == 0) {
        fx_run_and_close(&f);
        assert_int_equal(f.connects, 1);
        assert_int_equal(f.connect_status, UV_ECONNREFUSED);
        assert_true(f.connect_ac_null);
        assert_true(elapsed_ms(&f) < 1000);
    } else {
        /* Linux reports loopback refusals asynchronously; accept a synchronous one too. */
        assert_int_equal(rc, UV_ECONNREFUSED);
        assert_null(ac);
        fx_run_and_close(&f);
        assert_int_equal(f.connects, 0);
    }
    assert_int_equal(f.disconnects, 0);
}

/* ---- timeouts -------------------------------------------------------------------------------- */

/* A listening socket nobody ever accepts on or reads from. */
static int silent_listener(int *port) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    struct sockaddr_in sa;
    trs_loopback_addr(0, &sa);
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    assert_int_equal(listen(fd, 0), 0);
    socklen_t sl = sizeof sa;
    assert_int_equal(getsockname(fd, (struct sockaddr *)&sa, &sl), 0);
    *port = ntohs(sa.sin_port);
    return fd;
}

static void run_timeout_case(int port) {
    fx_t f;
    fx_init(&f);
    clu_redis_connect_opts_t o = opts_for(&f, port, 200);
    redisAsyncContext *ac = NULL;
    assert_int_equal(clu_redis_connect(&f.loop, &o, &ac), 0);
    fx_run_and_close(&f);
    assert_int_equal(f.connects, 1);
    assert_int_equal(f.connect_status, CORE_ETIMEDOUT);
    assert_true(f.connect_ac_null);
    assert_true(elapsed_ms(&f) >= 150 && elapsed_ms(&f) < 2000);
    assert_int_equal(f.disconnects, 0); /* never reported connected, so no disconnect */
}

/* The kernel completes the TCP handshake into the accept queue, so hiredis sees a connected
 * socket; the PING is never answered. Deterministic: no process ever reads the socket. */
static void test_timeout_connected_but_silent(void **state) {
    (void)state;
    int port;
    int lfd = silent_listener(&port);
    run_timeout_case(port);
    close(lfd);
}

/* With backlog 0, one completed connection fills Linux's accept queue and further SYNs are
 * dropped (not refused), so the TCP connect itself stays in progress until the timer fires.
 * Should a kernel still complete it, the unanswered PING gives the same result. */
static void test_timeout_connect_in_progress(void **state) {
    (void)state;
    int port;
    int lfd = silent_listener(&port);
    int filler = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa;
    trs_loopback_addr(port, &sa);
    assert_int_equal(connect(filler, (struct sockaddr *)&sa, sizeof sa), 0);
    run_timeout_case(port);
    close(filler);
    close(lfd);
}

/* ---- the caller frees the context before the attempt ends ----------------------------------- */

static void test_cancel(void **state) {
    (void)state;
    fx_t f;
    fx_init(&f);
    clu_redis_connect_opts_t o = opts_for(&f, redis_port, 2000);
    redisAsyncContext *ac = NULL;
    assert_int_equal(clu_redis_connect(&f.loop, &o, &ac), 0);
    redisAsyncFree(ac);
    assert_int_equal(f.connects, 1);
    assert_int_equal(f.connect_status, UV_ECANCELED);
    fx_run_and_close(&f);
    assert_int_equal(f.connects, 1);
    assert_int_equal(f.disconnects, 0);
}

/* ---- bad options and URL parsing ------------------------------------------------------------ */

static void test_bad_options(void **state) {
    (void)state;
    fx_t f;
    fx_init(&f);
    redisAsyncContext *ac = (redisAsyncContext *)&f; /* must be reset to NULL */
    clu_redis_connect_opts_t o = opts_for(&f, redis_port, 100);
    o.ip = "localhost"; /* would resolve with a blocking call */
    assert_int_equal(clu_redis_connect(&f.loop, &o, &ac), CORE_EINVAL);
    assert_null(ac);
    o = opts_for(&f, 0, 100);
    assert_int_equal(clu_redis_connect(&f.loop, &o, &ac), CORE_EINVAL);
    o = opts_for(&f, redis_port, 100);
    o.on_connect = NULL;
    assert_int_equal(clu_redis_connect(&f.loop, &o, &ac), CORE_EINVAL);
    assert_int_equal(clu_redis_uv_attach(NULL, &f.loop), CORE_EINVAL);
    fx_run_and_close(&f);
    assert_int_equal(f.connects, 0);
}

static void test_parse_url(void **state) {
    (void)state;
    clu_redis_addr_t a;
    assert_int_equal(clu_redis_parse_url("redis://127.0.0.1:6380/2", &a), 0);
    assert_string_equal(a.host, "127.0.0.1");
    assert_int_equal(a.port, 6380);
    assert_int_equal(a.db, 2);
    assert_int_equal(clu_redis_parse_url("redis://10.1.2.3", &a), 0);
    assert_string_equal(a.host, "10.1.2.3");
    assert_int_equal(a.port, 6379);
    assert_int_equal(a.db, 0);
    assert_int_equal(clu_redis_parse_url("redis://255.255.255.255:65535/", &a), 0);
    assert_int_equal(a.port, 65535);
    assert_int_equal(a.db, 0);

    static const char *const bad[] = {
        NULL,
        "",
        "redis://",
        "redis://localhost:6379",
        "redis://redis.internal",
        "rediss://127.0.0.1:6379",
        "http://127.0.0.1:6379",
        "redis://127.0.0.1:0",
        "redis://127.0.0.1:65536",
        "redis://127.0.0.1:",
        "redis://127.0.0.1:-1",
        "redis://127.0.0.1:+80",
        "redis://127.0.0.1:6379/x",
        "redis://127.0.0.1:6379/10000",
        "redis://127.0.0.1:6379/1/2",
        "redis://127.0.0.1:6379?db=1",
        "redis://user:pw@127.0.0.1:6379",
        "redis://:pw@127.0.0.1",
        "redis://[::1]:6379",
        "redis://127.1:6379",
        "redis://127.0.0.1.5:6379",
        "redis://1234567890123456789:1",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        a.port = -5;
        if (clu_redis_parse_url(bad[i], &a) != CORE_EINVAL)
            fail_msg("accepted %s", bad[i] ? bad[i] : "(null)");
        assert_int_equal(a.port, -5); /* untouched on error */
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_url),
        cmocka_unit_test(test_bad_options),
        cmocka_unit_test(test_set_get),
        cmocka_unit_test(test_server_closes),
        cmocka_unit_test(test_refused),
        cmocka_unit_test(test_timeout_connected_but_silent),
        cmocka_unit_test(test_timeout_connect_in_progress),
        cmocka_unit_test(test_cancel),
    };
    return cmocka_run_group_tests(tests, start_redis, stop_redis);
}
