"""``scale --by-activation``: factors measured by running the model on calibration data,
then written by the ordinary pipeline and measured again on the written model."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from weightcli import activation, framework, pipeline
from weightcli.errors import ParameterError, UsageError
from weightcli.params import OutputSpec
from weightcli.results import ActivationPlan, ByActivationResult
from weightcli.select import Selection
from weightcli.stores import open_store
from weightcli.stores.remote import as_local, as_path

__all__ = ["ByActivationRequest", "ByActivationResult", "run"]


@dataclass(frozen=True)
class ByActivationRequest:
    """Calibration data, the target statistic, and where the output goes."""

    selection: Selection
    calibration: Path
    target: float = 1.0
    stat: str = "mean-abs"
    batch_size: int = 32
    architecture: Path | None = None
    out: OutputSpec = field(default_factory=OutputSpec)
    measure: str = "sequential"
    custom_objects: Path | None = None

    def __post_init__(self) -> None:
        self.out.refuse("allow_nonfinite", command="scale --by-activation")
        activation.check_params(self.target, self.stat, self.batch_size)
        if self.measure not in activation.MEASURES:
            raise ParameterError(f"{{measure}} must be one of {', '.join(activation.MEASURES)}")


class NothingToScaleError(UsageError):
    """No selected layer could be scaled; ``plan`` says why for each layer."""

    def __init__(self, plan: ActivationPlan) -> None:
        super().__init__("no selected layer could be scaled (see the notes above)")
        self.plan = plan

    def __reduce__(self) -> tuple[object, ...]:
        # Raised in the child a command runs in, raised again here: the plan comes along.
        return (NothingToScaleError, (self.plan,))


def run(request: ByActivationRequest, path: str | Path) -> ByActivationResult:
    """Measure, plan, write, and measure again."""
    src = as_path(path)
    with open_store(src) as store:
        out = request.out.plan(store, src)
        if request.out.dry_run:
            out = None
        if request.custom_objects is not None:
            framework.import_custom_objects(request.custom_objects)
        # Keras and numpy read local files only: remote inputs are downloaded.
        architecture = as_local(request.architecture) if request.architecture else None
        model = framework.load_keras_model(as_local(src), store, architecture)
        plan, inputs = activation.plan(
            model,
            store,
            request.selection,
            as_local(request.calibration),
            request.target,
            request.stat,
            request.batch_size,
            request.measure,
        )
        if not plan.factors:
            raise NothingToScaleError(plan)
        step = activation.ActivationStep(plan, request.calibration.name)
        result = pipeline.run(
            store,
            [step],
            out,
            ["scale", str(src), "--by-activation"],
            request.out,
        )
    if out is not None:
        with open_store(out) as written:
            activation.measure_after(
                as_local(out), written, architecture, plan, inputs, request.batch_size
            )
    else:
        activation.measure_live(model, plan, inputs, request.batch_size)
    return ByActivationResult(result, plan)
