/* cluster: the Redis broker's operations for the cluster as a whole: the node registry
 * (heartbeat), rate limits, and the semaphores, counters and deadlines of the dispatcher. */
#include "cluster/cluster_redis_int.h"

#include <stdlib.h>
#include <string.h>

static void heartbeat_done(call_t *c, redisReply *r, int status) {
    clu_nodes_cb cb = (clu_nodes_cb)c->cb;
    if (cb == NULL)
        return;
    if (status != 0 || r->type != REDIS_REPLY_ARRAY) {
        cb(status ? status : CORE_EPROTO, NULL, 0, c->ud);
        return;
    }
    size_t n = r->elements / 2, k = 0;
    clu_node_t *nodes = core_calloc(n ? n : 1, sizeof *nodes);
    for (size_t i = 0; i < n; i++) {
        redisReply *id = r->element[2 * i], *info = r->element[2 * i + 1];
        if (id->type != REDIS_REPLY_STRING || info->type != REDIS_REPLY_STRING)
            continue;
        /* hiredis NUL-terminates string replies, so the id is a C string as it is. */
        nodes[k++] = (clu_node_t){id->str, info->str, info->len};
    }
    cb(0, nodes, k, c->ud);
    free(nodes);
}

int clu__rb_heartbeat(clu_broker_t *b, const char *node_id, const char *info, size_t len,
                      uint32_t ttl_ms, clu_nodes_cb cb, void *ud) {
    rb_t *rb = (rb_t *)b;
    if (rb->closing)
        return CORE_EINVAL;
    call_t *c = clu__rb_call_new(rb, SCRIPT_HEARTBEAT, heartbeat_done, (void *)cb, ud);
    clu__rb_call_args(c, "2");
    clu__rb_call_args(c, "{chat}.nodes");
    clu__rb_call_args(c, "{chat}.nodes.exp");
    clu__rb_call_args(c, node_id);
    clu__rb_call_arg(c, info, len);
    clu__rb_call_argu(c, ttl_ms);
    clu__rb_call_start(c);
    return 0;
}

static void rate_done(call_t *c, redisReply *r, int status) {
    clu_rate_cb cb = (clu_rate_cb)c->cb;
    int64_t wait_ms = 0;
    if (status == 0) {
        if (r->type == REDIS_REPLY_INTEGER && r->integer >= 0)
            wait_ms = (r->integer + 999) / 1000;
        else
            status = CORE_EPROTO;
    }
    cb(status, wait_ms, c->ud);
}

int clu__rb_rate_take(clu_broker_t *b, const char *key, int64_t interval_us, int64_t burst,
                      clu_rate_cb cb, void *ud) {
    rb_t *rb = (rb_t *)b;
    if (rb->closing || cb == NULL)
        return CORE_EINVAL;
    call_t *c = clu__rb_call_new(rb, SCRIPT_RATE, rate_done, (void *)cb, ud);
    clu__rb_call_args(c, "1");
    core_str_t k = {0};
    clu__rb_key_of(&k, "chat.rate.", key);
    clu__rb_call_arg(c, k.ptr, k.len);
    core_str_free(&k);
    clu__rb_call_argu(c, (uint64_t)(interval_us > 0 ? interval_us : 1));
    clu__rb_call_argu(c, (uint64_t)(burst > 0 ? burst : 1));
    clu__rb_call_start(c);
    return 0;
}

/* ---- semaphores, counters, deadlines ------------------------------------------------------- */

/* Semaphores and deadlines of the dispatcher share one hash tag: a multi-key script needs all
 * its keys on one Redis Cluster slot, and these keys are few and small. */
static void coord_key(call_t *c, const char *prefix, const char *key) {
    core_str_t k = {0};
    core_str_appends(&k, prefix);
    core_str_appends(&k, "{coord}.");
    core_str_appends(&k, key);
    clu__rb_call_arg(c, k.ptr, k.len);
    core_str_free(&k);
}

static void coord_keys(call_t *c, const char *prefix, const char *const *keys, size_t n) {
    clu__rb_call_argu(c, n);
    for (size_t i = 0; i < n; i++)
        coord_key(c, prefix, keys[i]);
}

static void sem_done(call_t *c, redisReply *r, int status) {
    if (!c->cb)
        return;
    bool granted = false;
    if (status == 0) {
        if (r->type == REDIS_REPLY_INTEGER)
            granted = r->integer == 1;
        else
            status = CORE_EPROTO;
    }
    ((clu_sem_cb)c->cb)(status, granted, c->ud);
}

/* Leaves room in argv for EVALSHA, the SHA, the key count, and one lease and TTL. */
#define COORD_MAX_KEYS ((MAX_ARGS - 5) / 2)

int clu__rb_sem_acquire(clu_broker_t *b, const char *const *keys, const uint32_t *limits, size_t n,
                        const char *lease, uint32_t ttl_ms, clu_sem_cb cb, void *ud) {
    rb_t *rb = (rb_t *)b;
    if (rb->closing || !cb || n == 0 || n > COORD_MAX_KEYS)
        return CORE_EINVAL;
    call_t *c = clu__rb_call_new(rb, SCRIPT_SEM_ACQUIRE, sem_done, (void *)cb, ud);
    coord_keys(c, "chat.sem.", keys, n);
    clu__rb_call_args(c, lease);
    clu__rb_call_argu(c, ttl_ms);
    for (size_t i = 0; i < n; i++)
        clu__rb_call_argu(c, limits[i]);
    clu__rb_call_start(c);
    return 0;
}

int clu__rb_sem_renew(clu_broker_t *b, const char *const *keys, size_t n, const char *lease,
                      uint32_t ttl_ms, clu_sem_cb cb, void *ud) {
    rb_t *rb = (rb_t *)b;
    if (rb->closing || n == 0 || n > COORD_MAX_KEYS)
        return CORE_EINVAL;
    call_t *c = clu__rb_call_new(rb, SCRIPT_SEM_RENEW, sem_done, (void *)cb, ud);
    coord_keys(c, "chat.sem.", keys, n);
    clu__rb_call_args(c, lease);
    clu__rb_call_argu(c, ttl_ms);
    clu__rb_call_start(c);
    return 0;
}

int clu__rb_sem_release(clu_broker_t *b, const char *const *keys, size_t n, const char *lease) {
    rb_t *rb = (rb_t *)b;
    if (rb->closing || n == 0 || n > COORD_MAX_KEYS)
        return CORE_EINVAL;
    call_t *c = clu__rb_call_new(rb, SCRIPT_SEM_RELEASE, sem_done, NULL, NULL);
    coord_keys(c, "chat.sem.", keys, n);
    clu__rb_call_args(c, lease);
    clu__rb_call_start(c);
    return 0;
}

static void counter_done(call_t *c, redisReply *r, int status) {
    if (!c->cb)
        return;
    bool allowed = false;
    int64_t value = 0;
    if (status == 0) {
        if (r->type == REDIS_REPLY_ARRAY && r->elements == 2 &&
            r->element[0]->type == REDIS_REPLY_INTEGER &&
            r->element[1]->type == REDIS_REPLY_INTEGER) {
            allowed = r->element[0]->integer == 1;
            value = r->element[1]->integer;
        } else
            status = CORE_EPROTO;
    }
    ((clu_counter_cb)c->cb)(status, allowed, value, c->ud);
}

static void call_argi(call_t *c, int64_t v) {
    char buf[24];
    int n = snprintf(buf, sizeof buf, "%lld", (long long)v);
    clu__rb_call_arg(c, buf, (size_t)n);
}

int clu__rb_counter_add(clu_broker_t *b, const char *key, int64_t amount, int64_t limit,
                        int64_t expire_at_s, clu_counter_cb cb, void *ud) {
    rb_t *rb = (rb_t *)b;
    if (rb->closing)
        return CORE_EINVAL;
    call_t *c = clu__rb_call_new(rb, SCRIPT_COUNTER, counter_done, (void *)cb, ud);
    core_str_t k = {0};
    clu__rb_call_args(c, "1");
    clu__rb_key_of(&k, "chat.ctr.", key);
    clu__rb_call_arg(c, k.ptr, k.len);
    core_str_free(&k);
    call_argi(c, amount);
    call_argi(c, limit);
    call_argi(c, expire_at_s);
    clu__rb_call_start(c);
    return 0;
}

static void deadline_written(call_t *c, redisReply *r, int status) {
    (void)c;
    (void)r;
    (void)status;
}

int clu__rb_deadline_raise(clu_broker_t *b, const char *key, int64_t until_ms) {
    rb_t *rb = (rb_t *)b;
    if (rb->closing)
        return CORE_EINVAL;
    call_t *c = clu__rb_call_new(rb, SCRIPT_DEADLINE_RAISE, deadline_written, NULL, NULL);
    clu__rb_call_args(c, "1");
    coord_key(c, "chat.dl.", key);
    call_argi(c, until_ms);
    clu__rb_call_start(c);
    return 0;
}

int clu__rb_deadline_clear(clu_broker_t *b, const char *key) {
    rb_t *rb = (rb_t *)b;
    if (rb->closing)
        return CORE_EINVAL;
    call_t *c = clu__rb_call_new(rb, SCRIPT_DEADLINE_CLEAR, deadline_written, NULL, NULL);
    clu__rb_call_args(c, "1");
    coord_key(c, "chat.dl.", key);
    clu__rb_call_start(c);
    return 0;
}

static void deadlines_done(call_t *c, redisReply *r, int status) {
    int64_t values[COORD_MAX_KEYS * 2] = {0};
    size_t n = 0;
    if (status == 0) {
        if (r->type == REDIS_REPLY_ARRAY && r->elements <= sizeof values / sizeof *values) {
            for (n = 0; n < r->elements; n++)
                values[n] = r->element[n]->type == REDIS_REPLY_INTEGER ? r->element[n]->integer : 0;
        } else
            status = CORE_EPROTO;
    }
    ((clu_deadlines_cb)c->cb)(status, values, n, c->ud);
}

int clu__rb_deadline_get(clu_broker_t *b, const char *const *keys, size_t n, clu_deadlines_cb cb,
                         void *ud) {
    rb_t *rb = (rb_t *)b;
    if (rb->closing || !cb || n == 0 || n > MAX_ARGS - 3)
        return CORE_EINVAL;
    call_t *c = clu__rb_call_new(rb, SCRIPT_DEADLINE_GET, deadlines_done, (void *)cb, ud);
    clu__rb_call_argu(c, n);
    for (size_t i = 0; i < n; i++)
        coord_key(c, "chat.dl.", keys[i]);
    clu__rb_call_start(c);
    return 0;
}
