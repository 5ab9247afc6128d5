/* Unit tests for server/srv_config.c: the node's identity and the chat node's settings. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "server/server.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A host name becomes a valid node id whatever it holds: cut to 50 bytes, every character a
 * cookie or a key could not carry (and every ':') replaced, the bound port appended. */
static void test_node_id_default(void **state) {
    (void)state;
    char id[SRV_NODE_ID_MAX + 1];
    srv_node_id_default("web-1.example", 8000, id, sizeof id);
    assert_string_equal(id, "web-1.example:8000");
    srv_node_id_default("a b;c=d:e\"f", 1, id, sizeof id);
    assert_string_equal(id, "a-b-c-d-e-f:1");
    assert_true(srv_node_id_ok(id));
    char longname[120];
    memset(longname, 'h', sizeof longname - 1);
    longname[sizeof longname - 1] = '\0';
    srv_node_id_default(longname, 65535, id, sizeof id);
    assert_int_equal(strlen(id), 50 + 6);
    assert_true(srv_node_id_ok(id));
}

static void test_node_cookie(void **state) {
    (void)state;
    char cookie[128];
    srv_node_cookie("n1:8000", cookie, sizeof cookie);
    assert_string_equal(cookie, "chat_node=n1:8000; Path=/; HttpOnly; SameSite=Lax");
}

static void test_public_address(void **state) {
    (void)state;
    char out[300];
    srv_config_t cfg = {0};
    cfg.listen = "127.0.0.1:0";
    srv_public_address(&cfg, "box", 4321, out, sizeof out);
    assert_string_equal(out, "127.0.0.1:4321");
    cfg.listen = "0.0.0.0:8000";
    srv_public_address(&cfg, "box", 8000, out, sizeof out);
    assert_string_equal(out, "box:8000");
    cfg.advertise = "chat.example:443";
    srv_public_address(&cfg, "box", 8000, out, sizeof out);
    assert_string_equal(out, "chat.example:443");
}

static void test_config_chat(void **state) {
    (void)state;
    srv_config_t cfg = {0};
    cfg.rate_limits = "free=5/10,pro=0.5/3";
    cfg.typing_rate = "2/4";
    cfg.max_channels = 7;
    chat_config_t cc;
    chat_ns_t *ns;
    size_t nns;
    char err[256];
    assert_int_equal(srv_config_chat(&cfg, &cc, &ns, &nns, err, sizeof err), 0);
    assert_true(cc.plan_rate[AUTH_PLAN_FREE].rate == 5);
    assert_int_equal(cc.plan_rate[AUTH_PLAN_FREE].burst, 10);
    assert_true(cc.plan_rate[AUTH_PLAN_PRO].rate == 0.5);
    assert_int_equal(cc.plan_rate[AUTH_PLAN_PRO].burst, 3);
    assert_int_equal(cc.plan_rate[AUTH_PLAN_PLUS].burst, 0); /* not given: unset */
    assert_true(cc.typing_rate.rate == 2);
    assert_int_equal(cc.typing_rate.burst, 4);
    assert_int_equal(cc.max_channels_per_conn, 7);
    assert_true(nns > 0);
    assert_ptr_equal(cc.namespaces, ns);
    assert_int_equal(cc.n_namespaces, nns);
    chat_namespaces_free(ns, nns);
}

static void test_config_chat_errors(void **state) {
    (void)state;
    srv_config_t cfg = {0};
    chat_config_t cc;
    chat_ns_t *ns;
    size_t nns;
    char err[256];
    cfg.typing_rate = "2/4";
    cfg.rate_limits = "gold=5/10";
    assert_int_equal(srv_config_chat(&cfg, &cc, &ns, &nns, err, sizeof err), CORE_EINVAL);
    assert_string_equal(err, "CHAT_RATE_LIMITS: expected plan=rate/burst, got \"gold\"");
    assert_null(ns);
    cfg.rate_limits = "free=5/0";
    assert_int_equal(srv_config_chat(&cfg, &cc, &ns, &nns, err, sizeof err), CORE_EINVAL);
    cfg.rate_limits = "free=5/10";
    cfg.typing_rate = "2";
    assert_int_equal(srv_config_chat(&cfg, &cc, &ns, &nns, err, sizeof err), CORE_EINVAL);
    assert_string_equal(err, "CHAT_TYPING_RATE: expected rate/burst");
    cfg.typing_rate = "2/4";
    cfg.namespaces = "{not json";
    assert_int_equal(srv_config_chat(&cfg, &cc, &ns, &nns, err, sizeof err), CORE_EINVAL);
    assert_memory_equal(err, "CHAT_NAMESPACES: ", 17);
    assert_null(ns);
}

/* CHAT_ALLOWED_ORIGINS: exact origins without regard to case, '*' within one part only. */
static void test_origin_allowed(void **state) {
    (void)state;
    const char *list = "https://chat.example.com, https://*.example.org\thttp://127.0.0.1:*";
    assert_true(srv_origin_allowed(NULL, "https://any.example"));
    assert_true(srv_origin_allowed(list, NULL));
    assert_true(srv_origin_allowed(list, "https://chat.example.com"));
    assert_true(srv_origin_allowed(list, "HTTPS://CHAT.example.com"));
    assert_true(srv_origin_allowed(list, "https://a.b.example.org"));
    assert_true(srv_origin_allowed(list, "http://127.0.0.1:8000"));
    assert_false(srv_origin_allowed(list, "https://chat.example.com:8443"));
    assert_false(srv_origin_allowed(list, "https://chat.example.com.evil.example"));
    assert_false(srv_origin_allowed(list, "https://evil.example/x.example.org"));
    assert_false(srv_origin_allowed(list, "https://a.example.org:1"));
    assert_false(srv_origin_allowed(list, "http://127.0.0.1:80/x"));
    assert_false(srv_origin_allowed(list, ""));
    assert_true(srv_origin_allowed("*", "null"));
}

static void test_origins_checked_at_load(void **state) {
    (void)state;
    srv_config_t cfg;
    char err[256];
    setenv("CHAT_ALLOWED_ORIGINS", "chat.example.com", 1);
    assert_int_equal(srv_config_load(&cfg, NULL, err, sizeof err), CORE_EINVAL);
    assert_non_null(strstr(err, "CHAT_ALLOWED_ORIGINS"));
    srv_config_free(&cfg);
    setenv("CHAT_ALLOWED_ORIGINS", "https://chat.example.com https://*.example.org", 1);
    assert_int_equal(srv_config_load(&cfg, NULL, err, sizeof err), 0);
    srv_config_free(&cfg);
    unsetenv("CHAT_ALLOWED_ORIGINS");
}

/* CHAT_LISTEN: loopback without a secret, every interface with one, and a given value always
 * wins, whatever the allocator hands out. */
static void test_listen_default(void **state) {
    (void)state;
    srv_config_t cfg;
    char err[256];
    unsetenv("CHAT_LISTEN");
    unsetenv("CHAT_JWT_SECRET");
    assert_int_equal(srv_config_load(&cfg, NULL, err, sizeof err), 0);
    assert_string_equal(cfg.listen, "127.0.0.1:8000");
    srv_config_free(&cfg);
    setenv("CHAT_JWT_SECRET", "s3cret", 1);
    assert_int_equal(srv_config_load(&cfg, NULL, err, sizeof err), 0);
    assert_string_equal(cfg.listen, "0.0.0.0:8000");
    srv_config_free(&cfg);
    for (int i = 0; i < 2; i++) {
        setenv("CHAT_LISTEN", i ? "127.0.0.1:8000" : "127.0.0.1:0", 1);
        assert_int_equal(srv_config_load(&cfg, NULL, err, sizeof err), 0);
        assert_string_equal(cfg.listen, i ? "127.0.0.1:8000" : "127.0.0.1:0");
        srv_config_free(&cfg);
    }
    unsetenv("CHAT_LISTEN");
    unsetenv("CHAT_JWT_SECRET");
    assert_true(srv_listen_is_loopback("127.0.0.1:8000"));
    assert_true(srv_listen_is_loopback("localhost:1"));
    assert_false(srv_listen_is_loopback("0.0.0.0:8000"));
    assert_false(srv_listen_is_loopback("10.0.0.1:8000"));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_node_id_default),         cmocka_unit_test(test_node_cookie),
        cmocka_unit_test(test_public_address),          cmocka_unit_test(test_config_chat),
        cmocka_unit_test(test_config_chat_errors),      cmocka_unit_test(test_origin_allowed),
        cmocka_unit_test(test_origins_checked_at_load), cmocka_unit_test(test_listen_default),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
