/* llm: the Anthropic and OpenAI-compatible providers as llm_stream_ops_t. One stream is one
 * HTTP request (llm_http on the loop) whose body runs through the SSE parser and the provider's
 * decoder; an error response is classified by the provider's codec. The dispatcher sees only
 * deltas, usage and one classified outcome.
 *
 * Time to first token is this module's own timer: a provider that sends pings (or nothing)
 * before its first token keeps the HTTP layer's idle clock happy, but must still be cut at the
 * plan's limit. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "llm/llm_http.h"
#include "llm/llm_int.h"
#include "llm/llm_provider.h"

#define ERROR_BODY_MAX (64 * 1024)

typedef struct {
    llm_t *l;
    const llm_provider_cfg_t *cfg;
    const llm_provider_ops_t *codec;
} http_provider_t;

struct llm_stream {
    http_provider_t *hp;
    llm_http_req_t *req;
    llm_sse_t *sse;
    llm_decoder_t dec;
    llm_headers_t hdr;
    int status;
    core_str_t errbody;
    llm_stream_cb_t cb;
    void *ud;
    uv_timer_t ttft; /* first token; the stream is freed in its close callback */
    bool got_token;
    bool paused; /* the dispatcher asked to stop reading: the next body bytes pause the transfer */
    bool finished; /* on_end ran or the dispatcher cancelled: no more callbacks */
    bool have_error;
    llm_outcome_t error; /* an error event inside a 200 stream */
};

static void stream_closed(uv_handle_t *h) {
    llm_stream_t *s = h->data;
    llm_sse_free(s->sse);
    llm_decoder_free(&s->dec);
    core_str_free(&s->errbody);
    free(s);
}

/* Ends the stream once: the request is abandoned (if still running), the outcome reported. */
static void finish(llm_stream_t *s, const llm_outcome_t *o) {
    if (s->finished)
        return;
    s->finished = true;
    if (s->req) {
        llm_http_cancel(s->req);
        s->req = NULL;
    }
    uv_timer_stop(&s->ttft);
    uv_close((uv_handle_t *)&s->ttft, stream_closed);
    llm_budget_t b = {s->hdr.rl[LLM_RL_REQUESTS].remaining, s->hdr.rl[LLM_RL_TOKENS].remaining};
    if (s->dec.usage.input_tokens >= 0 || s->dec.usage.output_tokens >= 0)
        s->cb.on_usage(s->ud,
                       (uint32_t)(s->dec.usage.input_tokens > 0 ? s->dec.usage.input_tokens : 0),
                       (uint32_t)(s->dec.usage.output_tokens > 0 ? s->dec.usage.output_tokens : 0));
    s->cb.on_end(s->ud, o, &b);
}

static llm_end_t end_of_class(llm_err_class_t c, bool in_stream) {
    switch (c) {
    case LLM_ERR_RATE_LIMIT:
        return LLM_END_RATE_LIMITED;
    case LLM_ERR_SPEND_CAP:
    case LLM_ERR_QUOTA:
    case LLM_ERR_AUTH:
    case LLM_ERR_PAYMENT:
        return LLM_END_KEY_DISABLED;
    case LLM_ERR_OVERLOADED:
        return in_stream ? LLM_END_STREAM_ERROR : LLM_END_OVERLOADED;
    case LLM_ERR_SERVER:
        return in_stream ? LLM_END_STREAM_ERROR : LLM_END_SERVER;
    case LLM_ERR_TIMEOUT:
        return LLM_END_TIMEOUT;
    case LLM_ERR_BAD_REQUEST:
    case LLM_ERR_CONTEXT:
        return LLM_END_BAD_REQUEST;
    case LLM_ERR_PROTOCOL:
    case LLM_ERR_NONE:
    case LLM_ERR_CLASS_COUNT:
        break;
    }
    return LLM_END_PROTOCOL;
}

static void outcome_of_error(const llm_error_t *e, bool in_stream, llm_outcome_t *o) {
    memset(o, 0, sizeof *o);
    o->end = end_of_class(e->cls, in_stream);
    o->http_status = e->status;
    o->retryable = e->retryable;
    o->retry_after_ms = e->wait_ms > 0 ? (uint64_t)e->wait_ms : 0;
    /* The provider's own type (or class) only: its message may quote the request. */
    snprintf(o->reason, sizeof o->reason, "%s%s%s", llm_err_class_name(e->cls),
             e->type[0] ? " " : "", e->type);
}

static void ttft_expired(uv_timer_t *t) {
    llm_stream_t *s = t->data;
    llm_outcome_t o = {.end = LLM_END_TIMEOUT, .http_status = s->status, .retryable = true};
    snprintf(o.reason, sizeof o.reason, "no first token in time");
    finish(s, &o);
}

static int on_event(void *ud, const char *event, size_t event_len, const char *data,
                    size_t data_len) {
    llm_stream_t *s = ud;
    llm_chunk_t c;
    int rc = s->hp->codec->decode(&s->dec, event, event_len, data, data_len, &c);
    if (c.flags & LLM_DEC_TEXT && c.text_len > 0) {
        if (!s->got_token) {
            s->got_token = true;
            uv_timer_stop(&s->ttft);
        }
        s->cb.on_delta(s->ud, c.text, c.text_len);
        if (s->finished)
            return 1; /* cancelled by the dispatcher from inside on_delta */
    }
    if (c.flags & LLM_DEC_ERROR || rc != 0) {
        s->have_error = true;
        outcome_of_error(&c.error, true, &s->error);
        if (rc != 0)
            s->error.end = LLM_END_PROTOCOL;
        return 1; /* nothing after an error event counts */
    }
    return 0;
}

static void on_headers(void *ud, int status, const llm_http_header_t *h, size_t n) {
    llm_stream_t *s = ud;
    s->status = status;
    int64_t wall = core_wall_ms();
    for (size_t i = 0; i < n; i++)
        llm_headers_add(&s->hdr, h[i].name, h[i].name_len, h[i].value, h[i].value_len, wall);
    if (status >= 200 && status < 300) {
        llm_budget_t b = {s->hdr.rl[LLM_RL_REQUESTS].remaining, s->hdr.rl[LLM_RL_TOKENS].remaining};
        s->cb.on_open(s->ud, &b);
    }
}

static int on_data(void *ud, const char *buf, size_t len) {
    llm_stream_t *s = ud;
    if (s->status < 200 || s->status >= 300) {
        size_t room = ERROR_BODY_MAX - s->errbody.len;
        core_str_append(&s->errbody, buf, len < room ? len : room);
        return 0;
    }
    int rc = llm_sse_feed(s->sse, buf, len);
    if (s->finished)
        return 0;
    if (rc == 0)
        return s->paused ? LLM_HTTP_PAUSE : 0;
    if (rc != 0) {
        llm_outcome_t o;
        if (s->have_error) {
            o = s->error;
        } else {
            o = (llm_outcome_t){
                .end = LLM_END_PROTOCOL, .http_status = s->status, .retryable = true};
            snprintf(o.reason, sizeof o.reason, "stream event too large or malformed");
        }
        finish(s, &o);
    }
    return 0;
}

static void on_done(void *ud, int status, const llm_http_stats_t *st) {
    llm_stream_t *s = ud;
    s->req = NULL; /* freed by llm_http after this returns */
    llm_outcome_t o = {.http_status = st->http_status};
    if (s->dec.done) {
        /* The end marker arrived; whatever the connection did afterwards does not matter. */
        o.end = LLM_END_OK;
    } else if (status != 0) {
        bool timeout = status == LLM_HTTP_ECONNECT_TIMEOUT ||
                       status == LLM_HTTP_EFIRST_BYTE_TIMEOUT || status == LLM_HTTP_EIDLE_TIMEOUT ||
                       status == LLM_HTTP_ETOTAL_TIMEOUT;
        o.end = timeout ? LLM_END_TIMEOUT : LLM_END_NETWORK;
        o.retryable = true;
        snprintf(o.reason, sizeof o.reason, "%s", llm_http_strerror(status));
    } else if (s->status >= 200 && s->status < 300) {
        o.end = LLM_END_NETWORK;
        o.retryable = true;
        snprintf(o.reason, sizeof o.reason, "stream ended before its end marker");
    } else {
        llm_error_t e;
        s->hp->codec->classify(s->status, &s->hdr, s->errbody.ptr ? s->errbody.ptr : "",
                               s->errbody.len, &e);
        outcome_of_error(&e, false, &o);
        if (o.retry_after_ms == 0) {
            int64_t w = llm_headers_wait_ms(&s->hdr);
            o.retry_after_ms = w > 0 ? (uint64_t)w : 0;
        }
    }
    finish(s, &o);
}

static llm_stream_t *http_start(void *provider, const char *key, const llm_prompt_t *p,
                                const llm_stream_timeouts_t *t, const llm_stream_cb_t *cb,
                                void *ud) {
    http_provider_t *hp = provider;
    llm_message_t *msgs = core_calloc(p->nmsgs ? p->nmsgs : 1, sizeof *msgs);
    char **texts = core_calloc(p->nmsgs ? p->nmsgs : 1, sizeof *texts);
    for (size_t i = 0; i < p->nmsgs; i++) {
        texts[i] = core_strndup(p->msgs[i].text, p->msgs[i].len);
        msgs[i] = (llm_message_t){p->msgs[i].role, texts[i]};
    }
    llm_request_t req = {
        .base_url = hp->cfg->base_url,
        .api_key = key,
        .model = p->model,
        .system = p->system,
        .messages = msgs,
        .n_messages = p->nmsgs,
        .max_tokens = p->max_tokens,
    };
    llm_outgoing_t out = {0};
    int rc = hp->codec->build(&req, &out);
    for (size_t i = 0; i < p->nmsgs; i++)
        free(texts[i]);
    free(texts);
    free(msgs);
    if (rc != 0) {
        llm_outgoing_free(&out);
        return NULL;
    }
    llm_stream_t *s = core_calloc(1, sizeof *s);
    s->hp = hp;
    s->cb = *cb;
    s->ud = ud;
    llm_decoder_init(&s->dec);
    llm_headers_init(&s->hdr);
    s->sse = llm_sse_new(0, 0, on_event, s);
    const char *headers[LLM_MAX_HEADERS + 1] = {0};
    for (size_t i = 0; i < out.n_headers; i++)
        headers[i] = out.headers[i];
    llm_http_post_t post = {
        .url = out.url,
        .headers = headers,
        .body = out.body,
        .body_len = out.body_len,
        .timeouts = {t->connect_ms, 0, t->idle_ms, t->total_ms},
        .cb = {on_headers, on_data, on_done},
        .ud = s,
    };
    uv_timer_init(hp->l->loop, &s->ttft);
    s->ttft.data = s;
    rc = llm_http_post(hp->l->http, &post, &s->req);
    llm_outgoing_free(&out);
    if (rc != 0) {
        s->finished = true;
        uv_close((uv_handle_t *)&s->ttft, stream_closed);
        return NULL;
    }
    if (t->first_byte_ms > 0)
        uv_timer_start(&s->ttft, ttft_expired, t->first_byte_ms, 0);
    return s;
}

static void http_pause(llm_stream_t *s) {
    s->paused = true;
}

static void http_resume(llm_stream_t *s) {
    s->paused = false;
    if (s->req)
        llm_http_resume(s->req);
}

static void http_cancel(llm_stream_t *s) {
    if (s->finished)
        return;
    s->finished = true;
    if (s->req) {
        llm_http_cancel(s->req);
        s->req = NULL;
    }
    uv_timer_stop(&s->ttft);
    uv_close((uv_handle_t *)&s->ttft, stream_closed);
}

const llm_stream_ops_t llm_http_stream_ops = {http_start, http_pause, http_resume, http_cancel};

void *llm__http_provider_new(llm_t *l, const llm_provider_cfg_t *cfg) {
    if (!l->http)
        l->http = llm_http_new(l->loop);
    CORE_ASSERT(l->http != NULL);
    http_provider_t *hp = core_calloc(1, sizeof *hp);
    hp->l = l;
    hp->cfg = cfg;
    hp->codec = cfg->type == LLM_PROV_ANTHROPIC ? &llm_provider_anthropic : &llm_provider_openai;
    return hp;
}

void llm__http_provider_free(void *impl) {
    free(impl);
}
