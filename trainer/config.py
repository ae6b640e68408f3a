"""TrainConfig from a recipe file and the command line: one source for every default.

The `train` subcommand's options are generated from TrainConfig's fields (`--epochs-stage2`, `--augment-gamma`,
...); a recipe (trainer/recipes/*.toml) sets any of them by field name (augmentation under `[augment]`); an
option given on the command line beats the recipe, the recipe beats the dataclass default.
"""

from __future__ import annotations

import argparse
import dataclasses
import tomllib
import types
import typing
from pathlib import Path
from typing import Any

from trainer.pipeline import AugmentConfig
from trainer.train import TrainConfig

# Fields set by the CLI itself, not as generated options.
_NOT_OPTIONS = {"command", "recipe", "augment"}
_HELP = {
    "data_root": "dataset ROOT with train/ (val/) inside", "run_dir": "logs, checkpoints, report (rerun to resume)",
    "weights": "local ImageNet weights file; 'none' = random initialisation (default: Keras download, online only)",
    "dev_root": "development folder with NORMAL/ and PNEUMONIA/: epoch selection, temperature, operating point; never trained on",
    "export_dir": "model folder to write (e.g. resources/model)",
}
_ALIASES = {"data_root": "--data", "export_dir": "--export", "model_name": "--name", "model_version": "--version"}


def _base_type(annotation: Any) -> type:
    hint = annotation if not isinstance(annotation, str) else eval(annotation, vars(typing) | {"Path": Path})  # noqa: S307 - our own annotations
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    return hint


def _parse_bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def _converter(kind: type):
    return {bool: _parse_bool, Path: Path}.get(kind, kind)


def add_train_options(parser: argparse.ArgumentParser) -> None:
    """One option per TrainConfig field (and per AugmentConfig field, prefixed --augment-); default None = not given."""
    parser.add_argument("--recipe", type=Path, help="TOML recipe (trainer/recipes/*.toml); options given here override it")
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        if f.name in _NOT_OPTIONS:
            continue
        kind = _base_type(hints[f.name])
        flag = _ALIASES.get(f.name, "--" + f.name.replace("_", "-"))
        default = f.default if f.default is not dataclasses.MISSING else None
        flag_style = {"nargs": "?", "const": True} if kind is bool else {}  # `--from-scratch` alone means true
        parser.add_argument(flag, dest=f.name, type=_converter(kind), default=None, **flag_style,
                            help=_HELP.get(f.name, "") + (f" (default: {default})" if default is not None else ""))
    for f in dataclasses.fields(AugmentConfig):
        flag_style = {"nargs": "?", "const": True} if isinstance(f.default, bool) else {}
        parser.add_argument("--augment-" + f.name.replace("_", "-"), dest="augment_" + f.name, **flag_style,
                            type=_converter(type(f.default)), default=None, help=f"augmentation (default: {f.default})")


def read_recipe(path: Path) -> tuple[dict[str, Any], str]:
    text = Path(path).read_text(encoding="utf-8")
    values = tomllib.loads(text)
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = set(values) - known
    if unknown:
        raise ValueError(f"{path}: unknown setting(s) {', '.join(sorted(unknown))}")
    augment_known = {f.name for f in dataclasses.fields(AugmentConfig)}
    bad_augment = set(values.get("augment", {})) - augment_known
    if bad_augment:
        raise ValueError(f"{path}: unknown [augment] setting(s) {', '.join(sorted(bad_augment))}")
    return values, text


def config_from_args(args: argparse.Namespace, command: str) -> TrainConfig:
    values: dict[str, Any] = {}
    recipe_text = ""
    if args.recipe is not None:
        values, recipe_text = read_recipe(args.recipe)
    augment = dict(values.pop("augment", {}))
    for f in dataclasses.fields(AugmentConfig):
        given = getattr(args, "augment_" + f.name)
        if given is not None:
            augment[f.name] = given
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        if f.name in _NOT_OPTIONS:
            continue
        given = getattr(args, f.name)
        if given is not None:
            values[f.name] = given
        elif f.name in values and _base_type(hints[f.name]) is Path:
            values[f.name] = Path(values[f.name])
    for required in ("data_root", "run_dir"):
        if required not in values:
            raise ValueError(f"--{_ALIASES.get(required, required).lstrip('-').replace('_', '-')} is required "
                             "(on the command line or in the recipe)")
    return TrainConfig(**values, augment=AugmentConfig(**augment), command=command, recipe=recipe_text)
