/* chat: channels with local subscribers: membership, the ordered feed (held publications, gap fills
 * from history) and the broker events. */
#include "chat/chat_int.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MOD "chat"

/* ---- channels and subscriptions ---- */

chat_channel_t *chat__channel_get(chat_node_t *n, const char *name, const chat_ns_t *ns) {
    chat_channel_t *ch = core_map_get(n->channels, name);
    if (!ch) {
        ch = core_calloc(1, sizeof *ch);
        ch->name = core_strdup(name);
        ch->ns = ns;
        core_map_put(n->channels, ch->name, ch);
        n->st.channels++;
        clu_subscribe(n->broker, name);
    }
    return ch;
}

void chat__channel_add(chat_channel_t *ch, chat_sub_t *s) {
    if (ch->n == ch->cap) {
        ch->cap = ch->cap ? ch->cap * 2 : 4;
        ch->subs = core_realloc(ch->subs, ch->cap * sizeof *ch->subs);
    }
    s->idx = ch->n;
    ch->subs[ch->n++] = s;
    s->ch = ch;
}

void chat__channel_remove(chat_node_t *n, chat_sub_t *s) {
    chat_channel_t *ch = s->ch;
    chat_sub_t *last = ch->subs[--ch->n];
    ch->subs[s->idx] = last;
    last->idx = s->idx;
    if (ch->n == 0) {
        clu_unsubscribe(n->broker, ch->name);
        core_map_del(n->channels, ch->name);
        n->st.channels--;
        if (ch->stalled)
            n->stalled--;
        chat__channel_drop_held(ch);
        free(ch->subs);
        free(ch->name);
        free(ch);
    }
}

clu_chan_opts_t chat__chan_opts(const chat_node_t *n, const chat_ns_t *ns) {
    return (clu_chan_opts_t){ns->history_size, ns->history_ttl_s, n->cfg.presence_ttl_s,
                             ns->join_leave};
}

/* ---- broker events ---- */

/* The push for a publication, serialised once: every subscriber's queue references the same
 * bytes. */
core_buf_t *chat__pub_push(const char *channel, const clu_pub_t *pub) {
    /* Every client speaks the JSON codec today, so one buffer serves every subscriber. With
     * several codecs in use, fan-out builds one buffer per codec. */
    core_str_t s = {0};
    chat__codec_json.push(&s,
                          &(chat_push_t){.channel = channel, .kind = CHAT_PUSH_PUB, .pub = pub});
    core_buf_t *b = core_buf_from(0, s.ptr, s.len);
    core_str_free(&s);
    return b;
}

void chat__channel_fanout(chat_node_t *n, chat_channel_t *ch, core_buf_t *b, uint64_t offset) {
    uint64_t out = 0;
    for (uint32_t i = 0; i < ch->n; i++) {
        chat_sub_t *sub = ch->subs[i];
        if (sub->c->state == CL_CLOSING)
            continue;
        if (sub->state == SUB_ACTIVE) {
            if (offset && offset <= sub->floor)
                continue; /* in its subscribe answer already */
            sub->c->t->send(sub->c->tctx, b);
            out++;
        } else if (sub->npending < 4096) {
            if (sub->npending == sub->cap_pending) {
                sub->cap_pending = sub->cap_pending ? sub->cap_pending * 2 : 8;
                sub->pending = core_realloc(sub->pending, sub->cap_pending * sizeof *sub->pending);
            }
            sub->pending[sub->npending++] = (chat_pending_pub_t){core_buf_ref(b), offset};
        } else {
            /* Too much arrived before the subscribe could finish: the client resynchronises. */
            chat__client_close(sub->c, CORE_DISCONNECT_INSUFFICIENT_STATE);
        }
    }
    n->st.publications_out += out;
}

size_t chat_node_room_backlog(const chat_node_t *n, const char *channel) {
    const chat_channel_t *ch = core_map_get(n->channels, channel);
    size_t most = 0;
    for (uint32_t i = 0; ch && i < ch->n; i++) {
        const chat_client_t *c = ch->subs[i]->c;
        size_t q = c->t->queued ? c->t->queued(c->tctx) : 0;
        if (q > most)
            most = q;
    }
    return most;
}

void chat__channel_drop_held(chat_channel_t *ch) {
    for (uint32_t i = 0; i < ch->nheld; i++)
        core_buf_unref(ch->held[i].buf);
    free(ch->held);
    ch->held = NULL;
    ch->nheld = ch->cap_held = 0;
}

/* The channel's history is gone or its gap cannot be filled: every local subscriber reconnects
 * and recovers what it can (recovered:false tells it to reload). */
static void channel_state_lost(chat_node_t *n, chat_channel_t *ch) {
    n->st.state_lost++;
    chat__channel_drop_held(ch);
    ch->filling = false;
    ch->resync_wanted = false;
    if (ch->stalled) {
        ch->stalled = false;
        n->stalled--;
    }
    for (uint32_t i = 0; i < ch->n; i++)
        chat__client_close(ch->subs[i]->c, CORE_DISCONNECT_INSUFFICIENT_STATE);
}

/* Delivers held publications that continue the sequence. */
static void channel_deliver_held(chat_node_t *n, chat_channel_t *ch) {
    uint32_t i = 0;
    while (i < ch->nheld && ch->held[i].offset <= ch->last + 1) {
        if (ch->held[i].offset == ch->last + 1) {
            ch->last++;
            chat__channel_fanout(n, ch, ch->held[i].buf, ch->held[i].offset);
        }
        core_buf_unref(ch->held[i].buf);
        i++;
    }
    if (i > 0 && i < ch->nheld)
        memmove(ch->held, ch->held + i, (ch->nheld - i) * sizeof *ch->held);
    ch->nheld -= i;
}

/* The same, then a fill when a gap remains. */
void chat__channel_release_held(chat_node_t *n, chat_channel_t *ch) {
    channel_deliver_held(n, ch);
    if (ch->nheld > 0)
        chat__channel_fill(n, ch);
}

static void channel_set_stalled(chat_node_t *n, chat_channel_t *ch, bool stalled) {
    if (ch->stalled == stalled)
        return;
    ch->stalled = stalled;
    if (stalled)
        n->stalled++;
    else
        n->stalled--;
}

typedef struct {
    chat_node_t *node;
    char *channel;
} fillop_t;

static void fill_done(int status, const clu_pub_t *pubs, size_t np, uint64_t top, const char *epoch,
                      void *ud) {
    fillop_t *op = ud;
    chat_node_t *n = op->node;
    chat_channel_t *ch = core_map_get(n->channels, op->channel);
    if (ch && ch->filling) {
        ch->filling = false;
        if (status != 0 && status != CORE_EUNRECOVERABLE) {
            /* The broker could not answer (Redis away, not lost): the position stands. The
             * fill runs again when the broker resyncs the channel or a publication shows the
             * gap again. */
            CORE_LOGD(MOD, "gap fill deferred", "channel=%s last=%" PRIu64 " err=%s", ch->name,
                      ch->last, core_strerror(status));
            channel_deliver_held(n, ch);
            channel_set_stalled(n, ch, true);
            free(op->channel);
            free(op);
            return;
        }
        channel_set_stalled(n, ch, false);
        bool contiguous = status == 0 && strcmp(epoch, ch->epoch) == 0 &&
                          (np == 0 || pubs[0].offset == ch->last + 1);
        if (!contiguous) {
            CORE_LOGW(MOD, "gap not recoverable", "channel=%s last=%" PRIu64 " top=%" PRIu64,
                      ch->name, ch->last, top);
            channel_state_lost(n, ch);
            ch->last = top;
            snprintf(ch->epoch, sizeof ch->epoch, "%s", epoch);
        } else {
            for (size_t i = 0; i < np; i++) {
                if (pubs[i].offset != ch->last + 1)
                    break;
                core_buf_t *b = chat__pub_push(ch->name, &pubs[i]);
                ch->last++;
                chat__channel_fanout(n, ch, b, pubs[i].offset);
                core_buf_unref(b);
            }
            chat__channel_release_held(n, ch);
        }
        if (ch->resync_wanted && !ch->filling) {
            /* Asked for while this fill was in flight, which may have read history before
             * the feed was back. */
            ch->resync_wanted = false;
            chat__channel_fill(n, ch);
        }
    }
    free(op->channel);
    free(op);
}

/* Reads what follows `last` from history, so that the channel's subscribers see every
 * publication, in order, even when the feed from the broker skipped some. */
void chat__channel_fill(chat_node_t *n, chat_channel_t *ch) {
    if (!ch->positioned || ch->filling) {
        ch->resync_wanted = true;
        return;
    }
    ch->filling = true;
    fillop_t *op = core_calloc(1, sizeof *op);
    op->node = n;
    op->channel = core_strdup(ch->name);
    clu_history_req_t req = {.has_since = true,
                             .since_offset = ch->last,
                             .since_epoch = ch->epoch,
                             .limit = (int32_t)n->cfg.max_recover};
    clu_chan_opts_t o = chat__chan_opts(n, ch->ns);
    int rc = clu_history(n->broker, ch->name, &o, &req, fill_done, op);
    if (rc != 0)
        fill_done(rc, NULL, 0, ch->last, ch->epoch, op);
}

static void channel_hold(chat_channel_t *ch, core_buf_t *b, uint64_t offset) {
    if (ch->nheld == ch->cap_held) {
        ch->cap_held = ch->cap_held ? ch->cap_held * 2 : 16;
        ch->held = core_realloc(ch->held, ch->cap_held * sizeof *ch->held);
    }
    /* Kept sorted by offset: the feed is ordered, but fills interleave with it. */
    uint32_t i = ch->nheld;
    while (i > 0 && ch->held[i - 1].offset > offset)
        i--;
    if (i > 0 && ch->held[i - 1].offset == offset)
        return; /* already held */
    memmove(ch->held + i + 1, ch->held + i, (ch->nheld - i) * sizeof *ch->held);
    ch->held[i] = (chat_pending_pub_t){core_buf_ref(b), offset};
    ch->nheld++;
}

static void on_pub(void *ud, const char *channel, const clu_pub_t *pub, const char *epoch) {
    chat_node_t *n = ud;
    chat_channel_t *ch = core_map_get(n->channels, channel);
    if (!ch) {
        if (channel[0] == CHAT_CONTROL_CHANNEL[0] && strcmp(channel, CHAT_CONTROL_CHANNEL) == 0)
            chat__control_apply(n, pub);
        return;
    }
    if (pub->offset == 0) {
        core_buf_t *b = chat__pub_push(channel, pub);
        chat__channel_fanout(n, ch, b, 0);
        core_buf_unref(b);
        return;
    }
    if (!ch->positioned) {
        /* Held until the first subscribe answer says where this node's feed starts. Past the
         * bound the rest is read from history then. */
        if (ch->nheld < n->cfg.max_recover) {
            core_buf_t *b = chat__pub_push(channel, pub);
            channel_hold(ch, b, pub->offset);
            core_buf_unref(b);
        } else {
            ch->resync_wanted = true; /* what did not fit is read from history then */
        }
        return;
    }
    if (strcmp(ch->epoch, epoch) != 0) {
        /* The channel's history was lost (Redis restarted empty, the stream expired): offsets
         * start over in the new epoch and nothing before can be recovered. */
        channel_state_lost(n, ch);
        ch->last = 0;
        snprintf(ch->epoch, sizeof ch->epoch, "%s", epoch);
    }
    if (pub->offset <= ch->last)
        return; /* delivered already (a fill got it first) */
    core_buf_t *b = chat__pub_push(channel, pub);
    if (ch->filling || pub->offset > ch->last + 1) {
        if (ch->nheld >= n->cfg.max_recover) {
            channel_state_lost(n, ch);
            ch->last = pub->offset;
        } else {
            channel_hold(ch, b, pub->offset);
            chat__channel_fill(n, ch);
        }
    } else {
        ch->last = pub->offset;
        chat__channel_fanout(n, ch, b, pub->offset);
    }
    core_buf_unref(b);
}

static void on_resync(void *ud, const char *channel) {
    chat_node_t *n = ud;
    chat_channel_t *ch = core_map_get(n->channels, channel);
    if (ch)
        chat__channel_fill(n, ch);
}

static void on_join_leave(chat_node_t *n, const char *channel, const char *info, size_t len,
                          chat_push_kind_t kind) {
    chat_channel_t *ch = core_map_get(n->channels, channel);
    if (!ch)
        return;
    /* Like publications, serialised once for every member (all speak the JSON codec today). */
    core_str_t s = {0};
    chat__codec_json.push(&s,
                          &(chat_push_t){.channel = channel, .kind = kind, .member = {info, len}});
    core_buf_t *b = core_buf_from(0, s.ptr, s.len);
    core_str_free(&s);
    for (uint32_t i = 0; i < ch->n; i++) {
        chat_sub_t *sub = ch->subs[i];
        if (sub->join_leave && sub->state == SUB_ACTIVE && sub->c->state == CL_CONNECTED)
            sub->c->t->send(sub->c->tctx, b);
    }
    core_buf_unref(b);
}

static void on_join(void *ud, const char *channel, const char *info, size_t len) {
    on_join_leave(ud, channel, info, len, CHAT_PUSH_JOIN);
}

static void on_leave(void *ud, const char *channel, const char *info, size_t len) {
    on_join_leave(ud, channel, info, len, CHAT_PUSH_LEAVE);
}

static const clu_events_t broker_events = {on_pub, on_join, on_leave, on_resync};

const clu_events_t *chat_node_broker_events(void) {
    return &broker_events;
}
