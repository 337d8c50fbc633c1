"""The console's HTML, rendered on the server. Every value from a job or request is
escaped; URLs in attributes are escaped too (they carry query strings)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from html import escape
from urllib.parse import urlencode

from mps_snapshot_server.domain.models import Job, JobState, Pipeline

#: The most images drawn on one job page (a 1,000-image job stays light to open).
MAX_IMAGES_SHOWN = 300


@dataclass
class JobMedia:
    images: list[str] = field(default_factory=list)
    sprites: list[str] = field(default_factory=list)
    video: str = ""
    vtt: str = ""
    #: Cue target (as written in the WebVTT track, without #xywh) -> URL.
    targets: dict[str, str] = field(default_factory=dict)


def _layout(title: str, body: str, *, script: bool = False) -> str:
    tail = '<script src="/console/static/player.js"></script>' if script else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{escape(title)} · mps-snapshot</title>
<link rel="stylesheet" href="/console/static/console.css">
</head><body>
<header><a class="brand" href="/console/jobs">mps-snapshot</a>
<nav><a href="/console/jobs">Jobs</a> <a href="/console/pipelines">Pipelines</a></nav></header>
<main>{body}</main>{tail}
</body></html>"""


def _time(ts: datetime | None) -> str:
    return ts.strftime("%Y-%m-%d %H:%M:%S") if ts else "—"


def _duration(job: Job) -> str:
    if job.finish_time is None:
        return "—"
    return f"{(job.finish_time - job.creation_time).total_seconds():.1f} s"


def _state(state: JobState) -> str:
    return f'<span class="state state-{escape(state.value.lower())}">{escape(state.value)}</span>'


def _progress(job: Job) -> str:
    if job.images_planned:
        return f"{len(job.images)}/{job.images_planned} images"
    if job.sprites_planned:
        return f"{len(job.sprites)}/{job.sprites_planned} sprites"
    return f"{job.count} images"


def _options(values: Iterable[str], selected: str, empty: str) -> str:
    items = [f'<option value="">{escape(empty)}</option>']
    for v in values:
        mark = " selected" if v == selected else ""
        items.append(f'<option value="{escape(v)}"{mark}>{escape(v)}</option>')
    return "".join(items)


def jobs_list(jobs: list[Job], state: str, pipeline: str, next_token: str, pipeline_ids: list[str]) -> str:
    rows = []
    for job in jobs:
        source = job.request.input
        name = f"{source.bucket}/{source.object}" if source else ""
        rows.append(
            f'<tr><td><a href="/console/jobs/{escape(job.id)}">{escape(job.id)}</a></td>'
            f"<td>{_state(job.state)}</td><td>{escape(job.pipeline_id)}</td><td>{escape(name)}</td>"
            f"<td>{escape(_progress(job))}</td><td>{_time(job.creation_time)}</td><td>{_duration(job)}</td></tr>"
        )
    table = (
        '<table class="jobs"><thead><tr><th>Job</th><th>State</th><th>Pipeline</th><th>Input</th>'
        f"<th>Progress</th><th>Created (UTC)</th><th>Took</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
        if rows
        else '<p class="empty">No jobs match.</p>'
    )
    more = ""
    if next_token:
        query = urlencode({"state": state, "pipeline": pipeline, "page": next_token})
        more = f'<p class="pager"><a rel="next" href="/console/jobs?{escape(query)}">Next page →</a></p>'
    form = (
        '<form class="filter" method="get" action="/console/jobs">'
        f'<label>State <select name="state">{_options([s.value for s in JobState], state, "any")}</select></label>'
        f'<label>Pipeline <select name="pipeline">{_options(pipeline_ids, pipeline, "any")}</select></label>'
        '<button type="submit">Filter</button></form>'
    )
    return _layout("Jobs", f"<h1>Jobs</h1>{form}{table}{more}")


def pipelines(items: list[Pipeline], load: Callable[[str], tuple[int, int]]) -> str:
    rows = []
    for p in items:
        waiting, running = load(p.id)
        rows.append(
            f"<tr><td>{escape(p.id)}</td><td>{escape(p.name)}</td><td>{escape(p.state.value)}</td>"
            f"<td>{running}/{p.max_concurrent_jobs}</td><td>{waiting}/{p.queue_capacity}</td>"
            f'<td><a href="/console/jobs?{escape(urlencode({"pipeline": p.id}))}">jobs</a></td></tr>'
        )
    table = (
        '<table class="pipelines"><thead><tr><th>Id</th><th>Name</th><th>State</th><th>Running</th>'
        f"<th>Queued</th><th></th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )
    return _layout("Pipelines", f"<h1>Pipelines</h1>{table}")


def _facts(job: Job) -> str:
    source = job.request.input
    facts = [
        ("State", _state(job.state)),
        ("Pipeline", escape(job.pipeline_id)),
        ("Input", escape(f"{source.bucket}/{source.object}" if source else "")),
        ("Created (UTC)", _time(job.creation_time)),
        ("Finished (UTC)", _time(job.finish_time)),
        ("Took", _duration(job)),
        ("Progress", escape(_progress(job))),
        ("Sprites", str(len(job.sprites))),
        ("Request id", escape(job.request_id)),
    ]
    if job.code:
        facts.append(("Error", f"<strong>{escape(job.code)}</strong>: {escape(job.message)}"))
    if job.web_vtt_object:
        facts.append(("WebVTT", escape(job.web_vtt_object)))
    if job.storyboard_object:
        facts.append(("Storyboard", escape(job.storyboard_object)))
    items = "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in facts)
    return f'<dl class="facts">{items}</dl>'


def _player(media: JobMedia) -> str:
    config = json.dumps({"vtt": media.vtt, "targets": media.targets})
    # JSON in a script element: "</" must not end the element early.
    config = config.replace("</", "<\\/")
    return (
        '<section id="player"><h2>Storyboard</h2>'
        f'<div class="player"><video id="video" preload="metadata" src="{escape(media.video)}"></video>'
        '<div class="controls"><button id="play" type="button">Play</button>'
        '<div id="scrub" class="scrub" role="slider" aria-label="Seek" aria-valuemin="0" tabindex="0">'
        '<div id="played" class="played"></div>'
        '<div id="preview" class="preview" hidden><div id="preview-image" class="preview-image"></div>'
        '<span id="preview-time"></span></div></div>'
        '<span id="clock" class="clock">0:00</span></div></div>'
        f'<script type="application/json" id="player-config">{config}</script></section>'
    )


def job(job: Job, media: JobMedia) -> str:
    parts = [f"<h1>Job {escape(job.id)}</h1>", _facts(job)]
    if media.video and media.vtt:
        parts.append(_player(media))
    if job.sprites:
        sheets = "".join(
            f'<figure class="sprite"><img src="{escape(url)}" alt="sprite {n}" width="{s.width}" '
            f'height="{s.height}" loading="lazy"><figcaption>{escape(s.object)} · {s.cell_count} cells · '
            f"{s.width}×{s.height}</figcaption></figure>"
            for n, (s, url) in enumerate(zip(job.sprites, media.sprites, strict=False), 1)
        )
        parts.append(f'<section id="sprites"><h2>Sprite sheets</h2>{sheets}</section>')
    if job.images:
        shown = list(zip(job.images, media.images, strict=False))[:MAX_IMAGES_SHOWN]
        figures = "".join(
            f'<figure class="shot"><img src="{escape(url)}" alt="image {n}" loading="lazy" '
            f'width="{img.width}" height="{img.height}"><figcaption><span class="t">{img.time_ms:,.1f} ms</span>'
            f" (asked {img.requested_time_ms:,.0f}) · {img.width}×{img.height}<br>{escape(img.object)}"
            "</figcaption></figure>"
            for n, (img, url) in enumerate(shown, 1)
        )
        note = (
            f'<p class="note">First {MAX_IMAGES_SHOWN} of {len(job.images)} images.</p>'
            if len(job.images) > MAX_IMAGES_SHOWN
            else ""
        )
        parts.append(f'<section id="images"><h2>Images ({len(job.images)})</h2>{note}<div class="grid">{figures}</div>'
                     "</section>")  # fmt: skip
    return _layout(f"Job {job.id}", "".join(parts), script=bool(media.video and media.vtt))
