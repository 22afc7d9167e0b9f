"""The course's command line: `python -m roadmap_tools run|list|check|roadmap|new|slug|env|standin-hub|site`."""

from __future__ import annotations

import argparse
import ast
import json
import sys
from pathlib import Path

from . import course


def _parse_param(text: str) -> tuple[str, object]:
    """KEY=VALUE with VALUE read as a Python literal when it is one (3, 0.5, True, 'x'), else as a string."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"{text!r}: parameters are KEY=VALUE")
    key, raw = text.split("=", 1)
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = raw
    return key.strip(), value


def cmd_run(args, root: Path) -> int:
    from tqdm.auto import tqdm

    from .lessons import select
    from .runner import refresh_inplace, run_lesson, summary_markdown, write_summary

    params = dict(args.param or [])
    size = args.size or "small"
    if "SIZE" in params:  # `-p SIZE=full` means the full config: run and file it as such
        if args.size and args.size != params["SIZE"]:
            print(f"--size {args.size} and -p SIZE={params['SIZE']} disagree: give one", file=sys.stderr)
            return 2
        size = params.pop("SIZE")
        if size not in ("small", "full"):
            print(f"SIZE must be 'small' or 'full', got {size!r}", file=sys.stderr)
            return 2
    if args.inplace and (size != "small" or params):
        print("--inplace refreshes the committed outputs, which come from the small config with default "
              "parameters: drop --size full and -p", file=sys.stderr)
        return 2
    chosen = select(root, args.targets)
    out_dir = root / "runs" / size
    results = []
    bar = tqdm(chosen, desc="notebooks", unit="nb")
    for lesson in bar:
        bar.set_postfix_str(lesson.path)
        result = refresh_inplace(root, lesson) if args.inplace else run_lesson(root, lesson, size, params, out_dir)
        results.append(result)
        mark = "ok" if result.status == "ok" else f"FAILED at cell {result.failed_cell}: {result.error}"
        tqdm.write(f"{result.cpu_seconds:6.1f} s CPU {result.seconds:6.1f} s wall  {lesson.path}  {mark}")
    bar.close()
    order = [lesson.path for lesson in select(root, [])]
    md = write_summary(out_dir, results, size, order)
    print()
    print(summary_markdown(results, size))
    print(f"summary of every notebook run so far written to {md} and {md.with_suffix('.json')}")
    return 0 if all(r.status == "ok" for r in results) else 1


def cmd_list(args, root: Path) -> int:
    from .lessons import read_video_file

    last: dict[str, dict] = {}
    for size in ("small", "full"):
        summary = root / "runs" / size / "summary.json"
        if summary.exists():
            data = json.loads(summary.read_text())
            for item in data["notebooks"]:
                last[item["notebook"]] = {**item, "size": size}
    for number, (folder, title, topics) in enumerate(course.PHASES, start=1):
        entries = read_video_file(root / folder)
        print(f"{number:2d}. {title}  ({folder}, {len(entries)} lessons)")
        if not entries:
            print("      planned: " + "; ".join(topics))
        for entry in entries:
            path = f"{folder}/{entry['notebook']}"
            video = "video" if entry["video"] else "no video yet"
            run = last.get(path)
            ran = "not run"
            if run:
                ran = f"last run {run['status']} ({run['size']}, {run.get('cpu_seconds')} s CPU, {run['finished']})"
            print(f"      {entry['title']:<48} {video:<13} {ran}")
    return 0


def cmd_check(args, root: Path) -> int:
    from .checks import chapter_problems, check_notebook, markdown_links, video_files
    from .lessons import notebooks_on_disk
    from .roadmap import readme_is_fresh

    problems = video_files(root) + markdown_links(root) + chapter_problems(root)
    for rel in notebooks_on_disk(root):
        problems += [f"{rel}: {p}" for p in check_notebook(root, rel)]
    if not readme_is_fresh(root):
        problems.append("README.md's roadmap table is stale: run `python -m roadmap_tools roadmap`")
    for problem in problems:
        print("PROBLEM", problem)
    print(f"{len(problems)} problems in {len(notebooks_on_disk(root))} notebooks")
    return 1 if problems else 0


def cmd_roadmap(args, root: Path) -> int:
    from .roadmap import write_chapters, write_readme

    print("README.md updated" if write_readme(root) else "README.md already up to date")
    for path in write_chapters(root):
        print(f"{path}: the header's video chapters written from videos.yaml")
    return 0


def cmd_new(args, root: Path) -> int:
    from .roadmap import write_readme
    from .scaffold import new_lesson

    path = new_lesson(root, args.phase, args.notebook, args.title)
    write_readme(root)
    print(f"created {path.relative_to(root)}; listed in its videos.yaml, phase README and the roadmap table")
    return 0


def cmd_slug(args, root: Path) -> int:
    from .scaffold import rewrite_slug, slug_problems

    if args.check:
        problems = slug_problems(root, args.slug)
        for problem in problems:
            print("PROBLEM", problem)
        print(f"{len(problems)} badges or install lines that do not point at {args.slug}")
        return 1 if problems else 0
    for path in rewrite_slug(root, args.slug, args.branch):
        print("rewrote", path.relative_to(root))
    return 0


def cmd_standin_hub(args, root: Path) -> int:
    from .standin_hub import build, environment

    folder = build(root / args.folder if not Path(args.folder).is_absolute() else Path(args.folder), force=args.force)
    print(f"stand-in hub in {folder}; to point a shell (and the notebooks it starts) at it:")
    print("\n".join(f"export {k}={v}" for k, v in environment(folder).items()))
    return 0


def cmd_site(args, root: Path) -> int:
    from .site import main as site_main

    return site_main(root, args.out, args.browser)


def cmd_env(args, root: Path) -> int:
    from .environment import shell_exports

    print(shell_exports(args.size))
    return 0


def main(argv: list[str] | None = None) -> int:
    from .lessons import repo_root

    parser = argparse.ArgumentParser(prog="python -m roadmap_tools", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="execute notebooks with papermill and summarise")
    run.add_argument("targets", nargs="*", help="phase folders or numbers, or notebook paths (default: all)")
    run.add_argument("--size", choices=["small", "full"], help="the config (default small; or -p SIZE=...)")
    run.add_argument("-p", "--param", action="append", type=_parse_param, metavar="KEY=VALUE")
    run.add_argument("--inplace", action="store_true", help="refresh the committed outputs (small config)")
    sub.add_parser("list", help="the roadmap: phases, lessons, video status, last run")
    sub.add_parser("check", help="static checks of notebooks, video files, links and the README table")
    sub.add_parser("roadmap", help="regenerate the README's roadmap table")
    new = sub.add_parser("new", help="add a lesson from the template")
    new.add_argument("phase")
    new.add_argument("notebook")
    new.add_argument("title")
    slug = sub.add_parser("slug", help="point every badge and install line at OWNER/REPO")
    slug.add_argument("slug")
    slug.add_argument("--branch")
    slug.add_argument("--check", action="store_true",
                      help="change nothing; fail when a badge or install line points elsewhere (CI on GitHub)")
    hub = sub.add_parser("standin-hub", help="build tiny stand-ins of every hub model and data set the lessons name")
    hub.add_argument("folder", nargs="?", default=".standin-hub")
    hub.add_argument("--force", action="store_true", help="rebuild even when it is up to date")
    site = sub.add_parser("site", help="build the course website (Sphinx + MyST-NB, in .venv-site) and check it")
    site.add_argument("--out", help="where to build it (default build/site)")
    site.add_argument("--browser", action="store_true",
                      help="then open it in headless Chromium: checks and screenshots in build/site-artefacts/")
    env = sub.add_parser("env", help="the harness environment as shell exports (threads, offline flags, ...)")
    env.add_argument("--size", choices=["small", "full"], default="small")
    args = parser.parse_args(argv)
    root = repo_root()
    handler = {"run": cmd_run, "list": cmd_list, "check": cmd_check, "roadmap": cmd_roadmap, "new": cmd_new,
               "slug": cmd_slug, "env": cmd_env, "standin-hub": cmd_standin_hub, "site": cmd_site}[args.command]
    return handler(args, root)


if __name__ == "__main__":
    sys.exit(main())
