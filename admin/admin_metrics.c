/* admin: the metrics registry and the Prometheus text exposition (format 0.0.4). */
#include "admin/admin.h"

#include <dirent.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

typedef struct {
    adm_metrics_render_fn render;
    void *ud;
} source_t;

struct adm_metrics {
    source_t *sources;
    size_t n;
};

struct adm_metrics_writer {
    core_str_t *out;
};

adm_metrics_t *adm_metrics_new(void) {
    return core_calloc(1, sizeof(adm_metrics_t));
}

void adm_metrics_free(adm_metrics_t *m) {
    if (!m)
        return;
    free(m->sources);
    free(m);
}

void adm_metrics_add(adm_metrics_t *m, adm_metrics_render_fn render, void *ud) {
    m->sources = core_realloc(m->sources, (m->n + 1) * sizeof *m->sources);
    m->sources[m->n++] = (source_t){render, ud};
}

void adm_metrics_family(adm_metrics_writer_t *w, const char *name, const char *type,
                        const char *help) {
    core_str_appendf(w->out, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* Label values may hold anything a module names (a node id, a code): the text format wants
 * backslash, double quote and line feed escaped. */
static void append_label_list(core_str_t *o, const adm_label_t *labels, size_t n) {
    for (size_t i = 0; i < n; i++) {
        core_str_appendf(o, "%s%s=\"", i ? "," : "", labels[i].name);
        for (const char *p = labels[i].value; *p; p++) {
            if (*p == '\\')
                core_str_appends(o, "\\\\");
            else if (*p == '"')
                core_str_appends(o, "\\\"");
            else if (*p == '\n')
                core_str_appends(o, "\\n");
            else
                core_str_append(o, p, 1);
        }
        core_str_appends(o, "\"");
    }
}

static void append_labels(core_str_t *o, const adm_label_t *labels, size_t n) {
    if (n == 0)
        return;
    core_str_appends(o, "{");
    append_label_list(o, labels, n);
    core_str_appends(o, "}");
}

void adm_metrics_sample(adm_metrics_writer_t *w, const char *name, const adm_label_t *labels,
                        size_t nlabels, uint64_t value) {
    core_str_appends(w->out, name);
    append_labels(w->out, labels, nlabels);
    core_str_appendf(w->out, " %" PRIu64 "\n", value);
}

void adm_metrics_sample_double(adm_metrics_writer_t *w, const char *name, const adm_label_t *labels,
                               size_t nlabels, double value) {
    core_str_appends(w->out, name);
    append_labels(w->out, labels, nlabels);
    core_str_appendf(w->out, " %.6f\n", value);
}

void adm_metrics_counter(adm_metrics_writer_t *w, const char *name, const char *help,
                         uint64_t value) {
    adm_metrics_family(w, name, "counter", help);
    adm_metrics_sample(w, name, NULL, 0, value);
}

void adm_metrics_gauge(adm_metrics_writer_t *w, const char *name, const char *help,
                       uint64_t value) {
    adm_metrics_family(w, name, "gauge", help);
    adm_metrics_sample(w, name, NULL, 0, value);
}

void adm_metrics_histogram(adm_metrics_writer_t *w, const char *name, const char *help,
                           const core_hist_t *h) {
    adm_metrics_family(w, name, "histogram", help);
    adm_metrics_histogram_sample(w, name, NULL, 0, h);
}

void adm_metrics_histogram_sample(adm_metrics_writer_t *w, const char *name,
                                  const adm_label_t *labels, size_t nlabels, const core_hist_t *h) {
    core_str_t *o = w->out;
    core_str_t lab = {0};
    append_label_list(&lab, labels, nlabels);
    const char *sep = nlabels ? "," : "";
    const char *l = nlabels ? lab.ptr : "";
    uint64_t cum = 0;
    for (size_t i = 0; i < h->nbuckets; i++) {
        cum += h->counts[i];
        core_str_appendf(o, "%s_bucket{%s%sle=\"%g\"} %" PRIu64 "\n", name, l, sep, h->bounds[i],
                         cum);
    }
    core_str_appendf(o, "%s_bucket{%s%sle=\"+Inf\"} %" PRIu64 "\n", name, l, sep, h->total);
    core_str_appendf(o, "%s_sum", name);
    append_labels(o, labels, nlabels);
    core_str_appendf(o, " %.6f\n%s_count", h->sum, name);
    append_labels(o, labels, nlabels);
    core_str_appendf(o, " %" PRIu64 "\n", h->total);
    core_str_free(&lab);
}

static void process_metrics(adm_metrics_writer_t *w) {
    long page = sysconf(_SC_PAGESIZE);
    unsigned long size = 0, resident = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    if (f) {
        if (fscanf(f, "%lu %lu", &size, &resident) != 2)
            resident = 0;
        fclose(f);
    }
    adm_metrics_gauge(w, "process_resident_memory_bytes", "Resident memory size in bytes.",
                      (uint64_t)resident * (uint64_t)page);
    adm_metrics_gauge(w, "process_virtual_memory_bytes", "Virtual memory size in bytes.",
                      (uint64_t)size * (uint64_t)page);
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double cpu = (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
                 (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
    adm_metrics_family(w, "process_cpu_seconds_total", "counter",
                       "Total user and system CPU time in seconds.");
    adm_metrics_sample_double(w, "process_cpu_seconds_total", NULL, 0, cpu);
    uint64_t fds = 0;
    DIR *d = opendir("/proc/self/fd");
    if (d) {
        struct dirent *e;
        while ((e = readdir(d)))
            if (e->d_name[0] != '.')
                fds++;
        closedir(d);
    }
    adm_metrics_gauge(w, "process_open_fds", "Number of open file descriptors.", fds);
}

void adm_metrics_render(const adm_metrics_t *m, core_str_t *out) {
    adm_metrics_writer_t w = {out};
    for (size_t i = 0; i < m->n; i++)
        m->sources[i].render(m->sources[i].ud, &w);
    process_metrics(&w);
}
