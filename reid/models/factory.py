"""A researcher's own model: `--model-factory MODULE:FUNCTION [--weights FILE]`, and the probe that
checks any model maps a (B, 3, H, W) batch in [0, 1] to features (B, D) before any work."""

import importlib
import os
import sys

import torch

from reid.runtime import ReidError, first_message_line, load_torch_file


def check_materialised(model, what):
    """A model with parameters or buffers on the meta device (shapes, no values) cannot run."""
    meta = next((n for n, t in (*model.named_parameters(), *model.named_buffers()) if t.is_meta), None)
    if meta is not None:
        raise ReidError(f"{what}: the model's {meta} is on the meta device (no values): load its weights first")


def check_feature_model(model, input_size, device, what, needs_grad=True):
    """One probe pass, before any work: `model` must map a (B, 3, H, W) batch in [0, 1] to
    finite floating-point features (B, D) and, where an attack will follow (`needs_grad`),
    features that depend on the input through autograd. `what` names the model in the
    one-line error."""
    height, width = input_size
    batch = f"a (2, 3, {height}, {width}) batch"
    check_materialised(model, what)
    probe = torch.full((2, 3, height, width), 0.5, device=device, requires_grad=needs_grad)
    was_training = model.training
    model.eval()
    try:
        with torch.set_grad_enabled(needs_grad):
            out = model(probe)
    except Exception as err:  # the user's model: any error is about it
        raise ReidError(f"{what}: the model fails on {batch} ({first_message_line(err)})") from None
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != 2 or out.shape[1] < 1:
        found = f"shape {tuple(out.shape)}" if isinstance(out, torch.Tensor) else f"a {type(out).__name__}"
        raise ReidError(f"{what}: the model maps {batch} to {found}, expected features of shape (B, D)")
    if not out.is_floating_point():
        raise ReidError(f"{what}: the model maps {batch} to {out.dtype} features, expected floating point")
    if not torch.isfinite(out).all():
        raise ReidError(f"{what}: the model maps {batch} to non-finite features (NaN or inf)")
    if needs_grad and not out.requires_grad:
        raise ReidError(f"{what}: the model's features carry no gradient with respect to the images (detached, "
                        "or computed under no_grad), so no gradient attack can run; evaluate it clean (no -a), "
                        "or return features that autograd can follow")


def _state_dict_of(obj):
    """The state dict inside a weights file: itself, or under 'net' (our checkpoints) or
    'state_dict' (torchreid's, fast-reid's 'model'); a 'module.' prefix (DataParallel) dropped."""
    for key in ("net", "state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not (isinstance(obj, dict) and obj and all(isinstance(k, str) for k in obj)):
        return None
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def model_from_factory(spec, weights=None):
    """`--model-factory MODULE:FUNCTION [--weights FILE]`: the torch.nn.Module that
    FUNCTION() returns, MODULE imported from the current directory or PYTHONPATH, with the
    state dict of FILE (read with weights_only=True) loaded strictly. One-line errors."""
    flag = f"--model-factory {spec}"
    module_name, _, function = str(spec).partition(":")
    if not module_name or not function:
        raise ReidError(f"{flag}: expected MODULE:FUNCTION (e.g. my_models:build)")
    cwd = os.getcwd()
    added = cwd not in sys.path and "" not in sys.path
    if added:  # as `python -m` would: the current directory first, for the import and the call
        sys.path.insert(0, cwd)
    try:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            where = " from the current directory or PYTHONPATH" if err.name == module_name.split(".")[0] else ""
            raise ReidError(f"{flag}: cannot import {module_name}{where} ({err})") from None
        except Exception as err:  # the user's module failed while importing
            raise ReidError(f"{flag}: importing {module_name} failed ({first_message_line(err)})") from None
        factory = getattr(module, function, None)
        if not callable(factory):
            raise ReidError(f"{flag}: {module_name} ({getattr(module, '__file__', '?')}) has no function {function}")
        try:
            model = factory()
        except Exception as err:  # the user's function
            raise ReidError(f"{flag}: {function}() failed ({first_message_line(err)})") from None
    finally:
        if added:
            sys.path.remove(cwd)
    if not isinstance(model, torch.nn.Module):
        raise ReidError(f"{flag}: {function}() returned a {type(model).__name__}, expected a torch.nn.Module")
    if weights:
        state = _state_dict_of(load_torch_file(weights, "weights file"))
        if state is None:
            raise ReidError(f"--weights {weights}: expected a state dict (or a checkpoint holding one under "
                            "'net', 'state_dict' or 'model')")
        try:
            model.load_state_dict(state, strict=True)
        except (RuntimeError, TypeError, ValueError) as err:
            raise ReidError(f"--weights {weights}: does not fit the model of {spec} "
                            f"({str(err).strip().splitlines()[0]})") from None
    return model
