// SPDX-License-Identifier: GPL-2.0
/*
 * exitlat.ko: the guest-kernel half of the exitlat probes.
 *
 * /dev/exitlat (misc device) offers four ioctls (see exitlat_uapi.h):
 *   INFO    the kernel's tsc_khz and a few features;
 *   CONFIG  choose the instruction, validate it and execute it once with an
 *           exception-table fixup, so an instruction the vCPU cannot execute
 *           (VMCALL under TCG, an MSR that #GPs) is a clean error, not an oops;
 *   ONCE    execute that instruction exactly once and return: cases 3 and 4,
 *           timed in user space around the ioctl (EXITLAT_I_NONE gives the
 *           baseline_module_call: the same path without the instruction);
 *   LOOP    the kernel-timed loop of cases 5 and 6.
 *
 * Kernel-timed loops run in batches (default 1000 iterations).  Each batch
 * runs with preemption and local interrupts off, so no tick, IRQ or
 * reschedule lands inside a timed window; between batches interrupts are
 * re-enabled, the batch is copied to user memory and cond_resched() runs.
 * Trade-off: a bigger batch means fewer batch boundaries (each one a chance
 * for a pending interrupt to be delivered, cache/TLB disturbance for the next
 * few samples) but a longer irq-off stretch: 1000 QEMU round trips of ~10 us
 * is ~10 ms without interrupts, harmless for a benchmark guest (RCU stall
 * warnings start at 21 s) but it delays the guest's timer tick.  NMIs are
 * not blocked.  Warm-up iterations use the same batches and are discarded.
 */
#include <linux/module.h>
#include <linux/miscdevice.h>
#include <linux/fs.h>
#include <linux/slab.h>
#include <linux/uaccess.h>
#include <linux/sched.h>
#include <linux/sched/signal.h>
#include <linux/irqflags.h>
#include <linux/preempt.h>
#include <linux/kvm_para.h>
#include <asm/tsc.h>
#include <asm/msr.h>
#include <asm/cpufeature.h>
#include <asm/asm.h>

#include "exitlat_uapi.h"

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("exitlat: VM-exit latency probes (guest side)");

struct exitlat_state {
	struct exitlat_config cfg;
	bool configured;
	u64 *batch;		/* kernel buffer for one batch */
};

/* Raw RDMSR/WRMSR, without the tracepoints/paravirt hooks of rdmsrl(). */
static __always_inline u64 el_rdmsr(u32 msr)
{
	u32 lo, hi;

	asm volatile("rdmsr" : "=a"(lo), "=d"(hi) : "c"(msr) : "memory");
	return ((u64)hi << 32) | lo;
}

static __always_inline void el_wrmsr(u32 msr, u64 val)
{
	asm volatile("wrmsr" : : "c"(msr), "a"((u32)val), "d"((u32)(val >> 32))
		     : "memory");
}

/* Execute VMCALL/VMMCALL once; returns -EFAULT if it faulted (#UD). */
static int el_hypercall_safe(bool amd, long *rax)
{
	unsigned long a = 0, b = 0, c = 0, d = 0, s = 0;
	int faulted = 1;

	if (amd)
		asm volatile("1: vmmcall\n\t"
			     "movl $0, %[f]\n"
			     "2:\n"
			     _ASM_EXTABLE(1b, 2b)
			     : "+a"(a), "+b"(b), "+c"(c), "+d"(d), "+S"(s),
			       [f] "+r"(faulted) : : "memory");
	else
		asm volatile("1: vmcall\n\t"
			     "movl $0, %[f]\n"
			     "2:\n"
			     _ASM_EXTABLE(1b, 2b)
			     : "+a"(a), "+b"(b), "+c"(c), "+d"(d), "+S"(s),
			       [f] "+r"(faulted) : : "memory");
	*rax = (long)a;
	return faulted ? -EFAULT : 0;
}

/* MSRs that KVM passes through to the guest: reading them never exits. */
static bool el_msr_passthrough(u32 msr)
{
	return (msr >= 0x174 && msr <= 0x176) ||	/* SYSENTER_CS/ESP/EIP */
	       (msr >= 0xc0000100 && msr <= 0xc0000102); /* FS/GS/KERNEL_GS base */
}

static long el_config(struct exitlat_state *st, struct exitlat_config __user *uarg)
{
	struct exitlat_config cfg;
	long rax;
	u64 val;

	if (copy_from_user(&cfg, uarg, sizeof(cfg)))
		return -EFAULT;
	if (cfg.timer > EXITLAT_T_LFENCE || cfg.port > 0xffff)
		return -EINVAL;
	if (cfg.batch == 0)
		cfg.batch = EXITLAT_BATCH_DEFAULT;
	if (cfg.batch > EXITLAT_BATCH_MAX)
		return -E2BIG;
	if (cfg.timer == EXITLAT_T_RDTSCP && !boot_cpu_has(X86_FEATURE_RDTSCP))
		return -EOPNOTSUPP;

	switch (cfg.instr) {
	case EXITLAT_I_NONE:
	case EXITLAT_I_CPUID:
	case EXITLAT_I_OUTB:
		break;
	case EXITLAT_I_VMCALL:
		/* Pre-flight: under TCG (or another hypervisor) it may #UD. */
		if (el_hypercall_safe(cfg.amd, &rax))
			return -ENOEXEC;
		break;
	case EXITLAT_I_RDMSR:
		if (el_msr_passthrough(cfg.msr))
			return -EPERM;
		if (rdmsrl_safe(cfg.msr, &val))
			return -EIO;
		break;
	case EXITLAT_I_WRMSR_TSC_DEADLINE:
		if (!boot_cpu_has(X86_FEATURE_TSC_DEADLINE_TIMER))
			return -EOPNOTSUPP;
		if (rdmsrl_safe(MSR_EXITLAT_TSC_DEADLINE, &val))
			return -EIO;
		break;
	default:
		return -EINVAL;
	}

	kvfree(st->batch);
	st->batch = kvmalloc_array(cfg.batch, sizeof(u64), GFP_KERNEL);
	if (!st->batch) {
		st->configured = false;
		return -ENOMEM;
	}
	st->cfg = cfg;
	st->configured = true;
	return 0;
}

/* Cases 3/4 and baseline_module_call: one instruction, nothing else. */
static long el_once(struct exitlat_state *st)
{
	const struct exitlat_config *cfg = &st->cfg;

	if (!st->configured)
		return -ENXIO;
	switch (cfg->instr) {
	case EXITLAT_I_NONE:
		return 0;
	case EXITLAT_I_CPUID:
		exitlat_cpuid0();
		return 0;
	case EXITLAT_I_VMCALL:
		/* RAX (-KVM_ENOSYS) is dropped: an ioctl result in -4095..-1 reads as an error. */
		if (cfg->amd)
			exitlat_vmmcall();
		else
			exitlat_vmcall();
		return 0;
	case EXITLAT_I_RDMSR:
		el_rdmsr(cfg->msr);
		return 0;
	case EXITLAT_I_OUTB:
		exitlat_outb(cfg->port, '.');
		return 0;
	default:
		/* WRMSR TSC_DEADLINE: loop only (see docs/probes.md). */
		return -EINVAL;
	}
}

/*
 * One batch of n iterations with IRQs off.  One loop per (instruction, timer)
 * pair so no switch runs inside a timed window.
 */
#define EL_BATCH_FOR_TIMER(READ)					\
	do {								\
		switch (cfg->instr) {					\
		case EXITLAT_I_CPUID:					\
			EXITLAT_TIMED_LOOP(buf, n, READ, exitlat_cpuid0()); \
			break;						\
		case EXITLAT_I_VMCALL:					\
			if (cfg->amd)					\
				EXITLAT_TIMED_LOOP(buf, n, READ, rax = exitlat_vmmcall()); \
			else						\
				EXITLAT_TIMED_LOOP(buf, n, READ, rax = exitlat_vmcall()); \
			break;						\
		case EXITLAT_I_RDMSR:					\
			EXITLAT_TIMED_LOOP(buf, n, READ, el_rdmsr(msr)); \
			break;						\
		case EXITLAT_I_WRMSR_TSC_DEADLINE:			\
			EXITLAT_TIMED_LOOP(buf, n, READ,		\
				el_wrmsr(MSR_EXITLAT_TSC_DEADLINE, far)); \
			break;						\
		case EXITLAT_I_OUTB:					\
			EXITLAT_TIMED_LOOP(buf, n, READ, exitlat_outb(port, '.')); \
			break;						\
		default:						\
			EXITLAT_TIMED_LOOP(buf, n, READ, barrier());	\
			break;						\
		}							\
	} while (0)

static long el_batch(const struct exitlat_config *cfg, u64 *buf, u64 n)
{
	unsigned long flags;
	u64 saved = 0, far = 0;
	u32 msr = cfg->msr;
	u16 port = cfg->port;
	long rax = 0;

	preempt_disable();
	local_irq_save(flags);
	if (cfg->instr == EXITLAT_I_WRMSR_TSC_DEADLINE) {
		/*
		 * The guest's own clockevent uses this MSR.  Save the armed
		 * deadline (0 = none), write one far in the future (~2^40
		 * cycles, minutes away: it never fires, KVM keeps it armed in
		 * the VMX preemption timer), then restore the saved value: if
		 * it already passed, the timer interrupt fires at once when
		 * interrupts are back on, so no tick is lost.  Two extra
		 * (untimed) exits per batch.
		 */
		saved = el_rdmsr(MSR_EXITLAT_TSC_DEADLINE);
		far = rdtsc() + (1ULL << 40);
	}
	if (cfg->timer == EXITLAT_T_LFENCE)
		EL_BATCH_FOR_TIMER(exitlat_rdtsc_fenced);
	else
		EL_BATCH_FOR_TIMER(exitlat_rdtscp);
	if (cfg->instr == EXITLAT_I_WRMSR_TSC_DEADLINE)
		el_wrmsr(MSR_EXITLAT_TSC_DEADLINE, saved);
	local_irq_restore(flags);
	preempt_enable();
	return rax;
}

static long el_loop(struct exitlat_state *st, struct exitlat_loop __user *uarg)
{
	const struct exitlat_config *cfg = &st->cfg;
	struct exitlat_loop lp;
	u64 __user *out;
	u64 total, done, n;
	long rax = 0;

	if (!st->configured)
		return -ENXIO;
	if (copy_from_user(&lp, uarg, sizeof(lp)))
		return -EFAULT;
	out = u64_to_user_ptr(lp.samples);
	total = lp.warmup + lp.iters;
	for (done = 0; done < total; done += n) {
		n = min_t(u64, cfg->batch, total - done);
		/* A batch never mixes warm-up and kept samples. */
		if (done < lp.warmup)
			n = min_t(u64, n, lp.warmup - done);
		rax = el_batch(cfg, st->batch, n);
		if (done >= lp.warmup &&
		    copy_to_user(out + (done - lp.warmup), st->batch, n * sizeof(u64)))
			return -EFAULT;
		if (fatal_signal_pending(current))
			return -EINTR;
		cond_resched();
	}
	lp.result = (u64)rax;
	if (put_user(lp.result, &uarg->result))
		return -EFAULT;
	return 0;
}

static long el_ioctl(struct file *file, unsigned int cmd, unsigned long arg)
{
	struct exitlat_state *st = file->private_data;

	switch (cmd) {
	case EXITLAT_IOC_ONCE:
		return el_once(st);
	case EXITLAT_IOC_LOOP:
		return el_loop(st, (void __user *)arg);
	case EXITLAT_IOC_CONFIG:
		return el_config(st, (void __user *)arg);
	case EXITLAT_IOC_INFO: {
		struct exitlat_info info = {
			.abi_version = EXITLAT_ABI_VERSION,
			.tsc_khz = tsc_khz,
		};

		if (boot_cpu_has(X86_FEATURE_TSC_DEADLINE_TIMER))
			info.flags |= EXITLAT_INFO_TSC_DEADLINE;
		if (kvm_para_available())
			info.flags |= EXITLAT_INFO_KVM;
		return copy_to_user((void __user *)arg, &info, sizeof(info)) ? -EFAULT : 0;
	}
	default:
		return -ENOTTY;
	}
}

static int el_open(struct inode *inode, struct file *file)
{
	struct exitlat_state *st = kzalloc(sizeof(*st), GFP_KERNEL);

	if (!st)
		return -ENOMEM;
	file->private_data = st;
	return 0;
}

static int el_release(struct inode *inode, struct file *file)
{
	struct exitlat_state *st = file->private_data;

	kvfree(st->batch);
	kfree(st);
	return 0;
}

static const struct file_operations el_fops = {
	.owner = THIS_MODULE,
	.open = el_open,
	.release = el_release,
	.unlocked_ioctl = el_ioctl,
};

static struct miscdevice el_dev = {
	.minor = MISC_DYNAMIC_MINOR,
	.name = "exitlat",
	.fops = &el_fops,
	.mode = 0600,
};

static int __init el_init(void)
{
	return misc_register(&el_dev);
}

static void __exit el_exit(void)
{
	misc_deregister(&el_dev);
}

module_init(el_init);
module_exit(el_exit);
