/* The SSE benchmarks' load generator in C: what bench/sse_loadgen.py does, for a fifth of its CPU.
 *
 * Why: the benchmarks run their clients on the same two cores as the servers they measure. A
 * Python client spends about as much CPU per event as the server that sends it, so on this
 * machine the clients took half the cores from the servers, and most of all when two replicas
 * fan out at once. This client does the same reading with one epoll loop and no allocation per
 * event, so what the tables measure is the servers, not the clients.
 *
 * Same behaviour as sse_loadgen.py: a minimal HTTP/1.1 GET per connection, a chunked-body
 * decoder, an event-stream parser (LF or CRLF line ends); for each `price` event it reads the
 * `timestamp` field and, inside the armed window [w0, w1), counts it for its connection and
 * records latency = wall clock at receipt - timestamp (ms, 0.1 ms bins). Its reports are the
 * same JSON objects, so the benchmarks aggregate both alike.
 *
 * Driven over stdin/stdout, one command per line, one JSON answer per line:
 *     open HOST PORT COUNT CONCURRENCY TIMEOUT_S REQUEST_FILE   (requests end with a blank line)
 *     arm W0 W1
 *     report
 *     close
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define HEAD_LIMIT 65536
#define LATENCY_BINS 3000000 /* 0.1 ms bins: up to 300 s, later ones in the last */
#define TICK_SLOTS 65536     /* distinct tick timestamps in one window */
#define TICK_MS_BINS 5000    /* a tick's own latencies, 1 ms bins: up to 5 s, later ones in the last */
#define MAX_ERRORS 16

typedef struct {
    char *data;
    size_t len, cap;
} Buf;

enum { CONNECTING, HEAD, BODY };

typedef struct {
    int fd, state, chunked, closed, failed, kept;
    long long chunk_left, count, last_ts;
    int chunk_skip;
    double started, closed_at;
    Buf head, size_line, sse; /* response head; a chunk-size line; an unfinished event block */
    const char *request;
    size_t request_len;
} Conn;

typedef struct {
    long long ts, receipts;
    double first, last;
    uint32_t *ms; /* this tick's latencies, 1 ms bins */
} Tick;

static struct {
    long long w0, w1, duplicates, price_events, bytes;
    uint32_t *bins;
    Tick ticks[TICK_SLOTS];
} stats;

static Conn *conns;
static size_t nconns;
static int epfd;

/* The open in progress. */
static struct {
    int active;
    size_t first, count, next, in_flight, concurrency, opened, failed;
    double started, timeout_s;
    char *requests;
    char errors[MAX_ERRORS][96];
    long long error_counts[MAX_ERRORS];
} opening;

static double now_ms(void) {
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    return (double)t.tv_sec * 1000.0 + (double)t.tv_nsec / 1e6;
}

static void buf_add(Buf *b, const char *p, size_t n) {
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1) cap *= 2;
        b->data = realloc(b->data, cap);
        if (!b->data) abort();
        b->cap = cap;
    }
    memcpy(b->data + b->len, p, n);
    b->len += n;
    b->data[b->len] = 0;
}

static void buf_free(Buf *b) {
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}

/* -- the open command: COUNT connections, CONCURRENCY at a time ------------------------------ */

static void count_error(const char *reason) {
    for (int i = 0; i < MAX_ERRORS; i++) {
        if (opening.error_counts[i] && strcmp(opening.errors[i], reason) == 0) {
            opening.error_counts[i]++;
            return;
        }
        if (!opening.error_counts[i]) {
            snprintf(opening.errors[i], sizeof opening.errors[i], "%s", reason);
            opening.error_counts[i] = 1;
            return;
        }
    }
}

static void drop(Conn *c, int abortive) {
    if (c->fd < 0) return;
    if (abortive) {
        struct linger off = {1, 0}; /* RST, as asyncio's transport.abort() */
        setsockopt(c->fd, SOL_SOCKET, SO_LINGER, &off, sizeof off);
    }
    epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    c->fd = -1;
    buf_free(&c->head);
    buf_free(&c->size_line);
}

static void settle(void) { /* an opening connection is ready or failed: let the next start */
    opening.in_flight--;
}

static void fail(Conn *c, const char *reason) {
    if (c->state != BODY && !c->failed) {
        c->failed = 1;
        opening.failed++;
        count_error(reason);
        settle();
    }
    drop(c, 1);
}

static void start_next(const char *host, int port) {
    while (opening.in_flight < opening.concurrency && opening.next < opening.count) {
        Conn *c = &conns[opening.first + opening.next++];
        c->started = now_ms();
        c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
        opening.in_flight++;
        if (c->fd < 0) {
            fail(c, strerror(errno));
            continue;
        }
        struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
        inet_pton(AF_INET, host, &to.sin_addr);
        if (connect(c->fd, (struct sockaddr *)&to, sizeof to) < 0 && errno != EINPROGRESS) {
            fail(c, strerror(errno));
            continue;
        }
        struct epoll_event ev = {.events = EPOLLOUT, .data.u64 = (uint64_t)(c - conns) + 1};
        epoll_ctl(epfd, EPOLL_CTL_ADD, c->fd, &ev);
    }
}

/* -- what the server sends ------------------------------------------------------------------- */

static Tick *tick_slot(long long ts) {
    size_t i = (size_t)((unsigned long long)ts * 2654435761u) % TICK_SLOTS;
    while (stats.ticks[i].ts && stats.ticks[i].ts != ts) i = (i + 1) % TICK_SLOTS;
    return &stats.ticks[i];
}

static void price(Conn *c, const char *data, size_t len, double now) {
    stats.price_events++;
    const char *at = memmem(data, len, "\"timestamp\":", 12);
    if (!at) return;
    long long ts = strtoll(at + 12, NULL, 10);
    if (ts < stats.w0 || ts >= stats.w1) {
        if (ts > c->last_ts) c->last_ts = ts;
        return;
    }
    if (ts <= c->last_ts) {
        stats.duplicates++;
        return;
    }
    c->last_ts = ts;
    c->count++;
    double latency = now - (double)ts;
    long long bin = latency > 0 ? (long long)(latency * 10) : 0;
    stats.bins[bin < LATENCY_BINS ? bin : LATENCY_BINS - 1]++;
    Tick *t = tick_slot(ts);
    if (!t->ts) {
        t->ts = ts;
        t->first = latency;
        t->ms = calloc(TICK_MS_BINS, sizeof *t->ms);
    }
    long long ms = latency > 0 ? (long long)latency : 0;
    t->ms[ms < TICK_MS_BINS ? ms : TICK_MS_BINS - 1]++;
    t->receipts++;
    t->last = latency;
}

/* Every complete event block in c->sse; the unfinished rest stays. */
static void events(Conn *c, double now) {
    char *buf = c->sse.data, *end = buf + c->sse.len, *block = buf, *line = buf;
    const char *event = "", *data = "";
    size_t event_len = 0, data_len = 0;
    char *nl;
    while ((nl = memchr(line, '\n', (size_t)(end - line))) != NULL) {
        size_t n = (size_t)(nl - line);
        if (n && line[n - 1] == '\r') n--;
        if (n == 0) { /* a blank line ends the block */
            if (event_len == 5 && memcmp(event, "price", 5) == 0) price(c, data, data_len, now);
            event_len = data_len = 0;
            block = nl + 1;
        } else if (n >= 6 && memcmp(line, "event:", 6) == 0) {
            event = line + 6;
            event_len = n - 6;
            while (event_len && *event == ' ') event++, event_len--;
        } else if (n >= 5 && memcmp(line, "data:", 5) == 0) {
            data = line + 5;
            data_len = n - 5;
        }
        line = nl + 1;
    }
    size_t rest = (size_t)(end - block);
    if (block != buf) memmove(buf, block, rest);
    c->sse.len = rest;
}

static void body(Conn *c, const char *p, size_t n, double now) {
    if (!c->chunked) {
        buf_add(&c->sse, p, n);
        events(c, now);
        return;
    }
    const char *end = p + n;
    while (p < end) {
        if (c->chunk_left) {
            size_t take = (size_t)(end - p) < (size_t)c->chunk_left ? (size_t)(end - p)
                                                                    : (size_t)c->chunk_left;
            buf_add(&c->sse, p, take);
            p += take;
            c->chunk_left -= (long long)take;
            if (!c->chunk_left) c->chunk_skip = 2;
        } else if (c->chunk_skip) {
            size_t take = (size_t)(end - p) < (size_t)c->chunk_skip ? (size_t)(end - p)
                                                                   : (size_t)c->chunk_skip;
            p += take;
            c->chunk_skip -= (int)take;
        } else {
            const char *nl = memchr(p, '\n', (size_t)(end - p));
            buf_add(&c->size_line, p, (size_t)((nl ? nl + 1 : end) - p));
            if (!nl) break;
            p = nl + 1;
            long long length = strtoll(c->size_line.data, NULL, 16);
            c->size_line.len = 0;
            if (length == 0) break; /* the last chunk: the server ended the stream */
            c->chunk_left = length;
        }
    }
    if (c->sse.len) events(c, now);
}

static void head(Conn *c, const char *p, size_t n, double now) {
    buf_add(&c->head, p, n);
    char *end = strstr(c->head.data, "\r\n\r\n");
    if (!end) {
        if (c->head.len > HEAD_LIMIT) fail(c, "response head too long");
        return;
    }
    *end = 0;
    char *status = strchr(c->head.data, ' ');
    if (!status || strncmp(status + 1, "200", 3) != 0) {
        char reason[32];
        snprintf(reason, sizeof reason, "HTTP %.3s", status ? status + 1 : "?");
        fail(c, reason);
        return;
    }
    c->chunked = strcasestr(c->head.data, "transfer-encoding: chunked") != NULL;
    c->state = BODY;
    c->kept = 1;
    opening.opened++;
    settle();
    size_t used = (size_t)(end + 4 - c->head.data);
    size_t rest = c->head.len - used;
    if (rest) {
        Buf tail = {0};
        buf_add(&tail, end + 4, rest);
        body(c, tail.data, rest, now);
        buf_free(&tail);
    }
    buf_free(&c->head);
}

static void lost(Conn *c, const char *reason) {
    if (c->state != BODY) {
        char why[96];
        snprintf(why, sizeof why, "closed before headers: %s", reason);
        fail(c, why);
        return;
    }
    c->closed = 1;
    c->closed_at = now_ms();
    drop(c, 0);
}

static char chunk[262144];

static void readable(Conn *c) {
    for (;;) {
        ssize_t n = recv(c->fd, chunk, sizeof chunk, 0);
        if (n > 0) {
            double now = now_ms();
            stats.bytes += n;
            if (c->state == BODY)
                body(c, chunk, (size_t)n, now);
            else
                head(c, chunk, (size_t)n, now);
            if (c->fd < 0 || (size_t)n < sizeof chunk) return;
        } else if (n == 0) {
            lost(c, "EOF");
            return;
        } else {
            if (errno != EAGAIN && errno != EINTR) lost(c, strerror(errno));
            if (errno != EINTR) return;
        }
    }
}

static void writable(Conn *c) {
    int error = 0;
    socklen_t size = sizeof error;
    getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &error, &size);
    if (error) {
        fail(c, strerror(error));
        return;
    }
    c->state = HEAD;
    if (send(c->fd, c->request, c->request_len, MSG_NOSIGNAL) != (ssize_t)c->request_len) {
        fail(c, "request not sent");
        return;
    }
    struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP, .data.u64 = (uint64_t)(c - conns) + 1};
    epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
}

/* -- commands ------------------------------------------------------------------------------- */

static char host[64];
static int port;

static void begin_open(char *args) {
    char file[4096];
    size_t count, concurrency;
    double timeout_s;
    if (sscanf(args, "%63s %d %zu %zu %lf %4095s", host, &port, &count, &concurrency, &timeout_s,
               file) != 6) {
        printf("{\"error\": \"bad open command\"}\n");
        fflush(stdout);
        return;
    }
    FILE *in = fopen(file, "rb");
    Buf all = {0};
    char part[8192];
    size_t got;
    while (in && (got = fread(part, 1, sizeof part, in)) > 0) buf_add(&all, part, got);
    if (in) fclose(in);
    /* Split the requests at their blank lines. */
    const char *starts[4096];
    size_t lens[4096], nreq = 0;
    for (char *p = all.data; p && *p && nreq < 4096;) {
        char *e = strstr(p, "\r\n\r\n");
        if (!e) break;
        starts[nreq] = p;
        lens[nreq++] = (size_t)(e + 4 - p);
        p = e + 4;
    }
    if (!nreq) {
        printf("{\"error\": \"no request in %s\"}\n", file);
        fflush(stdout);
        return;
    }
    conns = realloc(conns, (nconns + count) * sizeof *conns);
    memset(conns + nconns, 0, count * sizeof *conns);
    for (size_t i = 0; i < count; i++) {
        conns[nconns + i].fd = -1;
        conns[nconns + i].request = starts[i % nreq];
        conns[nconns + i].request_len = lens[i % nreq];
    }
    free(opening.requests); /* the last open's: its connections are all past their request */
    memset(&opening, 0, sizeof opening);
    opening.active = 1;
    opening.timeout_s = timeout_s;
    opening.first = nconns;
    opening.count = count;
    opening.concurrency = concurrency ? concurrency : 100;
    opening.started = now_ms();
    opening.requests = all.data; /* the connections point into it until they are closed */
    nconns += count;
    start_next(host, port);
}

static void finish_open_if_done(void) {
    if (!opening.active || opening.opened + opening.failed < opening.count) return;
    opening.active = 0;
    printf("{\"opened\": %zu, \"failed\": %zu, \"errors\": {", opening.opened, opening.failed);
    for (int i = 0, first = 1; i < MAX_ERRORS && opening.error_counts[i]; i++, first = 0) {
        char clean[96];
        size_t k = 0;
        for (const char *s = opening.errors[i]; *s && k < 80; s++)
            clean[k++] = (*s == '"' || *s == '\\') ? '\'' : *s;
        clean[k] = 0;
        printf("%s\"%s\": %lld", first ? "" : ", ", clean, opening.error_counts[i]);
    }
    printf("}, \"seconds\": %.3f}\n", (now_ms() - opening.started) / 1000.0);
    fflush(stdout);
}

static void check_timeouts(void) {
    static double checked;
    double now = now_ms();
    if (now - checked < 100) return;
    checked = now;
    for (size_t i = opening.first; i < opening.first + opening.next; i++) {
        Conn *c = &conns[i];
        if (c->fd >= 0 && c->state != BODY && now - c->started > opening.timeout_s * 1000.0)
            fail(c, "timeout");
    }
}

static void arm(char *args) {
    if (sscanf(args, "%lld %lld", &stats.w0, &stats.w1) != 2) {
        printf("{\"error\": \"bad arm command\"}\n");
    } else {
        for (size_t i = 0; i < nconns; i++) conns[i].count = 0;
        memset(stats.bins, 0, LATENCY_BINS * sizeof *stats.bins);
        for (size_t i = 0; i < TICK_SLOTS; i++) free(stats.ticks[i].ms);
        memset(stats.ticks, 0, sizeof stats.ticks);
        stats.duplicates = 0;
        printf("{\"armed\": true}\n");
    }
    fflush(stdout);
}

static int by_value(const void *a, const void *b) {
    long long x = *(const long long *)a, y = *(const long long *)b;
    return (x > y) - (x < y);
}

static void report(void) {
    size_t kept = 0, closed = 0, closed_in_window = 0;
    long long *counts = malloc((nconns + 1) * sizeof *counts);
    for (size_t i = 0; i < nconns; i++) {
        if (!conns[i].kept) continue;
        counts[kept++] = conns[i].count;
        if (conns[i].closed) {
            closed++;
            if (conns[i].closed_at >= (double)stats.w0) closed_in_window++;
        }
    }
    printf("{\"connections\": %zu, \"closed\": %zu, \"closed_in_window\": %zu", kept, closed,
           closed_in_window);
    qsort(counts, kept, sizeof *counts, by_value);
    printf(", \"per_conn_counts\": {");
    for (size_t i = 0; i < kept;) {
        size_t j = i;
        while (j < kept && counts[j] == counts[i]) j++;
        printf("%s\"%lld\": %zu", i ? ", " : "", counts[i], j - i);
        i = j;
    }
    free(counts);
    const char *keys[] = {"per_tick", "first", "last"};
    for (int k = 0; k < 3; k++) {
        printf("}, \"%s\": {", keys[k]);
        for (size_t i = 0, first = 1; i < TICK_SLOTS; i++) {
            Tick *t = &stats.ticks[i];
            if (!t->ts) continue;
            if (k == 0)
                printf("%s\"%lld\": %lld", first ? "" : ", ", t->ts, t->receipts);
            else
                printf("%s\"%lld\": %.2f", first ? "" : ", ", t->ts, k == 1 ? t->first : t->last);
            first = 0;
        }
    }
    printf("}, \"tick_bins\": {");
    for (size_t i = 0, first = 1; i < TICK_SLOTS; i++) {
        Tick *t = &stats.ticks[i];
        if (!t->ts) continue;
        printf("%s\"%lld\": {", first ? "" : ", ", t->ts);
        for (size_t b = 0, none = 1; b < TICK_MS_BINS; b++) {
            if (!t->ms[b]) continue;
            printf("%s\"%zu\": %u", none ? "" : ", ", b, t->ms[b]);
            none = 0;
        }
        printf("}");
        first = 0;
    }
    printf("}, \"latency_bins\": {");
    for (size_t i = 0, first = 1; i < LATENCY_BINS; i++) {
        if (!stats.bins[i]) continue;
        printf("%s\"%zu\": %u", first ? "" : ", ", i, stats.bins[i]);
        first = 0;
    }
    printf("}, \"duplicates\": %lld, \"price_events\": %lld, \"bytes\": %lld}\n", stats.duplicates,
           stats.price_events, stats.bytes);
    fflush(stdout);
}

static void command(char *line) {
    if (strncmp(line, "open ", 5) == 0) {
        begin_open(line + 5);
    } else if (strncmp(line, "arm ", 4) == 0) {
        arm(line + 4);
    } else if (strcmp(line, "report") == 0) {
        report();
    } else if (strcmp(line, "close") == 0) {
        for (size_t i = 0; i < nconns; i++) drop(&conns[i], 1);
        printf("{\"closed\": true}\n");
        fflush(stdout);
        exit(0);
    } else {
        printf("{\"error\": \"unknown command\"}\n");
        fflush(stdout);
    }
}

int main(void) {
    struct rlimit files;
    getrlimit(RLIMIT_NOFILE, &files);
    files.rlim_cur = files.rlim_max;
    setrlimit(RLIMIT_NOFILE, &files);
    fprintf(stderr, "sse_cclient: RLIMIT_NOFILE %llu\n", (unsigned long long)files.rlim_cur);
    stats.bins = calloc(LATENCY_BINS, sizeof *stats.bins);
    epfd = epoll_create1(0);
    struct epoll_event in = {.events = EPOLLIN, .data.u64 = 0};
    epoll_ctl(epfd, EPOLL_CTL_ADD, 0, &in);
    Buf line = {0};
    struct epoll_event ready[1024];
    for (;;) {
        int n = epoll_wait(epfd, ready, 1024, opening.active ? 100 : -1);
        for (int i = 0; i < n; i++) {
            uint64_t tag = ready[i].data.u64;
            if (tag == 0) { /* a command, or the end of stdin */
                char part[65536];
                ssize_t got = read(0, part, sizeof part);
                if (got <= 0) return 0;
                buf_add(&line, part, (size_t)got);
                char *nl;
                while (line.len && (nl = memchr(line.data, '\n', line.len)) != NULL) {
                    *nl = 0;
                    size_t used = (size_t)(nl + 1 - line.data);
                    char *text = strdup(line.data);
                    memmove(line.data, nl + 1, line.len - used);
                    line.len -= used;
                    command(text);
                    free(text);
                }
                continue;
            }
            Conn *c = &conns[tag - 1];
            if (c->fd < 0) continue;
            if (c->state == CONNECTING)
                writable(c);
            else
                readable(c);
        }
        if (opening.active) {
            check_timeouts();
            start_next(host, port);
            finish_open_if_done();
        }
    }
}
