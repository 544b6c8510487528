"""The study as optuna-dashboard reads it: feasibility, and a front figure with titled axes.

Optuna 5 stores each constraint value under its own system attr (`constraints:macs`, from `Trial.set_constraint`),
while optuna-dashboard 0.21 (the newest) reads only the older list `constraints` (what `constraints_func` wrote),
so it showed every trial of a search with `"constraints": []` and no feasibility. Writing the list too would give
Optuna's samplers every constraint twice (it reads both forms), so the list is added where the dashboard reads
trials instead: `DashboardStorage`, the storage `sslc-dashboard` serves, adds it to each trial it returns; the
study itself is left as Optuna wrote it.

The dashboard's own Pareto plot (drawn by its browser code) never titles its axes, whatever the study declares:
the study's metric names (`StudyRecord.write_definition` sets them) only name the "Objective X / Y" selectors and
the table's columns. So the report's front figure, which has titled axes, the budget line and every kind of
trial, is also saved on the study as one of the dashboard's plotly graph objects (`save_front_figure`), shown on
the study's page; `sslc-report` and the end of a search refresh it.
"""

from __future__ import annotations

import optuna
from optuna.trial import FrozenTrial

_LISTED_CONSTRAINTS = "constraints"  # the system attr optuna-dashboard reads (Optuna's list form)
DASHBOARD_HEIGHT = 450  # px: the box optuna-dashboard 0.21 draws a study's graph objects in
FRONT_FIGURE_ID = "sslc-pareto-front"  # the dashboard graph object `save_front_figure` writes (and overwrites)


def with_listed_constraints(trial: FrozenTrial) -> FrozenTrial:
    """`trial` with its named constraint values also under the list key the dashboard reads (in Optuna's
    order of the names); a trial with none, or with the list already, is returned as is."""
    constraints = trial.constraints
    if not constraints or _LISTED_CONSTRAINTS in trial.system_attrs:
        return trial
    trial.system_attrs = {**trial.system_attrs, _LISTED_CONSTRAINTS: list(constraints.values())}
    return trial


class DashboardStorage(optuna.storages.RDBStorage):
    """An RDB storage whose trials read back with the list of constraint values optuna-dashboard shows as
    feasibility. Only for serving the dashboard: RDBStorage builds fresh trial objects on every read, so nothing
    else sees the list, and writes (notes, a trial told from the dashboard) pass through unchanged."""

    def get_trial(self, trial_id: int) -> FrozenTrial:
        return with_listed_constraints(super().get_trial(trial_id))

    def get_all_trials(self, study_id, deepcopy=True, states=None) -> list[FrozenTrial]:
        return [with_listed_constraints(t) for t in super().get_all_trials(study_id, deepcopy=deepcopy, states=states)]


def save_front_figure(study: optuna.Study, figure) -> None:
    """The report's front figure (a plotly Figure) as the dashboard's graph object FRONT_FIGURE_ID, replacing
    the one saved before. The dashboard draws it in a box half the page wide and 450 px high: the copy it gets
    is that high, its legend below the plot (at the side, it left the plot a sliver)."""
    from optuna_dashboard import save_plotly_graph_object

    narrow = type(figure)(figure)  # a copy: the report keeps its layout
    narrow.update_layout(legend={"orientation": "h", "yanchor": "top", "y": -0.22, "x": 0, "font": {"size": 10}},
                         margin={"l": 60, "r": 20, "t": 60, "b": 20}, height=DASHBOARD_HEIGHT, title_font_size=14)
    save_plotly_graph_object(study, narrow, graph_object_id=FRONT_FIGURE_ID)
