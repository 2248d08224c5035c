"""What a local encoder folder's ``config.json`` shows is wrong, answered before torch or MLflow is imported (a
damaged folder used to take the seconds those imports cost before it was named): the file itself (not JSON,
nested too deeply, another format, a NaN or infinite scaling offset), and layer shapes that need more weights
than ``model.safetensors`` holds (checked before anything is allocated). The weights are checked when loaded."""

from __future__ import annotations

from pathlib import Path

from pipeline.errors import InputError
from sae.files import CONFIG_FILE, WEIGHTS_FILE, layer_shapes, read_config

MIN_BYTES_PER_WEIGHT = 2  # the smallest float a weight can be stored as (16-bit)


def check_encoder_folder(directory: Path, where: str) -> None:
    """InputError naming what ``config.json`` shows is wrong with the encoder saved in ``directory``; a folder
    without both files (an MLflow model folder) is left to the loader, which looks inside it."""
    if not ((directory / CONFIG_FILE).is_file() and (directory / WEIGHTS_FILE).is_file()):
        return
    try:
        config = read_config(directory)
    except (OSError, ValueError) as error:
        raise InputError(f"{where}: the encoder files are damaged or not an sae-pipeline encoder ({error}); export "
                         "it again or fetch it from the registry") from None
    try:
        shapes = layer_shapes(config)
    except (KeyError, TypeError, ValueError) as error:
        raise InputError(f"{where}: {CONFIG_FILE} is unreadable ({type(error).__name__}: {error}); export the "
                         "encoder again") from None
    needed = sum(max(d_in, 0) * max(d_hidden, 0) for d_in, d_hidden in shapes) * MIN_BYTES_PER_WEIGHT
    size = (directory / WEIGHTS_FILE).stat().st_size
    if needed > size:
        raise InputError(f"{where}: {CONFIG_FILE} declares layers {shapes} (at least {needed:,} bytes of weights) "
                         f"but {WEIGHTS_FILE} has {size:,} bytes; the folder was altered: export the encoder again")
