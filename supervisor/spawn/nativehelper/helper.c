// The native exec helper: what ShellScript does, without a shell.
//
// Started by spawn.Start as the forked child, with argv {"bpfsup exec",
// CMD, ARG...} and the application's environment, it exports its own pid
// as LISTEN_PID (the pid the application keeps across exec) and execs CMD,
// looked up in PATH as `exec "$@"` in sh(1) looks it up. It is all the
// child runs between the fork and the application, so it is built without
// libc, statically, and small: its exec costs about a fifth of a shell's
// (see the bench's child restart). Everything else is done by the forked
// child before it execs this: the change of user, the parent-death signal,
// the handed fds in place.
//
// Errors end it as they end sh(1): 127 when CMD is not found, 126 when it
// cannot be executed, with a line on stderr naming CMD. A file the kernel
// does not know how to execute (ENOEXEC) is run by /bin/sh as a script, as
// sh(1) does.
//
// Built by `make exec-helper` (the top Makefile) into helper_amd64.bin,
// which is committed and embedded in bpfsup (package spawn).

#if !defined(__x86_64__)
#error "the native exec helper is written for x86-64; other architectures use /bin/sh"
#endif

typedef unsigned long size_t;

enum {
	SYS_write = 1,
	SYS_getpid = 39,
	SYS_execve = 59,
	SYS_exit_group = 231,
	ENOENT = 2,
	ENOEXEC = 8,
	EACCES = 13,
	ENOTDIR = 20,
	PATH_MAX = 4096,
};

static long syscall3(long n, long a, long b, long c)
{
	long ret;
	__asm__ volatile("syscall"
			 : "=a"(ret)
			 : "a"(n), "D"(a), "S"(b), "d"(c)
			 : "rcx", "r11", "memory");
	return ret;
}

static size_t length(const char *s)
{
	size_t n = 0;
	while (s[n])
		n++;
	return n;
}

static int has_prefix(const char *s, const char *prefix)
{
	while (*prefix)
		if (*s++ != *prefix++)
			return 0;
	return 1;
}

static void say(const char *s)
{
	syscall3(SYS_write, 2, (long)s, (long)length(s));
}

__attribute__((noreturn)) static void fail(const char *cmd, long err)
{
	const char *why = "cannot execute";
	int status = 126;
	if (err == ENOENT || err == ENOTDIR) {
		why = "not found";
		status = 127;
	} else if (err == EACCES) {
		why = "permission denied";
	} else if (err == ENOEXEC) {
		why = "exec format error";
	}
	say("bpfsup exec: ");
	say(cmd);
	say(": ");
	say(why);
	say("\n");
	syscall3(SYS_exit_group, status, 0, 0);
	__builtin_unreachable();
}

// run execs path with argv and envp and returns the error when it cannot.
// A file that is not an executable format is given to /bin/sh.
static long run(const char *path, char **argv, char **envp)
{
	long err = -syscall3(SYS_execve, (long)path, (long)argv, (long)envp);
	if (err != ENOEXEC)
		return err;
	size_t argc = 0;
	while (argv[argc])
		argc++;
	char *script[argc + 2];
	script[0] = "/bin/sh";
	script[1] = (char *)path;
	for (size_t i = 1; i <= argc; i++)
		script[i + 1] = argv[i];
	syscall3(SYS_execve, (long)script[0], (long)script, (long)envp);
	return ENOEXEC;
}

__attribute__((noreturn, used)) void helper_main(long *sp)
{
	long argc = sp[0];
	char **argv = (char **)(sp + 1);
	char **envp = argv + argc + 1;
	if (argc < 2) {
		say("bpfsup exec: no command\n");
		syscall3(SYS_exit_group, 127, 0, 0);
	}
	char **args = argv + 1;
	const char *cmd = args[0];

	// LISTEN_PID=<pid>, replacing any the environment has.
	char listen_pid[32];
	const char *name = "LISTEN_PID=";
	size_t n = 0;
	while (name[n]) {
		listen_pid[n] = name[n];
		n++;
	}
	char digits[20];
	size_t nd = 0;
	unsigned long pid = (unsigned long)syscall3(SYS_getpid, 0, 0, 0);
	do {
		digits[nd++] = (char)('0' + pid % 10);
		pid /= 10;
	} while (pid);
	while (nd)
		listen_pid[n++] = digits[--nd];
	listen_pid[n] = 0;

	size_t envc = 0;
	while (envp[envc])
		envc++;
	char *env[envc + 2];
	size_t e = 0;
	const char *search = 0;
	for (size_t i = 0; i < envc; i++) {
		if (has_prefix(envp[i], "LISTEN_PID="))
			continue;
		if (has_prefix(envp[i], "PATH="))
			search = envp[i] + 5;
		env[e++] = envp[i];
	}
	env[e++] = listen_pid;
	env[e] = 0;

	for (const char *c = cmd; *c; c++)
		if (*c == '/')
			fail(cmd, run(cmd, args, env));

	// sh(1)'s search: each directory of PATH in turn (an empty one is the
	// current directory), the default path when there is no PATH; a
	// command found but not executable is reported over one not found.
	if (!search)
		search = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
	size_t cmdlen = length(cmd);
	long err = ENOENT;
	char path[PATH_MAX];
	for (const char *dir = search;;) {
		const char *end = dir;
		while (*end && *end != ':')
			end++;
		size_t dirlen = (size_t)(end - dir);
		if (dirlen + 1 + cmdlen < PATH_MAX) {
			size_t p = 0;
			for (const char *d = dir; d < end; d++)
				path[p++] = *d;
			if (p > 0)
				path[p++] = '/';
			for (size_t i = 0; i <= cmdlen; i++)
				path[p++] = cmd[i];
			long got = run(path, args, env);
			if (got != ENOENT && got != ENOTDIR)
				err = got;
		}
		if (!*end)
			break;
		dir = end + 1;
	}
	fail(cmd, err);
}

// The entry point: the kernel leaves argc, argv and envp on the stack.
__asm__(".text\n"
	".globl _start\n"
	"_start:\n"
	"	xor %ebp, %ebp\n"
	"	mov %rsp, %rdi\n"
	"	and $-16, %rsp\n"
	"	call helper_main\n"
	"	hlt\n");
