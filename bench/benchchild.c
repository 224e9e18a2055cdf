// SPDX-License-Identifier: Apache-2.0
/*
 * benchchild is the application the benchmarks supervise. It does as little
 * as a program can, so that the figures are the supervisor's and not the
 * application's start-up (a Go program takes ~7 ms to reach main on the
 * benchmark VM, this one ~1 ms): as soon as main runs it checks the fds it
 * was handed (LISTEN_FDS, LISTEN_PID, each fd open), reads CLOCK_MONOTONIC
 * and reports "start PID NANOS NFDS" in one datagram to the unix socket
 * named by BENCH_SOCK. The clock is system-wide, so the benchmark can
 * subtract a time taken in another process. NFDS is -1 when the hand-off is
 * broken.
 *
 * Its one argument says what it does next:
 *
 *	exit   exit 0 at once
 *	crash  report "die PID NANOS", then exit 1 (a crash, for restart policies)
 *	wait   wait for SIGTERM or SIGINT, then exit 0
 *
 * Built by bench/run.sh with the C compiler; plain C and libc only.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

static long long mono(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* How many fds were handed over and are open, or -1 when the environment
 * says fds are there but they are not ours or not open. */
static int handed_fds(void)
{
	const char *s = getenv("LISTEN_FDS"), *p = getenv("LISTEN_PID");
	struct stat st;
	char *end;
	long n, pid;

	if (!s || !*s)
		return 0;
	n = strtol(s, &end, 10);
	if (*end || n < 0)
		return -1;
	if (!p)
		return -1;
	pid = strtol(p, &end, 10);
	if (*end || pid != getpid())
		return -1;
	for (long fd = 3; fd < 3 + n; fd++)
		if (fstat((int)fd, &st) != 0)
			return -1;
	return (int)n;
}

static void send_report(int fd, const struct sockaddr_un *addr, const char *msg)
{
	if (sendto(fd, msg, strlen(msg), 0, (const struct sockaddr *)addr, sizeof(*addr)) < 0) {
		fprintf(stderr, "benchchild: report to %s: %s\n", addr->sun_path, strerror(errno));
		exit(2);
	}
}

int main(int argc, char **argv)
{
	long long started = mono();
	int nfds = handed_fds();
	struct sockaddr_un addr = { .sun_family = AF_UNIX };
	const char *sock;
	char msg[96];
	sigset_t set;
	int fd, sig;

	if (argc != 2) {
		fprintf(stderr, "usage: benchchild exit|crash|wait\n");
		return 2;
	}
	sock = getenv("BENCH_SOCK");
	if (!sock || !*sock) {
		fprintf(stderr, "benchchild: BENCH_SOCK not set\n");
		return 2;
	}
	if (strlen(sock) >= sizeof(addr.sun_path)) {
		fprintf(stderr, "benchchild: BENCH_SOCK %s: path too long\n", sock);
		return 2;
	}
	strcpy(addr.sun_path, sock);
	fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		fprintf(stderr, "benchchild: socket: %s\n", strerror(errno));
		return 2;
	}
	/* Blocked before the report, so that a SIGTERM sent as soon as it
	 * arrives is waited for, not fatal. */
	sigemptyset(&set);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	if (strcmp(argv[1], "wait") == 0)
		sigprocmask(SIG_BLOCK, &set, NULL);
	snprintf(msg, sizeof(msg), "start %d %lld %d", (int)getpid(), started, nfds);
	send_report(fd, &addr, msg);

	if (strcmp(argv[1], "exit") == 0)
		return 0;
	if (strcmp(argv[1], "crash") == 0) {
		snprintf(msg, sizeof(msg), "die %d %lld", (int)getpid(), mono());
		send_report(fd, &addr, msg);
		return 1;
	}
	if (strcmp(argv[1], "wait") == 0) {
		while (sigwait(&set, &sig) != 0)
			;
		return 0;
	}
	fprintf(stderr, "benchchild: unknown mode \"%s\"\n", argv[1]);
	return 2;
}
