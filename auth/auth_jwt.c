/* auth: HS256 JWT verification and minting, the keyring, plans and user-limited channels. */
#include "auth/auth.h"

#include "core/core.h"

#include <assert.h>
#include <limits.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <string.h>

#define AUTH_HS256_LEN 32

/* ---- error text ---------------------------------------------------------------------------- */

const char *auth_strerror(int err) {
    switch (err) {
    case AUTH_OK:
        return "ok";
    case AUTH_E_MALFORMED:
        return "malformed token";
    case AUTH_E_ALG:
        return "unsupported token algorithm";
    case AUTH_E_KID:
        return "unknown token key id";
    case AUTH_E_SIGNATURE:
        return "invalid token signature";
    case AUTH_E_EXPIRED:
        return "token expired";
    case AUTH_E_NOT_YET:
        return "token not yet valid";
    case AUTH_E_AUDIENCE:
        return "token audience mismatch";
    case AUTH_E_ISSUER:
        return "token issuer mismatch";
    case AUTH_E_CLAIMS:
        return "invalid token claims";
    case AUTH_E_TOO_LARGE:
        return "token too large";
    default:
        return "unknown auth error";
    }
}

/* ---- keyring ------------------------------------------------------------------------------- */

typedef struct {
    char *kid; /* NULL for the default secret */
    unsigned char *secret;
    size_t len;
} auth_key_t;

/* A handful of secrets at most (rotation keeps two or three alive), so a linear array is both
 * the simplest and the fastest structure. */
struct auth_keyring {
    auth_key_t *keys;
    size_t n;
    size_t cap;
};

auth_keyring_t *auth_keyring_new(void) {
    return core_calloc(1, sizeof(auth_keyring_t));
}

void auth_keyring_free(auth_keyring_t *kr) {
    if (!kr)
        return;
    for (size_t i = 0; i < kr->n; i++) {
        /* Wipe secrets so they do not linger in freed heap memory (core dumps, reuse). */
        OPENSSL_cleanse(kr->keys[i].secret, kr->keys[i].len);
        free(kr->keys[i].secret);
        free(kr->keys[i].kid);
    }
    free(kr->keys);
    free(kr);
}

static const auth_key_t *keyring_find(const auth_keyring_t *kr, const char *kid) {
    for (size_t i = 0; i < kr->n; i++) {
        const auth_key_t *k = &kr->keys[i];
        if (kid == NULL ? k->kid == NULL : (k->kid != NULL && strcmp(k->kid, kid) == 0))
            return k;
    }
    return NULL;
}

/* Beyond the header's contract, an empty kid, an empty secret or a secret longer than HMAC()
 * accepts is refused with AUTH_E_MALFORMED: an empty HMAC key lets anyone mint valid tokens, and
 * an empty kid is indistinguishable from a configuration typo. */
int auth_keyring_add(auth_keyring_t *kr, const char *kid, const void *secret, size_t len) {
    assert(kr != NULL);
    if (secret == NULL || len == 0 || len > INT_MAX || (kid != NULL && kid[0] == '\0'))
        return AUTH_E_MALFORMED;
    if (keyring_find(kr, kid) != NULL)
        return AUTH_E_KID;
    if (kr->n == kr->cap) {
        kr->cap = kr->cap ? kr->cap * 2 : 4;
        kr->keys = core_realloc(kr->keys, kr->cap * sizeof(auth_key_t));
    }
    auth_key_t *k = &kr->keys[kr->n++];
    k->kid = kid ? core_strdup(kid) : NULL;
    k->secret = core_malloc(len);
    memcpy(k->secret, secret, len);
    k->len = len;
    return 0;
}

/* Syntax: a spec without ':' is one default secret (and may contain ','). A spec with ':' is a
 * ','-separated list of `kid:secret` pairs, each split at its first ':' (so a secret may contain
 * ':' but not ','); the first pair's secret is also installed as the default secret, so tokens
 * without a kid header keep verifying during a rotation. An empty spec, an empty pair, a pair
 * without ':', an empty kid or secret, a kid repeated within the spec, and a kid (or default)
 * the keyring already holds all give AUTH_E_MALFORMED, and leave the keyring unchanged: the
 * spec is staged in a scratch keyring first so a bad value never half-applies. */
int auth_keyring_parse(auth_keyring_t *kr, const char *spec) {
    assert(kr != NULL);
    if (spec == NULL || spec[0] == '\0')
        return AUTH_E_MALFORMED;
    if (strchr(spec, ':') == NULL) {
        if (keyring_find(kr, NULL) != NULL)
            return AUTH_E_MALFORMED;
        return auth_keyring_add(kr, NULL, spec, strlen(spec));
    }

    auth_keyring_t *tmp = auth_keyring_new();
    char *copy = core_strdup(spec);
    int rc = 0;
    char *p = copy;
    for (;;) {
        char *comma = strchr(p, ',');
        if (comma)
            *comma = '\0';
        char *colon = strchr(p, ':');
        if (colon == NULL || colon == p || colon[1] == '\0') {
            rc = AUTH_E_MALFORMED;
            break;
        }
        *colon = '\0';
        const char *secret = colon + 1;
        if (tmp->n == 0 && auth_keyring_add(tmp, NULL, secret, strlen(secret)) != 0) {
            rc = AUTH_E_MALFORMED;
            break;
        }
        if (auth_keyring_add(tmp, p, secret, strlen(secret)) != 0) {
            rc = AUTH_E_MALFORMED;
            break;
        }
        if (!comma)
            break;
        p = comma + 1;
    }
    for (size_t i = 0; rc == 0 && i < tmp->n; i++)
        if (keyring_find(kr, tmp->keys[i].kid) != NULL)
            rc = AUTH_E_MALFORMED;
    for (size_t i = 0; rc == 0 && i < tmp->n; i++) {
        rc = auth_keyring_add(kr, tmp->keys[i].kid, tmp->keys[i].secret, tmp->keys[i].len);
        assert(rc == 0); /* Conflicts were ruled out above. */
    }
    OPENSSL_cleanse(copy, strlen(spec));
    free(copy);
    auth_keyring_free(tmp);
    return rc;
}

/* Counts entries, the default secret included: "k1:s1,k2:s2" gives 3 (k1, k2 and the default
 * copy of s1), a plain "secret" gives 1. */
size_t auth_keyring_size(const auth_keyring_t *kr) {
    return kr ? kr->n : 0;
}

/* ---- plans --------------------------------------------------------------------------------- */

static const char *const plan_names[AUTH_PLAN_COUNT] = {"free", "plus", "pro", "executive"};

const char *auth_plan_name(auth_plan_t p) {
    if ((unsigned)p >= AUTH_PLAN_COUNT)
        return "unknown";
    return plan_names[p];
}

int auth_plan_parse(const char *name) {
    if (name == NULL)
        return -1;
    for (int i = 0; i < AUTH_PLAN_COUNT; i++)
        if (strcmp(name, plan_names[i]) == 0)
            return i;
    return -1;
}

/* ---- base64url ----------------------------------------------------------------------------- */

static int b64url_value(unsigned char c) {
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '-')
        return 62;
    if (c == '_')
        return 63;
    return -1;
}

/* Decodes unpadded base64url (RFC 7515 section 2). '=' is refused like any other character
 * outside the alphabet, as are a length of 1 mod 4 and non-zero unused bits in the last
 * character: every byte string then has exactly one accepted encoding, so a token cannot be
 * altered into a second string that still verifies. On success *out is a malloc'd buffer with
 * *out_len bytes plus a NUL that is not counted. */
static int b64url_decode(const char *in, size_t n, unsigned char **out, size_t *out_len) {
    if (n % 4 == 1)
        return AUTH_E_MALFORMED;
    size_t len = n / 4 * 3 + (n % 4 ? n % 4 - 1 : 0);
    unsigned char *buf = core_malloc(len + 1);
    size_t o = 0;
    uint32_t acc = 0;
    size_t i;
    for (i = 0; i < n; i++) {
        int v = b64url_value((unsigned char)in[i]);
        if (v < 0) {
            free(buf);
            return AUTH_E_MALFORMED;
        }
        acc = (acc << 6) | (uint32_t)v;
        if (i % 4 == 3) {
            buf[o++] = (unsigned char)(acc >> 16);
            buf[o++] = (unsigned char)(acc >> 8);
            buf[o++] = (unsigned char)acc;
            acc = 0;
        }
    }
    switch (n % 4) {
    case 2: /* 12 bits carry one byte; the low 4 must be zero. */
        if (acc & 0xf)
            goto bad;
        buf[o++] = (unsigned char)(acc >> 4);
        break;
    case 3: /* 18 bits carry two bytes; the low 2 must be zero. */
        if (acc & 0x3)
            goto bad;
        buf[o++] = (unsigned char)(acc >> 10);
        buf[o++] = (unsigned char)(acc >> 2);
        break;
    default:
        break;
    }
    assert(o == len);
    buf[len] = '\0';
    *out = buf;
    *out_len = len;
    return 0;
bad:
    free(buf);
    return AUTH_E_MALFORMED;
}

static void b64url_encode(core_str_t *s, const unsigned char *in, size_t n) {
    static const char alphabet[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    char quad[4];
    core_str_reserve(s, (n + 2) / 3 * 4);
    size_t i = 0;
    for (; i + 3 <= n; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
        quad[0] = alphabet[v >> 18];
        quad[1] = alphabet[(v >> 12) & 63];
        quad[2] = alphabet[(v >> 6) & 63];
        quad[3] = alphabet[v & 63];
        core_str_append(s, quad, 4);
    }
    if (n - i == 1) {
        uint32_t v = (uint32_t)in[i] << 16;
        quad[0] = alphabet[v >> 18];
        quad[1] = alphabet[(v >> 12) & 63];
        core_str_append(s, quad, 2);
    } else if (n - i == 2) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8;
        quad[0] = alphabet[v >> 18];
        quad[1] = alphabet[(v >> 12) & 63];
        quad[2] = alphabet[(v >> 6) & 63];
        core_str_append(s, quad, 3);
    }
}

/* ---- HMAC ---------------------------------------------------------------------------------- */

static bool hs256(const auth_key_t *k, const void *data, size_t n,
                  unsigned char mac[AUTH_HS256_LEN]) {
    unsigned int mac_len = 0;
    /* The one-shot HMAC() is not deprecated in OpenSSL 3 and needs no context allocation. */
    if (HMAC(EVP_sha256(), k->secret, (int)k->len, data, n, mac, &mac_len) == NULL ||
        mac_len != AUTH_HS256_LEN) {
        CORE_LOGE("auth", "HMAC-SHA256 failed", NULL);
        return false;
    }
    return true;
}

/* ---- verification -------------------------------------------------------------------------- */

static bool json_string_is(const json_t *v, const char *s) {
    size_t n = strlen(s);
    /* Comparing lengths too keeps a string with an embedded NUL from matching its prefix. */
    return json_is_string(v) && json_string_length(v) == n &&
           memcmp(json_string_value(v), s, n) == 0;
}

static bool json_is_string_array(const json_t *v) {
    if (!json_is_array(v))
        return false;
    size_t i;
    json_t *e;
    json_array_foreach(v, i, e) {
        if (!json_is_string(e))
            return false;
    }
    return true;
}

/* Reads a NumericDate claim. Integers are taken as is; reals are truncated toward zero when they
 * fit int64_t (NaN and out-of-range values are refused rather than cast, which would be
 * undefined behaviour). Returns 1 if present, 0 if absent, AUTH_E_CLAIMS for a wrong type. */
static int claim_time(const json_t *payload, const char *name, int64_t *out) {
    const json_t *v = json_object_get(payload, name);
    if (v == NULL)
        return 0;
    if (json_is_integer(v)) {
        *out = (int64_t)json_integer_value(v);
        return 1;
    }
    if (json_is_real(v)) {
        double d = json_real_value(v);
        if (!(d >= -9223372036854775808.0 && d < 9223372036854775808.0))
            return AUTH_E_CLAIMS;
        *out = (int64_t)d;
        return 1;
    }
    return AUTH_E_CLAIMS;
}

static int64_t sat_add(int64_t a, int64_t b) {
    int64_t r;
    if (__builtin_add_overflow(a, b, &r))
        return b > 0 ? INT64_MAX : INT64_MIN;
    return r;
}

static json_t *load_object(const unsigned char *buf, size_t n) {
    /* Duplicate keys are refused: two `alg` or `sub` members could be read differently by
     * another JWT library looking at the same token. */
    json_t *v = json_loadb((const char *)buf, n, JSON_REJECT_DUPLICATES, NULL);
    if (v != NULL && !json_is_object(v)) {
        json_decref(v);
        return NULL;
    }
    return v;
}

/* Checks the header and returns the key it selects. */
static int check_header(const auth_keyring_t *kr, const json_t *header, const auth_key_t **key) {
    /* The algorithm is pinned: accepting anything the token names is the classic `none` and
     * RS256/HS256 confusion hole. The comparison is exact and case-sensitive. */
    if (!json_string_is(json_object_get(header, "alg"), "HS256"))
        return AUTH_E_ALG;
    /* RFC 7515 section 4.1.11: a recipient that does not understand a critical extension must
     * refuse the token. This implementation understands none. */
    if (json_object_get(header, "crit") != NULL)
        return AUTH_E_MALFORMED;
    const json_t *kid = json_object_get(header, "kid");
    const char *kid_s = NULL;
    if (kid != NULL) {
        if (!json_is_string(kid) || strlen(json_string_value(kid)) != json_string_length(kid))
            return AUTH_E_KID;
        kid_s = json_string_value(kid);
    }
    *key = keyring_find(kr, kid_s);
    return *key ? 0 : AUTH_E_KID;
}

/* Type-checks every known claim and fills out (whose pointers it then owns); runs only after
 * the signature matched. exp and nbf are read here and judged by the caller. */
static int read_claims(json_t *p, auth_claims_t *out, int64_t *nbf, bool *has_nbf) {
    json_t *v;
    int rc;

    if ((rc = claim_time(p, "exp", &out->exp)) < 0)
        return rc;
    out->has_exp = rc == 1;
    if ((rc = claim_time(p, "nbf", nbf)) < 0)
        return rc;
    *has_nbf = rc == 1;
    if ((rc = claim_time(p, "iat", &out->iat)) < 0)
        return rc;

    v = json_object_get(p, "aud");
    if (v != NULL && !json_is_string(v) && !json_is_string_array(v))
        return AUTH_E_CLAIMS;
    v = json_object_get(p, "iss");
    if (v != NULL && !json_is_string(v))
        return AUTH_E_CLAIMS;

    v = json_object_get(p, "sub");
    if (v != NULL) {
        if (!json_is_string(v))
            return AUTH_E_CLAIMS;
        out->sub = core_strndup(json_string_value(v), json_string_length(v));
    }
    v = json_object_get(p, "channel");
    if (v != NULL) {
        if (!json_is_string(v))
            return AUTH_E_CLAIMS;
        out->channel = core_strndup(json_string_value(v), json_string_length(v));
    }
    v = json_object_get(p, "plan");
    if (v != NULL) {
        int plan = json_is_string(v) ? auth_plan_parse(json_string_value(v)) : -1;
        if (plan < 0)
            return AUTH_E_CLAIMS;
        out->plan = (auth_plan_t)plan;
    }
    v = json_object_get(p, "channels");
    if (v != NULL) {
        if (!json_is_string_array(v))
            return AUTH_E_CLAIMS;
        out->channels = json_incref(v);
    }
    v = json_object_get(p, "roles");
    if (v != NULL) {
        if (!json_is_string_array(v))
            return AUTH_E_CLAIMS;
        out->roles = json_incref(v);
    }
    v = json_object_get(p, "info");
    if (v != NULL)
        out->info = json_incref(v);
    out->payload = json_incref(p);
    return 0;
}

static bool audience_matches(const json_t *aud, const char *want) {
    if (json_is_string(aud))
        return json_string_is(aud, want);
    size_t i;
    json_t *e;
    json_array_foreach(aud, i, e) {
        if (json_string_is(e, want))
            return true;
    }
    return false;
}

/* Time rules, with leeway L >= 0 (a negative leeway counts as 0) and sums saturating at the
 * int64_t limits instead of overflowing:
 *  - expired when now > exp + L, so a token stays valid through the whole second exp + L
 *    (exp == now is valid even with L == 0; RFC 7519 would already reject it, we allow the one
 *    second of grace so a token minted with exp = now is usable by a client on the same clock);
 *  - not yet valid when now < nbf - L, so nbf == now is valid. */
static int check_time(const auth_claims_t *c, bool has_nbf, int64_t nbf,
                      const auth_verify_opts_t *opts) {
    int64_t leeway = opts && opts->leeway_s > 0 ? opts->leeway_s : 0;
    int64_t now = opts && opts->now_s != 0 ? opts->now_s : core_wall_s();
    if (c->has_exp && now > sat_add(c->exp, leeway))
        return AUTH_E_EXPIRED;
    if (has_nbf && now < sat_add(nbf, -leeway))
        return AUTH_E_NOT_YET;
    return 0;
}

/* Order of checks: size, shape and base64 of all three parts, header JSON, alg, kid, signature,
 * and only then the payload: nothing in the payload is parsed before its signature matched, so
 * an attacker without the key can only reach the small header parser and the base64 decoder. */
int auth_jwt_verify(const auth_keyring_t *kr, const char *token, size_t len,
                    const auth_verify_opts_t *opts, auth_claims_t *out) {
    assert(kr != NULL && out != NULL);
    memset(out, 0, sizeof(*out));
    if (len > AUTH_MAX_TOKEN_BYTES)
        return AUTH_E_TOO_LARGE;
    if (token == NULL)
        return AUTH_E_MALFORMED;

    const char *dot1 = memchr(token, '.', len);
    if (dot1 == NULL)
        return AUTH_E_MALFORMED;
    const char *dot2 = memchr(dot1 + 1, '.', len - (size_t)(dot1 + 1 - token));
    if (dot2 == NULL)
        return AUTH_E_MALFORMED;
    const char *end = token + len;
    if (memchr(dot2 + 1, '.', (size_t)(end - (dot2 + 1))) != NULL)
        return AUTH_E_MALFORMED;

    unsigned char *hdr_raw = NULL, *pl_raw = NULL, *sig = NULL;
    size_t hdr_len = 0, pl_len = 0, sig_len = 0;
    json_t *header = NULL, *payload = NULL;
    const auth_key_t *key = NULL;
    unsigned char mac[AUTH_HS256_LEN];
    int64_t nbf = 0;
    bool has_nbf = false;
    int rc;

    if ((rc = b64url_decode(token, (size_t)(dot1 - token), &hdr_raw, &hdr_len)) != 0 ||
        (rc = b64url_decode(dot1 + 1, (size_t)(dot2 - dot1 - 1), &pl_raw, &pl_len)) != 0 ||
        (rc = b64url_decode(dot2 + 1, (size_t)(end - dot2 - 1), &sig, &sig_len)) != 0)
        goto done;

    if ((header = load_object(hdr_raw, hdr_len)) == NULL) {
        rc = AUTH_E_MALFORMED;
        goto done;
    }
    if ((rc = check_header(kr, header, &key)) != 0)
        goto done;

    /* The length of a signature is public, so refusing a wrong length early leaks nothing; the
     * comparison of the bytes themselves is constant time. */
    if (sig_len != AUTH_HS256_LEN || !hs256(key, token, (size_t)(dot2 - token), mac) ||
        CRYPTO_memcmp(mac, sig, AUTH_HS256_LEN) != 0) {
        rc = AUTH_E_SIGNATURE;
        goto done;
    }

    if ((payload = load_object(pl_raw, pl_len)) == NULL) {
        rc = AUTH_E_MALFORMED;
        goto done;
    }
    if ((rc = read_claims(payload, out, &nbf, &has_nbf)) != 0 ||
        (rc = check_time(out, has_nbf, nbf, opts)) != 0)
        goto done;
    if (opts && opts->audience) {
        const json_t *aud = json_object_get(payload, "aud");
        if (aud == NULL || !audience_matches(aud, opts->audience)) {
            rc = AUTH_E_AUDIENCE;
            goto done;
        }
    }
    if (opts && opts->issuer && !json_string_is(json_object_get(payload, "iss"), opts->issuer)) {
        rc = AUTH_E_ISSUER;
        goto done;
    }

done:
    if (rc != 0)
        auth_claims_clear(out);
    json_decref(header);
    json_decref(payload);
    free(hdr_raw);
    free(pl_raw);
    free(sig);
    return rc;
}

int auth_verify_connection(const auth_keyring_t *kr, const char *token, size_t len,
                           const auth_verify_opts_t *opts, auth_claims_t *out) {
    /* auth_jwt_verify already refuses an unknown plan, so only `sub` is left to check. */
    int rc = auth_jwt_verify(kr, token, len, opts, out);
    if (rc != 0)
        return rc;
    if (out->sub == NULL || out->sub[0] == '\0') {
        auth_claims_clear(out);
        return AUTH_E_CLAIMS;
    }
    return 0;
}

int auth_verify_subscription(const auth_keyring_t *kr, const char *token, size_t len,
                             const auth_verify_opts_t *opts, const char *user, const char *channel,
                             auth_claims_t *out) {
    int rc = auth_jwt_verify(kr, token, len, opts, out);
    if (rc != 0)
        return rc;
    /* A NULL or empty user or channel never matches, so a caller bug fails closed. */
    if (user == NULL || channel == NULL || user[0] == '\0' || channel[0] == '\0' ||
        out->sub == NULL || out->channel == NULL || strcmp(out->sub, user) != 0 ||
        strcmp(out->channel, channel) != 0) {
        auth_claims_clear(out);
        return AUTH_E_CLAIMS;
    }
    return 0;
}

void auth_claims_clear(auth_claims_t *c) {
    if (c == NULL)
        return;
    free(c->sub);
    free(c->channel);
    json_decref(c->info);
    json_decref(c->channels);
    json_decref(c->roles);
    json_decref(c->payload);
    memset(c, 0, sizeof(*c));
}

bool auth_claims_has_role(const auth_claims_t *c, const char *role) {
    if (c == NULL || c->roles == NULL || role == NULL)
        return false;
    size_t i;
    json_t *e;
    json_array_foreach(c->roles, i, e) {
        if (json_string_is(e, role))
            return true;
    }
    return false;
}

/* ---- minting ------------------------------------------------------------------------------- */

/* Also returns NULL when claims is not an object. */
char *auth_jwt_mint(const auth_keyring_t *kr, const char *kid, const json_t *claims) {
    assert(kr != NULL);
    const auth_key_t *key = keyring_find(kr, kid);
    if (key == NULL || !json_is_object(claims))
        return NULL;

    json_t *header = json_object();
    json_object_set_new(header, "alg", json_string("HS256"));
    json_object_set_new(header, "typ", json_string("JWT"));
    if (kid != NULL && json_object_set_new(header, "kid", json_string(kid)) != 0) {
        /* json_string() refuses a kid that is not UTF-8; such a kid cannot appear in a token. */
        json_decref(header);
        return NULL;
    }
    char *hdr = json_dumps(header, JSON_COMPACT);
    char *pl = json_dumps(claims, JSON_COMPACT);
    json_decref(header);
    if (hdr == NULL || pl == NULL) {
        free(hdr);
        free(pl);
        return NULL;
    }

    core_str_t s = {0};
    b64url_encode(&s, (const unsigned char *)hdr, strlen(hdr));
    core_str_append(&s, ".", 1);
    b64url_encode(&s, (const unsigned char *)pl, strlen(pl));
    free(hdr);
    free(pl);
    unsigned char mac[AUTH_HS256_LEN];
    if (!hs256(key, s.ptr, s.len, mac)) {
        core_str_free(&s);
        return NULL;
    }
    core_str_append(&s, ".", 1);
    b64url_encode(&s, mac, sizeof(mac));
    return s.ptr; /* core_str keeps its buffer NUL-terminated. */
}

/* ---- channel helpers ----------------------------------------------------------------------- */

int auth_user_limited_allows(const char *channel, const char *user) {
    assert(channel != NULL);
    /* The list is everything after the first '#', compared entry by entry, whole. An entry
     * that holds another '#' matches no user: user ids with '#' are refused at connect, so
     * "personal:#alice#1234" belongs to nobody rather than to user "1234". */
    const char *hash = strchr(channel, '#');
    if (hash == NULL)
        return -1;
    if (user == NULL || user[0] == '\0')
        return 0;
    size_t ulen = strlen(user);
    const char *p = hash + 1;
    for (;;) {
        const char *comma = strchr(p, ',');
        size_t n = comma ? (size_t)(comma - p) : strlen(p);
        if (n == ulen && memcmp(p, user, n) == 0)
            return 1;
        if (!comma)
            return 0;
        p = comma + 1;
    }
}
