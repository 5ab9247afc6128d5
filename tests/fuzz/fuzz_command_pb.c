/* libFuzzer driver for the Protobuf client protocol (chat_codec_pb.c): a binary frame is read
 * as the node reads it, command after command, each decoded into a typed request. Besides
 * memory errors it checks the decoder's contracts on every accepted command, and that a
 * publication push written from a publish's data decodes back (with protobuf-c) to the same
 * bytes. */
#include "chat/chat_int.h"

#include <stdlib.h>
#include <string.h>

#include "client.pb-c.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check(bool ok) {
    if (!ok)
        abort();
}

static void check_str(const char *s) {
    /* Present strings are non-empty (empty means absent, as in JSON) and NUL-terminated. */
    if (s)
        check(strlen(s) > 0);
}

/* A publication push of the publish's data: one length-prefixed Reply whose pub.data is the
 * same bytes. */
static void roundtrip_push(const chat_req_t *req) {
    clu_pub_t pub = {
        7, req->publish.data ? req->publish.data : "", req->publish.data_len, NULL, 0, NULL};
    core_str_t out = {0};
    chat__codec_pb.push(&out,
                        &(chat_push_t){.channel = req->publish.channel ? req->publish.channel : "c",
                                       .kind = CHAT_PUSH_PUB,
                                       .pub = &pub});
    size_t hl = 0;
    uint64_t len = 0;
    for (int shift = 0; hl < out.len; hl++, shift += 7) {
        len |= (uint64_t)(out.ptr[hl] & 0x7f) << shift;
        if (!(out.ptr[hl] & 0x80)) {
            hl++;
            break;
        }
    }
    check(hl + len == out.len);
    Pb__Reply *r = pb__reply__unpack(NULL, len, (const uint8_t *)out.ptr + hl);
    check(r && r->push && r->push->pub && r->push->pub->offset == 7);
    check(r->push->pub->data.len == req->publish.data_len);
    check(req->publish.data_len == 0 ||
          memcmp(r->push->pub->data.data, req->publish.data, req->publish.data_len) == 0);
    pb__reply__free_unpacked(r, NULL);
    core_str_free(&out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    size_t pos = 0;
    for (int n = 0; n < 1000; n++) {
        chat_req_t req;
        size_t before = pos;
        int rc = chat__codec_pb.next((const char *)data, size, &pos, &req);
        if (rc == 0) {
            check(pos >= size);
            break;
        }
        if (rc < 0) {
            check(rc == CORE_EPROTO);
            break;
        }
        check(pos > before && pos <= size);
        check(req.method < CHAT_M_COUNT);
        check(req.id != 0 || req.method == CHAT_M_PING || req.method == CHAT_M_SEND);
        switch (req.method) {
        case CHAT_M_CONNECT:
            check_str(req.connect.token);
            for (size_t i = 0; i < req.connect.nsubs; i++)
                check_str(req.connect.subs[i].channel);
            break;
        case CHAT_M_SUBSCRIBE:
            check_str(req.subscribe.channel);
            check_str(req.subscribe.token);
            break;
        case CHAT_M_PUBLISH:
            check_str(req.publish.channel);
            check((req.publish.data == NULL) == (req.publish.data_len == 0));
            roundtrip_push(&req);
            break;
        case CHAT_M_HISTORY:
            check(req.history.limit >= -1);
            check(!req.history.has_since || req.history.since_epoch != NULL);
            break;
        case CHAT_M_RPC:
            check_str(req.rpc.method);
            break;
        default:
            check_str(req.simple.channel);
            check_str(req.simple.token);
            break;
        }
        chat__codec_pb.req_clear(&req);
    }
    return 0;
}
