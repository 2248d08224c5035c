"""Everything a run can find wrong before a server starts or a layer trains: one InputError, exit 2."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlparse

from pipeline.app.limits import check_memory
from pipeline.data.headers import check_names
from pipeline.data.paths import source_path, unlabeled_sources
from pipeline.errors import InputError

if TYPE_CHECKING:
    from pipeline.config import PipelineConfig
    from pipeline.data.loading import LoadedData


def check_accelerator(config: PipelineConfig) -> None:
    """``accelerator: gpu`` needs a GPU that torch can see; ``devices`` must not exceed the GPUs, or (on CPU) the
    cores: each device is a process training on the same cache (they raced on it: a rank read a layer's
    codes while another replaced them). Torch (seconds to import) is asked only where a GPU may be."""
    layers = config.resolved_layers()
    wanted = [s.index for s in layers if s.trainer.accelerator == "gpu"]
    cores = os.cpu_count() or 1
    many = [s for s in layers if isinstance(s.trainer.devices, int) and s.trainer.devices > cores]
    if not wanted and not many:
        return
    on_cpu = not wanted and all(s.trainer.accelerator == "cpu" for s in many)
    gpus = 0 if on_cpu or _no_gpu_device() else _visible_gpus()
    if wanted and not gpus:
        raise InputError(f"layers.{wanted[0]}.trainer.accelerator=gpu, but torch sees no GPU on this machine "
                         f"(torch {version('torch')}); set trainer.accelerator: auto or cpu")
    for layer in many:
        if layer.trainer.accelerator == "cpu" or not gpus or layer.trainer.devices > gpus:
            have = f"{cores} CPU cores" + ("" if on_cpu else f" and {gpus} GPUs" if gpus else " and no GPU")
            raise InputError(f"layers.{layer.index}.trainer.devices={layer.trainer.devices}, but this machine has "
                             f"{have}; set trainer.devices to at most {max(gpus, cores)} (1 trains in this process)")


def _no_gpu_device() -> bool:
    """True where torch cannot see a GPU, told without importing it: Linux with no NVIDIA or AMD device node."""
    return sys.platform.startswith("linux") and not any(os.path.exists(node) for node in ("/dev/nvidiactl", "/dev/kfd"))


def _visible_gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def check_decoder_range(config: PipelineConfig, data: LoadedData) -> None:
    """Unscaled inputs for a sigmoid decoder must lie in [0, 1]: it cannot output anything else."""
    if config.data.scale != "none" or config.layer_settings(0).decoder_activation != "sigmoid":
        return
    from pipeline.data.scaling import column_range

    lo, hi = column_range(data.X_train)
    outside = [(j, float(lo[j]), float(hi[j])) for j in range(lo.shape[0]) if lo[j] < 0.0 or hi[j] > 1.0]
    if outside:
        j, low, high = outside[0]
        raise InputError(
            f"{data.source}: column {data.feature_names[j]!r} (and {len(outside) - 1} more) holds values in "
            f"[{low:.4g}, {high:.4g}], but data.scale=none feeds them unscaled to layers.0's sigmoid decoder, "
            "which only outputs [0, 1]; set data.scale: unit, or layers.0.decoder_activation: linear"
        )


def check_store(config: PipelineConfig) -> None:
    """The tracking store is usable (see ``store_checks``); a local sqlite store's folder and the artifact folder
    beside it are writable; so is the layer cache."""
    from pipeline.tracking.reachable import check_local_store, unwritable
    from pipeline.tracking.store_checks import check_tracking_store
    from pipeline.tracking.uris import artifact_location, sqlite_path

    uri = check_tracking_store(config.tracking_uri)
    db = sqlite_path(uri)
    if db is not None:
        location = artifact_location(uri, config.name)
        check_local_store(uri, db.parent / "mlruns" if location is None else _path(location))
    blocked = unwritable(Path(config.cache_dir).expanduser())
    if blocked is not None:
        raise InputError(f"cache_dir={config.cache_dir!r}: {blocked} cannot be written, so trained layers cannot be "
                         "kept; set cache_dir to a writable folder")


def check_prefect_api(url: str | None = None) -> None:
    """InputError unless the Prefect API a flow will report to (``PREFECT_API_URL``) answers its health check."""
    from pipeline.tracking.reachable import PROBE_SECONDS, unanswered

    url = url or os.environ.get("PREFECT_API_URL")
    if not url:
        return  # a temporary server starts with the flow
    problem = unanswered(f"{url.rstrip('/')}/health", PROBE_SECONDS)
    if problem is not None:
        raise InputError(f"Prefect API {url} is unreachable ({problem}); start the server "
                         "(`sae-pipeline servers start`) or unset PREFECT_API_URL to run on a temporary one")


def prepare_tracking_soon(config: PipelineConfig) -> None:
    """On a thread, while Prefect starts its temporary server: create a new sqlite store's tables (under a file
    lock: runs may race; the first MLflow client waits for them), then warm what the first model log and the
    first plots would otherwise pay for on the run's critical path (MLflow's map of installed packages, ~0.4 s;
    matplotlib's import, ~0.3 s). Call it after Prefect's server module is imported (see
    ``create_sqlite_store_soon``)."""
    from pipeline.tracking.reachable import create_schema_once
    from pipeline.tracking.store import create_sqlite_store_soon
    from pipeline.tracking.uris import resolve_tracking_uri

    create_sqlite_store_soon(resolve_tracking_uri(config.tracking_uri), create_schema_once,
                             then=(_warm_model_logging, _warm_plots))


def _warm_model_logging() -> None:
    from pipeline.tracking.pyfunc import warm_requirement_checks

    warm_requirement_checks()


def _warm_plots() -> None:
    from pipeline.tracking import plots  # noqa: F401


def check_run(config: PipelineConfig) -> LoadedData:
    """Every check that reads no data first (file names, store, cache, servers, accelerator, memory for the
    layers), then read and check the data."""
    for source, field_name in ((config.data.source, "data.source"), (config.data.test_source, "data.test_source")):
        if source is not None:  # the common mistakes answer before torch is imported
            path = source_path(source, field_name)
            if path is not None:
                check_names(path, config.data.features, config.data.labels)
    for field_name, source in unlabeled_sources(config.data):
        source_path(source, field_name)  # a missing or unsupported unlabeled file, before torch too
    check_store(config)
    check_prefect_api()
    check_accelerator(config)
    check_memory(config)
    read = read_files_now(config)
    from pipeline.data.loading import load_data  # scikit-learn and torch: seconds

    data = load_data(config.data, config.seed, read)
    check_decoder_range(config, data)
    return data


def read_files_now(config: PipelineConfig) -> Callable[[Path, Any, Any], Any]:
    """Read and check the data files before the heavy imports (a NaN, a wrong shape or label answers in a second
    or two): data.source, data.test_source, and the data.unlabeled_source files beside a source file; returns the
    reader ``load_data`` takes, which hands it what was read here."""
    from pipeline.data.labels import check_labeled
    from pipeline.data.readers import read_array_file
    from pipeline.data.unlabeled import read_unlabeled

    data, done = config.data, {}
    for source, field_name in ((data.source, "data.source"), (data.test_source, "data.test_source")):
        path = None if source is None else source_path(source, field_name)
        if path is not None:
            done[path] = read_array_file(path, data.features, data.labels)
            y = done[path][1]
            if field_name == "data.source" and y is not None and not data.unlabeled_classes:
                check_labeled(source, y)  # a single class: before scikit-learn and torch (a subsample has no more)

    def read_now(section: Any, source: str, field_name: str) -> Any:
        path = source_path(source, field_name)
        done[path] = read_array_file(path, section.features, section.labels)
        return done[path]

    pool = unlabeled_sources(data)
    first = source_path(data.source, "data.source")
    if first is not None and all(source_path(source, name) is not None for name, source in pool):
        read_unlabeled(data, read_now, done[first][2])  # their columns and widths against the source's, too
    return lambda path, features, labels: done.pop(path) if path in done else read_array_file(path, features, labels)


def _path(file_uri: str) -> Path:
    return Path(unquote(urlparse(file_uri).path))
