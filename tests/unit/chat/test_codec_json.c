/* Unit tests for chat/chat_codec_json.c: command decoding, frame splitting, chat message
 * normalisation, the reply and push encoders, the ClientInfo record, and namespace options. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "chat/chat_int.h"

#include <stdlib.h>
#include <string.h>

/* ---- chat_cmd_decode --------------------------------------------------------------------- */

static int decode(const char *s, chat_cmd_t *cmd) {
    return chat_cmd_decode(s, strlen(s), cmd);
}

static void expect_eproto(const char *s, size_t len) {
    chat_cmd_t cmd;
    memset(&cmd, 0x5a, sizeof cmd);
    int rc = chat_cmd_decode(s, len, &cmd);
    if (rc != CORE_EPROTO)
        print_error("input accepted: %.*s\n", (int)len, s);
    assert_int_equal(rc, CORE_EPROTO);
    /* A refused command leaves nothing to clear. */
    assert_null(cmd.root);
    assert_null(cmd.params);
    assert_int_equal(cmd.id, 0);
    chat_cmd_clear(&cmd);
}

static void expect_eproto_z(const char *s) {
    expect_eproto(s, strlen(s));
}

static void test_decode_connect(void **state) {
    (void)state;
    chat_cmd_t cmd;
    assert_int_equal(decode("{\"id\":1,\"connect\":{\"token\":\"abc\",\"name\":\"js\"}}", &cmd), 0);
    assert_int_equal(cmd.id, 1);
    assert_int_equal(cmd.method, CHAT_M_CONNECT);
    assert_non_null(cmd.root);
    assert_true(json_is_object(cmd.params));
    assert_string_equal(json_string_value(json_object_get(cmd.params, "token")), "abc");
    assert_ptr_equal(cmd.params, json_object_get(cmd.root, "connect"));
    chat_cmd_clear(&cmd);
    assert_null(cmd.root);
    assert_null(cmd.params);

    /* Key order does not matter; null params decode as absent. */
    assert_int_equal(decode("{\"connect\":null,\"id\":4294967295}", &cmd), 0);
    assert_int_equal(cmd.id, UINT32_MAX);
    assert_int_equal(cmd.method, CHAT_M_CONNECT);
    assert_null(cmd.params);
    chat_cmd_clear(&cmd);
}

static void test_decode_subscribe_publish(void **state) {
    (void)state;
    chat_cmd_t cmd;
    assert_int_equal(decode("{\"id\":2,\"subscribe\":{\"channel\":\"chat:room\"}}", &cmd), 0);
    assert_int_equal(cmd.id, 2);
    assert_int_equal(cmd.method, CHAT_M_SUBSCRIBE);
    assert_string_equal(json_string_value(json_object_get(cmd.params, "channel")), "chat:room");
    chat_cmd_clear(&cmd);

    assert_int_equal(decode("{\"id\":3,\"publish\":{\"channel\":\"chat:room\",\"data\":"
                            "{\"type\":\"message\",\"text\":\"hi\"}}}",
                            &cmd),
                     0);
    assert_int_equal(cmd.id, 3);
    assert_int_equal(cmd.method, CHAT_M_PUBLISH);
    json_t *data = json_object_get(cmd.params, "data");
    assert_string_equal(json_string_value(json_object_get(data, "text")), "hi");
    chat_cmd_clear(&cmd);

    /* Every known method name maps to its value, and chat_method_name maps back. */
    for (int m = CHAT_M_CONNECT; m < CHAT_M_UNKNOWN; m++) {
        char buf[128];
        snprintf(buf, sizeof buf, "{\"id\":%d,\"%s\":{}}", m + 10, chat_method_name(m));
        assert_int_equal(decode(buf, &cmd), 0);
        assert_int_equal(cmd.method, m);
        assert_int_equal(cmd.id, m + 10);
        assert_true(json_is_object(cmd.params));
        chat_cmd_clear(&cmd);
    }
    assert_string_equal(chat_method_name(CHAT_M_PING), "ping");
    assert_string_equal(chat_method_name(CHAT_M_PRESENCE_STATS), "presence_stats");
    assert_string_equal(chat_method_name(CHAT_M_SUB_REFRESH), "sub_refresh");
    assert_string_equal(chat_method_name(CHAT_M_UNKNOWN), "unknown");
    assert_string_equal(chat_method_name(CHAT_M_COUNT), "unknown");
    assert_string_equal(chat_method_name((chat_method_t)1000), "unknown");
}

static void test_decode_ping_and_unknown(void **state) {
    (void)state;
    chat_cmd_t cmd;
    /* The empty object is the client's pong. */
    assert_int_equal(decode("{}", &cmd), 0);
    assert_int_equal(cmd.method, CHAT_M_PING);
    assert_int_equal(cmd.id, 0);
    assert_null(cmd.params);
    assert_non_null(cmd.root);
    chat_cmd_clear(&cmd);
    assert_int_equal(decode(" { } ", &cmd), 0);
    assert_int_equal(cmd.method, CHAT_M_PING);
    chat_cmd_clear(&cmd);

    /* An id without a method is an unknown command that still gets its reply. */
    assert_int_equal(decode("{\"id\":5}", &cmd), 0);
    assert_int_equal(cmd.method, CHAT_M_UNKNOWN);
    assert_int_equal(cmd.id, 5);
    assert_null(cmd.params);
    chat_cmd_clear(&cmd);

    assert_int_equal(decode("{\"id\":7,\"frobnicate\":{\"x\":1}}", &cmd), 0);
    assert_int_equal(cmd.method, CHAT_M_UNKNOWN);
    assert_int_equal(cmd.id, 7);
    chat_cmd_clear(&cmd);

    /* Method names are case sensitive. */
    assert_int_equal(decode("{\"id\":8,\"Connect\":{}}", &cmd), 0);
    assert_int_equal(cmd.method, CHAT_M_UNKNOWN);
    assert_int_equal(cmd.id, 8);
    chat_cmd_clear(&cmd);

    /* Unknown keys next to a method are ignored, before or after it. */
    assert_int_equal(decode("{\"id\":9,\"x\":[1],\"subscribe\":{\"channel\":\"a\"}}", &cmd), 0);
    assert_int_equal(cmd.method, CHAT_M_SUBSCRIBE);
    assert_int_equal(cmd.id, 9);
    chat_cmd_clear(&cmd);
    assert_int_equal(decode("{\"id\":9,\"subscribe\":{\"channel\":\"a\"},\"x\":\"y\"}", &cmd), 0);
    assert_int_equal(cmd.method, CHAT_M_SUBSCRIBE);
    assert_string_equal(json_string_value(json_object_get(cmd.params, "channel")), "a");
    chat_cmd_clear(&cmd);
}

static void test_decode_send_without_id(void **state) {
    (void)state;
    chat_cmd_t cmd;
    assert_int_equal(decode("{\"send\":{\"data\":{\"k\":1}}}", &cmd), 0);
    assert_int_equal(cmd.method, CHAT_M_SEND);
    assert_int_equal(cmd.id, 0);
    assert_true(json_is_object(cmd.params));
    chat_cmd_clear(&cmd);
    /* With an id it is fine too. */
    assert_int_equal(decode("{\"id\":12,\"send\":{}}", &cmd), 0);
    assert_int_equal(cmd.method, CHAT_M_SEND);
    assert_int_equal(cmd.id, 12);
    chat_cmd_clear(&cmd);
}

static void test_decode_length_respected(void **state) {
    (void)state;
    chat_cmd_t cmd;
    /* Only len bytes are parsed: the rest of the buffer is not part of the command. */
    const char *buf = "{}{\"id\":1}";
    assert_int_equal(chat_cmd_decode(buf, 2, &cmd), 0);
    assert_int_equal(cmd.method, CHAT_M_PING);
    chat_cmd_clear(&cmd);
    /* An unterminated copy: ASan catches any read past len. */
    const char src[] = "{\"id\":3,\"history\":{\"channel\":\"c\"}}";
    char *heap = malloc(sizeof src - 1);
    assert_non_null(heap);
    memcpy(heap, src, sizeof src - 1);
    assert_int_equal(chat_cmd_decode(heap, sizeof src - 1, &cmd), 0);
    assert_int_equal(cmd.method, CHAT_M_HISTORY);
    assert_int_equal(cmd.id, 3);
    chat_cmd_clear(&cmd);
    expect_eproto(heap, sizeof src - 2);
    free(heap);
}

static void test_decode_malformed(void **state) {
    (void)state;
    expect_eproto_z("");
    expect_eproto_z(" ");
    expect_eproto_z("{");
    expect_eproto_z("{\"id\":1,");
    expect_eproto_z("{\"id\":1,\"connect\":{}");
    expect_eproto_z("{'id':1}");
    expect_eproto_z("{\"id\":1,\"connect\":{},}");
    expect_eproto_z("{} {}");
    expect_eproto_z("{}x");
    expect_eproto_z("nope");
    /* Not an object at the root. */
    expect_eproto_z("[]");
    expect_eproto_z("[{\"id\":1,\"connect\":{}}]");
    expect_eproto_z("\"connect\"");
    expect_eproto_z("1");
    expect_eproto_z("null");
    expect_eproto_z("true");
}

static void test_decode_invalid_utf8(void **state) {
    (void)state;
    expect_eproto_z("{\"id\":1,\"connect\":{\"token\":\"\xff\"}}");
    expect_eproto_z("{\"id\":1,\"connect\":{\"token\":\"\xc3\"}}");         /* truncated */
    expect_eproto_z("{\"id\":1,\"connect\":{\"token\":\"\xc0\xaf\"}}");     /* overlong */
    expect_eproto_z("{\"id\":1,\"connect\":{\"token\":\"\xed\xa0\x80\"}}"); /* surrogate */
    expect_eproto_z("{\"id\":1,\"\xfe\":{}}");
    /* A raw NUL byte inside the text. */
    static const char nul[] = "{\"id\":1,\"connect\":{\"t\":\"a\0b\"}}";
    expect_eproto(nul, sizeof nul - 1);
    /* Valid multi-byte UTF-8 is accepted. */
    chat_cmd_t cmd;
    assert_int_equal(
        decode("{\"id\":1,\"connect\":{\"name\":\"h\xc3\xa9 \xf0\x9f\x98\x80\"}}", &cmd), 0);
    assert_string_equal(json_string_value(json_object_get(cmd.params, "name")),
                        "h\xc3\xa9 \xf0\x9f\x98\x80");
    chat_cmd_clear(&cmd);
}

static void test_decode_bad_id(void **state) {
    (void)state;
    expect_eproto_z("{\"id\":-1,\"connect\":{}}");
    expect_eproto_z("{\"id\":4294967296,\"connect\":{}}");
    expect_eproto_z("{\"id\":99999999999999999999,\"connect\":{}}");
    expect_eproto_z("{\"id\":\"1\",\"connect\":{}}");
    expect_eproto_z("{\"id\":1.0,\"connect\":{}}");
    expect_eproto_z("{\"id\":1.5,\"connect\":{}}");
    expect_eproto_z("{\"id\":true,\"connect\":{}}");
    expect_eproto_z("{\"id\":null,\"connect\":{}}");
    expect_eproto_z("{\"id\":{},\"connect\":{}}");
    expect_eproto_z("{\"id\":-1}");
    expect_eproto_z("{\"id\":\"5\"}");
}

static void test_decode_bad_params(void **state) {
    (void)state;
    expect_eproto_z("{\"id\":1,\"connect\":[]}");
    expect_eproto_z("{\"id\":1,\"connect\":\"token\"}");
    expect_eproto_z("{\"id\":1,\"subscribe\":1}");
    expect_eproto_z("{\"id\":1,\"publish\":true}");
    expect_eproto_z("{\"send\":[1]}");
}

static void test_decode_several_methods(void **state) {
    (void)state;
    expect_eproto_z("{\"id\":1,\"connect\":{},\"subscribe\":{}}");
    expect_eproto_z("{\"id\":1,\"publish\":{},\"history\":null}");
    expect_eproto_z("{\"send\":{},\"rpc\":{}}");
    expect_eproto_z("{\"id\":1,\"x\":{},\"connect\":{},\"y\":{},\"presence\":{}}");
}

static void test_decode_duplicate_keys(void **state) {
    (void)state;
    expect_eproto_z("{\"id\":1,\"id\":2,\"connect\":{}}");
    expect_eproto_z("{\"id\":1,\"connect\":{},\"connect\":{}}");
    expect_eproto_z("{\"id\":1,\"connect\":{\"token\":\"a\",\"token\":\"b\"}}");
}

static void test_decode_missing_id(void **state) {
    (void)state;
    expect_eproto_z("{\"connect\":{}}");
    expect_eproto_z("{\"subscribe\":{\"channel\":\"a\"}}");
    expect_eproto_z("{\"publish\":{\"channel\":\"a\",\"data\":{}}}");
    expect_eproto_z("{\"rpc\":{}}");
    expect_eproto_z("{\"presence\":null}");
    expect_eproto_z("{\"frobnicate\":{}}");
    /* id 0 is no id. */
    expect_eproto_z("{\"id\":0,\"connect\":{}}");
    expect_eproto_z("{\"id\":0,\"history\":{}}");
}

/* ---- chat_frame_next --------------------------------------------------------------------- */

typedef struct {
    char lines[8][64];
    size_t n;
} split_t;

static void split(const char *frame, size_t len, split_t *out) {
    memset(out, 0, sizeof *out);
    size_t pos = 0;
    const char *line;
    size_t n;
    while (chat_frame_next(frame, len, &pos, &line, &n)) {
        assert_true(out->n < 8);
        assert_true(n > 0 && n < 64);
        assert_true(line >= frame && line + n <= frame + len);
        assert_null(memchr(line, '\n', n));
        memcpy(out->lines[out->n++], line, n);
        assert_true(pos <= len);
    }
    assert_int_equal(pos, len);
    /* Done stays done. */
    assert_false(chat_frame_next(frame, len, &pos, &line, &n));
}

static void test_frame_split(void **state) {
    (void)state;
    split_t s;
    const char *f = "{\"id\":1,\"connect\":{}}\n{\"id\":2,\"subscribe\":{}}\n{}";
    split(f, strlen(f), &s);
    assert_int_equal(s.n, 3);
    assert_string_equal(s.lines[0], "{\"id\":1,\"connect\":{}}");
    assert_string_equal(s.lines[1], "{\"id\":2,\"subscribe\":{}}");
    assert_string_equal(s.lines[2], "{}");

    /* Each split line decodes on its own. */
    size_t pos = 0, n;
    const char *line;
    chat_method_t want[] = {CHAT_M_CONNECT, CHAT_M_SUBSCRIBE, CHAT_M_PING};
    for (int i = 0; i < 3; i++) {
        assert_true(chat_frame_next(f, strlen(f), &pos, &line, &n));
        chat_cmd_t cmd;
        assert_int_equal(chat_cmd_decode(line, n, &cmd), 0);
        assert_int_equal(cmd.method, want[i]);
        chat_cmd_clear(&cmd);
    }

    split("single", 6, &s);
    assert_int_equal(s.n, 1);
    assert_string_equal(s.lines[0], "single");
}

static void test_frame_crlf_blank_trailing(void **state) {
    (void)state;
    split_t s;
    split("a\r\nb\r\n", 6, &s);
    assert_int_equal(s.n, 2);
    assert_string_equal(s.lines[0], "a");
    assert_string_equal(s.lines[1], "b");

    split("\n\na\n\n\r\n  \nb\n\n", 13, &s);
    assert_int_equal(s.n, 2);
    assert_string_equal(s.lines[0], "a");
    assert_string_equal(s.lines[1], "b");

    split("{}\n", 3, &s);
    assert_int_equal(s.n, 1);
    assert_string_equal(s.lines[0], "{}");

    split("x \r", 3, &s);
    assert_int_equal(s.n, 1);
    assert_string_equal(s.lines[0], "x");

    split("", 0, &s);
    assert_int_equal(s.n, 0);
    split("\n", 1, &s);
    assert_int_equal(s.n, 0);
    split("\r\n\r\n", 4, &s);
    assert_int_equal(s.n, 0);

    /* Only frame_len bytes are looked at. */
    split("ab\ncd", 2, &s);
    assert_int_equal(s.n, 1);
    assert_string_equal(s.lines[0], "ab");
}

/* ---- chat_message_normalize -------------------------------------------------------------- */

static char *normalize_text(const char *json, uint32_t max, char *msg_id, char *err) {
    json_error_t e;
    json_t *data = json_loads(json, JSON_DECODE_ANY, &e);
    assert_non_null(data);
    strcpy(msg_id, "stale");
    err[0] = '\0';
    char *out = chat_message_normalize(data, max, 1700000000123, msg_id, err, 128);
    json_decref(data);
    return out;
}

static void expect_refused(const char *json, uint32_t max) {
    char msg_id[65], err[128];
    char *out = normalize_text(json, max, msg_id, err);
    if (out)
        print_error("accepted: %s -> %s\n", json, out);
    assert_null(out);
    assert_true(err[0] != '\0');
    assert_int_equal(msg_id[0], '\0');
}

static void test_normalize_valid(void **state) {
    (void)state;
    char msg_id[65], err[128];
    char *out = normalize_text(
        "{\"type\":\"message\",\"text\":\"hi\",\"role\":\"assistant\",\"client_msg_id\":\"m-1\","
        "\"extra\":{\"a\":1}}",
        4096, msg_id, err);
    assert_non_null(out);
    assert_string_equal(
        out,
        "{\"type\":\"message\",\"text\":\"hi\",\"client_msg_id\":\"m-1\",\"ts\":1700000000123}");
    assert_string_equal(msg_id, "m-1");
    free(out);

    /* A client's own "ts" is replaced by the server's. */
    out = normalize_text("{\"type\":\"message\",\"text\":\"t\",\"ts\":5}", 4096, msg_id, err);
    assert_string_equal(out, "{\"type\":\"message\",\"text\":\"t\",\"ts\":1700000000123}");
    free(out);

    /* Without client_msg_id (absent or null) msg_id is empty. */
    out = normalize_text("{\"text\":\"yo\",\"type\":\"message\"}", 4096, msg_id, err);
    assert_string_equal(out, "{\"type\":\"message\",\"text\":\"yo\",\"ts\":1700000000123}");
    assert_int_equal(msg_id[0], '\0');
    free(out);
    out = normalize_text("{\"type\":\"message\",\"text\":\"yo\",\"client_msg_id\":null}", 4096,
                         msg_id, err);
    assert_string_equal(out, "{\"type\":\"message\",\"text\":\"yo\",\"ts\":1700000000123}");
    assert_int_equal(msg_id[0], '\0');
    free(out);

    /* Escapes and UTF-8 survive the round trip. */
    out =
        normalize_text("{\"type\":\"message\",\"text\":\"a\\\"b\\nc \\u00e9\"}", 4096, msg_id, err);
    assert_non_null(out);
    json_t *back = json_loads(out, 0, NULL);
    assert_non_null(back);
    assert_string_equal(json_string_value(json_object_get(back, "text")), "a\"b\nc \xc3\xa9");
    assert_int_equal(json_object_size(back), 3);
    json_decref(back);
    free(out);
}

static void test_normalize_text_rules(void **state) {
    (void)state;
    expect_refused("{\"type\":\"message\"}", 4096);
    expect_refused("{\"type\":\"message\",\"text\":\"\"}", 4096);
    expect_refused("{\"type\":\"message\",\"text\":null}", 4096);
    expect_refused("{\"type\":\"message\",\"text\":5}", 4096);
    expect_refused("{\"type\":\"message\",\"text\":[\"a\"]}", 4096);
    expect_refused("{\"type\":\"message\",\"text\":{}}", 4096);
    /* type is required and must be "message". */
    expect_refused("{\"text\":\"hi\"}", 4096);
    expect_refused("{\"type\":\"msg\",\"text\":\"hi\"}", 4096);
    expect_refused("{\"type\":1,\"text\":\"hi\"}", 4096);
    expect_refused("{\"type\":\"Message\",\"text\":\"hi\"}", 4096);
    /* Not an object. */
    expect_refused("[]", 4096);
    expect_refused("\"message\"", 4096);
    expect_refused("42", 4096);
    expect_refused("null", 4096);
    char msg_id[65] = "x", err[128] = "";
    assert_null(chat_message_normalize(NULL, 4096, 1, msg_id, err, sizeof err));
    assert_int_equal(msg_id[0], '\0');
    assert_true(err[0] != '\0');
}

static void test_normalize_text_length(void **state) {
    (void)state;
    char msg_id[65], err[128];
    /* Exactly max bytes is fine; one more is refused. Bytes, not characters. */
    char *out = normalize_text("{\"type\":\"message\",\"text\":\"0123456789\"}", 10, msg_id, err);
    assert_non_null(out);
    free(out);
    expect_refused("{\"type\":\"message\",\"text\":\"0123456789a\"}", 10);
    out = normalize_text(
        "{\"type\":\"message\",\"text\":\"\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\"}", 10, msg_id,
        err);
    assert_non_null(out);
    free(out);
    expect_refused("{\"type\":\"message\",\"text\":\"\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9x\"}",
                   10);

    /* Same at the default 4096. */
    char *big = malloc(4096 + 64);
    assert_non_null(big);
    for (int extra = 0; extra <= 1; extra++) {
        int n = snprintf(big, 64, "{\"type\":\"message\",\"text\":\"");
        memset(big + n, 'x', 4096 + (size_t)extra);
        strcpy(big + n + 4096 + extra, "\"}");
        if (extra) {
            expect_refused(big, 4096);
        } else {
            out = normalize_text(big, 4096, msg_id, err);
            assert_non_null(out);
            free(out);
        }
    }
    free(big);
}

static void test_normalize_nul(void **state) {
    (void)state;
    char msg_id[65] = "", err[128] = "";
    json_t *data = json_object();
    json_object_set_new(data, "type", json_string("message"));
    json_object_set_new(data, "text", json_stringn("a\0b", 3));
    assert_null(chat_message_normalize(data, 4096, 1, msg_id, err, sizeof err));
    assert_true(err[0] != '\0');
    /* A NUL in client_msg_id is refused as well. */
    json_object_set_new(data, "text", json_string("ok"));
    json_object_set_new(data, "client_msg_id", json_stringn("a\0b", 3));
    err[0] = '\0';
    assert_null(chat_message_normalize(data, 4096, 1, msg_id, err, sizeof err));
    assert_true(err[0] != '\0');
    assert_int_equal(msg_id[0], '\0');
    json_decref(data);
}

static void test_normalize_client_msg_id(void **state) {
    (void)state;
    char msg_id[65], err[128];
    char id64[65], id65[66], json[256];
    memset(id64, 'i', 64);
    id64[64] = '\0';
    memset(id65, 'j', 65);
    id65[65] = '\0';

    snprintf(json, sizeof json, "{\"type\":\"message\",\"text\":\"t\",\"client_msg_id\":\"%s\"}",
             id64);
    char *out = normalize_text(json, 4096, msg_id, err);
    assert_non_null(out);
    assert_string_equal(msg_id, id64);
    json_t *back = json_loads(out, 0, NULL);
    assert_string_equal(json_string_value(json_object_get(back, "client_msg_id")), id64);
    json_decref(back);
    free(out);

    snprintf(json, sizeof json, "{\"type\":\"message\",\"text\":\"t\",\"client_msg_id\":\"%s\"}",
             id65);
    expect_refused(json, 4096);
    expect_refused("{\"type\":\"message\",\"text\":\"t\",\"client_msg_id\":\"\"}", 4096);
    expect_refused("{\"type\":\"message\",\"text\":\"t\",\"client_msg_id\":7}", 4096);
    expect_refused("{\"type\":\"message\",\"text\":\"t\",\"client_msg_id\":{}}", 4096);
}

/* ---- encoders ---------------------------------------------------------------------------- */

/* Each encoder's output is compared with the exact text clients get: field names, order and
 * omissions are what SDKs and the integration tests read. Every message must also be one valid
 * JSON object. */
static void expect_json(const core_str_t *s, const char *want) {
    assert_non_null(s->ptr);
    assert_string_equal(s->ptr, want);
    assert_int_equal(s->len, strlen(want));
    json_t *doc = json_loadb(s->ptr, s->len, JSON_REJECT_DUPLICATES, NULL);
    assert_true(json_is_object(doc));
    json_decref(doc);
}

static void expect_reply(const chat_reply_t *r, const char *want) {
    core_str_t s = {0};
    chat__codec_json.reply(&s, r);
    expect_json(&s, want);
    core_str_free(&s);
}

static void expect_push(const chat_push_t *p, const char *want) {
    core_str_t s = {0};
    chat__codec_json.push(&s, p);
    expect_json(&s, want);
    core_str_free(&s);
}

#define INFO_U2 "{\"user\":\"u2\",\"client\":\"c-2\"}"

static const clu_pub_t pubs2[] = {
    {5, "{\"text\":\"a\"}", 12, INFO_U2, sizeof INFO_U2 - 1, NULL},
    {6, "[1,2]", 5, NULL, 0, NULL},
};

static void test_encode_connect(void **state) {
    (void)state;
    chat_reply_t r = {.id = 1, .method = CHAT_M_CONNECT};
    r.connect = (chat_connect_result_t){
        .client = "c-1", .version = "1.2.3", .ping = 25, .pong = true, .node = "n1"};
    expect_reply(&r, "{\"id\":1,\"connect\":{\"client\":\"c-1\",\"version\":\"1.2.3\",\"ping\":25,"
                     "\"pong\":true,\"node\":\"n1\"}}");

    /* A token with exp, and server-side subscriptions in the order of their answers: one with
     * history that recovered, one without history (an empty result). */
    chat_connect_sub_t subs[2] = {
        {"personal:#u1",
         {.recoverable = true,
          .positioned = true,
          .epoch = "ep",
          .offset = 6,
          .was_recovering = true,
          .recovered = true,
          .pubs = pubs2,
          .npubs = 2}},
        {"news", {0}},
    };
    r.id = 7;
    r.connect.expires = true;
    r.connect.ttl = 60;
    r.connect.subs = subs;
    r.connect.nsubs = 2;
    expect_reply(&r,
                 "{\"id\":7,\"connect\":{\"client\":\"c-1\",\"version\":\"1.2.3\",\"expires\":true,"
                 "\"ttl\":60,\"ping\":25,\"pong\":true,\"node\":\"n1\",\"subs\":{"
                 "\"personal:#u1\":{\"recoverable\":true,\"positioned\":true,\"epoch\":\"ep\","
                 "\"offset\":6,\"was_recovering\":true,\"recovered\":true,\"publications\":["
                 "{\"data\":{\"text\":\"a\"},\"offset\":5,\"info\":" INFO_U2 "},"
                 "{\"data\":[1,2],\"offset\":6}]},\"news\":{}}}}");
}

static void test_encode_refresh(void **state) {
    (void)state;
    chat_reply_t r = {.id = 3, .method = CHAT_M_REFRESH};
    r.refresh = (chat_refresh_result_t){"c-1", "1.2.3", false, 0};
    expect_reply(&r, "{\"id\":3,\"refresh\":{\"client\":\"c-1\",\"version\":\"1.2.3\"}}");
    r.refresh = (chat_refresh_result_t){"c-1", "1.2.3", true, 0};
    expect_reply(&r, "{\"id\":3,\"refresh\":{\"client\":\"c-1\",\"version\":\"1.2.3\","
                     "\"expires\":true,\"ttl\":0}}");
}

static void test_encode_subscribe(void **state) {
    (void)state;
    chat_reply_t r = {.id = 2, .method = CHAT_M_SUBSCRIBE};
    /* No history, no recovery, no expiry. */
    expect_reply(&r, "{\"id\":2,\"subscribe\":{}}");

    r.subscribe = (chat_subscribe_result_t){
        .recoverable = true, .positioned = true, .epoch = "e1", .offset = 0};
    expect_reply(&r, "{\"id\":2,\"subscribe\":{\"recoverable\":true,\"positioned\":true,"
                     "\"epoch\":\"e1\",\"offset\":0}}");

    /* A recovery that could not be complete: no recovered flag, no publications. */
    r.subscribe.offset = 42;
    r.subscribe.was_recovering = true;
    expect_reply(&r, "{\"id\":2,\"subscribe\":{\"recoverable\":true,\"positioned\":true,"
                     "\"epoch\":\"e1\",\"offset\":42,\"was_recovering\":true}}");

    /* Recovered with nothing missed: no publications array. */
    r.subscribe.recovered = true;
    r.subscribe.expires = true;
    r.subscribe.ttl = 30;
    expect_reply(&r, "{\"id\":2,\"subscribe\":{\"recoverable\":true,\"positioned\":true,"
                     "\"epoch\":\"e1\",\"offset\":42,\"was_recovering\":true,\"recovered\":true,"
                     "\"expires\":true,\"ttl\":30}}");

    /* Without history the first member written is a later one: no stray comma. */
    r.subscribe = (chat_subscribe_result_t){.was_recovering = true, .expires = true, .ttl = 9};
    expect_reply(&r, "{\"id\":2,\"subscribe\":{\"was_recovering\":true,\"expires\":true,"
                     "\"ttl\":9}}");
    r.subscribe = (chat_subscribe_result_t){.expires = true, .ttl = 9};
    expect_reply(&r, "{\"id\":2,\"subscribe\":{\"expires\":true,\"ttl\":9}}");

    /* The epoch is a JSON string, escaped. */
    r.subscribe = (chat_subscribe_result_t){
        .recoverable = true, .positioned = true, .epoch = "a\"b", .offset = 1};
    expect_reply(&r, "{\"id\":2,\"subscribe\":{\"recoverable\":true,\"positioned\":true,"
                     "\"epoch\":\"a\\\"b\",\"offset\":1}}");
}

static void test_encode_sub_refresh_and_empty(void **state) {
    (void)state;
    chat_reply_t r = {.id = 4, .method = CHAT_M_SUB_REFRESH};
    expect_reply(&r, "{\"id\":4,\"sub_refresh\":{}}");
    r.sub_refresh = (chat_sub_refresh_result_t){true, 12};
    expect_reply(&r, "{\"id\":4,\"sub_refresh\":{\"expires\":true,\"ttl\":12}}");
    expect_reply(&(chat_reply_t){.id = 10, .method = CHAT_M_PUBLISH}, "{\"id\":10,\"publish\":{}}");
    expect_reply(&(chat_reply_t){.id = 11, .method = CHAT_M_UNSUBSCRIBE},
                 "{\"id\":11,\"unsubscribe\":{}}");
}

static void test_encode_presence(void **state) {
    (void)state;
    chat_reply_t r = {.id = 5, .method = CHAT_M_PRESENCE};
    expect_reply(&r, "{\"id\":5,\"presence\":{\"presence\":{}}}");
    static const char info1[] =
        "{\"user\":\"u1\",\"client\":\"c-1\",\"conn_info\":{\"name\":\"A\"}}";
    const clu_presence_t e[2] = {{"c-1", "u1", info1, sizeof info1 - 1},
                                 {"c-2", "u2", INFO_U2, sizeof INFO_U2 - 1}};
    r.presence = (chat_presence_result_t){e, 2};
    expect_reply(&r, "{\"id\":5,\"presence\":{\"presence\":{\"c-1\":{\"user\":\"u1\",\"client\":"
                     "\"c-1\",\"conn_info\":{\"name\":\"A\"}},\"c-2\":" INFO_U2 "}}}");

    r = (chat_reply_t){.id = 6, .method = CHAT_M_PRESENCE_STATS};
    r.presence_stats = (chat_presence_stats_result_t){3, 2};
    expect_reply(&r, "{\"id\":6,\"presence_stats\":{\"num_clients\":3,\"num_users\":2}}");
}

static void test_encode_history(void **state) {
    (void)state;
    chat_reply_t r = {.id = 8, .method = CHAT_M_HISTORY};
    r.history = (chat_history_result_t){NULL, 0, "e", 0};
    expect_reply(&r, "{\"id\":8,\"history\":{\"publications\":[],\"epoch\":\"e\",\"offset\":0}}");
    r.history = (chat_history_result_t){pubs2, 2, "ep", 9223372036854775807u};
    expect_reply(&r, "{\"id\":8,\"history\":{\"publications\":[{\"data\":{\"text\":\"a\"},"
                     "\"offset\":5,\"info\":" INFO_U2 "},{\"data\":[1,2],\"offset\":6}],"
                     "\"epoch\":\"ep\",\"offset\":9223372036854775807}}");
}

static void test_encode_rpc_and_error(void **state) {
    (void)state;
    chat_reply_t r = {.id = 9, .method = CHAT_M_RPC};
    /* The handler's data goes out as it is, and only its length counts. */
    r.rpc = (chat_rpc_result_t){"{\"x\":[1,2]}trailing", 11};
    expect_reply(&r, "{\"id\":9,\"rpc\":{\"data\":{\"x\":[1,2]}}}");
    r.rpc = (chat_rpc_result_t){"{}", 2};
    expect_reply(&r, "{\"id\":9,\"rpc\":{\"data\":{}}}");

    core_str_t s = {0};
    chat__codec_json.error(&s, 12, 100, "a \"quoted\"\nmessage", true);
    expect_json(&s,
                "{\"id\":12,\"error\":{\"code\":100,\"message\":\"a \\\"quoted\\\"\\u000amessage\","
                "\"temporary\":true}}");
    core_str_free(&s);
    chat__codec_json.error(&s, 13, 103, "permission denied", false);
    expect_json(&s, "{\"id\":13,\"error\":{\"code\":103,\"message\":\"permission denied\"}}");
    core_str_free(&s);
}

static void test_encode_pushes(void **state) {
    (void)state;
    expect_push(&(chat_push_t){.channel = "chat:room", .kind = CHAT_PUSH_PUB, .pub = &pubs2[0]},
                "{\"push\":{\"channel\":\"chat:room\",\"pub\":{\"data\":{\"text\":\"a\"},"
                "\"offset\":5,\"info\":" INFO_U2 "}}}");
    /* Not stored (no offset), no publisher info. */
    static const char tdata[] = "{\"type\":\"typing\",\"user\":\"u\"}";
    const clu_pub_t typing = {0, tdata, sizeof tdata - 1, NULL, 0, NULL};
    expect_push(&(chat_push_t){.channel = "typing:room", .kind = CHAT_PUSH_PUB, .pub = &typing},
                "{\"push\":{\"channel\":\"typing:room\",\"pub\":{\"data\":{\"type\":\"typing\","
                "\"user\":\"u\"}}}}");
    expect_push(&(chat_push_t){.channel = "chat:r\"1",
                               .kind = CHAT_PUSH_JOIN,
                               .member = {INFO_U2, sizeof INFO_U2 - 1}},
                "{\"push\":{\"channel\":\"chat:r\\\"1\",\"join\":{\"info\":" INFO_U2 "}}}");
    expect_push(&(chat_push_t){.channel = "chat:room",
                               .kind = CHAT_PUSH_LEAVE,
                               .member = {INFO_U2, sizeof INFO_U2 - 1}},
                "{\"push\":{\"channel\":\"chat:room\",\"leave\":{\"info\":" INFO_U2 "}}}");

    core_str_t s = {0};
    chat__codec_json.ping(&s);
    expect_json(&s, "{}");
    core_str_free(&s);
}

static void test_client_info_record(void **state) {
    (void)state;
    size_t len;
    char *rec = chat__client_info_record(&(chat_client_info_t){"u\"1", "c-1", NULL, NULL}, &len);
    assert_string_equal(rec, "{\"user\":\"u\\\"1\",\"client\":\"c-1\"}");
    assert_int_equal(len, strlen(rec));
    free(rec);
    rec = chat__client_info_record(
        &(chat_client_info_t){"u1", "c-1", "{\"name\":\"A\"}", "{\"role\":\"mod\"}"}, &len);
    assert_string_equal(rec, "{\"user\":\"u1\",\"client\":\"c-1\",\"conn_info\":{\"name\":\"A\"},"
                             "\"chan_info\":{\"role\":\"mod\"}}");
    assert_int_equal(len, strlen(rec));
    free(rec);
    rec = chat__client_info_record(&(chat_client_info_t){"u1", "c-1", NULL, "[1]"}, &len);
    assert_string_equal(rec, "{\"user\":\"u1\",\"client\":\"c-1\",\"chan_info\":[1]}");
    free(rec);

    core_str_t s = {0};
    chat__typing_data(&s, "\xc3\xa9l\"e");
    assert_string_equal(s.ptr, "{\"type\":\"typing\",\"user\":\"\xc3\xa9l\\\"e\"}");
    core_str_free(&s);
}

/* ---- namespaces -------------------------------------------------------------------------- */

static void check_ns(const chat_ns_t *ns, const char *name, uint32_t hsize, uint32_t httl,
                     bool presence, bool jl, bool sub, bool pub, bool llm, uint32_t maxb,
                     chat_schema_t schema) {
    assert_string_equal(ns->name, name);
    assert_int_equal(ns->history_size, hsize);
    assert_int_equal(ns->history_ttl_s, httl);
    assert_int_equal(ns->presence, presence);
    assert_int_equal(ns->join_leave, jl);
    assert_int_equal(ns->allow_subscribe, sub);
    assert_int_equal(ns->allow_publish, pub);
    assert_int_equal(ns->llm, llm);
    assert_int_equal(ns->max_message_bytes, maxb);
    assert_int_equal(ns->schema, schema);
}

static const chat_ns_t *find_by_name(const chat_ns_t *ns, size_t n, const char *name) {
    for (size_t i = 0; i < n; i++)
        if (strcmp(ns[i].name, name) == 0)
            return &ns[i];
    return NULL;
}

static void test_namespaces_default(void **state) {
    (void)state;
    chat_ns_t *ns = NULL;
    size_t n = 0;
    chat_namespaces_default(&ns, &n);
    assert_int_equal(n, 3);
    const chat_ns_t *chat = find_by_name(ns, n, "chat");
    const chat_ns_t *typing = find_by_name(ns, n, "typing");
    const chat_ns_t *personal = find_by_name(ns, n, "personal");
    assert_non_null(chat);
    assert_non_null(typing);
    assert_non_null(personal);
    check_ns(chat, "chat", 200, 86400, true, true, true, true, true, 4096, CHAT_SCHEMA_CHAT);
    check_ns(typing, "typing", 0, 0, false, false, true, false, false, 512, CHAT_SCHEMA_ANY);
    check_ns(personal, "personal", 100, 86400, false, false, false, false, false, 4096,
             CHAT_SCHEMA_ANY);

    assert_ptr_equal(chat_ns_find(ns, n, "chat:room"), chat);
    assert_ptr_equal(chat_ns_find(ns, n, "typing:room"), typing);
    assert_ptr_equal(chat_ns_find(ns, n, "personal:u1"), personal);
    /* The defaults have no "" namespace: a channel without ':' has none. */
    assert_null(chat_ns_find(ns, n, "room"));
    assert_null(chat_ns_find(ns, n, "chat"));
    assert_null(chat_ns_find(ns, n, "other:room"));
    assert_null(chat_ns_find(ns, n, "cha:room"));
    assert_null(chat_ns_find(ns, n, "chatx:room"));
    chat_namespaces_free(ns, n);
}

static int parse_text(const char *text, chat_ns_t **ns, size_t *n, char *err) {
    json_t *obj = json_loads(text, JSON_DECODE_ANY, NULL);
    assert_non_null(obj);
    err[0] = '\0';
    int rc = chat_namespaces_parse(obj, ns, n, err, 128);
    json_decref(obj);
    return rc;
}

static void test_namespaces_parse_custom(void **state) {
    (void)state;
    chat_ns_t *ns = NULL;
    size_t n = 0;
    char err[128];
    assert_int_equal(parse_text("{\"\":{},\"chat\":{\"presence\":true,\"history_size\":10,"
                                "\"history_ttl\":60,\"max_message_bytes\":10000000,"
                                "\"message_schema\":\"any\"},"
                                "\"x\":{\"message_schema\":\"chat\",\"llm\":true,\"llm_system_"
                                "prompt\":\"be kind\",\"join_leave\":"
                                "false,\"allow_publish\":true,\"allow_subscribe\":false}}",
                                &ns, &n, err),
                     0);
    assert_int_equal(n, 3);
    const chat_ns_t *def = find_by_name(ns, n, "");
    const chat_ns_t *chat = find_by_name(ns, n, "chat");
    const chat_ns_t *x = find_by_name(ns, n, "x");
    assert_non_null(def);
    assert_non_null(chat);
    assert_non_null(x);
    /* Unset options take the per-namespace defaults: everything off, 4096 bytes, any. */
    check_ns(def, "", 0, 0, false, false, false, false, false, 4096, CHAT_SCHEMA_ANY);
    check_ns(chat, "chat", 10, 60, true, false, false, false, false, 10000000, CHAT_SCHEMA_ANY);
    check_ns(x, "x", 0, 0, false, false, false, true, true, 4096, CHAT_SCHEMA_CHAT);

    assert_ptr_equal(chat_ns_find(ns, n, "chat:room"), chat);
    assert_ptr_equal(chat_ns_find(ns, n, "chat:a:b"), chat);
    assert_ptr_equal(chat_ns_find(ns, n, "room"), def);
    assert_ptr_equal(chat_ns_find(ns, n, "chat"), def);
    assert_ptr_equal(chat_ns_find(ns, n, ":room"), def);
    assert_ptr_equal(chat_ns_find(ns, n, ""), def);
    assert_ptr_equal(chat_ns_find(ns, n, "x:1"), x);
    assert_string_equal(x->llm_system_prompt, "be kind");
    assert_null(chat->llm_system_prompt);
    assert_null(chat_ns_find(ns, n, "unknown:room"));
    assert_null(chat_ns_find(ns, n, "CHAT:room"));
    chat_namespaces_free(ns, n);

    /* An empty object is no namespaces at all. */
    ns = NULL;
    assert_int_equal(parse_text("{}", &ns, &n, err), 0);
    assert_int_equal(n, 0);
    assert_null(chat_ns_find(ns, n, "room"));
    chat_namespaces_free(ns, n);

    /* A 64-byte name is fine. */
    char text[200], name[66];
    memset(name, 'n', 64);
    name[64] = '\0';
    snprintf(text, sizeof text, "{\"%s\":{}}", name);
    assert_int_equal(parse_text(text, &ns, &n, err), 0);
    assert_int_equal(n, 1);
    assert_string_equal(ns[0].name, name);
    chat_namespaces_free(ns, n);
}

static void expect_parse_error(const char *text, const char *needle) {
    chat_ns_t *ns = NULL;
    size_t n = 12345;
    char err[128];
    int rc = parse_text(text, &ns, &n, err);
    if (rc != CORE_EINVAL)
        print_error("accepted: %s\n", text);
    assert_int_equal(rc, CORE_EINVAL);
    assert_true(err[0] != '\0');
    if (needle && !strstr(err, needle))
        fail_msg("error \"%s\" does not mention \"%s\"", err, needle);
    assert_null(ns);
}

static void test_namespaces_parse_errors(void **state) {
    (void)state;
    expect_parse_error("[]", NULL);
    expect_parse_error("\"chat\"", NULL);
    expect_parse_error("{\"chat\":{\"bogus\":true}}", "bogus");
    expect_parse_error("{\"ok\":{},\"chat\":{\"presence\":true,\"histroy_size\":1}}",
                       "histroy_size");
    expect_parse_error("{\"chat\":[]}", "chat");
    expect_parse_error("{\"chat\":true}", "chat");
    /* Flags must be booleans. */
    expect_parse_error("{\"chat\":{\"presence\":1}}", "presence");
    expect_parse_error("{\"chat\":{\"llm\":\"true\"}}", "llm");
    expect_parse_error("{\"chat\":{\"allow_publish\":null}}", "allow_publish");
    /* Numbers must be integers in 0..10000000. */
    expect_parse_error("{\"chat\":{\"history_size\":-1}}", "history_size");
    expect_parse_error("{\"chat\":{\"history_size\":1.5}}", "history_size");
    expect_parse_error("{\"chat\":{\"history_ttl\":\"60\"}}", "history_ttl");
    expect_parse_error("{\"chat\":{\"history_size\":true}}", "history_size");
    expect_parse_error("{\"chat\":{\"max_message_bytes\":10000001}}", "max_message_bytes");
    expect_parse_error("{\"chat\":{\"max_message_bytes\":0}}", "max_message_bytes");
    expect_parse_error("{\"chat\":{\"message_schema\":\"xml\"}}", "message_schema");
    expect_parse_error("{\"chat\":{\"message_schema\":1}}", "message_schema");
    /* The assistant's system prompt is a string; an error after it was taken frees it (the
     * sanitizer build sees a leak otherwise). */
    expect_parse_error("{\"chat\":{\"llm_system_prompt\":7}}", "llm_system_prompt");
    expect_parse_error("{\"chat\":{\"llm_system_prompt\":\"ok\",\"history_size\":-1}}",
                       "history_size");
    /* Bad names. */
    expect_parse_error("{\"a:b\":{}}", "a:b");
    expect_parse_error("{\"a#b\":{}}", "a#b");
    char text[200], name[66];
    memset(name, 'n', 65);
    name[65] = '\0';
    snprintf(text, sizeof text, "{\"%s\":{}}", name);
    expect_parse_error(text, NULL);
    /* An error in a later namespace frees the earlier ones (ASan checks). */
    expect_parse_error("{\"a\":{\"presence\":true},\"b\":{},\"c:\":{}}", NULL);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_decode_connect),
        cmocka_unit_test(test_decode_subscribe_publish),
        cmocka_unit_test(test_decode_ping_and_unknown),
        cmocka_unit_test(test_decode_send_without_id),
        cmocka_unit_test(test_decode_length_respected),
        cmocka_unit_test(test_decode_malformed),
        cmocka_unit_test(test_decode_invalid_utf8),
        cmocka_unit_test(test_decode_bad_id),
        cmocka_unit_test(test_decode_bad_params),
        cmocka_unit_test(test_decode_several_methods),
        cmocka_unit_test(test_decode_duplicate_keys),
        cmocka_unit_test(test_decode_missing_id),
        cmocka_unit_test(test_frame_split),
        cmocka_unit_test(test_frame_crlf_blank_trailing),
        cmocka_unit_test(test_normalize_valid),
        cmocka_unit_test(test_normalize_text_rules),
        cmocka_unit_test(test_normalize_text_length),
        cmocka_unit_test(test_normalize_nul),
        cmocka_unit_test(test_normalize_client_msg_id),
        cmocka_unit_test(test_encode_connect),
        cmocka_unit_test(test_encode_refresh),
        cmocka_unit_test(test_encode_subscribe),
        cmocka_unit_test(test_encode_sub_refresh_and_empty),
        cmocka_unit_test(test_encode_presence),
        cmocka_unit_test(test_encode_history),
        cmocka_unit_test(test_encode_rpc_and_error),
        cmocka_unit_test(test_encode_pushes),
        cmocka_unit_test(test_client_info_record),
        cmocka_unit_test(test_namespaces_default),
        cmocka_unit_test(test_namespaces_parse_custom),
        cmocka_unit_test(test_namespaces_parse_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
