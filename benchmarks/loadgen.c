/*
 * The benchmark's load generator: one thread, epoll, non-blocking sockets, masked frames
 * built once (or masked in place when each message differs). Linux only.
 *
 *   loadgen --port P --mode echo|handshake|idle|fanout [options]
 *
 * The conversation with the harness (benchmarks/run.py) goes over stdin/stdout, one line
 * each way, so that the harness can read the server's CPU time and memory at the edges of
 * the measured window:
 *
 *   loadgen -> "ready"           connections open (and warmed up, synchronised)
 *   harness -> "go"              the window starts
 *   loadgen -> "result {json}"   the window ended; the figures, the load generator's CPU
 *   harness -> "bye"             close every connection (close frames) and exit
 *
 * A protocol failure (refused upgrade, wrong echo, unexpected close, time out) prints
 * "error: ..." on stderr and exits with status 2. Build: cc -O2 -o loadgen loadgen.c -lm
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define READ_CHUNK 65536
#define SYNC_RESEND_NS 300000000LL   /* fan-out: resend the sync message after this, then */
#define SYNC_RESEND_MAX_NS 4000000000LL /* twice as long each time, up to this */
#define DRAIN_LIMIT_NS 30000000000LL /* fan-out: wait this long for the window's messages */
#define CLOSE_LIMIT_NS 2000000000LL  /* at exit: wait this long for the servers' closes */
#define SETUP_LIMIT_NS 120000000000LL /* connecting and warming up may take this long */
#define TAG "~~"                     /* a fan-out message carries TAG + 10 digits (its seq) */
#define TAG_LEN 12

/* the key of RFC 6455's example, and its accept value */
#define WS_KEY "dGhlIHNhbXBsZSBub25jZQ=="
#define WS_ACCEPT "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="

enum mode { M_ECHO, M_HANDSHAKE, M_IDLE, M_FANOUT };
enum state { S_CONNECTING, S_UPGRADING, S_OPEN, S_CLOSING, S_DRAINING };
enum phase { P_SETUP, P_READY, P_WINDOW, P_DONE, P_BYE };

typedef struct {
    uint8_t *p;
    size_t off, len, cap; /* bytes [off, len) are pending */
} buf_t;

typedef struct conn {
    int fd;
    enum state st;
    int index;        /* position in conns[] (-1: a draining handshake connection) */
    int receiver;     /* fan-out: counts towards deliveries */
    int reading;      /* 0: never reads once open (a stalled viewer) */
    uint32_t last_seq; /* fan-out: the last tagged message received (+1; 0: none) */
    int waiting_out;  /* EPOLLOUT registered */
    int awaiting;     /* echo: a message is in flight */
    int64_t started;  /* connect() time (handshake latency), send time (echo) */
    buf_t in, out, msg;
    int msg_op;
} conn_t;

/* -- options ------------------------------------------------------------------------- */
static const char *host = "127.0.0.1";
static int port;
static enum mode mode = M_ECHO;
static int nconns = 1;
static size_t size = 32;
static int text_messages;
static double duration = 1.0, warmup = 0.2;
static const char *path = "/echo";
static const char *sender_path; /* fan-out: the sender connects here, and is no receiver */
static const char *greeting;    /* a text message every connection sends once open */
static const char *tmpl_before = "", *tmpl_after = ""; /* fan-out: around the tag */
static int window = 8;          /* fan-out: messages not yet delivered to all */
static double rate;             /* fan-out: messages/s instead of a window */
static double idle_fraction;    /* fan-out: receivers that never read */
static int key_every;           /* fan-out, stream protocol: every Nth message a KEY */
static int concurrency = 50;    /* handshakes in flight while connecting */
static uint64_t min_count = 1;  /* echo, handshakes: round trips / handshakes per window */

/* -- state --------------------------------------------------------------------------- */
static int ep;
static conn_t **conns;
static int opened, started_conns, open_count;
static enum phase phase = P_SETUP;
static int64_t t_window, t_end, t_setup, t_bye;
static struct rusage ru_start, ru_end;
static uint8_t mask_key[4];
static uint8_t *echo_payload, *echo_frame;
static size_t echo_frame_len;
static char request[1024];
static size_t request_len;

/* measurements */
static uint32_t *lat;     /* µs, one per round trip / handshake / delivery */
static size_t nlat, caplat;
static uint64_t count, bytes, unclean;
/* fan-out bookkeeping, per sequence number */
static int64_t *sent_ns;
static int32_t *remaining;
static uint32_t *reach_us;
static size_t capseq;
static uint32_t next_seq, first_seq, end_seq, inflight, nreach, readers;

static int64_t last_sync, sync_interval = SYNC_RESEND_NS, next_send;

static void die(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs("error: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(2);
}

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void *xrealloc(void *p, size_t n) {
    void *q = realloc(p, n ? n : 1);
    if (!q) die("out of memory");
    return q;
}

static void buf_reserve(buf_t *b, size_t extra) {
    if (b->off && b->off == b->len) b->off = b->len = 0;
    if (b->len + extra <= b->cap) return;
    if (b->off) { /* compact first */
        memmove(b->p, b->p + b->off, b->len - b->off);
        b->len -= b->off;
        b->off = 0;
        if (b->len + extra <= b->cap) return;
    }
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->len + extra) cap *= 2;
    b->p = xrealloc(b->p, cap);
    b->cap = cap;
}

static void buf_free(buf_t *b) { free(b->p); memset(b, 0, sizeof *b); }

static void record(uint32_t *value_us) {
    if (nlat == caplat) {
        caplat = caplat ? caplat * 2 : 65536;
        lat = xrealloc(lat, caplat * sizeof *lat);
    }
    lat[nlat++] = *value_us;
}

static uint32_t us_since(int64_t t, int64_t now) {
    int64_t d = (now - t) / 1000;
    return d < 0 ? 0 : d > UINT32_MAX ? UINT32_MAX : (uint32_t)d;
}

/* -- frames -------------------------------------------------------------------------- */

static size_t frame_header(uint8_t *h, int op, size_t n) {
    size_t i = 0;
    h[i++] = 0x80 | op;
    if (n < 126) h[i++] = 0x80 | n;
    else if (n < 65536) { h[i++] = 0x80 | 126; h[i++] = n >> 8; h[i++] = n & 0xff; }
    else {
        h[i++] = 0x80 | 127;
        for (int s = 56; s >= 0; s -= 8) h[i++] = ((uint64_t)n >> s) & 0xff;
    }
    memcpy(h + i, mask_key, 4);
    return i + 4;
}

static void mask(uint8_t *dst, const uint8_t *src, size_t n) {
    uint64_t m;
    uint8_t m8[8];
    for (int i = 0; i < 8; i++) m8[i] = mask_key[i & 3];
    memcpy(&m, m8, 8);
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t v;
        memcpy(&v, src + i, 8);
        v ^= m;
        memcpy(dst + i, &v, 8);
    }
    for (; i < n; i++) dst[i] = src[i] ^ mask_key[i & 3];
}

static void rearm(conn_t *c) {
    struct epoll_event ev = {.events = EPOLLIN | (c->waiting_out ? EPOLLOUT : 0), .data.ptr = c};
    if (!c->reading && c->st == S_OPEN) ev.events &= ~EPOLLIN;
    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
}

static void want_out(conn_t *c, int on) {
    if (c->waiting_out == on) return;
    c->waiting_out = on;
    rearm(c);
}

static void flush(conn_t *c) {
    buf_t *b = &c->out;
    while (b->off < b->len) {
        ssize_t n = send(c->fd, b->p + b->off, b->len - b->off, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) break;
            if (errno == EINTR) continue;
            if (c->st == S_CLOSING || c->st == S_DRAINING || phase == P_BYE) { b->off = b->len; break; }
            die("send to connection %d: %s", c->index, strerror(errno));
        }
        b->off += n;
    }
    if (b->off == b->len) b->off = b->len = 0;
    want_out(c, b->len > 0);
}

/* queue a frame; if payload is NULL the frame is already built (header and masked data) */
static void send_frame(conn_t *c, int op, const uint8_t *payload, size_t n) {
    buf_reserve(&c->out, n + 14);
    uint8_t *dst = c->out.p + c->out.len;
    size_t h = frame_header(dst, op, n);
    mask(dst + h, payload, n);
    c->out.len += h + n;
    flush(c);
}

static void send_raw(conn_t *c, const uint8_t *data, size_t n) {
    buf_reserve(&c->out, n);
    memcpy(c->out.p + c->out.len, data, n);
    c->out.len += n;
    flush(c);
}

static void send_close(conn_t *c) {
    uint8_t code[2] = {1000 >> 8, 1000 & 0xff};
    send_frame(c, 8, code, 2);
    c->st = S_CLOSING;
}

/* -- connections --------------------------------------------------------------------- */

static conn_t *start_conn(int index) {
    conn_t *c = calloc(1, sizeof *c);
    if (!c) die("out of memory");
    c->index = index;
    c->reading = 1;
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (c->fd < 0) die("socket: %s", strerror(errno));
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    inet_pton(AF_INET, host, &a.sin_addr);
    c->started = now_ns();
    if (connect(c->fd, (struct sockaddr *)&a, sizeof a) < 0 && errno != EINPROGRESS)
        die("connect: %s", strerror(errno));
    c->st = S_CONNECTING;
    struct epoll_event ev = {.events = EPOLLOUT | EPOLLIN, .data.ptr = c};
    c->waiting_out = 1;
    if (epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev) < 0) die("epoll_ctl: %s", strerror(errno));
    started_conns++;
    if (index >= 0) conns[index] = c;
    return c;
}

static void free_conn(conn_t *c) {
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    if (c->index >= 0 && conns[c->index] == c) conns[c->index] = NULL;
    buf_free(&c->in);
    buf_free(&c->out);
    buf_free(&c->msg);
    free(c);
}

static const char *conn_path(conn_t *c) {
    return (mode == M_FANOUT && sender_path && c->index == 0) ? sender_path : path;
}

/* echo and handshakes: the window lasts --duration, and until --min-count are done */
static int window_over(int64_t now) { return now >= t_end && count >= min_count; }

/* -- fan-out ------------------------------------------------------------------------- */

static void grow_seq(uint32_t seq) {
    if (seq < capseq) return;
    size_t cap = capseq ? capseq * 2 : 4096;
    while (cap <= seq) cap *= 2;
    sent_ns = xrealloc(sent_ns, cap * sizeof *sent_ns);
    remaining = xrealloc(remaining, cap * sizeof *remaining);
    reach_us = xrealloc(reach_us, cap * sizeof *reach_us);
    capseq = cap;
}

static void send_tagged(int key) {
    conn_t *s = conns[0];
    if (!s || s->st != S_OPEN) die("the sender's connection is gone");
    uint32_t seq = next_seq++;
    grow_seq(seq);
    size_t before = strlen(tmpl_before), after = strlen(tmpl_after);
    size_t head = key_every ? 1 : 0;
    size_t n = head + before + (size > TAG_LEN ? size : TAG_LEN) + after;
    uint8_t stackbuf[4096], *m = n <= sizeof stackbuf ? stackbuf : xrealloc(NULL, n);
    size_t i = 0;
    if (key_every) m[i++] = key ? 1 : 2;
    memcpy(m + i, tmpl_before, before);
    i += before;
    char tag[TAG_LEN + 1];
    snprintf(tag, sizeof tag, TAG "%010u", seq);
    memcpy(m + i, tag, TAG_LEN);
    i += TAG_LEN;
    while (i < n - after) m[i++] = 'x';
    memcpy(m + i, tmpl_after, after);
    sent_ns[seq] = now_ns();
    remaining[seq] = (int32_t)readers;
    reach_us[seq] = 0;
    send_frame(s, text_messages ? 1 : 2, m, n);
    if (m != stackbuf) free(m);
}

static void fanout_pump(int64_t now) {
    if (phase != P_WINDOW || now >= t_end) return;
    if (rate > 0) {
        while (next_send <= now && now < t_end) {
            send_tagged(key_every && (next_seq - first_seq) % key_every == 0);
            inflight++;
            next_send += (int64_t)(1e9 / rate);
        }
        return;
    }
    while (inflight < (uint32_t)window) {
        send_tagged(0);
        inflight++;
    }
}

static void fanout_message(conn_t *c, const uint8_t *p, size_t n, int64_t now) {
    size_t scan = n < 256 ? n : 256;
    const uint8_t *t = memmem(p, scan, TAG, 2);
    if (!t || (size_t)(t - p) + TAG_LEN > n) return; /* a control message of the protocol */
    uint32_t seq = 0;
    for (int i = 2; i < TAG_LEN; i++) {
        if (t[i] < '0' || t[i] > '9') return;
        seq = seq * 10 + (t[i] - '0');
    }
    if (seq >= next_seq) die("received message %u, never sent", seq);
    if (!c->receiver) return;
    c->last_seq = seq + 1;
    if (seq < first_seq || seq >= end_seq) return; /* sync messages, or after the window */
    count++;
    bytes += n;
    uint32_t d = us_since(sent_ns[seq], now);
    record(&d);
    if (--remaining[seq] == 0) {
        reach_us[seq] = d;
        nreach++;
        if (inflight) inflight--;
    }
}

/* -- incoming frames ----------------------------------------------------------------- */

static void on_message(conn_t *c, int op, const uint8_t *p, size_t n) {
    int64_t now = now_ns();
    if (mode == M_ECHO) {
        if (!c->awaiting) die("connection %d: a message it did not ask for", c->index);
        if (n != size || op != (text_messages ? 1 : 2) || memcmp(p, echo_payload, n) != 0)
            die("connection %d: the echo (%zu bytes, opcode %d) differs from the %zu bytes sent",
                c->index, n, op, size);
        c->awaiting = 0;
        if (phase == P_WINDOW) { /* completed in the window */
            uint32_t d = us_since(c->started, now);
            record(&d);
            count++;
            bytes += n;
        }
        if (phase == P_WINDOW && window_over(now)) return;
        if (phase >= P_DONE) return;
        c->awaiting = 1;
        c->started = now;
        send_raw(c, echo_frame, echo_frame_len);
    } else if (mode == M_FANOUT) {
        fanout_message(c, p, n, now);
    }
}

static void handshake_done(conn_t *c);

static void on_frame(conn_t *c, int fin, int op, const uint8_t *p, size_t n) {
    if (op == 8) { /* close */
        if (c->st == S_CLOSING) {
            if (mode == M_HANDSHAKE && phase < P_BYE) { handshake_done(c); return; }
            c->st = S_DRAINING;
            return;
        }
        if (phase == P_BYE) { c->st = S_DRAINING; return; }
        if (!c->reading || !c->receiver) { c->st = S_DRAINING; return; }
        unsigned code = n >= 2 ? (p[0] << 8 | p[1]) : 1005;
        die("connection %d: the server closed it (code %u: %.*s)", c->index, code,
            (int)(n > 2 ? n - 2 : 0), (const char *)p + 2);
    }
    if (op == 9) { send_frame(c, 10, p, n); return; }
    if (op == 10) return;
    if (op == 0) {
        buf_reserve(&c->msg, n);
        memcpy(c->msg.p + c->msg.len, p, n);
        c->msg.len += n;
        if (fin) {
            on_message(c, c->msg_op, c->msg.p, c->msg.len);
            c->msg.len = 0;
        }
        return;
    }
    if (fin) { on_message(c, op, p, n); return; }
    c->msg_op = op;
    buf_reserve(&c->msg, n);
    memcpy(c->msg.p, p, n);
    c->msg.len = n;
}

static void on_open(conn_t *c);

static int parse_upgrade(conn_t *c) {
    buf_t *b = &c->in;
    uint8_t *end = memmem(b->p + b->off, b->len - b->off, "\r\n\r\n", 4);
    if (!end) {
        if (b->len - b->off > 16384) die("an answer to the upgrade without an end");
        return 0;
    }
    size_t hlen = end + 4 - (b->p + b->off);
    if (hlen < 12 || memcmp(b->p + b->off, "HTTP/1.1 101", 12) != 0)
        die("the upgrade of %s was refused: %.*s", conn_path(c),
            (int)(hlen > 200 ? 200 : hlen), (const char *)b->p + b->off);
    if (!memmem(b->p + b->off, hlen, WS_ACCEPT, strlen(WS_ACCEPT)))
        die("the upgrade's answer lacks the right Sec-WebSocket-Accept");
    b->off += hlen;
    on_open(c);
    return 1;
}

static void parse_frames(conn_t *c) {
    buf_t *b = &c->in;
    while (b->len - b->off >= 2) {
        uint8_t *h = b->p + b->off;
        size_t avail = b->len - b->off, hl = 2;
        uint64_t n = h[1] & 0x7f;
        if (n == 126) {
            if (avail < 4) return;
            n = (uint64_t)h[2] << 8 | h[3];
            hl = 4;
        } else if (n == 127) {
            if (avail < 10) return;
            n = 0;
            for (int i = 0; i < 8; i++) n = n << 8 | h[2 + i];
            hl = 10;
        }
        if (h[1] & 0x80) die("a masked frame from the server");
        if (avail < hl + n) {
            buf_reserve(b, hl + n - avail + READ_CHUNK);
            return;
        }
        b->off += hl + n;
        on_frame(c, h[0] >> 7, h[0] & 0x0f, h + hl, n);
        if (c->st == S_DRAINING && mode == M_HANDSHAKE) return;
    }
}

/* -- per-mode life of a connection --------------------------------------------------- */

static void ready(void);

static void connect_more(void) {
    while (started_conns < nconns && started_conns - opened < concurrency) {
        if (mode == M_FANOUT && sender_path && started_conns == 1 && opened == 0) return;
        start_conn(started_conns);
    }
}

static void on_open(conn_t *c) {
    c->st = S_OPEN;
    opened++;
    open_count++;
    if (phase == P_BYE) {
        send_close(c);
        return;
    }
    if (mode == M_HANDSHAKE) {
        send_close(c);
        return;
    }
    if (mode == M_FANOUT) {
        int sender = c->index == 0;
        c->receiver = !(sender && sender_path);
        if (c->receiver) {
            /* the last idle_fraction of the receivers never read */
            int nrecv = nconns - (sender_path ? 1 : 0);
            int pos = c->index - (sender_path ? 1 : 0);
            if (pos >= nrecv - (int)(idle_fraction * nrecv)) {
                c->reading = 0;
                c->receiver = 0;
            } else {
                readers++;
            }
        }
        if (sender && key_every) send_frame(c, 2, (const uint8_t *)"\0init", 5);
        if (!c->reading) rearm(c);
    }
    if (greeting) send_frame(c, 1, (const uint8_t *)greeting, strlen(greeting));
    if (mode == M_ECHO) {
        c->awaiting = 1;
        c->started = now_ns();
        send_raw(c, echo_frame, echo_frame_len);
    }
    connect_more();
}

static void handshake_done(conn_t *c) {
    int64_t now = now_ns();
    if (phase == P_WINDOW) { /* completed in the window */
        uint32_t d = us_since(c->started, now);
        record(&d);
        count++;
    }
    int index = c->index;
    c->st = S_DRAINING; /* wait for the server to close TCP (it closes first) */
    c->index = -1;
    conns[index] = NULL;
    if (phase == P_SETUP || phase == P_READY || (phase == P_WINDOW && !window_over(now)))
        start_conn(index);
}

static void on_readable(conn_t *c) {
    for (;;) {
        buf_reserve(&c->in, READ_CHUNK);
        size_t want = c->in.cap - c->in.len;
        ssize_t n = recv(c->fd, c->in.p + c->in.len, want, 0);
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) return;
            if (errno == EINTR) continue;
            if (c->st == S_DRAINING || c->st == S_CLOSING) { free_conn(c); return; }
            die("receive on connection %d: %s", c->index, strerror(errno));
        }
        if (n == 0) {
            if (mode == M_HANDSHAKE && c->st == S_CLOSING && phase < P_BYE) {
                if (phase == P_WINDOW) unclean++; /* TCP closed, the close frame unanswered */
                handshake_done(c);
                free_conn(c);
                return;
            }
            if (c->st == S_DRAINING || c->st == S_CLOSING || phase == P_BYE || !c->reading) {
                free_conn(c);
                return;
            }
            die("connection %d (%s): the server closed TCP%s", c->index, conn_path(c),
                c->st == S_UPGRADING ? " before answering the upgrade" : "");
        }
        c->in.len += n;
        if (c->st == S_UPGRADING && !parse_upgrade(c)) return;
        if (c->st == S_DRAINING && mode == M_HANDSHAKE) { c->in.off = c->in.len; continue; }
        parse_frames(c);
        if ((size_t)n < want) return;
    }
}

static void on_event(conn_t *c, uint32_t events) {
    if (c->st == S_CONNECTING) {
        int err = 0;
        socklen_t len = sizeof err;
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
        if (err) die("connect to port %d: %s", port, strerror(err));
        if (!(events & EPOLLOUT)) return;
        c->st = S_UPGRADING;
        char req[1024];
        int n = snprintf(req, sizeof req, request, conn_path(c));
        send_raw(c, (const uint8_t *)req, n);
        return;
    }
    if (events & EPOLLOUT) flush(c);
    if (events & (EPOLLIN | EPOLLHUP | EPOLLERR)) on_readable(c);
}

/* -- results ------------------------------------------------------------------------- */

static int cmp_u32(const void *a, const void *b) {
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

static double quantile(uint32_t *v, size_t n, double q) {
    if (!n) return -1;
    size_t i = (size_t)(q * (n - 1) + 0.5);
    return v[i];
}

static double cpu_seconds(struct rusage *r) {
    return r->ru_utime.tv_sec + r->ru_utime.tv_usec / 1e6 + r->ru_stime.tv_sec +
           r->ru_stime.tv_usec / 1e6;
}

static void print_latency(const char *name, uint32_t *v, size_t n) {
    qsort(v, n, sizeof *v, cmp_u32);
    printf(", \"%s\": {\"n\": %zu, \"p50\": %.0f, \"p90\": %.0f, \"p99\": %.0f, \"p999\": %.0f, "
           "\"max\": %.0f, \"cdf\": [",
           name, n, quantile(v, n, .5), quantile(v, n, .9), quantile(v, n, .99),
           quantile(v, n, .999), quantile(v, n, 1));
    static const double qs[] = {0, .01, .05, .1, .2, .3, .4, .5, .6, .7, .8, .9, .95, .97, .99,
                                .995, .999, 1};
    for (size_t i = 0; i < sizeof qs / sizeof *qs; i++)
        printf("%s[%g, %.0f]", i ? ", " : "", qs[i], quantile(v, n, qs[i]));
    printf("]}");
}

static void bye(void);
static int bye_pending; /* "bye" (or the end of stdin) came before the result */

static void report(int64_t end) {
    getrusage(RUSAGE_SELF, &ru_end);
    double elapsed = (end - t_window) / 1e9;
    double cpu = cpu_seconds(&ru_end) - cpu_seconds(&ru_start);
    printf("result {\"mode\": \"%s\", \"connections\": %d, \"opened\": %d, \"elapsed\": %.6f, "
           "\"loadgen_cpu\": %.6f, \"loadgen_busy\": %.4f, \"count\": %llu, \"rate\": %.3f, "
           "\"bytes_per_s\": %.1f",
           mode == M_ECHO ? "echo" : mode == M_HANDSHAKE ? "handshake" : mode == M_IDLE ? "idle"
                                                                                       : "fanout",
           nconns, open_count, elapsed, cpu, elapsed > 0 ? cpu / elapsed : 0,
           (unsigned long long)count, elapsed > 0 ? count / elapsed : 0,
           elapsed > 0 ? bytes / elapsed : 0);
    if (mode == M_HANDSHAKE) printf(", \"unclean_closes\": %llu", (unsigned long long)unclean);
    if (mode == M_FANOUT) {
        uint32_t sent = end_seq - first_seq;
        size_t k = 0;
        for (uint32_t s = first_seq; s < end_seq; s++)
            if (remaining[s] == 0) reach_us[k++] = reach_us[s];
        printf(", \"messages\": %u, \"incomplete\": %u, \"receivers\": %u", sent, sent - (uint32_t)k,
               readers);
        print_latency("reach_all_us", reach_us, k);
    }
    if (mode != M_IDLE) print_latency("latency_us", lat, nlat);
    printf("}\n");
    fflush(stdout);
    if (bye_pending) bye();
}

/* -- phases -------------------------------------------------------------------------- */

static int go_early; /* "go" came before "ready" */

static void start_window(void);

static void ready(void) {
    phase = P_READY;
    printf("ready\n");
    fflush(stdout);
    if (go_early) start_window();
}

static void start_window(void) {
    phase = P_WINDOW;
    count = bytes = unclean = 0;
    nlat = 0;
    t_window = now_ns();
    t_end = t_window + (int64_t)(duration * 1e9);
    getrusage(RUSAGE_SELF, &ru_start);
    if (mode == M_FANOUT) {
        first_seq = next_seq;
        end_seq = UINT32_MAX;
        inflight = 0;
        next_send = t_window;
        fanout_pump(t_window);
    }
    if (mode == M_IDLE) {
        phase = P_DONE;
        report(t_window);
    }
}

static void bye(void) {
    phase = P_BYE;
    t_bye = now_ns();
    for (int i = 0; i < nconns; i++) {
        conn_t *c = conns[i];
        if (!c) continue;
        if (!c->reading) {
            c->reading = 1;
            rearm(c);
        }
        if (c->st == S_OPEN) send_close(c); /* the others are closed once open (on_open) */
    }
}


static void on_command(const char *line) {
    if (!strncmp(line, "go", 2)) {
        if (phase == P_READY) start_window();
        else if (phase == P_SETUP) go_early = 1;
    } else if (!strncmp(line, "bye", 3) && phase < P_BYE) {
        if (phase == P_DONE) bye();
        else bye_pending = 1;
    }
}

static void on_stdin(void) {
    static char line[256];
    static size_t len;
    ssize_t n = read(0, line + len, sizeof line - 1 - len);
    if (n <= 0) { /* the harness is gone */
        epoll_ctl(ep, EPOLL_CTL_DEL, 0, NULL);
        on_command("bye");
        return;
    }
    len += n;
    line[len] = 0;
    char *start = line, *nl;
    while ((nl = strchr(start, '\n'))) {
        *nl = 0;
        on_command(start);
        start = nl + 1;
    }
    len -= start - line;
    memmove(line, start, len);
    if (len == sizeof line - 1) len = 0; /* a line too long: not a command */
}

static void tick(int64_t now) {
    if (phase == P_SETUP) {
        if (now - t_setup > SETUP_LIMIT_NS)
            die("setup not done after %lld s (%d of %d connections open)",
                SETUP_LIMIT_NS / 1000000000LL, opened, nconns);
        if (opened < nconns) return;
        if (mode == M_FANOUT) {
            /* synchronised once every receiver has the last sync message: every one is
               registered with the server, and no backlog of sync messages is left */
            int all = 1, missing = 0; /* missing: receivers that got nothing yet */
            for (int i = 0; i < nconns; i++) {
                conn_t *c = conns[i];
                if (!c || !c->receiver) continue;
                if (c->last_seq != next_seq) all = 0;
                if (!c->last_seq) missing++;
            }
            if (all && next_seq) { ready(); return; }
            /* resend only for the receivers not yet registered; the others catch up */
            if ((missing || !next_seq) && now - last_sync > sync_interval) {
                if (next_seq) sync_interval = 2 * sync_interval < SYNC_RESEND_MAX_NS
                                                  ? 2 * sync_interval : SYNC_RESEND_MAX_NS;
                send_tagged(1);
                last_sync = now;
            }
            return;
        }
        if (mode == M_IDLE) { ready(); return; }
        if (!t_window) t_window = now; /* the warm-up */
        if (now - t_window >= (int64_t)(warmup * 1e9)) { t_window = 0; ready(); }
        return;
    }
    if (phase == P_WINDOW) {
        if (mode == M_FANOUT) {
            if (now < t_end) { fanout_pump(now); return; }
            if (end_seq == UINT32_MAX) end_seq = next_seq;
            if (nreach < end_seq - first_seq && now - t_end < DRAIN_LIMIT_NS) return;
            int64_t last = t_end;
            for (uint32_t s = first_seq; s < end_seq; s++)
                if (remaining[s] == 0 && sent_ns[s] + (int64_t)reach_us[s] * 1000 > last)
                    last = sent_ns[s] + (int64_t)reach_us[s] * 1000;
            phase = P_DONE;
            report(last);
            return;
        }
        if (window_over(now)) { phase = P_DONE; report(now); }
    }
}

static void usage(void) {
    fprintf(stderr,
            "usage: loadgen --port P [--mode echo|handshake|idle|fanout] [--conns N] [--size B]\n"
            "  [--text] [--duration S] [--warmup S] [--path P] [--sender-path P] [--on-open MSG]\n"
            "  [--before S] [--after S] [--window N] [--rate R] [--idle-fraction F]\n"
            "  [--key-every N] [--concurrency N] [--min-count N]\n");
    exit(2);
}

int main(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
#define OPT(name) (!strcmp(a, name) && v && ++i)
        if (OPT("--port")) port = atoi(v);
        else if (OPT("--host")) host = v;
        else if (OPT("--mode")) {
            mode = !strcmp(v, "echo") ? M_ECHO : !strcmp(v, "handshake") ? M_HANDSHAKE
                   : !strcmp(v, "idle") ? M_IDLE : !strcmp(v, "fanout") ? M_FANOUT : -1;
            if ((int)mode < 0) usage();
        } else if (OPT("--conns")) nconns = atoi(v);
        else if (OPT("--size")) size = strtoull(v, NULL, 10);
        else if (!strcmp(a, "--text")) text_messages = 1;
        else if (OPT("--duration")) duration = atof(v);
        else if (OPT("--warmup")) warmup = atof(v);
        else if (OPT("--path")) path = v;
        else if (OPT("--sender-path")) sender_path = v;
        else if (OPT("--on-open")) greeting = v;
        else if (OPT("--before")) tmpl_before = v;
        else if (OPT("--after")) tmpl_after = v;
        else if (OPT("--window")) window = atoi(v);
        else if (OPT("--rate")) rate = atof(v);
        else if (OPT("--idle-fraction")) idle_fraction = atof(v);
        else if (OPT("--key-every")) key_every = atoi(v);
        else if (OPT("--concurrency")) concurrency = atoi(v);
        else if (OPT("--min-count")) min_count = strtoull(v, NULL, 10);
        else usage();
#undef OPT
    }
    if (port <= 0 || nconns < 1 || concurrency < 1 || window < 1 || duration <= 0) usage();
    if (mode == M_FANOUT && sender_path) nconns += 1; /* the sender, apart */
    signal(SIGPIPE, SIG_IGN);
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    srand(getpid() ^ time(NULL));
    for (int i = 0; i < 4; i++) mask_key[i] = 1 + rand() % 255;
    request_len = snprintf(request, sizeof request,
                           "GET %%s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\n"
                           "Connection: Upgrade\r\nSec-WebSocket-Key: " WS_KEY "\r\n"
                           "Sec-WebSocket-Version: 13\r\n\r\n",
                           host, port);
    if (mode == M_ECHO) {
        echo_payload = xrealloc(NULL, size);
        for (size_t i = 0; i < size; i++)
            echo_payload[i] = text_messages ? 'a' + i % 26 : (uint8_t)(rand() >> 7);
        echo_frame = xrealloc(NULL, size + 14);
        echo_frame_len = frame_header(echo_frame, text_messages ? 1 : 2, size);
        mask(echo_frame + echo_frame_len, echo_payload, size);
        echo_frame_len += size;
    }
    conns = calloc(nconns, sizeof *conns);
    ep = epoll_create1(0);
    struct epoll_event sev = {.events = EPOLLIN, .data.ptr = NULL};
    epoll_ctl(ep, EPOLL_CTL_ADD, 0, &sev);
    t_setup = now_ns();
    if (mode == M_HANDSHAKE) {
        for (int i = 0; i < nconns; i++) start_conn(i);
    } else {
        connect_more();
    }
    struct epoll_event evs[256];
    for (;;) {
        int timeout = (mode == M_FANOUT && rate > 0) ? 1 : 10;
        int n = epoll_wait(ep, evs, 256, timeout);
        if (n < 0 && errno != EINTR) die("epoll_wait: %s", strerror(errno));
        for (int i = 0; i < n; i++) {
            if (!evs[i].data.ptr) {
                on_stdin();
                continue;
            }
            on_event(evs[i].data.ptr, evs[i].events);
        }
        int64_t now = now_ns();
        tick(now);
        if (phase == P_BYE) {
            int left = 0;
            for (int i = 0; i < nconns; i++) left += conns[i] != NULL;
            if (!left || now - t_bye > CLOSE_LIMIT_NS) break;
        }
    }
    return 0;
}
