/* llm: the daily allowances of admission. An ask reserves one message and an estimate of its
 * tokens in shared counters (the broker's, so every node counts against one allowance) before
 * it is queued; the reservation is settled on the provider's reported usage, or refunded when
 * the request fails or never runs. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/core_codes.h"
#include "llm/llm_int.h"

#define MOD "llm"

/* ---- quotas ---------------------------------------------------------------------------------- */

void llm__quota_day(char out[9], int64_t *reset_s) {
    time_t t = (time_t)core_wall_s();
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(out, 9, "%Y%m%d", &tm);
    *reset_s = (int64_t)t - (tm.tm_hour * 3600 + tm.tm_min * 60 + tm.tm_sec) + 86400;
}

void llm__quota_key(core_str_t *k, const llm_req_t *r, const char *what) {
    core_str_appendf(k, "llm:%s:%s:", what, r->day);
    core_str_appends(k, r->user);
}

static void counter_done_noop(int status, bool allowed, int64_t value, void *ud) {
    (void)allowed;
    (void)value;
    llm_req_t *r = ud;
    if (status != 0)
        CORE_LOGW(MOD, "quota settle failed", "request=%s status=%s", r->id, core_strerror(status));
    llm__req_back(r);
}

static void counter_adjust(llm_req_t *r, const char *what, int64_t amount) {
    if (amount == 0)
        return;
    core_str_t k = {0};
    llm__quota_key(&k, r, what);
    r->pending_ops++;
    if (clu_counter_add(r->l->broker, k.ptr, amount, 0, r->quota_reset_s + 3600, counter_done_noop,
                        r) != 0)
        r->pending_ops--;
    core_str_free(&k);
}

/* Gives back what admission reserved (the request failed or never ran). */
void llm__quota_refund(llm_req_t *r, bool message_too) {
    if (r->reserved_tokens > 0)
        counter_adjust(r, "tokens", -r->reserved_tokens);
    r->reserved_tokens = 0;
    if (message_too && r->reserved_message)
        counter_adjust(r, "msgs", -1);
    r->reserved_message = false;
}

/* Replaces the token reservation by what the provider reported. */
void llm__quota_settle(llm_req_t *r) {
    if (r->l->cfg.quota[r->plan].tokens == 0)
        return;
    int64_t used = (int64_t)r->in_tokens + r->out_tokens;
    counter_adjust(r, "tokens", used - r->reserved_tokens);
    r->reserved_tokens = 0;
}
/* 402 with the time until the allowance resets (PROTOCOL.md section 1). */
static void reject_quota(llm_req_t *r, llm_reject_reason_t why, const char *what) {
    char msg[128];
    snprintf(msg, sizeof msg, "%s used up: retry_after_ms=%" PRId64 " plan=%s", what,
             (r->quota_reset_s - core_wall_s()) * 1000, llm_plan_name(r->plan));
    llm__reject(r, why, CORE_REPLY_QUOTA_EXCEEDED, msg);
}

static void tokens_reserved(int status, bool allowed, int64_t value, void *ud) {
    (void)value;
    llm_req_t *r = ud;
    LLM_TRACE(r);
    if (!llm__req_back(r))
        return;
    if (status == 0 && !allowed) {
        r->reserved_tokens = 0;
        reject_quota(r, LLM_REJ_BUDGET, "daily token budget");
        return;
    }
    if (status != 0)
        r->reserved_tokens = 0; /* the store is down: admitted unreserved rather than refused */
    llm__enqueue(r);
}

void llm__reserve_tokens(llm_req_t *r) {
    llm_t *l = r->l;
    uint64_t limit = l->cfg.quota[r->plan].tokens;
    if (limit == 0) {
        llm__enqueue(r);
        return;
    }
    /* Input estimate (prompt and context budget, 4 bytes a token) plus the answer's maximum. */
    r->reserved_tokens = (int64_t)(r->prompt_len / 4 + 1 + l->cfg.context_tokens) +
                         l->provs[r->prov].cfg->max_tokens;
    core_str_t k = {0};
    llm__quota_key(&k, r, "tokens");
    r->pending_ops++;
    if (clu_counter_add(l->broker, k.ptr, r->reserved_tokens, (int64_t)limit,
                        r->quota_reset_s + 3600, tokens_reserved, r) != 0) {
        r->pending_ops--;
        r->reserved_tokens = 0;
        llm__enqueue(r);
    }
    core_str_free(&k);
}

void llm__message_reserved(int status, bool allowed, int64_t value, void *ud) {
    llm_req_t *r = ud;
    LLM_TRACE(r);
    if (!llm__req_back(r))
        return;
    if (status == 0 && !allowed) {
        r->reserved_message = false;
        reject_quota(r, LLM_REJ_QUOTA, "daily assistant quota");
        return;
    }
    r->reserved_message = status == 0;
    r->quota_used = value > 0 && value <= UINT32_MAX ? (uint32_t)value : 0;
    llm__reserve_tokens(r);
}
