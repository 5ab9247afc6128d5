/* Writes the seed corpus of fuzz_envelope: cross-node envelopes as cluster_envelope.c encodes
 * them (every type, every width of offset and string header), envelopes a newer node could send
 * (other key order, unknown keys holding every msgpack type), near-valid ones the decoder must
 * refuse (wrong version, duplicate or mistyped keys, truncation, hostile headers), and bare
 * msgpack values for the driver's pass that splices the input in as an unknown key's value.
 * Usage: gen_envelope_seeds DIR (built with the fuzz targets: scripts/build fuzz). */
#include "cluster/cluster_envelope.h"

#include <msgpack.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *out_dir;

static void put(const char *name, const void *buf, size_t len) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", out_dir, name);
    FILE *f = fopen(path, "wb");
    if (f == NULL || fwrite(buf, 1, len, f) != len || fclose(f) != 0) {
        perror(path);
        exit(1);
    }
}

/* Encodes e with the product's encoder and writes it; the decoder must take it back. */
static void put_env(const char *name, const clu_envelope_t *e) {
    char *buf = NULL;
    size_t len = 0;
    clu_envelope_t back;
    if (clu_env_encode_alloc(e, &buf, &len) != 0 || clu_env_decode(buf, len, &back) != 0) {
        fprintf(stderr, "%s: does not round-trip\n", name);
        exit(1);
    }
    put(name, buf, len);
    free(buf);
}

/* Writes a hand-packed seed, after checking that the decoder takes it (ok) or refuses it. */
static void put_checked(const char *name, const char *buf, size_t len, bool ok) {
    clu_envelope_t e;
    if ((clu_env_decode(buf, len, &e) == 0) != ok) {
        fprintf(stderr, "%s: expected the decoder to %s it\n", name, ok ? "accept" : "refuse");
        exit(1);
    }
    put(name, buf, len);
}

static void put_sbuf(const char *name, msgpack_sbuffer *sb, bool ok) {
    put_checked(name, sb->data, sb->size, ok);
    msgpack_sbuffer_clear(sb);
}

static void kv_str(msgpack_packer *pk, const char *k, const char *v) {
    msgpack_pack_str_with_body(pk, k, strlen(k));
    msgpack_pack_str_with_body(pk, v, strlen(v));
}

static void kv_uint(msgpack_packer *pk, const char *k, uint64_t v) {
    msgpack_pack_str_with_body(pk, k, strlen(k));
    msgpack_pack_uint64(pk, v);
}

static const char chat_msg[] =
    "{\"type\":\"message\",\"text\":\"hello\",\"client_msg_id\":\"m-1\"}";
static const char info[] =
    "{\"user\":\"u1\",\"client\":\"4f0c2a8e-3b1d-4c5e-9a7f-1e2d3c4b5a69\",\"conn_info\":"
    "{\"name\":\"Ann\"}}";

static clu_envelope_t pub(const char *channel, uint64_t offset, const char *epoch, const char *data,
                          const char *inf) {
    clu_envelope_t e = {.type = CLU_ENV_PUB,
                        .channel = channel,
                        .channel_len = strlen(channel),
                        .offset = offset,
                        .data = data,
                        .data_len = strlen(data)};
    snprintf(e.epoch, sizeof e.epoch, "%s", epoch);
    if (inf != NULL) {
        e.info = inf;
        e.info_len = strlen(inf);
    }
    return e;
}

static void valid(void) {
    clu_envelope_t e = pub("chat:lobby", 17, "Xy3kP0aB", chat_msg, info);
    put_env("pub-chat-message", &e);
    e = pub("chat:lobby", 0, "Xy3kP0aB",
            "{\"type\":\"llm.delta\",\"request_id\":\"r1\",\"index\":3,\"text\":\" wor\"}", NULL);
    put_env("pub-unstored-no-info", &e);
    e = pub("typing:lobby", 0, "", "{\"type\":\"typing\",\"user\":\"u1\"}", NULL);
    put_env("pub-typing-empty-epoch", &e);
    e = pub("personal:#u1", 200, "abcdefghijklmno",
            "{\"type\":\"llm.queued\",\"request_id\":\"r1\",\"queue_position\":2}", NULL);
    put_env("pub-personal-offset-u8", &e);
    e = pub("chat:lobby", 70000, "e", "1", info);
    put_env("pub-offset-u32", &e);
    e = pub("chat:lobby", 1234, "e", "\"text\"", info);
    put_env("pub-offset-u16", &e);
    e = pub("chat:lobby", UINT64_MAX, "e", "null", NULL);
    put_env("pub-offset-u64", &e);
    char big[301];
    memset(big, 'a', sizeof big - 1);
    big[0] = '"';
    big[sizeof big - 2] = '"';
    big[sizeof big - 1] = '\0';
    e = pub("chat:room#u1,u2", 5, "e", big, info);
    put_env("pub-data-str16", &e);

    clu_envelope_t j = {.type = CLU_ENV_JOIN,
                        .channel = "chat:lobby",
                        .channel_len = 10,
                        .info = info,
                        .info_len = strlen(info)};
    put_env("join", &j);
    j.type = CLU_ENV_LEAVE;
    put_env("leave", &j);
}

/* A pub packed by hand: fields in another order, and extra keys, as a newer node may send. */
static void newer(void) {
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);

    msgpack_pack_map(&pk, 7);
    kv_str(&pk, "data", chat_msg);
    kv_str(&pk, "epoch", "e1");
    kv_uint(&pk, "offset", 3);
    kv_str(&pk, "info", info);
    kv_str(&pk, "channel", "chat:lobby");
    kv_str(&pk, "type", "pub");
    kv_uint(&pk, "v", 1);
    put_sbuf("pub-reordered", &sb, true);

    /* Every msgpack type under unknown keys, and a non-string key. */
    msgpack_pack_map(&pk, 21);
    kv_uint(&pk, "v", 1);
    kv_str(&pk, "type", "join");
    kv_str(&pk, "channel", "chat:lobby");
    kv_str(&pk, "info", info);
    msgpack_pack_str_with_body(&pk, "nil", 3);
    msgpack_pack_nil(&pk);
    msgpack_pack_str_with_body(&pk, "bool", 4);
    msgpack_pack_true(&pk);
    msgpack_pack_str_with_body(&pk, "neg", 3);
    msgpack_pack_int64(&pk, -40000);
    msgpack_pack_str_with_body(&pk, "i8", 2);
    msgpack_pack_int8(&pk, -100);
    msgpack_pack_str_with_body(&pk, "f32", 3);
    msgpack_pack_float(&pk, 1.5f);
    msgpack_pack_str_with_body(&pk, "f64", 3);
    msgpack_pack_double(&pk, -0.25);
    msgpack_pack_str_with_body(&pk, "bin", 3);
    msgpack_pack_bin_with_body(&pk, "\x00\x01\xff", 3);
    msgpack_pack_str_with_body(&pk, "ext", 3);
    msgpack_pack_ext_with_body(&pk, "\x01\x02\x03\x04", 4, 7);
    msgpack_pack_str_with_body(&pk, "fixext1", 7);
    msgpack_pack_ext_with_body(&pk, "\x09", 1, -1);
    msgpack_pack_str_with_body(&pk, "ts", 2);
    msgpack_pack_ext_with_body(&pk, "\x00\x00\x00\x00\x65\x53\xf1\x00", 8, -1);
    msgpack_pack_str_with_body(&pk, "arr", 3);
    msgpack_pack_array(&pk, 3);
    msgpack_pack_uint8(&pk, 1);
    msgpack_pack_str_with_body(&pk, "two", 3);
    msgpack_pack_array(&pk, 0);
    msgpack_pack_str_with_body(&pk, "map", 3);
    msgpack_pack_map(&pk, 1);
    msgpack_pack_str_with_body(&pk, "k", 1);
    msgpack_pack_map(&pk, 1);
    msgpack_pack_uint8(&pk, 1);
    msgpack_pack_nil(&pk);
    msgpack_pack_uint8(&pk, 42); /* a non-string key */
    msgpack_pack_str_with_body(&pk, "x", 1);
    msgpack_pack_str_with_body(&pk, "offset", 6); /* known, not of a join: checked, ignored */
    msgpack_pack_uint8(&pk, 9);
    msgpack_pack_str_with_body(&pk, "str8", 4);
    char s8[40];
    memset(s8, 's', sizeof s8);
    msgpack_pack_str_with_body(&pk, s8, sizeof s8);
    msgpack_pack_str_with_body(&pk, "u16", 3);
    msgpack_pack_uint16(&pk, 65000);
    msgpack_pack_str_with_body(&pk, "i64", 3);
    msgpack_pack_int64(&pk, INT64_MIN);
    put_sbuf("join-unknown-keys-all-types", &sb, true);
    msgpack_sbuffer_destroy(&sb);
}

/* Refused: each differs from a valid envelope in one way. */
static void near_valid(void) {
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);

#define JOIN_BODY(v, type, channel)                                                                \
    kv_uint(&pk, "v", v);                                                                          \
    kv_str(&pk, "type", type);                                                                     \
    kv_str(&pk, "channel", channel)

    msgpack_pack_map(&pk, 4);
    JOIN_BODY(2, "join", "chat:lobby");
    kv_str(&pk, "info", info);
    put_sbuf("bad-version-2", &sb, false);

    msgpack_pack_map(&pk, 4);
    JOIN_BODY(1, "kick", "chat:lobby");
    kv_str(&pk, "info", info);
    put_sbuf("bad-unknown-type", &sb, false);

    msgpack_pack_map(&pk, 3);
    JOIN_BODY(1, "join", "chat:lobby");
    put_sbuf("bad-join-without-info", &sb, false);

    msgpack_pack_map(&pk, 5);
    JOIN_BODY(1, "join", "chat:lobby");
    kv_str(&pk, "info", info);
    kv_str(&pk, "channel", "chat:other");
    put_sbuf("bad-duplicate-key", &sb, false);

    msgpack_pack_map(&pk, 4);
    JOIN_BODY(1, "join", "");
    kv_str(&pk, "info", info);
    put_sbuf("bad-empty-channel", &sb, false);

    msgpack_pack_map(&pk, 4);
    kv_uint(&pk, "v", 1);
    kv_str(&pk, "type", "join");
    kv_uint(&pk, "channel", 7);
    kv_str(&pk, "info", info);
    put_sbuf("bad-channel-not-str", &sb, false);

    msgpack_pack_map(&pk, 6);
    JOIN_BODY(1, "pub", "chat:lobby");
    kv_uint(&pk, "offset", 1);
    kv_str(&pk, "epoch", "0123456789abcdef"); /* CLU_EPOCH_MAX bytes: one too many */
    kv_str(&pk, "data", "{}");
    put_sbuf("bad-epoch-too-long", &sb, false);

    msgpack_pack_map(&pk, 6);
    JOIN_BODY(1, "pub", "chat:lobby");
    msgpack_pack_str_with_body(&pk, "offset", 6);
    msgpack_pack_int8(&pk, -1);
    kv_str(&pk, "epoch", "e");
    kv_str(&pk, "data", "{}");
    put_sbuf("bad-negative-offset", &sb, false);

    msgpack_pack_map(&pk, 5);
    JOIN_BODY(1, "pub", "chat:lobby");
    kv_uint(&pk, "offset", 1);
    kv_str(&pk, "epoch", "e");
    put_sbuf("bad-pub-without-data", &sb, false);

    msgpack_pack_array(&pk, 2);
    kv_uint(&pk, "v", 1);
    put_sbuf("bad-array-not-map", &sb, false);
#undef JOIN_BODY

    /* A valid envelope cut short, and one with a byte after it. */
    clu_envelope_t e = pub("chat:lobby", 17, "Xy3kP0aB", chat_msg, info);
    char *buf = NULL;
    size_t len = 0;
    if (clu_env_encode_alloc(&e, &buf, &len) != 0)
        exit(1);
    put_checked("bad-truncated", buf, len - 5, false);
    char *more = malloc(len + 1);
    memcpy(more, buf, len);
    more[len] = '\xc0';
    put_checked("bad-trailing-byte", more, len + 1, false);
    free(more);
    free(buf);

    /* Headers announcing far more than follows: must be refused before any allocation. */
    static const char huge_array[] = "\x85\xa1v\x01\xa4type\xa4join\xa7"
                                     "channel\xa1"
                                     "c\xa4info\xa2{}\xa1z\xdd\xff\xff\xff\xff";
    put_checked("bad-array32-header", huge_array, sizeof huge_array - 1, false);
    static const char huge_str[] = "\x84\xa1v\x01\xa4type\xa4join\xa7"
                                   "channel\xdb\x7f\xff\xff\xff"
                                   "c";
    put_checked("bad-str32-header", huge_str, sizeof huge_str - 1, false);
    /* Nesting one deeper than CLU_ENV_MAX_DEPTH under an unknown key. */
    msgpack_pack_map(&pk, 5);
    kv_uint(&pk, "v", 1);
    kv_str(&pk, "type", "join");
    kv_str(&pk, "channel", "c");
    kv_str(&pk, "info", "{}");
    msgpack_pack_str_with_body(&pk, "z", 1);
    for (int i = 0; i < CLU_ENV_MAX_DEPTH; i++)
        msgpack_pack_array(&pk, 1);
    msgpack_pack_nil(&pk);
    put_sbuf("bad-too-deep", &sb, false);
    msgpack_sbuffer_destroy(&sb);
}

/* Bare values: the driver also splices the input in after an unknown key of a valid join. */
static void values(void) {
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, 2);
    kv_str(&pk, "trace", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
    msgpack_pack_str_with_body(&pk, "hops", 4);
    msgpack_pack_array(&pk, 2);
    msgpack_pack_str_with_body(&pk, "node-a", 6);
    msgpack_pack_str_with_body(&pk, "node-b", 6);
    put_sbuf("value-map", &sb, false);
    msgpack_pack_array(&pk, 4);
    msgpack_pack_uint32(&pk, 100000);
    msgpack_pack_double(&pk, 2.5);
    msgpack_pack_bin_with_body(&pk, "ab", 2);
    msgpack_pack_false(&pk);
    put_sbuf("value-array", &sb, false);
    msgpack_sbuffer_destroy(&sb);
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s DIR\n", argv[0]);
        return 2;
    }
    out_dir = argv[1];
    valid();
    newer();
    near_valid();
    values();
    return 0;
}
