"""What the benchmarks print about the CPU they ran on, since their figures hold only for it."""


def cpu_flags(names):
    """'avx512f yes, amx_bf16 no, ...' for the flags in `names`, from /proc/cpuinfo (all 'no' where it is missing)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        flags = []
    return ", ".join(f"{flag} {'yes' if flag in flags else 'no'}" for flag in names)
