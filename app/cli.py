"""The `sightline` command line: index, status, search, ask, serve. Thin: it parses, calls, prints."""

from __future__ import annotations

import json
import logging
import sys

import click
from click.core import ParameterSource

from app.errors import shown_as, user_message
from app.settings import help_of, load_settings
from storage import validate
from storage.errors import SightlineError

log = logging.getLogger("sightline")


# SightlineError -> one clean line (click.ClickException); anything else is a bug: logged, one line pointing at the
# log (app/errors.py, the same converter as the web UI's). click's own errors and Ctrl-C pass as they are.
shown_in_cli = shown_as(click.ClickException, keep=(click.ClickException, click.Abort))


class _PathText(click.Path):
    """click.Path that first checks the text (storage/validate.py): a NUL, bytes that are not UTF-8 or a name
    over 255 bytes is a usage error with its reason, not a ValueError from os.stat."""

    def convert(self, value, param, ctx):
        try:
            validate.path_text(value, "library folder" if param is not None and param.name == "library" else "path")
        except SightlineError as err:
            self.fail(user_message(err), param, ctx)
        return super().convert(value, param, ctx)


# DESIGN: every command takes --library DIR, before or after its name. Given in both places, the two must name
# the same folder: a script that says two different libraries is refused rather than one of them silently used.
_LIBRARY_BOTH_PLACES = ("Also accepted after the command (sightline search QUERY --library DIR); given in both "
                        "places, both must name the same folder.")


def _library_after_command(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    """`sightline COMMAND ... --library DIR`: the command's settings get that library, as if given before it."""
    if value is None:
        return
    group = ctx.parent
    before = group.params.get("library") if group is not None else None
    from_line = group is not None and group.get_parameter_source("library") is ParameterSource.COMMANDLINE
    if from_line and before is not None and _folder(before) != _folder(value):
        # both in full (checked text, at most 4096 characters): the difference may be at the end
        raise click.UsageError(f"--library is given twice with different folders: {before!r} before "
                               f"`{ctx.info_name}` and {value!r} after it. Give it once.", ctx)
    from dataclasses import replace

    ctx.obj = replace(ctx.obj, library=value)  # the group's settings loaded already: SIGHTLINE_* values checked


def _folder(path: str) -> str:
    """A --library value as the folder it names: "lib", "./lib/" and "$PWD/lib" are the same folder."""
    import os

    return os.path.abspath(os.path.expanduser(path))


class _Commands(click.Group):
    """The `sightline` group: each command added also takes --library after its name (one shared option)."""

    def add_command(self, cmd: click.Command, name: str | None = None) -> None:
        cmd.params.append(click.Option(
            ["--library"], type=_PathText(file_okay=False), default=None, expose_value=False,
            callback=_library_after_command, metavar="DIRECTORY",
            help="The library folder, the same as --library before the command (default: $SIGHTLINE_LIBRARY, "
                 "else a per-user data folder); given in both places, both must name the same folder."))
        super().add_command(cmd, name)


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--library", type=_PathText(file_okay=False), default=None,
              help=f"{help_of('library', with_default=True)} {_LIBRARY_BOTH_PLACES}", envvar="SIGHTLINE_LIBRARY",
              show_envvar=True)
@click.pass_context
def cli(ctx: click.Context, library: str | None) -> None:
    """Sightline: index a folder of long videos, then search and ask questions about them."""
    try:  # outside any command's shown_in_cli: a bad SIGHTLINE_* value is one clean line too
        ctx.obj = load_settings(library=library)
    except SightlineError as err:
        raise click.ClickException(user_message(err)) from None


def _services(ctx: click.Context):
    from app.services import Services

    return Services(ctx.obj)


# `sightline index` exit codes (README "Exit codes"); 1 is any other error (a bad path, an unreadable library).
EXIT_OK = 0  # every file indexed or unchanged (files gone from a folder are only reported)
EXIT_SOME_FAILED = 3  # at least one file failed in this run (a file that failed before is tried again each run)
EXIT_ABORTED = 4  # the run stopped before its end: disk full, read-only library, Ctrl-C, or another run holds the lock


@cli.command(epilog="Exit codes: 0 all indexed or unchanged; 3 some files failed (the others are indexed); "
             "4 aborted (disk full, read-only library, interrupted, or another run holds the library's lock), "
             "the next run resumes; 1 any other error.")
@click.argument("paths", nargs=-1, type=_PathText())
@click.option("--captions/--no-captions", default=None, help=help_of("captions"))
@click.pass_context
@shown_in_cli
def index(ctx: click.Context, paths: tuple[str, ...], captions: bool | None) -> None:
    """Index video files or folders (incremental: unchanged files are skipped).

    With no PATH, bring every video already in the library up to date: only the stages that must run again
    (after an upgrade, a model change or a failure; `sightline status` lists them) run. A run that was
    killed or interrupted is resumed by the next one, whatever PATHs it is given.
    """
    from indexer.runner import IndexInterrupted
    from storage.indexing_lock import IndexingBusy

    read_only = _read_only(ctx.obj.library_path)
    if read_only:
        click.echo(f"Error: {read_only}", err=True)
        sys.exit(EXIT_ABORTED)
    services = _services(ctx)
    services.check_library()  # a damaged database is named (with `sightline repair`) before any work
    targets = list(paths) or _library_videos(services)
    try:
        summary = services.index(targets, captions=captions, show_progress=True)
    except IndexingBusy as err:
        click.echo(f"Error: {user_message(err)}", err=True)
        sys.exit(EXIT_ABORTED)
    except IndexInterrupted as stop:
        click.echo(stop.summary.describe(), err=True)
        sys.exit(EXIT_ABORTED)
    click.echo(summary.describe())
    if summary.aborted:
        sys.exit(EXIT_ABORTED)
    if summary.failed:
        sys.exit(EXIT_SOME_FAILED)


def _read_only(folder) -> str:
    """Why indexing cannot write in an existing library folder (a read-only disk or no permission), or ""."""
    import os

    if not folder.is_dir():
        return ""
    if os.statvfs(folder).f_flag & os.ST_RDONLY:
        why = "is on a read-only disk"
    elif not os.access(folder, os.W_OK):
        why = "is not writable by this user"
    else:
        return ""
    return (f"The library folder {folder} {why}: indexing cannot save anything there. Make it writable (remount "
            "the disk read-write, or fix its permissions) or choose another --library folder; then run again.")


def _library_videos(services) -> list[str]:
    """The files of every video in the library that is still on disk; the others are named and left alone."""
    from pathlib import Path

    from storage.catalog import videos

    rows = videos(services.library)
    if not rows:
        raise SightlineError("The library has no videos yet.",
                             hint="Give the files or folders to index: sightline index PATH...")
    gone = [r.path for r in rows if not Path(r.path).is_file()]
    for path in gone:
        click.echo(f"not on disk, left as it is: {path}", err=True)
    if len(gone) == len(rows):
        raise SightlineError("None of the library's videos is on disk any more.",
                             hint="Put the files back, or index their new location: sightline index PATH...")
    return [r.path for r in rows if r.path not in gone]


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_context
@shown_in_cli
def status(ctx: click.Context, as_json: bool) -> None:
    """Show the library: every video, its state and any error."""
    services = _services(ctx)
    services.check_library()
    report = services.status()
    click.echo(json.dumps(report, indent=2) if as_json else _format_status(report))


def _format_status(report: dict) -> str:
    from storage.timefmt import format_time

    lines = [f"Library: {report['library']}",
             f"{report['counts'].get('indexed', 0)} indexed, {report['counts'].get('failed', 0)} failed, "
             f"{report['moments']} moments"]
    job = report.get("last_job")
    if job and job["status"] == "running":
        lines.append(f"Indexing now ({job.get('holder') or 'a run'}): {job['files_done']} of {job['files_total']} "
                     f"files done.")
    elif job and job["status"] in ("interrupted", "aborted"):
        import time

        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(job["finished_at"] or job["created_at"]))
        lines.append(f"The last indexing run was {job['status']} at {when} ({job['files_done']} of "
                     f"{job['files_total']} files done); the next `sightline index` resumes it.")
    for v in report["videos"]:
        dur = format_time(v["duration"], 0) if v.get("duration") else "?"
        line = f"  [{v['id']}] {v['status']:<9} {dur:>8}  {v['path']}"
        if v["status"] == "interrupted":
            line += "\n        interrupted — will resume on the next `sightline index`"
        if v.get("error"):
            line += f"\n        error: {v['error']}"
        if v.get("notes"):
            line += f"\n        note: {v['notes']}"
        for stage, why in v.get("reruns", {}).items():
            line += f"\n        {stage} {why}" if why.startswith("re-runs") else f"\n        {stage} re-runs: {why}"
        lines.append(line)
    reruns = report.get("reruns") or {}
    if reruns.get("videos"):
        stages = ", ".join(f"{stage} ({n} video{'s' if n != 1 else ''})" for stage, n in reruns["stages"].items())
        lines.append(f"The next index re-runs {stages}: run `{reruns['command']}`.")
    return "\n".join(lines)


@cli.command()
@click.argument("query")
@click.option("--k", default=10, show_default=True, help="How many moments.")
@click.option("--modality", multiple=True, type=click.Choice(["speech", "text", "visual", "caption"]),
              help="Only these kinds of moment (repeatable).")
@click.option("--video", "video", default=None, help="Only this video (id, path or file name).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line, one per moment.")
@click.pass_context
@shown_in_cli
def search(ctx: click.Context, query: str, k: int, modality: tuple[str, ...], video: str | None,
           as_json: bool) -> None:
    """Find moments by what is said, shown or written on screen."""
    from storage.timefmt import format_time

    validate.require_searchable(validate.query_text(query))  # before the text embedder loads
    hits = _services(ctx).search(query, k=k, modalities=list(modality) or None, video=video)
    for h in hits:
        if as_json:
            click.echo(json.dumps(h.to_dict()))
        else:
            click.echo(f"{h.score:.3f}  {format_time(h.start)}-{format_time(h.end)}  {h.modality:<7} "
                       f"{h.video}  {h.text[:100]}")
    if not hits and not as_json:
        click.echo("No moments found.")


@cli.command()
@click.argument("question")
@click.option("--video", default=None, help="Ask about this video only (id, path or file name).")
@click.option("--json", "as_json", is_flag=True, help='Print {"answer", "evidence", "mode"}.')
@click.pass_context
@shown_in_cli
def ask(ctx: click.Context, question: str, video: str | None, as_json: bool) -> None:
    """Ask a question; the answer cites moments (video, start, end) as evidence."""
    from storage.timefmt import format_time

    validate.require_searchable(validate.query_text(question, "question"), "question")  # before any model loads
    result = _services(ctx).ask(question, video=video)
    if as_json:
        click.echo(json.dumps(result.to_dict()))
        return
    click.echo(result.answer)
    for e in result.evidence:
        mark = " verified" if e.verified else ""
        click.echo(f"  - {e.video} {format_time(e.start)}-{format_time(e.end)} [{e.modality}{mark}] {e.text[:100]}")


@cli.command()
@click.pass_context
@shown_in_cli
def repair(ctx: click.Context) -> None:
    """Rebuild a damaged or lost library database from every row that can still be read.

    The old file is kept as library.db.broken-<time>; videos that lost rows are marked to index again (run
    `sightline index` after), and the vectors are rebuilt. Stop the web UI and any indexing run first.
    """
    from storage.repair import repair_library

    if ctx.obj.database_url:
        raise SightlineError("`sightline repair` repairs a library's own SQLite file (library.db), not a server "
                             "database given by SIGHTLINE_DATABASE_URL.",
                             hint="Use your database server's own backup and repair tools.")
    click.echo(repair_library(ctx.obj.library_path).describe())


@cli.command()
@click.option("--host", default=None, help=help_of("host"))
@click.option("--port", default=None, type=int, help=help_of("port"))
@click.option("--share", is_flag=True,
              help="Also publish a temporary public *.gradio.live link (set --auth when you do).")
@click.option("--auth", default=None, help=help_of("auth"), envvar="SIGHTLINE_AUTH", show_envvar=True)
@click.pass_context
@shown_in_cli
def serve(ctx: click.Context, host: str | None, port: int | None, share: bool, auth: str | None) -> None:
    """Start the web UI (http://127.0.0.1:7860 by default; only this machine can reach it).

    --host 0.0.0.0 serves your network and --share adds a public link: protect both with --auth user:password.
    Only the library's videos and thumbnails are served.
    """
    from dataclasses import replace

    settings = replace(ctx.obj, **{k: v for k, v in {"host": host, "port": port, "auth": auth}.items() if v})
    _check_listen(settings.host, port if port is not None else settings.port)
    from app.server import launch

    launch(settings, share=share)


def _check_listen(host: str, port: int) -> None:
    """The address the UI will bind, checked before Gradio starts (its own errors are tracebacks or a
    misleading "Cannot find empty port"): a port from 1 to 65535, a host this machine has, the port free."""
    import socket

    validate.count(port, "The port", 1, 65535)
    host = validate.text(host, "host", max_chars=253, hint="Use an address such as 127.0.0.1 or 0.0.0.0.").strip()
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except (socket.gaierror, UnicodeError, ValueError) as err:
        raise SightlineError(f"Cannot serve on host {validate.shown(host)}: {getattr(err, 'strerror', None) or err}.",
                             hint="Use 127.0.0.1 (this machine only), 0.0.0.0 (your network) or an address "
                             "of this machine.") from None
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server itself binds
        try:
            probe.bind(address)
        except OSError as err:
            import errno

            hint = ("Another program (or another `sightline serve`) holds the port: choose another with --port "
                    "or SIGHTLINE_PORT." if err.errno == errno.EADDRINUSE else
                    "Use an address of this machine with --host (127.0.0.1 or 0.0.0.0), or a port above 1023 "
                    "when not root.")
            raise SightlineError(f"Cannot listen on {host}:{port}: {err.strerror or err}.", hint=hint) from None


def main() -> None:
    cli(prog_name="sightline")


if __name__ == "__main__":
    main()
