"""A batch engine for tests: the batch's own `StudyWorker` run in this process, no pool to start."""

from __future__ import annotations

from cmrsdk.cohort.engines import BatchEngine


class InProcess(BatchEngine):
    """The batch's `StudyWorker` in this process: real reports, no pool to start."""

    name = "in-process"

    def _start(self) -> None:
        from cmrsdk.cohort.worker import StudyWorker

        self.worker = StudyWorker(self.spec, self.threads, self.scratch)

    def run(self, studies):
        for study in studies:
            yield self.worker.run(study)

    _submit = _wait = _recover = None  # type: ignore[assignment]

    def close(self) -> None:
        pass
