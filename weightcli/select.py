"""Which tensors a command touches: globs on canonical names, layer classes, kinds.

Default: every floating-point model weight; optimizer state and integer tensors
only when asked.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass

from weightcli.errors import UsageError
from weightcli.stores.naming import QUANT_PARAMS
from weightcli.tensor import TensorInfo


@dataclass(frozen=True)
class Selection:
    select: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    layer_types: tuple[str, ...] = ()
    kinds: tuple[str, ...] = ()
    include_optimizer: bool = False
    floats_only: bool = True

    @property
    def explicit(self) -> bool:
        """True when the user named tensors (globs or kinds), not just the defaults."""
        return bool(self.select or self.kinds)

    def matches(self, t: TensorInfo) -> bool:
        if t.optimizer and not self.include_optimizer:
            return False
        if self.floats_only and not t.is_float:
            return False
        # A quantized layer's scales are how to read its codes, not weights: transforms
        # reach them through the layer's kernel (scale) or only when named by kind.
        if self.floats_only and t.quantized and t.kind in QUANT_PARAMS and t.kind not in self.kinds:
            return False
        names = (t.name, *t.aliases)
        if self.select and not any(match(n, g) for n in names for g in self.select):
            return False
        if any(match(n, g) for n in names for g in self.exclude):
            return False
        if self.layer_types and (t.layer_class or "") not in self.layer_types:
            return False
        return not (self.kinds and t.kind not in self.kinds)


def match(name: str, pattern: str) -> bool:
    """Glob on a canonical name; a pattern without wildcards also matches a name prefix (a layer)."""
    if fnmatch.fnmatchcase(name, pattern):
        return True
    if not any(c in pattern for c in "*?["):
        return name.startswith(pattern.rstrip("/") + "/")
    return False


def selection(
    select: Sequence[str] = (),
    exclude: Sequence[str] = (),
    layer_types: Sequence[str] = (),
    kinds: Sequence[str] = (),
    include_optimizer: bool = False,
    floats_only: bool = True,
) -> Selection:
    """A Selection from plain lists; layer classes and kinds may be comma-separated."""
    return Selection(
        select=tuple(select),
        exclude=tuple(exclude),
        layer_types=split_list(layer_types),
        kinds=split_list(kinds),
        include_optimizer=include_optimizer,
        floats_only=floats_only,
    )


def split_list(values: Sequence[str]) -> tuple[str, ...]:
    """``("Dense,Conv2D", "BatchNormalization")`` -> each name once."""
    out: list[str] = []
    for v in values:
        out.extend(p.strip() for p in v.split(",") if p.strip())
    return tuple(dict.fromkeys(out))


def apply(
    tensors: Sequence[TensorInfo], sel: Selection, has_config: bool, what: str = "the selection"
) -> list[TensorInfo]:
    """The selected tensors; a selection that matches nothing is an error naming some that exist."""
    if sel.layer_types and not has_config and not any(t.layer_class for t in tensors):
        raise UsageError.naming(
            "{layer_types} needs layer classes, and this file records none (no model config)"
        )
    chosen = [t for t in tensors if sel.matches(t)]
    if not chosen:
        candidates = [t.name for t in tensors if sel.include_optimizer or not t.optimizer]
        if not candidates:
            raise UsageError(f"{what} matches no tensor: the file holds no model weights")
        shown = ", ".join(candidates[:6]) + (", ..." if len(candidates) > 6 else "")
        raise UsageError(f"{what} matches no tensor; tensors here include: {shown}")
    return chosen
