/* chat: the Protobuf codec (Centrifugo protocol v2, Protobuf; chat/proto/client.proto), what
 * centrifuge-java, centrifuge-swift, centrifuge-dart and centrifuge-js's build/protobuf speak
 * on a WebSocket opened with ?cf_protocol=protobuf: binary frames of messages each preceded by
 * its length as a varint, Commands in, Replies out (asynchronous messages as a Reply holding a
 * Push). Decoding and encoding are protobuf-c's; this file maps its messages to chat's typed
 * requests and results.
 *
 * Publication data, RPC data and the info of a ClientInfo are bytes here: they carry the same
 * JSON text a JSON client sends and gets, so JSON and Protobuf clients of one room read each
 * other's messages. */
#include "chat/chat_int.h"

#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "client.pb-c.h"

/* ---- varint framing ---- */

/* Reads a varint of at most 10 bytes at p[0..len). Returns its length, 0 when it is truncated
 * or longer than a 64-bit value allows. */
static size_t varint_read(const unsigned char *p, size_t len, uint64_t *out) {
    uint64_t v = 0;
    for (size_t i = 0; i < len && i < 10; i++) {
        v |= (uint64_t)(p[i] & 0x7f) << (7 * i);
        if (!(p[i] & 0x80)) {
            if (i == 9 && p[i] > 1)
                return 0; /* more than 64 bits */
            *out = v;
            return i + 1;
        }
    }
    return 0;
}

static void varint_append(core_str_t *s, uint64_t v) {
    unsigned char b[10];
    size_t n = 0;
    do {
        b[n] = (unsigned char)(v & 0x7f);
        v >>= 7;
        if (v)
            b[n] |= 0x80;
        n++;
    } while (v);
    core_str_append(s, (const char *)b, n);
}

/* Appends reply, length first. */
static void append_reply(core_str_t *s, const Pb__Reply *reply) {
    size_t n = pb__reply__get_packed_size(reply);
    varint_append(s, n);
    core_str_reserve(s, s->len + n + 1);
    pb__reply__pack(reply, (uint8_t *)s->ptr + s->len);
    s->len += n;
    s->ptr[s->len] = '\0';
}

/* ---- typed requests ---- */

/* Whether s is valid UTF-8 without overlongs, surrogates or code points past U+10FFFF: what
 * jansson checks for the JSON codec, so both codecs refuse the same names and tokens. */
static bool utf8_valid(const char *s) {
    const unsigned char *p = (const unsigned char *)s;
    while (*p) {
        unsigned c = *p;
        size_t n;
        uint32_t cp;
        if (c < 0x80) {
            p++;
            continue;
        } else if ((c & 0xe0) == 0xc0) {
            n = 1, cp = c & 0x1f;
        } else if ((c & 0xf0) == 0xe0) {
            n = 2, cp = c & 0x0f;
        } else if ((c & 0xf8) == 0xf0) {
            n = 3, cp = c & 0x07;
        } else {
            return false;
        }
        for (size_t i = 1; i <= n; i++) {
            if ((p[i] & 0xc0) != 0x80)
                return false;
            cp = (cp << 6) | (p[i] & 0x3f);
        }
        if ((n == 1 && cp < 0x80) || (n == 2 && cp < 0x800) || (n == 3 && cp < 0x10000) ||
            cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
            return false;
        p += n + 1;
    }
    return true;
}

/* What the codec keeps for a decoded request: protobuf-c's message (the request's strings
 * point into it) and the recovery array of a connect. */
typedef struct {
    Pb__Command *cmd;
    chat_recover_req_t *subs;
    bool bad_utf8; /* set by str(): a string field that is not UTF-8 */
} pb_priv_t;

/* A string field as the JSON codec gives it: NULL when empty (proto3 cannot tell absent from
 * empty), and flagged when it is not UTF-8. */
static const char *str(pb_priv_t *pv, const char *s) {
    if (!s || !*s)
        return NULL;
    if (!utf8_valid(s))
        pv->bad_utf8 = true;
    return s;
}

static const char *bytes(const ProtobufCBinaryData *b, size_t *len) {
    *len = b->len;
    return b->len ? (const char *)b->data : NULL;
}

/* The request the command carries; more than one is a malformed command, as in JSON. */
static int method_of(const Pb__Command *c, chat_method_t *m) {
    const struct {
        const void *req;
        chat_method_t m;
    } all[] = {
        {c->connect, CHAT_M_CONNECT},
        {c->subscribe, CHAT_M_SUBSCRIBE},
        {c->unsubscribe, CHAT_M_UNSUBSCRIBE},
        {c->publish, CHAT_M_PUBLISH},
        {c->presence, CHAT_M_PRESENCE},
        {c->presence_stats, CHAT_M_PRESENCE_STATS},
        {c->history, CHAT_M_HISTORY},
        {c->send, CHAT_M_SEND},
        {c->rpc, CHAT_M_RPC},
        {c->refresh, CHAT_M_REFRESH},
        {c->sub_refresh, CHAT_M_SUB_REFRESH},
    };
    int found = 0;
    *m = CHAT_M_PING;
    for (size_t i = 0; i < sizeof all / sizeof *all; i++) {
        if (!all[i].req)
            continue;
        if (found++)
            return CORE_EPROTO;
        *m = all[i].m;
    }
    /* A ping request with an id is a method this server does not have; a command with an id
     * and no request at all too. */
    if (*m == CHAT_M_PING && c->id != 0)
        *m = CHAT_M_UNKNOWN;
    if (c->id == 0 && *m != CHAT_M_PING && *m != CHAT_M_SEND)
        return CORE_EPROTO;
    return 0;
}

static void pb_to_req(pb_priv_t *pv, chat_req_t *req) {
    const Pb__Command *c = pv->cmd;
    switch (req->method) {
    case CHAT_M_CONNECT: {
        const Pb__ConnectRequest *r = c->connect;
        req->connect.token = str(pv, r->token);
        if (r->n_subs) {
            pv->subs = core_calloc(r->n_subs, sizeof *pv->subs);
            size_t k = 0;
            for (size_t i = 0; i < r->n_subs; i++) {
                const Pb__ConnectRequest__SubsEntry *e = r->subs[i];
                const char *ch = str(pv, e->key);
                if (!ch)
                    continue;
                const Pb__SubscribeRequest *s = e->value;
                pv->subs[k++] = (chat_recover_req_t){ch, s && s->recover, s ? s->offset : 0,
                                                     s ? str(pv, s->epoch) : NULL};
            }
            req->connect.subs = pv->subs;
            req->connect.nsubs = k;
        }
        break;
    }
    case CHAT_M_SUBSCRIBE: {
        const Pb__SubscribeRequest *r = c->subscribe;
        req->subscribe =
            (chat_subscribe_req_t){str(pv, r->channel), str(pv, r->token), r->recover,
                                   r->offset,           str(pv, r->epoch), r->join_leave};
        break;
    }
    case CHAT_M_PUBLISH:
        req->publish.channel = str(pv, c->publish->channel);
        req->publish.data = bytes(&c->publish->data, &req->publish.data_len);
        break;
    case CHAT_M_RPC:
        req->rpc.method = str(pv, c->rpc->method);
        req->rpc.data = bytes(&c->rpc->data, &req->rpc.data_len);
        break;
    case CHAT_M_HISTORY: {
        const Pb__HistoryRequest *r = c->history;
        chat_history_req_t *h = &req->history;
        h->channel = str(pv, r->channel);
        h->limit = r->limit < 0 ? -1 : r->limit;
        h->reverse = r->reverse;
        if (r->since) {
            h->has_since = true;
            h->since_offset = r->since->offset;
            h->since_epoch = r->since->epoch ? r->since->epoch : "";
            if (!utf8_valid(h->since_epoch))
                pv->bad_utf8 = true;
        }
        break;
    }
    case CHAT_M_UNSUBSCRIBE:
        req->simple.channel = str(pv, c->unsubscribe->channel);
        break;
    case CHAT_M_PRESENCE:
        req->simple.channel = str(pv, c->presence->channel);
        break;
    case CHAT_M_PRESENCE_STATS:
        req->simple.channel = str(pv, c->presence_stats->channel);
        break;
    case CHAT_M_REFRESH:
        req->simple.token = str(pv, c->refresh->token);
        break;
    case CHAT_M_SUB_REFRESH:
        req->simple.channel = str(pv, c->sub_refresh->channel);
        req->simple.token = str(pv, c->sub_refresh->token);
        break;
    default:
        break;
    }
}

static void pb_req_clear(chat_req_t *req) {
    pb_priv_t *pv = req->priv;
    if (pv) {
        pb__command__free_unpacked(pv->cmd, NULL);
        free(pv->subs);
        free(pv);
    }
    memset(req, 0, sizeof *req);
}

/* The frame's size is bounded by the transport (CHAT_MAX_FRAME_BYTES), and protobuf-c
 * allocates in proportion to the bytes it decodes: a length prefix past the frame is refused
 * before any allocation, and the schema has no recursive message to nest. */
static int pb_next(const char *frame, size_t len, size_t *pos, chat_req_t *req) {
    memset(req, 0, sizeof *req);
    if (*pos >= len)
        return 0;
    const unsigned char *p = (const unsigned char *)frame + *pos;
    size_t left = len - *pos;
    uint64_t mlen;
    size_t hl = varint_read(p, left, &mlen);
    if (hl == 0 || mlen > left - hl)
        return CORE_EPROTO;
    Pb__Command *cmd = pb__command__unpack(NULL, (size_t)mlen, p + hl);
    if (!cmd)
        return CORE_EPROTO;
    *pos += hl + (size_t)mlen;
    chat_method_t m;
    if (method_of(cmd, &m) != 0) {
        pb__command__free_unpacked(cmd, NULL);
        return CORE_EPROTO;
    }
    pb_priv_t *pv = core_calloc(1, sizeof *pv);
    pv->cmd = cmd;
    req->priv = pv;
    req->id = cmd->id;
    req->method = m;
    pb_to_req(pv, req);
    if (pv->bad_utf8) {
        pb_req_clear(req);
        return CORE_EPROTO;
    }
    return 1;
}

/* ---- encoders ---- */

/* Allocations one encoding makes (ClientInfo fields, arrays), freed once the reply is packed. */
typedef struct {
    void **p;
    size_t n, cap;
} arena_t;

static void *arena_keep(arena_t *a, void *p) {
    if (a->n == a->cap) {
        a->cap = a->cap ? a->cap * 2 : 16;
        a->p = core_realloc(a->p, a->cap * sizeof *a->p);
    }
    a->p[a->n++] = p;
    return p;
}

static void *arena_calloc(arena_t *a, size_t n, size_t size) {
    return arena_keep(a, core_calloc(n ? n : 1, size));
}

static void arena_free(arena_t *a) {
    for (size_t i = 0; i < a->n; i++)
        free(a->p[i]);
    free(a->p);
}

static char *s_(const char *z) {
    return (char *)(z ? z : "");
}

/* A ClientInfo from the record the broker keeps ({"user","client","conn_info","chan_info"},
 * chat__client_info_record): the infos as their JSON text. NULL for a missing or broken
 * record. */
static Pb__ClientInfo *client_info(arena_t *a, const char *rec, size_t len) {
    if (!rec || !len)
        return NULL;
    json_t *o = json_loadb(rec, len, 0, NULL);
    if (!json_is_object(o)) {
        json_decref(o);
        return NULL;
    }
    Pb__ClientInfo *ci = arena_calloc(a, 1, sizeof *ci);
    pb__client_info__init(ci);
    const char *user = json_string_value(json_object_get(o, "user"));
    const char *client = json_string_value(json_object_get(o, "client"));
    ci->user = arena_keep(a, core_strdup(user ? user : ""));
    ci->client = arena_keep(a, core_strdup(client ? client : ""));
    const char *keys[2] = {"conn_info", "chan_info"};
    ProtobufCBinaryData *out[2] = {&ci->conn_info, &ci->chan_info};
    for (int i = 0; i < 2; i++) {
        json_t *v = json_object_get(o, keys[i]);
        if (!v)
            continue;
        char *text = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
        if (!text)
            continue;
        arena_keep(a, text);
        *out[i] = (ProtobufCBinaryData){strlen(text), (uint8_t *)text};
    }
    json_decref(o);
    return ci;
}

static Pb__Publication *publication(arena_t *a, const clu_pub_t *p) {
    Pb__Publication *pub = arena_calloc(a, 1, sizeof *pub);
    pb__publication__init(pub);
    pub->data = (ProtobufCBinaryData){p->data_len, (uint8_t *)p->data};
    pub->offset = p->offset;
    pub->info = client_info(a, p->info, p->info_len);
    return pub;
}

static Pb__Publication **publications(arena_t *a, const clu_pub_t *pubs, size_t n) {
    Pb__Publication **out = arena_calloc(a, n, sizeof *out);
    for (size_t i = 0; i < n; i++)
        out[i] = publication(a, &pubs[i]);
    return out;
}

static uint32_t ttl_of(bool expires, int64_t ttl) {
    return !expires || ttl < 0 ? 0 : ttl > UINT32_MAX ? UINT32_MAX : (uint32_t)ttl;
}

static Pb__SubscribeResult *subscribe_result(arena_t *a, const chat_subscribe_result_t *r) {
    Pb__SubscribeResult *s = arena_calloc(a, 1, sizeof *s);
    pb__subscribe_result__init(s);
    s->recoverable = r->recoverable;
    s->positioned = r->positioned;
    if (r->positioned) {
        s->epoch = s_(r->epoch);
        s->offset = r->offset;
    }
    s->was_recovering = r->was_recovering;
    s->recovered = r->recovered;
    s->n_publications = r->npubs;
    s->publications = publications(a, r->pubs, r->npubs);
    s->expires = r->expires;
    s->ttl = ttl_of(r->expires, r->ttl);
    return s;
}

static void pb_reply(core_str_t *out, const chat_reply_t *r) {
    arena_t a = {0};
    Pb__Reply reply = PB__REPLY__INIT;
    reply.id = r->id;
    switch (r->method) {
    case CHAT_M_CONNECT: {
        const chat_connect_result_t *c = &r->connect;
        Pb__ConnectResult *cr = arena_calloc(&a, 1, sizeof *cr);
        pb__connect_result__init(cr);
        cr->client = s_(c->client);
        cr->version = s_(c->version);
        cr->expires = c->expires;
        cr->ttl = ttl_of(c->expires, c->ttl);
        cr->ping = c->ping;
        cr->pong = c->pong;
        cr->node = s_(c->node);
        cr->n_subs = c->nsubs;
        cr->subs = arena_calloc(&a, c->nsubs, sizeof *cr->subs);
        for (size_t i = 0; i < c->nsubs; i++) {
            Pb__ConnectResult__SubsEntry *e = arena_calloc(&a, 1, sizeof *e);
            pb__connect_result__subs_entry__init(e);
            e->key = s_(c->subs[i].channel);
            e->value = subscribe_result(&a, &c->subs[i].result);
            cr->subs[i] = e;
        }
        reply.connect = cr;
        break;
    }
    case CHAT_M_REFRESH: {
        Pb__RefreshResult *rr = arena_calloc(&a, 1, sizeof *rr);
        pb__refresh_result__init(rr);
        rr->client = s_(r->refresh.client);
        rr->version = s_(r->refresh.version);
        rr->expires = r->refresh.expires;
        rr->ttl = ttl_of(r->refresh.expires, r->refresh.ttl);
        reply.refresh = rr;
        break;
    }
    case CHAT_M_SUBSCRIBE:
        reply.subscribe = subscribe_result(&a, &r->subscribe);
        break;
    case CHAT_M_SUB_REFRESH: {
        Pb__SubRefreshResult *sr = arena_calloc(&a, 1, sizeof *sr);
        pb__sub_refresh_result__init(sr);
        sr->expires = r->sub_refresh.expires;
        sr->ttl = ttl_of(r->sub_refresh.expires, r->sub_refresh.ttl);
        reply.sub_refresh = sr;
        break;
    }
    case CHAT_M_PRESENCE: {
        Pb__PresenceResult *pr = arena_calloc(&a, 1, sizeof *pr);
        pb__presence_result__init(pr);
        pr->presence = arena_calloc(&a, r->presence.n, sizeof *pr->presence);
        for (size_t i = 0; i < r->presence.n; i++) {
            const clu_presence_t *m = &r->presence.clients[i];
            Pb__ClientInfo *ci = client_info(&a, m->info, m->info_len);
            if (!ci)
                continue;
            Pb__PresenceResult__PresenceEntry *e = arena_calloc(&a, 1, sizeof *e);
            pb__presence_result__presence_entry__init(e);
            e->key = s_(m->client);
            e->value = ci;
            pr->presence[pr->n_presence++] = e;
        }
        reply.presence = pr;
        break;
    }
    case CHAT_M_PRESENCE_STATS: {
        Pb__PresenceStatsResult *ps = arena_calloc(&a, 1, sizeof *ps);
        pb__presence_stats_result__init(ps);
        ps->num_clients = r->presence_stats.num_clients;
        ps->num_users = r->presence_stats.num_users;
        reply.presence_stats = ps;
        break;
    }
    case CHAT_M_HISTORY: {
        Pb__HistoryResult *h = arena_calloc(&a, 1, sizeof *h);
        pb__history_result__init(h);
        h->n_publications = r->history.npubs;
        h->publications = publications(&a, r->history.pubs, r->history.npubs);
        h->epoch = s_(r->history.epoch);
        h->offset = r->history.offset;
        reply.history = h;
        break;
    }
    case CHAT_M_RPC: {
        Pb__RPCResult *rr = arena_calloc(&a, 1, sizeof *rr);
        pb__rpcresult__init(rr);
        rr->data = (ProtobufCBinaryData){r->rpc.data_len, (uint8_t *)r->rpc.data};
        reply.rpc = rr;
        break;
    }
    case CHAT_M_PUBLISH: {
        Pb__PublishResult *pr = arena_calloc(&a, 1, sizeof *pr);
        pb__publish_result__init(pr);
        reply.publish = pr;
        break;
    }
    case CHAT_M_UNSUBSCRIBE: {
        Pb__UnsubscribeResult *ur = arena_calloc(&a, 1, sizeof *ur);
        pb__unsubscribe_result__init(ur);
        reply.unsubscribe = ur;
        break;
    }
    default:
        /* Pongs, send and unknown methods get no result: a caller bug. */
        CORE_ASSERT(!"a reply for a method without a result");
    }
    append_reply(out, &reply);
    arena_free(&a);
}

static void pb_error(core_str_t *out, uint32_t id, int code, const char *message, bool temporary) {
    Pb__Error e = PB__ERROR__INIT;
    e.code = (uint32_t)code;
    e.message = s_(message);
    e.temporary = temporary;
    Pb__Reply reply = PB__REPLY__INIT;
    reply.id = id;
    reply.error = &e;
    append_reply(out, &reply);
}

static void pb_push(core_str_t *out, const chat_push_t *p) {
    arena_t a = {0};
    Pb__Push push = PB__PUSH__INIT;
    push.channel = s_(p->channel);
    switch (p->kind) {
    case CHAT_PUSH_PUB:
        push.pub = publication(&a, p->pub);
        break;
    case CHAT_PUSH_JOIN:
    case CHAT_PUSH_LEAVE: {
        Pb__ClientInfo *ci = client_info(&a, p->member.info, p->member.info_len);
        if (p->kind == CHAT_PUSH_JOIN) {
            Pb__Join *j = arena_calloc(&a, 1, sizeof *j);
            pb__join__init(j);
            j->info = ci;
            push.join = j;
        } else {
            Pb__Leave *l = arena_calloc(&a, 1, sizeof *l);
            pb__leave__init(l);
            l->info = ci;
            push.leave = l;
        }
        break;
    }
    case CHAT_PUSH_UNSUBSCRIBE: {
        Pb__Unsubscribe *u = arena_calloc(&a, 1, sizeof *u);
        pb__unsubscribe__init(u);
        u->code = (uint32_t)p->unsub.code;
        u->reason = s_(p->unsub.reason);
        push.unsubscribe = u;
        break;
    }
    case CHAT_PUSH_SUBSCRIBE: {
        Pb__Subscribe *s = arena_calloc(&a, 1, sizeof *s);
        pb__subscribe__init(s);
        s->recoverable = p->sub->recoverable;
        s->positioned = p->sub->positioned;
        if (p->sub->positioned) {
            s->epoch = s_(p->sub->epoch);
            s->offset = p->sub->offset;
        }
        push.subscribe = s;
        break;
    }
    default:
        CORE_ASSERT(!"an unknown push kind");
    }
    Pb__Reply reply = PB__REPLY__INIT;
    reply.push = &push;
    append_reply(out, &reply);
    arena_free(&a);
}

/* The server's ping: an empty Reply, a zero length. */
static void pb_ping(core_str_t *out) {
    core_str_append(out, "", 1);
}

/* Messages are self-delimiting: a frame is their concatenation. */
static size_t pb_join_size(size_t len, bool first) {
    (void)first;
    return len;
}

static void pb_join_append(core_str_t *frame, const char *msg, size_t len, bool first) {
    (void)first;
    core_str_append(frame, msg, len);
}

const chat_codec_t chat__codec_pb = {
    .framing = {.name = "protobuf",
                .ws_opcode = 2,
                .join_size = pb_join_size,
                .join_append = pb_join_append},
    .index = CHAT_CODEC_PROTOBUF,
    .next = pb_next,
    .req_clear = pb_req_clear,
    .reply = pb_reply,
    .error = pb_error,
    .push = pb_push,
    .ping = pb_ping,
};
