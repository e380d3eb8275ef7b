"""The labelling job's last step: labels.csv and failures.csv merged from their sorted shards, report.html,
and everything staged moved into place with the manifest last (common.publish).

It runs once, on one worker, and holds only what it is handed as small side inputs: counts, shard paths,
and the few hundred rows the report shows. Rows, index entries, thumbnails and per-video files of a run of
any size stream from files; thumbnails and per-video files of videos carried over from the previous run
stay where they are, and those of removed videos are deleted. With --segments, segments.csv and events.csv
are merged from their shards the same way, and the WebVTT tracks follow the rules of the thumbnails.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import time

from beam_jobs import outputs, report
from beam_jobs.events import EVENT_COLUMNS, TRACKS_DIR, event_line_key, track_path
from beam_jobs.carry import CarryOver, fold_summary, timelines
from beam_jobs.incremental import INDEX_FILE, INDEX_PATTERN, INDEX_PREFIX, MULTILINE_KEY
from beam_jobs.plan import video_id_of
from beam_jobs.label_rows import LABELS_FILE, PER_VIDEO_DIR, UNKNOWN_LABEL, per_video_path
from beam_jobs.segments import EVENTS_FILE, SEGMENTS_FILE, segment_line_key
from beam_jobs.sinks import csv_key, csv_line, json_lines, merge_sorted_shards
from common import fs, publish

_LOG = logging.getLogger("beam_jobs.predict")  # the job's summary lines, under the job's name

PARTS_DIR = "_parts"  # shards and lists inside staging that publishing reads but does not publish
# Every name a labelling run may write: what a manifest from before manifests named their files is taken to name.
OUTPUT_PATTERNS = (LABELS_FILE, outputs.FAILURES_FILE, report.REPORT_FILE, INDEX_FILE, INDEX_PATTERN, SEGMENTS_FILE,
                   EVENTS_FILE, f"{report.THUMBNAILS_DIR}/**", f"{PER_VIDEO_DIR}/**", f"{TRACKS_DIR}/**")


@dataclasses.dataclass(frozen=True)
class Counts:
    """What a run did, from Beam's counts: videos matched, labelled by the model, reused because their content
    was known, carried over unread, failed, and the frames, thumbnails and per-video files it made; with
    --segments, the segments and events written, the videos they cover and the WebVTT tracks written."""

    matched: int
    by_model: int
    reused_content: int
    carried: int
    failed: int
    frames_sampled: int = 0
    thumbnails: int = 0
    per_video: int = 0
    segments: int = 0
    events: int = 0
    segment_videos: int = 0
    tracks: int = 0
    review_tasks: int = 0  # predict --review: the Label Studio tasks written (beam_jobs.review)

    @property
    def labelled(self) -> int:
        return self.by_model + self.reused_content + self.carried


@dataclasses.dataclass(frozen=True)
class FinishPredict:
    """Publishes the labelling run once; checks from the counts that every matched video is in exactly one
    of labels.csv and failures.csv."""

    output: str
    staging: str
    run_id: str  # the lease this run holds; publishing checks it still does
    columns: tuple[str, ...]
    manifest: dict
    wipe: tuple[str, ...] = ()  # folders of the previous run replaced whole (thumbnails/**, per_video/**)
    carried_thumbnails: bool = True  # thumbnails of carried videos stay in the output
    started_at: float = 0.0  # time.time() when the job was launched
    no_thumbnail: str = "no frames"  # what the report shows for a video without a thumbnail
    segment_columns: tuple[str, ...] = ()  # segments.csv's, with --segments
    carry_over: CarryOver | None = None  # the previous run's rows of the videos carried over unread
    removed_list: str | None = None  # the plan's ids of videos no longer listed (JSON lines)

    def __call__(self, counts, summary, label_shards, failure_shards, removed_files=(), segment_shards=(),
                 event_shards=(), index_shards=()):
        if done := outputs.published_by(self.output, self.staging, self.run_id):  # a retry after publishing succeeded
            return done
        label_shards, index_shards = list(label_shards), [p for p, _ in index_shards]
        segment_shards, event_shards = [p for p, _ in segment_shards], [p for p, _ in event_shards]
        counts = dict(counts)
        if self.carry_over is not None:
            carried = self.carry_over.write(fs.join(self.staging, PARTS_DIR), self.staging)
            counts.update(matched=counts["matched"] + carried["rows"], carried=counts["carried"] + carried["rows"],
                          thumbnails=counts.get("thumbnails", 0) + carried["rows"],
                          per_video=counts.get("per_video", 0) + carried["per_video"],
                          tracks=counts.get("tracks", 0) + carried["tracks"])
            summary = fold_summary(summary, carried["summary"])
            label_shards.append((carried["labels"], carried["rows"]))
            index_shards.append(carried["index"])
            if self.segment_columns:
                counts.update(segments=counts["segments"] + carried["segment_count"],
                              events=counts["events"] + carried["event_count"],
                              segment_videos=counts["segment_videos"] + carried["segment_videos"])
                segment_shards.append(carried["segments"])
                event_shards.append(carried["events"])
                summary = dict(summary, shown_rows=timelines(carried["segments"], summary["shown_rows"],
                                                             self.segment_columns,
                                                             self.manifest["segments"]["window_s"]))
        counts = Counts(**counts)
        self._check_accounting(counts, summary, label_shards)
        seconds = max(time.time() - self.started_at if self.started_at else 0.0, 1e-3)
        merged = {LABELS_FILE: merge_sorted_shards([p for p, _ in label_shards], fs.join(self.staging, LABELS_FILE),
                                                   csv_key, csv_line(self.columns))}
        if merged[LABELS_FILE].records != counts.labelled:
            raise RuntimeError(f"accounting error: {counts.matched} matched, {counts.labelled} labelled "
                               f"({merged[LABELS_FILE].records} rows), {counts.failed} failed")
        merge_sorted_shards(index_shards, fs.join(self.staging, f"{INDEX_PREFIX}-00000-of-00001.jsonl"),
                            video_id_of, records=json_lines)
        merge_sorted_shards([p for p, _ in failure_shards], fs.join(self.staging, outputs.FAILURES_FILE), csv_key,
                            csv_line(outputs.FAILURE_COLUMNS))
        if self.segment_columns:
            merged[SEGMENTS_FILE] = merge_sorted_shards(segment_shards, fs.join(self.staging, SEGMENTS_FILE),
                                                        segment_line_key, csv_line(self.segment_columns))
            merge_sorted_shards(event_shards, fs.join(self.staging, EVENTS_FILE), event_line_key,
                                csv_line(EVENT_COLUMNS))
        page = self._report(counts, summary, seconds)
        fs.write_text(fs.join(self.staging, report.REPORT_FILE), page)
        manifest = dict(self.manifest, videos_matched=counts.matched, videos_labelled=counts.labelled,
                        labelled_this_run=counts.by_model, reused_from_previous_run=counts.carried + counts.reused_content,
                        failures=counts.failed, frames_sampled=counts.frames_sampled, seconds=round(seconds, 1),
                        **({"segments_written": counts.segments, "events_written": counts.events}
                           if self.segment_columns else {}),
                        **{MULTILINE_KEY: {name: m.multiline for name, m in merged.items()}},
                        finished_at=publish.now_utc(), package_versions=outputs.package_versions(),
                        run_id=self.run_id, **{publish.OUTPUTS_KEY: self._output_patterns()})
        staged = (path for path in fs.iter_files_under(self.staging) if self._published(path))
        outputs.check_lease(self.output, self.run_id)
        publish.publish(self.output, self.staging, staged, outputs.MANIFEST_FILE, fs.json_text(manifest),
                        replace=self._replaced(removed_files), outputs=self._output_patterns(),
                        previous_default=OUTPUT_PATTERNS, fence=lambda: outputs.check_lease(self.output, self.run_id),
                        run_id=self.run_id)
        self._log(counts, page, seconds)
        return manifest

    def _output_patterns(self) -> list[str]:
        """The names this run writes (its manifest names them; the next run removes only what a manifest names)."""
        names = [LABELS_FILE, outputs.FAILURES_FILE, report.REPORT_FILE, INDEX_PATTERN, f"{report.THUMBNAILS_DIR}/**"]
        if self.manifest.get("options", {}).get("per_video"):
            names.append(f"{PER_VIDEO_DIR}/**")
        if self.segment_columns:
            names += [SEGMENTS_FILE, EVENTS_FILE, f"{TRACKS_DIR}/**"]
        from beam_jobs.review import REVIEW_DIR  # review.py builds on this module

        names.append(f"{REVIEW_DIR}/**")  # predict --review's tasks; a run without it removes the previous ones
        return names

    def _published(self, staged_path: str) -> bool:
        relative = fs.relative(staged_path, self.staging)
        return not relative.startswith(PARTS_DIR + "/") and relative != outputs.REFS_FILE

    def _check_accounting(self, counts: Counts, summary: dict, label_shards) -> None:
        rows = sum(count for _, count in label_shards)
        if (counts.labelled + counts.failed != counts.matched or rows != counts.labelled
                or summary["videos"] != counts.labelled or summary["failures"] != counts.failed):
            raise RuntimeError(f"accounting error: {counts.matched} matched, {counts.labelled} labelled "
                               f"({rows} rows), {counts.failed} failed")
        if self.segment_columns and counts.segment_videos != counts.labelled:
            raise RuntimeError(f"accounting error: {counts.labelled} videos labelled, {counts.segment_videos} "
                               f"of them with segments")

    def _replaced(self, removed_files):
        """The previous run's files this run replaces: its single files, whole folders it rewrites, and the
        per-video files, thumbnails and tracks of videos no longer listed or that failed in this run (their
        names made safe by `fs.mirrored_name`, so never outside the output)."""
        yield from (fs.join(self.output, name) for name in (LABELS_FILE, outputs.FAILURES_FILE, report.REPORT_FILE,
                                                             INDEX_FILE, SEGMENTS_FILE, EVENTS_FILE))
        yield from fs.match(fs.join(self.output, INDEX_PATTERN))
        yield from (fs.join(self.output, folder) for folder in self.wipe)
        for path in [*removed_files, *([self.removed_list] if self.removed_list else [])]:
            with fs.open_read(path) as raw:
                for line in io.TextIOWrapper(raw, encoding="utf-8"):
                    video_id = json.loads(line)  # JSON: an id may hold a line break
                    yield fs.join(self.output, per_video_path(video_id))
                    yield fs.join(self.output, report.thumbnail_path(video_id))
                    yield fs.join(self.output, track_path(video_id))

    def _thumbnail(self, video_id: str) -> bytes | None:
        for folder in (self.staging, self.output if self.carried_thumbnails else None):
            if folder and fs.exists(path := fs.join(folder, report.thumbnail_path(video_id))):
                return fs.read_bytes(path)
        return None

    def _report(self, counts: Counts, summary: dict, seconds: float) -> str:
        rows = summary["shown_rows"]
        thumbnails = {row["video_id"]: jpeg for row in rows if (jpeg := self._thumbnail(row["video_id"]))}
        facts = {
            "Videos": f"{counts.matched} matched: {counts.labelled} labelled ({counts.by_model} by the model in this "
                      f"run, {counts.carried + counts.reused_content} carried over from the previous run), "
                      f"{counts.failed} failed",
            "Model": f"{self.manifest.get('model', '')} (model id {self.manifest.get('model_id', '')})",
            "Input": ", ".join(self.manifest.get("inputs", [])),
            "Output": self.output,
            "Finished": f"{publish.now_utc()}, after {seconds:.0f} s",
        }
        if windows := self.manifest.get("segments"):
            facts["Segments"] = (f"{counts.segments} windows of {windows['window_s']:g} s every "
                                 f"{windows['stride_s']:g} s over {counts.segment_videos} videos; {counts.events} "
                                 f"events")
        return report.render_report(rows, [tuple(f) for f in summary["shown_failures"]], thumbnails, facts,
                                    unknown_label=UNKNOWN_LABEL, no_thumbnail=self.no_thumbnail,
                                    totals=report.totals_from_summary(summary), labels=self.manifest.get("labels", ()))

    def _log(self, counts: Counts, page: str, seconds: float) -> None:
        read = counts.by_model + counts.reused_content + counts.failed  # videos (or records) this run opened
        rates = f"{read} {'videos' if counts.frames_sampled else 'inputs'} read at {read / seconds:.2f}/s"
        if counts.frames_sampled:
            rates += f", {counts.frames_sampled} frames sampled at {counts.frames_sampled / seconds:.1f} frames/s"
        _LOG.info("predict finished in %.1f s: %d of %d videos labelled (%d by the model, %d carried over from the "
                  "previous run), %d failed; %s", seconds, counts.labelled, counts.matched, counts.by_model,
                  counts.carried + counts.reused_content, counts.failed, rates)
        files = [f"{LABELS_FILE} ({counts.labelled} rows)", f"{outputs.FAILURES_FILE} ({counts.failed})",
                 f"{report.REPORT_FILE} ({len(page) / 1024:.0f} KB)", outputs.MANIFEST_FILE]
        if counts.thumbnails:
            files.insert(3, f"{report.THUMBNAILS_DIR}/ ({counts.thumbnails} JPEGs)")
        if counts.per_video:
            files.insert(3, f"{PER_VIDEO_DIR}/ ({counts.per_video} CSVs)")
        if self.segment_columns:
            files[1:1] = [f"{SEGMENTS_FILE} ({counts.segments} rows)", f"{EVENTS_FILE} ({counts.events})",
                          f"{TRACKS_DIR}/ ({counts.tracks} WebVTT tracks written)"]
        _LOG.info("predict outputs in %s: %s", self.output, ", ".join(files))
