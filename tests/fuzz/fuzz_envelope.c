/* libFuzzer driver for cluster/cluster_envelope.c. The input is decoded as an envelope straight
 * from an exact-size copy (so ASan sees any read past the end); whatever decodes is encoded
 * again, and the re-encoding must decode to the same fields and re-encode to the same bytes.
 * Random bytes rarely form a msgpack map with the right keys, so a second pass wraps the input
 * as the data of an otherwise valid envelope and a third splices it in as an unknown field's
 * raw msgpack value, which drives the pre-validation walk inside a decodable envelope. */
#include "cluster/cluster_envelope.h"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void same_or_die(const clu_envelope_t *a, const clu_envelope_t *b) {
    if (a->type != b->type || a->channel_len != b->channel_len ||
        memcmp(a->channel, b->channel, a->channel_len) != 0 || a->offset != b->offset ||
        strcmp(a->epoch, b->epoch) != 0 || a->data_len != b->data_len ||
        (a->data_len && memcmp(a->data, b->data, a->data_len) != 0) ||
        (a->info == NULL) != (b->info == NULL) || a->info_len != b->info_len ||
        (a->info_len && memcmp(a->info, b->info, a->info_len) != 0))
        abort();
}

static void check(const char *buf, size_t len) {
    clu_envelope_t e;
    int rc = clu_env_decode(buf, len, &e);
    if (rc != 0) {
        if ((rc != CORE_EPROTO && rc != CORE_E2BIG) || e.channel != NULL)
            abort();
        return;
    }
    if (e.type != CLU_ENV_PUB && e.type != CLU_ENV_JOIN && e.type != CLU_ENV_LEAVE)
        abort();
    if (e.channel_len == 0 || e.channel_len > CLU_ENV_MAX_CHANNEL ||
        (e.type == CLU_ENV_PUB) != (e.data != NULL))
        abort();
    char *enc = NULL;
    size_t enc_len = 0;
    if (clu_env_encode_alloc(&e, &enc, &enc_len) != 0)
        abort(); /* anything decodable must be encodable: the re-encoding drops unknown keys */
    if (enc_len > len)
        abort();
    clu_envelope_t e2;
    if (clu_env_decode(enc, enc_len, &e2) != 0)
        abort();
    same_or_die(&e, &e2);
    char *enc2 = NULL;
    size_t enc2_len = 0;
    if (clu_env_encode_alloc(&e2, &enc2, &enc2_len) != 0 || enc2_len != enc_len ||
        memcmp(enc, enc2, enc_len) != 0)
        abort();
    free(enc2);
    free(enc);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    /* 1. The bytes as they come. */
    char *copy = malloc(size ? size : 1);
    if (copy == NULL)
        abort();
    memcpy(copy, data, size);
    check(copy, size);
    free(copy);

    /* 2. The bytes as the data of a pub, so the encoder and decoder see arbitrary strings. */
    if (size > 0 && size < 4096) {
        clu_envelope_t e = {.type = CLU_ENV_PUB, .offset = size, .channel = "c", .channel_len = 1};
        memcpy(e.epoch, "ep", 3);
        e.data = (const char *)data;
        e.data_len = size;
        char *enc = NULL;
        size_t enc_len = 0;
        if (clu_env_encode_alloc(&e, &enc, &enc_len) != 0)
            abort();
        check(enc, enc_len);
        free(enc);
    }

    /* 3. The bytes spliced in as the raw value of an unknown key of a valid join. */
    static const char head[] = "\x85\xa1v\x01\xa4type\xa4join\xa7"
                               "channel\xa1"
                               "c\xa4info\xa2{}\xa1z";
    size_t n = sizeof head - 1 + size;
    char *spliced = malloc(n);
    if (spliced == NULL)
        abort();
    memcpy(spliced, head, sizeof head - 1);
    memcpy(spliced + sizeof head - 1, data, size);
    check(spliced, n);
    free(spliced);
    return 0;
}
