"""What the benchmarks say of the machine they ran on."""
import platform


def cpu_name():
    """The CPU's model name, as Linux's /proc/cpuinfo gives it; elsewhere
    what Python's platform module knows: the processor, or the machine's
    architecture."""
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:  # no /proc: not Linux
        pass
    return platform.processor() or platform.machine()
