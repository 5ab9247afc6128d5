/* llm: talking to LLM providers. This header holds the pure (no I/O) part of the contract: how a
 * request is written for each provider, how one server-sent event of its stream is decoded, how
 * an HTTP error response is classified, and what the rate-limit headers say. The wire formats
 * are those of docs LLM.md section 1 (Anthropic Messages API and OpenAI-compatible chat
 * completions, which also covers OpenRouter and Venice).
 *
 * Every function here is synchronous and deterministic given its inputs (time is passed in), so
 * the transport can be anything and the tests need no network. */
#ifndef LLM_LLM_PROVIDER_H
#define LLM_LLM_PROVIDER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/core.h"
#include "llm/llm_sse.h"

/* ---- error classes ------------------------------------------------------------------------- */

/* What a failure means for the dispatcher, one line per class: code, name (metrics label and
 * log field), retryable by default, disables the key, counts as a circuit-breaker failure,
 * provider-wide signal (all keys of the provider are affected). */
#define LLM_ERR_CLASS_MAP(XX)                                                                      \
    XX(NONE, "none", false, false, false, false)                                                   \
    XX(RATE_LIMIT, "rate_limit", true, false, false, false)                                        \
    XX(SPEND_CAP, "spend_cap", false, true, false, false)                                          \
    XX(QUOTA, "insufficient_quota", false, true, false, false)                                     \
    XX(AUTH, "auth", false, true, false, false)                                                    \
    XX(PAYMENT, "payment_required", false, true, false, false)                                     \
    XX(OVERLOADED, "overloaded", true, false, true, true)                                          \
    XX(SERVER, "server", true, false, true, false)                                                 \
    XX(TIMEOUT, "timeout", true, false, true, false)                                               \
    XX(BAD_REQUEST, "bad_request", false, false, false, false)                                     \
    XX(CONTEXT, "context_window", false, false, false, false)                                      \
    XX(PROTOCOL, "protocol", true, false, true, false)

typedef enum {
#define XX(code, name, retry, disable, breaker, wide) LLM_ERR_##code,
    LLM_ERR_CLASS_MAP(XX)
#undef XX
        LLM_ERR_CLASS_COUNT
} llm_err_class_t;

const char *llm_err_class_name(llm_err_class_t c);
bool llm_err_class_retryable(llm_err_class_t c);
bool llm_err_class_disables_key(llm_err_class_t c);
bool llm_err_class_breaker_failure(llm_err_class_t c);
bool llm_err_class_provider_wide(llm_err_class_t c);

/* A classified failure: an HTTP error response, or an error event inside a 200 stream. */
typedef struct {
    llm_err_class_t cls;
    int status;        /* HTTP status; for an error event, its numeric code if any, else 0 */
    bool retryable;    /* the class default, overridden by x-should-retry when present */
    int64_t wait_ms;   /* what the headers ask to wait (see llm_headers_wait_ms), -1 if nothing */
    char type[64];     /* the provider's error type or code, e.g. "overloaded_error" ("" if none) */
    char message[256]; /* the provider's message, truncated at a character boundary */
} llm_error_t;

/* ---- response headers ------------------------------------------------------------------------ */

typedef enum {
    LLM_RL_REQUESTS = 0,
    LLM_RL_TOKENS,
    LLM_RL_INPUT_TOKENS,
    LLM_RL_OUTPUT_TOKENS,
    LLM_RL_COUNT
} llm_rl_bucket_t;

/* What a response's headers say about waiting and limits. Absent or unparseable values stay
 * at -1 (junk such as "-1", "", "abc" is ignored, never an error). */
typedef struct {
    bool retry_after_present;  /* retry-after-ms or retry-after parsed */
    int64_t retry_after_ms;    /* raw value: retry-after-ms wins over retry-after (float seconds
                                * or HTTP-date, which can give 0 or less); valid if present */
    bool retry_after_honoured; /* 0 < retry_after_ms <= 60000, the rule of the official SDKs */
    int should_retry;          /* x-should-retry: 1 true, 0 false, -1 absent */
    struct {
        int64_t limit, remaining;
        int64_t reset_ms; /* milliseconds from `now` until the bucket is full again, >= 0 */
    } rl[LLM_RL_COUNT];
    char request_id[80]; /* request-id or x-request-id, for logs */
    /* Raw inputs of retry_after_ms, kept so header order does not matter. */
    int64_t ra_ms_header, ra_header;
} llm_headers_t;

void llm_headers_init(llm_headers_t *h);
/* Takes one header. Names are case-insensitive; surrounding blanks of the value are ignored.
 * now_wall_ms (Unix epoch milliseconds) converts RFC 3339 resets and HTTP-dates to durations. */
void llm_headers_add(llm_headers_t *h, const char *name, size_t name_len, const char *value,
                     size_t value_len, int64_t now_wall_ms);
/* Takes one raw header line as a transport delivers it ("Name: value\r\n"); a status line or a
 * blank line is ignored. */
void llm_headers_add_line(llm_headers_t *h, const char *line, size_t len, int64_t now_wall_ms);
/* The wait the headers ask for: the honoured retry-after, else the longest reset among buckets
 * whose remaining count is 0, else -1. */
int64_t llm_headers_wait_ms(const llm_headers_t *h);

/* Parses a duration as OpenAI-compatible providers write resets ("1s", "12ms", "6m0s", "1.5s",
 * "1h2m3.5s"; also "250us", "0"). Returns milliseconds rounded up, or -1 for junk. */
int64_t llm_parse_duration_ms(const char *s, size_t len);
/* Parses an RFC 3339 timestamp ("2025-08-21T12:40:59Z", fractions and offsets allowed) into
 * Unix epoch milliseconds; returns -1 for junk. */
int64_t llm_parse_rfc3339_ms(const char *s, size_t len);

/* ---- requests ------------------------------------------------------------------------------- */

typedef struct {
    const char *role; /* "user" or "assistant" */
    const char *content;
} llm_message_t;

typedef struct {
    const char *base_url; /* as the official SDKs take it; NULL or "" = the provider's default */
    const char *api_key;
    const char *model;
    const char *system; /* NULL or "" = no system prompt */
    const llm_message_t *messages;
    size_t n_messages;
    uint32_t max_tokens;
    bool has_temperature; /* false: the provider's default temperature */
    double temperature;
    const char *extra_json; /* NULL, or a JSON object merged into the body (venice_parameters) */
} llm_request_t;

#define LLM_MAX_HEADERS 8

/* A request ready for the transport: POST body to url with these headers. Owned strings. */
typedef struct {
    char *url;
    char *headers[LLM_MAX_HEADERS]; /* "name: value" */
    size_t n_headers;
    char *body;
    size_t body_len;
} llm_outgoing_t;

void llm_outgoing_free(llm_outgoing_t *o);

/* ---- stream decoding ------------------------------------------------------------------------ */

typedef struct {
    /* -1 = not reported. Anthropic's message_delta usage is cumulative: each field takes the
     * last value seen, never a sum. */
    int64_t input_tokens, output_tokens;
    int64_t cache_creation_input_tokens, cache_read_input_tokens;
} llm_usage_t;

/* Per-stream decoding state. */
typedef struct {
    llm_usage_t usage;
    char stop_reason[32]; /* "end_turn", "stop", "length", ...; "" until the provider says */
    bool done;            /* message_stop or [DONE] seen: the stream ended properly */
    uint64_t deltas;      /* text deltas seen */
    core_str_t text;      /* scratch for the last text delta */
} llm_decoder_t;

void llm_decoder_init(llm_decoder_t *s);
void llm_decoder_free(llm_decoder_t *s);

enum {
    LLM_DEC_TEXT = 1 << 0,  /* text and text_len hold a content delta */
    LLM_DEC_USAGE = 1 << 1, /* the stream's usage changed */
    LLM_DEC_STOP = 1 << 2,  /* the stream's stop_reason was set */
    LLM_DEC_DONE = 1 << 3,  /* the end marker: message_stop or [DONE] */
    LLM_DEC_ERROR = 1 << 4, /* an error inside the stream: `error` says which */
    LLM_DEC_PING = 1 << 5,  /* a keep-alive event */
};

/* What one SSE event meant. Several flags can be set at once (an OpenAI chunk can carry text and
 * a finish_reason; an Anthropic message_delta a stop_reason and usage). */
typedef struct {
    unsigned flags;
    const char *text; /* borrowed from the stream's scratch until the next decode */
    size_t text_len;
    llm_error_t error;
} llm_chunk_t;

/* ---- providers ------------------------------------------------------------------------------ */

/* One wire format. Functions return 0 or a negative code:
 * - build: CORE_EINVAL for a missing model or key, a key or URL that would break a header line,
 *   invalid UTF-8, or an extra_json that is not an object.
 * - decode: CORE_EPROTO for an event that is not what the provider sends (malformed JSON); `out`
 *   then carries LLM_DEC_ERROR with class PROTOCOL. Unknown event types are ignored (out->flags
 *   0) so that new provider features do not break old code.
 * - classify: never fails; an unreadable body still gives a class from the status. */
typedef struct llm_provider_ops {
    const char *name;
    const char *default_base_url;
    int (*build)(const llm_request_t *req, llm_outgoing_t *out);
    int (*decode)(llm_decoder_t *s, const char *event, size_t event_len, const char *data,
                  size_t data_len, llm_chunk_t *out);
    void (*classify)(int status, const llm_headers_t *h, const char *body, size_t body_len,
                     llm_error_t *out);
} llm_provider_ops_t;

extern const llm_provider_ops_t llm_provider_anthropic;
extern const llm_provider_ops_t llm_provider_openai;

/* The codec for a provider kind: "anthropic", or "openai" (also "openrouter", "venice" and
 * "openai-compatible", which speak the same format). NULL if unknown. */
const llm_provider_ops_t *llm_provider_find(const char *name);

#endif
