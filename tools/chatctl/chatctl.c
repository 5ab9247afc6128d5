/* chatctl: the operator's command line for chatd nodes. Talks to a node's admin listener (the
 * server API, /metrics, the node actions) with the node's API key, and mints tokens from the
 * node's JWT secret. Human tables by default, the API's JSON with --json.
 *
 * Exit codes: 0 done; 1 the node answered with an error; 2 usage; 3 the node could not be
 * reached (or answered with something that is not the API's). */
#include <curl/curl.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "auth/auth.h"
#include "core/core.h"

enum { EXIT_API = 1, EXIT_USAGE = 2, EXIT_UNREACHABLE = 3 };

typedef struct {
    char base[320]; /* http://host:port of the admin listener */
    const char *key;
    bool json;
} ctl_t;

/* ---- HTTP ---- */

static size_t collect(char *p, size_t size, size_t n, void *ud) {
    core_str_append(ud, p, size * n);
    return size * n;
}

/* GET (body NULL) or POST base+path; the response body into out. Returns 0 with *status, or
 * EXIT_UNREACHABLE after saying why. */
static int http(const ctl_t *c, const char *base, const char *path, const char *body,
                core_str_t *out, long *status) {
    CURL *h = curl_easy_init();
    if (!h) {
        fprintf(stderr, "chatctl: cannot start libcurl\n");
        return EXIT_UNREACHABLE;
    }
    char url[512], auth[300];
    snprintf(url, sizeof url, "%s%s", base ? base : c->base, path);
    snprintf(auth, sizeof auth, "X-API-Key: %s", c->key ? c->key : "");
    struct curl_slist *hdr = curl_slist_append(NULL, auth);
    hdr = curl_slist_append(hdr, "Content-Type: application/json");
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdr);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, collect);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, out);
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, 3000L);
    curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, 10000L);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    if (body) {
        curl_easy_setopt(h, CURLOPT_POSTFIELDS, body);
        curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE, (long)strlen(body));
    }
    CURLcode rc = curl_easy_perform(h);
    if (rc == CURLE_OK)
        curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, status);
    curl_slist_free_all(hdr);
    curl_easy_cleanup(h);
    if (rc != CURLE_OK) {
        fprintf(stderr, "chatctl: %s: %s\n", url, curl_easy_strerror(rc));
        return EXIT_UNREACHABLE;
    }
    return 0;
}

/* Calls an API path and returns its "result" (new reference) in *result. Errors are printed:
 * the API's {"error":{code,message}} as "error CODE: MESSAGE" (exit 1). */
static int api(const ctl_t *c, const char *base, const char *path, json_t *params,
               json_t **result) {
    char *body = params ? json_dumps(params, JSON_COMPACT) : NULL;
    json_decref(params);
    core_str_t out = {0};
    long status = 0;
    int rc = http(c, base, path, body, &out, &status);
    free(body);
    if (rc) {
        core_str_free(&out);
        return rc;
    }
    json_error_t jerr;
    json_t *root = out.len ? json_loadb(out.ptr, out.len, 0, &jerr) : NULL;
    const json_t *err = json_object_get(root, "error");
    if (err) {
        fprintf(stderr, "chatctl: error %" JSON_INTEGER_FORMAT ": %s\n",
                json_integer_value(json_object_get(err, "code")),
                json_string_value(json_object_get(err, "message")));
        rc = EXIT_API;
    } else if (status != 200 || !json_object_get(root, "result")) {
        fprintf(stderr, "chatctl: %s answered HTTP %ld: %.*s\n", path, status,
                (int)(out.len > 200 ? 200 : out.len), out.ptr ? out.ptr : "");
        rc = EXIT_UNREACHABLE;
    } else {
        *result = json_incref(json_object_get(root, "result"));
    }
    json_decref(root);
    core_str_free(&out);
    return rc;
}

static void print_json(const json_t *v) {
    char *s = json_dumps(v, JSON_INDENT(2) | JSON_SORT_KEYS | JSON_ENCODE_ANY);
    puts(s);
    free(s);
}

static const char *jstr(const json_t *o, const char *k) {
    const char *s = json_string_value(json_object_get(o, k));
    return s ? s : "-";
}

static json_int_t jint(const json_t *o, const char *k) {
    return json_integer_value(json_object_get(o, k));
}

static bool parse_long(const char *s, long *out) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end)
        return false;
    *out = v;
    return true;
}

/* ---- commands ---- */

static int cmd_nodes(const ctl_t *c, bool summary) {
    json_t *r = NULL;
    int rc = api(c, NULL, "/api/info", NULL, &r);
    if (rc)
        return rc;
    const json_t *nodes = json_object_get(r, "nodes");
    if (c->json) {
        print_json(r);
    } else if (summary) {
        json_int_t clients = 0, ready = 0;
        size_t i;
        const json_t *n;
        json_array_foreach(nodes, i, n) {
            clients += jint(n, "num_clients");
            ready += json_is_true(json_object_get(n, "ready"));
        }
        printf("cluster: %zu node(s), %" JSON_INTEGER_FORMAT " ready, %" JSON_INTEGER_FORMAT
               " client(s)\n",
               json_array_size(nodes), ready, clients);
    }
    if (!c->json) {
        printf("%-24s %-22s %-22s %8s %8s %8s  %s\n", "NODE", "ADDRESS", "ADMIN", "CLIENTS",
               "CHANNELS", "UPTIME", "STATE");
        size_t i;
        const json_t *n;
        json_array_foreach(nodes, i, n) {
            const char *state = json_is_true(json_object_get(n, "draining")) ? "draining"
                                : json_is_true(json_object_get(n, "ready"))  ? "ready"
                                                                             : "not ready";
            printf("%-24s %-22s %-22s %8" JSON_INTEGER_FORMAT " %8" JSON_INTEGER_FORMAT
                   " %7" JSON_INTEGER_FORMAT "s  %s\n",
                   jstr(n, "name"), jstr(n, "address"), jstr(n, "admin"), jint(n, "num_clients"),
                   jint(n, "num_channels"), jint(n, "uptime"), state);
        }
    }
    json_decref(r);
    return 0;
}

static int cmd_channels(const ctl_t *c, const char *pattern) {
    json_t *r = NULL;
    int rc = api(c, NULL, "/api/channels",
                 pattern ? json_pack("{s:s}", "pattern", pattern) : json_object(), &r);
    if (rc)
        return rc;
    if (c->json) {
        print_json(r);
    } else {
        printf("%-40s %8s\n", "CHANNEL", "CLIENTS");
        const char *name;
        const json_t *v;
        json_object_foreach(json_object_get(r, "channels"), name, v)
            printf("%-40s %8" JSON_INTEGER_FORMAT "\n", name, jint(v, "num_clients"));
    }
    json_decref(r);
    return 0;
}

static int cmd_presence(const ctl_t *c, const char *channel) {
    json_t *r = NULL;
    int rc = api(c, NULL, "/api/presence", json_pack("{s:s}", "channel", channel), &r);
    if (rc)
        return rc;
    if (c->json) {
        print_json(r);
    } else {
        printf("%-36s  %s\n", "CLIENT", "USER");
        const char *id;
        const json_t *v;
        json_object_foreach(json_object_get(r, "presence"), id, v)
            printf("%-36s  %s\n", id, jstr(v, "user"));
    }
    json_decref(r);
    return 0;
}

static int cmd_history(const ctl_t *c, const char *channel, long limit, bool reverse) {
    json_t *r = NULL;
    /* The newest `limit` publications, asked newest first and shown oldest first unless
     * --reverse. */
    int rc = api(c, NULL, "/api/history",
                 json_pack("{s:s, s:I, s:b}", "channel", channel, "limit", (json_int_t)limit,
                           "reverse", true),
                 &r);
    if (rc)
        return rc;
    if (c->json) {
        print_json(r);
    } else {
        printf("epoch %s, top offset %" JSON_INTEGER_FORMAT "\n", jstr(r, "epoch"),
               jint(r, "offset"));
        printf("%8s  %-16s  %s\n", "OFFSET", "USER", "DATA");
        const json_t *pubs = json_object_get(r, "publications");
        size_t np = json_array_size(pubs);
        for (size_t i = 0; i < np; i++) {
            const json_t *p = json_array_get(pubs, reverse ? i : np - 1 - i);
            char *data = json_dumps(json_object_get(p, "data"), JSON_COMPACT | JSON_ENCODE_ANY);
            printf("%8" JSON_INTEGER_FORMAT "  %-16s  %s\n", jint(p, "offset"),
                   jstr(json_object_get(p, "info"), "user"), data ? data : "");
            free(data);
        }
    }
    json_decref(r);
    return 0;
}

static int cmd_publish(const ctl_t *c, const char *channel, const char *data) {
    json_error_t jerr;
    json_t *d = json_loads(data, JSON_DECODE_ANY, &jerr);
    if (!d) {
        fprintf(stderr, "chatctl: publish: the data is not JSON: %s\n", jerr.text);
        return EXIT_USAGE;
    }
    json_t *r = NULL;
    int rc =
        api(c, NULL, "/api/publish", json_pack("{s:s, s:o}", "channel", channel, "data", d), &r);
    if (rc)
        return rc;
    if (c->json)
        print_json(r);
    else if (json_object_get(r, "offset"))
        printf("published at offset %" JSON_INTEGER_FORMAT " (epoch %s)\n", jint(r, "offset"),
               jstr(r, "epoch"));
    else
        printf("published (not kept in history)\n");
    json_decref(r);
    return 0;
}

static int cmd_kick(const ctl_t *c, const char *user, const char *client, long code,
                    const char *reason) {
    json_t *p = json_pack("{s:s}", "user", user);
    if (client)
        json_object_set_new(p, "client", json_string(client));
    if (code)
        json_object_set_new(p, "disconnect",
                            json_pack("{s:I, s:s}", "code", (json_int_t)code, "reason",
                                      reason ? reason : "kicked"));
    json_t *r = NULL;
    int rc = api(c, NULL, "/api/disconnect", p, &r);
    if (rc)
        return rc;
    if (c->json)
        print_json(r);
    else
        printf("disconnect of %s sent to every node\n", user);
    json_decref(r);
    return 0;
}

static int cmd_unsubscribe(const ctl_t *c, const char *user, const char *channel) {
    json_t *r = NULL;
    int rc = api(c, NULL, "/api/unsubscribe",
                 json_pack("{s:s, s:s}", "user", user, "channel", channel), &r);
    if (rc)
        return rc;
    if (c->json)
        print_json(r);
    else
        printf("unsubscribe of %s from %s sent to every node\n", user, channel);
    json_decref(r);
    return 0;
}

/* The admin address of every node of the cluster (node NULL) or of the named one, as
 * {"name","base"} objects in *out. */
static int node_bases(const ctl_t *c, const char *node, json_t **out) {
    json_t *info = NULL;
    int rc = api(c, NULL, "/api/info", NULL, &info);
    if (rc)
        return rc;
    *out = json_array();
    const json_t *n;
    size_t i;
    json_array_foreach(json_object_get(info, "nodes"), i, n) {
        if (node && strcmp(jstr(n, "name"), node) != 0)
            continue;
        const char *admin = jstr(n, "admin");
        if (!*admin || strcmp(admin, "-") == 0)
            continue;
        char base[320];
        snprintf(base, sizeof base, "http://%s", admin);
        json_array_append_new(*out, json_pack("{s:s,s:s}", "name", jstr(n, "name"), "base", base));
    }
    json_decref(info);
    if (json_array_size(*out) == 0) {
        fprintf(stderr, "chatctl: no node %s with an admin address in the cluster\n",
                node ? node : "at all");
        json_decref(*out);
        return EXIT_API;
    }
    return 0;
}

/* drain: the node chatctl talks to, or the named node of the cluster (its admin address from
 * the registry). */
static int cmd_drain(const ctl_t *c, const char *node) {
    char base[320];
    snprintf(base, sizeof base, "%s", c->base);
    if (node) {
        json_t *bases = NULL;
        int rc = node_bases(c, node, &bases);
        if (rc)
            return rc;
        snprintf(base, sizeof base, "%s", jstr(json_array_get(bases, 0), "base"));
        json_decref(bases);
    }
    json_t *r = NULL;
    int rc = api(c, base, "/api/node/drain", json_object(), &r);
    if (rc)
        return rc;
    if (c->json)
        print_json(r);
    else
        printf("node %s drains\n", jstr(r, "node"));
    json_decref(r);
    return 0;
}

static const char *const limit_keys[] = {"max_connections", "max_connections_per_user",
                                         "connect_rate", "connect_burst"};

/* limits get|set [KEY=VALUE ...]: every node's connection limits, or one node's (--node). set
 * changes them on those nodes until they restart (their configuration holds the lasting
 * values). Each set is checked by every node before any value of it is applied there. */
static int cmd_limits(const ctl_t *c, const char *node, const char *verb, const char *const *kv,
                      int nkv) {
    bool set = strcmp(verb, "set") == 0;
    if ((!set && strcmp(verb, "get") != 0) || (set && nkv == 0) || (!set && nkv > 0)) {
        fprintf(stderr, "usage: chatctl limits get | limits set KEY=VALUE ... [--node NAME]\n"
                        "keys: max_connections max_connections_per_user connect_rate "
                        "connect_burst\n");
        return EXIT_USAGE;
    }
    json_t *params = json_object();
    for (int i = 0; i < nkv; i++) {
        const char *eq = strchr(kv[i], '=');
        long v;
        bool known = false;
        for (size_t k = 0; eq && k < sizeof limit_keys / sizeof *limit_keys; k++)
            known |= strlen(limit_keys[k]) == (size_t)(eq - kv[i]) &&
                     strncmp(kv[i], limit_keys[k], (size_t)(eq - kv[i])) == 0;
        if (!known || !parse_long(eq + 1, &v) || v < 0 || v > UINT32_MAX) {
            fprintf(stderr, "chatctl: '%s' is not KEY=VALUE with a known key and a number >= 0\n",
                    kv[i]);
            json_decref(params);
            return EXIT_USAGE;
        }
        char key[64];
        snprintf(key, sizeof key, "%.*s", (int)(eq - kv[i]), kv[i]);
        json_object_set_new(params, key, json_integer(v));
    }
    json_t *bases = NULL;
    int rc = node_bases(c, node, &bases);
    if (rc) {
        json_decref(params);
        return rc;
    }
    json_t *all = json_array();
    const json_t *b;
    size_t i;
    json_array_foreach(bases, i, b) {
        json_t *r = NULL;
        int one = api(c, jstr(b, "base"), "/api/node/limits", json_incref(params), &r);
        if (one) {
            fprintf(stderr, "chatctl: node %s: limits not %s\n", jstr(b, "name"),
                    set ? "changed" : "read");
            rc = rc ? rc : one;
            continue;
        }
        json_object_set_new(r, "node", json_string(jstr(b, "name")));
        json_array_append_new(all, r);
    }
    if (c->json) {
        print_json(all);
    } else {
        printf("%-24s %11s %15s %8s %12s %13s\n", "NODE", "CONNECTIONS", "MAX_CONNECTIONS",
               "PER_USER", "CONNECT_RATE", "CONNECT_BURST");
        const json_t *r;
        json_array_foreach(all, i, r) {
            printf("%-24s %11" JSON_INTEGER_FORMAT " %15" JSON_INTEGER_FORMAT
                   " %8" JSON_INTEGER_FORMAT " %12" JSON_INTEGER_FORMAT " %13" JSON_INTEGER_FORMAT
                   "\n",
                   jstr(r, "node"), jint(r, "connections"), jint(r, "max_connections"),
                   jint(r, "max_connections_per_user"), jint(r, "connect_rate"),
                   jint(r, "connect_burst"));
        }
    }
    json_decref(all);
    json_decref(bases);
    json_decref(params);
    return rc;
}

static int cmd_log_level(const ctl_t *c, const char *level) {
    json_t *r = NULL;
    int rc = api(c, NULL, "/api/node/log_level",
                 level ? json_pack("{s:s}", "level", level) : json_object(), &r);
    if (rc)
        return rc;
    if (c->json)
        print_json(r);
    else
        printf("log level: %s\n", jstr(r, "level"));
    json_decref(r);
    return 0;
}

/* llm breaker-close PROVIDER | llm key-enable PROVIDER FINGERPRINT: the operator's hand on the
 * assistant, on every node (--node: one). */
static int cmd_llm_action(const ctl_t *c, const char *node, const char *verb,
                          const char *const *args, int nargs) {
    bool enable = strcmp(verb, "key-enable") == 0;
    if ((!enable && strcmp(verb, "breaker-close") != 0) || nargs != (enable ? 2 : 1)) {
        fprintf(stderr, "usage: chatctl llm [breaker-close PROVIDER | key-enable PROVIDER "
                        "FINGERPRINT] [--node NAME]\n");
        return EXIT_USAGE;
    }
    json_t *bases = NULL;
    int rc = node_bases(c, node, &bases);
    if (rc)
        return rc;
    json_t *done = json_array();
    const json_t *b;
    size_t i;
    json_array_foreach(bases, i, b) {
        json_t *params = enable ? json_pack("{s:s,s:s}", "provider", args[0], "key", args[1])
                                : json_pack("{s:s}", "provider", args[0]);
        json_t *r = NULL;
        int one = api(c, jstr(b, "base"), enable ? "/api/llm/key/enable" : "/api/llm/breaker/close",
                      params, &r);
        json_decref(r);
        if (one) {
            fprintf(stderr, "chatctl: node %s: not done\n", jstr(b, "name"));
            rc = rc ? rc : one;
            continue;
        }
        json_array_append_new(done, json_string(jstr(b, "name")));
    }
    if (c->json) {
        json_t *out = json_pack("{s:O}", "nodes", done);
        print_json(out);
        json_decref(out);
    } else {
        printf("%s on %zu node(s)\n", enable ? "key enabled" : "breaker closed",
               json_array_size(done));
    }
    json_decref(done);
    json_decref(bases);
    return rc;
}

static int cmd_llm(const ctl_t *c) {
    json_t *r = NULL;
    int rc = api(c, NULL, "/api/llm", NULL, &r);
    if (rc)
        return rc;
    if (c->json) {
        print_json(r);
        json_decref(r);
        return 0;
    }
    const json_t *depth = json_object_get(json_object_get(r, "queue"), "depth");
    printf("running %" JSON_INTEGER_FORMAT " of %" JSON_INTEGER_FORMAT
           ", queued: free %" JSON_INTEGER_FORMAT " plus %" JSON_INTEGER_FORMAT
           " pro %" JSON_INTEGER_FORMAT " executive %" JSON_INTEGER_FORMAT ", leases %zu\n",
           jint(r, "running"), jint(r, "concurrency"), jint(depth, "free"), jint(depth, "plus"),
           jint(depth, "pro"), jint(depth, "executive"),
           json_array_size(json_object_get(r, "leases")));
    printf("%-12s %-12s %-10s %-14s %-9s %9s %9s %8s\n", "PROVIDER", "KEY", "ROLE", "STATE",
           "BREAKER", "INFLIGHT", "REQUESTS", "COOLDOWN");
    size_t i, j;
    const json_t *p, *k;
    json_array_foreach(json_object_get(r, "providers"), i, p) {
        json_array_foreach(json_object_get(p, "keys"), j, k) {
            printf("%-12s %-12s %-10s %-14s %-9s %9" JSON_INTEGER_FORMAT " %9" JSON_INTEGER_FORMAT
                   " %7" JSON_INTEGER_FORMAT "ms\n",
                   jstr(p, "name"), jstr(k, "fingerprint"),
                   json_is_true(json_object_get(k, "fallback")) ? "fallback" : "primary",
                   jstr(k, "state"), jstr(json_object_get(p, "breaker"), "state"),
                   jint(k, "inflight"), jint(k, "requests"), jint(k, "cooldown_ms"));
        }
    }
    json_decref(r);
    return 0;
}

/* token: a connection token signed with the node's secret (CHAT_JWT_SECRET's form: "secret" or
 * "kid1:secret1,kid2:secret2", the first signs). */
static int cmd_token(const char *secret, const char *user, const char *plan, long ttl,
                     const char *channels, const char *info) {
    if (!secret || !*secret) {
        fprintf(stderr, "chatctl: token: --secret or CHAT_JWT_SECRET required\n");
        return EXIT_USAGE;
    }
    if (!user || !*user) {
        fprintf(stderr, "chatctl: token: --user required\n");
        return EXIT_USAGE;
    }
    if (plan && auth_plan_parse(plan) < 0) {
        fprintf(stderr, "chatctl: token: plan is one of free, plus, pro, executive\n");
        return EXIT_USAGE;
    }
    auth_keyring_t *kr = auth_keyring_new();
    if (auth_keyring_parse(kr, secret) != 0) {
        fprintf(stderr, "chatctl: token: the secret is not in CHAT_JWT_SECRET's form\n");
        auth_keyring_free(kr);
        return EXIT_USAGE;
    }
    int64_t now = (int64_t)time(NULL);
    json_t *claims = json_pack("{s:s, s:I, s:I, s:s}", "sub", user, "iat", (json_int_t)now, "exp",
                               (json_int_t)(now + ttl), "plan", plan ? plan : "free");
    if (channels && *channels) {
        json_t *arr = json_array();
        char *dup = core_strdup(channels), *save = NULL;
        for (char *t = strtok_r(dup, ",", &save); t; t = strtok_r(NULL, ",", &save))
            json_array_append_new(arr, json_string(t));
        free(dup);
        json_object_set_new(claims, "channels", arr);
    }
    if (info) {
        json_error_t jerr;
        json_t *i = json_loads(info, JSON_DECODE_ANY, &jerr);
        if (!i) {
            fprintf(stderr, "chatctl: token: --info is not JSON: %s\n", jerr.text);
            json_decref(claims);
            auth_keyring_free(kr);
            return EXIT_USAGE;
        }
        json_object_set_new(claims, "info", i);
    }
    char *tok = auth_jwt_mint(kr, NULL, claims);
    json_decref(claims);
    auth_keyring_free(kr);
    if (!tok) {
        fprintf(stderr, "chatctl: token: cannot sign\n");
        return EXIT_USAGE;
    }
    puts(tok);
    free(tok);
    return 0;
}

/* ---- top ---- */

#define TOP_BUCKETS 64

typedef struct {
    double connections, pubs_in, pubs_out, queue, errors;
    double le[TOP_BUCKETS], cum[TOP_BUCKETS]; /* the fan-out latency histogram */
    int nb;
} top_sample_t;

/* Sums the samples of a family (every label set) from Prometheus text. */
static double prom_sum(const char *text, const char *name) {
    double sum = 0;
    size_t nl = strlen(name);
    for (const char *p = text; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL) {
        if (strncmp(p, name, nl) != 0 || (p[nl] != ' ' && p[nl] != '{'))
            continue;
        const char *sp = strchr(p + nl, ' ');
        const char *eol = strchr(p, '\n');
        if (sp && (!eol || sp < eol))
            sum += strtod(sp + 1, NULL);
    }
    return sum;
}

static void prom_hist(const char *text, const char *name, top_sample_t *s) {
    char bucket[128];
    snprintf(bucket, sizeof bucket, "%s_bucket{le=\"", name);
    size_t bl = strlen(bucket);
    s->nb = 0;
    for (const char *p = text; p && *p && s->nb < TOP_BUCKETS;
         p = strchr(p, '\n'), p = p ? p + 1 : NULL) {
        if (strncmp(p, bucket, bl) != 0)
            continue;
        const char *q = p + bl;
        s->le[s->nb] = strncmp(q, "+Inf", 4) == 0 ? INFINITY : strtod(q, NULL);
        const char *sp = strchr(q, ' ');
        s->cum[s->nb++] = sp ? strtod(sp + 1, NULL) : 0;
    }
}

static int top_sample(const ctl_t *c, top_sample_t *s) {
    core_str_t out = {0};
    long status = 0;
    int rc = http(c, NULL, "/metrics", NULL, &out, &status);
    if (rc == 0 && status != 200) {
        fprintf(stderr, "chatctl: /metrics answered HTTP %ld\n", status);
        rc = EXIT_UNREACHABLE;
    }
    if (rc == 0) {
        core_str_append(&out, "", 1); /* NUL-terminated for the scans */
        s->connections = prom_sum(out.ptr, "chat_connections");
        s->pubs_in = prom_sum(out.ptr, "chat_publications_in_total");
        s->pubs_out = prom_sum(out.ptr, "chat_publications_out_total");
        s->queue = prom_sum(out.ptr, "chat_llm_queue_depth");
        s->errors = prom_sum(out.ptr, "chat_errors_total");
        prom_hist(out.ptr, "chat_fanout_latency_seconds", s);
    }
    core_str_free(&out);
    return rc;
}

/* The 99th percentile of what the histogram counted between two samples (the upper bound of
 * the bucket it falls in), in milliseconds; -1 when nothing was counted. */
static double top_p99_ms(const top_sample_t *a, const top_sample_t *b) {
    if (a->nb != b->nb || b->nb == 0)
        return -1;
    double total = b->cum[b->nb - 1] - a->cum[a->nb - 1];
    if (total <= 0)
        return -1;
    for (int i = 0; i < b->nb; i++)
        if (b->cum[i] - a->cum[i] >= 0.99 * total)
            return b->le[i] * 1000;
    return INFINITY;
}

static int cmd_top(const ctl_t *c, double interval, long count) {
    top_sample_t prev, cur;
    int rc = top_sample(c, &prev);
    if (rc)
        return rc;
    bool tty = isatty(STDOUT_FILENO);
    for (long i = 0; count <= 0 || i < count; i++) {
        struct timespec ts = {(time_t)interval, (long)((interval - (time_t)interval) * 1e9)};
        nanosleep(&ts, NULL);
        rc = top_sample(c, &cur);
        if (rc)
            return rc;
        double p99 = top_p99_ms(&prev, &cur);
        double in = (cur.pubs_in - prev.pubs_in) / interval;
        double out = (cur.pubs_out - prev.pubs_out) / interval;
        double err = (cur.errors - prev.errors) / interval;
        if (c->json) {
            printf("{\"connections\":%.0f,\"publications_per_s\":%.1f,\"deliveries_per_s\":%.1f,"
                   "\"errors_per_s\":%.1f,\"fanout_p99_ms\":%.3f,\"llm_queue_depth\":%.0f}\n",
                   cur.connections, in, out, err, p99, cur.queue);
        } else {
            if (tty)
                fputs("\033[H\033[2J", stdout);
            char p99s[32];
            if (p99 < 0)
                snprintf(p99s, sizeof p99s, "-");
            else if (isinf(p99))
                snprintf(p99s, sizeof p99s, "> top bucket");
            else
                snprintf(p99s, sizeof p99s, "%.1f ms", p99);
            printf("chatctl top  %s  every %.1f s\n\n", c->base, interval);
            printf("  connections        %10.0f\n", cur.connections);
            printf("  publications/s     %10.1f\n", in);
            printf("  deliveries/s       %10.1f\n", out);
            printf("  errors/s           %10.1f\n", err);
            printf("  fan-out p99        %10s\n", p99s);
            printf("  llm queue depth    %10.0f\n", cur.queue);
        }
        fflush(stdout);
        prev = cur;
    }
    return 0;
}

/* ---- arguments ---- */

static void usage(FILE *f) {
    fputs("usage: chatctl [--addr HOST:PORT] [--api-key KEY] [--json] COMMAND [ARGS]\n"
          "\n"
          "Talks to a chatd node's admin listener (CHAT_ADMIN_LISTEN, default 127.0.0.1:9100)\n"
          "with its API key (CHAT_API_KEY). Both default to those environment variables.\n"
          "\n"
          "commands:\n"
          "  status                      this cluster in one line, then its nodes\n"
          "  nodes                       the cluster's nodes: addresses, clients, state\n"
          "  channels [PATTERN]          channels with subscribers in the cluster (prefix*)\n"
          "  presence CHANNEL            who is in a channel (cluster-wide)\n"
          "  history CHANNEL [--limit N] [--reverse]\n"
          "                              a channel's newest publications (default 20),\n"
          "                              oldest first (--reverse: newest first)\n"
          "  publish CHANNEL JSON        publishes JSON into a channel as the server\n"
          "  kick USER [--client ID] [--code N] [--reason R]\n"
          "                              disconnects a user on every node (default 3503)\n"
          "  unsubscribe USER CHANNEL    unsubscribes a user from a channel on every node\n"
          "  drain [NODE]                drains the node (or the named node of the cluster)\n"
          "  log-level [LEVEL]           shows or sets the node's log level\n"
          "  limits get|set [KEY=VALUE ...] [--node NAME]\n"
          "                              every node's connection limits, or changes them\n"
          "                              (max_connections, max_connections_per_user,\n"
          "                              connect_rate, connect_burst) until restart\n"
          "  llm                         the assistant's queue, keys, breakers and leases\n"
          "  llm breaker-close PROVIDER  closes a provider's breaker on every node (--node)\n"
          "  llm key-enable PROVIDER FP  puts a disabled key back in use on every node\n"
          "  top [--interval S] [--count N]\n"
          "                              a live view: connections, publications/s,\n"
          "                              deliveries/s, fan-out p99, queue depth\n"
          "  token --user U [--plan P] [--ttl S] [--channels A,B] [--info JSON] [--secret S]\n"
          "                              mints a connection token (CHAT_JWT_SECRET)\n"
          "\n"
          "exit codes: 0 done, 1 the node answered with an error, 2 usage, 3 node unreachable\n"
          "'chatctl COMMAND --help' shows a command's usage.\n",
          f);
}

static const struct {
    const char *name, *args;
} cmd_help[] = {
    {"status", ""},
    {"nodes", ""},
    {"channels", "[PATTERN]"},
    {"presence", "CHANNEL"},
    {"history", "CHANNEL [--limit N] [--reverse]"},
    {"publish", "CHANNEL JSON"},
    {"kick", "USER [--client ID] [--code N] [--reason R]"},
    {"unsubscribe", "USER CHANNEL"},
    {"drain", "[NODE]"},
    {"log-level", "[error|warn|info|debug]"},
    {"limits", "get | set KEY=VALUE ... [--node NAME]  (keys: max_connections, "
               "max_connections_per_user, connect_rate, connect_burst)"},
    {"llm", "[breaker-close PROVIDER | key-enable PROVIDER FINGERPRINT] [--node NAME]"},
    {"top", "[--interval SECONDS] [--count N]"},
    {"token", "--user U [--plan free|plus|pro|executive] [--ttl SECONDS] [--channels A,B] "
              "[--info JSON] [--secret S]"},
};

static bool known_command(const char *cmd) {
    for (size_t i = 0; i < sizeof cmd_help / sizeof *cmd_help; i++)
        if (strcmp(cmd, cmd_help[i].name) == 0)
            return true;
    return false;
}

static void command_usage(const char *cmd, FILE *f) {
    for (size_t i = 0; i < sizeof cmd_help / sizeof *cmd_help; i++)
        if (strcmp(cmd, cmd_help[i].name) == 0)
            fprintf(f, "usage: chatctl [--addr HOST:PORT] [--api-key KEY] [--json] %s %s\n", cmd,
                    cmd_help[i].args);
}

int main(int argc, char **argv) {
    ctl_t c = {.key = getenv("CHAT_API_KEY")};
    const char *addr = getenv("CHAT_ADMIN_LISTEN");
    const char *secret = getenv("CHAT_JWT_SECRET");
    const char *user = NULL, *plan = NULL, *channels = NULL, *info = NULL, *client = NULL,
               *reason = NULL, *node = NULL;
    long limit = 20, ttl = 3600, count = 0, code = 0;
    double interval = 1;
    bool reverse = false, help = false;
    enum {
        O_USER = 256,
        O_PLAN,
        O_TTL,
        O_CHANNELS,
        O_INFO,
        O_SECRET,
        O_LIMIT,
        O_REVERSE,
        O_CLIENT,
        O_CODE,
        O_REASON,
        O_INTERVAL,
        O_COUNT,
        O_NODE
    };
    static const struct option opts[] = {
        {"addr", required_argument, NULL, 'a'},
        {"api-key", required_argument, NULL, 'k'},
        {"json", no_argument, NULL, 'j'},
        {"help", no_argument, NULL, 'h'},
        {"user", required_argument, NULL, O_USER},
        {"plan", required_argument, NULL, O_PLAN},
        {"ttl", required_argument, NULL, O_TTL},
        {"channels", required_argument, NULL, O_CHANNELS},
        {"info", required_argument, NULL, O_INFO},
        {"secret", required_argument, NULL, O_SECRET},
        {"limit", required_argument, NULL, O_LIMIT},
        {"reverse", no_argument, NULL, O_REVERSE},
        {"client", required_argument, NULL, O_CLIENT},
        {"code", required_argument, NULL, O_CODE},
        {"reason", required_argument, NULL, O_REASON},
        {"interval", required_argument, NULL, O_INTERVAL},
        {"count", required_argument, NULL, O_COUNT},
        {"node", required_argument, NULL, O_NODE},
        {0},
    };
    int o;
    bool bad = false;
    /* GNU getopt moves the command and its arguments behind the options, wherever the options
     * were given ("chatctl history chat:x --limit 5" works); "--" ends the options. */
    while ((o = getopt_long(argc, argv, "a:k:jh", opts, NULL)) != -1) {
        switch (o) {
        case 'a':
            addr = optarg;
            break;
        case 'k':
            c.key = optarg;
            break;
        case 'j':
            c.json = true;
            break;
        case 'h':
            help = true;
            break;
        case O_USER:
            user = optarg;
            break;
        case O_PLAN:
            plan = optarg;
            break;
        case O_TTL:
            bad |= !parse_long(optarg, &ttl) || ttl <= 0;
            break;
        case O_CHANNELS:
            channels = optarg;
            break;
        case O_INFO:
            info = optarg;
            break;
        case O_SECRET:
            secret = optarg;
            break;
        case O_LIMIT:
            bad |= !parse_long(optarg, &limit) || limit < -1;
            break;
        case O_REVERSE:
            reverse = true;
            break;
        case O_CLIENT:
            client = optarg;
            break;
        case O_CODE:
            bad |= !parse_long(optarg, &code) || code < 3000 || code > 4999;
            break;
        case O_REASON:
            reason = optarg;
            break;
        case O_INTERVAL:
            interval = strtod(optarg, NULL);
            bad |= !(interval >= 0.1 && interval <= 3600);
            break;
        case O_COUNT:
            bad |= !parse_long(optarg, &count) || count < 0;
            break;
        case O_NODE:
            node = optarg;
            break;
        default:
            bad = true;
        }
    }
    if (optind >= argc) {
        usage(help ? stdout : stderr);
        return help ? 0 : EXIT_USAGE;
    }
    const char *cmd = argv[optind++];
    if (!known_command(cmd)) {
        fprintf(stderr, "chatctl: unknown command '%s'\n", cmd);
        usage(stderr);
        return EXIT_USAGE;
    }
    const char *const *pos = (const char *const *)argv + optind;
    int npos = argc - optind;
    if (help) {
        command_usage(cmd, stdout);
        return 0;
    }
    snprintf(c.base, sizeof c.base, "http://%s", addr && *addr ? addr : "127.0.0.1:9100");
    /* A listener on every interface is reached on loopback from the same machine. */
    if (strncmp(c.base, "http://0.0.0.0:", 15) == 0)
        snprintf(c.base, sizeof c.base, "http://127.0.0.1:%s", addr + 8);
    int want = -1; /* positionals the command takes: exact, or a range below */
    int min = 0, max = 0;
    if (!strcmp(cmd, "channels") || !strcmp(cmd, "drain") || !strcmp(cmd, "log-level"))
        max = 1;
    else if (!strcmp(cmd, "presence") || !strcmp(cmd, "history") || !strcmp(cmd, "kick"))
        want = 1;
    else if (!strcmp(cmd, "publish") || !strcmp(cmd, "unsubscribe"))
        want = 2;
    if (want >= 0)
        min = max = want;
    if (!strcmp(cmd, "limits"))
        min = 1, max = 16;
    if (!strcmp(cmd, "llm"))
        max = 3;
    if (bad || npos < min || npos > max) {
        command_usage(cmd, stderr);
        return EXIT_USAGE;
    }
    curl_global_init(CURL_GLOBAL_DEFAULT);
    int rc;
    if (!strcmp(cmd, "status"))
        rc = cmd_nodes(&c, true);
    else if (!strcmp(cmd, "nodes"))
        rc = cmd_nodes(&c, false);
    else if (!strcmp(cmd, "channels"))
        rc = cmd_channels(&c, npos ? pos[0] : NULL);
    else if (!strcmp(cmd, "presence"))
        rc = cmd_presence(&c, pos[0]);
    else if (!strcmp(cmd, "history"))
        rc = cmd_history(&c, pos[0], limit, reverse);
    else if (!strcmp(cmd, "publish"))
        rc = cmd_publish(&c, pos[0], pos[1]);
    else if (!strcmp(cmd, "kick"))
        rc = cmd_kick(&c, pos[0], client, code, reason);
    else if (!strcmp(cmd, "unsubscribe"))
        rc = cmd_unsubscribe(&c, pos[0], pos[1]);
    else if (!strcmp(cmd, "drain"))
        rc = cmd_drain(&c, npos ? pos[0] : NULL);
    else if (!strcmp(cmd, "log-level"))
        rc = cmd_log_level(&c, npos ? pos[0] : NULL);
    else if (!strcmp(cmd, "limits"))
        rc = cmd_limits(&c, node, pos[0], pos + 1, npos - 1);
    else if (!strcmp(cmd, "llm") && npos > 0)
        rc = cmd_llm_action(&c, node, pos[0], pos + 1, npos - 1);
    else if (!strcmp(cmd, "llm"))
        rc = cmd_llm(&c);
    else if (!strcmp(cmd, "top"))
        rc = cmd_top(&c, interval, count);
    else
        rc = cmd_token(secret, user, plan, ttl, channels, info);
    curl_global_cleanup();
    return rc;
}
