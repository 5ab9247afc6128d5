/* server: configuration, per-connection write queues, the libwebsockets listeners and the
 * process lifecycle of chatd. */
#ifndef SERVER_SERVER_H
#define SERVER_SERVER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "core/core.h"

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
    uint32_t write_queue_bytes;
    uint32_t write_queue_messages;
    uint32_t write_delay_ms;
    char *rate_limits;
    char *typing_rate;
    uint32_t dedupe_window;
    uint32_t history_max_limit;
    uint32_t history_memory_mb;
    uint32_t max_errors;
    uint32_t presence_ttl;
    uint32_t node_ttl;
    char *advertise;
    char *namespaces; /* JSON text or NULL for the defaults */
    char *redis_url;
    char *database_url;
    char *database_read_url;
} srv_config_t;

/* Loads defaults, then the JSON file at path (may be NULL), then the environment. Returns 0, or
 * CORE_EINVAL with a one-line reason in err. */
int srv_config_load(srv_config_t *cfg, const char *path, char *err, size_t errlen);
void srv_config_free(srv_config_t *cfg);
/* Writes the --help text listing every setting, its variable and default. */
void srv_config_help(FILE *out);
/* Node ids go into cookies, metric labels and Redis keys: 1-64 of these. */
#define SRV_NODE_ID_CHARS                                                                        \
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._:-"
bool srv_node_id_ok(const char *id);
/* The cookie naming the node that served a browser, for sticky load balancers. */
#define SRV_NODE_COOKIE "chat_node"

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

#endif
