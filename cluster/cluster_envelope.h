/* cluster_envelope: the cross-node envelope of PROTOCOL.md section 6, the msgpack message a
 * node publishes into Redis and every other node with local subscribers decodes.
 *
 * Wire shape, one msgpack map (string keys, any order):
 *   "v"       uint   1, required; any other version is refused
 *   "type"    str    "pub" | "join" | "leave", required
 *   "channel" str    the chat channel, required, 1..CLU_ENV_MAX_CHANNEL bytes
 *   "offset"  uint   pub only, required (0 = not stored in history)
 *   "epoch"   str    pub only, required, shorter than CLU_EPOCH_MAX
 *   "data"    str    pub only, required: JSON text, not parsed here
 *   "info"    str    JSON text: optional for pub (the publisher), required for join/leave
 * Keys this version does not know, including non-string keys and any value under them, are
 * skipped, so newer nodes can add fields. A known key with a value of the wrong type, or present
 * twice, makes the envelope undecodable. Known keys that do not belong to the type (an
 * "offset" in a join) are type-checked like the others, then ignored. */
#ifndef CLUSTER_CLUSTER_ENVELOPE_H
#define CLUSTER_CLUSTER_ENVELOPE_H

#include <stddef.h>
#include <stdint.h>

#include "cluster/cluster.h"
#include "core/core.h"

#define CLU_ENV_VERSION 1
/* Largest envelope accepted or produced. Publications are capped far below this by the chat
 * layer; the cap is what bounds memory when a peer (or anything that can PUBLISH into Redis)
 * sends garbage. */
#define CLU_ENV_MAX_SIZE (1024u * 1024u)
/* Most msgpack objects (of any nesting) in one envelope. msgpack-c allocates one 24-byte object
 * per array element and map entry before filling them in; this keeps that well under 1 MiB. */
#define CLU_ENV_MAX_OBJECTS 4096
/* Deepest nesting accepted under unknown keys (the envelope itself is depth 1). */
#define CLU_ENV_MAX_DEPTH 16
#define CLU_ENV_MAX_CHANNEL 1024

typedef enum {
    CLU_ENV_PUB = 1,
    CLU_ENV_JOIN = 2,
    CLU_ENV_LEAVE = 3,
} clu_env_type_t;

/* A decoded (or to-be-encoded) envelope. After clu_env_decode the string fields BORROW from the
 * input buffer (they are not NUL-terminated; keep the input alive while using them) except
 * epoch, which is copied and NUL-terminated because on_pub wants it that way. Fields that do
 * not apply to the type are zero / NULL. */
typedef struct {
    clu_env_type_t type;
    const char *channel;
    size_t channel_len;
    uint64_t offset;           /* pub */
    char epoch[CLU_EPOCH_MAX]; /* pub, NUL-terminated */
    const char *data;          /* pub */
    size_t data_len;
    const char *info; /* NULL when absent (pub only; join/leave always have it) */
    size_t info_len;
} clu_envelope_t;

/* Appends the msgpack encoding of e to out (out->ptr stays valid for the caller to free with
 * core_str_free). On error out is left as it was. Returns 0; CORE_EINVAL if e breaks the rules
 * above (unknown type, empty or too long channel, epoch too long or not NUL-terminated, missing
 * data, missing info in join/leave); CORE_E2BIG if the encoding would exceed CLU_ENV_MAX_SIZE. */
int clu_env_encode(const clu_envelope_t *e, core_str_t *out);

/* Like clu_env_encode into a fresh malloc'd buffer: *buf (free() it) and *len. */
int clu_env_encode_alloc(const clu_envelope_t *e, char **buf, size_t *len);

/* Decodes exactly one envelope from buf[0..len); no other bytes may follow it. Before msgpack-c
 * sees the input, a walk over its bytes checks every declared length and element count against
 * the bytes that remain, the nesting depth and the object count, because msgpack-c 4.0 trusts
 * length headers (a 5-byte array32 header makes it allocate gigabytes). Memory used is bounded
 * by a small multiple of len and freed before returning.
 * Returns 0 and fills out; CORE_E2BIG when len > CLU_ENV_MAX_SIZE; CORE_EPROTO for anything
 * else that is not a valid envelope (truncated, malformed, wrong version, missing field, wrong
 * type). On error out is zeroed. The caller drops and counts every envelope this refuses. */
int clu_env_decode(const char *buf, size_t len, clu_envelope_t *out);

/* "pub", "join", "leave", or NULL for any other value. */
const char *clu_env_type_name(clu_env_type_t t);

#endif
