"""The guest's view of the instruction table, generated: exitlat_instrs.h, the EXITLAT_I_* ids and
the rows the probe plans with, written from exitlat/instructions.py at build time so that the table
is the only place an exit kind is listed.

The initramfs stage reads it from /stage/gen (exitlat.build.stages: Stage.generated) and its text
is one of the stage's hashed inputs, so a change of the table rebuilds the guest. The module keeps
one row per id (EL_INSTRUCTIONS, exitlat_mod.c: the statement one iteration runs) and checks at
compile time that it has exactly one per id; the probe builds f_instrs[] from EXITLAT_F_INSTRS."""

from __future__ import annotations

from exitlat.instructions import (S_INSTRUCTION, TABLE, TESTDEV_DEVICE, TESTDEV_TESTS,
                                  TESTDEV_VALUE, TESTDEV_VENDOR, Instruction, f_instructions)

HEADER = "exitlat_instrs.h"

# Guest-only rows: what the baselines run in place of an instruction. Their ids come first.
GUEST_ONLY = (("NONE", "nothing: baseline_module_call and baseline_kernel_timer"),
              ("NOP", "NOP: baseline_kernel_nonexiting"))


def guest_instructions(table: dict[str, Instruction] | None = None) -> list[Instruction]:
    """The rows the guest runs, in id order: every row with a case (the verifier-only rows have
    none)."""
    return [i for i in (TABLE if table is None else table).values() if i.cases]


def enum_name(name: str) -> str:
    return f"EXITLAT_I_{name.upper()}"


def instruction_ids(table: dict[str, Instruction] | None = None) -> dict[str, int]:
    """EXITLAT_I_* name -> id, as the generated header defines them."""
    names = [f"EXITLAT_I_{n}" for n, _ in GUEST_ONLY] + [
        enum_name(i.name) for i in guest_instructions(table)]
    return {n: k for k, n in enumerate(names)}


def _c_string(text: str) -> str:
    out = []
    for b in text.encode():
        ch = chr(b)
        if ch in '"\\':
            out.append("\\" + ch)
        elif 0x20 <= b < 0x7F:
            out.append(ch)
        else:
            out.append(f"\\{b:03o}")
    return '"' + "".join(out) + '"'


def _cases_mask(cases) -> str:
    return " | ".join(f"EXITLAT_C({c})" for c in cases) or "0"


def render_header(table: dict[str, Instruction] | None = None) -> str:
    """The text of exitlat_instrs.h for `table` (default: exitlat.instructions.TABLE)."""
    table = TABLE if table is None else table
    rows = guest_instructions(table)
    ids = instruction_ids(table)
    f_names = f_instructions(table)
    lines = [
        "/* SPDX-License-Identifier: GPL-2.0 OR MIT */",
        f"/* {HEADER}: generated from exitlat/instructions.py by exitlat/build/guestgen.py at",
        " * build time; do not edit (a change of the table rebuilds the guest). */",
        "#ifndef EXITLAT_INSTRS_H",
        "#define EXITLAT_INSTRS_H",
        "",
        "/* Instruction executed by the module (cases 3-6 and the module baselines). */",
        "enum exitlat_instr {",
    ]
    comments = dict(GUEST_ONLY)
    for name, k in ids.items():
        short = name[len("EXITLAT_I_"):]
        what = comments.get(short) or f"{short.lower()}: exitlat/instructions.py"
        lines.append(f"\t{name} = {k},\t/* {what} */")
    lines += [f"\tEXITLAT_I_COUNT = {len(ids)}", "};", "",
              "/* The MSR, port or pci-testdev test of a kind (the module's statements name them; rdmsr's "
              "is a default). */"]
    for i in rows:
        if i.msr is not None:
            lines.append(f"#define EXITLAT_MSR_{i.name.upper()}\t{i.msr:#x}")
        if i.port is not None:
            lines.append(f"#define EXITLAT_PORT_{i.name.upper()}\t{i.port:#x}")
        if i.ahead:
            lines.append(f"#define EXITLAT_AHEAD_{i.name.upper()}\t{i.ahead:#x}ULL")
        if i.testdev is not None:
            lines.append(f"#define EXITLAT_TESTDEV_{i.name.upper()}\t{i.testdev}")
            lines.append(f"#define EXITLAT_TESTDEV_REG_{i.name.upper()}\t{i.testdev_reg}")
    lines += ["", "/* QEMU's pci-testdev (the mmio_* and pio_* kinds). */",
              f"#define EXITLAT_TESTDEV_VENDOR\t{TESTDEV_VENDOR:#06x}",
              f"#define EXITLAT_TESTDEV_DEVICE\t{TESTDEV_DEVICE:#06x}",
              f"#define EXITLAT_TESTDEV_VALUE\t{TESTDEV_VALUE:#04x}\t/* what every kind writes */",
              "/* its tests' names by number, as the device's header gives them */",
              "#define EXITLAT_TESTDEV_NAMES\t{ " + ", ".join(f'"{t}"' for t in TESTDEV_TESTS)
              + " }",
              "",
              "/* Bit c: case c may run it. */",
              "#define EXITLAT_C(c)\t(1u << (c))", "",
              "/*",
              " * The F instructions (exitlat.instr), the first the default, one row each:",
              " *   X(name, id, cases, user, why_not, port, needs, testdev, reg)",
              " * user: 1 where CPL 3 can run it (case 1): the probe has a WINDOW of that name;",
              " * why_not: why the F cases it leaves out cannot measure it;",
              " * port: the port it always uses (case 1 asks ioperm for it), -1: none;",
              " * needs: the vCPU feature without which the module refuses it (\"\": none);",
              " * testdev, reg: its pci-testdev test and that test's register offset, -1: none.",
              " */",
              "#define EXITLAT_F_INSTRS(X) \\"]
    for n in f_names:
        i = table[n]
        lines.append(f"\tX({n}, {enum_name(n)}, {_cases_mask(i.cases)}, {int(1 in i.cases)}, "
                     f"{_c_string(i.why_not)}, {-1 if i.port is None else hex(i.port)}, "
                     f"{_c_string(i.needs)}, {-1 if i.testdev is None else i.testdev}, "
                     f"{-1 if i.testdev_reg is None else i.testdev_reg}) \\")
    irqs_on = [enum_name(i.name) for i in rows if i.irqs_on]
    lines += ["", "/* 1 for the kinds whose loop turns IRQs on in the window (the table's irqs_on). */",
              "#define EXITLAT_IRQS_ON(i)\t(" + (" || \\\n\t\t\t\t ".join(f"(i) == {n}" for n in irqs_on)
                                                 or "0") + ")"]
    lines += ["", "/* S: the instruction of cases 2, 4 and 6. */",
              f"#define EXITLAT_S_CASES\t({_cases_mask(table[S_INSTRUCTION].cases)})",
              f"#define EXITLAT_I_S\t{enum_name(S_INSTRUCTION)}", "",
              "#endif /* EXITLAT_INSTRS_H */", ""]
    assert len(rows) + len(GUEST_ONLY) == len(ids)
    return "\n".join(lines)


# Generated files: name -> text (what the initramfs stage finds in /stage/gen).
def generated_files() -> dict[str, str]:
    return {HEADER: render_header()}
