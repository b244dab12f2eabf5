/* The floor: run a dependency graph of `/bin/sh -c 'echo I > DIR/I'` jobs with
 * at most J at a time, paying only fork + exec + wait. Compiled by bench/run.py.
 *
 * Input on stdin: one node per line, "ID DEP DEP ..." (IDs are 0..N-1, any order).
 * Usage: floor J DIR < graph
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define MAXN 200000

static int ndeps[MAXN];          /* unfinished dependencies per node */
static int *rdeps[MAXN];         /* nodes waiting on this one */
static int nrdeps[MAXN], caprdeps[MAXN];
static pid_t pids[MAXN];
static int ready[MAXN], nready;

static void add_rdep(int dep, int node) {
    if (nrdeps[dep] == caprdeps[dep]) {
        caprdeps[dep] = caprdeps[dep] ? 2 * caprdeps[dep] : 4;
        rdeps[dep] = realloc(rdeps[dep], sizeof(int) * caprdeps[dep]);
    }
    rdeps[dep][nrdeps[dep]++] = node;
}

int main(int argc, char **argv) {
    if (argc != 3) { fprintf(stderr, "usage: floor J DIR < graph\n"); return 2; }
    int jobs = atoi(argv[1]);
    const char *dir = argv[2];
    static char line[1 << 20];
    int n = 0;
    while (fgets(line, sizeof line, stdin)) {
        char *tok = strtok(line, " \n");
        if (!tok) continue;
        int id = atoi(tok);
        if (id + 1 > n) n = id + 1;
        while ((tok = strtok(NULL, " \n"))) { add_rdep(atoi(tok), id); ndeps[id]++; }
    }
    for (int i = 0; i < n; i++) if (ndeps[i] == 0) ready[nready++] = i;
    int running = 0, done = 0;
    while (done < n) {
        while (running < jobs && nready > 0) {
            int id = ready[--nready];
            char cmd[4096];
            snprintf(cmd, sizeof cmd, "echo %d > %s/%d", id, dir, id);
            pid_t pid = fork();
            if (pid == 0) { execl("/bin/sh", "sh", "-c", cmd, (char *)NULL); _exit(127); }
            pids[id] = pid;
            running++;
        }
        int status;
        pid_t pid = wait(&status);
        if (pid < 0) { perror("wait"); return 1; }
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) { fprintf(stderr, "job failed\n"); return 1; }
        running--; done++;
        for (int id = 0; id < n; id++) {
            if (pids[id] != pid) continue;
            pids[id] = 0;
            for (int k = 0; k < nrdeps[id]; k++)
                if (--ndeps[rdeps[id][k]] == 0) ready[nready++] = rdeps[id][k];
            break;
        }
    }
    return 0;
}
