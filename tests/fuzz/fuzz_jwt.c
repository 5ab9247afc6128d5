/* libFuzzer driver for auth/: token verification, keyring parsing and the user-limited channel
 * helper. Besides feeding the raw bytes as a token, it also signs fuzzer-chosen header and
 * payload bytes with a known secret, because random bytes almost never carry a valid HMAC and
 * would otherwise never reach the claim checks that run only after the signature. */
#include "auth/auth.h"
#include "tests/support/b64url.h"

#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <stdlib.h>
#include <string.h>

#define SECRET "fuzz-default-secret"
#define SECRET_K1 "fuzz-k1-secret"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static auth_keyring_t *fixed_keyring(void) {
    static auth_keyring_t *kr;
    if (kr == NULL) {
        kr = auth_keyring_new();
        if (auth_keyring_add(kr, NULL, SECRET, strlen(SECRET)) != 0 ||
            auth_keyring_add(kr, "k1", SECRET_K1, strlen(SECRET_K1)) != 0 ||
            auth_keyring_add(kr, "k2", "fuzz-k2-secret", 14) != 0)
            abort();
    }
    return kr;
}

static const auth_verify_opts_t plain_opts = {.now_s = 1700000000, .leeway_s = 30};
static const auth_verify_opts_t strict_opts = {
    .now_s = 1700000000, .leeway_s = 30, .audience = "chat", .issuer = "iss"};

static char *sign(const void *hdr, size_t hdr_len, const void *pl, size_t pl_len,
                  const char *secret) {
    char *h = test_b64url(hdr, hdr_len);
    char *p = test_b64url(pl, pl_len);
    size_t n = strlen(h) + 1 + strlen(p);
    char *tok = malloc(n + 1 + 44);
    if (tok == NULL)
        abort();
    memcpy(tok, h, strlen(h));
    tok[strlen(h)] = '.';
    memcpy(tok + strlen(h) + 1, p, strlen(p) + 1);
    unsigned char mac[32];
    unsigned int mac_len = 0;
    if (HMAC(EVP_sha256(), secret, (int)strlen(secret), (unsigned char *)tok, n, mac, &mac_len) ==
        NULL)
        abort();
    char *s = test_b64url(mac, mac_len);
    tok[n] = '.';
    memcpy(tok + n + 1, s, strlen(s) + 1);
    free(h);
    free(p);
    free(s);
    return tok;
}

/* Checks what a successful verification promises, and that re-minting the verified payload
 * gives a token that verifies the same way (a parse/serialise round trip). */
static void check_verified(const auth_keyring_t *kr, const auth_claims_t *c,
                           const auth_verify_opts_t *opts) {
    if (!json_is_object(c->payload))
        abort();
    if (c->plan >= AUTH_PLAN_COUNT)
        abort();
    (void)auth_claims_has_role(c, "admin");
    char *again = auth_jwt_mint(kr, NULL, c->payload);
    if (again == NULL)
        abort();
    /* Re-serialising may grow the payload (reals print with more digits), past the cap. */
    if (strlen(again) <= AUTH_MAX_TOKEN_BYTES) {
        auth_claims_t c2;
        if (auth_jwt_verify(kr, again, strlen(again), opts, &c2) != 0)
            abort();
        if (!json_equal(c2.payload, c->payload))
            abort();
        auth_claims_clear(&c2);
    }
    free(again);
}

static void verify_all(const auth_keyring_t *kr, const char *tok, size_t len) {
    const auth_verify_opts_t *all[] = {&plain_opts, &strict_opts};
    for (size_t i = 0; i < 2; i++) {
        auth_claims_t c;
        int rc = auth_jwt_verify(kr, tok, len, all[i], &c);
        if (rc == 0)
            check_verified(kr, &c, all[i]);
        else if (c.payload != NULL || c.sub != NULL || auth_strerror(rc) == NULL)
            abort();
        auth_claims_clear(&c);
        if (auth_verify_connection(kr, tok, len, all[i], &c) == 0 &&
            (c.sub == NULL || c.sub[0] == '\0'))
            abort();
        auth_claims_clear(&c);
        if (auth_verify_subscription(kr, tok, len, all[i], "u1", "chat:x", &c) == 0 &&
            (strcmp(c.sub, "u1") != 0 || strcmp(c.channel, "chat:x") != 0))
            abort();
        auth_claims_clear(&c);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    auth_keyring_t *kr = fixed_keyring();

    /* 1. The bytes as a token, unterminated so any over-read past len is caught. */
    verify_all(kr, (const char *)data, size);

    /* 2. The whole input as the payload under a fixed header, signed with the default secret. */
    static const char hdr[] = "{\"alg\":\"HS256\",\"typ\":\"JWT\"}";
    char *tok = sign(hdr, sizeof(hdr) - 1, data, size, SECRET);
    verify_all(kr, tok, strlen(tok));
    free(tok);

    /* 3. Input split at the first NUL into a fuzzer-chosen header and payload, signed with k1's
     * secret, so alg and kid handling meet valid signatures too. */
    const uint8_t *nul = memchr(data, '\0', size);
    if (nul != NULL) {
        size_t hlen = (size_t)(nul - data);
        tok = sign(data, hlen, nul + 1, size - hlen - 1, SECRET_K1);
        verify_all(kr, tok, strlen(tok));
        free(tok);
    }

    /* 4. Input split at the first '\n' into a CHAT_JWT_SECRET spec and a token for it. */
    const uint8_t *nl = memchr(data, '\n', size);
    if (nl != NULL) {
        size_t slen = (size_t)(nl - data);
        char *spec = malloc(slen + 1);
        if (spec == NULL)
            abort();
        memcpy(spec, data, slen);
        spec[slen] = '\0';
        auth_keyring_t *kr2 = auth_keyring_new();
        if (auth_keyring_parse(kr2, spec) == 0) {
            /* Every accepted spec installs a default secret, so minting without kid works. */
            if (auth_keyring_size(kr2) == 0)
                abort();
            json_t *claims = json_pack("{s:s}", "sub", "u1");
            char *minted = auth_jwt_mint(kr2, NULL, claims);
            auth_claims_t c;
            if (minted == NULL ||
                auth_verify_connection(kr2, minted, strlen(minted), &plain_opts, &c) != 0)
                abort();
            auth_claims_clear(&c);
            free(minted);
            json_decref(claims);
            verify_all(kr2, (const char *)nl + 1, size - slen - 1);
        } else if (auth_keyring_size(kr2) != 0) {
            abort(); /* A refused spec must leave the keyring untouched. */
        }
        auth_keyring_free(kr2);

        /* 5. The same split as a channel name and a user for the user-limited helper. */
        char *user = malloc(size - slen);
        if (user == NULL)
            abort();
        memcpy(user, nl + 1, size - slen - 1);
        user[size - slen - 1] = '\0';
        int r = auth_user_limited_allows(spec, user);
        if (r < -1 || r > 1 || (r == -1) != (strchr(spec, '#') == NULL))
            abort();
        free(user);
        free(spec);
    }
    return 0;
}
