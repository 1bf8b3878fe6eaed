"""One exception family for bad input: the CLI prints its message as one line and exits non-zero."""


class AmcError(Exception):
    """A user-facing error: the message says what is wrong and, where possible, what to do."""


class CheckpointError(AmcError):
    """A checkpoint that is missing, unreadable, or does not fit the model."""


class DataError(AmcError):
    """A data path that does not exist, is empty, or is not a CIFAR-10 layout."""


class PolicyError(AmcError):
    """A pruning policy naming unknown layers or holding ratios out of range."""


class BudgetError(AmcError):
    """A budget that cannot be met."""


class TrainingDiverged(AmcError):
    """A NaN or Inf loss during finetuning."""
