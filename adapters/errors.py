"""Error types of the adapter library: one per failure family, messages a user can act on."""


class AdapterConfigError(ValueError):
    """An adapter or training configuration is invalid (bad method, rank, share mode, ...)."""


class AdapterFileError(ValueError):
    """An adapter file is unreadable, malformed, tampered with or inconsistent with its config."""


class BackboneMismatchError(AdapterFileError):
    """An adapter file was trained on a different backbone than the one it is loaded against."""


class BackboneError(ValueError):
    """A backbone cannot be built or its checkpoint cannot be loaded."""


class TrainStateError(ValueError):
    """A training checkpoint is unreadable, damaged, or belongs to another run than the one resuming."""
