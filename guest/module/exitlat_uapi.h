/* SPDX-License-Identifier: GPL-2.0 OR MIT */
/*
 * exitlat: interface shared by the guest kernel module (exitlat_mod.c) and the
 * user-space probe (guest/probe/exitlat-probe.c), plus the timing primitives
 * both use, so that user-timed and kernel-timed cases are measured with the
 * very same instruction sequences.
 *
 * Timing methodology (one sample = one iteration):
 *
 *     t0 = READ_T0();  <instruction under test>;  t1 = READ_T1();
 *     sample = t1 > t0 ? t1 - t0 : 0          (computed without a branch)
 *
 * The timer (exitlat.timer) gives the pair of sequences:
 *   - rdtscp (default):  t0 = RDTSCP; LFENCE      t1 = RDTSCP
 *     RDTSCP waits until all previous instructions have executed before it
 *     reads the TSC, so neither read can happen before what precedes it has
 *     completed (t1 cannot be taken before the instruction under test and its
 *     VM exit are over).  RDTSCP does not keep *later* instructions from
 *     starting early: the LFENCE after the first read does, so the body
 *     cannot begin before t0 was read.  After t1 nothing needs fencing: what
 *     follows is the store of the sample, outside the window.
 *   - lfence:  t0 = t1 = LFENCE; RDTSC; LFENCE
 *     The first LFENCE keeps RDTSC from executing before earlier
 *     instructions complete, the second keeps later ones from starting
 *     before the TSC was read: a fully ordered read on both sides, slightly
 *     costlier than RDTSCP.
 * The TSC must be invariant and RDTSC/RDTSCP must not exit (KVM does not
 * intercept them unless the host forces it), otherwise the timer itself
 * takes a VM exit; the probe reports CPUID's invariant-TSC bit.
 * The delta includes the cost of one timer read (see baseline_timer); it is
 * never subtracted.
 *
 * Inside a window there is only the body and the timer reads: no load of a
 * global (callers copy port, file descriptor, counts into locals first), no
 * branch and no call of the harness (one loop instance per statement, timer
 * and vendor, selected before the loop: WINDOW in exitlat-probe.c,
 * EL_BATCH_FN in exitlat_mod.c, each with its harness's own methodology
 * comment), no page fault (the sample buffers are pre-faulted).
 *
 * A sample of 0 marks an invalid iteration: the TSC did not advance or went
 * backwards (t1 <= t0), which must never be stored as a huge unsigned delta.
 * The probe counts them after the loop, outside every window, and reports
 * "tsc_backwards" in the key's done event.
 */
#ifndef EXITLAT_UAPI_H
#define EXITLAT_UAPI_H

#include <linux/types.h>
#include <linux/ioctl.h>

#define EXITLAT_ABI_VERSION 4	/* 4: INFO reports the APIC mode; 3: ids generated from the table; 2: EXITLAT_I_NOP, RDTSCP;LFENCE t0, bounds */
#define EXITLAT_DEVICE "/dev/exitlat"

/*
 * enum exitlat_instr (EXITLAT_I_*) and the probe's rows: generated from the
 * instruction table, exitlat/instructions.py (exitlat/build/guestgen.py).
 */
#include "exitlat_instrs.h"

enum exitlat_timer {
	EXITLAT_T_RDTSCP = 0,
	EXITLAT_T_LFENCE = 1,
};

struct exitlat_info {
	__u32 abi_version;
	__u32 tsc_khz;		/* the guest kernel's tsc_khz */
	__u32 flags;		/* EXITLAT_INFO_* */
	__u32 reserved;
};
#define EXITLAT_INFO_TSC_DEADLINE	(1u << 0) /* X86_FEATURE_TSC_DEADLINE_TIMER */
#define EXITLAT_INFO_KVM		(1u << 1) /* kvm_para_available() */
/* The local APIC's mode (IA32_APIC_BASE): enabled in x2APIC mode, or enabled in
 * xAPIC mode (the guest booted nox2apic); neither: disabled or unreadable. */
#define EXITLAT_INFO_X2APIC		(1u << 2)
#define EXITLAT_INFO_XAPIC		(1u << 3)

struct exitlat_config {
	__u32 instr;		/* enum exitlat_instr */
	__u32 timer;		/* enum exitlat_timer (kernel-timed loops) */
	__u32 port;		/* OUTB port, 0..0xffff */
	__u32 msr;		/* RDMSR index */
	__u32 amd;		/* 1: VMMCALL instead of VMCALL */
	__u32 batch;		/* kernel loop: iterations per irq-off batch */
};

struct exitlat_loop {
	__u64 samples;		/* user pointer to iters __u64 slots */
	__u64 iters;		/* timed iterations (kept) */
	__u64 warmup;		/* untimed-for-keeping iterations run first */
	__u64 result;		/* out: RAX after the last VMCALL, else 0 */
};

#define EXITLAT_IOC_MAGIC	0xE7
/* Report tsc_khz and features. */
#define EXITLAT_IOC_INFO	_IOR(EXITLAT_IOC_MAGIC, 1, struct exitlat_info)
/* Validate and pre-flight (execute once, fault-protected) an instruction. */
#define EXITLAT_IOC_CONFIG	_IOW(EXITLAT_IOC_MAGIC, 2, struct exitlat_config)
/* Execute the configured instruction exactly once (cases 3-4, module_call). */
#define EXITLAT_IOC_ONCE	_IO(EXITLAT_IOC_MAGIC, 3)
/* Run a kernel-timed loop (cases 5-6), copy samples to user memory. */
#define EXITLAT_IOC_LOOP	_IOWR(EXITLAT_IOC_MAGIC, 4, struct exitlat_loop)

#define EXITLAT_BATCH_DEFAULT	1000
#define EXITLAT_BATCH_MAX	100000
#define EXITLAT_MAX_ITERS	50000000ULL	/* bound on iters and on warmup */

#define MSR_EXITLAT_TSC_DEADLINE 0x6e0

/* ---- timing and instruction primitives (user and kernel) ---------------- */

/* t1 of the rdtscp timer: RDTSCP waits for everything before it. */
static inline __attribute__((always_inline)) __u64 exitlat_rdtscp(void)
{
	__u32 lo, hi, aux;

	asm volatile("rdtscp" : "=a"(lo), "=d"(hi), "=c"(aux) : : "memory");
	return ((__u64)hi << 32) | lo;
}

/* t0 of the rdtscp timer: the LFENCE keeps the body from starting before the read. */
static inline __attribute__((always_inline)) __u64 exitlat_rdtscp_lfence(void)
{
	__u32 lo, hi, aux;

	asm volatile("rdtscp; lfence" : "=a"(lo), "=d"(hi), "=c"(aux) : : "memory");
	return ((__u64)hi << 32) | lo;
}

/* t0 and t1 of the lfence timer. */
static inline __attribute__((always_inline)) __u64 exitlat_rdtsc_fenced(void)
{
	__u32 lo, hi;

	asm volatile("lfence; rdtsc; lfence" : "=a"(lo), "=d"(hi) : : "memory");
	return ((__u64)hi << 32) | lo;
}

/* CPUID leaf 0 subleaf 0: always exits under VMX and SVM (KVM emulates it). */
static inline __attribute__((always_inline)) void exitlat_cpuid0(void)
{
	__u32 a = 0, b, c = 0, d;

	asm volatile("cpuid" : "+a"(a), "=b"(b), "+c"(c), "=d"(d) : : "memory");
}

/*
 * Hypercall with nr = RAX = 0 (no KVM hypercall has number 0) and all
 * arguments 0.  From CPL 0 KVM answers -KVM_ENOSYS (-1000); from CPL > 0 it
 * answers -KVM_EPERM (-1) without injecting a fault.  Returns RAX.
 */
static inline __attribute__((always_inline)) long exitlat_vmcall(void)
{
	unsigned long a = 0, b = 0, c = 0, d = 0, s = 0;

	asm volatile("vmcall" : "+a"(a), "+b"(b), "+c"(c), "+d"(d), "+S"(s) : : "memory");
	return (long)a;
}

static inline __attribute__((always_inline)) long exitlat_vmmcall(void)
{
	unsigned long a = 0, b = 0, c = 0, d = 0, s = 0;

	asm volatile("vmmcall" : "+a"(a), "+b"(b), "+c"(c), "+d"(d), "+S"(s) : : "memory");
	return (long)a;
}

static inline __attribute__((always_inline)) void exitlat_outb(__u16 port, __u8 val)
{
	asm volatile("outb %b0, %w1" : : "a"(val), "Nd"(port) : "memory");
}

static inline __attribute__((always_inline)) __u32 exitlat_inl(__u16 port)
{
	__u32 val;

	asm volatile("inl %w1, %0" : "=a"(val) : "Nd"(port) : "memory");
	return val;
}

static inline __attribute__((always_inline)) __u8 exitlat_inb(__u16 port)
{
	__u8 val;

	asm volatile("inb %w1, %0" : "=a"(val) : "Nd"(port) : "memory");
	return val;
}

/*
 * The timed loop, shared by every case: READ_T0/READ_T1 the timer pair (see
 * the top of this file), BODY the statement under test.  Buffer and count are
 * copied into locals first, so the loop itself loads nothing from memory.
 * The macro's locals are prefixed __tl_ so that they can never capture (and
 * self-initialize from) a caller's variable passed in as buf or n.
 * Between two windows there is only the store of the previous delta; the
 * delta is kept only if t1 > t0, else 0 (a mask, no branch).
 */
#define EXITLAT_TIMED_LOOP(buf, n, READ_T0, READ_T1, BODY)		\
	EXITLAT_TIMED_LOOP_SETTLE(buf, n, READ_T0, READ_T1, BODY, 0, (void)0)

/* The same, with each sample stored net of OFFSET cycles (tscdeadline: the
 * wait it armed; a sample not past it is stored as 0, invalid) and SETTLE run
 * after the store, outside the timed interval (ipi_halt waits there for the
 * other vCPU to halt again). */
#define EXITLAT_TIMED_LOOP_SETTLE(buf, n, READ_T0, READ_T1, BODY, OFFSET, SETTLE) \
	do {								\
		__typeof__(&(buf)[0]) const __tl_buf = (buf);		\
		const __u64 __tl_n = (n);				\
		__u64 __tl_i, __tl_t0, __tl_t1;				\
		for (__tl_i = 0; __tl_i < __tl_n; __tl_i++) {		\
			__tl_t0 = READ_T0();				\
			BODY;						\
			__tl_t1 = READ_T1();				\
			__tl_buf[__tl_i] = (__tl_t1 - __tl_t0 - (OFFSET)) & \
				-(__u64)(__tl_t1 > __tl_t0 + (OFFSET));	\
			SETTLE;						\
		}							\
	} while (0)

#endif /* EXITLAT_UAPI_H */
