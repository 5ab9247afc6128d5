/* core: string-keyed hash map with open addressing and tombstones. */
#include "core/core.h"

#include <stdlib.h>
#include <string.h>

#define TOMBSTONE ((char *)1)

/* A slot is two pointers; the hash's top byte, kept apart in `tags`, spares most string
 * compares. A node holds several maps with an entry per connection, so a slot of 16 bytes
 * instead of 24 is felt per connection. */
typedef struct {
    char *key; /* NULL = empty, TOMBSTONE = deleted */
    void *value;
} slot_t;

static uint8_t tag_of(uint64_t h) {
    return (uint8_t)(h >> 56);
}

struct core_map {
    slot_t *slots;
    uint8_t *tags; /* tag_of(hash) of each slot's key */
    size_t cap;    /* power of two */
    size_t size;
    size_t used;   /* size + tombstones */
    bool borrowed; /* keys are the caller's (core_map_new_borrowed) */
};

uint64_t core_hash(const void *p, size_t n) {
    /* FNV-1a, 64-bit: keys are short channel and user names. */
    const unsigned char *s = p;
    uint64_t h = 14695981039346656037ULL;
    for (size_t i = 0; i < n; i++) {
        h ^= s[i];
        h *= 1099511628211ULL;
    }
    return h;
}

core_map_t *core_map_new(void) {
    core_map_t *m = core_calloc(1, sizeof *m);
    m->cap = 16;
    m->slots = core_calloc(m->cap, sizeof *m->slots);
    m->tags = core_calloc(m->cap, 1);
    return m;
}

core_map_t *core_map_new_borrowed(void) {
    core_map_t *m = core_map_new();
    m->borrowed = true;
    return m;
}

void core_map_free(core_map_t *m) {
    if (!m)
        return;
    for (size_t i = 0; i < m->cap && !m->borrowed; i++)
        if (m->slots[i].key && m->slots[i].key != TOMBSTONE)
            free(m->slots[i].key);
    free(m->slots);
    free(m->tags);
    free(m);
}

static slot_t *find(const core_map_t *m, const char *key, uint64_t h) {
    size_t mask = m->cap - 1;
    uint8_t tag = tag_of(h);
    for (size_t i = h & mask;; i = (i + 1) & mask) {
        slot_t *s = &m->slots[i];
        if (!s->key)
            return NULL;
        if (s->key != TOMBSTONE && m->tags[i] == tag && strcmp(s->key, key) == 0)
            return s;
    }
}

void *core_map_get(const core_map_t *m, const char *key) {
    slot_t *s = find(m, key, core_hash(key, strlen(key)));
    return s ? s->value : NULL;
}

static void grow(core_map_t *m, size_t cap) {
    slot_t *old = m->slots;
    size_t oldcap = m->cap;
    m->slots = core_calloc(cap, sizeof *m->slots);
    free(m->tags);
    m->tags = core_calloc(cap, 1);
    m->cap = cap;
    m->used = m->size;
    for (size_t i = 0; i < oldcap; i++) {
        if (!old[i].key || old[i].key == TOMBSTONE)
            continue;
        /* Hashes are not stored: growing hashes the keys again (short names). */
        uint64_t h = core_hash(old[i].key, strlen(old[i].key));
        size_t j = h & (cap - 1);
        while (m->slots[j].key)
            j = (j + 1) & (cap - 1);
        m->slots[j] = old[i];
        m->tags[j] = tag_of(h);
    }
    free(old);
}

void *core_map_put(core_map_t *m, const char *key, void *value) {
    uint64_t h = core_hash(key, strlen(key));
    slot_t *s = find(m, key, h);
    if (s) {
        void *prev = s->value;
        s->value = value;
        if (m->borrowed)
            s->key = (char *)key; /* the old key may go with the old value */
        return prev;
    }
    if ((m->used + 1) * 4 > m->cap * 3)
        grow(m, m->size * 2 + 1 > m->cap / 2 ? m->cap * 2 : m->cap);
    size_t mask = m->cap - 1;
    size_t i = h & mask;
    while (m->slots[i].key && m->slots[i].key != TOMBSTONE)
        i = (i + 1) & mask;
    if (!m->slots[i].key)
        m->used++;
    m->slots[i].key = m->borrowed ? (char *)key : core_strdup(key);
    m->slots[i].value = value;
    m->tags[i] = tag_of(h);
    m->size++;
    return NULL;
}

void *core_map_del(core_map_t *m, const char *key) {
    slot_t *s = find(m, key, core_hash(key, strlen(key)));
    if (!s)
        return NULL;
    void *v = s->value;
    if (!m->borrowed)
        free(s->key);
    s->key = TOMBSTONE;
    s->value = NULL;
    m->size--;
    return v;
}

size_t core_map_size(const core_map_t *m) {
    return m->size;
}

bool core_map_next(const core_map_t *m, core_map_iter_t *it, const char **key, void **value) {
    while (*it < m->cap) {
        slot_t *s = &m->slots[(*it)++];
        if (s->key && s->key != TOMBSTONE) {
            if (key)
                *key = s->key;
            if (value)
                *value = s->value;
            return true;
        }
    }
    return false;
}
