/* server: HTTP on both listeners: responses with bodies written from the writeable callback,
 * the node cookie, and the public listener's answers (/healthz, /demo/token, the web demo's
 * files). */
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

const struct lws_token_limits *srv__token_limits(void) {
    static struct lws_token_limits limits;
    for (int i = 0; i < WSI_TOKEN_COUNT; i++)
        limits.token_limit[i] = SRV_HEADER_FIELD_MAX + 1;
    return &limits;
}

unsigned int srv__header_limit_status(struct lws *wsi) {
    for (int t = 0; t < WSI_TOKEN_COUNT; t++) {
        if (lws_hdr_total_length(wsi, (enum lws_token_indexes)t) <= SRV_HEADER_FIELD_MAX)
            continue;
        if (t == WSI_TOKEN_GET_URI || t == WSI_TOKEN_POST_URI || t == WSI_TOKEN_HTTP_URI_ARGS)
            return 414;
        return 431;
    }
    return 0;
}

int srv__http_refuse_headers(struct lws *wsi, srv_conn_t *c, int *rc) {
    unsigned int status = srv__header_limit_status(wsi);
    if (!status)
        return 0;
    srv_t *S = lws_context_user(lws_get_context(wsi));
    S->st.refused[SRV_REFUSED_HEADERS]++;
    *rc = srv__http_respond_text(wsi, c, status,
                                 status == 414 ? "request target too long\n"
                                               : "request header fields too large\n");
    return 1;
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

/* What the public listener serves of the web root: the web demo's page and exactly the files it
 * loads (web-demo/index.html: its style sheet, its script and the centrifuge-js bundle from
 * node_modules, with the bundle's source map for browsers' developer tools). Everything else
 * there, the package files and the rest of node_modules among it, is not for the network. */
static const struct {
    const char *uri;
    const char *file; /* under web_root */
    const char *type;
} web_files[] = {
    {"/", "index.html", "text/html; charset=utf-8"},
    {"/index.html", "index.html", "text/html; charset=utf-8"},
    {"/app.js", "app.js", "text/javascript; charset=utf-8"},
    {"/style.css", "style.css", "text/css; charset=utf-8"},
    {"/node_modules/centrifuge/dist/centrifuge.js", "node_modules/centrifuge/dist/centrifuge.js",
     "text/javascript; charset=utf-8"},
    {"/node_modules/centrifuge/dist/centrifuge.js.map",
     "node_modules/centrifuge/dist/centrifuge.js.map", "application/json"},
};

/* Serves uri when it is one of web_files. Returns -2 when it is not, else the callback's
 * answer. */
static int serve_web_file(srv_t *S, struct lws *wsi, const char *uri) {
    for (size_t i = 0; i < sizeof web_files / sizeof web_files[0]; i++) {
        if (strcmp(uri, web_files[i].uri) != 0)
            continue;
        char path[1024];
        if (snprintf(path, sizeof path, "%s/%s", S->cfg.web_root, web_files[i].file) >=
            (int)sizeof path)
            return -1;
        /* lws answers 404 itself when the file is missing (node_modules not installed). */
        int n = lws_serve_http_file(wsi, path, web_files[i].type, NULL, 0);
        return n < 0 || (n > 0 && lws_http_transaction_completed(wsi)) ? -1 : 0;
    }
    return -2;
}

int srv__public_http(srv_t *S, struct lws *wsi, srv_conn_t *c) {
    char uri[256];
    int rc;
    if (srv__http_refuse_headers(wsi, c, &rc))
        return rc;
    if (lws_hdr_copy(wsi, uri, sizeof uri, WSI_TOKEN_GET_URI) <= 0)
        return srv__http_respond_text(wsi, c, 400, "bad request\n");
    if (strcmp(uri, "/healthz") == 0)
        return srv__http_respond_text(wsi, c, 200, "ok\n");
    rc = serve_web_file(S, wsi, uri);
    if (rc != -2)
        return rc;
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
        core_str_appends(&s, ",\"node\":");
        core_str_append_json_string(&s, S->cfg.node_id, strlen(S->cfg.node_id));
        /* The namespaces where a client may make and post in rooms, so that the page offers
         * only rooms the node will let it join; chat-schema ones only, whose messages the node
         * checks and dates (in an "any" namespace a client could pose as the assistant). */
        core_str_appends(&s, ",\"rooms\":[");
        bool first = true;
        for (size_t i = 0; i < S->nns; i++) {
            const chat_ns_t *ns = &S->ns[i];
            if (!ns->allow_subscribe || !ns->allow_publish || ns->schema != CHAT_SCHEMA_CHAT)
                continue;
            core_str_appends(&s, first ? "{\"namespace\":" : ",{\"namespace\":");
            first = false;
            core_str_append_json_string(&s, ns->name, strlen(ns->name));
            core_str_appendf(&s, ",\"history\":%s,\"presence\":%s,\"llm\":%s}",
                             ns->history_size ? "true" : "false", ns->presence ? "true" : "false",
                             ns->llm ? "true" : "false");
        }
        core_str_appends(&s, "]}");
        free(tok);
        return srv__http_respond(wsi, c, 200, "application/json", s.ptr, s.len);
    }
    return srv__http_respond_text(wsi, c, 404, "not found\n");
}
