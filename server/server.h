/* server: configuration, per-connection write queues, transport statistics and the metric
 * sources of chatd. The listeners and the process lifecycle are private to the program
 * (server/srv_int.h). */
#ifndef SERVER_SERVER_H
#define SERVER_SERVER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "admin/admin.h"
#include "chat/chat.h"
#include "cluster/cluster.h"
#include "core/core.h"
#include "llm/llm.h"

/* ---- configuration ----------------------------------------------------------------------- */

/* Every setting of docs/RUNTIME.md, after defaults, the JSON file and the environment were
 * applied (in that order: the environment wins). Strings are owned by the struct. */
typedef struct {
    char *listen;
    char *admin_listen;
    char *node_id;
    char *jwt_secret; /* NULL in demo mode */
    char *jwt_audience;
    char *jwt_issuer;
    uint32_t jwt_leeway;
    char *api_key;
    char *tls_cert; /* PEM files; both set: the public listener speaks TLS */
    char *tls_key;
    uint32_t admin_tls; /* the admin listener too */
    uint32_t demo_tokens;
    char *web_root;
    char *log_format;
    char *log_level;
    uint32_t ping_interval;
    uint32_t pong_timeout;
    uint32_t stale_timeout;
    uint32_t max_frame_bytes;
    uint32_t max_channels;
    uint32_t max_connections_per_user;
    uint32_t max_connections; /* 0 = a margin below the open-file limit (srv_max_connections) */
    uint32_t connect_rate;    /* sessions per second, 0 = unlimited */
    uint32_t connect_burst;   /* 0 = connect_rate */
    uint32_t drain_period_ms; /* closes spread over this long */
    uint32_t drain_llm_ms;    /* running assistant answers finish within this after the period */
    uint32_t drain_min_rate;  /* clients per second at least */
    char *allowed_origins;    /* NULL = any origin (srv_origin_allowed) */
    uint32_t write_queue_bytes;
    uint32_t write_queue_messages;
    uint32_t write_delay_ms;
    uint32_t flush_slice_us;
    char *rate_limits;
    char *typing_rate;
    char *command_rate;
    uint32_t dedupe_window;
    uint32_t history_max_limit;
    uint32_t history_memory_mb;
    uint32_t max_errors;
    uint32_t presence_ttl;
    uint32_t node_ttl;
    char *advertise;
    char *namespaces;    /* JSON text or NULL for the defaults */
    char *llm_providers; /* JSON text or NULL for the built-in mock */
    uint32_t llm_concurrency;
    char *llm_quotas;
    char *llm_queue;
    uint32_t llm_aging_ms;
    uint32_t llm_ttft_timeout_ms;
    uint32_t llm_idle_timeout_ms;
    uint32_t llm_total_timeout_ms;
    uint32_t llm_lease_ttl_ms;
    uint32_t llm_coalesce_ms;
    uint32_t llm_pause_bytes;
    uint32_t llm_context_messages;
    char *llm_system_prompt;
    char *redis_url;
    char *database_url;
    char *database_read_url;
    uint32_t db_pool;
    uint32_t db_connect_timeout_ms;
    uint32_t db_statement_timeout_ms;
    uint32_t db_batch;
    uint32_t db_batch_bytes;
    uint32_t db_start_wait_ms;
    uint32_t persist_max;
    uint32_t persist_claim_ms;
    uint32_t retention_interval_ms;
} srv_config_t;

/* Loads defaults, then the JSON file at path (may be NULL), then the environment. Returns 0, or
 * CORE_EINVAL with a one-line reason in err. */
int srv_config_load(srv_config_t *cfg, const char *path, char *err, size_t errlen);
void srv_config_free(srv_config_t *cfg);
/* Writes the --help text listing every setting, its variable and default. */
void srv_config_help(FILE *out);
/* Node ids go into cookies, metric labels and Redis keys: 1-64 of these. */
#define SRV_NODE_ID_CHARS "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._:-"
bool srv_node_id_ok(const char *id);
#define SRV_NODE_ID_MAX 64
/* The default node id, "HOST:PORT": the host name cut to 50 bytes, with every character that
 * is not a node id character (and every ':') replaced by '-', so that it is always a valid id. */
void srv_node_id_default(const char *hostname, int port, char *out, size_t outlen);
/* The cookie naming the node that served a browser, for sticky load balancers. */
#define SRV_NODE_COOKIE "chat_node"
/* The Set-Cookie value naming node_id (a valid node id): out needs 128 bytes. */
void srv_node_cookie(const char *node_id, char *out, size_t outlen);
/* Whether a listener's host:port is on loopback (127.0.0.0/8 or localhost): reachable from this
 * machine only. */
bool srv_listen_is_loopback(const char *listen);
/* host:port of the public listener as the registry shows it: CHAT_ADVERTISE when set, else the
 * listen host (hostname when it listens on 0.0.0.0) and the bound port. */
void srv_public_address(const srv_config_t *cfg, const char *hostname, int port, char *out,
                        size_t outlen);

/* The chat node's settings from cfg: limits, timeouts, per-plan publish rates
 * (CHAT_RATE_LIMITS), the typing rate and the namespaces (CHAT_NAMESPACES, or the defaults) into
 * *ns and *nns, which the caller frees with chat_namespaces_free. Strings are borrowed from cfg.
 * keys, version and node_id are left for the caller. Returns 0, or CORE_EINVAL with a one-line
 * reason in err (nothing to free then). */
int srv_config_chat(const srv_config_t *cfg, chat_config_t *cc, chat_ns_t **ns, size_t *nns,
                    char *err, size_t errlen);

/* Descriptors below the open-file limit that chat clients never take (CHAT_MAX_CONNECTIONS's
 * default margin): room for the admin listener, the broker's reconnects, HTTP requests and the
 * files the node opens. */
#define SRV_FD_MARGIN 64
/* The node-wide cap on WebSocket sessions: cfg->max_connections, or when 0 the open-file limit
 * fd_limit less SRV_FD_MARGIN (half the limit when it is that small). */
uint32_t srv_max_connections(const srv_config_t *cfg, uint64_t fd_limit);

/* Whether a WebSocket upgrade with this Origin header (NULL: none, not a browser) may proceed
 * under CHAT_ALLOWED_ORIGINS (list: NULL = any origin). The list holds origins separated by
 * commas or blanks, compared without regard to case; "*" alone allows any origin, and within an
 * entry '*' matches any run of characters but '/' and ':', so that it stands for host labels
 * (an entry of scheme, "://", "*.example.com") or a port (after the host's ':'), never for a
 * different scheme or port. */
bool srv_origin_allowed(const char *list, const char *origin);

/* Parses "host:port" into host (size hostlen) and port; port 0 is allowed. */
int srv_parse_hostport(const char *s, char *host, size_t hostlen, int *port);

/* ---- write queue ------------------------------------------------------------------------- */

/* The bounded queue of one connection: references to shared, immutable messages. Bounded in
 * bytes and in messages; a push over either bound fails and the connection is closed as a slow
 * reader, so one client can never make the node's memory grow without bound. */
typedef struct {
    core_buf_t **ring;
    uint32_t cap; /* grows by doubling up to max_msgs: idle connections stay small */
    uint32_t head;
    uint32_t count;
    size_t bytes;
    uint32_t max_msgs;
    size_t max_bytes;
} srv_wq_t;

void srv_wq_init(srv_wq_t *q, uint32_t max_msgs, size_t max_bytes);
/* Queues a reference to b. Returns 0, or CORE_ELIMIT (nothing queued) over a bound. */
int srv_wq_push(srv_wq_t *q, core_buf_t *b);
/* Moves queued messages into one frame: the first message always, then more while the frame
 * stays within max_frame bytes, joined by '\n' (the JSON codec's rule). The frame is written to
 * *out (grown as needed, with `head` bytes of headroom before the payload). Returns the payload
 * length, sets *nmsgs and *oldest_us (born_us of the first message). Returns 0 when the queue is
 * empty. */
size_t srv_wq_fill(srv_wq_t *q, core_str_t *out, size_t head, size_t max_frame, uint32_t *nmsgs,
                   uint64_t *oldest_us);
/* How messages join in one frame (the client's codec decides): the bytes a message adds and
 * how it is appended (first: nothing before it in the frame). */
typedef struct {
    size_t (*size)(size_t len, bool first);
    void (*append)(core_str_t *frame, const char *msg, size_t len, bool first);
} srv_join_t;
/* srv_wq_fill with the join rule of the connection's codec. */
size_t srv_wq_fill_join(srv_wq_t *q, const srv_join_t *join, core_str_t *out, size_t head,
                        size_t max_frame, uint32_t *nmsgs, uint64_t *oldest_us);
bool srv_wq_empty(const srv_wq_t *q);
/* Drops every queued reference and frees the ring. */
void srv_wq_clear(srv_wq_t *q);

/* ---- transport statistics and metric sources ---------------------------------------------- */

#define SRV_DISCONNECT_SLOTS 64

/* Why a connection was refused before it became a session. */
enum {
    SRV_REFUSED_LIMIT,       /* CHAT_MAX_CONNECTIONS reached: HTTP 503 */
    SRV_REFUSED_DESCRIPTORS, /* the descriptor reserve reached, or none left: closed at once */
    SRV_REFUSED_ORIGIN,      /* Origin not in CHAT_ALLOWED_ORIGINS: HTTP 403 */
    SRV_REFUSED_HEADERS,     /* a request header field over SRV_HEADER_FIELD_MAX: 431 or 414 */
    SRV_REFUSED_RATE,        /* CHAT_CONNECT_RATE passed: upgraded, then closed at once (3013) */
    SRV_REFUSED_COUNT
};

/* Counters of the transport of chat clients. */
typedef struct {
    uint64_t accepted;
    uint64_t write_calls;
    uint64_t write_bytes;
    uint64_t write_short;                       /* writes the socket did not take whole */
    uint64_t flush_slices;                      /* flushes cut short to let the loop poll */
    uint64_t write_queue_bytes;                 /* gauge */
    uint64_t disconnects[SRV_DISCONNECT_SLOTS]; /* by srv_disconnect_slot() */
    uint64_t refused[SRV_REFUSED_COUNT];        /* by SRV_REFUSED_* */
    core_hist_t fanout_latency;                 /* seconds */
    core_hist_t loop_pass;                      /* seconds of work per event-loop pass */
} srv_stats_t;

/* Zeroes st and sets the buckets of its histograms. */
void srv_stats_init(srv_stats_t *st);
/* Slot of a close code: 3000..3031 and 3500..3531; -1 for other codes. */
int srv_disconnect_slot(int code);
/* Inverse of srv_disconnect_slot. */
int srv_disconnect_code(int slot);

/* Metric sources for adm_metrics_add. The transport's takes a srv_stats_t, the chat node's a
 * chat_node_t, the broker's a clu_broker_t (with chat_rate_limit_shared, which the broker
 * decides). */
void srv_metrics_transport(void *stats, adm_metrics_writer_t *w);
void srv_metrics_chat(void *node, adm_metrics_writer_t *w);
void srv_metrics_broker(void *broker, adm_metrics_writer_t *w);
/* The LLM dispatcher's families (requests by provider, key and outcome, queue, breakers, keys,
 * tokens, time to first token); ud is the llm_t. */
void srv_metrics_llm(void *llm, adm_metrics_writer_t *w);

/* The dispatcher's settings from cfg (CHAT_LLM_*). Strings are borrowed from cfg; free with
 * llm_config_free. Returns 0, or CORE_EINVAL with a one-line reason in err. */
int srv_config_llm(const srv_config_t *cfg, llm_config_t *lc, char *err, size_t errlen);
/* Routes the llm.ask and llm.cancel RPCs of node to l. */
void srv_llm_wire(chat_node_t *node, llm_t *l);

#endif
