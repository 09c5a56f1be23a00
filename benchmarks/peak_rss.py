"""Peak memory of a child process, measured the same way by every benchmark.

``ru_maxrss`` is inherited across fork/exec: a child of a large parent reports the parent's
peak. The child code therefore starts with :data:`PEAK_RSS`, whose ``reset_peak()`` resets the
kernel's high-water mark (VmHWM) to the current RSS through ``/proc/self/clear_refs`` and returns
``(base_rss, reset)``; ``peak_rss(reset)`` reads VmHWM after the work (``ru_maxrss``, an upper
bound, where the reset is not available).
"""

PEAK_RSS = r'''
import resource


def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024


def reset_peak():
    base = status("VmRSS")
    try:  # "5": reset the peak RSS (VmHWM) to the current RSS, so that what came before is not counted
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return base, status("VmHWM") <= base + (1 << 20)
    except OSError:
        return base, False


def peak_rss(reset):
    return status("VmHWM") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
'''
