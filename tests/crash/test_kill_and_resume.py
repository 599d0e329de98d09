"""Kill the resumable jobs with SIGKILL at random moments, rerun the same command until it completes,
and check that nothing was lost, repeated or changed (harness.py says how; jobs.py what is compared).

The search and evaluation records must equal an uninterrupted run's record for record (neither
holds a run-dependent field), and a TALE-PT adapter must equal the uninterrupted one bit for bit.
``TALE_CRASH_KILLS=N`` multiplies the kills (a soak), ``TALE_CRASH_SEED`` shifts the seeds,
``TALE_CRASH_VERBOSE=1`` prints every run's plan and where its kill landed.
"""

from __future__ import annotations

import math
import os

import pytest
from crash.harness import base_seed, crash_test, kill_scale
from crash.jobs import EvalJob, SearchJob, TrainJob

pytestmark = pytest.mark.slow

#: Random kills per job (52 in all; each job also gets one kill before each operation of its startup,
#: about 45 more in all) and each job's seed (plus TALE_CRASH_SEED).
KILLS = {"search": 20, "eval": 20, "train": 12}
SEEDS = {"search": 101, "eval": 202, "train": 303}
JOBS = {"search": SearchJob, "eval": EvalJob, "train": TrainJob}


@pytest.mark.parametrize("name", list(JOBS))
def test_a_killed_job_resumes_to_the_uninterrupted_result(name, crash_inputs, starter, tmp_path):
    if name == "train":
        pytest.importorskip("peft")
        pytest.importorskip("accelerate")
    kills = math.ceil(KILLS[name] * kill_scale())
    rerun = (f"TALE_CRASH_SEED={base_seed()} TALE_CRASH_KILLS={kill_scale():g} python -m pytest "
             f"tests/crash/test_kill_and_resume.py -k {name} -s")
    report = crash_test(JOBS[name](crash_inputs), root=tmp_path, kills=kills, seed=SEEDS[name] + base_seed(),
                        starter=starter, rerun=rerun)
    print(report.summary())
    if os.environ.get("TALE_CRASH_VERBOSE", "") not in ("", "0"):
        print("\n".join(report.history))
    assert report.kills - report.startup_kills == kills
