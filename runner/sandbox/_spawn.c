/* The sandboxed builder's start without Python in between (docs/sandbox.md, "Cost").
 *
 * `spawn(program, argv, env, flags, err_fd)` clones one child straight into
 * its new namespaces (`flags`: CLONE_NEW* bits) with CLONE_VM | CLONE_VFORK,
 * as posix_spawn does: the child shares runner's memory (nothing is copied,
 * no page faults), and the calling thread sleeps until the child has exec'd
 * the builder or given up. The child runs `program`, a list of steps compiled
 * in Python from the sandbox plan (runner/sandbox/native.py), then execs.
 *
 * Rules for the child, which runs on runner's memory while runner's other
 * threads go on: only system calls and stack buffers; no malloc, no stdio, no
 * locale; credentials by raw system calls (glibc's setuid family would ask
 * every thread of runner to change too); it never writes memory it did not get
 * for itself. A failed step writes one record to `err_fd` and exits 255:
 *   "e<errno>:<path>"  a step failed on that path
 *   "x<errno>:<name>"  the builder could not be executed
 *   "m:<text>"         a message of the program's own
 * EOF with nothing written means the builder exec'd.
 */
#define _GNU_SOURCE
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/close_range.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <net/if.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

/* The steps; runner/sandbox/native.py holds the same numbers. */
enum {
    OP_MOUNT = 1,   /* s:source s:target s:fstype i:flags s:data ("" is NULL) */
    OP_MOUNT_ELSE,  /* i:skip, then OP_MOUNT's: mounted -> skip the next `skip` steps */
    OP_MKDIRS,      /* s:path i:mode: with its parents; an existing one is fine */
    OP_MKDIR,       /* s:path i:mode: must not exist */
    OP_TOUCH,       /* s:path: a file mount point (parents made, created if absent) */
    OP_WRITE,       /* s:path s:data: parents made, created or truncated, 0644 */
    OP_PUT,         /* s:path s:data: written into an existing file (/proc) */
    OP_SYMLINK,     /* s:target s:path: parents made */
    OP_IDENT,       /* s:path i:dev i:ino s:message: the mounted thing must be this inode */
    OP_REMOUNT,     /* s:target i:readonly i:nodev */
    OP_SEAL,        /* s:mountinfo s:prefix...: mounts beneath a prefix read-only */
    OP_PIVOT,       /* s:new_root s:put_old */
    OP_CHDIR,       /* s:path */
    OP_UMOUNT,      /* s:path i:flags */
    OP_SETNS,       /* i:fd i:nstype */
    OP_HOSTNAME,    /* s:hostname s:domainname */
    OP_LOOPBACK,    /* bring `lo` up */
    OP_IDS,         /* i:gid i:uid: no supplementary groups, then gid, then uid */
    OP_NO_NEW_PRIVS,
    OP_SECCOMP,     /* s:BPF program */
    OP_PDEATHSIG,   /* i:signal */
    OP_ALIVE,       /* i:fd: exit if it reads EOF (runner is gone) */
    OP_UMASK,       /* i:mask */
    OP_SETSID,
    OP_DUP2,        /* i:from i:to */
    OP_TRACE,       /* s:label: "pid label ns" to the trace descriptor, if any */
    OP_EXEC,        /* s:candidate...: execve each in turn with argv and env */
    OP_STUBS,       /* s:dir s:entries: per input a mount point, "d<name>\0", "f<name>\0"
                       or "l<name>\0<target>\0" (a symlink, made now) */
    OP_BINDS,       /* s:from s:to s:entries: bind from/<name> on to/<name>, d and f only */
};

typedef struct {
    long long num;
    const char *str; /* NUL-terminated copy; NULL for a number */
} arg_t;

typedef struct {
    int op;
    int nargs;
    arg_t *args;
} step_t;

typedef struct {
    step_t *steps;
    int nsteps;
    char **argv;
    char **envp;
    int err_fd;
    int trace_fd;
    sigset_t mask; /* the caller's signal mask, the builder's too */
    char *scratch; /* for the mount table */
    size_t scratch_size;
} prog_t;

#define SCRATCH_SIZE (4u << 20)
#define STACK_SIZE (256u << 10)

/* ---- the child: system calls and stack buffers only ---- */

static size_t slen(const char *s) {
    size_t n = 0;
    while (s[n]) n++;
    return n;
}

static char *put(char *at, const char *end, const char *s) {
    while (*s && at < end) *at++ = *s++;
    return at;
}

static char *put_num(char *at, const char *end, unsigned long long n) {
    char digits[24];
    int i = 0;
    do {
        digits[i++] = (char)('0' + n % 10);
        n /= 10;
    } while (n);
    while (i && at < end) *at++ = digits[--i];
    return at;
}

static void report(const prog_t *p, char kind, int err, const char *what) {
    char buf[PATH_MAX + 64];
    char *end = buf + sizeof buf, *at = buf;
    *at++ = kind;
    if (kind != 'm') at = put_num(at, end, (unsigned long long)err);
    at = put(at, end, ":");
    at = put(at, end, what ? what : "");
    ssize_t unused = write(p->err_fd, buf, (size_t)(at - buf));
    (void)unused;
}

static __attribute__((noreturn)) void fail(const prog_t *p, const char *what) {
    report(p, 'e', errno, what);
    _exit(255);
}

static __attribute__((noreturn)) void fail_message(const prog_t *p, const char *text) {
    report(p, 'm', 0, text);
    _exit(255);
}

static int copy_path(char *buf, const char *path) {
    size_t n = slen(path);
    if (n >= PATH_MAX) {
        errno = ENAMETOOLONG;
        return -1;
    }
    memcpy(buf, path, n + 1);
    return 0;
}

/* mkdir -p; `leaf`: make the last component too. */
static int make_dirs(const char *path, mode_t mode, int leaf) {
    char buf[PATH_MAX];
    if (copy_path(buf, path) < 0) return -1;
    size_t n = slen(buf);
    if (!leaf) {
        while (n > 0 && buf[n - 1] != '/') n--;
        if (n <= 1) return 0;
        buf[--n] = '\0';
    }
    for (size_t i = 1; i <= n; i++) {
        if (buf[i] != '/' && buf[i] != '\0') continue;
        char saved = buf[i];
        buf[i] = '\0';
        if (mkdir(buf, mode) < 0 && errno != EEXIST) return -1;
        buf[i] = saved;
    }
    return 0;
}

static const char *nullable(const char *s) { return s && *s ? s : NULL; }

static int do_mount(const arg_t *a) {
    return mount(nullable(a[0].str), a[1].str, nullable(a[2].str), (unsigned long)a[3].num,
                 nullable(a[4].str));
}

/* Per-mount flags, keeping those a user namespace may not drop (mounts.py). */
static int remount(const char *target, int readonly, int nodev) {
    struct statvfs st;
    if (statvfs(target, &st) < 0) return -1;
    unsigned long have = st.f_flag, flags = MS_BIND | MS_REMOUNT | MS_NOSUID;
    if (readonly || (have & ST_RDONLY)) flags |= MS_RDONLY;
    if (nodev || (have & ST_NODEV)) flags |= MS_NODEV;
    if (have & ST_NOEXEC) flags |= MS_NOEXEC;
    if (have & ST_NOATIME) flags |= MS_NOATIME;
    if (have & ST_NODIRATIME) flags |= MS_NODIRATIME;
    if (have & ST_RELATIME) flags |= MS_RELATIME;
    else if (!(have & ST_NOATIME)) flags |= MS_STRICTATIME;
    return mount(NULL, target, NULL, flags, NULL);
}

/* Whether `point` lies strictly beneath one of the prefixes. */
static int beneath(const char *point, const step_t *s) {
    for (int i = 1; i < s->nargs; i++) {
        const char *prefix = s->args[i].str;
        size_t n = slen(prefix);
        if (strncmp(point, prefix, n) == 0 && point[n] == '/') return 1;
    }
    return 0;
}

/* Recursive binds bring host submounts along writable: remount those beneath a
 * prefix read-only. The whole table is read before the first remount changes it. */
static void seal(const prog_t *p, const step_t *s) {
    int fd = open(s->args[0].str, O_RDONLY | O_CLOEXEC);
    if (fd < 0) fail(p, s->args[0].str);
    size_t used = 0;
    for (;;) {
        if (used == p->scratch_size - 1) fail_message(p, "the mount table is too large");
        ssize_t got = read(fd, p->scratch + used, p->scratch_size - 1 - used);
        if (got < 0 && errno == EINTR) continue;
        if (got < 0) fail(p, s->args[0].str);
        if (got == 0) break;
        used += (size_t)got;
    }
    close(fd);
    p->scratch[used] = '\0';
    char *line = p->scratch;
    while (*line) {
        char *next = strchr(line, '\n');
        if (next) *next++ = '\0';
        else next = line + slen(line);
        /* the fifth field is the mount point, with space, tab, newline and
         * backslash written as \ooo */
        char *field = line;
        for (int i = 0; i < 4 && field; i++) {
            field = strchr(field, ' ');
            if (field) field++;
        }
        if (field) {
            char point[PATH_MAX];
            size_t n = 0;
            for (char *c = field; *c && *c != ' ' && n < sizeof point - 1; c++) {
                if (c[0] == '\\' && c[1] >= '0' && c[1] <= '7' && c[2] >= '0' && c[2] <= '7' &&
                    c[3] >= '0' && c[3] <= '7') {
                    point[n++] = (char)((c[1] - '0') * 64 + (c[2] - '0') * 8 + (c[3] - '0'));
                    c += 3;
                } else {
                    point[n++] = *c;
                }
            }
            point[n] = '\0';
            if (beneath(point, s) && remount(point, 1, 1) < 0) fail(p, point);
        }
        line = next;
    }
}

static void trace(const prog_t *p, const char *label) {
    if (p->trace_fd < 0) return;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    char buf[256];
    char *end = buf + sizeof buf, *at = buf;
    at = put_num(at, end, (unsigned long long)syscall(SYS_getpid));
    at = put(at, end, " ");
    at = put(at, end, label);
    at = put(at, end, " ");
    at = put_num(at, end, (unsigned long long)ts.tv_sec * 1000000000ull + (unsigned long long)ts.tv_nsec);
    at = put(at, end, "\n");
    ssize_t unused = write(p->trace_fd, buf, (size_t)(at - buf));
    (void)unused;
}

static void write_all(const prog_t *p, int fd, const char *data, const char *path) {
    size_t n = slen(data);
    while (n) {
        ssize_t done = write(fd, data, n);
        if (done < 0 && errno == EINTR) continue;
        if (done < 0) fail(p, path);
        data += done;
        n -= (size_t)done;
    }
}

static void loopback_up(const prog_t *p) {
    int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (s < 0) fail(p, "socket");
    struct ifreq req;
    memset(&req, 0, sizeof req);
    memcpy(req.ifr_name, "lo", 3);
    req.ifr_flags = IFF_UP | IFF_LOOPBACK | IFF_RUNNING;
    if (ioctl(s, SIOCSIFFLAGS, &req) < 0) fail(p, "lo");
    close(s);
}

static __attribute__((noreturn)) void exec_builder(const prog_t *p, const step_t *s) {
    int first = 0;
    const char *name = p->argv[0];
    for (int i = 0; i < s->nargs; i++) {
        execve(s->args[i].str, p->argv, p->envp);
        if (!first || (errno != ENOENT && errno != ENOTDIR)) first = errno; /* keep a telling one */
    }
    report(p, 'x', first ? first : ENOENT, name);
    _exit(255);
}

/* Only 0, 1 and 2 reach the builder: a descriptor runner made inheritable (for
 * another child) is closed at the exec, like the error pipe. */
static void close_the_rest(const prog_t *p) {
    if (syscall(SYS_close_range, 3u, ~0u, CLOSE_RANGE_CLOEXEC) == 0) return;
    long last = sysconf(_SC_OPEN_MAX); /* kernels before 5.11: one by one */
    for (long fd = 3; fd < last; fd++)
        if (fd != p->err_fd) close((int)fd);
}

/* Join dir and name into buf; -1 (ENAMETOOLONG) when it does not fit. */
static int join(char *buf, const char *dir, const char *name) {
    size_t d = slen(dir), n = slen(name);
    if (d + 1 + n >= PATH_MAX) {
        errno = ENAMETOOLONG;
        return -1;
    }
    memcpy(buf, dir, d);
    buf[d] = '/';
    memcpy(buf + d + 1, name, n + 1);
    return 0;
}

/* OP_STUBS (`bind` 0: a mount point per entry in `dir`) and OP_BINDS (`bind` 1: each
 * d/f entry of `dir` bound on its stub in `to`). */
static void each_entry(const prog_t *p, const arg_t *entries, const char *dir, const char *to,
                       int bind) {
    const char *at = entries->str, *end = entries->str + entries->num;
    char path[PATH_MAX], source[PATH_MAX];
    while (at < end) {
        /* the parser put a NUL at `end`: no scan runs past it */
        char kind = *at;
        const char *name = at + 1, *target = NULL;
        const char *next = name + slen(name) + 1;
        if (kind == 'l') {
            if (next >= end) fail_message(p, "malformed input list");
            target = next;
            next = target + slen(target) + 1;
        }
        if (kind != 'd' && kind != 'f' && kind != 'l') fail_message(p, "malformed input list");
        if (join(path, bind ? to : dir, name) < 0) fail(p, name);
        if (bind) {
            if (kind != 'l') {
                if (join(source, dir, name) < 0) fail(p, name);
                if (mount(source, path, NULL, MS_BIND | MS_REC, NULL) < 0) fail(p, path);
            }
        } else if (kind == 'd') {
            if (mkdir(path, 0755) < 0) fail(p, path);
        } else if (kind == 'f') {
            int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
            if (fd < 0) fail(p, path);
            close(fd);
        } else if (symlink(target, path) < 0) {
            fail(p, path);
        }
        at = next;
    }
}

static int child(void *arg) {
    const prog_t *p = arg;
    /* Runner's handlers are runner's code, and what it ignores stays ignored across
     * exec: every signal to its default, by the raw call (glibc's sigaction refuses
     * its own 32 and 33). All-zero is SIG_DFL in every architecture's layout. */
    unsigned long dfl[4] = {0, 0, 0, 0};
    for (int sig = 1; sig < _NSIG; sig++)
        if (sig != SIGKILL && sig != SIGSTOP) syscall(SYS_rt_sigaction, sig, dfl, NULL, _NSIG / 8);
    for (int i = 0; i < p->nsteps; i++) {
        const step_t *s = &p->steps[i];
        const arg_t *a = s->args;
        switch (s->op) {
        case OP_MOUNT:
            if (do_mount(a) < 0) fail(p, a[1].str);
            break;
        case OP_MOUNT_ELSE:
            if (do_mount(a + 1) == 0) i += (int)a[0].num;
            break;
        case OP_MKDIRS:
            if (make_dirs(a[0].str, (mode_t)a[1].num, 1) < 0) fail(p, a[0].str);
            break;
        case OP_MKDIR:
            if (mkdir(a[0].str, (mode_t)a[1].num) < 0) fail(p, a[0].str);
            break;
        case OP_TOUCH: {
            if (make_dirs(a[0].str, 0777, 0) < 0) fail(p, a[0].str);
            int fd = open(a[0].str, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
            if (fd < 0) fail(p, a[0].str);
            close(fd);
            break;
        }
        case OP_WRITE:
        case OP_PUT: {
            if (s->op == OP_WRITE && make_dirs(a[0].str, 0777, 0) < 0) fail(p, a[0].str);
            int flags = O_WRONLY | O_CLOEXEC | (s->op == OP_WRITE ? O_CREAT | O_TRUNC : 0);
            int fd = open(a[0].str, flags, 0644);
            if (fd < 0) fail(p, a[0].str);
            write_all(p, fd, a[1].str, a[0].str);
            close(fd);
            break;
        }
        case OP_SYMLINK:
            if (make_dirs(a[1].str, 0777, 0) < 0 || symlink(a[0].str, a[1].str) < 0)
                fail(p, a[1].str);
            break;
        case OP_IDENT: {
            struct stat st;
            if (stat(a[0].str, &st) < 0) fail(p, a[0].str);
            if ((long long)st.st_dev != a[1].num || (long long)st.st_ino != a[2].num)
                fail_message(p, a[3].str);
            break;
        }
        case OP_REMOUNT:
            if (remount(a[0].str, (int)a[1].num, (int)a[2].num) < 0) fail(p, a[0].str);
            break;
        case OP_SEAL:
            seal(p, s);
            break;
        case OP_PIVOT:
            if (syscall(SYS_pivot_root, a[0].str, a[1].str) < 0) fail(p, "pivot_root");
            break;
        case OP_CHDIR:
            if (chdir(a[0].str) < 0) fail(p, a[0].str);
            break;
        case OP_UMOUNT:
            if (umount2(a[0].str, (int)a[1].num) < 0) fail(p, a[0].str);
            break;
        case OP_SETNS:
            if (setns((int)a[0].num, (int)a[1].num) < 0) fail(p, "setns");
            close((int)a[0].num);
            break;
        case OP_HOSTNAME:
            if (sethostname(a[0].str, slen(a[0].str)) < 0) fail(p, "sethostname");
            if (setdomainname(a[1].str, slen(a[1].str)) < 0) fail(p, "setdomainname");
            break;
        case OP_LOOPBACK:
            loopback_up(p);
            break;
        case OP_IDS:
            if (syscall(SYS_setgroups, 0, NULL) < 0) fail(p, "setgroups");
            if (syscall(SYS_setresgid, (gid_t)a[0].num, (gid_t)a[0].num, (gid_t)a[0].num) < 0)
                fail(p, "setresgid");
            if (syscall(SYS_setresuid, (uid_t)a[1].num, (uid_t)a[1].num, (uid_t)a[1].num) < 0)
                fail(p, "setresuid");
            break;
        case OP_NO_NEW_PRIVS:
            if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0) fail(p, "no_new_privs");
            break;
        case OP_SECCOMP: {
            struct sock_fprog prog;
            prog.len = (unsigned short)(a[0].num / (long long)sizeof(struct sock_filter));
            prog.filter = (struct sock_filter *)(uintptr_t)a[0].str;
            if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog, 0, 0) < 0) fail(p, "seccomp");
            break;
        }
        case OP_PDEATHSIG:
            if (prctl(PR_SET_PDEATHSIG, (unsigned long)a[0].num, 0, 0, 0) < 0)
                fail(p, "pdeathsig");
            break;
        case OP_ALIVE: {
            struct pollfd pfd = {.fd = (int)a[0].num, .events = POLLIN};
            if (poll(&pfd, 1, 0) != 0) _exit(1);
            close((int)a[0].num);
            break;
        }
        case OP_UMASK:
            umask((mode_t)a[0].num);
            break;
        case OP_SETSID:
            if (setsid() < 0) fail(p, "setsid");
            break;
        case OP_DUP2: /* dup2 onto itself keeps close-on-exec: clear it then */
            if (a[0].num == a[1].num ? fcntl((int)a[1].num, F_SETFD, 0) < 0
                                     : dup2((int)a[0].num, (int)a[1].num) < 0)
                fail(p, "dup2");
            break;
        case OP_TRACE:
            trace(p, a[0].str);
            break;
        case OP_STUBS:
            each_entry(p, &a[1], a[0].str, NULL, 0);
            break;
        case OP_BINDS:
            each_entry(p, &a[2], a[0].str, a[1].str, 1);
            break;
        case OP_EXEC:
            if (p->trace_fd >= 0) close(p->trace_fd);
            close_the_rest(p);
            syscall(SYS_rt_sigprocmask, SIG_SETMASK, &p->mask, NULL, _NSIG / 8);
            exec_builder(p, s);
        default:
            fail_message(p, "unknown sandbox step");
        }
    }
    fail_message(p, "the sandbox program ended without exec");
}

/* ---- the parent: parse the program, clone, wait for the exec ---- */

static int read_u32(const unsigned char **at, const unsigned char *end, uint32_t *out) {
    if (end - *at < 4) return -1;
    memcpy(out, *at, 4);
    *at += 4;
    return 0;
}

/* Wire format (little endian): per step u32 op, u32 nargs, then per argument
 * 'i' + i64, or 's' + u32 length + bytes. */
static int parse(prog_t *p, const unsigned char *data, Py_ssize_t size, char **block) {
    const unsigned char *at = data, *end = data + size;
    int steps = 0, args = 0;
    size_t bytes = 0;
    while (at < end) { /* count first, then one allocation */
        uint32_t op, n, len;
        if (read_u32(&at, end, &op) < 0 || read_u32(&at, end, &n) < 0) return -1;
        steps++;
        for (uint32_t i = 0; i < n; i++, args++) {
            if (at >= end) return -1;
            unsigned char type = *at++;
            if (type == 'i') {
                if (end - at < 8) return -1;
                at += 8;
            } else if (type == 's') {
                if (read_u32(&at, end, &len) < 0 || (size_t)(end - at) < len) return -1;
                at += len;
                bytes += len + 1;
            } else {
                return -1;
            }
        }
    }
    size_t total = sizeof(step_t) * (size_t)steps + sizeof(arg_t) * (size_t)args + bytes;
    char *mem = PyMem_Malloc(total ? total : 1);
    if (!mem) return -2;
    *block = mem;
    step_t *st = (step_t *)mem;
    arg_t *ar = (arg_t *)(mem + sizeof(step_t) * (size_t)steps);
    char *text = (char *)(ar + args);
    at = data;
    for (int s = 0; s < steps; s++) {
        uint32_t op = 0, n = 0, len = 0;
        read_u32(&at, end, &op);
        read_u32(&at, end, &n);
        st[s].op = (int)op;
        st[s].nargs = (int)n;
        st[s].args = ar;
        for (uint32_t i = 0; i < n; i++, ar++) {
            unsigned char type = *at++;
            if (type == 'i') {
                int64_t v;
                memcpy(&v, at, 8);
                at += 8;
                ar->num = v;
                ar->str = NULL;
            } else {
                read_u32(&at, end, &len);
                memcpy(text, at, len);
                text[len] = '\0';
                at += len;
                ar->str = text;
                ar->num = len;
                text += len + 1;
            }
        }
    }
    p->steps = st;
    p->nsteps = steps;
    return 0;
}

static char **string_array(PyObject *seq) {
    PyObject *fast = PySequence_Fast(seq, "a list of bytes is expected");
    if (!fast) return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(fast);
    char **out = PyMem_Calloc((size_t)n + 1, sizeof(char *));
    if (!out) {
        Py_DECREF(fast);
        PyErr_NoMemory();
        return NULL;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        char *s;
        Py_ssize_t len;
        if (PyBytes_AsStringAndSize(PySequence_Fast_GET_ITEM(fast, i), &s, &len) < 0) goto bad;
        if ((Py_ssize_t)strlen(s) != len) {
            PyErr_SetString(PyExc_ValueError, "embedded NUL byte");
            goto bad;
        }
        out[i] = PyMem_Malloc((size_t)len + 1);
        if (!out[i]) {
            PyErr_NoMemory();
            goto bad;
        }
        memcpy(out[i], s, (size_t)len + 1);
    }
    Py_DECREF(fast);
    return out;
bad:
    for (Py_ssize_t i = 0; i < n; i++) PyMem_Free(out[i]);
    PyMem_Free(out);
    Py_DECREF(fast);
    return NULL;
}

static void free_array(char **a) {
    if (!a) return;
    for (char **x = a; *x; x++) PyMem_Free(*x);
    PyMem_Free(a);
}

static PyObject *spawn(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer program;
    PyObject *argv_obj, *env_obj;
    unsigned long flags;
    int err_fd, trace_fd;
    if (!PyArg_ParseTuple(args, "y*OOkii", &program, &argv_obj, &env_obj, &flags, &err_fd,
                          &trace_fd))
        return NULL;
    prog_t p;
    memset(&p, 0, sizeof p);
    p.err_fd = err_fd;
    p.trace_fd = trace_fd;
    char *block = NULL;
    PyObject *result = NULL;
    void *stack = MAP_FAILED;
    int parsed = parse(&p, program.buf, program.len, &block);
    if (parsed == -1) {
        PyErr_SetString(PyExc_ValueError, "malformed sandbox program");
        goto out;
    }
    if (parsed == -2) {
        PyErr_NoMemory();
        goto out;
    }
    p.argv = string_array(argv_obj);
    p.envp = p.argv ? string_array(env_obj) : NULL;
    if (!p.envp) goto out;
    if (!p.argv[0]) {
        PyErr_SetString(PyExc_ValueError, "empty argv");
        goto out;
    }
    stack = mmap(NULL, STACK_SIZE + SCRATCH_SIZE, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (stack == MAP_FAILED) {
        PyErr_SetFromErrno(PyExc_OSError);
        goto out;
    }
    p.scratch = (char *)stack + STACK_SIZE;
    p.scratch_size = SCRATCH_SIZE;
    pid_t pid;
    int saved;
    Py_BEGIN_ALLOW_THREADS
    sigset_t all;
    sigfillset(&all);
    /* No handler of runner's may run on the child's stack. */
    pthread_sigmask(SIG_SETMASK, &all, &p.mask);
    pid = clone(child, (char *)stack + STACK_SIZE,
                (int)(CLONE_VM | CLONE_VFORK | SIGCHLD | flags), &p);
    saved = errno;
    pthread_sigmask(SIG_SETMASK, &p.mask, NULL);
    Py_END_ALLOW_THREADS
    if (pid < 0) {
        errno = saved;
        PyErr_SetFromErrno(PyExc_OSError);
        goto out;
    }
    result = PyLong_FromLong((long)pid);
out:
    if (stack != MAP_FAILED) munmap(stack, STACK_SIZE + SCRATCH_SIZE);
    free_array(p.argv);
    free_array(p.envp);
    PyMem_Free(block);
    PyBuffer_Release(&program);
    return result;
}

static PyMethodDef methods[] = {
    {"spawn", spawn, METH_VARARGS,
     "spawn(program, argv, env, flags, err_fd, trace_fd) -> pid: clone into new namespaces, "
     "run the program, exec."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_spawn", "The sandboxed builder's start, in C.", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__spawn(void) { return PyModule_Create(&module); }
