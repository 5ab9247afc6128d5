/* libFuzzer driver for the client command path of chat/: a frame is split into lines, each line
 * decoded as a command, and the "data" of its params validated as a chat message, as the node
 * does for a publish into a namespace with message_schema "chat". Besides memory errors, it
 * checks the contracts of chat.h on every accepted input. */
#include "chat/chat_int.h"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check(bool ok) {
    if (!ok)
        abort();
}

static void check_normalized(const json_t *msg, uint32_t max_text) {
    char msg_id[65];
    char err[128];
    memset(msg_id, 'x', sizeof msg_id);
    err[0] = '\0';
    char *out = chat_message_normalize(msg, max_text, 1700000000123, msg_id, err, sizeof err);
    if (out == NULL) {
        check(err[0] != '\0');
        check(msg_id[0] == '\0');
        return;
    }
    /* The output is a JSON object of exactly the known fields, within the limits. */
    json_error_t e;
    json_t *norm = json_loads(out, 0, &e);
    check(json_is_object(norm));
    const char *type = json_string_value(json_object_get(norm, "type"));
    check(type != NULL && strcmp(type, "message") == 0);
    json_t *text = json_object_get(norm, "text");
    check(json_is_string(text));
    check(json_string_length(text) > 0 && json_string_length(text) <= max_text);
    check(json_equal(text, json_object_get(msg, "text")));
    json_t *cid = json_object_get(norm, "client_msg_id");
    size_t id_len = strnlen(msg_id, sizeof msg_id);
    check(id_len < sizeof msg_id);
    if (id_len == 0) {
        check(cid == NULL);
        check(json_object_size(norm) == 3);
    } else {
        check(json_is_string(cid) && strcmp(json_string_value(cid), msg_id) == 0);
        check(json_object_size(norm) == 4);
    }
    check(json_integer_value(json_object_get(norm, "ts")) == 1700000000123);
    json_decref(norm);
    free(out);
}

static void decode_line(const char *line, size_t len) {
    chat_cmd_t cmd;
    int rc = chat_cmd_decode(line, len, &cmd);
    if (rc != 0) {
        check(rc == CORE_EPROTO);
        check(cmd.root == NULL && cmd.params == NULL && cmd.id == 0);
        chat_cmd_clear(&cmd);
        return;
    }
    check(json_is_object(cmd.root));
    check(cmd.method < CHAT_M_COUNT);
    check(cmd.params == NULL || json_is_object(cmd.params));
    check(cmd.id != 0 || cmd.method == CHAT_M_PING || cmd.method == CHAT_M_SEND);
    check(cmd.method != CHAT_M_PING || cmd.params == NULL);
    check(chat_method_name(cmd.method) != NULL);
    if (cmd.params) {
        json_t *msg = json_object_get(cmd.params, "data");
        if (msg) {
            check_normalized(msg, 4096);
            check_normalized(msg, 8);
        }
    }
    chat_cmd_clear(&cmd);
    check(cmd.root == NULL);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    /* A heap copy of exactly size bytes, so any read past the frame is caught. */
    char *frame = malloc(size ? size : 1);
    if (frame == NULL)
        abort();
    memcpy(frame, data, size);
    size_t pos = 0, prev = 0, len = 0;
    const char *line = NULL;
    while (chat_frame_next(frame, size, &pos, &line, &len)) {
        check(pos > prev && pos <= size);
        check(len > 0 && line >= frame + prev && line + len <= frame + pos);
        check(memchr(line, '\n', len) == NULL);
        prev = pos;
        decode_line(line, len);
    }
    check(pos == size);
    /* The whole input as one command too, newlines and all. */
    decode_line(frame, size);
    free(frame);
    return 0;
}
