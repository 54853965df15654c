"""Reporting commands: tables (TSV + Markdown) and figures."""

from __future__ import annotations

from pathlib import Path

import click

from pefts.cli.options import parse_floats
from pefts.errors import PeftsError
from pefts.option_types import MD_OUT, NON_NEGATIVE, RUN


def write_table(table, out_tsv: str, out_md: str, markdown: str) -> str:
    """Every table goes out twice: TSV for programs, Markdown for papers."""
    from pefts.runtime.artifacts import atomic_write_text

    atomic_write_text(out_tsv, table.to_csv(sep="\t", index=False))
    atomic_write_text(out_md, markdown)
    return markdown


def read_runs(runs, mixed: bool = False) -> tuple[list, list[dict]]:
    """The runs' rows and how each was certified; runs certified differently are refused
    unless ``mixed``."""
    from pefts.certification.results import check_same_images, read_tsv
    from pefts.runtime.provenance import check_comparable

    if not runs:
        raise PeftsError("give at least one --run METHOD SIGMA TSV")
    frames = [(method, sigma, read_tsv(path)) for method, sigma, path in runs]
    certs = check_comparable(runs, mixed)
    # --mixed allows other certification settings, never other images
    check_same_images([(path, frame) for (_, _, path), (_, _, frame) in zip(runs, frames, strict=True)])
    return frames, certs


def mixed_option(func):
    return click.option("--mixed", is_flag=True,
                        help="allow runs certified differently (mode, n, n0, alpha, precision, "
                             "stopping rule, sound); each is then labelled with its settings")(func)


@click.command()
@click.option("--run", "runs", multiple=True, type=RUN, help="METHOD SIGMA merged.tsv (repeat)")
@click.option("--radii", default="0,0.25,0.5,0.75,1.0", show_default=True)
@click.option("--out-tsv", required=True, type=click.Path(dir_okay=False))
@click.option("--out-md", required=True, type=click.Path(dir_okay=False))
@mixed_option
def summarize(runs, radii, out_tsv, out_md, mixed) -> None:
    """Certified accuracy at a radius grid and ACR, per method and sigma, with how each
    run was certified (extra columns in the TSV, a caption in the Markdown)."""
    from pefts.certification.results import summarize as table_of
    from pefts.certification.results import summary_markdown, with_certification
    from pefts.runtime.files import refuse_clashes

    grid = parse_floats(radii, "--radii", 0.0)
    refuse_clashes({"--out-tsv": out_tsv, "--out-md": out_md}, [p for _, _, p in runs])
    frames, certs = read_runs(runs, mixed)
    table = with_certification(table_of(frames, grid), certs)
    click.echo(write_table(table, out_tsv, out_md, summary_markdown(table)), nl=False)


@click.command()
@click.option("--run", "runs", multiple=True, type=RUN, help="METHOD SIGMA merged.tsv (repeat)")
@click.option("--out", "pattern", required=True,
              help="PNG path with {sigma}: one figure per sigma, one line per method "
                   "(a plain path when every run has the same sigma)")
@mixed_option
def plot(runs, pattern, mixed) -> None:
    """Certified accuracy against L2 radius (paper Figure 3); a footnote says how the
    runs were certified."""
    from pefts.reporting.plots import plot_certified_curves
    from pefts.runtime.files import refuse_clashes
    from pefts.runtime.provenance import describe_certification

    loaded, certs = read_runs(runs, mixed)
    sigmas = sorted({s for _, s, _ in loaded})
    if "{sigma}" not in pattern and len(sigmas) > 1:
        raise PeftsError("--out must contain {sigma} when the runs have several sigmas, "
                         "e.g. results/figures/certified_sigma{sigma}.png")
    outs = {f"--out (sigma {s:g})": pattern.replace("{sigma}", f"{s:g}") for s in sigmas}
    refuse_clashes(outs, [p for _, _, p in runs])
    same = all(c == certs[0] for c in certs)
    for sigma in sigmas:
        curves = [(method if same else f"{method}: {describe_certification(cert)}", frame)
                  for (method, s, frame), cert in zip(loaded, certs, strict=True) if s == sigma]
        out = pattern.replace("{sigma}", f"{sigma:g}")
        note = ("certified: " + describe_certification(certs[0]) if same
                else "certified with different settings (mixed): see each line")
        plot_certified_curves(curves, f"certified accuracy, sigma = {sigma:g}", out, note)
        click.echo(f"sigma={sigma:g}: {len(curves)} method(s) -> {out}")


@click.command("plot-vs-sigma")
@click.option("--summary", required=True, type=click.Path(dir_okay=False),
              help="summary TSV from `pefts summarize`")
@click.option("--columns", default="r=0,ACR", show_default=True,
              help="comma-separated summary columns, one panel each")
@click.option("--title", default="", help="figure title")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="PNG")
def plot_vs_sigma(summary, columns, title, out) -> None:
    """Summary columns against sigma, one line per method (paper Figure 8)."""
    from pefts.certification.results import certification_note
    from pefts.reporting.plots import plot_against_sigma
    from pefts.runtime.files import refuse_clashes

    refuse_clashes({"--out": out}, [summary])
    table = read_summary(summary)
    wanted = [c.strip() for c in columns.split(",") if c.strip()]
    missing = [c for c in wanted if c not in table.columns]
    if missing or not wanted:
        raise PeftsError(f"{summary} has no column(s) {', '.join(missing) or '(none given)'}; "
                         f"it has {', '.join(table.columns)}")
    plot_against_sigma(table, wanted, title, out, certification_note(table))
    click.echo(f"{len(wanted)} panel(s) -> {out}")


def read_summary(path: str, writer: str = "pefts summarize"):
    """A TSV another command wrote (``pefts.certification.results.read_written_table``)."""
    from pefts.certification.results import read_written_table

    return read_written_table(path, writer)


@click.command("noise-accuracy")
@click.option("--run", "runs", multiple=True, type=RUN,
              help="METHOD SIGMA model.safetensors (repeat)")
@click.option("--out-tsv", required=True, type=click.Path(dir_okay=False))
@click.option("--out-md", required=True, type=click.Path(dir_okay=False))
@click.option("--figure", required=True, type=click.Path(dir_okay=False))
def noise_accuracy(runs, out_tsv, out_md, figure) -> None:
    """Accuracy on noisy inputs against sigma per method (paper Figure 2)."""
    from pefts.certification.results import to_markdown
    from pefts.reporting.noise_learning import noise_accuracy_table
    from pefts.reporting.plots import plot_lines
    from pefts.runtime.files import refuse_clashes

    if not runs:
        raise PeftsError("give at least one --run METHOD SIGMA model.safetensors")
    refuse_clashes({"--out-tsv": out_tsv, "--out-md": out_md, "--figure": figure},
                   [p for _, _, p in runs])
    table = noise_accuracy_table(runs)
    markdown = write_table(table, out_tsv, out_md, to_markdown(table))
    plot_lines(table, "sigma", "noisy accuracy", "method", "accuracy of f on x + noise", figure,
               ylabel="accuracy on noisy test images")
    click.echo(markdown, nl=False)


@click.command()
@click.option("--run", "runs", multiple=True, type=RUN,
              help="METHOD SIGMA model.safetensors (repeat)")
@click.option("--summary", required=True, type=click.Path(dir_okay=False),
              help="summary TSV from `pefts summarize`")
@click.option("--radius", default=0.0, show_default=True, type=NON_NEGATIVE,
              help="radius of the figure's accuracy")
@click.option("--out-tsv", required=True, type=click.Path(dir_okay=False))
@click.option("--out-md", required=True, type=click.Path(dir_okay=False))
@click.option("--figure", required=True, type=click.Path(dir_okay=False))
def parameters(runs, summary, radius, out_tsv, out_md, figure) -> None:
    """Trainable parameters per method (Table 2) and accuracy against them (Figure 4)."""
    from pefts.certification.results import certification_note
    from pefts.reporting.parameters import accuracy_vs_parameters, parameter_markdown, parameter_table
    from pefts.reporting.plots import plot_lines
    from pefts.runtime.files import refuse_clashes

    if not runs:
        raise PeftsError("give at least one --run METHOD SIGMA model.safetensors")
    refuse_clashes({"--out-tsv": out_tsv, "--out-md": out_md, "--figure": figure},
                   [summary, *[p for _, _, p in runs]])
    summary_table = read_summary(summary)
    table = parameter_table(runs)
    markdown = write_table(table, out_tsv, out_md, parameter_markdown(table))
    column = f"r={radius:g}"
    points = accuracy_vs_parameters(table, summary_table, column)
    points = points.assign(trainable=points["trainable"].clip(lower=1))  # none has 0: log axis
    plot_lines(points, "trainable", column, "sigma", f"certified accuracy at r = {radius:g}",
               figure, logx=True, xlabel="trainable parameters (none plotted at 1)",
               ylabel=f"certified accuracy (r = {radius:g})", labels="method", connect=False,
               note=certification_note(summary_table))
    click.echo(markdown, nl=False)


@click.command("docs-page")
@click.option("--head", required=True, type=click.Path(exists=True, dir_okay=False),
              help="the page's prose (Markdown), written by hand")
@click.option("--section", "sections", multiple=True,
              type=(str, click.Path(exists=True, dir_okay=False)),
              help="HEADING FILE: a table written by a command, under its heading (repeat)")
@click.option("--by", required=True, help="the command that regenerates the page, named on it")
@click.option("--out", required=True, type=MD_OUT)
def docs_page(head, sections, by, out) -> None:
    """A page of docs/: hand-written prose, then tables that commands wrote (never pasted)."""
    from pefts.reporting.pages import assembled_page
    from pefts.runtime.files import atomic_write_text, refuse_clashes

    refuse_clashes({"--out": out}, [head, *[path for _, path in sections]])
    page = assembled_page(Path(head).read_text(), list(sections), by)
    atomic_write_text(out, page)
    click.echo(f"{out}: {len(sections)} table(s) under the prose of {head}")


@click.command("compare-paper")
@click.option("--dataset", required=True, type=click.Choice(["cifar10", "imagenet"]),
              help="which of the paper's tables to compare with")
@click.option("--run", "runs", multiple=True, type=RUN, help="METHOD SIGMA merged.tsv (repeat)")
@click.option("--parameters", "params", required=True, type=click.Path(dir_okay=False),
              help="parameter TSV from `pefts parameters`")
@click.option("--out-tsv", required=True, type=click.Path(dir_okay=False))
@click.option("--out-md", required=True, type=MD_OUT)
@mixed_option
def compare_paper(dataset, runs, params, out_tsv, out_md, mixed) -> None:
    """Our certified accuracy and parameter counts beside every cell of the paper's
    Tables 1 and 2 and Figure 7's numbers (its values kept as cited data in
    pefts/reporting/paper_values.py): prior work at r = column, the PEFT rows at r = 0 and at
    r = column, the RS and LEE rows as the paper's reference rows."""
    import pandas as pd

    from pefts.reporting.paper_comparison import (
        comparison_markdown,
        figure7_comparison,
        table1_comparison,
        table2_comparison,
    )
    from pefts.reporting.parameters import read_parameter_table
    from pefts.runtime.files import refuse_clashes
    from pefts.runtime.provenance import describe_certification

    refuse_clashes({"--out-tsv": out_tsv, "--out-md": out_md}, [params, *[p for _, _, p in runs]])
    frames, certs = read_runs(runs, mixed)
    table1 = table1_comparison(dataset, frames)
    figure7 = figure7_comparison(dataset, frames)
    table2 = table2_comparison(read_parameter_table(params))
    same = all(c == certs[0] for c in certs)
    note = ("ours certified: " + describe_certification(certs[0]) if same
            else "ours certified with different settings (mixed)")
    parts = [table1.assign(table="1"), figure7.assign(table="figure 7"),
             table2.rename(columns={"paper": "paper params", "ours": "ours params"})
             .assign(table="2")]
    both = pd.concat([p for p in parts if len(p)], ignore_index=True)
    click.echo(write_table(both, out_tsv, out_md,
                           comparison_markdown(dataset, table1, table2, note, figure7)), nl=False)


@click.command("compare-sound")
@click.option("--standard", required=True, type=click.Path(dir_okay=False),
              help="merged TSV of the run in the standard mode")
@click.option("--sound", required=True, type=click.Path(dir_okay=False),
              help="merged TSV of the same run certified with --sound")
@click.option("--radii", default="0,0.25,0.5,0.75,1.0", show_default=True)
@click.option("--out-tsv", required=True, type=click.Path(dir_okay=False))
@click.option("--out-md", required=True, type=MD_OUT)
def compare_sound(standard, sound, radii, out_tsv, out_md) -> None:
    """One run in the standard and the sound mode side by side: certified counts at each
    radius, samples drawn and seconds (refused unless they are the same run)."""
    from pefts.reporting.sound_comparison import comparison_markdown, comparison_table
    from pefts.runtime.files import refuse_clashes

    grid = parse_floats(radii, "--radii", 0.0)
    refuse_clashes({"--out-tsv": out_tsv, "--out-md": out_md}, [standard, sound])
    table = comparison_table(standard, sound, grid)
    click.echo(write_table(table, out_tsv, out_md, comparison_markdown(table, standard)), nl=False)


@click.command("plot-curves")
@click.option("--run", "runs", multiple=True, type=RUN,
              help="LABEL SIGMA model.safetensors (repeat): its curve is model.curve.tsv")
@click.option("--base", "bases", multiple=True, type=click.Path(dir_okay=False),
              help="a base classifier's weights (repeat): their curves in the figure of run 'base'")
@click.option("--out", "pattern", required=True,
              help="PNG path with {run}: one figure per label, one line per sigma")
def plot_curves(runs, bases, pattern) -> None:
    """Training curves (pefts.training.curves) of fine-tuned models: loss, noisy training and
    validation accuracy, learning rate and samples/s against the epoch."""
    from pefts.reporting.plots import plot_training_curves
    from pefts.runtime.files import refuse_clashes
    from pefts.training.curves import curve_path, read_curve, run_table

    labels = list(dict.fromkeys(label for label, _, _ in runs)) + (["base"] if bases else [])
    if "{run}" not in pattern and len(labels) > 1:
        raise PeftsError("--out must contain {run} when the runs have several labels, "
                         "e.g. results/figures/training_curves_{run}.png")
    refuse_clashes({f"--out ({label})": pattern.replace("{run}", label) for label in labels},
                   [*(m for _, _, m in runs), *bases])
    for label in labels:
        drawn, missing = [], []
        lines = ([(f"sigma {sigma:g}", model) for run, sigma, model in runs if run == label]
                 if label != "base" or not bases else [(Path(b).parent.name or b, b) for b in bases])
        for name, model in lines:
            rows = read_curve(curve_path(model))
            if rows:
                drawn.append((name, run_table(rows)))
            else:
                missing.append(name)
        note = (f"no curve (nothing trained, or trained by an older pefts): {', '.join(missing)}"
                if missing else None)
        out = pattern.replace("{run}", label)
        plot_training_curves(drawn, f"training curves: {label}", out, note)
        click.echo(f"{label}: {len(drawn)} curve(s) -> {out}")


COMMANDS = [summarize, plot, plot_vs_sigma, noise_accuracy, parameters, docs_page,
            compare_paper, compare_sound, plot_curves]
