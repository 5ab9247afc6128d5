/* admin: the node registry. Every node announces itself through the broker every third of its
 * TTL and gets the list of live nodes back in the same call; /api/info serves the last list. A
 * node that stops announcing (killed, cut off) drops out of everyone's list within the TTL. */
#include <stdlib.h>
#include <string.h>

#include "admin/admin.h"

#define MOD "admin"
/* After a failed announcement (store unreachable, node just started) the next one comes this
 * soon, so that a node is listed again shortly after Redis is back rather than a third of a TTL
 * later. */
#define RETRY_MS 250

typedef struct {
    char *id;
    char *info; /* JSON object */
} reg_node_t;

struct adm_registry {
    uv_timer_t timer;
    clu_broker_t *broker;
    char *node_id;
    uint32_t ttl_ms;
    uint64_t every_ms;
    adm_self_fn self;
    void *self_ud;
    reg_node_t *nodes; /* the last answer */
    size_t n;
    bool inflight;
    bool beat_again; /* asked to announce while an announcement was in flight */
    bool closing;
    bool timer_closed;
    bool left; /* the leave announcement was answered (or failed) */
    void (*close_done)(void *);
    void *close_ud;
    void (*on_nodes)(void *ud, size_t nodes);
    void *on_nodes_ud;
};

static void reg_clear(adm_registry_t *r) {
    for (size_t i = 0; i < r->n; i++) {
        free(r->nodes[i].id);
        free(r->nodes[i].info);
    }
    free(r->nodes);
    r->nodes = NULL;
    r->n = 0;
}

static void reg_free(adm_registry_t *r) {
    reg_clear(r);
    free(r->node_id);
    free(r);
}

static void on_tick(uv_timer_t *t);

static void maybe_free(adm_registry_t *r) {
    if (r->timer_closed && r->left)
        reg_free(r);
}

static void on_left(int status, const clu_node_t *nodes, size_t n, void *ud) {
    (void)status, (void)nodes, (void)n;
    adm_registry_t *r = ud;
    void (*done)(void *) = r->close_done;
    void *done_ud = r->close_ud;
    r->inflight = false;
    r->left = true;
    maybe_free(r);
    if (done)
        done(done_ud);
}

/* A node that stops on purpose leaves the registry at once rather than after its TTL. A
 * failure (Redis away) leaves that to the TTL. */
static void send_leave(adm_registry_t *r) {
    r->inflight = true;
    int rc = clu_heartbeat(r->broker, r->node_id, "", 0, 0, on_left, r);
    if (rc != 0)
        on_left(rc, NULL, 0, r);
}

static void on_nodes(int status, const clu_node_t *nodes, size_t n, void *ud) {
    adm_registry_t *r = ud;
    r->inflight = false;
    if (r->closing) {
        send_leave(r); /* the announcement that was in flight is answered: now the leave */
        return;
    }
    if (status != 0) {
        /* Keep the last list: during a Redis outage it is the best knowledge there is, and
         * /api/info says how old it is through each node's own "updated_ms". */
        uv_timer_start(&r->timer, on_tick, RETRY_MS, r->every_ms);
        return;
    }
    reg_clear(r);
    r->nodes = core_calloc(n ? n : 1, sizeof *r->nodes);
    if (r->beat_again) {
        r->beat_again = false;
        uv_timer_start(&r->timer, on_tick, 0, r->every_ms);
    }
    for (size_t i = 0; i < n; i++) {
        r->nodes[i].id = core_strdup(nodes[i].id);
        r->nodes[i].info = core_strndup(nodes[i].info, nodes[i].info_len);
    }
    r->n = n;
    if (r->on_nodes)
        r->on_nodes(r->on_nodes_ud, n);
}

void adm_registry_on_nodes(adm_registry_t *r, void (*fn)(void *ud, size_t nodes), void *ud) {
    r->on_nodes = fn;
    r->on_nodes_ud = ud;
}

void adm_registry_beat(adm_registry_t *r) {
    if (r->closing)
        return;
    if (r->inflight) {
        r->beat_again = true; /* one at a time: the next goes when this one is answered */
        return;
    }
    core_str_t info = {0};
    r->self(r->self_ud, &info);
    r->inflight = true;
    int rc = clu_heartbeat(r->broker, r->node_id, info.ptr, info.len, r->ttl_ms, on_nodes, r);
    core_str_free(&info);
    if (rc != 0)
        on_nodes(rc, NULL, 0, r);
}

static void on_tick(uv_timer_t *t) {
    adm_registry_beat(t->data);
}

adm_registry_t *adm_registry_new(uv_loop_t *loop, clu_broker_t *b, const char *node_id,
                                 uint32_t ttl_ms, adm_self_fn self, void *ud) {
    adm_registry_t *r = core_calloc(1, sizeof *r);
    r->broker = b;
    r->node_id = core_strdup(node_id);
    r->ttl_ms = ttl_ms;
    r->self = self;
    r->self_ud = ud;
    uv_timer_init(loop, &r->timer);
    r->timer.data = r;
    r->every_ms = ttl_ms / 3 ? ttl_ms / 3 : 1;
    uv_timer_start(&r->timer, on_tick, 0, r->every_ms);
    return r;
}

size_t adm_registry_size(const adm_registry_t *r) {
    return r->n;
}

void adm_registry_render_info(const adm_registry_t *r, core_str_t *out) {
    core_str_appends(out, "{\"result\":{\"nodes\":[");
    bool self_listed = false;
    size_t k = 0;
    for (size_t i = 0; i < r->n; i++) {
        bool self = strcmp(r->nodes[i].id, r->node_id) == 0;
        if (k++)
            core_str_appends(out, ",");
        if (self) {
            /* This node answers with its state of now, not of its last announcement. */
            r->self(r->self_ud, out);
            self_listed = true;
        } else {
            core_str_appends(out, r->nodes[i].info);
        }
    }
    if (!self_listed) {
        /* Not announced yet (starting, or the store unreachable): still a member. */
        if (k)
            core_str_appends(out, ",");
        r->self(r->self_ud, out);
    }
    core_str_appends(out, "]}}");
}

static void on_timer_closed(uv_handle_t *h) {
    adm_registry_t *r = h->data;
    r->timer_closed = true;
    maybe_free(r);
}

void adm_registry_close(adm_registry_t *r, void (*done)(void *), void *ud) {
    if (r->closing)
        return;
    r->closing = true;
    r->close_done = done;
    r->close_ud = ud;
    uv_close((uv_handle_t *)&r->timer, on_timer_closed);
    if (!r->inflight)
        send_leave(r);
}
