#!/usr/bin/env bash
# One real measurement on a host with hardware KVM (VMX/SVM): preflight, every case with the main F
# instructions, the whole exit catalogue, kvm-unit-tests' vmexit.flat beside them, path
# verification on, and the reports. Run as root from the repository.
#   scripts/hw-run.sh [CORE|A,B] [ITERATIONS]   (A,B: the catalogue adds ipi and ipi_halt, the
#   receiver on B; add NO_CONTAINER=1 where Docker is missing)
set -uo pipefail
cd "$(dirname "$0")/.."
core=${1:-}; iters=${2:-100000}
extra=(); [ -n "${NO_CONTAINER:-}" ] && extra+=(--no-container)
# one vCPU on the first core; A,B only where the two-vCPU kinds run (bench refuses it elsewhere)
one=(); both=(); [ -n "$core" ] && one=(--core "${core%%,*}") && both=(--core "$core")
out=${OUTPUT:-results}
grep -qE 'vmx|svm' /proc/cpuinfo || { echo "no VMX/SVM here: this script is for hardware KVM"; exit 2; }
invoke doctor ${core:+--core "$core"}   # A,B: both cores (the IPI kinds run)
invoke build || exit 2
status=0
run() { invoke bench --accel kvm --iterations "$iters" --output "$out" "${extra[@]}" "$@" || status=1; }
# --reference: kvm-unit-tests' vmexit.flat on the same core and QEMU beside case 5 (the calibration)
run "${one[@]}" --case 1-6 --instr cpuid --reference --label "hw-run cpuid"
run "${one[@]}" --case 1,3,5 --instr vmcall --reference --label "hw-run vmcall"
run "${one[@]}" --case 3,5 --instr rdmsr --label "hw-run rdmsr"
run "${one[@]}" --case 5 --instr wrmsr_tsc_deadline --label "hw-run tsc-deadline fastpath"
# the exit catalogue: every kind each F case allows (kinds this CPU lacks are left out, with why),
# with vmexit.flat beside every kind it has a test of
run "${both[@]}" --case 1,3,5 --instr all --reference --label "hw-run catalogue"
# the xAPIC kinds need a guest booted nox2apic: a bench of their own
run "${one[@]}" --case 5 --instr xapic_self_ipi,xapic_ipi_sti_nop,xapic_ipi_tpr --label "hw-run xapic"
invoke results
exit $status
