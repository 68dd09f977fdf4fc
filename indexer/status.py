"""The library's state for `sightline status` and the UI: every video, its status, error, notes and stages."""

from __future__ import annotations

from sqlalchemy import func, select

from storage.models import Job, Moment, StageRun, Video


def library_status(library) -> dict:
    with library.read() as s:
        counts = dict(s.execute(select(Video.status, func.count(Video.id)).group_by(Video.status)).all())
        moments = dict(s.execute(select(Moment.modality, func.count(Moment.id)).group_by(Moment.modality)).all())
        per_video = dict(s.execute(select(Moment.video_id, func.count(Moment.id)).group_by(Moment.video_id)).all())
        stages: dict[int, dict] = {}
        for r in s.scalars(select(StageRun).order_by(StageRun.id)).all():
            stages.setdefault(r.video_id, {})[r.stage] = {
                "status": r.status, "wall_s": round(r.wall_s, 3), "media_s": round(r.media_s, 3),
                "message": r.message}
        videos = [{
            "id": v.id, "path": v.path, "status": v.status, "duration": v.duration, "fps": v.fps,
            "width": v.width, "height": v.height, "has_audio": v.has_audio, "error": v.error, "notes": v.notes,
            "moments": per_video.get(v.id, 0), "stages": stages.get(v.id, {}), "indexed_at": v.indexed_at,
        } for v in s.scalars(select(Video).order_by(Video.id)).all()]
        job = s.scalars(select(Job).order_by(Job.id.desc()).limit(1)).first()
        last_job = None if job is None else {
            "id": job.id, "status": job.status, "files_total": job.files_total, "files_done": job.files_done,
            "media_seconds_total": job.media_seconds_total, "media_seconds_done": job.media_seconds_done,
            "created_at": job.created_at,
            "finished_at": job.finished_at}
    return {"library": str(library.folder), "counts": counts, "moments": sum(moments.values()),
            "moments_by_modality": moments, "videos": videos, "last_job": last_job}
