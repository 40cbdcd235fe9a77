/*
 * Live-migration test workload. Runs as PID 1 (/init) in a tiny initrd, or as
 * a normal program (the Debian guest's lm-workload@<profile>.service).
 *
 * As PID 1 it mounts /proc, /sys and /dev, writes to /dev/ttyS0 (else
 * /dev/console), loads the modules in /lib/modules/lm and ignores argv (the
 * kernel passes leftovers there). Otherwise it mounts and loads nothing, writes
 * to stdout, and lm.key=value arguments override /proc/cmdline; lm.disk must
 * then be given when writes_ps > 0 (the default /dev/vda is a root disk there).
 *
 * Knobs (kernel command line, read from /proc/cmdline; then argv):
 *   lm.wss_mb=64        page-check working set (MiB)
 *   lm.dirty_mbps=16    MiB/s rewritten by the page check (0: write once, verify ~1/s)
 *   lm.writes_ps=20     disk ring writes per second (0: no disk ring)
 *   lm.hb_ms=10         heartbeat interval (ms)
 *   lm.disk=/dev/vda    ring device
 *   lm.ring_blocks=4096 ring size in 4 KiB blocks, starting at offset 0
 *   lm.fill=words       page content: words (first and last word, the rest zeros) or random (all 4 KiB)
 *
 * Serial lines (one write() each):
 *   LMREADY <knobs>
 *   HB <seq> <guest_ms>
 *   PC <pass> OK | PCFAIL <pass> page=<i> want=<x> got=<y>[ word=<k>] | PCFAIL <pass> total=<n>
 *   RING <seq> | RINGERR <reason>
 *
 * Ring block (little endian): "LMRING01", u64 seq, u64 slot, u64 FNV-1a-64 of
 * bytes 32..4095; bytes 32..4095 = 32-byte pattern (4 splitmix64 words seeded
 * by seq) repeated 127 times.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <pthread.h>
#include <sched.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#define BLK 4096
#define NS 1000000000LL

static struct {
    long wss_mb, dirty_mbps, writes_ps, hb_ms, ring_blocks;
    char disk[128];
    int random_fill;
} K = {64, 16, 20, 10, 4096, "/dev/vda", 0};

static int out_fd = -1;
static pthread_mutex_t out_mu;

/* One formatted line, one write(). */
static void say(const char *fmt, ...)
{
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof buf - 1, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if (n > (int)sizeof buf - 2)
        n = sizeof buf - 2;
    buf[n++] = '\n';
    pthread_mutex_lock(&out_mu);
    for (int off = 0; off < n;) {
        ssize_t w = write(out_fd, buf + off, n - off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            break;
        off += w;
    }
    pthread_mutex_unlock(&out_mu);
}

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * NS + ts.tv_nsec;
}

static void sleep_until(int64_t t)
{
    struct timespec ts = {t / NS, t % NS};
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
        ;
}

/* PID 1: mount the API filesystems and write to the serial port; otherwise stdout. */
static void setup_console(int init)
{
    if (init) {
        mkdir("/proc", 0755);
        mkdir("/sys", 0755);
        mkdir("/dev", 0755);
        mount("proc", "/proc", "proc", 0, NULL);
        mount("sysfs", "/sys", "sysfs", 0, NULL);
        mount("devtmpfs", "/dev", "devtmpfs", 0, NULL);
        out_fd = open("/dev/ttyS0", O_WRONLY | O_NOCTTY);
        if (out_fd < 0)
            out_fd = open("/dev/console", O_WRONLY | O_NOCTTY);
    }
    if (out_fd < 0)
        out_fd = 1;
    struct termios t;
    if (tcgetattr(out_fd, &t) == 0) { /* no \n -> \r\n translation */
        t.c_oflag &= ~OPOST;
        tcsetattr(out_fd, TCSANOW, &t);
    }
    pthread_mutexattr_t ma;
    pthread_mutexattr_init(&ma);
    pthread_mutexattr_setprotocol(&ma, PTHREAD_PRIO_INHERIT);
    pthread_mutex_init(&out_mu, &ma);
}

/* Load the .ko files in /lib/modules/lm in name order (build.sh numbers them). */
static void load_modules(void)
{
    struct dirent **ents;
    int n = scandir("/lib/modules/lm", &ents, NULL, alphasort);
    for (int i = 0; i < n; i++) {
        const char *name = ents[i]->d_name;
        size_t len = strlen(name);
        if (len > 3 && strcmp(name + len - 3, ".ko") == 0) {
            char path[300];
            snprintf(path, sizeof path, "/lib/modules/lm/%s", name);
            int fd = open(path, O_RDONLY | O_CLOEXEC);
            if (fd < 0 || (syscall(SYS_finit_module, fd, "", 0) != 0 && errno != EEXIST))
                say("MODERR %s errno=%d", name, errno);
            if (fd >= 0)
                close(fd);
        }
        free(ents[i]);
    }
    if (n >= 0)
        free(ents);
}

/* One lm.key=value token; returns 0 if it is not a knob. */
static int parse_knob(const char *tok)
{
    struct { const char *key; long *val; } nums[] = {
        {"lm.wss_mb=", &K.wss_mb},         {"lm.dirty_mbps=", &K.dirty_mbps},
        {"lm.writes_ps=", &K.writes_ps},   {"lm.hb_ms=", &K.hb_ms},
        {"lm.ring_blocks=", &K.ring_blocks},
    };
    for (size_t i = 0; i < sizeof nums / sizeof nums[0]; i++)
        if (strncmp(tok, nums[i].key, strlen(nums[i].key)) == 0) {
            *nums[i].val = strtol(tok + strlen(nums[i].key), NULL, 10);
            return 1;
        }
    if (strncmp(tok, "lm.disk=", 8) == 0) {
        snprintf(K.disk, sizeof K.disk, "%s", tok + 8);
        return 1;
    }
    if (strcmp(tok, "lm.fill=words") == 0 || strcmp(tok, "lm.fill=random") == 0) {
        K.random_fill = tok[8] == 'r';
        return 1;
    }
    return 0;
}

/* Knobs from /proc/cmdline, then from args (argv[1..], not used as PID 1). */
static void parse_knobs(int argc, char **argv)
{
    char buf[4096] = "";
    int fd = open("/proc/cmdline", O_RDONLY);
    if (fd >= 0) {
        ssize_t n = read(fd, buf, sizeof buf - 1);
        buf[n > 0 ? n : 0] = 0;
        close(fd);
    }
    for (char *save, *tok = strtok_r(buf, " \t\n", &save); tok; tok = strtok_r(NULL, " \t\n", &save))
        if (!parse_knob(tok) && strncmp(tok, "lm.fill=", 8) == 0) /* a typo must not pass as words mode */
            say("PCFAIL 0 unknown %s (want lm.fill=words or lm.fill=random)", tok);
    for (int i = 1; i < argc; i++)
        if (!parse_knob(argv[i])) {
            fprintf(stderr, "lm-workload: unknown argument '%s' (want lm.key=value: lm.wss_mb, lm.dirty_mbps, "
                            "lm.writes_ps, lm.hb_ms, lm.disk, lm.ring_blocks, lm.fill)\n", argv[i]);
            exit(2);
        }
    if (K.hb_ms < 1)
        K.hb_ms = 1;
    if (K.wss_mb < 1)
        K.wss_mb = 1;
    if (K.ring_blocks < 1)
        K.ring_blocks = 1;
}

static void *heartbeat(void *arg)
{
    (void)arg;
    struct sched_param sp = {.sched_priority = 10};
    pthread_setschedparam(pthread_self(), SCHED_FIFO, &sp); /* best effort */
    int64_t period = K.hb_ms * 1000000LL, next = now_ns();
    for (unsigned long long seq = 1;; seq++) {
        next += period;
        sleep_until(next);
        int64_t t = now_ns();
        if (t - next > period) /* fell behind: no burst of catch-up beats */
            next = t;
        say("HB %llu %lld", seq, (long long)(t / 1000000));
    }
    return NULL;
}

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

/* Words fill: word 0 of page i holds v, the last word holds ~v. */
static uint64_t pc_value(uint64_t pass, uint64_t i)
{
    return (pass << 32) ^ i ^ 0x5a00000000000000ULL;
}

/* Random fill: page i of a pass is 512 xorshift64* words from a state seeded by splitmix64 of pc_value. */
static uint64_t rf_state(uint64_t pass, uint64_t i)
{
    uint64_t x = pc_value(pass, i), s = splitmix64(&x);
    return s ? s : 1; /* xorshift's state must not be 0 */
}

static inline uint64_t xorshift64s(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *s = x;
    return x * 0x2545F4914F6CDD1DULL;
}

#define PAGE_WORDS (BLK / 8)

static void pc_fill(uint64_t *page, uint64_t pass, size_t i)
{
    if (K.random_fill) {
        uint64_t s = rf_state(pass, i);
        for (size_t w = 0; w < PAGE_WORDS; w++)
            page[w] = xorshift64s(&s);
    } else {
        uint64_t v = pc_value(pass, i);
        page[0] = v;
        page[PAGE_WORDS - 1] = ~v;
    }
}

/* 1 if page i does not hold the fill of pass `want`; the first 4 bad pages of a report get a detail line. */
static int pc_bad(const uint64_t *page, uint64_t want, size_t i, uint64_t report, size_t bad_so_far)
{
    if (K.random_fill) {
        uint64_t s = rf_state(want, i);
        for (size_t w = 0; w < PAGE_WORDS; w++) {
            uint64_t v = xorshift64s(&s);
            if (page[w] != v) {
                if (bad_so_far < 4)
                    say("PCFAIL %llu page=%zu want=%llx got=%llx word=%zu", (unsigned long long)report, i,
                        (unsigned long long)v, (unsigned long long)page[w], w);
                return 1;
            }
        }
        return 0;
    }
    uint64_t v = pc_value(want, i), a = page[0], b = page[PAGE_WORDS - 1];
    if (a == v && b == ~v)
        return 0;
    if (bad_so_far < 4)
        say("PCFAIL %llu page=%zu want=%llx got=%llx/%llx", (unsigned long long)report, i,
            (unsigned long long)v, (unsigned long long)a, (unsigned long long)~b);
    return 1;
}

/* Allocated before LMREADY: populating it stalls a TCG guest for up to ~1 s. */
static uint64_t *pc_mem;

static void pagecheck_alloc(void)
{
    size_t bytes = (size_t)K.wss_mb << 20;
    pc_mem = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
    if (pc_mem == MAP_FAILED) {
        say("PCFAIL 0 mmap errno=%d", errno);
        pc_mem = NULL;
        return;
    }
    mlock(pc_mem, bytes); /* best effort */
}

static void pc_report(uint64_t pass, size_t bad)
{
    if (bad)
        say("PCFAIL %llu total=%zu", (unsigned long long)pass, bad);
    else
        say("PC %llu OK", (unsigned long long)pass);
}

/*
 * Each pass rewrites every page at pps pages/s, then verifies every page and reports that pass. In random
 * mode verifying costs as much as writing, so while rewriting (pps > 0) each page is verified just before
 * it is overwritten: the rate limiter paces both and "PC <n>" reports pass n at the end of pass n+1.
 */
static void *pagecheck(void *arg)
{
    (void)arg;
    size_t npages = ((size_t)K.wss_mb << 20) / BLK;
    uint64_t *mem = pc_mem;
    if (!mem)
        return NULL;
    const size_t chunk = 64;
    int64_t pps = K.dirty_mbps * 256; /* pages per second */
    int check_before_write = K.random_fill && pps > 0;
    for (uint64_t pass = 1;; pass++) {
        size_t bad = 0;
        if (pass == 1 || pps > 0) {
            int64_t t0 = now_ns();
            for (size_t i = 0; i < npages; i++) {
                if (check_before_write && pass > 1)
                    bad += pc_bad(mem + i * PAGE_WORDS, pass - 1, i, pass - 1, bad);
                pc_fill(mem + i * PAGE_WORDS, pass, i);
                if (pps > 0 && (i + 1) % chunk == 0) {
                    int64_t due = t0 + (int64_t)(i + 1) * NS / pps, t = now_ns();
                    if (t - due > NS) /* far behind (e.g. VM paused): rebase */
                        t0 = t - (int64_t)(i + 1) * NS / pps;
                    else if (due > t)
                        sleep_until(due);
                }
            }
        } else {
            sleep_until(now_ns() + NS);
        }
        if (check_before_write) {
            if (pass > 1)
                pc_report(pass - 1, bad);
            continue;
        }
        uint64_t want_pass = pps > 0 ? pass : 1;
        for (size_t i = 0; i < npages; i++)
            bad += pc_bad(mem + i * PAGE_WORDS, want_pass, i, pass, bad);
        pc_report(pass, bad);
    }
    return NULL;
}

static void ring_block(uint8_t *b, uint64_t seq, uint64_t slot)
{
    uint64_t pat[4], x = seq, h = 0xcbf29ce484222325ULL;
    for (int j = 0; j < 4; j++)
        pat[j] = splitmix64(&x);
    for (int off = 32; off < BLK; off += 32)
        memcpy(b + off, pat, 32);
    for (int i = 32; i < BLK; i++)
        h = (h ^ b[i]) * 0x100000001b3ULL;
    memcpy(b, "LMRING01", 8);
    memcpy(b + 8, &seq, 8);
    memcpy(b + 16, &slot, 8);
    memcpy(b + 24, &h, 8);
}

static void *ring(void *arg)
{
    (void)arg;
    struct stat st;
    for (int i = 0; stat(K.disk, &st) != 0; i++) { /* virtio-blk probe may lag */
        if (i == 200) {
            say("RINGERR no disk %s", K.disk);
            return NULL;
        }
        usleep(50000);
    }
    int fd = open(K.disk, O_RDWR | O_DIRECT | O_DSYNC);
    if (fd < 0) {
        say("RINGERR open %s errno=%d", K.disk, errno);
        return NULL;
    }
    uint64_t size = 0;
    if (ioctl(fd, BLKGETSIZE64, &size) == 0 && size < (uint64_t)K.ring_blocks * BLK) {
        say("RINGERR disk too small (%llu bytes)", (unsigned long long)size);
        return NULL;
    }
    uint8_t *b;
    if (posix_memalign((void **)&b, BLK, BLK) != 0) {
        say("RINGERR no memory");
        return NULL;
    }
    int64_t period = NS / K.writes_ps, next = now_ns(), last_err = 0;
    for (uint64_t seq = 1;;) {
        next += period;
        int64_t t = now_ns();
        if (t - next > NS)
            next = t;
        sleep_until(next);
        uint64_t slot = (seq - 1) % (uint64_t)K.ring_blocks;
        ring_block(b, seq, slot);
        if (pwrite(fd, b, BLK, (off_t)(slot * BLK)) == BLK) {
            say("RING %llu", (unsigned long long)seq);
            seq++;
        } else if (now_ns() - last_err > NS) { /* retry the same seq; report at most 1/s */
            last_err = now_ns();
            say("RINGERR write seq=%llu errno=%d", (unsigned long long)seq, errno);
        }
    }
    return NULL;
}

int main(int argc, char **argv)
{
    int init = getpid() == 1;
    setup_console(init);
    if (init) {
        load_modules();
        argc = 1; /* the kernel's leftovers, not knobs */
    } else {
        K.disk[0] = 0; /* no default ring device outside the initrd */
    }
    parse_knobs(argc, argv);
    if (!init && K.writes_ps > 0 && !K.disk[0]) {
        fprintf(stderr, "lm-workload: lm.disk=<device> is required (or lm.writes_ps=0): "
                        "the ring overwrites the start of that device\n");
        return 2;
    }
    pagecheck_alloc();
    say("LMREADY wss_mb=%ld dirty_mbps=%ld writes_ps=%ld hb_ms=%ld disk=%s ring_blocks=%ld fill=%s",
        K.wss_mb, K.dirty_mbps, K.writes_ps, K.hb_ms, K.disk[0] ? K.disk : "-", K.ring_blocks,
        K.random_fill ? "random" : "words");
    pthread_t th;
    pthread_create(&th, NULL, heartbeat, NULL);
    pthread_create(&th, NULL, pagecheck, NULL);
    if (K.writes_ps > 0)
        pthread_create(&th, NULL, ring, NULL);
    for (;;) /* PID 1 must never exit; as a service: until stopped */
        pause();
}
