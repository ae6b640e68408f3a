"""`pneumo-desktop evaluate`, `calibrate` and `profiles`: local validation and site operating points.

Registered in dispatch.COMMANDS; the shared plumbing (exit codes, model, threshold) is in common.py.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .common import (
    EXIT_INTERRUPTED,
    EXIT_MODEL,
    EXIT_OK,
    PROFILE_HELP,
    PROG,
    THRESHOLD_HELP,
    ProgressBar,
    StopOnSignals,
    UsageError,
    load_model,
    parse_args,
    positive_int,
    threshold_arg,
    use_threshold,
)

if TYPE_CHECKING:
    from pneumo_desktop.core.evaluation import Evaluation
    from pneumo_desktop.core.runtime import PneumoniaModel
    from pneumo_desktop.core.site_profiles import ThresholdChoice


def _sensitivity(text: str) -> float:
    value = threshold_arg(text)
    if value <= 0.0:
        raise argparse.ArgumentTypeError("must be above 0")
    return value


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data", type=Path, metavar="DIR",
                        help="labelled folder with NORMAL/ and PNEUMONIA/ sub-folders, or a CSV of path,label")
    parser.add_argument("--model", type=Path, metavar="DIR", help="model folder (default: the bundled model)")
    parser.add_argument(
        "--fresh", action="store_true", help="score everything again (default: resume REPORT_DIR/scores.csv)"
    )
    parser.add_argument(
        "--resamples", type=positive_int, default=None, metavar="N", help="bootstrap resamples (default 1000)"
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def _evaluate_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"{PROG} evaluate",
        description="Score a labelled folder and report accuracy, precision, sensitivity, specificity, F1, ROC-AUC "
                    "and PR-AUC with 95%% bootstrap intervals, the confusion matrix, plots and an HTML report.",
    )
    _common(parser)
    parser.add_argument("-o", "--output", type=Path, metavar="REPORT_DIR",
                        help="report folder (default: ./evaluation-<DIR name>)")
    parser.add_argument("--threshold", type=threshold_arg, metavar="T", help=THRESHOLD_HELP)
    parser.add_argument("--profile", metavar="NAME", help=PROFILE_HELP)
    parser.add_argument("--json", action="store_true", help="print the metrics as JSON instead of the table")
    parser.add_argument("--audit", choices=("light", "full"),
                        help="add an explanation audit to the report: light = the map's mass outside the body and "
                             "the shortcut ROC-AUCs (4 extra runs per image), full = also deletion/insertion "
                             "(~60 runs per image); see audit-explanations for the complete audit")
    return parser


def _calibrate_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"{PROG} calibrate",
        description="Choose this site's threshold on a labelled folder (the highest specificity with sensitivity "
                    ">= the target) and save it as a site profile for this model.",
    )
    _common(parser)
    parser.add_argument(
        "--sensitivity", type=_sensitivity, required=True, metavar="S", help="minimum sensitivity, e.g. 0.95"
    )
    parser.add_argument("--name", help="profile name (default: the folder's name)")
    parser.add_argument(
        "-o",
        "--output",
        type=Path,
        metavar="REPORT_DIR",
        help="folder for the scores and the report at the new threshold (default: ./calibration-<name>)",
    )
    parser.add_argument("--no-activate", action="store_true", help="save the profile without making it the active one")
    return parser


def _profiles_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"{PROG} profiles", description="List, show or choose the active site profile."
    )
    parser.add_argument("action", nargs="?", choices=("list", "show", "use", "off"), default="list",
                        help="list (default); show NAME; use NAME (make it active); off (back to the model card)")
    parser.add_argument("name", nargs="?", metavar="NAME")
    return parser


def _run_scoring(
    parsed: argparse.Namespace, report_dir: Path, choose: Callable[[PneumoniaModel], ThresholdChoice]
) -> tuple[Evaluation | None, int]:
    from pneumo_desktop.core.evaluation import LabelsError, score_and_evaluate
    from pneumo_desktop.core.metrics import BOOTSTRAP_RESAMPLES

    if not parsed.data.exists():
        raise UsageError(f"input not found: {parsed.data}")
    model = load_model(parsed.model)
    if model is None:
        return None, EXIT_MODEL
    choice = choose(model)
    bar = ProgressBar(sys.stderr, enabled=not parsed.quiet)
    cancel = threading.Event()
    with StopOnSignals(cancel):
        try:
            summary, evaluation = score_and_evaluate(
                parsed.data, report_dir, model, choice, fresh=parsed.fresh, progress=bar.update, cancel=cancel,
                resamples=parsed.resamples or BOOTSTRAP_RESAMPLES,
            )
        except (LabelsError, OSError) as exc:
            raise UsageError(str(exc)) from None
        finally:
            bar.close()
    if evaluation is None:
        print(
            f"{PROG}: interrupted after {summary.scored + summary.errors + summary.resumed} of {summary.total} files; "
            "run the same command again to continue",
            file=sys.stderr,
        )
        return None, EXIT_INTERRUPTED
    return evaluation, EXIT_OK


def evaluate(argv: Sequence[str]) -> int:
    from pneumo_desktop.core.evaluation import to_json, write_report

    parsed = parse_args(_evaluate_parser(), argv)
    if isinstance(parsed, int):
        return parsed
    report_dir = parsed.output or Path.cwd() / f"evaluation-{parsed.data.resolve().name or 'data'}"
    evaluation, code = _run_scoring(
        parsed, report_dir, lambda model: use_threshold(model, parsed.threshold, parsed.profile)
    )
    if evaluation is None:
        return code
    if parsed.audit:
        from .audit import add_audit

        add_audit(evaluation, parsed)
    files = write_report(evaluation, report_dir)
    print(to_json(evaluation.as_dict()) if parsed.json else evaluation.table())
    print(f"report: {files['html']} (plots, metrics.json and scores.csv beside it)", file=sys.stderr)
    return EXIT_OK


def calibrate(argv: Sequence[str]) -> int:
    from pneumo_desktop.core.evaluation import LabelsError, write_report
    from pneumo_desktop.core.site_calibration import calibrate_site, site_evaluation
    from pneumo_desktop.core.site_profiles import (
        SOURCE_CARD,
        ProfileError,
        ThresholdChoice,
        profile_file_name,
        save_profile,
    )

    parsed = parse_args(_calibrate_parser(), argv)
    if isinstance(parsed, int):
        return parsed
    name = (parsed.name or parsed.data.resolve().stem).strip()
    try:
        profile_file_name(name)
    except ProfileError as exc:
        raise UsageError(str(exc)) from None
    report_dir = parsed.output or Path.cwd() / f"calibration-{profile_file_name(name)[:-5]}"
    # Scored at the card's threshold: the probabilities, not the labels, are what calibration uses.
    evaluation, code = _run_scoring(
        parsed, report_dir, lambda model: ThresholdChoice(model.card.threshold, SOURCE_CARD)
    )
    if evaluation is None:
        return code
    try:
        profile = calibrate_site(evaluation, parsed.sensitivity, name)
    except LabelsError as exc:
        raise UsageError(str(exc)) from None
    path = save_profile(profile, activate=not parsed.no_activate)
    at_new = site_evaluation(evaluation, profile)  # the site's calibrated probabilities, threshold and levels
    files = write_report(at_new, report_dir)
    new, old = profile.figures["at_threshold"], profile.figures.get("at_card_threshold")
    print(f'site profile "{profile.name}" saved to {path}' + ("" if parsed.no_activate else " and made active"))
    print(f"rule: {profile.rule['text']}")
    print(f"{'':14s}{'threshold':>10s} {'sensitivity':>12s} {'specificity':>12s} {'accuracy':>9s}")
    if old is not None:
        print(
            f"{'model card':14s}{old['threshold']:10.4f} {old['sensitivity']:12.3f} "
            f"{old['specificity']:12.3f} {old['accuracy']:9.3f}"
        )
    print(
        f"{'this site':14s}{new['threshold']:10.4f} {new['sensitivity']:12.3f} "
        f"{new['specificity']:12.3f} {new['accuracy']:9.3f}"
    )
    if profile.calibration is not None:
        cal = profile.calibration
        print(f"calibration (applied while the profile is active): Platt slope {cal['slope']:.4f}, intercept "
              f"{cal['intercept']:.4f}; expected calibration error ({cal['ece_bins']} bins) {cal['ece_before']:.3f} "
              f"-> {cal['ece_after']:.3f} on these images")
    if profile.levels is not None:
        out, rin, shares = profile.levels["rule_out"], profile.levels["rule_in"], profile.levels["shares"]
        print(f"levels: rule-out {out['threshold']:.4f} (sensitivity {out['sensitivity']:.3f}, specificity "
              f"{out['specificity']:.3f}), rule-in {rin['threshold']:.4f} (sensitivity {rin['sensitivity']:.3f}, "
              f"specificity {rin['specificity']:.3f}); low {shares['low']:.3f}, indeterminate "
              f"{shares['indeterminate']:.3f}, high {shares['high']:.3f} of these images")
    print(f"on {profile.image_count['scored']} images ({profile.image_count['positives']} PNEUMONIA); "
          f"{profile.image_count['refused']} refused and {profile.image_count['errors']} errors left out")
    print(f"report at the new threshold: {files['html']}", file=sys.stderr)
    return EXIT_OK


def profiles(argv: Sequence[str]) -> int:
    from pneumo_desktop.core.site_profiles import (
        ProfileError,
        active_profile_name,
        list_profiles,
        load_profile,
        profiles_dir,
        set_active_profile,
    )

    parsed = parse_args(_profiles_parser(), argv)
    if isinstance(parsed, int):
        return parsed
    try:
        if parsed.action in ("show", "use") and not parsed.name:
            raise UsageError(f"'{PROG} profiles {parsed.action}' needs a profile NAME")
        if parsed.action == "show":
            print(json.dumps(load_profile(parsed.name).as_dict(), indent=2))
        elif parsed.action == "use":
            set_active_profile(parsed.name)
            print(f'active site profile: "{load_profile(parsed.name).name}"')
        elif parsed.action == "off":
            set_active_profile(None)
            print("no active site profile: the model card's threshold is used")
        else:
            active = active_profile_name()
            profiles = list_profiles()
            if not profiles:
                print(f"no site profiles in {profiles_dir()} (make one with '{PROG} calibrate DIR --sensitivity 0.95')")
            for p in profiles:
                mark = "*" if active is not None and p.name == active else " "
                print(f"{mark} {p.name:24s} threshold {p.threshold:.4f}  {p.rule.get('text', '')}  "
                      f"model {p.model_name} {p.model_version} ({p.model_sha256[:12]}...)  {p.created}")
    except ProfileError as exc:
        raise UsageError(str(exc)) from None
    return EXIT_OK
