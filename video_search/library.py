"""`VideoLibrary(folder).search(query, top_k)`: one query, moments ranked across every video of a library.

Stage 1 ranks the library's videos by the similarity of their stored embedding with the query's (`embeddings.py`)
through a vector index (`vector_index.py`) and keeps `candidates` of them; stage 2 runs LD-DETR on those
(`moments.py`) and ranks all their moments on one scale. `stage_one` and `best_windows` are stage 1 alone.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from modeling_lddetr import LDDetrModel, LDDetrProcessor

from .embeddings import DistillAlignEmbedder, clip_max_scores, encoders_fingerprint, unit_rows
from .library_folder import LibraryError, LibraryInfo, LibraryShards
from .moments import Moment, MomentRanker
from .vector_index import BACKENDS, ExactIndex, FaissIndex, QdrantIndex

DEFAULT_CANDIDATES = 50
BEST_WINDOW_CLIPS = (2, 4, 8, 16)  # stage 1 alone: the window lengths its best-scoring window is chosen from


@dataclass
class SearchResult:
    vid: str
    path: str | None
    start: float
    end: float
    score: float
    foreground: float | None = None
    similarity: float | None = None  # stage 1

    def as_dict(self) -> dict:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


@dataclass
class SearchTimings:
    stage_one: float = 0.0  # seconds: the query embedding and the index search
    read_features: float = 0.0  # the candidates' clip features from the parquet shards
    stage_two: float = 0.0  # LD-DETR on the candidates


def load_model(model: str | os.PathLike, device: str = "cpu") -> tuple[LDDetrModel, LDDetrProcessor]:
    name = str(model)
    if not Path(name).is_dir() and (name.startswith(("/", ".", "~")) or name.count("/") != 1):
        raise LibraryError(f"no such model folder: {name}")  # not a Hub id either
    try:
        loaded = LDDetrModel.from_pretrained(model).to(device).eval()
        processor = LDDetrProcessor.from_pretrained(model)
    except (OSError, ValueError) as error:
        raise LibraryError(f"cannot load the model {model}: {str(error).splitlines()[0]}") from None
    return loaded, processor


class VideoLibrary:
    """A library folder opened for search.

    Args:
        folder: the library (`lddetr-index --output-dir`).
        model: the LD-DETR model folder or Hub id; default the one the library was indexed with. Its weights must
            be those (the stored embeddings are that model's).
        index_backend: "exact" (torch matmul), "faiss" (the library's HNSW index, `lddetr-index --index-backend
            faiss`), or "qdrant" (`qdrant_location`: ":memory:", a folder or a server URL).
        text_encoder: turns a query string into (N, Dt) token features; default the CLIP text model the library's
            features came from (libraries built from datasets without one take token features only).
    """

    def __init__(
        self,
        folder: str | os.PathLike,
        model: str | os.PathLike | None = None,
        index_backend: str = "exact",
        qdrant_location: str = ":memory:",
        qdrant_collection: str | None = None,
        text_encoder=None,
        device: str = "cpu",
    ):
        self.folder = Path(folder)
        self.info = LibraryInfo.load(self.folder)
        self.model, self.processor = load_model(model or self.info.model, device)
        if encoders_fingerprint(self.model) != self.info.model_sha256:
            raise LibraryError(
                f"{model or self.info.model} is not the model {self.folder} was indexed with ({self.info.model}): "
                "its stage-1 embeddings would not match; re-index with lddetr-index --model"
            )
        self.shards = LibraryShards(self.folder)
        self.embedder = DistillAlignEmbedder(self.model, self.processor)
        self.ranker = MomentRanker(self.model, self.processor)
        self.index = self._open_index(index_backend, qdrant_location, qdrant_collection)
        self._text_encoder = text_encoder
        self.timings = SearchTimings()

    def _open_index(self, backend: str, location: str, collection: str | None):
        if backend not in BACKENDS:
            raise LibraryError(f"index backend must be one of {BACKENDS}, got {backend!r}")
        if backend == "exact":
            return ExactIndex(self.shards.embeddings)
        if backend == "faiss":
            if not (self.folder / "faiss.index").is_file():
                raise LibraryError(f"{self.folder} has no faiss.index: run lddetr-index --index-backend faiss")
            index = FaissIndex.load(self.folder)
            if len(index) != len(self.shards):
                raise LibraryError(f"{self.folder}: faiss.index has {len(index)} videos, the library has "
                                   f"{len(self.shards)}: run lddetr-index --index-backend faiss")
            return index
        qdrant = QdrantIndex(location, collection or self.folder.resolve().name, self.info.embedding_dim)
        return qdrant.sync(self.shards.embeddings)

    def __len__(self) -> int:
        return len(self.shards)

    # ------------------------------------------------------------------------------------------------ queries

    def text_features(self, query: str | np.ndarray) -> np.ndarray:
        """A query string (encoded with the library's CLIP text model) or its (N, Dt) token features as they are."""
        if not isinstance(query, str):
            return np.asarray(query, dtype=np.float32)
        if not query.strip():
            raise LibraryError("the query is empty")
        if self._text_encoder is None:
            models = self.info.clip_feature_models
            if not models:
                raise LibraryError(
                    f"{self.folder} names no CLIP text model (its features came from a dataset without one): "
                    "pass the query's token features instead of a string"
                )
            from processing.video.clip_encoders import ClipTextEncoder

            self._text_encoder = ClipTextEncoder(models["text_model"], device=self.model.device)
        return self._text_encoder(query)[0]

    # ------------------------------------------------------------------------------------------------ stage 1

    def stage_one(self, text_features: np.ndarray, candidates: int) -> tuple[np.ndarray, np.ndarray]:
        """(similarities (n,), library rows (n,)) of the `candidates` best videos, best first."""
        query = self.embedder.queries([text_features])
        scores, rows = self.index.search(query, candidates)
        keep = rows[0] >= 0
        return scores[0][keep], rows[0][keep]

    def clip_max_stage_one(self, query_embedding: np.ndarray, candidates: int) -> tuple[np.ndarray, np.ndarray]:
        """The comparison stage 1: every video scored by its best clip's CLIP image embedding (an exact scan of
        every clip; only for libraries with CLIP columns)."""
        columns = self.info.clip_columns()
        if columns is None:
            raise LibraryError(f"{self.folder} has no CLIP clip features: clip-max cannot run on it")
        if query_embedding.shape[-1] != columns.stop - columns.start:
            raise LibraryError(
                f"a {query_embedding.shape[-1]}-d query embedding cannot score {columns.stop - columns.start}-d CLIP "
                "clip features"
            )
        if not hasattr(self, "_clip_embeddings"):
            features = self.shards.clip_features(list(range(len(self))))
            self._clip_embeddings = [unit_rows(matrix[:, columns]) for matrix in features]
        scores = clip_max_scores(self._clip_embeddings, query_embedding)
        order = np.argsort(-scores, kind="stable")[:candidates]
        return scores[order], order

    def best_window(self, row: int, query_embedding: np.ndarray) -> tuple[float, float, float]:
        """Stage 1 alone: the window of the video whose clips are on average the most similar to the query
        (per clip, its `video_encoder` state against the query's global feature), over BEST_WINDOW_CLIPS lengths."""
        features = self.shards.clip_features([row])[0]
        similarity = self.embedder.clip_similarities(features, query_embedding)
        clip_length, duration = self.info.clip_length, float(self.shards.durations[row])
        best = (0.0, duration, -np.inf)
        cumulative = np.concatenate([[0.0], np.cumsum(similarity)])
        for length in BEST_WINDOW_CLIPS:
            length = min(length, len(similarity))
            means = (cumulative[length:] - cumulative[:-length]) / length
            start = int(np.argmax(means))
            if means[start] > best[2]:
                best = (start * clip_length, min((start + length) * clip_length, duration), float(means[start]))
        return best

    # ------------------------------------------------------------------------------------------------ search

    def search(
        self,
        query: str | np.ndarray,
        top_k: int = 10,
        candidates: int = DEFAULT_CANDIDATES,
        score: str = "joint",
        rows: Sequence[int] | None = None,
    ) -> list[SearchResult]:
        """The `top_k` best moments over the library for one query (a string, or its (N, Dt) token features).
        rows: run stage 2 on these library rows instead of stage 1's candidates (e.g. every video)."""
        if top_k < 1 or candidates < 1:
            raise LibraryError(f"top_k and candidates must be >= 1, got {top_k} and {candidates}")
        text = self.text_features(query)
        started = time.perf_counter()
        if rows is None:
            similarities, rows = self.stage_one(text, candidates)
        else:
            rows = np.asarray(rows, dtype=np.int64)
            similarities = self.shards.embeddings[rows] @ self.embedder.queries([text])[0]
        read = time.perf_counter()
        features = self.shards.clip_features(rows.tolist())
        ranked = time.perf_counter()
        moments = self.rank_moments(text, rows, similarities, features, score)
        done = time.perf_counter()
        self.timings = SearchTimings(read - started, ranked - read, done - ranked)
        return self.results(moments[:top_k], rows, similarities)

    def rank_moments(
        self, text: np.ndarray, rows: np.ndarray, similarities: np.ndarray, features=None, score: str = "joint"
    ) -> list[Moment]:
        """Stage 2 on the given library rows: their moments, best first by `score` (each carries both scores)."""
        if features is None:
            features = self.shards.clip_features(rows.tolist())
        durations = self.shards.durations[rows]
        return self.ranker(text, features, durations, similarities, self.embedder.temperature(), score=score)

    def results(self, moments: Sequence[Moment], rows: np.ndarray, similarities: np.ndarray) -> list[SearchResult]:
        results = []
        for moment in moments:
            row = int(rows[moment.candidate])
            results.append(
                SearchResult(
                    self.shards.vids[row], self.shards.paths_of_videos[row], moment.start, moment.end,
                    round(moment.score, 6), round(moment.foreground, 6),
                    round(float(similarities[moment.candidate]), 6),
                )
            )
        return results

    def search_stage_one(self, query: str | np.ndarray, top_k: int = 10) -> list[SearchResult]:
        """Stage 1 alone: the `top_k` best videos, each with its best-scoring window (no LD-DETR)."""
        text = self.text_features(query)
        query_embedding = self.embedder.queries([text])[0]
        similarities, rows = self.stage_one(text, top_k)
        results = []
        for similarity, row in zip(similarities, rows):
            start, end, _ = self.best_window(int(row), query_embedding)
            vid, path = self.shards.vids[row], self.shards.paths_of_videos[row]
            results.append(SearchResult(vid, path, start, end, float(similarity), similarity=float(similarity)))
        return results
