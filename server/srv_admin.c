/* server: the admin listener: /healthz, /readyz, /metrics and the server API (/api/info, the
 * assistant's /api/llm and its operator actions),
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

/* req is the POST's body, NULL with req_len > 0 when it did not fit adm_conn_t.body. */
static int admin_http(srv_t *S, struct lws *wsi, srv_conn_t *c, const char *uri, bool post,
                      const char *req, size_t req_len) {
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
    if (strncmp(uri, "/api/", 5) == 0) {
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
        return api_error(wsi, c, 404, 404, "unknown API method");
    }
    return srv__http_respond_text(wsi, c, 404, "not found\n");
}

/* Per-session data of the admin listener: an HTTP exchange, and the path of a POST whose body
 * is still arriving. */
typedef struct {
    srv_conn_t base;
    char post_uri[64];
    bool post_too_long;
    size_t post_bytes; /* of the request body so far */
    char body[4096];   /* its first bytes: what the API's small JSON requests need */
} adm_conn_t;

/* Request bodies the API takes at most; bodies the API reads must fit in adm_conn_t.body. */
#define API_BODY_MAX 65536

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
            return 0;
        }
        /* A GET, or a POST without a body. */
        return admin_http(S, wsi, c, (const char *)in,
                          lws_hdr_total_length(wsi, WSI_TOKEN_POST_URI) > 0, NULL, 0);
    }
    case LWS_CALLBACK_HTTP_BODY:
        /* "Content-Length: 0" arrives as one call with no bytes and in == NULL. */
        if (len > 0 && a->post_bytes < sizeof a->body)
            memcpy(a->body + a->post_bytes, in,
                   len < sizeof a->body - a->post_bytes ? len : sizeof a->body - a->post_bytes);
        a->post_bytes += len;
        return 0;
    case LWS_CALLBACK_HTTP_BODY_COMPLETION:
        if (a->post_bytes > API_BODY_MAX)
            return api_error(wsi, c, 413, 413, "request body too large");
        if (a->post_too_long)
            return srv__http_respond_text(wsi, c, 404, "not found\n");
        /* A body past the buffer reaches the methods as NULL with its length. */
        return admin_http(S, wsi, c, a->post_uri, true,
                          a->post_bytes > sizeof a->body ? NULL : a->body, a->post_bytes);
    default:
        return srv__http_common(wsi, reason, c, in, len);
    }
}

const struct lws_protocols srv__admin_protocols[] = {{.name = "admin",
                                                      .callback = cb_admin,
                                                      .per_session_data_size = sizeof(adm_conn_t),
                                                      .rx_buffer_size = 4096},
                                                     {0}};
