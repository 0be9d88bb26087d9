"""Names and sign wording of the headline measures: the one place every table, figure, report and verdict
reads them from, and the ``sign_conventions`` that summary.json carries.

Loss-based forgetting is easy to read backwards (DESIGN §5), so a measure's sign is stated wherever it is
shown. ``label`` spells a measure out (report notes, figure axes, stats); ``column`` is the text tables'
header, ``short`` the per-run table's header and ``abbrev`` the arms table's column, all with their sign.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Measure:
    key: str
    """The summary.json key."""
    label: str
    column: str
    short: str
    abbrev: str
    convention: str | None = None
    """The summary.json ``sign_conventions`` entry (None: not listed there)."""


FORGOT_POS = "+ = forgot"
"""The sign wording of a measure that rises with forgetting (F, F/D, per-phase LM forgetting)."""
FORGOT_NEG = "- = forgot"
"""The sign wording of a measure that falls with forgetting (BWT in both forms)."""
POSITIVE_FORGOT = "positive = forgot"
"""``FORGOT_POS`` spelled out, as ``sign_conventions`` words it."""
NEGATIVE_FORGOT = "negative = forgot"
"""``FORGOT_NEG`` spelled out, as ``sign_conventions`` words it."""


def forgot_more(who: str) -> str:
    """The sign wording of a forgetting difference F(who) - F(other)."""
    return f"+ = {who} forgot more"


MEASURES: dict[str, Measure] = {m.key: m for m in (
    Measure("avg_forgetting", f"avg forgetting (loss, {FORGOT_POS})", f"avg forgetting F ({FORGOT_POS})",
            f"avg forgetting ({FORGOT_POS})", "F", f"loss form, {POSITIVE_FORGOT}"),
    Measure("avg_normalised_forgetting", f"avg normalised forgetting F/D ({FORGOT_POS})",
            f"F/D normalised ({FORGOT_POS})", f"F/D ({FORGOT_POS})", "F/D",
            f"mean of normalised_forgetting; {POSITIVE_FORGOT}"),
    Measure("bwt", f"BWT since first training (loss, {FORGOT_NEG})", f"BWT first ({FORGOT_NEG})",
            f"BWT ({FORGOT_NEG})", "BWT first",
            f"loss form, {NEGATIVE_FORGOT}; against the end of the first phase that trained each domain (GEM)"),
    Measure("bwt_last", f"BWT since last training (loss, {FORGOT_NEG})", f"BWT last ({FORGOT_NEG})",
            f"BWT last ({FORGOT_NEG})", "BWT last",
            f"loss form, {NEGATIVE_FORGOT}; against the end of the last phase that trained each domain"),
    Measure("fwt", "FWT (loss, + = helped)", "FWT (+ = helped)", "FWT (+ = helped)", "FWT",
            "loss form, positive = earlier phases helped"),
    Measure("final_avg_loss", "final avg seen loss (lower = better)", "final avg loss", "final avg seen loss",
            "final A"),
)}

STATS_MEASURES = ("avg_forgetting", "avg_normalised_forgetting", "bwt", "bwt_last", "fwt", "final_avg_loss")
"""The measures the arms tables and the statistics summarise, in column order."""
FORGETTING_MEASURES = ("avg_forgetting", "avg_normalised_forgetting", "bwt", "bwt_last")
"""The text tables' forgetting columns, in order."""

SIGN_CONVENTIONS: dict[str, str] = {
    "avg_forgetting": MEASURES["avg_forgetting"].convention or "",
    "bwt": MEASURES["bwt"].convention or "",
    "bwt_last": MEASURES["bwt_last"].convention or "",
    "fwt": MEASURES["fwt"].convention or "",
    "learned_drop": "loss form, positive = learned: loss before first training minus best loss before the last phase",
    "normalised_forgetting": f"forgetting / learned drop, only where learned drop > 0; {POSITIVE_FORGOT}, "
                             "1 = back to the loss before learning",
    "avg_normalised_forgetting": MEASURES["avg_normalised_forgetting"].convention or "",
    "dead_unit_fraction": "fraction of masked layers' output units (rows) with no input connection; "
                          "higher = more capacity lost",
    "acc_*": "accuracy form, same signs",
}
"""summary.json's ``sign_conventions``, in the order it has always been written."""

SIGNS_NOTE = ("Signs (loss form, lower loss is better): <b>forgetting</b> F = final loss minus the best loss since "
              f"the domain was learned, <b>{FORGOT_POS}</b>; <b>BWT</b> = loss right after learning minus final loss, "
              f"<b>{FORGOT_NEG}</b>; <b>FWT</b> = init loss minus the loss just before the domain's first phase, "
              "<b>+ = earlier phases helped</b>.")
"""The report's sign paragraph (HTML)."""
PHASE_FORGETTING = f"old-domain loss increase in the phase\n(nats/token, {FORGOT_POS})"
"""Axis label of the per-phase LM forgetting of staged runs."""
