"""The benchmark suite (issues 7 and 16): floor and ceiling, latency, idle CPU, throughput, messages, scaling, profile.

Run it with ``python -m bench`` (``make bench``), or ``python -m bench --quick``
for the seconds-long version the test suite runs.  ``run_bench`` is the API.
"""

from ._launchers import (ClusterSpec, FallbackLauncher, InProcessLauncher, Launcher, LaunchError, ProcessLauncher,
                         RunningCluster, choose_launcher)
from ._run import FULL, QUICK, STEPS, BenchSettings, run_bench, with_steps

__all__ = ["FULL", "QUICK", "STEPS", "BenchSettings", "ClusterSpec", "FallbackLauncher", "InProcessLauncher",
           "LaunchError", "Launcher", "ProcessLauncher", "RunningCluster", "choose_launcher", "run_bench",
           "with_steps"]
