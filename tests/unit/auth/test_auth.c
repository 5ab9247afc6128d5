/* Unit tests for auth/: JWT verification, minting, the keyring and the channel helpers. Every
 * verification runs with a fixed now_s so no test depends on the clock. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "auth/auth.h"
#include "tests/support/b64url.h"

#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <stdlib.h>
#include <string.h>

#define NOW 1700000000
#define SECRET "default-secret-for-tests"
#define SECRET_K1 "first-rotation-secret"
#define SECRET_K2 "second-rotation-secret"

static const auth_verify_opts_t opts_now = {.now_s = NOW};

/* ---- helpers --------------------------------------------------------------------------------- */

/* Builds header.payload.signature from raw header and payload text, signing with secret; sig_len
 * (at most 33) lets a test cut or extend the signature, the extra byte being zero. */
static char *sign_raw_len(const char *header, const char *payload, const char *secret,
                          size_t sig_len) {
    char *h = test_b64url(header, strlen(header));
    char *p = test_b64url(payload, strlen(payload));
    size_t n = strlen(h) + 1 + strlen(p);
    char *signing = malloc(n + 1);
    assert_non_null(signing);
    snprintf(signing, n + 1, "%s.%s", h, p);
    unsigned char mac[33] = {0};
    unsigned int mac_len = 0;
    assert_non_null(HMAC(EVP_sha256(), secret, (int)strlen(secret), (unsigned char *)signing, n,
                         mac, &mac_len));
    assert_int_equal(mac_len, 32);
    assert_true(sig_len <= sizeof(mac));
    char *s = test_b64url(mac, sig_len);
    size_t total = n + 1 + strlen(s);
    char *tok = malloc(total + 1);
    assert_non_null(tok);
    snprintf(tok, total + 1, "%s.%s", signing, s);
    free(h);
    free(p);
    free(signing);
    free(s);
    return tok;
}

static char *sign_raw(const char *header, const char *payload, const char *secret) {
    return sign_raw_len(header, payload, secret, 32);
}

static const char *hs256_header = "{\"alg\":\"HS256\",\"typ\":\"JWT\"}";

static auth_keyring_t *test_keyring(void) {
    auth_keyring_t *kr = auth_keyring_new();
    assert_int_equal(auth_keyring_add(kr, NULL, SECRET, strlen(SECRET)), 0);
    assert_int_equal(auth_keyring_add(kr, "k1", SECRET_K1, strlen(SECRET_K1)), 0);
    assert_int_equal(auth_keyring_add(kr, "k2", SECRET_K2, strlen(SECRET_K2)), 0);
    return kr;
}

/* Verifies payload text signed with the default secret under the standard header. */
static int verify_payload(const char *payload, const auth_verify_opts_t *opts) {
    auth_keyring_t *kr = test_keyring();
    char *tok = sign_raw(hs256_header, payload, SECRET);
    auth_claims_t c;
    int rc = auth_jwt_verify(kr, tok, strlen(tok), opts, &c);
    auth_claims_clear(&c);
    free(tok);
    auth_keyring_free(kr);
    return rc;
}

static int verify_token(const char *header, const char *payload, const char *secret) {
    auth_keyring_t *kr = test_keyring();
    char *tok = sign_raw(header, payload, secret);
    auth_claims_t c;
    int rc = auth_jwt_verify(kr, tok, strlen(tok), &opts_now, &c);
    auth_claims_clear(&c);
    free(tok);
    auth_keyring_free(kr);
    return rc;
}

static int verify_string(const char *tok) {
    auth_keyring_t *kr = test_keyring();
    auth_claims_t c;
    int rc = auth_jwt_verify(kr, tok, strlen(tok), &opts_now, &c);
    /* A failed verification must leave the claims zeroed. */
    if (rc != 0) {
        auth_claims_t zero;
        memset(&zero, 0, sizeof(zero));
        assert_memory_equal(&c, &zero, sizeof(c));
    }
    auth_claims_clear(&c);
    auth_keyring_free(kr);
    return rc;
}

/* ---- tests ----------------------------------------------------------------------------------- */

static void test_valid_token(void **state) {
    (void)state;
    auth_keyring_t *kr = test_keyring();
    char *tok = sign_raw(hs256_header,
                         "{\"sub\":\"u1\",\"exp\":1700000060,\"iat\":1699999990,"
                         "\"info\":{\"name\":\"Ann\"},\"channels\":[\"chat:a\",\"chat:b\"],"
                         "\"roles\":[\"admin\"],\"plan\":\"pro\"}",
                         SECRET);
    auth_claims_t c;
    assert_int_equal(auth_verify_connection(kr, tok, strlen(tok), &opts_now, &c), AUTH_OK);
    assert_string_equal(c.sub, "u1");
    assert_true(c.has_exp);
    assert_int_equal(c.exp, 1700000060);
    assert_int_equal(c.iat, 1699999990);
    assert_non_null(c.info);
    assert_string_equal(json_string_value(json_object_get(c.info, "name")), "Ann");
    assert_int_equal(json_array_size(c.channels), 2);
    assert_true(auth_claims_has_role(&c, "admin"));
    assert_false(auth_claims_has_role(&c, "root"));
    assert_int_equal(c.plan, AUTH_PLAN_PRO);
    assert_null(c.channel);
    assert_true(json_is_object(c.payload));
    auth_claims_clear(&c);
    auth_claims_clear(&c); /* Clearing twice is harmless. */
    assert_null(c.sub);
    free(tok);
    auth_keyring_free(kr);
}

static void test_minimal_token_defaults(void **state) {
    (void)state;
    auth_keyring_t *kr = test_keyring();
    char *tok = sign_raw(hs256_header, "{\"sub\":\"u1\"}", SECRET);
    auth_claims_t c;
    assert_int_equal(auth_jwt_verify(kr, tok, strlen(tok), &opts_now, &c), AUTH_OK);
    assert_false(c.has_exp);
    assert_int_equal(c.iat, 0);
    assert_null(c.info);
    assert_null(c.channels);
    assert_null(c.roles);
    assert_false(auth_claims_has_role(&c, "admin"));
    assert_int_equal(c.plan, AUTH_PLAN_FREE);
    auth_claims_clear(&c);
    free(tok);
    auth_keyring_free(kr);
}

static void test_expired(void **state) {
    (void)state;
    assert_int_equal(verify_payload("{\"sub\":\"u1\",\"exp\":1699999999}", &opts_now),
                     AUTH_E_EXPIRED);
    /* exp == now is the last valid second. */
    assert_int_equal(verify_payload("{\"sub\":\"u1\",\"exp\":1700000000}", &opts_now), AUTH_OK);
    auth_verify_opts_t o = {.now_s = NOW, .leeway_s = 30};
    assert_int_equal(verify_payload("{\"sub\":\"u1\",\"exp\":1699999969}", &o), AUTH_E_EXPIRED);
    /* A real exp is truncated toward zero: 1699999999.9 is 1699999999, one second too old. */
    assert_int_equal(verify_payload("{\"sub\":\"u1\",\"exp\":1699999999.9}", &opts_now),
                     AUTH_E_EXPIRED);
    assert_int_equal(verify_payload("{\"sub\":\"u1\",\"exp\":1700000000.9}", &opts_now), AUTH_OK);
}

static void test_expired_within_leeway(void **state) {
    (void)state;
    auth_verify_opts_t o = {.now_s = NOW, .leeway_s = 30};
    assert_int_equal(verify_payload("{\"sub\":\"u1\",\"exp\":1699999970}", &o), AUTH_OK);
    assert_int_equal(verify_payload("{\"sub\":\"u1\",\"exp\":1699999990}", &o), AUTH_OK);
    /* The saturating sum keeps a huge exp or leeway from wrapping into the past. */
    assert_int_equal(verify_payload("{\"sub\":\"u1\",\"exp\":9223372036854775807}", &o), AUTH_OK);
    auth_verify_opts_t big = {.now_s = NOW, .leeway_s = INT64_MAX};
    assert_int_equal(verify_payload("{\"sub\":\"u1\",\"exp\":1}", &big), AUTH_OK);
    /* A negative leeway counts as zero. */
    auth_verify_opts_t neg = {.now_s = NOW, .leeway_s = -100};
    assert_int_equal(verify_payload("{\"sub\":\"u1\",\"exp\":1700000000}", &neg), AUTH_OK);
}

static void test_not_yet_valid(void **state) {
    (void)state;
    auth_verify_opts_t o = {.now_s = NOW, .leeway_s = 30};
    assert_int_equal(verify_payload("{\"sub\":\"u1\",\"nbf\":1700000031}", &o), AUTH_E_NOT_YET);
    assert_int_equal(verify_payload("{\"sub\":\"u1\",\"nbf\":1700000030}", &o), AUTH_OK);
    assert_int_equal(verify_payload("{\"sub\":\"u1\",\"nbf\":1700000001}", &opts_now),
                     AUTH_E_NOT_YET);
    assert_int_equal(verify_payload("{\"sub\":\"u1\",\"nbf\":1700000000}", &opts_now), AUTH_OK);
    assert_int_equal(verify_payload("{\"sub\":\"u1\",\"nbf\":-9223372036854775807}", &o), AUTH_OK);
}

static void test_time_claim_types(void **state) {
    (void)state;
    assert_int_equal(verify_payload("{\"sub\":\"u1\",\"exp\":\"1700000060\"}", &opts_now),
                     AUTH_E_CLAIMS);
    assert_int_equal(verify_payload("{\"sub\":\"u1\",\"nbf\":null}", &opts_now), AUTH_E_CLAIMS);
    assert_int_equal(verify_payload("{\"sub\":\"u1\",\"iat\":true}", &opts_now), AUTH_E_CLAIMS);
    /* A real beyond int64_t cannot be truncated without undefined behaviour. */
    assert_int_equal(verify_payload("{\"sub\":\"u1\",\"exp\":1e300}", &opts_now), AUTH_E_CLAIMS);
    /* An integer beyond int64_t is a JSON error in jansson. */
    assert_int_equal(verify_payload("{\"sub\":\"u1\",\"exp\":99999999999999999999}", &opts_now),
                     AUTH_E_MALFORMED);
}

static void test_alg_none(void **state) {
    (void)state;
    /* The classic form: alg none and an empty signature. */
    char *h = test_b64url("{\"alg\":\"none\"}", 14);
    char *p = test_b64url("{\"sub\":\"u1\"}", 12);
    char tok[256];
    snprintf(tok, sizeof(tok), "%s.%s.", h, p);
    assert_int_equal(verify_string(tok), AUTH_E_ALG);
    free(h);
    free(p);
    /* Even a correct HMAC does not make alg none acceptable. */
    assert_int_equal(verify_token("{\"alg\":\"none\"}", "{\"sub\":\"u1\"}", SECRET), AUTH_E_ALG);
    assert_int_equal(verify_token("{\"alg\":\"None\"}", "{\"sub\":\"u1\"}", SECRET), AUTH_E_ALG);
}

static void test_alg_rs256(void **state) {
    (void)state;
    assert_int_equal(verify_token("{\"alg\":\"RS256\"}", "{\"sub\":\"u1\"}", SECRET), AUTH_E_ALG);
    assert_int_equal(verify_token("{\"alg\":\"hs256\"}", "{\"sub\":\"u1\"}", SECRET), AUTH_E_ALG);
    assert_int_equal(verify_token("{\"alg\":\"HS512\"}", "{\"sub\":\"u1\"}", SECRET), AUTH_E_ALG);
    assert_int_equal(verify_token("{\"alg\":\"HS256 \"}", "{\"sub\":\"u1\"}", SECRET), AUTH_E_ALG);
}

static void test_alg_missing(void **state) {
    (void)state;
    assert_int_equal(verify_token("{\"typ\":\"JWT\"}", "{\"sub\":\"u1\"}", SECRET), AUTH_E_ALG);
    assert_int_equal(verify_token("{}", "{\"sub\":\"u1\"}", SECRET), AUTH_E_ALG);
    assert_int_equal(verify_token("{\"alg\":256}", "{\"sub\":\"u1\"}", SECRET), AUTH_E_ALG);
    assert_int_equal(verify_token("{\"alg\":[\"HS256\"]}", "{\"sub\":\"u1\"}", SECRET), AUTH_E_ALG);
    assert_int_equal(verify_token("{\"alg\":null}", "{\"sub\":\"u1\"}", SECRET), AUTH_E_ALG);
}

static void test_header_extras(void **state) {
    (void)state;
    /* No critical extension is understood, so any crit is refused. */
    assert_int_equal(verify_token("{\"alg\":\"HS256\",\"crit\":[\"b64\"],\"b64\":false}",
                                  "{\"sub\":\"u1\"}", SECRET),
                     AUTH_E_MALFORMED);
    /* Duplicate members could be read differently by another parser. */
    assert_int_equal(
        verify_token("{\"alg\":\"HS256\",\"alg\":\"none\"}", "{\"sub\":\"u1\"}", SECRET),
        AUTH_E_MALFORMED);
    assert_int_equal(verify_token(hs256_header, "{\"sub\":\"u1\",\"sub\":\"admin\"}", SECRET),
                     AUTH_E_MALFORMED);
}

/* Replaces part idx (0 header, 1 payload, 2 signature) of tok with repl. */
static char *replace_part(const char *tok, int idx, const char *repl) {
    const char *d1 = strchr(tok, '.');
    const char *d2 = strchr(d1 + 1, '.');
    const char *start[3] = {tok, d1 + 1, d2 + 1};
    const char *stop[3] = {d1, d2, tok + strlen(tok)};
    size_t n = strlen(tok) + strlen(repl) + 1;
    char *out = malloc(n);
    assert_non_null(out);
    out[0] = '\0';
    for (int i = 0; i < 3; i++) {
        if (i > 0)
            strcat(out, ".");
        if (i == idx)
            strcat(out, repl);
        else
            strncat(out, start[i], (size_t)(stop[i] - start[i]));
    }
    return out;
}

static void test_tampered_header(void **state) {
    (void)state;
    char *tok = sign_raw(hs256_header, "{\"sub\":\"u1\"}", SECRET);
    assert_int_equal(verify_string(tok), AUTH_OK);
    const char *h2 = "{\"alg\":\"HS256\",\"typ\":\"JWS\"}";
    char *enc = test_b64url(h2, strlen(h2));
    char *bad = replace_part(tok, 0, enc);
    assert_int_equal(verify_string(bad), AUTH_E_SIGNATURE);
    free(bad);
    free(enc);
    /* Switching to another kid with the same signature must fail too. */
    const char *h3 = "{\"alg\":\"HS256\",\"kid\":\"k1\"}";
    enc = test_b64url(h3, strlen(h3));
    bad = replace_part(tok, 0, enc);
    assert_int_equal(verify_string(bad), AUTH_E_SIGNATURE);
    free(bad);
    free(enc);
    free(tok);
}

static void test_tampered_payload(void **state) {
    (void)state;
    char *tok = sign_raw(hs256_header, "{\"sub\":\"u1\",\"roles\":[]}", SECRET);
    const char *p2 = "{\"sub\":\"u1\",\"roles\":[\"admin\"]}";
    char *enc = test_b64url(p2, strlen(p2));
    char *bad = replace_part(tok, 1, enc);
    assert_int_equal(verify_string(bad), AUTH_E_SIGNATURE);
    free(bad);
    free(enc);
    /* A payload that is not even JSON is never parsed when the signature does not match. */
    enc = test_b64url("not json", 8);
    bad = replace_part(tok, 1, enc);
    assert_int_equal(verify_string(bad), AUTH_E_SIGNATURE);
    free(bad);
    free(enc);
    free(tok);
}

static void test_tampered_signature(void **state) {
    (void)state;
    char *tok = sign_raw(hs256_header, "{\"sub\":\"u1\"}", SECRET);
    char *sig = strrchr(tok, '.') + 1;
    sig[0] = sig[0] == 'A' ? 'B' : 'A';
    assert_int_equal(verify_string(tok), AUTH_E_SIGNATURE);
    free(tok);
    /* The right signature made with the wrong secret. */
    assert_int_equal(verify_token(hs256_header, "{\"sub\":\"u1\"}", "not-the-secret"),
                     AUTH_E_SIGNATURE);
}

static void test_signature_wrong_length(void **state) {
    (void)state;
    auth_keyring_t *kr = test_keyring();
    auth_claims_t c;
    /* A prefix of the right MAC must not pass: the length is checked before the constant-time
     * comparison, never derived from the token. */
    size_t lens[] = {0, 1, 16, 31, 33};
    for (size_t i = 0; i < sizeof(lens) / sizeof(lens[0]); i++) {
        char *tok = sign_raw_len(hs256_header, "{\"sub\":\"u1\"}", SECRET, lens[i]);
        assert_int_equal(auth_jwt_verify(kr, tok, strlen(tok), &opts_now, &c), AUTH_E_SIGNATURE);
        free(tok);
    }
    auth_keyring_free(kr);
}

static void test_audience(void **state) {
    (void)state;
    auth_verify_opts_t o = {.now_s = NOW, .audience = "chat"};
    assert_int_equal(verify_payload("{\"sub\":\"u1\",\"aud\":\"chat\"}", &o), AUTH_OK);
    assert_int_equal(verify_payload("{\"sub\":\"u1\",\"aud\":\"other\"}", &o), AUTH_E_AUDIENCE);
    assert_int_equal(verify_payload("{\"sub\":\"u1\",\"aud\":\"chat2\"}", &o), AUTH_E_AUDIENCE);
    assert_int_equal(verify_payload("{\"sub\":\"u1\"}", &o), AUTH_E_AUDIENCE);
    assert_int_equal(verify_payload("{\"sub\":\"u1\",\"aud\":[]}", &o), AUTH_E_AUDIENCE);
    assert_int_equal(verify_payload("{\"sub\":\"u1\",\"aud\":7}", &o), AUTH_E_CLAIMS);
    /* Without a configured audience, aud is only type-checked. */
    assert_int_equal(verify_payload("{\"sub\":\"u1\",\"aud\":\"other\"}", &opts_now), AUTH_OK);
    assert_int_equal(verify_payload("{\"sub\":\"u1\",\"aud\":{}}", &opts_now), AUTH_E_CLAIMS);
}

static void test_audience_array(void **state) {
    (void)state;
    auth_verify_opts_t o = {.now_s = NOW, .audience = "chat"};
    assert_int_equal(verify_payload("{\"sub\":\"u1\",\"aud\":[\"api\",\"chat\"]}", &o), AUTH_OK);
    assert_int_equal(verify_payload("{\"sub\":\"u1\",\"aud\":[\"api\",\"web\"]}", &o),
                     AUTH_E_AUDIENCE);
    assert_int_equal(verify_payload("{\"sub\":\"u1\",\"aud\":[\"chat\",1]}", &o), AUTH_E_CLAIMS);
}

static void test_issuer(void **state) {
    (void)state;
    auth_verify_opts_t o = {.now_s = NOW, .issuer = "https://issuer.example"};
    assert_int_equal(verify_payload("{\"sub\":\"u1\",\"iss\":\"https://issuer.example\"}", &o),
                     AUTH_OK);
    assert_int_equal(verify_payload("{\"sub\":\"u1\",\"iss\":\"https://evil.example\"}", &o),
                     AUTH_E_ISSUER);
    assert_int_equal(verify_payload("{\"sub\":\"u1\"}", &o), AUTH_E_ISSUER);
    assert_int_equal(verify_payload("{\"sub\":\"u1\",\"iss\":[\"https://issuer.example\"]}", &o),
                     AUTH_E_CLAIMS);
}

static void test_kid_rotation(void **state) {
    (void)state;
    const char *pl = "{\"sub\":\"u1\"}";
    assert_int_equal(verify_token("{\"alg\":\"HS256\",\"kid\":\"k1\"}", pl, SECRET_K1), AUTH_OK);
    assert_int_equal(verify_token("{\"alg\":\"HS256\",\"kid\":\"k2\"}", pl, SECRET_K2), AUTH_OK);
    /* Signed with k1's secret but naming k2. */
    assert_int_equal(verify_token("{\"alg\":\"HS256\",\"kid\":\"k2\"}", pl, SECRET_K1),
                     AUTH_E_SIGNATURE);
    /* A kid token never falls back to the default secret. */
    assert_int_equal(verify_token("{\"alg\":\"HS256\",\"kid\":\"k1\"}", pl, SECRET),
                     AUTH_E_SIGNATURE);
    assert_int_equal(verify_token("{\"alg\":\"HS256\",\"kid\":\"k3\"}", pl, SECRET_K1), AUTH_E_KID);
    assert_int_equal(verify_token("{\"alg\":\"HS256\",\"kid\":\"\"}", pl, SECRET), AUTH_E_KID);
    assert_int_equal(verify_token("{\"alg\":\"HS256\",\"kid\":1}", pl, SECRET), AUTH_E_KID);
    assert_int_equal(verify_token("{\"alg\":\"HS256\",\"kid\":null}", pl, SECRET), AUTH_E_KID);

    /* Without a default secret, a token without kid has no key. */
    auth_keyring_t *kr = auth_keyring_new();
    assert_int_equal(auth_keyring_add(kr, "k1", SECRET_K1, strlen(SECRET_K1)), 0);
    char *tok = sign_raw(hs256_header, pl, SECRET_K1);
    auth_claims_t c;
    assert_int_equal(auth_jwt_verify(kr, tok, strlen(tok), &opts_now, &c), AUTH_E_KID);
    free(tok);
    auth_keyring_free(kr);
}

static void test_oversized_token(void **state) {
    (void)state;
    /* A correctly signed token just over the cap is refused before any decoding. */
    size_t pad = AUTH_MAX_TOKEN_BYTES;
    char *payload = malloc(pad + 64);
    assert_non_null(payload);
    snprintf(payload, pad + 64, "{\"sub\":\"u1\",\"x\":\"%0*d\"}", (int)(pad * 3 / 4 - 30), 0);
    char *tok = sign_raw(hs256_header, payload, SECRET);
    assert_true(strlen(tok) > AUTH_MAX_TOKEN_BYTES);
    assert_int_equal(verify_string(tok), AUTH_E_TOO_LARGE);
    free(tok);

    /* Shrink until the token fits: a token at or under the cap verifies. */
    for (size_t x = pad * 3 / 4 - 30; x > 0; x--) {
        snprintf(payload, pad + 64, "{\"sub\":\"u1\",\"x\":\"%0*d\"}", (int)x, 0);
        tok = sign_raw(hs256_header, payload, SECRET);
        if (strlen(tok) <= AUTH_MAX_TOKEN_BYTES) {
            assert_int_equal(verify_string(tok), AUTH_OK);
            free(tok);
            break;
        }
        free(tok);
    }
    free(payload);

    /* The size check comes first, even for bytes that are not a token at all. */
    auth_keyring_t *kr = test_keyring();
    char *junk = malloc(AUTH_MAX_TOKEN_BYTES + 1);
    assert_non_null(junk);
    memset(junk, '!', AUTH_MAX_TOKEN_BYTES + 1);
    auth_claims_t c;
    assert_int_equal(auth_jwt_verify(kr, junk, AUTH_MAX_TOKEN_BYTES + 1, &opts_now, &c),
                     AUTH_E_TOO_LARGE);
    free(junk);
    auth_keyring_free(kr);
}

static void test_garbage_tokens(void **state) {
    (void)state;
    assert_int_equal(verify_string(""), AUTH_E_MALFORMED);
    assert_int_equal(verify_string("abc"), AUTH_E_MALFORMED);
    assert_int_equal(verify_string("abc.def"), AUTH_E_MALFORMED);
    assert_int_equal(verify_string("a.b.c.d"), AUTH_E_MALFORMED);
    assert_int_equal(verify_string(".."), AUTH_E_MALFORMED);
    assert_int_equal(verify_string("..."), AUTH_E_MALFORMED);

    char *tok = sign_raw(hs256_header, "{\"sub\":\"u1\"}", SECRET);
    size_t n = strlen(tok);
    char *four = malloc(n + 3);
    assert_non_null(four);
    snprintf(four, n + 3, "%s.x", tok);
    assert_int_equal(verify_string(four), AUTH_E_MALFORMED);
    free(four);

    /* Invalid base64url: standard-alphabet characters, padding, a bad length, stray bytes. */
    char *bad = replace_part(tok, 1, "eyJzdWIiOiJ1MSJ9+/");
    assert_int_equal(verify_string(bad), AUTH_E_MALFORMED);
    free(bad);
    bad = replace_part(tok, 1, "eyJzdWIiOiJ1MSJ9==");
    assert_int_equal(verify_string(bad), AUTH_E_MALFORMED);
    free(bad);
    bad = replace_part(tok, 1, "eyJzdWIiOiJ1MSJ9A");
    assert_int_equal(verify_string(bad), AUTH_E_MALFORMED);
    free(bad);
    bad = replace_part(tok, 1, "eyJzdWIi OiJ1MSJ9");
    assert_int_equal(verify_string(bad), AUTH_E_MALFORMED);
    free(bad);
    /* "QR" carries non-zero unused bits ("QQ" is the canonical encoding of "A"). */
    bad = replace_part(tok, 1, "QR");
    assert_int_equal(verify_string(bad), AUTH_E_MALFORMED);
    free(bad);
    char *sig = strrchr(tok, '.') + 1;
    char saved = sig[0];
    sig[0] = '=';
    assert_int_equal(verify_string(tok), AUTH_E_MALFORMED);
    sig[0] = saved;

    /* An embedded NUL inside the given length is just an invalid character. */
    auth_keyring_t *kr = test_keyring();
    auth_claims_t c;
    tok[3] = '\0';
    assert_int_equal(auth_jwt_verify(kr, tok, n, &opts_now, &c), AUTH_E_MALFORMED);
    assert_int_equal(auth_jwt_verify(kr, NULL, 0, &opts_now, &c), AUTH_E_MALFORMED);
    auth_keyring_free(kr);
    free(tok);

    /* Header and payload must be JSON objects. */
    assert_int_equal(verify_token("not json", "{\"sub\":\"u1\"}", SECRET), AUTH_E_MALFORMED);
    assert_int_equal(verify_token("[\"HS256\"]", "{\"sub\":\"u1\"}", SECRET), AUTH_E_MALFORMED);
    assert_int_equal(verify_token("{\"alg\":\"HS256\"} x", "{}", SECRET), AUTH_E_MALFORMED);
    assert_int_equal(verify_token(hs256_header, "[\"u1\"]", SECRET), AUTH_E_MALFORMED);
    assert_int_equal(verify_token(hs256_header, "\"u1\"", SECRET), AUTH_E_MALFORMED);
    assert_int_equal(verify_token(hs256_header, "", SECRET), AUTH_E_MALFORMED);
    assert_int_equal(verify_token(hs256_header, "{\"sub\":\"u1\"", SECRET), AUTH_E_MALFORMED);
}

static void test_claim_types(void **state) {
    (void)state;
    assert_int_equal(verify_payload("{\"sub\":1}", &opts_now), AUTH_E_CLAIMS);
    assert_int_equal(verify_payload("{\"sub\":\"u1\",\"channel\":[]}", &opts_now), AUTH_E_CLAIMS);
    assert_int_equal(verify_payload("{\"sub\":\"u1\",\"channels\":\"chat:a\"}", &opts_now),
                     AUTH_E_CLAIMS);
    assert_int_equal(verify_payload("{\"sub\":\"u1\",\"channels\":[\"a\",null]}", &opts_now),
                     AUTH_E_CLAIMS);
    assert_int_equal(verify_payload("{\"sub\":\"u1\",\"roles\":{\"admin\":true}}", &opts_now),
                     AUTH_E_CLAIMS);
    assert_int_equal(verify_payload("{\"sub\":\"u1\",\"roles\":[1]}", &opts_now), AUTH_E_CLAIMS);
    /* info may be any JSON value. */
    assert_int_equal(verify_payload("{\"sub\":\"u1\",\"info\":[1,\"x\",null]}", &opts_now),
                     AUTH_OK);
    assert_int_equal(verify_payload("{\"sub\":\"u1\",\"info\":\"text\"}", &opts_now), AUTH_OK);
    /* Unknown claims are ignored. */
    assert_int_equal(verify_payload("{\"sub\":\"u1\",\"jti\":5,\"x\":{}}", &opts_now), AUTH_OK);
}

static void test_subscription_token(void **state) {
    (void)state;
    auth_keyring_t *kr = test_keyring();
    char *tok = sign_raw(hs256_header,
                         "{\"sub\":\"u1\",\"channel\":\"chat:secret\",\"exp\":1700000060,"
                         "\"info\":{\"role\":\"mod\"}}",
                         SECRET);
    size_t n = strlen(tok);
    auth_claims_t c;
    assert_int_equal(auth_verify_subscription(kr, tok, n, &opts_now, "u1", "chat:secret", &c),
                     AUTH_OK);
    assert_string_equal(c.channel, "chat:secret");
    assert_string_equal(json_string_value(json_object_get(c.info, "role")), "mod");
    auth_claims_clear(&c);
    assert_int_equal(auth_verify_subscription(kr, tok, n, &opts_now, "u2", "chat:secret", &c),
                     AUTH_E_CLAIMS);
    assert_null(c.sub);
    assert_int_equal(auth_verify_subscription(kr, tok, n, &opts_now, "u1", "chat:other", &c),
                     AUTH_E_CLAIMS);
    assert_int_equal(auth_verify_subscription(kr, tok, n, &opts_now, "u1", "chat:secre", &c),
                     AUTH_E_CLAIMS);
    assert_int_equal(auth_verify_subscription(kr, tok, n, &opts_now, NULL, "chat:secret", &c),
                     AUTH_E_CLAIMS);
    /* The usual checks still apply first. */
    auth_verify_opts_t late = {.now_s = NOW + 61};
    assert_int_equal(auth_verify_subscription(kr, tok, n, &late, "u1", "chat:secret", &c),
                     AUTH_E_EXPIRED);
    free(tok);

    /* A connection token (no channel claim) is not a subscription token. */
    tok = sign_raw(hs256_header, "{\"sub\":\"u1\"}", SECRET);
    assert_int_equal(
        auth_verify_subscription(kr, tok, strlen(tok), &opts_now, "u1", "chat:secret", &c),
        AUTH_E_CLAIMS);
    free(tok);
    tok = sign_raw(hs256_header, "{\"channel\":\"chat:secret\"}", SECRET);
    assert_int_equal(
        auth_verify_subscription(kr, tok, strlen(tok), &opts_now, "u1", "chat:secret", &c),
        AUTH_E_CLAIMS);
    free(tok);
    auth_keyring_free(kr);
}

static void test_connection_without_sub(void **state) {
    (void)state;
    auth_keyring_t *kr = test_keyring();
    auth_claims_t c;
    const char *payloads[] = {"{\"exp\":1700000060}", "{\"sub\":\"\"}", "{\"sub\":null}"};
    const int plain[] = {AUTH_OK, AUTH_OK, AUTH_E_CLAIMS};
    for (size_t i = 0; i < 3; i++) {
        char *tok = sign_raw(hs256_header, payloads[i], SECRET);
        assert_int_equal(auth_verify_connection(kr, tok, strlen(tok), &opts_now, &c),
                         AUTH_E_CLAIMS);
        assert_null(c.payload);
        assert_int_equal(auth_jwt_verify(kr, tok, strlen(tok), &opts_now, &c), plain[i]);
        auth_claims_clear(&c);
        free(tok);
    }
    auth_keyring_free(kr);
}

static void test_plans(void **state) {
    (void)state;
    assert_int_equal(auth_plan_parse("free"), AUTH_PLAN_FREE);
    assert_int_equal(auth_plan_parse("plus"), AUTH_PLAN_PLUS);
    assert_int_equal(auth_plan_parse("pro"), AUTH_PLAN_PRO);
    assert_int_equal(auth_plan_parse("executive"), AUTH_PLAN_EXECUTIVE);
    assert_int_equal(auth_plan_parse("Pro"), -1);
    assert_int_equal(auth_plan_parse(""), -1);
    assert_int_equal(auth_plan_parse(NULL), -1);
    for (int p = 0; p < AUTH_PLAN_COUNT; p++)
        assert_int_equal(auth_plan_parse(auth_plan_name((auth_plan_t)p)), p);

    auth_keyring_t *kr = test_keyring();
    auth_claims_t c;
    char *tok = sign_raw(hs256_header, "{\"sub\":\"u1\",\"plan\":\"executive\"}", SECRET);
    assert_int_equal(auth_verify_connection(kr, tok, strlen(tok), &opts_now, &c), AUTH_OK);
    assert_int_equal(c.plan, AUTH_PLAN_EXECUTIVE);
    auth_claims_clear(&c);
    free(tok);

    const char *bad[] = {"{\"sub\":\"u1\",\"plan\":\"gold\"}", "{\"sub\":\"u1\",\"plan\":1}",
                         "{\"sub\":\"u1\",\"plan\":\"\"}", "{\"sub\":\"u1\",\"plan\":null}"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        tok = sign_raw(hs256_header, bad[i], SECRET);
        assert_int_equal(auth_verify_connection(kr, tok, strlen(tok), &opts_now, &c),
                         AUTH_E_CLAIMS);
        assert_int_equal(auth_jwt_verify(kr, tok, strlen(tok), &opts_now, &c), AUTH_E_CLAIMS);
        free(tok);
    }
    auth_keyring_free(kr);
}

static void test_user_limited(void **state) {
    (void)state;
    assert_int_equal(auth_user_limited_allows("chat:room", "u1"), -1);
    assert_int_equal(auth_user_limited_allows("personal:#u1", "u1"), 1);
    assert_int_equal(auth_user_limited_allows("personal:#u1", "u2"), 0);
    assert_int_equal(auth_user_limited_allows("dm:#u1,u2", "u1"), 1);
    assert_int_equal(auth_user_limited_allows("dm:#u1,u2", "u2"), 1);
    assert_int_equal(auth_user_limited_allows("dm:#u1,u2", "u3"), 0);
    /* Prefixes, suffixes and the separator itself never match. */
    assert_int_equal(auth_user_limited_allows("dm:#u1,u2", "u"), 0);
    assert_int_equal(auth_user_limited_allows("dm:#u1,u2", "u12"), 0);
    assert_int_equal(auth_user_limited_allows("dm:#u1,u2", "u1,u2"), 0);
    /* Empty entries and an empty user never match. */
    assert_int_equal(auth_user_limited_allows("dm:#", ""), 0);
    assert_int_equal(auth_user_limited_allows("dm:#,u1,", ""), 0);
    assert_int_equal(auth_user_limited_allows("dm:#,u1,", "u1"), 1);
    assert_int_equal(auth_user_limited_allows("dm:#u1", NULL), 0);
    /* The first '#' starts the list, and a list entry with another '#' belongs to nobody: the
     * personal channel of a user id "alice#1234" is not user 1234's. */
    assert_int_equal(auth_user_limited_allows("chat:a#u1#u2", "u2"), 0);
    assert_int_equal(auth_user_limited_allows("chat:a#u1#u2", "u1"), 0);
    assert_int_equal(auth_user_limited_allows("personal:#alice#1234", "1234"), 0);
    assert_int_equal(auth_user_limited_allows("personal:#alice#1234", "alice"), 0);
    assert_int_equal(auth_user_limited_allows("chat:a#x#u1,u2", "u2"), 1);
    assert_int_equal(auth_user_limited_allows("chat:a#x#u1,u2", "u1"), 0);
    assert_int_equal(auth_user_limited_allows("#u1", "u1"), 1);
}

static void test_mint_roundtrip(void **state) {
    (void)state;
    auth_keyring_t *kr = test_keyring();
    json_t *claims =
        json_pack("{s:s, s:I, s:s, s:[s], s:{s:s}}", "sub", "u\"1\u00e9", "exp",
                  (json_int_t)(NOW + 60), "plan", "plus", "roles", "admin", "info", "name", "Ann");
    assert_non_null(claims);
    auth_claims_t c;

    char *tok = auth_jwt_mint(kr, NULL, claims);
    assert_non_null(tok);
    assert_null(strchr(tok, '='));
    assert_int_equal(auth_verify_connection(kr, tok, strlen(tok), &opts_now, &c), AUTH_OK);
    assert_string_equal(c.sub, "u\"1\u00e9");
    assert_int_equal(c.plan, AUTH_PLAN_PLUS);
    assert_true(auth_claims_has_role(&c, "admin"));
    assert_true(json_equal(c.payload, claims));
    auth_claims_clear(&c);
    free(tok);

    /* The header names the kid, and only that kid's secret verifies it. */
    tok = auth_jwt_mint(kr, "k2", claims);
    assert_non_null(tok);
    assert_int_equal(auth_jwt_verify(kr, tok, strlen(tok), &opts_now, &c), AUTH_OK);
    auth_claims_clear(&c);
    auth_keyring_t *other = auth_keyring_new();
    assert_int_equal(auth_keyring_add(other, "k2", SECRET_K1, strlen(SECRET_K1)), 0);
    assert_int_equal(auth_jwt_verify(other, tok, strlen(tok), &opts_now, &c), AUTH_E_SIGNATURE);
    auth_keyring_free(other);
    free(tok);

    assert_null(auth_jwt_mint(kr, "k9", claims));
    json_t *arr = json_array();
    assert_null(auth_jwt_mint(kr, NULL, arr));
    json_decref(arr);
    json_decref(claims);
    auth_keyring_free(kr);
}

static void test_keyring_add(void **state) {
    (void)state;
    auth_keyring_t *kr = auth_keyring_new();
    assert_int_equal(auth_keyring_size(kr), 0);
    assert_int_equal(auth_keyring_add(kr, NULL, "s", 1), 0);
    assert_int_equal(auth_keyring_add(kr, NULL, "t", 1), AUTH_E_KID);
    assert_int_equal(auth_keyring_add(kr, "k1", "s", 1), 0);
    assert_int_equal(auth_keyring_add(kr, "k1", "t", 1), AUTH_E_KID);
    assert_int_equal(auth_keyring_add(kr, "k2", "", 0), AUTH_E_MALFORMED);
    assert_int_equal(auth_keyring_add(kr, "", "s", 1), AUTH_E_MALFORMED);
    assert_int_equal(auth_keyring_size(kr), 2);
    /* Secrets are binary: an embedded NUL is part of the key. */
    assert_int_equal(auth_keyring_add(kr, "bin", "a\0b", 3), 0);
    auth_keyring_free(kr);
    auth_keyring_free(NULL);
}

static void test_keyring_parse(void **state) {
    (void)state;
    auth_keyring_t *kr = auth_keyring_new();
    assert_int_equal(auth_keyring_parse(kr, SECRET), 0);
    assert_int_equal(auth_keyring_size(kr), 1);
    char *tok = sign_raw(hs256_header, "{\"sub\":\"u1\"}", SECRET);
    auth_claims_t c;
    assert_int_equal(auth_jwt_verify(kr, tok, strlen(tok), &opts_now, &c), AUTH_OK);
    auth_claims_clear(&c);
    free(tok);
    /* A second default is refused and changes nothing. */
    assert_int_equal(auth_keyring_parse(kr, "another"), AUTH_E_MALFORMED);
    assert_int_equal(auth_keyring_size(kr), 1);
    auth_keyring_free(kr);

    /* Without ':' the whole value, commas included, is one secret. */
    kr = auth_keyring_new();
    assert_int_equal(auth_keyring_parse(kr, "a,b"), 0);
    assert_int_equal(auth_keyring_size(kr), 1);
    auth_keyring_free(kr);

    /* Two kids plus the first pair's secret as the default. */
    kr = auth_keyring_new();
    assert_int_equal(auth_keyring_parse(kr, "k1:" SECRET_K1 ",k2:" SECRET_K2), 0);
    assert_int_equal(auth_keyring_size(kr), 3);
    const char *cases[][2] = {
        {"{\"alg\":\"HS256\",\"kid\":\"k1\"}", SECRET_K1},
        {"{\"alg\":\"HS256\",\"kid\":\"k2\"}", SECRET_K2},
        {"{\"alg\":\"HS256\"}", SECRET_K1},
    };
    for (size_t i = 0; i < 3; i++) {
        tok = sign_raw(cases[i][0], "{\"sub\":\"u1\"}", cases[i][1]);
        assert_int_equal(auth_jwt_verify(kr, tok, strlen(tok), &opts_now, &c), AUTH_OK);
        auth_claims_clear(&c);
        free(tok);
    }
    tok = sign_raw(hs256_header, "{\"sub\":\"u1\"}", SECRET_K2);
    assert_int_equal(auth_jwt_verify(kr, tok, strlen(tok), &opts_now, &c), AUTH_E_SIGNATURE);
    free(tok);
    /* A kid already present is refused and the keyring stays as it was. */
    assert_int_equal(auth_keyring_parse(kr, "k3:x,k1:y"), AUTH_E_MALFORMED);
    assert_int_equal(auth_keyring_size(kr), 3);
    auth_keyring_free(kr);

    /* A pair splits at its first ':', so the secret may contain ':'. */
    kr = auth_keyring_new();
    assert_int_equal(auth_keyring_parse(kr, "k1:a:b"), 0);
    tok = sign_raw("{\"alg\":\"HS256\",\"kid\":\"k1\"}", "{\"sub\":\"u1\"}", "a:b");
    assert_int_equal(auth_jwt_verify(kr, tok, strlen(tok), &opts_now, &c), AUTH_OK);
    auth_claims_clear(&c);
    free(tok);
    auth_keyring_free(kr);

    const char *bad[] = {"",       ":s",      "k1:",      "k1:s,",     ",k1:s",     "k1:s,,k2:t",
                         "k1:s,x", "k1:s,:t", "k1:s,k2:", "k1:s,k1:t", "k1:s,k2:t,"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        kr = auth_keyring_new();
        assert_int_equal(auth_keyring_parse(kr, bad[i]), AUTH_E_MALFORMED);
        assert_int_equal(auth_keyring_size(kr), 0);
        auth_keyring_free(kr);
    }
    kr = auth_keyring_new();
    assert_int_equal(auth_keyring_parse(kr, NULL), AUTH_E_MALFORMED);
    auth_keyring_free(kr);
}

static void test_strerror(void **state) {
    (void)state;
    const int codes[] = {AUTH_E_MALFORMED, AUTH_E_ALG,      AUTH_E_KID,      AUTH_E_SIGNATURE,
                         AUTH_E_EXPIRED,   AUTH_E_NOT_YET,  AUTH_E_AUDIENCE, AUTH_E_ISSUER,
                         AUTH_E_CLAIMS,    AUTH_E_TOO_LARGE};
    for (size_t i = 0; i < sizeof(codes) / sizeof(codes[0]); i++) {
        assert_non_null(auth_strerror(codes[i]));
        assert_string_not_equal(auth_strerror(codes[i]), auth_strerror(12345));
    }
    assert_string_equal(auth_strerror(AUTH_OK), "ok");
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_valid_token),
        cmocka_unit_test(test_minimal_token_defaults),
        cmocka_unit_test(test_expired),
        cmocka_unit_test(test_expired_within_leeway),
        cmocka_unit_test(test_not_yet_valid),
        cmocka_unit_test(test_time_claim_types),
        cmocka_unit_test(test_alg_none),
        cmocka_unit_test(test_alg_rs256),
        cmocka_unit_test(test_alg_missing),
        cmocka_unit_test(test_header_extras),
        cmocka_unit_test(test_tampered_header),
        cmocka_unit_test(test_tampered_payload),
        cmocka_unit_test(test_tampered_signature),
        cmocka_unit_test(test_signature_wrong_length),
        cmocka_unit_test(test_audience),
        cmocka_unit_test(test_audience_array),
        cmocka_unit_test(test_issuer),
        cmocka_unit_test(test_kid_rotation),
        cmocka_unit_test(test_oversized_token),
        cmocka_unit_test(test_garbage_tokens),
        cmocka_unit_test(test_claim_types),
        cmocka_unit_test(test_subscription_token),
        cmocka_unit_test(test_connection_without_sub),
        cmocka_unit_test(test_plans),
        cmocka_unit_test(test_user_limited),
        cmocka_unit_test(test_mint_roundtrip),
        cmocka_unit_test(test_keyring_add),
        cmocka_unit_test(test_keyring_parse),
        cmocka_unit_test(test_strerror),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
