/* server: the database at start (migrations, channel positions) and its metrics. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "server/srv_int.h"
#include "store/store.h"

static void retention_start(srv_t *S);

struct srv_position {
    char *channel;
    char epoch[CLU_EPOCH_MAX];
    uint64_t top;
};

typedef struct {
    srv_t *S;
    bool done;
    int status;
    int applied;
    char error[256];
} start_t;

static void migrated(int status, int applied, const char *error, void *ud) {
    start_t *st = ud;
    st->done = true;
    st->status = status;
    st->applied = applied;
    snprintf(st->error, sizeof st->error, "%s", error ? error : "");
}

static void position_row(void *ud, const char *channel, const char *epoch, uint64_t top) {
    srv_t *S = ((start_t *)ud)->S;
    if (S->npositions == S->cap_positions) {
        S->cap_positions = S->cap_positions ? S->cap_positions * 2 : 64;
        S->positions = core_realloc(S->positions, S->cap_positions * sizeof *S->positions);
    }
    struct srv_position *p = &S->positions[S->npositions++];
    p->channel = core_strdup(channel);
    snprintf(p->epoch, sizeof p->epoch, "%s", epoch);
    p->top = top;
}

static void positions_done(void *ud, int status) {
    start_t *st = ud;
    st->done = true;
    st->status = status;
}

static void pause_over(uv_timer_t *t) {
    *(bool *)t->data = true;
}

/* Runs the loop for ms (the database's connections make progress meanwhile). */
static void run_for(uv_loop_t *loop, uint64_t ms) {
    bool over = false;
    uv_timer_t t;
    uv_timer_init(loop, &t);
    t.data = &over;
    uv_timer_start(&t, pause_over, ms, 0);
    while (!over)
        uv_run(loop, UV_RUN_ONCE);
    uv_close((uv_handle_t *)&t, NULL);
    uv_run(loop, UV_RUN_NOWAIT); /* the close callback, before t goes out of scope */
}

int srv__store_start(srv_t *S) {
    if (!S->cfg.database_url)
        return 0;
    start_t st = {0};
    uint64_t t0 = core_now_ms();
    store_migrate(&S->loop, S->cfg.database_url, S->cfg.db_start_wait_ms, migrated, &st);
    while (!st.done)
        uv_run(&S->loop, UV_RUN_ONCE);
    if (st.status != 0) {
        fprintf(stderr, "chatd: DATABASE_URL: %s\n", st.error);
        return 1;
    }
    CORE_LOGI("server", "database schema ready", "version=%d applied=%d ms=%" PRIu64,
              store_schema_version(), st.applied, core_now_ms() - t0);
    store_config_t sc = {
        .url = S->cfg.database_url,
        .read_url = S->cfg.database_read_url,
        .pool_size = S->cfg.db_pool,
        .connect_timeout_ms = S->cfg.db_connect_timeout_ms,
        .statement_timeout_ms = S->cfg.db_statement_timeout_ms,
        .batch_max = S->cfg.db_batch,
        .batch_bytes = S->cfg.db_batch_bytes,
        .backlog_max = S->cfg.persist_max,
    };
    S->store = store_new(&S->loop, &sc);
    if (S->cfg.redis_url)
        return 0; /* Redis keeps the channels' positions */
    /* Without Redis the positions come from the database, before any client can publish:
     * offsets go on where they were, in the same epoch. */
    uint64_t deadline = core_now_ms() + S->cfg.db_start_wait_ms;
    for (;;) {
        start_t ps = {.S = S};
        if (store_positions(S->store, position_row, positions_done, &ps) == 0) {
            while (!ps.done)
                uv_run(&S->loop, UV_RUN_ONCE);
            if (ps.status == 0)
                break;
        }
        if (core_now_ms() >= deadline) {
            fprintf(stderr, "chatd: DATABASE_URL: cannot read the channels' positions\n");
            return 1;
        }
        run_for(&S->loop, 50);
    }
    CORE_LOGI("server", "channel positions loaded", "channels=%zu", S->npositions);
    return 0;
}

void srv__store_wrap(srv_t *S) {
    if (!S->store)
        return;
    if (S->cfg.redis_url) {
        clu_redis_set_persist(S->broker, S->cfg.persist_max);
    } else {
        for (size_t i = 0; i < S->npositions; i++) {
            clu_memory_set_position(S->broker, S->positions[i].channel, S->positions[i].epoch,
                                    S->positions[i].top);
            free(S->positions[i].channel);
        }
        clu_memory_keep_positions(S->broker);
        free(S->positions);
        S->positions = NULL;
        S->npositions = S->cap_positions = 0;
    }
    S->broker = store_broker_new(&S->loop, S->broker, S->store, S->cfg.history_max_limit,
                                 S->cfg.node_id, S->cfg.persist_claim_ms);
    retention_start(S);
}

/* ---- retention: one node at a time (a lease on a one-slot semaphore), in short batches ---- */

#define RETENTION_BATCH 1000
#define RETENTION_LEASE_MS 600000

static struct {
    srv_t *S;
    uv_timer_t timer;
    store_retention_rule_t *rules;
    size_t nrules, cur;
    void **owned; /* the rules' prefixes and except lists */
    size_t nowned;
    bool running;
    bool stopped; /* shutting down: the broker may be closing */
    uint64_t runs, deleted;
} R;

static const char *const retention_key[1] = {"chat.retention"};

static void retention_end(void) {
    if (!R.stopped)
        clu_sem_release(R.S->broker, retention_key, 1, R.S->cfg.node_id);
    R.running = false;
    R.runs++;
}

static void retention_next(void);

static void retention_deleted(int status, uint64_t deleted, void *ud) {
    (void)ud;
    R.deleted += deleted;
    if (status != 0) {
        retention_end(); /* the database is away: the next round tries again */
        return;
    }
    if (deleted < RETENTION_BATCH)
        R.cur++;
    retention_next();
}

static void retention_next(void) {
    if (R.cur >= R.nrules || R.stopped) {
        retention_end();
        return;
    }
    if (store_retention_delete(R.S->store, &R.rules[R.cur], RETENTION_BATCH, retention_deleted,
                               NULL) != 0)
        retention_end();
}

static void retention_leased(int status, bool granted, void *ud) {
    (void)ud;
    if (status != 0 || !granted) {
        R.running = false; /* another node runs it, or the lease could not be asked */
        return;
    }
    R.cur = 0;
    retention_next();
}

static void retention_tick(uv_timer_t *t) {
    (void)t;
    if (R.running || R.S->draining)
        return;
    static const uint32_t one[1] = {1};
    R.running = true;
    if (clu_sem_acquire(R.S->broker, retention_key, one, 1, R.S->cfg.node_id, RETENTION_LEASE_MS,
                        retention_leased, NULL) != 0)
        R.running = false;
}

static void retention_start(srv_t *S) {
    R.S = S;
    R.owned = core_calloc(2 * (S->nns ? S->nns : 1), sizeof *R.owned);
    for (size_t i = 0; i < S->nns; i++) {
        const chat_ns_t *ns = &S->ns[i];
        char *prefix = NULL;
        if (ns->name[0]) {
            prefix = core_malloc(strlen(ns->name) + 2);
            sprintf(prefix, "%s:", ns->name);
        }
        const char **except = core_calloc(AUTH_PLAN_COUNT, sizeof *except);
        size_t nexcept = 0;
        for (int p = 0; p < AUTH_PLAN_COUNT; p++) {
            if (!ns->retention_plan_days[p])
                continue;
            except[nexcept++] = auth_plan_name((auth_plan_t)p);
            R.rules = core_realloc(R.rules, (R.nrules + 1) * sizeof *R.rules);
            R.rules[R.nrules++] = (store_retention_rule_t){prefix, auth_plan_name((auth_plan_t)p),
                                                           NULL, 0, ns->retention_plan_days[p]};
        }
        if (ns->retention_days) {
            R.rules = core_realloc(R.rules, (R.nrules + 1) * sizeof *R.rules);
            R.rules[R.nrules++] =
                (store_retention_rule_t){prefix, NULL, except, nexcept, ns->retention_days};
        }
        R.owned[R.nowned++] = prefix;
        R.owned[R.nowned++] = except;
    }
    if (!R.nrules)
        return;
    uv_timer_init(&S->loop, &R.timer);
    uv_timer_start(&R.timer, retention_tick, S->cfg.retention_interval_ms,
                   S->cfg.retention_interval_ms);
    uv_unref((uv_handle_t *)&R.timer);
    CORE_LOGI("server", "retention on", "rules=%zu interval_ms=%" PRIu32, R.nrules,
              S->cfg.retention_interval_ms);
}

void srv__store_stop(srv_t *S) {
    (void)S;
    R.stopped = true;
    if (R.nrules && !uv_is_closing((uv_handle_t *)&R.timer))
        uv_close((uv_handle_t *)&R.timer, NULL);
    /* A round still running ends at its next step without looking at the rules. */
    for (size_t i = 0; i < R.nowned; i++)
        free(R.owned[i]);
    free(R.owned);
    free(R.rules);
    R.owned = NULL;
    R.rules = NULL;
    R.nowned = 0;
}

static void usage_row(void *ud, const llm_settled_t *u) {
    srv_t *S = ud;
    store_usage(S->store, u->request_id, u->user, u->plan, u->provider, u->model, u->tokens_in,
                u->tokens_out, u->outcome);
}

void srv__store_llm(srv_t *S) {
    if (S->store && S->llm)
        llm_set_usage_sink(S->llm, usage_row, S);
}

void srv__store_metrics(void *ud, adm_metrics_writer_t *w) {
    srv_t *S = ud;
    if (!S->store)
        return;
    store_stats_t s;
    store_stats(S->store, &s);
    store_broker_stats_t b;
    store_broker_stats(S->broker, &b);
    adm_metrics_family(w, "chat_store_up", "gauge",
                       "1 while a connection to the database is up, by pool.");
    adm_metrics_sample(w, "chat_store_up", &(adm_label_t){"pool", "primary"}, 1, s.primary_up);
    if (s.has_replica)
        adm_metrics_sample(w, "chat_store_up", &(adm_label_t){"pool", "replica"}, 1, s.replica_up);
    adm_metrics_gauge(w, "chat_store_backlog",
                      "Publications this node holds for the database, not committed yet.",
                      s.backlog);
    adm_metrics_family(w, "chat_store_backlog_age_seconds", "gauge",
                       "Age of the oldest publication this node holds for the database.");
    adm_metrics_sample_double(w, "chat_store_backlog_age_seconds", NULL, 0, s.backlog_age_s);
    adm_metrics_counter(w, "chat_store_rows_total", "Publications committed to the database.",
                        s.rows_written);
    adm_metrics_counter(w, "chat_store_batches_total", "Batches committed (one INSERT each).",
                        s.batches);
    adm_metrics_counter(w, "chat_store_write_retries_total", "Batches sent again after a failure.",
                        s.write_retries);
    adm_metrics_counter(w, "chat_store_rejected_total",
                        "Publications the database refused on their own (logged, not kept).",
                        s.rejected);
    adm_metrics_counter(w, "chat_store_refused_total",
                        "Publications refused because the database backlog was full.", s.refused);
    adm_metrics_histogram(w, "chat_store_batch_rows", "Publications per committed batch.",
                          s.batch_rows);
    adm_metrics_histogram(w, "chat_store_commit_seconds",
                          "From a publication reaching this node's writer to its batch's commit.",
                          s.commit_seconds);
    adm_metrics_counter(w, "chat_store_history_reads_total",
                        "History reads answered by the database.", s.reads);
    adm_metrics_counter(w, "chat_store_history_errors_total",
                        "History reads the database could not answer.", s.read_errors);
    adm_metrics_counter(w, "chat_store_retention_runs_total",
                        "Retention rounds this node ran (holding the cluster's lease).", R.runs);
    adm_metrics_counter(w, "chat_store_retention_deleted_total",
                        "Publications deleted by retention on this node.", R.deleted);
    adm_metrics_counter(w, "chat_store_history_answers_total",
                        "History and recovery answers that needed the database.",
                        b.history_from_store);
    if (S->cfg.redis_url) {
        adm_metrics_gauge(w, "chat_persist_stream_length",
                          "Entries in the cluster's persist stream (not stored yet).",
                          b.stream_length);
        adm_metrics_family(w, "chat_persist_stream_age_seconds", "gauge",
                           "Age of the persist stream's oldest entry.");
        adm_metrics_sample_double(w, "chat_persist_stream_age_seconds", NULL, 0,
                                  (double)b.stream_age_ms / 1000.0);
        adm_metrics_counter(w, "chat_persist_consumed_total",
                            "Persist stream entries this node read (claimed ones included).",
                            b.consumed);
        adm_metrics_counter(w, "chat_persist_acked_total",
                            "Persist stream entries this node stored and acknowledged.",
                            b.persisted);
    }
}
