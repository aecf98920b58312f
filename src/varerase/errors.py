"""The one exception family varerase raises for problems a user can fix."""


class VarEraseError(Exception):
    """Base class: a message that says what was wrong and what to do."""


class CheckpointError(VarEraseError):
    """A checkpoint does not match the model it is loaded into."""


class ConfigError(VarEraseError):
    """A configuration value or flag is invalid."""


class DataError(VarEraseError):
    """An input file (prompt pairs, prompt sets) is malformed."""


class VarEraseWarning(UserWarning):
    """Work that will run but likely waste its time; the command line prints it as one line."""
