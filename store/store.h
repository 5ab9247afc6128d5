/* store: durable history in PostgreSQL. The message writer appends publications in batches
 * (one multi-row INSERT ... ON CONFLICT DO NOTHING per batch, so one commit covers every row of
 * it: group commit), the reader serves history ranges, and the durable broker (store_broker_new)
 * puts both behind the broker interface so that chat/ needs no knowledge of them.
 *
 * Everything runs on the node's loop through store_pg's non-blocking pools: the primary for
 * writes, the replica (DATABASE_READ_URL) for history reads when configured. */
#ifndef STORE_STORE_H
#define STORE_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "cluster/cluster.h"
#include "core/core.h"

typedef struct store store_t;

typedef struct {
    const char *url;      /* primary: writes, and reads without a replica */
    const char *read_url; /* replica for history reads, or NULL */
    uint32_t pool_size;   /* connections to the primary (and to the replica) */
    uint32_t connect_timeout_ms;
    uint32_t statement_timeout_ms;
    uint32_t batch_max;   /* rows per INSERT */
    uint32_t batch_bytes; /* data and info bytes per INSERT (a larger single row goes alone) */
    uint32_t backlog_max; /* rows waiting for a commit; more are refused (CORE_ELIMIT) */
} store_config_t;

/* One publication to keep. Strings are copied by store_append. */
typedef struct {
    const char *channel;
    const char *epoch;
    uint64_t offset;
    const char *data;
    size_t data_len;
    const char *info; /* ClientInfo JSON of the publisher, or NULL */
    size_t info_len;
    int64_t created_ms; /* Unix ms; 0 = now */
    const char *plan;   /* the publisher's plan, or NULL */
} store_msg_t;

typedef void (*store_done_cb)(int status, void *ud);
/* Publications of one channel and epoch in the order asked; strings borrowed for the call. */
typedef void (*store_read_cb)(int status, const clu_pub_t *pubs, size_t n, void *ud);

typedef struct {
    uint64_t rows_written;             /* rows committed (conflicting duplicates included) */
    uint64_t batches;                  /* committed INSERTs */
    uint64_t write_retries;            /* batches sent again after a failure */
    uint64_t rejected;                 /* rows the server refused on their own (logged, dropped) */
    uint64_t refused;                  /* appends refused because the backlog was full */
    uint64_t reads;                    /* history reads answered */
    uint64_t read_errors;              /* history reads that failed */
    size_t backlog;                    /* rows not committed yet */
    double backlog_age_s;              /* age of the oldest of them */
    const core_hist_t *commit_seconds; /* from a row's append to its batch's commit */
    const core_hist_t *batch_rows;     /* rows per committed batch */
    bool primary_up, replica_up;
    bool has_replica;
} store_stats_t;

/* Applies the embedded migrations not applied yet, in one transaction under an advisory lock
 * (nodes starting together: one migrates, the others wait for it and find nothing left to do).
 * Keeps trying to reach the server until timeout_ms has passed. cb gets 0 and how many
 * migrations this call applied, or a negative code with a message. Runs on the loop. */
void store_migrate(uv_loop_t *loop, const char *url, uint32_t timeout_ms,
                   void (*cb)(int status, int applied, const char *error, void *ud), void *ud);
/* The newest migration version this build knows. */
int store_schema_version(void);

store_t *store_new(uv_loop_t *loop, const store_config_t *cfg);
/* Queues one publication; cb runs once its batch committed (0), or with a negative code if the
 * server refused the row itself. While the server is unreachable the rows wait and are retried
 * with backoff. CORE_ELIMIT (cb never runs) when the backlog is full. */
int store_append(store_t *s, const store_msg_t *m, store_done_cb cb, void *ud);
/* Between cork and uncork appends only queue: a caller with many rows at once (the persist
 * stream's consumer) sends them as full batches instead of a first batch of one row. */
void store_cork(store_t *s);
void store_uncork(store_t *s);
/* Rows appended and not committed yet. */
size_t store_backlog(const store_t *s);
/* True when store_append would refuse; the caller refuses instead, and it is counted. */
bool store_full(store_t *s);
/* Forward: offsets in (after, before) ascending, before 0 = no bound; reverse: offsets in
 * (after, before) descending. At most limit rows. Temporary failures: CORE_EAGAIN. */
int store_read(store_t *s, const char *channel, const char *epoch, bool reverse, uint64_t after,
               uint64_t before, uint32_t limit, store_read_cb cb, void *ud);
/* Every channel's newest stored position (row per channel, then done). */
int store_positions(store_t *s,
                    void (*row)(void *ud, const char *channel, const char *epoch, uint64_t top),
                    void (*done)(void *ud, int status), void *ud);
/* One retention rule: publications of a namespace (prefix "ns:", or NULL for the default
 * namespace: channels without ':') older than days. plan: only this plan's; NULL: those with no
 * plan or a plan not in except (the plans that have rules of their own). */
typedef struct {
    const char *prefix;
    const char *plan;
    const char *const *except;
    size_t nexcept;
    uint32_t days;
} store_retention_rule_t;

/* Deletes up to batch publications the rule no longer keeps, as one short statement (no long
 * locks: call again while deleted == batch). */
int store_retention_delete(store_t *s, const store_retention_rule_t *rule, uint32_t batch,
                           void (*cb)(int status, uint64_t deleted, void *ud), void *ud);

/* Deletes every stored publication of channel (all epochs): the server API's history_remove. */
int store_channel_delete(store_t *s, const char *channel, void (*cb)(int status, void *ud),
                         void *ud);

/* Records one settled assistant request in the usage ledger (fire and forget). */
void store_usage(store_t *s, const char *request_id, const char *user, const char *plan,
                 const char *provider, const char *model, int64_t tokens_in, int64_t tokens_out,
                 const char *outcome);
bool store_up(const store_t *s);
void store_stats(store_t *s, store_stats_t *out);
/* Waits up to wait_ms for the backlog to commit, fails what is left (CORE_EAGAIN) and closes the
 * connections; done runs from the loop once everything is closed. */
void store_close(store_t *s, uint32_t wait_ms, void (*done)(void *ud), void *ud);

/* The durable broker: wraps inner (the memory or the Redis broker), which keeps owning
 * channels, fan-out and presence.
 * - Publishes to stored channels are written to Postgres. Without Redis (persist == false) the
 *   node writes them itself and acknowledges a publish once its batch committed; with Redis the
 *   publish script appends each to the persist stream and every node consumes it as one group
 *   (the Redis broker's persist_* operations).
 * - History and recovery read Postgres for the ranges the inner broker no longer holds.
 * Nothing else changes: every other operation goes to inner. Closing it closes inner.
 * consumer names this node in the persist stream's group; entries another consumer left
 * unacknowledged for claim_idle_ms are claimed (a dead node's). Returns inner, whose operations
 * now go through the durable broker. */
clu_broker_t *store_broker_new(uv_loop_t *loop, clu_broker_t *inner, store_t *st,
                               uint32_t max_history_limit, const char *consumer,
                               uint32_t claim_idle_ms);

typedef struct {
    uint64_t consumed;           /* persist stream entries read (claimed ones included) */
    uint64_t persisted;          /* entries stored and acknowledged */
    uint64_t history_from_store; /* history answers that needed the database */
    uint64_t stream_length;      /* the persist stream's length, last read (once a second) */
    int64_t stream_age_ms;       /* the age of its oldest entry */
} store_broker_stats_t;

/* Counters of a broker made by store_broker_new. */
void store_broker_stats(clu_broker_t *b, store_broker_stats_t *out);

#endif
