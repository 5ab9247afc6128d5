/* auth: HS256 JWT verification and minting (PROTOCOL.md section 2), key rotation by `kid`, and
 * channel permission helpers. Depends on OpenSSL (HMAC) and jansson only. */
#ifndef AUTH_AUTH_H
#define AUTH_AUTH_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Tokens longer than this are rejected before any decoding (AUTH_E_TOO_LARGE). */
#define AUTH_MAX_TOKEN_BYTES 8192

enum {
    AUTH_OK = 0,
    AUTH_E_MALFORMED = -20001, /* not three base64url parts, bad base64, bad JSON, wrong types */
    AUTH_E_ALG = -20002,       /* alg missing or not HS256 (none, RS256, ...) */
    AUTH_E_KID = -20003,       /* kid names no configured secret */
    AUTH_E_SIGNATURE = -20004, /* HMAC mismatch */
    AUTH_E_EXPIRED = -20005,   /* exp + leeway is in the past */
    AUTH_E_NOT_YET = -20006,   /* nbf - leeway is in the future */
    AUTH_E_AUDIENCE = -20007,  /* aud configured and not matched */
    AUTH_E_ISSUER = -20008,    /* iss configured and not matched */
    AUTH_E_CLAIMS = -20009,    /* a required claim is missing or has the wrong type */
    AUTH_E_TOO_LARGE = -20010, /* token over AUTH_MAX_TOKEN_BYTES */
};

/* Text for an AUTH_E_* code. */
const char *auth_strerror(int err);

/* A set of HS256 secrets. A secret with a NULL kid is the default, used for tokens without a
 * `kid` header. Tokens with a `kid` use only the secret of that kid. */
typedef struct auth_keyring auth_keyring_t;

auth_keyring_t *auth_keyring_new(void);
void auth_keyring_free(auth_keyring_t *kr);
/* Adds a secret (copied). Returns 0, or CORE_EEXIST-like AUTH_E_KID if the kid is taken. */
int auth_keyring_add(auth_keyring_t *kr, const char *kid, const void *secret, size_t len);
/* Parses the CHAT_JWT_SECRET syntax: either one secret, or `kid:secret,kid:secret`. A value
 * without ':' is one default secret. Returns 0 or AUTH_E_MALFORMED (empty kid or secret). */
int auth_keyring_parse(auth_keyring_t *kr, const char *spec);
size_t auth_keyring_size(const auth_keyring_t *kr);

typedef struct {
    const char *audience; /* checked when non-NULL: `aud` string equal, or array containing it */
    const char *issuer;   /* checked when non-NULL: `iss` equal */
    int64_t leeway_s;     /* clock skew allowance for exp and nbf */
    int64_t now_s;        /* current time in Unix seconds (0 = use the wall clock) */
} auth_verify_opts_t;

typedef enum { AUTH_PLAN_FREE = 0, AUTH_PLAN_PLUS, AUTH_PLAN_PRO, AUTH_PLAN_EXECUTIVE } auth_plan_t;
#define AUTH_PLAN_COUNT 4
/* "free", "plus", "pro", "executive". */
const char *auth_plan_name(auth_plan_t p);
/* Returns the plan for a name, or -1. */
int auth_plan_parse(const char *name);

/* Verified claims. All pointers are owned by the struct and freed by auth_claims_clear. */
typedef struct {
    char *sub; /* non-empty for connection tokens (checked by auth_verify_connection) */
    bool has_exp;
    int64_t exp;      /* Unix seconds; valid when has_exp */
    int64_t iat;      /* 0 when absent */
    json_t *info;     /* `info` claim (any JSON) or NULL */
    json_t *channels; /* `channels` claim: array of strings, or NULL */
    json_t *roles;    /* `roles` claim: array of strings, or NULL */
    auth_plan_t plan; /* `plan` claim; AUTH_PLAN_FREE when absent */
    char *channel;    /* `channel` claim (subscription tokens), or NULL */
    json_t *payload;  /* the whole decoded payload */
} auth_claims_t;

/* Verifies a token's structure, header (alg pinned to HS256, optional kid), signature (constant
 * time), exp/nbf with leeway, aud/iss when configured, and the types of the known claims.
 * On success fills *out (which the caller clears with auth_claims_clear) and returns 0; on
 * failure returns an AUTH_E_* code and leaves *out zeroed. */
int auth_jwt_verify(const auth_keyring_t *kr, const char *token, size_t len,
                    const auth_verify_opts_t *opts, auth_claims_t *out);

/* auth_jwt_verify plus: `sub` present and non-empty (AUTH_E_CLAIMS otherwise), `plan` one of the
 * known names (AUTH_E_CLAIMS otherwise). */
int auth_verify_connection(const auth_keyring_t *kr, const char *token, size_t len,
                           const auth_verify_opts_t *opts, auth_claims_t *out);

/* auth_jwt_verify plus: `sub` equals user and `channel` equals channel (AUTH_E_CLAIMS
 * otherwise). */
int auth_verify_subscription(const auth_keyring_t *kr, const char *token, size_t len,
                             const auth_verify_opts_t *opts, const char *user, const char *channel,
                             auth_claims_t *out);

void auth_claims_clear(auth_claims_t *c);

/* Returns true if the claims' `roles` contains role. */
bool auth_claims_has_role(const auth_claims_t *c, const char *role);

/* Signs claims (a JSON object, not stolen) with the secret of kid (NULL = the default secret)
 * and returns a malloc'd compact JWT, or NULL if the kid is unknown. */
char *auth_jwt_mint(const auth_keyring_t *kr, const char *kid, const json_t *claims);

/* User-limited channels: a channel whose name contains '#' lists, after its first '#', the user
 * ids allowed to subscribe, separated by ','. Entries are compared whole, so an entry with a
 * '#' (or a user id with '#' or ',') never matches. Returns 1 if the channel is user-limited and
 * user is listed, 0 if it is user-limited and user is not listed, -1 if it is not user-limited. */
int auth_user_limited_allows(const char *channel, const char *user);

#endif
