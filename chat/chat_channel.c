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

chat_out_t *chat__out_new(const char *channel, const clu_pub_t *pub) {
    size_t cl = strlen(channel) + 1;
    chat_out_t *o = core_malloc(sizeof *o + cl + pub->data_len + pub->info_len + 2);
    char *p = (char *)(o + 1);
    *o = (chat_out_t){.refs = 1, .born_us = core_now_us(), .pub = *pub};
    memcpy(p, channel, cl);
    o->channel = p;
    p += cl;
    memcpy(p, pub->data, pub->data_len);
    p[pub->data_len] = '\0';
    o->pub.data = p;
    p += pub->data_len + 1;
    if (pub->info) {
        memcpy(p, pub->info, pub->info_len);
        p[pub->info_len] = '\0';
        o->pub.info = p;
    }
    return o;
}

chat_out_t *chat__out_ref(chat_out_t *o) {
    o->refs++;
    return o;
}

void chat__out_unref(chat_out_t *o) {
    if (!o || --o->refs > 0)
        return;
    for (int i = 0; i < CHAT_CODEC_COUNT; i++)
        if (o->enc[i])
            core_buf_unref(o->enc[i]);
    free(o);
}

core_buf_t *chat__out_buf(chat_out_t *o, const chat_codec_t *codec) {
    core_buf_t **b = &o->enc[codec->index];
    if (!*b) {
        core_str_t s = {0};
        codec->push(&s,
                    &(chat_push_t){.channel = o->channel, .kind = CHAT_PUSH_PUB, .pub = &o->pub});
        *b = core_buf_from(0, s.ptr, s.len);
        (*b)->born_us = o->born_us;
        core_str_free(&s);
    }
    return *b;
}

void chat__channel_fanout(chat_node_t *n, chat_channel_t *ch, chat_out_t *o, uint64_t offset) {
    uint64_t out = 0;
    for (uint32_t i = 0; i < ch->n; i++) {
        chat_sub_t *sub = ch->subs[i];
        if (sub->c->state == CL_CLOSING)
            continue;
        if (sub->state == SUB_ACTIVE) {
            if (offset && offset <= sub->floor)
                continue; /* in its subscribe answer already */
            sub->c->t->send(sub->c->tctx, chat__out_buf(o, sub->c->codec));
            out++;
        } else if (sub->npending < 4096) {
            if (sub->npending == sub->cap_pending) {
                sub->cap_pending = sub->cap_pending ? sub->cap_pending * 2 : 8;
                sub->pending = core_realloc(sub->pending, sub->cap_pending * sizeof *sub->pending);
            }
            sub->pending[sub->npending++] = (chat_pending_pub_t){chat__out_ref(o), offset};
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
        chat__out_unref(ch->held[i].out);
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
            chat__channel_fanout(n, ch, ch->held[i].out, ch->held[i].offset);
        }
        chat__out_unref(ch->held[i].out);
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
                chat_out_t *o = chat__out_new(ch->name, &pubs[i]);
                ch->last++;
                chat__channel_fanout(n, ch, o, pubs[i].offset);
                chat__out_unref(o);
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

static void channel_hold(chat_channel_t *ch, chat_out_t *o, uint64_t offset) {
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
    ch->held[i] = (chat_pending_pub_t){chat__out_ref(o), offset};
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
        chat_out_t *o = chat__out_new(channel, pub);
        chat__channel_fanout(n, ch, o, 0);
        chat__out_unref(o);
        return;
    }
    if (!ch->positioned) {
        /* Held until the first subscribe answer says where this node's feed starts. Past the
         * bound the rest is read from history then. */
        if (ch->nheld < n->cfg.max_recover) {
            chat_out_t *o = chat__out_new(channel, pub);
            channel_hold(ch, o, pub->offset);
            chat__out_unref(o);
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
    chat_out_t *o = chat__out_new(channel, pub);
    if (ch->filling || pub->offset > ch->last + 1) {
        if (ch->nheld >= n->cfg.max_recover) {
            channel_state_lost(n, ch);
            ch->last = pub->offset;
        } else {
            channel_hold(ch, o, pub->offset);
            chat__channel_fill(n, ch);
        }
    } else {
        ch->last = pub->offset;
        chat__channel_fanout(n, ch, o, pub->offset);
    }
    chat__out_unref(o);
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
    /* Like publications, serialised once per wire format its members speak. */
    core_buf_t *b[CHAT_CODEC_COUNT] = {0};
    for (uint32_t i = 0; i < ch->n; i++) {
        chat_sub_t *sub = ch->subs[i];
        if (!sub->join_leave || sub->state != SUB_ACTIVE || sub->c->state != CL_CONNECTED)
            continue;
        const chat_codec_t *codec = sub->c->codec;
        if (!b[codec->index]) {
            core_str_t s = {0};
            codec->push(&s,
                        &(chat_push_t){.channel = channel, .kind = kind, .member = {info, len}});
            b[codec->index] = core_buf_from(0, s.ptr, s.len);
            core_str_free(&s);
        }
        sub->c->t->send(sub->c->tctx, b[codec->index]);
    }
    for (int i = 0; i < CHAT_CODEC_COUNT; i++)
        if (b[i])
            core_buf_unref(b[i]);
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
