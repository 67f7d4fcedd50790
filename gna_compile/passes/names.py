"""The model's own module names for attention calls, however the model was captured.

Dynamo names a call by a path relative to the frame it compiled (``L['self'].attn``). When
that frame is a block (a graph break in the parent's block loop, regional compilation), the
path says nothing about which block, and one graph can serve every block. The names here
come from the Python call stack instead: the modules whose ``forward`` is running, the
outermost being the root whose ``named_modules()`` names are the model's names.
"""

from __future__ import annotations

import re
import sys
import weakref

import torch

__all__ = ["stack_modules", "root_names", "qualify", "relative_path", "source_path", "frame_root"]

_NAMES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _unwrap(m):
    return getattr(m, "_orig_mod", m)


def stack_modules(depth: int = 400) -> list:
    """nn.Modules whose calls are on the Python stack, innermost first (compile wrappers
    unwrapped, duplicates removed)."""
    out, seen = [], set()
    f = sys._getframe(1)
    while f is not None and depth > 0:
        m = f.f_locals.get("self")
        if isinstance(m, torch.nn.Module):
            m = _unwrap(m)
            if id(m) not in seen:
                seen.add(id(m))
                out.append(m)
        f, depth = f.f_back, depth - 1
    return out


def root_names(root) -> dict:
    """``{id(module): qualified name}`` for every submodule of ``root`` (cached per root)."""
    root = _unwrap(root)
    got = _NAMES.get(root)
    if got is None or got[0] != _structure_key(root):
        names = {id(m): n for n, m in root.named_modules(remove_duplicate=False)}
        got = (_structure_key(root), names)
        _NAMES[root] = got
    return got[1]


def _structure_key(root):
    return sum(1 for _ in root.modules())


def _strip_wrappers(path: str) -> str:
    """Drop the hops a module hook adds between a module and its child (diffusers' hooks
    replace ``forward`` by a partial or closure over the module): ``x.forward.__self__`` and
    ``x.forward.func.__closure__.0.cell_contents`` are ``x`` again."""
    path = re.sub(r"(?:^|\.)\w+\.func\.__closure__\.\d+\.cell_contents(?=\.|$)", "", path)
    path = re.sub(r"(?:^|\.)\w+\.__self__(?=\.|$)", "", path)
    return re.sub(r"\.+", ".", path).strip(".")


def relative_path(path: str) -> tuple[str, str]:
    """Split Dynamo's ``L['self'].blocks[0].attn`` into its frame-local root (``L['self']``)
    and the module path below it (``blocks.0.attn``)."""
    m = re.match(r"^(L\['[^']*'\](?:\[\d+\])*)\.?(.*)$", path)
    if not m:
        return "", path
    rest = re.sub(r"(?:^|\.)__dict__\['_modules'\]|(?:^|\.)_modules(?=\[)", "", m.group(2))
    rest = re.sub(r"\[(\d+)\]|\['([^']*)'\]", lambda g: "." + (g.group(1) or g.group(2)), rest)
    return m.group(1), _strip_wrappers(rest)


def _walk(obj, path: str):
    """The object Dynamo's path (``.blocks[0].forward.func.__closure__[0].cell_contents``)
    reaches from ``obj``, or None if a step fails (hooks put closures and partials between a
    module and its child; walking the real objects sees through any of them)."""
    for attr, idx, key in re.findall(r"\.(\w+)|\[(\d+)\]|\['([^']*)'\]", path):
        try:
            obj = getattr(obj, attr) if attr else obj[int(idx)] if idx else obj[key]
        except (AttributeError, IndexError, KeyError, TypeError, ValueError):
            return None
    return obj


def source_path(source: str) -> tuple[str, str]:
    """Dynamo's source of a parameter (``L['s']._modules['attn']._parameters['weight']``) as
    (frame-local root, dotted path below it)."""
    m = re.match(r"^(L\['[^']*'\](?:\[\d+\])*)(.*)$", source)
    if not m:
        return "", ""
    rest = re.sub(r"\._(?:modules|parameters|buffers)\['([^']*)'\]|\.([A-Za-z_]\w*)",
                  lambda g: "." + (g.group(1) or g.group(2)), m.group(2))
    rest = re.sub(r"\[(\d+)\]", lambda g: "." + g.group(1), rest)
    return m.group(1), _strip_wrappers(rest)


def frame_root(local: str, modules: list, params: list):
    """The module a frame-local root (``L['s']``) stands for: the stack module owning one of
    the graph's parameters at the path the parameter's source names, else (for ``self``) the
    innermost stack module, else None."""
    for src, tensor in params:
        loc, p = source_path(src)
        if loc != local or not p:
            continue
        for m in modules:
            try:
                if m.get_parameter(p) is tensor:
                    return m
            except (AttributeError, TypeError):
                continue
    if local == "L['self']" and modules:
        return modules[0]
    return None


def qualify(path: str, modules: list, params: list = ()) -> tuple[str, object]:
    """(model name, frame-root module) for a call whose Dynamo path is ``path``, given the
    modules on the stack (innermost first) and the graph's parameter inputs as (source,
    tensor). Names are relative to the outermost module on the stack."""
    local, rest = relative_path(path)
    if not modules:
        return rest or "<top>", None
    names = root_names(modules[-1])
    frame = frame_root(local, modules, params) if local else modules[0]
    target = _walk(frame, path[len(local):]) if frame is not None and local else None
    if isinstance(target, torch.nn.Module) and id(_unwrap(target)) in names:
        return names[id(_unwrap(target))] or "<top>", frame  # the module the path reaches, by identity
    base = names.get(id(frame), None) if frame is not None else None
    if base is None:
        return rest or "<top>", frame
    full = ".".join(p for p in (base, rest) if p)
    return full or "<top>", frame
