"""Errors a user can cause. The CLI turns each into one line on stderr and a non-zero exit."""


class HamedgeError(Exception):
    """Base class: a problem with the user's input, never a bug in hamedge."""

    exit_code = 2


class SpecError(HamedgeError):
    """A model spec that is inconsistent or unknown."""


class CheckpointError(HamedgeError):
    """A checkpoint that is missing, corrupt, or of another architecture."""


class DataError(HamedgeError):
    """A data set or image that cannot be read."""


class BundleError(HamedgeError):
    """An export bundle that is missing, incomplete or tampered with."""


class BackendUnavailable(HamedgeError):
    """A backend whose software or hardware is absent on this machine."""


class InputRefused(HamedgeError):
    """An input the model was not made for (not a frontal chest radiograph): refused by the
    input gate (hamedge.gate)."""


class HamedgeWarning(UserWarning):
    """Something the user should know that does not stop the command; the CLI prints it as one
    'warning: ...' line."""
