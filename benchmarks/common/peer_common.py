"""What the peer scripts of benchmarks/peers share."""


def vm_hwm_mb():
    """This process's peak resident memory (VmHWM) in MB."""
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    raise RuntimeError("no VmHWM")
