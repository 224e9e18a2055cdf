//go:build ignore

// SPDX-License-Identifier: GPL-2.0
/* exectrace sends an event to a ring buffer for every successful exec on the
 * machine, from the sched/sched_process_exec tracepoint: the pid, the
 * command name after the exec and the file executed. Its section names the
 * whole hook, so bpfsup attaches it without -a. Used by examples/exec-tracer.
 */
#include <linux/bpf.h>
#include <linux/types.h>
#include <bpf/bpf_helpers.h>

#define COMM_LEN 16
#define FILENAME_LEN 128

/* The tracepoint's record, as /sys/kernel/tracing/events/sched/
 * sched_process_exec/format lays it out; hand-written so that no vmlinux.h
 * is needed.
 */
struct sched_process_exec_args {
	__u64 common;
	__u32 filename_loc; /* __data_loc: offset in the low 16 bits, length in the high */
	__s32 pid;
	__s32 old_pid;
};

/* exec_event is one event in the ring buffer; examples/exec-tracer decodes
 * it (little-endian, no padding).
 */
struct exec_event {
	__u32 pid;
	__u32 old_pid;
	char comm[COMM_LEN];
	char filename[FILENAME_LEN];
};

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
} events SEC(".maps");

SEC("tp/sched/sched_process_exec")
int trace_exec(struct sched_process_exec_args *ctx)
{
	struct exec_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	unsigned int off;

	if (!e)
		return 0; /* the reader is behind: drop the event */
	e->pid = ctx->pid;
	e->old_pid = ctx->old_pid;
	bpf_get_current_comm(e->comm, sizeof(e->comm));
	off = ctx->filename_loc & 0xffff;
	bpf_probe_read_kernel_str(e->filename, sizeof(e->filename), (void *)ctx + off);
	bpf_ringbuf_submit(e, 0);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
