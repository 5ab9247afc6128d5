/* store_pg: a small pool of PostgreSQL connections driven by libpq in non-blocking mode on the
 * node's libuv loop. Nothing here blocks: connecting goes through PQconnectPoll on a uv_poll,
 * queries through PQsendQueryParams (unnamed statements, so it works behind PgBouncer in
 * transaction mode) or PQsendQuery, results are read as the socket becomes readable.
 *
 * Every connection is a small state machine (down, connecting, idle, busy) with a connect
 * timeout, a statement timeout (the connection is dropped: a cancel request would block), and a
 * jittered exponential reconnect. Queries wait in one FIFO for the next idle connection; when
 * no connection is up they fail at once instead of piling up.
 *
 * Host names in the URL are resolved by libpq with a blocking getaddrinfo: give numeric
 * addresses (host=127.0.0.1 or hostaddr=) as with Redis. */
#ifndef STORE_STORE_PG_H
#define STORE_STORE_PG_H

#include <libpq-fe.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

typedef struct pg_pool pg_pool_t;

/* A query's answer. res is the last result of the query (the first error, if any statement
 * failed) and is freed by the pool after the callback; NULL when the query could not run to
 * its end (no connection, connection lost, timed out, pool closing): a temporary failure. */
typedef void (*pg_result_cb)(PGresult *res, void *ud);

typedef struct {
    uint32_t size;                 /* connections */
    uint32_t connect_timeout_ms;   /* one connection attempt */
    uint32_t statement_timeout_ms; /* one query, from its send to its last result */
} pg_pool_opts_t;

typedef struct {
    uint64_t queries;     /* queries sent */
    uint64_t failures;    /* queries answered NULL (temporary) */
    uint64_t errors;      /* queries answered with an error result */
    uint64_t connects;    /* connections established */
    uint64_t disconnects; /* connections lost or dropped */
    uint32_t up;          /* connections up now */
    uint32_t queued;      /* queries waiting for a connection */
} pg_pool_stats_t;

/* name labels the pool in logs ("primary", "replica"). The conninfo (URL or key=value) is never
 * logged: it may hold a password. Connecting starts at once. */
pg_pool_t *pg_pool_new(uv_loop_t *loop, const char *name, const char *conninfo,
                       const pg_pool_opts_t *opts);
/* Queues a query with text parameters (values[i] NULL = SQL NULL, lengths used for binary ones
 * where formats[i] = 1), results in binary (result_binary) or text format. The arrays are
 * copied. Returns 0 (cb runs later, never before this returns) or CORE_EAGAIN when no
 * connection is up (cb never runs). */
int pg_query(pg_pool_t *p, const char *sql, int nparams, const char *const *values,
             const int *lengths, const int *formats, bool result_binary, pg_result_cb cb, void *ud);
/* A query of several statements in the simple protocol, no parameters. */
int pg_query_simple(pg_pool_t *p, const char *sql, pg_result_cb cb, void *ud);
/* True while at least one connection is up. */
bool pg_pool_up(const pg_pool_t *p);
/* True while a query sent now would start at once. */
bool pg_pool_has_idle(const pg_pool_t *p);
void pg_pool_stats(const pg_pool_t *p, pg_pool_stats_t *out);
/* Fails what is queued or running (callbacks with NULL), closes every connection; done runs
 * once every handle is closed, from the loop. */
void pg_pool_close(pg_pool_t *p, void (*done)(void *ud), void *ud);

/* The five-character SQLSTATE of an error result ("" when none). */
const char *pg_sqlstate(const PGresult *res);

#endif
