/* chat: per-user state on this node: connection count, limiters, recent client_msg_ids. */
#include "chat/chat_int.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MOD "chat"

/* ---- users ---- */

chat_user_t *chat__user_get(chat_node_t *n, const char *name) {
    chat_user_t *u = core_map_get(n->users, name);
    if (!u) {
        size_t len = strlen(name) + 1;
        u = core_calloc(1, sizeof *u + len); /* the name follows the struct */
        u->name = memcpy((char *)(u + 1), name, len);
        core_map_put(n->users, u->name, u);
    }
    return u;
}

void chat__user_free(chat_user_t *u) {
    free(u->dedupe);
    free(u);
}

/* A user with no connection is kept until its limiter state has drained, so reconnecting does
 * not reset a rate limit. */
void chat__user_maybe_free(chat_node_t *n, chat_user_t *u, double now_ms) {
    int64_t now_us = (int64_t)(now_ms * 1000.0);
    if (u->nconns == 0 && u->pub_gcra.tat_us <= now_us && u->typing_gcra.tat_us <= now_us) {
        core_map_del(n->users, u->name);
        chat__user_free(u);
    }
}

uint64_t chat__dedupe_key(const char *channel, const char *msg_id) {
    core_str_t s = {0};
    core_str_appends(&s, channel);
    core_str_append(&s, "\n", 1);
    core_str_appends(&s, msg_id);
    uint64_t h = core_hash(s.ptr, s.len);
    core_str_free(&s);
    return h ? h : 1;
}

bool chat__dedupe_seen(chat_node_t *n, chat_user_t *u, uint64_t key, uint64_t now) {
    if (!u->dedupe)
        return false;
    uint64_t window = (uint64_t)n->cfg.dedupe_window_s * 1000;
    for (int i = 0; i < CHAT_DEDUPE_SLOTS; i++)
        if (u->dedupe[i].key == key && now - u->dedupe[i].at_ms <= window)
            return true;
    return false;
}

void chat__dedupe_remember(chat_user_t *u, uint64_t key, uint64_t now) {
    if (!u->dedupe)
        u->dedupe = core_calloc(CHAT_DEDUPE_SLOTS, sizeof *u->dedupe);
    u->dedupe[u->dedupe_next] = (chat_dedupe_slot_t){key, now};
    u->dedupe_next = (u->dedupe_next + 1) % CHAT_DEDUPE_SLOTS;
}

void chat__dedupe_forget(chat_user_t *u, uint64_t key) {
    if (!u->dedupe)
        return;
    for (int i = 0; i < CHAT_DEDUPE_SLOTS; i++)
        if (u->dedupe[i].key == key)
            u->dedupe[i].key = 0;
}
