// SPDX-License-Identifier: GPL-2.0
/*
 * exitlat-probe: the guest user-space half of exitlat (docs/probes.md).
 *
 * Reads its plan from the kernel command line (exitlat.* keys), runs the
 * baselines and the requested cases (each case optionally followed by its
 * traced verification window), keeps every timed iteration in locked
 * memory, reports short "EXITLAT {json}" lines on the console and, after all
 * timed loops, writes the samples to a raw disk (/dev/vda).
 *
 * Cases 1-2 run here; 3-6 go through /dev/exitlat (exitlat.ko).  The timer
 * reads and the timed loop live in ../module/exitlat_uapi.h, shared with the
 * module, and carry the methodology comment; this file's user-mode harness
 * (WINDOW, user_run) adds how a window is instantiated and warmed up.
 *
 * Reading order: the harness, then the tables (what each window executes,
 * the instructions, the cases, the baselines), then plan, events, run_key().
 *
 * Options (tests only): --cmdline STR (instead of /proc/cmdline),
 * --out PATH (instead of /dev/vda), --console PATH (instead of /dev/console).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>
#include <cpuid.h>
#include <dirent.h>
#include <linux/fs.h>
#include <sys/io.h>
#include <sys/ioctl.h>
#include <sys/klog.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/utsname.h>

#include "exitlat_uapi.h"

#define MAX_ITERS	EXITLAT_MAX_ITERS
#define HEADER_SIZE	4096
#define ALIGN_4K(x)	(((x) + 4095) & ~4095ULL)
#define MAX_F		64	/* F instructions one plan may list (exitlat.instr=a,b,...) */
#define MAX_KEYS	(6 + 2 * (3 * MAX_F + 3))	/* baselines + cases, each with its traced window */
#define ARRAY_SIZE(a)	(sizeof(a) / sizeof((a)[0]))

/* ---- the user-mode timing harness ---------------------------------------- */

/*
 * How the probe times a window (the timer sequences themselves, RDTSCP;LFENCE
 * for t0 and RDTSCP for t1 or LFENCE;RDTSC;LFENCE for both, and the 0 stored
 * for a TSC that did not advance, are EXITLAT_TIMED_LOOP's, in
 * exitlat_uapi.h):
 *
 * - WINDOW(name, STATEMENT) defines window_<name>(), the tight loop: one
 *   EXITLAT_TIMED_LOOP around STATEMENT per (timer, vendor), picked by
 *   branches before the loop.  STATEMENT is pasted between the two timer
 *   reads, so a window holds t0, the statement, t1 and nothing else: no call
 *   and no branch of the harness.  The tables below select a window function
 *   by pointer; that indirect call happens once per loop, before the first
 *   t0 and after the last t1.  (Calling a per-iteration function through a
 *   pointer inside t0..t1 would add the call, and a branch prediction that
 *   can miss, to every sample.)
 * - STATEMENT works on plain locals: fd, port (copied from struct window
 *   before the loop: a window loads no global and chases no pointer), rax,
 *   bad (returned after it) and amd, a constant in each instance, so
 *   `amd ? VMMCALL : VMCALL` is decided at compile time.
 * - user_run() runs a key: warm-up iterations through the very same window
 *   function into the same buffer (overwritten afterwards), in runs of at
 *   most `iters`, then the kept iterations.
 * Cases 5-6 and the kernel baselines are timed by the module's harness
 * instead (exitlat_mod.c, irq-off batches); run_key() only starts it.
 */

/* What a window needs. */
struct window {
	int fd;			/* /dev/exitlat, for the ONCE ioctl */
	uint16_t port;		/* exitlat.port, for OUTB */
	int timer;		/* EXITLAT_T_*: which timer pair */
	bool amd;		/* VMMCALL instead of VMCALL */
	volatile uint8_t *td;	/* mmio_*: pci-testdev's register, mapped */
};

/* What it hands back (returned, so no pointer stays live across the loop). */
struct result {
	long rax;		/* RAX after the last VMCALL */
	int bad;		/* OR of the ONCE ioctl results */
};

/* n timed iterations of one window into buf[0..n). */
typedef struct result window_fn(const struct window *in, uint64_t *buf, uint64_t n);

/* One loop instance, with its own copies of the inputs. */
#define TIMED_LOOP(T0, T1, AMD, STATEMENT)					\
	do {									\
		const int fd = in->fd;						\
		const uint16_t port = in->port;					\
		const bool amd = (AMD);						\
		volatile uint8_t *const td = in->td;				\
										\
		(void)fd;							\
		(void)port;							\
		(void)amd;							\
		(void)td;							\
		EXITLAT_TIMED_LOOP(buf, n, T0, T1, STATEMENT);			\
	} while (0)

#define WINDOW(name, STATEMENT)							\
	static struct result window_##name(const struct window *in,		\
					   uint64_t *buf, uint64_t n)		\
	{									\
		long rax = 0;							\
		int bad = 0;							\
										\
		if (in->timer == EXITLAT_T_LFENCE && in->amd)			\
			TIMED_LOOP(exitlat_rdtsc_fenced,			\
				   exitlat_rdtsc_fenced, true, STATEMENT);	\
		else if (in->timer == EXITLAT_T_LFENCE)				\
			TIMED_LOOP(exitlat_rdtsc_fenced,			\
				   exitlat_rdtsc_fenced, false, STATEMENT);	\
		else if (in->amd)						\
			TIMED_LOOP(exitlat_rdtscp_lfence,			\
				   exitlat_rdtscp, true, STATEMENT);		\
		else								\
			TIMED_LOOP(exitlat_rdtscp_lfence,			\
				   exitlat_rdtscp, false, STATEMENT);		\
		return (struct result){ .rax = rax, .bad = bad };		\
	}

static struct result user_run(window_fn *window, const struct window *w, uint64_t *buf,
			      uint64_t iters, uint64_t warm)
{
	struct result last;
	int bad = 0;

	while (warm) {
		const uint64_t n = warm < iters ? warm : iters;

		bad |= window(w, buf, n).bad;
		warm -= n;
	}
	last = window(w, buf, iters);
	last.bad |= bad;
	return last;
}

/* ---- what runs: the tables ----------------------------------------------- */

/* What each user window executes between t0 and t1. */
WINDOW(nothing,     (void)0)
WINDOW(nop,         asm volatile("nop"))	/* docs/probes.md: why nop */
WINDOW(getppid,     syscall(SYS_getppid))
WINDOW(module_once, bad |= ioctl(fd, EXITLAT_IOC_ONCE))
WINDOW(cpuid,       exitlat_cpuid0())
WINDOW(vmcall,      rax = amd ? exitlat_vmmcall() : exitlat_vmcall())
WINDOW(outb,        exitlat_outb(port, '.'))
/* port I/O at CPL 3 needs ioperm() for the kind's port (main() asks for it) */
WINDOW(inl_from_qemu,    exitlat_inl(EXITLAT_PORT_INL_FROM_QEMU))
WINDOW(inl_from_kernel,  exitlat_inb(EXITLAT_PORT_INL_FROM_KERNEL))
WINDOW(inl_from_pmtimer, exitlat_inl(EXITLAT_PORT_INL_FROM_PMTIMER))
WINDOW(pause,       asm volatile("pause"))
/* pci-testdev: its test selected and its BAR mapped (or ioperm'd) before the window */
WINDOW(mmio_no_eventfd,  *td = EXITLAT_TESTDEV_VALUE)
WINDOW(mmio_eventfd,     *td = EXITLAT_TESTDEV_VALUE)
WINDOW(mmio_datamatch,   *td = EXITLAT_TESTDEV_VALUE)
WINDOW(pio_no_eventfd,   exitlat_outb(port, EXITLAT_TESTDEV_VALUE))
WINDOW(pio_eventfd,      exitlat_outb(port, EXITLAT_TESTDEV_VALUE))
WINDOW(pio_datamatch,    exitlat_outb(port, EXITLAT_TESTDEV_VALUE))

/* Where an instruction runs, and who times it. */
enum where {
	USER,	/* the probe executes and times it (cases 1, 2) */
	ONCE,	/* the probe times ioctl(ONCE), the module executes it once (3, 4) */
	LOOP,	/* the module executes and times it, irq-off batches (5, 6) */
};

/*
 * An instruction (or what a baseline runs in its place) and what each place
 * needs to run it.  The instructions come from the instruction table
 * (exitlat/instructions.py, generated into exitlat_instrs.h): adding an exit
 * kind is a row there, a row in exitlat_mod.c's EL_INSTRUCTIONS, and a WINDOW
 * line above if CPL 3 can run it (a row with case 1 and no WINDOW does not
 * compile).
 */
struct instr {
	const char *name;
	window_fn *user;	/* its user window; NULL: CPL 3 cannot run it */
	int module;		/* EXITLAT_I_* for ONCE and LOOP; -1: none */
	unsigned cases;		/* bit c: case c may run it */
	const char *why_not;	/* why the F cases it leaves out cannot */
	const char *ud;		/* it may #UD at CPL 3: why (pre-flighted once) */
	bool rax;		/* its RAX goes in done (USER and LOOP) */
	int port;		/* the port it always uses (case 1: ioperm), -1: none */
	const char *needs;	/* the vCPU feature the module refuses it without */
	int testdev, reg;	/* its pci-testdev test and register offset, -1: none */
};
#define C(c)		EXITLAT_C(c)

/* What only the probe knows: VMCALL may #UD at CPL 3, and its RAX is reported. */
#define UD_VMCALL	"VMCALL/VMMCALL raised #UD (not running under KVM? TCG does not implement it)"
#define USER_WINDOW_0(kind)	NULL
#define USER_WINDOW_1(kind)	window_##kind

/* F: the instructions exitlat.instr names, one row each; the first is the default. */
#define F_ROW(kind, id, cases_, user_, why_not_, port_, needs_, testdev_, reg_)	\
	{ .name = #kind, .user = USER_WINDOW_##user_(kind), .module = id,		\
	  .cases = (cases_), .why_not = why_not_,					\
	  .ud = (id) == EXITLAT_I_VMCALL ? UD_VMCALL : NULL,				\
	  .rax = (id) == EXITLAT_I_VMCALL, .port = (port_), .needs = needs_,		\
	  .testdev = (testdev_), .reg = (reg_) },
static const struct instr f_instrs[] = {
	EXITLAT_F_INSTRS(F_ROW)
};
#undef F_ROW

/* S, and what the baselines run instead of an instruction that exits. */
_Static_assert(ARRAY_SIZE(f_instrs) <= MAX_F, "raise MAX_F: more F rows than a plan may list");

/* S (its port is exitlat.port), and what the baselines run instead of an instruction that exits. */
static const struct instr S_OUTB = {
	.name = "outb", .user = window_outb, .module = EXITLAT_I_S, .cases = EXITLAT_S_CASES,
	.port = -1, .testdev = -1,
};
static const struct instr NOTHING = { .name = "nothing", .user = window_nothing,
				      .module = EXITLAT_I_NONE, .port = -1, .testdev = -1 };
static const struct instr NOP = { .name = "nop", .user = window_nop, .module = EXITLAT_I_NOP,
				  .port = -1, .testdev = -1 };
static const struct instr GETPPID = { .name = "getppid", .user = window_getppid, .module = -1,
				      .port = -1, .testdev = -1 };

/* Case c: F (exitlat.instr) or S, in one of the three places (docs/probes.md). */
static const struct { bool s; enum where where; } cases[7] = {
	[1] = { false, USER }, [2] = { true, USER },
	[3] = { false, ONCE }, [4] = { true, ONCE },
	[5] = { false, LOOP }, [6] = { true, LOOP },
};

/* The baselines, in run order (exitlat/run/guestio.py BASELINE_KEYS). */
static const struct { const char *key; const struct instr *instr; enum where where; } baselines[] = {
	{ "baseline_timer",		&NOTHING, USER },
	{ "baseline_nonexiting",	&NOP,     USER },
	{ "baseline_syscall",		&GETPPID, USER },
	{ "baseline_module_call",	&NOTHING, ONCE },
	{ "baseline_kernel_timer",	&NOTHING, LOOP },
	{ "baseline_kernel_nonexiting",	&NOP,     LOOP },
};

/* ---- plan ---------------------------------------------------------------- */

struct plan {
	int cases[6], ncases;
	const struct instr *f[MAX_F];	/* exitlat.instr: one or a comma list */
	int nf;
	unsigned port, msr;
	int timer;		/* EXITLAT_T_* */
	uint64_t iters, warmup;
	uint64_t viters;	/* traced window per case: iterations, 0 = none */
	int baselines, handshake, amd, vendor_given;
	unsigned batch, handshake_timeout;
};

/*
 * One measurement ("key"): a baseline, a case (the timed window) or a case's
 * traced window (same code path, run right after it while the host traces).
 */
struct key {
	char name[32];
	const struct instr *instr;
	enum where where;
	bool skip;		/* set up failed (ioperm): no window */
	uint64_t iters, warmup;	/* kept iterations (samples) and warm-up */
	int of;			/* traced window: index of its case's key, else -1 */
	uint64_t *buf;
	int ok;
};

static struct plan P = {
	.f = { &f_instrs[0] }, .nf = 1, .port = 0xe9, .msr = 0x3b, .timer = EXITLAT_T_RDTSCP,
	.iters = 0, .warmup = 1000, .baselines = 1, .handshake = 0,
	.batch = EXITLAT_BATCH_DEFAULT, .handshake_timeout = 60,
};
static struct key keys[MAX_KEYS];
static int nkeys, nerrors, console_fd = -1, mod_fd = -1;
static const char *out_path = "/dev/vda", *console_path = "/dev/console";

/* ---- console events ---------------------------------------------------- */

static void emit(const char *json)
{
	char line[1024];
	int n = snprintf(line, sizeof(line), "EXITLAT %s\n", json);

	if (n > (int)sizeof(line) - 1)
		n = sizeof(line) - 1;
	if (write(1, line, n) < 0) { /* nowhere else to report */ }
}

/* JSON string escaping into dst (quotes included). */
static void jstr(char *dst, size_t len, const char *s)
{
	size_t o = 0;

	dst[o++] = '"';
	for (; s && *s && o + 8 < len; s++) {
		unsigned char c = *s;
		if (c == '"' || c == '\\') {
			dst[o++] = '\\';
			dst[o++] = c;
		} else if (c < 0x20 || c >= 0x7f) {
			o += snprintf(dst + o, len - o, "\\u%04x", c);
		} else {
			dst[o++] = c;
		}
	}
	dst[o++] = '"';
	dst[o] = 0;
}

static void emit_error(const char *key, const char *fmt, ...)
{
	char msg[400], jmsg[600], jkey[64], json[800];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	jstr(jmsg, sizeof(jmsg), msg);
	if (key)
		jstr(jkey, sizeof(jkey), key);
	else
		strcpy(jkey, "null");
	snprintf(json, sizeof(json), "{\"event\":\"error\",\"key\":%s,\"message\":%s}", jkey, jmsg);
	emit(json);
	nerrors++;
}

static void emit_key_event(const char *event, const char *key, const char *extra)
{
	char json[256];

	snprintf(json, sizeof(json), "{\"event\":\"%s\",\"key\":\"%s\"%s}", event, key, extra ? extra : "");
	emit(json);
}

static __attribute__((noreturn)) void finish(const char *extra)
{
	char json[256];

	snprintf(json, sizeof(json), "{\"event\":\"finished\",\"status\":\"%s\"%s}",
		 nerrors ? "error" : "ok", extra ? extra : "");
	emit(json);
	exit(nerrors ? 1 : 0);
}

static __attribute__((noreturn, format(printf, 1, 2))) void plan_error(const char *fmt, ...)
{
	char msg[400];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	emit_error(NULL, "bad plan: %s", msg);
	finish(NULL);
}

/* ---- plan parsing -------------------------------------------------------- */

static uint64_t parse_num(const char *key, const char *v, uint64_t lo, uint64_t hi)
{
	char *end;
	unsigned long long x;

	errno = 0;
	if (!*v || *v == '-')
		plan_error("exitlat.%s=%s is not a number", key, v);
	x = strtoull(v, &end, 0);
	if (errno || *end)
		plan_error("exitlat.%s=%s is not a number", key, v);
	if (x < lo || x > hi)
		plan_error("exitlat.%s=%s out of range %llu..%llu", key, v,
			   (unsigned long long)lo, (unsigned long long)hi);
	return x;
}

static void parse_cases(const char *v)
{
	char buf[128], *tok, *save;

	snprintf(buf, sizeof(buf), "%s", v);
	for (tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
		char *end;
		long c = strtol(tok, &end, 10);
		int i;

		if (*end || end == tok || c < 1 || c > 6)
			plan_error("unknown case '%s' (valid cases: 1-6)", tok);
		for (i = 0; i < P.ncases; i++)
			if (P.cases[i] == c)
				plan_error("case %ld given twice", c);
		P.cases[P.ncases++] = c;
	}
	if (!P.ncases)
		plan_error("exitlat.cases is empty (valid cases: 1-6)");
}

/* An F instruction by name, from f_instrs[]. */
static const struct instr *parse_f_instr(const char *name)
{
	char valid[512] = "";

	for (size_t i = 0; i < ARRAY_SIZE(f_instrs); i++) {
		if (!strcmp(name, f_instrs[i].name))
			return &f_instrs[i];
		snprintf(valid + strlen(valid), sizeof(valid) - strlen(valid), "%s%s",
			 i ? ", " : "", f_instrs[i].name);
	}
	plan_error("unknown instruction '%s' (valid: %s)", name, valid);
}

/* exitlat.instr: a comma list of F instructions, each once. */
static void parse_f_instrs(const char *v)
{
	char buf[1024], *tok, *save;

	snprintf(buf, sizeof(buf), "%s", v);
	P.nf = 0;
	for (tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
		const struct instr *f = parse_f_instr(tok);

		for (int i = 0; i < P.nf; i++)
			if (P.f[i] == f)
				plan_error("instruction %s given twice", tok);
		P.f[P.nf++] = f;
	}
	if (!P.nf)
		plan_error("exitlat.instr is empty");
}

static void parse_plan(char *cmdline)
{
	char *tok, *save;
	int have_cases = 0, have_iters = 0;

	for (tok = strtok_r(cmdline, " \t\n", &save); tok; tok = strtok_r(NULL, " \t\n", &save)) {
		char *k, *v;

		if (strncmp(tok, "exitlat.", 8))
			continue;
		k = tok + 8;
		v = strchr(k, '=');
		if (!v)
			plan_error("%s has no value", tok);
		*v++ = 0;
		if (!strcmp(k, "cases")) {
			parse_cases(v);
			have_cases = 1;
		} else if (!strcmp(k, "instr")) {
			parse_f_instrs(v);
		} else if (!strcmp(k, "port")) {
			P.port = parse_num(k, v, 0, 0xffff);
		} else if (!strcmp(k, "timer")) {
			if (!strcmp(v, "rdtscp"))
				P.timer = EXITLAT_T_RDTSCP;
			else if (!strcmp(v, "lfence"))
				P.timer = EXITLAT_T_LFENCE;
			else
				plan_error("unknown timer '%s' (valid: rdtscp, lfence)", v);
		} else if (!strcmp(k, "iters")) {
			P.iters = parse_num(k, v, 1, MAX_ITERS);
			have_iters = 1;
		} else if (!strcmp(k, "warmup")) {
			P.warmup = parse_num(k, v, 0, MAX_ITERS);
		} else if (!strcmp(k, "viters")) {
			P.viters = parse_num(k, v, 0, MAX_ITERS);
		} else if (!strcmp(k, "baselines")) {
			P.baselines = parse_num(k, v, 0, 1);
		} else if (!strcmp(k, "handshake")) {
			P.handshake = parse_num(k, v, 0, 1);
		} else if (!strcmp(k, "msr")) {
			P.msr = parse_num(k, v, 0, 0xffffffffULL);
		} else if (!strcmp(k, "vendor")) {
			if (strcmp(v, "intel") && strcmp(v, "amd"))
				plan_error("unknown vendor '%s' (valid: intel, amd)", v);
			P.amd = !strcmp(v, "amd");
			P.vendor_given = 1;
		} else if (!strcmp(k, "batch")) {
			P.batch = parse_num(k, v, 1, EXITLAT_BATCH_MAX);
		} else if (!strcmp(k, "handshake_timeout")) {
			P.handshake_timeout = parse_num(k, v, 1, 86400);
		} else if (!strcmp(k, "timeout")) {
			/* init's watchdog; nothing to do here */
		} else {
			plan_error("unknown key exitlat.%s", k);
		}
	}
	if (!have_cases)
		plan_error("no exitlat.cases on the kernel command line");
	if (!have_iters)
		plan_error("no exitlat.iters on the kernel command line");
	/* One F instruction must suit every F case; of a list, each case runs those it allows
	 * (exitlat/cases.py case_keys, which refuses a pair the user named explicitly). */
	for (int i = 0; P.nf == 1 && i < P.ncases; i++) {
		int c = P.cases[i];

		if (!cases[c].s && !(P.f[0]->cases & C(c)))
			plan_error("case %d cannot use %s: %s", c, P.f[0]->name, P.f[0]->why_not);
	}
	for (int i = 0; i < P.nf; i++)
		if (P.f[i]->module == EXITLAT_I_RDMSR && ((P.msr >= 0x174 && P.msr <= 0x176) ||
							  (P.msr >= 0xc0000100 && P.msr <= 0xc0000102)))
			plan_error("msr 0x%x is passed through by KVM and never exits (use 0x3b, IA32_TSC_ADJUST)", P.msr);
}

/* ---- environment --------------------------------------------------------- */

static void cpuid4(unsigned leaf, unsigned sub, unsigned r[4])
{
	__cpuid_count(leaf, sub, r[0], r[1], r[2], r[3]);
}

static unsigned tsc_khz_from(const char **source)
{
	unsigned r[4], khz = 0;
	struct exitlat_info info;
	char buf[256], *log;
	FILE *f;
	int n;

	if (mod_fd >= 0 && !ioctl(mod_fd, EXITLAT_IOC_INFO, &info) && info.tsc_khz) {
		*source = "module";
		return info.tsc_khz;
	}
	cpuid4(0, 0, r);
	if (r[0] >= 0x15) {
		cpuid4(0x15, 0, r);
		if (r[0] && r[1] && r[2]) {
			*source = "cpuid_15";
			return (unsigned)((uint64_t)r[2] * r[1] / r[0] / 1000);
		}
	}
	cpuid4(1, 0, r);
	if (r[2] & (1u << 31)) {
		cpuid4(0x40000000, 0, r);
		if (r[0] >= 0x40000010) {
			cpuid4(0x40000010, 0, r);
			if (r[0]) {
				*source = "cpuid_40000010";
				return r[0];
			}
		}
	}
	f = fopen("/sys/devices/system/cpu/cpu0/tsc_freq_khz", "r");
	if (f) {
		if (fgets(buf, sizeof(buf), f))
			khz = strtoul(buf, NULL, 10);
		fclose(f);
		if (khz) {
			*source = "sysfs";
			return khz;
		}
	}
	/* dmesg: the refined calibration wins over the first estimate. */
	log = malloc(1 << 20);
	if (log && (n = klogctl(3 /* READ_ALL */, log, (1 << 20) - 1)) > 0) {
		const char *pats[] = { "Refined TSC clocksource calibration: ", "tsc: Detected " };
		log[n] = 0;
		for (int i = 0; i < 2 && !khz; i++) {
			char *p = strstr(log, pats[i]);
			unsigned mhz, frac = 0;
			if (p && sscanf(p + strlen(pats[i]), "%u.%3u", &mhz, &frac) >= 1) {
				khz = mhz * 1000 + frac;
				*source = "dmesg";
			}
		}
	}
	free(log);
	if (!khz)
		*source = "unknown";
	return khz;
}

/* A sysfs file's first hex number (vendor, device), 0 where it cannot be read. */
static unsigned sysfs_hex(const char *dir, const char *file)
{
	char path[320];
	unsigned v = 0;
	FILE *f;

	snprintf(path, sizeof(path), "%s/%s", dir, file);
	if ((f = fopen(path, "r"))) {
		if (fscanf(f, "%x", &v) != 1)
			v = 0;
		fclose(f);
	}
	return v;
}

/*
 * QEMU's pci-testdev in sysfs: its folder (dir, "" where the VM has none) and
 * the first port of its I/O BAR (BAR 1; 0: none).  The firmware assigns the
 * BAR at boot, and the host needs it to verify the pio_* kinds (their port is
 * this base + the register's fixed offset), so hello reports it.
 */
static char td_dir[300];
static unsigned td_io;

static void testdev_find(void)
{
	DIR *dir = opendir("/sys/bus/pci/devices");
	struct dirent *e;

	while (dir && !td_dir[0] && (e = readdir(dir))) {
		char path[300], res[320], line[160];
		unsigned long long start = 0, end = 0, flags = 0;
		FILE *f;

		if (e->d_name[0] == '.')
			continue;
		snprintf(path, sizeof(path), "/sys/bus/pci/devices/%s", e->d_name);
		if (sysfs_hex(path, "vendor") != EXITLAT_TESTDEV_VENDOR ||
		    sysfs_hex(path, "device") != EXITLAT_TESTDEV_DEVICE)
			continue;
		snprintf(td_dir, sizeof(td_dir), "%s", path);
		snprintf(res, sizeof(res), "%s/resource", td_dir);
		if (!(f = fopen(res, "r")))
			continue;
		/* one line per BAR: start end flags; BAR 1 is the I/O BAR (IORESOURCE_IO) */
		if (fgets(line, sizeof(line), f) && fgets(line, sizeof(line), f) &&
		    sscanf(line, "%llx %llx %llx", &start, &end, &flags) == 3 &&
		    (flags & 0x100) && start && start <= 0xff00)
			td_io = (unsigned)start;
		fclose(f);
	}
	if (dir)
		closedir(dir);
}

/*
 * Case 1 of a pci-testdev kind, before its window: map the memory BAR (its
 * sysfs resource0) once, select the kind's test (a QEMU round trip in which
 * QEMU registers the test's ioeventfd), check the test's header against the
 * table, and point the window at the register.  0, or -1 after refusing.
 */
static volatile uint8_t *td_mem;
static __attribute__((format(printf, 2, 3))) void refuse(const char *key, const char *fmt, ...);

static uint8_t td_readb(int t, unsigned off)
{
	return t >= 3 ? exitlat_inb(td_io + off) : td_mem[off];
}

static int testdev_user_setup(const char *key, const struct instr *in, struct window *w)
{
	static const char *const names[6] = EXITLAT_TESTDEV_NAMES;
	const int t = in->testdev;
	char name[32], path[340];
	uint32_t off = 0;
	unsigned i;

	if (!td_dir[0] || !td_io) {
		refuse(key, "%s: the vCPU lacks %s", in->name, in->needs);
		return -1;
	}
	if (t < 3 && !td_mem) {
		int fd;
		void *p;

		snprintf(path, sizeof(path), "%s/resource0", td_dir);
		fd = open(path, O_RDWR | O_SYNC | O_CLOEXEC);
		p = fd < 0 ? MAP_FAILED : mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
		if (fd >= 0)
			close(fd);
		if (p == MAP_FAILED) {
			emit_error(key, "mapping %s: %s", path, strerror(errno));
			return -1;
		}
		td_mem = p;
	}
	if (t >= 3 && ioperm(td_io, 256, 1)) {
		emit_error(key, "ioperm(0x%x, 256): %s", td_io, strerror(errno));
		return -1;
	}
	if (t >= 3)
		exitlat_outb(td_io, t - 3);
	else
		td_mem[0] = t;
	for (i = 0; i < sizeof(name) - 1 && (name[i] = td_readb(t, 16 + i)); i++)
		;
	name[i] = 0;
	for (i = 0; i < 4; i++)
		off |= (uint32_t)td_readb(t, 4 + i) << (8 * i);
	if (td_readb(t, 0) != t || strcmp(name, names[t]) || (int)off != in->reg) {
		refuse(key, "%s: pci-testdev's test %d is not the one exitlat expects (%s at %u)",
		       in->name, t, name, off);
		return -1;
	}
	if (t >= 3)
		w->port = td_io + in->reg;
	else
		w->td = td_mem + in->reg;
	return 0;
}

static void hello(void)
{
	unsigned r[4], maxext;
	char vendor[13] = { 0 }, hv[13] = { 0 }, json[900], jk[100], jb[200], jv[40], jh[40];
	const char *src = "unknown", *bb = getenv("EXITLAT_BUSYBOX");
	struct utsname u;
	int inv = 0, rdtscp = 0;
	unsigned khz;

	cpuid4(0, 0, r);
	memcpy(vendor, &r[1], 4);
	memcpy(vendor + 4, &r[3], 4);
	memcpy(vendor + 8, &r[2], 4);
	cpuid4(0x80000000, 0, r);
	maxext = r[0];
	if (maxext >= 0x80000001) {
		cpuid4(0x80000001, 0, r);
		rdtscp = !!(r[3] & (1u << 27));
	}
	if (maxext >= 0x80000007) {
		cpuid4(0x80000007, 0, r);
		inv = !!(r[3] & (1u << 8));	/* invariant TSC */
	}
	cpuid4(1, 0, r);
	if (r[2] & (1u << 31)) {	/* hypervisor present */
		cpuid4(0x40000000, 0, r);
		memcpy(hv, &r[1], 4);
		memcpy(hv + 4, &r[2], 4);
		memcpy(hv + 8, &r[3], 4);
	}
	if (!P.vendor_given)
		P.amd = !strcmp(vendor, "AuthenticAMD") || !strcmp(vendor, "HygonGenuine");
	khz = tsc_khz_from(&src);
	uname(&u);
	jstr(jk, sizeof(jk), u.release);
	jstr(jv, sizeof(jv), vendor);
	jstr(jh, sizeof(jh), hv);
	snprintf(json, sizeof(json),
		 "{\"event\":\"hello\",\"kernel\":%s,\"tsc_khz\":%u,\"tsc_khz_source\":\"%s\","
		 "\"invariant_tsc\":%s,\"rdtscp\":%s,\"cpu\":%d,\"vendor\":%s,\"hypervisor\":%s,"
		 "\"timer\":\"%s\",\"module\":%s,\"vcpus\":%ld",
		 jk, khz, src, inv ? "true" : "false", rdtscp ? "true" : "false", sched_getcpu(),
		 jv, jh, P.timer == EXITLAT_T_LFENCE ? "lfence" : "rdtscp",
		 mod_fd >= 0 ? "true" : "false", sysconf(_SC_NPROCESSORS_ONLN));
	if (mod_fd >= 0) {	/* the APIC's mode, as the module read it (IA32_APIC_BASE) */
		struct exitlat_info info = { 0 };
		const char *mode = "unknown";

		if (!ioctl(mod_fd, EXITLAT_IOC_INFO, &info))
			mode = info.flags & EXITLAT_INFO_X2APIC ? "x2apic" :
			       info.flags & EXITLAT_INFO_XAPIC ? "xapic" : "disabled";
		snprintf(json + strlen(json), sizeof(json) - strlen(json), ",\"apic_mode\":\"%s\"",
			 mode);
	}
	testdev_find();
	if (td_io)
		snprintf(json + strlen(json), sizeof(json) - strlen(json), ",\"testdev_io\":%u",
			 td_io);
	if (bb) {
		jstr(jb, sizeof(jb), bb);
		snprintf(json + strlen(json), sizeof(json) - strlen(json), ",\"busybox\":%s", jb);
	}
	strcat(json, "}");
	emit(json);
	if (P.timer == EXITLAT_T_RDTSCP && !rdtscp)
		plan_error("timer rdtscp requested but this vCPU has no RDTSCP (use exitlat.timer=lfence)");
}

/* ---- handshake ----------------------------------------------------------- */

/* Wait for a line "go" on the console; 0 on success, -1 on timeout/EOF. */
static int wait_go(void)
{
	static char line[256];
	static size_t len;
	struct timespec now, end;

	clock_gettime(CLOCK_MONOTONIC, &end);
	end.tv_sec += P.handshake_timeout;
	for (;;) {
		char *nl;
		struct pollfd pfd = { .fd = console_fd, .events = POLLIN };
		long ms;
		ssize_t n;

		while ((nl = memchr(line, '\n', len))) {
			size_t l = nl - line;
			int go;
			while (l && (line[l - 1] == '\r' || line[l - 1] == ' '))
				l--;
			go = (l == 2 && !memcmp(line, "go", 2));
			len -= nl + 1 - line;
			memmove(line, nl + 1, len);
			if (go)
				return 0;
		}
		if (len == sizeof(line))
			len = 0;	/* garbage without newline */
		clock_gettime(CLOCK_MONOTONIC, &now);
		ms = (end.tv_sec - now.tv_sec) * 1000 + (end.tv_nsec - now.tv_nsec) / 1000000;
		if (ms <= 0)
			return -1;
		if (poll(&pfd, 1, ms) <= 0) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		n = read(console_fd, line + len, sizeof(line) - len);
		if (n <= 0) {
			if (n < 0 && (errno == EINTR || errno == EAGAIN))
				continue;
			return -1;
		}
		len += n;
	}
}

static void handshake(const char *event, const char *key, const char *extra)
{
	emit_key_event(event, key, extra);
	if (!P.handshake)
		return;
	if (wait_go()) {
		emit_error(key, "handshake: no 'go' within %u s after '%s'", P.handshake_timeout, event);
		finish(NULL);
	}
}

/* ---- running one key ----------------------------------------------------- */

static sigjmp_buf fault_jmp;
static volatile sig_atomic_t faulting_sig;

static void on_fault(int sig)
{
	faulting_sig = sig;
	siglongjmp(fault_jmp, 1);
}

/*
 * A kind this vCPU or machine cannot run: of a list (--instr all) it is left
 * out with why ("refused"), not an error; asked for alone, it is an error.
 */
static __attribute__((format(printf, 2, 3))) void refuse(const char *key, const char *fmt, ...)
{
	char msg[400], jmsg[600], jkey[64], json[800];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (P.nf == 1) {
		emit_error(key, "%s", msg);
		return;
	}
	jstr(jmsg, sizeof(jmsg), msg);
	jstr(jkey, sizeof(jkey), key);
	snprintf(json, sizeof(json), "{\"event\":\"refused\",\"key\":%s,\"message\":%s}", jkey, jmsg);
	emit(json);
}

/* The ACPI PM timer counts (3.58 MHz): two reads 20 us apart differ; all ones is no device. */
static bool pm_timer_counts(void)
{
	uint32_t a = exitlat_inl(EXITLAT_PORT_INL_FROM_PMTIMER), b;

	usleep(20);
	b = exitlat_inl(EXITLAT_PORT_INL_FROM_PMTIMER);
	return a != b && a != 0xffffffff;
}

static int module_config(const char *key, const struct instr *in)
{
	struct exitlat_config cfg = {
		.instr = in->module, .timer = P.timer, .port = P.port, .msr = P.msr,
		.amd = P.amd, .batch = P.batch,
	};

	if (mod_fd < 0) {
		emit_error(key, "%s is not available (exitlat.ko not loaded?)", EXITLAT_DEVICE);
		return -1;
	}
	if (ioctl(mod_fd, EXITLAT_IOC_CONFIG, &cfg)) {
		const int err = errno;
		const char *why = strerror(err);
		char needs[160];

		if (err == ENOEXEC)
			why = "the instruction faulted (#UD): VMCALL/VMMCALL needs KVM (TCG does not implement it) or the vendor is wrong";
		else if (err == EIO)
			why = "the MSR access faulted (#GP) in this guest";
		else if (err == EOPNOTSUPP && in->needs && *in->needs) {
			snprintf(needs, sizeof(needs), "the vCPU lacks %s", in->needs);
			why = needs;
		} else if (err == EOPNOTSUPP)
			why = "the vCPU lacks a needed feature (RDTSCP, for the rdtscp timer)";
		else if (err == ENODEV)
			why = "it is safe only under KVM, which intercepts it, and this guest does not run under KVM";
		else if (err == EPERM)
			why = "the MSR is passed through by KVM and never exits";
		else if (err == EBUSY)
			why = "the guest kernel uses it now (a breakpoint is armed in DR7)";
		else if (err == ENXIO)
			why = "no device answers at its port on this machine";
		else if (err == ETIMEDOUT)
			why = "its interrupt was not delivered within 10 ms";
		else if (err == ESRCH)
			why = "it needs a second vCPU to send to (bench gives one for the IPI kinds), and this guest has one CPU";
		if (err != EINVAL && err != ENOMEM && err != E2BIG)
			refuse(key, "module refused %s: %s", in->name, why);
		else
			emit_error(key, "module refused %s: %s", in->name, why);
		return -1;
	}
	return 0;
}

static int run_key(struct key *k)
{
	const struct instr *in = k->instr;
	/* ONCE: the window times the ioctl, the module runs the instruction. */
	window_fn *const window = k->where == USER ? in->user : window_module_once;
	struct window w = { .fd = mod_fd, .port = P.port, .timer = P.timer, .amd = P.amd };
	struct result res;
	char extra[192], ready[96] = ",\"window\":\"timed\"";
	struct sigaction sa = { .sa_handler = on_fault };

	/* Setup and pre-flight, before 'ready': nothing here is inside a window. */
	if (k->where != USER && module_config(k->name, in))
		return -1;
	if (k->where == USER && in->testdev >= 0 && testdev_user_setup(k->name, in, &w))
		return -1;

	sigemptyset(&sa.sa_mask);
	sigaction(SIGILL, &sa, NULL);
	sigaction(SIGSEGV, &sa, NULL);
	sigaction(SIGBUS, &sa, NULL);
	if (sigsetjmp(fault_jmp, 1)) {
		const char *ud = faulting_sig == SIGILL && k->where == USER ? in->ud : NULL;

		emit_error(k->name, "%s in the timed loop%s%s", strsignal(faulting_sig),
			   ud ? ": " : "", ud ? ud : "");
		return -1;
	}
	if (k->where == USER && in->ud)		/* pre-flight: one iteration, #UD under TCG */
		window(&w, k->buf, 1);
	/* pre-flight of what the module checks in cases 3 and 5 (the I/O bitmap allows it now) */
	if (k->where == USER && in->module == EXITLAT_I_INL_FROM_PMTIMER && !pm_timer_counts()) {
		refuse(k->name, "inl_from_pmtimer: no ACPI PM timer counts at port 0x%x on this machine",
		       EXITLAT_PORT_INL_FROM_PMTIMER);
		return -1;
	}

	if (k->of >= 0)
		snprintf(ready, sizeof(ready), ",\"window\":\"traced\",\"of\":\"%s\"", keys[k->of].name);
	handshake("ready", k->name, ready);
	if (k->where == LOOP) {
		/* Timed in the module: exitlat_mod.c's harness, irq-off batches. */
		struct exitlat_loop lp = {
			.samples = (uintptr_t)k->buf, .iters = k->iters, .warmup = k->warmup,
		};

		res.bad = ioctl(w.fd, EXITLAT_IOC_LOOP, &lp);
		res.rax = (long)lp.result;
	} else {
		res = user_run(window, &w, k->buf, k->iters, k->warmup);
	}
	signal(SIGILL, SIG_DFL);
	signal(SIGSEGV, SIG_DFL);
	signal(SIGBUS, SIG_DFL);
	if (res.bad) {
		emit_error(k->name, "module call failed: %s", strerror(errno));
		return -1;
	}
	/* After the loop, outside every window: samples the loop stored as 0 (t1 <= t0). */
	uint64_t backwards = 0;
	for (uint64_t i = 0; i < k->iters; i++)
		backwards += k->buf[i] == 0;
	snprintf(extra, sizeof(extra), "%s,\"n\":%llu,\"tsc_backwards\":%llu", ready,
		 (unsigned long long)k->iters, (unsigned long long)backwards);
	if (in->rax && k->where != ONCE)	/* ONCE's RAX would read as an errno */
		snprintf(extra + strlen(extra), sizeof(extra) - strlen(extra), ",\"rax\":%ld", res.rax);
	handshake("done", k->name, extra);
	return 0;
}

/* ---- samples buffer and disk -------------------------------------------- */

static uint64_t *alloc_samples(uint64_t n)
{
	size_t len = ALIGN_4K(n * 8);
	void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	if (p == MAP_FAILED)
		return NULL;
	madvise(p, len, MADV_HUGEPAGE);	/* fewer TLB misses while storing; optional */
	memset(p, 0, len);		/* pre-fault every page before any timed loop */
	mlock(p, len);			/* best effort: no swap in the guest anyway */
	return p;
}

static int open_output(uint64_t need)
{
	struct stat st;
	uint64_t size = 0;
	int fd = open(out_path, O_RDWR | O_CLOEXEC);

	if (fd < 0 && errno == ENOENT && strcmp(out_path, "/dev/vda"))
		fd = open(out_path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
	if (fd < 0)
		plan_error("cannot open sample disk %s: %s", out_path, strerror(errno));
	if (fstat(fd, &st))
		plan_error("cannot stat %s: %s", out_path, strerror(errno));
	if (S_ISBLK(st.st_mode)) {
		if (ioctl(fd, BLKGETSIZE64, &size))
			plan_error("cannot size %s: %s", out_path, strerror(errno));
	} else {
		size = st.st_size;
		if (size < need && ftruncate(fd, need) == 0)
			size = need;
	}
	if (size < need)
		plan_error("sample disk %s has %llu bytes, the plan needs %llu", out_path,
			   (unsigned long long)size, (unsigned long long)need);
	return fd;
}

static int pwrite_all(int fd, const void *p, uint64_t len, uint64_t off)
{
	const char *c = p;

	while (len) {
		ssize_t n = pwrite(fd, c, len > (1 << 24) ? (1 << 24) : len, off);
		if (n <= 0) {
			if (n < 0 && errno == EINTR)
				continue;
			return -1;
		}
		c += n; off += n; len -= n;
	}
	return 0;
}

/* Samples first, header last, then fsync: a torn write never looks complete. */
static void write_samples(int fd)
{
	char header[HEADER_SIZE];
	uint64_t off = HEADER_SIZE, bytes = 0;
	struct timespec t0, t1;
	int h;
	char extra[128];

	memset(header, 0, sizeof(header));
	h = snprintf(header, sizeof(header), "exitlat-samples 1\n");
	clock_gettime(CLOCK_MONOTONIC, &t0);
	for (int i = 0; i < nkeys; i++) {
		uint64_t len = keys[i].iters * 8;
		if (!keys[i].ok)
			continue;
		if (pwrite_all(fd, keys[i].buf, len, off)) {
			emit_error(keys[i].name, "writing samples to %s: %s", out_path, strerror(errno));
			finish(NULL);
		}
		h += snprintf(header + h, sizeof(header) - h, "%s %llu %llu\n", keys[i].name,
			      (unsigned long long)off, (unsigned long long)keys[i].iters);
		off += ALIGN_4K(len);
		bytes += len;
	}
	h += snprintf(header + h, sizeof(header) - h, "end\n");
	if (pwrite_all(fd, header, sizeof(header), 0) || fsync(fd)) {
		emit_error(NULL, "writing header to %s: %s", out_path, strerror(errno));
		finish(NULL);
	}
	clock_gettime(CLOCK_MONOTONIC, &t1);
	snprintf(extra, sizeof(extra), ",\"bytes_written\":%llu,\"write_seconds\":%.3f",
		 (unsigned long long)bytes,
		 (t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9);
	close(fd);
	finish(extra);
}

/* ---- main ---------------------------------------------------------------- */

static void add_key(const char *name, const struct instr *instr, enum where where,
		    uint64_t iters, uint64_t warmup, int of)
{
	struct key *k = &keys[nkeys++];

	snprintf(k->name, sizeof(k->name), "%s", name);
	k->instr = instr;
	k->where = where;
	k->iters = iters;
	k->warmup = warmup;
	k->of = of;
}

int main(int argc, char **argv)
{
	static char cmdline[4096];
	const char *cmd_arg = NULL;
	cpu_set_t cpus;
	int out_fd, need_module = 0;
	uint64_t need = HEADER_SIZE, total = 0;
	struct exitlat_info info = { 0 };
	int mod_errno, stale_abi = 0;

	for (int i = 1; i + 1 < argc; i += 2) {
		if (!strcmp(argv[i], "--cmdline"))
			cmd_arg = argv[i + 1];
		else if (!strcmp(argv[i], "--out"))
			out_path = argv[i + 1];
		else if (!strcmp(argv[i], "--console"))
			console_path = argv[i + 1];
	}
	if (cmd_arg) {
		snprintf(cmdline, sizeof(cmdline), "%s", cmd_arg);
	} else {
		int fd = open("/proc/cmdline", O_RDONLY);
		ssize_t n = fd >= 0 ? read(fd, cmdline, sizeof(cmdline) - 1) : -1;
		if (n < 0) {
			emit_error(NULL, "cannot read /proc/cmdline");
			finish(NULL);
		}
		cmdline[n] = 0;
		close(fd);
	}

	/* Pin to CPU 0 first so everything below, hello's "cpu" included, runs there. */
	CPU_ZERO(&cpus);
	CPU_SET(0, &cpus);
	sched_setaffinity(0, sizeof(cpus), &cpus);
	mod_fd = open(EXITLAT_DEVICE, O_RDWR | O_CLOEXEC);
	mod_errno = errno;
	/* A module from another build would misread our structures: treat it as absent. */
	if (mod_fd >= 0 && (ioctl(mod_fd, EXITLAT_IOC_INFO, &info) ||
			    info.abi_version != EXITLAT_ABI_VERSION)) {
		close(mod_fd);
		mod_fd = -1;
		stale_abi = 1;
	}

	parse_plan(cmdline);
	hello();

	/* Run order; exitlat/guestio.py GuestPlan.keys() must list the same. */
	for (size_t i = 0; P.baselines && i < ARRAY_SIZE(baselines); i++)
		add_key(baselines[i].key, baselines[i].instr, baselines[i].where, P.iters, P.warmup, -1);
	for (int i = 0; i < P.ncases; i++) {
		const int c = P.cases[i];

		for (int j = 0; j < (cases[c].s ? 1 : P.nf); j++) {
			const struct instr *in = cases[c].s ? &S_OUTB : P.f[j];
			char name[32], traced[40];

			if (!(in->cases & C(c)))
				continue;
			/* one F instruction: case<n>; several: case<n>_<instruction> */
			if (cases[c].s || P.nf == 1)
				snprintf(name, sizeof(name), "case%d", c);
			else
				snprintf(name, sizeof(name), "case%d_%s", c, in->name);
			add_key(name, in, cases[c].where, P.iters, P.warmup, -1);
			if (P.viters) {		/* the traced window: same path, no warm-up */
				snprintf(traced, sizeof(traced), "%s_traced", name);
				if (strlen(traced) >= sizeof(keys[0].name))
					plan_error("key %s is too long", traced);
				add_key(traced, in, cases[c].where, P.viters, 0, nkeys - 1);
			}
		}
	}
	for (int i = 0; i < nkeys; i++)
		need_module |= keys[i].where != USER;
	if (need_module && stale_abi)
		emit_error(NULL, "%s speaks ABI %u, this probe needs %u (stale exitlat.ko?): cases 3-6 "
			   "and the module baselines will fail", EXITLAT_DEVICE, info.abi_version,
			   EXITLAT_ABI_VERSION);
	else if (need_module && mod_fd < 0)
		emit_error(NULL, "cannot open %s: %s (cases 3-6 and the module baselines will fail)",
			   EXITLAT_DEVICE, strerror(mod_errno));
	for (int i = 0; i < nkeys; i++) {
		need += ALIGN_4K(keys[i].iters * 8);
		total += keys[i].iters;
	}
	out_fd = open_output(need);

	/* All sample memory up front, pre-faulted and locked: fail fast, no page faults later. */
	for (int i = 0; i < nkeys; i++)
		if (!(keys[i].buf = alloc_samples(keys[i].iters)))
			plan_error("cannot allocate %llu MiB for samples (give the guest more memory)",
				   (unsigned long long)(total * 8 >> 20));

	/* Port I/O at CPL 3 (case 2's OUTB, case 1's port kinds): the I/O bitmap, set up once. */
	for (int i = 0; i < nkeys; i++) {
		const struct instr *in = keys[i].instr;
		const int port = in == &S_OUTB ? (int)P.port : in->port;

		if (keys[i].where != USER || port < 0 || keys[i].of >= 0)
			continue;
		if (ioperm(port, in == &S_OUTB ? 1 : 4, 1)) {
			emit_error(keys[i].name, "ioperm(0x%x): %s", port, strerror(errno));
			keys[i].skip = true;
		}
	}
	if (P.handshake) {
		struct termios t;
		console_fd = open(console_path, O_RDWR | O_NOCTTY | O_CLOEXEC);
		if (console_fd < 0)
			plan_error("handshake: cannot open %s: %s", console_path, strerror(errno));
		/* Keep canonical line mode, drop echo so 'go' is not echoed on the serial line. */
		if (!tcgetattr(console_fd, &t)) {
			t.c_lflag &= ~(ECHO | ECHONL);
			tcsetattr(console_fd, TCSANOW, &t);
		}
	}

	/* A traced window runs only when its case's timed window succeeded. */
	for (int i = 0; i < nkeys; i++)
		keys[i].ok = !keys[i].skip && (keys[i].of < 0 || keys[keys[i].of].ok) &&
			     run_key(&keys[i]) == 0;

	write_samples(out_fd);
	return 0;
}
