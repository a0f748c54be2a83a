"""The model file: one ``.safetensors`` file with every weight and the spec that rebuilds them.

Metadata (all strings):
    ``polymodal.format``    file format version
    ``polymodal.spec``      the spec as JSON, with canonical component ids
    ``polymodal.versions``  JSON: polymodal, torch, and each plugin package the spec uses
    ``polymodal.state``     JSON: fitted preprocessing state (vocabularies, statistics), if any

Nothing is ever unpickled: safetensors holds raw tensors and JSON only.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_model

from ._assembly import PolymodalModel, build
from ._errors import ModelFileError, SpecError, first_line
from ._files import atomic_path
from ._registry import Registry, get_registry
from ._spec import validate_spec_data
from ._spec_files import MAX_SPEC_BYTES, SPEC_SUFFIXES, check_spec_size, walk
from ._version import __version__
from ._weights import mismatch_problems, state_mismatch

FORMAT_VERSION = 1
KEY_FORMAT = "polymodal.format"
KEY_SPEC = "polymodal.spec"
KEY_VERSIONS = "polymodal.versions"
KEY_STATE = "polymodal.state"


def _versions(model: PolymodalModel, registry: Registry) -> dict[str, str]:
    versions = {"polymodal": __version__, "torch": torch.__version__.split("+")[0]}
    for _, config in model.spec.components():
        rec = registry.record_for_config(type(config))
        versions.setdefault(rec.package, rec.version)
    return versions


def file_metadata(
    model: PolymodalModel,
    *,
    state: Mapping[str, Any] | None = None,
    registry: Registry | None = None,
) -> dict[str, str]:
    """The metadata a model file of ``model`` holds (an export carries the same)."""
    registry = registry or get_registry()
    metadata = {
        KEY_FORMAT: str(FORMAT_VERSION),
        KEY_SPEC: json.dumps(model.spec.to_dict(registry), sort_keys=False),
        KEY_VERSIONS: json.dumps(_versions(model, registry)),
    }
    fitted = dict(model.fitted_state or {})
    fitted.update(state or {})
    if fitted:
        metadata[KEY_STATE] = json.dumps(fitted)
    return metadata


def save(
    model: PolymodalModel,
    path: str | Path,
    *,
    state: Mapping[str, Any] | None = None,
    registry: Registry | None = None,
) -> Path:
    """Write ``model`` to ``path`` atomically (a temporary file beside it, then a rename); a
    reader of ``path`` sees the old file or the new one, never part of one."""
    if not isinstance(model, PolymodalModel):
        raise TypeError(f"polymodal.save takes a model built by polymodal, not {type(model).__name__}")
    path = Path(path)
    write_weights(model.state_dict(), file_metadata(model, state=state, registry=registry), path)
    return path


class _Weights:
    """A state dict where safetensors' ``save_model`` wants a module: it only asks for the
    state dict, and finds the tensors that share memory in it (a copy made with
    ``copy.deepcopy`` shares them as the model does)."""

    def __init__(self, weights: Mapping[str, torch.Tensor]):
        self.weights = weights

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.weights)


def write_weights(weights: Mapping[str, torch.Tensor], metadata: Mapping[str, str],
                  path: Path) -> None:
    """A model file of ``weights`` (a model's state dict, or a copy of one) and ``metadata``
    (:func:`file_metadata`'s), written atomically: what :func:`save` writes for the model."""
    with atomic_path(path) as tmp:
        save_model(_Weights(weights), str(tmp), metadata=dict(metadata),  # type: ignore[arg-type]
                   force_contiguous=True)


#: The largest safetensors header (tensor index and metadata) read from a model file. A
#: model's index takes about 100 bytes a tensor; fitted vocabularies can take megabytes.
MAX_HEADER_BYTES = 256 * 1024 * 1024


def _header_problem(path: Path) -> str | None:
    """Why the file's header cannot be read (it claims more than the file holds, or more than
    polymodal reads), found before safetensors allocates it; None when it looks sound."""
    with path.open("rb") as file:
        prefix = file.read(8)
    if len(prefix) < 8:
        return None  # safetensors reports a file too short to be one
    header = int.from_bytes(prefix, "little")
    if header > MAX_HEADER_BYTES:
        return (f"its header claims {header:,} bytes; polymodal reads headers of up to"
                f" {MAX_HEADER_BYTES // 2**20} MiB")
    if header + 8 > path.stat().st_size:
        return f"its header claims {header:,} bytes but the file holds {path.stat().st_size:,}"
    return None


def read_metadata(path: str | Path) -> dict[str, str]:
    """The metadata of a polymodal model file, checked; no tensor is read."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: no such model file")
    try:
        problem = _header_problem(path)
        if problem is not None:
            raise ValueError(problem)
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        if path.suffix.lower() in (".onnx", ".pt2"):
            raise ModelFileError(
                f"{path}: an exported model, not a model file; `polymodal predict` reads an ONNX"
                " export too, everything else needs the model file it was exported from") from None
        if path.suffix.lower() in SPEC_SUFFIXES:
            raise ModelFileError(
                f"{path}: this is a spec, not a model file: `polymodal validate` checks a spec,"
                " and `polymodal build` or `polymodal train` makes a model file from it") from None
        raise ModelFileError(
            f"{path}: not a valid safetensors model file ({_reason(exc)});"
            " it may be truncated, corrupt, or another format such as a pickle"
        ) from None
    if KEY_FORMAT not in metadata:
        raise ModelFileError(
            f"{path}: a safetensors file, but not a polymodal model (no {KEY_FORMAT} metadata)"
        )
    try:
        version = int(metadata[KEY_FORMAT])
    except ValueError:
        raise ModelFileError(f"{path}: unreadable {KEY_FORMAT} {metadata[KEY_FORMAT]!r}") from None
    if version > FORMAT_VERSION:
        raise ModelFileError(
            f"{path}: written in model file format {version} by a newer polymodal"
            f" ({versions_of(metadata).get('polymodal', '?')}); this polymodal reads format"
            f" {FORMAT_VERSION}: pip install -U polymodal"
        )
    return metadata


def _reason(exc: BaseException) -> str:
    return first_line(exc)


def versions_of(metadata: Mapping[str, str]) -> dict[str, str]:
    try:
        versions = metadata_json(metadata.get(KEY_VERSIONS, "{}"), "", KEY_VERSIONS)
    except ModelFileError:
        return {}
    return versions if isinstance(versions, dict) else {}


#: How deeply a model file's (or an export's) JSON metadata may nest: the fitted state nests
#: about five levels. Deeper data is hostile, and would exhaust the parser's recursion.
MAX_METADATA_DEPTH = 64


def metadata_json(text: str, source: str | Path, key: str) -> Any:
    """The JSON value of the metadata entry ``key``, bounded in depth; a
    :class:`ModelFileError` naming the entry when it is not JSON or nests too deeply."""
    where = f"{source}: its {key} metadata" if str(source) else f"its {key} metadata"
    try:
        data = json.loads(text)
    except RecursionError:
        raise ModelFileError(f"{where} nests too deeply") from None
    except ValueError as exc:
        raise ModelFileError(f"{where} is not JSON ({exc})") from None
    for _, depth in walk(data):
        if depth > MAX_METADATA_DEPTH:
            raise ModelFileError(f"{where} nests deeper than {MAX_METADATA_DEPTH} levels")
    return data


def spec_of(path: str | Path, registry: Registry | None = None):
    """The validated spec embedded in a model file."""
    return spec_in(read_metadata(path), str(path), registry)


def spec_in(metadata: Mapping[str, str], source: str, registry: Registry | None = None):
    """The validated spec embedded in a model file's metadata (or an export's)."""
    data = embedded_spec_data(source, metadata)
    _drop_retired_training_options(data)
    try:
        return validate_spec_data(data, registry, source=f"{source} (embedded spec)", for_training=False)
    except SpecError as exc:
        raise ModelFileError(_missing_plugin_hint(str(exc), data, metadata)) from None


def embedded_spec_data(path: Path | str, metadata: Mapping[str, str]) -> dict[str, Any]:
    """The plain data of a model file's embedded spec, within the limits of a spec file."""
    text = metadata.get(KEY_SPEC)
    if text is None:
        raise ModelFileError(f"{path}: it has no embedded spec ({KEY_SPEC})")
    if len(text) > MAX_SPEC_BYTES:
        raise ModelFileError(f"{path}: its embedded spec is {len(text) / 2**20:.1f} MiB; a spec"
                             f" may be {MAX_SPEC_BYTES // 2**20} MiB at most")
    try:
        data = json.loads(text)
        check_spec_size(data)
    except json.JSONDecodeError as exc:
        raise ModelFileError(f"{path}: its embedded spec is not JSON ({exc})") from None
    except RecursionError:
        raise ModelFileError(f"{path}: its embedded spec nests too deeply") from None
    except SpecError as exc:
        raise ModelFileError(f"{path}: its embedded spec: {exc}") from None
    if not isinstance(data, dict):
        raise ModelFileError(f"{path}: its embedded spec is not a mapping")
    return data


def _drop_retired_training_options(data: Any) -> None:
    """Files written before ``training.augment`` became an option of the image adapter hold it
    in their spec; augmentation only matters while training, so the trained model loads
    without it."""
    training = data.get("training") if isinstance(data, dict) else None
    if isinstance(training, dict):
        training.pop("augment", None)


def _missing_plugin_hint(message: str, data: Any, metadata: Mapping[str, str]) -> str:
    versions = versions_of(metadata)
    registry = get_registry()
    # Disabled or failed plugins are installed too: the registry's message says why they
    # are not used, and no install line is wanted for them.
    installed = {p.package for p in registry.plugins}
    needed = set()
    for text in json.dumps(data).split('"type": "')[1:]:
        type_id = text.split('"', 1)[0]
        if ":" in type_id:
            needed.add(type_id.split(":", 1)[0])
    missing = sorted(needed - installed)
    if not missing:
        return message
    # The names come from the file, which may come from anyone: only a package polymodal's
    # catalog knows is offered as an install line; others are shown as what the file says.
    known = {extra.package: extra.requirement for extra in registry.catalog.extras}
    lines = [f"{p} {versions[p]}" if p in versions else p for p in missing]
    hint = f"{message}\nThis model needs the plugin package(s) {', '.join(_excerpt(x) for x in lines)}"
    installable = [known[p] for p in missing if p in known]
    unverified = [p for p in missing if p not in known]
    if installable:
        hint += f": pip install {' '.join(installable)}"
    if unverified:
        hint += (f". {', '.join(repr(_excerpt(p)) for p in unverified)}: named by the model file"
                 " only, not a package polymodal's catalog knows; make sure it is the package"
                 " you mean before installing it")
    return hint


def _excerpt(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def check_fitted_state(spec: Any, state: Any, source: str | Path) -> None:
    """Refuse a fitted state that does not fit the spec it is stored with: one without an entry
    for each input and head, or one a component's codec finds wrong (``Codec.check_state``)."""
    from ._data.binding import Binding
    from ._errors import ConfigError

    def refused(reason: str) -> ModelFileError:
        return ModelFileError(f"{source}: its fitted preprocessing ({KEY_STATE}) does not fit its"
                              f" spec: {reason}; the file was changed or mixed up with another")

    if not isinstance(state, dict) or not all(isinstance(state.get(k), dict)
                                              for k in ("inputs", "heads")):
        raise refused("it is not a mapping of `inputs` and `heads`")
    try:
        binding = Binding(spec)
    except SpecError:
        return  # components that read no table: predict refuses them with its own message
    for section, bound in (("inputs", binding.inputs), ("heads", binding.heads)):
        for each in bound:
            fitted = state[section].get(each.name)
            if not isinstance(fitted, dict):
                raise refused(f"it holds no state for {each.where}")
            try:
                each.codec.check_state(fitted)
            except ConfigError as exc:
                raise refused(f"{each.where}{'.' + exc.option if exc.option else ''}:"
                              f" {exc.message}") from None
            except (KeyError, TypeError, ValueError, IndexError) as exc:
                raise refused(f"{each.where}: {type(exc).__name__}: {first_line(exc, 200)}") from None


def load(
    path: str | Path, *, device: str | torch.device = "cpu", registry: Registry | None = None
) -> PolymodalModel:
    """Rebuild the model from the file's spec and load its weights strictly. No network."""
    path = Path(path)
    metadata = read_metadata(path)
    spec = spec_of(path, registry)
    # Building on the meta device skips weight initialisation; the file's tensors are then
    # assigned in place. Buffers a file does not hold (non-persistent) force a regular build.
    with torch.device("meta"):
        model = build(spec, pretrained=False, registry=registry)
    try:
        tensors = load_file(str(path), device=str(device))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelFileError(f"{path}: cannot read its tensors ({_reason(exc)})") from None
    _check_tensors(model, tensors, path)
    try:
        model.load_state_dict(tensors, strict=True, assign=True)
    except RuntimeError as exc:  # torch's message starts with a line that says nothing
        reason = " ".join(line.strip() for line in str(exc).splitlines()[1:4]) or _reason(exc)
        raise ModelFileError(f"{path}: its tensors do not match its spec: {reason}") from None
    if any(t.is_meta for t in list(model.parameters()) + list(model.buffers())):
        model = build(spec, pretrained=False, registry=registry).to(device)
        model.load_state_dict(tensors, strict=True)
    if KEY_STATE in metadata:
        model.fitted_state = metadata_json(metadata[KEY_STATE], path, KEY_STATE)
        check_fitted_state(spec, model.fitted_state, path)
    model.eval()
    return model


def _check_tensors(model: torch.nn.Module, tensors: Mapping[str, torch.Tensor], path: Path) -> None:
    expected = model.state_dict()
    # safetensors' save_model drops names that share storage with another; those are restored
    # from the kept name.
    shared = _shared_names(model)
    missing, unexpected, reshaped = state_mismatch(expected, tensors, may_lack=shared)
    wrong = [f"{k} {tuple(tensors[k].shape)} (spec gives {tuple(expected[k].shape)})"
             for k in reshaped]
    # A float tensor may be stored in another float precision (it is cast on load); a tensor of
    # another kind (integers for floats) was not written by polymodal for this spec.
    kinds = [
        f"{k} {str(tensors[k].dtype).removeprefix('torch.')} (spec gives"
        f" {str(v.dtype).removeprefix('torch.')})"
        for k, v in expected.items()
        if k in tensors and tensors[k].dtype != v.dtype
        and not (tensors[k].is_floating_point() and v.is_floating_point())
    ]
    problems = [f"{len(kinds)} of another type: {', '.join(kinds[:5])}"] if kinds else []
    problems += mismatch_problems(missing, unexpected, wrong)
    if problems:
        raise ModelFileError(f"{path}: its tensors do not match its spec: " + "; ".join(problems))
    for k, v in expected.items():  # another float precision: the spec's, as when built
        if k in tensors and tensors[k].dtype != v.dtype:
            tensors[k] = tensors[k].to(v.dtype)  # type: ignore[index]
    for alias, source in shared.items():
        if alias not in tensors and source in tensors:
            tensors[alias] = tensors[source]  # type: ignore[index]
    _check_finite(model, tensors, path)


def _check_finite(model: torch.nn.Module, tensors: Mapping[str, torch.Tensor], path: Path) -> None:
    """Refuse a file whose weights hold NaN or infinity, or whose buffers hold NaN: such a file
    was damaged or edited, and its model would predict NaN without an error. (A buffer may
    hold an infinity on purpose: a mask of -inf added to attention scores.) One pass a tensor."""
    weights = {name for name, _ in model.named_parameters(remove_duplicate=False)}
    for name, tensor in tensors.items():
        if not tensor.is_floating_point() or tensor.numel() == 0:
            continue
        if name in weights:
            if not bool(torch.isfinite(tensor).all()):
                raise ModelFileError(f"{path}: its tensor {name} holds values that are not"
                                     " finite (NaN or infinite); the file was damaged or edited")
        elif bool(torch.isnan(tensor).any()):
            raise ModelFileError(f"{path}: its tensor {name} holds NaN values; the file was"
                                 " damaged or edited")


def _shared_names(model: torch.nn.Module) -> dict[str, str]:
    """State-dict names that alias an earlier name's tensor."""
    seen: dict[tuple[int, int], str] = {}
    aliases: dict[str, str] = {}
    for name, tensor in model.state_dict(keep_vars=True).items():
        key = (id(tensor), 0)
        if key in seen:
            aliases[name] = seen[key]
        else:
            seen[key] = name
    return aliases
