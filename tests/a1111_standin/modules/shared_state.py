"""Mirrors modules/shared_state.py State: the job's flags a sampler polls between steps
(interrupted, skipped, stopping_generation) and its progress counters."""


class State:
    skipped = False
    interrupted = False
    stopping_generation = False
    job = ""
    job_no = 0
    job_count = 0
    job_timestamp = '0'
    sampling_step = 0
    sampling_steps = 0

    def __init__(self):
        self.reset()

    def reset(self):
        """No A1111 counterpart: back to a fresh State's values (tests run many jobs in one process;
        A1111's begin() and end() reset them around each job)."""
        self.interrupted = self.skipped = self.stopping_generation = False
        self.sampling_step, self.sampling_steps, self.job_count, self.job_no = 0, 0, 0, 0
        self.job_timestamp = '0'

    def skip(self):
        self.skipped = True

    def interrupt(self):
        self.interrupted = True

    def stop_generating(self):
        self.stopping_generation = True

    def nextjob(self):
        self.job_no += 1
        self.sampling_step = 0
