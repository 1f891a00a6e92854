"""What the benchmarks print about the CPU they ran on, since their figures hold only for it."""

import os


def cpu_flags(names):
    """'avx512f yes, amx_bf16 no, ...' for the flags in `names`, from /proc/cpuinfo (all 'no' where it is missing).

    ONEDNN_MAX_CPU_ISA, when set (benchmarks/without_bfloat16.sh sets it), is named too: oneDNN then runs only the
    instructions it allows, whatever the flags say.
    """
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        flags = []
    line = ", ".join(f"{flag} {'yes' if flag in flags else 'no'}" for flag in names)
    isa = os.environ.get("ONEDNN_MAX_CPU_ISA")
    return f"{line}; ONEDNN_MAX_CPU_ISA={isa}" if isa else line
