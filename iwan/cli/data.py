"""`iwan data`: the external data (USF norms, CIFAR, ResNet-50 weights): where it is, and fetching it."""

from __future__ import annotations

from collections.abc import Callable

import click

from iwan.cli.common import CliContext, emit_json, pass_context
from iwan.config import Settings
from iwan.datasets.fetch import MissingDataError, Resource, describe_missing, fetch_all


def _norms(settings: Settings) -> Resource:
    from iwan.datasets.usf_download import usf_resource

    return usf_resource(settings)


def _cifar100(settings: Settings) -> Resource:
    from iwan.datasets.loaders import cifar_resource

    return cifar_resource("cifar100", settings)


def _resnet50(settings: Settings) -> Resource:
    from iwan.vision.predictors import resnet50_weights  # torch: imported only when asked for

    return resnet50_weights(settings)


# What the main job needs and cannot find on a fresh machine. (CIFAR-10 is downloaded by its
# loader when neither its pickles nor its JPEG folders are here.)
RESOURCES: dict[str, Callable[[Settings], Resource]] = {"norms": _norms, "cifar100": _cifar100, "resnet50": _resnet50}

names_argument = click.argument("names", nargs=-1, type=click.Choice(list(RESOURCES)))
json_option = click.option("--json", "as_json", is_flag=True, help="Print a JSON list, one object per piece.")


@click.group()
def data() -> None:
    """External data: the USF norms, CIFAR-100 and ResNet-50's ImageNet weights.

    Local copies live in IWAN_DATA_DIR; each is downloaded once, checked and resumable.
    """


@data.command()
@names_argument
@json_option
@pass_context
def check(ctx: CliContext, names: tuple[str, ...], as_json: bool) -> None:
    """Say where each of NAMES (default: all) is; exit 1 if any is missing.

    Looks at the local copies only, never the network.
    """
    resources = _resources(names, ctx.settings)
    _show(resources, as_json, fetched=None)
    missing = [(r, None) for r in resources if not r.present()]
    if missing:
        raise MissingDataError(describe_missing(missing))


@data.command()
@names_argument
@json_option
@pass_context
def fetch(ctx: CliContext, names: tuple[str, ...], as_json: bool) -> None:
    """Download each of NAMES (default: all) that is not here yet.

    Every missing piece is tried; if any cannot be downloaded, one error names them all and
    where to put each by hand. An interrupted download resumes on the next run.
    """
    resources = _resources(names, ctx.settings)
    fetched = fetch_all(resources, progress=not as_json)
    _show(resources, as_json, fetched={r.name for r in fetched})


def _resources(names: tuple[str, ...], settings: Settings) -> list[Resource]:
    return [RESOURCES[name](settings) for name in dict.fromkeys(names or RESOURCES)]


def _show(resources: list[Resource], as_json: bool, fetched: set[str] | None) -> None:
    rows = []
    for resource in resources:
        missing = resource.missing()
        row = {
            "name": resource.name,
            "title": resource.title,
            "path": str(resource.path),
            "present": not missing,
            "missing": missing,
            "url": resource.url,
        }
        if fetched is not None:
            row["fetched"] = resource.name in fetched
        rows.append(row)
    if as_json:
        emit_json(rows)
        return
    for row in rows:
        state = "fetched" if row.get("fetched") else "present" if row["present"] else "missing"
        click.echo(f"{row['name']:<9} {state:<8} {row['path']}")
