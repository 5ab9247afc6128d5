/* server: the admin listener: /healthz, /readyz, /metrics and the server API (Centrifugo's
 * methods, /api/info, the assistant's /api/llm and its operator actions),
 * and what the node tells about itself to metrics and the cluster's registry. */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include <jansson.h>

#include "server/srv_int.h"

/* The node's own families: who it is and whether it takes clients. */
void srv__node_metrics(void *ud, adm_metrics_writer_t *w) {
    srv_t *S = ud;
    adm_metrics_family(w, "chat_node_info", "gauge", "Node identity; the value is always 1.");
    adm_label_t labels[] = {{"node", S->cfg.node_id}, {"broker", S->broker->name}};
    adm_metrics_sample(w, "chat_node_info", labels, 2, 1);
    adm_metrics_gauge(w, "chat_ready", "1 when the node accepts clients.",
                      !S->draining && clu_ready(S->broker) ? 1 : 0);
    adm_metrics_gauge(w, "chat_draining", "1 while the node drains.", S->draining ? 1 : 0);
    adm_metrics_gauge(w, "chat_cluster_nodes", "Live nodes in the cluster's registry.",
                      S->registry ? (uint32_t)adm_registry_size(S->registry) : 1);
}

/* Constant time in the length of the expected key: the comparison must not tell an attacker how
 * many leading bytes were right. */
static bool key_equal(const char *got, const char *want) {
    size_t gl = strlen(got), wl = strlen(want);
    unsigned char d = gl != wl;
    for (size_t i = 0; i < wl; i++)
        d |= (unsigned char)(want[i] ^ (i < gl ? got[i] : 0));
    return d == 0;
}

/* The server API's key, from "X-API-Key: K" or "Authorization: apikey K". */
static bool api_authorized(srv_t *S, struct lws *wsi) {
    char buf[256];
    int n = lws_hdr_custom_copy(wsi, buf, sizeof buf, "x-api-key:", 10);
    if (n > 0)
        return key_equal(buf, S->cfg.api_key);
    if (lws_hdr_copy(wsi, buf, sizeof buf, WSI_TOKEN_HTTP_AUTHORIZATION) > 7 &&
        strncasecmp(buf, "apikey ", 7) == 0)
        return key_equal(buf + 7, S->cfg.api_key);
    return false;
}

static int api_error(struct lws *wsi, srv_conn_t *c, unsigned int status, int code,
                     const char *message) {
    core_str_t s = {0};
    core_str_appendf(&s, "{\"error\":{\"code\":%d,\"message\":", code);
    core_str_append_json_string(&s, message, strlen(message));
    core_str_appends(&s, "}}");
    return srv__http_respond(wsi, c, status, "application/json", s.ptr, s.len);
}

/* The node's registry entry (Centrifugo's info fields, plus what a balancer and an operator
 * need: where it listens, whether it drains). */
void srv__node_self_info(void *ud, core_str_t *out) {
    srv_t *S = ud;
    chat_stats_t cs;
    chat_node_stats(S->node, &cs);
    core_str_appends(out, "{\"name\":");
    core_str_append_json_string(out, S->cfg.node_id, strlen(S->cfg.node_id));
    core_str_appends(out, ",\"address\":");
    core_str_append_json_string(out, S->public_addr, strlen(S->public_addr));
    /* Where its admin listener is, for chatctl's acts on one node (drain NODE): the listen
     * host, or the public address's host when it listens on every interface. */
    char ahost[256];
    int aport;
    char admin[320] = "";
    if (srv_parse_hostport(S->cfg.admin_listen, ahost, sizeof ahost, &aport) == 0) {
        if (strcmp(ahost, "0.0.0.0") == 0) {
            const char *colon = strrchr(S->public_addr, ':');
            int hl = colon ? (int)(colon - S->public_addr) : (int)strlen(S->public_addr);
            snprintf(admin, sizeof admin, "%.*s:%d", hl, S->public_addr, S->adm_l.port);
        } else {
            snprintf(admin, sizeof admin, "%s:%d", ahost, S->adm_l.port);
        }
    }
    core_str_appends(out, ",\"admin\":");
    core_str_append_json_string(out, admin, strlen(admin));
    core_str_appends(out, ",\"version\":");
    core_str_append_json_string(out, CHATD_VERSION, strlen(CHATD_VERSION));
    core_str_appendf(out,
                     ",\"num_clients\":%" PRIu64 ",\"num_channels\":%" PRIu64 ",\"uptime\":%" PRIu64
                     ",\"draining\":%s,\"ready\":%s"
                     ",\"updated_ms\":%" PRIu64 "}",
                     cs.connections, cs.channels, (core_now_ms() - S->started_ms) / 1000,
                     S->draining ? "true" : "false",
                     !S->draining && clu_ready(S->broker) ? "true" : "false", core_wall_ms());
}

/* POST /api/llm/key/enable {"provider":P,"key":FINGERPRINT} and POST /api/llm/breaker/close
 * {"provider":P}: the operator's hand on the dispatcher. */
static int llm_action(srv_t *S, struct lws *wsi, srv_conn_t *c, const char *uri, bool post,
                      const char *body, size_t len) {
    if (!post)
        return api_error(wsi, c, 405, 405, "method not allowed: use POST");
    if (!body && len > 0)
        return api_error(wsi, c, 413, 413, "request body too large for this method");
    json_error_t jerr;
    json_t *root = body ? json_loadb(body, len, 0, &jerr) : NULL;
    const char *prov = json_string_value(json_object_get(root, "provider"));
    const char *key = json_string_value(json_object_get(root, "key"));
    bool enable = strcmp(uri, "/api/llm/key/enable") == 0;
    int rc;
    if (!prov || (enable && !key))
        rc = api_error(wsi, c, 400, 400,
                       enable ? "bad request: {\"provider\":P,\"key\":fingerprint} required"
                              : "bad request: {\"provider\":P} required");
    else if ((enable ? llm_key_enable(S->llm, prov, key) : llm_breaker_close(S->llm, prov)) != 0)
        rc = api_error(wsi, c, 404, 404, enable ? "no such provider or key" : "no such provider");
    else {
        CORE_LOGI("admin", enable ? "llm key enabled" : "llm breaker closed", "provider=%s key=%s",
                  prov, key ? key : "-");
        core_str_t ok = {0};
        core_str_appends(&ok, "{\"result\":{}}");
        rc = srv__http_respond(wsi, c, 200, "application/json", ok.ptr, ok.len);
    }
    json_decref(root);
    return rc;
}

void srv__set_connect_rate(srv_t *S, uint32_t rate, uint32_t burst) {
    S->connect_rate = (core_rate_t){.rate = rate, .burst = burst ? burst : rate};
    S->connect_gcra = (core_gcra_t){0};
}

static void limits_render(srv_t *S, core_str_t *out) {
    core_str_appendf(out,
                     "{\"result\":{\"max_connections\":%" PRIu32
                     ",\"max_connections_per_user\":%" PRIu32 ",\"connect_rate\":%" PRIu32
                     ",\"connect_burst\":%" PRIu32 ",\"connections\":%" PRIu32 "}}",
                     S->max_connections, chat_node_max_conns_per_user(S->node),
                     (uint32_t)S->connect_rate.rate, S->connect_rate.burst, S->ws_open);
}

/* A non-negative integer member of the limits body: 1 when present, 0 when absent, -1 when
 * of the wrong type or out of range. */
static int limit_value(const json_t *root, const char *key, uint32_t *out) {
    const json_t *v = json_object_get(root, key);
    if (!v)
        return 0;
    if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > UINT32_MAX)
        return -1;
    *out = (uint32_t)json_integer_value(v);
    return 1;
}

/* POST /api/node/limits {} reads this node's connection limits; with members it changes them
 * (all checked before any is applied): max_connections (0 = the open-file limit's default),
 * max_connections_per_user (at least 1), connect_rate (0 = unlimited) and connect_burst.
 * Lowered caps refuse new connections; the ones already open stay. */
static int node_limits(srv_t *S, struct lws *wsi, srv_conn_t *c, const char *body, size_t len) {
    json_error_t jerr;
    json_t *root = len ? json_loadb(body, len, 0, &jerr) : json_object();
    uint32_t maxc = 0, per_user = chat_node_max_conns_per_user(S->node);
    uint32_t rate = (uint32_t)S->connect_rate.rate, burst = S->connect_rate.burst;
    int has_max = root ? limit_value(root, "max_connections", &maxc) : -1;
    int has_user = root ? limit_value(root, "max_connections_per_user", &per_user) : -1;
    int has_rate = root ? limit_value(root, "connect_rate", &rate) : -1;
    int has_burst = root ? limit_value(root, "connect_burst", &burst) : -1;
    uint32_t fd_cap = srv_max_connections(&(srv_config_t){0}, S->fd_limit);
    const char *bad = NULL;
    if (!json_is_object(root) || has_max < 0 || has_user < 0 || has_rate < 0 || has_burst < 0)
        bad = "bad request: limits are non-negative integers: max_connections, "
              "max_connections_per_user, connect_rate, connect_burst";
    else if (has_user && per_user == 0)
        bad = "bad request: max_connections_per_user is at least 1";
    else if (has_max && maxc > fd_cap)
        bad = "bad request: max_connections is over what the open-file limit allows";
    json_decref(root);
    if (bad)
        return api_error(wsi, c, 200, CORE_REPLY_BAD_REQUEST, bad);
    if (has_max)
        S->max_connections = maxc ? maxc : fd_cap;
    if (has_user)
        chat_node_set_max_conns_per_user(S->node, per_user);
    if (has_rate || has_burst)
        /* A new rate without a burst takes one second's worth, as at start. */
        srv__set_connect_rate(S, rate, has_burst ? burst : 0);
    if (has_max || has_user || has_rate || has_burst)
        CORE_LOGW("admin", "limits changed",
                  "max_connections=%" PRIu32 " max_connections_per_user=%" PRIu32
                  " connect_rate=%" PRIu32 " connect_burst=%" PRIu32,
                  S->max_connections, chat_node_max_conns_per_user(S->node),
                  (uint32_t)S->connect_rate.rate, S->connect_rate.burst);
    core_str_t ok = {0};
    limits_render(S, &ok);
    return srv__http_respond(wsi, c, 200, "application/json", ok.ptr, ok.len);
}

/* POST /api/node/drain {}, POST /api/node/log_level {"level":L} (L empty or absent: only
 * read it) and POST /api/node/limits: the operator's hand on this node. */
static int node_action(srv_t *S, struct lws *wsi, srv_conn_t *c, const char *uri, bool post,
                       const char *body, size_t len) {
    if (!post)
        return api_error(wsi, c, 405, 405, "method not allowed: use POST");
    core_str_t ok = {0};
    if (strcmp(uri, "/api/node/drain") == 0) {
        core_str_appends(&ok, "{\"result\":{\"node\":");
        core_str_append_json_string(&ok, S->cfg.node_id, strlen(S->cfg.node_id));
        core_str_appends(&ok, "}}");
        CORE_LOGI("admin", "drain asked", "node=%s", S->cfg.node_id);
        srv__begin_drain(S);
        return srv__http_respond(wsi, c, 200, "application/json", ok.ptr, ok.len);
    }
    if (strcmp(uri, "/api/node/limits") == 0)
        return node_limits(S, wsi, c, body, len);
    json_error_t jerr;
    json_t *root = len ? json_loadb(body, len, 0, &jerr) : json_object();
    const json_t *lv = json_object_get(root, "level");
    if (!root || (lv && !json_is_string(lv))) {
        json_decref(root);
        return api_error(wsi, c, 200, 107, "bad request: {\"level\":\"error|warn|info|debug\"}");
    }
    if (lv) {
        int level = core_log_level_parse(json_string_value(lv));
        if (level < 0) {
            json_decref(root);
            return api_error(wsi, c, 200, 107,
                             "bad request: level is one of error, warn, info, debug");
        }
        const char *was = core_log_level_name(core_log_get_level());
        core_log_set_level((core_log_level_t)level);
        CORE_LOGW("admin", "log level changed", "from=%s to=%s", was,
                  core_log_level_name((core_log_level_t)level));
    }
    json_decref(root);
    core_str_appendf(&ok, "{\"result\":{\"level\":\"%s\"}}",
                     core_log_level_name(core_log_get_level()));
    return srv__http_respond(wsi, c, 200, "application/json", ok.ptr, ok.len);
}

/* Per-session data of the admin listener: an HTTP exchange, the POST body being read, and the
 * server API call whose answer it waits for. */
typedef struct api_wait api_wait_t;

typedef struct {
    srv_conn_t base;
    struct lws *wsi;
    char post_uri[64];
    bool post_too_long;
    size_t post_bytes; /* of the request body so far */
    core_str_t body;   /* up to API_BODY_MAX bytes of it */
    api_wait_t *wait;  /* the server API call under way, NULL when none */
    char *reply;       /* its answer, written from the writeable callback */
    size_t reply_len;
} adm_conn_t;

/* A server API call outlives its HTTP connection when the client goes first: the call then
 * finds `a` NULL and drops its answer. */
struct api_wait {
    adm_conn_t *a;
};

/* Request bodies the API takes at most (a publication's data with its envelope). */
#define API_BODY_MAX 65536

static void api_answered(void *ud, const char *reply, size_t len) {
    api_wait_t *w = ud;
    adm_conn_t *a = w->a;
    free(w);
    if (!a)
        return;
    a->wait = NULL;
    a->reply = core_malloc(len + 1);
    memcpy(a->reply, reply, len);
    a->reply_len = len;
    lws_callback_on_writable(a->wsi);
}

/* POST /api/<method> (Centrifugo's HTTP API) and POST /api (lines of {"method","params"}). The
 * answer goes out from the writeable callback whether it came at once or from the loop. */
static int api_call(srv_t *S, struct lws *wsi, adm_conn_t *a, const char *uri, bool post,
                    const char *body, size_t len) {
    srv_conn_t *c = &a->base;
    bool lines = strcmp(uri, "/api") == 0;
    const char *method = lines ? NULL : uri + 5;
    if (!lines && !chat_api_has_method(method))
        return api_error(wsi, c, 404, CORE_REPLY_METHOD_NOT_FOUND, "method not found");
    if (!post)
        return api_error(wsi, c, 405, 405, "method not allowed: use POST");
    if (!body && len > 0)
        return api_error(wsi, c, 413, 413, "request body too large");
    api_wait_t *w = core_calloc(1, sizeof *w);
    w->a = a;
    a->wait = w;
    a->wsi = wsi;
    if (lines)
        chat_api_lines(S->node, body ? body : "", len, api_answered, w);
    else
        chat_api_call(S->node, method, body ? body : "", len, api_answered, w);
    return 0;
}

/* req is the POST's body, NULL with req_len > 0 when it was over API_BODY_MAX. */
static int admin_http(srv_t *S, struct lws *wsi, adm_conn_t *a, const char *uri, bool post,
                      const char *req, size_t req_len) {
    srv_conn_t *c = &a->base;
    if (strcmp(uri, "/healthz") == 0)
        return srv__http_respond_text(wsi, c, 200, "ok\n");
    if (strcmp(uri, "/readyz") == 0) {
        if (S->draining)
            return srv__http_respond_text(wsi, c, 503, "not ready: draining\n");
        if (!clu_ready(S->broker))
            return srv__http_respond_text(wsi, c, 503, "not ready: broker unavailable\n");
        return srv__http_respond_text(wsi, c, 200, "ready\n");
    }
    if (strcmp(uri, "/metrics") == 0) {
        core_str_t body = {0};
        adm_metrics_render(S->metrics, &body);
        return srv__http_respond(wsi, c, 200, "text/plain; version=0.0.4; charset=utf-8", body.ptr,
                                 body.len);
    }
    if (strcmp(uri, "/api") == 0 || strncmp(uri, "/api/", 5) == 0) {
        if (!api_authorized(S, wsi))
            return api_error(wsi, c, 401, 401, "unauthorized: X-API-Key required");
        if (strcmp(uri, "/api/info") == 0) {
            core_str_t body = {0};
            adm_registry_render_info(S->registry, &body);
            return srv__http_respond(wsi, c, 200, "application/json", body.ptr, body.len);
        }
        if (strcmp(uri, "/api/llm") == 0 && S->llm) {
            /* The dispatcher's queue, providers, keys (fingerprints only), breakers and leases. */
            core_str_t body = {0};
            core_str_appends(&body, "{\"result\":");
            llm_render_state(S->llm, &body);
            core_str_appends(&body, "}");
            return srv__http_respond(wsi, c, 200, "application/json", body.ptr, body.len);
        }
        if (S->llm &&
            (strcmp(uri, "/api/llm/key/enable") == 0 || strcmp(uri, "/api/llm/breaker/close") == 0))
            return llm_action(S, wsi, c, uri, post, req, req_len);
        if (strcmp(uri, "/api/node/drain") == 0 || strcmp(uri, "/api/node/log_level") == 0 ||
            strcmp(uri, "/api/node/limits") == 0)
            return node_action(S, wsi, c, uri, post, req, req_len);
        return api_call(S, wsi, a, uri, post, req, req_len);
    }
    return srv__http_respond_text(wsi, c, 404, "not found\n");
}

static int cb_admin(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in,
                    size_t len) {
    srv_t *S = lws_context_user(lws_get_context(wsi));
    adm_conn_t *a = user;
    srv_conn_t *c = user;
    switch (reason) {
    case LWS_CALLBACK_FILTER_PROTOCOL_CONNECTION:
        return 1; /* no WebSockets on the admin listener */
    case LWS_CALLBACK_HTTP: {
        int rc;
        if (srv__http_refuse_headers(wsi, c, &rc))
            return rc;
        if (lws_hdr_total_length(wsi, WSI_TOKEN_POST_URI) > 0 &&
            lws_hdr_total_length(wsi, WSI_TOKEN_HTTP_CONTENT_LENGTH) > 0) {
            /* Answered once the body is read: an answer before it would leave the body on
             * the connection, to be taken for the next request. */
            snprintf(a->post_uri, sizeof a->post_uri, "%s", (const char *)in);
            a->post_too_long = strlen((const char *)in) >= sizeof a->post_uri;
            a->post_bytes = 0;
            a->body.len = 0;
            return 0;
        }
        /* A GET, or a POST without a body. */
        return admin_http(S, wsi, a, (const char *)in,
                          lws_hdr_total_length(wsi, WSI_TOKEN_POST_URI) > 0, NULL, 0);
    }
    case LWS_CALLBACK_HTTP_BODY:
        /* "Content-Length: 0" arrives as one call with no bytes and in == NULL. */
        if (len > 0 && a->post_bytes + len <= API_BODY_MAX)
            core_str_append(&a->body, in, len);
        a->post_bytes += len;
        return 0;
    case LWS_CALLBACK_HTTP_BODY_COMPLETION: {
        /* The body is this request's only: the connection may carry another one next. */
        core_str_t body = a->body;
        a->body = (core_str_t){0};
        int rc;
        if (a->post_bytes > API_BODY_MAX)
            rc = api_error(wsi, c, 413, 413, "request body too large");
        else if (a->post_too_long)
            rc = srv__http_respond_text(wsi, c, 404, "not found\n");
        else
            rc = admin_http(S, wsi, a, a->post_uri, true, body.ptr ? body.ptr : "", a->post_bytes);
        core_str_free(&body);
        return rc;
    }
    case LWS_CALLBACK_HTTP_WRITEABLE:
        if (a && a->reply) {
            char *reply = a->reply;
            a->reply = NULL;
            return srv__http_respond(wsi, c, 200, "application/json", reply, a->reply_len);
        }
        return srv__http_common(wsi, reason, c, in, len);
    case LWS_CALLBACK_CLOSED_HTTP:
        if (a) {
            if (a->wait)
                a->wait->a = NULL;
            a->wait = NULL;
            free(a->reply);
            a->reply = NULL;
            core_str_free(&a->body);
        }
        return srv__http_common(wsi, reason, c, in, len);
    default:
        return srv__http_common(wsi, reason, c, in, len);
    }
}

const struct lws_protocols srv__admin_protocols[] = {{.name = "admin",
                                                      .callback = cb_admin,
                                                      .per_session_data_size = sizeof(adm_conn_t),
                                                      .rx_buffer_size = 4096},
                                                     {0}};
