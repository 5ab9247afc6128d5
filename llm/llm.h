/* llm: the node's LLM dispatcher. It admits `llm.ask` requests (per-plan daily message quota and
 * token budget), queues them by plan, bounds concurrency across the cluster with leases, picks a
 * provider key, protects providers with circuit breakers, streams the answer into the room as
 * publications and stores the final message (LLM.md, PROTOCOL.md section 3).
 *
 * It knows nothing of clients or the client protocol: server/ routes the `llm.ask` and
 * `llm.cancel` RPCs here, and everything reaches the room through the broker (cluster/), the
 * same path chat messages take. One loop, no blocking call: providers stream over libcurl multi
 * on the node's libuv loop; the built-in `mock` provider streams from timers. */
#ifndef LLM_LLM_H
#define LLM_LLM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "cluster/cluster.h"
#include "core/core.h"
#include "llm/llm_policy.h"

typedef enum { LLM_PROV_MOCK = 0, LLM_PROV_ANTHROPIC, LLM_PROV_OPENAI } llm_prov_type_t;

/* One provider of CHAT_LLM_PROVIDERS. */
typedef struct {
    char *name;
    llm_prov_type_t type;
    char *base_url; /* as the official SDKs take it; unused by mock */
    char *model;
    char **keys; /* primary keys, tried first */
    size_t nkeys;
    char **fallback_keys; /* used when no primary key can take a request */
    size_t nfallback;
    uint32_t max_concurrency; /* streams on this provider across the cluster; 0 = no own limit */
    char *fallback;           /* provider to use when this one cannot serve; NULL = none */
    uint32_t max_tokens;      /* answer length asked for */
    /* mock only: the deterministic reply's shape */
    uint32_t mock_ttft_ms;
    uint32_t mock_tokens;
    uint32_t mock_tokens_per_s;
} llm_provider_cfg_t;

typedef struct {
    uint32_t messages; /* per day; 0 = unlimited */
    uint64_t tokens;   /* per day, input and output; 0 = unlimited */
} llm_quota_t;

typedef struct {
    llm_provider_cfg_t *providers; /* the first is the default */
    size_t nproviders;
    uint32_t concurrency; /* streams across the cluster */
    llm_queue_cfg_t queue;
    llm_quota_t quota[LLM_PLANS];
    llm_breaker_cfg_t breaker;
    uint32_t lease_ttl_ms;
    uint32_t connect_timeout_ms;
    uint32_t ttft_timeout_ms[LLM_PLANS]; /* time to first token per plan */
    uint32_t idle_timeout_ms;
    uint32_t total_timeout_ms;
    uint32_t coalesce_ms; /* deltas published at most this often per stream */
    /* A stream stops reading from its provider while the room's slowest reader on this node
     * has more than this many bytes queued, and reads again below half of it (0 = never). */
    uint32_t pause_backlog_bytes;
    uint32_t max_retries; /* before the first token */
    uint32_t cooldown_floor_ms;
    uint32_t context_messages; /* recent room messages sent as context */
    uint32_t context_tokens;   /* their budget (estimated at 4 bytes a token) */
    uint32_t max_prompt_bytes;
    const char *system_prompt; /* NULL = none */
    const char *node_id;
} llm_config_t;

/* "free", "plus", "pro", "executive": the tokens' `plan` claim, in rank order. */
const char *llm_plan_name(unsigned plan);
/* Fills the defaults of docs/RUNTIME.md, with the built-in mock as the only provider. */
void llm_config_default(llm_config_t *cfg);
/* Parses CHAT_LLM_PROVIDERS (a JSON array of provider objects) into cfg->providers. Returns 0 or
 * CORE_EINVAL with a message in err. */
int llm_providers_parse(llm_config_t *cfg, const char *json, char *err, size_t errlen);
/* Parses CHAT_LLM_QUOTAS ("plan=messages/tokens,..."). */
int llm_quotas_parse(llm_config_t *cfg, const char *spec, char *err, size_t errlen);
/* Parses CHAT_LLM_QUEUE ("plan=depth/wait_ms,..."). */
int llm_queue_parse(llm_config_t *cfg, const char *spec, char *err, size_t errlen);
void llm_config_free(llm_config_t *cfg);

typedef struct llm llm_t;

/* One ask, as the RPC router hands it over. Strings are copied. */
typedef struct {
    const char *user;
    const char *client;        /* the requester's connection: its disconnect cancels the request */
    unsigned plan;             /* 0..LLM_PLANS-1 */
    const char *channel;       /* the room */
    clu_chan_opts_t room_opts; /* history settings of the room's namespace */
    const char *personal;      /* the requester's personal channel, for queue positions */
    const char *prompt;
    size_t prompt_len;
    const char *model;  /* NULL = the default provider's */
    const char *system; /* the room's system prompt; NULL = CHAT_LLM_SYSTEM_PROMPT */
} llm_ask_t;

/* An admitted ask: its id, its place in the queue, and where the asker stands in the daily
 * message quota (quota_limit 0: the plan has no message quota, or the count could not be read
 * because the broker did not answer; the ask was admitted all the same). */
typedef struct {
    const char *request_id;
    uint32_t queue_position;
    uint32_t quota_used;   /* messages counted today, this one included */
    uint32_t quota_limit;  /* the plan's daily messages */
    int64_t quota_reset_s; /* Unix seconds of the next reset (UTC midnight) */
} llm_admitted_t;

/* The answer to an ask: code 0 with admitted, or a protocol error code (402, 429, 502, 503,
 * 504, 107...) and its message ("retry_after_ms=N ...") with admitted NULL. */
typedef void (*llm_ask_cb)(void *ud, int code, const char *message, const llm_admitted_t *admitted);

llm_t *llm_new(uv_loop_t *loop, clu_broker_t *broker, const llm_config_t *cfg);
/* Admits, queues and later streams one ask. cb runs exactly once, never before llm_ask returns. */
void llm_ask(llm_t *l, const llm_ask_t *ask, llm_ask_cb cb, void *ud);
/* Cancels request_id when user owns it: a queued request leaves the queue, a running stream is
 * stopped and its partial text stored with "cancelled":true. Returns 0, CORE_ENOENT or
 * CORE_EPERM. */
int llm_cancel(llm_t *l, const char *user, const char *request_id);
/* The number of live nodes (from the registry): while Redis does not answer, this node holds at
 * most ceil(limit / nodes) streams. */
void llm_set_cluster_size(llm_t *l, uint32_t nodes);
/* How far behind a room's slowest reader is, in bytes queued for it on this node. */
typedef size_t (*llm_backlog_fn)(void *ud, const char *channel);
void llm_set_backlog_probe(llm_t *l, llm_backlog_fn fn, void *ud);
/* One settled request, for the usage ledger: strings borrowed for the call; provider and model
 * NULL when it never reached one. */
typedef struct {
    const char *request_id;
    const char *user;
    const char *plan;
    const char *provider;
    const char *model;
    uint32_t tokens_in, tokens_out;
    const char *outcome;
} llm_settled_t;
typedef void (*llm_settled_fn)(void *ud, const llm_settled_t *u);
/* Called once per request as it ends, whatever its outcome. */
void llm_set_usage_sink(llm_t *l, llm_settled_fn fn, void *ud);
/* The connection client went away: its requests are cancelled (not while draining: the asker
 * only moves to another node, and the answer goes to the room). */
void llm_client_gone(llm_t *l, const char *client);
/* The node drains: new asks are refused (503), asks not started yet end with an llm.error 503
 * in their room (ask again: another node takes it), running answers go on to their end. */
void llm_drain(llm_t *l);
/* Requests not finished yet (a drain waits for them). */
uint32_t llm_live_requests(const llm_t *l);
/* Stops accepting, cancels what is queued or running (partial answers are stored), releases
 * leases; done runs once every handle is closed. */
void llm_close(llm_t *l, void (*done)(void *), void *ud);

typedef struct {
    uint64_t asks;
    uint64_t rejected[8]; /* by llm_reject_reason_t */
    uint64_t completed, failed, interrupted, cancelled;
    uint64_t retries, fallbacks;
    uint64_t pauses; /* a stream stopped reading because its room was behind */
    uint64_t paused; /* gauge: streams stopped now */
    uint64_t tokens_in, tokens_out;
    uint64_t queued[LLM_PLANS];        /* gauge */
    uint64_t running;                  /* gauge */
    core_hist_t queue_wait[LLM_PLANS]; /* seconds */
    core_hist_t ttft;                  /* seconds, from dispatch to the first token */
} llm_stats_t;

typedef enum {
    LLM_REJ_QUOTA = 0,
    LLM_REJ_BUDGET,
    LLM_REJ_QUEUE_FULL,
    LLM_REJ_TIMEOUT,
    LLM_REJ_UNAVAILABLE,
    LLM_REJ_BAD_REQUEST,
    LLM_REJ_COUNT
} llm_reject_reason_t;
const char *llm_reject_reason_name(llm_reject_reason_t r);

const llm_stats_t *llm_stats(const llm_t *l);

/* Read-only views for metrics and the admin API. Keys appear only as fingerprints. Outcome
 * counters are indexed 0..llm_outcome_count()-1 and named by llm_outcome_name. */
typedef struct {
    const char *name, *model, *type;
    const char *breaker;      /* "closed", "open", "half_open" */
    uint64_t breaker_open_ms; /* time left open, 0 when not open */
    uint32_t inflight;
    size_t nkeys;
    const uint64_t *outcomes;
} llm_prov_view_t;

typedef struct {
    const char *fp;
    bool fallback, disabled;
    const char *disabled_reason;
    uint64_t cooldown_ms; /* time left cooling down */
    uint32_t inflight;
    uint64_t requests;
    int64_t remaining_requests, remaining_tokens; /* -1 unknown */
    const char *breaker;
    const uint64_t *outcomes;
} llm_key_view_t;

size_t llm_outcome_count(void);
const char *llm_outcome_name(size_t i);
size_t llm_provider_count(const llm_t *l);
void llm_provider_view(const llm_t *l, size_t i, llm_prov_view_t *out);
void llm_key_view(const llm_t *l, size_t i, size_t k, llm_key_view_t *out);
/* Appends the admin view as one JSON object: queue (by plan, with each request's id, user,
 * plan, wait and position), providers with keys (fingerprints only), breakers, and the leases
 * this node holds. */
void llm_render_state(const llm_t *l, core_str_t *out);
/* An operator's hand on keys and breakers: re-enables a disabled key (by fingerprint) and ends
 * its cooldown and breaker on this node, or closes a provider's breaker on this node and ends
 * the shared decision, so the other nodes close theirs at their next read (within a second).
 * Returns 0 or CORE_ENOENT. */
int llm_key_enable(llm_t *l, const char *provider, const char *fp);
int llm_breaker_close(llm_t *l, const char *provider);

#endif
