"""One process's share of a build from raw videos: videos decoded in DataLoader worker processes while the CLIP
encoder runs (the clips of several videos share encoder batches), their features written into work shards."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from processing.video.featurizer import DecodedVideo, VideoFeaturizer, decode_video

from .processes import Processes
from .video_inputs import VIDEO_EXTENSIONS, Failure, VideoJob
from .work_folder import WorkFolder


class DecodingDataset(Dataset):
    """Decodes one video per item in a DataLoader worker: (job, DecodedVideo) or (job, the reason it failed)."""

    def __init__(self, jobs: list[VideoJob], clip_length: float, frames_per_clip: list[int]):
        self.jobs, self.clip_length, self.frames_per_clip = jobs, clip_length, frames_per_clip

    def __len__(self) -> int:
        return len(self.jobs)

    def __getitem__(self, index: int) -> tuple[VideoJob, DecodedVideo | str]:
        job = self.jobs[index]
        if job.path is None:
            return job, f"no video file for vid {job.vid!r} (looked for {job.vid}{{{','.join(VIDEO_EXTENSIONS)}}})"
        try:
            return job, decode_video(job.path, self.clip_length, self.frames_per_clip)
        except (OSError, ValueError) as error:  # the reader names the file and the problem
            return job, str(error)


def _unbatched(items):
    return items[0]


def decoded_videos(jobs: list[VideoJob], featurizer: VideoFeaturizer,
                   workers: int) -> Iterator[tuple[VideoJob, DecodedVideo | str]]:
    frames_per_clip = [encoder.frames_per_clip for encoder in featurizer.encoders]
    dataset = DecodingDataset(jobs, featurizer.clip_length, frames_per_clip)
    loader = DataLoader(dataset, batch_size=1, collate_fn=_unbatched, num_workers=workers,
                        prefetch_factor=2 if workers else None)
    yield from loader


def extract_share(jobs: list[VideoJob], featurizer: VideoFeaturizer, work: WorkFolder, processes: Processes, *,
                  decode_workers: int, videos_per_shard: int, feature_dtype: str, max_video_clips: int | None,
                  progress: bool) -> list[Failure]:
    """Features of this process's videos into work shards; returns the videos that failed."""
    failures: list[Failure] = []
    pending: list[tuple[VideoJob, DecodedVideo]] = []
    shard: dict[str, list] = {"vids": [], "features": []}
    shards_written = 0
    stamp = f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"

    def encode_pending() -> None:
        for (job, _), features in zip(pending, featurizer.encode([video for _, video in pending])):
            matrix = features.concatenated()[:max_video_clips] if max_video_clips else features.concatenated()
            shard["vids"].append(job.vid)
            shard["features"].append(matrix.astype(feature_dtype))
        pending.clear()

    def write_shard() -> None:
        nonlocal shards_written
        work.write_shard(f"rank{processes.rank:03d}-{stamp}-{shards_written:06d}", shard["vids"], shard["features"])
        for values in shard.values():
            values.clear()
        shards_written += 1

    bar = tqdm(total=len(jobs), unit="video", desc=f"videos (process {processes.rank + 1}/{processes.world_size})",
               disable=not progress or processes.rank != 0, dynamic_ncols=True)
    for job, decoded in decoded_videos(jobs, featurizer, decode_workers):
        if isinstance(decoded, str):
            failures.append(Failure(job.vid, job.path, decoded))
        else:
            pending.append((job, decoded))
            # the encoders run once enough clips are in for a full step (or the share ends)
            if sum(len(video.clips) for _, video in pending) >= featurizer.clips_per_step:
                encode_pending()
        if len(shard["vids"]) >= videos_per_shard:  # a shard may hold a few more: one encoding step's videos
            write_shard()
        bar.update(1)
    encode_pending()
    if shard["vids"]:
        write_shard()
    bar.close()
    return failures
