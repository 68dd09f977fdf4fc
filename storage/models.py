"""SQLAlchemy tables: videos, moments (+ their embeddings), index jobs and per-stage runs.

SQLite is the truth. FAISS files are derived from the `embeddings` table and can be rebuilt from it.
"""

from __future__ import annotations

import time

from sqlalchemy import (
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

MODALITIES = ("speech", "text", "visual", "caption")

# Video status values, in the order a video moves through them.
PENDING, INDEXING, INDEXED, FAILED, MISSING = "pending", "indexing", "indexed", "failed", "missing"


class Base(DeclarativeBase):
    pass


class Video(Base):
    __tablename__ = "videos"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    path: Mapped[str] = mapped_column(String, unique=True)  # absolute, resolved
    fingerprint: Mapped[str | None] = mapped_column(String, default=None)  # size + sampled content hash
    size: Mapped[int | None] = mapped_column(Integer, default=None)  # bytes
    mtime: Mapped[float | None] = mapped_column(Float, default=None)
    duration: Mapped[float | None] = mapped_column(Float, default=None)  # seconds, from the container/stream
    fps: Mapped[float | None] = mapped_column(Float, default=None)
    width: Mapped[int | None] = mapped_column(Integer, default=None)
    height: Mapped[int | None] = mapped_column(Integer, default=None)
    has_audio: Mapped[bool | None] = mapped_column(Boolean, default=None)
    start_time: Mapped[float] = mapped_column(Float, default=0.0)  # stream start PTS, subtracted from frame times
    rotation: Mapped[int] = mapped_column(Integer, default=0)  # degrees clockwise a player turns the pixels (0/90/180/270)
    proxy: Mapped[str | None] = mapped_column(String, default=None)  # browser-playable copy, relative to the library
    status: Mapped[str] = mapped_column(String, default=PENDING)
    error: Mapped[str | None] = mapped_column(Text, default=None)  # the user-facing message when status == failed
    notes: Mapped[str | None] = mapped_column(Text, default=None)  # non-fatal: "no audio track", "no visual model"
    added_at: Mapped[float] = mapped_column(Float, default=time.time)
    indexed_at: Mapped[float | None] = mapped_column(Float, default=None)

    moments: Mapped[list[Moment]] = relationship(back_populates="video", cascade="all, delete-orphan")
    stages: Mapped[list[StageRun]] = relationship(back_populates="video", cascade="all, delete-orphan")


class Moment(Base):
    """A searchable span of one video: a speech segment, an on-screen text, a keyframe, a caption."""

    __tablename__ = "moments"
    __table_args__ = (Index("ix_moments_video_start", "video_id", "start"), Index("ix_moments_modality", "modality"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True)  # also the FAISS id of its vectors
    video_id: Mapped[int] = mapped_column(ForeignKey("videos.id", ondelete="CASCADE"))
    start: Mapped[float] = mapped_column(Float)  # seconds from the start of the file (PTS)
    end: Mapped[float] = mapped_column(Float)
    modality: Mapped[str] = mapped_column(String)  # one of MODALITIES
    text: Mapped[str] = mapped_column(Text, default="")
    thumbnail: Mapped[str | None] = mapped_column(String, default=None)  # path relative to the library folder
    stage: Mapped[str] = mapped_column(String)  # the stage that wrote it (re-running a stage replaces its rows)
    # Speech: the phrase's words as JSON [[start, end, word], ...] (content seconds), so a hit can point at the
    # first matched word instead of the phrase's start. None for other modalities and for old libraries.
    words: Mapped[str | None] = mapped_column(Text, default=None)

    video: Mapped[Video] = relationship(back_populates="moments")
    embeddings: Mapped[list[Embedding]] = relationship(cascade="all, delete-orphan")


class Embedding(Base):
    """One vector of a moment in a named space ('text' for MiniLM, 'visual' for CLIP/SigLIP)."""

    __tablename__ = "embeddings"
    # The covering index keeps the per-space checksum, the space list and chunked rebuilds off the vector blobs.
    __table_args__ = (UniqueConstraint("moment_id", "space"),
                      Index("ix_embeddings_space", "space", "moment_id", "model"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    moment_id: Mapped[int] = mapped_column(ForeignKey("moments.id", ondelete="CASCADE"), index=True)
    space: Mapped[str] = mapped_column(String)
    model: Mapped[str] = mapped_column(String)  # which model made it; a different model means re-embed
    vector: Mapped[bytes] = mapped_column(LargeBinary)  # float32, L2-normalised


class Job(Base):
    """One `index` run over some paths: for progress, ETA and history."""

    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    created_at: Mapped[float] = mapped_column(Float, default=time.time)
    finished_at: Mapped[float | None] = mapped_column(Float, default=None)
    status: Mapped[str] = mapped_column(String, default="running")  # running | done | failed | interrupted
    files_total: Mapped[int] = mapped_column(Integer, default=0)
    files_done: Mapped[int] = mapped_column(Integer, default=0)
    media_seconds_total: Mapped[float] = mapped_column(Float, default=0.0)
    media_seconds_done: Mapped[float] = mapped_column(Float, default=0.0)


class StageRun(Base):
    """A stage of one video: done or not, how long it took. Rows and the done mark commit together."""

    __tablename__ = "stage_runs"
    __table_args__ = (UniqueConstraint("video_id", "stage"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    video_id: Mapped[int] = mapped_column(ForeignKey("videos.id", ondelete="CASCADE"))
    stage: Mapped[str] = mapped_column(String)
    status: Mapped[str] = mapped_column(String, default="done")  # done | failed | skipped
    fingerprint: Mapped[str | None] = mapped_column(String, default=None)  # of the video when the stage ran
    wall_s: Mapped[float] = mapped_column(Float, default=0.0)
    media_s: Mapped[float] = mapped_column(Float, default=0.0)
    message: Mapped[str | None] = mapped_column(Text, default=None)
    finished_at: Mapped[float] = mapped_column(Float, default=time.time)

    video: Mapped[Video] = relationship(back_populates="stages")
