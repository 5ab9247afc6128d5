/* server: HTTP on both listeners: responses with bodies written from the writeable callback,
 * the node cookie, the public listener's own answers (/healthz, /demo/token) and the MIME types
 * of the static web demo, which lws serves itself. */
#include <stdlib.h>
#include <string.h>

#include "server/srv_int.h"

/* The public listener names its node in a cookie on every response, the WebSocket upgrade
 * included: a load balancer in front of several nodes routes the browser's next request (its
 * reconnect above all) to the node that holds its session, by this cookie. lws adds it to
 * every HTTP response as the vhost's canned header; this adds it to the upgrade response, which
 * lws builds without those. */
int srv__add_node_cookie(struct lws *wsi, unsigned char **p, unsigned char *end) {
    srv_t *S = lws_context_user(lws_get_context(wsi));
    if (!S->cookie[0])
        return 0;
    return lws_add_http_header_by_name(
        wsi, (const unsigned char *)"set-cookie:", (const unsigned char *)S->cookie,
        (int)strlen(S->cookie), p, end);
}

/* Sends headers now and the body (taken) from the writeable callback. */
int srv__http_respond(struct lws *wsi, srv_conn_t *c, unsigned int status, const char *ctype,
                      char *body, size_t len) {
    unsigned char buf[LWS_PRE + 1024];
    unsigned char *start = buf + LWS_PRE, *p = start, *end = buf + sizeof buf - 1;
    free(c->body);
    c->body = body;
    c->body_len = len;
    c->body_off = 0;
    if (lws_add_http_common_headers(wsi, status, ctype, (lws_filepos_t)len, &p, end) ||
        lws_add_http_header_by_name(wsi, (const unsigned char *)"cache-control:",
                                    (const unsigned char *)"no-store", 8, &p, end) ||
        lws_finalize_write_http_header(wsi, start, &p, end))
        return 1;
    lws_callback_on_writable(wsi);
    return 0;
}

int srv__http_respond_text(struct lws *wsi, srv_conn_t *c, unsigned int status, const char *text) {
    return srv__http_respond(wsi, c, status, "text/plain; charset=utf-8", core_strdup(text),
                             strlen(text));
}

static int http_write_body(struct lws *wsi, srv_conn_t *c) {
    if (!c->body)
        return 0;
    size_t chunk = c->body_len - c->body_off;
    if (chunk > 16384)
        chunk = 16384;
    bool last = c->body_off + chunk == c->body_len;
    unsigned char buf[LWS_PRE + 16384];
    memcpy(buf + LWS_PRE, c->body + c->body_off, chunk);
    if (lws_write(wsi, buf + LWS_PRE, chunk, last ? LWS_WRITE_HTTP_FINAL : LWS_WRITE_HTTP) <
        (int)chunk)
        return -1;
    c->body_off += chunk;
    if (!last) {
        lws_callback_on_writable(wsi);
        return 0;
    }
    free(c->body);
    c->body = NULL;
    return lws_http_transaction_completed(wsi) ? -1 : 0;
}

/* What both listeners do with HTTP beyond routing: write bodies, free them, and let lws
 * handle the rest (static files among it). */
int srv__http_common(struct lws *wsi, enum lws_callback_reasons reason, srv_conn_t *c, void *in,
                     size_t len) {
    if (reason == LWS_CALLBACK_HTTP_WRITEABLE)
        return http_write_body(wsi, c);
    if (reason == LWS_CALLBACK_CLOSED_HTTP && c) {
        free(c->body);
        c->body = NULL;
    }
    return lws_callback_http_dummy(wsi, reason, c, in, len);
}

static bool demo_user_ok(const char *u) {
    size_t n = strlen(u);
    if (n == 0 || n > 32)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!((u[i] >= 'a' && u[i] <= 'z') || (u[i] >= 'A' && u[i] <= 'Z') ||
              (u[i] >= '0' && u[i] <= '9') || u[i] == '_' || u[i] == '-'))
            return false;
    return true;
}

char *srv__mint_demo_token(srv_t *S, const char *user) {
    json_t *claims =
        json_pack("{s:s, s:I, s:I, s:s, s:{s:s}}", "sub", user, "iat", (json_int_t)core_wall_s(),
                  "exp", (json_int_t)(core_wall_s() + 86400), "plan", "free", "info", "name", user);
    char *tok = auth_jwt_mint(S->keys, NULL, claims);
    json_decref(claims);
    return tok;
}

int srv__public_http(srv_t *S, struct lws *wsi, srv_conn_t *c) {
    char uri[256];
    if (lws_hdr_copy(wsi, uri, sizeof uri, WSI_TOKEN_GET_URI) <= 0)
        return srv__http_respond_text(wsi, c, 400, "bad request\n");
    if (strcmp(uri, "/healthz") == 0)
        return srv__http_respond_text(wsi, c, 200, "ok\n");
    if (strcmp(uri, "/demo/token") == 0 && (S->demo || S->cfg.demo_tokens)) {
        char arg[64] = "";
        /* lws copies "user=NAME" into arg and returns a pointer to NAME. */
        const char *user = lws_get_urlarg_by_name(wsi, "user=", arg, sizeof arg);
        if (!user || !demo_user_ok(user))
            return srv__http_respond_text(wsi, c, 400, "user must be 1-32 of [A-Za-z0-9_-]\n");
        char *tok = srv__mint_demo_token(S, user);
        core_str_t s = {0};
        core_str_appends(&s, "{\"token\":");
        core_str_append_json_string(&s, tok, strlen(tok));
        core_str_appends(&s, ",\"user\":");
        core_str_append_json_string(&s, user, strlen(user));
        core_str_appends(&s, "}");
        free(tok);
        return srv__http_respond(wsi, c, 200, "application/json", s.ptr, s.len);
    }
    return srv__http_respond_text(wsi, c, 404, "not found\n");
}

static const struct lws_protocol_vhost_options mime_mjs = {.name = ".mjs",
                                                           .value = "text/javascript"};
/* MIME types lws does not know. */
static const struct lws_protocol_vhost_options mime_types = {
    .next = &mime_mjs, .name = ".map", .value = "application/json"};

/* The web demo's files. Its origin is the one setting of a mount that comes from the
 * configuration (CHAT_WEB_ROOT), so this mount alone is filled in at start. */
static struct lws_http_mount mount_files = {
    .mountpoint = "/",
    .mountpoint_len = 1,
    .def = "index.html",
    .origin_protocol = LWSMPRO_FILE,
    .extra_mimetypes = &mime_types,
};

/* Answered by the public protocol's callback (srv__public_http). */
static const struct lws_http_mount mount_demo = {
    .mount_next = &mount_files,
    .mountpoint = "/demo/token",
    .mountpoint_len = sizeof "/demo/token" - 1,
    .origin = "chat",
    .origin_protocol = LWSMPRO_CALLBACK,
};

static const struct lws_http_mount mount_health = {
    .mount_next = &mount_demo,
    .mountpoint = "/healthz",
    .mountpoint_len = sizeof "/healthz" - 1,
    .origin = "chat",
    .origin_protocol = LWSMPRO_CALLBACK,
};

const struct lws_http_mount *srv__public_mounts(const char *web_root) {
    mount_files.origin = web_root;
    return &mount_health;
}
