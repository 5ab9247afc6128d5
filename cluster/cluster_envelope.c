/* The cross-node envelope: msgpack encoding and a defensive decoder. See cluster_envelope.h. */
#include "cluster/cluster_envelope.h"

#include <msgpack.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

/* ---- pre-validation ------------------------------------------------------------------------ */

static uint64_t load_be(const unsigned char *p, size_t n) {
    uint64_t v = 0;
    for (size_t i = 0; i < n; i++)
        v = v << 8 | p[i];
    return v;
}

enum { HDR_NONE, HDR_BYTES, HDR_EXT, HDR_ARRAY, HDR_MAP };

/* Walks buf[0..len) as exactly one msgpack object without allocating anything. msgpack-c sizes
 * its allocations from length headers before it has seen the bytes they announce, so every
 * string, bin and ext length must fit in what remains, and every array or map count too (each
 * element needs at least one byte). Nesting and the total object count are capped, which bounds
 * what msgpack_unpack_next may allocate afterwards to about CLU_ENV_MAX_OBJECTS objects. */
static int prevalidate(const unsigned char *p, size_t len) {
    uint64_t left[CLU_ENV_MAX_DEPTH + 1]; /* objects still expected at each open level */
    int depth = 0;
    size_t pos = 0, objects = 0;
    left[0] = 1;
    while (depth >= 0) {
        if (left[depth] == 0) {
            depth--;
            continue;
        }
        left[depth]--;
        if (++objects > CLU_ENV_MAX_OBJECTS || pos >= len)
            return CORE_EPROTO;
        unsigned b = p[pos++];
        uint64_t skip = 0;     /* payload bytes after the header */
        uint64_t children = 0; /* objects that follow inside this one */
        size_t hlen = 0;       /* width of a big-endian length/count field */
        int kind = HDR_NONE;
        if (b <= 0x7f || b >= 0xe0 || b == 0xc0 || b == 0xc2 || b == 0xc3) {
            /* fixint, negative fixint, nil, false, true: the byte is the whole object */
        } else if ((b & 0xf0) == 0x80) {
            children = 2u * (b & 0x0f);
        } else if ((b & 0xf0) == 0x90) {
            children = b & 0x0f;
        } else if ((b & 0xe0) == 0xa0) {
            skip = b & 0x1f;
        } else {
            switch (b) {
            case 0xc4: /* bin 8/16/32 */
            case 0xd9: /* str 8/16/32 */
                hlen = 1, kind = HDR_BYTES;
                break;
            case 0xc5:
            case 0xda:
                hlen = 2, kind = HDR_BYTES;
                break;
            case 0xc6:
            case 0xdb:
                hlen = 4, kind = HDR_BYTES;
                break;
            case 0xc7: /* ext 8/16/32: length, then a type byte, then the data */
                hlen = 1, kind = HDR_EXT;
                break;
            case 0xc8:
                hlen = 2, kind = HDR_EXT;
                break;
            case 0xc9:
                hlen = 4, kind = HDR_EXT;
                break;
            case 0xcc: /* uint 8, int 8 */
            case 0xd0:
                skip = 1;
                break;
            case 0xcd:
            case 0xd1:
                skip = 2;
                break;
            case 0xca: /* float 32 */
            case 0xce:
            case 0xd2:
                skip = 4;
                break;
            case 0xcb: /* float 64 */
            case 0xcf:
            case 0xd3:
                skip = 8;
                break;
            case 0xd4: /* fixext 1/2/4/8/16: a type byte plus the data */
                skip = 2;
                break;
            case 0xd5:
                skip = 3;
                break;
            case 0xd6:
                skip = 5;
                break;
            case 0xd7:
                skip = 9;
                break;
            case 0xd8:
                skip = 17;
                break;
            case 0xdc:
                hlen = 2, kind = HDR_ARRAY;
                break;
            case 0xdd:
                hlen = 4, kind = HDR_ARRAY;
                break;
            case 0xde:
                hlen = 2, kind = HDR_MAP;
                break;
            case 0xdf:
                hlen = 4, kind = HDR_MAP;
                break;
            default: /* 0xc1 is never used */
                return CORE_EPROTO;
            }
        }
        if (hlen > 0) {
            if (len - pos < hlen)
                return CORE_EPROTO;
            uint64_t n = load_be(p + pos, hlen);
            pos += hlen;
            if (kind == HDR_BYTES)
                skip = n;
            else if (kind == HDR_EXT)
                skip = n + 1;
            else if (kind == HDR_ARRAY)
                children = n;
            else
                children = 2 * n; /* n < 2^32, no overflow */
        }
        if (skip > len - pos)
            return CORE_EPROTO;
        pos += (size_t)skip;
        if (children > 0) {
            if (children > len - pos || depth >= CLU_ENV_MAX_DEPTH)
                return CORE_EPROTO;
            left[++depth] = children;
        }
    }
    return pos == len ? 0 : CORE_EPROTO; /* one envelope, nothing after it */
}

/* ---- decode -------------------------------------------------------------------------------- */

static bool key_is(const msgpack_object_str *k, const char *name) {
    size_t n = strlen(name);
    return k->size == n && memcmp(k->ptr, name, n) == 0;
}

typedef struct {
    bool v, type, channel, offset, epoch, data, info;
} seen_t;

/* Takes a str value for a known key; refuses a duplicate or a different type. */
static int take_str(const msgpack_object *val, bool *seen, const char **ptr, size_t *len) {
    if (*seen || val->type != MSGPACK_OBJECT_STR)
        return CORE_EPROTO;
    *seen = true;
    *ptr = val->via.str.ptr;
    *len = val->via.str.size;
    return 0;
}

static int take_uint(const msgpack_object *val, bool *seen, uint64_t *out) {
    if (*seen || val->type != MSGPACK_OBJECT_POSITIVE_INTEGER)
        return CORE_EPROTO;
    *seen = true;
    *out = val->via.u64;
    return 0;
}

static int parse_type(const char *s, size_t n, clu_env_type_t *t) {
    static const struct {
        const char *name;
        clu_env_type_t t;
    } types[] = {{"pub", CLU_ENV_PUB}, {"join", CLU_ENV_JOIN}, {"leave", CLU_ENV_LEAVE}};
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++) {
        if (strlen(types[i].name) == n && memcmp(types[i].name, s, n) == 0) {
            *t = types[i].t;
            return 0;
        }
    }
    return CORE_EPROTO;
}

static int extract(const msgpack_object *root, clu_envelope_t *out) {
    if (root->type != MSGPACK_OBJECT_MAP)
        return CORE_EPROTO;
    seen_t seen = {0};
    uint64_t version = 0;
    const char *type = NULL, *epoch = NULL;
    size_t type_len = 0, epoch_len = 0;
    int rc = 0;
    for (uint32_t i = 0; i < root->via.map.size && rc == 0; i++) {
        const msgpack_object *k = &root->via.map.ptr[i].key;
        const msgpack_object *val = &root->via.map.ptr[i].val;
        if (k->type != MSGPACK_OBJECT_STR)
            continue; /* not a key of any version: ignore like an unknown one */
        const msgpack_object_str *ks = &k->via.str;
        if (key_is(ks, "v"))
            rc = take_uint(val, &seen.v, &version);
        else if (key_is(ks, "type"))
            rc = take_str(val, &seen.type, &type, &type_len);
        else if (key_is(ks, "channel"))
            rc = take_str(val, &seen.channel, &out->channel, &out->channel_len);
        else if (key_is(ks, "offset"))
            rc = take_uint(val, &seen.offset, &out->offset);
        else if (key_is(ks, "epoch"))
            rc = take_str(val, &seen.epoch, &epoch, &epoch_len);
        else if (key_is(ks, "data"))
            rc = take_str(val, &seen.data, &out->data, &out->data_len);
        else if (key_is(ks, "info"))
            rc = take_str(val, &seen.info, &out->info, &out->info_len);
    }
    if (rc != 0)
        return rc;
    if (!seen.v || version != CLU_ENV_VERSION || !seen.type ||
        parse_type(type, type_len, &out->type) != 0)
        return CORE_EPROTO;
    /* The channel and epoch become NUL-terminated strings further on: an embedded NUL would
     * silently name a different channel. */
    if (!seen.channel || out->channel_len == 0 || out->channel_len > CLU_ENV_MAX_CHANNEL ||
        memchr(out->channel, '\0', out->channel_len) != NULL)
        return CORE_EPROTO;
    if (seen.info && out->info_len == 0)
        return CORE_EPROTO;
    if (out->type == CLU_ENV_PUB) {
        if (!seen.offset || !seen.epoch || epoch_len >= CLU_EPOCH_MAX ||
            memchr(epoch, '\0', epoch_len) != NULL || !seen.data || out->data_len == 0)
            return CORE_EPROTO;
        memcpy(out->epoch, epoch, epoch_len);
        out->epoch[epoch_len] = '\0';
    } else {
        if (!seen.info)
            return CORE_EPROTO;
        /* Pub-only fields in a join/leave are ignored, as unknown ones would be. */
        out->offset = 0;
        out->data = NULL;
        out->data_len = 0;
    }
    return 0;
}

int clu_env_decode(const char *buf, size_t len, clu_envelope_t *out) {
    memset(out, 0, sizeof *out);
    if (len > CLU_ENV_MAX_SIZE)
        return CORE_E2BIG;
    if (buf == NULL || prevalidate((const unsigned char *)buf, len) != 0)
        return CORE_EPROTO;
    msgpack_unpacked u;
    msgpack_unpacked_init(&u);
    size_t off = 0;
    int rc = CORE_EPROTO;
    /* Strings in the result point into buf (msgpack-c references str bodies instead of copying
     * them), so they stay valid after the zone is destroyed below. */
    if (msgpack_unpack_next(&u, buf, len, &off) == MSGPACK_UNPACK_SUCCESS && off == len)
        rc = extract(&u.data, out);
    msgpack_unpacked_destroy(&u);
    if (rc != 0)
        memset(out, 0, sizeof *out);
    return rc;
}

/* ---- encode -------------------------------------------------------------------------------- */

const char *clu_env_type_name(clu_env_type_t t) {
    switch (t) {
    case CLU_ENV_PUB:
        return "pub";
    case CLU_ENV_JOIN:
        return "join";
    case CLU_ENV_LEAVE:
        return "leave";
    }
    return NULL;
}

static int str_write(void *data, const char *buf, size_t len) {
    core_str_append(data, buf, len);
    return 0;
}

static void pack_kv_str(msgpack_packer *pk, const char *key, const char *s, size_t n) {
    msgpack_pack_str_with_body(pk, key, strlen(key));
    msgpack_pack_str_with_body(pk, s, n);
}

int clu_env_encode(const clu_envelope_t *e, core_str_t *out) {
    if (e == NULL || out == NULL)
        return CORE_EINVAL;
    const char *tname = clu_env_type_name(e->type);
    if (tname == NULL || e->channel == NULL || e->channel_len == 0 ||
        e->channel_len > CLU_ENV_MAX_CHANNEL || memchr(e->channel, '\0', e->channel_len) != NULL)
        return CORE_EINVAL;
    bool pub = e->type == CLU_ENV_PUB;
    /* A pub's info is optional: NULL or empty means absent. */
    bool has_info = e->info != NULL && e->info_len > 0;
    size_t epoch_len = 0;
    if (pub) {
        const char *nul = memchr(e->epoch, '\0', sizeof e->epoch);
        if (nul == NULL || e->data == NULL || e->data_len == 0)
            return CORE_EINVAL;
        epoch_len = (size_t)(nul - e->epoch);
    } else if (!has_info) {
        return CORE_EINVAL;
    }
    /* A part over the cap on its own is refused before anything is copied; the exact limit is
     * checked on the result, so whatever clu_env_decode accepted can always be encoded again. */
    size_t data_len = pub ? e->data_len : 0, info_len = has_info ? e->info_len : 0;
    if (data_len > CLU_ENV_MAX_SIZE || info_len > CLU_ENV_MAX_SIZE)
        return CORE_E2BIG;

    size_t start = out->len;
    core_str_reserve(out, data_len + info_len + e->channel_len + 256); /* one allocation */
    msgpack_packer pk;
    msgpack_packer_init(&pk, out, str_write);
    msgpack_pack_map(&pk, pub ? (has_info ? 7 : 6) : 4);
    msgpack_pack_str_with_body(&pk, "v", 1);
    msgpack_pack_uint64(&pk, CLU_ENV_VERSION);
    pack_kv_str(&pk, "type", tname, strlen(tname));
    pack_kv_str(&pk, "channel", e->channel, e->channel_len);
    if (pub) {
        msgpack_pack_str_with_body(&pk, "offset", 6);
        msgpack_pack_uint64(&pk, e->offset);
        pack_kv_str(&pk, "epoch", e->epoch, epoch_len);
        pack_kv_str(&pk, "data", e->data, e->data_len);
    }
    if (has_info)
        pack_kv_str(&pk, "info", e->info, e->info_len);
    if (out->len - start > CLU_ENV_MAX_SIZE) {
        out->len = start; /* leave out as it was */
        out->ptr[start] = '\0';
        return CORE_E2BIG;
    }
    return 0;
}

int clu_env_encode_alloc(const clu_envelope_t *e, char **buf, size_t *len) {
    if (buf == NULL || len == NULL)
        return CORE_EINVAL;
    *buf = NULL;
    *len = 0;
    core_str_t s = {0};
    int rc = clu_env_encode(e, &s);
    if (rc != 0) {
        core_str_free(&s);
        return rc;
    }
    *buf = s.ptr != NULL ? s.ptr : core_malloc(1);
    *len = s.len;
    return 0;
}
