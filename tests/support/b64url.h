/* Test support: base64url without padding, for building tokens in tests and fuzz drivers. It
 * encodes with OpenSSL's standard alphabet and maps it, so tests do not share the encoder under
 * test (auth/). The result is malloc'd; aborts when out of memory. */
#ifndef TESTS_SUPPORT_B64URL_H
#define TESTS_SUPPORT_B64URL_H

#include <openssl/evp.h>
#include <stdlib.h>

static inline char *test_b64url(const void *data, size_t n) {
    char *out = malloc(4 * ((n + 2) / 3) + 1);
    if (out == NULL)
        abort();
    int len = EVP_EncodeBlock((unsigned char *)out, data, (int)n);
    while (len > 0 && out[len - 1] == '=')
        len--;
    out[len] = '\0';
    for (int i = 0; i < len; i++) {
        if (out[i] == '+')
            out[i] = '-';
        else if (out[i] == '/')
            out[i] = '_';
    }
    return out;
}

#endif
