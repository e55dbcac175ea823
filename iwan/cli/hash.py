"""`iwan hash ...`: the semantic-hash commands (the group is registered by iwan.cli)."""

from __future__ import annotations

import importlib
import importlib.util
import json
from pathlib import Path

import click
import numpy as np

LAZY_COMMANDS = {"train": ("iwan.cli.hash_train", "train"), "encode": ("iwan.cli.hash_encode", "encode")}
"""Commands defined in other modules, imported only when run or listed in help (training pulls in
torch and the data sets); one whose module is absent is not offered."""


class _HashGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        lazy = [name for name, (module, _) in LAZY_COMMANDS.items() if importlib.util.find_spec(module)]
        return sorted({*super().list_commands(ctx), *lazy})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in self.commands and name in LAZY_COMMANDS:
            module, attribute = LAZY_COMMANDS[name]
            if importlib.util.find_spec(module):
                self.add_command(getattr(importlib.import_module(module), attribute), name)
        return super().get_command(ctx, name)


@click.group("hash", cls=_HashGroup)
def hash_group() -> None:
    """Semantic hashes (Barz & Denzler, WACV 2019): class embeddings, training, codes."""


@hash_group.command("embeddings")
@click.option(
    "--hierarchy",
    "hierarchy_path",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Parent-child file, e.g. data/cifar100/parent-child.txt (class_names.txt beside it is read too).",
)
@click.option(
    "--names",
    "names_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="'id name' file [default: class_names.txt beside the hierarchy, if any].",
)
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="The .npy file to write.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object.")
def embeddings(hierarchy_path: Path, names_path: Path | None, out: Path, as_json: bool) -> None:
    """Write the class embeddings of a hierarchy: row i is class id i, unit norm, and the dot
    product of two rows is the classes' similarity 1 - height(lcs) / height(root)."""
    from hashing.embeddings import write_embeddings
    from hashing.hierarchy import load_hierarchy

    vectors = write_embeddings(hierarchy_path, out, names_path)
    hierarchy = load_hierarchy(hierarchy_path, names_path)
    sim = hierarchy.similarity_matrix()
    off_diagonal = sim[~np.eye(hierarchy.n_classes, dtype=bool)]
    summary = {
        "hierarchy": str(hierarchy_path),
        "out": str(out),
        "classes": hierarchy.n_classes,
        "nodes": len(hierarchy.heights),
        "root": hierarchy.name(hierarchy.root),
        "height": hierarchy.max_height,
        "dimension": int(vectors.shape[1]),
        "max_error": float(np.abs(vectors @ vectors.T - sim).max()),
        "mean_similarity": float(off_diagonal.mean()) if off_diagonal.size else 1.0,
    }
    if as_json:
        click.echo(json.dumps(summary))
        return
    click.echo(
        f"wrote {summary['classes']} class embeddings of dimension {summary['dimension']} to {out}\n"
        f"hierarchy: {summary['nodes']} nodes, root {summary['root']!r}, height {summary['height']}; "
        f"mean similarity between classes {summary['mean_similarity']:.3f}; "
        f"largest |dot - similarity| {summary['max_error']:.1e}"
    )
