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
 *   LOOP    the kernel-timed loop of cases 5 and 6, and of the kernel
 *           baselines (EXITLAT_I_NONE: the timer only; EXITLAT_I_NOP).
 *
 * Reading order: the instructions (EL_INSTRUCTIONS, one row each), the
 * kernel-mode timing harness (irq-off batches; its comment is the module's
 * methodology), then the ioctls.
 *
 * Concurrency on one open file: CONFIG and LOOP hold the file's mutex, so a
 * CONFIG cannot free or resize the batch buffer under a running LOOP and two
 * LOOPs cannot share it.  ONCE takes no lock: it runs inside the timed window
 * of cases 3/4 (the probe times the ioctl), and a mutex there would add its
 * own cost to every sample.  It reads the configuration as one published
 * 64-bit word instead (el_once_word), so it always sees a complete,
 * validated configuration, old or new, never a torn mix.
 */
#include <linux/module.h>
#include <linux/mutex.h>
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
#include <asm/processor-flags.h>
#include <asm/msr-index.h>
#include <asm/apicdef.h>
#include <asm/fixmap.h>
#include <asm/irq_vectors.h>
#include <linux/delay.h>
#include <linux/pci.h>
#include <linux/irq_work.h>
#include <linux/io.h>
#include <linux/kthread.h>
#include <linux/wait.h>
#include <linux/cpumask.h>
#include <asm/smp.h>
#include <asm/hardirq.h>

#include "exitlat_uapi.h"

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("exitlat: VM-exit latency probes (guest side)");

struct exitlat_state {
	struct mutex lock;	/* CONFIG and LOOP; never ONCE (see top) */
	struct exitlat_config cfg;
	bool configured;
	u64 *batch;		/* kernel buffer for one batch */
	u64 once;		/* ONCE's configuration, el_once_word(); 0 = none */
};

/*
 * ONCE's view of the configuration in one word, written with WRITE_ONCE after
 * validation and read with one READ_ONCE: bits 0-7 instr, 8 amd, 9 valid,
 * 16-31 port, 32-63 msr.
 */
#define EL_ONCE_AMD	(1ULL << 8)
#define EL_ONCE_VALID	(1ULL << 9)


static u64 el_once_word(const struct exitlat_config *cfg)
{
	return (cfg->instr & 0xff) | (cfg->amd ? EL_ONCE_AMD : 0) | EL_ONCE_VALID |
	       ((u64)(cfg->port & 0xffff) << 16) | ((u64)cfg->msr << 32);
}

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

/* ---- pre-flight checks, run once by CONFIG: 0 or -errno ------------------ */

static int el_check_hypercall(const struct exitlat_config *cfg)
{
	long rax;

	/* Under TCG (or another hypervisor) it may #UD. */
	return el_hypercall_safe(cfg->amd, &rax) ? -ENOEXEC : 0;
}

static int el_check_rdmsr(const struct exitlat_config *cfg)
{
	u64 val;

	if (el_msr_passthrough(cfg->msr))
		return -EPERM;
	return rdmsrl_safe(cfg->msr, &val) ? -EIO : 0;
}

static int el_check_tsc_deadline(const struct exitlat_config *cfg)
{
	u64 val;

	if (!boot_cpu_has(X86_FEATURE_TSC_DEADLINE_TIMER))
		return -EOPNOTSUPP;
	return rdmsrl_safe(MSR_EXITLAT_TSC_DEADLINE, &val) ? -EIO : 0;
}

/* INVD drops dirty cache lines where it runs natively: only under KVM, which skips it. */
static int el_check_kvm(const struct exitlat_config *cfg)
{
	return kvm_para_available() ? 0 : -ENODEV;
}

static int el_check_xsetbv(const struct exitlat_config *cfg)
{
	/* CR4.OSXSAVE clear (no XSAVE in the vCPU, as under TCG's default CPU): XSETBV #UDs. */
	return boot_cpu_has(X86_FEATURE_OSXSAVE) ? 0 : -EOPNOTSUPP;
}

static int el_check_tsc_adjust_read(const struct exitlat_config *cfg)
{
	u64 val;

	return rdmsrl_safe(EXITLAT_MSR_RD_TSC_ADJUST_MSR, &val) ? -EIO : 0;
}

/* Once, fault-protected, what the loop does: write back the value read. */
static int el_check_tsc_adjust_write(const struct exitlat_config *cfg)
{
	u64 val;

	if (rdmsrl_safe(EXITLAT_MSR_WR_TSC_ADJUST_MSR, &val))
		return -EIO;
	return wrmsrl_safe(EXITLAT_MSR_WR_TSC_ADJUST_MSR, val) ? -EIO : 0;
}

static __always_inline u32 el_inl(u16 port)
{
	u32 val;

	asm volatile("inl %w1, %0" : "=a"(val) : "Nd"(port) : "memory");
	return val;
}

/* XCR0, read and written raw (the loop's XSETBV writes back what XGETBV read). */
static __always_inline u64 el_xgetbv0(void)
{
	u32 lo, hi;

	asm volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
	return ((u64)hi << 32) | lo;
}

static __always_inline void el_xsetbv0(u64 val)
{
	asm volatile("xsetbv" : : "a"((u32)val), "d"((u32)(val >> 32)), "c"(0) : "memory");
}

static __always_inline u8 el_inb(u16 port)
{
	u8 val;

	asm volatile("inb %w1, %0" : "=a"(val) : "Nd"(port) : "memory");
	return val;
}

static __always_inline void el_outb(u8 val, u16 port)
{
	asm volatile("outb %0, %w1" : : "a"(val), "Nd"(port) : "memory");
}

/*
 * Control and debug registers, raw: no paravirt hook, no CR pinning check, no
 * shadow update (el_read_cr0/el_write_cr0, ... el_read_dr7/el_write_dr7).
 */
#define EL_REG_ACCESSORS(reg)							\
	static __always_inline unsigned long el_read_##reg(void)		\
	{									\
		unsigned long v;						\
										\
		asm volatile("mov %%" #reg ", %0" : "=r"(v));			\
		return v;							\
	}									\
	static __always_inline void el_write_##reg(unsigned long v)		\
	{									\
		asm volatile("mov %0, %%" #reg : : "r"(v) : "memory");		\
	}
EL_REG_ACCESSORS(cr0)
EL_REG_ACCESSORS(cr4)
EL_REG_ACCESSORS(cr8)
EL_REG_ACCESSORS(dr7)
#undef EL_REG_ACCESSORS

#define EL_DR7_RESET	0x400UL		/* DR7 with no breakpoint armed */

/* MOV to DR7 rewrites its reset value: refused while a breakpoint (a debugger's) is armed. */
static int el_check_dr7(const struct exitlat_config *cfg)
{
	return el_read_dr7() == EL_DR7_RESET ? 0 : -EBUSY;
}

/* The ACPI PM timer counts at 3.58 MHz: two reads 10 us apart differ; all ones is no device. */
static int el_check_pmtimer(const struct exitlat_config *cfg)
{
	u32 a = el_inl(EXITLAT_PORT_INL_FROM_PMTIMER), b;

	udelay(10);
	b = el_inl(EXITLAT_PORT_INL_FROM_PMTIMER);
	return a == b || a == 0xffffffff ? -ENXIO : 0;
}

/* An MSR the loop rewrites with the value it has: read and written once, fault-protected. */
static int el_check_msr_rewrite(u32 msr)
{
	u64 val;

	if (rdmsrl_safe(msr, &val))
		return -EIO;
	return wrmsrl_safe(msr, val) ? -EIO : 0;
}

static int el_check_kernel_gs_base(const struct exitlat_config *cfg)
{
	return el_check_msr_rewrite(EXITLAT_MSR_WR_KERNEL_GS_BASE);
}

static int el_check_spec_ctrl(const struct exitlat_config *cfg)
{
	u64 val;

	if (!boot_cpu_has(X86_FEATURE_MSR_SPEC_CTRL))
		return -EOPNOTSUPP;
	if (rdmsrl_safe(EXITLAT_MSR_WR_IBRS_MSR, &val) ||
	    wrmsrl_safe(EXITLAT_MSR_WR_IBRS_MSR, val | SPEC_CTRL_IBRS))
		return -EIO;
	return wrmsrl_safe(EXITLAT_MSR_WR_IBRS_MSR, val) ? -EIO : 0;
}

static int el_check_ibpb(const struct exitlat_config *cfg)
{
	if (!boot_cpu_has(X86_FEATURE_IBPB))
		return -EOPNOTSUPP;
	return wrmsrl_safe(EXITLAT_MSR_WR_IBPB_MSR, PRED_CMD_IBPB) ? -EIO : 0;
}

/* x2APIC mode (IA32_APIC_BASE.EXTD): the EOI and SELF IPI MSRs #GP in xAPIC mode. */
static int el_check_x2apic(const struct exitlat_config *cfg)
{
	u64 base;

	if (!boot_cpu_has(X86_FEATURE_X2APIC) || rdmsrl_safe(MSR_IA32_APICBASE, &base) ||
	    !(base & X2APIC_ENABLE))
		return -EOPNOTSUPP;
	return 0;
}

/*
 * xAPIC mode (the guest booted nox2apic: bench does so for the xapic_* kinds):
 * the APIC enabled, not in x2APIC mode, and its page at the fixmap address
 * Linux maps it at, answering as an integrated APIC (version 0x10-0x15).
 */
#define EL_XAPIC_REG(reg)	((volatile u32 *)(fix_to_virt(FIX_APIC_BASE) + (reg)))

static int el_check_xapic(const struct exitlat_config *cfg)
{
	u64 base;
	u32 version;

	if (!boot_cpu_has(X86_FEATURE_APIC) || rdmsrl_safe(MSR_IA32_APICBASE, &base) ||
	    !(base & MSR_IA32_APICBASE_ENABLE) || (base & X2APIC_ENABLE))
		return -EOPNOTSUPP;
	version = *EL_XAPIC_REG(APIC_LVR) & 0xff;
	return version >= 0x10 && version <= 0x15 ? 0 : -ENODEV;
}

/*
 * xapic_ipi_sti_nop and xapic_ipi_tpr: self_ipi_sti_nop and
 * self_ipi_tpr with the send through the xAPIC's ICR, one MOV as in
 * xapic_self_ipi.  Linux's irq_work would read the ICR first (its wait for an
 * idle ICR: one exit more), so IRQ_WORK_VECTOR is sent raw and the loop
 * waits for its handler's per-CPU count, as tscdeadline_immed does.  The
 * guest's own timer is held for the batch (el_batch).
 */
#define EL_XAPIC_SELF_IPI(vector)	\
	(*EL_XAPIC_REG(APIC_ICR) = APIC_DEST_SELF | APIC_DM_FIXED | (vector))

static __always_inline void el_xapic_wait(unsigned int seen)
{
	while (this_cpu_read(irq_stat.apic_irq_work_irqs) == seen)
		barrier();
	local_irq_disable();
}

static __always_inline void el_xapic_ipi_sti_nop(void)
{
	const unsigned int seen = this_cpu_read(irq_stat.apic_irq_work_irqs);

	EL_XAPIC_SELF_IPI(IRQ_WORK_VECTOR);		/* IRQs off: stays pending */
	asm volatile("sti; nop" : : : "memory");	/* the window after STI's shadow */
	el_xapic_wait(seen);
}

static __always_inline void el_xapic_ipi_tpr(u64 tpr)
{
	const unsigned int seen = this_cpu_read(irq_stat.apic_irq_work_irqs);

	local_irq_enable();
	el_write_cr8(15);				/* masks every vector */
	EL_XAPIC_SELF_IPI(IRQ_WORK_VECTOR);
	el_write_cr8(tpr);				/* the IPI deliverable again */
	el_xapic_wait(seen);
}

/* xAPIC mode, and a raw IRQ_WORK_VECTOR self-IPI taken within 10 ms. */
static int el_check_xapic_ipi(const struct exitlat_config *cfg)
{
	unsigned int seen;
	int i, err = el_check_xapic(cfg);

	if (err)
		return err;
	seen = this_cpu_read(irq_stat.apic_irq_work_irqs);
	EL_XAPIC_SELF_IPI(IRQ_WORK_VECTOR);		/* CONFIG runs with IRQs on */
	for (i = 0; i < 1000 && this_cpu_read(irq_stat.apic_irq_work_irqs) == seen; i++)
		udelay(10);
	return this_cpu_read(irq_stat.apic_irq_work_irqs) != seen ? 0 : -ETIMEDOUT;
}

/*
 * self_ipi_delivery: an irq_work raises IRQ_WORK_VECTOR as an x2APIC SELF IPI
 * (one MSR write); its handler EOIs (through KVM's paravirtual EOI: a bit in
 * memory, no exit) and sets el_ipi_seen.  The window turns IRQs on around the
 * send, so the IPI is taken at once: KVM injects it on the entry after the
 * SELF IPI's exit, and the handler has run before irq_work_queue() returns.
 * The wait spins without PAUSE (a PAUSE loop could exit through PLE).
 * With IRQs on, every tick of the guest's own timer that falls due in the
 * batch would be taken inside an iteration, each with a re-arm (an MSR exit
 * of the same reason as the send's), where the IRQs-off kinds defer them to
 * the batch's end.  So el_batch holds that timer for the batch, as the
 * TSC-deadline kinds do: it saves the deadline, disarms it, and restores it
 * afterwards (one already past fires at once when IRQs are back on).
 */
static int el_ipi_seen;

static void el_ipi_handler(struct irq_work *work)
{
	WRITE_ONCE(el_ipi_seen, 1);
}

static struct irq_work el_ipi_work = IRQ_WORK_INIT_HARD(el_ipi_handler);

static __always_inline void el_self_ipi_delivery(void)
{
	WRITE_ONCE(el_ipi_seen, 0);
	local_irq_enable();
	irq_work_queue(&el_ipi_work);
	while (!READ_ONCE(el_ipi_seen))
		barrier();
	local_irq_disable();
}

/*
 * self_ipi_tpr: vmexit.flat's x2apic_self_ipi_tpr with Linux's handler.
 * The TPR (CR8) raised to 15 masks every vector, so the SELF IPI stays pending
 * in IRR after its own exit.  KVM then intercepts the next CR8 write (SVM) or
 * sets the TPR threshold at the pending class (VMX's TPR shadow), so putting
 * the TPR back takes a second exit, on which KVM finds the IPI deliverable and
 * injects it.  IRQs stay on, as in vmexit.flat; the guest's own timer is held
 * for the batch (el_batch) and its TPR, read before the loop, restored.
 */
static __always_inline void el_self_ipi_tpr(u64 tpr)
{
	WRITE_ONCE(el_ipi_seen, 0);
	local_irq_enable();
	el_write_cr8(15);
	irq_work_queue(&el_ipi_work);
	el_write_cr8(tpr);
	while (!READ_ONCE(el_ipi_seen))
		barrier();
	local_irq_disable();
}

/*
 * self_ipi_sti_nop (vmexit.flat's x2apic_self_ipi_sti_nop): the same irq_work
 * raised with IRQs off, so its SELF IPI stays pending, then STI;NOP.  KVM
 * cannot inject into IF=0, so it asks for the interrupt window: an exit once
 * STI's shadow ends after the NOP, then the injection.  The handler has run
 * when the instruction after the NOP has; the wait is a guard, IRQs still on.
 * The guest's own timer is held for the batch (el_batch), as for the others.
 */
static __always_inline void el_self_ipi_sti_nop(void)
{
	WRITE_ONCE(el_ipi_seen, 0);
	irq_work_queue(&el_ipi_work);
	asm volatile("sti; nop" : : : "memory");
	while (!READ_ONCE(el_ipi_seen))
		barrier();
	local_irq_disable();
}

/* Delivered within 10 ms, through the x2APIC (the send is a SELF IPI MSR write there). */
static int el_check_self_ipi(const struct exitlat_config *cfg)
{
	int i, err = el_check_x2apic(cfg);

	if (err)
		return err;
	WRITE_ONCE(el_ipi_seen, 0);
	irq_work_queue(&el_ipi_work);		/* CONFIG runs with IRQs on */
	for (i = 0; i < 1000 && !READ_ONCE(el_ipi_seen); i++)
		udelay(10);
	return READ_ONCE(el_ipi_seen) ? 0 : -ETIMEDOUT;
}

/*
 * tscdeadline_immed: the guest's TSC-deadline timer armed at a deadline that
 * has passed, with IRQs on, and the interrupt waited for.  For the batch the
 * timer's LVT entry points at IRQ_WORK_VECTOR instead of the guest's timer
 * vector (el_batch saves and restores both), so the interrupt runs Linux's
 * lightest handler: the (paravirtual, exitless) EOI, a per-CPU count the loop
 * waits for, and an empty irq_work list; the guest's clockevent handler, which
 * would re-arm the timer with an exit of its own, never runs in a window.
 */
#define EL_X2APIC_LVTT		0x832
#define EL_LVT_VECTOR		0xffUL
#define EL_LVT_MASKED		(1UL << 16)
#define EL_LVT_MODE		(3UL << 17)
#define EL_LVT_TSCDEADLINE	(2UL << 17)

static __always_inline void el_tscdeadline_immed(void)
{
	const unsigned int seen = this_cpu_read(irq_stat.apic_irq_work_irqs);

	local_irq_enable();
	el_wrmsr(MSR_EXITLAT_TSC_DEADLINE, rdtsc());
	while (this_cpu_read(irq_stat.apic_irq_work_irqs) == seen)
		barrier();
	local_irq_disable();
}

/*
 * tscdeadline: the same timer armed `deadline` (EXITLAT_AHEAD_TSCDEADLINE
 * cycles past the iteration's t0) and waited for: the WRMSR exits and
 * re-enters long before it (2^20 cycles outlast an exit round trip even
 * under emulation), then KVM's timer expires: the VMX preemption timer's
 * exit, or its hrtimer interrupting the vCPU, and the injection.  The
 * sample is stored net of the wait (EL_TIMED_LOOP's OFFSET): the cycles
 * from the deadline to the handler's count seen here.
 */
static __always_inline void el_tscdeadline(u64 deadline)
{
	const unsigned int seen = this_cpu_read(irq_stat.apic_irq_work_irqs);

	local_irq_enable();
	el_wrmsr(MSR_EXITLAT_TSC_DEADLINE, deadline);
	while (this_cpu_read(irq_stat.apic_irq_work_irqs) == seen)
		barrier();
	local_irq_disable();
}

/* x2APIC, the TSC-deadline timer in TSC-deadline mode, and the interrupt seen within 10 ms. */
static int el_check_tscdeadline_immed(const struct exitlat_config *cfg)
{
	unsigned long flags;
	unsigned int seen;
	u64 lvtt, saved;
	int i, err = el_check_x2apic(cfg) ?: el_check_tsc_deadline(cfg);

	if (err)
		return err;
	if (rdmsrl_safe(EL_X2APIC_LVTT, &lvtt) || (lvtt & EL_LVT_MODE) != EL_LVT_TSCDEADLINE)
		return -EOPNOTSUPP;
	local_irq_save(flags);
	saved = el_rdmsr(MSR_EXITLAT_TSC_DEADLINE);
	el_wrmsr(EL_X2APIC_LVTT, (lvtt & ~(EL_LVT_VECTOR | EL_LVT_MASKED)) | IRQ_WORK_VECTOR);
	seen = this_cpu_read(irq_stat.apic_irq_work_irqs);
	el_wrmsr(MSR_EXITLAT_TSC_DEADLINE, rdtsc());
	local_irq_enable();
	for (i = 0; i < 1000 && this_cpu_read(irq_stat.apic_irq_work_irqs) == seen; i++)
		udelay(10);
	local_irq_disable();
	el_wrmsr(MSR_EXITLAT_TSC_DEADLINE, 0);
	el_wrmsr(EL_X2APIC_LVTT, lvtt);
	el_wrmsr(MSR_EXITLAT_TSC_DEADLINE, saved);
	i = this_cpu_read(irq_stat.apic_irq_work_irqs) != seen;
	local_irq_restore(flags);
	return i ? 0 : -ETIMEDOUT;
}

/*
 * ipi and ipi_halt: an IPI to another vCPU, the receiver (the first online
 * CPU other than the sender's; the probe runs on CPU 0).  One iteration is
 * the sender's round trip: one x2APIC ICR write (fixed, physical, no
 * shorthand: KVM's irq-off fastpath takes it) of IRQ_WORK_VECTOR, then a
 * spin until the receiver's handler has counted it (irq_stat's
 * apic_irq_work_irqs, incremented after its paravirtual EOI; its irq_work
 * list is empty).  The sender keeps IRQs off; the receiver does the rest:
 * - ipi: the receiver is running, a kthread spinning with IRQs on for the
 *   batch (no PAUSE: PLE), so the IPI interrupts a vCPU in guest mode;
 *   after each sample the sender waits, outside the timed interval, until
 *   the receiver is back in that loop (el_rcv_ready), so that the next IPI
 *   never lands in the tail of the last one's handler (IRQs off there: an
 *   interrupt-window exit more);
 * - ipi_halt: the receiver is idle in HLT (the kernel's idle loop), woken
 *   by the IPI; after each sample the sender waits EL_HALT_SETTLE_US,
 *   outside the timed interval, for it to halt again (vmexit.flat's
 *   ipi_halt waits 2000 cycles).  1 ms outlasts KVM's default halt polling
 *   (kvm.halt_poll_ns, 200 us), so each IPI finds the receiver's thread
 *   blocked, not polling.  The traced window proves it halted: one HLT exit
 *   of the receiver per iteration.
 */
#define EL_X2APIC_ICR		0x830
#define EL_HALT_SETTLE_US	1000
/*
 * ipi: the most the sender waits for the receiver to be back in its loop.
 * Long on purpose: an IPI that lands before the receiver is back takes
 * another path (an interrupt window, a real EOI write).  The wait is outside
 * the timed interval, and it ends as soon as the receiver is back, so only a
 * receiver that never returns costs the whole of it.  Seen on the emulated
 * AMD-V host: with a 1 ms cap the timed window's receiver took 0.67
 * interrupt-window exits per IPI, its traced twin (slower) 0.03.
 */
#define EL_RCV_READY_MAX_US	50000
static int el_rcv_cpu = -1;
static u32 el_rcv_apicid;
static struct task_struct *el_rcv_task;
static int el_rcv_spin;			/* the batch wants the receiver spinning */
static int el_rcv_spinning;		/* the receiver spins */
static unsigned int el_rcv_ready;	/* IPIs the spinning receiver has returned from */
static DECLARE_WAIT_QUEUE_HEAD(el_rcv_wq);

static __always_inline unsigned int el_rcv_count(void)
{
	return READ_ONCE(per_cpu(irq_stat, el_rcv_cpu).apic_irq_work_irqs);
}

static __always_inline void el_ipi(void)
{
	const unsigned int seen = el_rcv_count();

	el_wrmsr(EL_X2APIC_ICR, ((u64)el_rcv_apicid << 32) | IRQ_WORK_VECTOR);
	while (el_rcv_count() == seen)
		barrier();
}

static __always_inline void el_settle_cycles(u64 cycles)
{
	const u64 until = rdtsc() + cycles;

	while ((s64)(rdtsc() - until) < 0)
		barrier();
}

/* ipi, after a sample: the receiver back in its loop, or `cycles` passed. */
static __always_inline void el_rcv_wait_ready(u64 cycles)
{
	const u64 until = rdtsc() + cycles;

	while (READ_ONCE(el_rcv_ready) != el_rcv_count() && (s64)(rdtsc() - until) < 0)
		barrier();
}

static int el_rcv_thread(void *unused)
{
	unsigned int last;

	while (!kthread_should_stop()) {
		wait_event_interruptible(el_rcv_wq,
					 READ_ONCE(el_rcv_spin) || kthread_should_stop());
		if (!READ_ONCE(el_rcv_spin))
			continue;
		last = el_rcv_count();
		WRITE_ONCE(el_rcv_ready, last);
		WRITE_ONCE(el_rcv_spinning, 1);
		while (READ_ONCE(el_rcv_spin)) {
			const unsigned int now = el_rcv_count();

			if (now != last) {	/* a write only per IPI: no line ping-pong */
				last = now;
				WRITE_ONCE(el_rcv_ready, now);
			}
		}
		WRITE_ONCE(el_rcv_spinning, 0);
	}
	return 0;
}

/* ipi: the receiver spinning before the batch (IRQs still on here), or -ETIMEDOUT. */
static int el_rcv_start_spin(void)
{
	int i;

	WRITE_ONCE(el_rcv_spin, 1);
	wake_up(&el_rcv_wq);
	for (i = 0; i < 1000 && !READ_ONCE(el_rcv_spinning); i++)
		udelay(10);
	return READ_ONCE(el_rcv_spinning) ? 0 : -ETIMEDOUT;
}

static void el_rcv_stop_spin(void)
{
	WRITE_ONCE(el_rcv_spin, 0);
}

static void el_rcv_release(void)
{
	if (el_rcv_task) {
		el_rcv_stop_spin();
		kthread_stop(el_rcv_task);
		el_rcv_task = NULL;
	}
}

/* x2APIC, a second online CPU, and one IPI acknowledged within 10 ms. */
static int el_check_ipi(const struct exitlat_config *cfg)
{
	unsigned int seen;
	int i, cpu, err = el_check_x2apic(cfg);

	if (err)
		return err;
	cpu = cpumask_any_but(cpu_online_mask, raw_smp_processor_id());
	if (cpu >= nr_cpu_ids)
		return -ESRCH;		/* one vCPU: nobody to send to */
	if (el_rcv_cpu != cpu) {
		el_rcv_release();
		el_rcv_cpu = cpu;
		el_rcv_apicid = cpu_physical_id(cpu);
	}
	if (cfg->instr == EXITLAT_I_IPI && !el_rcv_task) {
		struct task_struct *t = kthread_create(el_rcv_thread, NULL, "exitlat-rcv");

		if (IS_ERR(t))
			return PTR_ERR(t);
		kthread_bind(t, cpu);
		el_rcv_task = t;
		wake_up_process(t);
	}
	preempt_disable();
	seen = el_rcv_count();
	el_wrmsr(EL_X2APIC_ICR, ((u64)el_rcv_apicid << 32) | IRQ_WORK_VECTOR);
	for (i = 0; i < 1000 && el_rcv_count() == seen; i++)
		udelay(10);
	err = el_rcv_count() != seen ? 0 : -ETIMEDOUT;
	preempt_enable();
	return err;
}

static int el_check_tsx_ctrl(const struct exitlat_config *cfg)
{
	u64 caps;

	if (!boot_cpu_has(X86_FEATURE_ARCH_CAPABILITIES) ||
	    rdmsrl_safe(MSR_IA32_ARCH_CAPABILITIES, &caps) || !(caps & ARCH_CAP_TSX_CTRL_MSR))
		return -EOPNOTSUPP;
	return el_check_msr_rewrite(EXITLAT_MSR_WR_TSX_CTRL_MSR);
}

/*
 * QEMU's pci-testdev (the mmio_* and pio_* kinds; QEMU hw/misc/pci-testdev.c).
 * It runs one test at a time: writing a test's number to offset 0 of its BAR
 * (memory BAR 0 for tests 0-2, I/O BAR 1 for 3-5) selects it, and QEMU then
 * registers that test's ioeventfd with KVM (none for no-eventfd); the test's
 * header, read back at offset 0, names its register.  Selecting is itself a
 * QEMU round trip and changes KVM's I/O buses, so it runs in the batch's
 * SETUP, outside every window, and only when another test was selected.  The
 * device is found and mapped at the first CONFIG of such a kind (one probe
 * uses the module at a time).
 */
#define EL_TD_VALUE	EXITLAT_TESTDEV_VALUE	/* the datamatch tests' ioeventfds match it */
#define EL_TD_NOMATCH	0xce	/* the wildcard tests' header value */
#define EL_TD_TEST	0	/* header: u8, the test's number (a write selects) */
#define EL_TD_WIDTH	1	/* u8: the register's access width */
#define EL_TD_OFFSET	4	/* u32: the register's offset in the BAR */
#define EL_TD_DATA	8	/* u8: the value it matches (datamatch) */
#define EL_TD_NAME	16	/* the test's name, NUL-terminated */
#define EL_TD_TESTS	6
#define EL_TD_IO(t)	((t) >= 3)	/* tests 3-5 live in the I/O BAR */

static struct pci_dev *el_td_dev;
static void __iomem *el_td_mem;		/* BAR 0, mapped */
static u16 el_td_port;			/* BAR 1's first port */
static int el_td_selected = -1;
static const char *const el_td_names[EL_TD_TESTS] = EXITLAT_TESTDEV_NAMES;

static u8 el_td_readb(int t, unsigned int off)
{
	return EL_TD_IO(t) ? el_inb(el_td_port + off) : readb(el_td_mem + off);
}

/*
 * Test t's register, selected first where another test is (a QEMU round
 * trip): its port for the I/O tests, its mapped address for the memory ones.
 * reg is the table's offset, which el_check_testdev() found in the header.
 */
static unsigned long el_td_select(int t, unsigned int reg)
{
	if (el_td_selected != t) {
		if (EL_TD_IO(t))
			el_outb(t - 3, el_td_port + EL_TD_TEST);
		else
			writeb(t, el_td_mem + EL_TD_TEST);
		el_td_selected = t;
	}
	return EL_TD_IO(t) ? el_td_port + reg : (unsigned long)(el_td_mem + reg);
}

static int el_td_find(void)
{
	struct pci_dev *dev;

	if (el_td_dev)
		return 0;
	dev = pci_get_device(EXITLAT_TESTDEV_VENDOR, EXITLAT_TESTDEV_DEVICE, NULL);
	if (!dev)
		return -EOPNOTSUPP;
	if (!(pci_resource_flags(dev, 0) & IORESOURCE_MEM) ||
	    !(pci_resource_flags(dev, 1) & IORESOURCE_IO) || pci_resource_start(dev, 1) > 0xff00 ||
	    pci_enable_device(dev))
		goto bad;
	el_td_mem = pci_iomap(dev, 0, 0);
	if (!el_td_mem) {
		pci_disable_device(dev);
		goto bad;
	}
	el_td_port = pci_resource_start(dev, 1);
	el_td_dev = dev;
	return 0;
bad:
	pci_dev_put(dev);
	return -ENXIO;
}

/* Select test t and check that its header is the one exitlat's table describes. */
static int el_check_testdev(int t, unsigned int reg)
{
	char name[32];
	u32 off = 0;
	int i, err = el_td_find();

	if (err)
		return err;
	el_td_selected = -1;
	el_td_select(t, reg);
	for (i = 0; i < sizeof(name) - 1; i++) {
		name[i] = el_td_readb(t, EL_TD_NAME + i);
		if (!name[i])
			break;
	}
	name[i] = 0;
	for (i = 0; i < 4; i++)
		off |= (u32)el_td_readb(t, EL_TD_OFFSET + i) << (8 * i);
	if (el_td_readb(t, EL_TD_TEST) != t || strcmp(name, el_td_names[t]) || off != reg ||
	    el_td_readb(t, EL_TD_WIDTH) != 1 ||
	    el_td_readb(t, EL_TD_DATA) != (t % 3 == 1 ? EL_TD_NOMATCH : EL_TD_VALUE))
		return -ENXIO;
	return 0;
}

#define EL_TD_CHECK(name, NAME)							\
	static int el_check_##name(const struct exitlat_config *cfg)		\
	{									\
		return el_check_testdev(EXITLAT_TESTDEV_##NAME,			\
					EXITLAT_TESTDEV_REG_##NAME);		\
	}
EL_TD_CHECK(mmio_no_eventfd, MMIO_NO_EVENTFD)
EL_TD_CHECK(mmio_eventfd, MMIO_EVENTFD)
EL_TD_CHECK(mmio_datamatch, MMIO_DATAMATCH)
EL_TD_CHECK(pio_no_eventfd, PIO_NO_EVENTFD)
EL_TD_CHECK(pio_eventfd, PIO_EVENTFD)
EL_TD_CHECK(pio_datamatch, PIO_DATAMATCH)
#undef EL_TD_CHECK

static void el_testdev_release(void)
{
	if (!el_td_dev)
		return;
	pci_iounmap(el_td_dev, el_td_mem);
	pci_disable_device(el_td_dev);
	pci_dev_put(el_td_dev);
	el_td_dev = NULL;
}

/* ---- the instructions ----------------------------------------------------- */

/*
 * The instructions the module runs, one row each:
 *
 *   X(id, name, pre-flight, ONCE, SETUP, STATEMENT)
 *
 *   id          EXITLAT_I_* (exitlat_instrs.h, generated from the instruction
 *               table, exitlat/instructions.py)
 *   pre-flight  run once by CONFIG before it accepts the instruction (NULL:
 *               nothing to check)
 *   ONCE        whether ONCE may run it (false: LOOP only); the table's case 3
 *   SETUP       evaluated once per batch before the first window, its value
 *               the local val (e.g. the current value a write rewrites); 0:
 *               none.  LOOP only: in ONCE it would run inside the window
 *   STATEMENT   what one iteration executes, on the locals msr, port, ahead,
 *               val, rax and amd, and EL_WINDOW_T0 (see the harness below)
 *
 * The list is expanded three times: into the harness's loop functions
 * (el_batch_<name>), the table el_instrs[] that CONFIG and LOOP index, and
 * the cases of ONCE's switch.  Adding an exit kind: one row in
 * exitlat/instructions.py and one row here (a test holds the two together).
 */
/* pci-testdev rows: SETUP selects the test (val: its register), STATEMENT writes it. */
#define EL_TD_SELECT(NAME)	el_td_select(EXITLAT_TESTDEV_##NAME, EXITLAT_TESTDEV_REG_##NAME)
#define EL_TD_WRITE_MEM(reg)	writeb(EL_TD_VALUE, (void __iomem *)(unsigned long)(reg))

#define EL_INSTRUCTIONS(X)								\
	X(EXITLAT_I_NONE,   none,   NULL,               true, 0, barrier())		\
	X(EXITLAT_I_NOP,    nop,    NULL,               true, 0, asm volatile("nop"))	\
	X(EXITLAT_I_CPUID,  cpuid,  NULL,               true, 0, exitlat_cpuid0())	\
	X(EXITLAT_I_VMCALL, vmcall, el_check_hypercall, true, 0,			\
	  rax = amd ? exitlat_vmmcall() : exitlat_vmcall())				\
	X(EXITLAT_I_RDMSR,  rdmsr,  el_check_rdmsr,     true, 0, el_rdmsr(msr))	\
	/* loop only: docs/probes.md, "wrmsr_tsc_deadline" */				\
	X(EXITLAT_I_WRMSR_TSC_DEADLINE, wrmsr_tsc_deadline, el_check_tsc_deadline, false, 0, \
	  el_wrmsr(MSR_EXITLAT_TSC_DEADLINE, EL_WINDOW_T0 + ahead))			\
	X(EXITLAT_I_OUTB,   outb,   NULL,               true, 0, exitlat_outb(port, '.'))	\
	/* The kvm-unit-tests x86/vmexit.c kinds (exitlat/instructions.py says each path). */ \
	X(EXITLAT_I_WBINVD, wbinvd, NULL,               true, 0,			\
	  asm volatile("wbinvd" : : : "memory"))					\
	X(EXITLAT_I_INVD,   invd,   el_check_kvm,       true, 0,			\
	  asm volatile("invd" : : : "memory"))						\
	/* loop only: XCR0 rewritten with the value it has, read before the batch */	\
	X(EXITLAT_I_XSETBV, xsetbv, el_check_xsetbv,    false, el_xgetbv0(), el_xsetbv0(val)) \
	X(EXITLAT_I_RD_TSC_ADJUST_MSR, rd_tsc_adjust_msr, el_check_tsc_adjust_read, true, 0, \
	  el_rdmsr(EXITLAT_MSR_RD_TSC_ADJUST_MSR))					\
	/* loop only: IA32_TSC_ADJUST rewritten with the value it has */		\
	X(EXITLAT_I_WR_TSC_ADJUST_MSR, wr_tsc_adjust_msr, el_check_tsc_adjust_write, false, \
	  el_rdmsr(EXITLAT_MSR_WR_TSC_ADJUST_MSR),					\
	  el_wrmsr(EXITLAT_MSR_WR_TSC_ADJUST_MSR, val))					\
	/* a port no device claims: a QEMU round trip, as OUTB is for writes */		\
	X(EXITLAT_I_INL_FROM_QEMU, inl_from_qemu, NULL, true, 0,			\
	  el_inl(EXITLAT_PORT_INL_FROM_QEMU))						\
	/* the ELCR of KVM's in-kernel PIC: byte accesses, as vmexit.flat's */		\
	X(EXITLAT_I_INL_FROM_KERNEL, inl_from_kernel, NULL, true, 0,			\
	  el_inb(EXITLAT_PORT_INL_FROM_KERNEL))						\
	/* loop only: the ELCR rewritten with the value it has */			\
	X(EXITLAT_I_OUTL_TO_KERNEL, outl_to_kernel, NULL, false,			\
	  el_inb(EXITLAT_PORT_OUTL_TO_KERNEL),						\
	  el_outb(val, EXITLAT_PORT_OUTL_TO_KERNEL))					\
	X(EXITLAT_I_INL_FROM_PMTIMER, inl_from_pmtimer, el_check_pmtimer, true, 0,	\
	  el_inl(EXITLAT_PORT_INL_FROM_PMTIMER))					\
	X(EXITLAT_I_MOV_DR, mov_dr, el_check_dr7, true, 0, el_write_dr7(EL_DR7_RESET))	\
	X(EXITLAT_I_MOV_FROM_CR8, mov_from_cr8, NULL, true, 0, el_read_cr8())		\
	/* loop only: the TPR rewritten with the value it has */			\
	X(EXITLAT_I_MOV_TO_CR8, mov_to_cr8, NULL, false, el_read_cr8(), el_write_cr8(val)) \
	/* loop only (IRQs off): the bit cleared, then CR0/CR4 as read before the batch */ \
	X(EXITLAT_I_TOGGLE_CR0_WP, toggle_cr0_wp, NULL, false, el_read_cr0(),		\
	  el_write_cr0(val & ~X86_CR0_WP); el_write_cr0(val))				\
	X(EXITLAT_I_TOGGLE_CR4_PGE, toggle_cr4_pge, NULL, false, el_read_cr4(),		\
	  el_write_cr4(val ^ X86_CR4_PGE); el_write_cr4(val))				\
	/* loop only: MSRs rewritten with the value read before the batch */		\
	X(EXITLAT_I_WR_KERNEL_GS_BASE, wr_kernel_gs_base, el_check_kernel_gs_base, false, \
	  el_rdmsr(EXITLAT_MSR_WR_KERNEL_GS_BASE),					\
	  el_wrmsr(EXITLAT_MSR_WR_KERNEL_GS_BASE, val))					\
	X(EXITLAT_I_WR_IBRS_MSR, wr_ibrs_msr, el_check_spec_ctrl, false,		\
	  el_rdmsr(EXITLAT_MSR_WR_IBRS_MSR),						\
	  el_wrmsr(EXITLAT_MSR_WR_IBRS_MSR, val | SPEC_CTRL_IBRS);			\
	  el_wrmsr(EXITLAT_MSR_WR_IBRS_MSR, val))					\
	X(EXITLAT_I_WR_IBPB_MSR, wr_ibpb_msr, el_check_ibpb, true, 0,			\
	  el_wrmsr(EXITLAT_MSR_WR_IBPB_MSR, PRED_CMD_IBPB))				\
	X(EXITLAT_I_WR_TSX_CTRL_MSR, wr_tsx_ctrl_msr, el_check_tsx_ctrl, false,		\
	  el_rdmsr(EXITLAT_MSR_WR_TSX_CTRL_MSR),					\
	  el_wrmsr(EXITLAT_MSR_WR_TSX_CTRL_MSR, val))					\
	/* loop only (IRQs off): the local APIC in x2APIC mode */			\
	X(EXITLAT_I_EOI, eoi, el_check_x2apic, false, 0,				\
	  el_wrmsr(EXITLAT_MSR_EOI, 0))							\
	X(EXITLAT_I_X2APIC_SELF_IPI, x2apic_self_ipi, el_check_x2apic, false, 0,	\
	  el_wrmsr(EXITLAT_MSR_X2APIC_SELF_IPI, RESCHEDULE_VECTOR))			\
	/* loop only (IRQs off): one MOV to the xAPIC's ICR (self shorthand, as */	\
	/* vmexit.flat's self_ipi sends it; ICR2 is ignored with a shorthand) */	\
	X(EXITLAT_I_XAPIC_SELF_IPI, xapic_self_ipi, el_check_xapic, false, 0,	\
	  EL_XAPIC_SELF_IPI(RESCHEDULE_VECTOR))						\
	/* loop only: IRQs on in the window (see el_xapic_ipi_sti_nop) */	\
	X(EXITLAT_I_XAPIC_IPI_STI_NOP, xapic_ipi_sti_nop, el_check_xapic_ipi, false, \
	  0, el_xapic_ipi_sti_nop())						\
	X(EXITLAT_I_XAPIC_IPI_TPR, xapic_ipi_tpr, el_check_xapic_ipi, false, \
	  el_read_cr8(), el_xapic_ipi_tpr(val))					\
	/* loop only: IRQs on, the timer's LVT on IRQ_WORK_VECTOR (el_batch) */	\
	X(EXITLAT_I_TSCDEADLINE_IMMED, tscdeadline_immed, el_check_tscdeadline_immed, false, \
	  0, el_tscdeadline_immed())							\
	/* loop only: IRQs on, the timer's LVT on IRQ_WORK_VECTOR (el_batch); */	\
	/* the deadline EXITLAT_AHEAD_TSCDEADLINE past t0, stored net of it */	\
	X(EXITLAT_I_TSCDEADLINE, tscdeadline, el_check_tscdeadline_immed, false, \
	  0, el_tscdeadline(EL_WINDOW_T0 + ahead))					\
	/* loop only: IRQs on around the send (see el_self_ipi_delivery) */	\
	X(EXITLAT_I_SELF_IPI_DELIVERY, self_ipi_delivery, el_check_self_ipi, false, 0, \
	  el_self_ipi_delivery())							\
	/* loop only: the same, sent with IRQs off, then STI;NOP */		\
	X(EXITLAT_I_SELF_IPI_STI_NOP, self_ipi_sti_nop, el_check_self_ipi, false, 0, \
	  el_self_ipi_sti_nop())							\
	/* loop only: the same, masked by the TPR until it is put back */	\
	X(EXITLAT_I_SELF_IPI_TPR, self_ipi_tpr, el_check_self_ipi, false, \
	  el_read_cr8(), el_self_ipi_tpr(val))					\
	/* loop only: an IPI to the receiver vCPU, waited for (see el_ipi) */	\
	X(EXITLAT_I_IPI, ipi, el_check_ipi, false, 0, el_ipi())			\
	X(EXITLAT_I_IPI_HALT, ipi_halt, el_check_ipi, false, 0, el_ipi())	\
	/* loop only: a byte to pci-testdev's test, selected in SETUP */	\
	X(EXITLAT_I_MMIO_NO_EVENTFD, mmio_no_eventfd, el_check_mmio_no_eventfd, false, \
	  EL_TD_SELECT(MMIO_NO_EVENTFD), EL_TD_WRITE_MEM(val))			\
	X(EXITLAT_I_MMIO_EVENTFD, mmio_eventfd, el_check_mmio_eventfd, false,	\
	  EL_TD_SELECT(MMIO_EVENTFD), EL_TD_WRITE_MEM(val))			\
	X(EXITLAT_I_MMIO_DATAMATCH, mmio_datamatch, el_check_mmio_datamatch, false, \
	  EL_TD_SELECT(MMIO_DATAMATCH), EL_TD_WRITE_MEM(val))			\
	X(EXITLAT_I_PIO_NO_EVENTFD, pio_no_eventfd, el_check_pio_no_eventfd, false, \
	  EL_TD_SELECT(PIO_NO_EVENTFD), el_outb(EL_TD_VALUE, val))		\
	X(EXITLAT_I_PIO_EVENTFD, pio_eventfd, el_check_pio_eventfd, false,	\
	  EL_TD_SELECT(PIO_EVENTFD), el_outb(EL_TD_VALUE, val))			\
	X(EXITLAT_I_PIO_DATAMATCH, pio_datamatch, el_check_pio_datamatch, false, \
	  EL_TD_SELECT(PIO_DATAMATCH), el_outb(EL_TD_VALUE, val))		\
	X(EXITLAT_I_PAUSE,  pause,  NULL,               true, 0, asm volatile("pause"))

/* The table's ids (exitlat_instrs.h, generated) and these rows: one row per id. */
#define EL_COUNT_ROW(id, name, check, once, SETUP, STATEMENT) + 1
static_assert(0 EL_INSTRUCTIONS(EL_COUNT_ROW) == EXITLAT_I_COUNT,
	      "EL_INSTRUCTIONS needs exactly one row per EXITLAT_I_* id of the instruction table");
#undef EL_COUNT_ROW

/* ---- the kernel-mode timing harness --------------------------------------- */

/*
 * How the module times cases 5-6 and the kernel baselines (the timer
 * sequences, RDTSCP;LFENCE for t0 and RDTSCP for t1 or LFENCE;RDTSC;LFENCE
 * for both, and the 0 stored for a TSC that did not advance, are
 * EXITLAT_TIMED_LOOP's, in exitlat_uapi.h):
 *
 * - Batches (exitlat.batch, default 1000 iterations).  Each batch runs with
 *   preemption and local interrupts off, so no tick, IRQ or reschedule lands
 *   inside a timed window; between batches interrupts are re-enabled, the
 *   batch is copied to user memory and cond_resched() runs.  Trade-off: a
 *   bigger batch means fewer batch boundaries (each one a chance for a
 *   pending interrupt to be delivered, cache/TLB disturbance for the next few
 *   samples) but a longer irq-off stretch: 1000 QEMU round trips of ~10 us is
 *   ~10 ms without interrupts, harmless for a benchmark guest (RCU stall
 *   warnings start at 21 s) but it delays the guest's timer tick.  NMIs are
 *   not blocked.  Warm-up iterations run through the same batches and are
 *   discarded; a batch never mixes warm-up and kept iterations.
 * - EL_BATCH_FN defines el_batch_<name>(), the tight loop of one row: one
 *   EXITLAT_TIMED_LOOP around STATEMENT per (timer, vendor), picked by
 *   branches before the loop.  STATEMENT is pasted between the two timer
 *   reads, so a window holds t0, the statement, t1 and nothing else.
 *   el_batch() calls the row's function through el_instrs[], once per batch,
 *   before the first t0 and after the last t1: no call, indirect branch or
 *   switch of the harness runs inside a window (an indirect call there would
 *   add its cost, and a prediction that can miss, to every sample).
 * - STATEMENT works on plain locals: msr, port, ahead, which each loop
 *   instance reads from struct el_window before its loop (a window loads no
 *   global and chases no pointer; READ_ONCE gives each instance its own copy,
 *   so each gets the register that suits its loop: RDMSR's keeps the index
 *   in ECX across iterations under the lfence timer, instead of copying it
 *   there inside every window), rax (returned after the loop) and amd, a
 *   constant in each instance, so `amd ? VMMCALL : VMCALL` is decided at
 *   compile time.
 * - WRMSR IA32_TSC_DEADLINE: the guest's own clockevent uses this MSR.  The
 *   batch saves the armed deadline (0 = none), re-arms the timer in every
 *   iteration at EL_DEADLINE_AHEAD cycles after that iteration's own t0, then
 *   restores the saved value: if it already passed, the timer interrupt fires
 *   at once when interrupts are back on, so no tick is lost.  Two extra
 *   (untimed) exits per batch.  The deadline is relative to t0 (the timer
 *   read already in the window, EL_WINDOW_T0): one register add inside the
 *   window, no extra RDTSC.
 *   Why 2^30 cycles (0.27 s at 4 GHz, 1.07 s at 1 GHz):
 *   - It is a deadline a real guest arms (a NOHZ tick or timer well under
 *     2^32 cycles), so KVM backs it the way it backs a guest's timer: on
 *     Intel in the VMX preemption timer, which vmx_set_hv_timer() accepts
 *     only for deltas below 2^(32 + preemption timer rate) (at least 2^32;
 *     a larger one, like the 2^40 this module once used, gets -ERANGE and
 *     falls back to an hrtimer on every write); on AMD always an hrtimer
 *     (SVM has no preemption timer).  The host's traced window proves which
 *     one backed the writes (kvm_hv_timer_state, exitlat/verify/timerbacking.py).
 *   - It never fires during a batch: each iteration moves it 2^30 cycles past
 *     its own start, so it would fire only if one WRMSR round trip took 2^30
 *     cycles.  A real exit takes microseconds; under TCG or the emulated
 *     AMD-V host one takes at most milliseconds, still 100x short of it.  A
 *     fixed deadline per batch would not be safe there: 1000 slow
 *     iterations can pass 2^30 cycles.  Should a host stall the vCPU that
 *     long anyway, the cost is one timer interrupt left pending until the
 *     batch ends, and the verifier sees its exit.
 */
#define EL_DEADLINE_AHEAD	(1ULL << 30)
/*
 * The current window's t0 inside a STATEMENT: the variable EXITLAT_TIMED_LOOP
 * (exitlat_uapi.h) reads the timer into, in scope where STATEMENT is pasted.
 */
#define EL_WINDOW_T0		__tl_t0

/* What a batch needs. */
struct el_window {
	u32 msr;	/* RDMSR index */
	u16 port;	/* OUTB port */
	u64 ahead;	/* WRMSR TSC_DEADLINE: cycles from t0 to the deadline */
	u32 timer;	/* EXITLAT_T_* */
	bool amd;	/* VMMCALL instead of VMCALL */
	u64 settle;	/* ipi_halt: cycles after each sample for the receiver to halt; ipi: the most to wait for it (EL_RCV_READY_MAX_US) */
};

/* n timed iterations into buf[0..n); returns RAX after the last VMCALL. */
typedef long el_batch_fn(const struct el_window *in, u64 *buf, u64 n);

/* One loop instance, with its own copies of the inputs (see above). */
#define EL_TIMED_LOOP(ID, T0, T1, AMD, SETUP, STATEMENT)			\
	do {									\
		const u32 msr = READ_ONCE(in->msr);				\
		const u16 port = READ_ONCE(in->port);				\
		const u64 ahead = READ_ONCE(in->ahead);				\
		const bool amd = (AMD);						\
		const u64 val = (SETUP);					\
										\
		(void)msr;							\
		(void)port;							\
		(void)ahead;							\
		(void)amd;							\
		(void)val;							\
		EXITLAT_TIMED_LOOP_SETTLE(buf, n, T0, T1, STATEMENT,		\
			(ID) == EXITLAT_I_TSCDEADLINE ? ahead : 0,		\
			if ((ID) == EXITLAT_I_IPI_HALT)			\
				el_settle_cycles(READ_ONCE(in->settle));	\
			else if ((ID) == EXITLAT_I_IPI)			\
				el_rcv_wait_ready(READ_ONCE(in->settle)));	\
	} while (0)

#define EL_BATCH_FN(id, name, check, once, SETUP, STATEMENT)				\
	static long el_batch_##name(const struct el_window *in, u64 *buf, u64 n) \
	{									\
		long rax = 0;							\
										\
		if (in->timer == EXITLAT_T_LFENCE && in->amd)			\
			EL_TIMED_LOOP(id, exitlat_rdtsc_fenced,			\
				      exitlat_rdtsc_fenced, true, SETUP, STATEMENT);	\
		else if (in->timer == EXITLAT_T_LFENCE)				\
			EL_TIMED_LOOP(id, exitlat_rdtsc_fenced,			\
				      exitlat_rdtsc_fenced, false, SETUP, STATEMENT);	\
		else if (in->amd)						\
			EL_TIMED_LOOP(id, exitlat_rdtscp_lfence,			\
				      exitlat_rdtscp, true, SETUP, STATEMENT);		\
		else								\
			EL_TIMED_LOOP(id, exitlat_rdtscp_lfence,			\
				      exitlat_rdtscp, false, SETUP, STATEMENT);	\
		return rax;							\
	}
EL_INSTRUCTIONS(EL_BATCH_FN)

/* The table CONFIG and LOOP index by EXITLAT_I_*. */
static const struct el_instr {
	int (*check)(const struct exitlat_config *cfg);	/* NULL: none */
	el_batch_fn *batch;
} el_instrs[] = {
#define EL_ROW(id, name, check, once, SETUP, STATEMENT) [id] = { check, el_batch_##name },
	EL_INSTRUCTIONS(EL_ROW)
#undef EL_ROW
};

/* One batch of n iterations, preemption and IRQs off. */
static long el_batch(const struct exitlat_config *cfg, u64 *buf, u64 n)
{
	struct el_window w = {
		.msr = cfg->msr, .port = cfg->port, .timer = cfg->timer, .amd = cfg->amd,
	};
	const bool deadline = cfg->instr == EXITLAT_I_WRMSR_TSC_DEADLINE;
	const bool immed = cfg->instr == EXITLAT_I_TSCDEADLINE_IMMED ||
			   cfg->instr == EXITLAT_I_TSCDEADLINE;	/* LVT redirected */
	const bool ipi = cfg->instr == EXITLAT_I_IPI || cfg->instr == EXITLAT_I_IPI_HALT;
	/*
	 * IRQs on inside the batch (the table's irqs_on): the guest's own timer is
	 * held (see el_self_ipi_delivery); the TSC-deadline kinds hold it themselves.
	 */
	const bool hold = EXITLAT_IRQS_ON(cfg->instr) && !deadline && !immed;
	unsigned long flags;
	u64 saved = 0, lvtt = 0;
	long rax;

	if (cfg->instr == EXITLAT_I_IPI && el_rcv_start_spin())
		return -ETIMEDOUT;
	w.settle = (u64)tsc_khz * (cfg->instr == EXITLAT_I_IPI ? EL_RCV_READY_MAX_US :
				   EL_HALT_SETTLE_US) / 1000;
	preempt_disable();
	if (ipi && smp_processor_id() == el_rcv_cpu) {	/* never an IPI to itself */
		preempt_enable();
		el_rcv_stop_spin();
		return -EINVAL;
	}
	local_irq_save(flags);
	if (hold) {		/* disarmed: 0 stops a TSC-deadline timer */
		saved = el_rdmsr(MSR_EXITLAT_TSC_DEADLINE);
		el_wrmsr(MSR_EXITLAT_TSC_DEADLINE, 0);
	}
	if (deadline || immed) {
		saved = el_rdmsr(MSR_EXITLAT_TSC_DEADLINE);
		w.ahead = EL_DEADLINE_AHEAD;
		if (cfg->instr == EXITLAT_I_TSCDEADLINE)	/* armed to expire */
			w.ahead = EXITLAT_AHEAD_TSCDEADLINE;
	}
	if (immed) {		/* the timer's interrupt on IRQ_WORK_VECTOR for the batch */
		lvtt = el_rdmsr(EL_X2APIC_LVTT);
		el_wrmsr(EL_X2APIC_LVTT, (lvtt & ~(EL_LVT_VECTOR | EL_LVT_MASKED)) | IRQ_WORK_VECTOR);
	}
	rax = el_instrs[cfg->instr].batch(&w, buf, n);
	if (immed) {		/* disarmed before the guest's own vector is back */
		el_wrmsr(MSR_EXITLAT_TSC_DEADLINE, 0);
		el_wrmsr(EL_X2APIC_LVTT, lvtt);
	}
	if (deadline || immed || hold)	/* a deadline already past fires at once */
		el_wrmsr(MSR_EXITLAT_TSC_DEADLINE, saved);
	local_irq_restore(flags);
	preempt_enable();
	if (cfg->instr == EXITLAT_I_IPI)
		el_rcv_stop_spin();
	return rax;
}

/* ---- the ioctls ----------------------------------------------------------- */

static long el_config(struct exitlat_state *st, struct exitlat_config __user *uarg)
{
	struct exitlat_config cfg;
	int err;

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
	if (cfg.instr >= ARRAY_SIZE(el_instrs) || !el_instrs[cfg.instr].batch)
		return -EINVAL;
	if (el_instrs[cfg.instr].check) {
		err = el_instrs[cfg.instr].check(&cfg);
		if (err)
			return err;
	}

	/* Called with st->lock held: no LOOP is using the batch buffer. */
	WRITE_ONCE(st->once, 0);
	kvfree(st->batch);
	st->batch = kvmalloc_array(cfg.batch, sizeof(u64), GFP_KERNEL);
	if (!st->batch) {
		st->configured = false;
		return -ENOMEM;
	}
	st->cfg = cfg;
	st->configured = true;
	WRITE_ONCE(st->once, el_once_word(&cfg));
	return 0;
}

/*
 * Cases 3/4 and baseline_module_call: one instruction, nothing else.  Runs
 * inside the user-timed window, hence no lock (see top): one READ_ONCE, then
 * a switch whose cases are the rows' statements inline (no call through the
 * table: the probe times this whole ioctl).
 */
static long el_once(struct exitlat_state *st)
{
	const u64 w = READ_ONCE(st->once);
	const u32 msr = w >> 32;
	const u16 port = (w >> 16) & 0xffff;
	const bool amd = w & EL_ONCE_AMD;
	const u64 ahead = 0;	/* only the loop-only TSC_DEADLINE row names it */
	const u64 __tl_t0 = 0;	/* ... with EL_WINDOW_T0 */
	const u64 val = 0;	/* only LOOP-only rows have a SETUP */
	long rax = 0;

	(void)rax;
	(void)val;
	(void)ahead;
	(void)__tl_t0;
	if (!(w & EL_ONCE_VALID))
		return -ENXIO;
	/* RAX (-KVM_ENOSYS) is dropped: an ioctl result in -4095..-1 reads as an error. */
	switch (w & 0xff) {
#define EL_ONCE_CASE(id, name, check, once, SETUP, STATEMENT)				\
	case id:								\
		if (!(once))							\
			return -EINVAL;						\
		STATEMENT;							\
		return 0;
	EL_INSTRUCTIONS(EL_ONCE_CASE)
#undef EL_ONCE_CASE
	default:
		return -EINVAL;
	}
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
	/* Bounded counts: iters * 8 and warmup + iters cannot overflow. */
	if (lp.iters > EXITLAT_MAX_ITERS || lp.warmup > EXITLAT_MAX_ITERS)
		return -E2BIG;
	out = u64_to_user_ptr(lp.samples);
	if (!access_ok(out, lp.iters * sizeof(u64)))
		return -EFAULT;
	total = lp.warmup + lp.iters;
	for (done = 0; done < total; done += n) {
		n = min_t(u64, cfg->batch, total - done);
		/* A batch never mixes warm-up and kept samples. */
		if (done < lp.warmup)
			n = min_t(u64, n, lp.warmup - done);
		rax = el_batch(cfg, st->batch, n);
		if (rax < 0 && (cfg->instr == EXITLAT_I_IPI || cfg->instr == EXITLAT_I_IPI_HALT))
			return rax;	/* the receiver never started spinning, or is this CPU */
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
	long ret;

	switch (cmd) {
	case EXITLAT_IOC_ONCE:
		return el_once(st);	/* lock-free on purpose: see top */
	case EXITLAT_IOC_LOOP:
	case EXITLAT_IOC_CONFIG:
		if (mutex_lock_interruptible(&st->lock))
			return -EINTR;
		if (cmd == EXITLAT_IOC_LOOP)
			ret = el_loop(st, (void __user *)arg);
		else
			ret = el_config(st, (void __user *)arg);
		mutex_unlock(&st->lock);
		return ret;
	case EXITLAT_IOC_INFO: {
		struct exitlat_info info = {
			.abi_version = EXITLAT_ABI_VERSION,
			.tsc_khz = tsc_khz,
		};
		u64 base;

		if (boot_cpu_has(X86_FEATURE_TSC_DEADLINE_TIMER))
			info.flags |= EXITLAT_INFO_TSC_DEADLINE;
		if (kvm_para_available())
			info.flags |= EXITLAT_INFO_KVM;
		if (!rdmsrl_safe(MSR_IA32_APICBASE, &base) && (base & MSR_IA32_APICBASE_ENABLE))
			info.flags |= base & X2APIC_ENABLE ? EXITLAT_INFO_X2APIC : EXITLAT_INFO_XAPIC;
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
	mutex_init(&st->lock);
	file->private_data = st;
	return 0;
}

static int el_release(struct inode *inode, struct file *file)
{
	struct exitlat_state *st = file->private_data;

	mutex_destroy(&st->lock);
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
	el_testdev_release();
	el_rcv_release();
}

module_init(el_init);
module_exit(el_exit);
