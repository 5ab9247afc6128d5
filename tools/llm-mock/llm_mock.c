/* llm-mock: a provider stand-in that speaks the Anthropic Messages API and OpenAI chat
 * completions as docs LLM.md 1.1 and 1.2 write them (status line, headers with rate limits,
 * server-sent events), with scenarios for every failure the dispatcher must survive.
 *
 *   llm-mock --listen 127.0.0.1:0
 *
 * prints "llm-mock listening on 127.0.0.1:PORT" once bound, and stops cleanly on SIGTERM or
 * SIGINT. Endpoints:
 *   POST /v1/messages                        Anthropic (x-api-key)
 *   POST /v1/chat/completions, /chat/completions, /api/v1/chat/completions
 *                                            OpenAI-compatible (Authorization: Bearer)
 *   POST /control {"key":"<api key or *>","scenario":"name",<params>...,"count":N}
 *                 sets the scenario for requests with that key ("*" = default for all keys;
 *                 count = only the next N requests); {"reset":true} clears every scenario.
 *   GET /stats, POST /stats/reset            counters as JSON, and per key the body of its
 *                                            latest request ("last_request")
 * A request header "x-mock-scenario: name;param=value;..." overrides the key's scenario.
 *
 * The answer is deterministic: the words of the last user message, then "token<N>" fillers,
 * one word per delta; input_tokens = 1 + (bytes of system and message contents) / 4.
 *
 * Scenarios (parameters in brackets, all optional):
 *   ok             [tokens=8 ttft_ms=0 tokens_per_s=0 (unpaced) crlf cr bom multiline pings
 *                   openrouter utf8 split=N (bytes per write) split_ms=1
 *                   usage=empty|null|missing|none usage_in_delta remaining_requests
 *                   remaining_tokens]
 *   slow_ttft      ok with ttft_ms=3000
 *   error_event    200, then an error event after `after` deltas (0 = before the first)
 *                   [after=0 type=overloaded_error form=openai|openrouter|finish]
 *   drop           200, then the connection closes after `after` deltas, without the end marker
 *   hang           accept the request and send nothing at all
 *   hang_pings     200 headers, then only keep-alives every ping_ms (0 = silence) [ping_ms=500]
 *   rate_limit     429 [retry_after=1 (s) retry_after_ms escalate no_retry_after reset=6m0s
 *                   reset_s]
 *   spend_cap, quota, overloaded (529), server_error (500), unavailable (503),
 *   bad_request (400), unauthorized (401), payment (402), forbidden (403), status [status=N]
 * Every scenario also takes should_retry=true|false (the x-should-retry header), retry_after,
 * and lockout (Venice: more than lockout_max=20 non-2xx within lockout_window_ms=30000 for a key
 * answer 429 "Too many failed attempts" for lockout_ms=30000). */
#include <ctype.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>
#include <time.h>

#include <jansson.h>
#include <uv.h>

#include "core/core.h"

#define MAX_HEADER_BYTES (64 * 1024)
#define MAX_BODY_BYTES (1024 * 1024)
#define MAX_KEYS 10000
#define WRITE_HIGH_WATER (1024 * 1024)
#define FAIL_RING 64

/* ---- scenarios ------------------------------------------------------------------------------- */

typedef enum { SC_OK, SC_STATUS, SC_ERROR_EVENT, SC_DROP, SC_HANG, SC_HANG_PINGS } sc_kind_t;

enum { USAGE_EMPTY, USAGE_NULL, USAGE_MISSING, USAGE_NONE };

typedef struct {
    sc_kind_t kind;
    char name[32];
    int status;
    int tokens, ttft_ms, after, split, split_ms, ping_ms;
    double tokens_per_s;
    bool crlf, cr, bom, multiline, pings, openrouter, utf8, usage_in_delta;
    int usage;
    double retry_after; /* seconds, < 0 = none */
    int retry_after_ms; /* < 0 = none */
    bool escalate, no_retry_after, spend_cap, quota;
    char reset[32];
    int reset_s;
    char form[16];
    char type[48];
    int should_retry; /* -1 none, 0 false, 1 true */
    bool lockout;
    int lockout_max, lockout_window_ms, lockout_ms;
    long remaining_requests, remaining_tokens;
} scenario_t;

static void sc_defaults(scenario_t *s) {
    memset(s, 0, sizeof *s);
    snprintf(s->name, sizeof s->name, "ok");
    s->tokens = 8;
    s->split_ms = 1;
    s->ping_ms = 500;
    s->retry_after = -1;
    s->retry_after_ms = -1;
    s->reset_s = -1;
    s->should_retry = -1;
    s->lockout_max = 20;
    s->lockout_window_ms = 30000;
    s->lockout_ms = 30000;
    s->remaining_requests = s->remaining_tokens = -1;
}

static const struct {
    const char *name;
    sc_kind_t kind;
    int status;
} sc_names[] = {
    {"ok", SC_OK, 200},
    {"slow_ttft", SC_OK, 200},
    {"error_event", SC_ERROR_EVENT, 200},
    {"drop", SC_DROP, 200},
    {"hang", SC_HANG, 200},
    {"hang_pings", SC_HANG_PINGS, 200},
    {"rate_limit", SC_STATUS, 429},
    {"spend_cap", SC_STATUS, 429},
    {"quota", SC_STATUS, 429},
    {"overloaded", SC_STATUS, 529},
    {"server_error", SC_STATUS, 500},
    {"unavailable", SC_STATUS, 503},
    {"bad_request", SC_STATUS, 400},
    {"unauthorized", SC_STATUS, 401},
    {"payment", SC_STATUS, 402},
    {"forbidden", SC_STATUS, 403},
    {"status", SC_STATUS, 500},
};

static bool parse_int(const char *v, long lo, long hi, long *out) {
    char *end;
    errno = 0;
    long x = strtol(v, &end, 10);
    if (errno || end == v || *end || x < lo || x > hi)
        return false;
    *out = x;
    return true;
}

static bool parse_flag(const char *v) {
    return strcmp(v, "0") != 0 && strcasecmp(v, "false") != 0;
}

/* Sets one parameter; false for an unknown name or a bad value (typos must not pass). */
static bool sc_param(scenario_t *s, const char *k, const char *v) {
    long x;
    double d;
    char *end;
#define INT_PARAM(name, lo, hi)                                                                    \
    if (strcmp(k, #name) == 0) {                                                                   \
        if (!parse_int(v, lo, hi, &x))                                                             \
            return false;                                                                          \
        s->name = (int)x;                                                                          \
        return true;                                                                               \
    }
#define FLAG_PARAM(name)                                                                           \
    if (strcmp(k, #name) == 0) {                                                                   \
        s->name = parse_flag(v);                                                                   \
        return true;                                                                               \
    }
    INT_PARAM(tokens, 0, 100000)
    INT_PARAM(ttft_ms, 0, 3600000)
    INT_PARAM(after, 0, 100000)
    INT_PARAM(split, 0, 65536)
    INT_PARAM(split_ms, 0, 60000)
    INT_PARAM(ping_ms, 0, 3600000)
    INT_PARAM(status, 100, 599)
    INT_PARAM(retry_after_ms, 0, 86400000)
    INT_PARAM(reset_s, 0, 86400)
    INT_PARAM(lockout_max, 0, FAIL_RING - 1)
    INT_PARAM(lockout_window_ms, 1, 3600000)
    INT_PARAM(lockout_ms, 1, 3600000)
    FLAG_PARAM(crlf)
    FLAG_PARAM(cr)
    FLAG_PARAM(bom)
    FLAG_PARAM(multiline)
    FLAG_PARAM(pings)
    FLAG_PARAM(openrouter)
    FLAG_PARAM(utf8)
    FLAG_PARAM(usage_in_delta)
    FLAG_PARAM(escalate)
    FLAG_PARAM(no_retry_after)
    FLAG_PARAM(lockout)
#undef INT_PARAM
#undef FLAG_PARAM
    if (strcmp(k, "tokens_per_s") == 0 || strcmp(k, "retry_after") == 0) {
        d = strtod(v, &end);
        if (end == v || *end || d < 0 || d > 86400)
            return false;
        *(strcmp(k, "tokens_per_s") == 0 ? &s->tokens_per_s : &s->retry_after) = d;
        return true;
    }
    if (strcmp(k, "remaining_requests") == 0 || strcmp(k, "remaining_tokens") == 0) {
        if (!parse_int(v, 0, 1000000000, &x))
            return false;
        *(k[10] == 'r' ? &s->remaining_requests : &s->remaining_tokens) = x;
        return true;
    }
    if (strcmp(k, "usage") == 0) {
        static const char *const u[] = {"empty", "null", "missing", "none"};
        for (int i = 0; i < 4; i++)
            if (strcmp(v, u[i]) == 0) {
                s->usage = i;
                return true;
            }
        return false;
    }
    if (strcmp(k, "should_retry") == 0) {
        s->should_retry = parse_flag(v) ? 1 : 0;
        return true;
    }
    if (strcmp(k, "form") == 0 || strcmp(k, "type") == 0 || strcmp(k, "reset") == 0) {
        char *dst = k[0] == 'f' ? s->form : k[0] == 't' ? s->type : s->reset;
        size_t cap = k[0] == 'f' ? sizeof s->form : k[0] == 't' ? sizeof s->type : sizeof s->reset;
        if (strlen(v) >= cap)
            return false;
        for (const char *p = v; *p; p++)
            if (!isalnum((unsigned char)*p) && *p != '_' && *p != '.')
                return false;
        snprintf(dst, cap, "%s", v);
        return true;
    }
    return false;
}

/* Parses "name;k=v;flag;...". On failure, err says why. */
static bool sc_parse(const char *spec, scenario_t *s, char *err, size_t errcap) {
    sc_defaults(s);
    char buf[1024];
    if (strlen(spec) >= sizeof buf) {
        snprintf(err, errcap, "scenario too long");
        return false;
    }
    snprintf(buf, sizeof buf, "%s", spec);
    char *save = NULL;
    char *tok = strtok_r(buf, ";", &save);
    while (tok && isspace((unsigned char)*tok))
        tok++;
    if (!tok || !*tok)
        tok = "ok";
    size_t i;
    for (i = 0; i < sizeof sc_names / sizeof sc_names[0]; i++)
        if (strcmp(tok, sc_names[i].name) == 0)
            break;
    if (i == sizeof sc_names / sizeof sc_names[0]) {
        snprintf(err, errcap, "unknown scenario '%.64s'", tok);
        return false;
    }
    snprintf(s->name, sizeof s->name, "%s", sc_names[i].name);
    s->kind = sc_names[i].kind;
    s->status = sc_names[i].status;
    s->spend_cap = strcmp(s->name, "spend_cap") == 0;
    s->quota = strcmp(s->name, "quota") == 0;
    if (strcmp(s->name, "slow_ttft") == 0)
        s->ttft_ms = 3000;
    if (strcmp(s->name, "rate_limit") == 0)
        s->retry_after = 1;
    while ((tok = strtok_r(NULL, ";", &save)) != NULL) {
        while (isspace((unsigned char)*tok))
            tok++;
        if (!*tok)
            continue;
        char *eq = strchr(tok, '=');
        const char *v = "1";
        if (eq) {
            *eq = '\0';
            v = eq + 1;
        }
        if (!sc_param(s, tok, v)) {
            snprintf(err, errcap, "bad scenario parameter '%.64s'", tok);
            return false;
        }
    }
    if (s->no_retry_after) {
        s->retry_after = -1;
        s->retry_after_ms = -1;
    }
    return true;
}

/* ---- per-key state and statistics ------------------------------------------------------------ */

typedef struct {
    int status;
    uint64_t n;
} status_count_t;

typedef struct {
    char *scenario;  /* spec set by /control, NULL = none */
    long count_left; /* requests the scenario still applies to, -1 = unlimited */
    uint64_t requests, streams_completed, streams_client_closed, streams_dropped;
    status_count_t statuses[24];
    int consecutive_429;
    uint64_t fail_ms[FAIL_RING]; /* times of the last non-2xx answers */
    unsigned fail_next;
    uint64_t locked_until_ms;
    json_t *last_request; /* the body of the key's latest request, as JSON; NULL if none was */
} key_state_t;

static struct {
    uv_loop_t *loop;
    uv_tcp_t server;
    uv_signal_t sigterm, sigint;
    core_list_t conns;
    core_map_t *keys;
    uint64_t seq;
    uint64_t requests, streams_open, streams_open_max, streams_completed, streams_client_closed,
        streams_dropped, connections_open, rejected;
    bool stopping;
} g;

static key_state_t *key_state(const char *key) {
    key_state_t *ks = core_map_get(g.keys, key);
    if (ks)
        return ks;
    if (core_map_size(g.keys) >= MAX_KEYS) {
        key = "(other)";
        if ((ks = core_map_get(g.keys, key)) != NULL)
            return ks;
    }
    ks = core_calloc(1, sizeof *ks);
    ks->count_left = -1;
    core_map_put(g.keys, key, ks);
    return ks;
}

static void count_status(key_state_t *ks, int status) {
    size_t n = sizeof ks->statuses / sizeof ks->statuses[0];
    for (size_t i = 0; i < n; i++) {
        if (ks->statuses[i].status == status || ks->statuses[i].status == 0) {
            ks->statuses[i].status = status;
            ks->statuses[i].n++;
            return;
        }
    }
}

/* ---- connections ----------------------------------------------------------------------------- */

typedef struct {
    bool active; /* a streamed response is in progress */
    bool anthropic;
    scenario_t sc;
    key_state_t *ks;
    char *model_json; /* the request's model as a JSON string literal */
    uint64_t id;
    int64_t input_tokens;
    int ntokens;
    bool truncated; /* max_tokens cut the answer */
    char *prompt;   /* last user message, words separated by NULs */
    size_t prompt_len;
    size_t word_off; /* offset of the next prompt word */
    int phase, i;
    bool first_unit;
    core_str_t pending; /* SSE bytes of the current unit */
    size_t pending_off;
    uint64_t delay_ms; /* to wait before the pending bytes */
    bool wait_drain;
} stream_t;

typedef struct conn {
    uv_tcp_t tcp;
    uv_timer_t timer;
    core_list_t link;
    int handles;
    bool closing;
    bool busy; /* a response is in progress: further requests wait */
    bool keep_alive;
    bool continued;  /* "100 Continue" sent for the current request */
    bool ending;     /* shutdown requested: nothing more is written or parsed */
    bool in_process; /* inside process(): a finished response must not re-enter it */
    core_str_t in;
    core_str_t out; /* bytes to write at the end of this loop step */
    stream_t st;
} conn_t;

typedef struct {
    uv_write_t req;
    conn_t *c;
    char data[];
} wreq_t;

static void stream_step(conn_t *c);
static void process(conn_t *c);

static void on_handle_closed(uv_handle_t *h) {
    conn_t *c = h->data;
    if (--c->handles > 0)
        return;
    core_str_free(&c->in);
    core_str_free(&c->out);
    core_str_free(&c->st.pending);
    free(c->st.model_json);
    free(c->st.prompt);
    free(c);
}

static void stream_end(conn_t *c) {
    if (!c->st.active)
        return;
    c->st.active = false;
    g.streams_open--;
}

static void conn_close(conn_t *c) {
    if (c->closing)
        return;
    c->closing = true;
    stream_end(c);
    core_list_remove(&c->link);
    g.connections_open--;
    uv_close((uv_handle_t *)&c->timer, on_handle_closed);
    uv_close((uv_handle_t *)&c->tcp, on_handle_closed);
}

/* The client went away in the middle of a stream. */
static void client_closed(conn_t *c) {
    if (c->st.active) {
        g.streams_client_closed++;
        c->st.ks->streams_client_closed++;
    }
    conn_close(c);
}

static void on_write(uv_write_t *req, int status) {
    wreq_t *w = (wreq_t *)req;
    conn_t *c = w->c;
    free(w);
    if (c->closing)
        return;
    if (status < 0) {
        client_closed(c);
        return;
    }
    if (c->st.wait_drain &&
        uv_stream_get_write_queue_size((uv_stream_t *)&c->tcp) < WRITE_HIGH_WATER / 4) {
        c->st.wait_drain = false;
        stream_step(c);
    }
}

static void flush(conn_t *c) {
    if (c->closing || c->ending || c->out.len == 0)
        return;
    wreq_t *w = core_malloc(sizeof *w + c->out.len);
    w->c = c;
    memcpy(w->data, c->out.ptr, c->out.len);
    uv_buf_t b = uv_buf_init(w->data, (unsigned)c->out.len);
    c->out.len = 0;
    int rc = uv_write(&w->req, (uv_stream_t *)&c->tcp, &b, 1, on_write);
    if (rc < 0) {
        free(w);
        client_closed(c);
    }
}

static void on_linger_done(uv_timer_t *t) {
    conn_close(t->data);
}

static void on_shutdown(uv_shutdown_t *req, int status) {
    conn_t *c = req->data;
    free(req);
    if (c->closing)
        return;
    if (status < 0) {
        conn_close(c);
        return;
    }
    /* Closing a socket with unread input sends a reset, which can destroy the response before
     * the client reads it (a refused upload is still being sent). Keep reading and discarding
     * until the client closes, for a bounded time. */
    uv_timer_start(&c->timer, on_linger_done, 5000, 0);
}

/* Closes after everything written so far has gone out (FIN, not RST). */
static void conn_end(conn_t *c) {
    flush(c);
    if (c->closing || c->ending)
        return;
    c->ending = true;
    uv_shutdown_t *req = core_malloc(sizeof *req);
    req->data = c;
    if (uv_shutdown(req, (uv_stream_t *)&c->tcp, on_shutdown) < 0) {
        free(req);
        conn_close(c);
    }
    uv_timer_stop(&c->timer);
}

/* ---- responses ------------------------------------------------------------------------------- */

static const char *reason_phrase(int status) {
    switch (status) {
    case 100:
        return "Continue";
    case 200:
        return "OK";
    case 400:
        return "Bad Request";
    case 401:
        return "Unauthorized";
    case 402:
        return "Payment Required";
    case 403:
        return "Forbidden";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 408:
        return "Request Timeout";
    case 409:
        return "Conflict";
    case 413:
        return "Payload Too Large";
    case 422:
        return "Unprocessable Entity";
    case 429:
        return "Too Many Requests";
    case 431:
        return "Request Header Fields Too Large";
    case 500:
        return "Internal Server Error";
    case 502:
        return "Bad Gateway";
    case 503:
        return "Service Unavailable";
    case 504:
        return "Gateway Timeout";
    case 529:
        return "Site Overloaded";
    default:
        return "Status";
    }
}

static void rfc3339_in(char *buf, size_t cap, int64_t seconds_from_now) {
    time_t t = time(NULL) + seconds_from_now;
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(buf, cap, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

/* A complete response with a body; `extra` holds more header lines ("name: value\r\n"). */
static void respond(conn_t *c, int status, const char *ctype, const char *extra, const char *body,
                    size_t len) {
    core_str_appendf(&c->out,
                     "HTTP/1.1 %d %s\r\ncontent-type: %s\r\ncontent-length: %zu\r\n%s%s\r\n",
                     status, reason_phrase(status), ctype, len, extra ? extra : "",
                     c->keep_alive ? "" : "connection: close\r\n");
    core_str_append(&c->out, body, len);
    if (c->keep_alive)
        flush(c);
    else
        conn_end(c);
}

static void respond_json(conn_t *c, int status, json_t *body) {
    char *s = json_dumps(body, JSON_COMPACT);
    respond(c, status, "application/json", NULL, s, strlen(s));
    free(s);
    json_decref(body);
}

/* An error of the mock itself (bad scenario, bad control request), not a provider error. */
static void respond_mock_error(conn_t *c, int status, const char *message) {
    respond_json(c, status,
                 json_pack("{s:{s:s,s:s}}", "error", "type", "mock_error", "message", message));
}

/* ---- provider error responses ---------------------------------------------------------------- */

typedef struct {
    bool anthropic;
    const char *type;
    const char *message;
    const char *code;   /* OpenAI "code" string, NULL = null */
    int numeric_code;   /* OpenRouter form {"code":<n>,...} when > 0 */
    const char *detail; /* Anthropic error.details.error_code */
} err_body_t;

static char *error_body(const err_body_t *e, uint64_t id) {
    json_t *err;
    if (e->anthropic) {
        err = json_pack("{s:s,s:s}", "type", e->type, "message", e->message);
        if (e->detail)
            json_object_set_new(err, "details", json_pack("{s:s}", "error_code", e->detail));
        char rid[48];
        snprintf(rid, sizeof rid, "req_mock%llu", (unsigned long long)id);
        json_t *root = json_pack("{s:s,s:o,s:s}", "type", "error", "error", err, "request_id", rid);
        char *s = json_dumps(root, JSON_COMPACT | JSON_PRESERVE_ORDER);
        json_decref(root);
        return s;
    }
    if (e->numeric_code > 0)
        err =
            json_pack("{s:i,s:s,s:{}}", "code", e->numeric_code, "message", e->message, "metadata");
    else
        err = json_pack("{s:s,s:s,s:n,s:o}", "message", e->message, "type", e->type, "param",
                        "code", e->code ? json_string(e->code) : json_null());
    json_t *root = json_pack("{s:o}", "error", err);
    char *s = json_dumps(root, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(root);
    return s;
}

static void respond_provider_error(conn_t *c, const scenario_t *sc, bool anthropic, int status,
                                   key_state_t *ks, uint64_t id) {
    err_body_t e = {
        .anthropic = anthropic, .type = "api_error", .message = "Internal server error"};
    core_str_t h = {0};
    if (anthropic)
        core_str_appendf(&h, "request-id: req_mock%llu\r\n", (unsigned long long)id);
    else
        core_str_appendf(&h, "x-request-id: req_mock%llu\r\n", (unsigned long long)id);
    switch (status) {
    case 400:
        e.type = "invalid_request_error";
        e.message = "messages: field required";
        break;
    case 401:
        e.type = anthropic ? "authentication_error" : "invalid_request_error";
        e.message = anthropic ? "invalid x-api-key" : "Incorrect API key provided";
        e.code = "invalid_api_key";
        break;
    case 402:
        e.type = anthropic ? "billing_error" : "insufficient_credits";
        e.message = "Insufficient credits. Add more using https://openrouter.ai/credits";
        e.numeric_code = 402;
        break;
    case 403:
        e.type = "permission_error";
        e.message = "Your API key does not have permission to use the specified resource.";
        break;
    case 404:
        e.type = "not_found_error";
        e.message = "Not found";
        break;
    case 413:
        e.type = "request_too_large";
        e.message = "Request exceeds the maximum allowed number of bytes.";
        break;
    case 429:
        if (sc->spend_cap) {
            e.type = "rate_limit_error";
            e.message = "You have reached your specified workspace API usage limits.";
            e.detail = "enforced_spend_limit_reached";
            e.code = "enforced_spend_limit_reached";
        } else if (sc->quota) {
            e.type = "insufficient_quota";
            e.code = "insufficient_quota";
            e.message = "You exceeded your current quota, please check your plan and billing "
                        "details.";
        } else if (anthropic) {
            e.type = "rate_limit_error";
            e.message = "This request would exceed the rate limit for your organization (mock) "
                        "of 30,000 input tokens per minute. For details, refer to: "
                        "https://docs.anthropic.com/en/api/rate-limits. You can see the response "
                        "headers for current usage. Please reduce the prompt length or the "
                        "maximum tokens requested, or try again later.";
        } else {
            e.type = "tokens";
            e.code = "rate_limit_exceeded";
            e.message = "Rate limit reached for gpt-4o in organization org-XXXX on tokens per min "
                        "(TPM): Limit 30000, Used 29937, Requested 385. Please try again in "
                        "644ms. Visit https://platform.openai.com/account/rate-limits to learn "
                        "more.";
        }
        break;
    case 503:
        e.type = anthropic ? "api_error" : "server_error";
        e.message = "Service unavailable";
        e.numeric_code = anthropic ? 0 : 503;
        break;
    case 529:
        e.type = "overloaded_error";
        e.message = "Overloaded";
        break;
    default:
        if (status >= 500) {
            e.type = anthropic ? "api_error" : "server_error";
            e.message = anthropic ? "Internal server error"
                                  : "The server had an error while processing your request.";
        } else {
            e.type = "invalid_request_error";
            e.message = "Request refused";
        }
    }
    if (sc->type[0])
        e.type = sc->type;
    bool plain_429 = status == 429 && !sc->spend_cap && !sc->quota;
    if (plain_429)
        ks->consecutive_429++;
    /* Waits: escalate multiplies by the number of successive 429s of this key. */
    int mult = sc->escalate && plain_429 ? ks->consecutive_429 : 1;
    if (sc->retry_after_ms >= 0)
        core_str_appendf(&h, "retry-after-ms: %lld\r\n", (long long)sc->retry_after_ms * mult);
    if (sc->retry_after >= 0)
        core_str_appendf(&h, "retry-after: %g\r\n", sc->retry_after * mult);
    if (plain_429) {
        if (anthropic) {
            char when[40];
            int reset = sc->reset_s >= 0      ? sc->reset_s
                        : sc->retry_after > 0 ? (int)(sc->retry_after * mult + 0.999)
                                              : 60;
            rfc3339_in(when, sizeof when, reset);
            core_str_appendf(&h,
                             "anthropic-ratelimit-requests-limit: 1000\r\n"
                             "anthropic-ratelimit-requests-remaining: 0\r\n"
                             "anthropic-ratelimit-requests-reset: %s\r\n",
                             when);
        } else {
            core_str_appendf(&h,
                             "x-ratelimit-limit-requests: 5000\r\n"
                             "x-ratelimit-limit-tokens: 160000\r\n"
                             "x-ratelimit-remaining-requests: 0\r\n"
                             "x-ratelimit-remaining-tokens: 159976\r\n"
                             "x-ratelimit-reset-requests: %s\r\n"
                             "x-ratelimit-reset-tokens: 12ms\r\n",
                             sc->reset[0] ? sc->reset : "6m0s");
        }
    }
    if (sc->should_retry >= 0)
        core_str_appendf(&h, "x-should-retry: %s\r\n", sc->should_retry ? "true" : "false");
    char *body = error_body(&e, id);
    respond(c, status, "application/json", h.ptr, body, strlen(body));
    free(body);
    core_str_free(&h);
}

/* ---- streamed answers ------------------------------------------------------------------------ */

enum { PH_START, PH_TOKENS, PH_FINISH, PH_END, PH_PINGS, PH_SILENT };
enum { GEN_UNIT, GEN_END, GEN_DROP, GEN_WAIT };

/* Appends an SSE event (name may be NULL) to the pending unit, with the scenario's line ends,
 * an optional multi-line data field, and keep-alives when asked. */
static void add_event(stream_t *s, const char *name, const char *data, size_t dlen) {
    const char *eol = s->sc.crlf ? "\r\n" : s->sc.cr ? "\r" : "\n";
    core_str_t *p = &s->pending;
    if (s->first_unit && s->sc.bom)
        core_str_append(p, "\xEF\xBB\xBF", 3);
    s->first_unit = false;
    if (s->sc.openrouter)
        core_str_appendf(p, ": OPENROUTER PROCESSING%s%s", eol, eol);
    if (name)
        core_str_appendf(p, "event: %s%s", name, eol);
    /* Multi-line data: break a JSON object after its first comma; joined with "\n" it is still
     * the same JSON. */
    const char *cut = s->sc.multiline && dlen && data[0] == '{' ? memchr(data, ',', dlen) : NULL;
    if (cut) {
        size_t first = (size_t)(cut - data) + 1;
        core_str_appends(p, "data: ");
        core_str_append(p, data, first);
        core_str_appendf(p, "%sdata: ", eol);
        core_str_append(p, data + first, dlen - first);
    } else {
        core_str_appends(p, "data: ");
        core_str_append(p, data, dlen);
    }
    core_str_appendf(p, "%s%s", eol, eol);
}

static void add_ping(stream_t *s) {
    const char *eol = s->sc.crlf ? "\r\n" : s->sc.cr ? "\r" : "\n";
    if (s->anthropic) {
        static const char ping[] = "{\"type\": \"ping\"}";
        add_event(s, "ping", ping, sizeof ping - 1);
    } else {
        core_str_appendf(&s->pending, ": ping%s%s", eol, eol);
    }
}

/* The text of token i (a leading space after the first): prompt words, then fillers. */
static void token_text(stream_t *s, core_str_t *out) {
    core_str_t w = {0};
    if (s->i > 0)
        core_str_append(&w, " ", 1);
    if (s->prompt && s->word_off < s->prompt_len) {
        const char *word = s->prompt + s->word_off;
        size_t n = strlen(word);
        core_str_append(&w, word, n);
        s->word_off += n + 1;
    } else if (s->sc.utf8) {
        core_str_appendf(&w, "w\xC3\xB6rd\xE2\x82\xAC%d", s->i + 1);
    } else {
        core_str_appendf(&w, "token%d", s->i + 1);
    }
    core_str_append_json_string(out, w.ptr, w.len);
    core_str_free(&w);
}

static void openai_head(stream_t *s, core_str_t *o) {
    core_str_appendf(o,
                     "{\"id\":\"chatcmpl-mock%llu\",\"object\":\"chat.completion.chunk\","
                     "\"created\":%lld,\"model\":%s,\"system_fingerprint\":\"fp_mock\",",
                     (unsigned long long)s->id, (long long)time(NULL), s->model_json);
}

static void add_error_event(stream_t *s) {
    core_str_t d = {0};
    const char *type = s->sc.type[0] ? s->sc.type : NULL;
    if (s->anthropic) {
        core_str_appendf(&d, "{\"type\":\"error\",\"error\":{\"type\":\"%s\",\"message\":\"%s\"}}",
                         type ? type : "overloaded_error",
                         type && strcmp(type, "overloaded_error") != 0 ? "Internal server error"
                                                                       : "Overloaded");
        add_event(s, "error", d.ptr, d.len);
    } else if (strcmp(s->sc.form, "openrouter") == 0) {
        core_str_appends(&d, "{\"error\":{\"code\":502,\"message\":\"Provider returned error\","
                             "\"metadata\":{\"provider_name\":\"mock\"}}}");
        add_event(s, NULL, d.ptr, d.len);
    } else if (strcmp(s->sc.form, "finish") == 0) {
        openai_head(s, &d);
        core_str_appends(&d, "\"error\":{\"code\":502,\"message\":\"Provider returned error\"},"
                             "\"choices\":[{\"index\":0,\"delta\":{\"content\":\"\"},"
                             "\"finish_reason\":\"error\"}]}");
        add_event(s, NULL, d.ptr, d.len);
    } else {
        core_str_appendf(&d,
                         "{\"error\":{\"message\":\"The server had an error while processing your "
                         "request. Sorry about that!\",\"type\":\"%s\",\"param\":null,"
                         "\"code\":null}}",
                         type ? type : "server_error");
        add_event(s, NULL, d.ptr, d.len);
    }
    core_str_free(&d);
}

/* Produces the next unit of the answer into s->pending and the delay before it. */
static int gen_next(conn_t *c) {
    stream_t *s = &c->st;
    core_str_t d = {0};
    s->delay_ms = 0;
    switch (s->phase) {
    case PH_PINGS:
        if (s->sc.ping_ms == 0) {
            s->phase = PH_SILENT;
            return GEN_WAIT;
        }
        s->delay_ms = (uint64_t)s->sc.ping_ms;
        if (s->anthropic)
            add_ping(s);
        else
            core_str_appends(&s->pending, ": OPENROUTER PROCESSING\n\n");
        return GEN_UNIT;
    case PH_SILENT:
        return GEN_WAIT;
    case PH_START:
        if (s->anthropic) {
            core_str_appendf(&d,
                             "{\"type\":\"message_start\",\"message\":{\"id\":\"msg_mock%llu\","
                             "\"type\":\"message\",\"role\":\"assistant\",\"content\":[],"
                             "\"model\":%s,\"stop_reason\":null,\"stop_sequence\":null,"
                             "\"usage\":{\"input_tokens\":%lld,\"cache_creation_input_tokens\":0,"
                             "\"cache_read_input_tokens\":0,\"output_tokens\":1}}}",
                             (unsigned long long)s->id, s->model_json, (long long)s->input_tokens);
            add_event(s, "message_start", d.ptr, d.len);
            d.len = 0;
            core_str_appends(&d, "{\"type\":\"content_block_start\",\"index\":0,"
                                 "\"content_block\":{\"type\":\"text\",\"text\":\"\"}}");
            add_event(s, "content_block_start", d.ptr, d.len);
            add_ping(s); /* as in the documented sample */
        } else {
            openai_head(s, &d);
            core_str_appends(&d, "\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\","
                                 "\"content\":\"\",\"refusal\":null},\"logprobs\":null,"
                                 "\"finish_reason\":null}],\"usage\":null}");
            add_event(s, NULL, d.ptr, d.len);
        }
        s->phase = PH_TOKENS;
        break;
    case PH_TOKENS:
        if ((s->sc.kind == SC_ERROR_EVENT || s->sc.kind == SC_DROP) &&
            s->i == (s->sc.after < s->ntokens ? s->sc.after : s->ntokens)) {
            core_str_free(&d);
            if (s->sc.kind == SC_DROP)
                return GEN_DROP;
            add_error_event(s);
            s->phase = PH_END;
            return GEN_UNIT;
        }
        if (s->i >= s->ntokens) {
            s->phase = PH_FINISH;
            core_str_free(&d);
            return gen_next(c);
        }
        /* Pacing: the first delta comes after ttft_ms, the next ones at tokens_per_s. */
        if (s->i == 0)
            s->delay_ms = (uint64_t)s->sc.ttft_ms;
        else if (s->sc.tokens_per_s > 0)
            s->delay_ms = (uint64_t)(1000.0 / s->sc.tokens_per_s);
        if (s->sc.pings && s->i > 0)
            add_ping(s);
        if (s->anthropic) {
            core_str_appends(&d, "{\"type\":\"content_block_delta\",\"index\":0,\"delta\":"
                                 "{\"type\":\"text_delta\",\"text\":");
            token_text(s, &d);
            core_str_appends(&d, "}}");
            add_event(s, "content_block_delta", d.ptr, d.len);
        } else {
            openai_head(s, &d);
            core_str_appends(&d, "\"choices\":[{\"index\":0,\"delta\":{\"content\":");
            token_text(s, &d);
            core_str_appends(&d, "},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}");
            add_event(s, NULL, d.ptr, d.len);
        }
        s->i++;
        break;
    case PH_FINISH:
        if (s->anthropic) {
            core_str_appends(&d, "{\"type\":\"content_block_stop\",\"index\":0}");
            add_event(s, "content_block_stop", d.ptr, d.len);
            d.len = 0;
            core_str_appendf(&d,
                             "{\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"%s\","
                             "\"stop_sequence\":null},\"usage\":{",
                             s->truncated ? "max_tokens" : "end_turn");
            if (s->sc.usage_in_delta)
                core_str_appendf(&d,
                                 "\"input_tokens\":%lld,\"cache_creation_input_tokens\":0,"
                                 "\"cache_read_input_tokens\":0,",
                                 (long long)s->input_tokens);
            core_str_appendf(&d, "\"output_tokens\":%d}}", s->ntokens);
            add_event(s, "message_delta", d.ptr, d.len);
            d.len = 0;
            core_str_appends(&d, "{\"type\":\"message_stop\"}");
            add_event(s, "message_stop", d.ptr, d.len);
        } else {
            openai_head(s, &d);
            core_str_appendf(&d,
                             "\"choices\":[{\"index\":0,\"delta\":{},\"logprobs\":null,"
                             "\"finish_reason\":\"%s\"}],\"usage\":null}",
                             s->truncated ? "length" : "stop");
            add_event(s, NULL, d.ptr, d.len);
            if (s->sc.usage != USAGE_NONE) {
                d.len = 0;
                openai_head(s, &d);
                if (s->sc.usage == USAGE_EMPTY)
                    core_str_appends(&d, "\"choices\":[],");
                else if (s->sc.usage == USAGE_NULL)
                    core_str_appends(&d, "\"choices\":null,");
                core_str_appendf(&d,
                                 "\"usage\":{\"prompt_tokens\":%lld,\"completion_tokens\":%d,"
                                 "\"total_tokens\":%lld}}",
                                 (long long)s->input_tokens, s->ntokens,
                                 (long long)s->input_tokens + s->ntokens);
                add_event(s, NULL, d.ptr, d.len);
            }
            add_event(s, NULL, "[DONE]", 6);
        }
        s->phase = PH_END;
        break;
    case PH_END:
    default:
        core_str_free(&d);
        return GEN_END;
    }
    core_str_free(&d);
    return GEN_UNIT;
}

/* Appends bytes as one HTTP chunk. */
static void out_chunk(conn_t *c, const char *p, size_t n) {
    if (n == 0)
        return;
    core_str_appendf(&c->out, "%zx\r\n", n);
    core_str_append(&c->out, p, n);
    core_str_append(&c->out, "\r\n", 2);
}

/* Where the next split write ends: after `split` bytes, or earlier inside a multibyte character
 * or between a CR and its LF, so that every such boundary is exercised. */
static size_t next_cut(const stream_t *s) {
    const unsigned char *p = (const unsigned char *)s->pending.ptr;
    size_t off = s->pending_off, end = off + (size_t)s->sc.split;
    if (end > s->pending.len)
        end = s->pending.len;
    for (size_t q = off + 1; q < end; q++) {
        if ((p[q] & 0xC0) == 0x80 && (p[q - 1] & 0xC0) == 0xC0)
            return q;
        if (p[q - 1] == '\r' && p[q] == '\n')
            return q;
    }
    return end;
}

static void on_timer(uv_timer_t *t) {
    stream_step(t->data);
}

static void stream_finish(conn_t *c) {
    core_str_appends(&c->out, "0\r\n\r\n");
    stream_end(c);
    g.streams_completed++;
    c->st.ks->streams_completed++;
    c->busy = false;
    if (!c->keep_alive) {
        conn_end(c);
        return;
    }
    flush(c);
    if (!c->in_process)
        process(c); /* a pipelined request may be waiting */
}

static void stream_step_inner(conn_t *c) {
    stream_t *s = &c->st;
    for (;;) {
        if (c->closing || !s->active)
            return;
        if (s->pending_off < s->pending.len) {
            if (s->delay_ms > 0) {
                uint64_t ms = s->delay_ms;
                s->delay_ms = 0;
                uv_timer_start(&c->timer, on_timer, ms, 0);
                return;
            }
            if (s->sc.split > 0) {
                size_t cut = next_cut(s);
                out_chunk(c, s->pending.ptr + s->pending_off, cut - s->pending_off);
                s->pending_off = cut;
                /* Pieces go out in separate writes a moment apart, so the reader gets them in
                 * separate reads. */
                flush(c);
                if (s->sc.split_ms > 0) {
                    uv_timer_start(&c->timer, on_timer, (uint64_t)s->sc.split_ms, 0);
                    if (s->pending_off >= s->pending.len)
                        s->pending.len = s->pending_off = 0;
                    return;
                }
            } else {
                out_chunk(c, s->pending.ptr + s->pending_off, s->pending.len - s->pending_off);
                s->pending_off = s->pending.len;
            }
            if (s->pending_off >= s->pending.len)
                s->pending.len = s->pending_off = 0;
            continue;
        }
        if (uv_stream_get_write_queue_size((uv_stream_t *)&c->tcp) + c->out.len >
            WRITE_HIGH_WATER) {
            s->wait_drain = true;
            return;
        }
        switch (gen_next(c)) {
        case GEN_UNIT:
            continue;
        case GEN_END:
            stream_finish(c);
            return;
        case GEN_DROP:
            stream_end(c);
            g.streams_dropped++;
            s->ks->streams_dropped++;
            conn_end(c);
            return;
        case GEN_WAIT:
        default:
            return;
        }
    }
}

static void stream_step(conn_t *c) {
    stream_step_inner(c);
    flush(c);
}

/* ---- provider requests ----------------------------------------------------------------------- */

static void json_append_model(char **dst, const char *model) {
    core_str_t s = {0};
    core_str_append_json_string(&s, model, strlen(model));
    *dst = s.ptr;
}

/* Keeps the last user message as NUL-separated words, capped at 4 KiB. */
static void keep_prompt(stream_t *s, const char *text) {
    size_t n = strlen(text);
    if (n > 4096) {
        n = 4096;
        while (n > 0 && ((unsigned char)text[n] & 0xC0) == 0x80)
            n--;
    }
    char *p = core_malloc(n + 1);
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        if (isspace((unsigned char)text[i])) {
            if (o > 0 && p[o - 1] != '\0')
                p[o++] = '\0';
        } else {
            p[o++] = text[i];
        }
    }
    if (o > 0 && p[o - 1] != '\0')
        p[o++] = '\0';
    s->prompt = p;
    s->prompt_len = o;
}

/* Bytes of every text the model would read (system and message contents). */
static size_t content_bytes(const json_t *v) {
    if (json_is_string(v))
        return json_string_length(v);
    size_t n = 0;
    if (json_is_array(v)) {
        size_t i;
        const json_t *x;
        json_array_foreach(v, i, x) n += content_bytes(json_object_get(x, "content")) +
                                         content_bytes(json_object_get(x, "text"));
    }
    return n;
}

static bool fail_lockout(key_state_t *ks, const scenario_t *sc, uint64_t now) {
    if (!sc->lockout)
        return false;
    unsigned n = 0;
    for (unsigned i = 0; i < FAIL_RING; i++)
        if (ks->fail_ms[i] && now - ks->fail_ms[i] <= (uint64_t)sc->lockout_window_ms)
            n++;
    if (n > (unsigned)sc->lockout_max) {
        ks->locked_until_ms = now + (uint64_t)sc->lockout_ms;
        return true;
    }
    return false;
}

static void record_status(key_state_t *ks, int status) {
    count_status(ks, status);
    if (status >= 200 && status < 300) {
        ks->consecutive_429 = 0;
        return;
    }
    ks->fail_ms[ks->fail_next++ % FAIL_RING] = core_now_ms();
}

typedef struct {
    const char *method, *path;
    size_t method_len, path_len;
    const char *api_key_hdr, *auth_hdr, *scenario_hdr;
    size_t api_key_len, auth_len, scenario_len;
    const char *body;
    size_t body_len;
} request_t;

static char *dup_n(const char *p, size_t n) {
    return core_strndup(p ? p : "", p ? n : 0);
}

static void handle_provider(conn_t *c, const request_t *r, bool anthropic) {
    uint64_t id = ++g.seq;
    g.requests++;
    char *key = NULL;
    if (anthropic && r->api_key_hdr) {
        key = dup_n(r->api_key_hdr, r->api_key_len);
    } else if (!anthropic && r->auth_hdr && r->auth_len > 7 &&
               strncasecmp(r->auth_hdr, "Bearer ", 7) == 0) {
        key = dup_n(r->auth_hdr + 7, r->auth_len - 7);
    }
    key_state_t *ks = key_state(key ? key : "");
    ks->requests++;
    /* Kept so that tests can read what the dispatcher sent (context, prompt, model). */
    json_decref(ks->last_request);
    ks->last_request = r->body ? json_loadb(r->body, r->body_len, 0, NULL) : NULL;
    scenario_t sc;
    char err[160];
    if (!key || !*key) {
        sc_defaults(&sc);
        record_status(ks, 401);
        respond_provider_error(c, &sc, anthropic, 401, ks, id);
        free(key);
        return;
    }
    /* Which scenario: the request header, else the key's, else the default's. */
    char *spec = NULL;
    if (r->scenario_hdr) {
        spec = dup_n(r->scenario_hdr, r->scenario_len);
    } else {
        key_state_t *src = ks->scenario ? ks : key_state("*");
        if (src->scenario) {
            spec = core_strdup(src->scenario);
            if (src->count_left > 0 && --src->count_left == 0) {
                free(src->scenario);
                src->scenario = NULL;
                src->count_left = -1;
            }
        }
    }
    bool ok = sc_parse(spec ? spec : "ok", &sc, err, sizeof err);
    free(spec);
    free(key);
    if (!ok) {
        respond_mock_error(c, 400, err);
        return;
    }
    uint64_t now = core_now_ms();
    if (now < ks->locked_until_ms || fail_lockout(ks, &sc, now)) {
        count_status(ks, 429);
        err_body_t e = {.anthropic = anthropic,
                        .type = anthropic ? "rate_limit_error" : "rate_limit_exceeded",
                        .code = "too_many_failed_attempts",
                        .message = "Too many failed attempts (> 20) resulting in a non-success "
                                   "status code. Please wait 30s and try again."};
        char *body = error_body(&e, id);
        respond(c, 429, "application/json", NULL, body, strlen(body));
        free(body);
        return;
    }
    if (sc.kind == SC_STATUS) {
        record_status(ks, sc.status);
        respond_provider_error(c, &sc, anthropic, sc.status, ks, id);
        return;
    }
    json_t *root = json_loadb(r->body, r->body_len, 0, NULL);
    const json_t *msgs = json_object_get(root, "messages");
    const char *model = json_string_value(json_object_get(root, "model"));
    if (!json_is_array(msgs) || !model || !json_is_true(json_object_get(root, "stream"))) {
        json_decref(root);
        record_status(ks, 400);
        respond_provider_error(c, &sc, anthropic, 400, ks, id);
        return;
    }
    record_status(ks, 200);
    stream_t *s = &c->st;
    free(s->model_json);
    free(s->prompt);
    core_str_t keep = s->pending;
    memset(s, 0, sizeof *s);
    s->pending = keep;
    s->pending.len = 0;
    s->active = true;
    s->anthropic = anthropic;
    s->sc = sc;
    s->ks = ks;
    s->id = id;
    s->first_unit = true;
    json_append_model(&s->model_json, model);
    s->input_tokens =
        1 + (int64_t)((content_bytes(msgs) + content_bytes(json_object_get(root, "system"))) / 4);
    s->ntokens = sc.tokens;
    json_int_t max = json_integer_value(json_object_get(root, "max_tokens"));
    if (max > 0 && max < s->ntokens) {
        s->ntokens = (int)max;
        s->truncated = true;
    }
    for (size_t i = json_array_size(msgs); i-- > 0;) {
        const json_t *m = json_array_get(msgs, i);
        const char *role = json_string_value(json_object_get(m, "role"));
        const char *text = json_string_value(json_object_get(m, "content"));
        if (role && text && strcmp(role, "user") == 0) {
            keep_prompt(s, text);
            break;
        }
    }
    json_decref(root);
    c->busy = true;
    g.streams_open++;
    if (g.streams_open > g.streams_open_max)
        g.streams_open_max = g.streams_open;
    if (sc.kind == SC_HANG) {
        s->phase = PH_SILENT;
        return;
    }
    /* Status line and headers as the providers send them. */
    core_str_t *o = &c->out;
    if (anthropic) {
        char r1[40], r2[40];
        rfc3339_in(r1, sizeof r1, 1);
        rfc3339_in(r2, sizeof r2, 2);
        core_str_appendf(o,
                         "HTTP/1.1 200 OK\r\n"
                         "content-type: text/event-stream; charset=utf-8\r\n"
                         "cache-control: no-cache\r\n"
                         "request-id: req_mock%llu\r\n"
                         "anthropic-ratelimit-requests-limit: 1000\r\n"
                         "anthropic-ratelimit-requests-remaining: %ld\r\n"
                         "anthropic-ratelimit-requests-reset: %s\r\n"
                         "anthropic-ratelimit-input-tokens-limit: 80000\r\n"
                         "anthropic-ratelimit-input-tokens-remaining: %ld\r\n"
                         "anthropic-ratelimit-input-tokens-reset: %s\r\n"
                         "anthropic-ratelimit-output-tokens-limit: 16000\r\n"
                         "anthropic-ratelimit-output-tokens-remaining: 16000\r\n"
                         "anthropic-ratelimit-output-tokens-reset: %s\r\n"
                         "anthropic-ratelimit-tokens-limit: 96000\r\n"
                         "anthropic-ratelimit-tokens-remaining: %ld\r\n"
                         "anthropic-ratelimit-tokens-reset: %s\r\n",
                         (unsigned long long)id,
                         sc.remaining_requests >= 0 ? sc.remaining_requests : 999, r1,
                         sc.remaining_tokens >= 0 ? sc.remaining_tokens : 80000, r1, r2,
                         sc.remaining_tokens >= 0 ? sc.remaining_tokens : 96000, r1);
    } else {
        core_str_appendf(o,
                         "HTTP/1.1 200 OK\r\n"
                         "content-type: text/event-stream; charset=utf-8\r\n"
                         "x-request-id: req_mock%llu\r\n"
                         "openai-processing-ms: %d\r\n"
                         "x-ratelimit-limit-requests: 5000\r\n"
                         "x-ratelimit-limit-tokens: 160000\r\n"
                         "x-ratelimit-remaining-requests: %ld\r\n"
                         "x-ratelimit-remaining-tokens: %ld\r\n"
                         "x-ratelimit-reset-requests: 12ms\r\n"
                         "x-ratelimit-reset-tokens: 9ms\r\n",
                         (unsigned long long)id, sc.ttft_ms,
                         sc.remaining_requests >= 0 ? sc.remaining_requests : 4999,
                         sc.remaining_tokens >= 0 ? sc.remaining_tokens : 159976);
        if (sc.openrouter)
            core_str_appendf(o, "x-generation-id: gen-mock%llu\r\n", (unsigned long long)id);
    }
    if (sc.should_retry >= 0)
        core_str_appendf(o, "x-should-retry: %s\r\n", sc.should_retry ? "true" : "false");
    core_str_appendf(o, "transfer-encoding: chunked\r\n%s\r\n",
                     c->keep_alive ? "" : "connection: close\r\n");
    s->phase = sc.kind == SC_HANG_PINGS ? PH_PINGS : PH_START;
    stream_step(c);
}

/* ---- control and statistics ------------------------------------------------------------------ */

static void handle_control(conn_t *c, const request_t *r) {
    json_t *root = json_loadb(r->body, r->body_len, 0, NULL);
    if (!json_is_object(root)) {
        json_decref(root);
        respond_mock_error(c, 400, "body must be a JSON object");
        return;
    }
    if (json_is_true(json_object_get(root, "reset"))) {
        const char *k;
        void *v;
        core_map_iter_t it = 0;
        while (core_map_next(g.keys, &it, &k, &v)) {
            key_state_t *ks = v;
            free(ks->scenario);
            ks->scenario = NULL;
            ks->count_left = -1;
            ks->consecutive_429 = 0;
            ks->locked_until_ms = 0;
            memset(ks->fail_ms, 0, sizeof ks->fail_ms);
        }
        json_decref(root);
        respond_json(c, 200, json_pack("{s:b}", "ok", 1));
        return;
    }
    const char *key = json_string_value(json_object_get(root, "key"));
    const char *name = json_string_value(json_object_get(root, "scenario"));
    if (!key || !name) {
        json_decref(root);
        respond_mock_error(c, 400, "need \"key\" and \"scenario\"");
        return;
    }
    core_str_t spec = {0};
    core_str_appends(&spec, name);
    const char *k;
    json_t *v;
    json_object_foreach(root, k, v) {
        if (!strcmp(k, "key") || !strcmp(k, "scenario") || !strcmp(k, "count"))
            continue;
        if (json_is_string(v))
            core_str_appendf(&spec, ";%s=%s", k, json_string_value(v));
        else if (json_is_integer(v))
            core_str_appendf(&spec, ";%s=%lld", k, (long long)json_integer_value(v));
        else if (json_is_real(v))
            core_str_appendf(&spec, ";%s=%g", k, json_real_value(v));
        else if (json_is_boolean(v))
            core_str_appendf(&spec, ";%s=%d", k, json_is_true(v) ? 1 : 0);
    }
    scenario_t sc;
    char err[160];
    if (!sc_parse(spec.ptr, &sc, err, sizeof err)) {
        core_str_free(&spec);
        json_decref(root);
        respond_mock_error(c, 400, err);
        return;
    }
    key_state_t *ks = key_state(key);
    free(ks->scenario);
    ks->scenario = spec.ptr; /* ownership moves */
    json_int_t count = json_integer_value(json_object_get(root, "count"));
    ks->count_left = count > 0 ? (long)count : -1;
    ks->consecutive_429 = 0;
    respond_json(c, 200, json_pack("{s:b,s:s}", "ok", 1, "scenario", ks->scenario));
    json_decref(root);
}

static void handle_stats(conn_t *c) {
    json_t *keys = json_object();
    const char *k;
    void *v;
    core_map_iter_t it = 0;
    while (core_map_next(g.keys, &it, &k, &v)) {
        key_state_t *ks = v;
        json_t *st = json_object();
        for (size_t i = 0; i < sizeof ks->statuses / sizeof ks->statuses[0]; i++) {
            if (ks->statuses[i].status == 0)
                break;
            char num[8];
            snprintf(num, sizeof num, "%d", ks->statuses[i].status);
            json_object_set_new(st, num, json_integer((json_int_t)ks->statuses[i].n));
        }
        json_object_set_new(keys, k,
                            json_pack("{s:I,s:o,s:I,s:I,s:I,s:s?,s:O?}", "requests",
                                      (json_int_t)ks->requests, "statuses", st, "streams_completed",
                                      (json_int_t)ks->streams_completed, "streams_client_closed",
                                      (json_int_t)ks->streams_client_closed, "streams_dropped",
                                      (json_int_t)ks->streams_dropped, "scenario", ks->scenario,
                                      "last_request", ks->last_request));
    }
    respond_json(c, 200,
                 json_pack("{s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:o}", "requests",
                           (json_int_t)g.requests, "streams_open", (json_int_t)g.streams_open,
                           "streams_open_max", (json_int_t)g.streams_open_max, "streams_completed",
                           (json_int_t)g.streams_completed, "streams_client_closed",
                           (json_int_t)g.streams_client_closed, "streams_dropped",
                           (json_int_t)g.streams_dropped, "connections_open",
                           (json_int_t)g.connections_open, "rejected", (json_int_t)g.rejected,
                           "keys", keys));
}

static void handle_stats_reset(conn_t *c) {
    g.requests = g.streams_completed = g.streams_client_closed = g.streams_dropped = 0;
    g.rejected = 0;
    g.streams_open_max = g.streams_open;
    const char *k;
    void *v;
    core_map_iter_t it = 0;
    while (core_map_next(g.keys, &it, &k, &v)) {
        key_state_t *ks = v;
        ks->requests = ks->streams_completed = ks->streams_client_closed = ks->streams_dropped = 0;
        memset(ks->statuses, 0, sizeof ks->statuses);
    }
    respond_json(c, 200, json_pack("{s:b}", "ok", 1));
}

/* ---- HTTP/1.1 request parsing ---------------------------------------------------------------- */

static bool is_path(const request_t *r, const char *p) {
    size_t n = r->path_len;
    const char *q = memchr(r->path, '?', n);
    if (q)
        n = (size_t)(q - r->path);
    return n == strlen(p) && memcmp(r->path, p, n) == 0;
}

static bool is_method(const request_t *r, const char *m) {
    return r->method_len == strlen(m) && memcmp(r->method, m, r->method_len) == 0;
}

static void route(conn_t *c, const request_t *r) {
    bool post = is_method(r, "POST");
    if (post && is_path(r, "/v1/messages")) {
        handle_provider(c, r, true);
    } else if (post && (is_path(r, "/v1/chat/completions") || is_path(r, "/chat/completions") ||
                        is_path(r, "/api/v1/chat/completions"))) {
        handle_provider(c, r, false);
    } else if (post && is_path(r, "/control")) {
        handle_control(c, r);
    } else if (is_method(r, "GET") && is_path(r, "/stats")) {
        handle_stats(c);
    } else if (post && is_path(r, "/stats/reset")) {
        handle_stats_reset(c);
    } else if (is_method(r, "GET") && is_path(r, "/health")) {
        respond(c, 200, "text/plain", NULL, "ok\n", 3);
    } else {
        respond_mock_error(c, 404, "no such endpoint");
    }
}

/* Decodes a chunked body in place from src; returns bytes consumed, 0 if incomplete, -1 if
 * malformed or over the cap. */
static long dechunk(const char *src, size_t n, core_str_t *body) {
    size_t i = 0;
    body->len = 0;
    for (;;) {
        const char *eol = memmem(src + i, n - i, "\r\n", 2);
        if (!eol)
            return n - i > 64 ? -1 : 0;
        char *end;
        unsigned long len = strtoul(src + i, &end, 16);
        if (end == src + i || (end < eol && *end != ';' && *end != ' '))
            return -1;
        if (len > MAX_BODY_BYTES || body->len + len > MAX_BODY_BYTES)
            return -1;
        i = (size_t)(eol - src) + 2;
        if (len == 0) {
            /* Trailers end with an empty line. */
            const char *fin = memmem(src + i, n - i, "\r\n", 2);
            while (fin && fin != src + i) {
                i = (size_t)(fin - src) + 2;
                fin = memmem(src + i, n - i, "\r\n", 2);
            }
            if (!fin)
                return 0;
            return (long)(i + 2);
        }
        if (n - i < len + 2)
            return 0;
        core_str_append(body, src + i, len);
        i += len + 2;
    }
}

static void send_status_and_close(conn_t *c, int status, const char *msg) {
    c->keep_alive = false;
    g.rejected++;
    respond_mock_error(c, status, msg);
}

/* Parses and handles complete requests from the input buffer, one at a time. */
static void process_inner(conn_t *c) {
    while (!c->busy && !c->closing && !c->ending && c->in.len > 0) {
        const char *buf = c->in.ptr;
        const char *hend = memmem(buf, c->in.len, "\r\n\r\n", 4);
        if (!hend) {
            if (c->in.len > MAX_HEADER_BYTES)
                send_status_and_close(c, 431, "request headers too large");
            return;
        }
        size_t hlen = (size_t)(hend - buf) + 4;
        if (hlen > MAX_HEADER_BYTES) {
            send_status_and_close(c, 431, "request headers too large");
            return;
        }
        request_t r = {0};
        const char *line_end = memmem(buf, hlen, "\r\n", 2);
        const char *sp1 = memchr(buf, ' ', (size_t)(line_end - buf));
        const char *sp2 = sp1 ? memchr(sp1 + 1, ' ', (size_t)(line_end - sp1 - 1)) : NULL;
        if (!sp1 || !sp2) {
            send_status_and_close(c, 400, "bad request line");
            return;
        }
        r.method = buf;
        r.method_len = (size_t)(sp1 - buf);
        r.path = sp1 + 1;
        r.path_len = (size_t)(sp2 - sp1 - 1);
        bool http10 = (size_t)(line_end - sp2 - 1) == 8 && memcmp(sp2 + 1, "HTTP/1.0", 8) == 0;
        c->keep_alive = !http10;
        long long clen = 0;
        bool chunked = false, expect100 = false;
        for (const char *p = line_end + 2; p < hend;) {
            const char *e = memmem(p, (size_t)(hend + 2 - p), "\r\n", 2);
            const char *colon = memchr(p, ':', (size_t)(e - p));
            if (colon) {
                size_t nl = (size_t)(colon - p);
                const char *v = colon + 1;
                while (v < e && (*v == ' ' || *v == '\t'))
                    v++;
                size_t vl = (size_t)(e - v);
                while (vl && (v[vl - 1] == ' ' || v[vl - 1] == '\t'))
                    vl--;
#define HDR(name) (nl == sizeof(name) - 1 && strncasecmp(p, name, nl) == 0)
                if (HDR("content-length")) {
                    char tmp[24];
                    if (vl == 0 || vl >= sizeof tmp) {
                        send_status_and_close(c, 400, "bad content-length");
                        return;
                    }
                    memcpy(tmp, v, vl);
                    tmp[vl] = '\0';
                    char *end;
                    clen = strtoll(tmp, &end, 10);
                    if (*end || clen < 0) {
                        send_status_and_close(c, 400, "bad content-length");
                        return;
                    }
                } else if (HDR("transfer-encoding")) {
                    chunked = vl >= 7 && strncasecmp(v + vl - 7, "chunked", 7) == 0;
                } else if (HDR("connection")) {
                    if (vl == 5 && strncasecmp(v, "close", 5) == 0)
                        c->keep_alive = false;
                    else if (vl == 10 && strncasecmp(v, "keep-alive", 10) == 0)
                        c->keep_alive = true;
                } else if (HDR("expect")) {
                    expect100 = vl == 12 && strncasecmp(v, "100-continue", 12) == 0;
                } else if (HDR("x-api-key")) {
                    r.api_key_hdr = v;
                    r.api_key_len = vl;
                } else if (HDR("authorization")) {
                    r.auth_hdr = v;
                    r.auth_len = vl;
                } else if (HDR("x-mock-scenario")) {
                    r.scenario_hdr = v;
                    r.scenario_len = vl;
                }
#undef HDR
            }
            p = e + 2;
        }
        if (clen > MAX_BODY_BYTES) {
            send_status_and_close(c, 413, "request body too large");
            return;
        }
        core_str_t dechunked = {0};
        size_t total;
        if (chunked) {
            long used = dechunk(buf + hlen, c->in.len - hlen, &dechunked);
            if (used < 0) {
                core_str_free(&dechunked);
                send_status_and_close(c, 413, "bad or too large chunked body");
                return;
            }
            if (used == 0) {
                core_str_free(&dechunked);
                if (expect100 && !c->continued) {
                    c->continued = true;
                    core_str_appends(&c->out, "HTTP/1.1 100 Continue\r\n\r\n");
                    flush(c);
                }
                return;
            }
            r.body = dechunked.ptr ? dechunked.ptr : "";
            r.body_len = dechunked.len;
            total = hlen + (size_t)used;
        } else {
            if (c->in.len < hlen + (size_t)clen) {
                if (expect100 && !c->continued) {
                    c->continued = true;
                    core_str_appends(&c->out, "HTTP/1.1 100 Continue\r\n\r\n");
                    flush(c);
                }
                return;
            }
            r.body = buf + hlen;
            r.body_len = (size_t)clen;
            total = hlen + (size_t)clen;
        }
        c->continued = false;
        route(c, &r);
        core_str_free(&dechunked);
        if (c->closing || c->ending)
            return;
        /* The request is consumed; what follows is the next one. */
        memmove(c->in.ptr, c->in.ptr + total, c->in.len - total);
        c->in.len -= total;
    }
}

static void process(conn_t *c) {
    if (c->in_process)
        return;
    c->in_process = true;
    process_inner(c);
    c->in_process = false;
}

/* ---- accepting and reading ------------------------------------------------------------------- */

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
    (void)h;
    (void)suggested;
    /* One loop thread: the bytes are copied out before the next read. */
    static char slab[64 * 1024];
    *buf = uv_buf_init(slab, sizeof slab);
}

static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf) {
    conn_t *c = stream->data;
    if (nread < 0) {
        client_closed(c);
        return;
    }
    if (nread == 0 || c->closing || c->ending) /* input after a final answer is discarded */
        return;
    if (c->in.len + (size_t)nread > MAX_HEADER_BYTES + MAX_BODY_BYTES + 4096) {
        send_status_and_close(c, 413, "request too large");
        return;
    }
    core_str_append(&c->in, buf->base, (size_t)nread);
    process(c);
}

static void on_connection(uv_stream_t *server, int status) {
    if (status < 0)
        return;
    conn_t *c = core_calloc(1, sizeof *c);
    uv_tcp_init(g.loop, &c->tcp);
    uv_timer_init(g.loop, &c->timer);
    c->tcp.data = c->timer.data = c;
    c->handles = 2;
    core_list_insert_tail(&g.conns, &c->link);
    g.connections_open++;
    if (uv_accept(server, (uv_stream_t *)&c->tcp) != 0) {
        conn_close(c);
        return;
    }
    uv_tcp_nodelay(&c->tcp, 1);
    uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
}

/* ---- main ------------------------------------------------------------------------------------ */

static void on_closed_quietly(uv_handle_t *h) {
    (void)h;
}

static void on_signal(uv_signal_t *sig, int signum) {
    (void)sig;
    (void)signum;
    if (g.stopping)
        return;
    g.stopping = true;
    uv_close((uv_handle_t *)&g.server, on_closed_quietly);
    uv_close((uv_handle_t *)&g.sigterm, on_closed_quietly);
    uv_close((uv_handle_t *)&g.sigint, on_closed_quietly);
    while (!core_list_empty(&g.conns))
        conn_close(CORE_CONTAINER_OF(g.conns.next, conn_t, link));
}

static void raise_nofile(void) {
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

static int usage(void) {
    fprintf(stderr, "usage: llm-mock [--listen HOST:PORT]   (default 127.0.0.1:0)\n");
    return 2;
}

int main(int argc, char **argv) {
    const char *listen = "127.0.0.1:0";
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--listen") == 0 && i + 1 < argc)
            listen = argv[++i];
        else
            return usage();
    }
    char host[128];
    const char *colon = strrchr(listen, ':');
    if (!colon || (size_t)(colon - listen) >= sizeof host)
        return usage();
    memcpy(host, listen, (size_t)(colon - listen));
    host[colon - listen] = '\0';
    long port;
    if (!parse_int(colon + 1, 0, 65535, &port))
        return usage();
    struct sockaddr_storage addr;
    bool v6 = host[0] == '[';
    if (v6) {
        size_t n = strlen(host);
        if (n < 2 || host[n - 1] != ']')
            return usage();
        host[n - 1] = '\0';
        if (uv_ip6_addr(host + 1, (int)port, (struct sockaddr_in6 *)&addr) != 0)
            return usage();
    } else if (uv_ip4_addr(host, (int)port, (struct sockaddr_in *)&addr) != 0) {
        return usage();
    }
    signal(SIGPIPE, SIG_IGN);
    raise_nofile();
    g.loop = uv_default_loop();
    g.keys = core_map_new();
    core_list_init(&g.conns);
    uv_tcp_init(g.loop, &g.server);
    int rc = uv_tcp_bind(&g.server, (const struct sockaddr *)&addr, 0);
    if (rc == 0)
        rc = uv_listen((uv_stream_t *)&g.server, 4096, on_connection);
    if (rc != 0) {
        fprintf(stderr, "llm-mock: cannot listen on %s: %s\n", listen, uv_strerror(rc));
        return 1;
    }
    struct sockaddr_storage bound;
    int blen = sizeof bound;
    uv_tcp_getsockname(&g.server, (struct sockaddr *)&bound, &blen);
    char name[INET6_ADDRSTRLEN];
    int bport;
    if (bound.ss_family == AF_INET6) {
        uv_ip6_name((struct sockaddr_in6 *)&bound, name, sizeof name);
        bport = ntohs(((struct sockaddr_in6 *)&bound)->sin6_port);
        printf("llm-mock listening on [%s]:%d\n", name, bport);
    } else {
        uv_ip4_name((struct sockaddr_in *)&bound, name, sizeof name);
        bport = ntohs(((struct sockaddr_in *)&bound)->sin_port);
        printf("llm-mock listening on %s:%d\n", name, bport);
    }
    fflush(stdout);
    uv_signal_init(g.loop, &g.sigterm);
    uv_signal_init(g.loop, &g.sigint);
    uv_signal_start(&g.sigterm, on_signal, SIGTERM);
    uv_signal_start(&g.sigint, on_signal, SIGINT);
    uv_run(g.loop, UV_RUN_DEFAULT);
    const char *k;
    void *v;
    core_map_iter_t it = 0;
    while (core_map_next(g.keys, &it, &k, &v)) {
        free(((key_state_t *)v)->scenario);
        json_decref(((key_state_t *)v)->last_request);
        free(v);
    }
    core_map_free(g.keys);
    rc = uv_loop_close(g.loop);
    return rc == 0 ? 0 : 1;
}
