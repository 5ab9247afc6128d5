/* llm: one streamed completion from one provider with one key, as the dispatcher sees it. Each
 * provider type (the built-in mock, Anthropic, OpenAI-compatible) implements llm_stream_ops_t;
 * the dispatcher never sees HTTP, SSE or a provider's JSON. */
#ifndef LLM_LLM_STREAM_H
#define LLM_LLM_STREAM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "core/core.h"

/* One message of the conversation sent upstream. */
typedef struct {
    const char *role; /* "user" or "assistant" */
    const char *text;
    size_t len;
} llm_msg_t;

typedef struct {
    const char *model;
    const char *system; /* NULL = none */
    const llm_msg_t *msgs;
    size_t nmsgs;
    uint32_t max_tokens;
} llm_prompt_t;

/* How an attempt ended, classified for retries, key state and breakers (LLM.md sections 2, 3). */
typedef enum {
    LLM_END_OK = 0,       /* the provider's end marker arrived */
    LLM_END_RATE_LIMITED, /* 429: cool the key, retry elsewhere */
    LLM_END_KEY_DISABLED, /* 401, 402, 403, insufficient_quota, spend cap: disable the key */
    LLM_END_OVERLOADED,   /* 529/503: a provider-wide signal */
    LLM_END_SERVER,       /* other 5xx */
    LLM_END_BAD_REQUEST,  /* 400/404/413/422: the request's own fault, never retried */
    LLM_END_TIMEOUT,      /* connect, first token, idle or total */
    LLM_END_NETWORK,      /* refused, reset, closed before the end marker */
    LLM_END_STREAM_ERROR, /* an error event after 200 */
    LLM_END_PROTOCOL,     /* bytes the parser could not make sense of */
} llm_end_t;

typedef struct {
    llm_end_t end;
    int http_status;         /* 0 when none arrived */
    bool retryable;          /* provider said it may be retried (x-should-retry honoured) */
    uint64_t retry_after_ms; /* the provider's wait, 0 = none given */
    char reason[96];         /* short, for logs and llm.error (never a key) */
} llm_outcome_t;

/* Budget hints from rate-limit headers; -1 = not sent. */
typedef struct {
    int64_t remaining_requests;
    int64_t remaining_tokens;
} llm_budget_t;

typedef struct {
    /* The provider accepted the request (2xx) and the stream began. */
    void (*on_open)(void *ud, const llm_budget_t *budget);
    /* Answer text, in order. Borrowed for the call. */
    void (*on_delta)(void *ud, const char *text, size_t len);
    /* Token counts so far (the last call carries the totals). */
    void (*on_usage)(void *ud, uint32_t input_tokens, uint32_t output_tokens);
    /* Exactly once; the stream is freed after it returns. Never runs after llm_stream cancel. */
    void (*on_end)(void *ud, const llm_outcome_t *o, const llm_budget_t *budget);
} llm_stream_cb_t;

typedef struct llm_stream llm_stream_t;

typedef struct {
    uint32_t connect_ms, first_byte_ms, idle_ms, total_ms;
} llm_stream_timeouts_t;

/* The provider side of the dispatcher: starts one stream on `key` for prompt. Returns NULL only
 * for an argument the provider cannot send (then nothing runs). No callback runs before start
 * returns. */
typedef struct {
    llm_stream_t *(*start)(void *provider, const char *key, const llm_prompt_t *prompt,
                           const llm_stream_timeouts_t *t, const llm_stream_cb_t *cb, void *ud);
    /* Stops reading from upstream until resume (the room's readers are behind). */
    void (*pause)(llm_stream_t *s);
    void (*resume)(llm_stream_t *s);
    /* Aborts: the upstream connection is closed and no callback runs after this returns. */
    void (*cancel)(llm_stream_t *s);
} llm_stream_ops_t;

/* The built-in provider: a deterministic streamed reply from timers, no network. */
extern const llm_stream_ops_t llm_mock_ops;
typedef struct llm_mock llm_mock_t;
llm_mock_t *llm_mock_new(uv_loop_t *loop, uint32_t ttft_ms, uint32_t tokens, uint32_t tokens_per_s);
void llm_mock_free(llm_mock_t *m); /* every stream must be ended or cancelled */

#endif
