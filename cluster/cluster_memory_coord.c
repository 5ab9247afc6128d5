/* cluster: the in-memory broker's node registry, semaphores, daily counters and deadlines: one
 * node is the whole cluster, so each is a map of this process. */
#include "cluster/cluster_memory_int.h"

#include <stdlib.h>
#include <string.h>

/* One node is the whole cluster: the registry is the caller itself. */
int clu__mem_heartbeat(clu_broker_t *b, const char *node_id, const char *info, size_t len,
                       uint32_t ttl_ms, clu_nodes_cb cb, void *ud) {
    if (!cb)
        return 0;
    answer_t *a = clu__mem_answer_new(ANS_NODES, (void *)cb, ud);
    if (ttl_ms) {
        a->n = 1;
        a->node = (clu_node_t){(const char *)clu__mem_answer_copy(a, node_id, strlen(node_id)),
                               (const char *)clu__mem_answer_copy(a, info, len), len};
    }
    clu__mem_answer_queue((mem_broker_t *)b, a);
    return 0;
}

/* ---- semaphores, counters and deadlines of one node ---- */

static void sem_expire(mem_broker_t *mb, msem_t *s) {
    uint64_t now = uv_now(mb->loop);
    for (uint32_t i = 0; i < s->n;) {
        if (s->until[i] <= now) {
            free(s->leases[i]);
            s->leases[i] = s->leases[--s->n];
            s->until[i] = s->until[s->n];
        } else
            i++;
    }
}

static int sem_find(const msem_t *s, const char *lease) {
    for (uint32_t i = 0; i < s->n; i++)
        if (strcmp(s->leases[i], lease) == 0)
            return (int)i;
    return -1;
}

static msem_t *sem_get(mem_broker_t *mb, const char *key) {
    msem_t *s = core_map_get(mb->sems, key);
    if (!s) {
        s = core_calloc(1, sizeof *s);
        core_map_put(mb->sems, key, s);
    }
    sem_expire(mb, s);
    return s;
}

static void queue_sem(mem_broker_t *mb, clu_sem_cb cb, void *ud, bool granted) {
    answer_t *a = clu__mem_answer_new(ANS_SEM, (void *)cb, ud);
    a->flag = granted;
    clu__mem_answer_queue(mb, a);
}

int clu__mem_sem_acquire(clu_broker_t *b, const char *const *keys, const uint32_t *limits, size_t n,
                         const char *lease, uint32_t ttl_ms, clu_sem_cb cb, void *ud) {
    mem_broker_t *mb = (mem_broker_t *)b;
    bool granted = true;
    for (size_t i = 0; i < n && granted; i++) {
        msem_t *s = sem_get(mb, keys[i]);
        if (sem_find(s, lease) < 0 && s->n >= limits[i])
            granted = false;
    }
    uint64_t until = uv_now(mb->loop) + ttl_ms;
    for (size_t i = 0; i < n && granted; i++) {
        msem_t *s = sem_get(mb, keys[i]);
        int at = sem_find(s, lease);
        if (at >= 0) {
            s->until[at] = until;
            continue;
        }
        if (s->n == s->cap) {
            s->cap = s->cap ? s->cap * 2 : 8;
            s->leases = core_realloc(s->leases, s->cap * sizeof *s->leases);
            s->until = core_realloc(s->until, s->cap * sizeof *s->until);
        }
        s->leases[s->n] = core_strdup(lease);
        s->until[s->n++] = until;
    }
    queue_sem(mb, cb, ud, granted);
    return 0;
}

int clu__mem_sem_renew(clu_broker_t *b, const char *const *keys, size_t n, const char *lease,
                       uint32_t ttl_ms, clu_sem_cb cb, void *ud) {
    mem_broker_t *mb = (mem_broker_t *)b;
    bool held = true;
    uint64_t until = uv_now(mb->loop) + ttl_ms;
    for (size_t i = 0; i < n; i++) {
        msem_t *s = sem_get(mb, keys[i]);
        int at = sem_find(s, lease);
        if (at < 0)
            held = false;
        else
            s->until[at] = until;
    }
    if (cb)
        queue_sem(mb, cb, ud, held);
    return 0;
}

int clu__mem_sem_release(clu_broker_t *b, const char *const *keys, size_t n, const char *lease) {
    mem_broker_t *mb = (mem_broker_t *)b;
    for (size_t i = 0; i < n; i++) {
        msem_t *s = sem_get(mb, keys[i]);
        int at = sem_find(s, lease);
        if (at >= 0) {
            free(s->leases[at]);
            s->leases[at] = s->leases[--s->n];
            s->until[at] = s->until[s->n];
        }
    }
    return 0;
}

int clu__mem_counter_add(clu_broker_t *b, const char *key, int64_t amount, int64_t limit,
                         int64_t expire_at_s, clu_counter_cb cb, void *ud) {
    mem_broker_t *mb = (mem_broker_t *)b;
    mcounter_t *c = core_map_get(mb->counters, key);
    if (c && c->expire_at_s <= core_wall_s()) {
        free(core_map_del(mb->counters, key));
        c = NULL;
    }
    if (!c) {
        c = core_calloc(1, sizeof *c);
        core_map_put(mb->counters, key, c);
    }
    bool allowed = !(amount > 0 && limit > 0 && c->value + amount > limit);
    if (allowed) {
        c->value += amount;
        if (c->value < 0)
            c->value = 0;
        c->expire_at_s = expire_at_s;
    }
    answer_t *a = clu__mem_answer_new(ANS_COUNTER, (void *)cb, ud);
    a->flag = allowed;
    a->value = c->value;
    if (cb)
        clu__mem_answer_queue(mb, a);
    else
        free(a);
    return 0;
}

int clu__mem_deadline_raise(clu_broker_t *b, const char *key, int64_t until_ms) {
    mem_broker_t *mb = (mem_broker_t *)b;
    int64_t *d = core_map_get(mb->deadlines, key);
    if (!d) {
        d = core_calloc(1, sizeof *d);
        core_map_put(mb->deadlines, key, d);
    }
    if (until_ms > *d)
        *d = until_ms;
    return 0;
}

int clu__mem_deadline_clear(clu_broker_t *b, const char *key) {
    mem_broker_t *mb = (mem_broker_t *)b;
    int64_t *d = core_map_get(mb->deadlines, key);
    if (d)
        *d = 0;
    return 0;
}

int clu__mem_deadline_get(clu_broker_t *b, const char *const *keys, size_t n, clu_deadlines_cb cb,
                          void *ud) {
    mem_broker_t *mb = (mem_broker_t *)b;
    answer_t *a = clu__mem_answer_new(ANS_DEADLINES, (void *)cb, ud);
    a->n = n;
    a->values = core_calloc(n ? n : 1, sizeof *a->values);
    int64_t now = core_wall_ms();
    for (size_t i = 0; i < n; i++) {
        int64_t *d = core_map_get(mb->deadlines, keys[i]);
        a->values[i] = d && *d > now ? *d : 0;
    }
    clu__mem_answer_queue(mb, a);
    return 0;
}

/* Forgets expired daily counters and semaphores nobody holds, so a long-lived node does not
 * keep one entry per user and day forever. */
void clu__mem_coord_sweep(mem_broker_t *mb) {
    int64_t wall = core_wall_s();
    core_map_iter_t it = 0;
    const char *key;
    void *v;
    while (core_map_next(mb->counters, &it, &key, &v))
        if (((mcounter_t *)v)->expire_at_s <= wall)
            free(core_map_del(mb->counters, key));
    it = 0;
    while (core_map_next(mb->sems, &it, &key, &v)) {
        msem_t *s = v;
        sem_expire(mb, s);
        if (s->n == 0) {
            core_map_del(mb->sems, key);
            free(s->leases);
            free(s->until);
            free(s);
        }
    }
    int64_t wall_ms = core_wall_ms();
    it = 0;
    while (core_map_next(mb->deadlines, &it, &key, &v))
        if (*(int64_t *)v <= wall_ms)
            free(core_map_del(mb->deadlines, key));
}

void clu__mem_coord_free(mem_broker_t *mb) {
    core_map_iter_t it = 0;
    void *v;
    while (core_map_next(mb->sems, &it, NULL, &v)) {
        msem_t *s = v;
        for (uint32_t i = 0; i < s->n; i++)
            free(s->leases[i]);
        free(s->leases);
        free(s->until);
        free(s);
    }
    core_map_free(mb->sems);
    it = 0;
    while (core_map_next(mb->counters, &it, NULL, &v))
        free(v);
    core_map_free(mb->counters);
    it = 0;
    while (core_map_next(mb->deadlines, &it, NULL, &v))
        free(v);
    core_map_free(mb->deadlines);
}
