/* cluster: the Redis broker's persist stream. The publish script appends every stored
 * publication to one stream; the nodes read it as one consumer group (XREADGROUP), write the
 * entries to the database and acknowledge them after the commit (XACK, then XDEL so the stream's
 * length is the backlog). Entries a dead node read but never acknowledged stay pending under its
 * name until a live node claims them (XAUTOCLAIM past an idle time). */
#include "cluster/cluster_redis_int.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MOD "cluster"

void clu_redis_set_persist(clu_broker_t *b, uint32_t max_backlog) {
    rb_t *rb = (rb_t *)b;
    rb->persist_cap = max_backlog ? max_backlog : 1;
    clu__rb_persist_connected(rb);
}

static void on_group_created(redisAsyncContext *ac, void *reply, void *priv) {
    (void)priv;
    rb_t *rb = ac->data;
    redisReply *r = reply;
    if (rb)
        clu__rb_cmd_answered(rb);
    if (r && r->type == REDIS_REPLY_ERROR && r->str && strncmp(r->str, "BUSYGROUP", 9) != 0)
        CORE_LOGW(MOD, "persist group not created", "reply=\"%.120s\"", r->str);
}

void clu__rb_persist_connected(rb_t *rb) {
    if (!rb->persist_cap || !rb->cmd.connected)
        return;
    /* From the stream's start: entries appended before the group existed are kept too. */
    if (redisAsyncCommand(rb->cmd.ac, on_group_created, NULL,
                          "XGROUP CREATE " CLU_PERSIST_KEY " " CLU_PERSIST_GROUP
                          " 0 MKSTREAM") == REDIS_OK)
        clu__rb_cmd_sent(rb);
}

typedef struct {
    rb_t *rb;
    clu_persist_cb cb;
    void *ud;
} pread_t;

static const redisReply *field(const redisReply *fields, const char *name) {
    for (size_t i = 0; i + 1 < fields->elements; i += 2) {
        const redisReply *k = fields->element[i];
        if (k->type == REDIS_REPLY_STRING && k->len == strlen(name) &&
            memcmp(k->str, name, k->len) == 0)
            return fields->element[i + 1]->type == REDIS_REPLY_STRING ? fields->element[i + 1]
                                                                      : NULL;
    }
    return NULL;
}

/* Turns a list of [id, [field, value, ...]] into entries. Malformed ones (never written by this
 * program) are acknowledged away, or they would be claimed again forever. Returns how many
 * were filled. */
static size_t parse_entries(rb_t *rb, const redisReply *list, clu_persist_entry_t *out,
                            char (*ids)[48]) {
    size_t n = 0;
    for (size_t i = 0; i < list->elements; i++) {
        const redisReply *e = list->element[i];
        if (e->type != REDIS_REPLY_ARRAY || e->elements != 2 ||
            e->element[0]->type != REDIS_REPLY_STRING || e->element[1]->type != REDIS_REPLY_ARRAY)
            continue;
        const redisReply *f = e->element[1];
        const redisReply *c = field(f, "c"), *ep = field(f, "e"), *o = field(f, "o"),
                         *d = field(f, "d"), *inf = field(f, "i"), *pl = field(f, "p");
        if (!c || !ep || !o || !d || e->element[0]->len >= sizeof ids[0]) {
            if (e->element[0]->len < sizeof ids[0]) {
                char id[48];
                memcpy(id, e->element[0]->str, e->element[0]->len);
                id[e->element[0]->len] = '\0';
                const char *one[1] = {id};
                CORE_LOGW(MOD, "persist stream entry malformed, dropped", "id=%s", id);
                clu__rb_persist_ack(&rb->base, one, 1);
            }
            continue;
        }
        memcpy(ids[n], e->element[0]->str, e->element[0]->len);
        ids[n][e->element[0]->len] = '\0';
        out[n] = (clu_persist_entry_t){.id = ids[n],
                                       .channel = c->str,
                                       .epoch = ep->str,
                                       .offset = strtoull(o->str, NULL, 10),
                                       .data = d->str,
                                       .data_len = d->len,
                                       .info = inf ? inf->str : NULL,
                                       .info_len = inf ? inf->len : 0,
                                       .plan = pl && pl->len ? pl->str : NULL,
                                       .time_ms = strtoll(ids[n], NULL, 10)};
        n++;
    }
    return n;
}

static void on_read(redisAsyncContext *ac, void *reply, void *priv) {
    (void)ac;
    pread_t *op = priv;
    redisReply *r = reply;
    clu__rb_cmd_answered(op->rb);
    const redisReply *list = NULL;
    int status = 0;
    if (!r) {
        status = CORE_EAGAIN;
    } else if (r->type == REDIS_REPLY_ERROR) {
        /* NOGROUP: the stream was flushed away with its group; make them again. */
        if (r->str && strncmp(r->str, "NOGROUP", 7) == 0)
            clu__rb_persist_connected(op->rb);
        else
            CORE_LOGW(MOD, "persist read failed", "reply=\"%.120s\"", r->str ? r->str : "");
        status = CORE_EAGAIN;
    } else if (r->type == REDIS_REPLY_ARRAY && r->elements >= 2 &&
               r->element[0]->type == REDIS_REPLY_STRING &&
               r->element[1]->type == REDIS_REPLY_ARRAY) {
        /* XAUTOCLAIM: [next cursor, entries, (deleted ids)] */
        list = r->element[1];
    } else if (r->type == REDIS_REPLY_ARRAY && r->elements == 1 &&
               r->element[0]->type == REDIS_REPLY_ARRAY && r->element[0]->elements == 2 &&
               r->element[0]->element[1]->type == REDIS_REPLY_ARRAY) {
        /* XREADGROUP: [[stream, entries]] */
        list = r->element[0]->element[1];
    }
    if (status != 0 || !list || list->elements == 0) {
        op->cb(status, NULL, 0, op->ud);
        free(op);
        return;
    }
    clu_persist_entry_t *entries = core_calloc(list->elements, sizeof *entries);
    char(*ids)[48] = core_calloc(list->elements, sizeof *ids);
    size_t n = parse_entries(op->rb, list, entries, ids);
    op->cb(0, entries, n, op->ud);
    free(entries);
    free(ids);
    free(op);
}

int clu__rb_persist_read(clu_broker_t *b, const char *consumer, uint32_t count,
                         uint32_t claim_idle_ms, clu_persist_cb cb, void *ud) {
    rb_t *rb = (rb_t *)b;
    if (rb->closing || !rb->persist_cap)
        return CORE_EINVAL;
    if (!rb->cmd.connected)
        return CORE_EAGAIN;
    pread_t *op = core_calloc(1, sizeof *op);
    op->rb = rb;
    op->cb = cb;
    op->ud = ud;
    char cnt[16], idle[16];
    snprintf(cnt, sizeof cnt, "%" PRIu32, count);
    snprintf(idle, sizeof idle, "%" PRIu32, claim_idle_ms);
    int rc;
    if (claim_idle_ms)
        rc = redisAsyncCommand(rb->cmd.ac, on_read, op,
                               "XAUTOCLAIM " CLU_PERSIST_KEY " " CLU_PERSIST_GROUP " %s %s 0-0 "
                               "COUNT %s",
                               consumer, idle, cnt);
    else
        rc = redisAsyncCommand(rb->cmd.ac, on_read, op,
                               "XREADGROUP GROUP " CLU_PERSIST_GROUP
                               " %s COUNT %s STREAMS " CLU_PERSIST_KEY " >",
                               consumer, cnt);
    if (rc != REDIS_OK) {
        free(op);
        return CORE_EAGAIN;
    }
    clu__rb_cmd_sent(rb);
    return 0;
}

int clu__rb_persist_ack(clu_broker_t *b, const char *const *ids, size_t n) {
    rb_t *rb = (rb_t *)b;
    if (!rb->cmd.connected || n == 0)
        return rb->cmd.connected ? 0 : CORE_EAGAIN;
    /* XACK and XDEL go out back to back on one connection: an entry acknowledged but not
     * deleted (the connection lost between them) only overstates the backlog until it
     * is trimmed by a later XDEL of a claimed copy, never loses a row. */
    const char **argv = core_calloc(n + 3, sizeof *argv);
    size_t *lens = core_calloc(n + 3, sizeof *lens);
    argv[0] = "XACK";
    argv[1] = CLU_PERSIST_KEY;
    argv[2] = CLU_PERSIST_GROUP;
    for (size_t i = 0; i < n; i++)
        argv[3 + i] = ids[i];
    for (size_t i = 0; i < n + 3; i++)
        lens[i] = strlen(argv[i]);
    int rc = redisAsyncCommandArgv(rb->cmd.ac, NULL, NULL, (int)(n + 3), argv, lens);
    argv[0] = "XDEL";
    for (size_t i = 0; i < n; i++) {
        argv[2 + i] = ids[i];
        lens[2 + i] = strlen(ids[i]);
    }
    lens[0] = 4;
    if (rc == REDIS_OK)
        rc = redisAsyncCommandArgv(rb->cmd.ac, NULL, NULL, (int)(n + 2), argv, lens);
    free(argv);
    free(lens);
    return rc == REDIS_OK ? 0 : CORE_EAGAIN;
}

static void info_done(call_t *c, redisReply *r, int status) {
    clu_persist_info_cb cb = (clu_persist_info_cb)c->cb;
    uint64_t len = 0;
    int64_t age = 0;
    if (status == 0 && r && r->type == REDIS_REPLY_ARRAY && r->elements == 3 &&
        r->element[0]->type == REDIS_REPLY_INTEGER && r->element[1]->type == REDIS_REPLY_STRING &&
        r->element[2]->type == REDIS_REPLY_INTEGER) {
        len = (uint64_t)r->element[0]->integer;
        if (r->element[1]->len)
            age = r->element[2]->integer - strtoll(r->element[1]->str, NULL, 10);
        if (age < 0)
            age = 0;
    } else if (status == 0) {
        status = CORE_EPROTO;
    }
    cb(status, len, age, c->ud);
}

int clu__rb_persist_info(clu_broker_t *b, clu_persist_info_cb cb, void *ud) {
    rb_t *rb = (rb_t *)b;
    if (rb->closing)
        return CORE_EINVAL;
    call_t *c = clu__rb_call_new(rb, SCRIPT_PERSIST_INFO, info_done, (void *)cb, ud);
    clu__rb_call_args(c, "1");
    clu__rb_call_args(c, CLU_PERSIST_KEY);
    clu__rb_call_start(c);
    return 0;
}
