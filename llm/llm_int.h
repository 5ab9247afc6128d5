/* llm: structures shared by the dispatcher's source files. */
#ifndef LLM_LLM_INT_H
#define LLM_LLM_INT_H

#include "llm/llm.h"
#include "llm/llm_stream.h"

#define LLM_REQ_ID_LEN 20
/* Prometheus series per key and provider are bounded by configuration, not by traffic. */
#define LLM_END_KINDS (LLM_END_PROTOCOL + 1)

typedef struct llm_req llm_req_t;

static inline void llm__trace_leave(core_log_ctx_t *prev) {
    core_log_ctx_leave(*prev);
}
/* Makes request r's trace current until the enclosing block ends: its log lines, and the
 * broker calls it makes, then carry the trace of the command that asked. Only the id is kept,
 * so r may be freed inside the block. */
#define LLM_TRACE(r)                                                                               \
    core_log_ctx_t llm__prev_ctx __attribute__((cleanup(llm__trace_leave), unused)) =              \
        core_log_ctx_enter((core_log_ctx_t){.trace = (r)->trace, .method = "llm.ask"})

/* A provider at run time: its stream implementation, keys, breaker and counters. */
typedef struct {
    llm_provider_cfg_t *cfg; /* borrowed from llm_t.cfg */
    const llm_stream_ops_t *ops;
    void *impl;
    llm_key_t *keys; /* primaries, then fallbacks */
    size_t nkeys;
    llm_breaker_t br; /* provider-wide (overload, outage) */
    int fallback;     /* index of the fallback provider, -1 = none */
    uint32_t inflight;
    uint64_t outcomes[LLM_END_KINDS];
    uint64_t *key_outcomes; /* nkeys x LLM_END_KINDS */
    char sem_key[96];
    char breaker_key[96];
    int64_t shared_open_until_wall_ms; /* last decision seen in the broker */
} llm_prov_t;

typedef enum {
    REQ_ADMITTING = 0, /* quotas being reserved */
    REQ_QUEUED,
    REQ_ACQUIRING, /* the head of the queue asking for a lease */
    REQ_CONTEXT,   /* lease held, reading the room's history */
    REQ_RUNNING,   /* an attempt streams */
    REQ_BACKOFF,   /* between attempts */
    REQ_FINISHING, /* ended; publishing the last messages */
} llm_req_state_t;

struct llm_req {
    llm_t *l;
    char id[LLM_REQ_ID_LEN + 1];
    char *user, *client, *channel, *personal, *prompt, *model;
    char *system; /* the room's system prompt, NULL = the node's */
    size_t prompt_len;
    clu_chan_opts_t room_opts;
    unsigned plan;
    llm_req_state_t state;
    llm_qentry_t q;
    uint32_t last_position;
    core_list_t link; /* in llm_t.reqs */

    llm_ask_cb ask_cb; /* until admission answers */
    void *ask_ud;
    uint32_t pending_ops; /* broker calls in flight that hold a reference */
    bool dead;            /* finished; freed when pending_ops and the timer are done */

    /* quotas */
    int64_t reserved_tokens;
    bool reserved_message;
    uint32_t quota_used; /* the message counter after this request's reservation */
    char day[9];         /* the quota day the reservation was made in (UTC yyyymmdd) */
    int64_t quota_reset_s;

    /* dispatch */
    int prov; /* provider index */
    int key;  /* key index of the running attempt, -1 = none */
    bool lease_held;
    bool local_lease; /* counted by the local fallback semaphore, not in the broker */
    char lease_prov_key[96];
    uint32_t attempts;
    bool fell_back;
    uint64_t enq_ms, dispatch_ms, deadline_ms, first_token_ms;
    uint64_t trace; /* the log trace of the command that asked (core_log_ctx_t) */
    llm_msg_t *ctx;
    size_t nctx;
    char *ctx_store; /* texts of ctx */

    /* the running attempt */
    llm_stream_t *stream;
    bool opened; /* llm.start published */
    bool paused;
    core_str_t text; /* the answer so far */
    size_t flushed;  /* bytes of text already published as deltas */
    uint32_t delta_index;
    uint32_t in_tokens, out_tokens;
    bool cancelled;
    llm_outcome_t last;
    llm_reject_reason_t reject_why; /* a refusal answered from the loop */
    int reject_code;

    uv_timer_t timer; /* coalescing flush, backoff, deferred answers */
    bool timer_closed;
};

struct llm {
    uv_loop_t *loop;
    struct llm_http *http; /* created with the first HTTP provider */
    clu_broker_t *broker;
    llm_config_t cfg;
    llm_prov_t *provs;
    size_t nprovs;
    llm_queue_t queue;
    core_map_t *by_id; /* request id -> llm_req_t */
    core_list_t reqs;  /* every live request */
    uint32_t running;  /* leases held by this node */
    uint32_t cluster_nodes;
    bool acquiring; /* the queue head asked for a lease and waits for the answer */
    bool closing;
    bool draining;
    uv_timer_t pump;  /* retries a refused lease after a jittered pause */
    uv_timer_t sweep; /* queue expiry, positions, lease renewal, shared breakers */
    uint64_t sweep_ticks;
    uint32_t closing_handles;
    uint32_t live_reqs; /* allocated requests, freed or not yet */
    void (*close_done)(void *);
    void *close_ud;
    double service_ms_avg;  /* dispatch to end, for the queue-full retry hint */
    llm_backlog_fn backlog; /* the room's slowest local reader, NULL = never pause */
    void *backlog_ud;
    llm_settled_fn usage; /* the ledger, NULL = none */
    void *usage_ud;
    llm_stats_t st;
};

/* llm_provider_http.c: Anthropic and OpenAI-compatible streams over libcurl on the loop. */
extern const llm_stream_ops_t llm_http_stream_ops;
void *llm__http_provider_new(llm_t *l, const llm_provider_cfg_t *cfg);
void llm__http_provider_free(void *impl);

/* llm_config.c */
/* The provider a request names (by provider name or model), the default one for NULL, or -1. */
int llm__prov_index(const llm_t *l, const char *name_or_model);
/* Creates (frees) the stream implementation of a provider. */
void llm__provider_attach(llm_t *l, llm_prov_t *p);
void llm__provider_detach(llm_t *l, llm_prov_t *p);

/* A uniform double in [0, 1), for jitter. */
static inline double llm__rnd01(void) {
    uint32_t v;
    core_random(&v, sizeof v);
    return (double)v / 4294967296.0;
}

static inline uint64_t llm__now_ms(const llm_t *l) {
    return uv_now(l->loop);
}

/* llm_dispatch.c: a request's lifetime, its end, the queue. */
/* A broker answer for r arrived: false when r is finished and must not be touched further. */
bool llm__req_back(llm_req_t *r);
/* The request is over: lease back, request gone, the queue moves. */
void llm__req_end(llm_req_t *r);
/* Ends a request with an error: to the asker when admission had not answered yet, else as an
 * llm.error publication in the room; the reservation is refunded. Counting is the caller's. */
void llm__fail(llm_req_t *r, int code, const char *message);
/* Refuses an ask at admission (counted by reason). */
void llm__reject(llm_req_t *r, llm_reject_reason_t why, int code, const char *message);
/* Admission passed: into the plan's queue, or 503 when it is full. */
void llm__enqueue(llm_req_t *r);

/* llm_room.c: what a request publishes, and backpressure. */
const char *llm__req_model(const llm_req_t *r);
void llm__publish_start(llm_req_t *r);
/* Publishes the text not yet sent as one llm.delta; may pause the stream (backpressure). */
void llm__flush_delta(llm_req_t *r);
/* The stored answer, marker NULL, "interrupted" or "cancelled". */
void llm__publish_final(llm_req_t *r, const char *marker);
void llm__publish_error(llm_req_t *r, int code, const char *message);
/* The queue position into the requester's personal channel, when it changed. */
void llm__publish_position(llm_req_t *r, uint32_t pos);
/* Marks r's stream paused or not (the gauge follows); the stream op is the caller's. */
void llm__set_paused(llm_req_t *r, bool paused);
/* Resumes r's paused stream when the room's readers have caught up. */
void llm__maybe_resume(llm_req_t *r);

/* llm_quota.c: daily allowances. */
/* Today's UTC day as yyyymmdd, and the Unix second it ends. */
void llm__quota_day(char out[9], int64_t *reset_s);
/* The shared counter of what ("msgs" or "tokens") for r's user and day. */
void llm__quota_key(core_str_t *k, const llm_req_t *r, const char *what);
/* Gives back what admission reserved (tokens; the message too when message_too). */
void llm__quota_refund(llm_req_t *r, bool message_too);
/* Replaces the token reservation by the provider's reported usage. */
void llm__quota_settle(llm_req_t *r);
/* Reserves r's token estimate, then enqueues it (or refuses with 402). */
void llm__reserve_tokens(llm_req_t *r);
/* The answer to reserving one message of the daily quota (a clu_counter_cb). */
void llm__message_reserved(int status, bool allowed, int64_t value, void *ud);

/* llm_attempt.c: attempts. */
/* How long until any key of provider prov (or its fallback) is back: a retry_after_ms. */
uint64_t llm__unavailable_for(llm_t *l, int prov, uint64_t now);
/* r holds a lease: reads the room's context, then makes the first attempt. */
void llm__dispatch(llm_req_t *r);

#endif
