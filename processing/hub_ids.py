"""Tell a mistyped local path from a Hub repository id before anything is downloaded."""

from pathlib import Path

from huggingface_hub.utils import HFValidationError, validate_repo_id


def require_folder_or_hub_id(location: str | Path, what: str) -> None:
    """Raise FileNotFoundError naming `location` when it is neither a folder nor a possible Hub repository id, so that
    a mistyped path is reported as one rather than as a malformed repository id."""
    location = str(location)
    if Path(location).is_dir():
        return
    try:
        validate_repo_id(location)
    except HFValidationError:
        raise FileNotFoundError(f"no such {what} folder: {location}") from None
