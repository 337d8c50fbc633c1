"""Which ffmpeg build is faster for us: Debian's 5.1 or the static 9.0 of imageio-ffmpeg (benchmark 7).

Benchmark 1 (100 exact images at 6 s steps) and the sync benchmark run once more with the static
binary on both sides: the server gets it as ``MPS_SNAPSHOT_FFMPEG`` (ffprobe stays Debian's), the
baselines run it directly. They are compared with the Debian numbers of the same suite run.
The static binary is not a dependency of the project: pass ``--static-ffmpeg PATH``, or have
``imageio-ffmpeg`` importable (``imageio_ffmpeg.get_ffmpeg_exe()``); otherwise this is skipped.
"""

from __future__ import annotations

import statistics
import tempfile
from pathlib import Path

from bench import bench_sync as bs
from bench.bench_jobs import JobSide, ProcSide, fps_argv, warm_up
from bench.harness import (
    Rounds,
    Row,
    Side,
    Suite,
    first_line_version,
    fmt_s,
    progress,
    quiet_check,
    rounds_table,
    run_rounds,
    sequence_times_ms,
    session,
)

MODULE = "bench_build.py"


def find_static(explicit: str | None) -> tuple[str | None, str]:
    """The static binary and a note on where it came from (or why there is none)."""
    if explicit:
        return (explicit, f"`{explicit}` (--static-ffmpeg)") if Path(explicit).is_file() else (None, "not a file")
    try:
        import imageio_ffmpeg  # type: ignore[import-not-found, import-untyped, unused-ignore]
    except ImportError:
        return (
            None,
            "imageio-ffmpeg is not installed in this venv (`pip install imageio-ffmpeg`), and no --static-ffmpeg",
        )
    exe = str(imageio_ffmpeg.get_ffmpeg_exe())
    version = getattr(imageio_ffmpeg, "__version__", "?")
    return exe, f"imageio-ffmpeg {version}: `{exe}`"


def sync_p50(run: bs.Run, normal: bool = True) -> tuple[float, float]:
    """Overall p50 (s) of ours and of the baseline over the normal cases."""
    cases = [c for c in run.cases if (c.frame_type == "normal") == normal]
    ours = [x for c in cases for x in run.samples[c.name].ours]
    base = [x for c in cases for x in run.samples[c.name].baseline]
    return statistics.median(ours), statistics.median(base)


async def bench_build(suite: Suite, debian_sync: bs.Run | None) -> None:
    static = suite.static_ffmpeg
    if static is None:
        # The section of an earlier run (and its summary rows) stay as they are: the static binary is
        # not a dependency, so most runs will not have it.
        progress(f"benchmark 7 skipped ({suite.static_note}); its section and summary rows are left as they were")
        if "<!-- bench:ffmpeg-build:begin -->" not in (bs.DOC.read_text() if bs.DOC.exists() else ""):
            suite.write(
                "ffmpeg-build",
                "## ffmpeg build: Debian 5.1 against a static build\n\n"
                f"Not measured yet: {suite.static_note}. Run `{suite.command} --only build --static-ffmpeg PATH`.",
            )
        return
    version = first_line_version(static)
    src = suite.media_a
    n = len(sequence_times_ms(0, 6, 100, suite.dur_a))
    async with session(suite.work / "static", {"a.mp4": src}, progress, env={"MPS_SNAPSHOT_FFMPEG": static}) as s:
        load, idle = await quiet_check(s.pid, progress)
        suite.note_load("ffmpeg-build", load, idle)
        await warm_up(s, ["a.mp4"])
        exact = JobSide(s, "exact-static", "a.mp4", {"Time": 0, "Interval": 6, "Num": 100}, images=n)
        base = ProcSide(suite, s, "baseline-static", lambda out: fps_argv(static, src, "1/6", 100, out))
        progress("benchmark 7: job 1 with the static ffmpeg (1 round)")
        r = await run_rounds(
            [Side("exact-static", exact), Side("baseline-static", base)], 1, progress, "static", prepare=suite.warm
        )
        plans = exact.plans
    sync_rounds = 2 if suite.quick else 5
    cases = list(bs.QUICK_CASES if suite.quick else bs.FULL_CASES)
    cases.append(bs.intra_case(cases))
    progress(f"benchmark 7: the sync benchmark with the static ffmpeg ({sync_rounds} rounds)")
    with tempfile.TemporaryDirectory(prefix="sync-static-", dir=suite.work) as tmp:
        srun = await bs.measure(src, src.stat().st_size, cases, sync_rounds, Path(tmp), progress, ffmpeg=static)
    suite.raw["build"] = {"rounds": r, "sync": srun, "version": version}
    deb: Rounds | None = suite.raw.get("sequences")
    rows = [
        "| measurement | ours, Debian 5.1 | ours, static | baseline, Debian 5.1 | baseline, static "
        "| ours: Debian/static |",
        "|---|---|---|---|---|---|",
    ]
    o_static, b_static = r.median("exact-static"), r.median("baseline-static")
    job_cmp = ""
    if deb is not None:
        o_deb, b_deb = deb.median("exact"), deb.median("baseline")
        rows.append(
            f"| job 1: {n} exact images at 6 s steps (s) | {fmt_s(o_deb)} | {fmt_s(o_static)} | {fmt_s(b_deb)} | "
            f"{fmt_s(b_static)} | {o_deb / o_static:.2f}x |"
        )
        job_cmp = f"{o_deb / o_static:.2f}"
        suite.rows.append(
            Row(
                "ffmpeg build for job 1: static 9.0 (ours) vs Debian 5.1 (ours)",
                f"{fmt_s(o_static)} s",
                f"{fmt_s(o_deb)} s (Debian)",
                f"{o_deb / o_static:.2f}x faster" if o_static < o_deb else f"{o_static / o_deb:.2f}x slower",
                "— (report)",
                None,
                load,
                "",
                "ffmpeg-build",
            )
        )
    else:
        rows.append(f"| job 1 (s) | (not run) | {fmt_s(o_static)} | (not run) | {fmt_s(b_static)} | — |")
    so, sb = sync_p50(srun)
    sync_cmp = ""
    if debian_sync is not None:
        do, db = sync_p50(debian_sync)
        rows.append(
            f"| sync, normal cases, overall p50 (ms) | {do * 1000:.0f} | {so * 1000:.0f} | {db * 1000:.0f} | "
            f"{sb * 1000:.0f} | {do / so:.2f}x |"
        )
        sync_cmp = f"{do / so:.2f}"
        for c in srun.cases:
            if c.name in debian_sync.samples:
                d = debian_sync.samples[c.name]
                st = srun.samples[c.name]
                d_o, s_o = statistics.median(d.ours), statistics.median(st.ours)
                rows.append(
                    f"| sync: {c.name}, T={c.time_s:g} s, {c.frame_type} (ms) | {d_o * 1000:.0f} | {s_o * 1000:.0f} | "
                    f"{statistics.median(d.baseline) * 1000:.0f} | {statistics.median(st.baseline) * 1000:.0f} | "
                    f"{d_o / s_o:.2f}x |"
                )
        suite.rows.append(
            Row(
                "ffmpeg build for sync snapshots: static 9.0 (ours) vs Debian 5.1 (ours), p50",
                f"{so * 1000:.0f} ms",
                f"{do * 1000:.0f} ms (Debian)",
                f"{do / so:.2f}x faster" if so < do else f"{so / do:.2f}x slower",
                "— (report)",
                None,
                load,
                "",
                "ffmpeg-build",
            )
        )
    else:
        rows.append(f"| sync p50 (ms) | (not run) | {so * 1000:.0f} | (not run) | {sb * 1000:.0f} | — |")
    faster = []
    if job_cmp:
        faster.append(f"job 1: Debian/static time = {job_cmp}x")
    if sync_cmp:
        faster.append(f"sync p50: Debian/static = {sync_cmp}x")
    lines = suite.header("ffmpeg build: Debian 5.1 against the static build of imageio-ffmpeg", MODULE, load, idle)
    lines += [
        f"The static binary: {suite.static_note}, `{version}`. The server got it as `MPS_SNAPSHOT_FFMPEG` (ffprobe "
        "stays Debian's `/usr/bin/ffprobe`), and the baselines ran it directly. Job 1: one round (ours and the "
        f"fps-pass baseline); sync: {sync_rounds} rounds of the sync benchmark's cases. The Debian columns are "
        "the medians of the same suite run (job-exact and sync sections). A ratio above 1 means the static build "
        "is faster for us.",
        "",
        *rows,
        "",
        "Job 1 with the static build, per side:",
        "",
        *rounds_table(
            r,
            [("exact-static", "ours s"), ("baseline-static", "baseline s")],
            [("baseline/ours", "baseline-static", "exact-static")],
        ),
        "",
        *[f"- Extraction plan (server log): `{p}`" for p in plans],
        "",
        "**Result:** " + ("; ".join(faster) if faster else "no Debian numbers in this run to compare with") + ". "
        "The project keeps Debian's build as a dependency; imageio-ffmpeg was installed only for this measurement.",
        "",
        "```bash",
        f"{suite.command} --static-ffmpeg PATH   # or with imageio-ffmpeg importable",
        "MPS_SNAPSHOT_FFMPEG=PATH mps-snapshot serve ...   # the server side",
        "```",
    ]
    suite.write("ffmpeg-build", "\n".join(lines))
