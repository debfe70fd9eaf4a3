"""The training progress bar. With ``train.max_minutes`` set, the run stops when that
wall-clock budget is spent, so the bar counts minutes of the budget (its ETA is the time
left) and the postfix shows the step out of ``max_steps``; with only ``max_steps``, it
counts steps. With ``train.stages`` the budget is the stages' together: their minutes when
every stage has a time budget, else their steps when every stage has a step budget, else an
open count of steps."""

from __future__ import annotations

from tqdm.auto import tqdm

from tuwen.config import TrainConfig
from tuwen.training.state import TrainState


def time_format(minutes: float) -> str:
    """The bar's text: minutes spent of the budget, to a tenth (a hundredth under one)."""
    decimals = 1 if minutes >= 1 else 2
    return (f"{{desc}}: {{percentage:3.0f}}%|{{bar}}| {{n:.{decimals}f}}/{{total:g}} min "
            "[{elapsed}<{remaining}{postfix}]")


def budget(tcfg: TrainConfig) -> tuple[float | None, int | None]:
    """(minutes, steps) of the whole run, as the bar counts them (see the module's text)."""
    if not tcfg.stages:
        return tcfg.max_minutes, tcfg.max_steps
    minutes = [s.max_minutes for s in tcfg.stages]
    steps = [s.max_steps for s in tcfg.stages]
    return (sum(minutes) if None not in minutes else None,
            sum(steps) if None not in steps else None)


class Progress:
    def __init__(self, tcfg: TrainConfig, state: TrainState, enabled: bool = True) -> None:
        self.minutes, self.max_steps = budget(tcfg)
        self.fields: dict[str, str] = {}
        options = {"desc": "train", "disable": not enabled, "dynamic_ncols": True}
        if self.minutes is None:
            self.bar = tqdm(total=self.max_steps, initial=state.step, unit="step", **options)
        else:
            self.bar = tqdm(total=self.minutes, initial=self.done(state), unit="min",
                            bar_format=time_format(self.minutes), **options)

    def done(self, state: TrainState) -> float:
        """Where the bar stands: minutes of the budget spent, or steps done."""
        if self.minutes is None:
            return state.step
        return min(state.elapsed_s / 60, self.minutes)

    def update(self, state: TrainState) -> None:
        """After each optimiser step."""
        if self.minutes is not None:
            self.fields["step"] = (f"{state.step}/{self.max_steps}" if self.max_steps
                                   else str(state.step))
            self.bar.set_postfix(self.fields, refresh=False)
        self.bar.update(self.done(state) - self.bar.n)

    def show(self, record: dict) -> None:
        """After each logged step: the window's mean loss and throughput."""
        self.fields.update(loss=f"{record['loss']:.3f}", sps=f"{record['samples_per_sec']:.0f}")
        self.bar.set_postfix(self.fields)

    def note(self, key: str, text: str) -> None:
        """A field of the postfix that stays until replaced (e.g. the collapse check's)."""
        self.fields[key] = text
        self.bar.set_postfix(self.fields)

    def stage(self, name: str) -> None:
        """The stage a step runs in (``train.stages``), shown while it lasts."""
        if self.fields.get("stage") != name:
            self.note("stage", name)

    def close(self) -> None:
        self.bar.close()
