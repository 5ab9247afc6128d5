/* llm: the built-in `mock` provider. A zero-config node answers llm.ask with it: a deterministic
 * reply streamed from a timer at a configured time to first token and token rate, with usage,
 * and no network. Several tokens leave per tick at high rates, so thousands of mock streams cost
 * little more than thousands of timers ticking at 50 Hz. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "llm/llm_stream.h"

#define MOCK_TICK_MIN_MS 20

struct llm_mock {
    uv_loop_t *loop;
    uint32_t ttft_ms, tokens, tokens_per_s;
    uint32_t live;
};

struct llm_stream {
    uv_timer_t timer;
    llm_mock_t *m;
    llm_stream_cb_t cb;
    void *ud;
    char *text; /* the whole answer; tokens are its space-separated words */
    size_t len, off;
    uint32_t emitted, total, input_tokens;
    uint64_t started_ms;
    bool paused, done;
};

llm_mock_t *llm_mock_new(uv_loop_t *loop, uint32_t ttft_ms, uint32_t tokens,
                         uint32_t tokens_per_s) {
    llm_mock_t *m = core_calloc(1, sizeof *m);
    m->loop = loop;
    m->ttft_ms = ttft_ms;
    m->tokens = tokens ? tokens : 1;
    m->tokens_per_s = tokens_per_s ? tokens_per_s : 1;
    return m;
}

void llm_mock_free(llm_mock_t *m) {
    if (!m)
        return;
    CORE_ASSERT(m->live == 0);
    free(m);
}

static void stream_closed(uv_handle_t *h) {
    llm_stream_t *s = h->data;
    s->m->live--;
    free(s->text);
    free(s);
}

static void stream_finish(llm_stream_t *s) {
    s->done = true;
    uv_timer_stop(&s->timer);
    uv_close((uv_handle_t *)&s->timer, stream_closed);
}

/* The answer: a fixed opening that quotes the start of the question, then numbered filler words
 * up to the configured token count. Deterministic, so tests can check what every reader got. */
static void make_text(llm_stream_t *s, const llm_prompt_t *p) {
    core_str_t t = {0};
    const char *q = "";
    size_t qlen = 0;
    for (size_t i = p->nmsgs; i-- > 0;)
        if (strcmp(p->msgs[i].role, "user") == 0) {
            q = p->msgs[i].text;
            qlen = p->msgs[i].len;
            break;
        }
    if (qlen > 60)
        qlen = 60;
    core_str_appends(&t, "Mock answer to \"");
    /* Only printable ASCII of the question is quoted: a cut multibyte character must not make
     * the answer invalid UTF-8. */
    for (size_t i = 0; i < qlen; i++) {
        unsigned char ch = (unsigned char)q[i];
        char c = (ch >= 0x20 && ch < 0x7f && ch != '"') ? (char)ch : ' ';
        core_str_append(&t, &c, 1);
    }
    core_str_appends(&t, "\":");
    uint32_t words = 4;
    for (uint32_t i = words; i < s->m->tokens; i++)
        core_str_appendf(&t, " w%u", i - words + 1);
    s->text = t.ptr;
    s->len = t.len;
    s->total = s->m->tokens;
    size_t in = 0;
    if (p->system)
        in += strlen(p->system);
    for (size_t i = 0; i < p->nmsgs; i++)
        in += p->msgs[i].len;
    s->input_tokens = (uint32_t)(in / 4 + 1);
}

/* Up to n more words of the answer: [off, returned end). */
static size_t next_words(const llm_stream_t *s, uint32_t n) {
    size_t end = s->off;
    for (uint32_t k = 0; k < n && end < s->len; k++) {
        end++;
        while (end < s->len && s->text[end] != ' ')
            end++;
    }
    return end;
}

static void tick(uv_timer_t *t) {
    llm_stream_t *s = t->data;
    if (s->paused || s->done)
        return;
    uint64_t elapsed = uv_now(s->m->loop) - s->started_ms;
    uint64_t due = 1;
    if (elapsed > s->m->ttft_ms)
        due += (elapsed - s->m->ttft_ms) * s->m->tokens_per_s / 1000;
    if (due > s->total)
        due = s->total;
    if (due > s->emitted) {
        size_t end = next_words(s, (uint32_t)(due - s->emitted));
        uint32_t n = (uint32_t)(due - s->emitted);
        const char *p = s->text + s->off;
        size_t len = end - s->off;
        s->off = end;
        s->emitted += n;
        s->cb.on_delta(s->ud, p, len);
        if (s->done)
            return; /* cancelled from inside on_delta */
        if (s->emitted >= s->total || s->off >= s->len) {
            llm_budget_t b = {-1, -1};
            llm_outcome_t o = {.end = LLM_END_OK, .http_status = 200};
            s->cb.on_usage(s->ud, s->input_tokens, s->emitted);
            if (s->done)
                return;
            stream_finish(s);
            s->cb.on_end(s->ud, &o, &b);
            return;
        }
    }
    uint64_t step = 1000 / s->m->tokens_per_s;
    uv_timer_start(&s->timer, tick, step < MOCK_TICK_MIN_MS ? MOCK_TICK_MIN_MS : step, 0);
}

static void first(uv_timer_t *t) {
    llm_stream_t *s = t->data;
    llm_budget_t b = {-1, -1};
    s->cb.on_open(s->ud, &b);
    if (s->done)
        return;
    tick(t);
}

static llm_stream_t *mock_start(void *provider, const char *key, const llm_prompt_t *prompt,
                                const llm_stream_timeouts_t *tmo, const llm_stream_cb_t *cb,
                                void *ud) {
    (void)key;
    (void)tmo;
    llm_mock_t *m = provider;
    llm_stream_t *s = core_calloc(1, sizeof *s);
    s->m = m;
    s->cb = *cb;
    s->ud = ud;
    s->started_ms = uv_now(m->loop);
    make_text(s, prompt);
    uv_timer_init(m->loop, &s->timer);
    s->timer.data = s;
    m->live++;
    /* The first event comes from the loop, never from inside start. */
    uv_timer_start(&s->timer, first, m->ttft_ms, 0);
    return s;
}

static void mock_pause(llm_stream_t *s) {
    s->paused = true;
}

static void mock_resume(llm_stream_t *s) {
    if (!s->paused || s->done)
        return;
    s->paused = false;
    uv_timer_start(&s->timer, tick, 0, 0);
}

static void mock_cancel(llm_stream_t *s) {
    if (!s->done)
        stream_finish(s);
}

const llm_stream_ops_t llm_mock_ops = {mock_start, mock_pause, mock_resume, mock_cancel};
