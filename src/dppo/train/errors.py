"""How training stops short of a finished model."""


class TrainingTerminated(RuntimeError):
    """SIGTERM stopped training after a checkpoint; rerunning the job resumes from it."""


class NonFiniteError(FloatingPointError):
    """A non-finite loss, gradient or weight: the run stops and saves no model."""
